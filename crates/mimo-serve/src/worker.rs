//! The engine thread: owns the [`Engine`], takes new sequences and aborts over a channel between steps, and
//! sends each sequence's tokens back over its request's channel (continuous batching).
//!
//! Weight updates ([`Command::UpdateWeights`]) never mix weights inside a sequence: from the moment one arrives
//! new submissions are held back, the sequences already queued or running finish on the old weights, then the
//! model is swapped (which clears the prefix cache) and the held submissions are admitted on the new weights.
//! Each submission's reply carries the weight version that generates it.
//!
//! It also sets each sequence's logits hook ([`RequestHook`]): the thinking budget (once a sequence has
//! produced `max_thinking_tokens` tokens inside `<think>…`, its next token is forced to `</think>`, reported
//! to the client as generated, logprob 0) and the request's output grammar (structured outputs, required or
//! named tool calls), which applies after a think block when the output has one.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use mimo_engine::engine::{Engine, FinishReason, TokenLogprob};
use mimo_engine::{Constrained, LogitsProcessor, NextToken, SamplingParams};
use mimo_model::MimoModel;
use tokio::sync::{mpsc, oneshot};

use crate::metrics::Metrics;

/// Thinking-budget settings of one sequence.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ThinkBudget {
    /// Most tokens inside the think block.
    pub budget: usize,
    /// The prompt already opened the think block.
    pub in_think: bool,
}

/// One sequence to generate.
#[derive(Debug, Clone)]
pub(crate) struct SeqSpec {
    pub prompt: Vec<u32>,
    pub params: SamplingParams,
    pub think: Option<ThinkBudget>,
    /// The output grammar (its own matcher per sequence).
    pub grammar: Option<Arc<Constrained>>,
    /// The prompt already opened a think block (then the grammar starts after `</think>`).
    pub in_think: bool,
}

/// What the engine thread reports for a request.
#[derive(Debug)]
pub(crate) enum Event {
    /// New tokens of choice `choice`.
    Tokens {
        choice: usize,
        tokens: Vec<u32>,
        logprobs: Vec<TokenLogprob>,
        finish: Option<FinishReason>,
    },
    /// The engine failed; the request cannot go on.
    Error(String),
}

/// Why a submission was refused.
#[derive(Debug)]
pub(crate) enum SubmitError {
    QueueFull,
    Invalid(String),
}

/// A submission's reply: the sequences' keys and the weight version that generates them.
pub(crate) type SubmitReply = oneshot::Sender<Result<(Vec<u64>, u64), SubmitError>>;

/// Commands to the engine thread.
pub(crate) enum Command {
    Submit {
        seqs: Vec<SeqSpec>,
        events: mpsc::UnboundedSender<Event>,
        reply: SubmitReply,
    },
    /// Install `model` as weight `version` once the sequences queued or running have finished (see the module
    /// docs); `reply` hears back when it serves.
    UpdateWeights {
        model: Arc<MimoModel>,
        version: u64,
        reply: oneshot::Sender<Result<(), String>>,
    },
    /// Abort the sequence with this key (no further events are sent for it).
    Abort(u64),
    /// Abort everything (reporting `abort` to clients) and stop.
    Shutdown,
}

/// Settings of the engine thread beyond the engine's own.
#[derive(Debug, Clone)]
pub(crate) struct WorkerConfig {
    /// Most sequences waiting for admission before submissions get `QueueFull`.
    pub max_queue: usize,
    pub think_start: Option<u32>,
    pub think_end: Option<u32>,
}

/// The thinking budget: forces `</think>` once the open think block holds `budget` tokens.
struct ThinkLimit {
    budget: usize,
    /// The prompt already opened the think block.
    opened: bool,
    start: Option<u32>,
    end: u32,
}

impl ThinkLimit {
    fn next_token(&self, generated: &[u32]) -> NextToken {
        let mut in_think = self.opened;
        let mut count = 0;
        for &tok in generated {
            if Some(tok) == self.start {
                in_think = true;
            } else if tok == self.end {
                return NextToken::Any; // the block is closed: no budget from here on
            } else if in_think {
                count += 1;
            }
        }
        if in_think && count >= self.budget {
            NextToken::Force(self.end)
        } else {
            NextToken::Any
        }
    }
}

/// A sequence's logits hook: the thinking budget, then the output grammar. The grammar constrains the output
/// after its think block when there is one (the prompt opened it, or the output starts with `<think>`, which
/// the first position also allows); inside the block anything goes. A pure function of the generated tokens,
/// as the engine requires (it is asked again for MTP drafts).
struct RequestHook {
    think: Option<ThinkLimit>,
    grammar: Option<Arc<Constrained>>,
    in_think: bool,
    think_start: Option<u32>,
    think_end: Option<u32>,
}

impl RequestHook {
    /// Where the grammar's output starts in `generated`, or `None` inside the think block.
    fn grammar_start(&self, generated: &[u32]) -> Option<usize> {
        let Some(end) = self.think_end else {
            return Some(0);
        };
        let opened = self.in_think
            || (self.think_start.is_some() && generated.first() == self.think_start.as_ref());
        if !opened {
            return Some(0);
        }
        generated.iter().position(|&t| t == end).map(|p| p + 1)
    }
}

impl LogitsProcessor for RequestHook {
    fn next_token(&self, generated: &[u32]) -> NextToken {
        if let Some(t) = &self.think {
            let n = t.next_token(generated);
            if n != NextToken::Any {
                return n;
            }
        }
        let Some(g) = &self.grammar else {
            return NextToken::Any;
        };
        let Some(start) = self.grammar_start(generated) else {
            return NextToken::Any;
        };
        match (g.next_token(&generated[start..]), self.think_start) {
            (NextToken::Allowed(mut m), Some(open)) if generated.is_empty() && !self.in_think => {
                m.insert(open);
                NextToken::Allowed(m)
            }
            (n, _) => n,
        }
    }
}

struct Track {
    engine_id: u64,
    choice: usize,
    events: mpsc::UnboundedSender<Event>,
    submitted: Instant,
    first: bool,
    last: Instant,
}

/// The engine loop. Returns when the command channel closes or on `Shutdown`.
pub(crate) fn run(
    mut engine: Engine,
    cfg: WorkerConfig,
    metrics: Arc<Metrics>,
    mut rx: mpsc::UnboundedReceiver<Command>,
) {
    let mut w = Worker {
        tracks: HashMap::new(),
        by_engine: HashMap::new(),
        next_key: 0,
        cfg,
        metrics,
        update: None,
        held: vec![],
    };
    w.update_gauges(&engine);
    loop {
        w.install_update(&mut engine);
        if !engine.has_work() {
            match rx.blocking_recv() {
                Some(cmd) => {
                    if w.handle(&mut engine, cmd) {
                        break;
                    }
                }
                None => break,
            }
        }
        let mut stop = false;
        while let Ok(cmd) = rx.try_recv() {
            if w.handle(&mut engine, cmd) {
                stop = true;
                break;
            }
        }
        if stop {
            break;
        }
        w.install_update(&mut engine);
        w.abort_closed(&mut engine);
        // Gauges reflect admissions and aborts before the (possibly long) step.
        w.update_gauges(&engine);
        if engine.has_work() {
            match engine.step() {
                Ok(outputs) => {
                    for o in outputs {
                        if o.finish == Some(FinishReason::Error) {
                            w.fail(o.id, o.error.as_deref().unwrap_or("the sequence failed"));
                        } else {
                            w.dispatch(&mut engine, o.id, o.tokens, o.logprobs, o.finish);
                        }
                    }
                }
                Err(e) => {
                    tracing::error!("engine step failed: {e}");
                    w.fail_all(&mut engine, &format!("engine step failed: {e}"));
                }
            }
        }
        w.update_gauges(&engine);
    }
    w.abort_all(&mut engine);
    if let Some(u) = w.update.take() {
        let _ = u.reply.send(Err("the server is shutting down".into()));
    }
    w.update_gauges(&engine);
}

/// A weight update waiting for the engine to drain.
struct PendingUpdate {
    model: Arc<MimoModel>,
    version: u64,
    reply: oneshot::Sender<Result<(), String>>,
}

/// A submission held back while a weight update waits.
type Held = (Vec<SeqSpec>, mpsc::UnboundedSender<Event>, SubmitReply);

struct Worker {
    tracks: HashMap<u64, Track>,
    by_engine: HashMap<u64, u64>,
    next_key: u64,
    cfg: WorkerConfig,
    metrics: Arc<Metrics>,
    update: Option<PendingUpdate>,
    held: Vec<Held>,
}

impl Worker {
    /// Handles one command; true means stop.
    fn handle(&mut self, engine: &mut Engine, cmd: Command) -> bool {
        match cmd {
            Command::Submit {
                seqs,
                events,
                reply,
            } => {
                if self.update.is_some() {
                    let held: usize = self.held.iter().map(|h| h.0.len()).sum();
                    if held + seqs.len() > self.cfg.max_queue.max(seqs.len()) {
                        let _ = reply.send(Err(SubmitError::QueueFull));
                    } else {
                        self.held.push((seqs, events, reply));
                    }
                    return false;
                }
                self.admit(engine, seqs, events, reply);
                false
            }
            Command::UpdateWeights {
                model,
                version,
                reply,
            } => {
                if self.update.is_some() {
                    let _ = reply.send(Err("another weight update is in progress".into()));
                } else {
                    tracing::info!(version, "weight update: draining the running sequences");
                    self.update = Some(PendingUpdate {
                        model,
                        version,
                        reply,
                    });
                }
                false
            }
            Command::Abort(key) => {
                if let Some(t) = self.tracks.remove(&key) {
                    self.by_engine.remove(&t.engine_id);
                    engine.abort(t.engine_id);
                    self.metrics.aborted.fetch_add(1, Ordering::Relaxed);
                }
                false
            }
            Command::Shutdown => true,
        }
    }

    /// Submits `seqs` and replies with their keys and the weight version.
    fn admit(
        &mut self,
        engine: &mut Engine,
        seqs: Vec<SeqSpec>,
        events: mpsc::UnboundedSender<Event>,
        reply: SubmitReply,
    ) {
        let version = self.metrics.weight_version.load(Ordering::Relaxed);
        let r = self
            .submit(engine, seqs, events)
            .map(|keys| (keys, version));
        // Gauges show the new sequences before the client hears back (a /metrics read right after a reply must
        // not see an idle engine).
        self.update_gauges(engine);
        let _ = reply.send(r);
    }

    /// Installs the pending weight update once nothing is queued or running, then admits the submissions held
    /// back meanwhile.
    fn install_update(&mut self, engine: &mut Engine) {
        if engine.has_work() {
            return;
        }
        let Some(u) = self.update.take() else {
            return;
        };
        let r = engine.replace_model(u.model).map_err(|e| e.to_string());
        if r.is_ok() {
            self.metrics
                .weight_version
                .store(u.version, Ordering::Relaxed);
            self.metrics.weight_updates.fetch_add(1, Ordering::Relaxed);
            tracing::info!(version = u.version, "weight update installed");
        }
        let _ = u.reply.send(r);
        for (seqs, events, reply) in std::mem::take(&mut self.held) {
            self.admit(engine, seqs, events, reply);
        }
    }

    fn submit(
        &mut self,
        engine: &mut Engine,
        seqs: Vec<SeqSpec>,
        events: mpsc::UnboundedSender<Event>,
    ) -> Result<Vec<u64>, SubmitError> {
        if engine.num_waiting() + seqs.len() > self.cfg.max_queue.max(seqs.len()) {
            return Err(SubmitError::QueueFull);
        }
        let mut keys = Vec::with_capacity(seqs.len());
        for (choice, spec) in seqs.into_iter().enumerate() {
            let think = match (spec.think, self.cfg.think_end) {
                (Some(t), Some(end)) => Some(ThinkLimit {
                    budget: t.budget,
                    opened: t.in_think,
                    start: self.cfg.think_start,
                    end,
                }),
                _ => None,
            };
            let limit = (think.is_some() || spec.grammar.is_some()).then(|| {
                Arc::new(RequestHook {
                    think,
                    grammar: spec.grammar,
                    in_think: spec.in_think,
                    think_start: self.cfg.think_start,
                    think_end: self.cfg.think_end,
                }) as Arc<dyn LogitsProcessor>
            });
            let prompt_len = spec.prompt.len();
            match engine.add_request_with(spec.prompt, spec.params, limit) {
                Ok(id) => {
                    let key = self.next_key;
                    self.next_key += 1;
                    let now = Instant::now();
                    self.tracks.insert(
                        key,
                        Track {
                            engine_id: id,
                            choice,
                            events: events.clone(),
                            submitted: now,
                            first: true,
                            last: now,
                        },
                    );
                    self.by_engine.insert(id, key);
                    self.metrics
                        .prompt_tokens
                        .fetch_add(prompt_len as u64, Ordering::Relaxed);
                    keys.push(key);
                }
                Err(e) => {
                    for k in keys {
                        if let Some(t) = self.tracks.remove(&k) {
                            self.by_engine.remove(&t.engine_id);
                            engine.abort(t.engine_id);
                        }
                    }
                    return Err(SubmitError::Invalid(e.to_string()));
                }
            }
        }
        Ok(keys)
    }

    /// Aborts sequences whose client went away.
    fn abort_closed(&mut self, engine: &mut Engine) {
        let gone: Vec<u64> = self
            .tracks
            .iter()
            .filter(|(_, t)| t.events.is_closed())
            .map(|(k, _)| *k)
            .collect();
        for k in gone {
            if let Some(t) = self.tracks.remove(&k) {
                tracing::debug!(key = k, "client went away; aborting its sequence");
                self.by_engine.remove(&t.engine_id);
                engine.abort(t.engine_id);
                self.metrics.aborted.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn dispatch(
        &mut self,
        engine: &mut Engine,
        engine_id: u64,
        tokens: Vec<u32>,
        logprobs: Vec<TokenLogprob>,
        finish: Option<FinishReason>,
    ) {
        let Some(&key) = self.by_engine.get(&engine_id) else {
            return;
        };
        let Some(t) = self.tracks.get_mut(&key) else {
            return;
        };
        let now = Instant::now();
        let m = &self.metrics;
        m.generation_tokens
            .fetch_add(tokens.len() as u64, Ordering::Relaxed);
        if t.first {
            t.first = false;
            m.ttft
                .observe(now.duration_since(t.submitted).as_secs_f64());
        } else if !tokens.is_empty() {
            let dt = now.duration_since(t.last).as_secs_f64() / tokens.len() as f64;
            m.tpot.observe(dt);
        }
        t.last = now;
        let sent = t.events.send(Event::Tokens {
            choice: t.choice,
            tokens,
            logprobs,
            finish,
        });
        if finish.is_some() || sent.is_err() {
            if sent.is_err() {
                engine.abort(t.engine_id);
                m.aborted.fetch_add(1, Ordering::Relaxed);
            } else {
                m.e2e.observe(now.duration_since(t.submitted).as_secs_f64());
            }
            self.by_engine.remove(&t.engine_id);
            self.tracks.remove(&key);
        }
    }

    /// One sequence failed in the engine (which already dropped it): its request gets an error; other
    /// sequences, including the request's other choices until the request is dropped, are unaffected.
    fn fail(&mut self, engine_id: u64, msg: &str) {
        let Some(key) = self.by_engine.remove(&engine_id) else {
            return;
        };
        if let Some(t) = self.tracks.remove(&key) {
            tracing::warn!(engine_id, "sequence failed: {msg}");
            let _ = t
                .events
                .send(Event::Error(format!("generation failed: {msg}")));
        }
    }

    fn fail_all(&mut self, engine: &mut Engine, msg: &str) {
        for (_, t) in self.tracks.drain() {
            engine.abort(t.engine_id);
            let _ = t.events.send(Event::Error(msg.to_string()));
        }
        self.by_engine.clear();
    }

    /// Aborts every sequence, telling clients `abort`.
    fn abort_all(&mut self, engine: &mut Engine) {
        for (_, t) in self.tracks.drain() {
            engine.abort(t.engine_id);
            self.metrics.aborted.fetch_add(1, Ordering::Relaxed);
            let _ = t.events.send(Event::Tokens {
                choice: t.choice,
                tokens: vec![],
                logprobs: vec![],
                finish: Some(FinishReason::Abort),
            });
        }
        self.by_engine.clear();
    }

    fn update_gauges(&self, engine: &Engine) {
        let m = &self.metrics;
        m.waiting
            .store(engine.num_waiting() as u64, Ordering::Relaxed);
        m.running
            .store(engine.num_running() as u64, Ordering::Relaxed);
        let (free, total) = engine.kv_blocks();
        m.kv_free.store(free as u64, Ordering::Relaxed);
        m.kv_total.store(total as u64, Ordering::Relaxed);
        let u = engine.kv_usage();
        m.kv_used.store(u.used as u64, Ordering::Relaxed);
        m.kv_cached.store(u.cached as u64, Ordering::Relaxed);
        let st = engine.scheduler_stats();
        m.prefix_queries
            .store(st.prefix_query_tokens, Ordering::Relaxed);
        m.prefix_hits.store(st.prefix_hit_tokens, Ordering::Relaxed);
        m.preemptions.store(st.preemptions, Ordering::Relaxed);
        m.chunked_prefill_steps
            .store(st.chunked_prefill_steps, Ordering::Relaxed);
        let s = engine.mtp_stats();
        m.mtp_drafted.store(s.total_drafted(), Ordering::Relaxed);
        m.mtp_accepted.store(s.total_accepted(), Ordering::Relaxed);
    }
}
