//! The MiMo model for inference (candle): a Qwen2 decoder plus `num_nextn_predict_layers` MTP layers
//! (design §1.2–1.4, §7). With zero MTP layers this is exactly Qwen2 (or Llama without q/k/v bias).
//!
//! Shapes: `b` batch, `t` new positions, `T` cached + new positions, `H` hidden size, `V` vocab.
//! Every forward is per position: the engine needs all positions' logits to verify MTP drafts.

use candle_core::{DType, Device, Tensor, D};

use crate::attention::{attend, Heads};
use crate::cache::KvCache;
use crate::config::{ModelConfig, MtpHidden};
use crate::error::{ModelError, Result};
use crate::gguf::{GgufFile, GgufSource};
use crate::linear::{Embed, Proj, QuantType, RawWeight, WeightPlan};
use crate::weights::{expected_tensors, TensorSpec, WeightStore};

/// An RMSNorm weight (`y = w ⊙ x / sqrt(mean(x²) + eps)`), computed in f32 inside candle's fused kernel.
#[derive(Debug, Clone)]
struct RmsNorm {
    weight: Tensor,
    eps: f32,
}

impl RmsNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(candle_nn::ops::rms_norm(
            &x.contiguous()?,
            &self.weight,
            self.eps,
        )?)
    }
}

/// Rotary position embedding, "rotate-half" layout, tables and rotation in f32 (design §1.2).
#[derive(Debug, Clone)]
struct Rope {
    /// θ^(−2i/d) for i in 0..d/2, computed in f32 as transformers does.
    inv_freq: Vec<f32>,
}

impl Rope {
    fn new(cfg: &ModelConfig) -> Self {
        let d = cfg.head_dim;
        let base = cfg.rope_theta as f32;
        let inv_freq = (0..d)
            .step_by(2)
            .map(|i| 1.0 / base.powf(i as f32 / d as f32))
            .collect();
        Self { inv_freq }
    }

    /// cos/sin tables for row `r` at positions `starts[r]..starts[r]+t`: `[t, d/2]` for one row,
    /// `[b, t, d/2]` for several. Computed once per forward and shared by every layer.
    fn tables(&self, starts: &[usize], t: usize, device: &Device) -> Result<RopeTables> {
        let half = self.inv_freq.len();
        let mut freqs = Vec::with_capacity(starts.len() * t * half);
        for &start in starts {
            for p in start..start + t {
                freqs.extend(self.inv_freq.iter().map(|f| p as f32 * f));
            }
        }
        let freqs = if starts.len() == 1 {
            Tensor::from_vec(freqs, (t, half), device)?
        } else {
            Tensor::from_vec(freqs, (starts.len(), t, half), device)?
        };
        Ok(RopeTables {
            cos: freqs.cos()?,
            sin: freqs.sin()?,
        })
    }
}

/// The cos/sin tables of one forward's positions.
#[derive(Debug, Clone)]
struct RopeTables {
    cos: Tensor,
    sin: Tensor,
}

impl RopeTables {
    /// Rotates `x` (`[b, heads, t, d]`) in f32 and returns it in f32.
    fn apply(&self, x: &Tensor) -> Result<Tensor> {
        let x = x.to_dtype(DType::F32)?.contiguous()?;
        Ok(candle_nn::rotary_emb::rope(&x, &self.cos, &self.sin)?)
    }
}

/// Grouped-query self-attention with optional q/k/v bias and no o_proj bias.
#[derive(Debug, Clone)]
struct Attention {
    /// `q_proj`, `k_proj` and `v_proj` merged (outputs side by side).
    qkv_proj: Proj,
    o_proj: Proj,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
}

impl Attention {
    /// One batched attention over rows at different positions (continuous batching): the cache stores each
    /// row's new keys/values and hands back what attention reads (paged storage or a padded batch).
    fn forward(
        &self,
        x: &Tensor,
        rope: &RopeTables,
        starts: &[usize],
        cache_layer: usize,
        cache: &mut dyn KvCache,
    ) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        let dtype = x.dtype();
        let d = self.head_dim;
        let split = |y: Tensor, heads: usize| -> Result<Tensor> {
            Ok(y.reshape((b, t, heads, d))?.transpose(1, 2)?)
        };
        let qkv = self.qkv_proj.forward(x)?;
        let (nq, nkv) = (self.n_heads * d, self.n_kv_heads * d);
        let q = rope.apply(&split(qkv.narrow(D::Minus1, 0, nq)?, self.n_heads)?)?;
        let k = rope
            .apply(&split(qkv.narrow(D::Minus1, nq, nkv)?, self.n_kv_heads)?)?
            .to_dtype(dtype)?;
        let v = split(qkv.narrow(D::Minus1, nq + nkv, nkv)?, self.n_kv_heads)?.contiguous()?;
        let kv = cache.update_batch(cache_layer, starts, &k, &v)?;
        let heads = Heads {
            n_kv_heads: self.n_kv_heads,
            head_dim: d,
        };
        let out = attend(&q, kv, starts, heads)?
            .to_dtype(dtype)?
            .transpose(1, 2)?
            .reshape((b, t, self.n_heads * d))?;
        self.o_proj.forward(&out)
    }
}

/// SwiGLU feed-forward: `down(silu(gate x) ⊙ up x)`.
#[derive(Debug, Clone)]
struct Mlp {
    /// `gate_proj` and `up_proj` merged (outputs side by side).
    gate_up_proj: Proj,
    down_proj: Proj,
    intermediate_size: usize,
}

impl Mlp {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let gate_up = self.gate_up_proj.forward(x)?;
        let i = self.intermediate_size;
        let gate = gate_up.narrow(D::Minus1, 0, i)?.silu()?;
        let up = gate_up.narrow(D::Minus1, i, i)?;
        self.down_proj.forward(&(gate * up)?)
    }
}

/// One pre-norm Qwen2 decoder layer.
#[derive(Debug, Clone)]
struct DecoderLayer {
    input_layernorm: RmsNorm,
    self_attn: Attention,
    post_attention_layernorm: RmsNorm,
    mlp: Mlp,
    cache_layer: usize,
}

impl DecoderLayer {
    fn forward(
        &self,
        x: &Tensor,
        rope: &RopeTables,
        starts: &[usize],
        cache: &mut dyn KvCache,
    ) -> Result<Tensor> {
        let a = self.input_layernorm.forward(x)?;
        let a = self
            .self_attn
            .forward(&a, rope, starts, self.cache_layer, cache)?;
        let x = (x + a)?;
        let m = self
            .mlp
            .forward(&self.post_attention_layernorm.forward(&x)?)?;
        Ok((x + m)?)
    }
}

/// One MTP layer (design §1.3): norms of the hidden state and of the next token's embedding, `input_proj` over
/// `concat[hidden, embedding]`, one decoder layer with its own KV cache, and `final_layernorm` before the shared
/// `lm_head`.
#[derive(Debug, Clone)]
struct MtpLayer {
    token_layernorm: RmsNorm,
    hidden_layernorm: RmsNorm,
    input_proj: Proj,
    block: DecoderLayer,
    final_layernorm: RmsNorm,
    /// The checkpoint prefix the weights came from (`model.mtp_layers.{k}`).
    origin: String,
}

/// Output of the main model over `t` positions.
#[derive(Debug, Clone)]
pub struct MainOutput {
    /// Logits `[b, t, V]` in f32.
    pub logits: Tensor,
    /// The last decoder layer's output before `model.norm`, `[b, t, H]` in the weight dtype.
    pub hidden: Tensor,
}

/// Output of one MTP layer over `t` draft rows.
#[derive(Debug, Clone)]
pub struct MtpOutput {
    /// Draft logits `[b, t, V]` in f32.
    pub logits: Tensor,
    /// The MTP block's output before `final_layernorm`, `[b, t, H]`.
    pub hidden: Tensor,
}

/// The MiMo model: Qwen2 decoder + MTP layers sharing `embed_tokens` and `lm_head`.
#[derive(Debug, Clone)]
pub struct MimoModel {
    cfg: ModelConfig,
    embed_tokens: Embed,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    lm_head: Proj,
    mtp_layers: Vec<MtpLayer>,
    rope: Rope,
    dtype: DType,
    device: Device,
}

/// Where the loader reads named tensors from: a checkpoint on disk, a GGUF file, or weights handed over in memory.
trait TensorSource {
    fn get(&self, name: &str, shape: &[usize], dtype: DType, device: &Device) -> Result<Tensor>;

    /// A weight matrix as stored: GGUF sources keep quantized blocks and their own float dtype.
    fn raw(&self, name: &str, shape: &[usize], dtype: DType, device: &Device) -> Result<RawWeight> {
        Ok(RawWeight::Float(self.get(name, shape, dtype, device)?))
    }

    /// The float dtype a tensor is stored in, when the source knows it.
    fn stored_dtype(&self, _name: &str) -> Option<DType> {
        None
    }
}

impl TensorSource for WeightStore {
    fn get(&self, name: &str, shape: &[usize], dtype: DType, device: &Device) -> Result<Tensor> {
        WeightStore::get(self, name, shape, dtype, device)
    }

    fn stored_dtype(&self, name: &str) -> Option<DType> {
        match self.info(name)?.dtype {
            safetensors::Dtype::BF16 => Some(DType::BF16),
            safetensors::Dtype::F16 => Some(DType::F16),
            _ => Some(DType::F32),
        }
    }
}

impl TensorSource for GgufSource<'_> {
    fn get(&self, name: &str, shape: &[usize], dtype: DType, device: &Device) -> Result<Tensor> {
        GgufSource::get(self, name, shape, dtype, device)
    }

    fn raw(
        &self,
        name: &str,
        shape: &[usize],
        _dtype: DType,
        device: &Device,
    ) -> Result<RawWeight> {
        GgufSource::raw(self, name, shape, device)
    }
}

/// Weights handed over in process (e.g. by the RL trainer after an update): name → (shape, f32 values).
pub type HostWeights = std::collections::HashMap<String, (Vec<usize>, Vec<f32>)>;

impl TensorSource for HostWeights {
    fn get(&self, name: &str, shape: &[usize], dtype: DType, device: &Device) -> Result<Tensor> {
        let (stored, data) = self
            .get(name)
            .ok_or_else(|| ModelError::Input(format!("in-memory weights lack tensor `{name}`")))?;
        if stored.as_slice() != shape || data.len() != shape.iter().product::<usize>() {
            return Err(ModelError::Input(format!(
                "in-memory tensor `{name}` has shape {stored:?} ({} values), expected {shape:?}",
                data.len()
            )));
        }
        Ok(Tensor::from_slice(data, shape, &Device::Cpu)?
            .to_dtype(dtype)?
            .to_device(device)?)
    }
}

/// Writes `weights` as one f32 safetensors file at `path` (through a temporary file and a rename, so a reader
/// never sees a torn file): with the model's `config.json` beside it, a checkpoint any engine can load. Used to
/// hand RL weights to remote rollout servers.
pub fn save_host_weights(weights: &HostWeights, path: &std::path::Path) -> Result<()> {
    let mut names: Vec<&String> = weights.keys().collect();
    names.sort();
    let bytes: Vec<(&String, &Vec<usize>, Vec<u8>)> = names
        .into_iter()
        .map(|n| {
            let (shape, data) = &weights[n];
            (
                n,
                shape,
                data.iter().flat_map(|x| x.to_le_bytes()).collect(),
            )
        })
        .collect();
    let views = bytes
        .iter()
        .map(|(n, shape, b)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.to_vec(), b)
                .map(|v| (n.as_str(), v))
        })
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| ModelError::Input(format!("{}: {e}", path.display())))?;
    let io = |e| ModelError::Io {
        path: path.to_path_buf(),
        source: e,
    };
    let tmp = path.with_extension("safetensors.tmp");
    safetensors::serialize_to_file(views, None, &tmp)
        .map_err(|e| ModelError::Input(format!("{}: {e}", tmp.display())))?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// How weights are held in memory: the dtype float weights are loaded in, and an optional block quantization
/// applied at load (`--quant`). On the CPU activations are f32 whatever the weights.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WeightFormat {
    /// Dtype of float weights (f32, bf16, f16). GGUF files keep their own formats.
    pub dtype: DType,
    /// Quantize float linear weights and the embedding table to this format (MTP layers included).
    pub quant: Option<QuantType>,
}

impl WeightFormat {
    /// Float weights in `dtype`, no quantization.
    pub fn float(dtype: DType) -> Self {
        Self { dtype, quant: None }
    }

    /// The format named by `--dtype` (see [`crate::parse_dtype`]) and `--quant` on `device`: the one parser of
    /// both options, for every command and the server.
    pub fn parse(dtype: &str, quant: Option<&str>, device: &candle_core::Device) -> Result<Self> {
        Ok(Self {
            dtype: crate::parse_dtype(dtype, device)?,
            quant: quant.map(QuantType::parse).transpose()?,
        })
    }
}

/// Builds the modules of the model from a tensor source, one tensor at a time.
struct Loader<'a> {
    store: &'a dyn TensorSource,
    cfg: &'a ModelConfig,
    /// Dtype float weights are read in.
    wdtype: DType,
    plan: WeightPlan,
}

impl Loader<'_> {
    /// A small tensor (norm weight, bias) in the activation dtype.
    fn tensor(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        self.store
            .get(name, shape, self.plan.act, &self.plan.device)
    }

    fn raw(&self, name: &str, shape: &[usize]) -> Result<RawWeight> {
        // Weights to quantize are read in their stored dtype and widened chunk by chunk while quantizing.
        let dtype = if self.plan.quant.is_some() {
            self.store.stored_dtype(name).unwrap_or(DType::F32)
        } else {
            self.wdtype
        };
        let device = if self.plan.quant.is_some() {
            &Device::Cpu
        } else {
            &self.plan.device
        };
        self.store.raw(name, shape, dtype, device)
    }

    fn norm(&self, name: &str) -> Result<RmsNorm> {
        Ok(RmsNorm {
            weight: self.tensor(&format!("{name}.weight"), &[self.cfg.hidden_size])?,
            eps: self.cfg.rms_norm_eps as f32,
        })
    }

    fn linear(&self, name: &str, out: usize, inp: usize, bias: bool) -> Result<Proj> {
        self.merged_linear(&[(name, out)], inp, bias)
    }

    /// One projection computing the checkpoint's projections `parts` (name, output size) side by side, as
    /// vLLM's merged QKV and gate/up projections: one matmul instead of several.
    fn merged_linear(&self, parts: &[(&str, usize)], inp: usize, bias: bool) -> Result<Proj> {
        let parts = parts
            .iter()
            .map(|&(name, out)| {
                let w = self.raw(&format!("{name}.weight"), &[out, inp])?;
                let b = if bias {
                    Some(self.tensor(&format!("{name}.bias"), &[out])?)
                } else {
                    None
                };
                Ok((w, b))
            })
            .collect::<Result<Vec<_>>>()?;
        Proj::merged(parts, &self.plan)
    }

    fn decoder_layer(&self, prefix: &str, cache_layer: usize) -> Result<DecoderLayer> {
        let c = self.cfg;
        let (h, i) = (c.hidden_size, c.intermediate_size);
        let q = c.num_attention_heads * c.head_dim;
        let kv = c.num_key_value_heads * c.head_dim;
        let a = format!("{prefix}.self_attn");
        let m = format!("{prefix}.mlp");
        Ok(DecoderLayer {
            input_layernorm: self.norm(&format!("{prefix}.input_layernorm"))?,
            self_attn: Attention {
                qkv_proj: self.merged_linear(
                    &[
                        (&format!("{a}.q_proj"), q),
                        (&format!("{a}.k_proj"), kv),
                        (&format!("{a}.v_proj"), kv),
                    ],
                    h,
                    c.qkv_bias,
                )?,
                o_proj: self.linear(&format!("{a}.o_proj"), h, q, false)?,
                n_heads: c.num_attention_heads,
                n_kv_heads: c.num_key_value_heads,
                head_dim: c.head_dim,
            },
            post_attention_layernorm: self.norm(&format!("{prefix}.post_attention_layernorm"))?,
            mlp: Mlp {
                gate_up_proj: self.merged_linear(
                    &[(&format!("{m}.gate_proj"), i), (&format!("{m}.up_proj"), i)],
                    h,
                    false,
                )?,
                intermediate_size: i,
                down_proj: self.linear(&format!("{m}.down_proj"), h, i, false)?,
            },
            cache_layer,
        })
    }

    fn mtp_layer(&self, k: usize) -> Result<MtpLayer> {
        let p = format!("model.mtp_layers.{k}");
        let h = self.cfg.hidden_size;
        Ok(MtpLayer {
            token_layernorm: self.norm(&format!("{p}.token_layernorm"))?,
            hidden_layernorm: self.norm(&format!("{p}.hidden_layernorm"))?,
            input_proj: self.linear(&format!("{p}.input_proj"), h, 2 * h, false)?,
            block: self.decoder_layer(&p, self.cfg.mtp_cache_layer(k))?,
            final_layernorm: self.norm(&format!("{p}.final_layernorm"))?,
            origin: p,
        })
    }
}

impl MimoModel {
    /// Loads the model from an opened weight store. Every required tensor is checked (presence, shape, dtype)
    /// before any is read, so a bad checkpoint fails fast with the tensor's name.
    pub fn load(
        store: &WeightStore,
        cfg: &ModelConfig,
        fmt: WeightFormat,
        device: &Device,
    ) -> Result<Self> {
        store.check_all(&expected_tensors(cfg))?;
        store.check_layer_counts(cfg)?;
        Self::build(store, cfg, fmt, device)
    }

    /// Builds the model from weights held in memory (names and shapes as in the HF checkpoint), e.g. the RL
    /// trainer's policy after an update: no disk round-trip.
    pub fn from_host_weights(
        weights: &HostWeights,
        cfg: &ModelConfig,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        Self::build(weights, cfg, WeightFormat::float(dtype), device)
    }

    /// Loads the model from a GGUF file (config from its metadata; weights keep the file's formats unless
    /// `fmt.quant` re-quantizes float ones).
    pub fn from_gguf(file: &GgufFile, fmt: WeightFormat, device: &Device) -> Result<Self> {
        let cfg = file.config()?;
        let source = GgufSource { file, cfg: &cfg };
        Self::build(&source, &cfg, fmt, device)
    }

    fn build(
        store: &dyn TensorSource,
        cfg: &ModelConfig,
        fmt: WeightFormat,
        device: &Device,
    ) -> Result<Self> {
        if !matches!(fmt.dtype, DType::F32 | DType::BF16 | DType::F16) {
            return Err(ModelError::Input(format!(
                "unsupported weight dtype {:?} (use f32, bf16 or f16)",
                fmt.dtype
            )));
        }
        // On the CPU activations are f32 whatever the weights (half and quantized weights only cut the bytes read).
        let act = if device.is_cpu() {
            DType::F32
        } else {
            fmt.dtype
        };
        let ld = Loader {
            store,
            cfg,
            wdtype: fmt.dtype,
            plan: WeightPlan {
                act,
                quant: fmt.quant,
                device: device.clone(),
            },
        };
        let (h, v) = (cfg.hidden_size, cfg.vocab_size);
        let embed = Embed::new(ld.raw("model.embed_tokens.weight", &[v, h])?, &ld.plan)?;
        let lm_head = if cfg.tie_word_embeddings {
            Proj::tied(&embed, &ld.plan)?
        } else {
            ld.linear("lm_head", v, h, false)?
        };
        let layers = (0..cfg.num_hidden_layers)
            .map(|l| ld.decoder_layer(&format!("model.layers.{l}"), l))
            .collect::<Result<Vec<_>>>()?;
        let mtp_layers = (0..cfg.num_nextn_predict_layers)
            .map(|k| ld.mtp_layer(k))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            embed_tokens: embed,
            layers,
            norm: ld.norm("model.norm")?,
            lm_head,
            mtp_layers,
            rope: Rope::new(cfg),
            dtype: act,
            device: device.clone(),
            cfg: cfg.clone(),
        })
    }

    /// Opens `dir` (config + safetensors weights) and loads the model with float weights in `dtype`.
    pub fn from_dir(dir: &std::path::Path, dtype: DType, device: &Device) -> Result<Self> {
        Self::open(dir, WeightFormat::float(dtype), device)
    }

    /// Opens a model: an HF directory (config.json + safetensors), a `.gguf` file, or a directory holding
    /// `model.gguf` (what `mimo quantize` writes). The one way every command opens `--model`.
    pub fn open(path: &std::path::Path, fmt: WeightFormat, device: &Device) -> Result<Self> {
        match crate::gguf::gguf_path(path) {
            Some(file) => Self::from_gguf(&GgufFile::open(&file)?, fmt, device),
            None => {
                let cfg = ModelConfig::from_dir(path)?;
                let store = WeightStore::open(path)?;
                Self::load(&store, &cfg, fmt, device)
            }
        }
    }

    /// The model's config.
    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    /// The activation dtype (f32 on the CPU; the weight dtype on accelerators).
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Number of MTP layers.
    pub fn num_mtp_layers(&self) -> usize {
        self.mtp_layers.len()
    }

    fn check_ids(&self, ids: &Tensor) -> Result<()> {
        let max = ids
            .flatten_all()?
            .max(0)?
            .to_dtype(DType::U32)?
            .to_scalar::<u32>()?;
        if max as usize >= self.cfg.vocab_size {
            return Err(ModelError::Input(format!(
                "token id {max} is out of range for vocab_size {}",
                self.cfg.vocab_size
            )));
        }
        Ok(())
    }

    /// Token embeddings `[b, t, H]` from the shared `model.embed_tokens`.
    pub fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        self.check_ids(ids)?;
        self.embed_tokens.forward(ids, self.dtype)
    }

    /// `lm_head · x` in f32 (the input is already normalised).
    pub fn lm_head(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.lm_head.forward(x)?.to_dtype(DType::F32)?)
    }

    /// The main model over `ids` (`[b, t]`, u32) at positions `start_pos..start_pos+t` for every row, using
    /// and extending `cache`. Returns per-position logits and the pre-norm hidden states.
    pub fn forward(
        &self,
        ids: &Tensor,
        start_pos: usize,
        cache: &mut dyn KvCache,
    ) -> Result<MainOutput> {
        let (b, _) = ids.dims2()?;
        self.forward_rows(ids, &vec![start_pos; b], cache)
    }

    /// Like [`MimoModel::forward`], with row `r` at positions `starts[r]..starts[r]+t` (continuous batching:
    /// sequences of different lengths decode together).
    pub fn forward_rows(
        &self,
        ids: &Tensor,
        starts: &[usize],
        cache: &mut dyn KvCache,
    ) -> Result<MainOutput> {
        let hidden = self.hidden_rows(ids, starts, cache)?;
        let logits = self.logits(&hidden)?;
        Ok(MainOutput { logits, hidden })
    }

    /// The decoder stack only: pre-norm hidden states `[b, t, H]`, no `lm_head` (callers that need logits of a
    /// few rows — the last prompt position, the verified drafts — compute them with [`MimoModel::logits`]).
    pub fn hidden_rows(
        &self,
        ids: &Tensor,
        starts: &[usize],
        cache: &mut dyn KvCache,
    ) -> Result<Tensor> {
        check_rows(ids, starts)?;
        let mut x = self.embed(ids)?;
        let rope = self.rope.tables(starts, ids.dim(1)?, &self.device)?;
        for layer in &self.layers {
            x = layer.forward(&x, &rope, starts, cache)?;
        }
        Ok(x)
    }

    /// Main-model logits (f32) of pre-norm hidden states (any leading shape).
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        self.lm_head(&self.norm.forward(hidden)?)
    }

    /// The hidden state the MTP layers read, per `mtp_hidden` (design §7.1): the pre-norm residual stream by
    /// default, or `model.norm` of it.
    pub fn mtp_input_hidden(&self, hidden: &Tensor) -> Result<Tensor> {
        match self.cfg.mtp_hidden {
            MtpHidden::PreNorm => Ok(hidden.clone()),
            MtpHidden::PostNorm => self.norm.forward(hidden),
        }
    }

    /// MTP layer `k` over draft rows: row `i` pairs `hidden[:, i]` (the main model's state at position
    /// `start_pos + i`) with the embedding of `next_ids[:, i]` (the token one step ahead), runs at RoPE position
    /// `start_pos + i` and predicts the token after `next_ids[:, i]` (design §7.2–7.3). `hidden` is the output of
    /// [`MimoModel::mtp_input_hidden`]. Uses the cache layer `num_hidden_layers + k`.
    pub fn mtp_layer(
        &self,
        k: usize,
        hidden: &Tensor,
        next_ids: &Tensor,
        start_pos: usize,
        cache: &mut dyn KvCache,
    ) -> Result<MtpOutput> {
        let (b, _) = next_ids.dims2()?;
        self.mtp_layer_rows(k, hidden, next_ids, &vec![start_pos; b], cache)
    }

    /// Like [`MimoModel::mtp_layer`], with row `r` at positions `starts[r]..`.
    pub fn mtp_layer_rows(
        &self,
        k: usize,
        hidden: &Tensor,
        next_ids: &Tensor,
        starts: &[usize],
        cache: &mut dyn KvCache,
    ) -> Result<MtpOutput> {
        let u = self.mtp_hidden_rows(k, hidden, next_ids, starts, cache)?;
        let logits = self.mtp_logits(k, &u)?;
        Ok(MtpOutput { logits, hidden: u })
    }

    /// MTP layer `k`'s block output (before `final_layernorm`) over draft rows, no `lm_head`.
    pub fn mtp_hidden_rows(
        &self,
        k: usize,
        hidden: &Tensor,
        next_ids: &Tensor,
        starts: &[usize],
        cache: &mut dyn KvCache,
    ) -> Result<Tensor> {
        check_rows(next_ids, starts)?;
        let layer = self.mtp(k)?;
        let (b, t) = next_ids.dims2()?;
        let mut e = self.embed(next_ids)?;
        if self.cfg.mtp_zero_pos0_embedding && starts.contains(&0) {
            // vLLM's convention: the row at position 0 sees a zero token embedding.
            let mask: Vec<f32> = starts
                .iter()
                .flat_map(|&s| (0..t).map(move |i| if s + i == 0 { 0.0 } else { 1.0 }))
                .collect();
            let mask = Tensor::from_vec(mask, (b, t, 1), &self.device)?.to_dtype(e.dtype())?;
            e = e.broadcast_mul(&mask)?;
        }
        let e = layer.token_layernorm.forward(&e)?;
        let h = layer.hidden_layernorm.forward(hidden)?;
        let u = layer
            .input_proj
            .forward(&Tensor::cat(&[&h, &e], D::Minus1)?)?;
        let rope = self.rope.tables(starts, t, &self.device)?;
        layer.block.forward(&u, &rope, starts, cache)
    }

    /// Draft logits (f32) of MTP layer `k` from its block output: `lm_head(final_layernorm(u))`.
    pub fn mtp_logits(&self, k: usize, u: &Tensor) -> Result<Tensor> {
        self.lm_head(&self.mtp(k)?.final_layernorm.forward(u)?)
    }

    /// The checkpoint prefix MTP layer `k` was loaded from and its KV cache layer: the engine checks at load that
    /// draft step `j` runs the layer loaded from `model.mtp_layers.{j-1}`.
    pub fn mtp_layer_origin(&self, k: usize) -> Result<(&str, usize)> {
        let layer = self.mtp(k)?;
        Ok((&layer.origin, layer.block.cache_layer))
    }

    fn mtp(&self, k: usize) -> Result<&MtpLayer> {
        self.mtp_layers.get(k).ok_or_else(|| {
            ModelError::Input(format!(
                "MTP layer {k} requested, the model has {}",
                self.mtp_layers.len()
            ))
        })
    }

    /// Teacher-forced forward of one sequence with a fresh cache, as `mimo forward` prints it: main logits
    /// `[n, V]` and, for each MTP layer `k`, logits `[n-1-k, V]` where row `p` uses `h_p` and token `x_{p+1+k}`
    /// to predict `x_{p+2+k}` (design §7.2).
    pub fn forward_teacher_forced(&self, ids: &[u32]) -> Result<(Tensor, Vec<Tensor>)> {
        if ids.is_empty() {
            return Err(ModelError::Input("no input ids".into()));
        }
        let n = ids.len();
        let mut cache = crate::cache::ContiguousKvCache::new(self.cfg.num_cache_layers());
        let input = Tensor::new(ids, &self.device)?.unsqueeze(0)?;
        let main = self.forward(&input, 0, &mut cache)?;
        let hidden = self.mtp_input_hidden(&main.hidden)?;
        let mut mtp = Vec::with_capacity(self.mtp_layers.len());
        for k in 0..self.mtp_layers.len() {
            let rows = n.saturating_sub(1 + k);
            if rows == 0 {
                mtp.push(Tensor::zeros(
                    (0, self.cfg.vocab_size),
                    DType::F32,
                    &self.device,
                )?);
                continue;
            }
            let h = hidden.narrow(1, 0, rows)?;
            let next = input.narrow(1, 1 + k, rows)?;
            let out = self.mtp_layer(k, &h, &next, 0, &mut cache)?;
            mtp.push(out.logits.squeeze(0)?);
        }
        Ok((main.logits.squeeze(0)?, mtp))
    }
}

/// Checks that `starts` has one entry per row of `ids`.
fn check_rows(ids: &Tensor, starts: &[usize]) -> Result<()> {
    let (b, t) = ids.dims2()?;
    if b != starts.len() || b == 0 || t == 0 {
        return Err(ModelError::Input(format!(
            "batch of {b} rows × {t} positions with {} start positions",
            starts.len()
        )));
    }
    Ok(())
}

/// Parameter counts of a config: (main model, MTP layers).
pub fn parameter_counts(cfg: &ModelConfig) -> (usize, usize) {
    let specs: Vec<TensorSpec> = expected_tensors(cfg);
    let mtp = specs
        .iter()
        .filter(|s| s.is_mtp())
        .map(TensorSpec::numel)
        .sum();
    let main = specs
        .iter()
        .filter(|s| !s.is_mtp())
        .map(TensorSpec::numel)
        .sum();
    (main, mtp)
}
