//! The text side of a model, token-level engines need none of it: the `tokenizer.json` tokenizer (or one
//! built from GGUF metadata, [`GgufVocab`]) and its streaming detokenizer, chat templates rendered like
//! `transformers` (the default ChatML template lives here, once), EOS ids and generation defaults of an HF
//! model directory or a GGUF file, and the string-level stop checker.
//!
//! Training renders SFT prompts through the same [`ChatTemplate`] the engine and server use, so a checkpoint's
//! own `chat_template.jinja` decides the prompt format everywhere (design §7.7).

mod error;
mod gguf;
mod model_text;
mod pycompat;
mod stop;
mod template;
mod tokenizer;

pub use error::{Result, TextError};
pub use gguf::{GgufVocab, GGUF_PRE_TOKENIZERS};
pub use minijinja::Value as TemplateValue;
pub use model_text::{load_chat_template, GenerationDefaults, ModelText};
pub use stop::{StopChecker, StopStep};
pub use template::{
    template_value_from_json, ChatMessage, ChatTemplate, CHATML_TEMPLATE, MAX_TEMPLATE_OUTPUT,
    TEMPLATE_FUEL,
};
pub use tokenizer::{DecodeStream, Tokenizer};

#[cfg(test)]
mod tests;
