//! `mimo serve`: the OpenAI-compatible server (mimo-serve) on a tokio runtime.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

use crate::UsageError;

/// `mimo serve` arguments.
#[derive(Args)]
pub struct ServeCli {
    /// HF model directory (with tokenizer.json).
    #[arg(long)]
    model: PathBuf,
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// Model name clients use (default: the directory name).
    #[arg(long)]
    served_model_name: Option<String>,
    /// Sequences decoded at once.
    #[arg(long, default_value_t = 16)]
    max_num_seqs: usize,
    /// Context length (default: the model's max_position_embeddings).
    #[arg(long)]
    max_model_len: Option<usize>,
    /// MTP draft tokens per step.
    #[arg(long, default_value_t = 0)]
    mtp: usize,
    /// Require `Authorization: Bearer KEY`.
    #[arg(long)]
    api_key: Option<String>,
    /// Waiting requests beyond this get HTTP 429.
    #[arg(long, default_value_t = 256)]
    max_queue: usize,
    /// auto, f32, bf16 or f16.
    #[arg(long, default_value = "auto")]
    dtype: String,
    /// Quantize the weights at load: q8_0, q4_0, q4_k, … (GGUF files keep their formats).
    #[arg(long)]
    quant: Option<String>,
    /// KV cache dtype: auto (the activation dtype) or f16.
    #[arg(long, default_value = "auto")]
    kv_cache_dtype: String,
    /// auto (CUDA device 0 when available, else the CPU), cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    device: String,
    /// Open connections beyond this are answered 503 and closed.
    #[arg(long, default_value_t = 1024)]
    max_connections: usize,
    /// Seconds a client may take to send a request's headers, and again its body.
    #[arg(long, default_value_t = 10.0)]
    read_timeout_s: f64,
    /// Largest request body in bytes (HTTP 413 beyond).
    #[arg(long, default_value_t = 32 << 20)]
    max_body_bytes: usize,
    /// Tool-call format: auto (from the chat template: hermes when it has `<tool_call>`), none, or hermes
    /// (aliases qwen, qwen25, qwen3, mimo).
    #[arg(long, default_value = "auto")]
    tool_call_parser: String,
    /// Accept new weights from an RL trainer: `POST /v1/weights {"path": DIR, "version": N}` (requires
    /// --api-key unless bound to loopback); in-flight requests finish on the old weights.
    #[arg(long)]
    enable_weight_updates: bool,
    #[command(flatten)]
    pool: crate::PoolArgs,
}

/// Runs the server until SIGTERM or ctrl-c.
pub fn run(a: ServeCli) -> Result<()> {
    if !(a.read_timeout_s.is_finite() && a.read_timeout_s > 0.0 && a.read_timeout_s <= 86_400.0) {
        return Err(UsageError(format!(
            "--read-timeout-s {}: expected seconds in (0, 86400]",
            a.read_timeout_s
        ))
        .into());
    }
    let args = mimo_serve::ServeArgs {
        model: a.model,
        host: a.host,
        port: a.port,
        served_model_name: a.served_model_name,
        max_num_seqs: a.max_num_seqs,
        max_model_len: a.max_model_len,
        mtp: a.mtp,
        api_key: a.api_key,
        dtype: a.dtype,
        quant: a.quant,
        kv_cache_dtype: a.kv_cache_dtype,
        device: a.device,
        max_queue: a.max_queue,
        limits: mimo_serve::ListenLimits {
            max_connections: a.max_connections.max(1),
            header_read_timeout: std::time::Duration::from_secs_f64(a.read_timeout_s),
        },
        max_body_bytes: a.max_body_bytes,
        pool: a.pool.settings(),
        tool_call_parser: a.tool_call_parser,
        enable_weight_updates: a.enable_weight_updates,
        ..Default::default()
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    rt.block_on(mimo_serve::serve(args))
}
