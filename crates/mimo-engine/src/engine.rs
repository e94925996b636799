//! The engine: continuous batching over a paged KV cache, and MTP speculative decoding (design §7.3).
//!
//! Token-level: requests are prompt ids plus [`SamplingParams`]; every [`Engine::step`] schedules under a
//! token budget (vLLM's V1 scheduler): decodes first — one batched main-model forward over every decoding
//! sequence, or, with MTP drafts, one batched draft forward per draft position and one verification forward —
//! then prompt chunks, of running prefills and of newly admitted requests. Admission takes KV blocks for the
//! first chunk only, after the prefix cache's hit; sequences grow block by block as they decode, and when the
//! pool runs out the newest running sequences are preempted (their blocks freed, cached ones kept cached) and
//! recomputed on resume.
//!
//! Invariant of a decoding sequence: the main model's cache holds positions `0..tokens.len()-1`; the last token
//! is sampled but not yet fed (it is the next step's input). A prefilling one holds `0..done` of the
//! positions it must compute (see [`Prefill`]).

use std::collections::VecDeque;
use std::sync::Arc;

use candle_core::{DType, Tensor};
use mimo_model::{MimoModel, ModelError};
use rayon::prelude::*;

use crate::constraint::{mask, LogitsProcessor, NextToken};
use crate::kv::{KvError, PagedKvCache};
use crate::sampling::{argmax, check_logits, Sampler, SamplingError, SamplingParams};

/// Engine settings.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Most sequences decoded at once.
    pub max_num_seqs: usize,
    /// Longest sequence (prompt + completion) in tokens; defaults to the model's `max_position_embeddings`.
    pub max_model_len: Option<usize>,
    /// Positions per KV block.
    pub block_size: usize,
    /// KV blocks in the pool; default: enough for `max_num_seqs` sequences of `max_model_len`, or what half
    /// the KV budget ([`EngineConfig::kv_cache_bytes`]) holds if less (preemption shares a smaller pool).
    pub num_blocks: Option<usize>,
    /// MTP drafts per step (0 = plain decoding; 1..=3 typical). Layers are re-used when fewer exist.
    pub mtp_drafts: usize,
    /// Token ids that end a sequence (EOS) in addition to each request's `stop_token_ids`.
    pub eos_ids: Vec<u32>,
    /// Most bytes the KV cache may take; default: on CPU, the memory the OS reports available
    /// (`MemAvailable`), elsewhere unbounded (the device allocator reports what does not fit).
    pub kv_cache_bytes: Option<u64>,
    /// KV cache dtype; default: the model's activation dtype (f32 on the CPU). f16 halves the cache and the
    /// bytes attention reads per step (the fused CPU kernel widens it on the fly).
    pub kv_dtype: Option<DType>,
    /// Benchmarks only: accept each MTP draft with this probability instead of verifying it (the cost
    /// structure of speculative decoding on random weights; outputs are not the model's).
    pub simulated_acceptance: Option<f32>,
    /// Automatic prefix caching: full KV blocks are shared between sequences with the same prefix and kept
    /// after their sequences finish, until the pool needs them.
    pub prefix_caching: bool,
    /// Tokens one step may feed (decode tokens first, then prompt chunks); a longer prompt is prefilled in
    /// chunks over several steps, so it does not stall running streams.
    pub max_num_batched_tokens: usize,
}

/// The KV pool and scheduler settings every command exposes (`--num-kv-blocks`, `--block-size`,
/// `--no-prefix-caching`, `--max-num-batched-tokens`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PoolSettings {
    /// KV blocks in the pool; `None`: sized from available memory (see [`EngineConfig::num_blocks`]).
    pub num_kv_blocks: Option<usize>,
    /// Positions per KV block.
    pub block_size: usize,
    /// Automatic prefix caching.
    pub prefix_caching: bool,
    /// Token budget per step.
    pub max_num_batched_tokens: usize,
}

impl Default for PoolSettings {
    fn default() -> Self {
        let c = EngineConfig::default();
        Self {
            num_kv_blocks: c.num_blocks,
            block_size: c.block_size,
            prefix_caching: c.prefix_caching,
            max_num_batched_tokens: c.max_num_batched_tokens,
        }
    }
}

impl PoolSettings {
    /// `cfg` with these settings.
    pub fn apply(self, cfg: EngineConfig) -> EngineConfig {
        EngineConfig {
            num_blocks: self.num_kv_blocks,
            block_size: self.block_size,
            prefix_caching: self.prefix_caching,
            max_num_batched_tokens: self.max_num_batched_tokens,
            ..cfg
        }
    }
}

/// What the scheduler did so far (the server's `/metrics`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SchedulerStats {
    /// Prompt tokens looked up in the prefix cache (each admission's positions to compute).
    pub prefix_query_tokens: u64,
    /// Of those, tokens whose keys and values came from the cache.
    pub prefix_hit_tokens: u64,
    /// Sequences preempted for KV blocks.
    pub preemptions: u64,
    /// Steps that fed a prompt chunk that did not finish its prompt.
    pub chunked_prefill_steps: u64,
}

/// Most MTP drafts per step: acceptance falls geometrically with depth, so deeper chains only cost time.
pub const MAX_MTP_DRAFTS: usize = 8;

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            max_num_seqs: 16,
            max_model_len: None,
            block_size: 16,
            num_blocks: None,
            mtp_drafts: 0,
            eos_ids: vec![],
            kv_cache_bytes: None,
            kv_dtype: None,
            simulated_acceptance: None,
            prefix_caching: true,
            max_num_batched_tokens: 2048,
        }
    }
}

/// Errors of the engine.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// A request that can never run (empty prompt, unknown ids, too long, bad sampling parameters).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// Engine settings that cannot work with this model or machine.
    #[error("invalid engine settings: {0}")]
    Config(String),
    /// Bad sampling parameters.
    #[error("invalid sampling parameters: {0}")]
    Sampling(#[from] SamplingError),
    /// The model failed.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// The KV cache failed.
    #[error(transparent)]
    Kv(#[from] KvError),
    /// The model directory's text files (tokenizer, chat template, generation config) are unusable.
    #[error(transparent)]
    Text(#[from] mimo_text::TextError),
    /// A tensor operation failed.
    #[error("tensor computation failed: {0}")]
    Candle(#[from] candle_core::Error),
    /// One request failed while the engine went on (see [`FinishReason::Error`]); from
    /// [`Engine::run_to_completion`].
    #[error("request {id} failed: {message}")]
    Sequence {
        /// The request id.
        id: u64,
        /// What went wrong.
        message: String,
    },
}

/// Why a sequence finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// A stop/EOS token was produced.
    Stop,
    /// `max_tokens` or the context length was reached.
    Length,
    /// The caller aborted it.
    Abort,
    /// The sequence cannot go on, e.g. the model produced NaN or +∞ logits for it;
    /// [`StepOutput::error`] says why. Other sequences are unaffected.
    Error,
}

impl FinishReason {
    /// OpenAI's name (`error` is vLLM's, which OpenAI does not have: servers report it as an error).
    pub fn as_str(&self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::Abort => "abort",
            FinishReason::Error => "error",
        }
    }
}

/// Log-probability of one produced token and the top alternatives.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    pub token: u32,
    pub logprob: f32,
    pub top: Vec<(u32, f32)>,
}

/// What one step produced for one sequence.
#[derive(Debug, Clone)]
pub struct StepOutput {
    pub id: u64,
    /// New tokens (more than one when MTP drafts were accepted).
    pub tokens: Vec<u32>,
    /// Per new token, when the request asked for logprobs.
    pub logprobs: Vec<TokenLogprob>,
    pub finish: Option<FinishReason>,
    /// Why the sequence failed, with `finish` = [`FinishReason::Error`].
    pub error: Option<String>,
}

/// Draft and acceptance counts per draft position (index `j-1` for draft `j` of a step).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MtpStats {
    pub drafted: Vec<u64>,
    pub accepted: Vec<u64>,
}

impl MtpStats {
    /// Total drafted tokens.
    pub fn total_drafted(&self) -> u64 {
        self.drafted.iter().sum()
    }

    /// Total accepted tokens.
    pub fn total_accepted(&self) -> u64 {
        self.accepted.iter().sum()
    }

    fn count(&mut self, position: usize, accepted: bool) {
        if self.drafted.len() <= position {
            self.drafted.resize(position + 1, 0);
            self.accepted.resize(position + 1, 0);
        }
        self.drafted[position] += 1;
        if accepted {
            self.accepted[position] += 1;
        }
    }
}

struct Sequence {
    id: u64,
    slot: usize,
    tokens: Vec<u32>,
    prompt_len: usize,
    sampler: Sampler,
    max_tokens: usize,
    stop_ids: Vec<u32>,
    logprobs: Option<usize>,
    /// MTP input hidden states (f32, `H` values per position) of positions `hidden_base..`.
    hidden: Vec<f32>,
    hidden_base: usize,
    /// Rows of real (non-draft) input each MTP layer has cached.
    mtp_len: Vec<usize>,
    finish: Option<FinishReason>,
    /// Set with `finish` = [`FinishReason::Error`].
    error: Option<String>,
    /// The logits hook, if the request has one.
    processor: Option<Arc<dyn LogitsProcessor>>,
    /// Positions still to compute before decoding; `None` while decoding.
    prefill: Option<Prefill>,
    /// Chained prefix-cache hashes of the sequence's first full blocks.
    hashes: Vec<u64>,
    /// Leading blocks that are in the prefix cache (taken from it, or entered by this sequence).
    cached_blocks: usize,
    /// Admission order: preemption takes the newest first.
    admitted: u64,
}

/// The prompt processing a sequence still needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Prefill {
    /// Positions whose keys and values are in the cache.
    done: usize,
    /// Positions to compute: the prompt, or, when resuming after preemption, every token but the pending last.
    to: usize,
    /// Whether the last chunk samples the next token (not on resume: that token was sampled before).
    sample: bool,
}

impl Prefill {
    /// A whole prompt of `len` positions, ending by sampling.
    fn prompt(len: usize) -> Self {
        Self {
            done: 0,
            to: len,
            sample: true,
        }
    }
}

impl Sequence {
    /// The MTP input hidden state of position `r` (kept from `hidden_base`).
    fn hidden_row(&self, r: usize, h: usize) -> &[f32] {
        &self.hidden[(r - self.hidden_base) * h..][..h]
    }

    /// Drops hidden states no MTP layer (of the first `used`) will read again.
    fn drop_unused_hidden(&mut self, used: usize, h: usize) {
        let keep_from = self.mtp_len[..used].iter().copied().min().unwrap_or(0);
        if keep_from > self.hidden_base {
            self.hidden.drain(..(keep_from - self.hidden_base) * h);
            self.hidden_base = keep_from;
        }
    }

    fn generated(&self) -> usize {
        self.tokens.len() - self.prompt_len
    }

    /// Positions the main model's cache holds.
    fn computed(&self) -> usize {
        self.prefill.map_or(self.tokens.len() - 1, |p| p.done)
    }

    /// The chained hash of full block `i` (`block_size` positions), computed once.
    fn block_hash(&mut self, i: usize, bs: usize, salt: u64) -> u64 {
        while self.hashes.len() <= i {
            let j = self.hashes.len();
            let parent = j.checked_sub(1).map_or(0, |p| self.hashes[p]);
            self.hashes.push(crate::kv::block_hash(
                parent,
                salt,
                &self.tokens[j * bs..(j + 1) * bs],
            ));
        }
        self.hashes[i]
    }

    /// The hook's constraint on the token after `history` (prompt included).
    fn next_token(&self, history: &[u32]) -> NextToken {
        match &self.processor {
            Some(p) => p.next_token(&history[self.prompt_len.min(history.len())..]),
            None => NextToken::Any,
        }
    }

    /// The entry reported for a forced token.
    fn forced(&self, token: u32) -> (u32, Option<TokenLogprob>) {
        let lp = self.logprobs.map(|_| TokenLogprob {
            token,
            logprob: 0.0,
            top: vec![],
        });
        (token, lp)
    }
}

/// One sequence's drafts in a speculative step, and the distributions they were sampled from (empty when
/// greedy).
#[derive(Debug, Default)]
struct DraftChain {
    drafts: Vec<u32>,
    probs: Vec<Vec<f32>>,
}

/// What verification decided for one sequence.
struct Verdict {
    /// Accepted drafts, then the verified token that follows them.
    new: Vec<(u32, Option<TokenLogprob>)>,
    accepted: usize,
    /// Per draft position: accepted or not.
    outcomes: Vec<bool>,
    /// Set when the sequence cannot go on (its tokens so far in `new` still count).
    error: Option<String>,
}

impl DraftChain {
    /// Token `i` of the sequence extended by the drafts so far.
    fn token(&self, seq: &Sequence, i: usize) -> u32 {
        let n = seq.tokens.len();
        if i < n {
            seq.tokens[i]
        } else {
            self.drafts[i - n]
        }
    }

    /// Samples the next draft from an MTP logits row under the sequence's hook.
    fn propose(&mut self, seq: &mut Sequence, logits: &[f32]) {
        let mut history = seq.tokens.clone();
        history.extend(&self.drafts);
        let next = seq.next_token(&history);
        let logits = mask(logits, &next);
        let greedy = seq.sampler.params().is_greedy();
        let (d, q) = match next {
            NextToken::Force(t) if greedy => (t, vec![]),
            NextToken::Force(t) => {
                let mut q = vec![0.0; logits.len()];
                if let Some(x) = q.get_mut(t as usize) {
                    *x = 1.0;
                }
                (t, q)
            }
            _ if greedy => (argmax(&logits).unwrap_or(0) as u32, vec![]),
            _ => {
                let q = seq.sampler.probs(&logits, &history);
                (seq.sampler.sample_from_probs(&q), q)
            }
        };
        self.drafts.push(d);
        self.probs.push(q);
    }

    /// Accepts drafts left to right against the verification rows (`K+1` rows of logits): greedy drafts must
    /// equal the target's choice, sampled ones pass the speculative-sampling test; the first rejection
    /// yields the target's token, full acceptance a bonus token. `simulate` replaces the test by a coin with
    /// that acceptance probability (benchmarks of the cost structure on random weights).
    fn verify(&self, seq: &mut Sequence, rows: &[f32], simulate: Option<f32>) -> Verdict {
        let k = self.drafts.len();
        let vocab = rows.len() / (k + 1);
        let greedy = seq.sampler.params().is_greedy();
        let mut v = Verdict {
            new: vec![],
            accepted: 0,
            outcomes: vec![false; k],
            error: None,
        };
        let mut history = seq.tokens.clone();
        for i in 0..=k {
            let row = &rows[i * vocab..][..vocab];
            // Draft logits only propose; the verification rows decide, so a broken one fails the sequence
            // (after the drafts already verified).
            if let Err(e) = check_logits(row) {
                v.error = Some(e.to_string());
                break;
            }
            if i == k {
                match Engine::sample_with(seq, row, &history) {
                    Ok(s) => v.new.push(s),
                    Err(m) => v.error = Some(m),
                }
                break;
            }
            let d = self.drafts[i];
            let next = seq.next_token(&history);
            let ok = if let Some(p) = simulate {
                if coin(seq.id, history.len()) < p {
                    Ok(seq.forced(d).1)
                } else {
                    match Engine::sample_next(seq, row, &history, next) {
                        Ok((t, lp)) => Err((t, lp)),
                        Err(m) => {
                            v.error = Some(m);
                            break;
                        }
                    }
                }
            } else if greedy || matches!(next, NextToken::Force(_)) {
                match Engine::sample_next(seq, row, &history, next) {
                    Ok((t, lp)) if t == d => Ok(lp),
                    Ok((t, lp)) => Err((t, lp)),
                    Err(m) => {
                        v.error = Some(m);
                        break;
                    }
                }
            } else {
                let row = mask(row, &next);
                if !row.iter().any(|x| x.is_finite()) {
                    v.error = Some(format!("the logits processor allows no token ({next:?})"));
                    break;
                }
                let p_t = seq.sampler.probs(&row, &history);
                let lp = |tok: u32| seq.logprobs.map(|k| logprob_entry(&p_t, tok, k));
                match seq.sampler.speculative_accept(&p_t, &self.probs[i], d) {
                    Ok(()) => Ok(lp(d)),
                    Err(t) => Err((t, lp(t))),
                }
            };
            match ok {
                Ok(lp) => {
                    v.outcomes[i] = true;
                    v.new.push((d, lp));
                    history.push(d);
                    v.accepted += 1;
                }
                Err((t, lp)) => {
                    v.new.push((t, lp));
                    break;
                }
            }
        }
        v
    }
}

/// A uniform draw in [0, 1) from (sequence id, position): SplitMix64, so simulated runs are reproducible.
fn coin(id: u64, pos: usize) -> f32 {
    let mut z =
        (id.wrapping_mul(0x9E37_79B9_7F4A_7C15)) ^ (pos as u64).wrapping_add(0x2545_F491_4F6C_DD1D);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    ((z ^ (z >> 31)) >> 40) as f32 / (1u64 << 24) as f32
}

/// Most prompt tokens (padding included) in one batched prefill forward.
const PREFILL_TOKENS: usize = 2048;

/// The inference engine over one model.
pub struct Engine {
    model: Arc<MimoModel>,
    cfg: EngineConfig,
    max_model_len: usize,
    kv: PagedKvCache,
    waiting: VecDeque<Sequence>,
    running: Vec<Sequence>,
    next_id: u64,
    mtp_stats: MtpStats,
    /// The MTP layer each draft position runs (checked at construction).
    draft_layers: Vec<usize>,
    /// Prefix-cache salt: the model version (bumped by [`Engine::replace_model`]).
    salt: u64,
    stats: SchedulerStats,
    admissions: u64,
}

impl Engine {
    /// An engine over `model`.
    pub fn new(model: Arc<MimoModel>, cfg: EngineConfig) -> Result<Self, EngineError> {
        let mcfg = model.config().clone();
        let max_model_len = check_settings(&cfg, mcfg.max_position_embeddings)?;
        let kv_dtype = cfg.kv_dtype.unwrap_or(model.dtype());
        let num_blocks = pool_blocks(&cfg, &mcfg, max_model_len, kv_dtype, model.device())?;
        let kv = PagedKvCache::new(&mcfg, num_blocks, cfg.block_size, kv_dtype, model.device())?;
        let draft_layers = draft_layers(&model, cfg.mtp_drafts)?;
        Ok(Self {
            model,
            max_model_len,
            kv,
            waiting: VecDeque::new(),
            running: vec![],
            next_id: 0,
            mtp_stats: MtpStats::default(),
            draft_layers,
            cfg,
            salt: 0,
            stats: SchedulerStats::default(),
            admissions: 0,
        })
    }

    /// The model.
    pub fn model(&self) -> &Arc<MimoModel> {
        &self.model
    }

    /// Swaps in new weights of the same architecture (the RL trainer's policy after an update), in process.
    /// Only between batches: the KV cache holds keys of the old weights, so no request may be queued or running.
    pub fn replace_model(&mut self, model: Arc<MimoModel>) -> Result<(), EngineError> {
        if self.has_work() {
            return Err(EngineError::InvalidRequest(format!(
                "cannot replace the model while {} requests are queued or running",
                self.waiting.len() + self.running.len()
            )));
        }
        let (old, new) = (self.model.config(), model.config());
        if (
            old.vocab_size,
            old.hidden_size,
            old.num_hidden_layers,
            old.num_key_value_heads,
            old.head_dim,
        ) != (
            new.vocab_size,
            new.hidden_size,
            new.num_hidden_layers,
            new.num_key_value_heads,
            new.head_dim,
        ) || old.num_cache_layers() != new.num_cache_layers()
            || model.dtype() != self.model.dtype()
        {
            return Err(EngineError::InvalidRequest(
                "the replacement model has a different architecture or dtype".into(),
            ));
        }
        self.model = model;
        self.kv.clear_prefix_cache();
        self.salt += 1;
        Ok(())
    }

    /// The context length requests are checked against.
    pub fn max_model_len(&self) -> usize {
        self.max_model_len
    }

    /// Draft/acceptance counts so far.
    pub fn mtp_stats(&self) -> &MtpStats {
        &self.mtp_stats
    }

    /// Sequences waiting for admission.
    pub fn num_waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Sequences being decoded.
    pub fn num_running(&self) -> usize {
        self.running.len()
    }

    /// True while any request is waiting or running.
    pub fn has_work(&self) -> bool {
        !self.waiting.is_empty() || !self.running.is_empty()
    }

    /// Free (cached ones no sequence holds included) and total KV blocks.
    pub fn kv_blocks(&self) -> (usize, usize) {
        (self.kv.free_blocks(), self.kv.total_blocks())
    }

    /// Used, free and cached KV blocks.
    pub fn kv_usage(&self) -> crate::kv::KvUsage {
        self.kv.usage()
    }

    /// Prefix-cache, preemption and chunked-prefill counts so far.
    pub fn scheduler_stats(&self) -> &SchedulerStats {
        &self.stats
    }

    /// Queues a request; returns its id. Checks the prompt and parameters up front.
    pub fn add_request(
        &mut self,
        prompt: Vec<u32>,
        params: SamplingParams,
    ) -> Result<u64, EngineError> {
        self.add_request_with(prompt, params, None)
    }

    /// Queues a request whose every next token is constrained by `processor` (forced tokens, token sets;
    /// see [`crate::constraint`]).
    pub fn add_request_with(
        &mut self,
        prompt: Vec<u32>,
        params: SamplingParams,
        processor: Option<Arc<dyn LogitsProcessor>>,
    ) -> Result<u64, EngineError> {
        params.validate()?;
        let vocab = self.model.config().vocab_size;
        if prompt.is_empty() {
            return Err(EngineError::InvalidRequest("empty prompt".into()));
        }
        if let Some(&bad) = prompt.iter().find(|&&t| t as usize >= vocab) {
            return Err(EngineError::InvalidRequest(format!(
                "token id {bad} is out of range for vocab_size {vocab}"
            )));
        }
        if params.max_tokens == 0 {
            return Err(EngineError::InvalidRequest("max_tokens must be > 0".into()));
        }
        if let Some(&(bad, _)) = params.logit_bias.iter().find(|b| b.0 as usize >= vocab) {
            return Err(EngineError::InvalidRequest(format!(
                "logit_bias token id {bad} is out of range for vocab_size {vocab}"
            )));
        }
        if prompt.len() + params.max_tokens > self.max_model_len {
            return Err(EngineError::InvalidRequest(format!(
                "prompt ({} tokens) + max_tokens ({}) exceeds the context length {}",
                prompt.len(),
                params.max_tokens,
                self.max_model_len
            )));
        }
        let need = self
            .kv
            .blocks_for(prompt.len() + params.max_tokens + spec_margin(self.cfg.mtp_drafts));
        if need > self.kv.total_blocks() {
            return Err(EngineError::InvalidRequest(format!(
                "request needs {need} KV blocks (prompt + max_tokens), the pool has {} (--num-kv-blocks)",
                self.kv.total_blocks()
            )));
        }
        let id = self.next_id;
        self.next_id += 1;
        let mut stop_ids = params.stop_token_ids.clone();
        if !params.ignore_eos {
            stop_ids.extend(&self.cfg.eos_ids);
        }
        let prompt_len = prompt.len();
        let seq = Sequence {
            id,
            slot: usize::MAX,
            prompt_len: prompt.len(),
            tokens: prompt,
            max_tokens: params.max_tokens,
            logprobs: params.logprobs,
            sampler: Sampler::new(params)?.with_prompt_len(prompt_len),
            stop_ids,
            hidden: vec![],
            hidden_base: 0,
            mtp_len: vec![],
            finish: None,
            error: None,
            processor,
            prefill: Some(Prefill::prompt(prompt_len)),
            hashes: vec![],
            cached_blocks: 0,
            admitted: 0,
        };
        self.waiting.push_back(seq);
        Ok(id)
    }

    /// Aborts a request (waiting or running); its KV blocks are freed now. Returns false if unknown.
    pub fn abort(&mut self, id: u64) -> bool {
        if let Some(i) = self.waiting.iter().position(|s| s.id == id) {
            self.waiting.remove(i);
            return true;
        }
        if let Some(i) = self.running.iter().position(|s| s.id == id) {
            let seq = self.running.remove(i);
            self.kv.free_sequence(seq.slot);
            return true;
        }
        false
    }

    fn drafts(&self) -> usize {
        if self.model.num_mtp_layers() == 0 {
            0
        } else {
            self.cfg.mtp_drafts
        }
    }

    /// One scheduler iteration: decodes first, then prompt chunks under the token budget (see the module
    /// doc). Finished sequences leave and free their blocks; computed full blocks enter the prefix cache.
    pub fn step(&mut self) -> Result<Vec<StepOutput>, EngineError> {
        let chunks = self.schedule()?;
        let (decoding, mut prefilling): (Vec<Sequence>, Vec<Sequence>) =
            std::mem::take(&mut self.running)
                .into_iter()
                .partition(|s| s.prefill.is_none());
        self.running = decoding;
        let mut outputs = vec![];
        if !self.running.is_empty() {
            if self.drafts() > 0 {
                outputs.extend(self.spec_decode_batch()?);
            } else {
                outputs.extend(self.decode_batch()?);
            }
        }
        let lens: Vec<usize> = prefilling
            .iter()
            .map(|s| chunks.get(&s.id).copied().unwrap_or(0))
            .collect();
        if prefilling
            .iter()
            .zip(&lens)
            .any(|(s, &len)| len > 0 && s.prefill.is_some_and(|p| p.done + len < p.to))
        {
            self.stats.chunked_prefill_steps += 1;
        }
        for group in self.prefill_groups(&prefilling, &lens) {
            outputs.extend(self.prefill(&mut prefilling, &lens, &group)?);
        }
        self.running.append(&mut prefilling);
        self.running.sort_by_key(|s| s.admitted);
        self.cache_computed_blocks();
        let mut kept = Vec::with_capacity(self.running.len());
        for seq in self.running.drain(..) {
            if seq.finish.is_some() {
                self.kv.free_sequence(seq.slot);
            } else {
                kept.push(seq);
            }
        }
        self.running = kept;
        Ok(outputs)
    }

    /// Decides this step's work: KV blocks for every decode (the oldest first), then prompt chunks of running
    /// prefills, then admissions, within `max_num_batched_tokens`. A running sequence that cannot grow
    /// preempts the newest ones; admission never preempts. Returns the chunk length per prefilling request.
    fn schedule(&mut self) -> Result<std::collections::HashMap<u64, usize>, EngineError> {
        let margin = spec_margin(self.drafts());
        let mut i = 0;
        while i < self.running.len() {
            if self.running[i].prefill.is_none() {
                let need = self.running[i].tokens.len() - 1 + margin;
                if !self.grow_or_preempt(i, need)? {
                    break;
                }
            }
            i += 1;
        }
        let decode_tokens = self.running.len() * (self.drafts() + 1);
        let mut budget = self
            .cfg
            .max_num_batched_tokens
            .saturating_sub(decode_tokens);
        let mut chunks = std::collections::HashMap::new();
        let mut i = 0;
        while i < self.running.len() && budget > 0 {
            if let Some(p) = self.running[i].prefill {
                let len = (p.to - p.done).min(budget);
                if !self.grow_or_preempt(i, p.done + len)? {
                    break;
                }
                chunks.insert(self.running[i].id, len);
                budget -= len;
            }
            i += 1;
        }
        self.admit(&mut budget, &mut chunks)?;
        Ok(chunks)
    }

    /// Gives running sequence `i` blocks for `positions` positions, preempting the newest running sequences
    /// while the pool is short; false when `i` itself was preempted.
    fn grow_or_preempt(&mut self, i: usize, positions: usize) -> Result<bool, EngineError> {
        loop {
            let slot = self.running[i].slot;
            if self.kv.blocks_to_grow(slot, positions) <= self.kv.free_blocks() {
                self.kv.reserve(slot, positions)?;
                return Ok(true);
            }
            let newest = self.running.len() - 1;
            self.preempt(newest);
            if newest == i {
                return Ok(false);
            }
        }
    }

    /// Frees running sequence `i`'s blocks (cached ones stay cached) and queues it first, to recompute its
    /// tokens on resume; its sampler, with its RNG, is kept as it was.
    fn preempt(&mut self, i: usize) {
        let mut seq = self.running.remove(i);
        self.kv.free_sequence(seq.slot);
        seq.slot = usize::MAX;
        seq.prefill = Some(if seq.tokens.len() > seq.prompt_len {
            Prefill {
                done: 0,
                to: seq.tokens.len() - 1,
                sample: false,
            }
        } else {
            Prefill::prompt(seq.prompt_len)
        });
        seq.hidden.clear();
        seq.hidden_base = 0;
        seq.mtp_len.clear();
        seq.cached_blocks = 0;
        self.stats.preemptions += 1;
        self.waiting.push_front(seq);
    }

    /// MTP layers the drafts run (their caches are kept during prefill).
    fn used_mtp_layers(&self) -> usize {
        self.drafts().min(self.model.num_mtp_layers())
    }

    /// Admits waiting requests in order while sequences, budget and blocks allow: each takes its prefix-cache
    /// hit and blocks for its first chunk. A request whose next uncached block a running prefill is computing
    /// right now waits a step and then hits it (so `n > 1` and GRPO groups compute their prompt once).
    fn admit(
        &mut self,
        budget: &mut usize,
        chunks: &mut std::collections::HashMap<u64, usize>,
    ) -> Result<(), EngineError> {
        let (bs, salt, used) = (self.kv.block_size(), self.salt, self.used_mtp_layers());
        let caching = self.cfg.prefix_caching;
        let mut in_flight = std::collections::HashSet::new();
        if caching {
            for seq in self.running.iter_mut() {
                if let Some(p) = seq.prefill {
                    for b in seq.cached_blocks..p.to / bs {
                        in_flight.insert(seq.block_hash(b, bs, salt));
                    }
                }
            }
        }
        let mut w = 0;
        while self.running.len() < self.cfg.max_num_seqs && *budget > 0 && w < self.waiting.len() {
            let seq = &mut self.waiting[w];
            let p = seq.prefill.unwrap_or(Prefill::prompt(seq.prompt_len));
            // At least one position to compute (its logits or hidden state are needed), and the MTP lookahead.
            let limit = p.to.saturating_sub(used.max(1));
            let hit = if caching {
                self.kv.match_prefix(&seq.tokens, limit, salt)
            } else {
                vec![]
            };
            let n = hit.len() * bs;
            if caching && (hit.len() + 1) * bs <= limit {
                let next = seq.block_hash(hit.len(), bs, salt);
                if in_flight.contains(&next) {
                    w += 1;
                    continue;
                }
            }
            let len = (p.to - n).min(*budget);
            let need = self.kv.blocks_for(n + len) - hit.len() + self.kv.unheld(&hit);
            if need > self.kv.free_blocks() {
                break;
            }
            let Some(mut seq) = self.waiting.remove(w) else {
                break;
            };
            seq.slot = self.kv.add_sequence();
            self.kv.take_prefix(seq.slot, &hit)?;
            self.kv.reserve(seq.slot, n + len)?;
            seq.prefill = Some(Prefill { done: n, ..p });
            seq.cached_blocks = hit.len();
            seq.mtp_len = vec![n; self.model.num_mtp_layers()];
            seq.hidden.clear();
            seq.hidden_base = n;
            seq.admitted = self.admissions;
            self.admissions += 1;
            self.stats.prefix_query_tokens += p.to as u64;
            self.stats.prefix_hit_tokens += n as u64;
            if caching {
                for b in hit.len()..p.to / bs {
                    in_flight.insert(seq.block_hash(b, bs, salt));
                }
            }
            chunks.insert(seq.id, len);
            *budget -= len;
            self.running.push(seq);
        }
        Ok(())
    }

    /// Enters every running sequence's newly computed full blocks in the prefix cache: main-model keys and
    /// values for all their positions, and, with MTP drafts, the MTP layers' rows too, which read the
    /// `used` tokens after the block (stored with it as its lookahead).
    fn cache_computed_blocks(&mut self) {
        if !self.cfg.prefix_caching {
            return;
        }
        let (bs, salt, used) = (self.kv.block_size(), self.salt, self.used_mtp_layers());
        for seq in self.running.iter_mut() {
            let mut valid = seq.computed();
            if used > 0 {
                valid = valid.min(seq.mtp_len[..used].iter().copied().min().unwrap_or(0));
            }
            while seq.cached_blocks < valid / bs {
                let i = seq.cached_blocks;
                let end = (i + 1) * bs;
                if end + used > seq.tokens.len() {
                    break;
                }
                let h = seq.block_hash(i, bs, salt);
                self.kv.register(
                    seq.slot,
                    i,
                    h,
                    &seq.tokens[i * bs..end],
                    &seq.tokens[end..end + used],
                );
                seq.cached_blocks += 1;
            }
        }
    }

    /// Appends sampled tokens, stopping at a stop token or the length limit; returns the tokens kept.
    fn push_tokens(&self, seq: &mut Sequence, new: &[(u32, Option<TokenLogprob>)]) -> StepOutput {
        let mut out = StepOutput {
            id: seq.id,
            tokens: vec![],
            logprobs: vec![],
            finish: None,
            error: None,
        };
        for (tok, lp) in new {
            seq.tokens.push(*tok);
            out.tokens.push(*tok);
            if let Some(lp) = lp {
                out.logprobs.push(lp.clone());
            }
            if seq.stop_ids.contains(tok) {
                seq.finish = Some(FinishReason::Stop);
            } else if seq.generated() >= seq.max_tokens || seq.tokens.len() >= self.max_model_len {
                seq.finish = Some(FinishReason::Length);
            }
            if seq.finish.is_some() {
                break;
            }
        }
        out.finish = seq.finish;
        out
    }

    /// Appends `new` like [`Engine::push_tokens`], then, unless that finished the sequence, finishes it with
    /// [`FinishReason::Error`] and `message`.
    fn push_then_fail(
        &self,
        seq: &mut Sequence,
        new: &[(u32, Option<TokenLogprob>)],
        message: String,
    ) -> StepOutput {
        let mut out = self.push_tokens(seq, new);
        if seq.finish.is_none() {
            seq.finish = Some(FinishReason::Error);
            seq.error = Some(message);
            out.finish = seq.finish;
            out.error = seq.error.clone();
        }
        out
    }

    /// Samples the next token from a main-model logits row; a row with NaN/+∞ (or nothing finite) is an
    /// error for this sequence rather than a distribution.
    fn sample(seq: &mut Sequence, logits: &[f32]) -> Result<(u32, Option<TokenLogprob>), String> {
        check_logits(logits).map_err(|e| e.to_string())?;
        let history = std::mem::take(&mut seq.tokens);
        let r = Self::sample_with(seq, logits, &history);
        seq.tokens = history;
        r
    }

    /// Splits this step's prompt chunks (`lens[i]` positions of `seqs[i]`, 0 for none) into groups fed by one
    /// forward each: chunks of similar length, right-padded to the group's longest with at most 25 % padding
    /// and [`PREFILL_TOKENS`] tokens, where the pool has the blocks the padding writes to.
    fn prefill_groups(&self, seqs: &[Sequence], lens: &[usize]) -> Vec<Vec<usize>> {
        let mut order: Vec<usize> = (0..seqs.len()).filter(|&i| lens[i] > 0).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(lens[i]));
        let mut groups: Vec<Vec<usize>> = vec![];
        let (mut longest, mut real) = (0, 0);
        let mut spare = self.kv.free_blocks();
        for i in order {
            let len = lens[i];
            let done = seqs[i].computed();
            let pad = self.kv.blocks_to_grow(seqs[i].slot, done + longest);
            let fits = groups.last().is_some_and(|g| {
                let padded = (g.len() + 1) * longest;
                padded <= PREFILL_TOKENS && 4 * padded <= 5 * (real + len) && pad <= spare
            });
            match groups.last_mut() {
                Some(g) if fits => {
                    g.push(i);
                    real += len;
                    spare -= pad;
                }
                _ => {
                    groups.push(vec![i]);
                    longest = len;
                    real = len;
                }
            }
        }
        groups
    }

    /// Feeds one group of prompt chunks with one forward (chunks right-padded to the longest: the padding's keys
    /// and values sit after each chunk, where the causal mask hides them and later positions overwrite them;
    /// its blocks are released after), runs the MTP layers over the chunks' rows, and samples the first token
    /// of each sequence whose prompt this finishes.
    fn prefill(
        &mut self,
        seqs: &mut [Sequence],
        lens: &[usize],
        group: &[usize],
    ) -> Result<Vec<StepOutput>, EngineError> {
        let longest = group.iter().map(|&i| lens[i]).max().unwrap_or(0);
        let starts: Vec<usize> = group.iter().map(|&i| seqs[i].computed()).collect();
        let mut ids = Vec::with_capacity(group.len() * longest);
        for (&i, &start) in group.iter().zip(&starts) {
            ids.extend_from_slice(&seqs[i].tokens[start..start + lens[i]]);
            ids.resize(ids.len() + longest - lens[i], 0);
        }
        let rows: Vec<usize> = group.iter().map(|&i| seqs[i].slot).collect();
        for (&slot, &start) in rows.iter().zip(&starts) {
            self.kv.reserve(slot, start + longest)?;
        }
        let dev = self.model.device().clone();
        let ids = Tensor::from_vec(ids, (group.len(), longest), &dev)?;
        let hidden = self
            .model
            .hidden_rows(&ids, &starts, &mut self.kv.view(&rows))?;
        if self.drafts() > 0 {
            self.mtp_prefill(seqs, lens, group, &starts, &hidden)?;
        }
        // Logits only of the last position of the prompts this finishes (lm_head over every prompt row would
        // cost more than a decoder layer).
        let sampling: Vec<usize> = (0..group.len())
            .filter(|&r| {
                let p = seqs[group[r]].prefill;
                p.is_some_and(|p| p.sample && starts[r] + lens[group[r]] == p.to)
            })
            .collect();
        let logits = if sampling.is_empty() {
            vec![]
        } else {
            let h = self.model.config().hidden_size;
            let last: Vec<u32> = sampling
                .iter()
                .map(|&r| (r * longest + lens[group[r]] - 1) as u32)
                .collect();
            let picked = hidden
                .reshape((group.len() * longest, h))?
                .index_select(&Tensor::from_vec(last, sampling.len(), &dev)?, 0)?;
            self.model.logits(&picked)?.to_vec2::<f32>()?
        };
        let mut outputs = Vec::with_capacity(sampling.len());
        for (r, &i) in group.iter().enumerate() {
            let end = starts[r] + lens[i];
            if lens[i] < longest {
                self.kv.shrink(rows[r], end);
            }
            let seq = &mut seqs[i];
            let Some(p) = seq.prefill.as_mut() else {
                continue;
            };
            p.done = end;
            if end < p.to {
                continue;
            }
            seq.prefill = None;
            if let Some(k) = sampling.iter().position(|&x| x == r) {
                outputs.push(match Self::sample(seq, &logits[k]) {
                    Ok(s) => self.push_tokens(seq, &[s]),
                    Err(m) => self.push_then_fail(seq, &[], m),
                });
            }
        }
        Ok(outputs)
    }

    /// The MTP layers' pass over a group of prompt chunks: row `r` of layer `L` pairs h_r with token x_{r+1+L}
    /// (design §7.2), so over a chunk `start..end` layer `L` caches rows `start..min(end, to-1-L)`, and speculative
    /// steps only catch up a few rows. Each sequence keeps the hidden states those steps will read.
    fn mtp_prefill(
        &mut self,
        seqs: &mut [Sequence],
        lens: &[usize],
        group: &[usize],
        starts: &[usize],
        hidden: &Tensor,
    ) -> Result<(), EngineError> {
        let used = self.used_mtp_layers();
        let mh = self.model.mtp_input_hidden(hidden)?;
        let rows: Vec<usize> = group.iter().map(|&i| seqs[i].slot).collect();
        let dev = self.model.device().clone();
        for layer in 0..used {
            let counts: Vec<usize> = group
                .iter()
                .zip(starts)
                .map(|(&i, &start)| {
                    let to = seqs[i].prefill.map_or(0, |p| p.to);
                    (start + lens[i])
                        .min(to.saturating_sub(1 + layer))
                        .saturating_sub(start)
                })
                .collect();
            let n = counts.iter().copied().max().unwrap_or(0);
            if n == 0 {
                continue;
            }
            let mut ids = Vec::with_capacity(group.len() * n);
            for ((&i, &start), &c) in group.iter().zip(starts).zip(&counts) {
                let toks = &seqs[i].tokens[start + 1 + layer..];
                ids.extend_from_slice(&toks[..c]);
                ids.resize(ids.len() + n - c, 0);
            }
            let ids = Tensor::from_vec(ids, (group.len(), n), &dev)?;
            self.model.mtp_hidden_rows(
                layer,
                &mh.narrow(1, 0, n)?,
                &ids,
                starts,
                &mut self.kv.view(&rows),
            )?;
            for ((&i, &start), &c) in group.iter().zip(starts).zip(&counts) {
                if c > 0 {
                    seqs[i].mtp_len[layer] = start + c;
                }
            }
        }
        let mh = mh.to_dtype(DType::F32)?;
        let h = self.model.config().hidden_size;
        for (r, &i) in group.iter().enumerate() {
            let seq = &mut seqs[i];
            let rows = mh
                .get(r)?
                .narrow(0, 0, lens[i])?
                .flatten_all()?
                .to_vec1::<f32>()?;
            seq.hidden.extend_from_slice(&rows);
            seq.drop_unused_hidden(used, h);
        }
        Ok(())
    }

    /// One batched decode step over every running sequence (rows at different positions).
    fn decode_batch(&mut self) -> Result<Vec<StepOutput>, EngineError> {
        let dev = self.model.device().clone();
        let last: Vec<u32> = self
            .running
            .iter()
            .map(|s| s.tokens[s.tokens.len() - 1])
            .collect();
        let starts: Vec<usize> = self.running.iter().map(|s| s.tokens.len() - 1).collect();
        let rows: Vec<usize> = self.running.iter().map(|s| s.slot).collect();
        let ids = Tensor::from_vec(last, (rows.len(), 1), &dev)?;
        let out = self
            .model
            .forward_rows(&ids, &starts, &mut self.kv.view(&rows))?;
        let logits = out
            .logits
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let vocab = logits.len() / rows.len();
        let mut running = std::mem::take(&mut self.running);
        // Rows sample independently (each sequence has its own sampler and RNG), so in parallel.
        let samples: Vec<_> = running
            .par_iter_mut()
            .zip(logits.par_chunks(vocab))
            .map(|(seq, row)| Self::sample(seq, row))
            .collect();
        let mut outputs = Vec::with_capacity(running.len());
        for (seq, s) in running.iter_mut().zip(samples) {
            outputs.push(match s {
                Ok(s) => self.push_tokens(seq, &[s]),
                Err(m) => self.push_then_fail(seq, &[], m),
            });
        }
        self.running = running;
        Ok(outputs)
    }

    /// One speculative step for every running sequence (design §7.3): the draft chain, one batched MTP forward
    /// per draft position, then one batched verification forward of `[pending, d_1 .. d_K]` for all sequences.
    fn spec_decode_batch(&mut self) -> Result<Vec<StepOutput>, EngineError> {
        let k_drafts = self.drafts();
        let mut running = std::mem::take(&mut self.running);
        let mut chains: Vec<DraftChain> = running.iter().map(|_| DraftChain::default()).collect();
        for j in 1..=k_drafts {
            self.draft_position(&mut running, &mut chains, j)?;
        }
        let outputs = self.verify_batch(&mut running, &chains);
        self.running = running;
        outputs
    }

    /// Draft position `j` (1-based) for every sequence: MTP layer `draft_layers[j-1]` over its catch-up rows (the
    /// rows since its last real one, padded to the batch's longest) proposes `d_j` from each sequence's last row.
    fn draft_position(
        &mut self,
        running: &mut [Sequence],
        chains: &mut [DraftChain],
        j: usize,
    ) -> Result<(), EngineError> {
        let layer = self.draft_layers[j - 1];
        let first_use = j - 1 < self.model.num_mtp_layers();
        let h_dim = self.model.config().hidden_size;
        let dev = self.model.device().clone();
        // Row r of `layer` pairs h_r with token x_{r+1+layer} (design §7.2); this step's rows are c..=p.
        let spans: Vec<(usize, usize)> = running
            .iter()
            .map(|s| {
                let p = s.tokens.len() - 2;
                let c = if first_use {
                    s.mtp_len[layer].max(s.hidden_base)
                } else {
                    p
                };
                (c, p + 1 - c)
            })
            .collect();
        let m = spans.iter().map(|x| x.1).max().unwrap_or(1);
        let (mut ids, mut hid) = (Vec::with_capacity(running.len() * m), vec![]);
        hid.reserve(running.len() * m * h_dim);
        for ((seq, chain), &(c, rows)) in running.iter().zip(chains.iter()).zip(&spans) {
            for r in c..c + m {
                let (tok, h) = if r < c + rows {
                    let tok = if first_use {
                        chain.token(seq, r + 1 + layer)
                    } else {
                        chain.drafts[j - 2]
                    };
                    (tok, seq.hidden_row(r, h_dim))
                } else {
                    (0, seq.hidden_row(c + rows - 1, h_dim))
                };
                ids.push(tok);
                hid.extend_from_slice(h);
            }
        }
        let b = running.len();
        let ids = Tensor::from_vec(ids, (b, m), &dev)?;
        let hid = Tensor::from_vec(hid, (b, m, h_dim), &dev)?.to_dtype(self.model.dtype())?;
        let starts: Vec<usize> = spans.iter().map(|x| x.0).collect();
        let slots: Vec<usize> = running.iter().map(|s| s.slot).collect();
        let u =
            self.model
                .mtp_hidden_rows(layer, &hid, &ids, &starts, &mut self.kv.view(&slots))?;
        // Only each sequence's last real row proposes a draft: lm_head over b rows, not b × m.
        let last: Vec<u32> = spans
            .iter()
            .enumerate()
            .map(|(i, x)| (i * m + x.1 - 1) as u32)
            .collect();
        let picked = u
            .reshape((b * m, h_dim))?
            .index_select(&Tensor::from_vec(last, b, &dev)?, 0)?;
        let logits = self
            .model
            .mtp_logits(layer, &picked)?
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let vocab = logits.len() / b;
        running
            .par_iter_mut()
            .zip(chains.par_iter_mut())
            .zip(logits.par_chunks(vocab))
            .for_each(|((seq, chain), row)| chain.propose(seq, row));
        if first_use {
            for (seq, &(c, _)) in running.iter_mut().zip(&spans) {
                // Rows that read a draft token are rewritten next step; the real ones stay.
                seq.mtp_len[layer] = (seq.tokens.len() - 1).saturating_sub(layer).max(c);
            }
        }
        Ok(())
    }

    /// Verification of every sequence's chain in one main-model forward at positions p+1 ..= p+1+K, then
    /// acceptance per sequence (in parallel; each has its own sampler), counts per draft position, and the
    /// hidden states of the positions now fed for real.
    fn verify_batch(
        &mut self,
        running: &mut [Sequence],
        chains: &[DraftChain],
    ) -> Result<Vec<StepOutput>, EngineError> {
        let k = self.drafts();
        let b = running.len();
        let dev = self.model.device().clone();
        let mut input = Vec::with_capacity(b * (k + 1));
        for (seq, chain) in running.iter().zip(chains) {
            input.push(seq.tokens[seq.tokens.len() - 1]);
            input.extend(&chain.drafts);
        }
        let ids = Tensor::from_vec(input, (b, k + 1), &dev)?;
        let starts: Vec<usize> = running.iter().map(|s| s.tokens.len() - 1).collect();
        let slots: Vec<usize> = running.iter().map(|s| s.slot).collect();
        let hidden = self
            .model
            .hidden_rows(&ids, &starts, &mut self.kv.view(&slots))?;
        let logits = self
            .model
            .logits(&hidden)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let mtp_hidden = self
            .model
            .mtp_input_hidden(&hidden)?
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let per_seq = logits.len() / b;
        let h_per_seq = mtp_hidden.len() / b;
        let simulate = self.cfg.simulated_acceptance;
        let verdicts: Vec<Verdict> = running
            .par_iter_mut()
            .zip(chains.par_iter())
            .zip(logits.par_chunks(per_seq))
            .map(|((seq, chain), rows)| chain.verify(seq, rows, simulate))
            .collect();
        let mut outputs = Vec::with_capacity(b);
        for (i, (seq, v)) in running.iter_mut().zip(verdicts).enumerate() {
            for (pos, &ok) in v.outcomes.iter().enumerate() {
                self.mtp_stats.count(pos, ok);
            }
            let h = &mtp_hidden[i * h_per_seq..][..(v.accepted + 1) * (h_per_seq / (k + 1))];
            seq.hidden.extend_from_slice(h);
            outputs.push(match v.error {
                Some(m) => self.push_then_fail(seq, &v.new, m),
                None => self.push_tokens(seq, &v.new),
            });
            seq.drop_unused_hidden(self.model.num_mtp_layers().min(k), h_per_seq / (k + 1));
        }
        Ok(outputs)
    }

    /// Samples the token after `history` from a checked logits row, under the sequence's hook; errors when
    /// the hook leaves no finite logit.
    fn sample_with(
        seq: &mut Sequence,
        logits: &[f32],
        history: &[u32],
    ) -> Result<(u32, Option<TokenLogprob>), String> {
        let next = seq.next_token(history);
        Self::sample_next(seq, logits, history, next)
    }

    /// [`Engine::sample_with`] with the hook's constraint `next` already asked for.
    fn sample_next(
        seq: &mut Sequence,
        logits: &[f32],
        history: &[u32],
        next: NextToken,
    ) -> Result<(u32, Option<TokenLogprob>), String> {
        if let NextToken::Force(t) = next {
            return Ok(seq.forced(t));
        }
        let row = mask(logits, &next);
        if !row.iter().any(|x| x.is_finite()) {
            return Err(format!("the logits processor allows no token ({next:?})"));
        }
        let r = seq.sampler.sample(&row, history);
        let lp = seq.logprobs.map(|_| TokenLogprob {
            token: r.token,
            logprob: r.logprob,
            top: r
                .top_logprobs
                .iter()
                .copied()
                .filter(|t| t.1.is_finite())
                .collect(),
        });
        Ok((r.token, lp))
    }

    /// Runs until every queued request finishes; returns each request's generated tokens in id order.
    /// A request that fails ([`FinishReason::Error`]) aborts the others and returns
    /// [`EngineError::Sequence`], so the finish reasons returned are never `Error`.
    pub fn run_to_completion(&mut self) -> Result<Vec<(u64, Vec<u32>, FinishReason)>, EngineError> {
        let mut done: Vec<(u64, Vec<u32>, FinishReason)> = vec![];
        let mut acc: std::collections::HashMap<u64, Vec<u32>> = Default::default();
        while self.has_work() {
            for o in self.step()? {
                if o.finish == Some(FinishReason::Error) {
                    let ids: Vec<u64> = self
                        .waiting
                        .iter()
                        .chain(&self.running)
                        .map(|s| s.id)
                        .collect();
                    for id in ids {
                        self.abort(id);
                    }
                    return Err(EngineError::Sequence {
                        id: o.id,
                        message: o.error.unwrap_or_default(),
                    });
                }
                acc.entry(o.id).or_default().extend(&o.tokens);
                if let Some(f) = o.finish {
                    done.push((o.id, acc.remove(&o.id).unwrap_or_default(), f));
                }
            }
        }
        done.sort_by_key(|d| d.0);
        Ok(done)
    }
}

/// KV positions beyond prompt + completion a sequence may write: the verified drafts, and the padding of a
/// batched MTP catch-up (at most `2K` rows past the last real one).
fn spec_margin(drafts: usize) -> usize {
    if drafts == 0 {
        1
    } else {
        3 * drafts + 2
    }
}

/// The MTP layer of each draft position: draft `j` runs layer `j-1` (the layer trained to predict `j+1`
/// tokens ahead), the last layer again beyond the model's depth. Checked against where each layer's weights
/// came from and which cache layer it uses, so that a loader bug that mixes layers fails here, not silently in
/// the acceptance rate.
fn draft_layers(model: &MimoModel, drafts: usize) -> Result<Vec<usize>, EngineError> {
    let n = model.num_mtp_layers();
    if n == 0 {
        return Ok(vec![]);
    }
    let mut cache_layers = std::collections::HashSet::new();
    for k in 0..n {
        let (origin, cache_layer) = model.mtp_layer_origin(k)?;
        if origin != format!("model.mtp_layers.{k}")
            || cache_layer != model.config().mtp_cache_layer(k)
            || !cache_layers.insert(cache_layer)
        {
            return Err(EngineError::Config(format!(
                "MTP layer {k} was loaded from `{origin}` with cache layer {cache_layer}; expected                  `model.mtp_layers.{k}` and cache layer {}",
                model.config().mtp_cache_layer(k)
            )));
        }
    }
    Ok((1..=drafts).map(|j| (j - 1).min(n - 1)).collect())
}

/// Checks the settings against each other and the model; returns the context length.
fn check_settings(cfg: &EngineConfig, max_positions: usize) -> Result<usize, EngineError> {
    if cfg.block_size == 0 || cfg.max_num_seqs == 0 || cfg.max_num_batched_tokens == 0 {
        return Err(EngineError::Config(
            "block_size, max_num_seqs and max_num_batched_tokens must be > 0".into(),
        ));
    }
    if cfg.mtp_drafts > MAX_MTP_DRAFTS {
        return Err(EngineError::Config(format!(
            "{} MTP drafts per step; at most {MAX_MTP_DRAFTS} are supported",
            cfg.mtp_drafts
        )));
    }
    match cfg.max_model_len {
        Some(0) => Err(EngineError::Config("max_model_len must be ≥ 1".into())),
        Some(n) if n > max_positions => Err(EngineError::Config(format!(
            "max_model_len {n} exceeds the model's max_position_embeddings {max_positions} \
             (positions beyond it were never trained)"
        ))),
        Some(n) => Ok(n),
        None => Ok(max_positions.max(1)),
    }
}

/// Blocks in the pool: `num_blocks` if set, else enough for `max_num_seqs` sequences of `max_model_len`, capped
/// at half the KV budget (`kv_cache_bytes`, default on the CPU the memory the OS reports available: weights are
/// loaded by now). Refuses a pool larger than the budget, or one that cannot hold a single sequence of
/// `max_model_len`, before allocating (an allocation failure on the CPU aborts the process instead of returning
/// an error).
fn pool_blocks(
    cfg: &EngineConfig,
    mcfg: &mimo_model::ModelConfig,
    max_model_len: usize,
    dtype: DType,
    device: &candle_core::Device,
) -> Result<usize, EngineError> {
    let per_block = [
        cfg.block_size as u128,
        mcfg.num_key_value_heads as u128,
        mcfg.head_dim as u128,
        mcfg.num_cache_layers() as u128,
        2 * dtype.size_in_bytes() as u128,
    ]
    .iter()
    .product::<u128>()
    .max(1);
    let per_seq = (max_model_len + spec_margin(cfg.mtp_drafts)).div_ceil(cfg.block_size) as u128;
    let budget = cfg.kv_cache_bytes.or_else(|| {
        if device.is_cpu() {
            available_memory_bytes()
        } else {
            None
        }
    });
    let gib = |b: u128| b as f64 / (1u64 << 30) as f64;
    let blocks = match cfg.num_blocks {
        Some(0) => return Err(EngineError::Config("num_kv_blocks must be ≥ 1".into())),
        Some(n) => {
            if let Some(b) = budget {
                if n as u128 * per_block > b as u128 {
                    return Err(EngineError::Config(format!(
                        "{n} KV blocks need {:.2} GiB, more than the {:.2} GiB available; lower num_kv_blocks",
                        gib(n as u128 * per_block),
                        gib(b as u128)
                    )));
                }
            }
            n as u128
        }
        None => {
            let full = per_seq * cfg.max_num_seqs as u128;
            let cap = budget.map_or(full, |b| b as u128 / 2 / per_block);
            if cap < per_seq {
                return Err(EngineError::Config(format!(
                    "one sequence of {max_model_len} positions needs {:.2} GiB of KV cache, more than half the \
                     {:.2} GiB available; lower max_model_len or set num_kv_blocks",
                    gib(per_seq * per_block),
                    gib(budget.unwrap_or(0) as u128)
                )));
            }
            full.min(cap)
        }
    };
    if blocks * per_block > isize::MAX as u128 {
        return Err(EngineError::Config(format!(
            "the KV cache would need {} bytes; lower max_num_seqs, max_model_len or num_kv_blocks",
            blocks * per_block
        )));
    }
    Ok(blocks as usize)
}

/// `MemAvailable` from `/proc/meminfo`, in bytes (`None` where there is no such file).
fn available_memory_bytes() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// Log-probability entry of `token` and the top `k` alternatives from a probability vector.
fn logprob_entry(probs: &[f32], token: u32, k: usize) -> TokenLogprob {
    let mut idx: Vec<usize> = (0..probs.len()).collect();
    idx.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]).then(a.cmp(&b)));
    TokenLogprob {
        token,
        logprob: probs.get(token as usize).copied().unwrap_or(0.0).ln(),
        top: idx
            .into_iter()
            .take(k)
            .map(|i| (i as u32, probs[i].ln()))
            .collect(),
    }
}
