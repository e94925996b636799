//! `mimo rl` (GRPO with the Seamless Rollout Engine), `mimo rollout-bench` (seamless vs naive) and
//! `mimo pipeline` (the whole recipe). RL and the pipeline need the libtorch trainer (`train` feature); the
//! rollout benchmark runs on the candle engine alone.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

#[cfg(feature = "train")]
use crate::UsageError;

/// `mimo rl` options.
#[derive(Args)]
pub struct RlCli {
    /// TOML config files (keys of `mimo rl`, see `--print-config`), layered in order.
    #[arg(long)]
    config: Vec<PathBuf>,
    /// `key.path=value` overrides, applied after the files (repeatable).
    #[arg(long)]
    set: Vec<String>,
    /// Policy to start from (HF directory, usually the SFT model).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Training problems (JSONL from `mimo data synth`, or question/answer/tests lines).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Run directory.
    #[arg(long)]
    out: Option<PathBuf>,
    #[arg(long)]
    steps: Option<usize>,
    /// Rollout scheduling: seamless or naive.
    #[arg(long)]
    mode: Option<String>,
    /// Code reward: binary, strict or soft.
    #[arg(long)]
    code_reward: Option<String>,
    /// KV cache blocks of the rollout engine (config key `kv.num_kv_blocks`).
    #[arg(long)]
    num_kv_blocks: Option<usize>,
    /// Positions per KV block (config key `kv.block_size`).
    #[arg(long)]
    block_size: Option<usize>,
    /// Turn the rollout engine's prefix caching off (config key `kv.prefix_caching`).
    #[arg(long)]
    no_prefix_caching: bool,
    /// Roll out on these `mimo serve --enable-weight-updates` servers instead of in process (comma-separated
    /// base URLs; config key `rollout_servers`).
    #[arg(long, value_delimiter = ',')]
    rollout_servers: Vec<String>,
    /// API key of the rollout servers (default: $OPENAI_API_KEY when set); never written to the run.
    #[arg(long)]
    rollout_api_key: Option<String>,
    /// Print the effective config and exit.
    #[arg(long)]
    print_config: bool,
}

/// `mimo rollout-bench` options.
#[derive(Args)]
pub struct RolloutBenchCli {
    /// Model to roll out (not needed with --simulate).
    #[arg(long, required_unless_present = "simulate")]
    model: Option<PathBuf>,
    /// Problems (JSONL; not needed with --simulate).
    #[arg(long, required_unless_present = "simulate")]
    data: Option<PathBuf>,
    /// Model a GPU-like device instead of this CPU: a decode step costs --step-ms whatever the batch, a reward
    /// --reward-ms on one of 4 workers; problems: --always-fail and --always-pass of them always fail and
    /// always pass, the rest pass half the time.
    #[arg(long)]
    simulate: bool,
    #[arg(long, default_value_t = 2.0)]
    step_ms: f64,
    #[arg(long, default_value_t = 20.0)]
    reward_ms: f64,
    /// Share of simulated problems that always fail (`mimo pipeline` uses the share its RL stage measured).
    #[arg(long, default_value_t = 0.3)]
    always_fail: f64,
    /// Share of simulated problems that always pass.
    #[arg(long, default_value_t = 0.2)]
    always_pass: f64,
    /// Problem kinds to draw (default: all in the file).
    #[arg(long, value_delimiter = ',')]
    kinds: Vec<String>,
    #[arg(long, default_value_t = 3)]
    steps: usize,
    #[arg(long, default_value_t = 8)]
    groups: usize,
    #[arg(long, default_value_t = 8)]
    group_size: usize,
    /// Length of a short rollout in tokens (EOS does not stop it; the reward sees the text up to the first
    /// EOS, so this should exceed the model's natural response length).
    #[arg(long, default_value_t = 128)]
    short: usize,
    #[arg(long, default_value_t = 512)]
    long: usize,
    #[arg(long, default_value_t = 0.05)]
    long_fraction: f64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

/// `mimo pipeline` options.
#[derive(Args)]
pub struct PipelineCli {
    /// TOML files layered over the embedded `configs/tiny.toml`.
    #[arg(long)]
    config: Vec<PathBuf>,
    /// `key.path=value` overrides, applied after the files (repeatable), e.g. `--set rl.steps=10`.
    #[arg(long)]
    set: Vec<String>,
    /// Run directory (default `runs/<UTC timestamp>`).
    #[arg(long)]
    out: Option<PathBuf>,
    #[arg(long)]
    seed: Option<u64>,
    /// Print the effective config and exit.
    #[arg(long)]
    print_config: bool,
}

#[cfg(feature = "train")]
fn layered_rl(opts: &RlCli) -> Result<mimo_rl::rl::RlArgs> {
    let mut args: mimo_rl::rl::RlArgs = mimo_config::layered("", &opts.config, &opts.set)
        .map_err(|e| UsageError(format!("rl config: {e}")))?;
    if let Some(m) = &opts.model {
        args.model = m.clone();
    }
    if let Some(d) = &opts.data {
        args.data = d.clone();
    }
    if let Some(o) = &opts.out {
        args.out = o.clone();
    }
    if let Some(s) = opts.steps {
        args.steps = s;
    }
    if opts.num_kv_blocks.is_some() {
        args.kv.num_kv_blocks = opts.num_kv_blocks;
    }
    if let Some(b) = opts.block_size {
        args.kv.block_size = b;
    }
    if opts.no_prefix_caching {
        args.kv.prefix_caching = false;
    }
    if !opts.rollout_servers.is_empty() {
        args.rollout_servers = opts.rollout_servers.clone();
    }
    args.rollout_api_key = opts
        .rollout_api_key
        .clone()
        .or_else(|| std::env::var("OPENAI_API_KEY").ok());
    let parse = |what: &str, v: &str| -> Result<toml::Value> {
        Ok(toml::Value::try_from(v).map_err(|e| UsageError(format!("--{what}: {e}")))?)
    };
    if let Some(m) = &opts.mode {
        args.rollout.mode = parse("mode", m)?
            .try_into()
            .map_err(|_| UsageError(format!("--mode {m:?}: expected seamless or naive")))?;
    }
    if let Some(c) = &opts.code_reward {
        args.code_reward = parse("code-reward", c)?.try_into().map_err(|_| {
            UsageError(format!(
                "--code-reward {c:?}: expected binary, strict or soft"
            ))
        })?;
    }
    Ok(args)
}

/// Runs `mimo rl`.
#[cfg(feature = "train")]
pub fn rl(opts: RlCli) -> Result<()> {
    let args = layered_rl(&opts)?;
    if opts.print_config {
        return crate::write_stdout(&args.to_toml());
    }
    args.validate().map_err(|e| UsageError(e.to_string()))?;
    let report = mimo_rl::rl::run_rl(&args, |_| {})?;
    crate::write_stdout(&serde_json::to_string(&report)?)
}

/// Without the trainer there is no `mimo rl`.
#[cfg(not(feature = "train"))]
pub fn rl(_: RlCli) -> Result<()> {
    anyhow::bail!(
        "this mimo was built without the trainer: rebuild with `--features train` (see README)"
    )
}

/// Runs `mimo rollout-bench`: prints one JSON object with both modes' per-step stats and the speedup.
pub fn rollout_bench(a: RolloutBenchCli) -> Result<()> {
    let bench = mimo_rl::bench::BenchSection {
        steps: a.steps,
        groups: a.groups,
        group_size: a.group_size,
        short: a.short,
        long: a.long,
        long_fraction: a.long_fraction,
    };
    let (seamless, naive, same) = match (&a.model, &a.data, a.simulate) {
        (_, _, true) => {
            let dev = mimo_rl::bench::SimDevice {
                step_ms: a.step_ms,
                reward_ms: a.reward_ms,
                always_fail: a.always_fail,
                always_pass: a.always_pass,
                ..Default::default()
            };
            if !(a.always_fail >= 0.0
                && a.always_pass >= 0.0
                && a.always_fail + a.always_pass < 1.0)
            {
                return Err(crate::UsageError(format!(
                    "--always-fail {} and --always-pass {} must be >= 0 and leave some problems that sometimes pass",
                    a.always_fail, a.always_pass
                ))
                .into());
            }
            mimo_rl::bench::rollout_bench_simulated(&bench, dev, a.seed)?
        }
        (Some(model), Some(data), false) => {
            mimo_rl::bench::rollout_bench(model, data, &a.kinds, &bench, a.seed)?
        }
        _ => {
            return Err(crate::UsageError(
                "--model and --data are required without --simulate".into(),
            )
            .into())
        }
    };
    let wall = |v: &[mimo_rl::RolloutStats]| v.iter().map(|s| s.wall_s).sum::<f64>();
    let out = serde_json::json!({
        "speedup": wall(&naive) / wall(&seamless).max(1e-9),
        "identical_batches": same,
        "device": if a.simulate { "simulated" } else { "cpu" },
        "seamless": seamless,
        "naive": naive,
    });
    crate::write_stdout(&out.to_string())
}

/// Runs `mimo pipeline`.
#[cfg(feature = "train")]
pub fn pipeline(opts: PipelineCli) -> Result<()> {
    let mut args = mimo_pipeline::PipelineArgs::layered(&opts.config, &opts.set)
        .map_err(|e| UsageError(e.to_string()))?;
    if let Some(s) = opts.seed {
        args.seed = s;
    }
    if let Some(o) = &opts.out {
        args.out = o.clone();
    }
    if opts.print_config {
        return crate::write_stdout(&toml::to_string(&args)?);
    }
    let out = if args.out.as_os_str().is_empty() {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        PathBuf::from(format!("runs/{}", utc_stamp(secs)))
    } else {
        args.out.clone()
    };
    eprintln!("mimo pipeline → {}", out.display());
    let report = mimo_pipeline::run_pipeline(&args, &out, |line| eprintln!("[pipeline] {line}"))?;
    eprintln!("report: {}", out.join("report.md").display());
    crate::write_stdout(&serde_json::to_string(&report)?)
}

/// Without the trainer there is no pipeline.
#[cfg(not(feature = "train"))]
pub fn pipeline(_: PipelineCli) -> Result<()> {
    anyhow::bail!(
        "this mimo was built without the trainer: rebuild with `--features train` (see README)"
    )
}

/// `YYYYmmdd-HHMMSS` in UTC from Unix seconds (civil-from-days, Howard Hinnant's algorithm).
#[cfg(feature = "train")]
fn utc_stamp(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + (m <= 2) as i64;
    format!(
        "{y:04}{m:02}{d:02}-{:02}{:02}{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}
