//! The trainer → engine weight hand-off (in process, no disk): after a GRPO update the candle engine computes
//! the updated policy's distribution, and samples from it.
#![cfg(feature = "tch")]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device};
use mimo_engine::engine::{Engine, EngineConfig};
use mimo_engine::SamplingParams;
use mimo_model::{MimoModel, ModelConfig};
use mimo_rl::rl::engine_model;
use mimo_rl::rollout::{EngineGenerator, Generator};
use mimo_train::grpo::{response_logprobs, Group, GrpoArgs, GrpoTrainer, Rollout};
use mimo_train::model::TrainModel;

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/mimo-untied")
}

fn main_logits(m: &MimoModel, ids: &[u32]) -> Vec<Vec<f32>> {
    m.forward_teacher_forced(ids)
        .unwrap()
        .0
        .to_vec2::<f32>()
        .unwrap()
}

fn max_abs_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    a.iter()
        .flatten()
        .zip(b.iter().flatten())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn the_engine_samples_from_the_updated_policy() {
    let dir = fixture();
    let cfg = ModelConfig::from_dir(&dir).unwrap();
    let policy = TrainModel::from_dir(&dir, tch::Device::Cpu).unwrap();
    let args = GrpoArgs {
        lr: 3e-2,
        mini_batches: 1,
        ..Default::default()
    };
    let mut trainer = GrpoTrainer::new(policy, args).unwrap();
    let before = MimoModel::from_dir(&dir, DType::F32, &Device::Cpu).unwrap();
    // Before any update the hand-off reproduces the checkpoint.
    let ids: Vec<u32> = vec![3, 14, 15, 92, 65];
    let handed = engine_model(&trainer, &cfg).unwrap();
    assert!(max_abs_diff(&main_logits(&handed, &ids), &main_logits(&before, &ids)) < 1e-5);

    // Reward the response [7, 7, 7], punish [9, 9, 9]: a few updates make token 7 likely after the prompt.
    let prompt = vec![3u32, 14, 15];
    let group = |good: f64| Group {
        rollouts: vec![
            Rollout {
                prompt: prompt.clone(),
                response: vec![7, 7, 7],
                reward: good,
                engine_logprobs: None,
            },
            Rollout {
                prompt: prompt.clone(),
                response: vec![9, 9, 9],
                reward: 1.0 - good,
                engine_logprobs: None,
            },
        ],
    };
    for _ in 0..8 {
        trainer.update(&[group(1.0), group(1.0)]).unwrap();
    }
    let after = engine_model(&trainer, &cfg).unwrap();
    let probe: Vec<u32> = prompt.clone();
    let la = main_logits(&after, &probe);
    let lb = main_logits(&before, &probe);
    assert!(
        max_abs_diff(&la, &lb) > 1e-2,
        "the weights did not change the engine's logits"
    );
    // The engine's logits equal the trainer's own forward on the same ids.
    let t_ids = tch::Tensor::from_slice(&probe.iter().map(|&x| x as i64).collect::<Vec<_>>())
        .reshape([1, -1]);
    let t_logits = trainer.model().forward_main(&t_ids).unwrap();
    let t_last: Vec<f32> = Vec::<f32>::try_from(t_logits.get(0).get(-1)).unwrap();
    let e_last = la.last().unwrap();
    let d = t_last
        .iter()
        .zip(e_last)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max);
    assert!(d < 1e-3, "engine vs trainer logits differ by {d}");

    // One engine, weights swapped in place: it samples the rewarded token far more often than before.
    let count_sevens = |engine: &mut Engine| -> usize {
        for s in 0..64u64 {
            let p = SamplingParams {
                temperature: 1.0,
                max_tokens: 1,
                seed: Some(s),
                ..Default::default()
            };
            engine.add_request(prompt.clone(), p).unwrap();
        }
        engine
            .run_to_completion()
            .unwrap()
            .iter()
            .filter(|(_, t, _)| t.first() == Some(&7))
            .count()
    };
    let mut engine = Engine::new(
        Arc::new(before),
        EngineConfig {
            max_num_seqs: 8,
            ..Default::default()
        },
    )
    .unwrap();
    let old = count_sevens(&mut engine);
    engine.replace_model(Arc::new(after)).unwrap();
    let new = count_sevens(&mut engine);
    assert!(
        new > old + 16,
        "token 7 sampled {old}/64 before, {new}/64 after the update"
    );
}

/// The log-probs the engine samples with (temperature 0.8, top-p 0.9: the distribution before truncation) are
/// the trainer's log-probs of the same tokens, so the mismatch correction sees only numerical noise; once the
/// trainer has moved on (a stale batch, as with `max_staleness = 1`) it sees the policy change.
#[test]
fn engine_sampling_logprobs_equal_the_trainers() {
    let dir = fixture();
    let cfg = ModelConfig::from_dir(&dir).unwrap();
    let temperature = 0.8;
    let args = GrpoArgs {
        temperature,
        lr: 3e-2,
        mini_batches: 1,
        ..Default::default()
    };
    let policy = TrainModel::from_dir(&dir, tch::Device::Cpu).unwrap();
    let mut trainer = GrpoTrainer::new(policy, args).unwrap();
    let mut engine = Engine::new(
        Arc::new(engine_model(&trainer, &cfg).unwrap()),
        EngineConfig {
            max_num_seqs: 8,
            ..Default::default()
        },
    )
    .unwrap();
    let prompt = vec![3u32, 14, 15, 92];
    let mut gen = EngineGenerator::new(&mut engine, 8);
    for s in 0..8u64 {
        let p = SamplingParams {
            temperature: temperature as f32,
            top_p: 0.9,
            max_tokens: 24,
            seed: Some(s),
            logprobs: Some(0),
            ..Default::default()
        };
        gen.submit(&prompt, p).unwrap();
    }
    let mut finished = vec![];
    while gen.has_work() {
        finished.extend(gen.step().unwrap());
    }
    assert_eq!(finished.len(), 8);
    let rollouts: Vec<Rollout> = finished
        .into_iter()
        .enumerate()
        .map(|(i, f)| {
            assert_eq!(f.logprobs.len(), f.tokens.len());
            Rollout {
                prompt: prompt.clone(),
                response: f.tokens,
                reward: (i % 2) as f64,
                engine_logprobs: Some(f.logprobs),
            }
        })
        .collect();
    let ours = response_logprobs(trainer.model(), &rollouts, 8, temperature).unwrap();
    let mut worst = 0f32;
    for (r, lp) in rollouts.iter().zip(&ours) {
        for (a, b) in lp.iter().zip(r.engine_logprobs.as_ref().unwrap()) {
            worst = worst.max((a - b).abs());
        }
    }
    assert!(
        worst < 1e-4,
        "engine vs trainer log-probs differ by {worst}"
    );
    let batch = [Group { rollouts }];
    let upd = trainer.update(&batch).unwrap();
    let m = &upd.mismatch;
    assert_eq!(m.tokens, 8 * 24);
    assert!(m.max_abs_dlogp < 1e-4 && m.truncated == 0.0, "{m:?}");
    assert!((m.weight - 1.0).abs() < 1e-4, "{m:?}");
    // The same rollouts one update later: sampled by version 0, trained on by version 1.
    let stale = trainer.update(&batch).unwrap().mismatch;
    assert!(stale.mean_abs_dlogp > 1e-3, "{stale:?}");
    assert!((stale.weight - 1.0).abs() > 1e-4, "{stale:?}");
}

#[test]
fn replacing_the_model_mid_batch_is_refused() {
    let dir = fixture();
    let m = Arc::new(MimoModel::from_dir(&dir, DType::F32, &Device::Cpu).unwrap());
    let mut engine = Engine::new(Arc::clone(&m), EngineConfig::default()).unwrap();
    engine
        .add_request(
            vec![1, 2, 3],
            SamplingParams {
                max_tokens: 4,
                ..Default::default()
            },
        )
        .unwrap();
    let err = engine.replace_model(m).unwrap_err().to_string();
    assert!(err.contains("queued or running"), "{err}");
}
