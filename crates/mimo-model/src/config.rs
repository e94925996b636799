//! `config.json` of an HF model directory, for `model_type` `mimo`, `qwen2` and `llama`.
//!
//! Written by hand rather than with candle-transformers' config structs: those reject transformers-5 configs
//! (`sliding_window: null`) or silently default `rope_theta` when it moved into `rope_parameters`.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::error::{ModelError, Result};

/// The model family of a checkpoint. MiMo is Qwen2 plus MTP layers; Llama is the same block without q/k/v bias.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    Mimo,
    Qwen2,
    Llama,
}

impl Arch {
    /// The `model_type` string of the family.
    pub fn as_str(&self) -> &'static str {
        match self {
            Arch::Mimo => "mimo",
            Arch::Qwen2 => "qwen2",
            Arch::Llama => "llama",
        }
    }
}

/// Which hidden state feeds the MTP layers (design §1.3, §7.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MtpHidden {
    /// The last decoder layer's output before `model.norm` (Xiaomi's vLLM code; the default).
    PreNorm,
    /// The output of `model.norm`.
    PostNorm,
}

/// The architecture hyper-parameters mimo needs, read from `config.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub arch: Arch,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// q/k/v projections carry a bias (Qwen2/MiMo always; Llama per `attention_bias`).
    pub qkv_bias: bool,
    /// Number of MTP layers (`num_nextn_predict_layers`, 0 when absent).
    pub num_nextn_predict_layers: usize,
    pub mtp_hidden: MtpHidden,
    /// Zero the MTP token embedding at position 0 (vLLM/DeepSeek convention; off by default, design §7.2).
    pub mtp_zero_pos0_embedding: bool,
    /// `torch_dtype`/`dtype` as written in the config, if any.
    pub torch_dtype: Option<String>,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
}

struct Fields<'a> {
    path: &'a Path,
    map: &'a Map<String, Value>,
}

impl Fields<'_> {
    fn err(&self, field: &str, msg: impl Into<String>) -> ModelError {
        ModelError::Config {
            path: self.path.to_path_buf(),
            field: field.to_string(),
            msg: msg.into(),
        }
    }

    fn get(&self, field: &str) -> Option<&Value> {
        self.map.get(field).filter(|v| !v.is_null())
    }

    fn usize_opt(&self, field: &str) -> Result<Option<usize>> {
        match self.get(field) {
            None => Ok(None),
            Some(v) => v.as_u64().map(|x| Some(x as usize)).ok_or_else(|| {
                self.err(field, format!("expected a non-negative integer, got {v}"))
            }),
        }
    }

    fn usize_req(&self, field: &str) -> Result<usize> {
        self.usize_opt(field)?
            .ok_or_else(|| self.err(field, "required field is missing"))
    }

    fn f64_opt(&self, field: &str) -> Result<Option<f64>> {
        match self.get(field) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| self.err(field, format!("expected a number, got {v}"))),
        }
    }

    fn bool_opt(&self, field: &str) -> Result<Option<bool>> {
        match self.get(field) {
            None => Ok(None),
            Some(v) => v
                .as_bool()
                .map(Some)
                .ok_or_else(|| self.err(field, format!("expected true or false, got {v}"))),
        }
    }

    fn str_opt(&self, field: &str) -> Result<Option<&str>> {
        match self.get(field) {
            None => Ok(None),
            Some(v) => v
                .as_str()
                .map(Some)
                .ok_or_else(|| self.err(field, format!("expected a string, got {v}"))),
        }
    }

    fn ids(&self, field: &str) -> Result<Vec<u32>> {
        match self.get(field) {
            None => Ok(vec![]),
            Some(Value::Number(n)) => n
                .as_u64()
                .map(|x| vec![x as u32])
                .ok_or_else(|| self.err(field, "expected a token id")),
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| {
                    v.as_u64()
                        .map(|x| x as u32)
                        .ok_or_else(|| self.err(field, "expected a list of token ids"))
                })
                .collect(),
            Some(v) => Err(self.err(field, format!("expected a token id or a list, got {v}"))),
        }
    }
}

impl ModelConfig {
    /// Reads `DIR/config.json`.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        Self::from_file(&dir.join("config.json"))
    }

    /// Reads a `config.json` file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| ModelError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_json_str(&text, path)
    }

    /// Parses config JSON text; `path` is only used in error messages.
    pub fn from_json_str(text: &str, path: &Path) -> Result<Self> {
        let value: Value = serde_json::from_str(text).map_err(|source| ModelError::Json {
            path: path.to_path_buf(),
            source,
        })?;
        let map = value.as_object().ok_or_else(|| ModelError::Config {
            path: path.to_path_buf(),
            field: "<root>".into(),
            msg: "expected a JSON object".into(),
        })?;
        let f = Fields { path, map };
        let model_type = f
            .str_opt("model_type")?
            .ok_or_else(|| f.err("model_type", "required field is missing"))?;
        let arch = match model_type {
            "mimo" => Arch::Mimo,
            "qwen2" => Arch::Qwen2,
            "llama" => Arch::Llama,
            other => {
                return Err(ModelError::UnsupportedModelType {
                    path: PathBuf::from(path),
                    model_type: other.to_string(),
                })
            }
        };
        let hidden_size = f.usize_req("hidden_size")?;
        let num_attention_heads = f.usize_req("num_attention_heads")?;
        let num_key_value_heads = f
            .usize_opt("num_key_value_heads")?
            .unwrap_or(num_attention_heads);
        if num_attention_heads == 0 || hidden_size == 0 {
            return Err(f.err(
                "num_attention_heads",
                "hidden_size and num_attention_heads must be > 0",
            ));
        }
        let head_dim = match f.usize_opt("head_dim")? {
            Some(d) => d,
            None => {
                if hidden_size % num_attention_heads != 0 {
                    return Err(f.err(
                        "hidden_size",
                        format!("{hidden_size} is not divisible by num_attention_heads {num_attention_heads}"),
                    ));
                }
                hidden_size / num_attention_heads
            }
        };
        if head_dim == 0 || head_dim % 2 != 0 {
            return Err(f.err(
                "head_dim",
                format!("{head_dim} must be even and > 0 for RoPE"),
            ));
        }
        if num_key_value_heads == 0 || num_attention_heads % num_key_value_heads != 0 {
            return Err(f.err(
                "num_key_value_heads",
                format!(
                    "{num_key_value_heads} must divide num_attention_heads {num_attention_heads}"
                ),
            ));
        }
        let rope_theta = Self::rope_theta(&f)?;
        let qkv_bias = match arch {
            Arch::Mimo | Arch::Qwen2 => true,
            Arch::Llama => f.bool_opt("attention_bias")?.unwrap_or(false),
        };
        if arch == Arch::Llama && f.bool_opt("mlp_bias")?.unwrap_or(false) {
            return Err(f.err("mlp_bias", "MLP biases are not supported"));
        }
        if let Some(act) = f.str_opt("hidden_act")? {
            if act != "silu" {
                return Err(f.err(
                    "hidden_act",
                    format!("only \"silu\" is supported, got {act:?}"),
                ));
            }
        }
        if f.bool_opt("use_sliding_window")?.unwrap_or(false) {
            return Err(f.err(
                "use_sliding_window",
                "sliding-window attention is not supported",
            ));
        }
        let mtp_hidden = match f.str_opt("mtp_hidden")? {
            None | Some("pre_norm") => MtpHidden::PreNorm,
            Some("post_norm") => MtpHidden::PostNorm,
            Some(other) => {
                return Err(f.err(
                    "mtp_hidden",
                    format!("expected \"pre_norm\" or \"post_norm\", got {other:?}"),
                ))
            }
        };
        let cfg = ModelConfig {
            arch,
            vocab_size: f.usize_req("vocab_size")?,
            hidden_size,
            intermediate_size: f.usize_req("intermediate_size")?,
            num_hidden_layers: f.usize_req("num_hidden_layers")?,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            rms_norm_eps: f.f64_opt("rms_norm_eps")?.unwrap_or(1e-6),
            rope_theta,
            max_position_embeddings: f.usize_opt("max_position_embeddings")?.unwrap_or(32768),
            tie_word_embeddings: f.bool_opt("tie_word_embeddings")?.unwrap_or(false),
            qkv_bias,
            num_nextn_predict_layers: f.usize_opt("num_nextn_predict_layers")?.unwrap_or(0),
            mtp_hidden,
            mtp_zero_pos0_embedding: f.bool_opt("mtp_zero_pos0_embedding")?.unwrap_or(false),
            torch_dtype: f
                .str_opt("torch_dtype")?
                .or(f.str_opt("dtype")?)
                .map(str::to_string),
            bos_token_id: f.ids("bos_token_id")?.first().copied(),
            eos_token_ids: f.ids("eos_token_id")?,
        };
        if cfg.vocab_size == 0 || cfg.intermediate_size == 0 {
            return Err(f.err("vocab_size", "vocab_size and intermediate_size must be > 0"));
        }
        cfg.check_limits(&f)?;
        Ok(cfg)
    }

    /// Rejects values no real checkpoint has and that would make loading allocate absurd amounts or compute
    /// nonsense: every size is bounded, the parameter count must fit in 2^40, and
    /// `rms_norm_eps` must be a finite number in [0, 1).
    fn check_limits(&self, f: &Fields) -> Result<()> {
        // Well above every released model (vocabularies of 262k, 64k-wide layers, 10M-token contexts),
        // far below what would exhaust memory while building the tensor list or the RoPE tables.
        let limits = [
            ("vocab_size", self.vocab_size, 1 << 23),
            ("hidden_size", self.hidden_size, 1 << 17),
            ("intermediate_size", self.intermediate_size, 1 << 20),
            ("num_hidden_layers", self.num_hidden_layers, 4096),
            ("num_attention_heads", self.num_attention_heads, 4096),
            ("num_key_value_heads", self.num_key_value_heads, 4096),
            ("head_dim", self.head_dim, 4096),
            (
                "max_position_embeddings",
                self.max_position_embeddings,
                1 << 24,
            ),
            (
                "num_nextn_predict_layers",
                self.num_nextn_predict_layers,
                64,
            ),
        ];
        for (field, v, max) in limits {
            if v > max {
                return Err(f.err(field, format!("{v} exceeds the supported maximum {max}")));
            }
        }
        if self.num_hidden_layers == 0 {
            return Err(f.err("num_hidden_layers", "must be > 0"));
        }
        if !(self.rms_norm_eps.is_finite() && (0.0..1.0).contains(&self.rms_norm_eps)) {
            return Err(f.err(
                "rms_norm_eps",
                format!("must be a number in [0, 1), got {}", self.rms_norm_eps),
            ));
        }
        if !self.rope_theta.is_finite() {
            return Err(f.err("rope_theta", "must be finite"));
        }
        let params = self.parameter_count_bound();
        if params.is_none_or(|p| p > 1 << 40) {
            return Err(f.err(
                "hidden_size",
                "the sizes imply more than 2^40 parameters; not a loadable checkpoint",
            ));
        }
        Ok(())
    }

    /// An upper bound on the parameter count implied by the sizes (None on overflow).
    fn parameter_count_bound(&self) -> Option<u64> {
        let (h, i, v) = (
            self.hidden_size as u64,
            self.intermediate_size as u64,
            self.vocab_size as u64,
        );
        let q = (self.num_attention_heads as u64).checked_mul(self.head_dim as u64)?;
        let kv = (self.num_key_value_heads as u64).checked_mul(self.head_dim as u64)?;
        let attn = h.checked_mul(q.checked_mul(2)?.checked_add(kv.checked_mul(2)?)?)?;
        let mlp = h.checked_mul(i)?.checked_mul(3)?;
        let layer = attn.checked_add(mlp)?.checked_add(h.checked_mul(2 * h)?)?;
        let layers =
            (self.num_hidden_layers as u64).checked_add(self.num_nextn_predict_layers as u64)?;
        layer
            .checked_mul(layers)?
            .checked_add(v.checked_mul(h)?.checked_mul(2)?)
    }

    /// RoPE θ from `rope_parameters.rope_theta` (transformers 5) or top-level `rope_theta` (older layout).
    /// Scaled RoPE variants are rejected rather than silently ignored.
    fn rope_theta(f: &Fields) -> Result<f64> {
        let mut theta = f.f64_opt("rope_theta")?;
        for key in ["rope_parameters", "rope_scaling"] {
            let Some(v) = f.get(key) else { continue };
            let obj = v
                .as_object()
                .ok_or_else(|| f.err(key, format!("expected an object, got {v}")))?;
            let kind = obj
                .get("rope_type")
                .or_else(|| obj.get("type"))
                .and_then(Value::as_str)
                .unwrap_or("default");
            if kind != "default" {
                return Err(f.err(key, format!("RoPE scaling type {kind:?} is not supported")));
            }
            if let Some(t) = obj.get("rope_theta").filter(|t| !t.is_null()) {
                let t = t
                    .as_f64()
                    .ok_or_else(|| f.err(&format!("{key}.rope_theta"), "expected a number"))?;
                theta = Some(t);
            }
        }
        let theta = theta.unwrap_or(10000.0);
        if theta <= 0.0 {
            return Err(f.err("rope_theta", format!("must be > 0, got {theta}")));
        }
        Ok(theta)
    }

    /// The attention layer index of MTP layer `k` in a KV cache (vLLM's convention: after the main layers).
    pub fn mtp_cache_layer(&self, k: usize) -> usize {
        self.num_hidden_layers + k
    }

    /// Number of attention layers that need a KV cache: the main layers plus one per MTP layer.
    pub fn num_cache_layers(&self) -> usize {
        self.num_hidden_layers + self.num_nextn_predict_layers
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<ModelConfig> {
        ModelConfig::from_json_str(s, Path::new("config.json"))
    }

    const BASE: &str = r#""vocab_size": 100, "hidden_size": 64, "intermediate_size": 128,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2"#;

    #[test]
    fn transformers5_rope_parameters_and_null_sliding_window() {
        let c = parse(&format!(
            r#"{{"model_type": "qwen2", {BASE}, "sliding_window": null,
               "rope_parameters": {{"rope_type": "default", "rope_theta": 640000.0}}}}"#
        ))
        .unwrap();
        assert_eq!(c.rope_theta, 640000.0);
        assert!(c.qkv_bias);
        assert_eq!(c.head_dim, 16);
        assert_eq!(c.num_nextn_predict_layers, 0);
    }

    #[test]
    fn legacy_top_level_rope_theta_and_mtp() {
        let c = parse(&format!(
            r#"{{"model_type": "mimo", {BASE}, "rope_theta": 1e5, "num_nextn_predict_layers": 2,
               "tie_word_embeddings": true, "eos_token_id": [5, 6]}}"#
        ))
        .unwrap();
        assert_eq!(c.arch, Arch::Mimo);
        assert_eq!(c.rope_theta, 100000.0);
        assert_eq!(c.num_nextn_predict_layers, 2);
        assert!(c.tie_word_embeddings);
        assert_eq!(c.eos_token_ids, vec![5, 6]);
        assert_eq!(c.num_cache_layers(), 4);
    }

    #[test]
    fn llama_has_no_bias_by_default() {
        let c = parse(&format!(r#"{{"model_type": "llama", {BASE}}}"#)).unwrap();
        assert!(!c.qkv_bias);
    }

    #[test]
    fn bad_configs_name_the_field() {
        let e = parse(&format!(r#"{{"model_type": "gpt2", {BASE}}}"#)).unwrap_err();
        assert!(e.to_string().contains("gpt2"), "{e}");
        let e = parse(r#"{"model_type": "qwen2", "hidden_size": 64, "num_attention_heads": 4}"#)
            .unwrap_err();
        assert!(e.to_string().contains("vocab_size"), "{e}");
        let e = parse(&format!(
            r#"{{"model_type": "qwen2", {BASE}, "rope_theta": "x"}}"#
        ))
        .unwrap_err();
        assert!(e.to_string().contains("rope_theta"), "{e}");
        let e = parse(&format!(
            r#"{{"model_type": "llama", {BASE}, "rope_scaling": {{"rope_type": "llama3", "factor": 8.0}}}}"#
        ))
        .unwrap_err();
        assert!(e.to_string().contains("llama3"), "{e}");
        let e = parse("{not json").unwrap_err();
        assert!(e.to_string().contains("config.json"), "{e}");
        let e = parse(
            r#"{"model_type": "qwen2", "vocab_size": 100, "hidden_size": 64, "intermediate_size": 128,
               "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 3}"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("num_key_value_heads"), "{e}");
    }
}
