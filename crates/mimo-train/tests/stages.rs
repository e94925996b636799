//! The three-stage mixture schedule (design §2.2): per-stage data, sequence length, batch size and RoPE θ, and
//! exact resume across a stage boundary.
#![cfg(feature = "tch")]

use std::path::{Path, PathBuf};

use mimo_train::config::StageArgs;
use mimo_train::metrics::read_metrics;
use mimo_train::{train, Mode, TrainArgs, TrainerState};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures")
        .join(name)
}

/// A packed dataset for stage `stage` whose documents step through the token ids with stride `stride`
/// (EOS = 0), so every stage reads different tokens.
fn packed_stage(dir: &Path, stage: &str, stride: u32, docs: usize) {
    std::fs::create_dir_all(dir).unwrap();
    let mut toks: Vec<u32> = vec![];
    let mut x: u64 = 777 + stride as u64;
    for _ in 0..docs {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let start = (x >> 33) as u32 % 50 + 1;
        let len = 20 + (x >> 40) as usize % 30;
        toks.extend((0..len as u32).map(|i| 1 + (start + stride * i) % 60));
        toks.push(0);
    }
    let bytes: Vec<u8> = toks.iter().flat_map(|t| t.to_le_bytes()).collect();
    std::fs::write(dir.join("shard-00000-00000.bin"), bytes).unwrap();
    let index = serde_json::json!({
        "dtype": "u32", "eos_id": 0, "tokenizer": "tokenizer.json", "stage": stage, "seq_len": 16,
        "shards": [{"file": "shard-00000-00000.bin", "tokens": toks.len(), "documents": docs}],
    });
    std::fs::write(dir.join("index.json"), index.to_string()).unwrap();
}

/// 2 + 2 + 2 steps: stage 3 doubles the window past the fixture's `max_position_embeddings` (256) and raises θ.
fn args(root: &Path, out: &str) -> TrainArgs {
    let mut a = TrainArgs {
        mode: Mode::Pretrain,
        ..TrainArgs::default()
    };
    a.model.init = fixture("mimo-untied");
    a.out = root.join(out);
    a.train.steps = 6;
    a.train.batch_size = 2;
    a.train.grad_accum = 2;
    a.train.progress = false;
    a.train.plot = false;
    a.optim.lr = 3e-3;
    a.optim.warmup_steps = 2;
    let stage = |name: &str, seq_len, rope_theta, batch_size| StageArgs {
        name: name.into(),
        data: root.join(name),
        steps: 2,
        seq_len,
        rope_theta,
        batch_size,
    };
    a.stages = vec![
        stage("general", 16, 10_000.0, None),
        stage("math", 16, 10_000.0, None),
        stage("long", 300, 640_000.0, Some(1)),
    ];
    a
}

fn setup() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    for (name, stride) in [("general", 3), ("math", 7), ("long", 11)] {
        packed_stage(&tmp.path().join(name), name, stride, 200);
    }
    tmp
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

fn config_json(dir: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap()
}

fn state(out: &Path) -> TrainerState {
    serde_json::from_slice(&std::fs::read(out.join("checkpoint/trainer_state.json")).unwrap())
        .unwrap()
}

#[test]
fn three_stages_switch_data_length_and_theta_at_their_steps() {
    let tmp = setup();
    let a = args(tmp.path(), "run");
    train(&a).unwrap();
    let m = read_metrics(&a.out.join("metrics.jsonl")).unwrap();
    let seen: Vec<_> = m
        .iter()
        .map(|x| (x.step, x.stage, x.seq_len, x.rope_theta))
        .collect();
    assert_eq!(
        seen,
        vec![
            (1, 0, 16, 10_000.0),
            (2, 0, 16, 10_000.0),
            (3, 1, 16, 10_000.0),
            (4, 1, 16, 10_000.0),
            (5, 2, 300, 640_000.0),
            (6, 2, 300, 640_000.0),
        ]
    );
    // Tokens per step: 2 micro-batches × batch × seq_len.
    assert_eq!(m[0].tokens, 2 * 2 * 16);
    assert_eq!(m[5].tokens - m[4].tokens, 2 * 300);
    // The final model carries stage 3's θ where the input config keeps it, and a context that fits 300.
    let c = config_json(&a.out.join("model"));
    assert_eq!(c["rope_parameters"]["rope_theta"], 640_000.0);
    assert_eq!(c["max_position_embeddings"], 300);
    let st = state(&a.out);
    assert_eq!((st.step, st.stage, st.stage_name.as_str()), (6, 2, "long"));
    // The engine reads θ back.
    let cfg = mimo_model::ModelConfig::from_file(&a.out.join("model/config.json")).unwrap();
    assert_eq!(cfg.rope_theta, 640_000.0);
}

#[test]
fn resume_across_a_stage_boundary_is_exact() {
    let tmp = setup();
    let straight = args(tmp.path(), "straight");
    train(&straight).unwrap();

    // Checkpoint exactly at the boundary (step 4 ends stage 2), killed at step 5 in stage 3.
    let mut b = args(tmp.path(), "at-boundary");
    b.train.save_every = 2;
    b.train.stop_after = 5;
    train(&b).unwrap();
    let st = state(&b.out);
    assert_eq!((st.step, st.stage, st.stage_name.as_str()), (4, 1, "math"));
    assert_eq!(
        config_json(&b.out.join("checkpoint"))["rope_parameters"]["rope_theta"],
        10_000.0,
        "the checkpoint carries the θ of the stage in effect"
    );
    b.train.stop_after = 0;
    let r = train(&b).unwrap();
    assert_eq!(r.resumed_from, Some(4));
    assert_eq!(curve(&straight.out), curve(&b.out));

    // Checkpoint mid stage 2 (step 3); the resumed run crosses into stage 3 itself.
    let mut c = args(tmp.path(), "mid-stage");
    c.train.save_every = 3;
    c.train.stop_after = 4;
    train(&c).unwrap();
    let st = state(&c.out);
    assert_eq!((st.step, st.stage, st.cursor.index), (3, 1, 2 * 2));
    c.train.stop_after = 0;
    let r = train(&c).unwrap();
    assert_eq!(r.resumed_from, Some(3));
    assert_eq!(curve(&straight.out), curve(&c.out));
    let w = |o: &Path| std::fs::read(o.join("model/model.safetensors")).unwrap();
    assert_eq!(w(&straight.out), w(&b.out));
    assert_eq!(w(&straight.out), w(&c.out));

    // A checkpoint from another stage plan is refused, naming the stage.
    let mut d = args(tmp.path(), "mid-stage");
    d.stages[2].name = "longer".into();
    d.force = false;
    std::fs::remove_file(d.out.join("report.json")).unwrap();
    let e = train(&d).unwrap_err().to_string();
    assert!(
        e.contains("trainer_state.json") && e.contains("\"long\""),
        "{e}"
    );
}

#[test]
fn a_stage_without_enough_tokens_is_named() {
    let tmp = setup();
    let mut a = args(tmp.path(), "short");
    a.stages[2].seq_len = 100_000;
    let e = train(&a).unwrap_err().to_string();
    assert!(
        e.contains("stages[2] (long)") && e.contains("100001"),
        "{e}"
    );
}
