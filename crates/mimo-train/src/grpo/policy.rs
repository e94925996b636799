//! The libtorch side of GRPO: padded rollout batches, per-token log-probs, the clipped loss and the trainer.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use tch::{Device, Kind, Tensor};

use super::{
    split_even, validate_groups, Group, GrpoArgs, LossStats, MismatchStats, Rollout, RolloutIs,
    UpdateStats,
};
use crate::error::{Result, TrainError};
use crate::model::{Param, TrainModel};
use crate::optim::AdamW;
use crate::parallel::DataParallel;
use crate::step::{train_step, zero_grad};

/// Log-ratios are clamped to ±this before `exp`, so that one extreme token cannot overflow to inf (and turn
/// the gradient into NaN); verl does the same.
const MAX_LOG_RATIO: f64 = 20.0;

/// Checkpoint-name prefix of the MTP layers, which RL freezes (design §7.4).
const MTP_PREFIX: &str = "model.mtp_layers.";

/// Rollouts as one right-padded teacher-forcing batch.
///
/// Row `i` holds `seq = prompt ++ response` (length `L`): `inputs[i, ..L-1] = seq[..L-1]`,
/// `targets[i, ..L-1] = seq[1..]`, and `mask` is 1 on the columns `P-1 .. L-1` whose target is a response token
/// (`P` = prompt length). Padding is token 0 with mask 0; causal attention keeps it from affecting real columns.
#[derive(Debug)]
pub struct RolloutBatch {
    /// Model inputs `[b, T]` (int64), `T` = the longest `L − 1`.
    pub inputs: Tensor,
    /// Next-token targets `[b, T]` (int64).
    pub targets: Tensor,
    /// `[b, T]` f32: 1 where the target is a response token.
    pub mask: Tensor,
    /// Per row: the first response column (`P − 1`) and the response length.
    pub spans: Vec<(usize, usize)>,
}

impl RolloutBatch {
    /// Pads `rows` into a batch on `device`. Errors on no rows, an empty prompt or response, or a token id
    /// `>= vocab_size`.
    pub fn new(rows: &[&Rollout], vocab_size: usize, device: Device) -> Result<Self> {
        if rows.is_empty() {
            return Err(TrainError::Input("rollout batch with no rows".into()));
        }
        for (i, r) in rows.iter().enumerate() {
            r.check(vocab_size, &format!("rollout {i}"))?;
        }
        let t = rows
            .iter()
            .map(|r| r.prompt.len() + r.response.len() - 1)
            .max()
            .unwrap_or(0);
        let b = rows.len();
        let mut inputs = vec![0i64; b * t];
        let mut targets = vec![0i64; b * t];
        let mut mask = vec![0f32; b * t];
        let mut spans = Vec::with_capacity(b);
        for (i, r) in rows.iter().enumerate() {
            let seq: Vec<i64> = r
                .prompt
                .iter()
                .chain(&r.response)
                .map(|&x| i64::from(x))
                .collect();
            let n = seq.len() - 1;
            let row = i * t;
            inputs[row..row + n].copy_from_slice(&seq[..n]);
            targets[row..row + n].copy_from_slice(&seq[1..]);
            let start = r.prompt.len() - 1;
            mask[row + start..row + n].fill(1.0);
            spans.push((start, r.response.len()));
        }
        let shape = [b as i64, t as i64];
        Ok(Self {
            inputs: Tensor::from_slice(&inputs).reshape(shape).to_device(device),
            targets: Tensor::from_slice(&targets)
                .reshape(shape)
                .to_device(device),
            mask: Tensor::from_slice(&mask).reshape(shape).to_device(device),
            spans,
        })
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.spans.len()
    }

    /// Number of response tokens.
    pub fn tokens(&self) -> usize {
        self.spans.iter().map(|s| s.1).sum()
    }
}

/// Per-token `log π(target | prefix)` `[b, T]` in f32 from the main head at the sampling `temperature`
/// (log_softmax(logits / T) + gather, so the ratio is that of the policy the rollouts were drawn from), 0 where
/// the mask is 0. Differentiable; wrap in `tch::no_grad` for old/reference log-probs.
pub fn token_logprobs(
    model: &TrainModel,
    batch: &RolloutBatch,
    temperature: f64,
) -> Result<Tensor> {
    let logits = model.forward_main(&batch.inputs)?;
    let dev = logits.device();
    let lp = (logits.to_kind(Kind::Float) / temperature)
        .log_softmax(-1, Kind::Float)
        .gather(2, &batch.targets.to_device(dev).unsqueeze(-1), false)
        .squeeze_dim(-1);
    Ok(lp * batch.mask.to_device(dev))
}

/// The per-token log-probs of each rollout's response under `model` (no gradient), `micro_batch` rollouts
/// per forward.
pub fn response_logprobs(
    model: &TrainModel,
    rollouts: &[Rollout],
    micro_batch: usize,
    temperature: f64,
) -> Result<Vec<Vec<f32>>> {
    let vocab = model.config().vocab_size;
    let mut out = Vec::with_capacity(rollouts.len());
    for chunk in rollouts.chunks(micro_batch.max(1)) {
        let rows: Vec<&Rollout> = chunk.iter().collect();
        let batch = RolloutBatch::new(&rows, vocab, model.device())?;
        let lp = tch::no_grad(|| token_logprobs(model, &batch, temperature))?;
        let lp: Vec<Vec<f32>> = Vec::try_from(&lp.to_device(Device::Cpu))
            .map_err(|e| TrainError::Model(format!("log-probs to host: {e}")))?;
        for (row, &(start, len)) in lp.iter().zip(&batch.spans) {
            out.push(row[start..start + len].to_vec());
        }
    }
    Ok(out)
}

/// Truncated importance weights of the rollout/trainer mismatch (TIS, see [`RolloutIs`]) `[b, T]`, and their
/// statistics.
///
/// `log_ratio = log π_old − log π_rollout` and `mask` are `[b, T]`, `mask` 1 on the response tokens that carry
/// engine log-probs. Token mode: `w = min(exp δ, cap)`; sequence mode: `w_i = min(exp Σ_t δ_it, cap)` on every
/// token of row `i`; the log-ratio (or its sum) is clamped to ±20 before `exp`, as veRL's
/// `compute_rollout_correction_weights` does. `Off` gives the mask itself (weight 1). The weights are 0 off the
/// mask and carry no gradient.
pub fn rollout_is_weights(
    log_ratio: &Tensor,
    mask: &Tensor,
    mode: RolloutIs,
    cap: f64,
) -> Result<(Tensor, MismatchStats)> {
    if log_ratio.size() != mask.size() || log_ratio.dim() != 2 {
        return Err(TrainError::Input(format!(
            "log_ratio {:?} and mask {:?} must both be [b, T]",
            log_ratio.size(),
            mask.size()
        )));
    }
    let mask = mask.to_kind(Kind::Float);
    let d = (log_ratio.detach().to_kind(Kind::Float) * &mask).to_device(mask.device());
    let raw = match mode {
        RolloutIs::Off | RolloutIs::Token => d.clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO).exp(),
        RolloutIs::Sequence => d
            .sum_dim_intlist([1i64].as_slice(), true, Kind::Float)
            .clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO)
            .exp()
            .expand_as(&d),
    } * &mask;
    let weights = match mode {
        RolloutIs::Off => mask.shallow_clone(),
        _ => raw.clamp_max(cap),
    };
    let n = mask.sum(Kind::Float).double_value(&[]);
    let mean = |t: &Tensor| masked_mean(t, &mask, n);
    let stats = MismatchStats {
        mean_abs_dlogp: mean(&d.abs()),
        max_abs_dlogp: if n > 0.0 {
            (d.abs() * &mask).max().double_value(&[])
        } else {
            0.0
        },
        // In f64: for |δ| ~ 1e-7 (f32 stacks agreeing) the f32 terms cancel to rounding noise.
        kl: {
            let d = d.to_kind(Kind::Double);
            mean(&(d.exp() - 1.0 - &d))
        },
        weight: mean(&weights),
        truncated: match mode {
            RolloutIs::Off => 0.0,
            _ => mean(&raw.gt(cap).to_kind(Kind::Float)),
        },
        tokens: n.round() as usize,
    };
    Ok((weights, stats))
}

/// The GRPO loss of one (micro-)batch and its token statistics.
///
/// `logp_new`, `logp_old`, `mask`: `[b, T]`; `adv`: `[b]` (one advantage per row) or `[b, T]`. Row `i` belongs
/// to group `group_of_row[i]` of the mini-batch, whose total response-token count is `group_tokens[g]`.
/// Per token `r = exp(new − old)` and `s = w · min(r·A, clip(r, 1 − eps_low, 1 + eps_high)·A)`, `w` the
/// mismatch weight (`is_weights`, `[b, T]`, from [`rollout_is_weights`]; 1 when `None`); the loss is
/// `−(1/G) Σ_g (1/N_g) Σ_{tokens of g} s` with `G = group_tokens.len()`. With `kl = Some((logp_ref, β))` it adds
/// `β · (1/G) Σ_g (1/N_g) Σ k3`, `k3 = exp(ref − new) − (ref − new) − 1`.
///
/// Because `G` and `N_g` are passed in rather than counted, a mini-batch may be split into row chunks whose
/// losses (and gradients) add up to the mini-batch's.
// The argument list is the loss's definition (design §3.3); bundling it into a struct would only hide that.
#[allow(clippy::too_many_arguments)]
pub fn grpo_loss(
    logp_new: &Tensor,
    logp_old: &Tensor,
    adv: &Tensor,
    mask: &Tensor,
    group_of_row: &[usize],
    group_tokens: &[f64],
    eps_low: f64,
    eps_high: f64,
    kl: Option<(&Tensor, f64)>,
    is_weights: Option<&Tensor>,
) -> Result<(Tensor, LossStats)> {
    check_loss_inputs(
        logp_new,
        [("logp_old", logp_old), ("mask", mask)]
            .into_iter()
            .chain(kl.map(|(r, _)| ("logp_ref", r)))
            .chain(is_weights.map(|w| ("is_weights", w))),
        adv,
        group_of_row,
        group_tokens,
    )?;
    let dev = logp_new.device();
    let mask = mask.to_kind(Kind::Float).to_device(dev);
    let adv = if adv.dim() == 1 {
        adv.unsqueeze(1)
    } else {
        adv.shallow_clone()
    }
    .to_kind(Kind::Float)
    .to_device(dev);
    let n_groups = group_tokens.len() as f64;
    let row_weight: Vec<f32> = group_of_row
        .iter()
        .map(|&g| (1.0 / (n_groups * group_tokens[g])) as f32)
        .collect();
    let weights = Tensor::from_slice(&row_weight).to_device(dev).unsqueeze(1) * &mask;

    let log_ratio = ((logp_new - logp_old) * &mask).clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO);
    let ratio = log_ratio.exp();
    let clipped = ratio.clamp(1.0 - eps_low, 1.0 + eps_high);
    let surrogate = (&ratio * &adv).minimum(&(clipped * &adv));
    let surrogate = match is_weights {
        Some(w) => surrogate * w.detach().to_kind(Kind::Float).to_device(dev),
        None => surrogate,
    };
    let surrogate_loss = -(surrogate * &weights).sum(Kind::Float);
    let k3 = kl.map(|(logp_ref, beta)| {
        let d = ((logp_ref - logp_new) * &mask).clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO);
        (d.exp() - &d - 1.0, beta)
    });
    let loss = match &k3 {
        Some((k3, beta)) => surrogate_loss + (k3 * &weights).sum(Kind::Float) * *beta,
        None => surrogate_loss,
    };

    let stats = tch::no_grad(|| {
        let n = mask.sum(Kind::Float).double_value(&[]);
        let mean = |t: &Tensor| masked_mean(t, &mask, n);
        let flag = |t: Tensor| t.to_kind(Kind::Float);
        LossStats {
            loss: loss.double_value(&[]),
            clip_low: mean(&(flag(ratio.lt(1.0 - eps_low)) * flag(adv.lt(0.0)))),
            clip_high: mean(&(flag(ratio.gt(1.0 + eps_high)) * flag(adv.gt(0.0)))),
            ratio: mean(&ratio),
            approx_kl: mean(&(&ratio - 1.0 - &log_ratio)),
            kl_ref: k3.as_ref().map_or(0.0, |(k3, _)| mean(k3)),
            tokens: n.round() as usize,
        }
    });
    Ok((loss, stats))
}

/// `Σ t·mask / n` (`n` = the mask's sum), 0 for an empty mask.
fn masked_mean(t: &Tensor, mask: &Tensor, n: f64) -> f64 {
    if n > 0.0 {
        (t * mask).sum(Kind::Float).double_value(&[]) / n
    } else {
        0.0
    }
}

/// The shape and index checks of [`grpo_loss`]: `logp_new` is `[b, T]` and so is each of `like_new`, `adv` is
/// `[b]` or `[b, T]`, `group_of_row` has `b` entries indexing `group_tokens`, whose counts are > 0.
fn check_loss_inputs<'a>(
    logp_new: &Tensor,
    like_new: impl Iterator<Item = (&'static str, &'a Tensor)>,
    adv: &Tensor,
    group_of_row: &[usize],
    group_tokens: &[f64],
) -> Result<()> {
    let shape = logp_new.size();
    if shape.len() != 2 {
        return Err(TrainError::Input(format!(
            "logp_new must be [b, T], got {shape:?}"
        )));
    }
    for (name, t) in like_new {
        if t.size() != shape {
            return Err(TrainError::Input(format!(
                "{name} has shape {:?}, logp_new {shape:?}",
                t.size()
            )));
        }
    }
    let b = shape[0];
    let adv_shape = adv.size();
    if adv_shape != [b] && adv_shape != shape {
        return Err(TrainError::Input(format!(
            "adv must be [{b}] or {shape:?}, got {adv_shape:?}"
        )));
    }
    if group_of_row.len() != b as usize {
        return Err(TrainError::Input(format!(
            "group_of_row has {} entries for {b} rows",
            group_of_row.len()
        )));
    }
    if let Some(&g) = group_of_row.iter().find(|&&g| g >= group_tokens.len()) {
        return Err(TrainError::Input(format!(
            "group index {g} with only {} groups",
            group_tokens.len()
        )));
    }
    if let Some(n) = group_tokens.iter().find(|n| !(n.is_finite() && **n > 0.0)) {
        return Err(TrainError::Input(format!(
            "group token count {n} (need > 0)"
        )));
    }
    Ok(())
}

/// One micro-batch of a planned update with its fixed (no-grad) log-probs.
struct Chunk {
    batch: RolloutBatch,
    /// `[b]` advantages.
    adv: Tensor,
    /// Group index within the mini-batch, per row.
    group_of_row: Vec<usize>,
    old: Tensor,
    reference: Option<Tensor>,
    /// Mismatch weights `[b, T]` when the correction is on and some row carries engine log-probs.
    is_weights: Option<Tensor>,
}

/// One optimizer step's worth of groups.
struct MiniBatch {
    chunks: Vec<Chunk>,
    /// Response tokens per group of the mini-batch.
    group_tokens: Vec<f64>,
}

/// The GRPO policy trainer: owns the model, AdamW over the main model's parameters (MTP layers frozen) and,
/// when `kl_beta > 0`, the initial policy's weights as the KL reference.
#[derive(Debug)]
pub struct GrpoTrainer {
    model: TrainModel,
    /// Handles to the optimised parameters: all but the MTP layers.
    trainable: Vec<Param>,
    opt: AdamW,
    args: GrpoArgs,
    /// The initial policy's weights (CPU copies); swapped into `model` to compute reference log-probs once per
    /// update, so that no second model has to be built.
    reference: Option<BTreeMap<String, Tensor>>,
    /// The data-parallel ranks sharing each update (one process by default).
    dp: DataParallel,
}

impl GrpoTrainer {
    /// Takes over `model` (the current policy) with fresh AdamW state. Errors on invalid `args`.
    pub fn new(model: TrainModel, args: GrpoArgs) -> Result<Self> {
        args.validate()?;
        let trainable: Vec<Param> = model
            .params()
            .iter()
            .filter(|p| !p.name.starts_with(MTP_PREFIX))
            .map(|p| Param {
                name: p.name.clone(),
                tensor: p.tensor.shallow_clone(),
                decay: p.decay,
            })
            .collect();
        let opt = AdamW::new(&trainable);
        let reference = (args.kl_beta > 0.0).then(|| snapshot(&model));
        Ok(Self {
            model,
            trainable,
            opt,
            args,
            reference,
            dp: DataParallel::single(),
        })
    }

    /// Shares every update with the other ranks of `dp` (each trains its shard of each mini-batch's rows;
    /// rank 0's weights are broadcast now, so all ranks start from the same policy).
    pub fn with_data_parallel(mut self, dp: DataParallel) -> Result<Self> {
        dp.broadcast_params(self.model.params())?;
        self.dp = dp;
        Ok(self)
    }

    /// The data-parallel ranks of the updates.
    pub fn data_parallel(&self) -> &DataParallel {
        &self.dp
    }

    /// The current policy.
    pub fn model(&self) -> &TrainModel {
        &self.model
    }

    /// Gives the model back.
    pub fn into_model(self) -> TrainModel {
        self.model
    }

    /// The hyperparameters.
    pub fn args(&self) -> &GrpoArgs {
        &self.args
    }

    /// Optimizer steps taken so far.
    pub fn steps(&self) -> u64 {
        self.opt.step
    }

    /// Names of the parameters the optimizer updates (everything but the MTP layers).
    pub fn trainable_names(&self) -> Vec<&str> {
        self.trainable.iter().map(|p| p.name.as_str()).collect()
    }

    /// One GRPO iteration on `groups` (design §3.3): old-policy log-probs recomputed once by this model with no
    /// gradient, then one clipped-surrogate AdamW step per mini-batch of groups (in the given order).
    /// Errors on unusable groups (see [`validate_groups`](super::validate_groups)) before touching the
    /// weights, and with [`TrainError::Diverged`] on a non-finite loss or gradient (that step is not taken).
    pub fn update(&mut self, groups: &[Group]) -> Result<UpdateStats> {
        let start = Instant::now();
        validate_groups(groups, self.model.config().vocab_size)?;
        let (mut plan, mut mismatch) = self.plan(groups)?;
        reduce_mismatch(&self.dp, &mut mismatch)?;
        self.reference_logprobs(&mut plan)?;

        let (eps_low, eps_high) = (self.args.eps_low, self.args.eps_high);
        let mut total = LossStats::default();
        let mut per_mb = Vec::with_capacity(plan.len());
        let mut grad_norm_sum = 0.0;
        for mb in &plan {
            let mut st = LossStats::default();
            let (model, args) = (&self.model, &self.args);
            let grad_norm = train_step(
                &self.trainable,
                &mut self.opt,
                args.lr,
                &args.adamw,
                &self.dp,
                &mb.chunks,
                |c| {
                    let new = token_logprobs(model, &c.batch, args.temperature)?;
                    let kl = c.reference.as_ref().map(|r| (r, args.kl_beta));
                    let (loss, s) = grpo_loss(
                        &new,
                        &c.old,
                        &c.adv,
                        &c.batch.mask,
                        &c.group_of_row,
                        &mb.group_tokens,
                        eps_low,
                        eps_high,
                        kl,
                        c.is_weights.as_ref(),
                    )?;
                    st.merge(&s);
                    Ok((loss, s.loss))
                },
            )?;
            reduce_loss_stats(&self.dp, &mut st)?;
            grad_norm_sum += grad_norm;
            total.merge(&st);
            per_mb.push(st);
        }
        zero_grad(&self.trainable);

        let steps = per_mb.len();
        let rewards: Vec<f64> = groups
            .iter()
            .flat_map(|g| g.rollouts.iter().map(|r| r.reward))
            .collect();
        Ok(UpdateStats {
            loss: per_mb.iter().map(|s| s.loss).sum::<f64>() / steps as f64,
            clip_low: total.clip_low,
            clip_high: total.clip_high,
            ratio: total.ratio,
            approx_kl: total.approx_kl,
            kl_ref: total.kl_ref,
            grad_norm: grad_norm_sum / steps as f64,
            tokens: total.tokens,
            rollouts: rewards.len(),
            groups: groups.len(),
            mean_reward: rewards.iter().sum::<f64>() / rewards.len() as f64,
            steps,
            seconds: start.elapsed().as_secs_f64(),
            mini_batches: per_mb,
            mismatch,
        })
    }

    /// The weights by checkpoint name as the engine's in-memory weight map (`name → (shape, row-major f32
    /// data)`, MTP layers included), from which it rebuilds its model in process.
    pub fn export_weights(&self) -> mimo_model::HostWeights {
        self.model
            .state_dict()
            .into_iter()
            .map(|(name, t)| {
                let shape: Vec<usize> = t.size().iter().map(|&d| d as usize).collect();
                let n = t.numel();
                let mut data = vec![0f32; n];
                // `state_dict` gives contiguous f32 CPU tensors, so this copy cannot fail.
                t.copy_data(&mut data, n);
                (name, (shape, data))
            })
            .collect()
    }

    /// Writes the current policy as an HF directory (see [`TrainModel::save_hf`]).
    pub fn save_hf(&self, dir: &Path, extra: &[(&str, &Path)]) -> Result<()> {
        self.model.save_hf(dir, extra)
    }

    /// Splits `groups` into mini-batches and (this rank's shard of each one's rows) micro-batches, with
    /// advantages, the old-policy log-probs and the mismatch weights against the engine's log-probs.
    fn plan(&self, groups: &[Group]) -> Result<(Vec<MiniBatch>, MismatchStats)> {
        let vocab = self.model.config().vocab_size;
        let device = self.model.device();
        let mut plan = vec![];
        let mut mismatch = MismatchStats::default();
        for range in split_even(groups.len(), self.args.mini_batches) {
            let mb_groups = &groups[range];
            let mut rows: Vec<(usize, &Rollout, f64)> = vec![];
            for (g, group) in mb_groups.iter().enumerate() {
                for (r, a) in group
                    .rollouts
                    .iter()
                    .zip(group.advantages(self.args.adv_norm))
                {
                    rows.push((g, r, a));
                }
            }
            let mut chunks = vec![];
            let shard = self.dp.shard(rows.len());
            for part in rows[shard].chunks(self.args.micro_batch) {
                let rollouts: Vec<&Rollout> = part.iter().map(|p| p.1).collect();
                let batch = RolloutBatch::new(&rollouts, vocab, device)?;
                let adv: Vec<f32> = part.iter().map(|p| p.2 as f32).collect();
                let old =
                    tch::no_grad(|| token_logprobs(&self.model, &batch, self.args.temperature))?;
                let is_weights = self.mismatch_weights(&rollouts, &batch, &old, &mut mismatch)?;
                chunks.push(Chunk {
                    adv: Tensor::from_slice(&adv).to_device(device),
                    group_of_row: part.iter().map(|p| p.0).collect(),
                    old,
                    reference: None,
                    is_weights,
                    batch,
                });
            }
            plan.push(MiniBatch {
                chunks,
                group_tokens: mb_groups
                    .iter()
                    .map(|g| g.response_tokens() as f64)
                    .collect(),
            });
        }
        Ok((plan, mismatch))
    }

    /// The chunk's TIS weights (1 on the tokens of rollouts without engine log-probs), with the mismatch
    /// statistics folded into `stats`; `None` when no row carries engine log-probs. With the correction off the
    /// mismatch is still measured but no weights are applied.
    fn mismatch_weights(
        &self,
        rows: &[&Rollout],
        batch: &RolloutBatch,
        old: &Tensor,
        stats: &mut MismatchStats,
    ) -> Result<Option<Tensor>> {
        if rows.iter().all(|r| r.engine_logprobs.is_none()) {
            return Ok(None);
        }
        let t = batch.inputs.size()[1] as usize;
        let mut engine = vec![0f32; rows.len() * t];
        let mut has = vec![0f32; rows.len() * t];
        for (i, (r, &(start, len))) in rows.iter().zip(&batch.spans).enumerate() {
            if let Some(lp) = &r.engine_logprobs {
                engine[i * t + start..i * t + start + len].copy_from_slice(lp);
                has[i * t + start..i * t + start + len].fill(1.0);
            }
        }
        let shape = [rows.len() as i64, t as i64];
        let dev = old.device();
        let engine = Tensor::from_slice(&engine).reshape(shape).to_device(dev);
        let has = Tensor::from_slice(&has).reshape(shape).to_device(dev);
        let (w, s) = rollout_is_weights(
            &(old - engine),
            &has,
            self.args.rollout_is,
            self.args.rollout_is_cap,
        )?;
        stats.merge(&s);
        Ok(match self.args.rollout_is {
            RolloutIs::Off => None,
            _ => Some(w + batch.mask.to_device(dev) - has),
        })
    }

    /// With a KL reference: swaps its weights into the model, fills every chunk's reference log-probs, and
    /// restores the current weights (also when the forward fails).
    fn reference_logprobs(&mut self, plan: &mut [MiniBatch]) -> Result<()> {
        let Some(reference) = &self.reference else {
            return Ok(());
        };
        let origin = Path::new("<grpo reference policy>");
        let current = snapshot(&self.model);
        self.model.load_state(reference, origin)?;
        let filled = fill_logprobs(&self.model, plan, self.args.temperature);
        self.model.load_state(&current, origin)?;
        filled
    }
}

/// Sums a mini-batch's loss stats over the ranks (token-weighted means stay token-weighted).
fn reduce_loss_stats(dp: &DataParallel, st: &mut LossStats) -> Result<()> {
    if dp.world_size() == 1 {
        return Ok(());
    }
    let t = st.tokens as f64;
    let mut v = [
        st.loss,
        st.clip_low * t,
        st.clip_high * t,
        st.ratio * t,
        st.approx_kl * t,
        st.kl_ref * t,
        t,
    ];
    dp.sum(&mut v)?;
    let n = v[6].max(1.0);
    *st = LossStats {
        loss: v[0],
        clip_low: v[1] / n,
        clip_high: v[2] / n,
        ratio: v[3] / n,
        approx_kl: v[4] / n,
        kl_ref: v[5] / n,
        tokens: v[6].round() as usize,
    };
    Ok(())
}

/// Sums the mismatch stats over the ranks (`max_abs_dlogp` stays this rank's).
fn reduce_mismatch(dp: &DataParallel, st: &mut MismatchStats) -> Result<()> {
    if dp.world_size() == 1 {
        return Ok(());
    }
    let t = st.tokens as f64;
    let mut v = [
        st.mean_abs_dlogp * t,
        st.kl * t,
        st.weight * t,
        st.truncated * t,
        t,
    ];
    dp.sum(&mut v)?;
    let n = v[4].max(1.0);
    st.mean_abs_dlogp = v[0] / n;
    st.kl = v[1] / n;
    st.weight = v[2] / n;
    st.truncated = v[3] / n;
    st.tokens = v[4].round() as usize;
    Ok(())
}

/// Deep copies of the weights on the CPU (`state_dict` alone shares storage with CPU parameters).
fn snapshot(model: &TrainModel) -> BTreeMap<String, Tensor> {
    model
        .state_dict()
        .into_iter()
        .map(|(name, t)| (name, t.copy()))
        .collect()
}

fn fill_logprobs(model: &TrainModel, plan: &mut [MiniBatch], temperature: f64) -> Result<()> {
    for c in plan.iter_mut().flat_map(|mb| mb.chunks.iter_mut()) {
        c.reference = Some(tch::no_grad(|| {
            token_logprobs(model, &c.batch, temperature)
        })?);
    }
    Ok(())
}
