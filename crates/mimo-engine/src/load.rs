//! The one way to open a model directory for inference: the weights, the text side and an engine over them.
//! Every command (`generate`, `chat`, `bench`, `eval`, `serve`), RL and the pipeline build engines here.

use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device};
use mimo_model::MimoModel;
use mimo_text::ModelText;

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
    /// Loads `dir` (weights in `dtype` on `device`, its text files) and builds an engine with `cfg`; when
    /// `cfg.eos_ids` is empty, the EOS ids come from the directory's text files (else from `config.json`).
    /// Errors name the file at fault; a directory without `tokenizer.json` is an error.
    pub fn open(
        dir: &Path,
        dtype: DType,
        device: &Device,
        cfg: EngineConfig,
    ) -> Result<Self, EngineError> {
        let text = ModelText::load(dir)?;
        Self::build(dir, dtype, device, cfg, Some(text))
    }

    /// Like [`Loaded::open`], but a directory without `tokenizer.json` is fine (the caller works in token ids).
    pub fn open_ids_only(
        dir: &Path,
        dtype: DType,
        device: &Device,
        cfg: EngineConfig,
    ) -> Result<Self, EngineError> {
        let text = if dir.join("tokenizer.json").is_file() {
            Some(ModelText::load(dir)?)
        } else {
            None
        };
        Self::build(dir, dtype, device, cfg, text)
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
        dir: &Path,
        dtype: DType,
        device: &Device,
        cfg: EngineConfig,
        text: Option<ModelText>,
    ) -> Result<Self, EngineError> {
        let model = MimoModel::from_dir(dir, dtype, device)?;
        Self::from_model(model, text, cfg)
    }
}

fn no_text() -> EngineError {
    EngineError::Config("the model directory has no tokenizer.json".into())
}
