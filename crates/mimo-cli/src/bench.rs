//! `mimo bench`: engine throughput on a checkpoint, with HF transformers on the same checkpoint and shapes run
//! in the same command as the reference, printed as one JSON object with ratios.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use mimo_engine::engine::{Engine, EngineConfig};
use mimo_engine::SamplingParams;
use mimo_model::{ContiguousKvCache, MimoModel};
use serde_json::{json, Value};

use crate::Placement;

/// `mimo bench` arguments.
#[derive(Args)]
pub struct BenchArgs {
    /// HF model directory, GGUF file, or `mimo quantize` output.
    #[arg(long)]
    model: PathBuf,
    /// Prompt length in tokens (random ids).
    #[arg(long, default_value_t = 64)]
    prompt_len: usize,
    /// New tokens per sequence.
    #[arg(long, default_value_t = 64)]
    new_tokens: usize,
    /// Batch size of the throughput run.
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// Timed runs of each measurement, interleaved (batch 1, batch N, batch 1, ...); the median is reported.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=50))]
    repeat: u64,
    /// MTP drafts for extra speculative runs at batch 1 and batch N (0 = skip).
    #[arg(long, default_value_t = 0)]
    mtp: usize,
    /// SIMULATED: accept each MTP draft with this probability instead of verifying it, to measure the cost
    /// structure of speculative decoding on random weights at real shapes (the tokens are not the model's).
    #[arg(long, value_parser = parse_probability)]
    simulated_acceptance: Option<f32>,
    /// Python with torch + transformers for the reference run (default: .venv/bin/python; "none" skips it).
    #[arg(long)]
    python: Option<String>,
    #[command(flatten)]
    place: Placement,
    #[command(flatten)]
    pool: crate::PoolArgs,
}

fn parse_probability(s: &str) -> std::result::Result<f32, String> {
    match s.parse::<f32>() {
        Ok(p) if (0.0..=1.0).contains(&p) => Ok(p),
        _ => Err(format!("{s:?}: expected a probability in [0, 1]")),
    }
}

/// Deterministic pseudo-random prompt ids (SplitMix64).
fn prompt(seed: u64, len: usize, vocab: usize) -> Vec<u32> {
    let mut s = seed;
    (0..len)
        .map(|_| {
            s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            ((z ^ (z >> 31)) % vocab as u64) as u32
        })
        .collect()
}

/// Decode throughput of `batch` sequences: tokens after each sequence's first, over the time after the first step.
fn decode_run(model: &Arc<MimoModel>, args: &BenchArgs, batch: usize, mtp: usize) -> Result<Value> {
    let vocab = model.config().vocab_size;
    let cfg = args.pool.settings().apply(EngineConfig {
        max_num_seqs: batch,
        max_model_len: Some(args.prompt_len + args.new_tokens + 8),
        mtp_drafts: mtp,
        simulated_acceptance: if mtp > 0 {
            args.simulated_acceptance
        } else {
            None
        },
        kv_dtype: args.place.kv_dtype()?,
        ..Default::default()
    });
    let mut engine = Engine::new(model.clone(), cfg)?;
    for i in 0..batch {
        let params = SamplingParams {
            max_tokens: args.new_tokens,
            ..SamplingParams::greedy()
        };
        engine.add_request(prompt(i as u64 + 1, args.prompt_len, vocab), params)?;
    }
    let t0 = Instant::now();
    let first = engine.step()?;
    let prefill_s = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    let mut tokens = 0usize;
    while engine.has_work() {
        tokens += engine.step()?.iter().map(|o| o.tokens.len()).sum::<usize>();
    }
    let decode_s = t1.elapsed().as_secs_f64();
    if first.len() != batch {
        bail!("expected all {batch} sequences admitted in the first step");
    }
    let stats = engine.mtp_stats();
    Ok(json!({
        "batch": batch,
        "mtp_drafts": mtp,
        "prefill_s": prefill_s,
        "decode_tokens": tokens,
        "decode_tok_s": tokens as f64 / decode_s,
        "mtp_drafted": stats.total_drafted(),
        "mtp_accepted": stats.total_accepted(),
        "mtp_accepted_per_position": stats.accepted,
        "mtp_drafted_per_position": stats.drafted,
        "simulated_acceptance": if mtp > 0 { json!(args.simulated_acceptance) } else { Value::Null },
    }))
}

/// The run with the median decode throughput, with every run's throughput added as `decode_tok_s_runs`.
fn median_run(mut runs: Vec<Value>) -> Value {
    let rate = |v: &Value| v["decode_tok_s"].as_f64().unwrap_or(0.0);
    let all: Vec<f64> = runs.iter().map(rate).collect();
    runs.sort_by(|a, b| rate(a).total_cmp(&rate(b)));
    let mut median = runs.swap_remove(runs.len() / 2);
    median["decode_tok_s_runs"] = json!(all);
    median
}

/// Runs the benchmark and prints JSON.
pub fn run(args: BenchArgs) -> Result<()> {
    let (device, fmt) = args.place.resolve()?;
    let model = Arc::new(MimoModel::open(&args.model, fmt, &device)?);
    let (main_params, mtp_params) = mimo_model::parameter_counts(model.config());
    // Prefill: one forward over the prompt.
    let ids = prompt(99, args.prompt_len, model.config().vocab_size);
    let input = candle_core::Tensor::new(ids.as_slice(), model.device())?.unsqueeze(0)?;
    // Prompt processing as the engine does it: the decoder over every position, logits of the last one.
    let prefill = || -> Result<()> {
        let mut cache = ContiguousKvCache::new(model.config().num_cache_layers());
        let h = model.hidden_rows(&input, &[0], &mut cache)?;
        model.logits(&h.narrow(1, args.prompt_len - 1, 1)?)?;
        Ok(())
    };
    prefill()?; // warm-up
    let t0 = Instant::now();
    prefill()?;
    let prefill_tok_s = args.prompt_len as f64 / t0.elapsed().as_secs_f64();
    eprintln!("mimo: prefill {prefill_tok_s:.1} tok/s; decoding batch 1 ...");
    let b1 = decode_run(&model, &args, 1, 0)?;
    eprintln!(
        "mimo: batch 1 {:.1} tok/s; decoding batch {} ...",
        b1["decode_tok_s"].as_f64().unwrap_or(0.0),
        args.batch
    );
    let bn = decode_run(&model, &args, args.batch, 0)?;
    // Further runs interleaved with the first, so that a slow spell of a shared machine hits both sizes alike.
    let (mut runs1, mut runs_n) = (vec![b1], vec![bn]);
    for _ in 1..args.repeat {
        runs1.push(decode_run(&model, &args, 1, 0)?);
        runs_n.push(decode_run(&model, &args, args.batch, 0)?);
    }
    let (b1, bn) = (median_run(runs1), median_run(runs_n));
    let (spec, spec_n) = if args.mtp > 0 {
        let (mut r1, mut rn) = (vec![], vec![]);
        for _ in 0..args.repeat {
            r1.push(decode_run(&model, &args, 1, args.mtp)?);
            rn.push(decode_run(&model, &args, args.batch, args.mtp)?);
        }
        (Some(median_run(r1)), Some(median_run(rn)))
    } else {
        (None, None)
    };
    let ours = json!({
        "prefill_tok_s": prefill_tok_s,
        "batch1": b1,
        "batchN": bn,
        "mtp_batch1": spec,
        "mtp_batchN": spec_n,
    });
    let python = args.python.clone().unwrap_or_else(|| {
        let venv = PathBuf::from(".venv/bin/python");
        if venv.exists() {
            venv.display().to_string()
        } else {
            "none".into()
        }
    });
    // The transformers reference reads HF directories only; GGUF files are compared with llama.cpp
    // (tools/bench/llamacpp.sh).
    let reference = if python == "none" || mimo_model::gguf_path(&args.model).is_some() {
        Value::Null
    } else {
        eprintln!("reference: transformers eager via {python} ...");
        let script = std::env::current_exe()
            .ok()
            .and_then(|exe| {
                exe.ancestors()
                    .map(|a| a.join("tools/bench/bench_hf.py"))
                    .find(|p| p.exists())
            })
            .unwrap_or_else(|| PathBuf::from("tools/bench/bench_hf.py"));
        let out = Command::new(&python)
            .arg(&script)
            .arg("--model")
            .arg(&args.model)
            .args(["--prompt-len", &args.prompt_len.to_string()])
            .args(["--new-tokens", &args.new_tokens.to_string()])
            .args(["--batch", &args.batch.to_string()])
            .args(["--repeat", &args.repeat.to_string()])
            .output()
            .with_context(|| format!("running {python} {}", script.display()))?;
        if !out.status.success() {
            bail!(
                "reference run failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        serde_json::from_slice(&out.stdout).context("reference output is not JSON")?
    };
    let ratio = |a: &Value, b: &Value| match (a.as_f64(), b.as_f64()) {
        (Some(a), Some(b)) if b > 0.0 => json!(a / b),
        _ => Value::Null,
    };
    let bkey = format!("batch{}", args.batch);
    let report = json!({
        "model": args.model.display().to_string(),
        "params_main": main_params,
        "params_mtp": mtp_params,
        "prompt_len": args.prompt_len,
        "new_tokens": args.new_tokens,
        "repeat": args.repeat,
        "threads": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "mimo": ours,
        "reference": reference,
        "ratios": {
            "batch1_decode_vs_reference": ratio(&ours["batch1"]["decode_tok_s"], &reference["batch1"]["decode_tok_s"]),
            "batchN_decode_vs_reference": ratio(&ours["batchN"]["decode_tok_s"], &reference[&bkey]["decode_tok_s"]),
            "prefill_vs_reference": ratio(&ours["prefill_tok_s"], &reference["batch1"]["prefill_tok_s"]),
            "batchN_vs_batch1": ratio(&ours["batchN"]["decode_tok_s"], &ours["batch1"]["decode_tok_s"]),
            "mtp_vs_plain_batch1": ratio(&ours["mtp_batch1"]["decode_tok_s"], &ours["batch1"]["decode_tok_s"]),
            "mtp_vs_plain_batchN": ratio(&ours["mtp_batchN"]["decode_tok_s"], &ours["batchN"]["decode_tok_s"]),
        },
    });
    crate::write_stdout(&report.to_string())
}
