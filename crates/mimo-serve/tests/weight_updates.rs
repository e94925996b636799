//! `--enable-weight-updates`: `POST /v1/weights` installs new weights from a path (API key required), the
//! version shows in `/v1/models`, `/metrics` and responses, a request in flight finishes on the old weights
//! unmixed, and the updated server generates exactly what a server started on the new weights does.
//! Also `return_token_ids` (token ids and sampled log-probs per choice, EOS included).

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const KEY: &str = "sekrit";

/// A copy of the scripted model in `dir` with its `lm_head` negated: other greedy text from the same prompts.
fn flipped_model(from: &std::path::Path) -> tempfile::TempDir {
    use candle_core::Device;
    let dir = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dir.path().join(e.file_name())).unwrap();
    }
    let path = dir.path().join("model.safetensors");
    let mut tensors = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    let head = tensors["lm_head.weight"].neg().unwrap();
    tensors.insert("lm_head.weight".into(), head);
    candle_core::safetensors::save(&tensors, &path).unwrap();
    dir
}

async fn authed(addr: std::net::SocketAddr, path: &str, body: &Value) -> Resp {
    let auth = format!("Bearer {KEY}");
    http(
        addr,
        "POST",
        path,
        &[("Authorization", &auth)],
        Some(&body.to_string()),
    )
    .await
}

/// Token ids, sampled log-probs and weight version of a one-choice completion.
fn ids(v: &Value) -> (Vec<u64>, usize, u64) {
    let c = &v["choices"][0];
    let ids: Vec<u64> = c["token_ids"]
        .as_array()
        .unwrap_or_else(|| panic!("no token_ids: {v}"))
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect();
    let lps = c["token_logprobs"].as_array().map_or(0, Vec::len);
    (ids, lps, v["weight_version"].as_u64().unwrap())
}

fn request(prompt: &str, max_tokens: usize, ignore_eos: bool) -> Value {
    json!({"model": MODEL, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0.8, "seed": 3,
           "logprobs": 0, "return_token_ids": true, "ignore_eos": ignore_eos})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weight_updates_swap_between_sequences_never_inside_one() {
    let a = test_model();
    let b = flipped_model(a.path());
    let s = start_in(a, |x| {
        x.api_key = Some(KEY.into());
        x.enable_weight_updates = true;
    })
    .await;
    let addr = s.addr();
    let short = request("Hello there", 8, false);
    let long = request("Once upon", 300, true);

    let r = authed(addr, "/v1/completions", &short).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let (ids_a, lps, v0) = ids(&r.json());
    assert_eq!((lps, v0), (ids_a.len(), 0));
    let (long_a, _, _) = ids(&authed(addr, "/v1/completions", &long).await.json());
    assert_eq!(long_a.len(), 300);

    // Without the key: 401. A bad path or body: 400 naming the problem; the served weights stay.
    let upd = json!({"path": b.path(), "version": 7});
    let r = post(addr, "/v1/weights", &upd).await;
    assert_eq!(r.status, 401);
    let r = authed(
        addr,
        "/v1/weights",
        &json!({"path": "/nonexistent/ckpt", "version": 1}),
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("/nonexistent/ckpt"));
    let r = authed(addr, "/v1/weights", &json!({"path": b.path()})).await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(
        ids(&authed(addr, "/v1/completions", &short).await.json()).0,
        ids_a
    );

    // An update while a long request runs: it finishes on the old weights; the update answers after it; a
    // request sent meanwhile runs on the new weights.
    let in_flight = tokio::spawn(async move { authed(addr, "/v1/completions", &long).await });
    for _ in 0..400 {
        let m = http(addr, "GET", "/metrics", &[], None).await.body;
        if metric(&m, "mimo_num_requests_running") > 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let update = tokio::spawn(async move { authed(addr, "/v1/weights", &upd).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let during = tokio::spawn(async move { authed(addr, "/v1/completions", &short).await });
    let r = in_flight.await.unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    let (long_again, _, v) = ids(&r.json());
    assert_eq!((long_again, v), (long_a, 0));
    let r = update.await.unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["weight_version"], 7);
    let (ids_b, _, v) = ids(&during.await.unwrap().json());
    assert_eq!(v, 7);
    assert_ne!(ids_b, ids_a);

    let auth = format!("Bearer {KEY}");
    let models = http(addr, "GET", "/v1/models", &[("Authorization", &auth)], None)
        .await
        .json();
    assert_eq!(models["data"][0]["weight_version"], 7);
    let m = http(addr, "GET", "/metrics", &[], None).await.body;
    assert_eq!(metric(&m, "mimo_weight_version"), 7.0);
    assert_eq!(metric(&m, "mimo_weight_updates_total"), 1.0);

    // A server started on the new weights generates the same tokens; without the flag it refuses updates.
    let fresh = start_in(b, |_| {}).await;
    let r = post(
        fresh.addr(),
        "/v1/completions",
        &request("Hello there", 8, false),
    )
    .await;
    assert_eq!(ids(&r.json()).0, ids_b);
    let r = post(
        fresh.addr(),
        "/v1/weights",
        &json!({"path": "/x", "version": 1}),
    )
    .await;
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["error"]["code"], "weight_updates_disabled");
    fresh.server.shutdown().await.unwrap();
    s.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_token_ids_match_the_plain_response() {
    let s = start(|_| {}).await;
    let addr = s.addr();
    let mut body = request("Hello there", 12, false);
    let plain = post(addr, "/v1/completions", &body).await.json();
    body["stream"] = json!(true);
    let events = post(addr, "/v1/completions", &body).await.sse();
    let (mut streamed, mut lps) = (vec![], 0);
    for e in events.iter().filter(|e| *e != "[DONE]") {
        let v: Value = serde_json::from_str(e).unwrap();
        assert_eq!(v["weight_version"], 0);
        let c = &v["choices"][0];
        streamed.extend(
            c["token_ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap()),
        );
        lps += c["token_logprobs"].as_array().unwrap().len();
    }
    let (ids_plain, n_lps, _) = ids(&plain);
    assert_eq!(streamed, ids_plain);
    assert_eq!(lps, n_lps);
    // The scripted chat reply ends with EOS, which token_ids keep (the text does not).
    let chat = json!({"model": MODEL, "messages": [{"role": "user", "content": "2+2?"}], "temperature": 0,
                      "return_token_ids": true});
    let v = post(addr, "/v1/chat/completions", &chat).await.json();
    let ids: Vec<u64> = v["choices"][0]["token_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect();
    assert_eq!(
        ids.len() as u64,
        v["usage"]["completion_tokens"].as_u64().unwrap()
    );
    assert!(v["choices"][0].get("token_logprobs").is_none());
    s.server.shutdown().await.unwrap();
}
