//! The MiMo training objective (design §1.5, §7.4): `L = L_main + λ · mean_k L_mtp,k`, each a token-mean
//! cross-entropy over the positions whose loss mask is 1, plus top-1 accuracies.

use tch::{Kind, Reduction, Tensor};

use crate::error::{Result, TrainError};
use crate::model::ForwardOutput;

/// Per-head sums over one micro-batch: head 0 is the main model, head `1 + k` MTP layer `k`.
#[derive(Debug)]
pub struct HeadSums {
    /// Σ mask · CE (differentiable scalar).
    pub loss_sum: Tensor,
    /// Σ mask (number of target tokens).
    pub count: f64,
    /// Σ mask · [argmax = target].
    pub correct: f64,
}

/// The loss of one batch with its parts.
#[derive(Debug)]
pub struct LossOutput {
    /// `L_main + λ · mean_k L_mtp,k` (differentiable scalar).
    pub loss: Tensor,
    /// `L_main`.
    pub main: f64,
    /// `L_mtp,k` per layer.
    pub mtp: Vec<f64>,
    /// Top-1 accuracy of the main head.
    pub main_acc: f64,
    /// Top-1 accuracy per MTP layer.
    pub mtp_acc: Vec<f64>,
}

/// Sums for every head. `window` is `[b, T+1]` int64 (the forward ran on `window[:, ..T]`); `mask` `[b, T+1]`
/// f32 marks target tokens (None: all). Main row `p` predicts `window[:, p+1]`; MTP layer `k` row `p` predicts
/// `window[:, p+2+k]`.
pub fn head_sums(
    out: &ForwardOutput,
    window: &Tensor,
    mask: Option<&Tensor>,
) -> Result<Vec<HeadSums>> {
    let s = window.size();
    if s.len() != 2 {
        return Err(TrainError::Input(format!(
            "window must be [b, T+1], got {s:?}"
        )));
    }
    let t = s[1] - 1;
    let lsz = out.logits.size();
    if lsz.len() != 3 || lsz[0] != s[0] || lsz[1] != t {
        return Err(TrainError::Input(format!(
            "logits {lsz:?} do not match window {s:?} (need [b, T, V] for a [b, T+1] window)"
        )));
    }
    let mut heads = Vec::with_capacity(1 + out.mtp_logits.len());
    let one = |logits: &Tensor, offset: i64| -> HeadSums {
        let rows = logits.size()[1];
        let v = logits.size()[2];
        let target = window.narrow(1, offset, rows).reshape([-1]);
        let m = match mask {
            Some(m) => m.narrow(1, offset, rows).reshape([-1]).to_kind(Kind::Float),
            None => Tensor::ones([target.size()[0]], (Kind::Float, logits.device())),
        };
        let flat = logits.reshape([-1, v]).to_kind(Kind::Float);
        let ce = flat.cross_entropy_loss::<Tensor>(&target, None, Reduction::None, -100, 0.0);
        let loss_sum = (ce * &m).sum(Kind::Float);
        let correct = tch::no_grad(|| {
            (flat
                .argmax(-1, false)
                .eq_tensor(&target)
                .to_kind(Kind::Float)
                * &m)
                .sum(Kind::Float)
                .double_value(&[])
        });
        HeadSums {
            loss_sum,
            count: m.sum(Kind::Float).double_value(&[]),
            correct,
        }
    };
    heads.push(one(&out.logits, 1));
    for (k, l) in out.mtp_logits.iter().enumerate() {
        heads.push(one(l, 2 + k as i64));
    }
    Ok(heads)
}

/// Combines head sums into `L_main/N_main + λ · mean_k (L_k/N_k)` with the given denominators (token counts of
/// the whole accumulated batch, so gradient accumulation equals one big batch).
pub fn combine(heads: &[HeadSums], denoms: &[f64], lambda: f64) -> Tensor {
    let main = &heads[0].loss_sum / denoms[0].max(1.0);
    let k = heads.len() - 1;
    if k == 0 || lambda == 0.0 {
        return main;
    }
    let mut mtp = Tensor::zeros([], (Kind::Float, main.device()));
    for (h, d) in heads[1..].iter().zip(&denoms[1..]) {
        mtp += &h.loss_sum / d.max(1.0);
    }
    main + mtp * (lambda / k as f64)
}

/// The loss of a single batch (means over its own target tokens).
pub fn compute_loss(
    out: &ForwardOutput,
    window: &Tensor,
    mask: Option<&Tensor>,
    lambda: f64,
) -> Result<LossOutput> {
    let heads = head_sums(out, window, mask)?;
    let denoms: Vec<f64> = heads.iter().map(|h| h.count).collect();
    let loss = combine(&heads, &denoms, lambda);
    let mean = |h: &HeadSums| h.loss_sum.double_value(&[]) / h.count.max(1.0);
    Ok(LossOutput {
        loss,
        main: mean(&heads[0]),
        mtp: heads[1..].iter().map(mean).collect(),
        main_acc: heads[0].correct / heads[0].count.max(1.0),
        mtp_acc: heads[1..]
            .iter()
            .map(|h| h.correct / h.count.max(1.0))
            .collect(),
    })
}
