//! The pipeline config: `configs/tiny.toml` embedded as the defaults, with `--config` files layered over it.

use std::collections::BTreeMap;
use std::path::PathBuf;

use mimo_rl::bench::BenchSection;
use mimo_train::synth::SynthKind;
use serde::{Deserialize, Serialize};

use crate::error::{PipelineError, Result};

/// The embedded default pipeline config (`configs/tiny.toml`).
pub const DEFAULT_PIPELINE: &str = include_str!("../../../configs/tiny.toml");

/// `[synth]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SynthSection {
    pub train: usize,
    pub heldout: usize,
    pub max_digits: u32,
    pub max_depth: usize,
    /// Problem families to generate.
    pub kinds: Vec<SynthKind>,
    /// Share of the SFT set's math responses that state the result without the worked steps (`mimo data
    /// synth --terse-fraction`). The pretraining sources (the stage-3 reasoning corpus) keep every worked
    /// response.
    #[serde(default)]
    pub terse_fraction: f64,
}

/// `[tokenizer]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenizerSection {
    pub vocab_size: usize,
}

/// One `[[stages]]` table: mixture weights over the pipeline's sources plus the trainer's stage keys.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageSection {
    pub name: String,
    pub weights: BTreeMap<String, f64>,
    pub steps: usize,
    pub seq_len: usize,
    pub rope_theta: f64,
}

/// `[eval]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalSection {
    pub kinds: Vec<String>,
    pub problems: usize,
    pub k: usize,
    pub temperature: f32,
    pub top_p: f32,
    pub max_tokens: usize,
    pub mtp_prompts: usize,
    /// Samples per problem for the SFT model (0: `k`): its pass@k curve runs up to this k, the headroom RL can
    /// turn into pass@1.
    #[serde(default)]
    pub sft_k: usize,
    /// Samples per problem for the base model (0: `k`).
    #[serde(default)]
    pub base_k: usize,
}

impl EvalSection {
    /// Samples per problem for the SFT model.
    pub fn sft_samples(&self) -> usize {
        if self.sft_k == 0 {
            self.k
        } else {
            self.sft_k
        }
    }

    /// Samples per problem for the base model.
    pub fn base_samples(&self) -> usize {
        if self.base_k == 0 {
            self.k
        } else {
            self.base_k
        }
    }
}

/// The pipeline config.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineArgs {
    pub seed: u64,
    pub out: PathBuf,
    pub synth: SynthSection,
    pub tokenizer: TokenizerSection,
    /// config.json fields of the fresh model.
    pub model: toml::Table,
    pub stages: Vec<StageSection>,
    /// `mimo train` keys for pretraining.
    pub pretrain: toml::Table,
    /// `mimo train` keys for SFT.
    pub sft: toml::Table,
    /// `mimo rl` keys.
    pub rl: toml::Table,
    pub eval: EvalSection,
    pub bench: BenchSection,
}

impl PipelineArgs {
    /// The embedded defaults with `files` layered over them, in order, then `sets` (`key.path=value`).
    pub fn layered(files: &[PathBuf], sets: &[String]) -> Result<Self> {
        mimo_config::layered(DEFAULT_PIPELINE, files, sets)
            .map_err(|e| PipelineError::Config(format!("pipeline config: {e}")))
    }
}
