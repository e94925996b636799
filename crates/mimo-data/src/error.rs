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
    /// Some work units (shards, bands) failed; the others completed and have their markers.
    #[error("{failed} of {total} units failed (see stderr); first: {first}")]
    Units {
        /// Units that failed.
        failed: usize,
        /// Units this task owned.
        total: usize,
        /// The first failure.
        first: Box<DataError>,
    },
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

    /// True for bad arguments or bad input files (exit code 2), false for failed jobs (I/O, …).
    pub fn is_bad_input(&self) -> bool {
        match self {
            DataError::Usage(_) | DataError::Parse { .. } => true,
            DataError::Units { first, .. } => first.is_bad_input(),
            DataError::Io { .. } | DataError::Tokenizer { .. } => false,
        }
    }

    pub(crate) fn parse(path: impl Into<PathBuf>, line: u64, msg: impl Into<String>) -> DataError {
        DataError::Parse {
            path: path.into(),
            line,
            msg: msg.into(),
        }
    }
}
