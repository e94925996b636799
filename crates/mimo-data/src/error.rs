//! Typed errors of the data pipeline. Every variant names the file (and line where there is one).

use std::path::PathBuf;

/// Errors returned by the pipeline stages. Malformed *documents* are not errors: they are counted and
/// written to the exclusion file; these are the failures that stop a stage.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// An I/O failure on a named file.
    #[error("{path}: {source}")]
    Io {
        /// File at fault.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A file whose content cannot be used (bad config, bad model, bad index), with the line if known.
    #[error("{path}:{line}: {msg}")]
    Parse {
        /// File at fault.
        path: PathBuf,
        /// 1-based line (0 when the whole file is at fault).
        line: u64,
        /// What is wrong.
        msg: String,
    },
    /// Arguments that cannot work together.
    #[error("bad usage: {0}")]
    Usage(String),
    /// The tokenizer could not be loaded or failed on input.
    #[error("{path}: tokenizer: {msg}")]
    Tokenizer {
        /// tokenizer.json at fault.
        path: PathBuf,
        /// Message from the tokenizers crate.
        msg: String,
    },
}

impl DataError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> DataError {
        let path = path.into();
        move |source| DataError::Io { path, source }
    }

    pub(crate) fn parse(path: impl Into<PathBuf>, line: u64, msg: impl Into<String>) -> DataError {
        DataError::Parse {
            path: path.into(),
            line,
            msg: msg.into(),
        }
    }
}
