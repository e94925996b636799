//! RL problems (spec §3.2): verifiable math (a gold answer checked by the math verifier) and code (a Python
//! function checked by assert tests in the sandbox), read from the JSONL that `mimo data synth` writes.
//!
//! Accepted line layouts: `{"prompt"|"question"|"problem": .., "answer": ..}` for math and
//! `{"prompt": .., "tests": ["assert f(1) == 2", ..]}` for code (a non-empty `tests` list makes a code problem;
//! `kind` is optional).

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Result, RlError};

/// What verifies a response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Check {
    /// The last `\boxed{}` must equal this answer (math verifier).
    Math { answer: String },
    /// The last Python code block must pass these asserts, each run as its own test.
    Code { tests: Vec<String> },
}

/// One RL problem.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RlProblem {
    /// Stable id (the line's `hash`/`id` or `line-N`).
    pub id: String,
    /// Synthetic family (`arithmetic`, `code`, ...), when given.
    pub kind: Option<String>,
    /// The user message.
    pub prompt: String,
    pub check: Check,
}

impl RlProblem {
    /// True for code problems.
    pub fn is_code(&self) -> bool {
        matches!(self.check, Check::Code { .. })
    }

    /// Number of tests (1 for math).
    pub fn num_tests(&self) -> usize {
        match &self.check {
            Check::Math { .. } => 1,
            Check::Code { tests } => tests.len(),
        }
    }
}

fn string_field(v: &serde_json::Value, keys: &[&str]) -> Option<String> {
    keys.iter().find_map(|k| match v.get(*k) {
        Some(serde_json::Value::String(s)) => Some(s.clone()),
        Some(serde_json::Value::Number(n)) => Some(n.to_string()),
        _ => None,
    })
}

/// Reads problems from JSONL; `kinds` (if non-empty) keeps only those families. Bad lines are errors naming the
/// line: RL data is small and curated, silently dropping a problem would change the run.
pub fn load_problems(path: &Path, kinds: &[String]) -> Result<Vec<RlProblem>> {
    let text = std::fs::read_to_string(path).map_err(|e| match e.kind() {
        // Which line is at fault, not just "stream did not contain valid UTF-8".
        std::io::ErrorKind::InvalidData => RlError::Data(format!(
            "{}:{}: invalid UTF-8",
            path.display(),
            first_bad_utf8_line(path)
        )),
        _ => RlError::io(path, e),
    })?;
    let mut out = vec![];
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |msg: String| RlError::Data(format!("{}:{}: {msg}", path.display(), i + 1));
        let v: serde_json::Value =
            serde_json::from_str(line).map_err(|e| bad(format!("invalid JSON: {e}")))?;
        if !v.is_object() {
            return Err(bad("expected a JSON object".into()));
        }
        let kind = string_field(&v, &["kind"]);
        if !kinds.is_empty() && !kind.as_ref().is_some_and(|k| kinds.contains(k)) {
            continue;
        }
        let prompt = string_field(&v, &["prompt", "question", "problem"])
            .ok_or_else(|| bad("missing string field `prompt` (or `question`/`problem`)".into()))?;
        let tests: Vec<String> = match v.get("tests") {
            None | Some(serde_json::Value::Null) => vec![],
            Some(serde_json::Value::Array(a)) => a
                .iter()
                .map(|t| {
                    t.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| bad("`tests` must be a list of strings".into()))
                })
                .collect::<Result<_>>()?,
            Some(_) => return Err(bad("`tests` must be a list of strings".into())),
        };
        let check = if !tests.is_empty() {
            Check::Code { tests }
        } else {
            let answer = string_field(&v, &["answer", "gold"])
                .ok_or_else(|| bad("math problems need an `answer`".into()))?;
            let answer = answer
                .rsplit("####")
                .next()
                .unwrap_or(&answer)
                .trim()
                .to_string();
            Check::Math { answer }
        };
        let id = string_field(&v, &["hash", "id"]).unwrap_or_else(|| format!("line-{}", i + 1));
        out.push(RlProblem {
            id,
            kind,
            prompt,
            check,
        });
    }
    if out.is_empty() {
        return Err(RlError::Data(format!(
            "{}: no problems{}",
            path.display(),
            if kinds.is_empty() {
                String::new()
            } else {
                format!(" of kinds {kinds:?}")
            }
        )));
    }
    Ok(out)
}

/// 1-based line of the first invalid UTF-8 byte of `path` (0 when it cannot be read again).
fn first_bad_utf8_line(path: &Path) -> u64 {
    std::fs::read(path)
        .ok()
        .and_then(|b| mimo_data::invalid_utf8_line(&b))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_utf8_names_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("p.jsonl");
        std::fs::write(
            &f,
            b"{\"prompt\": \"a\", \"answer\": \"1\"}\n\n{\"prompt\": \"\xc3\"}\n",
        )
        .unwrap();
        let e = load_problems(&f, &[]).unwrap_err().to_string();
        assert!(e.contains("p.jsonl:3: invalid UTF-8"), "{e}");
    }
}
