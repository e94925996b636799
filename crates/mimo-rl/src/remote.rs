//! RL over remote rollout servers (design §8.3): a [`Generator`] over a fleet of `mimo serve
//! --enable-weight-updates` servers (or any server speaking the same `/v1/completions` extensions), so the
//! Seamless Rollout Engine drives them exactly as it drives the in-process engine.
//!
//! * **Requests**: token-id prompts on `/v1/completions`, streamed, with `return_token_ids` (the generated ids,
//!   EOS included, and their sampled log-probs, which the trainer's mismatch correction needs) and every
//!   sampling field spelled out (no server-side defaults), including the per-request seed the rollout engine
//!   derives from (seed, step, task, rollout) — so the same config gives the same rollouts as in process.
//! * **Load balancing**: each request goes to the live server with the fewest requests in flight from this
//!   trainer (its queue depth when the trainer is the servers' only client); at most `per_server` per server.
//! * **Retries**: a refused connection, a 429/5xx, a stream cut short or a response from the wrong weight
//!   version retries the request (same seed) on another server; the failing server is skipped for a while.
//!   A request fails the step only after `attempts` tries, or at once on a 4xx (a request the servers refuse).
//! * **Early termination**: aborting a request closes its stream; the server aborts the sequence.
//! * **Weights**: [`RemoteFleet::publish`] writes the policy to a directory the servers can read and posts
//!   `/v1/weights` to each; every response must then report that version ([`Generator`] results are never
//!   from mixed or stale weights). A server that missed an update gets no requests until the next one reaches it.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mimo_engine::SamplingParams;
use serde_json::{json, Value};

use crate::error::{Result, RlError};
use crate::rollout::{Finished, Generator};

/// How to reach the rollout servers.
#[derive(Debug, Clone)]
pub struct FleetSettings {
    /// Base URLs (`http://host:port`, with or without `/v1`).
    pub urls: Vec<String>,
    /// Sent as `Authorization: Bearer KEY` (the servers' `--api-key`).
    pub api_key: Option<String>,
    /// Requests in flight per server (set to the servers' `--max-num-seqs`).
    pub per_server: usize,
    /// Longest time one request may take.
    pub request_timeout: Duration,
    /// Tries per request, across servers, before the step fails.
    pub attempts: usize,
}

/// Version of a server that missed an update (never the expected one).
const STALE: u64 = u64::MAX;
/// How long a server that failed is skipped.
const BACKOFF: Duration = Duration::from_secs(2);

struct Server {
    /// Base URL without a trailing `/` or `/v1`.
    url: String,
    in_flight: AtomicUsize,
    /// Skipped until this many milliseconds after the fleet started.
    down_until_ms: AtomicU64,
    /// The weight version it serves ([`STALE`] after a failed update).
    version: AtomicU64,
}

struct Shared {
    servers: Vec<Server>,
    agent: ureq::Agent,
    api_key: Option<String>,
    /// The version every response must report.
    expected: AtomicU64,
    start: Instant,
    attempts: usize,
    /// Requests retried (for the log).
    retries: AtomicU64,
}

/// Why one try failed.
enum Failure {
    /// Try another server.
    Retry(String),
    /// The request itself is refused; retrying cannot help.
    Fatal(String),
}

struct Job {
    id: u64,
    body: Value,
    abort: Arc<AtomicBool>,
    /// Tokens received so far (the waste accounting of an aborted request).
    progress: Arc<AtomicUsize>,
}

enum Msg {
    Done(Finished),
    Failed { id: u64, error: String },
}

/// The rollout servers as one [`Generator`]; see the module docs.
pub struct RemoteFleet {
    shared: Arc<Shared>,
    jobs: Option<Sender<Job>>,
    results: Receiver<Msg>,
    pending: HashMap<u64, (Arc<AtomicBool>, Arc<AtomicUsize>)>,
    next_id: u64,
    capacity: usize,
    stall_limit: Duration,
    last_progress: Instant,
}

impl RemoteFleet {
    /// Connects to the servers in `s` (nothing is sent until [`Self::publish`] or a request).
    pub fn new(s: &FleetSettings) -> Result<Self> {
        if s.urls.is_empty() {
            return Err(RlError::Config("rollout_servers is empty".into()));
        }
        let mut servers = vec![];
        for u in &s.urls {
            let url = u.trim().trim_end_matches('/');
            let url = url.strip_suffix("/v1").unwrap_or(url).to_string();
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(RlError::Config(format!(
                    "rollout_servers: {u:?} is not an http:// or https:// URL"
                )));
            }
            servers.push(Server {
                url,
                in_flight: AtomicUsize::new(0),
                down_until_ms: AtomicU64::new(0),
                version: AtomicU64::new(STALE),
            });
        }
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(s.request_timeout))
            .http_status_as_error(false)
            .build()
            .into();
        let shared = Arc::new(Shared {
            servers,
            agent,
            api_key: s.api_key.clone().filter(|k| !k.is_empty()),
            expected: AtomicU64::new(STALE),
            start: Instant::now(),
            attempts: s.attempts.max(1),
            retries: AtomicU64::new(0),
        });
        let capacity = s.per_server.max(1) * shared.servers.len();
        let (jobs_tx, jobs_rx) = mpsc::channel::<Job>();
        let (res_tx, results) = mpsc::channel();
        let jobs_rx = Arc::new(Mutex::new(jobs_rx));
        for i in 0..capacity {
            let (shared, jobs_rx, res_tx) = (shared.clone(), jobs_rx.clone(), res_tx.clone());
            std::thread::Builder::new()
                .name(format!("mimo-rollout-{i}"))
                .spawn(move || worker(&shared, &jobs_rx, &res_tx))
                .map_err(|e| RlError::Data(format!("starting a rollout client thread: {e}")))?;
        }
        Ok(Self {
            shared,
            jobs: Some(jobs_tx),
            results,
            pending: HashMap::new(),
            next_id: 0,
            capacity,
            stall_limit: s.request_timeout + Duration::from_secs(30),
            last_progress: Instant::now(),
        })
    }

    /// Requests retried so far.
    pub fn retries(&self) -> u64 {
        self.shared.retries.load(Ordering::Relaxed)
    }

    /// Hands weight `version` to every server: writes it under `dir` (which the servers must be able to read
    /// at the same path) with `config.json` from `model_dir`, posts `/v1/weights` to each server and waits.
    /// Servers that fail are skipped until a later update reaches them; an error only if none took it.
    pub fn publish(
        &mut self,
        version: u64,
        weights: &mimo_model::HostWeights,
        model_dir: &Path,
        dir: &Path,
    ) -> Result<()> {
        let vdir = dir.join(format!("v{version}"));
        std::fs::create_dir_all(&vdir).map_err(|e| RlError::io(&vdir, e))?;
        let vdir = vdir.canonicalize().map_err(|e| RlError::io(&vdir, e))?;
        mimo_model::save_host_weights(weights, &vdir.join("model.safetensors"))?;
        let cfg = model_dir.join("config.json");
        std::fs::copy(&cfg, vdir.join("config.json")).map_err(|e| RlError::io(&cfg, e))?;
        let body = json!({"path": vdir, "version": version}).to_string();
        let sh = &self.shared;
        let outcomes: Vec<std::result::Result<(), String>> = std::thread::scope(|scope| {
            let handles: Vec<_> = sh
                .servers
                .iter()
                .map(|s| scope.spawn(|| post_weights(sh, s, &body)))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|_| Err("panicked".into())))
                .collect()
        });
        let mut errors = vec![];
        for (s, r) in sh.servers.iter().zip(outcomes) {
            match r {
                Ok(()) => s.version.store(version, Ordering::Release),
                Err(e) => {
                    tracing::warn!("{}: weight version {version} not installed: {e}", s.url);
                    s.version.store(STALE, Ordering::Release);
                    errors.push(format!("{}: {e}", s.url));
                }
            }
        }
        if errors.len() == sh.servers.len() {
            return Err(RlError::Remote(format!(
                "no rollout server took weight version {version}: {}",
                errors.join("; ")
            )));
        }
        sh.expected.store(version, Ordering::Release);
        // Older versions are no longer served by anyone.
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let old = name
                    .strip_prefix('v')
                    .and_then(|v| v.parse::<u64>().ok())
                    .is_some_and(|v| v != version);
                if old {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        Ok(())
    }
}

impl Drop for RemoteFleet {
    fn drop(&mut self) {
        for (abort, _) in self.pending.values() {
            abort.store(true, Ordering::Relaxed);
        }
        // Closing the job channel ends the client threads.
        self.jobs.take();
    }
}

/// Posts a weight update to one server (3 tries on connection errors).
fn post_weights(sh: &Shared, s: &Server, body: &str) -> std::result::Result<(), String> {
    let mut last = String::new();
    for _ in 0..3 {
        let mut req = sh
            .agent
            .post(format!("{}/v1/weights", s.url))
            .header("Content-Type", "application/json");
        if let Some(k) = &sh.api_key {
            req = req.header("Authorization", &format!("Bearer {k}"));
        }
        match req.send(body) {
            Ok(mut resp) => {
                let status = resp.status().as_u16();
                let text = resp.body_mut().read_to_string().unwrap_or_default();
                if status == 200 {
                    return Ok(());
                }
                return Err(format!("HTTP {status}: {}", clip(&text)));
            }
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    Err(last)
}

fn clip(s: &str) -> String {
    s.chars().take(300).collect()
}

/// A client thread: takes jobs until the channel closes.
fn worker(sh: &Shared, jobs: &Mutex<Receiver<Job>>, results: &Sender<Msg>) {
    loop {
        let job = match jobs.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return,
        };
        let Ok(job) = job else { return };
        if let Some(msg) = run_job(sh, &job) {
            if results.send(msg).is_err() {
                return;
            }
        }
    }
}

/// Runs one request to completion with retries; `None` when it was aborted.
fn run_job(sh: &Shared, job: &Job) -> Option<Msg> {
    let mut last = String::from("no try was made");
    for attempt in 0..sh.attempts {
        if job.abort.load(Ordering::Relaxed) {
            return None;
        }
        if attempt > 0 {
            sh.retries.fetch_add(1, Ordering::Relaxed);
        }
        let Some(s) = pick(sh) else {
            last = format!(
                "no rollout server serves weight version {}",
                sh.expected.load(Ordering::Acquire)
            );
            std::thread::sleep(BACKOFF);
            continue;
        };
        s.in_flight.fetch_add(1, Ordering::AcqRel);
        let r = stream_one(sh, s, job);
        s.in_flight.fetch_sub(1, Ordering::AcqRel);
        match r {
            Ok(Some(f)) => return Some(Msg::Done(f)),
            Ok(None) => return None,
            Err(Failure::Fatal(e)) => {
                return Some(Msg::Failed {
                    id: job.id,
                    error: format!("{}: {e}", s.url),
                })
            }
            Err(Failure::Retry(e)) => {
                tracing::warn!("rollout request {} on {}: {e}; retrying", job.id, s.url);
                let until = sh.start.elapsed() + BACKOFF;
                s.down_until_ms
                    .store(until.as_millis() as u64, Ordering::Release);
                last = format!("{}: {e}", s.url);
            }
        }
    }
    Some(Msg::Failed {
        id: job.id,
        error: format!("gave up after {} tries; last: {last}", sh.attempts),
    })
}

/// The live server on the expected weights with the fewest requests in flight; when all such servers are
/// backing off, the one that comes back first (after waiting for it).
fn pick(sh: &Shared) -> Option<&Server> {
    let expected = sh.expected.load(Ordering::Acquire);
    let current: Vec<&Server> = sh
        .servers
        .iter()
        .filter(|s| s.version.load(Ordering::Acquire) == expected)
        .collect();
    let now = sh.start.elapsed().as_millis() as u64;
    let live = current
        .iter()
        .filter(|s| s.down_until_ms.load(Ordering::Acquire) <= now)
        .min_by_key(|s| s.in_flight.load(Ordering::Acquire));
    if let Some(s) = live {
        return Some(s);
    }
    let next = current
        .into_iter()
        .min_by_key(|s| s.down_until_ms.load(Ordering::Acquire))?;
    let wait = next
        .down_until_ms
        .load(Ordering::Acquire)
        .saturating_sub(now);
    std::thread::sleep(Duration::from_millis(wait));
    Some(next)
}

/// One try on server `s`: streams the completion; `Ok(None)` when aborted meanwhile.
fn stream_one(
    sh: &Shared,
    s: &Server,
    job: &Job,
) -> std::result::Result<Option<Finished>, Failure> {
    let mut req = sh
        .agent
        .post(format!("{}/v1/completions", s.url))
        .header("Content-Type", "application/json");
    if let Some(k) = &sh.api_key {
        req = req.header("Authorization", &format!("Bearer {k}"));
    }
    let mut resp = req
        .send(job.body.to_string())
        .map_err(|e| Failure::Retry(e.to_string()))?;
    let status = resp.status().as_u16();
    if status != 200 {
        let text = resp.body_mut().read_to_string().unwrap_or_default();
        let msg = format!("HTTP {status}: {}", clip(&text));
        return Err(if status == 429 || status >= 500 {
            Failure::Retry(msg)
        } else {
            Failure::Fatal(msg)
        });
    }
    let expected = sh.expected.load(Ordering::Acquire);
    let reader = BufReader::new(resp.into_body().into_reader());
    let mut done = Finished::new(job.id, vec![]);
    for line in reader.lines() {
        if job.abort.load(Ordering::Relaxed) {
            return Ok(None);
        }
        let line = line.map_err(|e| Failure::Retry(format!("reading the stream: {e}")))?;
        let Some(data) = line.strip_prefix("data: ") else {
            continue;
        };
        if data == "[DONE]" {
            break;
        }
        let v: Value = serde_json::from_str(data)
            .map_err(|e| Failure::Retry(format!("bad stream event ({e}): {}", clip(data))))?;
        if let Some(err) = v.get("error") {
            return Err(Failure::Fatal(format!("generation failed: {err}")));
        }
        let version = v.get("weight_version").and_then(Value::as_u64);
        if version != Some(expected) {
            s.version.store(STALE, Ordering::Release);
            return Err(Failure::Retry(format!(
                "the server reports weight version {version:?}, expected {expected}"
            )));
        }
        let c = &v["choices"][0];
        let ids = c["token_ids"].as_array().ok_or_else(|| {
            Failure::Fatal("the server does not return token_ids (needs mimo serve)".into())
        })?;
        done.tokens
            .extend(ids.iter().filter_map(Value::as_u64).map(|t| t as u32));
        if let Some(lps) = c["token_logprobs"].as_array() {
            done.logprobs
                .extend(lps.iter().filter_map(Value::as_f64).map(|l| l as f32));
        }
        job.progress.store(done.tokens.len(), Ordering::Relaxed);
        match c["finish_reason"].as_str() {
            None => {}
            Some("abort") => return Err(Failure::Retry("the server aborted the request".into())),
            Some(_) => {
                if done.logprobs.len() != done.tokens.len() {
                    done.logprobs.clear();
                }
                return Ok(Some(done));
            }
        }
    }
    Err(Failure::Retry(
        "the stream ended before the completion finished".into(),
    ))
}

/// The `/v1/completions` body of one rollout request: every sampling field explicit.
fn request_body(prompt: &[u32], p: &SamplingParams) -> Value {
    let bias: serde_json::Map<String, Value> = p
        .logit_bias
        .iter()
        .map(|&(t, b)| (t.to_string(), Value::from(b)))
        .collect();
    json!({
        "prompt": prompt,
        "max_tokens": p.max_tokens,
        "temperature": p.temperature,
        "top_p": p.top_p,
        "top_k": p.top_k,
        "min_p": p.min_p,
        "repetition_penalty": p.repetition_penalty,
        "presence_penalty": p.presence_penalty,
        "frequency_penalty": p.frequency_penalty,
        // The wire type is i64; the server casts back, so every u64 seed round-trips.
        "seed": p.seed.map(|s| s as i64),
        "stop": p.stop_strings,
        "stop_token_ids": p.stop_token_ids,
        "ignore_eos": p.ignore_eos,
        "logit_bias": bias,
        "logprobs": p.logprobs.map(|_| 0),
        "stream": true,
        "return_token_ids": true,
    })
}

impl Generator for RemoteFleet {
    fn submit(&mut self, prompt: &[u32], params: SamplingParams) -> Result<u64> {
        let jobs = self
            .jobs
            .as_ref()
            .ok_or_else(|| RlError::Remote("the rollout fleet is closed".into()))?;
        self.next_id += 1;
        let id = self.next_id;
        let (abort, progress) = (Arc::new(AtomicBool::new(false)), Arc::default());
        let job = Job {
            id,
            body: request_body(prompt, &params),
            abort: abort.clone(),
            progress: Arc::clone(&progress),
        };
        jobs.send(job)
            .map_err(|_| RlError::Remote("the rollout client threads stopped".into()))?;
        if self.pending.is_empty() {
            self.last_progress = Instant::now();
        }
        self.pending.insert(id, (abort, progress));
        Ok(id)
    }

    /// Waits briefly (so reward results are gathered between calls, as between decode steps) for requests to
    /// finish; an error when one failed for good or none finished within the request timeout.
    fn step(&mut self) -> Result<Vec<Finished>> {
        if self.pending.is_empty() {
            return Ok(vec![]);
        }
        let mut msgs = vec![];
        match self.results.recv_timeout(Duration::from_millis(20)) {
            Ok(m) => msgs.push(m),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                return Err(RlError::Remote("the rollout client threads stopped".into()))
            }
        }
        msgs.extend(self.results.try_iter());
        let mut done = vec![];
        for m in msgs {
            match m {
                Msg::Done(f) => {
                    if self.pending.remove(&f.id).is_some() {
                        done.push(f);
                    }
                }
                Msg::Failed { id, error } => {
                    if self.pending.contains_key(&id) {
                        return Err(RlError::Remote(format!("rollout request {id}: {error}")));
                    }
                }
            }
        }
        if !done.is_empty() {
            self.last_progress = Instant::now();
        } else if self.last_progress.elapsed() > self.stall_limit {
            return Err(RlError::Remote(format!(
                "no rollout finished within {:?} ({} in flight)",
                self.stall_limit,
                self.pending.len()
            )));
        }
        Ok(done)
    }

    fn abort(&mut self, id: u64) -> usize {
        match self.pending.remove(&id) {
            Some((abort, progress)) => {
                abort.store(true, Ordering::Relaxed);
                progress.load(Ordering::Relaxed)
            }
            None => 0,
        }
    }

    fn has_work(&self) -> bool {
        !self.pending.is_empty()
    }

    fn running(&self) -> usize {
        self.pending.len().min(self.capacity)
    }

    fn capacity(&self) -> usize {
        self.capacity
    }
}

/// `weights_dir` of a run whose config leaves it empty.
pub fn default_weights_dir(out: &Path) -> PathBuf {
    out.join("weights")
}
