//! Test-difficulty-driven code reward (design §3.4, project decision §7.6).
//!
//! Tests are grouped into difficulty levels by their pass rate over many rollouts (lower pass rate = harder),
//! by default 3 levels split at the terciles of the pass-rate distribution, with equal level weights summing
//! to 1. [`strict`] pays a level's weight only when it and every easier level are fully passed; [`soft`] splits
//! each level's weight equally over its tests; [`binary`] is the all-pass reward kept for comparison.

use crate::RewardError;
use serde::{Deserialize, Serialize};

/// How pass rates are split into levels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Split {
    /// Cut at these quantiles (in (0,1), ascending) of the pass-rate distribution; default terciles.
    Quantiles(Vec<f64>),
    /// Cut at these absolute pass rates (ascending).
    PassRates(Vec<f64>),
}

/// Level configuration: the split and one weight per level, easiest level first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LevelConfig {
    pub split: Split,
    /// Weight of each level, easiest first; `split` must yield exactly this many levels.
    pub weights: Vec<f64>,
}

impl Default for LevelConfig {
    /// Three levels at the terciles, weights 1/3 each (design §7.6).
    fn default() -> Self {
        LevelConfig {
            split: Split::Quantiles(vec![1.0 / 3.0, 2.0 / 3.0]),
            weights: vec![1.0 / 3.0; 3],
        }
    }
}

/// Difficulty level of every test plus the weight of every level (empty levels removed, weights renormalised).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TestLevels {
    /// Level of test i (0 = easiest).
    pub level_of: Vec<usize>,
    /// Weight of each level.
    pub weights: Vec<f64>,
}

/// Most levels a [`TestLevels`] may have (weights given beyond it are a configuration error).
pub const MAX_LEVELS: usize = 1024;

/// Linear-interpolated quantile of ascending-sorted data (`q` clamped to [0, 1]; NaN reads as 0).
fn quantile(sorted: &[f64], q: f64) -> f64 {
    let Some(last) = sorted.len().checked_sub(1) else {
        return 0.0;
    };
    let q = if q.is_nan() { 0.0 } else { q.clamp(0.0, 1.0) };
    let pos = q * last as f64;
    let lo = (pos.floor() as usize).min(last);
    let hi = (pos.ceil() as usize).min(last);
    let frac = pos - lo as f64;
    sorted[lo] + (sorted[hi] - sorted[lo]) * frac
}

impl TestLevels {
    /// Assigns levels from per-test pass rates (each in [0, 1]).
    pub fn from_pass_rates(rates: &[f64], cfg: &LevelConfig) -> Result<Self, RewardError> {
        if let Some(r) = rates.iter().find(|r| !(0.0..=1.0).contains(*r)) {
            return Err(RewardError::Config(format!("pass rate {r} outside [0, 1]")));
        }
        let cuts = match &cfg.split {
            Split::Quantiles(q) | Split::PassRates(q) => q,
        };
        if cuts.windows(2).any(|w| w[0] > w[1]) || cuts.iter().any(|c| !c.is_finite()) {
            return Err(RewardError::Config(
                "cut points must be finite and ascending".into(),
            ));
        }
        if cfg.weights.len() != cuts.len() + 1 {
            return Err(RewardError::Config(format!(
                "{} cut points give {} levels but {} weights were given",
                cuts.len(),
                cuts.len() + 1,
                cfg.weights.len()
            )));
        }
        let thresholds: Vec<f64> = match &cfg.split {
            Split::PassRates(t) => t.clone(),
            Split::Quantiles(q) => {
                if q.iter().any(|x| !(0.0..=1.0).contains(x)) {
                    return Err(RewardError::Config("quantiles must lie in [0, 1]".into()));
                }
                let mut s = rates.to_vec();
                s.sort_by(f64::total_cmp);
                q.iter().map(|&x| quantile(&s, x)).collect()
            }
        };
        // a rate below k thresholds is k levels harder than the easiest
        let n_levels = thresholds.len() + 1;
        let level_of = rates
            .iter()
            .map(|&r| n_levels - 1 - thresholds.iter().filter(|&&t| r >= t).count())
            .collect();
        Self::from_levels(level_of, cfg.weights.clone())
    }

    /// Uses given levels (0 = easiest) and weights; empty levels are dropped and the remaining weights
    /// rescaled so they keep the original total.
    /// At most [`MAX_LEVELS`] weights, each finite and >= 0 with a finite sum.
    pub fn from_levels(level_of: Vec<usize>, weights: Vec<f64>) -> Result<Self, RewardError> {
        if weights.len() > MAX_LEVELS {
            return Err(RewardError::Config(format!(
                "{} level weights given, at most {MAX_LEVELS} allowed",
                weights.len()
            )));
        }
        if let Some(l) = level_of.iter().find(|&&l| l >= weights.len()) {
            return Err(RewardError::Config(format!(
                "level {l} has no weight ({} weights)",
                weights.len()
            )));
        }
        if weights.iter().any(|w| !w.is_finite() || *w < 0.0) {
            return Err(RewardError::Config(
                "level weights must be finite and >= 0".into(),
            ));
        }
        let total: f64 = weights.iter().sum();
        if !total.is_finite() {
            return Err(RewardError::Config(
                "level weights must have a finite sum".into(),
            ));
        }
        let mut present = vec![false; weights.len()];
        for &l in &level_of {
            present[l] = true;
        }
        // old level → new (dense) level, for the levels that have tests
        let mut remap = vec![0usize; weights.len()];
        let mut used = Vec::new();
        for (l, _) in present.iter().enumerate().filter(|(_, &p)| p) {
            remap[l] = used.len();
            used.push(l);
        }
        let used_total: f64 = used.iter().map(|&l| weights[l]).sum();
        let scale = if used_total > 0.0 {
            total / used_total
        } else {
            0.0
        };
        let weights: Vec<f64> = used.iter().map(|&l| weights[l] * scale).collect();
        if weights.iter().any(|w| !w.is_finite()) {
            return Err(RewardError::Config(
                "level weights too large to rescale".into(),
            ));
        }
        Ok(TestLevels {
            level_of: level_of.iter().map(|&l| remap[l]).collect(),
            weights,
        })
    }

    /// Tests per level (entries of `level_of` without a weight are ignored).
    fn counts(&self) -> Vec<usize> {
        let mut c = vec![0usize; self.weights.len()];
        for &l in &self.level_of {
            if let Some(n) = c.get_mut(l) {
                *n += 1;
            }
        }
        c
    }
}

/// Strict reward: sum of level weights over the longest fully passed prefix of levels (easy → hard).
/// A missing entry in `passed` counts as failed.
pub fn strict(passed: &[bool], levels: &TestLevels) -> f64 {
    let mut reward = 0.0;
    for (l, w) in levels.weights.iter().enumerate() {
        let all = levels
            .level_of
            .iter()
            .enumerate()
            .filter(|(_, &lv)| lv == l)
            .all(|(i, _)| passed.get(i).copied().unwrap_or(false));
        if !all {
            break;
        }
        reward += w;
    }
    reward
}

/// Soft reward: each level's weight split equally over its tests, summed over passed tests.
/// A test whose level has no weight (possible only in a hand-built [`TestLevels`]) earns nothing.
pub fn soft(passed: &[bool], levels: &TestLevels) -> f64 {
    let counts = levels.counts();
    levels
        .level_of
        .iter()
        .enumerate()
        .filter(|(i, _)| passed.get(*i).copied().unwrap_or(false))
        .filter_map(|(_, &l)| match (levels.weights.get(l), counts.get(l)) {
            (Some(w), Some(&n)) if n > 0 => Some(w / n as f64),
            _ => None,
        })
        .sum()
}

/// Binary all-pass reward: 1 when there is at least one test and all pass, else 0.
pub fn binary(passed: &[bool]) -> f64 {
    if !passed.is_empty() && passed.iter().all(|&p| p) {
        1.0
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn terciles_split() {
        let rates = [0.9, 0.1, 0.5, 0.95, 0.05, 0.45];
        let lv = TestLevels::from_pass_rates(&rates, &LevelConfig::default()).unwrap();
        assert_eq!(lv.level_of, vec![0, 2, 1, 0, 2, 1]);
        assert_eq!(lv.weights.len(), 3);
        assert!(close(lv.weights.iter().sum(), 1.0));
    }

    #[test]
    fn ties_collapse_levels_and_renormalise() {
        let lv = TestLevels::from_pass_rates(&[0.5; 4], &LevelConfig::default()).unwrap();
        assert_eq!(lv.level_of, vec![0; 4]);
        assert_eq!(lv.weights.len(), 1);
        assert!(close(lv.weights[0], 1.0));
        assert!(close(soft(&[true, true, false, false], &lv), 0.5));
    }

    #[test]
    fn strict_prefix() {
        let lv = TestLevels::from_levels(vec![0, 0, 1, 2], vec![1.0 / 3.0; 3]).unwrap();
        assert!(close(strict(&[true, true, true, true], &lv), 1.0));
        assert!(close(strict(&[true, true, true, false], &lv), 2.0 / 3.0));
        assert!(close(strict(&[true, true, false, true], &lv), 1.0 / 3.0));
        assert!(close(strict(&[false, true, true, true], &lv), 0.0));
        // missing results count as failed
        assert!(close(strict(&[true, true], &lv), 1.0 / 3.0));
    }

    #[test]
    fn soft_split() {
        let lv = TestLevels::from_levels(vec![0, 0, 1, 2], vec![1.0 / 3.0; 3]).unwrap();
        assert!(close(soft(&[true, false, false, false], &lv), 1.0 / 6.0));
        assert!(close(soft(&[false, false, true, true], &lv), 2.0 / 3.0));
        assert!(close(soft(&[true; 4], &lv), 1.0));
    }

    #[test]
    fn binary_all_pass() {
        assert_eq!(binary(&[true, true]), 1.0);
        assert_eq!(binary(&[true, false]), 0.0);
        assert_eq!(binary(&[]), 0.0);
    }

    #[test]
    fn custom_cuts_and_weights() {
        let cfg = LevelConfig {
            split: Split::PassRates(vec![0.5]),
            weights: vec![0.25, 0.75],
        };
        let lv = TestLevels::from_pass_rates(&[0.2, 0.8, 0.5], &cfg).unwrap();
        assert_eq!(lv.level_of, vec![1, 0, 0]);
        assert!(close(strict(&[false, true, true], &lv), 0.25));
        assert!(close(soft(&[true, false, false], &lv), 0.75));
    }

    #[test]
    fn config_errors() {
        let bad = LevelConfig {
            split: Split::Quantiles(vec![0.5]),
            weights: vec![1.0; 3],
        };
        assert!(TestLevels::from_pass_rates(&[0.1], &bad).is_err());
        assert!(TestLevels::from_pass_rates(&[1.5], &LevelConfig::default()).is_err());
        assert!(TestLevels::from_levels(vec![3], vec![1.0]).is_err());
        assert!(TestLevels::from_levels(vec![0], vec![1.0; MAX_LEVELS + 1]).is_err());
        assert!(TestLevels::from_levels(vec![0, 1], vec![f64::MAX, f64::MAX]).is_err());
        assert!(TestLevels::from_levels(vec![0], vec![f64::NAN]).is_err());
        let bad_q = LevelConfig {
            split: Split::Quantiles(vec![f64::NAN]),
            weights: vec![0.5; 2],
        };
        assert!(TestLevels::from_pass_rates(&[0.1, 0.2], &bad_q).is_err());
        assert!(TestLevels::from_pass_rates(&[f64::NAN], &LevelConfig::default()).is_err());
    }

    #[test]
    fn hand_built_levels_do_not_panic() {
        let lv = TestLevels {
            level_of: vec![0, 5, 1],
            weights: vec![0.5, 0.5],
        };
        assert!(close(soft(&[true, true, true], &lv), 1.0));
        assert!(close(strict(&[true, true, true], &lv), 1.0));
        let empty = TestLevels {
            level_of: vec![],
            weights: vec![],
        };
        assert_eq!(soft(&[], &empty), 0.0);
        assert_eq!(strict(&[], &empty), 0.0);
        assert_eq!(quantile(&[], 0.5), 0.0);
        assert_eq!(quantile(&[1.0, 2.0], 7.0), 2.0);
        assert_eq!(quantile(&[1.0, 2.0], f64::NAN), 1.0);
    }

    #[test]
    fn sparse_levels_are_dense_after_remap() {
        let lv = TestLevels::from_levels(vec![7, 0, 7, 3], vec![0.125; 8]).unwrap();
        assert_eq!(lv.level_of, vec![2, 0, 2, 1]);
        assert_eq!(lv.weights.len(), 3);
        assert!(close(lv.weights.iter().sum(), 1.0));
    }
}
