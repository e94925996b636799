//! Evaluation of any OpenAI-compatible endpoint (a vLLM or SGLang server, or `mimo serve`): the same
//! problems, prompts, seeds and scorer as the in-process evaluation, samples requested over HTTP by
//! `concurrency` workers with retries, and every finished sample appended to the samples file at once, so
//! a run that stops (a server that keeps failing, a kill) loses nothing and the same command resumes it.

use std::collections::{HashSet, VecDeque};
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use mimo_reward::Problem;
use serde_json::{json, Value};

use crate::{report, scored_sample, EvalError, EvalOptions, EvalReport, Sample};

/// An OpenAI-compatible chat endpoint.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// Base URL up to `/v1` (e.g. `http://127.0.0.1:8000/v1`).
    pub base_url: String,
    /// The `model` field of requests.
    pub model: String,
    /// Sent as `Authorization: Bearer KEY` when set.
    pub api_key: Option<String>,
    /// Requests in flight at once.
    pub concurrency: usize,
    /// Retries of a request that fails with a transport error, a timeout, 429 or 5xx.
    pub retries: usize,
    /// Limit on one request (generation included).
    pub timeout: Duration,
}

/// What one request attempt gave.
enum Attempt {
    Done {
        text: String,
        tokens: usize,
    },
    /// Worth retrying (transport error, timeout, 429, 5xx).
    Retry(String),
    /// Not worth retrying (another 4xx, a malformed answer).
    Fatal(String),
}

/// Reads the samples already in `path` (a previous run of the same command); a torn last line is dropped.
fn load_samples(path: &Path) -> Result<Vec<Sample>, EvalError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => {
            return Err(EvalError::Remote(format!(
                "reading {}: {e}",
                path.display()
            )))
        }
    };
    let mut out = vec![];
    let last = text.lines().count();
    for (i, line) in text.lines().enumerate() {
        match serde_json::from_str::<Sample>(line) {
            Ok(s) => out.push(s),
            Err(_) if i + 1 == last => {} // torn by a kill: redone
            Err(e) => {
                return Err(EvalError::Remote(format!(
                    "{}:{}: not a sample ({e}); move the file away to start over",
                    path.display(),
                    i + 1
                )))
            }
        }
    }
    Ok(out)
}

fn request_body(ep: &Endpoint, p: &Problem, seed: u64, opts: &EvalOptions) -> Value {
    json!({
        "model": ep.model,
        "messages": [{"role": "user", "content": p.user_message(&opts.instruction)}],
        "temperature": opts.temperature,
        "top_p": opts.top_p,
        "max_tokens": opts.max_tokens,
        "seed": seed,
        "n": 1,
    })
}

/// The completion text of a chat response; reasoning (`reasoning_content` or `reasoning`) is put back in a
/// think block in front, so the scorer reads the answer after it as for in-process samples.
fn completion_text(v: &Value) -> Option<(String, usize)> {
    let msg = v.get("choices")?.get(0)?.get("message")?;
    let content = msg.get("content").and_then(Value::as_str).unwrap_or("");
    let reasoning = ["reasoning_content", "reasoning"]
        .iter()
        .find_map(|k| msg.get(*k).and_then(Value::as_str))
        .filter(|r| !r.is_empty());
    let text = match reasoning {
        Some(r) => format!("<think>{r}</think>{content}"),
        None => content.to_string(),
    };
    let tokens = v
        .get("usage")
        .and_then(|u| u.get("completion_tokens"))
        .and_then(Value::as_u64)
        .unwrap_or(0) as usize;
    Some((text, tokens))
}

fn attempt(agent: &ureq::Agent, ep: &Endpoint, body: &Value) -> Attempt {
    let url = format!("{}/chat/completions", ep.base_url.trim_end_matches('/'));
    let mut req = agent.post(&url).header("Content-Type", "application/json");
    if let Some(k) = &ep.api_key {
        req = req.header("Authorization", &format!("Bearer {k}"));
    }
    match req.send(body.to_string()) {
        Ok(mut resp) => {
            let status = resp.status().as_u16();
            let text = resp.body_mut().read_to_string().unwrap_or_default();
            if status == 429 || status >= 500 {
                return Attempt::Retry(format!("HTTP {status}: {}", clip(&text)));
            }
            if status != 200 {
                return Attempt::Fatal(format!("HTTP {status}: {}", clip(&text)));
            }
            match serde_json::from_str::<Value>(&text)
                .ok()
                .as_ref()
                .and_then(completion_text)
            {
                Some((text, tokens)) => Attempt::Done { text, tokens },
                None => Attempt::Fatal(format!("not a chat completion: {}", clip(&text))),
            }
        }
        Err(e) => Attempt::Retry(e.to_string()),
    }
}

fn clip(s: &str) -> String {
    s.chars().take(300).collect()
}

/// Evaluates `problems` on the endpoint: `opts.k` samples each (seed `opts.seed + i·k + s`, as in process),
/// appended to `samples_path` as they finish; samples already there are kept and not requested again.
pub fn evaluate_remote(
    ep: &Endpoint,
    problems: &[Problem],
    opts: &EvalOptions,
    samples_path: &Path,
) -> Result<EvalReport, EvalError> {
    let known: HashSet<&str> = problems.iter().map(|p| p.id.as_str()).collect();
    let mut samples: Vec<Sample> = load_samples(samples_path)?
        .into_iter()
        .filter(|s| known.contains(s.problem.as_str()) && s.sample < opts.k)
        .collect();
    let done: HashSet<(String, usize)> = samples
        .iter()
        .map(|s| (s.problem.clone(), s.sample))
        .collect();
    // Rewrite the kept samples (drops a torn line), then append.
    let mut file = std::io::BufWriter::new(
        std::fs::File::create(samples_path)
            .map_err(|e| EvalError::Remote(format!("creating {}: {e}", samples_path.display())))?,
    );
    for s in &samples {
        let _ = writeln!(file, "{}", serde_json::to_string(s).unwrap_or_default());
    }
    let _ = file.flush();
    let jobs: VecDeque<(usize, usize)> = (0..problems.len())
        .flat_map(|pi| (0..opts.k).map(move |s| (pi, s)))
        .filter(|&(pi, s)| !done.contains(&(problems[pi].id.clone(), s)))
        .collect();
    let jobs = Mutex::new(jobs);
    let out = Mutex::new((file, Vec::<Sample>::new()));
    let failed: Mutex<Option<String>> = Mutex::new(None);
    let stop = AtomicBool::new(false);
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(ep.timeout))
        .http_status_as_error(false)
        .build()
        .into();
    std::thread::scope(|scope| {
        for _ in 0..ep.concurrency.max(1) {
            scope.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    let Some((pi, s)) = jobs.lock().ok().and_then(|mut q| q.pop_front()) else {
                        return;
                    };
                    let p = &problems[pi];
                    let seed = opts.seed.wrapping_add((pi * opts.k + s) as u64);
                    let body = request_body(ep, p, seed, opts);
                    let mut last = String::new();
                    let mut result = None;
                    for k in 0..=ep.retries {
                        match attempt(&agent, ep, &body) {
                            Attempt::Done { text, tokens } => {
                                result = Some((text, tokens));
                                break;
                            }
                            Attempt::Retry(e) => {
                                last = e;
                                if k < ep.retries {
                                    std::thread::sleep(Duration::from_millis(
                                        (250u64 << k.min(5)).min(8000),
                                    ));
                                }
                            }
                            Attempt::Fatal(e) => {
                                last = e;
                                break;
                            }
                        }
                    }
                    let Some((text, tokens)) = result else {
                        stop.store(true, Ordering::Relaxed);
                        if let Ok(mut f) = failed.lock() {
                            f.get_or_insert(format!("problem {} sample {s}: {last}", p.id));
                        }
                        return;
                    };
                    let sample = scored_sample(p, s, text, tokens, opts);
                    if let Ok(mut o) = out.lock() {
                        let _ = writeln!(
                            o.0,
                            "{}",
                            serde_json::to_string(&sample).unwrap_or_default()
                        );
                        let _ = o.0.flush();
                        o.1.push(sample);
                    }
                }
            });
        }
    });
    let (file, new) = out
        .into_inner()
        .map_err(|_| EvalError::Remote("a worker panicked".into()))?;
    drop(file);
    if let Some(e) = failed.into_inner().ok().flatten() {
        return Err(EvalError::Remote(format!(
            "the endpoint failed after {} retries ({e}); {} samples are kept in {}: rerun the same command to \
             resume",
            ep.retries,
            samples.len() + new.len(),
            samples_path.display()
        )));
    }
    samples.extend(new);
    Ok(report(problems, samples, opts.k))
}
