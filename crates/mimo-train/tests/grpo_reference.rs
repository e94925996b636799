//! GRPO against an independent implementation: on identical inputs (rewards, masks, the current, old and
//! rollout log-probs) our advantages, truncated importance weights, clipped loss with its aggregation, and the
//! loss gradient equal veRL 0.9.1's `core_algos` / `rollout_corr_helper` (`tools/rl/verl_grpo_reference.py`)
//! to 1e-6.
#![cfg(feature = "tch")]

mod common;

use std::path::{Path, PathBuf};

use mimo_train::grpo::{group_advantages_with, grpo_loss, rollout_is_weights, AdvNorm, RolloutIs};
use serde_json::{json, Value};
use tch::{Kind, Tensor};

/// xorshift64*: deterministic inputs without a dependency.
struct Rng(u64);

impl Rng {
    fn uniform(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }
    fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.uniform()
    }
}

/// Groups of 2–8 rollouts (one with all rewards equal), responses of 1–T tokens at random offsets, engine
/// log-probs, the trainer's old ones near them (a few far enough above to be truncated at the cap) and current
/// ones within ±0.45 of the old (so both clip ranges are hit).
struct Inputs {
    rewards: Vec<Vec<f64>>,
    mask: Vec<Vec<f32>>,
    new: Vec<Vec<f32>>,
    old: Vec<Vec<f32>>,
    rollout: Vec<Vec<f32>>,
}

fn inputs(seed: u64) -> Inputs {
    const T: usize = 12;
    let mut rng = Rng(seed);
    let levels = [0.0, 0.3, 0.5, 1.0];
    let mut rewards = vec![];
    for g in 0..7 {
        let n = 2 + (rng.uniform() * 7.0) as usize;
        let rs: Vec<f64> = if g == 3 {
            vec![0.5; n]
        } else {
            (0..n)
                .map(|_| levels[(rng.uniform() * 4.0) as usize])
                .collect()
        };
        rewards.push(rs);
    }
    let rows: usize = rewards.iter().map(Vec::len).sum();
    let mut inp = Inputs {
        rewards,
        mask: vec![],
        new: vec![],
        old: vec![],
        rollout: vec![],
    };
    for _ in 0..rows {
        let len = 1 + (rng.uniform() * T as f64) as usize;
        let start = (rng.uniform() * (T - len + 1) as f64) as usize;
        let (mut m, mut n, mut o, mut r) =
            (vec![0f32; T], vec![0f32; T], vec![0f32; T], vec![0f32; T]);
        for t in start..start + len {
            let lr = rng.range(-4.0, -0.05);
            let shift = if rng.uniform() < 0.1 {
                rng.range(0.5, 1.5)
            } else {
                rng.range(-0.3, 0.3)
            };
            let lo = (lr + shift).min(-0.01);
            m[t] = 1.0;
            r[t] = lr as f32;
            o[t] = lo as f32;
            n[t] = (lo + rng.range(-0.45, 0.45)) as f32;
        }
        inp.mask.push(m);
        inp.new.push(n);
        inp.old.push(o);
        inp.rollout.push(r);
    }
    inp
}

fn tensor(rows: &[Vec<f32>]) -> Tensor {
    let flat: Vec<f32> = rows.iter().flatten().copied().collect();
    Tensor::from_slice(&flat).reshape([rows.len() as i64, rows[0].len() as i64])
}

fn rows_of(t: &Tensor) -> Vec<Vec<f32>> {
    Vec::<Vec<f32>>::try_from(t).unwrap()
}

fn as_f64s(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

fn as_rows(v: &Value) -> Vec<Vec<f64>> {
    v.as_array().unwrap().iter().map(as_f64s).collect()
}

fn assert_close(what: &str, ours: &[f64], theirs: &[f64]) {
    assert_eq!(ours.len(), theirs.len(), "{what}: lengths");
    for (i, (a, b)) in ours.iter().zip(theirs).enumerate() {
        assert!((a - b).abs() <= 1e-6, "{what}[{i}]: ours {a}, veRL {b}");
    }
}

fn assert_rows_close(what: &str, ours: &[Vec<f32>], theirs: &[Vec<f64>]) {
    for (i, (a, b)) in ours.iter().zip(theirs).enumerate() {
        let a: Vec<f64> = a.iter().map(|&x| f64::from(x)).collect();
        assert_close(&format!("{what} row {i}"), &a, b);
    }
}

fn verl(py: &Path, request: &Value) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("inputs.json");
    std::fs::write(&path, request.to_string()).unwrap();
    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tools/rl/verl_grpo_reference.py");
    let out = std::process::Command::new(py)
        .arg(&script)
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "verl reference failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn grpo_equals_verl_core_algos() {
    let Some(py) = common::python_or_skip() else {
        return;
    };
    let (eps_low, eps_high, cap) = (0.2, 0.28, 2.0);
    for (seed, mode, name) in [
        (0x9E37_79B9_7F4A_7C15u64, RolloutIs::Token, "token"),
        (0xD1B5_4A32_D192_ED03, RolloutIs::Sequence, "sequence"),
    ] {
        let inp = inputs(seed);
        let theirs = verl(
            &py,
            &json!({
                "rewards": inp.rewards,
                "mask": inp.mask,
                "logp_new": inp.new,
                "logp_old": inp.old,
                "logp_rollout": inp.rollout,
                "eps_low": eps_low,
                "eps_high": eps_high,
                "rollout_is": name,
                "rollout_is_cap": cap,
            }),
        );

        let adv = |norm| -> Vec<f64> {
            inp.rewards
                .iter()
                .flat_map(|rs| group_advantages_with(rs, norm))
                .collect()
        };
        let adv_std = adv(AdvNorm::SampleStd);
        assert_close(
            "sample-std advantages",
            &adv_std,
            &as_f64s(&theirs["adv_sample_std"]),
        );
        assert_close(
            "centred advantages",
            &adv(AdvNorm::None),
            &as_f64s(&theirs["adv_centered"]),
        );

        let mask = tensor(&inp.mask);
        let old = tensor(&inp.old);
        let log_ratio = &old - tensor(&inp.rollout);
        let (w, stats) = rollout_is_weights(&log_ratio, &mask, mode, cap).unwrap();
        assert_rows_close(
            &format!("{name} IS weights"),
            &rows_of(&w),
            &as_rows(&theirs["is_weights"]),
        );
        assert!(stats.truncated > 0.0, "{name}: the inputs must hit the cap");

        let group_of_row: Vec<usize> = inp
            .rewards
            .iter()
            .enumerate()
            .flat_map(|(g, rs)| vec![g; rs.len()])
            .collect();
        let group_tokens: Vec<f64> = (0..inp.rewards.len())
            .map(|g| {
                group_of_row
                    .iter()
                    .zip(&inp.mask)
                    .filter(|(&gr, _)| gr == g)
                    .map(|(_, m)| m.iter().map(|&x| f64::from(x)).sum::<f64>())
                    .sum()
            })
            .collect();
        let new = tensor(&inp.new).set_requires_grad(true);
        let adv_t = Tensor::from_slice(&adv_std.iter().map(|&a| a as f32).collect::<Vec<_>>());
        let (loss, st) = grpo_loss(
            &new,
            &old,
            &adv_t,
            &mask,
            &group_of_row,
            &group_tokens,
            eps_low,
            eps_high,
            None,
            Some(&w),
        )
        .unwrap();
        assert!(st.clip_low > 0.0 && st.clip_high > 0.0, "{name}: {st:?}");
        loss.backward();
        assert_close(
            &format!("{name} loss"),
            &[loss.double_value(&[])],
            &[theirs["loss"].as_f64().unwrap()],
        );
        let grad = new.grad().to_kind(Kind::Float);
        assert_rows_close(
            &format!("{name} gradient"),
            &rows_of(&grad),
            &as_rows(&theirs["grad"]),
        );
    }
}
