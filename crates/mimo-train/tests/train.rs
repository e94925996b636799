//! The training loop end to end on the fixture model: falling loss, metrics, HF checkpoints, exact resume.
#![cfg(feature = "tch")]

use std::path::{Path, PathBuf};

use mimo_train::metrics::read_metrics;
use mimo_train::{train, Mode, TrainArgs};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures")
        .join(name)
}

/// A packed dataset of `docs` documents over a small repeating "language" (so the loss can fall), EOS = 0.
fn packed_dataset(dir: &Path, docs: usize) {
    std::fs::create_dir_all(dir).unwrap();
    let mut toks: Vec<u32> = vec![];
    let mut x: u64 = 12345;
    for _ in 0..docs {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let start = (x >> 33) as u32 % 50 + 1;
        let len = 20 + (x >> 40) as usize % 30;
        toks.extend((0..len as u32).map(|i| 1 + (start + 3 * i) % 60));
        toks.push(0);
    }
    let bytes: Vec<u8> = toks.iter().flat_map(|t| t.to_le_bytes()).collect();
    std::fs::write(dir.join("shard-00000-00000.bin"), bytes).unwrap();
    let index = serde_json::json!({
        "dtype": "u32", "eos_id": 0, "tokenizer": "tokenizer.json",
        "shards": [{"file": "shard-00000-00000.bin", "tokens": toks.len(), "documents": docs}],
    });
    std::fs::write(dir.join("index.json"), index.to_string()).unwrap();
}

fn args(data: &Path, out: &Path, steps: usize) -> TrainArgs {
    let mut a = TrainArgs {
        mode: Mode::Pretrain,
        ..TrainArgs::default()
    };
    a.model.init = fixture("mimo-untied");
    a.data.path = data.to_path_buf();
    a.out = out.to_path_buf();
    a.train.steps = steps;
    a.train.batch_size = 2;
    a.train.seq_len = 32;
    a.train.grad_accum = 2;
    a.train.progress = false;
    a.optim.lr = 3e-3;
    a.optim.warmup_steps = 2;
    a
}

/// Metrics without the wall-clock fields.
fn curve(out: &Path) -> Vec<serde_json::Value> {
    read_metrics(&out.join("metrics.jsonl"))
        .unwrap()
        .into_iter()
        .map(|mut m| {
            m.tok_per_s = 0.0;
            m.elapsed_s = 0.0;
            serde_json::to_value(m).unwrap()
        })
        .collect()
}

fn weights(dir: &Path) -> Vec<u8> {
    std::fs::read(dir.join("model.safetensors")).unwrap()
}

#[test]
fn pretrain_falls_and_resume_is_exact() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    packed_dataset(&data, 200);

    // Straight run of 6 steps, checkpoint every 2.
    let straight = tmp.path().join("straight");
    let mut a = args(&data, &straight, 6);
    a.train.save_every = 2;
    let r = train(&a).unwrap();
    assert_eq!(r.steps, 6);
    let m = read_metrics(&straight.join("metrics.jsonl")).unwrap();
    assert_eq!(m.len(), 6);
    assert!(m[5].loss < m[0].loss, "loss {} -> {}", m[0].loss, m[5].loss);
    assert!(m.iter().all(|x| x.loss_mtp > 0.0 && x.mtp_acc >= 0.0));
    let model_dir = straight.join("model");
    assert!(model_dir.join("config.json").is_file());
    assert!(straight.join("report.json").is_file());
    assert!(straight.join("loss.png").is_file());
    // A finished run is not overwritten without force.
    assert!(train(&a).is_err());

    // Interrupted after step 5 (last checkpoint at 4, as after a kill -9), then resumed.
    let resumed = tmp.path().join("resumed");
    let mut b = args(&data, &resumed, 6);
    b.train.save_every = 2;
    b.train.stop_after = 5;
    let r1 = train(&b).unwrap();
    assert!(r1.model_dir.is_none());
    assert_eq!(
        read_metrics(&resumed.join("metrics.jsonl")).unwrap().len(),
        5
    );
    b.train.stop_after = 0;
    let r2 = train(&b).unwrap();
    assert_eq!(r2.resumed_from, Some(4));
    assert_eq!(curve(&straight), curve(&resumed));
    assert_eq!(weights(&model_dir), weights(&resumed.join("model")));

    // The engine loads the trained checkpoint.
    mimo_model::MimoModel::from_dir(
        &model_dir,
        candle_core::DType::F32,
        &candle_core::Device::Cpu,
    )
    .unwrap();
}

#[test]
fn sft_trains_on_responses_only() {
    let tmp = tempfile::tempdir().unwrap();
    let jsonl = tmp.path().join("sft.jsonl");
    let mut lines = String::new();
    for i in 0..40u32 {
        let prompt: Vec<u32> = (0..6).map(|j| 100 + (i * 7 + j) % 50).collect();
        let response: Vec<u32> = (0..8).map(|j| 1 + (i + 2 * j) % 40).collect();
        lines.push_str(
            &serde_json::json!({"prompt_ids": prompt, "response_ids": response}).to_string(),
        );
        lines.push('\n');
    }
    std::fs::write(&jsonl, lines).unwrap();
    let out = tmp.path().join("sft");
    let mut a = args(&jsonl, &out, 4);
    a.mode = Mode::Sft;
    a.train.plot = false;
    let r = train(&a).unwrap();
    assert_eq!(r.steps, 4);
    assert!(r.final_loss.is_finite());
    // Bad input names the file and line.
    std::fs::write(&jsonl, "{\"prompt_ids\": [1], \"response_ids\": [99999]}\n").unwrap();
    let mut a = args(&jsonl, &tmp.path().join("bad"), 1);
    a.mode = Mode::Sft;
    let e = train(&a).unwrap_err().to_string();
    assert!(e.contains("sft.jsonl:1") && e.contains("99999"), "{e}");
}
