//! The training loop: batches → forward → `L_main + λ·mean_k L_mtp,k` → backward (accumulated) → clip →
//! AdamW; metrics JSONL, checkpoints with exact resume, final HF model and loss plot.
//!
//! Run directory (`out`, see [`crate::rundir`]):
//! - `config.toml`: the effective config; `metrics.jsonl`: one object per logged step;
//! - `checkpoint/`: HF model dir + `optimizer.safetensors` + `trainer_state.json` (step, stage, the stage's
//!   data cursor, seed), replaced atomically; a run started again on the same `out` resumes from it (metrics past the checkpoint
//!   are dropped and recomputed, so an interrupted + resumed run reproduces the uninterrupted one exactly);
//! - `model/`: the final HF model (with tokenizer files); `loss.png`; `report.json` marks a finished run.
//!
//! Launched with `WORLD_SIZE` > 1 (torchrun, Slurm), the ranks train data-parallel ([`crate::parallel`]):
//! the same steps as one process to float tolerance; rank 0 alone writes the run directory, a checkpoint
//! records the world size and resumes only with the same one.
//!
//! With `[[stages]]` (design §2.2) the loop switches, at each stage's first step, to the stage's packed dataset
//! (read from its start), window length, batch size and RoPE θ; checkpoints record the θ (and a raised
//! `max_position_embeddings`) of the stage in effect.

use std::path::{Path, PathBuf};
use std::time::Instant;

use tch::{Device, Tensor};

use crate::config::{parse_device, AdamWArgs, Mode, Stage, TrainArgs};
use crate::data::{read_sft_jsonl, Batch, DataStream, SftSample};
use crate::error::{Result, TrainError};
use crate::loss::{combine, head_sums};
pub use crate::metrics::{read_metrics, StepMetrics, TrainReport};
use crate::model::{Init, TrainModel};
use crate::optim::AdamW;
use crate::parallel::{digest, DataParallel};
pub use crate::rundir::TrainerState;
use crate::rundir::{extra_files, save_model_dir, RunDir};
use crate::step::train_step;

/// Runs `mimo train pretrain|sft` as configured (see the module docs for the run directory).
pub fn train(args: &TrainArgs) -> Result<TrainReport> {
    args.validate()?;
    let device = parse_device(&args.train.device)?;
    let run = RunDir::new(&args.out);
    let dp = DataParallel::from_env()?;
    dp.check_same("the config", digest(&args.to_toml()))?;
    if dp.is_main() {
        run.prepare(args.force)?;
    }
    dp.barrier()?;
    if args.train.threads > 0 {
        tch::set_num_threads(args.train.threads as i32);
    }
    let resume = run.resume_state(args, dp.world_size())?;

    // Model, stages and data.
    let mut model = init_model(args, resume.is_some(), &run.checkpoint, device)?;
    dp.broadcast_params(model.params())?;
    let plan = args.stage_plan(model.config().rope_theta);
    for st in &plan {
        dp.check_rows("batch_size", st.batch_size)?;
    }
    let mut cur = resume
        .as_ref()
        .map_or(Ok(0), |st| run.check_stage(st, &plan))?;
    let (mut data, tokenizer) = match args.mode {
        Mode::Pretrain => pretrain_stream(args, &plan, cur)?,
        Mode::Sft => sft_stream(args, model.config().vocab_size)?,
    };
    let extra = extra_files(args, tokenizer.as_deref());

    // Optimizer and position.
    let (mut opt, start_step) = match &resume {
        Some(st) => {
            data.seek(st.cursor);
            (run.load_optimizer(model.params(), st.step)?, st.step)
        }
        None => (AdamW::new(model.params()), 0),
    };
    let mut metrics = match dp.is_main() {
        true => {
            run.write_config(args)?;
            Some(run.open_metrics(resume.as_ref().map(|st| st.step))?)
        }
        false => None,
    };

    let (steps, hp) = (args.train.steps, &args.optim.adamw);
    let staged = !args.stages.is_empty();
    let mut bar = crate::progress::Progress::new(
        "train",
        args.train.progress && dp.is_main(),
        steps,
        start_step,
    );
    let t0 = Instant::now();
    let mut tokens: u64 = 0;
    let mut tokens_total: u64 = resume.as_ref().map_or(0, |st| st.tokens);
    let mut last: Option<StepMetrics> = None;
    if staged {
        model.set_rope(plan[cur].rope_theta, plan[cur].seq_len);
    }
    let stop_at = args.train.stop_step();

    for step in start_step..stop_at {
        if step >= plan[cur].end && cur + 1 < plan.len() {
            cur += 1;
            data = enter_stage(&plan[cur], &mut model, args.seed, step)?;
        }
        let stage = &plan[cur];
        let lr = args.optim.lr_at(step, steps);
        let lambda = args.mtp.lambda_at(step, steps);
        let batches = (0..args.train.grad_accum)
            .map(|_| data.next_batch(stage.batch_size))
            .collect::<Result<Vec<_>>>()?;
        let tally = mtp_step(&model, &mut opt, &batches, lr, lambda, hp, &dp)?;
        tokens += tally.tokens;
        tokens_total += tally.tokens;
        let elapsed = t0.elapsed().as_secs_f64();
        let m = StepMetrics {
            step: step + 1,
            stage: stage.index,
            seq_len: batches[0].len - 1,
            rope_theta: model.config().rope_theta,
            lr,
            tokens: tokens_total,
            tok_per_s: tokens as f64 / elapsed.max(1e-9),
            elapsed_s: elapsed,
            ..tally.metrics(lambda)
        };
        if !m.loss.is_finite() {
            return Err(TrainError::Diverged {
                step: step + 1,
                loss: m.loss,
            });
        }
        if let (Some(log), true) = (
            &mut metrics,
            (step + 1) % args.train.log_every.max(1) == 0 || step + 1 == steps,
        ) {
            log.append(&m)?;
        }
        bar.set_message(bar_message(staged.then_some(stage), &m));
        bar.set_position((step + 1) as u64);
        last = Some(m);
        let every = args.train.save_every;
        if dp.is_main() && ((every > 0 && (step + 1) % every == 0) || step + 1 == steps) {
            let mut state = TrainerState::at(args, step + 1, stage, data.cursor(), tokens_total);
            state.world_size = dp.world_size();
            run.save_checkpoint(&model, &opt, &extra, &state)?;
        }
    }
    bar.finish();
    drop(metrics);

    let outcome = Outcome {
        steps: stop_at.max(start_step),
        finished: stop_at == steps,
        resumed_from: resume.map(|s| s.step),
        tokens,
        elapsed_s: t0.elapsed().as_secs_f64(),
        last,
    };
    finish(args, &run, &model, &extra, outcome, dp.is_main())
}

/// The model to train: the checkpoint's when resuming, else `model.init`, else a random init from
/// `model.config`.
fn init_model(args: &TrainArgs, resume: bool, ckpt: &Path, device: Device) -> Result<TrainModel> {
    match (resume, args.model.init.as_os_str().is_empty()) {
        (true, _) => TrainModel::new(Init::Dir(ckpt), ckpt, device),
        (false, false) => TrainModel::new(Init::Dir(&args.model.init), &args.model.init, device),
        (false, true) => TrainModel::new(
            Init::Random {
                std: args.model.init_std,
                seed: args.seed,
            },
            &args.model.config,
            device,
        ),
    }
}

/// Per-head sums over one step's micro-batches (index 0: main head, `k`: MTP head `k`).
struct StepTally {
    /// Summed token losses.
    sums: Vec<f64>,
    /// Top-1 correct tokens.
    correct: Vec<f64>,
    /// Target tokens ([`head_counts`]).
    denoms: Vec<f64>,
    grad_norm: f64,
    /// Input tokens of the step.
    tokens: u64,
}

impl StepTally {
    /// The loss and accuracy fields of the step's metrics line (the others zero).
    fn metrics(&self, lambda: f64) -> StepMetrics {
        let heads = self.sums.len();
        let per = |i: usize| self.sums[i] / self.denoms[i].max(1.0);
        let loss_mtp_k: Vec<f64> = (1..heads).map(per).collect();
        let mtp_acc_k: Vec<f64> = (1..heads)
            .map(|i| self.correct[i] / self.denoms[i].max(1.0))
            .collect();
        let loss_mtp = if loss_mtp_k.is_empty() {
            0.0
        } else {
            loss_mtp_k.iter().sum::<f64>() / loss_mtp_k.len() as f64
        };
        StepMetrics {
            step: 0,
            stage: 0,
            seq_len: 0,
            rope_theta: 0.0,
            lr: 0.0,
            lambda,
            loss: per(0) + lambda * loss_mtp,
            loss_main: per(0),
            loss_mtp,
            mtp_acc: mtp_acc_k.first().copied().unwrap_or(0.0),
            loss_mtp_k,
            acc_main: self.correct[0] / self.denoms[0].max(1.0),
            mtp_acc_k,
            grad_norm: self.grad_norm,
            tokens: 0,
            tok_per_s: 0.0,
            elapsed_s: 0.0,
        }
    }
}

/// One pretraining/SFT optimizer step (the shared [`train_step`]) on the micro-batches `batches` (the global
/// batch; this rank trains its shard of each one's rows), each contributing `L_main + λ·mean_k L_mtp,k` with
/// the step-wide per-head token counts of the global batch as denominators.
fn mtp_step(
    model: &TrainModel,
    opt: &mut AdamW,
    batches: &[Batch],
    lr: f64,
    lambda: f64,
    hp: &AdamWArgs,
    dp: &DataParallel,
) -> Result<StepTally> {
    let device = model.device();
    let heads = 1 + model.num_mtp_layers();
    let denoms = head_counts(batches, heads);
    let tokens: u64 = batches.iter().map(|b| (b.rows * (b.len - 1)) as u64).sum();
    let shards: Vec<Batch>;
    let local = match dp.world_size() {
        1 => batches,
        _ => {
            shards = batches
                .iter()
                .map(|b| b.rows_slice(dp.shard(b.rows)))
                .collect();
            &shards
        }
    };
    let mut sums = vec![0.0f64; heads];
    let mut correct = vec![0.0f64; heads];
    let grad_norm = train_step(model.params(), opt, lr, hp, dp, local, |b| {
        let (w, m) = to_tensors(b, device);
        let inputs = w.narrow(1, 0, b.len as i64 - 1);
        let out_f = model.forward(&inputs)?;
        let hs = head_sums(&out_f, &w, m.as_ref())?;
        for (i, h) in hs.iter().enumerate() {
            sums[i] += h.loss_sum.double_value(&[]);
            correct[i] += h.correct;
        }
        let loss = combine(&hs, &denoms, lambda);
        let value = loss.double_value(&[]);
        Ok((loss, value))
    })?;
    let mut both = [sums, correct].concat();
    dp.sum(&mut both)?;
    let correct = both.split_off(heads);
    let sums = both;
    Ok(StepTally {
        sums,
        correct,
        denoms,
        grad_norm,
        tokens,
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

/// The progress bar's message for a step (prefixed with the stage name when training in `[[stages]]`).
fn bar_message(stage: Option<&Stage>, m: &StepMetrics) -> String {
    format!(
        "{}loss {:.3} mtp {:.3} acc {:.2} {:.0} tok/s",
        stage.map_or(String::new(), |s| format!("{} ", s.name)),
        m.loss_main,
        m.loss_mtp,
        m.mtp_acc,
        m.tok_per_s
    )
}

/// How the loop ended.
struct Outcome {
    /// Optimizer steps completed.
    steps: usize,
    /// All `train.steps` done (not stopped by `train.stop_after`).
    finished: bool,
    resumed_from: Option<usize>,
    /// Input tokens processed in this process, and the seconds that took.
    tokens: u64,
    elapsed_s: f64,
    /// The last step's metrics (`None`: no step ran in this process).
    last: Option<StepMetrics>,
}

/// The report; a finished run also gets `model/`, (with `train.plot`) `loss.png` — a failed plot only
/// warns — and `report.json`.
fn finish(
    args: &TrainArgs,
    run: &RunDir,
    model: &TrainModel,
    extra: &[(String, PathBuf)],
    o: Outcome,
    main: bool,
) -> Result<TrainReport> {
    let model_dir = run.model_dir();
    let mut plot = None;
    if o.finished && main {
        save_model_dir(&model_dir, model, extra, |_| Ok(()))?;
        if args.train.plot {
            let p = run.plot();
            let all = read_metrics(&run.metrics)?;
            match crate::plot::plot_losses(&all, &p) {
                Ok(()) => plot = Some(p),
                Err(e) => tracing::warn!("loss plot not written: {e}"),
            }
        }
    }
    let last = o.last.or_else(|| {
        read_metrics(&run.metrics)
            .ok()
            .and_then(|v| v.into_iter().last())
    });
    let report = TrainReport {
        out: run.out.clone(),
        model_dir: o.finished.then_some(model_dir),
        metrics: run.metrics.clone(),
        plot,
        steps: o.steps,
        resumed_from: o.resumed_from,
        params: model.num_params(),
        tokens: o.tokens,
        tokens_per_s: o.tokens as f64 / o.elapsed_s.max(1e-9),
        elapsed_s: o.elapsed_s,
        final_loss: last.as_ref().map_or(f64::NAN, |m| m.loss),
        final_loss_main: last.as_ref().map_or(f64::NAN, |m| m.loss_main),
        final_loss_mtp: last.as_ref().map_or(f64::NAN, |m| m.loss_mtp),
        final_mtp_acc: last.as_ref().map_or(f64::NAN, |m| m.mtp_acc),
    };
    if o.finished && main {
        crate::io::write_json(&run.report, &report)?;
    }
    Ok(report)
}

/// Switches to `stage` at 0-based `step`: its packed dataset from the start, and its RoPE θ and length.
fn enter_stage(
    stage: &Stage,
    model: &mut TrainModel,
    seed: u64,
    step: usize,
) -> Result<DataStream> {
    tracing::info!(
        "step {}: stage {} ({}): seq_len {}, rope_theta {}, batch_size {}",
        step + 1,
        stage.index,
        stage.name,
        stage.seq_len,
        stage.rope_theta,
        stage.batch_size
    );
    let data = open_stage(stage, true, seed, false)?;
    model.set_rope(stage.rope_theta, stage.seq_len);
    Ok(data)
}

/// The pretraining stream of stage `cur` of `plan` (every stage's dataset is checked now rather than at its
/// first step) and the tokenizer to ship with checkpoints.
fn pretrain_stream(
    args: &TrainArgs,
    plan: &[Stage],
    cur: usize,
) -> Result<(DataStream, Option<PathBuf>)> {
    let staged = !args.stages.is_empty();
    for st in plan {
        open_stage(st, staged, args.seed, true)?;
    }
    let d = open_stage(&plan[cur], staged, args.seed, false)?;
    let tok = args.tokenizer_path(d.dataset_tokenizer.as_deref());
    Ok((d, tok))
}

/// The SFT stream of `data.path` and the tokenizer used (and shipped with checkpoints).
fn sft_stream(args: &TrainArgs, vocab: usize) -> Result<(DataStream, Option<PathBuf>)> {
    let tok_path = args.tokenizer_path(None);
    let samples = sft_samples(args, tok_path.as_deref(), vocab)?;
    Ok((
        DataStream::sft(samples, args.train.seq_len, args.seed)?,
        tok_path,
    ))
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

/// The SFT samples of `data.path`. Text lines are rendered through the chat template the checkpoints will
/// carry (chosen from the template files [`extra_files`] copies into them, the way the engine chooses), so
/// SFT trains on exactly the prompts inference renders, whatever the checkpoint's template.
pub fn sft_samples(
    args: &TrainArgs,
    tokenizer: Option<&Path>,
    vocab: usize,
) -> Result<Vec<SftSample>> {
    let tok = match tokenizer {
        Some(p) => Some(
            mimo_text::Tokenizer::from_file(p).map_err(|e| TrainError::Tokenizer {
                path: p.to_path_buf(),
                msg: e.to_string(),
            })?,
        ),
        None => None,
    };
    let template = if args.data.chat_template {
        let files = extra_files(args, tokenizer);
        let file = |name: &str| {
            files
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, p)| p.as_path())
        };
        let (t, _) = mimo_text::load_chat_template(
            file("tokenizer_config.json"),
            file("chat_template.jinja"),
        )
        .map_err(|e| TrainError::Data(format!("chat template: {e}")))?;
        Some(t)
    } else {
        None
    };
    read_sft_jsonl(&args.data.path, tok.as_ref(), template.as_ref(), vocab)
}
