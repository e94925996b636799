//! Chat templates. The template is rendered with `minijinja` configured like `transformers`' Jinja environment
//! (`trim_blocks`, `lstrip_blocks`, loop controls, `raise_exception`, Python string/dict methods, a `tojson`
//! filter that behaves like `json.dumps`, and Python-style printing of `True`/`False`/`None`), so that rendering
//! matches `apply_chat_template(..., tokenize=False)`.

use std::collections::BTreeMap;

use minijinja::Environment;
use serde::{Deserialize, Serialize};

use crate::error::*;
use crate::pycompat::*;
use crate::TemplateValue;

/// The default chat template: ChatML (`<|im_start|>role\ncontent<|im_end|>\n`), dropping the reasoning
/// (`…</think>`) of earlier assistant turns as Qwen3/MiMo templates do. Written into the tokenizers `mimo
/// tokenizer train` makes, and used when a model directory has no template of its own (design §6, §7.7).
pub const CHATML_TEMPLATE: &str = r#"{%- for message in messages %}
{%- if message.role == 'assistant' %}
{%- set content = message.content %}
{%- if '</think>' in content and not loop.last %}
{%- set content = content.split('</think>')[-1].lstrip('\n') %}
{%- endif %}
{{- '<|im_start|>assistant\n' + content + '<|im_end|>\n' }}
{%- else %}
{{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>\n' }}
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
{{- '<|im_start|>assistant\n' }}
{%- endif %}
"#;

/// One chat message with plain text content. For tool calls, content parts or reasoning fields, build
/// messages as [`TemplateValue`]s and use [`ChatTemplate::render_with`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant`, ...
    pub role: String,
    /// Message text.
    pub content: String,
}

impl ChatMessage {
    /// A message with the given role and content.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// A compiled chat template plus the special-token strings it sees (`bos_token`, `eos_token`, ...).
pub struct ChatTemplate {
    env: Environment<'static>,
    source: String,
    origin: String,
    special_tokens: BTreeMap<String, String>,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("origin", &self.origin)
            .field("special_tokens", &self.special_tokens)
            .finish()
    }
}

const TEMPLATE_NAME: &str = "chat_template";

/// Template instructions one render may execute (minijinja fuel). Real chat templates over long conversations
/// use well under a million; a template that loops (a hostile or broken checkpoint) fails in about a second
/// instead of wedging the caller.
pub const TEMPLATE_FUEL: u64 = 20_000_000;

/// Most bytes the values printed by one render may add up to.
pub const MAX_TEMPLATE_OUTPUT: usize = 64 << 20;

thread_local! {
    /// Bytes the render running on this thread may still print (see [`MAX_TEMPLATE_OUTPUT`]).
    pub(crate) static OUTPUT_LEFT: std::cell::Cell<usize> = const { std::cell::Cell::new(MAX_TEMPLATE_OUTPUT) };
}

impl ChatTemplate {
    /// Compiles a template. `origin` names its source in errors (e.g. `DIR/tokenizer_config.json`);
    /// `special_tokens` maps names such as `bos_token` to strings passed to the template.
    pub fn new(
        source: impl Into<String>,
        origin: impl Into<String>,
        special_tokens: BTreeMap<String, String>,
    ) -> Result<Self> {
        let source = source.into();
        let origin = origin.into();
        let mut env = hf_environment();
        env.add_template_owned(TEMPLATE_NAME, source.clone())
            .map_err(|e| TextError::Template {
                origin: origin.clone(),
                message: format!("{e:#}"),
            })?;
        Ok(Self {
            env,
            source,
            origin,
            special_tokens,
        })
    }

    /// The built-in ChatML template.
    pub fn chatml(special_tokens: BTreeMap<String, String>) -> Self {
        match Self::new(CHATML_TEMPLATE, "built-in ChatML", special_tokens.clone()) {
            Ok(t) => t,
            // The built-in template is a constant that compiles (tested); keep a non-panicking path anyway.
            Err(_) => Self {
                env: hf_environment(),
                source: String::new(),
                origin: "built-in ChatML".into(),
                special_tokens,
            },
        }
    }

    /// The template source.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Where the template came from.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// Special-token strings passed to the template.
    pub fn special_tokens(&self) -> &BTreeMap<String, String> {
        &self.special_tokens
    }

    /// A user prompt and its assistant response as training text, rendered the way inference renders them:
    /// `(prompt, response)` where `prompt` is the one-turn conversation with the generation prompt (exactly what
    /// the engine is fed at inference) and `response` is what the two-turn conversation adds after it (the
    /// response and the template's end of turn). Errors when the two-turn rendering does not start with the
    /// prompt rendering, since then no token sequence is both what SFT trains on and what inference sees.
    pub fn render_sft(&self, prompt: &str, response: &str) -> Result<(String, String)> {
        let user = ChatMessage::new("user", prompt);
        let head = self.render(std::slice::from_ref(&user), true)?;
        let full = self.render(&[user, ChatMessage::new("assistant", response)], false)?;
        match full.strip_prefix(head.as_str()) {
            Some(tail) => Ok((head.clone(), tail.to_string())),
            None => Err(TextError::Template {
                origin: self.origin.clone(),
                message: "the rendered user + assistant conversation does not start with the rendered prompt \
                          (add_generation_prompt), so SFT cannot train on what inference is fed"
                    .into(),
            }),
        }
    }

    /// Renders plain-text messages.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        self.render_with(
            &TemplateValue::from(minijinja::value::Serde(messages)),
            add_generation_prompt,
            None,
            &[],
        )
    }

    /// Renders with full control, like `apply_chat_template(messages, tools=tools, add_generation_prompt=...,
    /// **extra)`: `messages` and `tools` may hold any JSON-like data (see [`template_value_from_json`], which
    /// keeps key order); `extra` adds or overrides template variables (e.g. `enable_thinking`).
    pub fn render_with(
        &self,
        messages: &TemplateValue,
        add_generation_prompt: bool,
        tools: Option<&TemplateValue>,
        extra: &[(&str, TemplateValue)],
    ) -> Result<String> {
        let mut ctx: BTreeMap<String, TemplateValue> = BTreeMap::new();
        for (k, v) in &self.special_tokens {
            ctx.insert(k.clone(), TemplateValue::from(v.as_str()));
        }
        ctx.insert("messages".into(), messages.clone());
        // transformers always passes `tools` and `documents`, as None when absent.
        ctx.insert(
            "tools".into(),
            tools.cloned().unwrap_or(TemplateValue::from(())),
        );
        ctx.insert("documents".into(), TemplateValue::from(()));
        ctx.insert(
            "add_generation_prompt".into(),
            TemplateValue::from(add_generation_prompt),
        );
        for (k, v) in extra {
            ctx.insert((*k).to_string(), v.clone());
        }
        let tmpl = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(|e| self.template_error(e))?;
        OUTPUT_LEFT.with(|left| left.set(MAX_TEMPLATE_OUTPUT));
        tmpl.render(TemplateValue::from_pairs(ctx))
            .map_err(|e| self.template_error(e))
    }

    fn template_error(&self, e: minijinja::Error) -> TextError {
        TextError::Template {
            origin: self.origin.clone(),
            message: format!("{e:#}"),
        }
    }
}

/// Parses JSON text into a template value, keeping object key order (as Python dicts do).
pub fn template_value_from_json(json: &str) -> Result<TemplateValue, serde_json::Error> {
    serde_json::from_str(json)
}

/// A minijinja environment that behaves like transformers' chat-template environment.
pub(crate) fn hf_environment() -> Environment<'static> {
    let mut env = Environment::new();
    let syntax = minijinja::syntax::SyntaxConfig::builder()
        .trim_blocks(true)
        .lstrip_blocks(true)
        .build();
    if let Ok(syntax) = syntax {
        env.set_syntax(syntax);
    }
    minijinja_contrib::add_to_environment(&mut env);
    env.set_fuel(Some(TEMPLATE_FUEL));
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function("raise_exception", raise_exception);
    env.add_filter("tojson", tojson);
    env.set_formatter(python_formatter);
    env
}
