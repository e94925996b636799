//! GGUF files (llama.cpp's format) as a weight source: the `llama` and `qwen2` architectures as llama.cpp's
//! converter writes them, and mimo's own files (`mimo quantize`), which add the MTP layers under `mtp.{k}.*`
//! and `mimo.*` keys. Parsing and the quantized blocks are candle's (`candle_core::quantized::gguf_file`);
//! this module maps names and hyper-parameters onto the HF layout the model is built from.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device, Tensor};

use crate::config::{Arch, ModelConfig, MtpHidden};
use crate::error::{ModelError, Result};
use crate::linear::{permute_rows, RawWeight};

/// An opened GGUF file: metadata and tensor directory parsed, tensor data read on demand.
pub struct GgufFile {
    path: PathBuf,
    content: Content,
    file: Mutex<File>,
    arch: String,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("arch", &self.arch)
            .field("tensors", &self.content.tensor_infos.len())
            .finish()
    }
}

/// True when `path` names a GGUF file (by extension, or by its magic bytes).
pub fn is_gguf(path: &Path) -> bool {
    if path.is_dir() {
        return false;
    }
    if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
    {
        return true;
    }
    let mut magic = [0u8; 4];
    File::open(path)
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic))
        .is_ok()
        && &magic == b"GGUF"
}

/// The GGUF file `--model PATH` names: PATH itself when it is a GGUF file, `PATH/model.gguf` for a directory
/// without safetensors weights (what `mimo quantize` writes); `None` for an HF safetensors directory.
pub fn gguf_path(path: &Path) -> Option<PathBuf> {
    if path.is_dir() {
        let inner = path.join("model.gguf");
        let has_st = path.join("model.safetensors").is_file()
            || path.join("model.safetensors.index.json").is_file();
        return (inner.is_file() && !has_st).then_some(inner);
    }
    (path.is_file() && is_gguf(path)).then(|| path.to_path_buf())
}

impl GgufFile {
    /// Opens and parses `path`; a file that is not GGUF, is truncated in its header, or uses a tensor type
    /// candle cannot read is an error naming the file.
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|source| ModelError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        // The header is thousands of small reads (one per vocabulary string): buffered.
        let mut reader = std::io::BufReader::with_capacity(1 << 20, file);
        let content = Content::read(&mut reader).map_err(|e| gguf_err(path, first_line(&e)))?;
        let file = reader.into_inner();
        let arch = match content.metadata.get("general.architecture") {
            Some(Value::String(s)) => s.clone(),
            _ => return Err(gguf_err(path, "no `general.architecture` string".into())),
        };
        if !matches!(arch.as_str(), "llama" | "qwen2") {
            return Err(gguf_err(
                path,
                format!("unsupported architecture {arch:?} (mimo reads llama and qwen2)"),
            ));
        }
        let g = Self {
            path: path.to_path_buf(),
            content,
            file: Mutex::new(file),
            arch,
        };
        g.check_sizes()?;
        Ok(g)
    }

    /// Every tensor's data must lie inside the file (a truncated download fails here, not mid-load).
    fn check_sizes(&self) -> Result<()> {
        let len = std::fs::metadata(&self.path)
            .map_err(|source| ModelError::Io {
                path: self.path.clone(),
                source,
            })?
            .len();
        for (name, info) in &self.content.tensor_infos {
            let t = info.ggml_dtype;
            let bytes = (info.shape.elem_count() / t.block_size() * t.type_size()) as u64;
            let end = self.content.tensor_data_offset + info.offset + bytes;
            if end > len {
                return Err(gguf_err(
                    &self.path,
                    format!("truncated: tensor `{name}` ends at byte {end}, the file has {len}"),
                ));
            }
        }
        Ok(())
    }

    /// The file path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `general.architecture`.
    pub fn arch(&self) -> &str {
        &self.arch
    }

    /// All metadata key/value pairs.
    pub fn metadata(&self) -> &HashMap<String, Value> {
        &self.content.metadata
    }

    /// Tensor names with their GGUF type and shape (row-major, as candle reports it).
    pub fn tensors(&self) -> Vec<(String, GgmlDType, Vec<usize>)> {
        let mut v: Vec<_> = self
            .content
            .tensor_infos
            .iter()
            .map(|(n, i)| (n.clone(), i.ggml_dtype, i.shape.dims().to_vec()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    fn key(&self, suffix: &str) -> Option<&Value> {
        self.content
            .metadata
            .get(&format!("{}.{suffix}", self.arch))
    }

    fn usize_key(&self, suffix: &str) -> Result<Option<usize>> {
        self.key(suffix)
            .map(|v| {
                v.to_u64()
                    .or_else(|_| v.to_u32().map(u64::from))
                    .or_else(|_| v.to_i32().map(|x| x.max(0) as u64))
                    .map(|x| x as usize)
                    .map_err(|e| self.field_err(suffix, first_line(&e)))
            })
            .transpose()
    }

    fn required(&self, suffix: &str) -> Result<usize> {
        self.usize_key(suffix)?
            .ok_or_else(|| self.field_err(suffix, "missing".into()))
    }

    fn f64_key(&self, suffix: &str) -> Result<Option<f64>> {
        self.key(suffix)
            .map(|v| {
                v.to_f32()
                    .map(f64::from)
                    .or_else(|_| v.to_f64())
                    .map_err(|e| self.field_err(suffix, first_line(&e)))
            })
            .transpose()
    }

    fn field_err(&self, suffix: &str, msg: String) -> ModelError {
        ModelError::Config {
            path: self.path.clone(),
            field: format!("{}.{suffix}", self.arch),
            msg,
        }
    }

    fn has(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }

    /// The model config the metadata describes (MTP layers from mimo's own `mimo.*` keys).
    pub fn config(&self) -> Result<ModelConfig> {
        if self.has("rope_freqs.weight") || self.key("rope.scaling.type").is_some() {
            return Err(gguf_err(
                &self.path,
                "RoPE scaling (rope_freqs / rope.scaling.*) is not supported".into(),
            ));
        }
        let hidden = self.required("embedding_length")?;
        let heads = self.required("attention.head_count")?;
        let vocab = match self.content.tensor_infos.get("token_embd.weight") {
            Some(info) => info.shape.dims()[0],
            None => return Err(gguf_err(&self.path, "no tensor `token_embd.weight`".into())),
        };
        let u32_meta = |k: &str| {
            self.content.metadata.get(k).and_then(|v| {
                v.to_u32()
                    .ok()
                    .or_else(|| v.to_i32().ok().map(|x| x as u32))
            })
        };
        let mtp = u32_meta("mimo.nextn_predict_layers").unwrap_or(0) as usize;
        let mtp_hidden = match self.content.metadata.get("mimo.mtp_hidden") {
            Some(Value::String(s)) if s == "post_norm" => MtpHidden::PostNorm,
            _ => MtpHidden::PreNorm,
        };
        let cfg = ModelConfig {
            arch: match (self.arch.as_str(), mtp) {
                ("llama", _) => Arch::Llama,
                (_, 0) => Arch::Qwen2,
                _ => Arch::Mimo,
            },
            vocab_size: vocab,
            hidden_size: hidden,
            intermediate_size: self.required("feed_forward_length")?,
            num_hidden_layers: self.required("block_count")?,
            num_attention_heads: heads,
            num_key_value_heads: self.usize_key("attention.head_count_kv")?.unwrap_or(heads),
            head_dim: self
                .usize_key("attention.key_length")?
                .unwrap_or(hidden / heads.max(1)),
            rms_norm_eps: self
                .f64_key("attention.layer_norm_rms_epsilon")?
                .unwrap_or(1e-6),
            rope_theta: self.f64_key("rope.freq_base")?.unwrap_or(10000.0),
            max_position_embeddings: self.usize_key("context_length")?.unwrap_or(4096),
            tie_word_embeddings: !self.has("output.weight"),
            qkv_bias: self.has("blk.0.attn_q.bias"),
            num_nextn_predict_layers: mtp,
            mtp_hidden,
            mtp_zero_pos0_embedding: matches!(
                self.content.metadata.get("mimo.mtp_zero_pos0_embedding"),
                Some(Value::Bool(true))
            ),
            torch_dtype: None,
            bos_token_id: u32_meta("tokenizer.ggml.bos_token_id"),
            eos_token_ids: u32_meta("tokenizer.ggml.eos_token_id")
                .into_iter()
                .collect(),
        };
        if cfg.num_hidden_layers == 0 || cfg.hidden_size == 0 || heads == 0 {
            return Err(gguf_err(&self.path, "zero layers, width or heads".into()));
        }
        Ok(cfg)
    }

    /// Reads tensor `name` as stored (float tensors as candle tensors in their own dtype on the CPU, or
    /// converted to `dtype` elsewhere; quantized ones as blocks).
    fn read(&self, name: &str, device: &Device) -> Result<RawWeight> {
        let mut file = self
            .file
            .lock()
            .map_err(|_| gguf_err(&self.path, "file lock poisoned".into()))?;
        let q = self
            .content
            .tensor(&mut *file, name, device)
            .map_err(|e| gguf_err(&self.path, format!("tensor `{name}`: {}", first_line(&e))))?;
        Ok(match q.dtype() {
            GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16 => {
                let dtype = match q.dtype() {
                    GgmlDType::F16 => DType::F16,
                    GgmlDType::BF16 => DType::BF16,
                    _ => DType::F32,
                };
                let bytes = q.data()?;
                RawWeight::Float(Tensor::from_raw_buffer(
                    &bytes,
                    dtype,
                    q.shape().dims(),
                    device,
                )?)
            }
            _ => RawWeight::Quant(Arc::new(q)),
        })
    }
}

/// A candle error's message without the backtrace candle appends when `RUST_BACKTRACE` is set.
fn first_line(e: &candle_core::Error) -> String {
    e.to_string().lines().next().unwrap_or_default().to_string()
}

fn gguf_err(path: &Path, msg: String) -> ModelError {
    ModelError::Gguf {
        path: path.to_path_buf(),
        msg,
    }
}

/// The GGUF name of an HF checkpoint tensor (llama.cpp's names; MTP layers under `mtp.{k}.`).
pub fn gguf_name(hf: &str) -> String {
    let map_block = |rest: &str| -> String {
        let (module, tail) = match rest.rsplit_once('.') {
            Some(x) => x,
            None => return rest.to_string(),
        };
        let m = match module {
            "input_layernorm" => "attn_norm",
            "post_attention_layernorm" => "ffn_norm",
            "self_attn.q_proj" => "attn_q",
            "self_attn.k_proj" => "attn_k",
            "self_attn.v_proj" => "attn_v",
            "self_attn.o_proj" => "attn_output",
            "mlp.gate_proj" => "ffn_gate",
            "mlp.up_proj" => "ffn_up",
            "mlp.down_proj" => "ffn_down",
            other => other,
        };
        format!("{m}.{tail}")
    };
    match hf {
        "model.embed_tokens.weight" => return "token_embd.weight".into(),
        "model.norm.weight" => return "output_norm.weight".into(),
        "lm_head.weight" => return "output.weight".into(),
        _ => {}
    }
    for (prefix, to) in [("model.layers.", "blk."), ("model.mtp_layers.", "mtp.")] {
        if let Some(rest) = hf.strip_prefix(prefix) {
            if let Some((idx, rest)) = rest.split_once('.') {
                return format!("{to}{idx}.{}", map_block(rest));
            }
        }
    }
    hf.to_string()
}

/// For llama-architecture files: llama.cpp's converter interleaves the two rotary halves of every q/k head
/// (`LlamaModel.permute`); `perm[hf_row]` is the GGUF row holding HF row `hf_row`.
pub fn llama_qk_perm(rows: usize, head_dim: usize) -> Vec<usize> {
    let half = head_dim / 2;
    (0..rows)
        .map(|r| {
            let (h, within) = (r / head_dim, r % head_dim);
            let (i, j) = (within / half, within % half);
            h * head_dim + 2 * j + i
        })
        .collect()
}

/// The file as a [`TensorSource`](crate::model) in the HF layout: names mapped, llama q/k rows restored.
pub(crate) struct GgufSource<'a> {
    pub file: &'a GgufFile,
    pub cfg: &'a ModelConfig,
}

impl GgufSource<'_> {
    /// Heads of the q or k projection `name` when its rows need un-permuting.
    fn permuted_heads(&self, hf: &str) -> Option<usize> {
        if self.file.arch != "llama" {
            return None;
        }
        if hf.ends_with("self_attn.q_proj.weight") || hf.ends_with("self_attn.q_proj.bias") {
            Some(self.cfg.num_attention_heads)
        } else if hf.ends_with("self_attn.k_proj.weight") || hf.ends_with("self_attn.k_proj.bias") {
            Some(self.cfg.num_key_value_heads)
        } else {
            None
        }
    }

    pub(crate) fn raw(&self, hf: &str, shape: &[usize], device: &Device) -> Result<RawWeight> {
        let name = gguf_name(hf);
        let info =
            self.file
                .content
                .tensor_infos
                .get(&name)
                .ok_or_else(|| ModelError::MissingTensor {
                    dir: self.file.path.clone(),
                    name: format!("{name} (HF `{hf}`)"),
                })?;
        if info.shape.dims() != shape {
            return Err(ModelError::ShapeMismatch {
                path: self.file.path.clone(),
                name,
                expected: shape.to_vec(),
                actual: info.shape.dims().to_vec(),
            });
        }
        let w = self.file.read(&name, device)?;
        match (self.permuted_heads(hf), shape.len()) {
            (Some(heads), 2) => {
                let perm = llama_qk_perm(shape[0], shape[0] / heads.max(1));
                permute_rows(&w, &perm)
            }
            (Some(heads), 1) => {
                let perm = llama_qk_perm(shape[0], shape[0] / heads.max(1));
                let RawWeight::Float(t) = w else {
                    return Err(gguf_err(&self.file.path, format!("`{name}` is quantized")));
                };
                let t = t.reshape((shape[0], 1))?;
                match permute_rows(&RawWeight::Float(t), &perm)? {
                    RawWeight::Float(t) => Ok(RawWeight::Float(t.flatten_all()?)),
                    q => Ok(q),
                }
            }
            _ => Ok(w),
        }
    }

    pub(crate) fn get(
        &self,
        hf: &str,
        shape: &[usize],
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor> {
        Ok(match self.raw(hf, shape, device)? {
            RawWeight::Float(t) => t.to_dtype(dtype)?,
            RawWeight::Quant(q) => q.dequantize(device)?.to_dtype(dtype)?,
        })
    }
}

/// Writes the checkpoint in `store` as a GGUF file at `out`: linear weights and the embedding table quantized
/// to `quant` where it fits (else kept f16), norms and biases in f32, MTP layers under `mtp.{k}.*` with
/// `mimo.*` keys, llama.cpp's names and (for llama) its q/k row order, so that llama.cpp reads files without
/// MTP layers. Tensors are quantized in parallel; the file is written to a temporary name and renamed, so a
/// failure leaves no partial file. Returns (tensors written, bytes).
pub fn write_gguf(
    store: &crate::WeightStore,
    cfg: &ModelConfig,
    quant: crate::QuantType,
    out: &Path,
) -> Result<(usize, u64)> {
    use candle_core::quantized::QTensor;
    let specs = crate::weights::expected_tensors(cfg);
    store.check_all(&specs)?;
    let arch = if cfg.arch == Arch::Llama {
        "llama"
    } else {
        "qwen2"
    };
    // One tensor at a time, each quantized by row chunks on every core: memory stays near the output size.
    let tensors: Vec<(String, QTensor)> = specs
        .iter()
        .map(|spec| -> Result<(String, QTensor)> {
            let dtype = match store.info(&spec.name).map(|i| i.dtype) {
                Some(safetensors::Dtype::BF16) => DType::BF16,
                Some(safetensors::Dtype::F16) => DType::F16,
                _ => DType::F32,
            };
            let t = store.load(spec, dtype, &Device::Cpu)?;
            let mut w = RawWeight::Float(t);
            if arch == "llama" {
                let heads = if spec.name.contains("self_attn.q_proj.") {
                    Some(cfg.num_attention_heads)
                } else if spec.name.contains("self_attn.k_proj.") {
                    Some(cfg.num_key_value_heads)
                } else {
                    None
                };
                if let (Some(h), RawWeight::Float(t)) = (heads, &w) {
                    let rows = spec.shape[0];
                    let fwd = llama_qk_perm(rows, rows / h.max(1));
                    let mut inv = vec![0; rows];
                    for (hf, &g) in fwd.iter().enumerate() {
                        inv[g] = hf;
                    }
                    let t2 = if spec.shape.len() == 1 {
                        t.reshape((rows, 1))?
                    } else {
                        t.clone()
                    };
                    w = match permute_rows(&RawWeight::Float(t2), &inv)? {
                        RawWeight::Float(t) => RawWeight::Float(t.reshape(spec.shape.as_slice())?),
                        q => q,
                    };
                }
            }
            let RawWeight::Float(t) = w else {
                unreachable!("float weights stay float when permuted")
            };
            let q = if spec.shape.len() == 2 {
                let g = quant.fit(spec.shape[1]).unwrap_or(GgmlDType::F16);
                crate::linear::quantize_rows(&t, g, &Device::Cpu)?
            } else {
                QTensor::quantize(&t.to_dtype(DType::F32)?, GgmlDType::F32)?
            };
            Ok((gguf_name(&spec.name), q))
        })
        .collect::<Result<Vec<_>>>()?;
    let u32v = |x: usize| Value::U32(x as u32);
    let mut meta: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String(arch.into())),
        ("general.name".into(), Value::String("mimo".into())),
        (format!("{arch}.block_count"), u32v(cfg.num_hidden_layers)),
        (format!("{arch}.embedding_length"), u32v(cfg.hidden_size)),
        (
            format!("{arch}.feed_forward_length"),
            u32v(cfg.intermediate_size),
        ),
        (
            format!("{arch}.attention.head_count"),
            u32v(cfg.num_attention_heads),
        ),
        (
            format!("{arch}.attention.head_count_kv"),
            u32v(cfg.num_key_value_heads),
        ),
        (format!("{arch}.attention.key_length"), u32v(cfg.head_dim)),
        (format!("{arch}.attention.value_length"), u32v(cfg.head_dim)),
        (
            format!("{arch}.attention.layer_norm_rms_epsilon"),
            Value::F32(cfg.rms_norm_eps as f32),
        ),
        (
            format!("{arch}.rope.freq_base"),
            Value::F32(cfg.rope_theta as f32),
        ),
        (
            format!("{arch}.context_length"),
            u32v(cfg.max_position_embeddings),
        ),
        (format!("{arch}.vocab_size"), u32v(cfg.vocab_size)),
        (
            "mimo.nextn_predict_layers".into(),
            u32v(cfg.num_nextn_predict_layers),
        ),
        (
            "mimo.mtp_hidden".into(),
            Value::String(match cfg.mtp_hidden {
                MtpHidden::PreNorm => "pre_norm".into(),
                MtpHidden::PostNorm => "post_norm".into(),
            }),
        ),
        (
            "mimo.mtp_zero_pos0_embedding".into(),
            Value::Bool(cfg.mtp_zero_pos0_embedding),
        ),
    ];
    if let Some(b) = cfg.bos_token_id {
        meta.push(("tokenizer.ggml.bos_token_id".into(), Value::U32(b)));
    }
    if let Some(&e) = cfg.eos_token_ids.first() {
        meta.push(("tokenizer.ggml.eos_token_id".into(), Value::U32(e)));
    }
    let tmp = out.with_extension("gguf.partial");
    let io = |source| ModelError::Io {
        path: tmp.clone(),
        source,
    };
    let mut w = std::io::BufWriter::new(File::create(&tmp).map_err(io)?);
    let meta_refs: Vec<(&str, &Value)> = meta.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let t_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    candle_core::quantized::gguf_file::write(&mut w, &meta_refs, &t_refs)
        .map_err(|e| gguf_err(&tmp, format!("writing: {}", first_line(&e))))?;
    std::io::Write::flush(&mut w).map_err(io)?;
    drop(w);
    std::fs::rename(&tmp, out).map_err(io)?;
    let bytes = std::fs::metadata(out).map(|m| m.len()).unwrap_or(0);
    Ok((tensors.len(), bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_to_llama_cpp() {
        assert_eq!(gguf_name("model.embed_tokens.weight"), "token_embd.weight");
        assert_eq!(
            gguf_name("model.layers.3.self_attn.q_proj.bias"),
            "blk.3.attn_q.bias"
        );
        assert_eq!(
            gguf_name("model.layers.0.mlp.down_proj.weight"),
            "blk.0.ffn_down.weight"
        );
        assert_eq!(
            gguf_name("model.mtp_layers.1.input_proj.weight"),
            "mtp.1.input_proj.weight"
        );
        assert_eq!(
            gguf_name("model.mtp_layers.0.post_attention_layernorm.weight"),
            "mtp.0.ffn_norm.weight"
        );
    }

    #[test]
    fn llama_permutation_undoes_the_converter() {
        // The converter: w.reshape(heads, 2, d/2, ...).swapaxes(1, 2): GGUF row h*d + 2j + i holds HF row
        // h*d + i*d/2 + j.
        let (heads, d) = (2, 4);
        let perm = llama_qk_perm(heads * d, d);
        assert_eq!(perm, vec![0, 2, 1, 3, 4, 6, 5, 7]);
    }
}
