//! Text in and out for an HF model directory: tokenizer, streaming detokenizer, chat template, EOS ids and
//! generation defaults (spec §6 "Chat format", §7.7).
//!
//! The chat template is rendered with `minijinja` configured like `transformers`' Jinja environment
//! (`trim_blocks`, `lstrip_blocks`, loop controls, `raise_exception`, Python string/dict methods, a `tojson`
//! filter that behaves like `json.dumps`, and Python-style printing of `True`/`False`/`None`), so that rendering
//! matches `apply_chat_template(..., tokenize=False)`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use minijinja::value::{Kwargs, ValueKind};
use minijinja::{Environment, ErrorKind};
use serde::{Deserialize, Serialize};

pub use minijinja::Value as TemplateValue;

/// Errors from loading or using the text side of a model. Each names the file or template at fault.
#[derive(Debug, thiserror::Error)]
pub enum TextError {
    /// A file could not be read.
    #[error("{path}: cannot read: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A JSON file is not valid JSON.
    #[error("{path}: malformed JSON: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// Parser error (with line and column).
        source: serde_json::Error,
    },
    /// `tokenizer.json` is valid JSON but not a tokenizer `tokenizers` can load.
    #[error("{path}: invalid tokenizer: {message}")]
    Tokenizer {
        /// The file.
        path: PathBuf,
        /// What `tokenizers` reported.
        message: String,
    },
    /// A field of a config file has the wrong type or value.
    #[error("{path}: field `{field}`: {message}")]
    Field {
        /// The file.
        path: PathBuf,
        /// The field name.
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// Encoding failed.
    #[error("encode failed ({path}): {message}")]
    Encode {
        /// The tokenizer file.
        path: PathBuf,
        /// What `tokenizers` reported.
        message: String,
    },
    /// Decoding failed (or the streaming detokenizer lost track of its prefix).
    #[error("decode failed ({path}): {message}")]
    Decode {
        /// The tokenizer file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// The chat template did not compile, or raised an error while rendering (`raise_exception`).
    #[error("chat template ({origin}): {message}")]
    Template {
        /// Where the template came from (file and field, or "built-in ChatML").
        origin: String,
        /// The template engine's message, including `raise_exception`'s text.
        message: String,
    },
}

/// Result alias for this module.
pub type Result<T, E = TextError> = std::result::Result<T, E>;

fn read_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|source| TextError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text = read_text(path)?;
    serde_json::from_str(&text).map_err(|source| TextError::Json {
        path: path.to_path_buf(),
        source,
    })
}

/// Reads a JSON object file if it exists (`Ok(None)` when absent).
fn read_json_object(path: &Path) -> Result<Option<serde_json::Map<String, serde_json::Value>>> {
    if !path.exists() {
        return Ok(None);
    }
    match read_json(path)? {
        serde_json::Value::Object(map) => Ok(Some(map)),
        other => Err(TextError::Field {
            path: path.to_path_buf(),
            field: "<root>".into(),
            message: format!("expected a JSON object, found {}", json_type(&other)),
        }),
    }
}

fn json_type(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Tokenizer
// ---------------------------------------------------------------------------------------------------------------

/// A `tokenizer.json` tokenizer (HF `tokenizers`). Cheap to clone (shared).
#[derive(Clone)]
pub struct Tokenizer {
    inner: Arc<tokenizers::Tokenizer>,
    path: PathBuf,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("path", &self.path)
            .field("vocab_size", &self.vocab_size())
            .finish()
    }
}

impl Tokenizer {
    /// Loads `DIR/tokenizer.json`.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self> {
        Self::from_file(dir.as_ref().join("tokenizer.json"))
    }

    /// Loads a `tokenizer.json` file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let text = read_text(&path)?;
        // tokenizers' own error for a bad file is serde_json's message (with line and column).
        let inner: tokenizers::Tokenizer = serde_json::from_str(&text).map_err(|e| {
            if e.is_syntax() || e.is_eof() {
                TextError::Json {
                    path: path.clone(),
                    source: e,
                }
            } else {
                TextError::Tokenizer {
                    path: path.clone(),
                    message: e.to_string(),
                }
            }
        })?;
        Ok(Self {
            inner: Arc::new(inner),
            path,
        })
    }

    /// The file this tokenizer was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The underlying `tokenizers` tokenizer.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// An upper bound on the input bytes one token covers: the longest vocabulary entry (for WordPiece at least
    /// 4 × `max_input_chars_per_word`, the longest word it maps to one `[UNK]`). `None` for models that may map
    /// unbounded text to one unknown token (BPE fusing unknowns, Unigram, WordLevel). Text longer than `n`
    /// times this cannot fit in `n` tokens.
    pub fn max_bytes_per_token(&self) -> Option<usize> {
        use tokenizers::models::ModelWrapper;
        let floor = match self.inner.get_model() {
            ModelWrapper::BPE(b) if b.fuse_unk && b.unk_token.is_some() && !b.byte_fallback => {
                return None
            }
            ModelWrapper::BPE(_) => 1,
            ModelWrapper::WordPiece(w) => w.max_input_chars_per_word.saturating_mul(4),
            _ => return None,
        };
        let longest = self.inner.get_vocab(true).keys().map(String::len).max();
        Some(longest.unwrap_or(1).max(floor))
    }

    /// Id of a token string (vocabulary or added token).
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Token string of an id.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Encodes text. Special-token strings in `text` (e.g. `<|im_start|>`) are always recognised as their ids;
    /// `add_special_tokens` controls only the post-processor (BOS/EOS templates), as in HF.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        self.inner
            .encode_fast(text, add_special_tokens)
            .map(|enc| enc.get_ids().to_vec())
            .map_err(|e| TextError::Encode {
                path: self.path.clone(),
                message: e.to_string(),
            })
    }

    /// Decodes ids to text; `skip_special` drops tokens marked special (as HF `skip_special_tokens`).
    /// Ids outside the vocabulary are ignored.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special)
            .map_err(|e| TextError::Decode {
                path: self.path.clone(),
                message: e.to_string(),
            })
    }

    /// A new incremental detokenizer for one sequence.
    pub fn decode_stream(&self, skip_special: bool) -> DecodeStream {
        DecodeStream {
            tokenizer: self.clone(),
            skip_special,
            ids: Vec::new(),
            prefix: String::new(),
            prefix_len: 0,
        }
    }
}

/// Held-back tokens after which text still ending in U+FFFD is emitted anyway (a UTF-8 character is at most
/// 4 bytes and every byte-level token carries at least one byte, so the bytes are invalid, not incomplete).
const MAX_PENDING_TOKENS: usize = 4;

/// Incremental detokenizer: feed ids one at a time, get back only complete new text.
///
/// It decodes a short window (the tokens of the last emitted piece as context, plus the pending tokens) and
/// emits the text beyond the context's decode once it does not end in an incomplete UTF-8 character
/// (U+FFFD). The concatenation of all pieces (plus [`DecodeStream::finish`]) equals the full decode.
#[derive(Debug, Clone)]
pub struct DecodeStream {
    tokenizer: Tokenizer,
    skip_special: bool,
    /// Context ids (`..prefix_len`) followed by pending ids.
    ids: Vec<u32>,
    /// Decode of the context ids.
    prefix: String,
    prefix_len: usize,
}

impl DecodeStream {
    /// Adds one id; returns the new complete text, if any.
    pub fn step(&mut self, id: u32) -> Result<Option<String>> {
        self.ids.push(id);
        let text = self.tokenizer.decode(&self.ids, self.skip_special)?;
        let pending = self.ids.len() - self.prefix_len;
        if text.len() <= self.prefix.len()
            || (text.ends_with('\u{FFFD}') && pending < MAX_PENDING_TOKENS)
        {
            return Ok(None);
        }
        self.emit(text).map(Some)
    }

    /// Flushes held-back text at the end of a sequence (an incomplete character comes out as U+FFFD, as in
    /// the full decode) and resets the stream.
    pub fn finish(&mut self) -> Result<Option<String>> {
        let out = if self.ids.len() > self.prefix_len {
            let text = self.tokenizer.decode(&self.ids, self.skip_special)?;
            if text.len() > self.prefix.len() {
                Some(self.emit(text)?)
            } else {
                None
            }
        } else {
            None
        };
        self.ids.clear();
        self.prefix.clear();
        self.prefix_len = 0;
        Ok(out)
    }

    fn emit(&mut self, text: String) -> Result<String> {
        let Some(new) = text.strip_prefix(self.prefix.as_str()) else {
            return Err(TextError::Decode {
                path: self.tokenizer.path.clone(),
                message: format!(
                    "streaming decode: {:?} does not extend the previous text {:?}",
                    text, self.prefix
                ),
            });
        };
        let new = new.to_string();
        // The just-emitted tokens become the context for the next piece.
        self.ids.drain(..self.prefix_len);
        self.prefix = self.tokenizer.decode(&self.ids, self.skip_special)?;
        self.prefix_len = self.ids.len();
        Ok(new)
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Chat template
// ---------------------------------------------------------------------------------------------------------------

/// ChatML, used when the model directory has no chat template (spec §6, §7.7).
pub const CHATML_TEMPLATE: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + \
message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

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
    static OUTPUT_LEFT: std::cell::Cell<usize> = const { std::cell::Cell::new(MAX_TEMPLATE_OUTPUT) };
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
fn hf_environment() -> Environment<'static> {
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

fn raise_exception(message: String) -> Result<TemplateValue, minijinja::Error> {
    Err(minijinja::Error::new(ErrorKind::InvalidOperation, message))
}

/// Prints values as Jinja2 (Python `str()`) does: `True`, `False`, `None`, `[1, 'a']`, `{'k': 'v'}`; fails
/// once the render has printed [`MAX_TEMPLATE_OUTPUT`] bytes.
fn python_formatter(
    out: &mut minijinja::Output,
    state: &mut minijinja::State,
    value: &TemplateValue,
) -> Result<(), minijinja::Error> {
    let s = match value.kind() {
        ValueKind::None | ValueKind::Bool | ValueKind::Seq | ValueKind::Map => {
            let mut s = String::new();
            python_str(&mut s, value, false);
            std::borrow::Cow::Owned(s)
        }
        _ => match value.as_str() {
            Some(s) => std::borrow::Cow::Borrowed(s),
            None => std::borrow::Cow::Owned(value.to_string()),
        },
    };
    let fits = OUTPUT_LEFT.with(|left| match left.get().checked_sub(s.len()) {
        Some(rest) => {
            left.set(rest);
            true
        }
        None => false,
    });
    if !fits {
        return Err(minijinja::Error::new(
            ErrorKind::InvalidOperation,
            format!("the rendered prompt exceeds {MAX_TEMPLATE_OUTPUT} bytes"),
        ));
    }
    match value.kind() {
        ValueKind::None | ValueKind::Bool | ValueKind::Seq | ValueKind::Map => out
            .write_str(&s)
            .map_err(|e| minijinja::Error::new(ErrorKind::WriteFailure, e.to_string())),
        _ => minijinja::escape_formatter(out, state, value),
    }
}

fn python_str(out: &mut String, v: &TemplateValue, nested: bool) {
    match v.kind() {
        ValueKind::Undefined => {}
        ValueKind::None => out.push_str("None"),
        ValueKind::Bool => out.push_str(if v.is_true() { "True" } else { "False" }),
        ValueKind::String if nested => python_repr_str(out, v.as_str().unwrap_or_default()),
        ValueKind::Number => {
            if let Some(f) = as_float(v) {
                out.push_str(&python_float(f));
            } else {
                let _ = write!(out, "{v}");
            }
        }
        ValueKind::Seq => {
            out.push('[');
            if let Ok(iter) = v.try_iter() {
                for (i, item) in iter.enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    python_str(out, &item, true);
                }
            }
            out.push(']');
        }
        ValueKind::Map => {
            out.push('{');
            if let Ok(iter) = v.try_iter() {
                for (i, key) in iter.enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    python_str(out, &key, true);
                    out.push_str(": ");
                    let item = v.get_item(&key).unwrap_or_default();
                    python_str(out, &item, true);
                }
            }
            out.push('}');
        }
        _ => {
            let _ = write!(out, "{v}");
        }
    }
}

fn python_repr_str(out: &mut String, s: &str) {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push(quote);
}

/// `Some(f)` when the value is a float (not an integer).
fn as_float(v: &TemplateValue) -> Option<f64> {
    if v.kind() != ValueKind::Number || v.is_integer() {
        return None;
    }
    f64::try_from(v.clone()).ok()
}

/// Python `repr(float)`: shortest round-trip digits, positional for exponents in [-4, 16), else `1e+16` style.
fn python_float(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "Infinity" } else { "-Infinity" }.into();
    }
    // `{:e}` gives the shortest round-trip mantissa, e.g. "1.2345e-5".
    let sci = format!("{f:e}");
    let (mantissa, exp) = match sci.split_once('e') {
        Some((m, e)) => (m, e.parse::<i32>().unwrap_or(0)),
        None => (sci.as_str(), 0),
    };
    let (sign, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => ("-", m),
        None => ("", mantissa),
    };
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    if (-4..16).contains(&exp) {
        let point = exp + 1; // digits before the decimal point
        let body = if point <= 0 {
            format!("0.{}{}", "0".repeat((-point) as usize), digits)
        } else if (point as usize) >= digits.len() {
            format!("{}{}.0", digits, "0".repeat(point as usize - digits.len()))
        } else {
            format!(
                "{}.{}",
                &digits[..point as usize],
                &digits[point as usize..]
            )
        };
        format!("{sign}{body}")
    } else {
        let m = if digits.len() > 1 {
            format!("{}.{}", &digits[..1], &digits[1..])
        } else {
            digits
        };
        let esign = if exp < 0 { '-' } else { '+' };
        format!("{sign}{m}e{esign}{:02}", exp.abs())
    }
}

/// transformers' `tojson`: `json.dumps(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False)`.
fn tojson(value: &TemplateValue, kwargs: Kwargs) -> Result<TemplateValue, minijinja::Error> {
    let ensure_ascii: bool = kwargs.get::<Option<bool>>("ensure_ascii")?.unwrap_or(false);
    let sort_keys: bool = kwargs.get::<Option<bool>>("sort_keys")?.unwrap_or(false);
    let indent: Option<String> = match kwargs.get::<Option<TemplateValue>>("indent")? {
        None => None,
        Some(v) if v.is_none() => None,
        Some(v) => match v.as_str() {
            Some(s) => Some(s.to_string()),
            None => {
                let n = i64::try_from(v).map_err(|_| {
                    minijinja::Error::new(
                        ErrorKind::InvalidOperation,
                        "tojson: indent must be an integer or a string",
                    )
                })?;
                Some(" ".repeat(n.max(0) as usize))
            }
        },
    };
    let separators: Option<(String, String)> =
        match kwargs.get::<Option<TemplateValue>>("separators")? {
            Some(v) if !v.is_none() => {
                let items: Vec<TemplateValue> = v.try_iter()?.collect();
                match items.as_slice() {
                    [a, b] => Some((a.to_string(), b.to_string())),
                    _ => {
                        return Err(minijinja::Error::new(
                            ErrorKind::InvalidOperation,
                            "tojson: separators must be a pair of strings",
                        ))
                    }
                }
            }
            _ => None,
        };
    kwargs.assert_all_used()?;
    let (item_sep, key_sep) = separators.unwrap_or_else(|| {
        if indent.is_some() {
            (",".into(), ": ".into())
        } else {
            (", ".into(), ": ".into())
        }
    });
    let opts = JsonOpts {
        ensure_ascii,
        sort_keys,
        indent,
        item_sep,
        key_sep,
    };
    let mut out = String::new();
    write_json(&mut out, value, &opts, 0);
    Ok(TemplateValue::from_safe_string(out))
}

struct JsonOpts {
    ensure_ascii: bool,
    sort_keys: bool,
    indent: Option<String>,
    item_sep: String,
    key_sep: String,
}

fn write_json(out: &mut String, v: &TemplateValue, o: &JsonOpts, level: usize) {
    match v.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        ValueKind::Number => match as_float(v) {
            Some(f) => out.push_str(&python_float(f)),
            None => {
                let _ = write!(out, "{v}");
            }
        },
        ValueKind::String => json_str(out, v.as_str().unwrap_or_default(), o.ensure_ascii),
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<TemplateValue> = v.try_iter().map(|i| i.collect()).unwrap_or_default();
            write_container(out, '[', ']', &items, o, level, |out, item, level| {
                write_json(out, item, o, level)
            });
        }
        ValueKind::Map => {
            let mut keys: Vec<TemplateValue> =
                v.try_iter().map(|i| i.collect()).unwrap_or_default();
            if o.sort_keys {
                keys.sort_by_key(json_key);
            }
            write_container(out, '{', '}', &keys, o, level, |out, key, level| {
                json_str(out, &json_key(key), o.ensure_ascii);
                out.push_str(&o.key_sep);
                write_json(out, &v.get_item(key).unwrap_or_default(), o, level);
            });
        }
        _ => json_str(out, &v.to_string(), o.ensure_ascii),
    }
}

fn json_key(k: &TemplateValue) -> String {
    match k.kind() {
        ValueKind::String => k.as_str().unwrap_or_default().to_string(),
        ValueKind::None => "null".into(),
        ValueKind::Bool => (if k.is_true() { "true" } else { "false" }).into(),
        _ => k.to_string(),
    }
}

fn write_container(
    out: &mut String,
    open: char,
    close: char,
    items: &[TemplateValue],
    o: &JsonOpts,
    level: usize,
    mut each: impl FnMut(&mut String, &TemplateValue, usize),
) {
    out.push(open);
    if items.is_empty() {
        out.push(close);
        return;
    }
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push_str(&o.item_sep);
        }
        if let Some(ind) = &o.indent {
            out.push('\n');
            out.push_str(&ind.repeat(level + 1));
        }
        each(out, item, level + 1);
    }
    if let Some(ind) = &o.indent {
        out.push('\n');
        out.push_str(&ind.repeat(level));
    }
    out.push(close);
}

/// A JSON string literal as Python's `json.dumps` writes it.
fn json_str(out: &mut String, s: &str, ensure_ascii: bool) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || (ensure_ascii && (c as u32) > 0x7e) => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

// ---------------------------------------------------------------------------------------------------------------
// Model directory
// ---------------------------------------------------------------------------------------------------------------

/// Sampling defaults from `generation_config.json` (absent fields are `None`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GenerationDefaults {
    /// `temperature`.
    pub temperature: Option<f32>,
    /// `top_p`.
    pub top_p: Option<f32>,
    /// `top_k`.
    pub top_k: Option<usize>,
    /// `min_p`.
    pub min_p: Option<f32>,
    /// `repetition_penalty`.
    pub repetition_penalty: Option<f32>,
    /// `do_sample` (HF: false means greedy whatever the temperature).
    pub do_sample: Option<bool>,
    /// `max_new_tokens`.
    pub max_new_tokens: Option<usize>,
}

/// Everything text-related in an HF model directory.
#[derive(Debug)]
pub struct ModelText {
    /// `tokenizer.json`.
    pub tokenizer: Tokenizer,
    /// The model's chat template, or built-in ChatML when the directory has none.
    pub chat_template: ChatTemplate,
    /// Whether `chat_template` is the built-in ChatML fallback.
    pub chat_template_is_fallback: bool,
    /// Token ids that end generation (deduplicated, in source order).
    pub eos_ids: Vec<u32>,
    /// `bos_token`, `eos_token`, `pad_token`, `unk_token` strings from `tokenizer_config.json`, when set.
    pub special_tokens: BTreeMap<String, String>,
    /// Defaults from `generation_config.json`.
    pub generation: GenerationDefaults,
}

impl ModelText {
    /// Loads `tokenizer.json` (required) and, when present, `tokenizer_config.json`, `chat_template.jinja`,
    /// `generation_config.json` and `config.json` from `dir`.
    ///
    /// EOS ids come from `generation_config.json` `eos_token_id` (int or list), else `config.json`
    /// `eos_token_id`, else `tokenizer_config.json` `eos_token` looked up in the vocabulary.
    pub fn load(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let tokenizer = Tokenizer::from_dir(dir)?;
        let tc_path = dir.join("tokenizer_config.json");
        let tc = read_json_object(&tc_path)?.unwrap_or_default();

        let mut special_tokens = BTreeMap::new();
        for key in ["bos_token", "eos_token", "pad_token", "unk_token"] {
            if let Some(s) = special_token_string(&tc, key, &tc_path)? {
                special_tokens.insert(key.to_string(), s);
            }
        }

        let (chat_template, chat_template_is_fallback) =
            match load_template_source(dir, &tc, &tc_path)? {
                Some((source, origin)) => (
                    ChatTemplate::new(source, origin, special_tokens.clone())?,
                    false,
                ),
                None => (ChatTemplate::chatml(special_tokens.clone()), true),
            };

        let gc_path = dir.join("generation_config.json");
        let gc = read_json_object(&gc_path)?;
        let cfg_path = dir.join("config.json");
        let mut eos_ids = match gc.as_ref() {
            Some(gc) => eos_ids_field(gc, &gc_path)?,
            None => None,
        };
        if eos_ids.is_none() {
            if let Some(cfg) = read_json_object(&cfg_path)? {
                eos_ids = eos_ids_field(&cfg, &cfg_path)?;
            }
        }
        let eos_ids = match eos_ids {
            Some(ids) => ids,
            None => match special_tokens.get("eos_token") {
                Some(tok) => match tokenizer.token_to_id(tok) {
                    Some(id) => vec![id],
                    None => {
                        return Err(TextError::Field {
                            path: tc_path,
                            field: "eos_token".into(),
                            message: format!("{tok:?} is not in the tokenizer's vocabulary"),
                        })
                    }
                },
                None => Vec::new(),
            },
        };
        let mut seen = std::collections::HashSet::new();
        let eos_ids = eos_ids.into_iter().filter(|id| seen.insert(*id)).collect();

        let generation = match gc.as_ref() {
            Some(gc) => generation_defaults(gc, &gc_path)?,
            None => GenerationDefaults::default(),
        };
        Ok(Self {
            tokenizer,
            chat_template,
            chat_template_is_fallback,
            eos_ids,
            special_tokens,
            generation,
        })
    }

    /// Whether `id` ends generation.
    pub fn is_eos(&self, id: u32) -> bool {
        self.eos_ids.contains(&id)
    }
}

fn field_err(path: &Path, field: &str, message: impl Into<String>) -> TextError {
    TextError::Field {
        path: path.to_path_buf(),
        field: field.into(),
        message: message.into(),
    }
}

/// A special token given as a string or as an AddedToken object `{"content": ...}`; null means unset.
fn special_token_string(
    tc: &serde_json::Map<String, serde_json::Value>,
    key: &str,
    path: &Path,
) -> Result<Option<String>> {
    match tc.get(key) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
        Some(serde_json::Value::Object(o)) => match o.get("content") {
            Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
            _ => Err(field_err(path, key, "object without a string `content`")),
        },
        Some(other) => Err(field_err(
            path,
            key,
            format!("expected a string, found {}", json_type(other)),
        )),
    }
}

/// The template source and its origin: `tokenizer_config.json` `chat_template` (string, or a list of
/// `{name, template}` from which "default" is taken), else `chat_template.jinja`.
fn load_template_source(
    dir: &Path,
    tc: &serde_json::Map<String, serde_json::Value>,
    tc_path: &Path,
) -> Result<Option<(String, String)>> {
    let origin = format!("{}: chat_template", tc_path.display());
    match tc.get("chat_template") {
        None | Some(serde_json::Value::Null) => {}
        Some(serde_json::Value::String(s)) => return Ok(Some((s.clone(), origin))),
        Some(serde_json::Value::Array(list)) => {
            let mut names = Vec::new();
            for (i, item) in list.iter().enumerate() {
                let name = item.get("name").and_then(|v| v.as_str());
                let template = item.get("template").and_then(|v| v.as_str());
                match (name, template) {
                    (Some("default"), Some(t)) => {
                        return Ok(Some((t.to_string(), format!("{origin}[name=default]"))))
                    }
                    (Some(n), Some(_)) => names.push(n.to_string()),
                    _ => {
                        return Err(field_err(
                            tc_path,
                            &format!("chat_template[{i}]"),
                            "expected an object with string `name` and `template`",
                        ))
                    }
                }
            }
            return Err(field_err(
                tc_path,
                "chat_template",
                format!("no template named \"default\" (found {names:?})"),
            ));
        }
        Some(other) => {
            return Err(field_err(
                tc_path,
                "chat_template",
                format!("expected a string or a list, found {}", json_type(other)),
            ))
        }
    }
    let jinja = dir.join("chat_template.jinja");
    if jinja.exists() {
        let source = read_text(&jinja)?;
        return Ok(Some((source, jinja.display().to_string())));
    }
    Ok(None)
}

fn eos_ids_field(
    map: &serde_json::Map<String, serde_json::Value>,
    path: &Path,
) -> Result<Option<Vec<u32>>> {
    let as_id = |v: &serde_json::Value| v.as_u64().and_then(|n| u32::try_from(n).ok());
    match map.get("eos_token_id") {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(v @ serde_json::Value::Number(_)) => match as_id(v) {
            Some(id) => Ok(Some(vec![id])),
            None => Err(field_err(
                path,
                "eos_token_id",
                format!("{v} is not a token id"),
            )),
        },
        Some(serde_json::Value::Array(list)) => list
            .iter()
            .map(|v| {
                as_id(v).ok_or_else(|| {
                    field_err(path, "eos_token_id", format!("{v} is not a token id"))
                })
            })
            .collect::<Result<Vec<_>>>()
            .map(Some),
        Some(other) => Err(field_err(
            path,
            "eos_token_id",
            format!("expected an integer or a list, found {}", json_type(other)),
        )),
    }
}

fn generation_defaults(
    gc: &serde_json::Map<String, serde_json::Value>,
    path: &Path,
) -> Result<GenerationDefaults> {
    let float = |key: &str| -> Result<Option<f32>> {
        match gc.get(key) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(v) => v
                .as_f64()
                .map(|f| Some(f as f32))
                .ok_or_else(|| field_err(path, key, format!("expected a number, found {v}"))),
        }
    };
    let uint = |key: &str| -> Result<Option<usize>> {
        match gc.get(key) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(v) => v
                .as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .map(Some)
                .ok_or_else(|| {
                    field_err(
                        path,
                        key,
                        format!("expected a non-negative integer, found {v}"),
                    )
                }),
        }
    };
    let do_sample = match gc.get("do_sample") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::Bool(b)) => Some(*b),
        Some(v) => {
            return Err(field_err(
                path,
                "do_sample",
                format!("expected a boolean, found {v}"),
            ))
        }
    };
    // The ranges `SamplingParams::validate` enforces: a bad default must stop the server at load, not fail
    // (or silently skew) every request that leaves the field unset. Values are checked after the f32 cast,
    // so e.g. 1e39 (∞ in f32) is refused too.
    let ranged = |key: &str, ok: fn(f32) -> bool, expected: &str| -> Result<Option<f32>> {
        match float(key)? {
            Some(v) if !ok(v) => Err(field_err(
                path,
                key,
                format!("{} is out of range: {expected}", gc[key]),
            )),
            v => Ok(v),
        }
    };
    Ok(GenerationDefaults {
        temperature: ranged(
            "temperature",
            |t| t.is_finite() && t >= 0.0,
            "must be a finite number ≥ 0 (0 = greedy)",
        )?,
        top_p: ranged("top_p", |p| p > 0.0 && p <= 1.0, "must be in (0, 1]")?,
        top_k: uint("top_k")?,
        min_p: ranged("min_p", |m| (0.0..=1.0).contains(&m), "must be in [0, 1]")?,
        repetition_penalty: ranged(
            "repetition_penalty",
            |r| r.is_finite() && r > 0.0,
            "must be a finite number > 0 (1 = off)",
        )?,
        do_sample,
        max_new_tokens: uint("max_new_tokens")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_float_repr() {
        for (f, want) in [
            (2.5, "2.5"),
            (1.0, "1.0"),
            (-0.5, "-0.5"),
            (1e-10, "1e-10"),
            (1e-5, "1e-05"),
            (0.0001, "0.0001"),
            (1e16, "1e+16"),
            (123456789.0, "123456789.0"),
            (0.1 + 0.2, "0.30000000000000004"),
            (1.5e300, "1.5e+300"),
        ] {
            assert_eq!(python_float(f), want, "{f}");
        }
    }

    #[test]
    fn chatml_fallback_renders() {
        let t = ChatTemplate::chatml(BTreeMap::new());
        let out = t
            .render(
                &[
                    ChatMessage::new("system", ""),
                    ChatMessage::new("user", "hi"),
                ],
                true,
            )
            .unwrap();
        assert_eq!(
            out,
            "<|im_start|>system\n<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
        );
        assert_eq!(t.source(), CHATML_TEMPLATE);
    }

    #[test]
    fn python_printing_and_tojson() {
        let t = ChatTemplate::new(
            "{{ true }} {{ none }} {{ [1, 'a', none, 1.5] }} {{ {'k': \"it's\"} }} {{ x | tojson }} \
             {{ x | tojson(ensure_ascii=true, sort_keys=true, separators=(',', ':')) }} {{ [] | tojson(indent=2) }}",
            "test",
            BTreeMap::new(),
        )
        .unwrap();
        let x = template_value_from_json(r#"{"z": "é\u0001", "a": [1e-5, 2]}"#).unwrap();
        let out = t
            .render_with(&TemplateValue::from(()), false, None, &[("x", x)])
            .unwrap();
        assert_eq!(
            out,
            "True None [1, 'a', None, 1.5] {'k': \"it's\"} {\"z\": \"é\\u0001\", \"a\": [1e-05, 2]} \
             {\"a\":[1e-05,2],\"z\":\"\\u00e9\\u0001\"} []"
        );
    }

    #[test]
    fn generation_defaults_are_range_checked() {
        let path = Path::new("/m/generation_config.json");
        let parse = |v: serde_json::Value| {
            let serde_json::Value::Object(map) = v else {
                unreachable!()
            };
            generation_defaults(&map, path)
        };
        let ok = parse(serde_json::json!({
            "temperature": 0.0, "top_p": 1.0, "min_p": 0.0, "repetition_penalty": 1.05, "top_k": 20,
        }))
        .unwrap();
        assert_eq!(ok.temperature, Some(0.0));
        assert_eq!(ok.repetition_penalty, Some(1.05));
        let ok =
            parse(serde_json::json!({"temperature": 0.6, "top_p": 0.95, "min_p": 1.0})).unwrap();
        assert_eq!((ok.top_p, ok.min_p), (Some(0.95), Some(1.0)));
        assert_eq!(
            parse(serde_json::json!({"top_p": null})).unwrap().top_p,
            None
        );
        for (field, value) in [
            ("temperature", serde_json::json!(-0.1)),
            ("temperature", serde_json::json!(1e39)),
            ("top_p", serde_json::json!(0.0)),
            ("top_p", serde_json::json!(1.01)),
            ("top_p", serde_json::json!(-1)),
            ("top_p", serde_json::json!(1e-50)),
            ("min_p", serde_json::json!(-0.01)),
            ("min_p", serde_json::json!(1.5)),
            ("repetition_penalty", serde_json::json!(0.0)),
            ("repetition_penalty", serde_json::json!(-1.0)),
            ("repetition_penalty", serde_json::json!(1e300)),
        ] {
            let err = parse(serde_json::json!({ field: value.clone() })).unwrap_err();
            match &err {
                TextError::Field {
                    path: p,
                    field: f,
                    message,
                } => {
                    assert_eq!((p.as_path(), f.as_str()), (path, field), "{err}");
                    assert!(message.contains("out of range"), "{err}");
                }
                other => panic!("{field} = {value}: {other}"),
            }
            let shown = err.to_string();
            assert!(
                shown.contains("generation_config.json") && shown.contains(field),
                "{shown}"
            );
        }
    }

    #[test]
    fn template_errors_are_typed() {
        let err = ChatTemplate::new("{% if %}", "bad.jinja", BTreeMap::new()).unwrap_err();
        assert!(matches!(err, TextError::Template { .. }));
        assert!(err.to_string().contains("bad.jinja"), "{err}");
        let t =
            ChatTemplate::new("{{ raise_exception('nope: ' + x) }}", "t", BTreeMap::new()).unwrap();
        let err = t
            .render_with(&TemplateValue::from(()), false, None, &[("x", "y".into())])
            .unwrap_err();
        assert!(err.to_string().contains("nope: y"), "{err}");
    }

    #[test]
    fn looping_template_runs_out_of_fuel() {
        let t = ChatTemplate::new(
            "{% for i in range(100000) %}{% for j in range(100000) %}{{ '' }}{% endfor %}{% endfor %}",
            "loop.jinja",
            BTreeMap::new(),
        )
        .unwrap();
        let start = std::time::Instant::now();
        let err = t.render(&[], true).unwrap_err();
        assert!(err.to_string().contains("loop.jinja"), "{err}");
        assert!(start.elapsed().as_secs() < 60, "{:?}", start.elapsed());
    }

    #[test]
    fn template_output_is_capped() {
        let t = ChatTemplate::new(
            "{% set s = 'x' * 1000000 %}{% for i in range(100) %}{{ s }}{% endfor %}",
            "bomb.jinja",
            BTreeMap::new(),
        )
        .unwrap();
        let err = t.render(&[], true).unwrap_err();
        assert!(err.to_string().contains("exceeds"), "{err}");
        // A render after a failed one starts with the full allowance again.
        let ok = ChatTemplate::new("{{ 'y' * 1000 }}", "ok.jinja", BTreeMap::new()).unwrap();
        assert_eq!(ok.render(&[], true).unwrap().len(), 1000);
    }
}
