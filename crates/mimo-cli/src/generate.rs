//! `mimo generate` and `mimo chat`: text or token ids in, streamed text out, through the engine.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use mimo_engine::engine::{Engine, EngineConfig, FinishReason};
use mimo_engine::{Loaded, SamplingParams};
use mimo_text::{ChatMessage, ModelText, StopChecker};
use serde_json::json;

use crate::{parse_ids, Placement, UsageError};

/// Options shared by `generate` and `chat`.
#[derive(Args, Clone)]
pub struct GenOpts {
    /// HF model directory.
    #[arg(long)]
    pub model: PathBuf,
    /// Most new tokens.
    #[arg(long, default_value_t = 256)]
    pub max_tokens: usize,
    /// Sampling temperature (0 = greedy). Default: generation_config.json's, else 0.
    #[arg(long)]
    pub temperature: Option<f32>,
    /// Nucleus sampling mass.
    #[arg(long)]
    pub top_p: Option<f32>,
    /// Top-k cut (0 = off).
    #[arg(long)]
    pub top_k: Option<usize>,
    /// Min-p cut.
    #[arg(long, default_value_t = 0.0)]
    pub min_p: f32,
    /// Repetition penalty (1 = off).
    #[arg(long, default_value_t = 1.0)]
    pub repetition_penalty: f32,
    /// Random seed (reproducible sampling).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Stop string (repeatable).
    #[arg(long)]
    pub stop: Vec<String>,
    /// MTP draft tokens per step (0 = off; uses the checkpoint's MTP layers, re-using the last).
    #[arg(long, default_value_t = 0)]
    pub mtp: usize,
    #[command(flatten)]
    pub place: Placement,
    #[command(flatten)]
    pub pool: crate::PoolArgs,
}

/// `mimo generate` arguments.
#[derive(Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub opts: GenOpts,
    /// Prompt text (needs tokenizer.json).
    #[arg(
        long,
        conflicts_with = "prompt_ids",
        required_unless_present = "prompt_ids"
    )]
    pub prompt: Option<String>,
    /// Prompt as comma-separated token ids.
    #[arg(long)]
    pub prompt_ids: Option<String>,
    /// Wrap the prompt as a user message in the model's chat template.
    #[arg(long)]
    pub chat: bool,
    /// Print one JSON object instead of streaming text.
    #[arg(long)]
    pub json: bool,
}

/// Opens the model (the tokenizer is optional: `--prompt-ids` works without one) with a batch-1 engine.
fn load(opts: &GenOpts) -> Result<Loaded> {
    let (device, fmt) = opts.place.resolve()?;
    let cfg = opts.pool.settings().apply(EngineConfig {
        max_num_seqs: 1,
        mtp_drafts: opts.mtp,
        kv_dtype: opts.place.kv_dtype()?,
        ..Default::default()
    });
    Loaded::open_ids_only(&opts.model, fmt, &device, cfg)
        .with_context(|| format!("loading {}", opts.model.display()))
}

fn params(opts: &GenOpts, text: Option<&ModelText>) -> SamplingParams {
    let gen = text.map(|t| t.generation.clone()).unwrap_or_default();
    let temperature = opts.temperature.unwrap_or(match gen.do_sample {
        Some(true) => gen.temperature.unwrap_or(1.0),
        _ => 0.0,
    });
    SamplingParams {
        temperature,
        top_p: opts.top_p.or(gen.top_p).unwrap_or(1.0),
        top_k: opts.top_k.or(gen.top_k).unwrap_or(0),
        min_p: opts.min_p,
        repetition_penalty: opts.repetition_penalty,
        seed: opts.seed,
        max_tokens: opts.max_tokens,
        stop_strings: opts.stop.clone(),
        ..Default::default()
    }
}

/// Result of generating one completion.
struct Completion {
    ids: Vec<u32>,
    text: String,
    finish: &'static str,
    decode_tok_s: f64,
}

/// Runs one request, streaming text to `sink` as it is produced (stop strings cut the text and the run).
fn complete(
    engine: &mut Engine,
    text: Option<&ModelText>,
    prompt: Vec<u32>,
    params: SamplingParams,
    mut sink: impl FnMut(&str) -> Result<()>,
) -> Result<Completion> {
    let mut stops = StopChecker::new(&params.stop_strings);
    let mut stream = text.map(|t| t.tokenizer.decode_stream(true));
    let id = engine
        .add_request(prompt, params)
        .map_err(|e| UsageError(e.to_string()))?;
    let mut ids = vec![];
    let mut out = String::new();
    let mut finish = "length";
    let mut first_token_at = None;
    'outer: while engine.has_work() {
        for o in engine.step()? {
            if o.id != id {
                continue;
            }
            first_token_at.get_or_insert_with(Instant::now);
            for &t in &o.tokens {
                ids.push(t);
                if let Some(s) = stream.as_mut() {
                    if let Some(piece) = s.step(t)? {
                        let step = stops.push(&piece);
                        out.push_str(&step.text);
                        sink(&step.text)?;
                        if step.stopped.is_some() {
                            finish = "stop";
                            engine.abort(id);
                            break 'outer;
                        }
                    }
                }
            }
            if let Some(f) = o.finish {
                if f == FinishReason::Error {
                    anyhow::bail!(
                        "generation failed: {}",
                        o.error.as_deref().unwrap_or("unknown error")
                    );
                }
                finish = f.as_str();
            }
        }
    }
    if finish != "stop" || stops.stopped().is_none() {
        if let Some(s) = stream.as_mut() {
            if let Some(piece) = s.finish()? {
                let step = stops.push(&piece);
                out.push_str(&step.text);
                sink(&step.text)?;
            }
        }
        let rest = stops.finish();
        out.push_str(&rest);
        sink(&rest)?;
    }
    let decode_tok_s = match first_token_at {
        Some(t0) if ids.len() > 1 => (ids.len() - 1) as f64 / t0.elapsed().as_secs_f64(),
        _ => 0.0,
    };
    Ok(Completion {
        ids,
        text: out,
        finish,
        decode_tok_s,
    })
}

fn tokenize_prompt(args: &GenerateArgs, text: Option<&ModelText>, dir: &Path) -> Result<Vec<u32>> {
    if let Some(ids) = &args.prompt_ids {
        return Ok(parse_ids(ids)?);
    }
    let prompt = args.prompt.clone().unwrap_or_default();
    let text = text.ok_or_else(|| {
        UsageError(format!(
            "{}: no tokenizer.json; use --prompt-ids",
            dir.display()
        ))
    })?;
    let rendered = if args.chat {
        text.chat_template
            .render(&[ChatMessage::new("user", prompt)], true)?
    } else {
        prompt
    };
    Ok(text.tokenizer.encode(&rendered, false)?)
}

/// `mimo generate`.
pub fn generate(args: GenerateArgs) -> Result<()> {
    let mut l = load(&args.opts)?;
    let prompt = tokenize_prompt(&args, l.text.as_ref(), &args.opts.model)?;
    let params = params(&args.opts, l.text.as_ref());
    let prompt_tokens = prompt.len();
    let c = if args.json {
        complete(&mut l.engine, l.text.as_ref(), prompt, params, |_| Ok(()))?
    } else {
        let mut stdout = std::io::stdout().lock();
        let c = complete(&mut l.engine, l.text.as_ref(), prompt, params, |s| {
            stdout.write_all(s.as_bytes())?;
            stdout.flush()?;
            Ok(())
        })?;
        if l.text.is_none() {
            writeln!(
                stdout,
                "{}",
                c.ids
                    .iter()
                    .map(u32::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            )?;
        } else {
            writeln!(stdout)?;
        }
        c
    };
    let stats = l.engine.mtp_stats();
    let report = json!({
        "ids": c.ids,
        "text": c.text,
        "prompt_tokens": prompt_tokens,
        "completion_tokens": c.ids.len(),
        "finish_reason": c.finish,
        "mtp": {"drafted": stats.total_drafted(), "accepted": stats.total_accepted(),
                "drafted_per_layer": stats.drafted, "accepted_per_layer": stats.accepted},
        "decode_tok_s": c.decode_tok_s,
    });
    if args.json {
        crate::write_stdout(&report.to_string())
    } else {
        eprintln!(
            "[{} prompt + {} completion tokens, {:.1} tok/s, finish {}, mtp accepted {}/{}]",
            prompt_tokens,
            c.ids.len(),
            c.decode_tok_s,
            c.finish,
            stats.total_accepted(),
            stats.total_drafted()
        );
        Ok(())
    }
}

/// `mimo chat`: an interactive terminal chat with streaming output; `/reset` clears the history, EOF quits.
pub fn chat(opts: GenOpts, system: Option<String>) -> Result<()> {
    let mut l = load(&opts)?;
    let text = l
        .text
        .as_ref()
        .ok_or_else(|| UsageError(format!("{}: no tokenizer.json", opts.model.display())))?;
    let mut messages: Vec<ChatMessage> = system
        .into_iter()
        .map(|s| ChatMessage::new("system", s))
        .collect();
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    loop {
        eprint!("> ");
        let Some(line) = lines.next() else { break };
        let line = line?;
        if line.trim() == "/reset" {
            messages.retain(|m| m.role == "system");
            continue;
        }
        if line.trim().is_empty() {
            continue;
        }
        messages.push(ChatMessage::new("user", line));
        let prompt = text
            .tokenizer
            .encode(&text.chat_template.render(&messages, true)?, false)?;
        let mut stdout = std::io::stdout().lock();
        let c = complete(
            &mut l.engine,
            Some(text),
            prompt,
            params(&opts, Some(text)),
            |s| {
                stdout.write_all(s.as_bytes())?;
                stdout.flush()?;
                Ok(())
            },
        )?;
        writeln!(stdout)?;
        messages.push(ChatMessage::new("assistant", c.text));
    }
    Ok(())
}
