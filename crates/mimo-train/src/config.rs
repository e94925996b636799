//! `mimo train` configuration: a TOML file with every default embedded ([`DEFAULT_CONFIG`]), layered files and
//! `--set a.b=c` overrides; unknown keys are errors. Also the LR and MTP-weight schedules.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};

/// The embedded defaults (what `mimo train --print-config` starts from).
pub const DEFAULT_CONFIG: &str = r#"# mimo train: every key with its default.
mode = "pretrain"          # "pretrain" (packed token windows) or "sft" (prompt/response JSONL, prompt masked)
seed = 0                   # init RNG and data order
out = "runs/train"         # run directory (metrics.jsonl, checkpoint/, model/, loss.png)
force = false              # overwrite a finished run in `out`
resume = true              # continue from `out/checkpoint` when present
stages = []                # pretrain mixture schedule (design §2.2): [[stages]] tables, see below

# [[stages]]               # one table per stage, in training order; with none, `data.path` at `train.seq_len`
# name = "stage1"          #   unique name (metrics.jsonl and trainer_state.json record the stage index)
# data = "data/stage1"     #   packed dataset of the stage (`mimo data pack --stage stage1`)
# steps = 100              #   optimizer steps of the stage; the stages' steps sum to train.steps
# seq_len = 256            #   tokens per sequence in the stage
# rope_theta = 10000.0     #   RoPE θ from the stage's first step (written to checkpoints' config.json)
# batch_size = 8           #   optional: sequences per micro-batch in the stage (default train.batch_size)

[model]
init = ""                  # HF model directory to start from (weights + config.json)
config = ""                # or: a config.json for a fresh random init (used when `init` is empty)
init_std = 0.02            # std of the random init (matrices and embeddings)

[data]
path = ""                  # pretrain: packed dataset dir (index.json); sft: JSONL file; empty with [[stages]]
tokenizer = ""             # tokenizer.json for SFT text fields and for the checkpoint (default: model's, data's)
chat_template = true       # sft text fields: render through the checkpoint's chat template (as inference does)

[train]
steps = 100
batch_size = 8             # sequences per micro-batch
seq_len = 256              # tokens per sequence (windows hold seq_len + 1)
grad_accum = 1             # micro-batches per optimizer step
log_every = 1              # metrics.jsonl line every N steps
save_every = 0             # checkpoint every N steps (0: only at the end)
threads = 0                # libtorch intra-op threads (0: libtorch default)
device = "cpu"             # "cpu", "cuda" (= "cuda:0"), "cuda:N" or "mps"
progress = true            # progress bar on stderr
plot = true                # loss.png at the end
stop_after = 0             # stop after this many steps as if killed (tests of resume; 0: off)

[optim]
lr = 3e-4                  # peak LR
min_lr = 3e-5              # LR at the end of the cosine decay
warmup_steps = 10          # linear warmup 0 -> lr
decay_fraction = 0.2       # last fraction of steps: cosine lr -> min_lr (before it: constant lr)
beta1 = 0.9
beta2 = 0.95
eps = 1e-8
weight_decay = 0.1         # decoupled; not applied to norms and biases
grad_clip = 1.0            # max global grad norm (0: off)

[mtp]
lambda = 0.3               # weight of mean_k L_mtp,k ...
lambda_late = 0.1          # ... switched to this after `switch_fraction` of the steps (design §2.3)
switch_fraction = 0.4
"#;

/// Pretraining or SFT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Packed token windows, loss on every position.
    Pretrain,
    /// Prompt/response samples, loss on response tokens only.
    Sft,
}

/// `[model]`: where the weights come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelArgs {
    /// HF model directory to start from.
    pub init: PathBuf,
    /// `config.json` for a fresh random init (when `init` is empty).
    pub config: PathBuf,
    /// Std of the random init.
    pub init_std: f64,
}

/// `[data]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataArgs {
    /// Packed dataset directory (pretrain) or JSONL file (sft).
    pub path: PathBuf,
    /// tokenizer.json (SFT text, and copied into checkpoints); empty: the model's or the dataset's.
    pub tokenizer: PathBuf,
    /// Wrap SFT text fields as ChatML turns.
    pub chat_template: bool,
}

/// `[train]`: loop sizes and reporting.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoopArgs {
    pub steps: usize,
    pub batch_size: usize,
    pub seq_len: usize,
    pub grad_accum: usize,
    pub log_every: usize,
    pub save_every: usize,
    pub threads: usize,
    /// Where the model trains: `"cpu"`, `"cuda"`, `"cuda:N"` or `"mps"` (see [`parse_device`]).
    pub device: String,
    pub progress: bool,
    pub plot: bool,
    pub stop_after: usize,
}

/// `[optim]`: the LR schedule (design §2.3 shape: warmup, constant, cosine) and the AdamW constants.
///
/// The AdamW keys sit in the same table (`[optim] beta1 = …`): [`AdamWArgs`] is flattened into it. serde's
/// `deny_unknown_fields` on this (outer) struct still rejects unknown keys; a unit test pins that.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimArgs {
    /// Peak LR.
    pub lr: f64,
    pub min_lr: f64,
    pub warmup_steps: usize,
    pub decay_fraction: f64,
    /// β1, β2, ε, weight decay and the grad-norm clip (keys of this table).
    #[serde(flatten)]
    pub adamw: AdamWArgs,
}

/// The constants of one optimizer step, shared by `[optim]` (pretrain/SFT) and `[grpo]` (flattened into
/// both tables): AdamW's β1, β2, ε, decoupled weight decay, and the global grad-norm clip applied before it.
/// The LR is not here: each loop supplies it per step (a schedule, or GRPO's constant `lr`).
///
/// The [`Default`] (used for keys a `[grpo]` table leaves out) has no weight decay; `[optim]` takes its
/// defaults from [`DEFAULT_CONFIG`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AdamWArgs {
    /// AdamW β1.
    pub beta1: f64,
    /// AdamW β2.
    pub beta2: f64,
    /// AdamW ε.
    pub eps: f64,
    /// Decoupled weight decay (matrices and embeddings only).
    pub weight_decay: f64,
    /// Max global gradient norm (0: off).
    pub grad_clip: f64,
}

impl Default for AdamWArgs {
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.0,
            grad_clip: 1.0,
        }
    }
}

impl AdamWArgs {
    /// Rejects betas outside `[0, 1)`, `eps` not finite and > 0, and a negative or non-finite weight decay or
    /// clip. Errors name the key as `{table}.{field}`.
    pub fn validate(&self, table: &str) -> Result<()> {
        let bad = |field: &str, v: f64, need: &str| {
            Err(TrainError::Config(format!(
                "{table}.{field} = {v} (need {need})"
            )))
        };
        for (field, v) in [("beta1", self.beta1), ("beta2", self.beta2)] {
            if !(0.0..1.0).contains(&v) {
                return bad(field, v, "0 <= beta < 1");
            }
        }
        if !(self.eps > 0.0 && self.eps.is_finite()) {
            return bad("eps", self.eps, "a finite value > 0");
        }
        for (field, v) in [
            ("weight_decay", self.weight_decay),
            ("grad_clip", self.grad_clip),
        ] {
            if !(v >= 0.0 && v.is_finite()) {
                return bad(field, v, "a finite value >= 0");
            }
        }
        Ok(())
    }
}

/// Parses `train.device`: `"cpu"`, `"cuda"` (= `"cuda:0"`), `"cuda:N"` or `"mps"`. A config error names the
/// key for any other value, and for a device this machine's libtorch does not have.
#[cfg(feature = "tch")]
pub fn parse_device(s: &str) -> Result<tch::Device> {
    let bad = |why: String| {
        Err(TrainError::Config(format!(
            "train.device = {s:?}: {why} (expected \"cpu\", \"cuda\", \"cuda:N\" or \"mps\")"
        )))
    };
    let cuda = |n: usize| {
        let count = tch::Cuda::device_count().max(0) as usize;
        if n < count {
            Ok(tch::Device::Cuda(n))
        } else {
            bad(format!("libtorch sees {count} CUDA device(s)"))
        }
    };
    match s.trim() {
        "cpu" => Ok(tch::Device::Cpu),
        "cuda" => cuda(0),
        "mps" if tch::utils::has_mps() => Ok(tch::Device::Mps),
        "mps" => bad("libtorch has no MPS device here".into()),
        other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(n)) => cuda(n),
            _ => bad("unknown device".into()),
        },
    }
}

/// `[mtp]`: the MTP loss weight λ schedule (design §1.5, §7.4).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MtpArgs {
    pub lambda: f64,
    pub lambda_late: f64,
    pub switch_fraction: f64,
}

/// One `[[stages]]` table: a stage of the pretraining mixture schedule (design §2.2).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageArgs {
    /// Unique stage name.
    pub name: String,
    /// Packed dataset directory of the stage (`mimo data pack --stage NAME`).
    pub data: PathBuf,
    /// Optimizer steps in the stage.
    pub steps: usize,
    /// Tokens per sequence in the stage.
    pub seq_len: usize,
    /// RoPE θ in effect from the stage's first step.
    pub rope_theta: f64,
    /// Sequences per micro-batch in the stage (default `train.batch_size`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_size: Option<usize>,
}

/// The whole `mimo train` configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainArgs {
    pub mode: Mode,
    pub seed: u64,
    pub out: PathBuf,
    pub force: bool,
    pub resume: bool,
    pub model: ModelArgs,
    pub data: DataArgs,
    pub train: LoopArgs,
    pub optim: OptimArgs,
    pub mtp: MtpArgs,
    /// The pretraining mixture schedule; empty: one stage from `data.path` at `train.seq_len`.
    pub stages: Vec<StageArgs>,
}

impl Default for TrainArgs {
    fn default() -> Self {
        // The embedded TOML is the single source of the defaults; a unit test checks that it parses.
        toml::from_str(DEFAULT_CONFIG).unwrap_or_else(|e| panic!("embedded default config: {e}"))
    }
}

use mimo_config::merge;

impl TrainArgs {
    /// Defaults, then each TOML file in order, then `key.path=value` overrides. Unknown keys are errors that
    /// name the file or the override.
    pub fn load(files: &[PathBuf], sets: &[String]) -> Result<Self> {
        let args = Self::layered(files, sets)?;
        args.validate()?;
        Ok(args)
    }

    /// Like [`TrainArgs::load`] without the final consistency checks (for `--print-config`).
    pub fn layered(files: &[PathBuf], sets: &[String]) -> Result<Self> {
        mimo_config::layered(DEFAULT_CONFIG, files, sets).map_err(|e| TrainError::Config(e.0))
    }

    /// Parses one TOML document layered over the defaults.
    pub fn from_toml_str(s: &str) -> Result<Self> {
        let mut table: toml::Table = toml::from_str(DEFAULT_CONFIG)
            .map_err(|e| TrainError::Config(format!("embedded defaults: {e}")))?;
        let t: toml::Table = toml::from_str(s).map_err(|e| TrainError::Config(e.to_string()))?;
        merge(&mut table, t);
        let args: TrainArgs = table
            .try_into()
            .map_err(|e| TrainError::Config(e.to_string()))?;
        args.validate()?;
        Ok(args)
    }

    /// The effective config as TOML (recorded in the run directory; `--print-config`).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot serialise: {e}\n"))
    }

    /// Range checks that serde cannot express.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(TrainError::Config(m));
        let t = &self.train;
        if t.steps == 0 || t.batch_size == 0 || t.seq_len < 2 || t.grad_accum == 0 {
            return bad(format!(
                "train.steps, train.batch_size, train.grad_accum must be > 0 and train.seq_len >= 2 \
                 (got {}, {}, {}, {})",
                t.steps, t.batch_size, t.grad_accum, t.seq_len
            ));
        }
        let o = &self.optim;
        if !(o.lr > 0.0 && o.lr.is_finite()) || o.min_lr < 0.0 || o.min_lr > o.lr {
            return bad(format!(
                "optim.lr must be > 0 and 0 <= optim.min_lr <= optim.lr (got {}, {})",
                o.lr, o.min_lr
            ));
        }
        if !(0.0..=1.0).contains(&o.decay_fraction) {
            return bad(format!(
                "optim.decay_fraction must be in [0, 1], got {}",
                o.decay_fraction
            ));
        }
        o.adamw.validate("optim")?;
        let m = &self.mtp;
        if m.lambda < 0.0 || m.lambda_late < 0.0 || !(0.0..=1.0).contains(&m.switch_fraction) {
            return bad(
                "mtp.lambda, mtp.lambda_late >= 0 and mtp.switch_fraction in [0, 1]".into(),
            );
        }
        self.validate_stages()?;
        if self.data.path.as_os_str().is_empty() && self.stages.is_empty() {
            return bad("data.path is required (or [[stages]] with their own data)".into());
        }
        if self.model.init.as_os_str().is_empty() && self.model.config.as_os_str().is_empty() {
            return bad("model.init (HF dir) or model.config (config.json) is required".into());
        }
        if self.out.as_os_str().is_empty() {
            return bad("out is required".into());
        }
        #[cfg(feature = "tch")]
        parse_device(&self.train.device)?;
        Ok(())
    }

    fn validate_stages(&self) -> Result<()> {
        let bad = |m: String| Err(TrainError::Config(m));
        if self.stages.is_empty() {
            return Ok(());
        }
        if self.mode != Mode::Pretrain {
            return bad("stages: [[stages]] are for mode = \"pretrain\" only".into());
        }
        if !self.data.path.as_os_str().is_empty() {
            return bad(format!(
                "data.path ({}) and [[stages]] are exclusive: each stage names its own `data`",
                self.data.path.display()
            ));
        }
        for (i, st) in self.stages.iter().enumerate() {
            let at = format!("stages[{i}]");
            if st.name.trim().is_empty() {
                return bad(format!("{at}.name must not be empty"));
            }
            if let Some(j) = self.stages[..i].iter().position(|o| o.name == st.name) {
                return bad(format!("{at}.name {:?} repeats stages[{j}].name", st.name));
            }
            let at = format!("stages[{i}] ({})", st.name);
            if st.data.as_os_str().is_empty() {
                return bad(format!("{at}: `data` (packed dataset dir) is required"));
            }
            if st.steps == 0 {
                return bad(format!("{at}: `steps` must be > 0"));
            }
            if st.seq_len < 2 {
                return bad(format!("{at}: `seq_len` must be >= 2, got {}", st.seq_len));
            }
            if !(st.rope_theta.is_finite() && st.rope_theta > 0.0) {
                return bad(format!(
                    "{at}: `rope_theta` must be a finite number > 0, got {}",
                    st.rope_theta
                ));
            }
            if st.batch_size == Some(0) {
                return bad(format!("{at}: `batch_size` must be > 0"));
            }
        }
        let sum: usize = self.stages.iter().map(|s| s.steps).sum();
        if sum != self.train.steps {
            return bad(format!(
                "stages: the stages' steps sum to {sum} ({}), but train.steps = {}",
                self.stages
                    .iter()
                    .map(|s| format!("{}={}", s.name, s.steps))
                    .collect::<Vec<_>>()
                    .join(" + "),
                self.train.steps
            ));
        }
        Ok(())
    }

    /// The stage plan: `[[stages]]` in order, or one stage from `data.path` at `train.seq_len` with
    /// `default_theta` (the model's RoPE θ) when none are given.
    pub fn stage_plan(&self, default_theta: f64) -> Vec<Stage> {
        if self.stages.is_empty() {
            return vec![Stage {
                index: 0,
                name: String::new(),
                data: self.data.path.clone(),
                start: 0,
                end: self.train.steps,
                seq_len: self.train.seq_len,
                rope_theta: default_theta,
                batch_size: self.train.batch_size,
            }];
        }
        let mut start = 0;
        self.stages
            .iter()
            .enumerate()
            .map(|(index, s)| {
                let st = Stage {
                    index,
                    name: s.name.clone(),
                    data: s.data.clone(),
                    start,
                    end: start + s.steps,
                    seq_len: s.seq_len,
                    rope_theta: s.rope_theta,
                    batch_size: s.batch_size.unwrap_or(self.train.batch_size),
                };
                start = st.end;
                st
            })
            .collect()
    }

    /// The tokenizer file to use, if any: `data.tokenizer`, else the init model's, else `fallback`.
    pub fn tokenizer_path(&self, fallback: Option<&Path>) -> Option<PathBuf> {
        if !self.data.tokenizer.as_os_str().is_empty() {
            return Some(self.data.tokenizer.clone());
        }
        let from_model = self.model.init.join("tokenizer.json");
        if !self.model.init.as_os_str().is_empty() && from_model.is_file() {
            return Some(from_model);
        }
        fallback.filter(|p| p.is_file()).map(Path::to_path_buf)
    }
}

impl LoopArgs {
    /// The step the loop stops at: `steps`, or `stop_after` when that is set (> 0) and smaller.
    pub fn stop_step(&self) -> usize {
        match self.stop_after {
            0 => self.steps,
            n => n.min(self.steps),
        }
    }
}

/// A resolved stage of the schedule: optimizer steps `start..end` (0-based) and what they train on.
#[derive(Debug, Clone, PartialEq)]
pub struct Stage {
    /// Position in the plan (0 without `[[stages]]`).
    pub index: usize,
    /// Stage name (empty without `[[stages]]`).
    pub name: String,
    /// Packed dataset directory.
    pub data: PathBuf,
    /// First optimizer step of the stage (0-based).
    pub start: usize,
    /// One past its last step.
    pub end: usize,
    /// Tokens per sequence.
    pub seq_len: usize,
    /// RoPE θ.
    pub rope_theta: f64,
    /// Sequences per micro-batch.
    pub batch_size: usize,
}

impl OptimArgs {
    /// LR at optimizer step `step` (0-based) of `total`: linear warmup from 0 (step 0 gets lr/warmup), constant,
    /// then cosine down to `min_lr` over the last `decay_fraction` of the steps.
    pub fn lr_at(&self, step: usize, total: usize) -> f64 {
        if step < self.warmup_steps {
            return self.lr * (step + 1) as f64 / self.warmup_steps as f64;
        }
        let decay = ((total as f64) * self.decay_fraction).round() as usize;
        let start = total.saturating_sub(decay).max(self.warmup_steps);
        if step < start || decay == 0 {
            return self.lr;
        }
        let span = (total - start).max(1) as f64;
        let progress = ((step - start) as f64 / span).min(1.0);
        self.min_lr
            + 0.5 * (self.lr - self.min_lr) * (1.0 + (std::f64::consts::PI * progress).cos())
    }
}

impl MtpArgs {
    /// λ at step `step` of `total`.
    pub fn lambda_at(&self, step: usize, total: usize) -> f64 {
        if (step as f64) < self.switch_fraction * total as f64 {
            self.lambda
        } else {
            self.lambda_late
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_parse_and_round_trip() {
        let d = TrainArgs::default();
        assert_eq!(d.mode, Mode::Pretrain);
        assert_eq!(d.optim.adamw.beta2, 0.95);
        assert_eq!(d.optim.adamw.weight_decay, 0.1);
        assert_eq!(d.train.device, "cpu");
        let back: TrainArgs = toml::from_str(&d.to_toml()).unwrap();
        assert_eq!(back, d);
    }

    #[test]
    fn layers_and_sets() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("x.toml");
        std::fs::write(
            &f,
            "mode = \"sft\"\n[data]\npath = \"d.jsonl\"\n[model]\ninit = \"m\"\n",
        )
        .unwrap();
        let a = TrainArgs::load(
            std::slice::from_ref(&f),
            &["optim.lr=1e-3".into(), "out=/tmp/r x".into()],
        )
        .unwrap();
        assert_eq!(a.mode, Mode::Sft);
        assert_eq!(a.optim.lr, 1e-3);
        assert_eq!(a.out, PathBuf::from("/tmp/r x"));
        let e = TrainArgs::load(std::slice::from_ref(&f), &["optim.lrr=1".into()]).unwrap_err();
        assert!(e.to_string().contains("lrr"), "{e}");
        std::fs::write(&f, "[train]\nstepz = 3\n").unwrap();
        let e = TrainArgs::load(&[f], &[]).unwrap_err();
        assert!(
            e.to_string().contains("x.toml") && e.to_string().contains("stepz"),
            "{e}"
        );
    }

    #[test]
    fn optim_table_is_flat_and_strict() {
        // The AdamW keys are flattened into [optim]; unknown keys there are still rejected, naming the key.
        let a = TrainArgs::from_toml_str(
            "[model]\nconfig = \"c.json\"\n[data]\npath = \"d\"\n[optim]\nbeta1 = 0.8\ngrad_clip = 2",
        )
        .unwrap();
        assert_eq!((a.optim.adamw.beta1, a.optim.adamw.grad_clip), (0.8, 2.0));
        assert_eq!(a.optim.lr, 3e-4);
        let e = TrainArgs::layered(&[], &["optim.betta1=0.8".into()]).unwrap_err();
        assert!(e.to_string().contains("unknown field `betta1`"), "{e}");
        let e = TrainArgs::from_toml_str("[optim]\nadam_eps = 1e-8").unwrap_err();
        assert!(e.to_string().contains("adam_eps"), "{e}");
        let mut a = TrainArgs::default();
        a.model.config = "c.json".into();
        a.data.path = "d".into();
        a.optim.adamw.beta2 = 1.0;
        let e = a.validate().unwrap_err().to_string();
        assert!(e.contains("optim.beta2 = 1"), "{e}");
        a.optim.adamw.beta2 = 0.95;
        a.optim.adamw.eps = 0.0;
        let e = a.validate().unwrap_err().to_string();
        assert!(e.contains("optim.eps"), "{e}");
    }

    #[cfg(feature = "tch")]
    #[test]
    fn device_setting() {
        assert_eq!(parse_device("cpu").unwrap(), tch::Device::Cpu);
        for bad in ["gpu", "cuda:x", "cuda:-1", ""] {
            let e = parse_device(bad).unwrap_err().to_string();
            assert!(
                e.contains("train.device") && e.contains("cuda:N"),
                "{bad}: {e}"
            );
        }
        let n = tch::Cuda::device_count().max(0) as usize;
        let e = parse_device(&format!("cuda:{n}")).unwrap_err().to_string();
        assert!(e.contains("CUDA device"), "{e}");
        let e = TrainArgs::layered(&[], &["train.device=tpu".into()])
            .and_then(|a| {
                let mut a = a;
                a.model.config = "c.json".into();
                a.data.path = "d".into();
                a.validate()
            })
            .unwrap_err()
            .to_string();
        assert!(e.contains("train.device = \"tpu\""), "{e}");
    }

    const STAGES: &str = r#"
[model]
config = "c.json"
[train]
steps = 6
[[stages]]
name = "s1"
data = "d1"
steps = 2
seq_len = 16
rope_theta = 10000.0
[[stages]]
name = "s2"
data = "d2"
steps = 2
seq_len = 16
rope_theta = 10000.0
[[stages]]
name = "s3"
data = "d3"
steps = 2
seq_len = 64
rope_theta = 640000.0
batch_size = 1
"#;

    fn stage_err(edit: impl FnOnce(&mut TrainArgs)) -> String {
        let mut a = TrainArgs::from_toml_str(STAGES).unwrap();
        edit(&mut a);
        a.validate().unwrap_err().to_string()
    }

    #[test]
    fn stages_parse_plan_and_round_trip() {
        let a = TrainArgs::from_toml_str(STAGES).unwrap();
        let plan = a.stage_plan(1.0);
        let spans: Vec<_> = plan
            .iter()
            .map(|s| (s.start, s.end, s.batch_size))
            .collect();
        assert_eq!(spans, vec![(0, 2, 8), (2, 4, 8), (4, 6, 1)]);
        assert_eq!(plan[2].rope_theta, 640000.0);
        let back: TrainArgs = toml::from_str(&a.to_toml()).unwrap();
        assert_eq!(back, a);
        // Without stages: one stage from data.path with the model's θ.
        let d = TrainArgs::default();
        assert!(d.stages.is_empty());
        let plan = d.stage_plan(5.0);
        assert_eq!(plan.len(), 1);
        assert_eq!(
            (plan[0].end, plan[0].seq_len, plan[0].rope_theta),
            (100, 256, 5.0)
        );
    }

    #[test]
    fn bad_stage_lists_name_the_field() {
        let e = stage_err(|a| a.train.steps = 7);
        assert!(
            e.contains("sum to 6") && e.contains("train.steps = 7"),
            "{e}"
        );
        let e = stage_err(|a| a.stages[1].steps = 0);
        assert!(e.contains("stages[1] (s2)") && e.contains("steps"), "{e}");
        let e = stage_err(|a| a.stages[2].name = "s1".into());
        assert!(
            e.contains("stages[2].name") && e.contains("stages[0]"),
            "{e}"
        );
        let e = stage_err(|a| a.stages[0].rope_theta = 0.0);
        assert!(
            e.contains("stages[0] (s1)") && e.contains("rope_theta"),
            "{e}"
        );
        let e = stage_err(|a| a.stages[2].seq_len = 1);
        assert!(e.contains("seq_len"), "{e}");
        let e = stage_err(|a| a.stages[0].data = PathBuf::new());
        assert!(e.contains("stages[0] (s1)") && e.contains("data"), "{e}");
        let e = stage_err(|a| a.stages[2].batch_size = Some(0));
        assert!(e.contains("batch_size"), "{e}");
        let e = stage_err(|a| a.data.path = "p".into());
        assert!(e.contains("data.path") && e.contains("exclusive"), "{e}");
        let e = stage_err(|a| a.mode = Mode::Sft);
        assert!(e.contains("pretrain"), "{e}");
        let e = TrainArgs::from_toml_str(&STAGES.replace("seq_len = 64", "seqlen = 64"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("seqlen"), "{e}");
        let e = TrainArgs::from_toml_str(&STAGES.replace("rope_theta = 640000.0\n", ""))
            .unwrap_err()
            .to_string();
        assert!(e.contains("rope_theta"), "{e}");
    }

    #[test]
    fn example_configs_are_valid() {
        let tools = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tools/train");
        let a = TrainArgs::load(&[tools.join("tiny-mixture.toml")], &[]).unwrap();
        assert_eq!(a.stages.len(), 3);
        assert_eq!(a.stages[2].rope_theta, 640000.0);
        TrainArgs::load(&[tools.join("tiny-pretrain.toml")], &[]).unwrap();
    }

    #[test]
    fn lr_schedule_shape() {
        let o = OptimArgs {
            lr: 1.0,
            min_lr: 0.1,
            warmup_steps: 10,
            decay_fraction: 0.5,
            ..TrainArgs::default().optim
        };
        assert!((o.lr_at(0, 100) - 0.1).abs() < 1e-12);
        assert_eq!(o.lr_at(9, 100), 1.0);
        assert_eq!(o.lr_at(30, 100), 1.0);
        assert_eq!(o.lr_at(50, 100), 1.0);
        assert!((o.lr_at(75, 100) - 0.55).abs() < 1e-9);
        assert!(o.lr_at(99, 100) > 0.1 && o.lr_at(99, 100) < 0.11);
        let m = MtpArgs {
            lambda: 0.3,
            lambda_late: 0.1,
            switch_fraction: 0.4,
        };
        assert_eq!(m.lambda_at(39, 100), 0.3);
        assert_eq!(m.lambda_at(40, 100), 0.1);
    }
}
