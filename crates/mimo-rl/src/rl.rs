//! `mimo rl`: MiMo's GRPO loop (design §3.3–3.5, §7.5).
//!
//! Each step: the rollout engine fills a batch of valid groups from the candle engine (current policy), the
//! libtorch [`GrpoTrainer`] recomputes old log-probs and runs its mini-batch updates (MTP layers frozen), and
//! the new weights go back to the engine **in process** ([`MimoModel::from_host_weights`], no disk round-trip).
//! With `rollout_servers`, rollouts come from remote `mimo serve --enable-weight-updates` servers instead
//! ([`crate::remote`]) and each new policy is written to `weights_dir` and posted to them.
//!
//! Run directory (`out`): `config.toml`, `metrics.jsonl` (one line per step: rollout timings, waste, reward,
//! loss, clip fractions), `model/` (final HF checkpoint with tokenizer files), `report.json`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Device};
use mimo_engine::engine::{Engine, EngineConfig, PoolSettings};
use mimo_model::MimoModel;
use mimo_reward::{load_problems, CodeReward, RewardSettings};
use mimo_text::ModelText;
use mimo_train::grpo::{Group, GrpoArgs, GrpoTrainer, MismatchStats, Rollout, UpdateStats};
use mimo_train::model::TrainModel;
use mimo_train::parallel::{digest, DataParallel};
use serde::{Deserialize, Serialize};

use crate::error::{Result, RlError};
use crate::overlap::run_overlapped;
use crate::remote::{FleetSettings, RemoteFleet};
use crate::rollout::{EngineGenerator, GroupOut, RolloutArgs, RolloutEngine, RolloutStats};

/// `mimo rl` settings (TOML; every key has a default).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RlArgs {
    pub seed: u64,
    /// Run directory.
    pub out: PathBuf,
    /// The policy to start from (HF directory with tokenizer files), usually the SFT model.
    pub model: PathBuf,
    /// Training problems (JSONL).
    pub data: PathBuf,
    /// Keep only these problem kinds (empty: all).
    pub kinds: Vec<String>,
    /// GRPO steps (one batch of valid groups each).
    pub steps: usize,
    /// Appended to each problem in the user message.
    pub instruction: String,
    /// Engine slots for rollouts.
    pub max_num_seqs: usize,
    /// The rollout engine's KV pool and scheduler (`[kv]`: `num_kv_blocks`, `block_size`, `prefix_caching`,
    /// `max_num_batched_tokens`).
    pub kv: PoolSettings,
    /// Trainer threads (0 = libtorch default).
    pub threads: usize,
    pub code_reward: CodeReward,
    pub rollout: RolloutArgs,
    pub grpo: GrpoArgs,
    /// Off-policy overlap ([`crate::overlap`]): the batch of step `s` is sampled with the policy after
    /// `max(0, s − max_staleness)` updates while earlier steps train; 0 is the sequential loop.
    pub max_staleness: usize,
    /// Remote rollout servers (`mimo serve --enable-weight-updates` base URLs); empty: the in-process engine.
    /// `max_num_seqs` is then the requests in flight per server.
    pub rollout_servers: Vec<String>,
    /// Where each new policy is written for the servers to load: a path they can read as it is named here
    /// (a shared file system); empty: `<out>/weights`.
    pub weights_dir: PathBuf,
    /// Longest time one remote rollout request may take, in seconds.
    pub remote_timeout_s: f64,
    /// Tries per remote rollout request, across servers, before the step fails.
    pub remote_attempts: usize,
    /// The servers' API key; never written to `config.toml` (`mimo rl --rollout-api-key`, default
    /// `$OPENAI_API_KEY`).
    #[serde(skip)]
    pub rollout_api_key: Option<String>,
    /// Start over even if `out` holds a finished run.
    pub force: bool,
}

impl Default for RlArgs {
    fn default() -> Self {
        Self {
            seed: 0,
            out: PathBuf::from("runs/rl"),
            model: PathBuf::new(),
            data: PathBuf::new(),
            kinds: vec![],
            steps: 20,
            instruction: String::new(),
            max_num_seqs: 64,
            kv: PoolSettings::default(),
            threads: 0,
            code_reward: CodeReward::Soft,
            rollout: RolloutArgs::default(),
            grpo: GrpoArgs::default(),
            max_staleness: 0,
            rollout_servers: vec![],
            weights_dir: PathBuf::new(),
            remote_timeout_s: 600.0,
            remote_attempts: 4,
            rollout_api_key: None,
            force: false,
        }
    }
}

impl RlArgs {
    /// Parses TOML over the defaults.
    pub fn from_toml_str(s: &str) -> Result<Self> {
        toml::from_str(s).map_err(|e| RlError::Config(e.to_string()))
    }

    /// The effective config as TOML.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_default()
    }

    /// Checks paths and values before anything runs.
    pub fn validate(&self) -> Result<()> {
        if !self.model.join("config.json").is_file() {
            return Err(RlError::Config(format!(
                "model = {:?}: not a model directory (no config.json)",
                self.model
            )));
        }
        if !self.data.is_file() {
            return Err(RlError::Config(format!(
                "data = {:?}: file not found",
                self.data
            )));
        }
        if self.steps == 0 || self.max_num_seqs == 0 {
            return Err(RlError::Config("steps and max_num_seqs must be > 0".into()));
        }
        let remote_ok = self.remote_timeout_s.is_finite()
            && self.remote_timeout_s > 0.0
            && self.remote_attempts > 0;
        if !self.rollout_servers.is_empty() && !remote_ok {
            return Err(RlError::Config(
                "remote_timeout_s must be > 0 and remote_attempts ≥ 1".into(),
            ));
        }
        self.grpo.validate()?;
        Ok(())
    }
}

/// Where rollouts are generated: the in-process candle engine, or remote servers.
enum Rollouts {
    Local(Box<Engine>),
    Remote(RemoteFleet),
}

impl Rollouts {
    /// Serves policy `version` from now on (an update's weights; between batches only).
    fn install(
        &mut self,
        args: &RlArgs,
        version: u64,
        w: &mimo_model::HostWeights,
        cfg: &mimo_model::ModelConfig,
    ) -> Result<()> {
        match self {
            Rollouts::Local(e) => Ok(e.replace_model(Arc::new(host_model(w, cfg)?))?),
            Rollouts::Remote(f) => {
                let dir = match args.weights_dir.as_os_str().is_empty() {
                    true => crate::remote::default_weights_dir(&args.out),
                    false => args.weights_dir.clone(),
                };
                f.publish(version, w, &args.model, &dir)
            }
        }
    }

    /// One training batch of valid groups from the current policy.
    fn collect(
        &mut self,
        rollout: &mut RolloutEngine,
        max_num_seqs: usize,
    ) -> Result<(Vec<GroupOut>, RolloutStats)> {
        match self {
            Rollouts::Local(e) => rollout.collect(&mut EngineGenerator::new(e, max_num_seqs)),
            Rollouts::Remote(f) => rollout.collect(f),
        }
    }
}

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RlStepMetrics {
    pub step: usize,
    pub rollout: RolloutStats,
    /// Mean reward over the selected (valid) groups.
    pub batch_reward: f64,
    pub loss: f64,
    pub clip_low: f64,
    pub clip_high: f64,
    pub approx_kl: f64,
    /// Rollout (engine) vs trainer log-probs of the sampled tokens and the truncated IS weights.
    #[serde(default)]
    pub mismatch: MismatchStats,
    pub grad_norm: f64,
    pub update_s: f64,
    /// Weight hand-off trainer → engine.
    pub handoff_s: f64,
    /// The policy version (updates taken) that sampled this step's batch.
    #[serde(default)]
    pub weight_version: u64,
    /// Updates taken by the trainer since that version (0 on the sequential loop).
    #[serde(default)]
    pub staleness: u64,
    pub mean_response_tokens: f64,
    pub elapsed_s: f64,
}

/// What `mimo rl` returns (also `report.json`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RlReport {
    pub steps: usize,
    pub model: PathBuf,
    pub seconds: f64,
    pub mean_reward_first: f64,
    pub mean_reward_last: f64,
    pub easy_pool: usize,
    pub rollout_wall_s: f64,
    pub update_s: f64,
    /// Remote rollout requests retried on another server (0 in process).
    #[serde(default)]
    pub remote_retries: u64,
}

/// Builds a candle model from the trainer's current weights.
pub fn engine_model(trainer: &GrpoTrainer, cfg: &mimo_model::ModelConfig) -> Result<MimoModel> {
    host_model(&trainer.export_weights(), cfg)
}

/// The engine's f32 CPU model from exported weights.
fn host_model(w: &mimo_model::HostWeights, cfg: &mimo_model::ModelConfig) -> Result<MimoModel> {
    Ok(MimoModel::from_host_weights(
        w,
        cfg,
        DType::F32,
        &Device::Cpu,
    )?)
}

/// Copies tokenizer and generation files next to a saved model.
pub fn copy_text_files(from: &Path, to: &Path) -> Result<()> {
    for name in [
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "generation_config.json",
        "chat_template.jinja",
    ] {
        let src = from.join(name);
        let dst = to.join(name);
        if src.is_file() && !dst.exists() {
            std::fs::copy(&src, &dst).map_err(|e| RlError::io(&dst, e))?;
        }
    }
    Ok(())
}

/// The selected groups as GRPO input; a response's engine log-probs go along when there is one per token.
pub fn to_groups(batch: &[GroupOut]) -> Vec<Group> {
    batch
        .iter()
        .map(|g| Group {
            rollouts: g
                .responses
                .iter()
                .zip(&g.rewards)
                .enumerate()
                .filter(|(_, (r, _))| !r.is_empty())
                .map(|(i, (r, &reward))| Rollout {
                    prompt: g.prompt.clone(),
                    response: r.clone(),
                    reward,
                    engine_logprobs: g.logprobs.get(i).filter(|lp| lp.len() == r.len()).cloned(),
                })
                .collect(),
        })
        .filter(|g: &Group| g.rollouts.len() >= 2)
        .collect()
}

/// Runs `mimo rl`. `on_step` sees every step's metrics (the pipeline uses it for its own progress display).
///
/// Launched with `WORLD_SIZE` > 1 (torchrun, Slurm), rank 0 runs the rollouts and every rank shares each GRPO
/// update data-parallel (rank 0's selected groups are broadcast, each rank trains its shard of the rows):
/// the single-process run's updates; rank 0 alone writes the run directory.
pub fn run_rl(args: &RlArgs, mut on_step: impl FnMut(&RlStepMetrics)) -> Result<RlReport> {
    args.validate()?;
    let out = &args.out;
    let report_path = out.join("report.json");
    let dp = DataParallel::from_env()?;
    dp.check_same("the rl config", digest(&args.to_toml()))?;
    if dp.is_main() {
        if report_path.exists() && !args.force {
            return Err(RlError::Config(format!(
                "{} holds a finished run (set force = true to start over)",
                out.display()
            )));
        }
        std::fs::create_dir_all(out).map_err(|e| RlError::io(out, e))?;
        std::fs::write(out.join("config.toml"), args.to_toml()).map_err(|e| RlError::io(out, e))?;
    }
    if args.threads > 0 {
        tch::set_num_threads(args.threads as i32);
    }
    let t_start = Instant::now();

    let policy = TrainModel::from_dir(&args.model, tch::Device::Cpu)?;
    let cfg = policy.config().clone();
    let grpo = GrpoArgs {
        temperature: if args.rollout.temperature > 0.0 {
            f64::from(args.rollout.temperature)
        } else {
            1.0
        },
        ..args.grpo.clone()
    };
    let mut trainer = GrpoTrainer::new(policy, grpo)?.with_data_parallel(dp)?;
    if !trainer.data_parallel().is_main() {
        return follow_updates(args, &mut trainer, t_start);
    }
    let (mut rollouts, mut rollout) = rollout_side(args, &trainer, &cfg)?;

    let mut log = StepLog::create(&out.join("metrics.jsonl"), args.steps)?;
    let mut record = |step: usize,
                      batch: &[GroupOut],
                      rollout: RolloutStats,
                      upd: &UpdateStats,
                      handoff_s: f64,
                      version: u64|
     -> Result<()> {
        let m = step_metrics(step, batch, rollout, upd, handoff_s, version, t_start);
        log.write(&m)?;
        on_step(&m);
        Ok(())
    };
    if args.max_staleness == 0 {
        for step in 0..args.steps {
            let (batch, rstats) = rollouts.collect(&mut rollout, args.max_num_seqs)?;
            let upd = update_on(&mut trainer, &batch)?;
            let t0 = Instant::now();
            rollouts.install(args, step as u64 + 1, &trainer.export_weights(), &cfg)?;
            let handoff_s = t0.elapsed().as_secs_f64();
            record(step, &batch, rstats, &upd, handoff_s, step as u64)?;
        }
    } else {
        // The rollout thread owns the engine (or the fleet); new weights travel to it as host tensors and are
        // installed (the hand-off) between its batches, never inside one.
        let (rollouts, rollout, trainer, cfg) = (&mut rollouts, &mut rollout, &mut trainer, &cfg);
        run_overlapped(
            args.steps,
            args.max_staleness,
            |_, install: Option<(u64, mimo_model::HostWeights)>| {
                let t0 = Instant::now();
                if let Some((version, w)) = install {
                    rollouts.install(args, version, &w, cfg)?;
                }
                let handoff_s = t0.elapsed().as_secs_f64();
                let (batch, rstats) = rollouts.collect(rollout, args.max_num_seqs)?;
                Ok((batch, rstats, handoff_s))
            },
            |step, (batch, rstats, handoff_s), version| {
                let upd = update_on(trainer, &batch)?;
                record(step, &batch, rstats, &upd, handoff_s, version)?;
                Ok(trainer.export_weights())
            },
        )?;
    }
    log.bar.finish();
    let model_dir = out.join("model");
    if model_dir.exists() {
        std::fs::remove_dir_all(&model_dir).map_err(|e| RlError::io(&model_dir, e))?;
    }
    trainer.save_hf(&model_dir, &[])?;
    copy_text_files(&args.model, &model_dir)?;
    let report = RlReport {
        steps: args.steps,
        model: model_dir,
        seconds: t_start.elapsed().as_secs_f64(),
        mean_reward_first: log.first_reward.unwrap_or(0.0),
        mean_reward_last: log.last_reward,
        easy_pool: rollout.sampler.easy_pool_len(),
        rollout_wall_s: log.rollout_wall,
        update_s: log.update_total,
        remote_retries: match &rollouts {
            Rollouts::Remote(f) => f.retries(),
            Rollouts::Local(_) => 0,
        },
    };
    let json = serde_json::to_string_pretty(&report).map_err(|e| RlError::Data(e.to_string()))?;
    std::fs::write(&report_path, json).map_err(|e| RlError::io(&report_path, e))?;
    Ok(report)
}

/// The candle engine on the trainer's current weights (or the remote servers, handed them as version 0), and the
/// rollout engine over the chat-formatted problems.
fn rollout_side(
    args: &RlArgs,
    trainer: &GrpoTrainer,
    cfg: &mimo_model::ModelConfig,
) -> Result<(Rollouts, RolloutEngine)> {
    let text = ModelText::load(&args.model)?;
    let problems = load_problems(&args.data, &args.kinds)?;
    let prompts = problems
        .iter()
        .map(|p| text.user_prompt_ids(&p.user_message(&args.instruction)))
        .collect::<std::result::Result<Vec<_>, _>>()?;

    let rollouts = if args.rollout_servers.is_empty() {
        Rollouts::Local(Box::new(Engine::new(
            Arc::new(engine_model(trainer, cfg)?),
            args.kv.apply(EngineConfig {
                max_num_seqs: args.max_num_seqs,
                eos_ids: text.eos_ids.clone(),
                max_model_len: Some(
                    prompts.iter().map(Vec::len).max().unwrap_or(0)
                        + args
                            .rollout
                            .max_tokens
                            .max(args.rollout.length_skew.map_or(0, |s| s.long))
                        + 8,
                ),
                ..Default::default()
            }),
        )?))
    } else {
        let mut r = Rollouts::Remote(RemoteFleet::new(&FleetSettings {
            urls: args.rollout_servers.clone(),
            api_key: args.rollout_api_key.clone(),
            per_server: args.max_num_seqs,
            request_timeout: std::time::Duration::from_secs_f64(args.remote_timeout_s),
            attempts: args.remote_attempts,
        })?);
        r.install(args, 0, &trainer.export_weights(), cfg)?;
        r
    };
    let tokenizer = text.tokenizer.clone();
    let settings = RewardSettings {
        code: args.code_reward,
        ..Default::default()
    };
    let rollout = RolloutEngine::new(
        args.rollout.clone(),
        problems,
        prompts,
        settings,
        args.seed,
        Box::new(move |ids: &[u32]| tokenizer.decode(ids, true).unwrap_or_default()),
    )?;
    Ok((rollouts, rollout))
}

/// One line of `metrics.jsonl` for a step whose batch was sampled with weight `version`.
fn step_metrics(
    step: usize,
    batch: &[GroupOut],
    rollout: RolloutStats,
    upd: &UpdateStats,
    handoff_s: f64,
    version: u64,
    t_start: Instant,
) -> RlStepMetrics {
    let lengths: Vec<usize> = batch
        .iter()
        .flat_map(|g| g.responses.iter().map(Vec::len))
        .collect();
    RlStepMetrics {
        step: step + 1,
        batch_reward: mean(batch.iter().flat_map(|g| g.rewards.iter().copied())),
        loss: upd.loss,
        clip_low: upd.clip_low,
        clip_high: upd.clip_high,
        approx_kl: upd.approx_kl,
        mismatch: upd.mismatch.clone(),
        grad_norm: upd.grad_norm,
        update_s: upd.seconds,
        handoff_s,
        weight_version: version,
        staleness: step as u64 - version,
        mean_response_tokens: mean(lengths.iter().map(|&n| n as f64)),
        elapsed_s: t_start.elapsed().as_secs_f64(),
        rollout,
    }
}

/// `metrics.jsonl`, the progress line and the run's running totals.
struct StepLog {
    path: PathBuf,
    file: std::fs::File,
    bar: mimo_train::progress::Progress,
    first_reward: Option<f64>,
    last_reward: f64,
    rollout_wall: f64,
    update_total: f64,
}

impl StepLog {
    fn create(path: &Path, steps: usize) -> Result<Self> {
        Ok(Self {
            path: path.to_path_buf(),
            file: std::fs::File::create(path).map_err(|e| RlError::io(path, e))?,
            bar: mimo_train::progress::Progress::new("rl", true, steps, 0),
            first_reward: None,
            last_reward: 0.0,
            rollout_wall: 0.0,
            update_total: 0.0,
        })
    }

    /// Appends one step's line, updates the totals and the progress line.
    fn write(&mut self, m: &RlStepMetrics) -> Result<()> {
        self.rollout_wall += m.rollout.wall_s;
        self.update_total += m.update_s;
        self.first_reward.get_or_insert(m.rollout.mean_reward);
        self.last_reward = m.rollout.mean_reward;
        let line = serde_json::to_string(m).map_err(|e| RlError::Data(e.to_string()))?;
        writeln!(self.file, "{line}").map_err(|e| RlError::io(&self.path, e))?;
        self.bar.set_message(format!(
            "reward {:.3} loss {:+.4} clip {:.3}/{:.3} |dlogp| {:.1e} waste {:.2} rollout {:.1}s update {:.1}s",
            m.rollout.mean_reward,
            m.loss,
            m.clip_low,
            m.clip_high,
            m.mismatch.mean_abs_dlogp,
            m.rollout.sample_waste,
            m.rollout.wall_s,
            m.update_s
        ));
        self.bar.inc();
        Ok(())
    }
}

/// A rank other than 0: takes part in every step's update on rank 0's groups, writes nothing.
fn follow_updates(args: &RlArgs, trainer: &mut GrpoTrainer, t_start: Instant) -> Result<RlReport> {
    for _ in 0..args.steps {
        update_on(trainer, &[])?;
    }
    Ok(RlReport {
        steps: args.steps,
        model: args.out.join("model"),
        seconds: t_start.elapsed().as_secs_f64(),
        ..Default::default()
    })
}

/// Rank 0's `groups` on every data-parallel rank (JSON over a c10d broadcast; others pass nothing).
fn share_groups(dp: &DataParallel, groups: Vec<Group>) -> Result<Vec<Group>> {
    if dp.world_size() == 1 {
        return Ok(groups);
    }
    let bytes = serde_json::to_vec(&groups).map_err(|e| RlError::Data(e.to_string()))?;
    let bytes = dp.broadcast_bytes(bytes)?;
    serde_json::from_slice(&bytes).map_err(|e| RlError::Data(format!("broadcast groups: {e}")))
}

/// One GRPO update on the selected groups (none when every group was dropped), shared by the data-parallel
/// ranks.
fn update_on(trainer: &mut GrpoTrainer, batch: &[GroupOut]) -> Result<UpdateStats> {
    let groups = share_groups(trainer.data_parallel(), to_groups(batch))?;
    Ok(if groups.is_empty() {
        UpdateStats::default()
    } else {
        trainer.update(&groups)?
    })
}

fn mean(xs: impl Iterator<Item = f64>) -> f64 {
    let (s, n) = xs.fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
    if n == 0 {
        0.0
    } else {
        s / n as f64
    }
}
