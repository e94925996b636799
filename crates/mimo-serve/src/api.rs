//! OpenAI request bodies and the OpenAI-style error response.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
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

/// Fields shared by chat and text completions (unknown fields are ignored, known ones are type-checked).
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
/// a string, null, or a list of `{"type": "text", "text": ...}` parts (joined).
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
    }

    #[test]
    fn stop_one_or_many() {
        let c: CommonFields = parse(&json!({"stop": "x"})).unwrap();
        assert_eq!(c.stop.unwrap().into_vec(), vec!["x"]);
        let c: CommonFields = parse(&json!({"stop": ["x", "y"]})).unwrap();
        assert_eq!(c.stop.unwrap().into_vec(), vec!["x", "y"]);
    }
}
