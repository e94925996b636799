//! Extraction and MinHash throughput on real HTML (one core).
//!
//! `cargo run --release -p mimo-data --example bench -- DIR [--jsonl OUT.jsonl] [--limit N]`
//! reads every `*.html` under DIR (sorted), optionally writes them as `{"url","html"}` JSONL (the input
//! `tools/data/bench_trafilatura.py` times), and prints JSON with docs/s and words/s per core.

use mimo_data::{extract, ExtractArgs, MinHashParams, MinHasher};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::Instant;

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        match std::fs::metadata(&p) {
            Ok(m) if m.is_dir() => walk(&p, out),
            Ok(_) if p.extension().is_some_and(|x| x == "html") => out.push(p),
            _ => {}
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(dir) = args.first() else {
        eprintln!("usage: bench DIR [--jsonl OUT] [--limit N]");
        std::process::exit(2);
    };
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let limit: usize = flag("--limit")
        .and_then(|s| s.parse().ok())
        .unwrap_or(usize::MAX);
    let mut files = Vec::new();
    walk(Path::new(dir), &mut files);
    files.sort();
    files.truncate(limit);
    let tmp = std::env::temp_dir().join(format!("mimo-bench-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).expect("temp dir");
    let jsonl = flag("--jsonl")
        .map(PathBuf::from)
        .unwrap_or_else(|| tmp.join("pages.jsonl"));
    let mut body = String::new();
    let mut bytes = 0usize;
    for f in &files {
        let raw = std::fs::read(f).unwrap_or_default();
        bytes += raw.len();
        let html = String::from_utf8_lossy(&raw);
        body.push_str(&json!({"url": f.display().to_string(), "html": html}).to_string());
        body.push('\n');
    }
    std::fs::write(&jsonl, body).expect("write jsonl");

    // End to end through the stage (JSONL in/out, one thread).
    let out = tmp.join("out.jsonl");
    let t = Instant::now();
    let r = extract(&ExtractArgs {
        inputs: vec![jsonl.clone()],
        output: out.clone(),
        threads: 1,
        force: true,
        ..Default::default()
    })
    .expect("extract");
    let stage_s = t.elapsed().as_secs_f64();

    // MinHash over the extracted texts (one thread).
    let texts: Vec<String> = std::fs::read_to_string(&out)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["text"].as_str().map(str::to_string))
        .collect();
    let mh = MinHasher::new(MinHashParams::default());
    let t = Instant::now();
    let mut words = 0usize;
    let mut keys = 0u64;
    for _ in 0..3 {
        for tx in &texts {
            if let Some((sig, n)) = mh.signature(tx) {
                words += n;
                keys = keys.wrapping_add(mh.band_keys(&sig)[0]);
            }
        }
    }
    let mh_s = t.elapsed().as_secs_f64();
    let text_chars: usize = texts.iter().map(|t| t.len()).sum();
    println!(
        "{}",
        serde_json::to_string_pretty(&json!({
            "pages": files.len(),
            "html_mb": bytes as f64 / 1e6,
            "extract": {
                "docs_ok": r.docs_out,
                "errors": r.docs_excluded,
                "seconds": stage_s,
                "docs_per_s_per_core": files.len() as f64 / stage_s,
                "mb_per_s_per_core": bytes as f64 / 1e6 / stage_s,
                "text_mb": text_chars as f64 / 1e6,
            },
            "minhash": {
                "words": words,
                "seconds": mh_s,
                "words_per_s_per_core": words as f64 / mh_s,
                "checksum": keys,
            },
            "jsonl": jsonl.display().to_string(),
            "output": out.display().to_string(),
        }))
        .unwrap_or_default()
    );
}
