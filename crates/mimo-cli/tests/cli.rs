//! The `mimo` binary end to end: stable JSON interfaces and exit codes.

mod common;

use std::path::PathBuf;
use std::process::{Command, Output};

fn mimo(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mimo"))
        .args(args)
        .output()
        .unwrap()
}

fn fixture(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures")
        .join(name)
        .display()
        .to_string()
}

#[test]
fn forward_prints_logits_and_mtp_rows() {
    let out = mimo(&[
        "forward",
        "--model",
        &fixture("mimo-untied"),
        "--ids",
        "3,14,15,92",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let logits = v["logits"].as_array().unwrap();
    assert_eq!(logits.len(), 4);
    assert_eq!(logits[0].as_array().unwrap().len(), 397);
    let mtp = v["mtp_logits"].as_array().unwrap();
    assert_eq!(mtp.len(), 2);
    assert_eq!(mtp[0].as_array().unwrap().len(), 3, "n-1-k rows for k=0");
    assert_eq!(mtp[1].as_array().unwrap().len(), 2, "n-1-k rows for k=1");

    let bf16 = mimo(&[
        "forward",
        "--model",
        &fixture("mimo-untied"),
        "--ids",
        "3,14",
        "--dtype",
        "bf16",
    ]);
    assert!(bf16.status.success());
}

#[test]
fn inspect_reports_counts_and_unused() {
    let out = mimo(&[
        "inspect",
        "--model",
        &fixture("mimo-tied-sharded-bf16"),
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["model_type"], "mimo");
    assert_eq!(v["num_nextn_predict_layers"], 3);
    assert_eq!(v["params_main"], 73104);
    assert!(v["params_mtp"].as_u64().unwrap() > 0);
    assert_eq!(v["stored_dtypes"]["bf16"], 86);
    assert!(v["unused_tensors"].as_array().unwrap().is_empty());
    assert!(v["problems"].as_array().unwrap().is_empty());
    let text = mimo(&["inspect", "--model", &fixture("llama-tied")]);
    let text = String::from_utf8(text.stdout).unwrap();
    assert!(text.contains("llama") && text.contains("35,392"), "{text}");
}

#[test]
fn bad_input_exits_with_2_and_names_the_problem() {
    let out = mimo(&[
        "forward",
        "--model",
        &fixture("mimo-untied"),
        "--ids",
        "1,x",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("\"x\""));
    let out = mimo(&[
        "forward",
        "--model",
        &fixture("mimo-untied"),
        "--ids",
        "1,397",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("397"));
    let out = mimo(&["forward", "--model", "/nonexistent", "--ids", "1"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/config.json"));
    let out = mimo(&["inspect"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn reward_math_jsonl_keeps_order_and_flags_bad_lines() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    std::fs::write(
        &input,
        "{\"gold\": \"\\\\frac{1}{2}\", \"pred\": \"thus \\\\boxed{0.5}\"}\nnot json\n{\"gold\": \"3\", \"pred\": \"x = 4\"}\n",
    )
    .unwrap();
    let out = mimo(&["reward", "math", "--input", input.to_str().unwrap()]);
    assert!(out.status.success());
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0]["correct"], true);
    assert!(lines[1]["error"].as_str().unwrap().contains("line 2"));
    assert_eq!(lines[2]["correct"], false);
}

#[test]
fn generate_json_matches_transformers_greedy_with_and_without_mtp() {
    let dir = fixture("mimo-untied");
    let refs = candle_core::safetensors::load(
        PathBuf::from(&dir).join("reference.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let ids: Vec<i64> = refs["ids"].to_vec1().unwrap();
    let greedy: Vec<i64> = refs["greedy_ids"].to_vec1().unwrap();
    let prompt = ids[..5]
        .iter()
        .map(i64::to_string)
        .collect::<Vec<_>>()
        .join(",");
    for mtp in ["0", "1", "3"] {
        let out = mimo(&[
            "generate",
            "--model",
            &dir,
            "--prompt-ids",
            &prompt,
            "--max-tokens",
            "24",
            "--mtp",
            mtp,
            "--json",
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let got: Vec<i64> = v["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_i64().unwrap())
            .collect();
        assert_eq!(got, greedy, "--mtp {mtp}");
        assert_eq!(v["prompt_tokens"], 5);
        assert_eq!(v["completion_tokens"], 24);
        assert_eq!(v["finish_reason"], "length");
        if mtp != "0" {
            assert!(v["mtp"]["drafted"].as_u64().unwrap() > 0);
        }
    }
    let bad = mimo(&[
        "generate",
        "--model",
        &dir,
        "--prompt-ids",
        "1,2",
        "--max-tokens",
        "100000",
    ]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("context length"));
    let bad = mimo(&["generate", "--model", &dir, "--prompt", "hi"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("tokenizer.json"));
}

#[test]
fn data_extract_keeps_math_and_code() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("pages.jsonl");
    let html = r#"<html><body><nav>Home | About</nav><article><p>Euler: <script type=\"math/tex\">e^{i\\pi}+1=0</script> holds.</p><pre><code>def f(x):\n    return x + 1</code></pre></article></body></html>"#;
    std::fs::write(
        &input,
        format!("{{\"url\": \"http://a/1\", \"html\": \"{html}\"}}\nnot json\n"),
    )
    .unwrap();
    let output = dir.path().join("out.jsonl");
    let out = mimo(&[
        "data",
        "extract",
        "--input",
        input.to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
        "--quiet",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&output).unwrap();
    let first: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    let t = first["text"].as_str().unwrap();
    assert!(t.contains("$e^{i\\pi}+1=0$"), "{t}");
    assert!(t.contains("    return x + 1"), "{t}");
}

fn serve_model() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    mimo_serve::testing::write_test_model(dir.path(), &PathBuf::from(fixture("tokenizer")), 512)
        .unwrap();
    dir
}

#[test]
fn serve_refuses_impossible_settings_with_exit_2() {
    let dir = serve_model();
    let model = dir.path().display().to_string();
    for (flag, value, says) in [
        ("--max-model-len", "100000000", "max_position_embeddings"),
        ("--num-kv-blocks", "1000000000000", "KV blocks need"),
        ("--max-num-batched-tokens", "0", "max_num_batched_tokens"),
        ("--mtp", "100", "MTP drafts"),
        ("--read-timeout-s", "0", "--read-timeout-s"),
    ] {
        let out = mimo(&["serve", "--model", &model, "--port", "0", flag, value]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flag} {value}: {err}");
        assert!(err.contains(says), "{flag} {value}: {err}");
    }
    let gc = dir.path().join("generation_config.json");
    std::fs::write(&gc, r#"{"temperature": -3}"#).unwrap();
    let out = mimo(&["serve", "--model", &model, "--port", "0"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("generation_config.json") && err.contains("temperature"),
        "{err}"
    );
}

/// SIGTERM while a checkpoint's chat template loops: the request fails, the server exits, nothing hangs.
#[test]
fn serve_exits_on_sigterm_while_a_template_loops() {
    use std::io::{Read, Write};
    let dir = serve_model();
    let tc_path = dir.path().join("tokenizer_config.json");
    let mut tc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&tc_path).unwrap()).unwrap();
    tc["chat_template"] = serde_json::Value::from(
        "{% for i in range(100000) %}{% for j in range(100000) %}{{ '' }}{% endfor %}{% endfor %}",
    );
    std::fs::write(&tc_path, tc.to_string()).unwrap();
    let (mut serve, addr) = common::spawn_serve(dir.path(), &[]);
    let child = &mut serve.0;
    let mut conn = std::net::TcpStream::connect(&addr).unwrap();
    let body = r#"{"messages": [{"role": "user", "content": "hi"}]}"#;
    write!(
        conn,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > std::time::Duration::from_secs(60) {
            let _ = child.kill();
            panic!("mimo serve still running 60 s after SIGTERM");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert!(status.success(), "{status:?}");
    let mut reply = String::new();
    let _ = conn.read_to_string(&mut reply);
    assert!(
        reply.is_empty() || reply.contains("chat template"),
        "{reply}"
    );
}
