//! Data-parallel `mimo train` on loopback (c10d gloo, launched the torchrun way with `RANK`/`WORLD_SIZE`/
//! `MASTER_ADDR`/`MASTER_PORT`): two ranks take the single-process steps (losses, grad norms, final weights
//! to float tolerance); rank 0 alone writes the run; a checkpoint resumes only with its world size; a lone
//! rank times out clearly; a killed rank stops its peer promptly with the last checkpoint intact.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures")
        .join(name)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn ok(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Packs the fixture mixture's first stage and writes a tiny model and a run config (`steps`, batch 4 × 2
/// micro-batches, checkpoints every 3 steps).
fn setup(root: &Path, steps: usize) -> PathBuf {
    let out = Command::new(env!("CARGO_BIN_EXE_mimo"))
        .args(["data", "pack", "--mixture"])
        .arg(fixture("data/mixture.toml"))
        .args(["--stage", "stage1", "--tokenizer"])
        .arg(fixture("data/tokenizer.json"))
        .arg("--output")
        .arg(root.join("packed"))
        .arg("--quiet")
        .output()
        .unwrap();
    ok(&out, "mimo data pack");
    let model = serde_json::json!({
        "architectures": ["MiMoForCausalLM"], "model_type": "mimo", "vocab_size": 512,
        "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "hidden_act": "silu", "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "max_position_embeddings": 64, "tie_word_embeddings": false, "num_nextn_predict_layers": 1,
        "eos_token_id": 0, "dtype": "float32",
    });
    std::fs::write(root.join("config.json"), model.to_string()).unwrap();
    let cfg = format!(
        "[model]\nconfig = \"{}\"\n[data]\npath = \"{}\"\n[train]\nsteps = {steps}\nbatch_size = 4\n\
         grad_accum = 2\nseq_len = 16\nsave_every = 3\nthreads = 1\nprogress = false\nplot = false\n\
         [optim]\nlr = 3e-3\nwarmup_steps = 2\n",
        root.join("config.json").display(),
        root.join("packed").display(),
    );
    let path = root.join("run.toml");
    std::fs::write(&path, cfg).unwrap();
    path
}

fn train(cfg: &Path, out: &Path, env: &[(&str, String)], extra: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_mimo"));
    c.args(["train", "pretrain", "--config"])
        .arg(cfg)
        .arg("--set")
        .arg(format!("out={}", out.display()));
    for s in extra {
        c.args(["--set", s]);
    }
    for k in [
        "RANK",
        "WORLD_SIZE",
        "LOCAL_RANK",
        "MASTER_ADDR",
        "MASTER_PORT",
    ] {
        c.env_remove(k);
    }
    c.envs(env.iter().map(|(k, v)| (*k, v.as_str())));
    c
}

fn rank_env(rank: usize, world: usize, port: u16) -> Vec<(&'static str, String)> {
    vec![
        ("RANK", rank.to_string()),
        ("LOCAL_RANK", rank.to_string()),
        ("WORLD_SIZE", world.to_string()),
        ("MASTER_ADDR", "127.0.0.1".into()),
        ("MASTER_PORT", port.to_string()),
        ("MIMO_DIST_TIMEOUT_S", "60".into()),
    ]
}

/// Starts `world` ranks of the same command.
fn spawn_ranks(cfg: &Path, out: &Path, world: usize, extra: &[&str]) -> Vec<Child> {
    let port = free_port();
    (0..world)
        .map(|r| {
            train(cfg, out, &rank_env(r, world, port), extra)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect()
}

fn run_ranks(cfg: &Path, out: &Path, world: usize, extra: &[&str]) -> Vec<Output> {
    spawn_ranks(cfg, out, world, extra)
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect()
}

fn metrics(out: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn weights(dir: &Path) -> Vec<(String, Vec<f32>)> {
    let t =
        candle_core::safetensors::load(dir.join("model.safetensors"), &candle_core::Device::Cpu)
            .unwrap();
    let mut v: Vec<_> = t
        .into_iter()
        .map(|(k, t)| (k, t.flatten_all().unwrap().to_vec1::<f32>().unwrap()))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

fn state(out: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(out.join("checkpoint/trainer_state.json")).unwrap())
        .unwrap()
}

fn close(a: f64, b: f64, tol: f64) -> bool {
    (a - b).abs() <= tol * (1.0 + a.abs().max(b.abs()))
}

#[test]
fn two_ranks_take_the_single_process_steps() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = setup(tmp.path(), 6);
    let single = tmp.path().join("single");
    ok(
        &train(&cfg, &single, &[], &[]).output().unwrap(),
        "single-process run",
    );

    let dp = tmp.path().join("dp");
    let outs = run_ranks(&cfg, &dp, 2, &[]);
    for (r, o) in outs.iter().enumerate() {
        ok(o, &format!("rank {r}"));
    }
    let (a, b) = (metrics(&single), metrics(&dp));
    eprintln!(
        "step 6 loss: single {}, 2 ranks {}",
        a[5]["loss"], b[5]["loss"]
    );
    assert_eq!(a.len(), 6);
    assert_eq!(b.len(), 6, "rank 0 alone writes the metrics, once per step");
    for (x, y) in a.iter().zip(&b) {
        for k in [
            "loss",
            "loss_main",
            "loss_mtp",
            "grad_norm",
            "acc_main",
            "mtp_acc",
            "lr",
        ] {
            let (p, q) = (x[k].as_f64().unwrap(), y[k].as_f64().unwrap());
            assert!(
                close(p, q, 1e-5),
                "step {} {k}: single {p}, 2 ranks {q}",
                x["step"]
            );
        }
        assert_eq!(x["tokens"], y["tokens"], "step {}", x["step"]);
    }
    let (wa, wb) = (weights(&single.join("model")), weights(&dp.join("model")));
    assert_eq!(wa.len(), wb.len());
    for ((na, va), (nb, vb)) in wa.iter().zip(&wb) {
        assert_eq!(na, nb);
        let d = va
            .iter()
            .zip(vb)
            .map(|(p, q)| (p - q).abs())
            .fold(0f32, f32::max);
        assert!(d < 1e-5, "{na}: max |Δ| {d}");
    }
    assert_eq!(state(&dp)["world_size"], 2);
    assert_eq!(state(&single)["world_size"], 1);
}

#[test]
fn a_checkpoint_resumes_only_with_its_world_size() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = setup(tmp.path(), 6);
    let out = tmp.path().join("dp");
    for o in run_ranks(&cfg, &out, 2, &["train.stop_after=3"]) {
        ok(&o, "2 ranks, stopped at step 3");
    }
    assert_eq!(state(&out)["step"], 3);
    let alone = train(&cfg, &out, &[], &["train.stop_after=3"])
        .output()
        .unwrap();
    assert!(!alone.status.success());
    let msg = String::from_utf8_lossy(&alone.stderr);
    assert!(
        msg.contains("2 data-parallel rank(s)") && msg.contains("WORLD_SIZE=2"),
        "{msg}"
    );
    for o in run_ranks(&cfg, &out, 2, &[]) {
        ok(&o, "2 ranks resumed");
    }
    assert!(out.join("report.json").is_file());
    assert_eq!(metrics(&out).len(), 6);
}

#[test]
fn a_lone_rank_times_out_with_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = setup(tmp.path(), 6);
    let mut env = rank_env(0, 2, free_port());
    env.push(("MIMO_DIST_TIMEOUT_S", "2".into()));
    let t = Instant::now();
    let o = train(&cfg, &tmp.path().join("lone"), &env, &[])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(t.elapsed() < Duration::from_secs(60));
    let msg = String::from_utf8_lossy(&o.stderr);
    assert!(
        msg.contains("rendezvous") && msg.contains("waiting for 2 ranks"),
        "{msg}"
    );
    assert!(
        !tmp.path().join("lone/metrics.jsonl").exists(),
        "a lone rank never trains"
    );
}

#[test]
fn a_killed_rank_stops_its_peer_and_the_checkpoint_stays_intact() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = setup(tmp.path(), 100_000);
    let out = tmp.path().join("dp");
    let mut ranks = spawn_ranks(&cfg, &out, 2, &[]);
    let deadline = Instant::now() + Duration::from_secs(120);
    while !out.join("checkpoint/trainer_state.json").is_file() {
        assert!(Instant::now() < deadline, "no checkpoint within 120 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    ranks[1].kill().unwrap();
    ranks[1].wait().unwrap();
    let killed_at = Instant::now();
    let survivor = ranks.remove(0).wait_with_output().unwrap();
    let took = killed_at.elapsed();
    assert!(!survivor.status.success(), "rank 0 must not finish alone");
    assert!(
        took < Duration::from_secs(30),
        "rank 0 took {took:?} to notice"
    );
    let msg = String::from_utf8_lossy(&survivor.stderr);
    eprintln!("rank 0 after rank 1 was killed ({took:?}): {}", msg.trim());
    assert!(msg.contains("distributed"), "{msg}");
    let st = state(&out);
    assert_eq!(st["world_size"], 2);
    assert!(st["step"].as_u64().unwrap().is_multiple_of(3));
    assert!(
        !weights(&out.join("checkpoint")).is_empty(),
        "the checkpoint loads"
    );
}
