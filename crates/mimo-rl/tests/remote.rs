//! `mimo rl` with `rollout_servers` over `mimo serve --enable-weight-updates` servers on loopback (in this
//! process): the same config gives the in-process run's steps (losses, grad norms, rewards, rollout tokens) and
//! final weights; a server whose connections are cut mid-stream has its requests retried on the other; a server
//! that is down when the run starts is skipped; with none left the run fails clearly. Rollouts use the naive
//! mode, whose task launches depend only on the rollouts (the seamless mode's launches also depend on
//! completion timing, which differs between runs).
#![cfg(feature = "tch")]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mimo_rl::rl::{run_rl, RlArgs, RlReport};
use mimo_serve::{ServeArgs, Server};
use serde_json::Value;

const KEY: &str = "rl-test-key";

/// The scripted test model (its chat reply is "… 4" when sampling follows the script), 6 problems whose
/// answer is 4, and the run config: at temperature 1.6 a rollout leaves the script often enough that groups
/// hold both right and wrong answers.
fn setup(root: &Path) {
    let tokenizer = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/tokenizer");
    mimo_serve::testing::write_test_model(&root.join("model"), &tokenizer, 256).unwrap();
    let lines: Vec<String> = (0..6)
        .map(|i| {
            format!(r#"{{"id": "p{i}", "question": "What is {i} + 4 - {i}?", "answer": "4"}}"#)
        })
        .collect();
    std::fs::write(root.join("problems.jsonl"), lines.join("\n") + "\n").unwrap();
}

fn args(root: &Path, out: &str, servers: &[String]) -> RlArgs {
    let cfg = format!(
        "seed = 3\nsteps = 3\nmax_num_seqs = 4\nthreads = 1\nmodel = \"{}\"\ndata = \"{}\"\n\
         out = \"{}\"\nremote_timeout_s = 60.0\n\
         [rollout]\nmode = \"naive\"\ngroups = 2\ngroup_size = 4\nmax_tokens = 14\ntemperature = 1.6\n\
         max_tasks_per_step = 12\n[grpo]\nlr = 0.05\nmini_batches = 1\n",
        root.join("model").display(),
        root.join("problems.jsonl").display(),
        root.join(out).display(),
    );
    let mut a = RlArgs::from_toml_str(&cfg).unwrap();
    a.rollout_servers = servers.to_vec();
    a.rollout_api_key = Some(KEY.into());
    a
}

fn rl(root: &Path, out: &str, servers: &[String]) -> mimo_rl::Result<RlReport> {
    run_rl(&args(root, out, servers), |_| {})
}

/// A loopback `mimo serve --enable-weight-updates --api-key KEY --max-num-seqs 4` and its URL.
fn serve(rt: &tokio::runtime::Runtime, model: &Path) -> (Server, String) {
    let server = rt
        .block_on(Server::start(ServeArgs {
            model: model.to_path_buf(),
            port: 0,
            max_num_seqs: 4,
            api_key: Some(KEY.into()),
            enable_weight_updates: true,
            shutdown_grace: Duration::from_millis(100),
            ..Default::default()
        }))
        .unwrap();
    let url = format!("http://{}", server.local_addr());
    (server, url)
}

/// A TCP proxy to `upstream` that cuts every second completion response after 600 bytes (a server lost
/// mid-stream); returns its URL and the count of cut connections.
fn cutting_proxy(upstream: &str) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let upstream = upstream.trim_start_matches("http://").to_string();
    let cuts = Arc::new(AtomicUsize::new(0));
    let counter = Arc::new(AtomicUsize::new(0));
    let c = cuts.clone();
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let (upstream, cuts, counter) = (upstream.clone(), c.clone(), counter.clone());
            std::thread::spawn(move || relay(client, &upstream, &cuts, &counter));
        }
    });
    (url, cuts)
}

fn relay(mut client: TcpStream, upstream: &str, cuts: &AtomicUsize, counter: &AtomicUsize) {
    let Ok(mut server) = TcpStream::connect(upstream) else {
        return;
    };
    let mut head = [0u8; 24];
    let Ok(n) = client.read(&mut head) else {
        return;
    };
    let is_completion = head[..n].starts_with(b"POST /v1/completions");
    let cut = is_completion && counter.fetch_add(1, Ordering::SeqCst).is_multiple_of(2);
    if server.write_all(&head[..n]).is_err() {
        return;
    }
    let (mut c2, mut s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut c2, &mut s2);
    });
    let mut budget = if cut { 600 } else { usize::MAX };
    let mut buf = [0u8; 256];
    while let Ok(n) = server.read(&mut buf) {
        if n == 0 {
            break;
        }
        let n = n.min(budget);
        if client.write_all(&buf[..n]).is_err() {
            break;
        }
        budget -= n;
        if budget == 0 {
            cuts.fetch_add(1, Ordering::SeqCst);
            break;
        }
    }
    let _ = client.shutdown(std::net::Shutdown::Both);
    let _ = server.shutdown(std::net::Shutdown::Both);
}

fn metrics(dir: &Path) -> Vec<Value> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn weights(dir: &Path) -> Vec<(String, Vec<f32>)> {
    let path = dir.join("model/model.safetensors");
    let tensors = candle_core::safetensors::load(&path, &candle_core::Device::Cpu).unwrap();
    let mut out: Vec<(String, Vec<f32>)> = tensors
        .into_iter()
        .map(|(n, t)| (n, t.flatten_all().unwrap().to_vec1::<f32>().unwrap()))
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// The remote run `b` took the in-process run `a`'s steps and ended on its weights. (A GRPO loss before the
/// first mini-batch step is ≈ 0 — ratios are 1 and advantages sum to zero per group — so the gradient norms and
/// the final weights are what tell runs apart; measured here they are bitwise equal.)
fn assert_same_run(a: &Path, b: &Path) {
    let (ma, mb) = (metrics(a), metrics(b));
    assert_eq!(ma.len(), 3);
    assert_eq!(mb.len(), 3);
    for (x, y) in ma.iter().zip(&mb) {
        for key in ["batch_reward", "mean_response_tokens"] {
            assert_eq!(x[key], y[key], "step {}: {key}", x["step"]);
        }
        for key in ["tasks_launched", "tokens_generated"] {
            assert_eq!(
                x["rollout"][key], y["rollout"][key],
                "step {}: {key}",
                x["step"]
            );
        }
        for key in ["loss", "grad_norm"] {
            let (p, q) = (x[key].as_f64().unwrap(), y[key].as_f64().unwrap());
            assert!(
                (p - q).abs() <= 1e-5 * p.abs().max(1e-3),
                "step {}: {key} {p} vs {q}",
                x["step"]
            );
        }
    }
    let (wa, wb) = (weights(a), weights(b));
    assert_eq!(wa.len(), wb.len());
    for ((n, x), (_, y)) in wa.iter().zip(&wb) {
        let d = x
            .iter()
            .zip(y)
            .map(|(p, q)| (p - q).abs())
            .fold(0.0, f32::max);
        assert!(d < 1e-4, "{n}: max |Δ| {d}");
    }
}

#[test]
fn remote_rollouts_equal_in_process_rl_and_survive_lost_servers() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    setup(root);
    rl(root, "local", &[]).unwrap();
    let m = metrics(&root.join("local"));
    assert!(
        m.iter().all(|s| s["loss"].as_f64().unwrap() != 0.0),
        "every step must train on valid groups: {m:?}"
    );

    let rt = tokio::runtime::Runtime::new().unwrap();
    let (s1, url1) = serve(&rt, &root.join("model"));
    let (s2, url2) = serve(&rt, &root.join("model"));
    let report = rl(root, "remote", &[url1.clone(), url2.clone()]).unwrap();
    assert_eq!(report.remote_retries, 0);
    assert_same_run(&root.join("local"), &root.join("remote"));
    // Both servers took requests, and only the latest weights stay on the shared path.
    for s in [&s1, &s2] {
        assert!(s.metrics().generation_tokens.load(Ordering::Relaxed) > 0);
        assert_eq!(s.metrics().weight_version.load(Ordering::Relaxed), 3);
    }
    let versions: Vec<_> = std::fs::read_dir(root.join("remote/weights"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(versions, vec![std::ffi::OsString::from("v3")]);

    // Connections to the second server cut mid-stream: retried, same run.
    let (proxy, cuts) = cutting_proxy(&url2);
    let report = rl(root, "flaky", &[url1.clone(), proxy]).unwrap();
    assert!(cuts.load(Ordering::SeqCst) > 0, "the proxy cut nothing");
    assert!(report.remote_retries > 0);
    assert_same_run(&root.join("local"), &root.join("flaky"));

    // A server that is gone: skipped from the first weight update on, everything runs on the other.
    rt.block_on(s2.shutdown()).unwrap();
    rl(root, "lost", &[url1.clone(), url2.clone()]).unwrap();
    assert_same_run(&root.join("local"), &root.join("lost"));

    // No server left: a clear error, not a hang.
    rt.block_on(s1.shutdown()).unwrap();
    let err = rl(root, "none", &[url1, url2]).unwrap_err().to_string();
    assert!(
        err.contains("no rollout server took weight version 0"),
        "{err}"
    );
}
