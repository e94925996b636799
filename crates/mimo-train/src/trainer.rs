//! The training loop: batches → forward → `L_main + λ·mean_k L_mtp,k` → backward (accumulated) → clip →
//! AdamW; metrics JSONL, checkpoints with exact resume, final HF model and loss plot.
//!
//! Run directory (`out`):
//! - `config.toml`: the effective config; `metrics.jsonl`: one object per logged step;
//! - `checkpoint/`: HF model dir + `optimizer.safetensors` + `trainer_state.json` (step, stage, the stage's
//!   data cursor, seed), replaced atomically; a run started again on the same `out` resumes from it (metrics past the checkpoint
//!   are dropped and recomputed, so an interrupted + resumed run reproduces the uninterrupted one exactly);
//! - `model/`: the final HF model (with tokenizer files); `loss.png`; `report.json` marks a finished run.
//!
//! With `[[stages]]` (spec §2.2) the loop switches, at each stage's first step, to the stage's packed dataset
//! (read from its start), window length, batch size and RoPE θ; checkpoints record the θ (and a raised
//! `max_position_embeddings`) of the stage in effect.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::json;
use tch::{Device, Tensor};

use crate::config::{Mode, Stage, TrainArgs};
use crate::data::{read_sft_jsonl, Batch, Cursor, DataStream};
use crate::error::{Result, TrainError};
use crate::io::{atomic_dir, read_json, write_json};
use crate::loss::{combine, head_sums};
pub use crate::metrics::{read_metrics, StepMetrics, TrainReport};
use crate::model::{Init, TrainModel};
use crate::optim::{clip_grad_norm, AdamW};

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
}

fn files_of_run(out: &Path) -> [PathBuf; 4] {
    [
        out.join("metrics.jsonl"),
        out.join("checkpoint"),
        out.join("report.json"),
        out.join("config.toml"),
    ]
}

/// Tokenizer and generation files to copy into checkpoints: (file name, source).
fn extra_files(args: &TrainArgs, tokenizer: Option<&Path>) -> Vec<(String, PathBuf)> {
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

fn save_model_dir(
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

fn to_tensors(b: &Batch, device: Device) -> (Tensor, Option<Tensor>) {
    let ids: Vec<i64> = b.tokens.iter().map(|&t| t as i64).collect();
    let w = Tensor::from_slice(&ids)
        .reshape([b.rows as i64, b.len as i64])
        .to_device(device);
    let m = b.mask.as_ref().map(|m| {
        Tensor::from_slice(m)
            .reshape([b.rows as i64, b.len as i64])
            .to_device(device)
    });
    (w, m)
}

/// Token counts per head over micro-batches (main: targets 1..=T; MTP k: targets 2+k..=T).
fn head_counts(batches: &[Batch], heads: usize) -> Vec<f64> {
    (0..heads)
        .map(|h| {
            let offset = 1 + h;
            batches
                .iter()
                .map(|b| match &b.mask {
                    None => (b.rows * b.len.saturating_sub(offset)) as f64,
                    Some(m) => m
                        .chunks_exact(b.len)
                        .map(|row| {
                            row[offset.min(b.len)..]
                                .iter()
                                .map(|&x| x as f64)
                                .sum::<f64>()
                        })
                        .sum(),
                })
                .sum()
        })
        .collect()
}

/// Opens a stage's packed dataset; with `warn`, warns when its index was packed for another stage or length.
fn open_stage(stage: &Stage, staged: bool, seed: u64, warn: bool) -> Result<DataStream> {
    let d = DataStream::packed(&stage.data, stage.seq_len, seed).map_err(|e| {
        if staged {
            TrainError::Data(format!("stages[{}] ({}): {e}", stage.index, stage.name))
        } else {
            e
        }
    })?;
    if let (true, true, Some(ix)) = (staged, warn, d.packed_index()) {
        if !ix.stage.is_empty() && ix.stage != stage.name {
            tracing::warn!(
                "stage {}: {} was packed for stage {:?}",
                stage.name,
                stage.data.display(),
                ix.stage
            );
        }
        if ix.seq_len != 0 && ix.seq_len != stage.seq_len {
            tracing::warn!(
                "stage {}: {} was packed for seq_len {}, the stage trains at {}",
                stage.name,
                stage.data.display(),
                ix.seq_len,
                stage.seq_len
            );
        }
    }
    Ok(d)
}

/// Runs `mimo train pretrain|sft` as configured (see the module docs for the run directory).
pub fn train(args: &TrainArgs) -> Result<TrainReport> {
    args.validate()?;
    let out = &args.out;
    let [metrics_path, ckpt_dir, report_path, config_path] = files_of_run(out);
    if report_path.exists() {
        if !args.force {
            return Err(TrainError::Exists(out.clone()));
        }
        for p in files_of_run(out)
            .into_iter()
            .chain([out.join("model"), out.join("loss.png")])
        {
            if p.is_dir() {
                std::fs::remove_dir_all(&p).map_err(|e| TrainError::io(&p, e))?;
            } else if p.exists() {
                std::fs::remove_file(&p).map_err(|e| TrainError::io(&p, e))?;
            }
        }
    } else if args.force && ckpt_dir.exists() {
        std::fs::remove_dir_all(&ckpt_dir).map_err(|e| TrainError::io(&ckpt_dir, e))?;
    }
    std::fs::create_dir_all(out).map_err(|e| TrainError::io(out, e))?;
    if args.train.threads > 0 {
        tch::set_num_threads(args.train.threads as i32);
    }
    let device = Device::Cpu;
    let state_path = ckpt_dir.join("trainer_state.json");
    let resume: Option<TrainerState> = if args.resume && state_path.is_file() {
        Some(read_json(&state_path)?)
    } else {
        None
    };
    if let Some(st) = &resume {
        if st.total_steps != args.train.steps || st.seed != args.seed {
            return Err(TrainError::Checkpoint {
                path: state_path.clone(),
                msg: format!(
                    "was written by a run with steps={} seed={}, this one has steps={} seed={} \
                     (use force to start over)",
                    st.total_steps, st.seed, args.train.steps, args.seed
                ),
            });
        }
    }

    // Model.
    let mut model = match (&resume, args.model.init.as_os_str().is_empty()) {
        (Some(_), _) => TrainModel::new(Init::Dir(&ckpt_dir), &ckpt_dir, device)?,
        (None, false) => TrainModel::new(Init::Dir(&args.model.init), &args.model.init, device)?,
        (None, true) => TrainModel::new(
            Init::Random {
                std: args.model.init_std,
                seed: args.seed,
            },
            &args.model.config,
            device,
        )?,
    };
    let vocab = model.config().vocab_size;

    // Stages and data.
    let staged = !args.stages.is_empty();
    let plan = args.stage_plan(model.config().rope_theta);
    let mut cur = resume.as_ref().map_or(0, |st| st.stage);
    if let Some(st) = &resume {
        let fits = plan
            .get(st.stage)
            .is_some_and(|s| s.name == st.stage_name && s.start < st.step && st.step <= s.end);
        if !fits {
            return Err(TrainError::Checkpoint {
                path: state_path.clone(),
                msg: format!(
                    "was written at step {} in stage {} ({:?}), which this config's [[stages]] do not \
                     hold at that step (use force to start over)",
                    st.step, st.stage, st.stage_name
                ),
            });
        }
    }
    let seq_len = args.train.seq_len;
    let (mut data, tokenizer) = match args.mode {
        Mode::Pretrain => {
            // Every stage's data is checked now rather than at its first step.
            for st in &plan {
                open_stage(st, staged, args.seed, true)?;
            }
            let d = open_stage(&plan[cur], staged, args.seed, false)?;
            let tok = args.tokenizer_path(d.dataset_tokenizer.as_deref());
            (d, tok)
        }
        Mode::Sft => {
            let tok_path = args.tokenizer_path(None);
            let tok = match &tok_path {
                Some(p) => Some(tokenizers::Tokenizer::from_file(p).map_err(|e| {
                    TrainError::Tokenizer {
                        path: p.clone(),
                        msg: e.to_string(),
                    }
                })?),
                None => None,
            };
            let samples = read_sft_jsonl(
                &args.data.path,
                tok.as_ref(),
                args.data.chat_template,
                vocab,
            )?;
            (DataStream::sft(samples, seq_len, args.seed)?, tok_path)
        }
    };
    let extra = extra_files(args, tokenizer.as_deref());

    // Optimizer and position.
    let (mut opt, start_step) = match &resume {
        Some(st) => {
            data.seek(st.cursor);
            (
                AdamW::load(
                    &ckpt_dir.join("optimizer.safetensors"),
                    model.params(),
                    st.step as u64,
                )?,
                st.step,
            )
        }
        None => (AdamW::new(model.params()), 0),
    };
    crate::io::write_atomic(&config_path, args.to_toml().as_bytes())?;

    // Metrics: keep lines up to the checkpoint's step.
    let mut kept = String::new();
    if resume.is_some() && metrics_path.is_file() {
        let s =
            std::fs::read_to_string(&metrics_path).map_err(|e| TrainError::io(&metrics_path, e))?;
        for line in s.lines() {
            if let Ok(m) = serde_json::from_str::<StepMetrics>(line) {
                if m.step <= start_step {
                    kept.push_str(line);
                    kept.push('\n');
                }
            }
        }
    }
    crate::io::write_atomic(&metrics_path, kept.as_bytes())?;
    let mut metrics_file = std::fs::OpenOptions::new()
        .append(true)
        .open(&metrics_path)
        .map_err(|e| TrainError::io(&metrics_path, e))?;

    let steps = args.train.steps;
    let heads = 1 + model.num_mtp_layers();
    let bar = if args.train.progress {
        let b = indicatif::ProgressBar::new(steps as u64);
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {msg} ETA {eta}",
        ) {
            b.set_style(style);
        }
        b.set_position(start_step as u64);
        b
    } else {
        indicatif::ProgressBar::hidden()
    };
    let t0 = Instant::now();
    let mut tokens: u64 = 0;
    let mut tokens_total: u64 = resume.as_ref().map_or(0, |s| s.tokens);
    let mut last: Option<StepMetrics> = None;
    if staged {
        model.set_rope(plan[cur].rope_theta, plan[cur].seq_len);
    }
    let stop_at = if args.train.stop_after > 0 {
        args.train.stop_after.min(steps)
    } else {
        steps
    };
    let save_checkpoint = |model: &TrainModel,
                           opt: &AdamW,
                           step: usize,
                           stage: &Stage,
                           cursor: Cursor,
                           tokens: u64| {
        save_model_dir(&ckpt_dir, model, &extra, |tmp| {
            opt.save(&tmp.join("optimizer.safetensors"), model.params())?;
            write_json(
                &tmp.join("trainer_state.json"),
                &TrainerState {
                    step,
                    stage: stage.index,
                    stage_name: stage.name.clone(),
                    cursor,
                    seed: args.seed,
                    total_steps: steps,
                    tokens,
                },
            )
        })
    };

    for step in start_step..stop_at {
        if step >= plan[cur].end && cur + 1 < plan.len() {
            cur += 1;
            let st = &plan[cur];
            tracing::info!(
                "step {}: stage {} ({}): seq_len {}, rope_theta {}, batch_size {}",
                step + 1,
                st.index,
                st.name,
                st.seq_len,
                st.rope_theta,
                st.batch_size
            );
            data = open_stage(st, staged, args.seed, false)?;
            model.set_rope(st.rope_theta, st.seq_len);
        }
        let stage = &plan[cur];
        let lr = args.optim.lr_at(step, steps);
        let lambda = args.mtp.lambda_at(step, steps);
        let batches = (0..args.train.grad_accum)
            .map(|_| data.next_batch(stage.batch_size))
            .collect::<Result<Vec<_>>>()?;
        let denoms = head_counts(&batches, heads);
        for p in model.params() {
            let mut g = p.tensor.grad();
            if g.defined() {
                let _ = g.zero_();
            }
        }
        let mut sums = vec![0.0f64; heads];
        let mut correct = vec![0.0f64; heads];
        for b in &batches {
            let (w, m) = to_tensors(b, device);
            let inputs = w.narrow(1, 0, b.len as i64 - 1);
            let out_f = model.forward(&inputs)?;
            let hs = head_sums(&out_f, &w, m.as_ref())?;
            for (i, h) in hs.iter().enumerate() {
                sums[i] += h.loss_sum.double_value(&[]);
                correct[i] += h.correct;
            }
            combine(&hs, &denoms, lambda).backward();
            tokens += (b.rows * (b.len - 1)) as u64;
            tokens_total += (b.rows * (b.len - 1)) as u64;
        }
        let grad_norm = clip_grad_norm(model.params(), args.optim.grad_clip);
        opt.step(model.params(), lr, &args.optim);
        let per = |i: usize| sums[i] / denoms[i].max(1.0);
        let loss_mtp_k: Vec<f64> = (1..heads).map(per).collect();
        let mtp_acc_k: Vec<f64> = (1..heads)
            .map(|i| correct[i] / denoms[i].max(1.0))
            .collect();
        let loss_mtp = if loss_mtp_k.is_empty() {
            0.0
        } else {
            loss_mtp_k.iter().sum::<f64>() / loss_mtp_k.len() as f64
        };
        let loss = per(0) + lambda * loss_mtp;
        if !loss.is_finite() {
            return Err(TrainError::Diverged {
                step: step + 1,
                loss,
            });
        }
        let elapsed = t0.elapsed().as_secs_f64();
        let m = StepMetrics {
            step: step + 1,
            stage: stage.index,
            seq_len: batches[0].len - 1,
            rope_theta: model.config().rope_theta,
            lr,
            lambda,
            loss,
            loss_main: per(0),
            loss_mtp,
            mtp_acc: mtp_acc_k.first().copied().unwrap_or(0.0),
            loss_mtp_k,
            acc_main: correct[0] / denoms[0].max(1.0),
            mtp_acc_k,
            grad_norm,
            tokens: tokens_total,
            tok_per_s: tokens as f64 / elapsed.max(1e-9),
            elapsed_s: elapsed,
        };
        if (step + 1) % args.train.log_every.max(1) == 0 || step + 1 == steps {
            let line = serde_json::to_string(&m).map_err(|e| TrainError::Json {
                path: metrics_path.clone(),
                msg: e.to_string(),
            })?;
            writeln!(metrics_file, "{line}").map_err(|e| TrainError::io(&metrics_path, e))?;
        }
        bar.set_message(format!(
            "{}loss {:.3} mtp {:.3} acc {:.2} {:.0} tok/s",
            if staged {
                format!("{} ", stage.name)
            } else {
                String::new()
            },
            m.loss_main,
            m.loss_mtp,
            m.mtp_acc,
            m.tok_per_s
        ));
        bar.set_position((step + 1) as u64);
        last = Some(m);
        let every = args.train.save_every;
        if (every > 0 && (step + 1) % every == 0) || step + 1 == steps {
            save_checkpoint(&model, &opt, step + 1, stage, data.cursor(), tokens_total)?;
        }
    }
    bar.finish_and_clear();
    drop(metrics_file);

    let elapsed = t0.elapsed().as_secs_f64();
    let finished = stop_at == steps;
    let model_dir = out.join("model");
    let mut plot = None;
    if finished {
        save_model_dir(&model_dir, &model, &extra, |_| Ok(()))?;
        if args.train.plot {
            let p = out.join("loss.png");
            let all = read_metrics(&metrics_path)?;
            match crate::plot::plot_losses(&all, &p) {
                Ok(()) => plot = Some(p),
                Err(e) => tracing::warn!("loss plot not written: {e}"),
            }
        }
    }
    let last = last.or_else(|| {
        read_metrics(&metrics_path)
            .ok()
            .and_then(|v| v.into_iter().last())
    });
    let report = TrainReport {
        out: out.clone(),
        model_dir: finished.then_some(model_dir),
        metrics: metrics_path.clone(),
        plot,
        steps: stop_at.max(start_step),
        resumed_from: resume.map(|s| s.step),
        params: model.num_params(),
        tokens,
        tokens_per_s: tokens as f64 / elapsed.max(1e-9),
        elapsed_s: elapsed,
        final_loss: last.as_ref().map_or(f64::NAN, |m| m.loss),
        final_loss_main: last.as_ref().map_or(f64::NAN, |m| m.loss_main),
        final_loss_mtp: last.as_ref().map_or(f64::NAN, |m| m.loss_mtp),
        final_mtp_acc: last.as_ref().map_or(f64::NAN, |m| m.mtp_acc),
    };
    if finished {
        write_json(&report_path, &report)?;
    }
    Ok(report)
}
