//! `mimo eval --base-url`: a real `mimo serve` on loopback (the scripted test model, whose reply "The result:
//! 4!" is right for gold 4 and has no code block for code problems), and a flaky endpoint that fails mid-run:
//! finished samples are kept and the same command resumes without requesting them again.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{spawn_serve, Serve};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `mimo serve` on a free loopback port; returns the child and its `/v1` base URL.
fn serve(model: &Path) -> (Serve, String) {
    let (child, addr) = spawn_serve(
        model,
        &["--served-model-name", "scripted", "--max-num-seqs", "4"],
    );
    (child, format!("http://{addr}/v1"))
}

/// `mimo eval --base-url BASE --served-model MODEL --data DATA --k K --samples SAMPLES EXTRA…`.
fn eval_remote(
    base: &str,
    model: &str,
    data: &Path,
    k: usize,
    samples: &Path,
    extra: &[&str],
) -> std::process::Output {
    let k = k.to_string();
    let mut args = vec!["--base-url", base, "--served-model", model];
    args.extend(["--data", data.to_str().unwrap(), "--k", &k]);
    args.extend(["--samples", samples.to_str().unwrap()]);
    args.extend(extra);
    eval(&args)
}

fn eval(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_mimo"))
        .arg("eval")
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn remote_eval_against_mimo_serve_math_and_code() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    mimo_serve::testing::write_test_model(&model, &root().join("fixtures/tokenizer"), 512).unwrap();
    let (_server, base) = serve(&model);
    let math = dir.path().join("math.jsonl");
    std::fs::write(
        &math,
        "{\"question\": \"What is 2+2?\", \"answer\": \"4\", \"id\": \"a\"}\n\
         {\"question\": \"What is 3+3?\", \"answer\": \"6\", \"id\": \"b\"}\n",
    )
    .unwrap();
    let samples = dir.path().join("samples.jsonl");
    let md = dir.path().join("report.md");
    let extra = ["--max-tokens", "64", "--report-md", md.to_str().unwrap()];
    let out = eval_remote(&base, "scripted", &math, 3, &samples, &extra);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (v["problems"].as_u64(), v["k"].as_u64()),
        (Some(2), Some(3))
    );
    // The scripted reply is right for `a` (gold 4) and wrong for `b`.
    assert_eq!(v["per_problem"][0]["correct"], 3, "{v}");
    assert_eq!(v["per_problem"][1]["correct"], 0, "{v}");
    assert!((v["avg_at_k"].as_f64().unwrap() - 0.5).abs() < 1e-9);
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&samples)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 6);
    // Reasoning comes back in a think block in front of the content.
    assert!(
        lines[0]["text"].as_str().unwrap().starts_with("<think>"),
        "{}",
        lines[0]
    );
    let table = std::fs::read_to_string(&md).unwrap();
    assert!(table.contains("| a | 4 | 3 / 3 |"), "{table}");

    // A code set through the sandbox: the scripted reply has no code block, so nothing passes.
    let code = dir.path().join("code.jsonl");
    std::fs::write(
        &code,
        "{\"prompt\": \"Write f(x) returning x.\", \"tests\": [\"assert f(1) == 1\"], \"id\": \"c\"}\n",
    )
    .unwrap();
    let code_samples = dir.path().join("code-samples.jsonl");
    let out = eval_remote(
        &base,
        "scripted",
        &code,
        2,
        &code_samples,
        &["--max-tokens", "64"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (v["per_problem"][0]["n"].as_u64(), v["avg_at_k"].as_f64()),
        (Some(2), Some(0.0))
    );

    // A wrong model name is a clear error, not retried forever.
    let out = eval_remote(&base, "nope", &math, 1, &dir.path().join("x.jsonl"), &[]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("404"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An endpoint that answers `good` requests and then fails with 503 until `healthy` is set; with `stall`, its
/// first request is answered only after 3 s (a request timeout).
fn flaky_endpoint(
    good: usize,
    healthy: Arc<AtomicBool>,
    served: Arc<AtomicUsize>,
    stall: bool,
) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let mut buf = vec![0u8; 65536];
            let mut got = 0;
            // Read headers and the body (Content-Length).
            loop {
                let n = s.read(&mut buf[got..]).unwrap_or(0);
                if n == 0 {
                    break;
                }
                got += n;
                let text = String::from_utf8_lossy(&buf[..got]).to_string();
                if let Some(h) = text.find("\r\n\r\n") {
                    let len = text[..h]
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                        })
                        .unwrap_or(0);
                    if got >= h + 4 + len {
                        break;
                    }
                }
            }
            let n = served.fetch_add(1, Ordering::SeqCst);
            if stall && n == 0 {
                std::thread::sleep(std::time::Duration::from_secs(3));
            }
            let (status, body) = if n < good || healthy.load(Ordering::SeqCst) {
                let b = serde_json::json!({"choices": [{"message": {"role": "assistant",
                    "content": "So the answer is \\boxed{4}."}}], "usage": {"completion_tokens": 7}});
                ("200 OK", b.to_string())
            } else {
                (
                    "503 Service Unavailable",
                    "{\"error\": {\"message\": \"overloaded\"}}".to_string(),
                )
            };
            let _ = write!(
                s,
                "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    format!("http://{addr}/v1")
}

#[test]
fn remote_eval_keeps_finished_samples_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("set.jsonl");
    let mut set = String::new();
    for i in 0..4 {
        set.push_str(&format!(
            "{{\"question\": \"q{i}\", \"answer\": \"4\", \"id\": \"p{i}\"}}\n"
        ));
    }
    std::fs::write(&data, set).unwrap();
    let healthy = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicUsize::new(0));
    let base = flaky_endpoint(3, healthy.clone(), served.clone(), false);
    let samples = dir.path().join("samples.jsonl");
    let extra = ["--concurrency", "1", "--retries", "1"];
    let run = || eval_remote(&base, "m", &data, 2, &samples, &extra);
    let out = run();
    assert!(
        !out.status.success(),
        "the failing endpoint must fail the run"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("503") && err.contains("resume"), "{err}");
    let kept = std::fs::read_to_string(&samples).unwrap().lines().count();
    assert_eq!(kept, 3, "the samples finished before the failure are kept");

    healthy.store(true, Ordering::SeqCst);
    let before = served.load(Ordering::SeqCst);
    let out = run();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["avg_at_k"].as_f64(), Some(1.0), "{v}");
    assert_eq!(
        served.load(Ordering::SeqCst) - before,
        8 - 3,
        "only the missing samples are requested"
    );
    assert_eq!(
        std::fs::read_to_string(&samples).unwrap().lines().count(),
        8
    );
}

#[test]
fn remote_eval_retries_a_request_that_times_out() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("set.jsonl");
    std::fs::write(
        &data,
        "{\"question\": \"q\", \"answer\": \"4\", \"id\": \"p\"}\n",
    )
    .unwrap();
    let served = Arc::new(AtomicUsize::new(0));
    let base = flaky_endpoint(
        usize::MAX,
        Arc::new(AtomicBool::new(true)),
        served.clone(),
        true,
    );
    let samples = dir.path().join("samples.jsonl");
    let extra = [
        "--concurrency",
        "1",
        "--retries",
        "2",
        "--request-timeout-s",
        "1",
    ];
    let out = eval_remote(&base, "m", &data, 2, &samples, &extra);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["avg_at_k"].as_f64(), Some(1.0), "{v}");
    // The stalled first request timed out and was sent again (the one-connection-at-a-time endpoint may let a
    // retry time out too while it stalls): more requests than samples.
    assert!(
        served.load(Ordering::SeqCst) >= 3,
        "{}",
        served.load(Ordering::SeqCst)
    );
}
