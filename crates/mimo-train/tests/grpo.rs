//! MiMo's GRPO (design §3.3, §7.5): advantages, the clipped token-level loss against hand-computed values, and
//! the policy trainer on a tiny random model.
#![cfg(feature = "tch")]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use mimo_train::grpo::{
    group_advantages, grpo_loss, response_logprobs, Group, GrpoArgs, GrpoTrainer, Rollout,
};
use mimo_train::model::{Init, TrainModel};
use tch::{Device, Kind, Tensor};

fn config() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/mimo-untied/config.json")
}

/// Random tiny model: hidden 64, 2 layers, 2 MTP layers, vocab 397.
fn tiny_model(seed: u64) -> TrainModel {
    TrainModel::new(Init::Random { std: 0.02, seed }, &config(), Device::Cpu).unwrap()
}

fn t2(rows: &[&[f64]]) -> Tensor {
    let cols = rows[0].len() as i64;
    let flat: Vec<f32> = rows
        .iter()
        .flat_map(|r| r.iter().map(|&x| x as f32))
        .collect();
    Tensor::from_slice(&flat).reshape([rows.len() as i64, cols])
}

fn t1(v: &[f64]) -> Tensor {
    let f: Vec<f32> = v.iter().map(|&x| x as f32).collect();
    Tensor::from_slice(&f)
}

/// Deep copies of the weights (`state_dict` shares storage with CPU parameters).
fn snapshot(model: &TrainModel) -> BTreeMap<String, Tensor> {
    model
        .state_dict()
        .into_iter()
        .map(|(name, t)| (name, t.copy()))
        .collect()
}

fn close(a: f64, b: f64, tol: f64) -> bool {
    (a - b).abs() <= tol
}

#[test]
fn advantages_small_group_and_zero_std() {
    // [1, 0, 0, 0]: mean 0.25, population var (0.75² + 3·0.25²)/4 = 0.1875, std = √3/4 ≈ 0.4330127.
    // A = 0.75/std = √3 ≈ 1.7320508 and −0.25/std = −1/√3 ≈ −0.5773503 (the +1e-6 moves the 6th digit).
    let a = group_advantages(&[1.0, 0.0, 0.0, 0.0]);
    let s3 = 3f64.sqrt();
    assert!(close(a[0], s3, 1e-5), "{a:?}");
    for &x in &a[1..] {
        assert!(close(x, -1.0 / s3, 1e-5), "{a:?}");
    }
    // [1, 3]: mean 2, std 1 → [−1, 1] / (1 + 1e-6).
    let b = group_advantages(&[1.0, 3.0]);
    assert!(close(b[0], -1.0, 1e-5) && close(b[1], 1.0, 1e-5), "{b:?}");
    // All equal (std 0) → exactly zeros, even for values whose mean is inexact in floating point.
    assert_eq!(group_advantages(&[0.1, 0.1, 0.1]), vec![0.0; 3]);
    assert_eq!(group_advantages(&[1.0]), vec![0.0]);
    assert!(group_advantages(&[]).is_empty());
}

#[test]
fn loss_clips_each_side_and_normalises_by_group_tokens() {
    // One group, two rows, old log-probs 0 so r = exp(new). ε_low 0.2, ε_high 0.28.
    // Row 0, A = +1: r = 1.5 (> 1.28: clipped, term 1.28), r = 1.1 (term 1.1), padding column (mask 0).
    // Row 1, A = −1: r = 0.5 (< 0.8: min(−0.5, −0.8) = −0.8, clipped), r = 1.2 (−1.2), r = 0.9 (min(−0.9, −0.8)
    // = −0.9, unclipped: the clip only binds below 1 − ε_low for negative advantages).
    // Group tokens 5; Σ terms = 1.28 + 1.1 − 0.8 − 1.2 − 0.9 = −0.52; loss = −(−0.52 / 5) = 0.104.
    let new = t2(&[
        &[1.5f64.ln(), 1.1f64.ln(), 5.0],
        &[0.5f64.ln(), 1.2f64.ln(), 0.9f64.ln()],
    ])
    .set_requires_grad(true);
    let old = Tensor::zeros([2, 3], (Kind::Float, Device::Cpu));
    let mask = t2(&[&[1.0, 1.0, 0.0], &[1.0, 1.0, 1.0]]);
    let adv = t1(&[1.0, -1.0]);
    let (loss, st) = grpo_loss(
        &new,
        &old,
        &adv,
        &mask,
        &[0, 0],
        &[5.0],
        0.2,
        0.28,
        None,
        None,
    )
    .unwrap();
    assert!(close(loss.double_value(&[]), 0.104, 1e-6), "{st:?}");
    assert!(close(st.loss, 0.104, 1e-6));
    assert_eq!(st.tokens, 5);
    assert!(
        close(st.clip_high, 0.2, 1e-7) && close(st.clip_low, 0.2, 1e-7),
        "{st:?}"
    );
    // Mean ratio (1.5 + 1.1 + 0.5 + 1.2 + 0.9) / 5 = 1.04; approx KL = mean(r − 1 − ln r).
    assert!(close(st.ratio, 1.04, 1e-6), "{st:?}");
    let kl: f64 = [1.5f64, 1.1, 0.5, 1.2, 0.9]
        .iter()
        .map(|r| r - 1.0 - r.ln())
        .sum::<f64>()
        / 5.0;
    assert!(close(st.approx_kl, kl, 1e-6), "{st:?}");

    // d loss / d new = −A·r/5 on unclipped tokens, 0 on clipped and padding ones:
    // row 0: [0, −1.1/5 = −0.22, 0]; row 1: [0, 1.2/5 = 0.24, 0.9/5 = 0.18].
    loss.backward();
    let g: Vec<Vec<f32>> = Vec::try_from(&new.grad()).unwrap();
    let want = [[0.0, -0.22, 0.0], [0.0, 0.24, 0.18]];
    for (gr, wr) in g.iter().zip(&want) {
        for (a, b) in gr.iter().zip(wr) {
            assert!(close(*a as f64, *b, 1e-6), "grad {g:?}");
        }
    }
}

#[test]
fn loss_two_groups_each_normalised_by_its_own_tokens() {
    // Ratio 1 everywhere. Group 0: one row, A = +1, 2 tokens → Σ = 2, / 2 = 1.
    // Group 1: one row, A = −0.5, 4 tokens → Σ = −2, / 4 = −0.5. Loss = −(1 − 0.5) / 2 = −0.25.
    // (A plain token mean over the 6 tokens would give 0.)
    let z = Tensor::zeros([2, 4], (Kind::Float, Device::Cpu));
    let mask = t2(&[&[1.0, 1.0, 0.0, 0.0], &[1.0, 1.0, 1.0, 1.0]]);
    let adv = t1(&[1.0, -0.5]);
    let tokens = [2.0, 4.0];
    let (loss, st) =
        grpo_loss(&z, &z, &adv, &mask, &[0, 1], &tokens, 0.2, 0.28, None, None).unwrap();
    assert!(close(loss.double_value(&[]), -0.25, 1e-7));
    assert_eq!(st.tokens, 6);
    // Split into row chunks with the mini-batch's group counts, the parts add up: −1/2 + 0.5/2 = −0.25.
    let row = |i: i64| z.narrow(0, i, 1);
    let (l0, _) = grpo_loss(
        &row(0),
        &row(0),
        &adv.narrow(0, 0, 1),
        &mask.narrow(0, 0, 1),
        &[0],
        &tokens,
        0.2,
        0.28,
        None,
        None,
    )
    .unwrap();
    let (l1, _) = grpo_loss(
        &row(1),
        &row(1),
        &adv.narrow(0, 1, 1),
        &mask.narrow(0, 1, 1),
        &[1],
        &tokens,
        0.2,
        0.28,
        None,
        None,
    )
    .unwrap();
    assert!(close(l0.double_value(&[]), -0.5, 1e-7));
    assert!(close(l1.double_value(&[]), 0.25, 1e-7));
}

#[test]
fn k3_kl_against_reference() {
    // A = 0 so only the KL term remains. new = 0; ref = ln 2 → d = ln 2, k3 = 2 − ln 2 − 1 ≈ 0.3068528;
    // ref = −ln 2 → k3 = 0.5 + ln 2 − 1 ≈ 0.1931472. Their sum is exactly 0.5; one group of 2 tokens:
    // mean 0.25, loss = β · 0.25 = 0.025 for β = 0.1.
    let new = Tensor::zeros([1, 2], (Kind::Float, Device::Cpu));
    let reference = t2(&[&[2f64.ln(), -(2f64.ln())]]);
    let mask = t2(&[&[1.0, 1.0]]);
    let adv = t1(&[0.0]);
    let (loss, st) = grpo_loss(
        &new,
        &new,
        &adv,
        &mask,
        &[0],
        &[2.0],
        0.2,
        0.28,
        Some((&reference, 0.1)),
        None,
    )
    .unwrap();
    assert!(close(loss.double_value(&[]), 0.025, 1e-7), "{st:?}");
    assert!(close(st.kl_ref, 0.25, 1e-7), "{st:?}");
}

#[test]
fn loss_rejects_bad_shapes() {
    let z = Tensor::zeros([2, 3], (Kind::Float, Device::Cpu));
    let adv = t1(&[1.0, -1.0]);
    let short = Tensor::zeros([2, 2], (Kind::Float, Device::Cpu));
    assert!(grpo_loss(&z, &short, &adv, &z, &[0, 0], &[3.0], 0.2, 0.28, None, None).is_err());
    assert!(grpo_loss(
        &z,
        &z,
        &t1(&[1.0]),
        &z,
        &[0, 0],
        &[3.0],
        0.2,
        0.28,
        None,
        None
    )
    .is_err());
    assert!(grpo_loss(&z, &z, &adv, &z, &[0, 1], &[3.0], 0.2, 0.28, None, None).is_err());
    assert!(grpo_loss(&z, &z, &adv, &z, &[0, 0], &[0.0], 0.2, 0.28, None, None).is_err());
}

#[test]
fn token_logprobs_align_with_the_forward_and_ignore_padding() {
    let model = tiny_model(5);
    let short = Rollout {
        prompt: vec![1, 2, 3],
        response: vec![4, 5],
        reward: 0.0,
        engine_logprobs: None,
    };
    let long = Rollout {
        prompt: vec![7],
        response: vec![8, 9, 10, 11, 12, 13],
        reward: 1.0,
        engine_logprobs: None,
    };
    // By hand: log_softmax(forward([1, 2, 3, 4])) at position 2 for token 4 and position 3 for token 5.
    let ids = Tensor::from_slice(&[1i64, 2, 3, 4]).unsqueeze(0);
    let lsm = model
        .forward_main(&ids)
        .unwrap()
        .log_softmax(-1, Kind::Float);
    let want = [lsm.double_value(&[0, 2, 4]), lsm.double_value(&[0, 3, 5])];
    let alone = response_logprobs(&model, std::slice::from_ref(&short), 4, 1.0).unwrap();
    assert_eq!(alone[0].len(), 2);
    for (a, b) in alone[0].iter().zip(want) {
        assert!(close(*a as f64, b, 1e-5), "{alone:?} vs {want:?}");
    }
    // At the rollouts' sampling temperature the log-probs are those of softmax(logits / T).
    let lsm_t = (model.forward_main(&ids).unwrap() / 0.5).log_softmax(-1, Kind::Float);
    let want_t = [
        lsm_t.double_value(&[0, 2, 4]),
        lsm_t.double_value(&[0, 3, 5]),
    ];
    let hot = response_logprobs(&model, std::slice::from_ref(&short), 4, 0.5).unwrap();
    for (a, b) in hot[0].iter().zip(want_t) {
        assert!(close(*a as f64, b, 1e-5), "{hot:?} vs {want_t:?}");
    }
    assert!(GrpoArgs {
        temperature: 0.0,
        ..Default::default()
    }
    .validate()
    .is_err());
    // Batched with a longer row (so `short` is right-padded) the values do not change.
    let both = response_logprobs(&model, &[short, long], 4, 1.0).unwrap();
    assert_eq!(both[1].len(), 6);
    for (a, b) in both[0].iter().zip(&alone[0]) {
        assert!(close(*a as f64, *b as f64, 1e-5), "{both:?} vs {alone:?}");
    }
}

fn rollout(prompt: &[u32], response: &[u32], reward: f64) -> Rollout {
    Rollout {
        prompt: prompt.to_vec(),
        response: response.to_vec(),
        reward,
        engine_logprobs: None,
    }
}

/// Two prompts with one rewarded response each (distinct tokens per response).
fn groups() -> Vec<Group> {
    vec![
        Group {
            rollouts: vec![
                rollout(&[10, 11, 12], &[100, 101, 102, 103], 1.0),
                rollout(&[10, 11, 12], &[110, 111, 112], 0.0),
                rollout(&[10, 11, 12], &[120, 121, 122, 123, 124], 0.0),
                rollout(&[10, 11, 12], &[130, 131, 132], 0.0),
            ],
        },
        Group {
            rollouts: vec![
                rollout(&[20, 21], &[200, 201, 202], 0.0),
                rollout(&[20, 21], &[210, 211, 212, 213], 0.0),
                rollout(&[20, 21], &[220, 221, 222], 1.0),
                rollout(&[20, 21], &[230, 231, 232, 233, 234, 235], 0.0),
            ],
        },
    ]
}

fn seq_logprobs(model: &TrainModel, groups: &[Group]) -> Vec<f64> {
    let all: Vec<Rollout> = groups.iter().flat_map(|g| g.rollouts.clone()).collect();
    response_logprobs(model, &all, 16, 1.0)
        .unwrap()
        .iter()
        .map(|v| v.iter().map(|&x| x as f64).sum())
        .collect()
}

#[test]
fn trainer_raises_rewarded_responses_and_freezes_mtp() {
    let groups = groups();
    let args = GrpoArgs {
        lr: 2e-3,
        mini_batches: 2,
        micro_batch: 3, // rows of a group span two micro-batches
        ..Default::default()
    };
    let mut trainer = GrpoTrainer::new(tiny_model(11), args).unwrap();
    assert!(trainer.model().num_mtp_layers() > 0);
    assert!(trainer
        .trainable_names()
        .iter()
        .all(|n| !n.contains("mtp_layers")));
    let before = snapshot(trainer.model());
    let lp0 = seq_logprobs(trainer.model(), &groups);

    let mut first = None;
    for _ in 0..3 {
        let st = trainer.update(&groups).unwrap();
        assert_eq!(st.steps, 2);
        assert_eq!(st.tokens, 15 + 16);
        assert_eq!(st.rollouts, 8);
        assert!(close(st.mean_reward, 0.25, 1e-12));
        assert!(st.loss.is_finite() && st.grad_norm > 0.0);
        first.get_or_insert(st);
    }
    assert_eq!(trainer.steps(), 6);
    // The old log-probs are the trainer's own current-policy numbers: before the first step the ratio is 1.
    let mb0 = &first.unwrap().mini_batches[0];
    assert!(close(mb0.ratio, 1.0, 1e-5), "{mb0:?}");
    assert!(mb0.approx_kl.abs() < 1e-6, "{mb0:?}");
    assert_eq!((mb0.clip_low, mb0.clip_high), (0.0, 0.0));

    let lp1 = seq_logprobs(trainer.model(), &groups);
    let rewards: Vec<f64> = groups
        .iter()
        .flat_map(|g| g.rollouts.iter().map(|r| r.reward))
        .collect();
    for ((a, b), r) in lp0.iter().zip(&lp1).zip(&rewards) {
        if *r > 0.0 {
            assert!(b > a, "rewarded response log-prob {a} → {b}");
        } else {
            assert!(b < a, "unrewarded response log-prob {a} → {b}");
        }
    }

    let after = snapshot(trainer.model());
    let mut mtp = 0;
    for (name, t) in &before {
        let same = t.equal(&after[name]);
        if name.starts_with("model.mtp_layers.") {
            assert!(same, "{name} changed");
            mtp += 1;
        }
    }
    assert!(mtp > 0);
    for name in [
        "model.embed_tokens.weight",
        "model.layers.1.mlp.down_proj.weight",
        "lm_head.weight",
    ] {
        assert!(!before[name].equal(&after[name]), "{name} did not change");
    }

    // The exported weights are the state dict, MTP layers included.
    let exported = trainer.export_weights();
    assert_eq!(exported.len(), after.len());
    for (name, (shape, data)) in &exported {
        let t = &after[name];
        let dims: Vec<usize> = t.size().iter().map(|&d| d as usize).collect();
        assert_eq!(&dims, shape, "{name}");
        let flat: Vec<f32> = Vec::try_from(&t.reshape([-1])).unwrap();
        assert_eq!(&flat, data, "{name}");
    }
}

#[test]
fn kl_reference_is_the_initial_policy() {
    let groups = groups();
    // lr 0: the reference weights are swapped in and out, and the policy must come back bit-identical.
    let args = GrpoArgs {
        lr: 0.0,
        kl_beta: 0.5,
        ..Default::default()
    };
    let mut trainer = GrpoTrainer::new(tiny_model(3), args).unwrap();
    let before = snapshot(trainer.model());
    let st = trainer.update(&groups).unwrap();
    assert!(st.kl_ref.abs() < 1e-6, "{st:?}");
    for (name, t) in snapshot(trainer.model()) {
        assert!(t.equal(&before[&name]), "{name} changed with lr 0");
    }

    // With learning the policy drifts from the reference, which starts equal to it.
    let args = GrpoArgs {
        lr: 2e-3,
        kl_beta: 0.5,
        ..Default::default()
    };
    let mut trainer = GrpoTrainer::new(tiny_model(3), args).unwrap();
    let first = trainer.update(&groups).unwrap();
    assert!(first.mini_batches[0].kl_ref.abs() < 1e-6, "{first:?}");
    // The reference stays the initial policy: the next update starts away from it.
    let second = trainer.update(&groups).unwrap();
    assert!(second.mini_batches[0].kl_ref > 1e-8, "{second:?}");
}

#[test]
fn trainer_rejects_bad_groups_without_touching_weights() {
    let mut trainer = GrpoTrainer::new(tiny_model(1), GrpoArgs::default()).unwrap();
    let before = snapshot(trainer.model());
    assert!(trainer.update(&[]).is_err());
    assert!(trainer.update(&[Group { rollouts: vec![] }]).is_err());
    let mut bad = groups();
    bad[1].rollouts[2].response.push(397); // vocab_size is 397
    let e = trainer.update(&bad).unwrap_err().to_string();
    assert!(e.contains("group 1 rollout 2"), "{e}");
    bad[1].rollouts[2].response.clear();
    assert!(trainer.update(&bad).is_err());
    for (name, t) in snapshot(trainer.model()) {
        assert!(t.equal(&before[&name]), "{name} changed");
    }
    assert_eq!(trainer.steps(), 0);
    let bad_args = GrpoArgs {
        micro_batch: 0,
        ..Default::default()
    };
    assert!(GrpoTrainer::new(tiny_model(1), bad_args).is_err());
}

/// GRPO updates data-parallel over 2 ranks (threads with their own c10d gloo group on loopback, rank 1
/// starting from other weights that rank 0's broadcast replaces) take the single-process steps: the same
/// losses, grad norms and weights after 3 updates of 2 mini-batches (rows split across micro-batches).
#[test]
fn two_rank_grpo_updates_equal_one_process() {
    use mimo_train::parallel::{DataParallel, Launch};
    let args = GrpoArgs {
        lr: 2e-3,
        mini_batches: 2,
        micro_batch: 3,
        ..Default::default()
    };
    let run = |mut trainer: GrpoTrainer| {
        let stats: Vec<(f64, f64, usize)> = (0..3)
            .map(|_| {
                let s = trainer.update(&groups()).unwrap();
                (s.loss, s.grad_norm, s.tokens)
            })
            .collect();
        (stats, snapshot(trainer.model()))
    };
    let (single, w_single) = run(GrpoTrainer::new(tiny_model(11), args.clone()).unwrap());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let ranks: Vec<_> = (0..2)
        .map(|rank| {
            let args = args.clone();
            std::thread::spawn(move || {
                let launch = Launch {
                    rank,
                    world_size: 2,
                    local_rank: rank,
                    master_addr: "127.0.0.1".into(),
                    master_port: port,
                    timeout: std::time::Duration::from_secs(60),
                };
                let dp = DataParallel::init(&launch).unwrap();
                let t = GrpoTrainer::new(tiny_model(11 + rank as u64), args).unwrap();
                run(t.with_data_parallel(dp).unwrap())
            })
        })
        .collect();
    for h in ranks {
        let (stats, w) = h.join().unwrap();
        for (a, b) in single.iter().zip(&stats) {
            assert!(close(a.0, b.0, 1e-6), "loss {} vs {}", a.0, b.0);
            assert!(
                close(a.1, b.1, 1e-5 * (1.0 + a.1)),
                "grad norm {} vs {}",
                a.1,
                b.1
            );
            assert_eq!(a.2, b.2, "tokens");
        }
        // The key bias gets a gradient that is zero in exact arithmetic (softmax ignores a shift shared by all
        // keys of a query), so AdamW's g/√v turns its rounding noise into lr-sized steps of either sign: it
        // may differ by up to the 3 steps' lr. Every other weight agrees to float tolerance.
        for (name, t) in &w_single {
            let d = (t - &w[name]).abs().max().double_value(&[]);
            let tol = if name.ends_with("k_proj.bias") {
                3.0 * 2e-3
            } else {
                2e-6
            };
            assert!(d < tol, "{name}: max |Δ| {d}");
        }
    }
}
