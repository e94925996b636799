//! MiMo inference engine: text in and out for an HF model directory (tokenizer, streaming detokenizer, chat
//! template, EOS ids) and token sampling (penalties, temperature, top-k/top-p/min-p, speculative acceptance,
//! stop strings).

pub mod engine;
pub mod kv;
pub mod sampling;
pub mod text;

pub use sampling::{
    check_logits, NonFiniteLogits, SampleResult, Sampler, SamplingError, SamplingParams,
    StopChecker, StopStep, MAX_LOGIT_BIAS, MAX_LOGPROBS, SAMPLING_EPS,
};
pub use text::{
    template_value_from_json, ChatMessage, ChatTemplate, DecodeStream, GenerationDefaults,
    ModelText, TemplateValue, TextError, Tokenizer, CHATML_TEMPLATE,
};
