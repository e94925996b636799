//! Errors of the training crate.

use std::path::{Path, PathBuf};

/// Everything `mimo train`, `mimo data synth` and `mimo tokenizer train` can fail with. Messages name the file,
/// field or tensor at fault.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A JSON file or line is malformed.
    #[error("{path}: {msg}")]
    Json { path: PathBuf, msg: String },
    /// The TOML config or a `--set` override is invalid.
    #[error("config: {0}")]
    Config(String),
    /// Training data is unusable (named file and line where known).
    #[error("data: {0}")]
    Data(String),
    /// A model checkpoint could not be loaded.
    #[error("model: {0}")]
    Model(String),
    /// A trainer checkpoint (optimizer state, trainer state) is inconsistent.
    #[error("checkpoint {path}: {msg}")]
    Checkpoint { path: PathBuf, msg: String },
    /// Bad input to an API call (shapes, ids).
    #[error("input: {0}")]
    Input(String),
    /// The output directory holds a finished run and `force` is off.
    #[error("{0} holds a finished run; pass force (--force) to overwrite it")]
    Exists(PathBuf),
    /// The tokenizer failed.
    #[error("tokenizer {path}: {msg}")]
    Tokenizer { path: PathBuf, msg: String },
    /// Training diverged (non-finite loss).
    #[error("training diverged at step {step}: loss {loss}")]
    Diverged { step: usize, loss: f64 },
    /// A data-parallel launch or collective failed (a peer missing or dead, ranks disagreeing).
    #[error("{0}")]
    Dist(String),
    /// The crate was built without the `tch` feature.
    #[error("training needs mimo-train's `tch` feature (libtorch)")]
    NoTch,
}

impl TrainError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        TrainError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

impl From<mimo_model::ModelError> for TrainError {
    fn from(e: mimo_model::ModelError) -> Self {
        TrainError::Model(e.to_string())
    }
}

impl From<mimo_data::DataError> for TrainError {
    fn from(e: mimo_data::DataError) -> Self {
        TrainError::Data(e.to_string())
    }
}

/// Result with [`TrainError`].
pub type Result<T, E = TrainError> = std::result::Result<T, E>;
