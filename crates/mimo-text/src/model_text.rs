//! Everything text-related in an HF model directory: tokenizer, chat template, EOS ids, generation defaults
//! (design §6 "Chat format", §7.7).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::error::*;
use crate::template::ChatTemplate;
use crate::tokenizer::Tokenizer;

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
        let jinja = dir.join("chat_template.jinja");
        let (chat_template, chat_template_is_fallback) =
            load_chat_template(Some(&tc_path), Some(&jinja))?;
        let special_tokens = chat_template.special_tokens().clone();

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

    /// Token ids of a one-turn chat prompt: `user` rendered through the chat template with the generation
    /// prompt, then tokenized (special-token strings as their ids), the way every stage feeds a question.
    pub fn user_prompt_ids(&self, user: &str) -> Result<Vec<u32>> {
        let prompt = self
            .chat_template
            .render(&[crate::ChatMessage::new("user", user)], true)?;
        self.tokenizer.encode(&prompt, false)
    }

    /// Whether `id` ends generation.
    pub fn is_eos(&self, id: u32) -> bool {
        self.eos_ids.contains(&id)
    }
}

pub(crate) fn field_err(path: &Path, field: &str, message: impl Into<String>) -> TextError {
    TextError::Field {
        path: path.to_path_buf(),
        field: field.into(),
        message: message.into(),
    }
}

/// A special token given as a string or as an AddedToken object `{"content": ...}`; null means unset.
pub(crate) fn special_token_string(
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

/// The chat template an HF model directory's files define: `chat_template.jinja` when present (it wins over
/// `tokenizer_config.json`'s `chat_template`, as in transformers), else `tokenizer_config.json`'s (which also
/// gives the `bos_token`/`eos_token`/`pad_token`/`unk_token` strings templates see); built-in [`CHATML_TEMPLATE`](crate::CHATML_TEMPLATE) when neither has one
/// (then the second value is `true`). Absent files are skipped. This is the one way a template is chosen, by
/// the engine, the server and the trainer alike.
pub fn load_chat_template(
    tokenizer_config: Option<&Path>,
    chat_template_jinja: Option<&Path>,
) -> Result<(ChatTemplate, bool)> {
    let tc_path = tokenizer_config.map_or_else(PathBuf::new, Path::to_path_buf);
    let tc = match tokenizer_config {
        Some(p) => read_json_object(p)?.unwrap_or_default(),
        None => Default::default(),
    };
    let mut special_tokens = BTreeMap::new();
    for key in ["bos_token", "eos_token", "pad_token", "unk_token"] {
        if let Some(s) = special_token_string(&tc, key, &tc_path)? {
            special_tokens.insert(key.to_string(), s);
        }
    }
    Ok(
        match load_template_source(chat_template_jinja, &tc, &tc_path)? {
            Some((source, origin)) => (ChatTemplate::new(source, origin, special_tokens)?, false),
            None => (ChatTemplate::chatml(special_tokens), true),
        },
    )
}

/// The template source and its origin: `chat_template.jinja`, else `tokenizer_config.json` `chat_template`
/// (string, or a list of `{name, template}` from which "default" is taken).
pub(crate) fn load_template_source(
    jinja: Option<&Path>,
    tc: &serde_json::Map<String, serde_json::Value>,
    tc_path: &Path,
) -> Result<Option<(String, String)>> {
    if let Some(jinja) = jinja.filter(|p| p.exists()) {
        let source = read_text(jinja)?;
        return Ok(Some((source, jinja.display().to_string())));
    }
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
    Ok(None)
}

pub(crate) fn eos_ids_field(
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

pub(crate) fn generation_defaults(
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
