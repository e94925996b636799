//! OpenAI request bodies and the OpenAI-style error response.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use mimo_engine::Grammar;
use serde::Deserialize;
use serde_json::{json, Map, Value};

/// An error answered with an OpenAI-style body `{"error": {"message", "type", "param", "code"}}`.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Human-readable message.
    pub message: String,
    /// OpenAI error type (`invalid_request_error`, ...).
    pub kind: &'static str,
    /// The request field at fault, when known.
    pub param: Option<String>,
    /// A machine-readable code, when there is one.
    pub code: Option<&'static str>,
}

impl ApiError {
    /// 400 `invalid_request_error`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            kind: "invalid_request_error",
            param: None,
            code: None,
        }
    }

    /// 400 naming the field at fault.
    pub fn bad_param(param: &str, message: impl Into<String>) -> Self {
        Self {
            param: Some(param.to_string()),
            ..Self::bad_request(message)
        }
    }

    /// Any status with a type.
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            kind,
            param: None,
            code: None,
        }
    }

    /// The JSON body.
    pub fn body(&self) -> Value {
        json!({"error": {
            "message": self.message,
            "type": self.kind,
            "param": self.param,
            "code": self.code,
        }})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(self.body())).into_response()
    }
}

/// `stop`: one string or a list.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum StopField {
    One(String),
    Many(Vec<String>),
}

impl StopField {
    /// The stop strings.
    pub fn into_vec(self) -> Vec<String> {
        match self {
            StopField::One(s) => vec![s],
            StopField::Many(v) => v,
        }
    }
}

/// `stream_options`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct StreamOptions {
    /// Send a last chunk with `usage`.
    #[serde(default)]
    pub include_usage: Option<bool>,
}

/// Fields shared by chat and text completions. Unknown fields are ignored (vendor extensions, as OpenAI-
/// compatible servers do), known ones are type-checked, and the deprecated `functions`/`function_call` are
/// refused by [`CommonFields::check_supported`] rather than ignored.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct CommonFields {
    pub model: Option<String>,
    pub n: Option<i64>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    pub stop: Option<StopField>,
    pub stop_token_ids: Option<Vec<u32>>,
    pub max_tokens: Option<i64>,
    pub max_completion_tokens: Option<i64>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<i64>,
    pub min_p: Option<f32>,
    pub repetition_penalty: Option<f32>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub seed: Option<i64>,
    /// Thinking budget: most tokens inside `<think>…</think>` before `</think>` is forced.
    pub max_thinking_tokens: Option<i64>,
    /// `{"<token id>": bias}`; see [`parse_logit_bias`].
    pub logit_bias: Option<Value>,
    /// vLLM's extension: EOS does not end the completion (`stop`/`stop_token_ids` still do).
    pub ignore_eos: Option<bool>,
    /// vLLM's extension: each choice also carries `token_ids` (every generated token, a final EOS included) and,
    /// with log-probs, mimo's `token_logprobs` beside them; responses carry `weight_version`. For RL rollouts.
    pub return_token_ids: Option<bool>,
    /// Chat only: functions the model may call, and whether it must (see `crate::tools`).
    pub tools: Option<Value>,
    pub tool_choice: Option<Value>,
    /// Deprecated OpenAI function calling: refused (use `tools`).
    pub functions: Option<Value>,
    pub function_call: Option<Value>,
    /// `{"type": "text" | "json_object" | "json_schema", "json_schema": {"schema": …}}`.
    pub response_format: Option<Value>,
    /// vLLM's `{"json" | "regex" | "choice" | "grammar" | "json_object": …}`.
    pub structured_outputs: Option<Value>,
    /// vLLM's older spellings of `structured_outputs`.
    pub guided_json: Option<Value>,
    pub guided_regex: Option<String>,
    pub guided_choice: Option<Vec<String>>,
    pub guided_grammar: Option<String>,
}

impl CommonFields {
    /// Refuses the deprecated `functions`/`function_call` (non-empty, or a call mode other than `"none"`)
    /// instead of silently answering without them.
    pub fn check_supported(&self) -> Result<(), ApiError> {
        let empty_list = |v: &Option<Value>| match v {
            None | Some(Value::Null) => true,
            Some(Value::Array(a)) => a.is_empty(),
            Some(_) => false,
        };
        let none_choice = |v: &Option<Value>| match v {
            None | Some(Value::Null) => true,
            Some(Value::String(s)) => s == "none",
            Some(_) => false,
        };
        if !empty_list(&self.functions) {
            return Err(ApiError::bad_param(
                "functions",
                "`functions` (deprecated function calling) is not supported; send `tools`",
            ));
        }
        if !none_choice(&self.function_call) {
            return Err(ApiError::bad_param(
                "function_call",
                "`function_call` (deprecated function calling) is not supported; send `tool_choice`",
            ));
        }
        Ok(())
    }

    /// The output grammar the request asks for, from `response_format`, `structured_outputs` or `guided_*`
    /// (at most one of them). Schemas are checked when compiled.
    pub fn output_grammar(&self) -> Result<Option<Grammar>, ApiError> {
        let mut found: Vec<(&str, Grammar)> = vec![];
        if let Some(g) = response_format_grammar(self.response_format.as_ref())? {
            found.push(("response_format", g));
        }
        if let Some(v) = self.structured_outputs.as_ref().filter(|v| !v.is_null()) {
            found.push(("structured_outputs", structured_outputs_grammar(v)?));
        }
        if let Some(v) = self.guided_json.as_ref().filter(|v| !v.is_null()) {
            found.push((
                "guided_json",
                Grammar::JsonSchema(schema_value("guided_json", v)?),
            ));
        }
        if let Some(r) = &self.guided_regex {
            found.push(("guided_regex", Grammar::Regex(r.clone())));
        }
        if let Some(c) = &self.guided_choice {
            found.push(("guided_choice", Grammar::Choice(c.clone())));
        }
        if let Some(g) = &self.guided_grammar {
            found.push(("guided_grammar", Grammar::Lark(g.clone())));
        }
        match found.len() {
            0 => Ok(None),
            1 => Ok(found.pop().map(|f| f.1)),
            _ => Err(ApiError::bad_param(
                found[1].0,
                format!(
                    "`{}` and `{}` both constrain the output; send one",
                    found[0].0, found[1].0
                ),
            )),
        }
    }
}

/// A JSON schema given as an object or as JSON text.
fn schema_value(param: &str, v: &Value) -> Result<Value, ApiError> {
    match v {
        Value::Object(_) | Value::Bool(_) => Ok(v.clone()),
        Value::String(s) => serde_json::from_str(s)
            .map_err(|e| ApiError::bad_param(param, format!("`{param}` is not valid JSON: {e}"))),
        _ => Err(ApiError::bad_param(
            param,
            format!("`{param}` must be a JSON schema (an object)"),
        )),
    }
}

fn response_format_grammar(v: Option<&Value>) -> Result<Option<Grammar>, ApiError> {
    let param = "response_format";
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    match v.get("type").and_then(Value::as_str) {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(Grammar::JsonObject)),
        Some("json_schema") => {
            let schema = v
                .get("json_schema")
                .and_then(|j| j.get("schema"))
                .ok_or_else(|| {
                    ApiError::bad_param(
                        param,
                        "`response_format` of type \"json_schema\" needs `json_schema.schema`",
                    )
                })?;
            Ok(Some(Grammar::JsonSchema(schema_value(
                "response_format.json_schema.schema",
                schema,
            )?)))
        }
        Some(t) => Err(ApiError::bad_param(
            param,
            format!(
                "`response_format` type {t:?} must be \"text\", \"json_object\" or \"json_schema\""
            ),
        )),
        None => Err(ApiError::bad_param(
            param,
            "`response_format` must be an object with a string `type`",
        )),
    }
}

fn structured_outputs_grammar(v: &Value) -> Result<Grammar, ApiError> {
    let param = "structured_outputs";
    let bad = |m: &str| ApiError::bad_param(param, format!("`structured_outputs`: {m}"));
    let Some(m) = v.as_object() else {
        return Err(bad("must be an object"));
    };
    let set: Vec<(&String, &Value)> = m.iter().filter(|(_, v)| !v.is_null()).collect();
    let [(k, v)] = set.as_slice() else {
        return Err(bad(
            "give exactly one of `json`, `regex`, `choice`, `grammar`, `json_object`",
        ));
    };
    let string = |v: &Value| {
        v.as_str()
            .map(str::to_string)
            .ok_or_else(|| bad(&format!("`{k}` must be a string")))
    };
    match k.as_str() {
        "json" => Ok(Grammar::JsonSchema(schema_value(
            "structured_outputs.json",
            v,
        )?)),
        "regex" => Ok(Grammar::Regex(string(v)?)),
        "grammar" => Ok(Grammar::Lark(string(v)?)),
        "choice" => match v.as_array() {
            Some(a) if a.iter().all(Value::is_string) => Ok(Grammar::Choice(
                a.iter()
                    .filter_map(|x| x.as_str().map(String::from))
                    .collect(),
            )),
            _ => Err(bad("`choice` must be a list of strings")),
        },
        "json_object" if v.as_bool() == Some(true) => Ok(Grammar::JsonObject),
        other => Err(bad(&format!("unknown constraint `{other}`"))),
    }
}

/// Most `logit_bias` magnitude (OpenAI's range).
pub const MAX_LOGIT_BIAS: f64 = mimo_engine::MAX_LOGIT_BIAS as f64;

/// OpenAI `logit_bias`: an object mapping token ids (decimal strings) to biases in [-100, 100], added to the
/// logits before sampling. Absent or null is no bias. Errors (400, param `logit_bias`) name the bad entry.
pub fn parse_logit_bias(v: Option<&Value>, vocab_size: usize) -> Result<Vec<(u32, f32)>, ApiError> {
    let bad = |m: String| ApiError::bad_param("logit_bias", m);
    let map = match v {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Object(map)) => map,
        Some(_) => {
            return Err(bad(
                "`logit_bias` must be an object mapping token ids to biases".into(),
            ))
        }
    };
    let mut out = Vec::with_capacity(map.len());
    for (k, b) in map {
        let Ok(id) = k.parse::<u32>() else {
            return Err(bad(format!(
                "`logit_bias` key {k:?} is not a token id (a non-negative integer)"
            )));
        };
        if id as usize >= vocab_size {
            return Err(bad(format!(
                "`logit_bias` token id {id} is out of range for vocab_size {vocab_size}"
            )));
        }
        match b.as_f64() {
            Some(x) if (-MAX_LOGIT_BIAS..=MAX_LOGIT_BIAS).contains(&x) => out.push((id, x as f32)),
            _ => {
                return Err(bad(format!(
                    "`logit_bias` for token {id} is {b}; biases must be numbers in [-100, 100]"
                )))
            }
        }
    }
    Ok(out)
}

/// Chat-only fields.
#[derive(Debug, Clone, Deserialize)]
pub struct ChatFields {
    pub messages: Vec<Value>,
    pub logprobs: Option<bool>,
    pub top_logprobs: Option<i64>,
    pub chat_template_kwargs: Option<Map<String, Value>>,
    pub add_generation_prompt: Option<bool>,
}

/// `prompt` of a text completion: text, texts, token ids or lists of token ids.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum PromptField {
    Text(String),
    Texts(Vec<String>),
    Ids(Vec<u32>),
    IdLists(Vec<Vec<u32>>),
}

/// Text-completion-only fields.
#[derive(Debug, Clone, Deserialize)]
pub struct CompletionFields {
    pub prompt: PromptField,
    pub logprobs: Option<i64>,
}

/// Parses a JSON body into `T`, turning serde's message into a 400.
pub fn parse<T: serde::de::DeserializeOwned>(body: &Value) -> Result<T, ApiError> {
    T::deserialize(body).map_err(|e| ApiError::bad_request(format!("invalid request body: {e}")))
}

/// Parses raw bytes as a JSON object.
pub fn parse_object(bytes: &[u8]) -> Result<Value, ApiError> {
    let v: Value = serde_json::from_slice(bytes)
        .map_err(|e| ApiError::bad_request(format!("request body is not valid JSON: {e}")))?;
    if !v.is_object() {
        return Err(ApiError::bad_request("request body must be a JSON object"));
    }
    Ok(v)
}

/// Normalises chat messages for the template: each must be an object with a string `role`; `content` may be
/// a string, null, or a list of `{"type": "text", "text": ...}` parts (joined); `tool_calls[].function.
/// arguments` given as JSON text become objects. Other fields (`tool_call_id`, `reasoning_content`, …) pass
/// through.
pub fn normalize_messages(messages: &[Value]) -> Result<Vec<Value>, ApiError> {
    if messages.is_empty() {
        return Err(ApiError::bad_param(
            "messages",
            "`messages` must contain at least one message",
        ));
    }
    let mut out = Vec::with_capacity(messages.len());
    for (i, m) in messages.iter().enumerate() {
        let param = format!("messages[{i}]");
        let Some(obj) = m.as_object() else {
            return Err(ApiError::bad_param(
                &param,
                format!("{param} must be an object"),
            ));
        };
        match obj.get("role") {
            Some(Value::String(r)) if !r.is_empty() => {}
            _ => {
                return Err(ApiError::bad_param(
                    &format!("{param}.role"),
                    format!("{param}.role must be a non-empty string"),
                ))
            }
        }
        let mut obj = obj.clone();
        let content = match obj.get("content") {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(s)) => s.clone(),
            Some(Value::Array(parts)) => {
                let mut s = String::new();
                for (j, p) in parts.iter().enumerate() {
                    match (
                        p.get("type").and_then(Value::as_str),
                        p.get("text").and_then(Value::as_str),
                    ) {
                        (Some("text"), Some(t)) => s.push_str(t),
                        _ => {
                            return Err(ApiError::bad_param(
                                &format!("{param}.content[{j}]"),
                                "only text content parts ({\"type\": \"text\", \"text\": ...}) are supported",
                            ))
                        }
                    }
                }
                s
            }
            Some(_) => {
                return Err(ApiError::bad_param(
                    &format!("{param}.content"),
                    format!("{param}.content must be a string, null or a list of text parts"),
                ))
            }
        };
        obj.insert("content".into(), Value::String(content));
        // Tool-call arguments arrive as JSON text; templates expect objects (as vLLM and transformers pass).
        if let Some(Value::Array(calls)) = obj.get_mut("tool_calls") {
            for call in calls.iter_mut() {
                let Some(f) = call.get_mut("function").and_then(Value::as_object_mut) else {
                    continue;
                };
                if let Some(Value::String(a)) = f.get("arguments") {
                    if let Ok(v) = serde_json::from_str::<Value>(a) {
                        f.insert("arguments".into(), v);
                    }
                }
            }
        }
        out.push(Value::Object(obj));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrong_type_is_a_400_naming_the_problem() {
        let v = json!({"temperature": "hot"});
        let e = parse::<CommonFields>(&v).unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert!(e.message.contains("invalid type"), "{}", e.message);
    }

    #[test]
    fn content_parts_are_joined() {
        let m = normalize_messages(&[json!({"role": "user", "content": [
            {"type": "text", "text": "a"}, {"type": "text", "text": "b"}]})])
        .unwrap();
        assert_eq!(m[0]["content"], "ab");
        assert!(normalize_messages(&[]).is_err());
        assert!(normalize_messages(&[json!({"content": "x"})]).is_err());
        assert!(normalize_messages(&[json!({"role": "user", "content": 3})]).is_err());
        let m = normalize_messages(&[json!({"role": "assistant", "content": null, "reasoning_content": "r",
            "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{\"a\": 1}"}},
                           {"id": "d", "type": "function", "function": {"name": "g", "arguments": "not json"}}]})])
        .unwrap();
        assert_eq!(
            m[0]["tool_calls"][0]["function"]["arguments"],
            json!({"a": 1})
        );
        assert_eq!(m[0]["tool_calls"][1]["function"]["arguments"], "not json");
        assert_eq!(
            (m[0]["content"].as_str(), m[0]["reasoning_content"].as_str()),
            (Some(""), Some("r"))
        );
    }

    #[test]
    fn logit_bias_parsing() {
        let ok = parse_logit_bias(Some(&json!({"5": 100, "0": -100.0, "7": 0.5})), 10).unwrap();
        let mut ok = ok;
        ok.sort_by_key(|b| b.0);
        assert_eq!(ok, vec![(0, -100.0), (5, 100.0), (7, 0.5)]);
        assert!(parse_logit_bias(None, 10).unwrap().is_empty());
        assert!(parse_logit_bias(Some(&Value::Null), 10).unwrap().is_empty());
        for (bad, needle) in [
            (json!({"x": 1}), "not a token id"),
            (json!({"-1": 1}), "not a token id"),
            (json!({"1.5": 1}), "not a token id"),
            (json!({"10": 1}), "out of range"),
            (json!({"1": 100.5}), "[-100, 100]"),
            (json!({"1": "5"}), "[-100, 100]"),
            (json!({"1": null}), "[-100, 100]"),
            (json!([1, 2]), "must be an object"),
        ] {
            let e = parse_logit_bias(Some(&bad), 10).unwrap_err();
            assert_eq!(e.param.as_deref(), Some("logit_bias"), "{bad}");
            assert!(e.message.contains(needle), "{bad}: {}", e.message);
        }
    }

    #[test]
    fn deprecated_function_calling_is_refused() {
        for ok in [
            json!({}),
            json!({"functions": null, "function_call": null}),
            json!({"functions": [], "function_call": "none", "user": "x", "some_vendor_field": 1}),
        ] {
            let c: CommonFields = parse(&ok).unwrap();
            assert!(c.check_supported().is_ok(), "{ok}");
        }
        for (bad, param) in [
            (json!({"functions": [{"name": "f"}]}), "functions"),
            (json!({"function_call": "auto"}), "function_call"),
        ] {
            let c: CommonFields = parse(&bad).unwrap();
            let e = c.check_supported().unwrap_err();
            assert_eq!(e.param.as_deref(), Some(param), "{bad}");
        }
    }

    #[test]
    fn output_grammars_from_every_spelling() {
        let g = |v: Value| parse::<CommonFields>(&v).unwrap().output_grammar();
        let schema = json!({"type": "object"});
        assert_eq!(g(json!({})).unwrap(), None);
        assert_eq!(
            g(json!({"response_format": {"type": "text"}})).unwrap(),
            None
        );
        assert_eq!(
            g(json!({"response_format": {"type": "json_object"}})).unwrap(),
            Some(Grammar::JsonObject)
        );
        assert_eq!(
            g(json!({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema, "strict": true}}})).unwrap(),
            Some(Grammar::JsonSchema(schema.clone()))
        );
        assert_eq!(
            g(json!({"structured_outputs": {"regex": "a+"}})).unwrap(),
            Some(Grammar::Regex("a+".into()))
        );
        assert_eq!(
            g(json!({"guided_choice": ["a", "b"]})).unwrap(),
            Some(Grammar::Choice(vec!["a".into(), "b".into()]))
        );
        assert_eq!(
            g(json!({"guided_json": "{\"type\": \"object\"}"})).unwrap(),
            Some(Grammar::JsonSchema(schema))
        );
        for (bad, needle) in [
            (json!({"response_format": {"type": "yaml"}}), "must be"),
            (
                json!({"response_format": {"type": "json_schema"}}),
                "json_schema.schema",
            ),
            (json!({"response_format": "json"}), "string `type`"),
            (
                json!({"structured_outputs": {"regex": "a", "choice": ["b"]}}),
                "exactly one",
            ),
            (
                json!({"structured_outputs": {"choice": [1]}}),
                "list of strings",
            ),
            (json!({"guided_json": "{not json"}), "not valid JSON"),
            (
                json!({"guided_regex": "a", "response_format": {"type": "json_object"}}),
                "both",
            ),
        ] {
            let e = g(bad.clone()).unwrap_err();
            assert!(e.message.contains(needle), "{bad}: {}", e.message);
        }
    }

    #[test]
    fn stop_one_or_many() {
        let c: CommonFields = parse(&json!({"stop": "x"})).unwrap();
        assert_eq!(c.stop.unwrap().into_vec(), vec!["x"]);
        let c: CommonFields = parse(&json!({"stop": ["x", "y"]})).unwrap();
        assert_eq!(c.stop.unwrap().into_vec(), vec!["x", "y"]);
    }
}
