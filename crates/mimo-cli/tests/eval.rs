//! `mimo eval` end to end on a tiny random MiMo with the fixture tokenizer: the bookkeeping (k samples per
//! problem, avg@k, pass@k, per-sample JSONL) is exercised; a random model scores ~0.

use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::{DType, Device, Tensor};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A random-weight MiMo checkpoint (vocab of the fixture tokenizer) in `dir`.
fn tiny_model(dir: &Path) {
    let config = serde_json::json!({
        "model_type": "mimo", "vocab_size": 1005, "hidden_size": 32, "intermediate_size": 64,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "max_position_embeddings": 512,
        "tie_word_embeddings": true, "num_nextn_predict_layers": 1
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let cfg = mimo_model::ModelConfig::from_dir(dir).unwrap();
    let tensors: std::collections::HashMap<String, Tensor> = mimo_model::expected_tensors(&cfg)
        .into_iter()
        .map(|s| {
            let t = Tensor::randn(0f32, 0.2, s.shape.as_slice(), &Device::Cpu).unwrap();
            (s.name, t.to_dtype(DType::F32).unwrap())
        })
        .collect();
    candle_core::safetensors::save(&tensors, dir.join("model.safetensors")).unwrap();
    for f in [
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
    ] {
        std::fs::copy(root().join("fixtures/tokenizer").join(f), dir.join(f)).unwrap();
    }
}

#[test]
fn eval_reports_avg_and_pass_at_k() {
    let dir = tempfile::tempdir().unwrap();
    tiny_model(dir.path());
    let data = dir.path().join("set.jsonl");
    std::fs::write(
        &data,
        "{\"question\": \"What is 2+3?\", \"answer\": \"2+3=5\\n#### 5\", \"idx\": 0}\n\
         {\"problem\": \"What is 7*6?\", \"answer\": \"42\", \"id\": 1}\n",
    )
    .unwrap();
    let samples = dir.path().join("samples.jsonl");
    let out = Command::new(env!("CARGO_BIN_EXE_mimo"))
        .args([
            "eval",
            "--model",
            dir.path().to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
        ])
        .args([
            "--k",
            "3",
            "--max-tokens",
            "6",
            "--samples",
            samples.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["problems"], 2);
    assert_eq!(v["k"], 3);
    let avg = v["avg_at_k"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&avg));
    assert_eq!(v["per_problem"][0]["n"], 3);
    assert_eq!(v["per_problem"][1]["gold"], "42");
    let lines = std::fs::read_to_string(&samples).unwrap();
    assert_eq!(lines.lines().count(), 6);

    let bad = dir.path().join("bad.jsonl");
    std::fs::write(&bad, "{\"question\": \"q\"}\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_mimo"))
        .args([
            "eval",
            "--model",
            dir.path().to_str().unwrap(),
            "--data",
            bad.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad.jsonl:1"));
}
