//! Rule-based rewards for mimo (design §3.2–3.4, §7.6).
//!
//! * [`math`]: a Math-Verify–style answer verifier (extraction, LaTeX normalisation, equivalence).
//! * [`difficulty`]: the test-difficulty-driven code reward (strict / soft / binary).
//! * [`sandbox`]: runs untrusted programs in fresh Linux namespaces with rlimits and timeouts.
//! * [`jsonl`]: the JSONL drivers behind `mimo reward math|code`.
//! * [`problem`]: the one verifiable-problem type (math answer or code tests) and its JSONL loader.
//! * [`score`]: the one scorer of a response to a problem, and RL's group rewards with test levels.

pub mod difficulty;
pub mod jsonl;
pub mod math;
pub mod problem;
pub mod sandbox;
pub mod score;

pub use jsonl::{run_code_jsonl, run_math_jsonl, Stats};
pub use problem::{load_problems, Check, Problem};
pub use score::{group_rewards, score, CodeReward, RewardSettings, Score, TestHistory};

/// Errors returned by this crate.
#[derive(Debug, thiserror::Error)]
pub enum RewardError {
    /// Reading input or writing output failed.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// A JSON value could not be serialised.
    #[error("json error: {0}")]
    Json(#[from] serde_json::Error),
    /// A problem file or line is unusable (the message names the file and line).
    #[error("{0}")]
    Data(String),
    /// Invalid configuration (e.g. level weights that do not match the number of levels).
    #[error("invalid configuration: {0}")]
    Config(String),
}
