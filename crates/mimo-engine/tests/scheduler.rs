//! The scheduler under load (issue: prefix caching, chunked prefill, preemption): shared prefixes reuse
//! blocks with exact hit counts, cached blocks are evicted least recently freed first (a sequence's tail before
//! its head), a weight update invalidates the cache, a preemption storm and chunked prefill leave every output
//! equal to the request run alone — greedy, seeded and with MTP drafts.

mod common;

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::{DType, Device};
use common::{fixture, greedy, load};
use mimo_engine::engine::{Engine, EngineConfig, FinishReason};
use mimo_engine::kv::PagedKvCache;
use mimo_engine::SamplingParams;
use mimo_model::{MimoModel, ModelConfig};

/// A prompt of `n` ids from a fixed pseudo-random stream (`seed` picks the stream).
fn prompt(n: usize, seed: u32) -> Vec<u32> {
    (0..n as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761).wrapping_add(seed * 97) >> 7) % 390 + 3)
        .collect()
}

fn seeded(max_tokens: usize, seed: u64) -> SamplingParams {
    SamplingParams {
        temperature: 0.8,
        top_p: 0.95,
        seed: Some(seed),
        max_tokens,
        ..Default::default()
    }
}

/// Runs `reqs` on one engine; returns outputs in request order and the engine.
fn run_all(
    model: &Arc<MimoModel>,
    cfg: EngineConfig,
    reqs: &[(Vec<u32>, SamplingParams)],
) -> (Vec<Vec<u32>>, Engine) {
    let mut engine = Engine::new(model.clone(), cfg).unwrap();
    for (p, s) in reqs {
        engine.add_request(p.clone(), s.clone()).unwrap();
    }
    let out = engine
        .run_to_completion()
        .unwrap()
        .into_iter()
        .map(|d| d.1)
        .collect();
    (out, engine)
}

fn solo(model: &Arc<MimoModel>, cfg: &EngineConfig, req: &(Vec<u32>, SamplingParams)) -> Vec<u32> {
    let cfg = EngineConfig {
        prefix_caching: false,
        num_blocks: None,
        max_num_batched_tokens: 4096,
        ..cfg.clone()
    };
    run_all(model, cfg, std::slice::from_ref(req)).0.remove(0)
}

#[test]
fn shared_prefixes_hit_exactly_and_outputs_do_not_change() {
    let model = load("mimo-untied");
    for mtp in [0, 2] {
        let cfg = EngineConfig {
            block_size: 4,
            mtp_drafts: mtp,
            ..Default::default()
        };
        let a = prompt(13, 1);
        let mut b = a[..8].to_vec();
        b.extend(prompt(6, 2));
        let mut engine = Engine::new(model.clone(), cfg.clone()).unwrap();
        let want_a = solo(&model, &cfg, &(a.clone(), greedy(5)));
        let want_b = solo(&model, &cfg, &(b.clone(), greedy(5)));

        engine.add_request(a.clone(), greedy(5)).unwrap();
        assert_eq!(engine.run_to_completion().unwrap()[0].1, want_a);
        let s = engine.scheduler_stats().clone();
        assert_eq!((s.prefix_query_tokens, s.prefix_hit_tokens), (13, 0));
        // 13 prompt + 5 generated: 17 positions computed, 4 full blocks. With MTP drafts a block is cached once
        // the MTP layers' rows of it are computed from real tokens too, which the last step leaves short of 16.
        let cached = engine.kv_usage().cached;
        assert_eq!(cached, if mtp == 0 { 4 } else { 3 }, "--mtp {mtp}");
        assert_eq!(engine.kv_usage().used, 0);

        // The same prompt again: three whole blocks hit, as the last position is always computed. With 2 MTP
        // layers a hit block's lookahead (the 2 tokens after it, which its MTP rows read) must lie inside the
        // prompt: two blocks.
        engine.add_request(a.clone(), greedy(5)).unwrap();
        assert_eq!(engine.run_to_completion().unwrap()[0].1, want_a);
        let s2 = engine.scheduler_stats().clone();
        let want = if mtp == 0 { 12 } else { 8 };
        assert_eq!(
            s2.prefix_hit_tokens - s.prefix_hit_tokens,
            want,
            "--mtp {mtp}"
        );

        // A prompt sharing the first 8 tokens hits two blocks; with MTP one, since the second block's
        // lookahead differs.
        engine.add_request(b.clone(), greedy(5)).unwrap();
        assert_eq!(engine.run_to_completion().unwrap()[0].1, want_b);
        let s3 = engine.scheduler_stats().clone();
        let want = if mtp == 0 { 8 } else { 4 };
        assert_eq!(
            s3.prefix_hit_tokens - s2.prefix_hit_tokens,
            want,
            "--mtp {mtp}"
        );
        assert_eq!(s3.prefix_query_tokens - s2.prefix_query_tokens, 14);

        // Four requests of one new prompt added together (n = 4, a GRPO group): the first computes it,
        // the others wait a step and hit its three full blocks.
        let c = prompt(14, 3);
        let want_c = solo(&model, &cfg, &(c.clone(), greedy(4)));
        for _ in 0..4 {
            engine.add_request(c.clone(), greedy(4)).unwrap();
        }
        let done = engine.run_to_completion().unwrap();
        assert!(done.iter().all(|d| d.1 == want_c), "--mtp {mtp}");
        let s4 = engine.scheduler_stats().clone();
        assert_eq!(
            s4.prefix_hit_tokens - s3.prefix_hit_tokens,
            3 * 12,
            "--mtp {mtp}"
        );
        let (free, total) = engine.kv_blocks();
        assert_eq!(free, total, "cached blocks no one holds count as free");
    }
}

#[test]
fn prefix_caching_off_computes_everything() {
    let model = load("mimo-untied");
    let cfg = EngineConfig {
        block_size: 4,
        prefix_caching: false,
        ..Default::default()
    };
    let a = prompt(13, 1);
    let (_, engine) = run_all(
        &model,
        cfg,
        &[(a.clone(), greedy(3)), (a.clone(), greedy(3))],
    );
    assert_eq!(engine.scheduler_stats().prefix_hit_tokens, 0);
    assert_eq!(engine.kv_usage().cached, 0);
}

/// LRU over freed cached blocks, tail first, uncached free blocks before any cached one; a hit takes a block
/// off the LRU list.
#[test]
fn eviction_takes_the_least_recently_freed_block_tail_first() {
    let cfg = ModelConfig::from_dir(&fixture("mimo-untied")).unwrap();
    let mut kv = PagedKvCache::new(&cfg, 6, 2, DType::F32, &Device::Cpu).unwrap();
    let reg = |kv: &mut PagedKvCache, slot: usize, toks: &[u32]| {
        let mut parent = 0;
        for (i, c) in toks.chunks_exact(2).enumerate() {
            parent = mimo_engine::kv::block_hash(parent, 0, c);
            kv.register(slot, i, parent, c, &[]);
        }
    };
    let a = [1, 2, 3, 4];
    let b = [5, 6, 7, 8];
    let sa = kv.add_sequence();
    kv.reserve(sa, 4).unwrap();
    reg(&mut kv, sa, &a);
    let sb = kv.add_sequence();
    kv.reserve(sb, 4).unwrap();
    reg(&mut kv, sb, &b);
    kv.free_sequence(sa);
    kv.free_sequence(sb);
    let u = kv.usage();
    assert_eq!((u.used, u.free, u.cached, u.total), (0, 6, 4, 6));
    // Two uncached blocks go first: nothing is evicted.
    let s = kv.add_sequence();
    kv.reserve(s, 4).unwrap();
    assert_eq!(kv.usage().cached, 4);
    // The next allocation evicts a's tail block (freed first of all), then a's head.
    kv.reserve(s, 6).unwrap();
    assert_eq!(
        kv.match_prefix(&a, 4, 0).len(),
        1,
        "a keeps its first block"
    );
    assert_eq!(kv.match_prefix(&b, 4, 0).len(), 2);
    kv.reserve(s, 8).unwrap();
    assert_eq!(kv.match_prefix(&a, 4, 0).len(), 0);
    assert_eq!(kv.match_prefix(&b, 4, 0).len(), 2);
    // A held cached block is not evictable: b's blocks taken by a sequence survive a full pool.
    let hit = kv.match_prefix(&b, 4, 0);
    let t = kv.add_sequence();
    kv.take_prefix(t, &hit).unwrap();
    assert_eq!(kv.free_blocks(), 0);
    assert!(kv.reserve(s, 10).is_err(), "no block left to evict");
    kv.free_sequence(t);
    kv.free_sequence(s);
    assert_eq!(kv.usage().free, 6);
    assert_eq!(kv.match_prefix(&b, 4, 0).len(), 2);
    // A different lookahead or salt misses.
    assert_eq!(kv.match_prefix(&b, 4, 1).len(), 0);
}

#[test]
fn a_weight_update_invalidates_the_cache() {
    let model = load("mimo-untied");
    let cfg = EngineConfig {
        block_size: 4,
        ..Default::default()
    };
    let a = prompt(13, 1);
    let mut engine = Engine::new(model.clone(), cfg).unwrap();
    engine.add_request(a.clone(), greedy(3)).unwrap();
    engine.run_to_completion().unwrap();
    assert!(engine.kv_usage().cached > 0);
    engine.replace_model(model.clone()).unwrap();
    assert_eq!(engine.kv_usage().cached, 0);
    engine.add_request(a.clone(), greedy(3)).unwrap();
    engine.run_to_completion().unwrap();
    assert_eq!(engine.scheduler_stats().prefix_hit_tokens, 0);
}

/// A pool for 2 of 8 requests: sequences grow until the pool runs out, the newest are preempted and
/// recomputed, and every output equals the request run alone (greedy, seeded sampling, MTP drafts).
#[test]
fn preemption_storm_gives_solo_outputs() {
    let model = load("mimo-untied");
    for (mtp, sampled) in [(0, false), (0, true), (2, false), (2, true)] {
        let reqs: Vec<(Vec<u32>, SamplingParams)> = (0..8)
            .map(|i| {
                let p = prompt(5 + i, 10 + i as u32);
                let s = if sampled {
                    seeded(20, 7 + i as u64)
                } else {
                    greedy(20)
                };
                (p, s)
            })
            .collect();
        // The longest request: 12 + 20 positions plus the MTP margin, in blocks of 4.
        let margin: usize = if mtp == 0 { 1 } else { 3 * mtp + 2 };
        let per_seq = (12 + 20 + margin).div_ceil(4);
        let cfg = EngineConfig {
            block_size: 4,
            max_num_seqs: 8,
            num_blocks: Some(2 * per_seq),
            mtp_drafts: mtp,
            ..Default::default()
        };
        let (out, engine) = run_all(&model, cfg.clone(), &reqs);
        assert!(
            engine.scheduler_stats().preemptions > 0,
            "--mtp {mtp}: the pool is too small for all 8"
        );
        for (i, r) in reqs.iter().enumerate() {
            assert_eq!(
                out[i],
                solo(&model, &cfg, r),
                "--mtp {mtp}, sampled {sampled}, request {i}"
            );
        }
        let (free, total) = engine.kv_blocks();
        assert_eq!(free, total);
    }
}

/// A long prompt arriving while a stream decodes is fed in chunks of the token budget: the stream gets a token
/// every step meanwhile, and both outputs equal their solo runs.
#[test]
fn chunked_prefill_interleaves_with_a_running_decode() {
    let model = load("mimo-untied");
    for mtp in [0, 1] {
        let cfg = EngineConfig {
            block_size: 4,
            max_num_batched_tokens: 10,
            mtp_drafts: mtp,
            ..Default::default()
        };
        let short = (prompt(4, 5), greedy(40));
        let long = (prompt(90, 6), greedy(6));
        let mut engine = Engine::new(model.clone(), cfg.clone()).unwrap();
        let a = engine
            .add_request(short.0.clone(), short.1.clone())
            .unwrap();
        let mut outs: HashMap<u64, Vec<u32>> = HashMap::new();
        for x in engine.step().unwrap() {
            outs.entry(x.id).or_default().extend(x.tokens);
        }
        let b = engine.add_request(long.0.clone(), long.1.clone()).unwrap();
        let mut steps_before_b = 0;
        let mut a_steps_while_b_prefills = 0;
        while engine.has_work() {
            let o = engine.step().unwrap();
            let b_started = outs.contains_key(&b) || o.iter().any(|x| x.id == b);
            if !b_started {
                steps_before_b += 1;
                if o.iter().any(|x| x.id == a && !x.tokens.is_empty()) {
                    a_steps_while_b_prefills += 1;
                }
            }
            for x in o {
                assert_ne!(x.finish, Some(FinishReason::Error));
                outs.entry(x.id).or_default().extend(x.tokens);
            }
        }
        // 90 prompt tokens under a budget of 10 minus the stream's decode tokens: many steps.
        assert!(steps_before_b >= 9, "--mtp {mtp}: {steps_before_b} steps");
        assert_eq!(
            a_steps_while_b_prefills, steps_before_b,
            "--mtp {mtp}: the stream decodes every step"
        );
        assert!(engine.scheduler_stats().chunked_prefill_steps >= 8);
        assert_eq!(outs[&a], solo(&model, &cfg, &short), "--mtp {mtp}");
        assert_eq!(outs[&b], solo(&model, &cfg, &long), "--mtp {mtp}");
    }
}

#[test]
fn ignore_eos_runs_to_max_tokens_and_abort_keeps_cached_blocks() {
    let model = load("mimo-untied");
    let p = prompt(9, 4);
    let free_run = solo(&model, &EngineConfig::default(), &(p.clone(), greedy(8)));
    let cfg = EngineConfig {
        eos_ids: vec![free_run[1]],
        block_size: 4,
        ..Default::default()
    };
    let (out, _) = run_all(&model, cfg.clone(), &[(p.clone(), greedy(8))]);
    assert_eq!(out[0], free_run[..2].to_vec(), "EOS ends the sequence");
    let ignore = SamplingParams {
        ignore_eos: true,
        ..greedy(8)
    };
    let (out, _) = run_all(&model, cfg.clone(), &[(p.clone(), ignore)]);
    assert_eq!(out[0], free_run);

    let mut engine = Engine::new(
        model.clone(),
        EngineConfig {
            block_size: 4,
            ..Default::default()
        },
    )
    .unwrap();
    let id = engine.add_request(p.clone(), greedy(8)).unwrap();
    engine.step().unwrap();
    engine.step().unwrap();
    let cached = engine.kv_usage().cached;
    assert!(cached >= 2);
    assert!(engine.abort(id));
    let u = engine.kv_usage();
    assert_eq!(
        (u.used, u.cached),
        (0, cached),
        "aborted: blocks free, cached ones still cached"
    );
}
