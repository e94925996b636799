//! `mimo serve`: an OpenAI-compatible HTTP server (axum/tokio) over the mimo engine.
//!
//! One dedicated thread owns the [`Engine`](mimo_engine::engine::Engine) and runs its continuous-batching
//! loop; HTTP handlers tokenize, submit sequences over a channel, and turn the returned tokens into text
//! (incremental detokenization, stop strings, `<think>` reasoning split) for plain JSON or SSE responses.
//!
//! Endpoints: `POST /v1/chat/completions`, `POST /v1/completions`, `GET /v1/models`, `GET /health`,
//! `GET /metrics` (Prometheus text), and with [`ServeArgs::enable_weight_updates`] `POST /v1/weights`
//! (`{"path": DIR, "version": N}`: new weights from a shared path; in-flight sequences finish on the old ones).

pub mod api;
pub mod choice;
mod listen;
pub mod metrics;
mod server;
pub mod testing;
pub mod tools;
mod worker;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use mimo_engine::engine::EngineConfig;
use mimo_engine::Loaded;
use mimo_model::MimoModel;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};

pub use api::ApiError;
pub use listen::ListenLimits;
pub use metrics::Metrics;
pub use server::{chat_prompt, MAX_CHOICES};

/// Settings of `mimo serve`.
#[derive(Debug, Clone)]
pub struct ServeArgs {
    /// HF-layout model directory (weights, config and tokenizer files), or a GGUF file.
    pub model: PathBuf,
    /// Address to bind.
    pub host: String,
    /// Port to bind (0 picks a free one; see [`Server::local_addr`]).
    pub port: u16,
    /// Model name clients use; default: the model directory's name.
    pub served_model_name: Option<String>,
    /// Most sequences decoded at once.
    pub max_num_seqs: usize,
    /// Context length (prompt + completion); default: the model's `max_position_embeddings`.
    pub max_model_len: Option<usize>,
    /// MTP draft tokens per step (0 = off).
    pub mtp: usize,
    /// When set, `/v1/*` requires `Authorization: Bearer KEY`.
    pub api_key: Option<String>,
    /// Weight dtype: `auto` (bf16 on GPU, f32 on CPU), `f32`, `bf16` or `f16`.
    pub dtype: String,
    /// Quantize weights at load (`q8_0`, `q4_k`, …); `None` keeps them as stored.
    pub quant: Option<String>,
    /// KV cache dtype: `auto` (the activation dtype) or `f16`.
    pub kv_cache_dtype: String,
    /// Device: `auto` (CUDA device 0 when built with CUDA and present, else the CPU), `cpu`, `cuda`, `cuda:N`.
    pub device: String,
    /// Most sequences waiting for admission; further requests get 429.
    pub max_queue: usize,
    /// How long in-flight requests may run after a shutdown signal before they are aborted.
    pub shutdown_grace: Duration,
    /// Open-connection cap and header-read timeout (the timeout also bounds reading a request body).
    pub limits: ListenLimits,
    /// Largest request body, in bytes (413 beyond).
    pub max_body_bytes: usize,
    /// KV pool and scheduler settings.
    pub pool: mimo_engine::engine::PoolSettings,
    /// Tool-call format: `auto` (from the chat template), `none`, or a name in [`tools::TOOL_PARSERS`].
    pub tool_call_parser: String,
    /// Accept `POST /v1/weights` (new weights from an RL trainer; guarded by `api_key`).
    pub enable_weight_updates: bool,
}

impl Default for ServeArgs {
    fn default() -> Self {
        Self {
            model: PathBuf::new(),
            host: "127.0.0.1".into(),
            port: 8000,
            served_model_name: None,
            max_num_seqs: 16,
            max_model_len: None,
            mtp: 0,
            api_key: None,
            dtype: "auto".into(),
            quant: None,
            kv_cache_dtype: "auto".into(),
            device: "auto".into(),
            max_queue: 256,
            shutdown_grace: Duration::from_secs(30),
            limits: ListenLimits::default(),
            max_body_bytes: 32 << 20,
            pool: Default::default(),
            tool_call_parser: "auto".into(),
            enable_weight_updates: false,
        }
    }
}

/// How long connections may take to close after in-flight requests are aborted at the end of the grace period.
const DRAIN_SLACK: Duration = Duration::from_secs(5);

/// A running server.
pub struct Server {
    addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    metrics: Arc<Metrics>,
}

impl Server {
    /// Loads the model, starts the engine thread, binds the listener and starts serving.
    pub async fn start(args: ServeArgs) -> anyhow::Result<Server> {
        if args.max_num_seqs == 0 {
            bail!("--max-num-seqs must be ≥ 1");
        }
        let api_key = args.api_key.clone().filter(|k| !k.is_empty());
        if args.enable_weight_updates && api_key.is_none() {
            let loopback = matches!(args.host.as_str(), "127.0.0.1" | "localhost" | "::1");
            if !loopback {
                bail!("--enable-weight-updates on {} needs --api-key (anyone who can reach the server could replace its weights)", args.host);
            }
            tracing::warn!("weight updates are enabled without an API key (loopback only)");
        }
        let text = mimo_engine::model_text(&args.model)
            .with_context(|| format!("loading the tokenizer of {}", args.model.display()))?
            .with_context(|| format!("{} has no tokenizer", args.model.display()))?;
        let device = mimo_model::parse_device(&args.device)?;
        let fmt = mimo_model::WeightFormat::parse(&args.dtype, args.quant.as_deref(), &device)?;
        let tool_format = match args.tool_call_parser.as_str() {
            "auto" => tools::format_for_template(text.chat_template.source()),
            "none" => None,
            name => Some(tools::tool_format(name).with_context(|| {
                format!(
                    "unknown --tool-call-parser {name:?} (known: auto, none, {})",
                    tools::TOOL_PARSERS.join(", ")
                )
            })?),
        };
        let served_name = args.served_model_name.clone().unwrap_or_else(|| {
            args.model
                .file_name()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "mimo".into())
        });
        let metrics = Arc::new(Metrics::default());
        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        let (ready_tx, ready_rx) = oneshot::channel::<anyhow::Result<(usize, usize)>>();
        let engine_cfg = args.pool.apply(EngineConfig {
            max_num_seqs: args.max_num_seqs,
            max_model_len: args.max_model_len,
            mtp_drafts: args.mtp,
            eos_ids: text.eos_ids.clone(),
            kv_dtype: mimo_model::parse_kv_dtype(&args.kv_cache_dtype)?,
            ..EngineConfig::default()
        });
        let wcfg = worker::WorkerConfig {
            max_queue: args.max_queue,
            think_start: text.tokenizer.token_to_id(choice::THINK_START),
            think_end: text.tokenizer.token_to_id(choice::THINK_END),
        };
        let dir = args.model.clone();
        let weight_loader = args.enable_weight_updates.then(|| server::WeightLoader {
            format: fmt,
            device: device.clone(),
        });
        let wmetrics = metrics.clone();
        let thread = std::thread::Builder::new()
            .name("mimo-engine".into())
            .spawn(move || {
                let built = MimoModel::open(&dir, fmt, &device)
                    .with_context(|| format!("loading the model in {}", dir.display()))
                    .and_then(|m| {
                        let vocab = m.config().vocab_size;
                        Ok((Loaded::from_model(m, None, engine_cfg)?.engine, vocab))
                    });
                match built {
                    Ok((engine, vocab)) => {
                        let _ = ready_tx.send(Ok((engine.max_model_len(), vocab)));
                        worker::run(engine, wcfg, wmetrics, cmd_rx);
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                }
            })
            .context("starting the engine thread")?;
        let (max_model_len, vocab_size) = ready_rx
            .await
            .context("the engine thread stopped while loading")??;
        if text.tokenizer.vocab_size() > vocab_size {
            tracing::warn!(
                "the tokenizer has {} tokens, the model {vocab_size}: prompts with higher ids are rejected",
                text.tokenizer.vocab_size()
            );
        }
        let reasoning = text.tokenizer.token_to_id(choice::THINK_END).is_some();
        let grammar = mimo_engine::GrammarCompiler::new(&text.tokenizer, vocab_size, &text.eos_ids)
            .map_err(|e| format!("structured outputs are unavailable for this model: {e}"));
        match &grammar {
            Ok(g) => metrics.set_grammar_stats(g.stats()),
            Err(e) => tracing::warn!("{e}"),
        }
        let max_prompt_bytes = text
            .tokenizer
            .max_bytes_per_token()
            .map_or(usize::MAX, |b| max_model_len.saturating_mul(b));
        let prep_threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        let state = Arc::new(server::AppState {
            text,
            served_name,
            max_model_len,
            vocab_size,
            cmd: cmd_tx,
            metrics: metrics.clone(),
            api_key,
            draining: AtomicBool::new(false),
            reasoning,
            grammar,
            tool_format,
            created: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            counter: AtomicU64::new(0),
            max_prompt_bytes,
            max_body_bytes: args.max_body_bytes,
            read_timeout: args.limits.header_read_timeout,
            prep_slots: Arc::new(tokio::sync::Semaphore::new(prep_threads)),
            weight_loader,
            update_lock: tokio::sync::Mutex::new(()),
        });
        let listener = TcpListener::bind((args.host.as_str(), args.port))
            .await
            .with_context(|| format!("binding {}:{}", args.host, args.port))?;
        let addr = listener.local_addr()?;
        let (sd_tx, sd_rx) = oneshot::channel::<()>();
        let app = server::router(state.clone());
        let grace = args.shutdown_grace;
        let limits = args.limits;
        let task = tokio::spawn(async move {
            let st = state.clone();
            let signal = async move {
                let _ = sd_rx.await;
                st.draining.store(true, Ordering::SeqCst);
                tracing::info!("shutting down: draining in-flight requests (up to {grace:?})");
                let cmd = st.cmd.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(grace).await;
                    let _ = cmd.send(worker::Command::Shutdown);
                });
            };
            listen::serve(listener, app, limits, signal, grace + DRAIN_SLACK).await;
            let _ = state.cmd.send(worker::Command::Shutdown);
            drop(state);
            tokio::task::spawn_blocking(move || thread.join())
                .await
                .context("joining the engine thread")?
                .map_err(|_| anyhow::anyhow!("the engine thread panicked"))?;
            Ok(())
        });
        tracing::info!("serving {} on http://{addr}", args.model.display());
        Ok(Server {
            addr,
            shutdown: Some(sd_tx),
            task,
            metrics,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The server's metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Stops accepting connections, lets in-flight requests finish (aborting them after the grace period),
    /// stops the engine thread and returns.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.task.await.context("server task")?
    }
}

/// Resolves on ctrl-c or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

/// Runs the server until ctrl-c or SIGTERM, then shuts down gracefully.
pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let server = Server::start(args).await?;
    eprintln!("mimo serve: listening on http://{}", server.local_addr());
    shutdown_signal().await;
    eprintln!("mimo serve: shutting down");
    server.shutdown().await
}
