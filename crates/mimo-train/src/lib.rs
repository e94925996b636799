//! `mimo-train`: MiMo pretraining and SFT with the Multi-Token-Prediction loss (design §1.5, §2, §3.1, §7.4).
//!
//! With the `tch` feature (default) the crate holds the libtorch trainer: [`model::TrainModel`] (same tensor
//! names as the HF checkpoint and the candle engine), [`loss`] (`L_main + λ·mean_k L_mtp,k`, SFT loss mask,
//! MTP top-1 accuracy), [`optim`] (AdamW, clipping), [`step`] (the optimizer step pretraining, SFT and GRPO
//! share) and [`train`] (the loop, metrics JSONL, HF checkpoints with exact resume, loss plot). Without it,
//! configs and data handling build without libtorch and [`train`] returns [`TrainError::NoTch`].
//!
//! Packing: windows of `seq_len + 1` tokens cut from packed documents (EOS-separated) or from concatenated SFT
//! samples; attention crosses document boundaries (standard GPT-style packing) and positions run over the window.

pub mod config;
pub mod data;
mod error;
pub mod grpo;
pub mod io;
#[cfg(feature = "tch")]
pub mod loss;
pub mod metrics;
#[cfg(feature = "tch")]
pub mod model;
#[cfg(feature = "tch")]
pub mod optim;
#[cfg(feature = "tch")]
pub mod parallel;
pub mod plot;
pub mod progress;
#[cfg(feature = "tch")]
mod rundir;
#[cfg(feature = "tch")]
pub mod step;
pub mod synth;
pub mod tokenizer;
#[cfg(feature = "tch")]
pub mod trainer;

#[cfg(feature = "tch")]
pub use config::parse_device;
pub use config::{AdamWArgs, Mode, TrainArgs, DEFAULT_CONFIG};
pub use error::{Result, TrainError};
pub use grpo::{Group, GrpoArgs, Rollout};
pub use metrics::{StepMetrics, TrainReport};
#[cfg(feature = "tch")]
pub use trainer::{train, TrainerState};

/// Without libtorch there is no trainer.
#[cfg(not(feature = "tch"))]
pub fn train(_args: &TrainArgs) -> Result<TrainReport> {
    Err(TrainError::NoTch)
}
