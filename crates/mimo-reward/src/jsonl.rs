//! JSONL drivers behind `mimo reward math` and `mimo reward code` (issue 5, "CLI").
//!
//! Every non-blank input line is answered by exactly one output line, in input order: the input object
//! with result fields added, or `{"line": N, "error": "line N: …"}` when the line cannot be used (not
//! UTF-8, longer than [`MAX_LINE_BYTES`], not a JSON object, a field missing, of the wrong type or out of
//! range; see [`LineError`]). Processing always goes on with the next line; only an I/O error ends a run,
//! and then after the lines read so far have been answered. Line numbers are 1-based and count every
//! line, blank ones included; `\n` ends a line (a `\r` before it is JSON whitespace), and a UTF-8 byte
//! order mark at the start of the input is ignored.

use crate::difficulty::{self, LevelConfig, Split, TestLevels, MAX_LEVELS};
use crate::math;
use crate::sandbox::{self, Language, SandboxConfig, Status, StdioTest, TestOutcome};
use crate::RewardError;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::fmt::Display;
use std::io::{BufRead, Write};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Duration;

/// Longest input line in bytes, not counting its `\n`: 16 MiB. A longer line is answered with an error
/// line and skipped without being held in memory.
pub const MAX_LINE_BYTES: usize = 16 << 20;
/// Most tests (`tests`, `test_levels`, `pass_rates` entries) one code line may give.
pub const MAX_TESTS: usize = 1024;
/// Longest per-line `timeout_s` of a code line, in seconds.
pub const MAX_TIMEOUT_S: f64 = 600.0;

/// Lines are processed in chunks of at most this many lines (in parallel within a chunk, output in order)…
const CHUNK: usize = 256;
/// …and of at most about this many input bytes, which bounds the memory a chunk holds.
const CHUNK_BYTES: usize = 32 << 20;

/// Counts over one JSONL run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Input lines answered (blank lines are skipped and not counted).
    pub lines: usize,
    /// Lines that could not be interpreted (they got an `"error"` output line with `"line"`).
    pub malformed: usize,
    /// Math: lines judged correct. Code: lines whose tests all passed.
    pub correct: usize,
}

/// Why an input line was answered with an error line instead of a result.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    /// Longer than [`MAX_LINE_BYTES`].
    #[error("line longer than {} bytes", MAX_LINE_BYTES)]
    TooLong,
    /// Not UTF-8; the offset of the first bad byte.
    #[error("invalid UTF-8 at byte {0}")]
    InvalidUtf8(usize),
    /// Not JSON (serde_json's message).
    #[error("invalid JSON: {0}")]
    Json(String),
    /// JSON, but not an object.
    #[error("not a JSON object")]
    NotObject,
    /// A field is missing, of the wrong type or out of range (the message names it).
    #[error("{0}")]
    Field(String),
    /// A bug: evaluating the line panicked or gave no result.
    #[error("internal error: {0}")]
    Internal(String),
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

/// The answer to one parsed line: the output object and whether it counts as correct.
type Answer = Result<(Map<String, Value>, bool), LineError>;

fn bad_line(n: usize, msg: impl Display) -> Value {
    json!({"line": n, "error": format!("line {n}: {msg}")})
}

/// How [`read_line`] ended.
enum Raw {
    /// The whole line is in the buffer.
    Line,
    /// The line was longer than the cap; it was consumed and dropped.
    TooLong,
}

/// Reads one line (through `\n`, which is dropped) into `buf`, holding at most `max` bytes of it; the rest
/// of a longer line is consumed and dropped. `None` at end of input.
fn read_line(r: &mut impl BufRead, buf: &mut Vec<u8>, max: usize) -> std::io::Result<Option<Raw>> {
    buf.clear();
    let mut seen = false;
    let mut too_long = false;
    loop {
        let avail = match r.fill_buf() {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if avail.is_empty() {
            break;
        }
        seen = true;
        let (take, done) = match avail.iter().position(|&b| b == b'\n') {
            Some(i) => (i, true),
            None => (avail.len(), false),
        };
        if !too_long {
            if buf.len() + take > max {
                too_long = true;
                *buf = Vec::new();
            } else {
                buf.extend_from_slice(&avail[..take]);
            }
        }
        r.consume(take + usize::from(done));
        if done {
            break;
        }
    }
    Ok(seen.then_some(if too_long { Raw::TooLong } else { Raw::Line }))
}

/// Decodes and parses one line; `None` for a blank line.
fn parse_line(bytes: &[u8], first: bool) -> Option<Result<Map<String, Value>, LineError>> {
    let bytes = match bytes.strip_prefix(b"\xEF\xBB\xBF") {
        Some(rest) if first => rest,
        _ => bytes,
    };
    let s = match std::str::from_utf8(bytes) {
        Ok(s) => s,
        Err(e) => return Some(Err(LineError::InvalidUtf8(e.valid_up_to()))),
    };
    if s.trim().is_empty() {
        return None;
    }
    Some(match serde_json::from_str::<Value>(s) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(LineError::NotObject),
        Err(e) => Err(LineError::Json(e.to_string())),
    })
}

fn write_json(output: &mut impl Write, v: &Value) -> Result<(), RewardError> {
    serde_json::to_writer(&mut *output, v).map_err(|e| {
        if e.is_io() {
            RewardError::Io(e.into())
        } else {
            RewardError::Json(e)
        }
    })?;
    output.write_all(b"\n")?;
    Ok(())
}

/// Lines read so far: line number and the parsed object or why it is bad.
type Chunk = Vec<(usize, Result<Map<String, Value>, LineError>)>;

/// Answers a chunk of lines: the parsed objects go through `eval` (one answer each, in order), then every
/// line's result or error line is written in input order.
fn answer<F>(
    chunk: &mut Chunk,
    output: &mut impl Write,
    stats: &mut Stats,
    eval: &mut F,
) -> Result<(), RewardError>
where
    F: FnMut(Vec<Map<String, Value>>) -> Vec<Answer>,
{
    let mut objs = Vec::new();
    let mut slots = Vec::with_capacity(chunk.len());
    for (n, parsed) in chunk.drain(..) {
        match parsed {
            Ok(m) => {
                objs.push(m);
                slots.push((n, None));
            }
            Err(e) => slots.push((n, Some(e))),
        }
    }
    let mut answers = eval(objs).into_iter();
    for (n, err) in slots {
        let a = match err {
            Some(e) => Err(e),
            None => answers
                .next()
                .unwrap_or_else(|| Err(LineError::Internal("no result".into()))),
        };
        stats.lines += 1;
        let v = match a {
            Ok((m, correct)) => {
                stats.correct += usize::from(correct);
                Value::Object(m)
            }
            Err(e) => {
                stats.malformed += 1;
                bad_line(n, e)
            }
        };
        write_json(output, &v)?;
    }
    Ok(())
}

/// Reads lines, parses them, answers them in chunks through `eval` and writes the answers in order.
fn drive<F>(
    mut input: impl BufRead,
    mut output: impl Write,
    mut eval: F,
) -> Result<Stats, RewardError>
where
    F: FnMut(Vec<Map<String, Value>>) -> Vec<Answer>,
{
    let mut stats = Stats::default();
    let mut chunk = Vec::new();
    let mut chunk_bytes = 0usize;
    let mut buf = Vec::new();
    let mut n = 0usize;
    loop {
        let raw = match read_line(&mut input, &mut buf, MAX_LINE_BYTES) {
            Ok(Some(raw)) => raw,
            Ok(None) => break,
            Err(e) => {
                // answer what was read before giving up
                answer(&mut chunk, &mut output, &mut stats, &mut eval)?;
                output.flush()?;
                return Err(e.into());
            }
        };
        n += 1;
        let parsed = match raw {
            Raw::TooLong => Err(LineError::TooLong),
            Raw::Line => match parse_line(&buf, n == 1) {
                Some(p) => p,
                None => continue,
            },
        };
        chunk_bytes += buf.len();
        chunk.push((n, parsed));
        if chunk.len() >= CHUNK || chunk_bytes >= CHUNK_BYTES {
            answer(&mut chunk, &mut output, &mut stats, &mut eval)?;
            chunk_bytes = 0;
        }
    }
    answer(&mut chunk, &mut output, &mut stats, &mut eval)?;
    output.flush()?;
    Ok(stats)
}

/// Short description of a JSON value for error messages (scalars and short strings verbatim).
fn describe(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) if s.chars().count() <= 32 => format!("{s:?}"),
        Value::String(_) => "a long string".into(),
        Value::Array(a) => format!("an array of {} entries", a.len()),
        Value::Object(_) => "an object".into(),
    }
}

fn field(k: &str, msg: impl Display) -> LineError {
    LineError::Field(format!("field \"{k}\": {msg}"))
}

/// The message of a [`RewardError::Config`] (or the error's display).
fn config_msg(e: RewardError) -> String {
    match e {
        RewardError::Config(m) => m,
        e => e.to_string(),
    }
}

/// `m[k]`, treating null as absent.
fn opt<'a>(m: &'a Map<String, Value>, k: &str) -> Option<&'a Value> {
    m.get(k).filter(|v| !v.is_null())
}

fn get_str<'a>(m: &'a Map<String, Value>, k: &str) -> Result<&'a str, LineError> {
    match m.get(k) {
        Some(Value::String(s)) => Ok(s),
        Some(v) => Err(field(k, format!("must be a string, got {}", describe(v)))),
        None => Err(LineError::Field(format!("missing field \"{k}\""))),
    }
}

/// `v` as an array of at most `max_len` entries.
fn array<'a>(k: &str, v: &'a Value, max_len: usize) -> Result<&'a [Value], LineError> {
    let a = v
        .as_array()
        .ok_or_else(|| field(k, format!("must be an array, got {}", describe(v))))?;
    if a.len() > max_len {
        return Err(field(
            k,
            format!("{} entries, at most {max_len} allowed", a.len()),
        ));
    }
    Ok(a)
}

/// `v` as an array of exactly `n` numbers, each in `lo..=hi` (`range` says so in messages).
fn numbers(
    k: &str,
    v: &Value,
    n: usize,
    (lo, hi, range): (f64, f64, &str),
) -> Result<Vec<f64>, LineError> {
    let a = array(k, v, MAX_TESTS.max(MAX_LEVELS))?;
    if a.len() != n {
        return Err(field(k, format!("{} entries given for {n}", a.len())));
    }
    a.iter()
        .enumerate()
        .map(|(i, x)| {
            x.as_f64().filter(|x| (lo..=hi).contains(x)).ok_or_else(|| {
                field(
                    k,
                    format!("entry {i} must be a number {range}, got {}", describe(x)),
                )
            })
        })
        .collect()
}

/// `level_weights`: 1..=[`MAX_LEVELS`] finite non-negative numbers with a finite sum.
fn level_weights(v: &Value) -> Result<Vec<f64>, LineError> {
    let k = "level_weights";
    let a = array(k, v, MAX_LEVELS)?;
    if a.is_empty() {
        return Err(field(k, "must not be empty"));
    }
    let w = numbers(k, v, a.len(), (0.0, f64::MAX, ">= 0"))?;
    if !w.iter().sum::<f64>().is_finite() {
        return Err(field(k, "the weights must have a finite sum"));
    }
    Ok(w)
}

/// `tests`: at most [`MAX_TESTS`] objects `{"stdin": string, "stdout": string}`.
fn stdio_tests(v: &Value) -> Result<Vec<StdioTest>, LineError> {
    let k = "tests";
    let one = |i: usize, t: &Value| -> Result<StdioTest, LineError> {
        let o = t.as_object().ok_or_else(|| {
            field(
                k,
                format!(
                    "entry {i} must be an object {{\"stdin\", \"stdout\"}}, got {}",
                    describe(t)
                ),
            )
        })?;
        let s = |name: &str| match o.get(name) {
            Some(Value::String(s)) => Ok(s.clone()),
            Some(x) => Err(field(
                k,
                format!(
                    "entry {i}: \"{name}\" must be a string, got {}",
                    describe(x)
                ),
            )),
            None => Err(field(k, format!("entry {i}: missing \"{name}\""))),
        };
        Ok(StdioTest {
            stdin: s("stdin")?,
            stdout: s("stdout")?,
        })
    };
    array(k, v, MAX_TESTS)?
        .iter()
        .enumerate()
        .map(|(i, t)| one(i, t))
        .collect()
}

/// Levels from `test_levels` (one per test, each below [`MAX_LEVELS`]) and optional `level_weights`
/// (default: equal weights over levels `0..=max`).
fn levels_from_list(v: &Value, w: Option<&Value>, n_tests: usize) -> Result<TestLevels, LineError> {
    let k = "test_levels";
    let a = array(k, v, MAX_TESTS)?;
    if a.len() != n_tests {
        return Err(field(
            k,
            format!("{} test levels given for {n_tests} tests", a.len()),
        ));
    }
    let lv = a
        .iter()
        .enumerate()
        .map(|(i, x)| match x.as_u64() {
            Some(l) if l < MAX_LEVELS as u64 => Ok(l as usize),
            Some(l) => Err(field(
                k,
                format!("entry {i} is {l}, levels must be below {MAX_LEVELS}"),
            )),
            None => Err(field(
                k,
                format!(
                    "entry {i} must be a non-negative integer, got {}",
                    describe(x)
                ),
            )),
        })
        .collect::<Result<Vec<usize>, _>>()?;
    let weights = match w {
        Some(w) => level_weights(w)?,
        None => {
            let n = lv.iter().max().map_or(1, |&l| l + 1);
            vec![1.0 / n as f64; n]
        }
    };
    TestLevels::from_levels(lv, weights).map_err(|e| field(k, config_msg(e)))
}

/// Levels from `pass_rates` (one per test, each in [0, 1]) split by `cfg`, with optional
/// `level_weights` (which, for a quantile split, also set the number of levels).
fn levels_from_rates(
    v: &Value,
    w: Option<&Value>,
    n_tests: usize,
    cfg: &LevelConfig,
) -> Result<TestLevels, LineError> {
    let rates = numbers("pass_rates", v, n_tests, (0.0, 1.0, "in [0, 1]"))?;
    let mut lc = cfg.clone();
    if let Some(w) = w {
        lc.weights = level_weights(w)?;
        if let Split::Quantiles(_) = lc.split {
            let k = lc.weights.len();
            lc.split = Split::Quantiles((1..k).map(|i| i as f64 / k as f64).collect());
        }
    }
    TestLevels::from_pass_rates(&rates, &lc).map_err(|e| field("pass_rates", config_msg(e)))
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

impl CodeJob {
    /// Sandbox runs this line needs.
    fn runs(&self) -> usize {
        if self.test_program.is_some() {
            1
        } else {
            self.tests.len()
        }
    }
}

fn parse_code_line(m: Map<String, Value>, opts: &CodeOptions) -> Result<CodeJob, LineError> {
    let code = get_str(&m, "code")?.to_string();
    let lang = match opt(&m, "language") {
        None => Language::Python,
        Some(Value::String(s)) => Language::from_name(s).ok_or_else(|| {
            field(
                "language",
                format!("unsupported language {}", describe(&json!(s))),
            )
        })?,
        Some(v) => {
            return Err(field(
                "language",
                format!("must be a string, got {}", describe(v)),
            ))
        }
    };
    let tests = match opt(&m, "tests") {
        None => vec![],
        Some(v) => stdio_tests(v)?,
    };
    let test_program = match opt(&m, "test_program") {
        None => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(v) => {
            return Err(field(
                "test_program",
                format!("must be a string, got {}", describe(v)),
            ))
        }
    };
    if tests.is_empty() == test_program.is_none() {
        return Err(LineError::Field(
            "give either a non-empty \"tests\" or \"test_program\"".into(),
        ));
    }
    let mut cfg = opts.sandbox.clone();
    if let Some(t) = opt(&m, "timeout_s") {
        let secs = t
            .as_f64()
            .filter(|t| t.is_finite() && *t > 0.0 && *t <= MAX_TIMEOUT_S)
            .ok_or_else(|| {
                field(
                    "timeout_s",
                    format!(
                        "must be a number in (0, {MAX_TIMEOUT_S}], got {}",
                        describe(t)
                    ),
                )
            })?;
        cfg.timeout = Duration::from_secs_f64(secs);
        cfg.cpu_seconds = 0;
    }
    let n_tests = if test_program.is_some() {
        1
    } else {
        tests.len()
    };
    let weights = opt(&m, "level_weights");
    let levels = if let Some(v) = opt(&m, "test_levels") {
        Some(levels_from_list(v, weights, n_tests)?)
    } else if let Some(v) = opt(&m, "pass_rates") {
        Some(levels_from_rates(v, weights, n_tests, &opts.levels)?)
    } else {
        None
    };
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
    drive(input, output, |objs| {
        objs.into_par_iter().map(|m| math_line(m, opts)).collect()
    })
}

fn math_line(mut m: Map<String, Value>, opts: &MathOptions) -> Answer {
    let v = {
        let gold = get_str(&m, "gold")?;
        let pred = get_str(&m, "pred")?;
        catch_unwind(AssertUnwindSafe(|| math::verify(gold, pred, opts.timeout)))
            .map_err(|_| LineError::Internal("the math verifier panicked".into()))?
    };
    m.insert("correct".into(), Value::Bool(v.correct));
    m.insert("gold_parsed".into(), json!(v.gold_parsed));
    m.insert("pred_parsed".into(), json!(v.pred_parsed));
    if let Some(e) = v.error {
        m.insert("error".into(), Value::String(e));
    }
    Ok((m, v.correct))
}

/// `mimo reward code`: each line `{"code", "language", "tests": [{"stdin", "stdout"}] | "test_program",
/// "timeout_s"}`, optionally with test levels (`"test_levels": [0, 1, 2, …]` with optional
/// `"level_weights"`, or `"pass_rates": [f64]` split by `opts.levels`). Adds `"passed": [bool]`,
/// `"status"` (first failing test's status, or `ok`), `"binary"`, and `"strict"`/`"soft"` when levels are given.
/// All sandbox runs of a chunk of lines share one pool of `opts.sandbox.concurrency` workers.
///
/// Per line: at most [`MAX_TESTS`] tests, `timeout_s` in (0, [`MAX_TIMEOUT_S`]], levels below
/// [`MAX_LEVELS`], one level or pass rate per test, weights finite and >= 0. An invalid `opts.sandbox`
/// (see [`SandboxConfig::validate`]) is an error before any line is read.
pub fn run_code_jsonl(
    input: impl BufRead,
    output: impl Write,
    opts: &CodeOptions,
) -> Result<Stats, RewardError> {
    opts.sandbox.validate()?;
    drive(input, output, |objs| code_chunk(objs, opts))
}

fn code_chunk(objs: Vec<Map<String, Value>>, opts: &CodeOptions) -> Vec<Answer> {
    let jobs: Vec<Result<CodeJob, LineError>> =
        objs.into_iter().map(|m| parse_code_line(m, opts)).collect();
    // flatten to (job index, test index) so one pool bounds all concurrent runs
    let work: Vec<(usize, usize)> = jobs
        .iter()
        .enumerate()
        .filter_map(|(j, r)| r.as_ref().ok().map(|job| (j, job.runs())))
        .flat_map(|(j, n)| (0..n).map(move |t| (j, t)))
        .collect();
    let internal = |what: &str| TestOutcome {
        passed: false,
        status: Status::SandboxError,
        detail: Some(format!("internal error: {what}")),
    };
    let results: Vec<TestOutcome> = sandbox::run_many(&work, &opts.sandbox, |&(j, t)| {
        let Some(Ok(job)) = jobs.get(j) else {
            return internal("no such job");
        };
        catch_unwind(AssertUnwindSafe(|| {
            match (&job.test_program, job.tests.get(t)) {
                (Some(tp), _) => sandbox::run_test_program(job.lang, &job.code, tp, &job.cfg),
                (None, Some(test)) => sandbox::run_stdio_test(job.lang, &job.code, test, &job.cfg),
                (None, None) => internal("no such test"),
            }
        }))
        .unwrap_or_else(|_| internal("the test run panicked"))
    });
    let mut per_job: Vec<Vec<TestOutcome>> = jobs.iter().map(|_| Vec::new()).collect();
    for ((j, _), r) in work.iter().zip(results) {
        if let Some(v) = per_job.get_mut(*j) {
            v.push(r);
        }
    }
    jobs.into_iter()
        .zip(per_job)
        .map(|(job, outcomes)| Ok(code_answer(job?, &outcomes)))
        .collect()
}

/// The output object of a code line whose tests ran, and whether all passed.
fn code_answer(job: CodeJob, outcomes: &[TestOutcome]) -> (Map<String, Value>, bool) {
    let passed: Vec<bool> = outcomes.iter().map(|o| o.passed).collect();
    let status = outcomes
        .iter()
        .find(|o| !o.passed)
        .map_or(Status::Ok, |o| o.status);
    let mut m = job.obj;
    let binary = difficulty::binary(&passed);
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
    (m, binary == 1.0)
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
    fn read_line_caps_and_resynchronises() {
        let data: &[u8] = b"abcd\nabcde\n\nxyz";
        let mut r = std::io::BufReader::with_capacity(2, data);
        let mut buf = Vec::new();
        let mut got = Vec::new();
        while let Some(raw) = read_line(&mut r, &mut buf, 4).unwrap() {
            got.push(match raw {
                Raw::Line => String::from_utf8_lossy(&buf).into_owned(),
                Raw::TooLong => "<too long>".into(),
            });
        }
        assert_eq!(got, ["abcd", "<too long>", "", "xyz"]);
        let mut empty: &[u8] = b"";
        assert!(read_line(&mut empty, &mut buf, 4).unwrap().is_none());
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
