//! Tool calling: a request's `tools` and `tool_choice`, the tool-call formats (a registry: each format parses
//! a model's tool-call text into OpenAI `tool_calls`, streaming or not, and writes the grammar that enforces
//! `tool_choice: "required"` or a named function).
//!
//! The one format today is Hermes/Qwen/MiMo's, `<tool_call>\n{"name": …, "arguments": {…}}\n</tool_call>`,
//! one block per call; text outside the blocks stays content.

use mimo_engine::grammar::with_json_options;
use mimo_engine::GrammarCompiler;
use serde_json::{json, Value};

use crate::api::ApiError;
use crate::choice::partial_tag_len;

/// Names `--tool-call-parser` accepts (aliases of one format included).
pub const TOOL_PARSERS: &[&str] = &["hermes", "qwen", "qwen25", "qwen3", "mimo"];

/// `tool_choice`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolChoice {
    /// Never call: tools are shown to the template but output is not parsed.
    None,
    /// The model decides; output is parsed for calls.
    Auto,
    /// At least one call, enforced by a grammar.
    Required,
    /// Exactly one call of this function, enforced by a grammar.
    Named(String),
}

/// One function a request offers.
#[derive(Debug, Clone, PartialEq)]
pub struct Function {
    /// Its name.
    pub name: String,
    /// JSON schema of its arguments (`{"type": "object"}` when absent).
    pub parameters: Value,
}

/// The tool part of a chat request.
#[derive(Debug, Clone)]
pub struct ToolRequest {
    /// `tools` as sent (passed to the chat template).
    pub tools: Value,
    /// The functions, in order.
    pub functions: Vec<Function>,
    /// `tool_choice` (default `auto`).
    pub choice: ToolChoice,
}

/// Parses and checks `tools` and `tool_choice`. `Ok(None)` when the request has no tools.
pub fn parse_tools(
    tools: Option<&Value>,
    tool_choice: Option<&Value>,
) -> Result<Option<ToolRequest>, ApiError> {
    let list = match tools {
        None | Some(Value::Null) => &[][..],
        Some(Value::Array(a)) => a.as_slice(),
        Some(_) => return Err(ApiError::bad_param("tools", "`tools` must be a list")),
    };
    let mut functions: Vec<Function> = Vec::with_capacity(list.len());
    for (i, t) in list.iter().enumerate() {
        let param = format!("tools[{i}]");
        let bad = |m: &str| ApiError::bad_param(&param, format!("{param}: {m}"));
        if t.get("type").and_then(Value::as_str) != Some("function") {
            return Err(bad("`type` must be \"function\""));
        }
        let Some(f) = t.get("function").filter(|f| f.is_object()) else {
            return Err(bad("`function` must be an object"));
        };
        let name = match f.get("name") {
            Some(Value::String(n)) if !n.is_empty() => n.clone(),
            _ => return Err(bad("`function.name` must be a non-empty string")),
        };
        if functions.iter().any(|g| g.name == name) {
            return Err(bad(&format!("the function name {name:?} appears twice")));
        }
        let parameters = match f.get("parameters") {
            None | Some(Value::Null) => json!({"type": "object"}),
            Some(p @ Value::Object(_)) => p.clone(),
            Some(_) => return Err(bad("`function.parameters` must be a JSON schema object")),
        };
        functions.push(Function { name, parameters });
    }
    let choice = match tool_choice {
        None | Some(Value::Null) => {
            if functions.is_empty() {
                ToolChoice::None
            } else {
                ToolChoice::Auto
            }
        }
        Some(Value::String(s)) => match s.as_str() {
            "none" => ToolChoice::None,
            "auto" => ToolChoice::Auto,
            "required" => ToolChoice::Required,
            other => {
                return Err(ApiError::bad_param(
                    "tool_choice",
                    format!("`tool_choice` {other:?} must be \"none\", \"auto\", \"required\" or a named function"),
                ))
            }
        },
        Some(v) => {
            let name = v
                .get("function")
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str)
                .filter(|_| v.get("type").and_then(Value::as_str) == Some("function"));
            match name {
                Some(n) => ToolChoice::Named(n.to_string()),
                None => {
                    return Err(ApiError::bad_param(
                        "tool_choice",
                        "a named `tool_choice` must be {\"type\": \"function\", \"function\": {\"name\": …}}",
                    ))
                }
            }
        }
    };
    if functions.is_empty() {
        return match choice {
            ToolChoice::None => Ok(None),
            _ => Err(ApiError::bad_param(
                "tool_choice",
                "`tool_choice` needs `tools`",
            )),
        };
    }
    if let ToolChoice::Named(n) = &choice {
        if !functions.iter().any(|f| &f.name == n) {
            return Err(ApiError::bad_param(
                "tool_choice",
                format!("`tool_choice` names the function {n:?}, which is not in `tools`"),
            ));
        }
    }
    Ok(Some(ToolRequest {
        tools: Value::Array(list.to_vec()),
        functions,
        choice,
    }))
}

/// A tool-call text format.
pub trait ToolCallFormat: Send + Sync + std::fmt::Debug {
    /// The registry name.
    fn name(&self) -> &'static str;
    /// A streaming parser for one choice; call ids are `{id_prefix}{k}`.
    fn parser(&self, id_prefix: String) -> Box<dyn ToolCallParser>;
    /// A Lark grammar for the whole output: one or more calls (exactly one when `single`) of `functions`, each
    /// with arguments valid against the function's schema.
    fn grammar(&self, functions: &[Function], single: bool, compiler: &GrammarCompiler) -> String;
}

/// What a parser found in new text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolEvent {
    /// Text outside tool calls.
    Content(String),
    /// A call began: its index in the message, id and function name.
    Start {
        index: usize,
        id: String,
        name: String,
    },
    /// More of call `index`'s arguments (a JSON text, in pieces).
    Arguments { index: usize, fragment: String },
}

/// Incremental parser of one choice's output.
pub trait ToolCallParser: Send + Sync {
    /// Adds text; returns what can be reported now (text that may start a tag is held back).
    fn push(&mut self, text: &str) -> Vec<ToolEvent>;
    /// The end of the output: releases held text (an unterminated call becomes content if nothing of it was
    /// reported yet).
    fn finish(&mut self) -> Vec<ToolEvent>;
}

/// The format for a `--tool-call-parser` name.
pub fn tool_format(name: &str) -> Option<Box<dyn ToolCallFormat>> {
    match name {
        "hermes" | "qwen" | "qwen25" | "qwen3" | "mimo" => Some(Box::new(Hermes)),
        _ => None,
    }
}

/// The format a chat template implies, if any (the `auto` default of `--tool-call-parser`).
pub fn format_for_template(source: &str) -> Option<Box<dyn ToolCallFormat>> {
    source
        .contains(HERMES_OPEN)
        .then(|| Box::new(Hermes) as Box<dyn ToolCallFormat>)
}

const HERMES_OPEN: &str = "<tool_call>";
const HERMES_CLOSE: &str = "</tool_call>";

/// Hermes / Qwen2.5 / Qwen3 / MiMo tool calls.
#[derive(Debug)]
struct Hermes;

impl ToolCallFormat for Hermes {
    fn name(&self) -> &'static str {
        "hermes"
    }

    fn parser(&self, id_prefix: String) -> Box<dyn ToolCallParser> {
        Box::new(HermesParser {
            id_prefix,
            ..Default::default()
        })
    }

    fn grammar(&self, functions: &[Function], single: bool, compiler: &GrammarCompiler) -> String {
        let calls: Vec<Value> = functions
            .iter()
            .map(|f| {
                json!({
                    "type": "object",
                    "properties": {"name": {"const": f.name}, "arguments": f.parameters},
                    "required": ["name", "arguments"],
                    "additionalProperties": false,
                })
            })
            .collect();
        let body = with_json_options(json!({"anyOf": calls}));
        let tag = |t: &str| {
            if compiler.is_special(t) {
                t.to_string()
            } else {
                serde_json::to_string(t).unwrap_or_default()
            }
        };
        let start = if single {
            "start: call"
        } else {
            "start: call (\"\\n\" call)*"
        };
        format!(
            "{start}\ncall: {} \"\\n\" body \"\\n\" {}\nbody: %json {body}\n",
            tag(HERMES_OPEN),
            tag(HERMES_CLOSE)
        )
    }
}

/// Where the arguments' value starts in a call body that begins `{"name": "…", "arguments": `, and the name.
fn name_and_arguments_start(body: &str) -> Option<(String, usize)> {
    let rest = body.trim_start().strip_prefix('{')?.trim_start();
    let rest = rest
        .strip_prefix("\"name\"")?
        .trim_start()
        .strip_prefix(':')?;
    let rest = rest.trim_start();
    // The name is a JSON string: let serde find where it ends.
    let mut de = serde_json::Deserializer::from_str(rest).into_iter::<String>();
    let name = de.next()?.ok()?;
    let rest = rest[de.byte_offset()..]
        .trim_start()
        .strip_prefix(',')?
        .trim_start();
    let rest = rest
        .strip_prefix("\"arguments\"")?
        .trim_start()
        .strip_prefix(':')?;
    let rest = rest.trim_start();
    // Only once the value's first character is here, so the start does not move with more whitespace.
    if rest.is_empty() {
        return None;
    }
    Some((name, body.len() - rest.len()))
}

/// A complete call body: the function name and its arguments as JSON text (the model's own text when the
/// body is `{"name", "arguments"}` in that order, else re-serialized).
fn parse_call(body: &str) -> Option<(String, String)> {
    let v: Value = serde_json::from_str(body.trim()).ok()?;
    let name = v.get("name")?.as_str()?.to_string();
    let args = v.get("arguments").cloned().unwrap_or(json!({}));
    if let Some((n, at)) = name_and_arguments_start(body) {
        let raw = body[at..].trim_end().strip_suffix('}').map(str::trim_end);
        if let Some(raw) = raw {
            if n == name && serde_json::from_str::<Value>(raw).ok().as_ref() == Some(&args) {
                return Some((name, raw.to_string()));
            }
        }
    }
    Some((name, args.to_string()))
}

#[derive(Default)]
struct HermesParser {
    id_prefix: String,
    /// Text not yet reported.
    buf: String,
    /// Inside `<tool_call>`: the body so far.
    inside: Option<Call>,
    calls: usize,
    /// A call just closed: whitespace up to the next text is not content.
    after_call: bool,
}

#[derive(Default)]
struct Call {
    body: String,
    /// Name reported, with where the arguments start in `body` and how much of them was reported.
    started: Option<(usize, usize)>,
}

impl HermesParser {
    fn start_event(&mut self, name: String) -> ToolEvent {
        ToolEvent::Start {
            index: self.calls,
            id: format!("{}{}", self.id_prefix, self.calls),
            name,
        }
    }

    /// Reports the arguments of the open call up to `end` (in body bytes).
    fn args_upto(&mut self, end: usize, ev: &mut Vec<ToolEvent>) {
        let index = self.calls;
        if let Some(Call {
            body,
            started: Some((at, sent)),
        }) = self.inside.as_mut()
        {
            let from = *at + *sent;
            if end > from {
                ev.push(ToolEvent::Arguments {
                    index,
                    fragment: body[from..end].to_string(),
                });
                *sent = end - *at;
            }
        }
    }
}

impl ToolCallParser for HermesParser {
    fn push(&mut self, text: &str) -> Vec<ToolEvent> {
        self.buf.push_str(text);
        let mut ev = vec![];
        loop {
            if self.inside.is_none() {
                if self.after_call {
                    let t = self.buf.trim_start();
                    if t.is_empty() {
                        self.buf.clear();
                        return ev;
                    }
                    self.buf = t.to_string();
                    self.after_call = false;
                }
                if let Some(pos) = self.buf.find(HERMES_OPEN) {
                    let before: String = self.buf.drain(..pos + HERMES_OPEN.len()).collect();
                    let before = &before[..pos];
                    if !before.is_empty() {
                        ev.push(ToolEvent::Content(before.to_string()));
                    }
                    self.inside = Some(Call::default());
                    continue;
                }
                let hold = partial_tag_len(&self.buf, HERMES_OPEN);
                let cut = self.buf.len() - hold;
                if cut > 0 {
                    ev.push(ToolEvent::Content(self.buf.drain(..cut).collect()));
                }
                return ev;
            }
            let call = self.inside.as_mut().expect("inside a call");
            call.body.push_str(&std::mem::take(&mut self.buf));
            if let Some(pos) = call.body.find(HERMES_CLOSE) {
                let rest = call.body[pos + HERMES_CLOSE.len()..].to_string();
                call.body.truncate(pos);
                let body = call.body.clone();
                match (call.started, parse_call(&body)) {
                    (None, Some((name, args))) => {
                        let s = self.start_event(name);
                        ev.push(s);
                        ev.push(ToolEvent::Arguments {
                            index: self.calls,
                            fragment: args,
                        });
                        self.calls += 1;
                    }
                    (None, None) => {
                        ev.push(ToolEvent::Content(format!(
                            "{HERMES_OPEN}{body}{HERMES_CLOSE}"
                        )));
                    }
                    (Some((at, _)), _) => {
                        let end = body[at..]
                            .trim_end()
                            .strip_suffix('}')
                            .map_or(body.len(), |s| at + s.trim_end().len());
                        self.args_upto(end, &mut ev);
                        self.calls += 1;
                    }
                }
                self.inside = None;
                self.buf = rest;
                self.after_call = true;
                continue;
            }
            if call.started.is_none() {
                if let Some((name, at)) = name_and_arguments_start(&call.body) {
                    call.started = Some((at, 0));
                    let s = self.start_event(name);
                    ev.push(s);
                }
            }
            // Hold back what may be the object's closing brace, whitespace, and the start of the close tag.
            let Some(call) = self.inside.as_ref() else {
                return ev;
            };
            if let Some((at, _)) = call.started {
                let b = &call.body;
                let tail = b.len() - partial_tag_len(b, HERMES_CLOSE);
                let t = b[..tail].trim_end();
                let end = t
                    .strip_suffix('}')
                    .map_or(t.len(), |s| s.trim_end().len())
                    .max(at);
                self.args_upto(end, &mut ev);
            }
            return ev;
        }
    }

    fn finish(&mut self) -> Vec<ToolEvent> {
        let mut ev = vec![];
        match self.inside.take() {
            Some(Call {
                body,
                started: Some((at, sent)),
            }) => {
                let from = at + sent;
                if body.len() > from {
                    ev.push(ToolEvent::Arguments {
                        index: self.calls,
                        fragment: body[from..].to_string(),
                    });
                }
                self.calls += 1;
            }
            Some(Call {
                body,
                started: None,
            }) => ev.push(ToolEvent::Content(format!("{HERMES_OPEN}{body}"))),
            None => {}
        }
        let rest = std::mem::take(&mut self.buf);
        if !rest.is_empty() {
            ev.push(ToolEvent::Content(rest));
        }
        ev
    }
}

/// The calls and content of a whole output, assembled from events.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Assembled {
    /// Text outside the calls.
    pub content: String,
    /// `(id, name, arguments)` per call.
    pub calls: Vec<(String, String, String)>,
}

impl Assembled {
    /// Adds events.
    pub fn add(&mut self, events: &[ToolEvent]) {
        for e in events {
            match e {
                ToolEvent::Content(s) => self.content.push_str(s),
                ToolEvent::Start { id, name, .. } => {
                    self.calls.push((id.clone(), name.clone(), String::new()))
                }
                ToolEvent::Arguments { index, fragment } => {
                    if let Some(c) = self.calls.get_mut(*index) {
                        c.2.push_str(fragment);
                    }
                }
            }
        }
    }
}

/// OpenAI `tool_calls` entries of a message.
pub fn message_tool_calls(calls: &[(String, String, String)]) -> Value {
    Value::Array(
        calls
            .iter()
            .map(|(id, name, args)| {
                json!({"id": id, "type": "function", "function": {"name": name, "arguments": args}})
            })
            .collect(),
    )
}

/// One streaming `delta.tool_calls` entry.
pub fn delta_tool_call(e: &ToolEvent) -> Option<Value> {
    match e {
        ToolEvent::Start { index, id, name } => Some(json!({
            "index": index, "id": id, "type": "function",
            "function": {"name": name, "arguments": ""},
        })),
        ToolEvent::Arguments { index, fragment } => {
            Some(json!({"index": index, "function": {"arguments": fragment}}))
        }
        ToolEvent::Content(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(pieces: &[&str]) -> (Assembled, Vec<ToolEvent>) {
        let mut p = Hermes.parser("call_".into());
        let mut all = vec![];
        for s in pieces {
            all.extend(p.push(s));
        }
        all.extend(p.finish());
        let mut a = Assembled::default();
        a.add(&all);
        (a, all)
    }

    /// Every split of `text` into two pieces and into single characters gives the same result.
    fn run_all_splits(text: &str) -> Assembled {
        let (whole, _) = run(&[text]);
        let chars: Vec<String> = text.chars().map(String::from).collect();
        let refs: Vec<&str> = chars.iter().map(String::as_str).collect();
        assert_eq!(run(&refs).0, whole, "char by char: {text:?}");
        for (i, _) in text.char_indices() {
            assert_eq!(
                run(&[&text[..i], &text[i..]]).0,
                whole,
                "split at {i}: {text:?}"
            );
        }
        whole
    }

    #[test]
    fn parses_calls_and_content_in_any_split() {
        let t = "Let me check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\", \"n\": {\"a\": [1, 2]}}}\n</tool_call>\n<tool_call>\n{\"name\": \"time\", \"arguments\": {}}\n</tool_call>";
        let a = run_all_splits(t);
        assert_eq!(a.content, "Let me check.\n");
        assert_eq!(
            a.calls,
            vec![
                (
                    "call_0".into(),
                    "get_weather".into(),
                    r#"{"city": "Paris", "n": {"a": [1, 2]}}"#.into()
                ),
                ("call_1".into(), "time".into(), "{}".into()),
            ]
        );
    }

    #[test]
    fn arguments_stream_before_the_call_closes() {
        let mut p = Hermes.parser("c".into());
        let ev = p.push("<tool_call>\n{\"name\": \"f\", \"arguments\": {\"x\": ");
        assert!(ev
            .iter()
            .any(|e| matches!(e, ToolEvent::Start { name, .. } if name == "f")));
        let ev = p.push("12}");
        assert!(
            ev.iter().any(
                |e| matches!(e, ToolEvent::Arguments { fragment, .. } if fragment.contains("12"))
            ),
            "{ev:?}"
        );
    }

    #[test]
    fn broken_or_unterminated_calls_stay_content() {
        let (a, _) = run(&["x <tool_call>not json</tool_call> y"]);
        assert_eq!(a.content, "x <tool_call>not json</tool_call>y");
        assert!(a.calls.is_empty());
        let (a, _) = run(&["x <tool_c"]);
        assert_eq!(a.content, "x <tool_c");
        let (a, _) = run(&["<tool_call>{\"arguments\": {}, \"name\": \"f\"}</tool_call>"]);
        assert_eq!(a.calls, vec![("call_0".into(), "f".into(), "{}".into())]);
    }

    #[test]
    fn tools_and_choice_are_checked() {
        let tools = json!([{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]);
        let r = parse_tools(Some(&tools), None).unwrap().unwrap();
        assert_eq!(r.choice, ToolChoice::Auto);
        let named = json!({"type": "function", "function": {"name": "f"}});
        let r = parse_tools(Some(&tools), Some(&named)).unwrap().unwrap();
        assert_eq!(r.choice, ToolChoice::Named("f".into()));
        assert!(parse_tools(None, None).unwrap().is_none());
        assert!(parse_tools(Some(&json!([])), Some(&json!("none")))
            .unwrap()
            .is_none());
        for (t, c, needle) in [
            (
                tools.clone(),
                json!({"type": "function", "function": {"name": "g"}}),
                "not in `tools`",
            ),
            (tools.clone(), json!("sometimes"), "must be"),
            (json!([]), json!("required"), "needs `tools`"),
            (
                json!([{"type": "function"}]),
                json!("auto"),
                "`function` must be an object",
            ),
            (
                json!([{"type": "x", "function": {"name": "f"}}]),
                json!("auto"),
                "\"function\"",
            ),
            (
                json!([{"type": "function", "function": {"name": "f"}}, {"type": "function", "function": {"name": "f"}}]),
                json!("auto"),
                "twice",
            ),
            (json!({"a": 1}), json!("auto"), "must be a list"),
        ] {
            let e = parse_tools(Some(&t), Some(&c)).unwrap_err();
            assert!(e.message.contains(needle), "{t} {c}: {}", e.message);
        }
    }
}
