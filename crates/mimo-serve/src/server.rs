//! HTTP routes: OpenAI chat and text completions (plain and SSE), models, health and metrics, and (with
//! `--enable-weight-updates`) `POST /v1/weights`, which installs new weights from a shared path (RL trainers).

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use mimo_engine::{Grammar, SamplingParams};
use mimo_text::{ModelText, TemplateValue};
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};

use crate::api::{
    normalize_messages, parse, parse_logit_bias, parse_object, ApiError, ChatFields, CommonFields,
    CompletionFields, PromptField,
};
use crate::choice::{ChoiceText, LogprobEntry, Piece, ReasoningParser, THINK_START};
use crate::metrics::Metrics;
use crate::tools::{
    delta_tool_call, message_tool_calls, parse_tools, Assembled, ToolCallFormat, ToolChoice,
};
use crate::worker::{Command, Event, SeqSpec, SubmitError, ThinkBudget};

/// Most choices (`n`, times the prompts of a text completion) in one request.
pub const MAX_CHOICES: usize = 128;

/// Shared state of the HTTP handlers.
pub(crate) struct AppState {
    pub text: ModelText,
    pub served_name: String,
    pub max_model_len: usize,
    pub vocab_size: usize,
    pub cmd: mpsc::UnboundedSender<Command>,
    pub metrics: Arc<Metrics>,
    pub api_key: Option<String>,
    pub draining: AtomicBool,
    /// `</think>` is a token of the tokenizer: chat output is split into reasoning and content.
    pub reasoning: bool,
    /// Compiles output grammars (or why this model cannot have them).
    pub grammar: Result<mimo_engine::GrammarCompiler, String>,
    /// The tool-call format (`--tool-call-parser`); `None`: requests with tools are refused.
    pub tool_format: Option<Box<dyn ToolCallFormat>>,
    pub created: u64,
    pub counter: AtomicU64,
    /// Longest prompt text, in bytes, that can fit the context (context × the longest token's bytes): longer
    /// text is refused before it is tokenized.
    pub max_prompt_bytes: usize,
    /// Largest request body.
    pub max_body_bytes: usize,
    /// A request body must arrive within this time.
    pub read_timeout: std::time::Duration,
    /// Requests being parsed, templated and tokenized at once (on blocking threads, off the async runtime).
    pub prep_slots: Arc<tokio::sync::Semaphore>,
    /// How `POST /v1/weights` loads new weights; `None`: weight updates are disabled.
    pub weight_loader: Option<WeightLoader>,
    /// One weight update at a time.
    pub update_lock: tokio::sync::Mutex<()>,
}

/// The format and device new weights are loaded with (those of the served model).
pub(crate) struct WeightLoader {
    pub format: mimo_model::WeightFormat,
    pub device: candle_core::Device,
}

type St = Arc<AppState>;

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl AppState {
    fn new_id(&self, prefix: &str) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        format!("{prefix}-{t:x}{n:04x}")
    }
}

/// The router over `state`.
pub(crate) fn router(state: St) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/v1/models", get(models))
        .route("/v1/weights", post(update_weights))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(state.clone(), guard))
        .with_state(state)
}

/// Bearer auth on `/v1/*`, 503 while draining, and request counting.
async fn guard(State(st): State<St>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let path = req.uri().path().to_string();
    let resp = if path.starts_with("/v1/") {
        let authorized = match &st.api_key {
            None => true,
            Some(key) => req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .is_some_and(|k| k.trim() == key),
        };
        if !authorized {
            let mut e = ApiError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_request_error",
                "missing or invalid API key (send `Authorization: Bearer KEY`)",
            );
            e.code = Some("invalid_api_key");
            e.into_response()
        } else if st.draining.load(Ordering::Relaxed) {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                "the server is shutting down",
            )
            .into_response()
        } else {
            next.run(req).await
        }
    } else {
        next.run(req).await
    };
    st.metrics.count_request(&route, resp.status().as_u16());
    resp
}

async fn not_found() -> ApiError {
    let mut e = ApiError::new(StatusCode::NOT_FOUND, "invalid_request_error", "not found");
    e.code = Some("not_found");
    e
}

async fn health(State(st): State<St>) -> StatusCode {
    if st.draining.load(Ordering::Relaxed) {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    }
}

async fn metrics(State(st): State<St>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        st.metrics.render(&st.served_name),
    )
        .into_response()
}

async fn models(State(st): State<St>) -> axum::Json<Value> {
    axum::Json(json!({
        "object": "list",
        "data": [{
            "id": st.served_name,
            "object": "model",
            "created": st.created,
            "owned_by": "mimo",
            "root": st.served_name,
            "max_model_len": st.max_model_len,
            "weight_version": st.metrics.weight_version.load(Ordering::Relaxed),
        }]
    }))
}

/// `POST /v1/weights` body.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct WeightUpdate {
    /// A checkpoint directory (or GGUF file) this server can read, of the served model's architecture.
    path: std::path::PathBuf,
    /// The version to report from now on (`/v1/models`, `/metrics`, `weight_version` of responses).
    version: u64,
}

/// Loads new weights from a shared path (off the engine thread), then has the engine thread install them once
/// the sequences in flight finish on the old ones ([`Command::UpdateWeights`]). Answers when they serve.
async fn update_weights(State(st): State<St>, req: Request) -> Response {
    let Some(loader) = &st.weight_loader else {
        let mut e = ApiError::new(
            StatusCode::FORBIDDEN,
            "invalid_request_error",
            "weight updates are disabled (start the server with --enable-weight-updates)",
        );
        e.code = Some("weight_updates_disabled");
        return e.into_response();
    };
    let body = match read_body(&st, req).await {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    let upd: WeightUpdate = match parse_object(&body).and_then(|v| parse(&v)) {
        Ok(u) => u,
        Err(e) => return e.into_response(),
    };
    let _one = st.update_lock.lock().await;
    let t0 = std::time::Instant::now();
    let (format, device, path) = (loader.format, loader.device.clone(), upd.path);
    let loaded = tokio::task::spawn_blocking(move || {
        mimo_model::MimoModel::open(&path, format, &device)
            .map_err(|e| format!("loading {}: {e}", path.display()))
    })
    .await
    .unwrap_or_else(|e| Err(format!("loading the weights failed: {e}")));
    let model = match loaded {
        Ok(m) => Arc::new(m),
        Err(m) => return ApiError::bad_param("path", m).into_response(),
    };
    let load_s = t0.elapsed().as_secs_f64();
    let (reply, rx) = oneshot::channel();
    let sent = st.cmd.send(Command::UpdateWeights {
        model,
        version: upd.version,
        reply,
    });
    match (sent, rx.await) {
        (Ok(()), Ok(Ok(()))) => axum::Json(json!({
            "weight_version": upd.version,
            "load_s": load_s,
            "total_s": t0.elapsed().as_secs_f64(),
        }))
        .into_response(),
        (Ok(()), Ok(Err(m))) => ApiError::bad_param("path", m).into_response(),
        _ => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            "the engine is not running",
        )
        .into_response(),
    }
}

/// Everything a request needs after validation.
struct Prepared {
    seqs: Vec<SeqSpec>,
    choices: Vec<ChoiceText>,
    prompt_tokens: usize,
    stream: bool,
    include_usage: bool,
    logprobs: bool,
    /// Report token ids (and sampled log-probs) per choice and the weight version.
    return_token_ids: bool,
}

fn check_model(st: &AppState, c: &CommonFields) -> Result<(), ApiError> {
    match &c.model {
        Some(m) if !m.is_empty() && *m != st.served_name => {
            let mut e = ApiError::new(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                format!(
                    "the model `{m}` does not exist (this server serves `{}`)",
                    st.served_name
                ),
            );
            e.param = Some("model".into());
            e.code = Some("model_not_found");
            Err(e)
        }
        _ => Ok(()),
    }
}

fn nonneg(param: &str, v: Option<i64>) -> Result<Option<usize>, ApiError> {
    match v {
        None => Ok(None),
        Some(x) if x >= 0 => Ok(Some(x as usize)),
        Some(x) => Err(ApiError::bad_param(
            param,
            format!("`{param}` = {x} must be ≥ 0"),
        )),
    }
}

/// Sampling parameters from the request, with `generation_config.json` defaults. Checks the prompt length.
fn sampling(
    st: &AppState,
    c: &CommonFields,
    prompt_len: usize,
    logprobs: Option<usize>,
) -> Result<SamplingParams, ApiError> {
    if prompt_len == 0 {
        return Err(ApiError::bad_param("prompt", "the prompt is empty"));
    }
    if prompt_len >= st.max_model_len {
        return Err(ApiError::bad_param(
            "messages",
            format!(
                "the prompt is {prompt_len} tokens; the context length is {} (prompt plus at least one generated token must fit)",
                st.max_model_len
            ),
        ));
    }
    let g = &st.text.generation;
    let max_tokens = match (
        nonneg("max_completion_tokens", c.max_completion_tokens)?,
        nonneg("max_tokens", c.max_tokens)?,
    ) {
        (Some(m), _) | (None, Some(m)) => {
            if m == 0 {
                return Err(ApiError::bad_param(
                    "max_tokens",
                    "`max_tokens` must be ≥ 1",
                ));
            }
            if prompt_len + m > st.max_model_len {
                return Err(ApiError::bad_param(
                    "max_tokens",
                    format!(
                        "prompt ({prompt_len} tokens) + max_tokens ({m}) exceeds the context length {}",
                        st.max_model_len
                    ),
                ));
            }
            m
        }
        (None, None) => st.max_model_len - prompt_len,
    };
    let greedy_default = g.do_sample == Some(false);
    let temperature = c.temperature.unwrap_or(if greedy_default {
        0.0
    } else {
        g.temperature.unwrap_or(1.0)
    });
    let top_k = match c.top_k {
        None => g.top_k.unwrap_or(0),
        Some(k) if k <= 0 => {
            if k < -1 {
                return Err(ApiError::bad_param("top_k", "`top_k` must be ≥ -1"));
            }
            0
        }
        Some(k) => k as usize,
    };
    let mut stop_strings = c.stop.clone().map(|s| s.into_vec()).unwrap_or_default();
    stop_strings.retain(|s| !s.is_empty());
    let stop_token_ids = c.stop_token_ids.clone().unwrap_or_default();
    if let Some(&bad) = stop_token_ids
        .iter()
        .find(|&&t| t as usize >= st.vocab_size)
    {
        return Err(ApiError::bad_param(
            "stop_token_ids",
            format!(
                "token id {bad} is out of range for vocab_size {}",
                st.vocab_size
            ),
        ));
    }
    let p = SamplingParams {
        temperature,
        top_k,
        top_p: c.top_p.unwrap_or(g.top_p.unwrap_or(1.0)),
        min_p: c.min_p.unwrap_or(g.min_p.unwrap_or(0.0)),
        repetition_penalty: c
            .repetition_penalty
            .unwrap_or(g.repetition_penalty.unwrap_or(1.0)),
        presence_penalty: c.presence_penalty.unwrap_or(0.0),
        frequency_penalty: c.frequency_penalty.unwrap_or(0.0),
        seed: c.seed.map(|s| s as u64),
        max_tokens,
        stop_token_ids,
        stop_strings,
        logprobs,
        logit_bias: parse_logit_bias(c.logit_bias.as_ref(), st.vocab_size)?,
        ignore_eos: c.ignore_eos.unwrap_or(false),
    };
    p.validate()
        .map_err(|e| ApiError::bad_param(e.field, e.to_string()))?;
    Ok(p)
}

/// Refuses prompt text that cannot fit the context whatever it tokenizes to, before tokenizing it.
fn check_prompt_bytes(st: &AppState, param: &str, text: &str) -> Result<(), ApiError> {
    if text.len() > st.max_prompt_bytes {
        return Err(ApiError::bad_param(
            param,
            format!(
                "the prompt is {} bytes: more than the context length {} times the longest token could hold",
                text.len(),
                st.max_model_len
            ),
        ));
    }
    Ok(())
}

fn num_choices(c: &CommonFields) -> Result<usize, ApiError> {
    match c.n {
        None => Ok(1),
        Some(n) if n >= 1 && n as usize <= MAX_CHOICES => Ok(n as usize),
        Some(n) => Err(ApiError::bad_param(
            "n",
            format!("`n` = {n} must be in 1..={MAX_CHOICES}"),
        )),
    }
}

/// What constrains and parses one prompt's choices.
#[derive(Default)]
struct Output<'a> {
    think: Option<ThinkBudget>,
    /// `Some(in_think)`: split `<think>` reasoning from content (the prompt opened the block when true).
    reasoning: Option<bool>,
    grammar: Option<Grammar>,
    /// Parse tool calls in the content with this format.
    tools: Option<&'a dyn ToolCallFormat>,
}

/// The `n` sequences of one prompt (seed `s` becomes `s`, `s+1`, ... so choices differ), each with its own
/// grammar matcher.
fn push_choices(
    st: &AppState,
    prep: &mut Prepared,
    prompt: &[u32],
    params: &SamplingParams,
    n: usize,
    out: &Output,
) -> Result<(), ApiError> {
    let mut stop_ids = params.stop_token_ids.clone();
    stop_ids.extend(&st.text.eos_ids);
    for i in 0..n {
        let mut p = params.clone();
        p.seed = p.seed.map(|s| s.wrapping_add(i as u64));
        let grammar = match &out.grammar {
            None => None,
            Some(g) => {
                let compiler = st
                    .grammar
                    .as_ref()
                    .map_err(|e| ApiError::bad_param("response_format", e.clone()))?;
                let c = compiler.compile(g).map_err(|e| {
                    ApiError::bad_param(
                        "response_format",
                        format!("the output grammar cannot be compiled: {e}"),
                    )
                })?;
                Some(Arc::new(c))
            }
        };
        prep.seqs.push(SeqSpec {
            prompt: prompt.to_vec(),
            params: p,
            think: out.think,
            grammar,
            in_think: out.reasoning == Some(true),
        });
        let mut choice = ChoiceText::new(
            &st.text.tokenizer,
            &params.stop_strings,
            stop_ids.clone(),
            out.reasoning.map(ReasoningParser::new),
        );
        if let Some(f) = out.tools {
            choice = choice.with_tool_parser(f.parser(format!("call_{}_{i}_", st.new_id("t"))));
        }
        prep.choices.push(choice);
    }
    Ok(())
}

/// A chat request's prompt text: messages normalised ([`normalize_messages`]: tool-call arguments as
/// objects), `tools`, `chat_template_kwargs` and `add_generation_prompt` passed to the checkpoint's template,
/// like transformers' `apply_chat_template(messages, tools=…, **kwargs)`.
fn render_chat(
    text: &ModelText,
    f: &ChatFields,
    tools: Option<&Value>,
) -> Result<String, ApiError> {
    let messages = normalize_messages(&f.messages)?;
    let to_template = |param: &str, v: &Value| {
        mimo_text::template_value_from_json(&v.to_string())
            .map_err(|e| ApiError::bad_param(param, e.to_string()))
    };
    let mvalue = to_template("messages", &Value::Array(messages))?;
    let tools_value = tools.map(|t| to_template("tools", t)).transpose()?;
    let mut extra: Vec<(&str, TemplateValue)> = vec![];
    for (k, v) in f.chat_template_kwargs.iter().flatten() {
        extra.push((k.as_str(), to_template("chat_template_kwargs", v)?));
    }
    text.chat_template
        .render_with(
            &mvalue,
            f.add_generation_prompt.unwrap_or(true),
            tools_value.as_ref(),
            &extra,
        )
        .map_err(|e| ApiError::bad_param("messages", format!("chat template: {e}")))
}

/// The prompt text and token ids the server feeds the model for a chat request body (see [`render_chat`]);
/// `tools` are checked as for a request.
pub fn chat_prompt(text: &ModelText, body: &Value) -> Result<(String, Vec<u32>), ApiError> {
    let c: CommonFields = parse(body)?;
    let f: ChatFields = parse(body)?;
    let tools = parse_tools(c.tools.as_ref(), c.tool_choice.as_ref())?;
    let rendered = render_chat(text, &f, tools.as_ref().map(|t| &t.tools))?;
    let ids = text
        .tokenizer
        .encode(&rendered, false)
        .map_err(|e| ApiError::bad_param("messages", e.to_string()))?;
    Ok((rendered, ids))
}

fn prepare_chat(st: &AppState, body: &Value) -> Result<Prepared, ApiError> {
    let c: CommonFields = parse(body)?;
    let f: ChatFields = parse(body)?;
    check_model(st, &c)?;
    c.check_supported()?;
    let n = num_choices(&c)?;
    let tools = parse_tools(c.tools.as_ref(), c.tool_choice.as_ref())?;
    let format = match (&tools, &st.tool_format) {
        (Some(_), None) => {
            return Err(ApiError::bad_param(
                "tools",
                "this server has no tool-call parser for its chat template (start it with --tool-call-parser)",
            ))
        }
        (_, f) => f.as_deref(),
    };
    let mut grammar = c.output_grammar()?;
    if let (Some(t), Some(fmt)) = (&tools, format) {
        let single = match &t.choice {
            ToolChoice::Required => Some(false),
            ToolChoice::Named(_) => Some(true),
            _ => None,
        };
        if let Some(single) = single {
            if grammar.is_some() {
                return Err(ApiError::bad_param(
                    "tool_choice",
                    "a required or named `tool_choice` and `response_format` both constrain the output; send one",
                ));
            }
            let compiler = st
                .grammar
                .as_ref()
                .map_err(|e| ApiError::bad_param("tool_choice", e.clone()))?;
            let functions: Vec<_> = match &t.choice {
                ToolChoice::Named(name) => t
                    .functions
                    .iter()
                    .filter(|f| &f.name == name)
                    .cloned()
                    .collect(),
                _ => t.functions.clone(),
            };
            grammar = Some(Grammar::Lark(fmt.grammar(&functions, single, compiler)));
        }
    }
    let text = render_chat(&st.text, &f, tools.as_ref().map(|t| &t.tools))?;
    check_prompt_bytes(st, "messages", &text)?;
    let prompt = st
        .text
        .tokenizer
        .encode(&text, false)
        .map_err(|e| ApiError::bad_param("messages", e.to_string()))?;
    let logprobs = match (f.logprobs, nonneg("top_logprobs", f.top_logprobs)?) {
        (Some(true), k) => Some(k.unwrap_or(0)),
        _ => None,
    };
    let params = sampling(st, &c, prompt.len(), logprobs)?;
    let in_think = st.reasoning && text.trim_end().ends_with(THINK_START);
    let think = match nonneg("max_thinking_tokens", c.max_thinking_tokens)? {
        None => None,
        Some(_) if !st.reasoning => {
            return Err(ApiError::bad_param(
                "max_thinking_tokens",
                "this model's tokenizer has no `</think>` token",
            ))
        }
        Some(budget) => Some(ThinkBudget { budget, in_think }),
    };
    let mut prep = Prepared {
        seqs: vec![],
        choices: vec![],
        prompt_tokens: prompt.len(),
        stream: c.stream.unwrap_or(false),
        include_usage: c
            .stream_options
            .as_ref()
            .and_then(|o| o.include_usage)
            .unwrap_or(false),
        logprobs: logprobs.is_some(),
        return_token_ids: c.return_token_ids.unwrap_or(false),
    };
    let parse_calls = tools.as_ref().is_some_and(|t| t.choice != ToolChoice::None);
    let out = Output {
        think,
        reasoning: st.reasoning.then_some(in_think),
        grammar,
        tools: format.filter(|_| parse_calls),
    };
    push_choices(st, &mut prep, &prompt, &params, n, &out)?;
    Ok(prep)
}

fn prepare_completion(st: &AppState, body: &Value) -> Result<Prepared, ApiError> {
    let c: CommonFields = parse(body)?;
    let f: CompletionFields = parse(body)?;
    check_model(st, &c)?;
    c.check_supported()?;
    let n = num_choices(&c)?;
    let encode = |s: &str| {
        check_prompt_bytes(st, "prompt", s)?;
        st.text
            .tokenizer
            .encode(s, true)
            .map_err(|e| ApiError::bad_param("prompt", e.to_string()))
    };
    let prompts: Vec<Vec<u32>> = match f.prompt {
        PromptField::Text(s) => vec![encode(&s)?],
        PromptField::Texts(v) => v.iter().map(|s| encode(s)).collect::<Result<_, _>>()?,
        PromptField::Ids(ids) => vec![ids],
        PromptField::IdLists(v) => v,
    };
    if prompts.is_empty() {
        return Err(ApiError::bad_param("prompt", "`prompt` must not be empty"));
    }
    if prompts.len() * n > MAX_CHOICES {
        return Err(ApiError::bad_param(
            "n",
            format!("prompts × n must be ≤ {MAX_CHOICES}"),
        ));
    }
    if c.tools.as_ref().is_some_and(|t| !t.is_null()) {
        return Err(ApiError::bad_param(
            "tools",
            "`tools` are for chat completions (/v1/chat/completions)",
        ));
    }
    let grammar = c.output_grammar()?;
    let logprobs = nonneg("logprobs", f.logprobs)?;
    let mut prep = Prepared {
        seqs: vec![],
        choices: vec![],
        prompt_tokens: 0,
        stream: c.stream.unwrap_or(false),
        include_usage: c
            .stream_options
            .as_ref()
            .and_then(|o| o.include_usage)
            .unwrap_or(false),
        logprobs: logprobs.is_some(),
        return_token_ids: c.return_token_ids.unwrap_or(false),
    };
    for prompt in &prompts {
        if let Some(&bad) = prompt.iter().find(|&&t| t as usize >= st.vocab_size) {
            return Err(ApiError::bad_param(
                "prompt",
                format!(
                    "token id {bad} is out of range for vocab_size {}",
                    st.vocab_size
                ),
            ));
        }
        let params = sampling(st, &c, prompt.len(), logprobs)?;
        prep.prompt_tokens += prompt.len();
        let out = Output {
            grammar: grammar.clone(),
            ..Default::default()
        };
        push_choices(st, &mut prep, prompt, &params, n, &out)?;
    }
    Ok(prep)
}

/// Consumes engine events for all choices of a request.
struct Generation {
    rx: mpsc::UnboundedReceiver<Event>,
    keys: Vec<u64>,
    choices: Vec<ChoiceText>,
    cmd: mpsc::UnboundedSender<Command>,
    open: usize,
    /// The weights that generate this request.
    weight_version: u64,
}

impl Generation {
    /// The next piece of some choice; `None` when every choice finished.
    async fn next(&mut self) -> Option<Result<(usize, Piece), String>> {
        while self.open > 0 {
            let Some(ev) = self.rx.recv().await else {
                return Some(Err("the engine stopped".into()));
            };
            match ev {
                Event::Tokens {
                    choice,
                    tokens,
                    logprobs,
                    finish,
                } => {
                    let Some(c) = self.choices.get_mut(choice) else {
                        continue;
                    };
                    if c.finish.is_some() {
                        continue;
                    }
                    let piece = match c.push(&tokens, &logprobs, finish) {
                        Ok(p) => p,
                        Err(e) => return Some(Err(e)),
                    };
                    if piece.stop_hit {
                        if let Some(&k) = self.keys.get(choice) {
                            let _ = self.cmd.send(Command::Abort(k));
                        }
                    }
                    if piece.finish.is_some() {
                        self.open -= 1;
                    }
                    return Some(Ok((choice, piece)));
                }
                Event::Error(m) => return Some(Err(m)),
            }
        }
        None
    }

    fn completion_tokens(&self) -> usize {
        self.choices.iter().map(|c| c.tokens).sum()
    }
}

impl Drop for Generation {
    fn drop(&mut self) {
        // Abort choices still running (the engine thread would also notice the closed channel).
        for (c, &k) in self.choices.iter().zip(&self.keys) {
            if c.finish.is_none() {
                let _ = self.cmd.send(Command::Abort(k));
            }
        }
    }
}

async fn submit(st: &AppState, prep: &mut Prepared) -> Result<Generation, ApiError> {
    let (tx, rx) = mpsc::unbounded_channel();
    let (reply_tx, reply_rx) = oneshot::channel();
    let seqs = std::mem::take(&mut prep.seqs);
    let unavailable = || {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            "the engine is not running",
        )
    };
    st.cmd
        .send(Command::Submit {
            seqs,
            events: tx,
            reply: reply_tx,
        })
        .map_err(|_| unavailable())?;
    let (keys, weight_version) = match reply_rx.await.map_err(|_| unavailable())? {
        Ok(r) => r,
        Err(SubmitError::QueueFull) => {
            let mut e = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_error",
                "the request queue is full; retry later",
            );
            e.code = Some("queue_full");
            return Err(e);
        }
        Err(SubmitError::Invalid(m)) => return Err(ApiError::bad_request(m)),
    };
    let choices = std::mem::take(&mut prep.choices);
    Ok(Generation {
        rx,
        keys,
        open: choices.len(),
        choices,
        cmd: st.cmd.clone(),
        weight_version,
    })
}

fn usage(prompt: usize, completion: usize) -> Value {
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    })
}

fn chat_logprobs(entries: &[LogprobEntry]) -> Value {
    let tok = |t: &str, l: f32| json!({"token": t, "logprob": l, "bytes": t.as_bytes()});
    let content: Vec<Value> = entries
        .iter()
        .map(|e| {
            let mut v = tok(&e.token, e.logprob);
            v["top_logprobs"] = Value::Array(e.top.iter().map(|(t, l)| tok(t, *l)).collect());
            v
        })
        .collect();
    json!({"content": content, "refusal": null})
}

fn completion_logprobs(entries: &[LogprobEntry], offset: &mut usize) -> Value {
    let mut tokens = vec![];
    let mut lps = vec![];
    let mut tops = vec![];
    let mut offsets = vec![];
    for e in entries {
        tokens.push(Value::from(e.token.clone()));
        lps.push(Value::from(e.logprob));
        let mut m = serde_json::Map::new();
        for (t, l) in &e.top {
            m.insert(t.clone(), Value::from(*l));
        }
        tops.push(Value::Object(m));
        offsets.push(Value::from(*offset));
        *offset += e.token.len();
    }
    json!({"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offsets})
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Chat,
    Completion,
}

async fn chat(State(st): State<St>, req: Request) -> Response {
    handle(st, req, Kind::Chat).await
}

async fn completions(State(st): State<St>, req: Request) -> Response {
    handle(st, req, Kind::Completion).await
}

/// Reads the body within the size and time limits.
async fn read_body(st: &AppState, req: Request) -> Result<Bytes, ApiError> {
    let read = axum::body::to_bytes(req.into_body(), st.max_body_bytes);
    match tokio::time::timeout(st.read_timeout, read).await {
        Err(_) => Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "invalid_request_error",
            format!(
                "the request body did not arrive within {:?}",
                st.read_timeout
            ),
        )),
        Ok(Err(e)) if is_length_limit(&e) => Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            format!("the request body exceeds {} bytes", st.max_body_bytes),
        )),
        Ok(Err(e)) => Err(ApiError::bad_request(format!(
            "reading the request body: {e}"
        ))),
        Ok(Ok(b)) => Ok(b),
    }
}

fn is_length_limit(e: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if s.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = s.source();
    }
    false
}

/// Parses, templates and tokenizes a request on a blocking thread (these take time proportional to the
/// input, and a checkpoint's template may be slow), at most `prep_slots` at once.
async fn prepare(st: &St, body: Bytes, kind: Kind) -> Result<Prepared, ApiError> {
    let busy = || {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            "the server is shutting down",
        )
    };
    let permit = st
        .prep_slots
        .clone()
        .acquire_owned()
        .await
        .map_err(|_| busy())?;
    let st = st.clone();
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        parse_object(&body).and_then(|v| match kind {
            Kind::Chat => prepare_chat(&st, &v),
            Kind::Completion => prepare_completion(&st, &v),
        })
    })
    .await
    .unwrap_or_else(|e| {
        Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            format!("preparing the request failed: {e}"),
        ))
    })
}

async fn handle(st: St, req: Request, kind: Kind) -> Response {
    let prepared = match read_body(&st, req).await {
        Ok(body) => prepare(&st, body, kind).await,
        Err(e) => Err(e),
    };
    let mut prep = match prepared {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let gen = match submit(&st, &mut prep).await {
        Ok(g) => g,
        Err(e) => return e.into_response(),
    };
    if prep.stream {
        stream_response(st, prep, gen, kind)
    } else {
        match collect(&st, &prep, gen, kind).await {
            Ok(v) => axum::Json(v).into_response(),
            Err(e) => e.into_response(),
        }
    }
}

#[derive(Default)]
struct Acc {
    reasoning: String,
    content: String,
    logprobs: Vec<LogprobEntry>,
    finish: Option<&'static str>,
    tools: Assembled,
    token_ids: Vec<u32>,
    token_logprobs: Vec<f32>,
}

async fn collect(
    st: &AppState,
    prep: &Prepared,
    mut gen: Generation,
    kind: Kind,
) -> Result<Value, ApiError> {
    let mut acc: Vec<Acc> = (0..gen.choices.len()).map(|_| Acc::default()).collect();
    while let Some(item) = gen.next().await {
        let (i, p) =
            item.map_err(|m| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", m))?;
        if let Some(a) = acc.get_mut(i) {
            a.reasoning.push_str(&p.reasoning);
            a.content.push_str(&p.content);
            a.logprobs.extend(p.logprobs);
            a.finish = p.finish.or(a.finish);
            a.tools.add(&p.tool_events);
            a.token_ids.extend(p.token_ids);
            a.token_logprobs.extend(p.token_logprobs);
        }
    }
    let usage = usage(prep.prompt_tokens, gen.completion_tokens());
    let choices: Vec<Value> = acc
        .into_iter()
        .enumerate()
        .map(|(i, a)| {
            let finish = a.finish.unwrap_or("stop");
            let ids = prep
                .return_token_ids
                .then(|| (a.token_ids.clone(), a.token_logprobs.clone()));
            let mut choice = match kind {
                Kind::Chat => {
                    let mut msg = json!({"role": "assistant", "content": a.content});
                    if !a.tools.calls.is_empty() {
                        if a.content.trim().is_empty() {
                            msg["content"] = Value::Null;
                        }
                        msg["tool_calls"] = message_tool_calls(&a.tools.calls);
                    }
                    if gen.choices.get(i).is_some_and(|c| c.saw_think()) {
                        msg["reasoning_content"] = Value::from(a.reasoning.clone());
                        msg["reasoning"] = Value::from(a.reasoning);
                    }
                    json!({
                        "index": i,
                        "message": msg,
                        "logprobs": if prep.logprobs { chat_logprobs(&a.logprobs) } else { Value::Null },
                        "finish_reason": finish,
                    })
                }
                Kind::Completion => json!({
                    "index": i,
                    "text": a.content,
                    "logprobs": if prep.logprobs { completion_logprobs(&a.logprobs, &mut 0) } else { Value::Null },
                    "finish_reason": finish,
                }),
            };
            if let Some((ids, lps)) = ids {
                add_token_ids(&mut choice, ids, lps, prep.logprobs);
            }
            choice
        })
        .collect();
    let (id, object) = match kind {
        Kind::Chat => (st.new_id("chatcmpl"), "chat.completion"),
        Kind::Completion => (st.new_id("cmpl"), "text_completion"),
    };
    let mut resp = json!({
        "id": id,
        "object": object,
        "created": now_secs(),
        "model": st.served_name,
        "choices": choices,
        "usage": usage,
    });
    if prep.return_token_ids {
        resp["weight_version"] = Value::from(gen.weight_version);
    }
    Ok(resp)
}

/// `return_token_ids`: the choice's generated token ids and, with log-probs, their sampled log-probs.
fn add_token_ids(choice: &mut Value, ids: Vec<u32>, lps: Vec<f32>, logprobs: bool) {
    choice["token_ids"] = Value::from(ids);
    if logprobs {
        choice["token_logprobs"] = Value::from(lps);
    }
}

fn sse(v: &Value) -> Bytes {
    Bytes::from(format!("data: {v}\n\n"))
}

fn stream_response(st: St, prep: Prepared, mut gen: Generation, kind: Kind) -> Response {
    let (tx, mut rx) = mpsc::channel::<Bytes>(64);
    let (id, object) = match kind {
        Kind::Chat => (st.new_id("chatcmpl"), "chat.completion.chunk"),
        Kind::Completion => (st.new_id("cmpl"), "text_completion"),
    };
    let created = now_secs();
    let model = st.served_name.clone();
    let version = gen.weight_version;
    tokio::spawn(async move {
        let chunk = |choices: Value| {
            let mut v = json!({
                "id": id, "object": object, "created": created, "model": model, "choices": choices,
            });
            if prep.include_usage {
                v["usage"] = Value::Null;
            }
            if prep.return_token_ids {
                v["weight_version"] = Value::from(version);
            }
            v
        };
        if kind == Kind::Chat {
            for i in 0..gen.choices.len() {
                let c = chunk(json!([{
                    "index": i, "delta": {"role": "assistant", "content": ""},
                    "logprobs": null, "finish_reason": null,
                }]));
                if tx.send(sse(&c)).await.is_err() {
                    return;
                }
            }
        }
        let mut offsets = vec![0usize; gen.choices.len()];
        loop {
            let item = tokio::select! {
                _ = tx.closed() => return,
                item = gen.next() => item,
            };
            let Some(item) = item else { break };
            let (i, p) = match item {
                Ok(x) => x,
                Err(m) => {
                    let e = ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", m);
                    let _ = tx.send(sse(&e.body())).await;
                    break;
                }
            };
            if p.reasoning.is_empty()
                && p.content.is_empty()
                && p.logprobs.is_empty()
                && p.tool_events.is_empty()
                && p.token_ids.is_empty()
                && p.finish.is_none()
            {
                continue;
            }
            let ids = prep
                .return_token_ids
                .then(|| (p.token_ids.clone(), p.token_logprobs.clone()));
            let mut choice = match kind {
                Kind::Chat => {
                    let mut delta = json!({});
                    if !p.content.is_empty() {
                        delta["content"] = Value::from(p.content);
                    }
                    if !p.reasoning.is_empty() {
                        delta["reasoning_content"] = Value::from(p.reasoning.clone());
                        delta["reasoning"] = Value::from(p.reasoning);
                    }
                    let calls: Vec<Value> =
                        p.tool_events.iter().filter_map(delta_tool_call).collect();
                    if !calls.is_empty() {
                        delta["tool_calls"] = Value::Array(calls);
                    }
                    json!({
                        "index": i, "delta": delta,
                        "logprobs": if prep.logprobs { chat_logprobs(&p.logprobs) } else { Value::Null },
                        "finish_reason": p.finish,
                    })
                }
                Kind::Completion => {
                    let lp = match offsets.get_mut(i) {
                        Some(off) if prep.logprobs => completion_logprobs(&p.logprobs, off),
                        _ => Value::Null,
                    };
                    json!({"index": i, "text": p.content, "logprobs": lp, "finish_reason": p.finish})
                }
            };
            if let Some((ids, lps)) = ids {
                add_token_ids(&mut choice, ids, lps, prep.logprobs);
            }
            if tx.send(sse(&chunk(json!([choice])))).await.is_err() {
                return;
            }
        }
        if prep.include_usage {
            let mut c = chunk(json!([]));
            c["usage"] = usage(prep.prompt_tokens, gen.completion_tokens());
            if tx.send(sse(&c)).await.is_err() {
                return;
            }
        }
        let _ = tx.send(Bytes::from_static(b"data: [DONE]\n\n")).await;
    });
    let stream = futures_util::stream::poll_fn(move |cx| {
        rx.poll_recv(cx).map(|o| o.map(Ok::<Bytes, Infallible>))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}
