//! Throughput benchmark: math cases/s on tools/reward/math_cases.jsonl and sandbox runs/s for a trivial
//! Python program. Prints one JSON object. Compare the math figure with tools/reward/bench_math_verify.py.
//!
//! `cargo run --release -p mimo-reward --example reward_bench [REPEATS] [SANDBOX_RUNS]`

use mimo_reward::math::verify;
use mimo_reward::sandbox::{run_many, run_program, Language, SandboxConfig, Status};
use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let reps: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(200);
    let runs: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(50);
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tools/reward/math_cases.jsonl"
    );
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let cases: Vec<(String, String)> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|v| {
            (
                v["gold"].as_str().unwrap_or("").to_string(),
                v["pred"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    let correct: Vec<bool> = cases
        .iter()
        .map(|(g, p)| verify(g, p, Duration::from_secs(5)).correct)
        .collect();
    let t = Instant::now();
    for _ in 0..reps {
        for (g, p) in &cases {
            std::hint::black_box(verify(g, p, Duration::from_secs(5)));
        }
    }
    let math_s = t.elapsed().as_secs_f64();
    let n = reps * cases.len();

    let cfg = SandboxConfig::default();
    let idx: Vec<usize> = (0..runs).collect();
    let t = Instant::now();
    let ok = run_many(&idx, &cfg, |_| {
        run_program(Language::Python, "print(1)", b"", &cfg).status == Status::Ok
    })
    .into_iter()
    .filter(|&b| b)
    .count();
    let sb_s = t.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({
            "impl": "mimo-reward (single thread for math)",
            "math_cases": n,
            "math_seconds": math_s,
            "math_cases_per_s": n as f64 / math_s,
            "correct": correct,
            "sandbox_runs": runs,
            "sandbox_ok": ok,
            "sandbox_concurrency": cfg.concurrency,
            "sandbox_runs_per_s": runs as f64 / sb_s,
        })
    );
}
