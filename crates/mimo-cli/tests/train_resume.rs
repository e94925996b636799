//! `mimo train pretrain` killed with SIGKILL after its first checkpoint and started again with the same command
//! reproduces the uninterrupted run exactly: the metrics (every loss, LR, λ, grad norm, token count) as
//! serialized, and the final weights byte for byte. The data comes from `mimo data pack` over the fixture
//! mixture (three stages), so the resumed run also crosses the stage boundaries.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn mimo(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mimo"))
        .args(args)
        .output()
        .unwrap()
}

fn ok(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures")
        .join(name)
}

const STEPS_PER_STAGE: usize = 40;
const SAVE_EVERY: usize = 10;

/// Packs the fixture mixture's three stages and writes a tiny model config and the run config.
fn setup(root: &Path) -> PathBuf {
    for stage in ["stage1", "stage2", "stage3"] {
        let out = mimo(&[
            "data",
            "pack",
            "--mixture",
            &fixture("data/mixture.toml").display().to_string(),
            "--stage",
            stage,
            "--tokenizer",
            &fixture("data/tokenizer.json").display().to_string(),
            "--output",
            &root.join(stage).display().to_string(),
            "--quiet",
        ]);
        ok(&out, "mimo data pack");
    }
    let model = serde_json::json!({
        "architectures": ["MiMoForCausalLM"], "model_type": "mimo", "vocab_size": 512,
        "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "hidden_act": "silu", "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "max_position_embeddings": 64, "tie_word_embeddings": false, "num_nextn_predict_layers": 1,
        "eos_token_id": 0, "dtype": "float32",
    });
    std::fs::write(root.join("config.json"), model.to_string()).unwrap();
    let stage = |name: &str, seq_len: usize, theta: &str, extra: &str| {
        format!(
            "[[stages]]\nname = \"{name}\"\ndata = \"{}\"\nsteps = {STEPS_PER_STAGE}\nseq_len = {seq_len}\n\
             rope_theta = {theta}\n{extra}",
            root.join(name).display()
        )
    };
    let cfg = format!(
        "[model]\nconfig = \"{}\"\n[train]\nsteps = {}\nbatch_size = 2\nseq_len = 16\nsave_every = {SAVE_EVERY}\n\
         threads = 1\nprogress = false\nplot = false\n[optim]\nlr = 3e-3\nwarmup_steps = 5\n{}{}{}",
        root.join("config.json").display(),
        3 * STEPS_PER_STAGE,
        stage("stage1", 16, "10000.0", ""),
        stage("stage2", 16, "10000.0", ""),
        stage("stage3", 32, "640000.0", "batch_size = 1\n"),
    );
    let path = root.join("run.toml");
    std::fs::write(&path, cfg).unwrap();
    path
}

fn train_args(cfg: &Path, out: &Path) -> Vec<String> {
    vec![
        "train".into(),
        "pretrain".into(),
        "--config".into(),
        cfg.display().to_string(),
        "--set".into(),
        format!("out={}", out.display()),
    ]
}

/// metrics.jsonl lines without the wall-clock fields, as parsed JSON (floats as serialized).
fn curve(out: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            let m = v.as_object_mut().unwrap();
            m.remove("tok_per_s");
            m.remove("elapsed_s");
            v
        })
        .collect()
}

fn checkpoint_step(out: &Path) -> Option<usize> {
    let s = std::fs::read(out.join("checkpoint/trainer_state.json")).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&s).ok()?;
    v["step"].as_u64().map(|s| s as usize)
}

fn metrics_lines(out: &Path) -> usize {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .map(|s| s.lines().count())
        .unwrap_or(0)
}

#[test]
fn kill_9_and_resume_reproduces_the_uninterrupted_run() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = setup(tmp.path());

    let straight = tmp.path().join("straight");
    ok(
        &Command::new(env!("CARGO_BIN_EXE_mimo"))
            .args(train_args(&cfg, &straight))
            .output()
            .unwrap(),
        "uninterrupted mimo train",
    );
    let expected = curve(&straight);
    assert_eq!(expected.len(), 3 * STEPS_PER_STAGE);

    // Start, wait for the first checkpoint and a few steps past it, then SIGKILL.
    let killed = tmp.path().join("killed");
    let mut child = Command::new(env!("CARGO_BIN_EXE_mimo"))
        .args(train_args(&cfg, &killed))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(step) = checkpoint_step(&killed) {
            if metrics_lines(&killed) >= step + 2 {
                break;
            }
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before it could be killed"
        );
        assert!(Instant::now() < deadline, "no checkpoint within 60 s");
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().unwrap(); // SIGKILL on Unix
    let status = child.wait().unwrap();
    assert!(!status.success());
    assert!(
        !killed.join("report.json").exists(),
        "the run finished before the kill"
    );
    let at = checkpoint_step(&killed).unwrap();
    eprintln!(
        "killed after {} logged steps, checkpoint at step {at}",
        metrics_lines(&killed)
    );
    assert!(
        at < 3 * STEPS_PER_STAGE && at.is_multiple_of(SAVE_EVERY),
        "checkpoint at {at}"
    );

    // The same command again resumes from the checkpoint and finishes.
    let out = Command::new(env!("CARGO_BIN_EXE_mimo"))
        .args(train_args(&cfg, &killed))
        .output()
        .unwrap();
    ok(&out, "resumed mimo train");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["resumed_from"], serde_json::json!(at));
    assert_eq!(report["steps"], serde_json::json!(3 * STEPS_PER_STAGE));

    let got = curve(&killed);
    assert_eq!(got.len(), expected.len());
    for (a, b) in got.iter().zip(&expected) {
        assert_eq!(a, b, "metrics differ at step {}", b["step"]);
    }
    let weights = |o: &Path| std::fs::read(o.join("model/model.safetensors")).unwrap();
    assert!(
        weights(&killed) == weights(&straight),
        "final weights differ"
    );
    // The final model is the long-context stage's: θ and context recorded in config.json.
    let c: serde_json::Value =
        serde_json::from_slice(&std::fs::read(killed.join("model/config.json")).unwrap()).unwrap();
    assert_eq!(c["rope_theta"], 640000.0);
    assert_eq!(expected.last().unwrap()["seq_len"], 32);
    assert_eq!(expected.last().unwrap()["stage"], 2);
}

#[test]
fn a_bad_stage_list_exits_2_naming_the_field() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("bad.toml");
    std::fs::write(
        &cfg,
        "[model]\nconfig = \"c.json\"\n[train]\nsteps = 5\n\
         [[stages]]\nname = \"a\"\ndata = \"d\"\nsteps = 2\nseq_len = 16\nrope_theta = 1e4\n\
         [[stages]]\nname = \"b\"\ndata = \"d\"\nsteps = 2\nseq_len = 16\nrope_theta = 1e4\n",
    )
    .unwrap();
    let out = mimo(&["train", "pretrain", "--config", &cfg.display().to_string()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("sum to 4") && err.contains("train.steps = 5"),
        "{err}"
    );
    std::fs::write(&cfg, "[[stages]]\nname = \"a\"\nsteps = 1\nsequence = 3\n").unwrap();
    let out = mimo(&["train", "pretrain", "--config", &cfg.display().to_string()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.toml") && err.contains("sequence"),
        "{err}"
    );
}
