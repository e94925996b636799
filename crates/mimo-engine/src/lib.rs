//! MiMo inference engine, token-level: continuous batching over a paged KV cache, token sampling (penalties,
//! temperature, top-k/top-p/min-p, seeded RNG, speculative acceptance) and MTP speculative decoding. Text in
//! and out (tokenizer, chat template, stop strings) lives in `mimo-text`; [`load::Loaded`] opens a model
//! directory (weights + text + engine) for every caller.

pub mod constraint;
pub mod engine;
pub mod grammar;
pub mod kv;
pub mod load;
pub mod sampling;

pub use constraint::{LogitsProcessor, NextToken, TokenMask};
pub use grammar::{Constrained, Grammar, GrammarCompiler, GrammarStats};
pub use load::{model_text, Loaded};
pub use sampling::{
    check_logits, NonFiniteLogits, SampleResult, Sampler, SamplingError, SamplingParams,
    MAX_LOGIT_BIAS, MAX_LOGPROBS, SAMPLING_EPS,
};
