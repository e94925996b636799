//! Helpers shared by the engine's integration tests: the committed fixtures and greedy parameters.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;

use candle_core::{DType, Device};
use mimo_engine::SamplingParams;
use mimo_model::MimoModel;

/// A committed fixture directory.
pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures")
        .join(name)
}

/// A fixture model in f32 on the CPU.
pub fn load(name: &str) -> Arc<MimoModel> {
    Arc::new(MimoModel::from_dir(&fixture(name), DType::F32, &Device::Cpu).unwrap())
}

/// Greedy decoding of `max_tokens` tokens.
pub fn greedy(max_tokens: usize) -> SamplingParams {
    SamplingParams {
        max_tokens,
        ..SamplingParams::greedy()
    }
}
