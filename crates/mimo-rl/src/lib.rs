//! `mimo-rl`: MiMo's reinforcement-learning stage (spec §3.3–3.5, §4, §7.5) and the end-to-end pipeline.
//!
//! * [`problem`]: verifiable math and code problems from JSONL.
//! * [`reward`]: math verification and sandboxed code tests; binary / strict / soft test-difficulty rewards.
//! * [`sampler`]: dynamic sampling's validity rule and the easy-data pool (α re-sampling).
//! * [`rollout`]: the Seamless Rollout Engine (continuous rollout, asynchronous reward, FIFO early
//!   termination) and the `naive` baseline, over the candle engine.
//! * `rl` (feature `tch`): the GRPO loop — rollouts from the engine, the update in the libtorch trainer, the new
//!   weights handed back to the engine in process.

pub mod bench;
pub mod error;
#[cfg(feature = "tch")]
pub mod pipeline;
pub mod problem;
pub mod reward;
#[cfg(feature = "tch")]
pub mod rl;
pub mod rollout;
pub mod sampler;

pub use error::{Result, RlError};
pub use problem::{load_problems, Check, RlProblem};
pub use reward::{CodeReward, RewardSettings};
pub use rollout::{
    Generator, GroupOut, LengthSkew, RolloutArgs, RolloutEngine, RolloutMode, RolloutStats,
};
pub use sampler::{is_valid_group, ProblemSampler};
