//! Training throughput on this machine: a random-init model from a config.json trained for a few steps on
//! synthetic packed tokens; prints one JSON line with tokens/s (steady state, first step excluded).
//!
//!     cargo run --release -p mimo-train --example train_bench -- CONFIG.json [STEPS] [BATCH] [SEQ]

use std::path::PathBuf;

use mimo_train::{train, Mode, TrainArgs};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut argv = std::env::args().skip(1);
    let config = PathBuf::from(
        argv.next()
            .ok_or("usage: train_bench CONFIG.json [STEPS] [BATCH] [SEQ]")?,
    );
    let steps: usize = argv.next().map_or(Ok(6), |s| s.parse())?;
    let batch: usize = argv.next().map_or(Ok(8), |s| s.parse())?;
    let seq: usize = argv.next().map_or(Ok(256), |s| s.parse())?;
    let cfg = mimo_model::ModelConfig::from_file(&config)?;
    let tmp = std::env::temp_dir().join(format!("mimo-train-bench-{}", std::process::id()));
    let data = tmp.join("data");
    std::fs::create_dir_all(&data)?;
    let n = (steps + 1) * batch * (seq + 1) * 2;
    let mut x: u64 = 1;
    let toks: Vec<u32> = (0..n)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((x >> 33) % cfg.vocab_size as u64) as u32
        })
        .collect();
    std::fs::write(
        data.join("s.bin"),
        toks.iter()
            .flat_map(|t| t.to_le_bytes())
            .collect::<Vec<u8>>(),
    )?;
    std::fs::write(
        data.join("index.json"),
        serde_json::json!({"dtype": "u32", "eos_id": 0, "tokenizer": "tokenizer.json",
            "shards": [{"file": "s.bin", "tokens": n, "documents": 1}]})
        .to_string(),
    )?;
    let mut a = TrainArgs {
        mode: Mode::Pretrain,
        ..TrainArgs::default()
    };
    a.model.config = config;
    a.data.path = data;
    a.out = tmp.join("run");
    a.train.steps = steps;
    a.train.batch_size = batch;
    a.train.seq_len = seq;
    a.train.progress = false;
    a.train.plot = std::env::var_os("PLOT").is_some();
    let r = train(&a)?;
    let m = mimo_train::metrics::read_metrics(&r.metrics)?;
    let (t0, e0) = (m[0].tokens as f64, m[0].elapsed_s);
    let last = &m[m.len() - 1];
    let steady = (last.tokens as f64 - t0) / (last.elapsed_s - e0).max(1e-9);
    println!(
        "{}",
        serde_json::json!({"params": r.params, "steps": steps, "batch": batch, "seq_len": seq,
            "tokens_per_s_steady": steady, "s_per_step": (last.elapsed_s - e0) / (m.len() - 1).max(1) as f64,
            "loss_first": m[0].loss, "loss_last": last.loss, "out": r.out})
    );
    if std::env::var_os("KEEP").is_none() {
        std::fs::remove_dir_all(&tmp)?;
    }
    Ok(())
}
