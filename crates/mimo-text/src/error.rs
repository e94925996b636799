//! Errors of the text side, and the JSON/file readers that produce them.

use std::path::{Path, PathBuf};

/// Errors from loading or using the text side of a model. Each names the file or template at fault.
#[derive(Debug, thiserror::Error)]
pub enum TextError {
    /// A file could not be read.
    #[error("{path}: cannot read: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A JSON file is not valid JSON.
    #[error("{path}: malformed JSON: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// Parser error (with line and column).
        source: serde_json::Error,
    },
    /// `tokenizer.json` is valid JSON but not a tokenizer `tokenizers` can load.
    #[error("{path}: invalid tokenizer: {message}")]
    Tokenizer {
        /// The file.
        path: PathBuf,
        /// What `tokenizers` reported.
        message: String,
    },
    /// A field of a config file has the wrong type or value.
    #[error("{path}: field `{field}`: {message}")]
    Field {
        /// The file.
        path: PathBuf,
        /// The field name.
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// Encoding failed.
    #[error("encode failed ({path}): {message}")]
    Encode {
        /// The tokenizer file.
        path: PathBuf,
        /// What `tokenizers` reported.
        message: String,
    },
    /// Decoding failed (or the streaming detokenizer lost track of its prefix).
    #[error("decode failed ({path}): {message}")]
    Decode {
        /// The tokenizer file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// The chat template did not compile, or raised an error while rendering (`raise_exception`).
    #[error("chat template ({origin}): {message}")]
    Template {
        /// Where the template came from (file and field, or "built-in ChatML").
        origin: String,
        /// The template engine's message, including `raise_exception`'s text.
        message: String,
    },
}

/// Result alias for this module.
pub type Result<T, E = TextError> = std::result::Result<T, E>;

pub(crate) fn read_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|source| TextError::Io {
        path: path.to_path_buf(),
        source,
    })
}

pub(crate) fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text = read_text(path)?;
    serde_json::from_str(&text).map_err(|source| TextError::Json {
        path: path.to_path_buf(),
        source,
    })
}

/// Reads a JSON object file if it exists (`Ok(None)` when absent).
pub(crate) fn read_json_object(
    path: &Path,
) -> Result<Option<serde_json::Map<String, serde_json::Value>>> {
    if !path.exists() {
        return Ok(None);
    }
    match read_json(path)? {
        serde_json::Value::Object(map) => Ok(Some(map)),
        other => Err(TextError::Field {
            path: path.to_path_buf(),
            field: "<root>".into(),
            message: format!("expected a JSON object, found {}", json_type(&other)),
        }),
    }
}

pub(crate) fn json_type(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}
