//! MiMo's modified GRPO policy update (design §3.3, §7.5), driven by the RL loop.
//!
//! For each prompt the loop samples a [`Group`] of rollouts and scores them. One [`GrpoTrainer::update`] then
//! recomputes the old-policy log-probs once, splits the groups into `mini_batches` and takes one AdamW step per
//! mini-batch on
//!
//! `L = −(1/G) Σ_g (1/N_g) Σ_{i∈g} Σ_j min(r_ij·A_i, clip(r_ij, 1−ε_low, 1+ε_high)·A_i)`
//!
//! with `r_ij = π_θ(o_ij | q, o_i,<j) / π_old(o_ij | q, o_i,<j)`, the group-normalised advantage `A_i`, `N_g`
//! the number of response tokens of group `g` (token-level normalisation) and `G` the number of groups in the
//! mini-batch. There is no KL term by default; `kl_beta > 0` adds the k3 estimator against the initial policy
//! with the same normalisation. The MTP layers are frozen: the RL forward skips them and they are not optimised.
//!
//! **Rollout/trainer mismatch correction.** The rollouts are sampled by the candle engine, the loss is taken by
//! libtorch: the two stacks' log-probs of the same token differ a little (more in bf16 or on a GPU), so the
//! rollouts are slightly off-policy for the trainer. When a rollout carries the engine's log-probs, each token's
//! term is multiplied by the truncated importance weight `w = min(π_old / π_rollout, cap)` (TIS; [`RolloutIs`]),
//! as veRL's rollout correction and TRL's `vllm_importance_sampling_correction` do.
//!
//! The data types, [`GrpoArgs`] and [`group_advantages`] build without libtorch; the update needs the `tch`
//! feature.

use serde::{Deserialize, Serialize};

pub use crate::config::AdamWArgs;
use crate::error::{Result, TrainError};

/// Added to the population std of a group's rewards before dividing (design §7.5).
pub const ADV_EPS: f64 = 1e-6;

/// One sampled response to a prompt with its reward.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rollout {
    /// Prompt token ids (non-empty; the chat-formatted question).
    pub prompt: Vec<u32>,
    /// Response token ids (non-empty), as sampled.
    pub response: Vec<u32>,
    /// Scalar reward (finite).
    pub reward: f64,
    /// The log-prob the rollout engine sampled each response token with (at the rollout temperature), one per
    /// response token; `None` when unknown, which leaves the rollout uncorrected (see [`RolloutIs`]).
    pub engine_logprobs: Option<Vec<f32>>,
}

impl Rollout {
    /// Errors (prefixed with `at`) on an empty prompt or response, a token id `>= vocab_size` or a non-finite
    /// reward.
    pub(crate) fn check(&self, vocab_size: usize, at: &str) -> Result<()> {
        if self.prompt.is_empty() {
            return Err(TrainError::Input(format!("{at}: empty prompt")));
        }
        if self.response.is_empty() {
            return Err(TrainError::Input(format!("{at}: empty response")));
        }
        if let Some(&t) = self
            .prompt
            .iter()
            .chain(&self.response)
            .find(|&&t| t as usize >= vocab_size)
        {
            return Err(TrainError::Input(format!(
                "{at}: token id {t} is out of range for vocab_size {vocab_size}"
            )));
        }
        if !self.reward.is_finite() {
            return Err(TrainError::Input(format!(
                "{at}: reward {} is not finite",
                self.reward
            )));
        }
        if let Some(lp) = &self.engine_logprobs {
            if lp.len() != self.response.len() {
                return Err(TrainError::Input(format!(
                    "{at}: {} engine log-probs for {} response tokens",
                    lp.len(),
                    self.response.len()
                )));
            }
            if let Some(x) = lp.iter().find(|x| !(x.is_finite() && **x <= 0.0)) {
                return Err(TrainError::Input(format!(
                    "{at}: engine log-prob {x} (need a finite value <= 0)"
                )));
            }
        }
        Ok(())
    }
}

/// The rollouts of one prompt; the advantages are computed from their rewards.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Group {
    /// The sampled responses (at least one).
    pub rollouts: Vec<Rollout>,
}

impl Group {
    /// The group-normalised advantage of each rollout ([`group_advantages_with`] of the rewards).
    pub fn advantages(&self, norm: AdvNorm) -> Vec<f64> {
        let rewards: Vec<f64> = self.rollouts.iter().map(|r| r.reward).collect();
        group_advantages_with(&rewards, norm)
    }

    /// Total number of response tokens (`N_g` of the loss).
    pub fn response_tokens(&self) -> usize {
        self.rollouts.iter().map(|r| r.response.len()).sum()
    }
}

/// How a group's rewards become advantages: `A_i = (r_i − mean) / (std + 1e-6)` with one of these stds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AdvNorm {
    /// The population std, `√(Σ(r − mean)² / G)` (design §7.5).
    #[default]
    PopulationStd,
    /// The sample std, `√(Σ(r − mean)² / (G − 1))` (veRL's and TRL's GRPO, `torch.std`).
    SampleStd,
    /// No scaling, `A_i = r_i − mean` (Dr. GRPO).
    None,
}

/// `(r − mean) / (std + 1e-6)` with the population std over the group (design §7.5); see
/// [`group_advantages_with`].
pub fn group_advantages(rewards: &[f64]) -> Vec<f64> {
    group_advantages_with(rewards, AdvNorm::PopulationStd)
}

/// Group-normalised advantages under `norm`. A group whose rewards are all equal gets all zeros (so does a
/// single rollout); an empty slice gives an empty vector.
pub fn group_advantages_with(rewards: &[f64], norm: AdvNorm) -> Vec<f64> {
    let Some(&first) = rewards.first() else {
        return vec![];
    };
    if rewards.iter().all(|&r| r == first) {
        return vec![0.0; rewards.len()];
    }
    let n = rewards.len() as f64;
    let mean = rewards.iter().sum::<f64>() / n;
    let ss = rewards.iter().map(|r| (r - mean).powi(2)).sum::<f64>();
    let scale = match norm {
        AdvNorm::PopulationStd => (ss / n).sqrt() + ADV_EPS,
        AdvNorm::SampleStd => (ss / (n - 1.0)).sqrt() + ADV_EPS,
        AdvNorm::None => 1.0,
    };
    rewards.iter().map(|r| (r - mean) / scale).collect()
}

/// Truncated importance sampling (TIS) of the rollout/trainer mismatch, on the log-ratio
/// `δ = log π_old − log π_rollout` of the trainer's (old-policy) and the engine's log-probs of each sampled
/// token. The weight multiplies each token's surrogate term and carries no gradient.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RolloutIs {
    /// No correction.
    Off,
    /// Per token: `w_t = min(exp δ_t, cap)` (TRL's default `token_truncate`; veRL `rollout_is = "token"`).
    #[default]
    Token,
    /// Per sequence: `w = min(exp Σ_t δ_t, cap)` on every token of the response (veRL `"sequence"`).
    Sequence,
}

/// Checks that `groups` can be trained on: at least one group, every group non-empty, every rollout with a
/// non-empty prompt and response, token ids below `vocab_size` and a finite reward. The error names the group
/// and rollout.
pub fn validate_groups(groups: &[Group], vocab_size: usize) -> Result<()> {
    if groups.is_empty() {
        return Err(TrainError::Input("GRPO update with no groups".into()));
    }
    for (g, group) in groups.iter().enumerate() {
        if group.rollouts.is_empty() {
            return Err(TrainError::Input(format!("group {g} has no rollouts")));
        }
        for (i, r) in group.rollouts.iter().enumerate() {
            r.check(vocab_size, &format!("group {g} rollout {i}"))?;
        }
    }
    Ok(())
}

/// GRPO hyperparameters (design §3.3, §3.6, §7.5); a `[grpo]` TOML table with every key optional.
///
/// The optimizer-step keys are those of `[optim]` ([`AdamWArgs`], flattened into this table): `beta1`,
/// `beta2`, `eps`, `weight_decay`, `grad_clip`. Unknown keys are still rejected (a unit test pins that).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GrpoArgs {
    /// Lower clip range: the ratio is clipped at `1 − eps_low`.
    pub eps_low: f64,
    /// Upper clip range (Clip-Higher): the ratio is clipped at `1 + eps_high`.
    pub eps_high: f64,
    /// Coefficient of the k3 KL term against the initial policy; 0 (MiMo) keeps no reference weights.
    pub kl_beta: f64,
    /// Constant AdamW learning rate.
    pub lr: f64,
    /// Gradient updates per [`GrpoTrainer::update`]: the groups are split into this many mini-batches of
    /// (nearly) equal group counts; fewer when there are fewer groups.
    pub mini_batches: usize,
    /// Rollouts per forward/backward pass inside a mini-batch (gradients accumulate; the loss is unchanged).
    pub micro_batch: usize,
    /// Sampling temperature of the rollouts: log-probs are taken of `softmax(logits / T)`, the policy that
    /// generated them (`mimo rl` sets it from `rollout.temperature`).
    pub temperature: f64,
    /// Advantage normalisation within a group.
    pub adv_norm: AdvNorm,
    /// Mismatch correction against the engine's log-probs (rollouts without them are not corrected).
    pub rollout_is: RolloutIs,
    /// Upper bound of the importance weight (TIS cap; TRL and veRL use 2).
    pub rollout_is_cap: f64,
    /// AdamW β1, β2, ε, weight decay (default 0) and the global grad-norm clip (default 1; 0 = off).
    #[serde(flatten)]
    pub adamw: AdamWArgs,
}

impl Default for GrpoArgs {
    fn default() -> Self {
        Self {
            eps_low: 0.2,
            eps_high: 0.28,
            kl_beta: 0.0,
            lr: 1e-5,
            mini_batches: 2,
            micro_batch: 16,
            temperature: 1.0,
            adv_norm: AdvNorm::PopulationStd,
            rollout_is: RolloutIs::Token,
            rollout_is_cap: 2.0,
            adamw: AdamWArgs::default(),
        }
    }
}

impl GrpoArgs {
    /// Rejects values the update cannot use (negative or non-finite rates, `eps_low ∉ [0, 1)`, zero
    /// mini-batches or micro-batch, and the [`AdamWArgs::validate`] checks). Errors name the key.
    pub fn validate(&self) -> Result<()> {
        let bad = |field: &str, v: String| Err(TrainError::Config(format!("grpo.{field} = {v}")));
        if !(0.0..1.0).contains(&self.eps_low) {
            return bad(
                "eps_low",
                format!("{} (need 0 <= eps_low < 1)", self.eps_low),
            );
        }
        if !(self.eps_high >= 0.0 && self.eps_high.is_finite()) {
            return bad("eps_high", format!("{} (need >= 0)", self.eps_high));
        }
        for (field, v) in [("kl_beta", self.kl_beta), ("lr", self.lr)] {
            if !(v >= 0.0 && v.is_finite()) {
                return bad(field, format!("{v} (need a finite value >= 0)"));
            }
        }
        if !(self.rollout_is_cap >= 1.0 && self.rollout_is_cap.is_finite()) {
            return bad(
                "rollout_is_cap",
                format!("{} (need a finite value >= 1)", self.rollout_is_cap),
            );
        }
        if !(self.temperature > 0.0 && self.temperature.is_finite()) {
            return bad(
                "temperature",
                format!("{} (need a finite value > 0)", self.temperature),
            );
        }
        self.adamw.validate("grpo")?;
        if self.mini_batches == 0 {
            return bad("mini_batches", "0 (need >= 1)".into());
        }
        if self.micro_batch == 0 {
            return bad("micro_batch", "0 (need >= 1)".into());
        }
        Ok(())
    }
}

/// Token statistics of a GRPO loss evaluation (means over response tokens).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct LossStats {
    /// The loss value (for merged micro-batches: their sum, i.e. the mini-batch loss).
    pub loss: f64,
    /// Fraction of tokens with `A < 0` and `r < 1 − eps_low` (the lower clip is active, no gradient).
    pub clip_low: f64,
    /// Fraction of tokens with `A > 0` and `r > 1 + eps_high` (the upper clip is active, no gradient).
    pub clip_high: f64,
    /// Mean ratio `r = π_θ / π_old`.
    pub ratio: f64,
    /// Mean k3 estimate of KL(π_old ‖ π_θ): `r − 1 − log r`.
    pub approx_kl: f64,
    /// Mean k3 KL against the reference policy (0 without one).
    pub kl_ref: f64,
    /// Number of response tokens.
    pub tokens: usize,
}

impl LossStats {
    /// Folds in the stats of another micro-batch of the same mini-batch (losses add, means are token-weighted).
    pub fn merge(&mut self, other: &LossStats) {
        let (a, b) = (self.tokens as f64, other.tokens as f64);
        let n = (a + b).max(1.0);
        let mix = |x: f64, y: f64| (x * a + y * b) / n;
        self.clip_low = mix(self.clip_low, other.clip_low);
        self.clip_high = mix(self.clip_high, other.clip_high);
        self.ratio = mix(self.ratio, other.ratio);
        self.approx_kl = mix(self.approx_kl, other.approx_kl);
        self.kl_ref = mix(self.kl_ref, other.kl_ref);
        self.loss += other.loss;
        self.tokens += other.tokens;
    }
}

/// What one [`GrpoTrainer::update`] did.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct UpdateStats {
    /// Mean mini-batch loss.
    pub loss: f64,
    /// Token fraction clipped below (over all mini-batches).
    pub clip_low: f64,
    /// Token fraction clipped above.
    pub clip_high: f64,
    /// Mean ratio π_θ / π_old.
    pub ratio: f64,
    /// Mean k3 KL(π_old ‖ π_θ).
    pub approx_kl: f64,
    /// Mean k3 KL against the reference (0 when `kl_beta` is 0).
    pub kl_ref: f64,
    /// Mean gradient norm before clipping.
    pub grad_norm: f64,
    /// Response tokens trained on.
    pub tokens: usize,
    /// Rollouts trained on.
    pub rollouts: usize,
    /// Groups trained on.
    pub groups: usize,
    /// Mean reward over the rollouts.
    pub mean_reward: f64,
    /// Optimizer steps taken (= mini-batches).
    pub steps: usize,
    /// Wall-clock seconds of the update.
    pub seconds: f64,
    /// Per mini-batch stats, in order (the first one sees the old policy: ratio 1).
    pub mini_batches: Vec<LossStats>,
    /// Rollout/trainer mismatch over the rollouts that carried engine log-probs.
    pub mismatch: MismatchStats,
}

/// How far the engine's sampling log-probs are from the trainer's (old-policy) ones, and what the truncated
/// importance weights did (token means over the response tokens that carried engine log-probs).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MismatchStats {
    /// Mean `|log π_old − log π_rollout|`.
    pub mean_abs_dlogp: f64,
    /// Largest `|log π_old − log π_rollout|`.
    pub max_abs_dlogp: f64,
    /// k3 estimate of KL(π_rollout ‖ π_old): mean `ρ − 1 − log ρ`, `ρ = π_old / π_rollout`.
    pub kl: f64,
    /// Mean importance weight after truncation (1 without correction).
    pub weight: f64,
    /// Fraction of tokens whose weight was truncated at the cap.
    pub truncated: f64,
    /// Tokens compared.
    pub tokens: usize,
}

impl MismatchStats {
    /// Folds in another batch's stats (token-weighted means).
    pub fn merge(&mut self, other: &MismatchStats) {
        let (a, b) = (self.tokens as f64, other.tokens as f64);
        let n = (a + b).max(1.0);
        let mix = |x: f64, y: f64| (x * a + y * b) / n;
        self.mean_abs_dlogp = mix(self.mean_abs_dlogp, other.mean_abs_dlogp);
        self.kl = mix(self.kl, other.kl);
        self.weight = mix(self.weight, other.weight);
        self.truncated = mix(self.truncated, other.truncated);
        self.max_abs_dlogp = self.max_abs_dlogp.max(other.max_abs_dlogp);
        self.tokens += other.tokens;
    }
}

/// Splits `n` items into `parts.min(n)` consecutive ranges whose sizes differ by at most one.
pub fn split_even(n: usize, parts: usize) -> Vec<std::ops::Range<usize>> {
    let parts = parts.min(n).max(1);
    let (base, extra) = (n / parts, n % parts);
    let mut start = 0;
    (0..parts)
        .map(|i| {
            let len = base + usize::from(i < extra);
            let r = start..start + len;
            start += len;
            r
        })
        .filter(|r| !r.is_empty())
        .collect()
}

#[cfg(feature = "tch")]
mod policy;
#[cfg(feature = "tch")]
pub use policy::{
    grpo_loss, response_logprobs, rollout_is_weights, token_logprobs, GrpoTrainer, RolloutBatch,
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_even_sizes() {
        assert_eq!(split_even(5, 2), vec![0..3, 3..5]);
        assert_eq!(split_even(2, 4), vec![0..1, 1..2]);
        assert_eq!(split_even(0, 3), Vec::<std::ops::Range<usize>>::new());
    }

    #[test]
    fn args_toml_defaults_and_unknown_keys() {
        let a: GrpoArgs = toml::from_str("eps_high = 0.3\nmini_batches = 4").unwrap();
        assert_eq!(a.eps_high, 0.3);
        assert_eq!(a.mini_batches, 4);
        assert_eq!(a.eps_low, 0.2);
        let e = toml::from_str::<GrpoArgs>("epz = 0.3")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `epz`"), "{e}");
        // The old names of the AdamW keys are gone (now `eps` and `grad_clip`, as in `[optim]`).
        for old in ["adam_eps = 1e-8", "max_grad_norm = 1.0"] {
            assert!(toml::from_str::<GrpoArgs>(old).is_err(), "{old}");
        }
        // A partial table keeps the other AdamW defaults.
        let a: GrpoArgs = toml::from_str("lr = 2e-5\neps = 1e-6\ngrad_clip = 0.5").unwrap();
        assert_eq!((a.lr, a.adamw.eps, a.adamw.grad_clip), (2e-5, 1e-6, 0.5));
        assert_eq!(a.adamw.beta2, 0.95);
        assert_eq!(a.adamw.weight_decay, 0.0);
        let back: GrpoArgs = toml::from_str(&toml::to_string(&a).unwrap()).unwrap();
        assert_eq!(back, a);
        let bad = GrpoArgs {
            adamw: AdamWArgs {
                beta2: 1.0,
                ..Default::default()
            },
            ..Default::default()
        };
        let e = bad.validate().unwrap_err().to_string();
        assert!(e.contains("grpo.beta2"), "{e}");
        assert!(GrpoArgs::default().validate().is_ok());
        let bad = GrpoArgs {
            mini_batches: 0,
            ..Default::default()
        };
        assert!(bad.validate().is_err());
    }

    #[test]
    fn validation_names_the_rollout() {
        let r = |prompt: Vec<u32>, response: Vec<u32>| Rollout {
            prompt,
            response,
            reward: 0.0,
            engine_logprobs: None,
        };
        let ok = Group {
            rollouts: vec![r(vec![1], vec![2])],
        };
        assert!(validate_groups(std::slice::from_ref(&ok), 10).is_ok());
        assert!(validate_groups(&[], 10).is_err());
        assert!(validate_groups(&[Group { rollouts: vec![] }], 10).is_err());
        let empty_resp = Group {
            rollouts: vec![r(vec![1], vec![])],
        };
        assert!(validate_groups(&[empty_resp], 10).is_err());
        let oob = Group {
            rollouts: vec![r(vec![1], vec![2]), r(vec![1], vec![10])],
        };
        let e = validate_groups(&[ok, oob], 10).unwrap_err().to_string();
        assert!(e.contains("group 1 rollout 1") && e.contains("10"), "{e}");
        for (lp, why) in [(vec![-0.5, -0.5], "2 engine log-probs"), (vec![0.5], "0.5")] {
            let g = Group {
                rollouts: vec![Rollout {
                    engine_logprobs: Some(lp),
                    ..r(vec![1], vec![2])
                }],
            };
            let e = validate_groups(&[g], 10).unwrap_err().to_string();
            assert!(e.contains(why), "{e}");
        }
    }

    #[test]
    fn advantage_normalisations() {
        let r = [1.0, 0.0, 0.0, 1.0, 1.0];
        let mean = 0.6;
        let ss: f64 = r.iter().map(|x| (x - mean) * (x - mean)).sum();
        for (norm, scale) in [
            (AdvNorm::PopulationStd, (ss / 5.0).sqrt() + ADV_EPS),
            (AdvNorm::SampleStd, (ss / 4.0).sqrt() + ADV_EPS),
            (AdvNorm::None, 1.0),
        ] {
            let a = group_advantages_with(&r, norm);
            for (x, y) in a.iter().zip(&r) {
                assert!((x - (y - mean) / scale).abs() < 1e-12, "{norm:?}");
            }
        }
        assert_eq!(group_advantages_with(&[2.0], AdvNorm::SampleStd), vec![0.0]);
        let a: GrpoArgs =
            toml::from_str("adv_norm = \"sample_std\"\nrollout_is = \"sequence\"").unwrap();
        assert_eq!(
            (a.adv_norm, a.rollout_is),
            (AdvNorm::SampleStd, RolloutIs::Sequence)
        );
        let bad = GrpoArgs {
            rollout_is_cap: 0.5,
            ..Default::default()
        };
        assert!(bad
            .validate()
            .unwrap_err()
            .to_string()
            .contains("rollout_is_cap"));
    }
}
