//! The engine on the committed fixtures: greedy equals transformers' generate, MTP speculative decoding is
//! exact for greedy and distribution-preserving for sampling, continuous batching equals single runs.

mod common;

use std::sync::Arc;

use candle_core::{DType, Device};
use common::{fixture, greedy, load};
use mimo_engine::engine::{Engine, EngineConfig, EngineError, FinishReason};
use mimo_engine::SamplingParams;
use mimo_model::MimoModel;

struct Ref {
    ids: Vec<u32>,
    greedy: Vec<u32>,
}

fn reference(name: &str) -> Ref {
    let t =
        candle_core::safetensors::load(fixture(name).join("reference.safetensors"), &Device::Cpu)
            .unwrap();
    let v = |k: &str| -> Vec<u32> {
        t[k].to_vec1::<i64>()
            .unwrap()
            .into_iter()
            .map(|x| x as u32)
            .collect()
    };
    Ref {
        ids: v("ids"),
        greedy: v("greedy_ids"),
    }
}

fn run(
    model: &Arc<MimoModel>,
    cfg: EngineConfig,
    prompts: &[Vec<u32>],
    params: &SamplingParams,
) -> Vec<Vec<u32>> {
    let mut engine = Engine::new(model.clone(), cfg).unwrap();
    for p in prompts {
        engine.add_request(p.clone(), params.clone()).unwrap();
    }
    let done = engine.run_to_completion().unwrap();
    let (free, total) = engine.kv_blocks();
    assert_eq!(free, total, "all KV blocks are returned");
    done.into_iter().map(|d| d.1).collect()
}

const CASES: [&str; 3] = ["mimo-untied", "mimo-tied-sharded-bf16", "llama-tied"];

#[test]
fn greedy_matches_transformers_generate() {
    for case in CASES {
        let r = reference(case);
        let model = load(case);
        let out = run(
            &model,
            EngineConfig::default(),
            &[r.ids[..5].to_vec()],
            &greedy(r.greedy.len()),
        );
        assert_eq!(out[0], r.greedy, "{case}");
    }
}

#[test]
fn greedy_with_mtp_drafts_equals_plain_greedy() {
    for case in ["mimo-untied", "mimo-tied-sharded-bf16"] {
        let r = reference(case);
        let model = load(case);
        let prompts = vec![r.ids[..5].to_vec(), r.ids[2..9].to_vec(), vec![r.ids[0]]];
        let plain = run(&model, EngineConfig::default(), &prompts, &greedy(24));
        assert_eq!(plain[0], r.greedy, "{case}");
        for k in 1..=3 {
            let mut cfg = EngineConfig {
                mtp_drafts: k,
                ..Default::default()
            };
            let mut engine = Engine::new(model.clone(), cfg.clone()).unwrap();
            for p in &prompts {
                engine.add_request(p.clone(), greedy(24)).unwrap();
            }
            let spec: Vec<Vec<u32>> = engine
                .run_to_completion()
                .unwrap()
                .into_iter()
                .map(|d| d.1)
                .collect();
            assert_eq!(spec, plain, "{case}: --mtp {k}");
            let stats = engine.mtp_stats();
            assert!(stats.total_drafted() > 0);
            assert!(stats.drafted.len() <= k, "counts per draft position");
            // Small blocks exercise block-boundary writes and rollback across blocks.
            cfg.block_size = 2;
            assert_eq!(
                run(&model, cfg, &prompts, &greedy(24)),
                plain,
                "{case}: --mtp {k}, block 2"
            );
        }
    }
}

/// With max_num_seqs 2 and 5 requests, sequences join and leave between steps; each output equals the output
/// of the same request run alone.
#[test]
fn continuous_batching_equals_single_runs() {
    let r = reference("mimo-untied");
    let model = load("mimo-untied");
    let prompts: Vec<Vec<u32>> = (0..5).map(|i| r.ids[i..i + 2 + i].to_vec()).collect();
    let cfg = EngineConfig {
        max_num_seqs: 2,
        block_size: 4,
        ..Default::default()
    };
    let params: Vec<SamplingParams> = (0..5).map(|i| greedy(6 + 3 * i)).collect();
    let mut engine = Engine::new(model.clone(), cfg.clone()).unwrap();
    for (p, s) in prompts.iter().zip(&params) {
        engine.add_request(p.clone(), s.clone()).unwrap();
    }
    let mut max_running = 0;
    let mut outs = vec![vec![]; 5];
    while engine.has_work() {
        for o in engine.step().unwrap() {
            outs[o.id as usize].extend(o.tokens);
        }
        max_running = max_running.max(engine.num_running());
    }
    assert_eq!(max_running, 2);
    for i in 0..5 {
        let single = run(&model, cfg.clone(), &[prompts[i].clone()], &params[i]);
        assert_eq!(outs[i], single[0], "request {i}");
        assert_eq!(outs[i].len(), params[i].max_tokens);
    }
}

/// Requests admitted together are prefilled in padded groups (one with a reservation shorter than the padding
/// starts a group of its own); each output equals the same request run alone.
#[test]
fn batched_prefill_equals_single_runs() {
    let r = reference("mimo-untied");
    let model = load("mimo-untied");
    let lens = [8usize, 3, 7, 6, 2, 8];
    let prompts: Vec<Vec<u32>> = lens
        .iter()
        .enumerate()
        .map(|(i, &n)| r.ids[i % 3..i % 3 + n].to_vec())
        .collect();
    let params: Vec<SamplingParams> = (0..lens.len()).map(|i| greedy(1 + 2 * i)).collect();
    let cfg = EngineConfig {
        max_num_seqs: 8,
        block_size: 2,
        ..Default::default()
    };
    let mut engine = Engine::new(model.clone(), cfg.clone()).unwrap();
    for (p, s) in prompts.iter().zip(&params) {
        engine.add_request(p.clone(), s.clone()).unwrap();
    }
    let mut outs = vec![vec![]; lens.len()];
    while engine.has_work() {
        for o in engine.step().unwrap() {
            outs[o.id as usize].extend(o.tokens);
        }
    }
    let (free, total) = engine.kv_blocks();
    assert_eq!(free, total, "all KV blocks are returned");
    for i in 0..lens.len() {
        let single = run(&model, cfg.clone(), &[prompts[i].clone()], &params[i]);
        assert_eq!(outs[i], single[0], "request {i}");
    }
}

#[test]
fn seeded_sampling_is_reproducible() {
    let r = reference("mimo-untied");
    let model = load("mimo-untied");
    let params = SamplingParams {
        temperature: 0.8,
        top_p: 0.9,
        seed: Some(42),
        max_tokens: 12,
        ..Default::default()
    };
    let a = run(
        &model,
        EngineConfig::default(),
        &[r.ids[..4].to_vec()],
        &params,
    );
    let b = run(
        &model,
        EngineConfig::default(),
        &[r.ids[..4].to_vec()],
        &params,
    );
    assert_eq!(a, b);
}

/// Chi-square two-sample test: the 2nd and 3rd sampled tokens (which speculation draws through
/// accept/reject) have the same distribution with and without MTP drafts.
#[test]
fn speculative_sampling_preserves_the_distribution() {
    let model = load("mimo-untied");
    let r = reference("mimo-untied");
    let prompt = r.ids[..3].to_vec();
    let n = 1500;
    let vocab = model.config().vocab_size;
    let collect = |drafts: usize, seed0: u64| -> Vec<Vec<f64>> {
        let mut engine = Engine::new(
            model.clone(),
            EngineConfig {
                mtp_drafts: drafts,
                max_num_seqs: 64,
                ..Default::default()
            },
        )
        .unwrap();
        for i in 0..n {
            let params = SamplingParams {
                temperature: 1.0,
                // A peaked distribution so the test has power: top-k 8.
                top_k: 8,
                seed: Some(seed0 + i as u64),
                max_tokens: 3,
                ..Default::default()
            };
            engine.add_request(prompt.clone(), params).unwrap();
        }
        let mut hist = vec![vec![0.0; vocab]; 3];
        for (_, toks, _) in engine.run_to_completion().unwrap() {
            for (pos, &t) in toks.iter().enumerate() {
                hist[pos][t as usize] += 1.0;
            }
        }
        hist
    };
    let plain = collect(0, 1);
    let spec = collect(2, 1_000_000);
    for pos in 1..3 {
        let (a, b) = (&plain[pos], &spec[pos]);
        let mut chi2 = 0.0;
        let mut bins = 0;
        for t in 0..vocab {
            let s = a[t] + b[t];
            if s >= 10.0 {
                chi2 += (a[t] - b[t]).powi(2) / s;
                bins += 1;
            }
        }
        let df = (bins - 1) as f64;
        // 99.9th percentile of chi-square ≈ df + 3.1·sqrt(2·df) + 5 (Wilson–Hilferty, conservative).
        let bound = df + 3.1 * (2.0 * df).sqrt() + 5.0;
        eprintln!("token {pos}: chi2 = {chi2:.1}, df = {df}, bound = {bound:.1}");
        assert!(chi2 < bound, "token {pos}: chi2 {chi2} ≥ {bound}");
    }
}

#[test]
fn bad_requests_are_rejected_with_clear_errors() {
    let model = load("llama-tied");
    let mut engine = Engine::new(
        model,
        EngineConfig {
            max_model_len: Some(64),
            ..Default::default()
        },
    )
    .unwrap();
    let msg = |e: EngineError| e.to_string();
    assert!(msg(engine.add_request(vec![], greedy(4)).unwrap_err()).contains("empty prompt"));
    assert!(msg(engine.add_request(vec![1, 301], greedy(4)).unwrap_err()).contains("301"));
    assert!(
        msg(engine.add_request(vec![1; 60], greedy(8)).unwrap_err()).contains("context length 64")
    );
    let bad = SamplingParams {
        top_p: 1.5,
        ..greedy(4)
    };
    assert!(msg(engine.add_request(vec![1], bad).unwrap_err()).contains("top_p"));
    assert!(!engine.has_work());
}

#[test]
fn abort_frees_blocks_and_stop_tokens_finish() {
    let r = reference("mimo-untied");
    let model = load("mimo-untied");
    let mut engine = Engine::new(model.clone(), EngineConfig::default()).unwrap();
    let a = engine.add_request(r.ids[..5].to_vec(), greedy(20)).unwrap();
    engine.step().unwrap();
    assert_eq!(engine.num_running(), 1);
    assert!(engine.abort(a));
    let (free, total) = engine.kv_blocks();
    assert_eq!(free, total);
    assert!(!engine.abort(a));
    // The 4th greedy token as a stop id ends the sequence right there.
    let stop = r.greedy[3];
    let first = r.greedy.iter().position(|&t| t == stop).unwrap();
    let params = SamplingParams {
        stop_token_ids: vec![stop],
        ..greedy(20)
    };
    engine.add_request(r.ids[..5].to_vec(), params).unwrap();
    let done = engine.run_to_completion().unwrap();
    assert_eq!(done[0].1, r.greedy[..=first].to_vec());
    assert_eq!(done[0].2, FinishReason::Stop);
}

/// `mimo-untied` with the embedding of one token set to NaN (in memory: checkpoints with non-finite weights
/// are refused at load). Returns the model and that token.
fn poisoned_model(avoid: &[u32]) -> (Arc<MimoModel>, u32) {
    let dir = fixture("mimo-untied");
    let cfg = mimo_model::ModelConfig::from_dir(&dir).unwrap();
    let poison = (0..cfg.vocab_size as u32)
        .rev()
        .find(|t| !avoid.contains(t))
        .unwrap();
    let tensors =
        candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).unwrap();
    let mut weights = mimo_model::HostWeights::new();
    for (name, t) in tensors {
        let shape = t.dims().to_vec();
        let mut data = t
            .to_dtype(DType::F32)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        if name == "model.embed_tokens.weight" {
            let h = cfg.hidden_size;
            let row = poison as usize * h;
            data[row..row + h].fill(f32::NAN);
        }
        weights.insert(name, (shape, data));
    }
    let model = MimoModel::from_host_weights(&weights, &cfg, DType::F32, &Device::Cpu).unwrap();
    (Arc::new(model), poison)
}

/// NaN logits finish only their own sequence, with `FinishReason::Error` and a message; the batch and the
/// engine go on, and every KV block comes back. With and without MTP drafts, in prefill and in decoding
/// (the poisoned token forced by `logit_bias`), greedy and sampled.
#[test]
fn nan_logits_fail_only_their_sequence() {
    let r = reference("mimo-untied");
    let mut avoid = r.ids[..5].to_vec();
    avoid.extend(&r.greedy);
    let (model, poison) = poisoned_model(&avoid);
    for mtp in [0, 2] {
        let mut engine = Engine::new(
            model.clone(),
            EngineConfig {
                mtp_drafts: mtp,
                ..Default::default()
            },
        )
        .unwrap();
        let good = engine
            .add_request(r.ids[..5].to_vec(), greedy(r.greedy.len()))
            .unwrap();
        let in_prompt = engine
            .add_request(vec![r.ids[0], poison, r.ids[1]], greedy(6))
            .unwrap();
        let forced = SamplingParams {
            logit_bias: vec![(poison, 100.0)],
            ..greedy(6)
        };
        let in_decode = engine.add_request(r.ids[..3].to_vec(), forced).unwrap();
        let sampled = SamplingParams {
            temperature: 1.0,
            seed: Some(3),
            logprobs: Some(2),
            logit_bias: vec![(poison, 100.0)],
            ..greedy(6)
        };
        let in_sampling = engine.add_request(r.ids[1..4].to_vec(), sampled).unwrap();
        let mut tokens = vec![vec![]; 4];
        let mut finish = [None; 4];
        let mut errors = vec![None; 4];
        while engine.has_work() {
            for o in engine.step().unwrap() {
                let i = o.id as usize % 4;
                assert!(finish[i].is_none(), "output after finish: {o:?}");
                tokens[i].extend(o.tokens);
                finish[i] = o.finish;
                errors[i] = o.error;
            }
        }
        let (free, total) = engine.kv_blocks();
        assert_eq!(free, total, "--mtp {mtp}: all KV blocks are returned");
        let good = good as usize % 4;
        assert_eq!(tokens[good], r.greedy, "--mtp {mtp}");
        assert_eq!(finish[good], Some(FinishReason::Length));
        assert_eq!(errors[good], None);
        for (i, want) in [
            (in_prompt, vec![]),
            (in_decode, vec![poison]),
            (in_sampling, vec![poison]),
        ] {
            let i = i as usize % 4;
            assert_eq!(tokens[i], want, "--mtp {mtp}, request {i}");
            assert_eq!(
                finish[i],
                Some(FinishReason::Error),
                "--mtp {mtp}, request {i}"
            );
            let e = errors[i].as_deref().unwrap_or_default();
            assert!(e.contains("non-finite logit"), "--mtp {mtp}: {e:?}");
        }
        assert_eq!(FinishReason::Error.as_str(), "error");

        // run_to_completion turns a failed request into an error and leaves the engine idle.
        engine.add_request(r.ids[..5].to_vec(), greedy(8)).unwrap();
        let bad = engine.add_request(vec![poison], greedy(8)).unwrap();
        match engine.run_to_completion() {
            Err(EngineError::Sequence { id, message }) => {
                assert_eq!(id, bad);
                assert!(message.contains("non-finite logit"), "{message}");
            }
            other => panic!("--mtp {mtp}: {other:?}"),
        }
        assert!(!engine.has_work());
        let (free, total) = engine.kv_blocks();
        assert_eq!(free, total);
    }
}

#[test]
fn logit_bias_ids_are_checked_against_the_vocabulary() {
    let model = load("llama-tied");
    let vocab = model.config().vocab_size as u32;
    let mut engine = Engine::new(model, EngineConfig::default()).unwrap();
    let bad = SamplingParams {
        logit_bias: vec![(1, 1.0), (vocab, 5.0)],
        ..greedy(4)
    };
    let e = engine.add_request(vec![1, 2], bad).unwrap_err().to_string();
    assert!(
        e.contains("logit_bias") && e.contains(&vocab.to_string()),
        "{e}"
    );
    let ok = SamplingParams {
        logit_bias: vec![(vocab - 1, 100.0)],
        ..greedy(3)
    };
    engine.add_request(vec![1, 2], ok).unwrap();
    let done = engine.run_to_completion().unwrap();
    assert_eq!(done[0].1, vec![vocab - 1; 3]);
}

/// Forces token `token` at generated position `at`, and restricts every later position to `allowed`.
struct Script {
    at: usize,
    token: u32,
    allowed: Vec<u32>,
}

impl mimo_engine::LogitsProcessor for Script {
    fn next_token(&self, generated: &[u32]) -> mimo_engine::NextToken {
        use mimo_engine::NextToken;
        match generated.len() {
            n if n == self.at => NextToken::Force(self.token),
            n if n > self.at => NextToken::OneOf(self.allowed.clone()),
            _ => NextToken::Any,
        }
    }
}

/// The logits hook forces and masks tokens, the same with and without MTP drafts (greedy and sampled), and a
/// hook that allows nothing fails only its sequence.
#[test]
fn logits_processor_forces_and_masks_with_and_without_mtp() {
    let r = reference("mimo-untied");
    let model = load("mimo-untied");
    let prompt = r.ids[..5].to_vec();
    let free = run(
        &model,
        EngineConfig::default(),
        std::slice::from_ref(&prompt),
        &greedy(12),
    )[0]
    .clone();
    // Force a token the model did not pick, then allow only two ids.
    let token = (0..model.config().vocab_size as u32)
        .find(|t| *t != free[3])
        .unwrap();
    let allowed = vec![free[0], token];
    let script = Arc::new(Script {
        at: 3,
        token,
        allowed: allowed.clone(),
    });
    let sampled = SamplingParams {
        temperature: 0.9,
        seed: Some(5),
        max_tokens: 12,
        logprobs: Some(2),
        ..Default::default()
    };
    let mut outs = vec![];
    for (k, params) in [
        (0, greedy(12)),
        (2, greedy(12)),
        (0, sampled.clone()),
        (2, sampled),
    ] {
        let cfg = EngineConfig {
            mtp_drafts: k,
            ..Default::default()
        };
        let mut engine = Engine::new(model.clone(), cfg).unwrap();
        let proc: Arc<dyn mimo_engine::LogitsProcessor> = script.clone();
        engine
            .add_request_with(prompt.clone(), params.clone(), Some(proc))
            .unwrap();
        let out = engine.run_to_completion().unwrap().remove(0).1;
        assert_eq!(out.len(), 12, "mtp {k}");
        assert_eq!(out[3], token, "mtp {k}: forced token");
        assert!(
            out[4..].iter().all(|t| allowed.contains(t)),
            "mtp {k}: {out:?}"
        );
        if params.is_greedy() {
            assert_eq!(&out[..3], &free[..3], "mtp {k}: free positions unchanged");
        }
        outs.push(out);
    }
    assert_eq!(outs[0], outs[1], "greedy: MTP drafts change nothing");

    struct Nothing;
    impl mimo_engine::LogitsProcessor for Nothing {
        fn next_token(&self, _: &[u32]) -> mimo_engine::NextToken {
            mimo_engine::NextToken::OneOf(vec![])
        }
    }
    let mut engine = Engine::new(model.clone(), EngineConfig::default()).unwrap();
    let bad = engine
        .add_request_with(prompt.clone(), greedy(4), Some(Arc::new(Nothing)))
        .unwrap();
    let good = engine.add_request(prompt.clone(), greedy(4)).unwrap();
    let mut finished = std::collections::HashMap::new();
    while engine.has_work() {
        for o in engine.step().unwrap() {
            if let Some(f) = o.finish {
                finished.insert(o.id, (f, o.error));
            }
        }
    }
    assert_eq!(finished[&bad].0, FinishReason::Error);
    assert!(finished[&bad]
        .1
        .as_deref()
        .unwrap()
        .contains("allows no token"));
    assert_eq!(finished[&good].0, FinishReason::Length);
}

/// Simulated acceptance (benchmarks) accepts every draft at p = 1 and none at p = 0, at batch 1 and batched,
/// and counts per draft position.
#[test]
fn simulated_acceptance_counts_per_draft_position() {
    let r = reference("mimo-untied");
    let model = load("mimo-untied");
    let prompts: Vec<Vec<u32>> = (0..3).map(|i| r.ids[i..i + 4].to_vec()).collect();
    for (p, want_all) in [(1.0f32, true), (0.0, false)] {
        let cfg = EngineConfig {
            mtp_drafts: 2,
            simulated_acceptance: Some(p),
            ..Default::default()
        };
        let mut engine = Engine::new(model.clone(), cfg).unwrap();
        for prompt in &prompts {
            engine.add_request(prompt.clone(), greedy(12)).unwrap();
        }
        let done = engine.run_to_completion().unwrap();
        assert!(done.iter().all(|d| d.1.len() == 12));
        let s = engine.mtp_stats();
        assert_eq!(s.drafted.len(), 2, "two draft positions");
        if want_all {
            assert_eq!(s.accepted, s.drafted, "p = 1 accepts every draft");
        } else {
            assert_eq!(s.total_accepted(), 0, "p = 0 accepts none");
        }
    }
}

/// An f16 KV cache gives the f32 cache's greedy tokens on the fixtures (the fused kernel widens f16 keys and
/// values; rounding is far below the logit gaps of these prompts).
#[test]
fn f16_kv_cache_keeps_greedy_output() {
    for case in CASES {
        let r = reference(case);
        let model = load(case);
        let cfg = EngineConfig {
            kv_dtype: Some(DType::F16),
            ..Default::default()
        };
        let out = run(&model, cfg, &[r.ids[..5].to_vec()], &greedy(r.greedy.len()));
        assert_eq!(out[0], r.greedy, "{case}");
    }
}
