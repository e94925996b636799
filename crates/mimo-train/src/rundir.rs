//! The run directory of `mimo train` (see [`crate::trainer`]): its files, `force` and finished-run handling,
//! the resume state and its checks, the metrics JSONL, and atomic checkpoints (model + optimizer + state).

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::config::{Stage, TrainArgs};
use crate::data::Cursor;
use crate::error::{Result, TrainError};
use crate::io::{atomic_dir, read_json, write_atomic, write_json};
use crate::metrics::StepMetrics;
use crate::model::{Param, TrainModel};
use crate::optim::AdamW;

/// `checkpoint/trainer_state.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TrainerState {
    /// Optimizer steps completed.
    pub step: usize,
    /// Index of the stage of the last completed step (0 without `[[stages]]`).
    #[serde(default)]
    pub stage: usize,
    /// Its name (empty without `[[stages]]`).
    #[serde(default)]
    pub stage_name: String,
    /// Position in that stage's data stream.
    pub cursor: Cursor,
    pub seed: u64,
    pub total_steps: usize,
    /// Input tokens processed up to `step` (over all resumed segments).
    pub tokens: u64,
    /// Data-parallel ranks of the run that wrote it.
    #[serde(default = "one")]
    pub world_size: usize,
}

fn one() -> usize {
    1
}

impl TrainerState {
    /// The state after `step` optimizer steps of `args`' run, in `stage` at `cursor`, `tokens` in.
    pub fn at(args: &TrainArgs, step: usize, stage: &Stage, cursor: Cursor, tokens: u64) -> Self {
        Self {
            step,
            stage: stage.index,
            stage_name: stage.name.clone(),
            cursor,
            seed: args.seed,
            total_steps: args.train.steps,
            tokens,
            world_size: 1,
        }
    }
}

/// The paths of a run directory.
pub(crate) struct RunDir {
    pub out: PathBuf,
    pub metrics: PathBuf,
    pub checkpoint: PathBuf,
    pub report: PathBuf,
    pub config: PathBuf,
}

impl RunDir {
    pub fn new(out: &Path) -> Self {
        Self {
            out: out.to_path_buf(),
            metrics: out.join("metrics.jsonl"),
            checkpoint: out.join("checkpoint"),
            report: out.join("report.json"),
            config: out.join("config.toml"),
        }
    }

    /// The final HF model.
    pub fn model_dir(&self) -> PathBuf {
        self.out.join("model")
    }

    /// The loss plot.
    pub fn plot(&self) -> PathBuf {
        self.out.join("loss.png")
    }

    fn state_path(&self) -> PathBuf {
        self.checkpoint.join("trainer_state.json")
    }

    /// Makes the directory ready: a finished run is an error without `force` and is removed with it; `force`
    /// on an unfinished run drops its checkpoint (so the run starts over).
    pub fn prepare(&self, force: bool) -> Result<()> {
        if self.report.exists() {
            if !force {
                return Err(TrainError::Exists(self.out.clone()));
            }
            for p in [
                &self.metrics,
                &self.checkpoint,
                &self.report,
                &self.config,
                &self.model_dir(),
                &self.plot(),
            ] {
                if p.is_dir() {
                    std::fs::remove_dir_all(p).map_err(|e| TrainError::io(p, e))?;
                } else if p.exists() {
                    std::fs::remove_file(p).map_err(|e| TrainError::io(p, e))?;
                }
            }
        } else if force && self.checkpoint.exists() {
            std::fs::remove_dir_all(&self.checkpoint)
                .map_err(|e| TrainError::io(&self.checkpoint, e))?;
        }
        std::fs::create_dir_all(&self.out).map_err(|e| TrainError::io(&self.out, e))
    }

    /// With `resume` on and a checkpoint present, its state; errors when it was written by a run with other
    /// `train.steps`, `seed` or number of data-parallel ranks.
    pub fn resume_state(
        &self,
        args: &TrainArgs,
        world_size: usize,
    ) -> Result<Option<TrainerState>> {
        let path = self.state_path();
        if !(args.resume && path.is_file()) {
            return Ok(None);
        }
        let st: TrainerState = read_json(&path)?;
        if st.total_steps != args.train.steps || st.seed != args.seed {
            return Err(TrainError::Checkpoint {
                path,
                msg: format!(
                    "was written by a run with steps={} seed={}, this one has steps={} seed={} \
                     (use force to start over)",
                    st.total_steps, st.seed, args.train.steps, args.seed
                ),
            });
        }
        if st.world_size != world_size {
            return Err(TrainError::Checkpoint {
                path,
                msg: format!(
                    "was written by a run on {} data-parallel rank(s), this one has {world_size}: resume \
                     with WORLD_SIZE={} (or use force to start over)",
                    st.world_size, st.world_size
                ),
            });
        }
        Ok(Some(st))
    }

    /// The stage `st` resumes in; errors unless `plan` holds `st.step` in that stage (same index and name).
    pub fn check_stage(&self, st: &TrainerState, plan: &[Stage]) -> Result<usize> {
        let fits = plan
            .get(st.stage)
            .is_some_and(|s| s.name == st.stage_name && s.start < st.step && st.step <= s.end);
        if !fits {
            return Err(TrainError::Checkpoint {
                path: self.state_path(),
                msg: format!(
                    "was written at step {} in stage {} ({:?}), which this config's [[stages]] do not \
                     hold at that step (use force to start over)",
                    st.step, st.stage, st.stage_name
                ),
            });
        }
        Ok(st.stage)
    }

    /// The checkpoint's AdamW state for `params`, `step` steps in.
    pub fn load_optimizer(&self, params: &[Param], step: usize) -> Result<AdamW> {
        AdamW::load(
            &self.checkpoint.join("optimizer.safetensors"),
            params,
            step as u64,
        )
    }

    /// Records the effective config.
    pub fn write_config(&self, args: &TrainArgs) -> Result<()> {
        write_atomic(&self.config, args.to_toml().as_bytes())
    }

    /// Opens `metrics.jsonl` for appending, first keeping only the lines up to step `keep_through` (a
    /// resumed run's checkpoint step; `None`: an empty file), so that resumed steps are not logged twice.
    pub fn open_metrics(&self, keep_through: Option<usize>) -> Result<MetricsLog> {
        let path = &self.metrics;
        let mut kept = String::new();
        if let (Some(last), true) = (keep_through, path.is_file()) {
            let s = std::fs::read_to_string(path).map_err(|e| TrainError::io(path, e))?;
            for line in s.lines() {
                if let Ok(m) = serde_json::from_str::<StepMetrics>(line) {
                    if m.step <= last {
                        kept.push_str(line);
                        kept.push('\n');
                    }
                }
            }
        }
        write_atomic(path, kept.as_bytes())?;
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(|e| TrainError::io(path, e))?;
        Ok(MetricsLog {
            path: path.clone(),
            file,
        })
    }

    /// Replaces `checkpoint/` atomically by the model (with `extra` files), the optimizer state and `state`.
    pub fn save_checkpoint(
        &self,
        model: &TrainModel,
        opt: &AdamW,
        extra: &[(String, PathBuf)],
        state: &TrainerState,
    ) -> Result<()> {
        save_model_dir(&self.checkpoint, model, extra, |tmp| {
            opt.save(&tmp.join("optimizer.safetensors"), model.params())?;
            write_json(&tmp.join("trainer_state.json"), state)
        })
    }
}

/// `metrics.jsonl`, open for appending.
pub(crate) struct MetricsLog {
    path: PathBuf,
    file: File,
}

impl MetricsLog {
    /// Appends one line.
    pub fn append(&mut self, m: &StepMetrics) -> Result<()> {
        let line = serde_json::to_string(m).map_err(|e| TrainError::Json {
            path: self.path.clone(),
            msg: e.to_string(),
        })?;
        writeln!(self.file, "{line}").map_err(|e| TrainError::io(&self.path, e))
    }
}

/// Tokenizer and generation files to copy into checkpoints: (file name, source).
pub(crate) fn extra_files(args: &TrainArgs, tokenizer: Option<&Path>) -> Vec<(String, PathBuf)> {
    let mut out = vec![];
    if let Some(t) = tokenizer {
        out.push(("tokenizer.json".to_string(), t.to_path_buf()));
    }
    let mut dirs = vec![];
    if !args.model.init.as_os_str().is_empty() {
        dirs.push(args.model.init.clone());
    }
    if let Some(d) = tokenizer.and_then(Path::parent) {
        dirs.push(d.to_path_buf());
    }
    for name in [
        "tokenizer_config.json",
        "special_tokens_map.json",
        "generation_config.json",
        "chat_template.jinja",
    ] {
        if let Some(src) = dirs.iter().map(|d| d.join(name)).find(|p| p.is_file()) {
            out.push((name.to_string(), src));
        }
    }
    out
}

fn write_generation_config(dir: &Path, model: &TrainModel) -> Result<()> {
    let p = dir.join("generation_config.json");
    if p.exists() {
        return Ok(());
    }
    let cfg = model.config();
    let eos = match cfg.eos_token_ids.as_slice() {
        [] => serde_json::Value::Null,
        [one] => json!(one),
        many => json!(many),
    };
    write_json(
        &p,
        &json!({"bos_token_id": cfg.bos_token_id, "eos_token_id": eos, "do_sample": false}),
    )
}

/// Writes `model` as an HF directory `dir` (atomically) with the `extra` files, a `generation_config.json`
/// when none is among them, and whatever `more` adds.
pub(crate) fn save_model_dir(
    dir: &Path,
    model: &TrainModel,
    extra: &[(String, PathBuf)],
    more: impl FnOnce(&Path) -> Result<()>,
) -> Result<()> {
    let refs: Vec<(&str, &Path)> = extra
        .iter()
        .map(|(n, p)| (n.as_str(), p.as_path()))
        .collect();
    atomic_dir(dir, |tmp| {
        model.write_hf_into(tmp, &refs)?;
        write_generation_config(tmp, model)?;
        more(tmp)
    })
}
