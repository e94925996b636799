//! The real server driven by the official `openai` Python package (tools/serve/openai_smoke.py, and
//! tools/serve/openai_tools.py for tool calling and structured outputs, plain and with MTP).
//! Skipped with a message when the project venv (or `openai` in it) is missing, unless `CI` is set.

mod common;

use std::path::{Path, PathBuf};
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

/// The venv's Python, or `None` after saying why `test` is skipped (under `CI` a missing venv fails).
fn python_or_skip(test: &str) -> Option<PathBuf> {
    let py = python();
    if py.is_none() {
        if std::env::var_os("CI").is_some() {
            panic!("CI is set but the Python venv with `openai` is missing (run tools/setup-python.sh)");
        }
        eprintln!("SKIPPED {test}: no Python venv with `openai` (run tools/setup-python.sh)");
    }
    py
}

/// Runs `tools/serve/SCRIPT` against `s` (API key `test-key`, model `MODEL`) with `extra` arguments; its
/// stdout, or a failure with both streams.
async fn run_script(py: &Path, script: &str, s: &TestServer, extra: &[&str]) -> String {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tools/serve")
        .join(script);
    let base = format!("http://{}/v1", s.addr());
    let mut cmd = Command::new(py);
    cmd.arg(&script)
        .args([
            "--base-url",
            &base,
            "--api-key",
            "test-key",
            "--model",
            MODEL,
        ])
        .args(extra);
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .expect("running python");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{} failed:\n{stdout}\n{stderr}",
        script.display()
    );
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_python_client() {
    let Some(py) = python_or_skip("openai_python_client") else {
        return;
    };
    let s = start(|a| a.api_key = Some("test-key".into())).await;
    let extra = [
        "--reasoning",
        SCRIPTED_REASONING,
        "--content",
        SCRIPTED_CONTENT,
    ];
    eprintln!("{}", run_script(&py, "openai_smoke.py", &s, &extra).await);
    s.server.shutdown().await.unwrap();
}

/// Tool calls (auto, named, required, streaming), json_schema, json_object, regex and choice outputs on the
/// scripted model with the Qwen3 template, with and without MTP drafts (which the grammar must check and roll
/// back).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_python_client_tools_and_structured_outputs() {
    let Some(py) = python_or_skip("openai_python_client_tools_and_structured_outputs") else {
        return;
    };
    for mtp in [0, 1] {
        let s = start_in(tool_model(), |a| {
            a.api_key = Some("test-key".into());
            a.mtp = mtp;
        })
        .await;
        let out = run_script(&py, "openai_tools.py", &s, &["--content", SCRIPTED_CONTENT]).await;
        eprintln!("--mtp {mtp}: {out}");
        let metrics = http(s.addr(), "GET", "/metrics", &[], None).await.body;
        assert!(metrics.contains("mimo_structured_masks_total"), "{metrics}");
        if mtp > 0 {
            let drafted = metric(&metrics, "mimo_mtp_draft_tokens_total");
            assert!(drafted > 0.0, "MTP drafted nothing:\n{metrics}");
        }
        s.server.shutdown().await.unwrap();
    }
}
