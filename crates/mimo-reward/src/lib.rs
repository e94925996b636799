//! Rule-based rewards for mimo (spec §3.2–3.4, §7.6).
//!
//! * [`math`]: a Math-Verify–style answer verifier (extraction, LaTeX normalisation, equivalence).
//! * [`difficulty`]: the test-difficulty-driven code reward (strict / soft / binary).
//! * [`sandbox`]: runs untrusted programs in fresh Linux namespaces with rlimits and timeouts.
//! * [`jsonl`]: the JSONL drivers behind `mimo reward math|code`.

pub mod difficulty;
pub mod jsonl;
pub mod math;
pub mod sandbox;

pub use jsonl::{run_code_jsonl, run_math_jsonl, Stats};

/// Errors returned by this crate.
#[derive(Debug, thiserror::Error)]
pub enum RewardError {
    /// Reading input or writing output failed.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// A JSON value could not be serialised.
    #[error("json error: {0}")]
    Json(#[from] serde_json::Error),
    /// Invalid configuration (e.g. level weights that do not match the number of levels).
    #[error("invalid configuration: {0}")]
    Config(String),
}
