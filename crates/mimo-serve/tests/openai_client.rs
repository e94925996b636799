//! The real server driven by the official `openai` Python package (tools/serve/openai_smoke.py).
//! Skipped with a message when the project venv (or `openai` in it) is missing, unless `CI` is set.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::*;
use mimo_serve::testing::{SCRIPTED_CONTENT, SCRIPTED_REASONING};

fn python() -> Option<PathBuf> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let p = std::env::var_os("MIMO_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::env::var_os("MIMO_VENV")
                .map(PathBuf::from)
                .unwrap_or_else(|| root.join(".venv"))
                .join("bin/python")
        });
    let ok = Command::new(&p)
        .args(["-c", "import openai"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    ok.then_some(p)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_python_client() {
    let Some(py) = python() else {
        if std::env::var_os("CI").is_some() {
            panic!("CI is set but the Python venv with `openai` is missing (run tools/setup-python.sh)");
        }
        eprintln!("SKIPPED openai_python_client: no Python venv with `openai` (run tools/setup-python.sh)");
        return;
    };
    let s = start(|a| a.api_key = Some("test-key".into())).await;
    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tools/serve/openai_smoke.py");
    let base = format!("http://{}/v1", s.addr());
    let out = tokio::task::spawn_blocking(move || {
        Command::new(py)
            .arg(script)
            .args([
                "--base-url",
                &base,
                "--api-key",
                "test-key",
                "--model",
                MODEL,
            ])
            .args([
                "--reasoning",
                SCRIPTED_REASONING,
                "--content",
                SCRIPTED_CONTENT,
            ])
            .output()
    })
    .await
    .unwrap()
    .expect("running python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "openai_smoke.py failed:\n{stdout}\n{stderr}"
    );
    eprintln!("{stdout}");
    s.server.shutdown().await.unwrap();
}
