//! Run results: the per-step metrics line and the final report (available without libtorch, e.g. for plots).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};

/// What a finished (or stopped) run reports.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TrainReport {
    pub out: PathBuf,
    /// Directory of the final HF model (absent when stopped early by `train.stop_after`).
    pub model_dir: Option<PathBuf>,
    pub metrics: PathBuf,
    pub plot: Option<PathBuf>,
    /// Optimizer steps completed.
    pub steps: usize,
    /// Step the run resumed from, if it did.
    pub resumed_from: Option<usize>,
    pub params: usize,
    /// Input tokens processed in this process.
    pub tokens: u64,
    pub tokens_per_s: f64,
    pub elapsed_s: f64,
    pub final_loss: f64,
    pub final_loss_main: f64,
    pub final_loss_mtp: f64,
    pub final_mtp_acc: f64,
}

/// One metrics line.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StepMetrics {
    pub step: usize,
    /// Index of the `[[stages]]` entry the step trained in (0 without stages).
    #[serde(default)]
    pub stage: usize,
    /// Tokens per sequence of the step.
    #[serde(default)]
    pub seq_len: usize,
    /// RoPE θ of the step.
    #[serde(default)]
    pub rope_theta: f64,
    pub lr: f64,
    pub lambda: f64,
    pub loss: f64,
    pub loss_main: f64,
    /// mean_k L_mtp,k (0 without MTP layers).
    pub loss_mtp: f64,
    pub loss_mtp_k: Vec<f64>,
    pub acc_main: f64,
    /// Top-1 accuracy of MTP layer 0 (0 without MTP layers).
    pub mtp_acc: f64,
    pub mtp_acc_k: Vec<f64>,
    pub grad_norm: f64,
    /// Input tokens processed since the start of the run (resumes included).
    pub tokens: u64,
    pub tok_per_s: f64,
    pub elapsed_s: f64,
}

/// Reads `metrics.jsonl`.
pub fn read_metrics(path: &Path) -> Result<Vec<StepMetrics>> {
    let s = std::fs::read_to_string(path).map_err(|e| TrainError::io(path, e))?;
    s.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| TrainError::Json {
                path: path.to_path_buf(),
                msg: format!("line {}: {e}", i + 1),
            })
        })
        .collect()
}
