//! The one way to open a model for inference — an HF directory, a `.gguf` file, or a directory `mimo quantize`
//! wrote — : the weights, the text side and an engine over them. Every command (`generate`, `chat`, `bench`,
//! `eval`, `serve`), RL and the pipeline build engines here.

use std::path::Path;
use std::sync::Arc;

use candle_core::quantized::gguf_file::Value;
use candle_core::Device;
use mimo_model::{GgufFile, MimoModel, WeightFormat};
use mimo_text::{GgufVocab, ModelText};

use crate::engine::{Engine, EngineConfig, EngineError};

/// A model directory opened for inference.
pub struct Loaded {
    /// The weights (shared with the engine).
    pub model: Arc<MimoModel>,
    /// Tokenizer, chat template, EOS ids and generation defaults; `None` when the directory has no
    /// `tokenizer.json` and text was not required.
    pub text: Option<ModelText>,
    /// The engine over `model`.
    pub engine: Engine,
}

impl Loaded {
    /// Loads `path` (weights in `fmt` on `device`, its text side) and builds an engine with `cfg`; when
    /// `cfg.eos_ids` is empty, the EOS ids come from the text side (else from the model config).
    /// Errors name the file at fault; a model without a tokenizer is an error.
    pub fn open(
        path: &Path,
        fmt: WeightFormat,
        device: &Device,
        cfg: EngineConfig,
    ) -> Result<Self, EngineError> {
        let text = model_text(path)?.ok_or_else(no_text)?;
        Self::build(path, fmt, device, cfg, Some(text))
    }

    /// Like [`Loaded::open`], but a model without a tokenizer is fine (the caller works in token ids).
    pub fn open_ids_only(
        path: &Path,
        fmt: WeightFormat,
        device: &Device,
        cfg: EngineConfig,
    ) -> Result<Self, EngineError> {
        let text = model_text(path)?;
        Self::build(path, fmt, device, cfg, text)
    }

    /// An engine over weights already in memory (e.g. handed over by the trainer), with `text`'s EOS ids when
    /// `cfg.eos_ids` is empty.
    pub fn from_model(
        model: MimoModel,
        text: Option<ModelText>,
        mut cfg: EngineConfig,
    ) -> Result<Self, EngineError> {
        if cfg.eos_ids.is_empty() {
            cfg.eos_ids = match &text {
                Some(t) => t.eos_ids.clone(),
                None => model.config().eos_token_ids.clone(),
            };
        }
        let model = Arc::new(model);
        let engine = Engine::new(Arc::clone(&model), cfg)?;
        Ok(Self {
            model,
            text,
            engine,
        })
    }

    /// The text side; an error naming the missing file when the directory had none.
    pub fn text(&self) -> Result<&ModelText, EngineError> {
        self.text.as_ref().ok_or_else(no_text)
    }

    /// The engine and the text side together (to generate from text while reading the tokenizer).
    pub fn engine_and_text(&mut self) -> Result<(&mut Engine, &ModelText), EngineError> {
        let text = self.text.as_ref().ok_or_else(no_text)?;
        Ok((&mut self.engine, text))
    }

    fn build(
        path: &Path,
        fmt: WeightFormat,
        device: &Device,
        cfg: EngineConfig,
        text: Option<ModelText>,
    ) -> Result<Self, EngineError> {
        let model = MimoModel::open(path, fmt, device)?;
        Self::from_model(model, text, cfg)
    }
}

fn no_text() -> EngineError {
    EngineError::Config(
        "the model has no tokenizer (no tokenizer.json, no tokenizer in the GGUF)".into(),
    )
}

/// The text side of a model: `tokenizer.json` and its companions in a directory, else the tokenizer and chat
/// template in the GGUF file's metadata; `None` when there is neither.
pub fn model_text(path: &Path) -> Result<Option<ModelText>, EngineError> {
    if path.is_dir() && path.join("tokenizer.json").is_file() {
        return Ok(Some(ModelText::load(path)?));
    }
    let Some(file) = mimo_model::gguf_path(path) else {
        return Ok(None);
    };
    let gguf = GgufFile::open(&file)?;
    if !gguf.metadata().contains_key("tokenizer.ggml.tokens") {
        return Ok(None);
    }
    Ok(Some(ModelText::from_gguf(&gguf_vocab(&gguf)?, &file)?))
}

/// The `tokenizer.*` metadata of a GGUF file.
fn gguf_vocab(g: &GgufFile) -> Result<GgufVocab, EngineError> {
    let m = g.metadata();
    let bad = |key: &str, what: &str| {
        EngineError::Config(format!(
            "{}: metadata `{key}` is not {what}",
            g.path().display()
        ))
    };
    let strings = |key: &str| -> Result<Option<Vec<String>>, EngineError> {
        m.get(key)
            .map(|v| match v {
                Value::Array(a) => a
                    .iter()
                    .map(|x| match x {
                        Value::String(s) => Ok(s.clone()),
                        _ => Err(bad(key, "an array of strings")),
                    })
                    .collect(),
                _ => Err(bad(key, "an array of strings")),
            })
            .transpose()
    };
    let string = |key: &str| match m.get(key) {
        Some(Value::String(s)) => Some(s.clone()),
        _ => None,
    };
    let id = |key: &str| {
        m.get(key).and_then(|v| {
            v.to_u32()
                .ok()
                .or_else(|| v.to_i32().ok().map(|x| x as u32))
        })
    };
    let flag = |key: &str| m.get(key).and_then(|v| v.to_bool().ok());
    let numbers = |key: &str| -> Option<Vec<f64>> {
        match m.get(key) {
            Some(Value::Array(a)) => a
                .iter()
                .map(|x| {
                    x.to_f32()
                        .map(f64::from)
                        .or_else(|_| x.to_i32().map(f64::from))
                        .ok()
                })
                .collect(),
            _ => None,
        }
    };
    Ok(GgufVocab {
        model: string("tokenizer.ggml.model").unwrap_or_default(),
        pre: string("tokenizer.ggml.pre"),
        tokens: strings("tokenizer.ggml.tokens")?.unwrap_or_default(),
        token_types: numbers("tokenizer.ggml.token_type")
            .map(|v| v.into_iter().map(|x| x as i32).collect()),
        merges: strings("tokenizer.ggml.merges")?,
        scores: numbers("tokenizer.ggml.scores").map(|v| v.into_iter().map(|x| x as f32).collect()),
        bos_id: id("tokenizer.ggml.bos_token_id"),
        eos_id: id("tokenizer.ggml.eos_token_id"),
        unk_id: id("tokenizer.ggml.unknown_token_id"),
        pad_id: id("tokenizer.ggml.padding_token_id"),
        eot_id: id("tokenizer.ggml.eot_token_id"),
        add_bos: flag("tokenizer.ggml.add_bos_token"),
        add_eos: flag("tokenizer.ggml.add_eos_token"),
        chat_template: string("tokenizer.chat_template"),
    })
}
