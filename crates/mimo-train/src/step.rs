//! The optimizer step that pretraining/SFT ([`crate::trainer`]) and GRPO ([`crate::grpo::GrpoTrainer`])
//! share: zero the grads, accumulate the micro-batches' gradients, sum them over the data-parallel ranks,
//! clip the global norm, check it, AdamW.

use tch::Tensor;

use crate::config::AdamWArgs;
use crate::error::{Result, TrainError};
use crate::model::Param;
use crate::optim::{clip_grad_norm, AdamW};
use crate::parallel::DataParallel;

/// Zeroes the gradients of `params` (those that have one).
pub fn zero_grad(params: &[Param]) {
    for p in params {
        let mut g = p.tensor.grad();
        if g.defined() {
            let _ = g.zero_();
        }
    }
}

/// One optimizer step over `params`: zeroes their grads; for each of `micro_batches`, `loss_of` returns the
/// loss tensor and its value, which must be finite, and the tensor is backpropagated (gradients accumulate);
/// the gradients are summed over `dp`'s ranks (each rank passes its shard, with global denominators); then the
/// global grad norm is clipped to `hp.grad_clip`, must be finite, and AdamW steps at `lr`.
/// Returns the grad norm before clipping.
///
/// A non-finite loss or grad norm is [`TrainError::Diverged`] at step `opt.step + 1` (with that micro-batch's
/// loss, or the sum of the values for the norm), and the step is not taken; the grads are left as they are.
pub fn train_step<T>(
    params: &[Param],
    opt: &mut AdamW,
    lr: f64,
    hp: &AdamWArgs,
    dp: &DataParallel,
    micro_batches: &[T],
    mut loss_of: impl FnMut(&T) -> Result<(Tensor, f64)>,
) -> Result<f64> {
    let diverged = |opt: &AdamW, loss: f64| TrainError::Diverged {
        step: opt.step as usize + 1,
        loss,
    };
    zero_grad(params);
    let mut total = 0.0;
    for mb in micro_batches {
        let (loss, value) = loss_of(mb)?;
        if !value.is_finite() {
            return Err(diverged(opt, value));
        }
        loss.backward();
        total += value;
    }
    dp.all_reduce_grads(params)?;
    let grad_norm = clip_grad_norm(params, hp.grad_clip);
    if !grad_norm.is_finite() {
        return Err(diverged(opt, total));
    }
    opt.step(params, lr, hp);
    Ok(grad_norm)
}
