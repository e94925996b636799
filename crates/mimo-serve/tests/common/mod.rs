//! Shared helpers: a scripted test model, a server on loopback, and a minimal HTTP/1.1 client.
#![allow(dead_code)]

use std::path::PathBuf;
use std::time::Duration;

use mimo_serve::{ServeArgs, Server};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub const MODEL: &str = "mimo-test";

pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/tokenizer")
}

/// A running test server and the temp dir of its model.
pub struct TestServer {
    pub server: Server,
    pub dir: tempfile::TempDir,
}

impl TestServer {
    pub fn addr(&self) -> std::net::SocketAddr {
        self.server.local_addr()
    }
}

/// A fresh scripted test model in a temp dir (edit its files before [`start_in`]).
pub fn test_model() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    mimo_serve::testing::write_test_model(dir.path(), &fixtures(), 512).expect("test model");
    dir
}

/// The scripted test model with the Qwen3 chat template (tools in the prompt, Hermes-style tool calls).
pub fn tool_model() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::copy(
        fixtures().join("../templates/Qwen-Qwen3-0.6B.jinja"),
        dir.path().join("chat_template.jinja"),
    )
    .expect("template");
    // Tool definitions make long prompts with the 1000-token fixture vocabulary.
    mimo_serve::testing::write_test_model(dir.path(), &fixtures(), 2048).expect("test model");
    dir
}

/// The test servers' arguments for the model in `dir`.
pub fn args_for(dir: &std::path::Path) -> ServeArgs {
    ServeArgs {
        model: dir.to_path_buf(),
        port: 0,
        served_model_name: Some(MODEL.into()),
        max_num_seqs: 4,
        shutdown_grace: Duration::from_millis(500),
        ..Default::default()
    }
}

/// Starts a server over the model in `dir`; `f` adjusts the arguments.
pub async fn start_in(dir: tempfile::TempDir, f: impl FnOnce(&mut ServeArgs)) -> TestServer {
    let mut args = args_for(dir.path());
    f(&mut args);
    let server = Server::start(args).await.expect("server start");
    TestServer { server, dir }
}

/// Starts a server over a fresh scripted model; `f` adjusts the arguments.
pub async fn start(f: impl FnOnce(&mut ServeArgs)) -> TestServer {
    start_in(test_model(), f).await
}

/// A response: status, lower-cased header block and (de-chunked) body.
pub struct Resp {
    pub status: u16,
    pub headers: String,
    pub body: String,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }

    /// The `data:` payloads of an SSE body.
    pub fn sse(&self) -> Vec<String> {
        self.body
            .split("\n\n")
            .filter_map(|e| e.strip_prefix("data: "))
            .map(str::to_string)
            .collect()
    }
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    loop {
        let Some((len, rest)) = s.split_once("\r\n") else {
            return out;
        };
        let n = usize::from_str_radix(len.trim(), 16).unwrap_or(0);
        if n == 0 {
            return out;
        }
        out.push_str(&rest[..n]);
        s = &rest[n + 2..];
    }
}

/// Opens a connection and sends one request (`Connection: close`).
pub async fn send(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(b) = body {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        ));
    }
    req.push_str("\r\n");
    if let Some(b) = body {
        req.push_str(b);
    }
    // A server that answers before reading a body it refuses (413) may close while the body is still being
    // written: the answer is still there to read.
    if let Err(e) = s.write_all(req.as_bytes()).await {
        use std::io::ErrorKind::{BrokenPipe, ConnectionReset};
        assert!(
            matches!(e.kind(), BrokenPipe | ConnectionReset),
            "write: {e}"
        );
    }
    s
}

/// One full request/response.
pub async fn http(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Resp {
    let mut s = send(addr, method, path, headers, body).await;
    let mut buf = vec![];
    let read = tokio::time::timeout(Duration::from_secs(60), s.read_to_end(&mut buf))
        .await
        .expect("response timed out");
    // A reset after the response (the unread rest of a refused body) loses nothing that was sent.
    if let Err(e) = read {
        assert!(!buf.is_empty(), "read: {e}");
    }
    let text = String::from_utf8_lossy(&buf).to_string();
    let (head, body) = text.split_once("\r\n\r\n").expect("http response");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status");
    let headers = head.to_ascii_lowercase();
    let body = if headers.contains("transfer-encoding: chunked") {
        dechunk(body)
    } else {
        body.to_string()
    };
    Resp {
        status,
        headers,
        body,
    }
}

pub async fn post(addr: std::net::SocketAddr, path: &str, body: &Value) -> Resp {
    http(addr, "POST", path, &[], Some(&body.to_string())).await
}

/// The value of a metric line `name{...} value` (first match).
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name) && !l.starts_with('#'))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("metric {name} missing"))
}
