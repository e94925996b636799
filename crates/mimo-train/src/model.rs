//! The training-side MiMo model on libtorch (tch): the Qwen2 decoder plus `num_nextn_predict_layers` MTP layers
//! (design §1.2–1.4, §7.1–7.2), differentiable end to end, with the checkpoint's tensor names.
//!
//! Every op is a plain libtorch op with autograd: RMSNorm composed in f32, RoPE "rotate-half" with f32 tables,
//! GQA by repeating KV heads, `scaled_dot_product_attention` with a causal mask, SwiGLU. Windows are packed
//! documents separated by EOS and **attention crosses document boundaries** (plain GPT-style packing; positions
//! run 0..T over the window), which keeps the fused causal SDPA kernel.

use std::collections::BTreeMap;
use std::path::Path;

use mimo_model::{expected_tensors, Arch, ModelConfig, MtpHidden, TensorSpec, WeightStore};
use serde_json::{Map, Value};
use tch::{Device, Kind, Tensor};

use crate::error::{Result, TrainError};
use crate::io::{atomic_dir, write_safetensors_f32};

/// One trainable tensor with its checkpoint name.
#[derive(Debug)]
pub struct Param {
    /// Checkpoint name (`model.layers.0.self_attn.q_proj.weight`, ...).
    pub name: String,
    /// The leaf tensor (requires grad).
    pub tensor: Tensor,
    /// Whether AdamW applies weight decay (matrices and embeddings yes; norms and biases no).
    pub decay: bool,
}

#[derive(Debug)]
struct Linear {
    w: Tensor,
    b: Option<Tensor>,
}

impl Linear {
    fn forward(&self, x: &Tensor) -> Tensor {
        x.linear(&self.w, self.b.as_ref())
    }
}

#[derive(Debug)]
struct RmsNorm {
    w: Tensor,
    eps: f64,
}

impl RmsNorm {
    /// `w ⊙ x / sqrt(mean(x²) + eps)`, the normalisation in f32 (as Qwen2 does).
    fn forward(&self, x: &Tensor) -> Tensor {
        let kind = x.kind();
        let xf = x.to_kind(Kind::Float);
        let var = xf.square().mean_dim(-1, true, Kind::Float);
        let y = (xf * (var + self.eps).rsqrt()).to_kind(kind);
        y * &self.w
    }
}

#[derive(Debug)]
struct Attention {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    n_heads: i64,
    n_kv: i64,
    head_dim: i64,
}

fn rotate_half(x: &Tensor) -> Tensor {
    let d = x.size()[3];
    let x1 = x.narrow(3, 0, d / 2);
    let x2 = x.narrow(3, d / 2, d / 2);
    Tensor::cat(&[x2.neg(), x1], 3)
}

/// Rotates `x` `[b, h, t, d]` with cos/sin `[t, d]` in f32.
fn apply_rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Tensor {
    let kind = x.kind();
    let xf = x.to_kind(Kind::Float);
    (&xf * cos + rotate_half(&xf) * sin).to_kind(kind)
}

fn repeat_kv(x: &Tensor, n_rep: i64) -> Tensor {
    if n_rep == 1 {
        return x.shallow_clone();
    }
    let s = x.size();
    let (b, kv, t, d) = (s[0], s[1], s[2], s[3]);
    x.unsqueeze(2)
        .expand([b, kv, n_rep, t, d], false)
        .reshape([b, kv * n_rep, t, d])
}

impl Attention {
    fn forward(&self, x: &Tensor, cos: &Tensor, sin: &Tensor) -> Tensor {
        let s = x.size();
        let (b, t) = (s[0], s[1]);
        let split = |y: Tensor, h: i64| y.view([b, t, h, self.head_dim]).transpose(1, 2);
        let q = apply_rope(&split(self.q.forward(x), self.n_heads), cos, sin);
        let k = apply_rope(&split(self.k.forward(x), self.n_kv), cos, sin);
        let v = split(self.v.forward(x), self.n_kv);
        let n_rep = self.n_heads / self.n_kv;
        let out = Tensor::scaled_dot_product_attention(
            &q,
            &repeat_kv(&k, n_rep),
            &repeat_kv(&v, n_rep),
            None::<Tensor>,
            0.0,
            true,
            None,
            false,
        );
        let out = out
            .transpose(1, 2)
            .reshape([b, t, self.n_heads * self.head_dim]);
        self.o.forward(&out)
    }
}

#[derive(Debug)]
struct Mlp {
    gate: Linear,
    up: Linear,
    down: Linear,
}

#[derive(Debug)]
struct DecoderLayer {
    input_layernorm: RmsNorm,
    attn: Attention,
    post_attention_layernorm: RmsNorm,
    mlp: Mlp,
}

impl DecoderLayer {
    fn forward(&self, x: &Tensor, cos: &Tensor, sin: &Tensor) -> Tensor {
        let x = x + self
            .attn
            .forward(&self.input_layernorm.forward(x), cos, sin);
        let m = self.post_attention_layernorm.forward(&x);
        let m = self
            .mlp
            .down
            .forward(&(self.mlp.gate.forward(&m).silu() * self.mlp.up.forward(&m)));
        x + m
    }
}

#[derive(Debug)]
struct MtpLayer {
    token_layernorm: RmsNorm,
    hidden_layernorm: RmsNorm,
    input_proj: Linear,
    block: DecoderLayer,
    final_layernorm: RmsNorm,
}

/// Output of a teacher-forced forward over `[b, t]` ids.
#[derive(Debug)]
pub struct ForwardOutput {
    /// Main logits `[b, t, V]` (f32).
    pub logits: Tensor,
    /// MTP layer `k`'s logits `[b, t-1-k, V]`: row `p` uses `h_p` and `x_{p+1+k}` to predict `x_{p+2+k}`.
    pub mtp_logits: Vec<Tensor>,
}

/// Where the initial weights come from.
#[derive(Debug, Clone, Copy)]
pub enum Init<'a> {
    /// An HF model directory's safetensors (single file or sharded, any float dtype; loaded as f32).
    Dir(&'a Path),
    /// Fresh weights: matrices and embeddings ~ N(0, std²), norms 1, biases 0, drawn from libtorch's RNG
    /// seeded with `seed`.
    Random { std: f64, seed: u64 },
}

/// The MiMo model for training.
#[derive(Debug)]
pub struct TrainModel {
    cfg: ModelConfig,
    /// config.json as read (re-written with updated fields on save).
    config_json: Map<String, Value>,
    params: Vec<Param>,
    embed: Tensor,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    lm_head: Tensor,
    mtp: Vec<MtpLayer>,
    inv_freq: Tensor,
    device: Device,
}

/// Builds the modules, pulling each tensor from the init source and recording it as a parameter.
struct Builder<'a> {
    cfg: &'a ModelConfig,
    store: Option<WeightStore>,
    std: f64,
    device: Device,
    params: Vec<Param>,
}

enum Role {
    Matrix,
    Norm,
    Bias,
}

impl Builder<'_> {
    fn tensor(&mut self, name: &str, shape: &[usize], role: Role) -> Result<Tensor> {
        let dims: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
        let t = match &self.store {
            Some(store) => {
                let spec = TensorSpec {
                    name: name.to_string(),
                    shape: shape.to_vec(),
                };
                let c = store.load(&spec, candle_core::DType::F32, &candle_core::Device::Cpu)?;
                let data: Vec<f32> = c
                    .flatten_all()
                    .and_then(|c| c.to_vec1::<f32>())
                    .map_err(|e| TrainError::Model(format!("tensor {name}: {e}")))?;
                Tensor::from_slice(&data).reshape(&dims)
            }
            None => match role {
                Role::Matrix => Tensor::randn(&dims, (Kind::Float, Device::Cpu)) * self.std,
                Role::Norm => Tensor::ones(&dims, (Kind::Float, Device::Cpu)),
                Role::Bias => Tensor::zeros(&dims, (Kind::Float, Device::Cpu)),
            },
        };
        let t = t.to_device(self.device).set_requires_grad(true);
        self.params.push(Param {
            name: name.to_string(),
            tensor: t.shallow_clone(),
            decay: matches!(role, Role::Matrix),
        });
        Ok(t)
    }

    fn norm(&mut self, prefix: &str) -> Result<RmsNorm> {
        let w = self.tensor(
            &format!("{prefix}.weight"),
            &[self.cfg.hidden_size],
            Role::Norm,
        )?;
        Ok(RmsNorm {
            w,
            eps: self.cfg.rms_norm_eps,
        })
    }

    fn linear(&mut self, prefix: &str, out: usize, inp: usize, bias: bool) -> Result<Linear> {
        let w = self.tensor(&format!("{prefix}.weight"), &[out, inp], Role::Matrix)?;
        let b = if bias {
            Some(self.tensor(&format!("{prefix}.bias"), &[out], Role::Bias)?)
        } else {
            None
        };
        Ok(Linear { w, b })
    }

    fn decoder_layer(&mut self, p: &str) -> Result<DecoderLayer> {
        let c = self.cfg;
        let (h, i) = (c.hidden_size, c.intermediate_size);
        let q = c.num_attention_heads * c.head_dim;
        let kv = c.num_key_value_heads * c.head_dim;
        // Creation order = checkpoint order of `expected_tensors`.
        let input_layernorm = self.norm(&format!("{p}.input_layernorm"))?;
        let attn = Attention {
            q: self.linear(&format!("{p}.self_attn.q_proj"), q, h, c.qkv_bias)?,
            k: self.linear(&format!("{p}.self_attn.k_proj"), kv, h, c.qkv_bias)?,
            v: self.linear(&format!("{p}.self_attn.v_proj"), kv, h, c.qkv_bias)?,
            o: self.linear(&format!("{p}.self_attn.o_proj"), h, q, false)?,
            n_heads: c.num_attention_heads as i64,
            n_kv: c.num_key_value_heads as i64,
            head_dim: c.head_dim as i64,
        };
        let post_attention_layernorm = self.norm(&format!("{p}.post_attention_layernorm"))?;
        let mlp = Mlp {
            gate: self.linear(&format!("{p}.mlp.gate_proj"), i, h, false)?,
            up: self.linear(&format!("{p}.mlp.up_proj"), i, h, false)?,
            down: self.linear(&format!("{p}.mlp.down_proj"), h, i, false)?,
        };
        Ok(DecoderLayer {
            input_layernorm,
            attn,
            post_attention_layernorm,
            mlp,
        })
    }
}

/// Reads `config.json` text into the typed config and the raw JSON object.
fn read_config(path: &Path) -> Result<(ModelConfig, Map<String, Value>)> {
    let cfg = ModelConfig::from_file(path)?;
    let text = std::fs::read_to_string(path).map_err(|e| TrainError::io(path, e))?;
    let json: Value = serde_json::from_str(&text).map_err(|e| TrainError::Json {
        path: path.to_path_buf(),
        msg: e.to_string(),
    })?;
    let Value::Object(map) = json else {
        return Err(TrainError::Json {
            path: path.to_path_buf(),
            msg: "expected a JSON object".into(),
        });
    };
    Ok((cfg, map))
}

/// RoPE inverse frequencies `θ^(-2i/d)`, `i < d/2`, in f32.
fn inv_freq(theta: f64, head_dim: usize, device: Device) -> Tensor {
    let base = theta as f32;
    let inv: Vec<f32> = (0..head_dim)
        .step_by(2)
        .map(|i| 1.0 / base.powf(i as f32 / head_dim as f32))
        .collect();
    Tensor::from_slice(&inv).to_device(device)
}

/// Serialises seeded random initialisation (see [`TrainModel::new`]).
static RANDOM_INIT: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl TrainModel {
    /// Builds the model from `DIR/config.json` + weights ([`Init::Dir`]) or from a config file with fresh
    /// weights ([`Init::Random`], `config` is then the path of a `config.json` or of a directory holding one).
    pub fn new(init: Init<'_>, config: &Path, device: Device) -> Result<Self> {
        let cfg_path = if config.is_dir() {
            config.join("config.json")
        } else {
            config.to_path_buf()
        };
        let (cfg, config_json) = read_config(&cfg_path)?;
        // libtorch's generator is process-global: hold a lock from seeding to the last random tensor so that
        // two models initialised at once (threads, tests) each get exactly their seed's weights.
        let _seeded = matches!(init, Init::Random { .. })
            .then(|| RANDOM_INIT.lock().unwrap_or_else(|e| e.into_inner()));
        let (store, std) = match init {
            Init::Dir(dir) => {
                let store = WeightStore::open(dir)?;
                store.check_all(&expected_tensors(&cfg))?;
                (Some(store), 0.0)
            }
            Init::Random { std, seed } => {
                tch::manual_seed(seed as i64);
                (None, std)
            }
        };
        let mut b = Builder {
            cfg: &cfg,
            store,
            std,
            device,
            params: vec![],
        };
        let (h, v) = (cfg.hidden_size, cfg.vocab_size);
        let embed = b.tensor("model.embed_tokens.weight", &[v, h], Role::Matrix)?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|l| b.decoder_layer(&format!("model.layers.{l}")))
            .collect::<Result<Vec<_>>>()?;
        let norm = b.norm("model.norm")?;
        let lm_head = if cfg.tie_word_embeddings {
            embed.shallow_clone()
        } else {
            b.tensor("lm_head.weight", &[v, h], Role::Matrix)?
        };
        let mut mtp = vec![];
        for k in 0..cfg.num_nextn_predict_layers {
            let p = format!("model.mtp_layers.{k}");
            let token_layernorm = b.norm(&format!("{p}.token_layernorm"))?;
            let hidden_layernorm = b.norm(&format!("{p}.hidden_layernorm"))?;
            let input_proj = b.linear(&format!("{p}.input_proj"), h, 2 * h, false)?;
            let block = b.decoder_layer(&p)?;
            let final_layernorm = b.norm(&format!("{p}.final_layernorm"))?;
            mtp.push(MtpLayer {
                token_layernorm,
                hidden_layernorm,
                input_proj,
                block,
                final_layernorm,
            });
        }
        let params = std::mem::take(&mut b.params);
        Ok(Self {
            inv_freq: inv_freq(cfg.rope_theta, cfg.head_dim, device),
            cfg,
            config_json,
            params,
            embed,
            layers,
            norm,
            lm_head,
            mtp,
            device,
        })
    }

    /// Loads an HF model directory.
    pub fn from_dir(dir: &Path, device: Device) -> Result<Self> {
        Self::new(Init::Dir(dir), dir, device)
    }

    /// The architecture config.
    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    /// The device of the weights.
    pub fn device(&self) -> Device {
        self.device
    }

    /// The trainable parameters in checkpoint order (a tied head is the embedding, listed once).
    pub fn params(&self) -> &[Param] {
        &self.params
    }

    /// Total number of trainable scalars.
    pub fn num_params(&self) -> usize {
        self.params.iter().map(|p| p.tensor.numel()).sum()
    }

    /// Number of MTP layers.
    pub fn num_mtp_layers(&self) -> usize {
        self.mtp.len()
    }

    /// Switches RoPE to base `theta` (a pretraining stage boundary, design §2.2) and raises
    /// `max_position_embeddings` to at least `context`; checkpoints written afterwards record both in
    /// config.json (`rope_parameters.rope_theta` / `rope_scaling.rope_theta` where the input config had
    /// them, else the top-level `rope_theta`).
    pub fn set_rope(&mut self, theta: f64, context: usize) {
        self.cfg.rope_theta = theta;
        self.inv_freq = inv_freq(theta, self.cfg.head_dim, self.device);
        let mut nested = false;
        for key in ["rope_parameters", "rope_scaling"] {
            if let Some(Value::Object(o)) = self.config_json.get_mut(key) {
                if o.get("rope_theta").is_some_and(|t| !t.is_null()) {
                    o.insert("rope_theta".into(), theta.into());
                    nested = true;
                }
            }
        }
        if !nested || self.config_json.contains_key("rope_theta") {
            self.config_json.insert("rope_theta".into(), theta.into());
        }
        if context > self.cfg.max_position_embeddings {
            self.cfg.max_position_embeddings = context;
            self.config_json
                .insert("max_position_embeddings".into(), context.into());
        }
    }

    /// cos/sin tables `[t, d]` for positions `0..t`, in f32.
    fn rope(&self, t: i64) -> (Tensor, Tensor) {
        let pos = Tensor::arange(t, (Kind::Float, self.device));
        let freqs = pos.outer(&self.inv_freq);
        let emb = Tensor::cat(&[&freqs, &freqs], 1);
        (emb.cos(), emb.sin())
    }

    fn check_ids(&self, ids: &Tensor) -> Result<(i64, i64)> {
        let s = ids.size();
        if s.len() != 2 || s[0] == 0 || s[1] == 0 {
            return Err(TrainError::Input(format!(
                "ids must be [batch, len] with both > 0, got {s:?}"
            )));
        }
        let max = ids.max().int64_value(&[]);
        let min = ids.min().int64_value(&[]);
        if min < 0 || max >= self.cfg.vocab_size as i64 {
            return Err(TrainError::Input(format!(
                "token id {} is out of range for vocab_size {}",
                if min < 0 { min } else { max },
                self.cfg.vocab_size
            )));
        }
        Ok((s[0], s[1]))
    }

    /// The decoder stack over on-device `ids`: the last layer's output before `model.norm`.
    fn decoder(&self, ids: &Tensor, cos: &Tensor, sin: &Tensor) -> Tensor {
        let mut x = Tensor::embedding(&self.embed, ids, -1, false, false);
        for layer in &self.layers {
            x = layer.forward(&x, cos, sin);
        }
        x
    }

    /// Main-head logits `[b, t, V]` only, skipping the MTP layers (RL updates, where they are frozen).
    pub fn forward_main(&self, ids: &Tensor) -> Result<Tensor> {
        let (_, t) = self.check_ids(ids)?;
        let ids = ids.to_device(self.device);
        let (cos, sin) = self.rope(t);
        let x = self.decoder(&ids, &cos, &sin);
        Ok(self.norm.forward(&x).linear(&self.lm_head, None::<Tensor>))
    }

    /// Teacher-forced forward of `ids` (`[b, t]`, int64) at positions `0..t`: main logits for every position and,
    /// for MTP layer `k`, rows `p = 0..t-2-k` pairing `h_p` with the embedding of `ids[:, p+1+k]` at RoPE
    /// position `p` (design §7.2). `h` is the pre- or post-norm hidden state per `mtp_hidden`.
    pub fn forward(&self, ids: &Tensor) -> Result<ForwardOutput> {
        let (_, t) = self.check_ids(ids)?;
        let ids = ids.to_device(self.device);
        let (cos, sin) = self.rope(t);
        let x = self.decoder(&ids, &cos, &sin);
        let normed = self.norm.forward(&x);
        let logits = normed.linear(&self.lm_head, None::<Tensor>);
        let hidden = match self.cfg.mtp_hidden {
            MtpHidden::PreNorm => x,
            MtpHidden::PostNorm => normed,
        };
        let mut mtp_logits = Vec::with_capacity(self.mtp.len());
        for (k, layer) in self.mtp.iter().enumerate() {
            let rows = t - 1 - k as i64;
            if rows <= 0 {
                mtp_logits.push(Tensor::zeros(
                    [ids.size()[0], 0, self.cfg.vocab_size as i64],
                    (Kind::Float, self.device),
                ));
                continue;
            }
            let h = hidden.narrow(1, 0, rows);
            let next = ids.narrow(1, 1 + k as i64, rows);
            let mut e = Tensor::embedding(&self.embed, &next, -1, false, false);
            if self.cfg.mtp_zero_pos0_embedding {
                // vLLM's convention: the row at position 0 sees a zero token embedding.
                let mask = Tensor::ones([1, rows, 1], (e.kind(), self.device));
                let _ = mask.narrow(1, 0, 1).fill_(0.0);
                e *= mask;
            }
            let u = layer.input_proj.forward(&Tensor::cat(
                &[
                    layer.hidden_layernorm.forward(&h),
                    layer.token_layernorm.forward(&e),
                ],
                -1,
            ));
            let (c, s) = (cos.narrow(0, 0, rows), sin.narrow(0, 0, rows));
            let u = layer.block.forward(&u, &c, &s);
            let g = layer.final_layernorm.forward(&u);
            mtp_logits.push(g.linear(&self.lm_head, None::<Tensor>));
        }
        Ok(ForwardOutput { logits, mtp_logits })
    }

    /// The weights by checkpoint name, as contiguous f32 CPU tensors (detached).
    pub fn state_dict(&self) -> BTreeMap<String, Tensor> {
        self.params
            .iter()
            .map(|p| {
                (
                    p.name.clone(),
                    p.tensor
                        .detach()
                        .to_device(Device::Cpu)
                        .to_kind(Kind::Float)
                        .contiguous(),
                )
            })
            .collect()
    }

    /// Copies `tensors` (by name) into the parameters; every parameter must be present with its shape.
    pub fn load_state(&mut self, tensors: &BTreeMap<String, Tensor>, origin: &Path) -> Result<()> {
        for p in &mut self.params {
            let t = tensors.get(&p.name).ok_or_else(|| TrainError::Checkpoint {
                path: origin.to_path_buf(),
                msg: format!("tensor `{}` is missing", p.name),
            })?;
            if t.size() != p.tensor.size() {
                return Err(TrainError::Checkpoint {
                    path: origin.to_path_buf(),
                    msg: format!(
                        "tensor `{}` has shape {:?}, expected {:?}",
                        p.name,
                        t.size(),
                        p.tensor.size()
                    ),
                });
            }
            tch::no_grad(|| p.tensor.copy_(t));
        }
        Ok(())
    }

    /// config.json for a checkpoint: the input config with `model_type` `mimo` (Qwen2-family models, or any
    /// model with MTP layers; Llama without MTP stays `llama`), `architectures`, `num_nextn_predict_layers`
    /// and the f32 dtype of the written weights.
    pub fn config_json(&self) -> Value {
        let mut m = self.config_json.clone();
        let k = self.cfg.num_nextn_predict_layers;
        if !(self.cfg.arch == Arch::Llama && k == 0) {
            m.insert("model_type".into(), "mimo".into());
            m.insert(
                "architectures".into(),
                serde_json::json!(["MiMoForCausalLM"]),
            );
            m.insert("num_nextn_predict_layers".into(), k.into());
        }
        let key = if m.contains_key("torch_dtype") {
            "torch_dtype"
        } else {
            "dtype"
        };
        m.insert(key.into(), "float32".into());
        Value::Object(m)
    }

    /// Writes an HF directory (`config.json`, `model.safetensors` in f32, and `extra` files copied from other
    /// paths) to a temporary sibling and renames it to `dir` (replacing an existing one).
    pub fn save_hf(&self, dir: &Path, extra: &[(&str, &Path)]) -> Result<()> {
        atomic_dir(dir, |tmp| self.write_hf_into(tmp, extra))
    }

    /// Writes `config.json`, `model.safetensors` (f32) and the `extra` files into an existing directory.
    pub fn write_hf_into(&self, dir: &Path, extra: &[(&str, &Path)]) -> Result<()> {
        crate::io::write_json(&dir.join("config.json"), &self.config_json())?;
        write_safetensors_f32(&dir.join("model.safetensors"), &self.state_dict())?;
        for (name, src) in extra {
            std::fs::copy(src, dir.join(name)).map_err(|e| TrainError::io(src, e))?;
        }
        Ok(())
    }
}
