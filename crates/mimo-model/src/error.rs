//! Typed errors of the model crate. Every variant names the file and, where there is one, the tensor.

use std::path::PathBuf;

/// Errors from loading a config or checkpoint, or from running the model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A file could not be opened or read.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A JSON file (config, index) is not valid JSON.
    #[error("{path}: invalid JSON: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// A config field is missing, has the wrong type, or an unsupported value.
    #[error("{path}: field `{field}`: {msg}")]
    Config {
        path: PathBuf,
        field: String,
        msg: String,
    },
    /// `model_type` is not one mimo knows.
    #[error(
        "{path}: unsupported model_type {model_type:?} (expected \"mimo\", \"qwen2\" or \"llama\")"
    )]
    UnsupportedModelType { path: PathBuf, model_type: String },
    /// The directory holds no safetensors weights.
    #[error("{dir}: no model.safetensors or model.safetensors.index.json found")]
    NoWeights { dir: PathBuf },
    /// A GGUF file is malformed, truncated, or of an architecture or tensor type mimo cannot run.
    #[error("{path}: GGUF: {msg}")]
    Gguf { path: PathBuf, msg: String },
    /// A safetensors file is malformed or truncated.
    #[error("{path}: not a readable safetensors file: {msg}")]
    Safetensors { path: PathBuf, msg: String },
    /// The shard index names a tensor in a file that does not hold it, or a missing file.
    #[error("{path}: {msg}")]
    Index { path: PathBuf, msg: String },
    /// A tensor the config requires is absent from every weight file.
    #[error("{dir}: missing tensor `{name}`")]
    MissingTensor { dir: PathBuf, name: String },
    /// A tensor has a shape other than the config implies.
    #[error("{path}: tensor `{name}` has shape {actual:?}, expected {expected:?}")]
    ShapeMismatch {
        path: PathBuf,
        name: String,
        expected: Vec<usize>,
        actual: Vec<usize>,
    },
    /// A tensor's dtype cannot be used as a weight.
    #[error("{path}: tensor `{name}` has dtype {dtype}, expected a float type (f32, bf16, f16)")]
    BadDtype {
        path: PathBuf,
        name: String,
        dtype: String,
    },
    /// A tensor could not be read from its file.
    #[error("{path}: tensor `{name}`: {msg}")]
    TensorData {
        path: PathBuf,
        name: String,
        msg: String,
    },
    /// A weight holds NaN or infinite values (a corrupt or badly converted checkpoint).
    #[error("{path}: tensor `{name}` holds {count} non-finite values (NaN or ±inf), first at flat index {first}")]
    NonFinite {
        path: PathBuf,
        name: String,
        count: usize,
        first: usize,
    },
    /// The checkpoint holds layers the config does not describe (the model would run partially).
    #[error("{dir}: {msg}")]
    ExtraLayers { dir: PathBuf, msg: String },
    /// A device or dtype setting names nothing usable.
    #[error("--{setting} {msg}")]
    Setting { setting: String, msg: String },
    /// Bad arguments to a model call (token id out of range, wrong MTP index, ...).
    #[error("{0}")]
    Input(String),
    /// An error from the tensor library while computing.
    #[error("tensor computation failed: {0}")]
    Candle(#[from] candle_core::Error),
}

/// Result alias of the model crate.
pub type Result<T> = std::result::Result<T, ModelError>;
