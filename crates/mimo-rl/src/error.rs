//! Errors of the RL stage.

use std::path::{Path, PathBuf};

/// Errors of `mimo rl` and the rollout benchmark.
#[derive(Debug, thiserror::Error)]
pub enum RlError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Bad RL data.
    #[error("{0}")]
    Data(String),
    /// Bad configuration.
    #[error("config: {0}")]
    Config(String),
    /// The remote rollout servers failed (after retries).
    #[error("rollout servers: {0}")]
    Remote(String),
    #[error(transparent)]
    Engine(#[from] mimo_engine::engine::EngineError),
    #[error(transparent)]
    Text(#[from] mimo_text::TextError),
    #[error(transparent)]
    Model(#[from] mimo_model::ModelError),
    #[error(transparent)]
    Train(#[from] mimo_train::TrainError),
    #[error(transparent)]
    Reward(#[from] mimo_reward::RewardError),
}

impl RlError {
    /// An I/O error on `path`.
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        RlError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Result alias.
pub type Result<T, E = RlError> = std::result::Result<T, E>;
