//! JSONL drivers behind `mimo reward math` and `mimo reward code` (issue 5, "CLI").
//!
//! Each output line is the input object with result fields added, in input order. A line that is not a
//! JSON object with the required fields yields `{"line": N, "error": "line N: …"}` and processing goes on.

use crate::difficulty::{self, LevelConfig, Split, TestLevels};
use crate::math;
use crate::sandbox::{self, Language, SandboxConfig, Status, StdioTest, TestOutcome};
use crate::RewardError;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::io::{BufRead, Write};
use std::time::Duration;

/// Counts over one JSONL run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Input lines processed (blank lines are skipped and not counted).
    pub lines: usize,
    /// Lines that could not be interpreted (they got an `"error"` output line).
    pub malformed: usize,
    /// Math: lines judged correct. Code: lines whose tests all passed.
    pub correct: usize,
}

/// Options of the math driver.
#[derive(Debug, Clone, PartialEq)]
pub struct MathOptions {
    /// Per-case time bound.
    pub timeout: Duration,
}

impl Default for MathOptions {
    fn default() -> Self {
        MathOptions {
            timeout: Duration::from_secs(5),
        }
    }
}

/// Options of the code driver.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CodeOptions {
    pub sandbox: SandboxConfig,
    /// Level split used when a line gives `pass_rates`.
    pub levels: LevelConfig,
}

/// Lines are processed in chunks of this many (in parallel within a chunk, output in order).
const CHUNK: usize = 256;

/// A non-blank input line: its 1-based number and the parsed object (or why it is not one).
type Parsed = (usize, Result<Map<String, Value>, String>);

fn bad_line(n: usize, msg: impl std::fmt::Display) -> Value {
    json!({"line": n, "error": format!("line {n}: {msg}")})
}

/// Reads non-blank lines in chunks, maps each chunk with `f` (line number, parsed object or error) and
/// writes the results in order.
fn drive(
    input: impl BufRead,
    mut output: impl Write,
    stats: &mut Stats,
    mut f: impl FnMut(Vec<Parsed>) -> Vec<Value>,
) -> Result<(), RewardError> {
    let mut chunk = Vec::new();
    let mut flush = |chunk: &mut Vec<Parsed>, output: &mut dyn Write| -> Result<(), RewardError> {
        for v in f(std::mem::take(chunk)) {
            serde_json::to_writer(&mut *output, &v)?;
            output.write_all(b"\n")?;
        }
        Ok(())
    };
    for (i, line) in input.lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        stats.lines += 1;
        let parsed = match serde_json::from_str::<Value>(&line) {
            Ok(Value::Object(m)) => Ok(m),
            Ok(_) => Err("not a JSON object".to_string()),
            Err(e) => Err(format!("invalid JSON: {e}")),
        };
        if parsed.is_err() {
            stats.malformed += 1;
        }
        chunk.push((i + 1, parsed));
        if chunk.len() >= CHUNK {
            flush(&mut chunk, &mut output)?;
        }
    }
    flush(&mut chunk, &mut output)?;
    output.flush()?;
    Ok(())
}

fn get_str<'a>(m: &'a Map<String, Value>, k: &str) -> Result<&'a str, String> {
    match m.get(k) {
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(format!("field \"{k}\" must be a string")),
        None => Err(format!("missing field \"{k}\"")),
    }
}

/// `mimo reward math`: each line `{"gold": "...", "pred": "..."}`; adds `correct`, `gold_parsed`,
/// `pred_parsed` and, when parsing failed, `error`. Uses [`MathOptions::default`].
pub fn run_math_jsonl(input: impl BufRead, output: impl Write) -> Result<Stats, RewardError> {
    run_math_jsonl_with(input, output, &MathOptions::default())
}

/// [`run_math_jsonl`] with explicit options.
pub fn run_math_jsonl_with(
    input: impl BufRead,
    output: impl Write,
    opts: &MathOptions,
) -> Result<Stats, RewardError> {
    let mut stats = Stats::default();
    let mut correct = 0usize;
    let mut malformed_fields = 0usize;
    drive(input, output, &mut stats, |chunk| {
        let out: Vec<(Value, bool, bool)> = chunk
            .into_par_iter()
            .map(|(n, parsed)| {
                let mut m = match parsed {
                    Ok(m) => m,
                    Err(e) => return (bad_line(n, e), false, false),
                };
                let (gold, pred) = match (get_str(&m, "gold"), get_str(&m, "pred")) {
                    (Ok(g), Ok(p)) => (g.to_string(), p.to_string()),
                    (Err(e), _) | (_, Err(e)) => return (bad_line(n, e), false, true),
                };
                let v = math::verify(&gold, &pred, opts.timeout);
                m.insert("correct".into(), Value::Bool(v.correct));
                m.insert("gold_parsed".into(), json!(v.gold_parsed));
                m.insert("pred_parsed".into(), json!(v.pred_parsed));
                if let Some(e) = v.error {
                    m.insert("error".into(), Value::String(e));
                }
                (Value::Object(m), v.correct, false)
            })
            .collect();
        out.into_iter()
            .map(|(v, ok, bad)| {
                correct += ok as usize;
                malformed_fields += bad as usize;
                v
            })
            .collect()
    })?;
    stats.correct = correct;
    stats.malformed += malformed_fields;
    Ok(stats)
}

/// One validated code line.
struct CodeJob {
    obj: Map<String, Value>,
    lang: Language,
    code: String,
    tests: Vec<StdioTest>,
    test_program: Option<String>,
    cfg: SandboxConfig,
    levels: Option<TestLevels>,
}

fn parse_code_line(m: Map<String, Value>, opts: &CodeOptions) -> Result<CodeJob, String> {
    let code = get_str(&m, "code")?.to_string();
    let lang = match m.get("language") {
        None | Some(Value::Null) => Language::Python,
        Some(Value::String(s)) => {
            Language::from_name(s).ok_or_else(|| format!("unsupported language {s:?}"))?
        }
        Some(_) => return Err("field \"language\" must be a string".into()),
    };
    let tests: Vec<StdioTest> = match m.get("tests") {
        None | Some(Value::Null) => vec![],
        Some(v) => serde_json::from_value(v.clone())
            .map_err(|e| format!("field \"tests\": {e} (expected [{{\"stdin\", \"stdout\"}}])"))?,
    };
    let test_program = match m.get("test_program") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err("field \"test_program\" must be a string".into()),
    };
    if tests.is_empty() == test_program.is_none() {
        return Err("give either a non-empty \"tests\" or \"test_program\"".into());
    }
    let mut cfg = opts.sandbox.clone();
    if let Some(t) = m.get("timeout_s") {
        let t = t
            .as_f64()
            .filter(|t| t.is_finite() && *t > 0.0 && *t <= 600.0)
            .ok_or("field \"timeout_s\" must be a number in (0, 600]")?;
        cfg.timeout = Duration::from_secs_f64(t);
        cfg.cpu_seconds = 0;
    }
    let n_tests = if test_program.is_some() {
        1
    } else {
        tests.len()
    };
    let levels = if let Some(v) = m.get("test_levels") {
        let lv: Vec<usize> =
            serde_json::from_value(v.clone()).map_err(|e| format!("field \"test_levels\": {e}"))?;
        let weights: Vec<f64> = match m.get("level_weights") {
            Some(w) => serde_json::from_value(w.clone())
                .map_err(|e| format!("field \"level_weights\": {e}"))?,
            None => {
                let k = lv.iter().max().map_or(1, |x| x + 1);
                vec![1.0 / k as f64; k]
            }
        };
        Some(TestLevels::from_levels(lv, weights).map_err(|e| e.to_string())?)
    } else if let Some(v) = m.get("pass_rates") {
        let rates: Vec<f64> =
            serde_json::from_value(v.clone()).map_err(|e| format!("field \"pass_rates\": {e}"))?;
        let mut lc = opts.levels.clone();
        if let Some(w) = m.get("level_weights") {
            lc.weights = serde_json::from_value(w.clone())
                .map_err(|e| format!("field \"level_weights\": {e}"))?;
            if let Split::Quantiles(_) = lc.split {
                let k = lc.weights.len();
                lc.split = Split::Quantiles((1..k).map(|i| i as f64 / k as f64).collect());
            }
        }
        Some(TestLevels::from_pass_rates(&rates, &lc).map_err(|e| e.to_string())?)
    } else {
        None
    };
    if let Some(l) = &levels {
        if l.level_of.len() != n_tests {
            return Err(format!(
                "{} test levels given for {n_tests} tests",
                l.level_of.len()
            ));
        }
    }
    Ok(CodeJob {
        obj: m,
        lang,
        code,
        tests,
        test_program,
        cfg,
        levels,
    })
}

/// `mimo reward code`: each line `{"code", "language", "tests": [{"stdin", "stdout"}] | "test_program",
/// "timeout_s"}`, optionally with test levels (`"test_levels": [0, 1, 2, …]` with optional
/// `"level_weights"`, or `"pass_rates": [f64]` split by `opts.levels`). Adds `"passed": [bool]`,
/// `"status"` (first failing test's status, or `ok`), `"binary"`, and `"strict"`/`"soft"` when levels are given.
/// All sandbox runs of a chunk of lines share one pool of `opts.sandbox.concurrency` workers.
pub fn run_code_jsonl(
    input: impl BufRead,
    output: impl Write,
    opts: &CodeOptions,
) -> Result<Stats, RewardError> {
    let mut stats = Stats::default();
    let mut correct = 0usize;
    let mut bad_fields = 0usize;
    drive(input, output, &mut stats, |chunk| {
        let jobs: Vec<(usize, Result<CodeJob, String>)> = chunk
            .into_iter()
            .map(|(n, p)| (n, p.and_then(|m| parse_code_line(m, opts))))
            .collect();
        // flatten to (job index, test index) so one pool bounds all concurrent runs
        let work: Vec<(usize, usize)> = jobs
            .iter()
            .enumerate()
            .filter_map(|(j, (_, r))| r.as_ref().ok().map(|job| (j, job)))
            .flat_map(|(j, job)| {
                let n = if job.test_program.is_some() {
                    1
                } else {
                    job.tests.len()
                };
                (0..n).map(move |t| (j, t))
            })
            .collect();
        let results: Vec<TestOutcome> = sandbox::run_many(&work, &opts.sandbox, |&(j, t)| {
            let Ok(job) = &jobs[j].1 else {
                return TestOutcome {
                    passed: false,
                    status: Status::SandboxError,
                    detail: None,
                };
            };
            match &job.test_program {
                Some(tp) => sandbox::run_test_program(job.lang, &job.code, tp, &job.cfg),
                None => sandbox::run_stdio_test(job.lang, &job.code, &job.tests[t], &job.cfg),
            }
        });
        let mut per_job: Vec<Vec<TestOutcome>> = jobs.iter().map(|_| Vec::new()).collect();
        for ((j, _), r) in work.iter().zip(results) {
            per_job[*j].push(r);
        }
        jobs.into_iter()
            .zip(per_job)
            .map(|((n, job), outcomes)| {
                let job = match job {
                    Ok(j) => j,
                    Err(e) => {
                        // JSON-level errors were already counted by `drive`
                        if !e.starts_with("invalid JSON") && e != "not a JSON object" {
                            bad_fields += 1;
                        }
                        return bad_line(n, e);
                    }
                };
                let passed: Vec<bool> = outcomes.iter().map(|o| o.passed).collect();
                let status = outcomes
                    .iter()
                    .find(|o| !o.passed)
                    .map_or(Status::Ok, |o| o.status);
                let mut m = job.obj;
                let binary = difficulty::binary(&passed);
                correct += (binary == 1.0) as usize;
                m.insert("passed".into(), json!(passed));
                m.insert("status".into(), json!(status.as_str()));
                m.insert("binary".into(), json!(binary));
                if let Some(l) = &job.levels {
                    m.insert("strict".into(), json!(difficulty::strict(&passed, l)));
                    m.insert("soft".into(), json!(difficulty::soft(&passed, l)));
                }
                let details: Vec<Value> = outcomes.iter().map(|o| json!(o.detail)).collect();
                if details.iter().any(|d| !d.is_null()) {
                    m.insert("details".into(), Value::Array(details));
                }
                Value::Object(m)
            })
            .collect()
    })?;
    stats.correct = correct;
    stats.malformed += bad_fields;
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(out: &[u8]) -> Vec<Value> {
        String::from_utf8_lossy(out)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or(Value::Null))
            .collect()
    }

    #[test]
    fn math_jsonl_order_and_errors() {
        let input = concat!(
            r#"{"gold": "1/2", "pred": "so \\boxed{0.5}", "id": 7}"#,
            "\n",
            "not json\n",
            "\n",
            r#"{"gold": "3"}"#,
            "\n",
            r#"{"gold": "3", "pred": "\\boxed{4}"}"#,
            "\n"
        );
        let mut out = Vec::new();
        let st = run_math_jsonl(input.as_bytes(), &mut out).unwrap();
        let v = lines(&out);
        assert_eq!(v.len(), 4);
        assert_eq!(v[0]["correct"], json!(true));
        assert_eq!(v[0]["id"], json!(7));
        assert_eq!(v[0]["gold_parsed"], json!("1/2"));
        assert!(v[0].get("error").is_none());
        assert_eq!(v[1]["line"], json!(2));
        assert!(v[1]["error"].as_str().unwrap_or("").starts_with("line 2:"));
        assert_eq!(v[2]["line"], json!(4));
        assert!(v[2]["error"].as_str().unwrap_or("").contains("pred"));
        assert_eq!(v[3]["correct"], json!(false));
        assert_eq!(
            st,
            Stats {
                lines: 4,
                malformed: 2,
                correct: 1
            }
        );
    }

    #[test]
    fn code_jsonl_validation_errors() {
        let input = concat!(
            r#"{"code": "print(1)"}"#,
            "\n",
            r#"{"code": "print(1)", "language": "cobol", "test_program": "pass"}"#,
            "\n",
            r#"{"code": "print(1)", "tests": [{"stdin": ""}]}"#,
            "\n",
            r#"{"code": "x", "tests": [{"stdin": "", "stdout": ""}], "test_levels": [0, 1]}"#,
            "\n",
        );
        let mut out = Vec::new();
        let st = run_code_jsonl(input.as_bytes(), &mut out, &CodeOptions::default()).unwrap();
        let v = lines(&out);
        assert_eq!(v.len(), 4);
        for (i, l) in v.iter().enumerate() {
            assert_eq!(l["line"], json!(i + 1), "{l}");
        }
        assert!(v[1]["error"].as_str().unwrap_or("").contains("cobol"));
        assert_eq!(st.malformed, 4);
    }
}
