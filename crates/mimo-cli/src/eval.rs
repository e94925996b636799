//! `mimo eval --model DIR --data F.jsonl --k 8`: avg@k and unbiased pass@k through the engine (design §5.1).

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use mimo_engine::engine::EngineConfig;
use mimo_engine::Loaded;
use mimo_eval::{evaluate, EvalOptions};
use mimo_reward::load_problems;

use crate::{Placement, UsageError};

/// `mimo eval` arguments.
#[derive(Args)]
pub struct EvalArgs {
    /// HF model directory (with tokenizer.json).
    #[arg(long)]
    model: PathBuf,
    /// JSONL set with `question`/`problem` and `answer` (GSM8K, AIME, AMC layouts).
    #[arg(long)]
    data: PathBuf,
    /// Samples per problem.
    #[arg(long, default_value_t = 8)]
    k: usize,
    /// Evaluate only the first N problems.
    #[arg(long)]
    limit: Option<usize>,
    #[arg(long, default_value_t = 0.6)]
    temperature: f32,
    #[arg(long, default_value_t = 0.95)]
    top_p: f32,
    #[arg(long, default_value_t = 1024)]
    max_tokens: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Appended to each question in the user message (default: the paper's "Please reason step by step, and
    /// put your final answer within \boxed{}."; pass "" for models trained without it).
    #[arg(long)]
    instruction: Option<String>,
    /// Sequences decoded at once.
    #[arg(long, default_value_t = 32)]
    max_num_seqs: usize,
    /// MTP draft tokens per step.
    #[arg(long, default_value_t = 0)]
    mtp: usize,
    /// Write every sample (text, extracted answer, verdict) here as JSONL.
    #[arg(long)]
    samples: Option<PathBuf>,
    #[command(flatten)]
    place: Placement,
    #[command(flatten)]
    pool: crate::PoolArgs,
}

/// Runs the evaluation and prints the report as JSON.
pub fn run(args: EvalArgs) -> Result<()> {
    if args.k == 0 {
        return Err(UsageError("--k must be > 0".into()).into());
    }
    let mut problems = load_problems(&args.data, &[]).map_err(|e| UsageError(e.to_string()))?;
    if let Some(n) = args.limit {
        problems.truncate(n);
    }
    let (device, fmt) = args.place.resolve()?;
    let cfg = args.pool.settings().apply(EngineConfig {
        max_num_seqs: args.max_num_seqs,
        mtp_drafts: args.mtp,
        kv_dtype: args.place.kv_dtype()?,
        ..Default::default()
    });
    let mut l = Loaded::open(&args.model, fmt, &device, cfg)?;
    let opts = EvalOptions {
        k: args.k,
        temperature: args.temperature,
        top_p: args.top_p,
        max_tokens: args.max_tokens,
        seed: args.seed,
        ..Default::default()
    };
    let opts = match args.instruction {
        Some(instruction) => EvalOptions {
            instruction,
            ..opts
        },
        None => opts,
    };
    let t0 = std::time::Instant::now();
    let (engine, text) = l.engine_and_text()?;
    let report = evaluate(engine, text, &problems, &opts)?;
    let secs = t0.elapsed().as_secs_f64();
    if let Some(path) = &args.samples {
        let mut f = std::io::BufWriter::new(
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
        );
        for s in &report.samples {
            writeln!(f, "{}", serde_json::to_string(s)?)?;
        }
        f.flush()?;
    }
    let mut v = serde_json::to_value(&report)?;
    v["seconds"] = serde_json::json!(secs);
    v["tokens_per_s"] = serde_json::json!(report.completion_tokens as f64 / secs.max(1e-9));
    crate::write_stdout(&v.to_string())
}
