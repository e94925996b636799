//! `mimo eval --model DIR --data F.jsonl --k 8`: avg@k and unbiased pass@k through the engine (design §5.1);
//! `--base-url URL --served-model NAME` evaluates an OpenAI-compatible endpoint instead (resumable).

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use mimo_engine::engine::EngineConfig;
use mimo_engine::Loaded;
use mimo_eval::remote::{evaluate_remote, Endpoint};
use mimo_eval::{evaluate, markdown, EvalOptions};
use mimo_reward::load_problems;

use crate::{Placement, UsageError};

/// `mimo eval` arguments.
#[derive(Args)]
pub struct EvalArgs {
    /// HF model directory (with tokenizer.json), or a GGUF file; not with --base-url.
    #[arg(
        long,
        required_unless_present = "base_url",
        conflicts_with = "base_url"
    )]
    model: Option<PathBuf>,
    /// Evaluate an OpenAI-compatible endpoint (vLLM, SGLang, `mimo serve`), e.g. http://127.0.0.1:8000/v1.
    #[arg(long, requires = "served_model")]
    base_url: Option<String>,
    /// The endpoint's model name (the `model` field of requests).
    #[arg(long)]
    served_model: Option<String>,
    /// API key for the endpoint (default: $OPENAI_API_KEY when set).
    #[arg(long)]
    api_key: Option<String>,
    /// Requests in flight at once (--base-url).
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Retries of a request that fails with a transport error, a timeout, 429 or 5xx (--base-url).
    #[arg(long, default_value_t = 3)]
    retries: usize,
    /// Limit on one request, generation included, in seconds (--base-url).
    #[arg(long, default_value_t = 3600.0)]
    request_timeout_s: f64,
    /// Write the report as a Markdown table here.
    #[arg(long)]
    report_md: Option<PathBuf>,
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
    /// Most generated tokens per sample (default: 1024 in process, 32768 for --base-url, the paper's setting).
    #[arg(long)]
    max_tokens: Option<usize>,
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
    /// Write every sample (text, extracted answer, verdict) here as JSONL. With --base-url samples are appended
    /// as they finish and a rerun resumes from them (default there: eval_samples.jsonl).
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
    let remote = args.base_url.is_some();
    let opts = EvalOptions {
        k: args.k,
        temperature: args.temperature,
        top_p: args.top_p,
        max_tokens: args
            .max_tokens
            .unwrap_or(if remote { 32_768 } else { 1024 }),
        seed: args.seed,
        ..Default::default()
    };
    let opts = match args.instruction.clone() {
        Some(instruction) => EvalOptions {
            instruction,
            ..opts
        },
        None => opts,
    };
    let t0 = std::time::Instant::now();
    let report = match &args.base_url {
        Some(url) => {
            if !(args.request_timeout_s.is_finite() && args.request_timeout_s > 0.0) {
                return Err(UsageError("--request-timeout-s must be > 0".into()).into());
            }
            let ep = Endpoint {
                base_url: url.clone(),
                model: args.served_model.clone().unwrap_or_default(),
                api_key: args
                    .api_key
                    .clone()
                    .or_else(|| std::env::var("OPENAI_API_KEY").ok()),
                concurrency: args.concurrency.max(1),
                retries: args.retries,
                timeout: std::time::Duration::from_secs_f64(args.request_timeout_s),
            };
            let path = args
                .samples
                .clone()
                .unwrap_or_else(|| PathBuf::from("eval_samples.jsonl"));
            evaluate_remote(&ep, &problems, &opts, &path)?
        }
        None => {
            let model = args.model.as_ref().context("--model is required")?;
            let (device, fmt) = args.place.resolve()?;
            let cfg = args.pool.settings().apply(EngineConfig {
                max_num_seqs: args.max_num_seqs,
                mtp_drafts: args.mtp,
                kv_dtype: args.place.kv_dtype()?,
                ..Default::default()
            });
            let mut l = Loaded::open(model, fmt, &device, cfg)?;
            let (engine, text) = l.engine_and_text()?;
            let report = evaluate(engine, text, &problems, &opts)?;
            if let Some(path) = &args.samples {
                write_samples(path, &report.samples)?;
            }
            report
        }
    };
    let secs = t0.elapsed().as_secs_f64();
    if let Some(path) = &args.report_md {
        let title = format!(
            "{} on {}",
            args.served_model.as_deref().unwrap_or("model"),
            args.data.display()
        );
        std::fs::write(path, markdown(&report, &title))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    let mut v = serde_json::to_value(&report)?;
    v["seconds"] = serde_json::json!(secs);
    v["tokens_per_s"] = serde_json::json!(report.completion_tokens as f64 / secs.max(1e-9));
    crate::write_stdout(&v.to_string())
}

fn write_samples(path: &std::path::Path, samples: &[mimo_eval::Sample]) -> Result<()> {
    let mut f = std::io::BufWriter::new(
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
    );
    for s in samples {
        writeln!(f, "{}", serde_json::to_string(s)?)?;
    }
    f.flush()?;
    Ok(())
}
