//! Errors of `mimo pipeline`.

use std::path::{Path, PathBuf};

/// Errors of a pipeline run: a stage's own error, or a stage that produced nothing usable.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Bad pipeline configuration.
    #[error("config: {0}")]
    Config(String),
    /// A stage failed.
    #[error("pipeline stage `{stage}`: {msg}")]
    Stage { stage: String, msg: String },
    #[error(transparent)]
    Rl(#[from] mimo_rl::RlError),
    #[error(transparent)]
    Train(#[from] mimo_train::TrainError),
    #[error(transparent)]
    Eval(#[from] mimo_eval::EvalError),
    #[error(transparent)]
    Engine(#[from] mimo_engine::engine::EngineError),
    #[error(transparent)]
    Text(#[from] mimo_text::TextError),
    #[error(transparent)]
    Reward(#[from] mimo_reward::RewardError),
}

impl PipelineError {
    /// An I/O error on `path`.
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        PipelineError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    /// A failure of `stage`.
    pub fn stage(stage: &str, msg: impl Into<String>) -> Self {
        PipelineError::Stage {
            stage: stage.into(),
            msg: msg.into(),
        }
    }
}

/// Result alias.
pub type Result<T, E = PipelineError> = std::result::Result<T, E>;
