//! Memory-mapped safetensors weights of an HF model directory (single file or sharded with an index),
//! and the list of tensors a config requires.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use candle_core::safetensors::{Load, MmapedSafetensors};
use candle_core::{DType, Device, Tensor};
use safetensors::Dtype as StDtype;

use crate::config::ModelConfig;
use crate::error::{ModelError, Result};

/// One tensor the model needs: its checkpoint name and shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorSpec {
    pub name: String,
    pub shape: Vec<usize>,
}

impl TensorSpec {
    fn new(name: impl Into<String>, shape: &[usize]) -> Self {
        Self {
            name: name.into(),
            shape: shape.to_vec(),
        }
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// True for tensors of an MTP layer.
    pub fn is_mtp(&self) -> bool {
        self.name.starts_with("model.mtp_layers.")
    }
}

fn decoder_layer_specs(cfg: &ModelConfig, prefix: &str, out: &mut Vec<TensorSpec>) {
    let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
    let q = cfg.num_attention_heads * cfg.head_dim;
    let kv = cfg.num_key_value_heads * cfg.head_dim;
    out.push(TensorSpec::new(
        format!("{prefix}.input_layernorm.weight"),
        &[h],
    ));
    for (proj, rows) in [("q_proj", q), ("k_proj", kv), ("v_proj", kv)] {
        out.push(TensorSpec::new(
            format!("{prefix}.self_attn.{proj}.weight"),
            &[rows, h],
        ));
        if cfg.qkv_bias {
            out.push(TensorSpec::new(
                format!("{prefix}.self_attn.{proj}.bias"),
                &[rows],
            ));
        }
    }
    out.push(TensorSpec::new(
        format!("{prefix}.self_attn.o_proj.weight"),
        &[h, q],
    ));
    out.push(TensorSpec::new(
        format!("{prefix}.post_attention_layernorm.weight"),
        &[h],
    ));
    out.push(TensorSpec::new(
        format!("{prefix}.mlp.gate_proj.weight"),
        &[i, h],
    ));
    out.push(TensorSpec::new(
        format!("{prefix}.mlp.up_proj.weight"),
        &[i, h],
    ));
    out.push(TensorSpec::new(
        format!("{prefix}.mlp.down_proj.weight"),
        &[h, i],
    ));
}

/// Every tensor a checkpoint with this config must hold, in checkpoint order (design §1.4).
pub fn expected_tensors(cfg: &ModelConfig) -> Vec<TensorSpec> {
    let (h, v) = (cfg.hidden_size, cfg.vocab_size);
    let mut out = vec![TensorSpec::new("model.embed_tokens.weight", &[v, h])];
    for l in 0..cfg.num_hidden_layers {
        decoder_layer_specs(cfg, &format!("model.layers.{l}"), &mut out);
    }
    out.push(TensorSpec::new("model.norm.weight", &[h]));
    if !cfg.tie_word_embeddings {
        out.push(TensorSpec::new("lm_head.weight", &[v, h]));
    }
    for k in 0..cfg.num_nextn_predict_layers {
        let p = format!("model.mtp_layers.{k}");
        out.push(TensorSpec::new(format!("{p}.token_layernorm.weight"), &[h]));
        out.push(TensorSpec::new(
            format!("{p}.hidden_layernorm.weight"),
            &[h],
        ));
        out.push(TensorSpec::new(
            format!("{p}.input_proj.weight"),
            &[h, 2 * h],
        ));
        decoder_layer_specs(cfg, &p, &mut out);
        out.push(TensorSpec::new(format!("{p}.final_layernorm.weight"), &[h]));
    }
    out
}

/// True for checkpoint tensors that are derived buffers, not weights (safe to ignore).
pub fn is_ignorable(name: &str) -> bool {
    name.ends_with("rotary_emb.inv_freq")
}

/// Counts the NaN/±inf values of a little-endian float buffer: `Some((count, first index))` when there are any.
/// A bit test on the exponent field, over the mapped bytes in parallel: one pass at memory speed, which
/// loading reads anyway.
pub fn non_finite(dtype: StDtype, data: &[u8]) -> Option<(usize, usize)> {
    match dtype {
        StDtype::F64 => scan_non_finite::<8>(data, 0x7ff0_0000_0000_0000),
        StDtype::F32 => scan_non_finite::<4>(data, 0x7f80_0000),
        StDtype::BF16 => scan_non_finite::<2>(data, 0x7f80),
        StDtype::F16 => scan_non_finite::<2>(data, 0x7c00),
        _ => None,
    }
}

fn scan_non_finite<const W: usize>(data: &[u8], exp_mask: u64) -> Option<(usize, usize)> {
    use rayon::prelude::*;
    const CHUNK: usize = 1 << 16;
    let per_chunk: Vec<(usize, Option<usize>)> = data
        .par_chunks(CHUNK * W)
        .enumerate()
        .map(|(ci, chunk)| {
            let (mut count, mut first) = (0, None);
            for (i, c) in chunk.chunks_exact(W).enumerate() {
                let mut b = [0u8; 8];
                b[..W].copy_from_slice(c);
                if u64::from_le_bytes(b) & exp_mask == exp_mask {
                    count += 1;
                    first.get_or_insert(ci * CHUNK + i);
                }
            }
            (count, first)
        })
        .collect();
    let first = per_chunk.iter().find_map(|c| c.1)?;
    Some((per_chunk.iter().map(|c| c.0).sum(), first))
}

/// Drops the resident pages of a mapped tensor once its values were copied out: loading a 15 GB bf16
/// checkpoint (to quantize it, say) would otherwise keep every page mapped and count it in the RSS twice.
/// The mapping is read-only and private, so the pages are simply re-read from the file if touched again.
fn release_pages(data: &[u8]) {
    #[cfg(target_os = "linux")]
    {
        const PAGE: usize = 4096;
        let start = (data.as_ptr() as usize).div_ceil(PAGE) * PAGE;
        let end = (data.as_ptr() as usize + data.len()) / PAGE * PAGE;
        if end > start {
            // SAFETY: [start, end) lies inside the read-only file mapping `data` borrows from; MADV_DONTNEED on
            // an unmodified private file mapping only drops pages, later reads fault them in from the file.
            unsafe {
                libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED);
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = data;
}

/// Asks for transparent huge pages behind `v` (Linux `MADV_HUGEPAGE`, honoured in the kernel's default `madvise`
/// mode), to be called on a fresh zeroed allocation before it is written: a 7B model's weights span hundreds of
/// thousands of 4 KiB pages, and a GEMV streaming them then misses the TLB on every page (measured: the Q4_K
/// `lm_head` GEMV of MiMo-7B reads 35 GB/s on 4 KiB pages, 60 GB/s on huge pages).
pub(crate) fn advise_huge_pages<T>(v: &[T]) {
    #[cfg(target_os = "linux")]
    {
        const HUGE: usize = 2 << 20;
        let (p, len) = (v.as_ptr() as usize, std::mem::size_of_val(v));
        let (start, end) = (p.next_multiple_of(HUGE), (p + len) / HUGE * HUGE);
        if end > start {
            // SAFETY: [start, end) lies inside `v`'s allocation; MADV_HUGEPAGE only changes how it is backed.
            unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE) };
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = v;
}

/// Metadata of one stored tensor.
#[derive(Debug, Clone)]
pub struct StoredTensor {
    pub file: PathBuf,
    pub dtype: StDtype,
    pub shape: Vec<usize>,
}

/// The safetensors files of a model directory, memory-mapped, with a name → file routing table.
/// Records which tensors were loaded so that unused ones can be reported.
pub struct WeightStore {
    dir: PathBuf,
    files: Vec<(PathBuf, MmapedSafetensors)>,
    routing: BTreeMap<String, usize>,
    used: Mutex<BTreeSet<String>>,
}

impl std::fmt::Debug for WeightStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WeightStore")
            .field("dir", &self.dir)
            .field(
                "files",
                &self.files.iter().map(|(p, _)| p).collect::<Vec<_>>(),
            )
            .field("tensors", &self.routing.len())
            .finish()
    }
}

fn open_safetensors(path: &Path) -> Result<MmapedSafetensors> {
    if !path.is_file() {
        return Err(ModelError::Io {
            path: path.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "weight file not found"),
        });
    }
    // SAFETY: the file is mapped read-only; like every mmap-based loader (candle, safetensors, PyTorch) we
    // rely on nobody truncating the checkpoint while it is loaded.
    unsafe { MmapedSafetensors::new(path) }.map_err(|e| ModelError::Safetensors {
        path: path.to_path_buf(),
        msg: e.to_string(),
    })
}

impl WeightStore {
    /// Opens `DIR/model.safetensors`, or the shards listed in `DIR/model.safetensors.index.json`.
    pub fn open(dir: &Path) -> Result<Self> {
        let single = dir.join("model.safetensors");
        let index = dir.join("model.safetensors.index.json");
        let mut files: Vec<(PathBuf, MmapedSafetensors)> = vec![];
        let mut routing = BTreeMap::new();
        if index.is_file() {
            let text = std::fs::read_to_string(&index).map_err(|source| ModelError::Io {
                path: index.clone(),
                source,
            })?;
            let json: serde_json::Value =
                serde_json::from_str(&text).map_err(|source| ModelError::Json {
                    path: index.clone(),
                    source,
                })?;
            let map = json
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| ModelError::Index {
                    path: index.clone(),
                    msg: "missing object field `weight_map`".into(),
                })?;
            let mut shard_ids: HashMap<String, usize> = HashMap::new();
            for (name, file) in map {
                let file = file.as_str().ok_or_else(|| ModelError::Index {
                    path: index.clone(),
                    msg: format!("weight_map[{name:?}] is not a file name"),
                })?;
                if file.contains('/') || file.contains("..") {
                    return Err(ModelError::Index {
                        path: index.clone(),
                        msg: format!("weight_map[{name:?}] = {file:?} is not a plain file name"),
                    });
                }
                let id = match shard_ids.get(file) {
                    Some(&id) => id,
                    None => {
                        let path = dir.join(file);
                        let st = open_safetensors(&path)?;
                        files.push((path, st));
                        shard_ids.insert(file.to_string(), files.len() - 1);
                        files.len() - 1
                    }
                };
                routing.insert(name.clone(), id);
            }
            // The index must tell the truth: every routed tensor is in its shard.
            for (name, &id) in &routing {
                let (path, st) = &files[id];
                if st.get(name).is_err() {
                    return Err(ModelError::Index {
                        path: index.clone(),
                        msg: format!(
                            "tensor `{name}` is routed to {} which does not hold it",
                            path.display()
                        ),
                    });
                }
            }
        } else if single.is_file() {
            let st = open_safetensors(&single)?;
            for (name, _) in st.tensors() {
                routing.insert(name, 0);
            }
            files.push((single, st));
        } else {
            return Err(ModelError::NoWeights {
                dir: dir.to_path_buf(),
            });
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            files,
            routing,
            used: Mutex::new(BTreeSet::new()),
        })
    }

    /// The model directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The weight files, in the order they were opened.
    pub fn files(&self) -> Vec<&Path> {
        self.files.iter().map(|(p, _)| p.as_path()).collect()
    }

    /// Names of all stored tensors, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.routing.keys().map(String::as_str)
    }

    /// Metadata of a stored tensor, if present.
    pub fn info(&self, name: &str) -> Option<StoredTensor> {
        let &id = self.routing.get(name)?;
        let (path, st) = &self.files[id];
        let view = st.get(name).ok()?;
        Some(StoredTensor {
            file: path.clone(),
            dtype: view.dtype(),
            shape: view.shape().to_vec(),
        })
    }

    /// Checks that `spec` is present with its shape and a float dtype.
    pub fn check(&self, spec: &TensorSpec) -> Result<StoredTensor> {
        let info = self
            .info(&spec.name)
            .ok_or_else(|| ModelError::MissingTensor {
                dir: self.dir.clone(),
                name: spec.name.clone(),
            })?;
        if info.shape != spec.shape {
            return Err(ModelError::ShapeMismatch {
                path: info.file,
                name: spec.name.clone(),
                expected: spec.shape.clone(),
                actual: info.shape,
            });
        }
        if !matches!(
            info.dtype,
            StDtype::F32 | StDtype::BF16 | StDtype::F16 | StDtype::F64
        ) {
            return Err(ModelError::BadDtype {
                path: info.file,
                name: spec.name.clone(),
                dtype: format!("{:?}", info.dtype),
            });
        }
        Ok(info)
    }

    /// Checks every tensor in `specs`, reporting the first problem.
    pub fn check_all(&self, specs: &[TensorSpec]) -> Result<()> {
        specs.iter().try_for_each(|s| self.check(s).map(|_| ()))
    }

    /// Loads tensor `spec` onto `device` as `dtype`, after checking its shape.
    pub fn load(&self, spec: &TensorSpec, dtype: DType, device: &Device) -> Result<Tensor> {
        let info = self.check(spec)?;
        let id = self.routing[&spec.name];
        let (_, st) = &self.files[id];
        let wrap = |e: candle_core::Error| ModelError::TensorData {
            path: info.file.clone(),
            name: spec.name.clone(),
            msg: e.to_string(),
        };
        let view = st.get(&spec.name).map_err(wrap)?;
        if let Some((count, first)) = non_finite(view.dtype(), view.data()) {
            return Err(ModelError::NonFinite {
                path: info.file.clone(),
                name: spec.name.clone(),
                count,
                first,
            });
        }
        let t = view.load(&Device::Cpu).map_err(wrap)?;
        release_pages(view.data());
        let t = t
            .to_dtype(dtype)
            .map_err(wrap)?
            .to_device(device)
            .map_err(wrap)?;
        if let Ok(mut used) = self.used.lock() {
            used.insert(spec.name.clone());
        }
        Ok(t)
    }

    /// Loads a tensor by name and shape.
    pub fn get(
        &self,
        name: &str,
        shape: &[usize],
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor> {
        self.load(&TensorSpec::new(name, shape), dtype, device)
    }

    /// Number of `PREFIX.{n}.` layers stored (one more than the highest index), 0 when none.
    pub fn stored_layers(&self, prefix: &str) -> usize {
        self.names()
            .filter_map(|n| {
                n.strip_prefix(prefix)?
                    .split('.')
                    .next()?
                    .parse::<usize>()
                    .ok()
            })
            .map(|l| l.saturating_add(1))
            .max()
            .unwrap_or(0)
    }

    /// Errors when the checkpoint stores more decoder layers than `cfg` describes: the model would silently
    /// run as a truncated network. Extra MTP layers are only a warning (dropping MTP is a legitimate choice).
    pub fn check_layer_counts(&self, cfg: &ModelConfig) -> Result<()> {
        let main = self.stored_layers("model.layers.");
        if main > cfg.num_hidden_layers {
            return Err(ModelError::ExtraLayers {
                dir: self.dir.clone(),
                msg: format!(
                    "the checkpoint stores {main} decoder layers but config.json has num_hidden_layers = {}",
                    cfg.num_hidden_layers
                ),
            });
        }
        let mtp = self.stored_layers("model.mtp_layers.");
        if mtp > cfg.num_nextn_predict_layers {
            tracing::warn!(
                "{}: the checkpoint stores {mtp} MTP layers, config.json uses {} (num_nextn_predict_layers)",
                self.dir.display(),
                cfg.num_nextn_predict_layers
            );
        }
        Ok(())
    }

    /// Stored tensors that were never loaded (derived buffers such as `rotary_emb.inv_freq` excluded).
    pub fn unused(&self) -> Vec<String> {
        let used = self.used.lock().map(|u| u.clone()).unwrap_or_default();
        self.routing
            .keys()
            .filter(|n| !used.contains(*n) && !is_ignorable(n))
            .cloned()
            .collect()
    }
}
