//! `mimo-rl`: MiMo's reinforcement-learning stage (design §3.3–3.5, §4, §7.5): the GRPO loop and the rollout
//! engine. Problems and their scoring are `mimo_reward`'s; the end-to-end recipe is `mimo-pipeline`.
//!
//! * [`sampler`]: dynamic sampling's validity rule and the easy-data pool (α re-sampling).
//! * [`rollout`]: the Seamless Rollout Engine (continuous rollout, asynchronous reward, FIFO early
//!   termination) and the `naive` baseline, over the candle engine.
//! * [`remote`]: the rollout engine's generator over remote `mimo serve --enable-weight-updates` servers.
//! * [`overlap`]: rollouts of later steps generated while earlier steps train, with a staleness bound.
//! * `rl` (feature `tch`): the GRPO loop — rollouts from the engine, the update in the libtorch trainer, the new
//!   weights handed back to the engine in process.

pub mod bench;
pub mod error;
pub mod overlap;
pub mod remote;
#[cfg(feature = "tch")]
pub mod rl;
pub mod rollout;
pub mod sampler;

pub use error::{Result, RlError};
pub use rollout::{
    Generator, GroupOut, LengthSkew, RolloutArgs, RolloutEngine, RolloutMode, RolloutStats,
};
pub use sampler::{is_valid_group, ProblemSampler};
