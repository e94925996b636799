//! GGUF files: mimo's writer and reader round-trip every fixture (MTP layers, llama q/k row order, biases,
//! tied and untied heads) against transformers' logits; quantized files and in-situ `--quant` stay close; bad
//! files get clear errors; and the real SmolLM2-135M GGUF (llama.cpp's converter, Q4_1) matches transformers'
//! own GGUF loader.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device, Tensor};
use common::{fixtures, max_abs_diff, reference, CASES};
use mimo_model::{MimoModel, ModelConfig, QuantType, WeightFormat, WeightStore};

fn f32_fmt() -> WeightFormat {
    WeightFormat::float(DType::F32)
}

fn write(case: &str, quant: QuantType, out: &Path) -> PathBuf {
    let dir = fixtures().join(case);
    let cfg = ModelConfig::from_dir(&dir).unwrap();
    let store = WeightStore::open(&dir).unwrap();
    let file = out.join(format!("{case}.gguf"));
    mimo_model::gguf::write_gguf(&store, &cfg, quant, &file).unwrap();
    file
}

/// Fraction of positions whose argmax agrees, and max |Δ| relative to the reference's largest |logit|.
fn closeness(got: &Tensor, want: &Tensor) -> (f32, f32) {
    let g = got.argmax(1).unwrap().to_vec1::<u32>().unwrap();
    let w = want.argmax(1).unwrap().to_vec1::<u32>().unwrap();
    let agree = g.iter().zip(&w).filter(|(a, b)| a == b).count() as f32 / g.len() as f32;
    let scale = want
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    (agree, max_abs_diff(got, want) / scale)
}

/// Positions where `want`'s top logit leads its second by more than `margin`, and how many of them `got`'s argmax
/// agrees on (a near tie may flip under any quantization noise, a clear lead may not).
fn clear_agreement(got: &Tensor, want: &Tensor, margin: f32) -> (usize, usize) {
    let g = got.argmax(1).unwrap().to_vec1::<u32>().unwrap();
    let rows = want.to_vec2::<f32>().unwrap();
    let (mut clear, mut agree) = (0, 0);
    for (row, got_top) in rows.iter().zip(g) {
        let mut idx: Vec<usize> = (0..row.len()).collect();
        idx.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
        if row[idx[0]] - row[idx[1]] > margin {
            clear += 1;
            agree += usize::from(idx[0] as u32 == got_top);
        }
    }
    (clear, agree)
}

#[test]
fn f32_gguf_round_trip_equals_transformers() {
    let tmp = tempfile::tempdir().unwrap();
    for case in CASES {
        let file = write(case, QuantType(GgmlDType::F32), tmp.path());
        let r = reference(&fixtures().join(case));
        let model = MimoModel::open(&file, f32_fmt(), &Device::Cpu).unwrap();
        let (logits, mtp) = model.forward_teacher_forced(&r.ids).unwrap();
        let d = max_abs_diff(&logits, &r.logits);
        assert!(d < 1e-4, "{case}: main logits max |Δ| {d}");
        assert_eq!(mtp.len(), r.mtp.len(), "{case}: MTP layers");
        for (k, (m, want)) in mtp.iter().zip(&r.mtp).enumerate() {
            let d = max_abs_diff(m, want);
            assert!(d < 1e-4, "{case}: MTP layer {k} max |Δ| {d}");
        }
    }
}

#[test]
fn quantized_files_and_in_situ_quant_stay_close() {
    let tmp = tempfile::tempdir().unwrap();
    let q8 = QuantType::parse("q8_0").unwrap();
    for case in CASES {
        let r = reference(&fixtures().join(case));
        let file = write(case, q8, tmp.path());
        let from_file = MimoModel::open(&file, f32_fmt(), &Device::Cpu).unwrap();
        let fmt = WeightFormat {
            dtype: DType::F32,
            quant: Some(q8),
        };
        let in_situ = MimoModel::open(&fixtures().join(case), fmt, &Device::Cpu).unwrap();
        for (what, model) in [("file", &from_file), ("in situ", &in_situ)] {
            let (logits, mtp) = model.forward_teacher_forced(&r.ids).unwrap();
            let (agree, rel) = closeness(&logits, &r.logits);
            assert!(
                agree >= 0.9 && rel < 0.05,
                "{case} q8_0 {what}: argmax agreement {agree}, relative max |Δ| {rel}"
            );
            for (k, (m, want)) in mtp.iter().zip(&r.mtp).enumerate() {
                let (agree, rel) = closeness(m, want);
                assert!(
                    agree >= 0.9 && rel < 0.05,
                    "{case} q8_0 {what} MTP {k}: {agree} {rel}"
                );
            }
        }
    }
    // k-quants need 256-wide rows; narrower ones fall back to a 32-wide format (Q4_K → Q4_0) and still run.
    let q4k = QuantType::parse("Q4_K_M").unwrap();
    assert_eq!(q4k.fit(256), Some(GgmlDType::Q4K));
    assert_eq!(q4k.fit(64), Some(GgmlDType::Q4_0));
    let file = write("mimo-untied", q4k, tmp.path());
    let model = MimoModel::open(&file, f32_fmt(), &Device::Cpu).unwrap();
    let r = reference(&fixtures().join("mimo-untied"));
    let (logits, _) = model.forward_teacher_forced(&r.ids).unwrap();
    // Random tiny weights give near-flat logits, so 5-bit noise flips argmaxes easily: bound the error instead.
    let (agree, rel) = closeness(&logits, &r.logits);
    assert!(
        agree >= 0.5 && rel < 0.2,
        "q4_k fallback: argmax agreement {agree}, relative max |Δ| {rel}"
    );
}

#[test]
fn bad_gguf_files_get_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let file = write("llama-tied", QuantType(GgmlDType::F32), tmp.path());
    let bytes = std::fs::read(&file).unwrap();
    let err = |path: &Path| {
        MimoModel::open(path, f32_fmt(), &Device::Cpu)
            .unwrap_err()
            .to_string()
    };

    let cut = tmp.path().join("cut.gguf");
    std::fs::write(&cut, &bytes[..bytes.len() * 2 / 3]).unwrap();
    let e = err(&cut);
    assert!(e.contains("GGUF") && e.contains("truncated"), "{e}");

    let header = tmp.path().join("header.gguf");
    std::fs::write(&header, &bytes[..40]).unwrap();
    let e = err(&header);
    assert!(e.contains("header.gguf") && e.contains("GGUF"), "{e}");

    let junk = tmp.path().join("junk.gguf");
    std::fs::write(&junk, b"this is not a gguf file at all").unwrap();
    let e = err(&junk);
    assert!(e.contains("junk.gguf"), "{e}");

    // Same file, another architecture name.
    let other = tmp.path().join("gemma.gguf");
    let mut b = bytes.clone();
    let pos = b.windows(5).position(|w| w == b"llama").unwrap();
    b[pos..pos + 5].copy_from_slice(b"gemma");
    std::fs::write(&other, &b).unwrap();
    let e = err(&other);
    assert!(
        e.contains("unsupported architecture") && e.contains("gemma"),
        "{e}"
    );

    assert!(QuantType::parse("iq2_xs")
        .unwrap_err()
        .to_string()
        .contains("q4_k"));
}

/// The real SmolLM2-135M-Instruct GGUF (Q4_1, llama architecture: q/k rows in llama.cpp's interleaved order)
/// against transformers' GGUF loader, which dequantizes to f32. Q4_1 × Q8_1 activations (llama.cpp's and
/// candle's kernel) differ from f32 activations by quantization noise, so the comparison is argmax agreement
/// wherever the reference's top logit leads by more than 0.5 (near ties flip under any kernel: here one of 14
/// positions leads by 0.04), and a relative bound.
#[test]
fn smollm2_gguf_matches_transformers() {
    let Some(py) = common::python() else {
        return;
    };
    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tools/gguf_logits_reference.py");
    let ids: Vec<u32> = vec![
        1, 504, 3458, 282, 4649, 314, 28, 506, 3575, 282, 6138, 314, 2114, 30,
    ];
    let ids_arg = ids.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
    let out = Command::new(&py)
        .arg(&script)
        .args(["--ids", &ids_arg])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let path = PathBuf::from(v["gguf"].as_str().unwrap());
    let rows: Vec<Vec<f32>> = serde_json::from_value(v["logits"].clone()).unwrap();
    let want = Tensor::new(rows, &Device::Cpu).unwrap();
    let model = MimoModel::open(&path, f32_fmt(), &Device::Cpu).unwrap();
    assert_eq!(model.config().num_hidden_layers, 30);
    let (logits, _) = model.forward_teacher_forced(&ids).unwrap();
    let (_, rel) = closeness(&logits, &want);
    let (clear, agree) = clear_agreement(&logits, &want, 0.5);
    assert!(
        clear >= 7 && agree == clear && rel < 0.08,
        "argmax agreement on {agree} of {clear} clear positions, relative max |Δ| {rel}"
    );
}
