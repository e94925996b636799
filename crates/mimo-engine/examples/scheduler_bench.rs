//! Scheduler benchmark (prefix caching, chunked prefill): prints one JSON object per scenario.
//!
//! ```text
//! cargo run --release -p mimo-engine --example scheduler_bench -- --model PATH [--dtype f32] [--quant q8_0]
//!     [--scenario ttft,stall,grpo] [--system-len 2000] [--long-len 4000] [--group-size 8]
//! ```
//!
//! - `ttft`: time to first token of a request whose first `--system-len` tokens are a shared system prompt,
//!   cold (empty cache) and warm (the same prefix, another question), with prefix caching on and off.
//! - `stall`: a stream decodes while a `--long-len`-token prompt arrives; the largest gap between two of the
//!   stream's tokens, per token budget (`max_num_batched_tokens`; the largest means no chunking).
//! - `grpo`: one GRPO rollout step, 8 prompts × `--group-size` sampled rollouts of 64 tokens, prefix caching
//!   on and off.
//!
//! Prompts are random token ids (speed does not depend on the text); lengths are capped to the model's context.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::Device;
use mimo_engine::engine::{Engine, EngineConfig};
use mimo_engine::{Loaded, SamplingParams};
use serde_json::json;

struct Args {
    model: PathBuf,
    dtype: String,
    quant: Option<String>,
    scenarios: Vec<String>,
    system_len: usize,
    long_len: usize,
    group_size: usize,
}

fn parse() -> Result<Args> {
    let mut a = Args {
        model: PathBuf::new(),
        dtype: "f32".into(),
        quant: None,
        scenarios: vec!["ttft".into(), "stall".into(), "grpo".into()],
        system_len: 2000,
        long_len: 4000,
        group_size: 8,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let v = it.next().with_context(|| format!("{k} needs a value"))?;
        match k.as_str() {
            "--model" => a.model = v.into(),
            "--dtype" => a.dtype = v,
            "--quant" => a.quant = Some(v),
            "--scenario" => a.scenarios = v.split(',').map(str::to_string).collect(),
            "--system-len" => a.system_len = v.parse()?,
            "--long-len" => a.long_len = v.parse()?,
            "--group-size" => a.group_size = v.parse()?,
            _ => bail!("unknown argument {k}"),
        }
    }
    if a.model.as_os_str().is_empty() {
        bail!("--model PATH is required");
    }
    Ok(a)
}

/// `n` pseudo-random ids in `3..vocab` from stream `seed`.
fn ids(n: usize, seed: u64, vocab: usize) -> Vec<u32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (3 + s % (vocab as u64 - 3)) as u32
        })
        .collect()
}

fn greedy(max_tokens: usize) -> SamplingParams {
    SamplingParams {
        max_tokens,
        ignore_eos: true,
        ..SamplingParams::greedy()
    }
}

/// Seconds until request `id`'s first token, stepping `engine`.
fn first_token(engine: &mut Engine, id: u64) -> Result<f64> {
    let t = Instant::now();
    loop {
        if engine
            .step()?
            .iter()
            .any(|o| o.id == id && !o.tokens.is_empty())
        {
            return Ok(t.elapsed().as_secs_f64());
        }
    }
}

fn ttft(l: &mut Loaded, a: &Args, ctx: usize, vocab: usize) -> Result<serde_json::Value> {
    let sys_len = a.system_len.min(ctx - 64);
    let system = ids(sys_len, 1, vocab);
    let mut rows = vec![];
    for caching in [true, false] {
        let cfg = EngineConfig {
            max_num_seqs: 4,
            max_model_len: Some(ctx),
            prefix_caching: caching,
            ..Default::default()
        };
        let mut engine = Engine::new(l.model.clone(), cfg)?;
        let mut times = vec![];
        for q in 0..4 {
            let mut p = system.clone();
            p.extend(ids(24, 100 + q, vocab));
            let id = engine.add_request(p, greedy(1))?;
            times.push(first_token(&mut engine, id)?);
            engine.run_to_completion()?;
        }
        let cold = times[0];
        let mut warm = times[1..].to_vec();
        warm.sort_by(f64::total_cmp);
        let s = engine.scheduler_stats();
        rows.push(json!({
            "prefix_caching": caching, "cold_ms": cold * 1e3, "warm_ms": warm[1] * 1e3,
            "cold_over_warm": cold / warm[1], "hit_tokens": s.prefix_hit_tokens,
            "query_tokens": s.prefix_query_tokens,
        }));
    }
    Ok(json!({"scenario": "ttft", "system_tokens": sys_len, "question_tokens": 24, "runs": rows}))
}

fn stall(l: &mut Loaded, a: &Args, ctx: usize, vocab: usize) -> Result<serde_json::Value> {
    let long_len = a.long_len.min(ctx - 8);
    let mut rows = vec![];
    for budget in [256, 512, 2048, long_len + 64] {
        let cfg = EngineConfig {
            max_num_seqs: 4,
            max_model_len: Some(ctx),
            max_num_batched_tokens: budget,
            ..Default::default()
        };
        let mut engine = Engine::new(l.model.clone(), cfg)?;
        let stream = engine.add_request(ids(32, 7, vocab), greedy(400.min(ctx - 40)))?;
        let mut last = None;
        let mut gaps = vec![];
        let mut long = None;
        let mut long_ttft = None;
        let mut steps = 0;
        let t_long = Instant::now();
        let mut t_added = t_long;
        while engine.has_work() {
            let out = engine.step()?;
            steps += 1;
            let now = Instant::now();
            if out.iter().any(|o| o.id == stream && !o.tokens.is_empty()) {
                if let Some(prev) = last {
                    if long.is_some() {
                        gaps.push(now.duration_since(prev).as_secs_f64());
                    }
                }
                last = Some(now);
            }
            if let Some(id) = long {
                if long_ttft.is_none() && out.iter().any(|o| o.id == id) {
                    long_ttft = Some(now.duration_since(t_added).as_secs_f64());
                }
            }
            if steps == 10 {
                long = Some(engine.add_request(ids(long_len, 8, vocab), greedy(1))?);
                t_added = Instant::now();
            }
            if long_ttft.is_some() && gaps.len() > 20 {
                break;
            }
        }
        gaps.sort_by(f64::total_cmp);
        let median = gaps.get(gaps.len() / 2).copied().unwrap_or(0.0);
        rows.push(json!({
            "max_num_batched_tokens": budget,
            "chunked": budget <= long_len,
            "max_gap_ms": gaps.last().copied().unwrap_or(0.0) * 1e3,
            "median_gap_ms": median * 1e3,
            "long_prompt_ttft_ms": long_ttft.unwrap_or(f64::NAN) * 1e3,
            "chunked_prefill_steps": engine.scheduler_stats().chunked_prefill_steps,
        }));
    }
    Ok(json!({"scenario": "stall", "long_prompt_tokens": long_len, "runs": rows}))
}

fn grpo(l: &mut Loaded, a: &Args, ctx: usize, vocab: usize) -> Result<serde_json::Value> {
    let (prompts, g, new) = (8usize, a.group_size, 64usize);
    let plen = 256.min(ctx - new - 8);
    let mut rows = vec![];
    for caching in [true, false] {
        let cfg = EngineConfig {
            max_num_seqs: prompts * g,
            max_model_len: Some(plen + new + 8),
            prefix_caching: caching,
            ..Default::default()
        };
        let mut engine = Engine::new(l.model.clone(), cfg)?;
        let t = Instant::now();
        for p in 0..prompts {
            let prompt = ids(plen, 1000 + p as u64, vocab);
            for r in 0..g {
                let params = SamplingParams {
                    temperature: 1.0,
                    seed: Some((p * g + r) as u64),
                    max_tokens: new,
                    ignore_eos: true,
                    ..Default::default()
                };
                engine.add_request(prompt.clone(), params)?;
            }
        }
        engine.run_to_completion()?;
        let secs = t.elapsed().as_secs_f64();
        let s = engine.scheduler_stats();
        rows.push(json!({
            "prefix_caching": caching, "step_s": secs,
            "tokens_per_s": (prompts * g * new) as f64 / secs,
            "hit_tokens": s.prefix_hit_tokens, "query_tokens": s.prefix_query_tokens,
        }));
    }
    Ok(
        json!({"scenario": "grpo", "prompts": prompts, "group_size": g, "prompt_tokens": plen,
              "new_tokens": new, "runs": rows}),
    )
}

fn main() -> Result<()> {
    let a = parse()?;
    let device = Device::Cpu;
    let fmt = mimo_model::WeightFormat::parse(&a.dtype, a.quant.as_deref(), &device)?;
    let mut l = Loaded::open_ids_only(
        &a.model,
        fmt,
        &device,
        EngineConfig {
            max_num_seqs: 1,
            max_model_len: Some(64),
            ..Default::default()
        },
    )?;
    let cfg = l.model.config().clone();
    let (ctx, vocab) = (cfg.max_position_embeddings, cfg.vocab_size);
    for s in &a.scenarios {
        let v = match s.as_str() {
            "ttft" => ttft(&mut l, &a, ctx, vocab)?,
            "stall" => stall(&mut l, &a, ctx, vocab)?,
            "grpo" => grpo(&mut l, &a, ctx, vocab)?,
            other => bail!("unknown scenario {other} (ttft, stall, grpo)"),
        };
        println!("{v}");
    }
    Ok(())
}
