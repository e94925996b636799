//! The server over loopback with a raw HTTP client: OpenAI semantics, errors, auth, queueing,
//! disconnects, metrics and shutdown.

mod common;

use std::time::Duration;

use common::*;
use mimo_serve::testing::{SCRIPTED_CONTENT, SCRIPTED_REASONING};
use serde_json::{json, Value};
use tokio::io::AsyncReadExt;

fn chat(extra: Value) -> Value {
    let mut body = json!({
        "model": MODEL,
        "messages": [{"role": "user", "content": "What is 2+2?"}],
        "temperature": 0,
    });
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            b.insert(k.clone(), v.clone());
        }
    }
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_models_and_scripted_chat() {
    let s = start(|_| {}).await;
    let r = http(s.addr(), "GET", "/health", &[], None).await;
    assert_eq!(r.status, 200);
    let r = http(s.addr(), "GET", "/v1/models", &[], None).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["data"][0]["id"], MODEL);

    let r = post(s.addr(), "/v1/chat/completions", &chat(json!({}))).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(v["object"], "chat.completion");
    let c = &v["choices"][0];
    assert_eq!(c["message"]["role"], "assistant");
    assert_eq!(c["message"]["content"], SCRIPTED_CONTENT);
    assert_eq!(c["message"]["reasoning_content"], SCRIPTED_REASONING);
    assert_eq!(c["finish_reason"], "stop");
    assert!(v["usage"]["prompt_tokens"].as_u64().unwrap() > 0);
    let ct = v["usage"]["completion_tokens"].as_u64().unwrap();
    assert!(ct >= 10, "{ct}");
    assert_eq!(
        v["usage"]["total_tokens"].as_u64().unwrap(),
        v["usage"]["prompt_tokens"].as_u64().unwrap() + ct
    );

    // max_tokens → length.
    let r = post(
        s.addr(),
        "/v1/chat/completions",
        &chat(json!({"max_tokens": 3})),
    )
    .await;
    let v = r.json();
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert_eq!(v["usage"]["completion_tokens"], 3);
    // max_completion_tokens wins over max_tokens.
    let body = chat(json!({"max_tokens": 50, "max_completion_tokens": 2}));
    let v = post(s.addr(), "/v1/chat/completions", &body).await.json();
    assert_eq!(v["usage"]["completion_tokens"], 2);

    // Stop strings cut the output; the stop string is not included.
    let body = chat(json!({"stop": ["result"]}));
    let v = post(s.addr(), "/v1/chat/completions", &body).await.json();
    assert_eq!(v["choices"][0]["message"]["content"], "The ");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");

    s.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn n_logprobs_and_seed() {
    let s = start(|_| {}).await;
    let body =
        chat(json!({"n": 2, "logprobs": true, "top_logprobs": 2, "temperature": 0.7, "seed": 5}));
    let r = post(s.addr(), "/v1/chat/completions", &body).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    let choices = v["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 2);
    for (i, c) in choices.iter().enumerate() {
        assert_eq!(c["index"], i);
        let lp = c["logprobs"]["content"].as_array().unwrap();
        assert!(!lp.is_empty());
        for e in lp {
            assert!(e["logprob"].as_f64().unwrap() <= 0.0);
            assert_eq!(e["top_logprobs"].as_array().unwrap().len(), 2);
            assert!(e["token"].is_string());
        }
    }
    // Same seed, same output.
    let again = post(s.addr(), "/v1/chat/completions", &body).await.json();
    assert_eq!(
        again["choices"][1]["message"]["content"],
        v["choices"][1]["message"]["content"]
    );

    // Text completions: a prompt that does not trigger the script gives sampled text.
    let body = json!({"model": MODEL, "prompt": "Hello", "max_tokens": 5, "seed": 1, "logprobs": 1,
                      "temperature": 1.0, "presence_penalty": 0.5, "frequency_penalty": 0.5, "top_p": 0.9});
    let r = post(s.addr(), "/v1/completions", &body).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(v["object"], "text_completion");
    let c = &v["choices"][0];
    assert!(c["text"].is_string());
    let n = v["usage"]["completion_tokens"].as_u64().unwrap();
    assert!((1..=5).contains(&n));
    assert!(c["logprobs"]["tokens"].as_array().unwrap().len() <= 5);
    s.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_chat_with_reasoning_and_usage() {
    let s = start(|_| {}).await;
    let body = chat(json!({"stream": true, "stream_options": {"include_usage": true}}));
    let r = post(s.addr(), "/v1/chat/completions", &body).await;
    assert_eq!(r.status, 200);
    assert!(r.headers.contains("content-type: text/event-stream"));
    let events = r.sse();
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let (mut reasoning, mut content, mut finish) = (String::new(), String::new(), None);
    let mut usage = None;
    for e in &events[..events.len() - 1] {
        let v: Value = serde_json::from_str(e).unwrap();
        assert_eq!(v["object"], "chat.completion.chunk");
        if let Some(c) = v["choices"].as_array().and_then(|c| c.first()) {
            reasoning += c["delta"]["reasoning_content"].as_str().unwrap_or("");
            content += c["delta"]["content"].as_str().unwrap_or("");
            if let Some(f) = c["finish_reason"].as_str() {
                finish = Some(f.to_string());
            }
        } else {
            usage = Some(v["usage"].clone());
        }
    }
    assert_eq!(reasoning, SCRIPTED_REASONING);
    assert_eq!(content, SCRIPTED_CONTENT);
    assert_eq!(finish.as_deref(), Some("stop"));
    let usage = usage.expect("usage chunk");
    assert!(usage["completion_tokens"].as_u64().unwrap() > 0);

    // Streaming text completion, n=2: both choices finish.
    let body = json!({"model": MODEL, "prompt": "Hi", "max_tokens": 4, "n": 2, "stream": true});
    let r = post(s.addr(), "/v1/completions", &body).await;
    let events = r.sse();
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let finished: Vec<u64> = events[..events.len() - 1]
        .iter()
        .filter_map(|e| {
            let v: Value = serde_json::from_str(e).ok()?;
            let c = v["choices"].get(0)?;
            c["finish_reason"]
                .as_str()
                .map(|_| c["index"].as_u64().unwrap())
        })
        .collect();
    let mut f = finished.clone();
    f.sort();
    assert_eq!(f, vec![0, 1]);
    s.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thinking_budget_closes_the_block() {
    let s = start(|_| {}).await;
    let body = chat(json!({"max_thinking_tokens": 1}));
    let r = post(s.addr(), "/v1/chat/completions", &body).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    let m = &v["choices"][0]["message"];
    // `<think>`, one reasoning token, then the forced `</think>`; the script goes on from there.
    assert_eq!(m["reasoning_content"], "C");
    assert_eq!(m["content"], SCRIPTED_CONTENT);
    // Streaming too.
    let body = chat(json!({"max_thinking_tokens": 2, "stream": true}));
    let r = post(s.addr(), "/v1/chat/completions", &body).await;
    let mut reasoning = String::new();
    for e in r.sse() {
        if let Ok(v) = serde_json::from_str::<Value>(&e) {
            reasoning += v["choices"][0]["delta"]["reasoning_content"]
                .as_str()
                .unwrap_or("");
        }
    }
    assert_eq!(reasoning, "Check");
    s.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_400_with_openai_errors() {
    let s = start(|a| a.max_model_len = Some(64)).await;
    let addr = s.addr();
    let check = |r: Resp, needle: &str| {
        assert_eq!(r.status, 400, "{}", r.body);
        let v = r.json();
        let msg = v["error"]["message"].as_str().unwrap().to_string();
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert!(msg.contains(needle), "{msg:?} lacks {needle:?}");
    };
    check(
        http(addr, "POST", "/v1/chat/completions", &[], Some("{not json")).await,
        "not valid JSON",
    );
    check(
        http(addr, "POST", "/v1/chat/completions", &[], Some("[1]")).await,
        "JSON object",
    );
    check(
        post(
            addr,
            "/v1/chat/completions",
            &chat(json!({"temperature": "hot"})),
        )
        .await,
        "invalid type",
    );
    check(
        post(addr, "/v1/chat/completions", &chat(json!({"messages": []}))).await,
        "at least one message",
    );
    check(
        post(addr, "/v1/chat/completions", &json!({"model": MODEL})).await,
        "messages",
    );
    let long = "word ".repeat(200);
    let r = post(
        addr,
        "/v1/chat/completions",
        &chat(json!({"messages": [{"role": "user", "content": long}]})),
    )
    .await;
    check(r, "context length");
    check(
        post(
            addr,
            "/v1/chat/completions",
            &chat(json!({"max_tokens": 1000})),
        )
        .await,
        "context length",
    );
    check(
        post(addr, "/v1/chat/completions", &chat(json!({"top_p": 0}))).await,
        "top_p",
    );
    check(
        post(addr, "/v1/chat/completions", &chat(json!({"n": 0}))).await,
        "`n`",
    );
    check(
        post(
            addr,
            "/v1/chat/completions",
            &chat(json!({"messages": [{"role": "tool?", "content": "x"}]})),
        )
        .await,
        "chat template",
    );
    check(
        post(addr, "/v1/completions", &json!({"prompt": [5000]})).await,
        "out of range",
    );
    let r = post(
        addr,
        "/v1/chat/completions",
        &chat(json!({"model": "other"})),
    )
    .await;
    assert_eq!(r.status, 404);
    let r = http(addr, "GET", "/v1/nope", &[], None).await;
    assert_eq!(r.status, 404);
    assert!(r.json()["error"]["message"].is_string());
    s.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_auth() {
    let s = start(|a| a.api_key = Some("sekrit".into())).await;
    let body = chat(json!({})).to_string();
    let r = http(s.addr(), "POST", "/v1/chat/completions", &[], Some(&body)).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"]["code"], "invalid_api_key");
    let r = http(
        s.addr(),
        "GET",
        "/v1/models",
        &[("Authorization", "Bearer wrong")],
        None,
    )
    .await;
    assert_eq!(r.status, 401);
    let r = http(
        s.addr(),
        "POST",
        "/v1/chat/completions",
        &[("Authorization", "Bearer sekrit")],
        Some(&body),
    )
    .await;
    assert_eq!(r.status, 200);
    // Health and metrics stay open.
    assert_eq!(
        http(s.addr(), "GET", "/health", &[], None).await.status,
        200
    );
    assert_eq!(
        http(s.addr(), "GET", "/metrics", &[], None).await.status,
        200
    );
    s.server.shutdown().await.unwrap();
}

/// Waits until the engine is idle with every KV block free; returns the metrics text.
async fn wait_idle(addr: std::net::SocketAddr) -> String {
    for _ in 0..200 {
        let m = http(addr, "GET", "/metrics", &[], None).await.body;
        if metric(&m, "mimo_num_requests_running") == 0.0
            && metric(&m, "mimo_num_requests_waiting") == 0.0
            && metric(&m, "mimo_kv_blocks_free") == metric(&m, "mimo_kv_blocks_total")
        {
            return m;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the engine did not go idle");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_full_is_429_and_disconnect_frees_blocks() {
    let s = start(|a| {
        a.max_num_seqs = 1;
        a.max_queue = 1;
    })
    .await;
    let addr = s.addr();
    // Three long sequences: one runs, two wait (more than the queue allows for a new request).
    let body = json!({"model": MODEL, "prompt": "Hello", "max_tokens": 400, "n": 3, "stream": true,
                      "temperature": 1.0, "seed": 3});
    let mut stream = send(
        addr,
        "POST",
        "/v1/completions",
        &[],
        Some(&body.to_string()),
    )
    .await;
    let mut buf = [0u8; 4096];
    let n = stream.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let r = post(addr, "/v1/chat/completions", &chat(json!({}))).await;
    assert_eq!(r.status, 429, "{}", r.body);
    assert_eq!(r.json()["error"]["code"], "queue_full");
    // The client goes away mid-stream: its sequences are aborted and their blocks freed.
    drop(stream);
    let m = wait_idle(addr).await;
    assert!(metric(&m, "mimo_aborted_sequences_total") >= 1.0, "{m}");
    assert!(m.contains("mimo_requests_total{route=\"/v1/chat/completions\",code=\"429\"} 1"));
    // The server still works.
    let r = post(addr, "/v1/chat/completions", &chat(json!({}))).await;
    assert_eq!(r.status, 200);
    s.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_mtp() {
    let s = start(|a| a.mtp = 1).await;
    let r = post(s.addr(), "/v1/chat/completions", &chat(json!({}))).await;
    assert_eq!(
        r.json()["choices"][0]["message"]["content"],
        SCRIPTED_CONTENT
    );
    let m = wait_idle(s.addr()).await;
    assert!(metric(&m, "mimo_prompt_tokens_total") > 0.0);
    assert!(metric(&m, "mimo_generation_tokens_total") > 0.0);
    assert!(metric(&m, "mimo_time_to_first_token_seconds_count") >= 1.0);
    assert!(metric(&m, "mimo_time_per_output_token_seconds_count") >= 1.0);
    let drafted = metric(&m, "mimo_mtp_draft_tokens_total");
    let accepted = metric(&m, "mimo_mtp_accepted_tokens_total");
    assert!(drafted > 0.0);
    assert!(accepted > 0.0 && accepted <= drafted);
    s.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_aborts_in_flight_after_grace() {
    let s = start(|a| a.shutdown_grace = Duration::from_millis(200)).await;
    let addr = s.addr();
    let body = json!({"model": MODEL, "prompt": "Hello", "max_tokens": 450, "stream": true,
                      "temperature": 1.0, "seed": 7});
    let reader = tokio::spawn(async move {
        let mut s = send(
            addr,
            "POST",
            "/v1/completions",
            &[],
            Some(&body.to_string()),
        )
        .await;
        let mut buf = vec![];
        let _ = s.read_to_end(&mut buf).await;
        String::from_utf8_lossy(&buf).to_string()
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    tokio::time::timeout(Duration::from_secs(20), s.server.shutdown())
        .await
        .expect("shutdown hangs")
        .unwrap();
    let text = reader.await.unwrap();
    assert!(text.contains("data: [DONE]"), "{text}");
    assert!(text.contains("\"finish_reason\""));
}

fn fixture_tokenizer() -> mimo_text::Tokenizer {
    mimo_text::Tokenizer::from_dir(fixtures()).expect("fixture tokenizer")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logit_bias_steers_greedy_decoding() {
    let s = start(|_| {}).await;
    let addr = s.addr();
    let tok = fixture_tokenizer();
    let forced = tok.token_to_id("kwargs").expect("token");
    let want = tok.decode(&[forced; 3], true).unwrap();
    let bias = json!({ forced.to_string(): 100 });
    // Text completion: every greedy token is the biased one.
    let body = json!({"model": MODEL, "prompt": "Hello", "max_tokens": 3, "temperature": 0,
                      "logit_bias": bias});
    let r = post(addr, "/v1/completions", &body).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(v["choices"][0]["text"], want);
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    // Chat: the bias beats the scripted reply.
    let r = post(
        addr,
        "/v1/chat/completions",
        &chat(json!({"max_tokens": 3, "logit_bias": bias})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["choices"][0]["message"]["content"], want);
    // An empty or null bias changes nothing.
    for none in [json!({}), Value::Null] {
        let r = post(
            addr,
            "/v1/chat/completions",
            &chat(json!({ "logit_bias": none })),
        )
        .await;
        assert_eq!(
            r.json()["choices"][0]["message"]["content"],
            SCRIPTED_CONTENT
        );
    }
    // Bad keys and values are 400s naming `logit_bias`, on both endpoints.
    let vocab = tok.vocab_size();
    for bad in [
        json!({"x": 1}),
        json!({"-3": 1}),
        json!({ vocab.to_string(): 1 }),
        json!({"5": 100.5}),
        json!({"5": -101}),
        json!({"5": "1"}),
        json!([5]),
        json!("5"),
    ] {
        for (path, body) in [
            ("/v1/chat/completions", chat(json!({ "logit_bias": bad }))),
            (
                "/v1/completions",
                json!({"model": MODEL, "prompt": "Hi", "logit_bias": bad}),
            ),
        ] {
            let r = post(addr, path, &body).await;
            assert_eq!(r.status, 400, "{path} {bad}: {}", r.body);
            let v = r.json();
            assert_eq!(
                v["error"]["param"], "logit_bias",
                "{path} {bad}: {}",
                r.body
            );
            assert_eq!(v["error"]["type"], "invalid_request_error");
        }
    }
    s.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tool_and_format_errors_are_400_not_ignored() {
    // The default test model's template (ChatML) has no tool-call format: tools are refused, not ignored.
    let s = start(|_| {}).await;
    let addr = s.addr();
    let tool = json!([{"type": "function", "function": {"name": "f", "parameters": {}}}]);
    for (extra, param, needle) in [
        (json!({ "tools": tool }), "tools", "no tool-call parser"),
        (
            json!({"tool_choice": "auto"}),
            "tool_choice",
            "needs `tools`",
        ),
        (
            json!({"tool_choice": "required"}),
            "tool_choice",
            "needs `tools`",
        ),
        (
            json!({"functions": [{"name": "f"}]}),
            "functions",
            "deprecated",
        ),
        (
            json!({"function_call": "auto"}),
            "function_call",
            "deprecated",
        ),
        (
            json!({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}),
            "response_format",
            "json_schema.schema",
        ),
        (
            json!({"response_format": {"type": "json_schema", "json_schema": {"schema": {"type": "bogus"}}}}),
            "response_format",
            "cannot be compiled",
        ),
        (
            json!({"structured_outputs": {"grammar": "start: nosuchrule"}}),
            "response_format",
            "nosuchrule",
        ),
    ] {
        let r = post(addr, "/v1/chat/completions", &chat(extra.clone())).await;
        assert_eq!(r.status, 400, "{extra}: {}", r.body);
        let v = r.json();
        assert_eq!(v["error"]["param"], param, "{extra}: {}", r.body);
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(msg.contains(needle), "{extra}: {msg}");
    }
    let r = post(
        addr,
        "/v1/completions",
        &json!({"model": MODEL, "prompt": "Hi", "max_tokens": 1, "tools": tool}),
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.body);
    // The neutral values, and unknown (vendor) fields, are accepted.
    let ok = chat(
        json!({"tools": [], "tool_choice": "none", "functions": null, "function_call": "none",
                         "response_format": {"type": "text"}, "user": "u1", "some_vendor_flag": true}),
    );
    let r = post(addr, "/v1/chat/completions", &ok).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.json()["choices"][0]["message"]["content"],
        SCRIPTED_CONTENT
    );
    s.server.shutdown().await.unwrap();
}

/// Structured outputs on text completions and chat, with MTP drafts checked against the grammar: a random
/// model's outputs satisfy the constraint; stop strings and seeds still apply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn structured_outputs_hold_with_mtp() {
    for mtp in [0, 2] {
        let s = start(|a| a.mtp = mtp).await;
        let addr = s.addr();
        let schema = json!({"type": "object", "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 99},
            "s": {"type": "string", "maxLength": 6}}, "required": ["n", "s"], "additionalProperties": false});
        for seed in 0..3 {
            let body = json!({"model": MODEL, "prompt": "Hi", "max_tokens": 60, "temperature": 1.0, "seed": seed,
                "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}});
            let r = post(addr, "/v1/completions", &body).await;
            assert_eq!(r.status, 200, "{}", r.body);
            let c = &r.json()["choices"][0];
            let v: Value = serde_json::from_str(c["text"].as_str().unwrap())
                .unwrap_or_else(|e| panic!("--mtp {mtp} seed {seed}: {e}: {c}"));
            assert!(
                v["n"].as_u64().unwrap() <= 99 && v["s"].as_str().unwrap().chars().count() <= 6,
                "{v}"
            );
            assert_eq!(c["finish_reason"], "stop", "{c}");
            // Same seed, same output.
            let again = post(addr, "/v1/completions", &body).await.json();
            assert_eq!(
                again["choices"][0]["text"], c["text"],
                "--mtp {mtp}: seeded output differs"
            );
        }
        // Greedy choice; a stop string inside the constrained output still stops it.
        let r = post(
            addr,
            "/v1/chat/completions",
            &chat(json!({
            "guided_choice": ["left", "right"], "temperature": 0})),
        )
        .await
        .json();
        let text = r["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(text == "left" || text == "right", "{r}");
        let r = post(addr, "/v1/chat/completions", &chat(json!({
            "structured_outputs": {"regex": "ab(c|d)+x"}, "stop": ["x"], "max_tokens": 40, "temperature": 1.0,
            "seed": 1}))).await.json();
        let c = &r["choices"][0];
        assert_eq!(c["finish_reason"], "stop", "{r}");
        let text = c["message"]["content"].as_str().unwrap();
        assert!(
            text.starts_with("ab") && text[2..].chars().all(|ch| ch == 'c' || ch == 'd'),
            "{r}"
        );
        // The thinking budget closes the think block, then the grammar holds for the content.
        let r = post(
            addr,
            "/v1/chat/completions",
            &chat(json!({
            "guided_choice": ["left", "right"], "max_thinking_tokens": 1, "temperature": 0})),
        )
        .await
        .json();
        let msg = &r["choices"][0]["message"];
        assert!(msg["content"] == "left" || msg["content"] == "right", "{r}");
        assert!(
            SCRIPTED_REASONING.starts_with(msg["reasoning_content"].as_str().unwrap())
                && msg["reasoning_content"] != SCRIPTED_REASONING,
            "{r}"
        );
        let m = http(addr, "GET", "/metrics", &[], None).await.body;
        assert!(metric(&m, "mimo_structured_masks_total") > 0.0);
        if mtp > 0 {
            assert!(metric(&m, "mimo_mtp_draft_tokens_total") > 0.0, "{m}");
        }
        s.server.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_generation_config_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    mimo_serve::testing::write_test_model(dir.path(), &fixtures(), 512).unwrap();
    for (field, value) in [
        ("top_p", json!(0)),
        ("temperature", json!(-1)),
        ("min_p", json!(2)),
        ("repetition_penalty", json!(0)),
    ] {
        let gc = json!({"eos_token_id": [1002, 1000], field: value});
        std::fs::write(dir.path().join("generation_config.json"), gc.to_string()).unwrap();
        let args = mimo_serve::ServeArgs {
            model: dir.path().to_path_buf(),
            port: 0,
            ..Default::default()
        };
        let err = match mimo_serve::Server::start(args).await {
            Ok(s) => {
                s.shutdown().await.unwrap();
                panic!("{field} = {value}: the server started");
            }
            Err(e) => format!("{e:#}"),
        };
        assert!(
            err.contains("generation_config.json") && err.contains(field),
            "{err}"
        );
    }
}

/// The scripted model with one token whose next-token logits hold +∞ (finite weights that overflow: a
/// checkpoint with NaN/∞ weights is refused at load). Returns that prompt token.
fn poison_test_model(dir: &std::path::Path) -> u32 {
    use candle_core::{Device, Tensor};
    let tok = fixture_tokenizer();
    let (p, q) = (
        tok.token_to_id("kwargs").unwrap() as usize,
        tok.token_to_id("rain").unwrap() as usize,
    );
    let path = dir.join("model.safetensors");
    let mut tensors = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    let mut patch = |name: &str, row: usize, value: f32| {
        let t = &tensors[name];
        let (v, h) = t.dims2().unwrap();
        let mut data = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        // Dim 33 is one of the test model's random dims (see `mimo_serve::testing`); the scripted chain's
        // tokens have none of it, so the scripted chat stays finite.
        data[row * h..(row + 1) * h].fill(0.0);
        data[row * h + 33] = value;
        tensors.insert(
            name.to_string(),
            Tensor::from_vec(data, (v, h), &Device::Cpu).unwrap(),
        );
    };
    patch("model.embed_tokens.weight", p, 1.0);
    patch("lm_head.weight", q, 3e38);
    candle_core::safetensors::save(&tensors, &path).unwrap();
    p as u32
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_finite_logits_fail_the_request_not_the_server() {
    let dir = test_model();
    let poison = poison_test_model(dir.path());
    let s = start_in(dir, |_| {}).await;
    let addr = s.addr();
    let bad = |extra: Value| {
        let mut b = json!({"model": MODEL, "prompt": [poison], "max_tokens": 4, "temperature": 0});
        for (k, v) in extra.as_object().unwrap() {
            b[k] = v.clone();
        }
        b
    };
    let is_failure = |v: &Value| {
        v["error"]["type"] == "server_error"
            && v["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("non-finite logit"))
    };
    // A failing request next to a good one: the failing one gets an error, the good one its reply.
    let good = chat(json!({}));
    let greedy = bad(json!({}));
    let sampled = bad(json!({"temperature": 1.0, "n": 2, "seed": 1}));
    let (r_bad, r_sampled, r_good) = tokio::join!(
        post(addr, "/v1/completions", &greedy),
        post(addr, "/v1/completions", &sampled),
        post(addr, "/v1/chat/completions", &good),
    );
    assert_eq!(r_bad.status, 500, "{}", r_bad.body);
    assert!(is_failure(&r_bad.json()), "{}", r_bad.body);
    assert_eq!(r_sampled.status, 500, "{}", r_sampled.body);
    assert!(is_failure(&r_sampled.json()), "{}", r_sampled.body);
    assert_eq!(r_good.status, 200, "{}", r_good.body);
    assert_eq!(
        r_good.json()["choices"][0]["message"]["content"],
        SCRIPTED_CONTENT
    );
    // Streaming: an error event, then the stream ends.
    let r = post(addr, "/v1/completions", &bad(json!({"stream": true}))).await;
    assert_eq!(r.status, 200);
    let events = r.sse();
    assert!(
        events
            .iter()
            .filter_map(|e| serde_json::from_str::<Value>(e).ok())
            .any(|v| is_failure(&v)),
        "{events:?}"
    );
    // Nothing is left running and the server still answers.
    wait_idle(addr).await;
    let r = post(addr, "/v1/chat/completions", &good).await;
    assert_eq!(r.status, 200);
    s.server.shutdown().await.unwrap();
}

/// A prompt sent twice hits the prefix cache the second time (counted in `/metrics`, with the pool gauges),
/// and `ignore_eos` runs a completion to `max_tokens` past the EOS the scripted model emits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefix_cache_metrics_and_ignore_eos() {
    let s = start(|a| a.pool.block_size = 4).await;
    let addr = s.addr();
    let system =
        "You are a careful assistant. Answer briefly and check every step twice before answering.";
    let body = json!({"model": MODEL, "prompt": system, "max_tokens": 4, "temperature": 0.0});
    let first = post(addr, "/v1/completions", &body).await;
    assert_eq!(first.status, 200, "{}", first.body);
    let m = wait_idle(addr).await;
    assert_eq!(metric(&m, "mimo_prefix_cache_hits_total"), 0.0, "{m}");
    assert!(metric(&m, "mimo_kv_blocks_cached") > 0.0, "{m}");
    assert_eq!(metric(&m, "mimo_kv_blocks_used"), 0.0);
    let second = post(addr, "/v1/completions", &body).await;
    assert_eq!(
        second.json()["choices"][0]["text"],
        first.json()["choices"][0]["text"]
    );
    let m = wait_idle(addr).await;
    let queries = metric(&m, "mimo_prefix_cache_queries_total");
    let hits = metric(&m, "mimo_prefix_cache_hits_total");
    assert!(
        hits > 0.0 && hits < queries / 2.0 + 1.0,
        "hits {hits} of {queries}"
    );
    assert!(m.contains("mimo_num_preemptions_total"));

    let plain = post(
        addr,
        "/v1/chat/completions",
        &chat(json!({"max_tokens": 300})),
    )
    .await
    .json();
    assert_eq!(plain["choices"][0]["finish_reason"], "stop", "{plain}");
    let n = plain["usage"]["completion_tokens"].as_u64().unwrap();
    assert!(n < 300);
    let ignored = post(
        addr,
        "/v1/chat/completions",
        &chat(json!({"max_tokens": n + 5, "ignore_eos": true})),
    )
    .await
    .json();
    assert_eq!(
        ignored["choices"][0]["finish_reason"], "length",
        "{ignored}"
    );
    assert_eq!(ignored["usage"]["completion_tokens"], n + 5);
    s.server.shutdown().await.unwrap();
}
