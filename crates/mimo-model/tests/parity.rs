//! Logit parity with HF transformers (plus the spec-written MTP module) on the committed fixtures.

mod common;

use candle_core::{DType, Device, Tensor};
use common::{fixtures, max_abs_diff, reference, CASES};
use mimo_model::{ContiguousKvCache, MimoModel};

const F32_TOL: f32 = 1e-4;
/// bf16 weights and activations against the f32 reference, relative to the largest reference |logit|: bf16
/// keeps 8 mantissa bits, so errors of ~2^-8 per op accumulate through the layers.
const BF16_REL_TOL: f32 = 0.03;

fn max_abs(t: &Tensor) -> f32 {
    t.abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

#[test]
fn teacher_forced_logits_match_transformers_f32() {
    for case in CASES {
        let dir = fixtures().join(case);
        let r = reference(&dir);
        let model = MimoModel::from_dir(&dir, DType::F32, &Device::Cpu).unwrap();
        assert_eq!(model.num_mtp_layers(), r.mtp.len(), "{case}");
        let (logits, mtp) = model.forward_teacher_forced(&r.ids).unwrap();
        let d = max_abs_diff(&logits, &r.logits);
        eprintln!("{case}: main max|Δ| = {d:.3e}");
        assert!(d <= F32_TOL, "{case}: main logits differ by {d}");
        for (k, (ours, theirs)) in mtp.iter().zip(&r.mtp).enumerate() {
            assert_eq!(ours.dims(), theirs.dims(), "{case}: MTP layer {k} rows");
            let d = max_abs_diff(ours, theirs);
            eprintln!("{case}: MTP {k} max|Δ| = {d:.3e}");
            assert!(d <= F32_TOL, "{case}: MTP layer {k} logits differ by {d}");
        }
    }
}

#[test]
fn bf16_logits_within_documented_bound() {
    for case in CASES {
        let dir = fixtures().join(case);
        let r = reference(&dir);
        let model = MimoModel::from_dir(&dir, DType::BF16, &Device::Cpu).unwrap();
        let (logits, mtp) = model.forward_teacher_forced(&r.ids).unwrap();
        let d = max_abs_diff(&logits, &r.logits);
        let rel = d / max_abs(&r.logits);
        eprintln!("{case}: bf16 main max|Δ| = {d:.3e} ({rel:.2e} of max |logit|)");
        assert!(
            rel <= BF16_REL_TOL,
            "{case}: bf16 main logits differ by {d}"
        );
        for (k, (ours, theirs)) in mtp.iter().zip(&r.mtp).enumerate() {
            let d = max_abs_diff(ours, theirs);
            let rel = d / max_abs(theirs).max(1e-6);
            eprintln!("{case}: bf16 MTP {k} max|Δ| = {d:.3e} ({rel:.2e} of max |logit|)");
            assert!(
                rel <= BF16_REL_TOL,
                "{case}: bf16 MTP layer {k} differs by {d}"
            );
        }
    }
}

/// Decoding with the KV cache (a prefix, then one position at a time) gives the same logits as the full
/// teacher-forced pass, for the main model and for every MTP layer's own cache.
#[test]
fn incremental_decode_with_kv_cache_matches_reference() {
    for case in CASES {
        let dir = fixtures().join(case);
        let r = reference(&dir);
        let model = MimoModel::from_dir(&dir, DType::F32, &Device::Cpu).unwrap();
        let cfg = model.config().clone();
        let mut cache = ContiguousKvCache::new(cfg.num_cache_layers());
        let n = r.ids.len();
        let prefix = 4;
        let ids = Tensor::new(r.ids.as_slice(), &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let mut rows = vec![];
        let mut hidden = vec![];
        let mut pos = 0;
        for len in std::iter::once(prefix).chain(std::iter::repeat_n(1, n - prefix)) {
            let out = model
                .forward(&ids.narrow(1, pos, len).unwrap(), pos, &mut cache)
                .unwrap();
            rows.push(out.logits.squeeze(0).unwrap());
            hidden.push(model.mtp_input_hidden(&out.hidden).unwrap());
            pos += len;
        }
        let logits = Tensor::cat(&rows, 0).unwrap();
        let d = max_abs_diff(&logits, &r.logits);
        assert!(d <= F32_TOL, "{case}: cached main logits differ by {d}");
        let hidden = Tensor::cat(&hidden, 1).unwrap();
        for (k, want) in r.mtp.iter().enumerate() {
            let rows_k = n - 1 - k;
            let mut got = vec![];
            for p in 0..rows_k {
                let h = hidden.narrow(1, p, 1).unwrap();
                let next = ids.narrow(1, p + 1 + k, 1).unwrap();
                let out = model.mtp_layer(k, &h, &next, p, &mut cache).unwrap();
                got.push(out.logits.squeeze(0).unwrap());
            }
            let got = Tensor::cat(&got, 0).unwrap();
            let d = max_abs_diff(&got, want);
            assert!(d <= F32_TOL, "{case}: cached MTP layer {k} differs by {d}");
        }
        assert_eq!(cache.len(0), n);
    }
}

/// Writing at an earlier position rolls the cache back (how rejected drafts are discarded).
#[test]
fn cache_rollback_by_rewriting_positions() {
    let dir = fixtures().join("mimo-untied");
    let r = reference(&dir);
    let model = MimoModel::from_dir(&dir, DType::F32, &Device::Cpu).unwrap();
    let mut cache = ContiguousKvCache::new(model.config().num_cache_layers());
    let ids = Tensor::new(r.ids.as_slice(), &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    model
        .forward(&ids.narrow(1, 0, 6).unwrap(), 0, &mut cache)
        .unwrap();
    // Speculate 3 wrong tokens, then roll back to position 6 and continue with the true ones.
    let wrong = Tensor::new(&[[1u32, 2, 3]], &Device::Cpu).unwrap();
    model.forward(&wrong, 6, &mut cache).unwrap();
    assert_eq!(cache.len(0), 9);
    let out = model
        .forward(&ids.narrow(1, 6, 3).unwrap(), 6, &mut cache)
        .unwrap();
    assert_eq!(cache.len(0), 9);
    let d = max_abs_diff(
        &out.logits.squeeze(0).unwrap(),
        &r.logits.narrow(0, 6, 3).unwrap(),
    );
    assert!(d <= F32_TOL, "after rollback logits differ by {d}");
    cache.truncate(2).unwrap();
    assert_eq!(cache.len(0), 2);
}

/// A batch of different sequences gives each sequence's own logits.
#[test]
fn batched_forward_matches_single_sequences() {
    let dir = fixtures().join("mimo-untied");
    let r = reference(&dir);
    let model = MimoModel::from_dir(&dir, DType::F32, &Device::Cpu).unwrap();
    let a: Vec<u32> = r.ids.clone();
    let b: Vec<u32> = r.ids.iter().rev().copied().collect();
    let batch = Tensor::new(vec![a.clone(), b.clone()], &Device::Cpu).unwrap();
    let mut cache = ContiguousKvCache::new(model.config().num_cache_layers());
    let out = model.forward(&batch, 0, &mut cache).unwrap();
    let (single_b, _) = model.forward_teacher_forced(&b).unwrap();
    assert!(max_abs_diff(&out.logits.get(0).unwrap(), &r.logits) <= F32_TOL);
    assert!(max_abs_diff(&out.logits.get(1).unwrap(), &single_b) <= 1e-5);
}

#[test]
fn out_of_range_token_is_an_error() {
    let dir = fixtures().join("llama-tied");
    let model = MimoModel::from_dir(&dir, DType::F32, &Device::Cpu).unwrap();
    let e = model.forward_teacher_forced(&[1, 2, 301]).unwrap_err();
    assert!(e.to_string().contains("301"), "{e}");
    assert!(model.forward_teacher_forced(&[]).is_err());
    assert!(model
        .mtp_layer(
            0,
            &Tensor::zeros((1, 1, 32), DType::F32, &Device::Cpu).unwrap(),
            &Tensor::new(&[[1u32]], &Device::Cpu).unwrap(),
            0,
            &mut ContiguousKvCache::new(2),
        )
        .is_err());
}

/// Rows at different positions decode together (continuous batching) and match single-sequence logits.
#[test]
fn ragged_rows_decode_together() {
    let dir = fixtures().join("mimo-untied");
    let r = reference(&dir);
    let model = MimoModel::from_dir(&dir, DType::F32, &Device::Cpu).unwrap();
    let a: Vec<u32> = r.ids.clone();
    let b: Vec<u32> = r.ids.iter().rev().copied().collect();
    let (logits_b, _) = model.forward_teacher_forced(&b).unwrap();
    let mut cache = ContiguousKvCache::new(model.config().num_cache_layers());
    // Prefill row 0 with 5 tokens of `a` and row 1 with 3 tokens of `b`, one row at a time.
    let dev = Device::Cpu;
    let prefill = |ids: &[u32], row_start: usize| {
        Tensor::new(ids, &dev)
            .unwrap()
            .unsqueeze(0)
            .unwrap()
            .narrow(1, 0, row_start)
            .unwrap()
    };
    struct RowCache<'a>(&'a mut ContiguousKvCache, usize);
    impl mimo_model::KvCache for RowCache<'_> {
        fn update(
            &mut self,
            layer: usize,
            _row: usize,
            start: usize,
            k: &Tensor,
            v: &Tensor,
        ) -> mimo_model::Result<(Tensor, Tensor)> {
            self.0.update(layer, self.1, start, k, v)
        }
    }
    model
        .forward(&prefill(&a, 5), 0, &mut RowCache(&mut cache, 0))
        .unwrap();
    model
        .forward(&prefill(&b, 3), 0, &mut RowCache(&mut cache, 1))
        .unwrap();
    let step = Tensor::new(&[[a[5]], [b[3]]], &dev).unwrap();
    let out = model.forward_rows(&step, &[5, 3], &mut cache).unwrap();
    let d0 = max_abs_diff(
        &out.logits.get(0).unwrap().squeeze(0).unwrap(),
        &r.logits.get(5).unwrap(),
    );
    let d1 = max_abs_diff(
        &out.logits.get(1).unwrap().squeeze(0).unwrap(),
        &logits_b.get(3).unwrap(),
    );
    assert!(d0 <= F32_TOL && d1 <= F32_TOL, "{d0} {d1}");
}
