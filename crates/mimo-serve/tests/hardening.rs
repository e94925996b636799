//! Hostile clients and broken checkpoints: the server stays healthy, answers with clear errors, and refuses
//! settings that cannot work instead of aborting on an allocation.

mod common;

use std::time::Duration;

use common::*;
use mimo_serve::{ListenLimits, ServeArgs, Server};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn health_ok(addr: std::net::SocketAddr) {
    let r = tokio::time::timeout(
        Duration::from_secs(10),
        http(addr, "GET", "/health", &[], None),
    )
    .await
    .expect("/health did not answer within 10 s");
    assert_eq!(r.status, 200);
}

/// Reads until the server closes the connection (or `limit` passes); returns what arrived.
async fn read_until_closed(s: &mut TcpStream, limit: Duration) -> Option<String> {
    let mut buf = vec![];
    match tokio::time::timeout(limit, s.read_to_end(&mut buf)).await {
        Ok(_) => Some(String::from_utf8_lossy(&buf).to_string()),
        Err(_) => None,
    }
}

fn chat_body(content: &str) -> Value {
    json!({"model": MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": 4})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_requests_time_out_and_the_connection_cap_holds() {
    let s = start(|a| {
        a.limits = ListenLimits {
            max_connections: 40,
            header_read_timeout: Duration::from_secs(3),
        }
    })
    .await;
    let addr = s.addr();
    // 30 clients that never finish their headers, 30 that never send their body.
    let mut held = vec![];
    for i in 0..30 {
        let mut c = TcpStream::connect(addr).await.unwrap();
        let partial = if i % 2 == 0 {
            "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n".to_string()
        } else {
            "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"mo"
                .to_string()
        };
        c.write_all(partial.as_bytes()).await.unwrap();
        held.push((i, c));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    health_ok(addr).await;
    // Over the cap: a clear 503, not a hang.
    let mut extra = vec![];
    for _ in 0..15 {
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        extra.push(c);
    }
    let mut refused = 0;
    for c in &mut extra {
        let mut buf = [0u8; 256];
        if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf)).await {
            if String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 503") {
                refused += 1;
            }
        }
    }
    assert!(
        refused >= 5,
        "only {refused} of 15 connections over the cap got 503"
    );
    drop(extra);
    // Every held connection is closed by the server: header timeout (no answer) or body timeout (408).
    for (i, c) in &mut held {
        let got = read_until_closed(c, Duration::from_secs(10))
            .await
            .unwrap_or_else(|| panic!("half-sent connection {i} still open after 10 s"));
        if *i % 2 == 1 {
            assert!(got.starts_with("HTTP/1.1 408"), "body timeout: {got}");
        }
    }
    drop(held);
    tokio::time::sleep(Duration::from_millis(200)).await;
    health_ok(addr).await;
    let r = post(addr, "/v1/chat/completions", &chat_body("hi")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    s.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_prompts_are_refused_before_tokenizing_and_bodies_are_capped() {
    let s = start(|a| a.max_body_bytes = 4 << 20).await;
    let addr = s.addr();
    let big = "lorem ipsum ".repeat(200_000); // 2.4 MB
    let body = chat_body(&big).to_string();
    let mut clients = vec![];
    for _ in 0..16 {
        let b = body.clone();
        clients.push(tokio::spawn(async move {
            http(addr, "POST", "/v1/chat/completions", &[], Some(&b)).await
        }));
    }
    health_ok(addr).await;
    for c in clients {
        let r = c.await.unwrap();
        assert_eq!(r.status, 400, "{}", r.body);
        let e = r.json();
        assert_eq!(e["error"]["param"], "messages");
        assert!(
            e["error"]["message"].as_str().unwrap().contains("bytes"),
            "{e}"
        );
    }
    let r = post(
        addr,
        "/v1/completions",
        &json!({"model": MODEL, "prompt": big, "max_tokens": 1}),
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.json()["error"]["param"], "prompt");
    let huge = chat_body(&"x".repeat(5 << 20)).to_string();
    let r = http(addr, "POST", "/v1/chat/completions", &[], Some(&huge)).await;
    assert_eq!(r.status, 413, "{}", r.body);
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("exceeds"));
    health_ok(addr).await;
    s.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_looping_chat_template_fails_the_request_not_the_server() {
    let dir = test_model();
    let tc_path = dir.path().join("tokenizer_config.json");
    let mut tc: Value = serde_json::from_str(&std::fs::read_to_string(&tc_path).unwrap()).unwrap();
    tc["chat_template"] = Value::from(
        "{% for i in range(100000) %}{% for j in range(100000) %}{{ '' }}{% endfor %}{% endfor %}",
    );
    std::fs::write(&tc_path, tc.to_string()).unwrap();
    let s = start_in(dir, |_| {}).await;
    let addr = s.addr();
    let req =
        tokio::spawn(async move { post(addr, "/v1/chat/completions", &chat_body("hi")).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    health_ok(addr).await;
    let r = req.await.unwrap();
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("chat template"),
        "{}",
        r.body
    );
    health_ok(addr).await;
    tokio::time::timeout(Duration::from_secs(30), s.server.shutdown())
        .await
        .expect("shutdown hangs")
        .unwrap();
}

async fn start_err(f: impl FnOnce(&mut ServeArgs)) -> String {
    let dir = test_model();
    let mut args = args_for(dir.path());
    f(&mut args);
    match Server::start(args).await {
        Ok(_) => panic!("the server started"),
        Err(e) => {
            assert!(
                e.chain()
                    .any(|c| c.is::<mimo_engine::engine::EngineError>()),
                "{e:#}"
            );
            format!("{e:#}")
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn impossible_settings_are_clear_errors() {
    let e = start_err(|a| a.max_model_len = Some(100_000_000)).await;
    assert!(e.contains("max_position_embeddings 512"), "{e}");
    let e = start_err(|a| a.pool.num_kv_blocks = Some(1 << 40)).await;
    assert!(e.contains("KV blocks need"), "{e}");
    let e = start_err(|a| a.pool.max_num_batched_tokens = 0).await;
    assert!(e.contains("max_num_batched_tokens"), "{e}");
    let e = start_err(|a| a.mtp = 1000).await;
    assert!(e.contains("MTP drafts"), "{e}");
}
