//! Property test of the JSONL drivers on random inputs: random bytes (invalid UTF-8, NUL, CR), random JSON
//! objects with the drivers' field names and random values (huge numbers, nested arrays, wrong types,
//! missing fields), near-valid math and code lines, truncated or corrupted JSON, deep nesting and blank
//! lines. Properties: no panic; exactly one output line per non-blank input line; an error line
//! `{"line": N, "error": "line N: …"}` names its own line number; any other output line is its input
//! object with result fields added.
//!
//! Code lines that pass validation never reach a sandbox: the sandbox's work root cannot be created, so
//! each run fails at once with `sandbox_error`, and the scoring path (levels, strict, soft) still runs.
//! Cases: env `MIMO_FUZZ_CASES` (default 5000, about 7 s in a debug build), each run through both drivers.

use mimo_reward::jsonl::{run_code_jsonl, run_math_jsonl, CodeOptions, Stats};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{json, Map, Value};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Field names the drivers read, plus a few others.
const KEYS: &[&str] = &[
    "gold",
    "pred",
    "code",
    "language",
    "tests",
    "test_program",
    "timeout_s",
    "test_levels",
    "level_weights",
    "pass_rates",
    "id",
    "stdin",
    "stdout",
];

/// Keys a driver adds to (or overwrites in) a result object.
const RESULT_KEYS: &[&str] = &[
    "correct",
    "gold_parsed",
    "pred_parsed",
    "error",
    "passed",
    "status",
    "binary",
    "strict",
    "soft",
    "details",
];

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[0-9+\\-*/^().,{}\\\\a-z =]{0,16}",
        Just("\\boxed{1/2}".to_string()),
        Just("\\frac{1}{2}".to_string()),
        Just("print(1)".to_string()),
        "\\PC{0,8}",
        "[\0\r\t\u{feff}\u{7f}é漢]{0,6}",
    ]
}

fn number() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(|x| json!(x)),
        any::<u64>().prop_map(|x| json!(x)),
        (0u64..5).prop_map(|x| json!(x)),
        any::<f64>().prop_map(|x| json!(x)), // NaN and infinities become null
        prop_oneof![
            Just(0.0),
            Just(0.5),
            Just(1.0),
            Just(600.0),
            Just(600.000_001),
            Just(1e308),
            Just(-1e308),
            Just(5e-324),
            Just(1e12),
        ]
        .prop_map(|x| json!(x)),
    ]
}

fn value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        number(),
        text().prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(key(), inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(KEYS).prop_map(str::to_string),
        "[a-z]{1,6}".prop_filter("not an error-line key", |k| k != "line" && k != "error"),
    ]
}

fn random_object() -> impl Strategy<Value = Map<String, Value>> {
    prop::collection::btree_map(key(), value(), 0..6).prop_map(|m| m.into_iter().collect())
}

/// `Some(v)` or absent, with `v` well-typed or random.
fn maybe(good: impl Strategy<Value = Value>) -> impl Strategy<Value = Option<Value>> {
    prop_oneof![
        2 => Just(None),
        3 => good.prop_map(Some),
        1 => value().prop_map(Some),
    ]
}

fn math_object() -> impl Strategy<Value = Map<String, Value>> {
    (
        maybe(text().prop_map(Value::String)),
        maybe(text().prop_map(Value::String)),
        random_object(),
    )
        .prop_map(|(g, p, mut m)| {
            m.remove("gold");
            m.remove("pred");
            if let Some(g) = g {
                m.insert("gold".into(), g);
            }
            if let Some(p) = p {
                m.insert("pred".into(), p);
            }
            m
        })
}

fn code_object() -> impl Strategy<Value = Map<String, Value>> {
    let test = (text(), text()).prop_map(|(i, o)| json!({"stdin": i, "stdout": o}));
    let small_list =
        |s: BoxedStrategy<Value>| prop::collection::vec(s, 0..5).prop_map(Value::Array);
    let level = prop_oneof![4 => (0u64..4).prop_map(|x| json!(x)), 1 => number()].boxed();
    let rate = prop_oneof![4 => (0.0f64..=1.0).prop_map(|x| json!(x)), 1 => number()].boxed();
    let weight = prop_oneof![4 => (0.0f64..2.0).prop_map(|x| json!(x)), 1 => number()].boxed();
    (
        (
            maybe(text().prop_map(Value::String)),
            maybe(
                prop::sample::select(&["python", "PY", "python3", "cobol", ""][..])
                    .prop_map(|s| json!(s)),
            ),
            maybe(prop::collection::vec(test, 0..4).prop_map(Value::Array)),
            maybe(text().prop_map(Value::String)),
        ),
        (
            maybe(number()),
            maybe(small_list(level)),
            maybe(small_list(weight)),
            maybe(small_list(rate)),
        ),
    )
        .prop_map(
            |((code, lang, tests, tp), (timeout, levels, weights, rates))| {
                let mut m = Map::new();
                for (k, v) in [
                    ("code", code),
                    ("language", lang),
                    ("tests", tests),
                    ("test_program", tp),
                    ("timeout_s", timeout),
                    ("test_levels", levels),
                    ("level_weights", weights),
                    ("pass_rates", rates),
                ] {
                    if let Some(v) = v {
                        m.insert(k.into(), v);
                    }
                }
                m
            },
        )
}

/// One input line, before it is written out (never containing `\n`).
#[derive(Debug, Clone)]
enum Line {
    Bytes(Vec<u8>),
    Object(Map<String, Value>),
    /// Serialised, then cut at the fraction or with a byte inserted at it.
    Corrupt(Map<String, Value>, f64, Option<u8>),
    /// Template with a raw number literal serde_json may not represent.
    RawNumber(&'static str, String),
    Nested(usize),
    Blank(&'static str),
}

fn line() -> impl Strategy<Value = Line> {
    prop_oneof![
        2 => prop::collection::vec(any::<u8>(), 0..40).prop_map(Line::Bytes),
        2 => random_object().prop_map(Line::Object),
        3 => math_object().prop_map(Line::Object),
        3 => code_object().prop_map(Line::Object),
        1 => (prop_oneof![math_object(), code_object()], 0.0f64..1.0, prop::option::of(any::<u8>()))
            .prop_map(|(m, f, b)| Line::Corrupt(m, f, b)),
        1 => (
            prop::sample::select(&["test_levels", "timeout_s", "pass_rates", "level_weights"][..]),
            prop_oneof!["-?[0-9]{1,40}", "-?[0-9]{1,3}(\\.[0-9]{1,3})?[eE][+-]?[0-9]{1,4}"],
        )
            .prop_map(|(f, n)| Line::RawNumber(f, n)),
        1 => (1usize..300).prop_map(Line::Nested),
        1 => prop::sample::select(&["", " ", "\t", "\r", " \r", "\u{3000}"][..]).prop_map(Line::Blank),
    ]
}

impl Line {
    fn bytes(&self) -> Vec<u8> {
        let mut b = match self {
            Line::Bytes(b) => b.clone(),
            Line::Object(m) => Value::Object(m.clone()).to_string().into_bytes(),
            Line::Corrupt(m, f, ins) => {
                let mut s = Value::Object(m.clone()).to_string().into_bytes();
                let at = ((s.len() as f64 * f) as usize).min(s.len().saturating_sub(1));
                match ins {
                    Some(b) => s.insert(at, *b),
                    None => s.truncate(at),
                }
                s
            }
            Line::RawNumber(f, n) => format!(
                "{{\"code\": \"print(1)\", \"gold\": \"1\", \"pred\": \"1\", \"tests\": [{{\"stdin\": \"\", \"stdout\": \"1\"}}], \"{f}\": {}}}",
                if *f == "timeout_s" { n.clone() } else { format!("[{n}]") }
            )
            .into_bytes(),
            Line::Nested(d) => format!("{{\"gold\": {}1{}}}", "[".repeat(*d), "]".repeat(*d)).into_bytes(),
            Line::Blank(s) => s.as_bytes().to_vec(),
        };
        for x in &mut b {
            if *x == b'\n' {
                *x = b' ';
            }
        }
        b
    }
}

/// JSON equality, floats up to their last bits (serde_json's default float parser is not always correctly
/// rounded, so a long decimal may re-read one ulp off after the round trip through the output).
fn same_value(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) if x.is_f64() || y.is_f64() => {
            match (x.as_f64(), y.as_f64()) {
                (Some(x), Some(y)) => x == y || (x - y).abs() <= 1e-14 * x.abs().max(y.abs()),
                _ => false,
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same_value(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| same_value(v, w)))
        }
        _ => a == b,
    }
}

/// Runs one driver on `lines` (joined by `\n` or `\r\n`, optional final newline) and checks the properties.
fn check(
    lines: &[(Line, bool)],
    final_newline: bool,
    run: &dyn Fn(&[u8], &mut Vec<u8>) -> Stats,
) -> Result<(), TestCaseError> {
    let mut input = Vec::new();
    let mut expect = Vec::new(); // (line number, input object if the line is one)
    for (i, (l, crlf)) in lines.iter().enumerate() {
        let mut b = l.bytes();
        if *crlf {
            b.push(b'\r');
        }
        input.extend_from_slice(&b);
        if i + 1 < lines.len() || final_newline {
            input.push(b'\n');
        }
        let first = i == 0;
        let content = match b.strip_prefix(b"\xEF\xBB\xBF") {
            Some(rest) if first => rest,
            _ => &b[..],
        };
        let blank = std::str::from_utf8(content).is_ok_and(|s| s.trim().is_empty());
        if !blank {
            let obj = std::str::from_utf8(content)
                .ok()
                .and_then(|s| serde_json::from_str::<Value>(s).ok())
                .and_then(|v| match v {
                    Value::Object(m) => Some(m),
                    _ => None,
                });
            expect.push((i + 1, obj));
        }
    }
    let mut out = Vec::new();
    let st = run(&input, &mut out);
    prop_assert!(out.is_empty() || out.ends_with(b"\n"));
    let got: Vec<&[u8]> = out
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .collect();
    prop_assert_eq!(
        got.len(),
        expect.len(),
        "output lines for {:?}",
        String::from_utf8_lossy(&input)
    );
    let mut errors = 0;
    for (g, (n, obj)) in got.iter().zip(&expect) {
        let v: Value = serde_json::from_slice(g).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let m = v
            .as_object()
            .ok_or_else(|| TestCaseError::fail("output not an object"))?;
        let is_error_line = m.len() == 2 && m.contains_key("line") && m.contains_key("error");
        if is_error_line {
            errors += 1;
            prop_assert_eq!(&m["line"], &json!(n));
            let e = m["error"].as_str().unwrap_or("");
            prop_assert!(e.starts_with(&format!("line {n}: ")), "{}", e);
            prop_assert!(e.len() < 2000, "long message {}", e);
        } else {
            let Some(obj) = obj else {
                return Err(TestCaseError::fail(format!(
                    "line {n} is no object but got a result: {v}"
                )));
            };
            for (k, x) in obj {
                if !RESULT_KEYS.contains(&k.as_str()) {
                    let same = m.get(k).is_some_and(|y| same_value(x, y));
                    prop_assert!(same, "line {}: key {}: {:?} became {:?}", n, k, x, m.get(k));
                }
            }
        }
    }
    prop_assert_eq!(st.lines, expect.len());
    prop_assert_eq!(st.malformed, errors);
    Ok(())
}

#[test]
fn jsonl_drivers_answer_every_line() {
    let cases: u32 = std::env::var("MIMO_FUZZ_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5000);
    eprintln!("fuzz_jsonl: {cases} cases");
    let mut code = CodeOptions::default();
    // never creatable, so every sandbox run fails before anything is spawned
    code.sandbox.work_root = PathBuf::from("/dev/null/mimo-fuzz");
    code.sandbox.concurrency = 2;
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let strategy = (
        prop::collection::vec((line(), prop::bool::weighted(0.2)), 0..24),
        any::<bool>(),
    );
    // code lines that validated (and reached the always-failing sandbox), and those of them with levels
    let scored = AtomicUsize::new(0);
    let leveled = AtomicUsize::new(0);
    let started = std::time::Instant::now();
    let result = runner.run(&strategy, |(lines, final_newline)| {
        check(&lines, final_newline, &|input, out| {
            run_math_jsonl(input, out).expect("no I/O error on memory buffers")
        })?;
        check(&lines, final_newline, &|input, out| {
            let st =
                run_code_jsonl(input, &mut *out, &code).expect("no I/O error on memory buffers");
            // whatever validated, no run got past the sandbox
            for l in String::from_utf8_lossy(out).lines() {
                let v: Value = serde_json::from_str(l).unwrap_or(Value::Null);
                if let Some(s) = v.get("status") {
                    if v.get("passed").is_some() {
                        scored.fetch_add(1, Ordering::Relaxed);
                        if v.get("strict").is_some() {
                            leveled.fetch_add(1, Ordering::Relaxed);
                        }
                        assert_eq!(s, "sandbox_error", "{v}");
                        assert_eq!(v["binary"], json!(0.0), "{v}");
                    }
                }
            }
            st
        })
    });
    eprintln!(
        "fuzz_jsonl: {cases} cases in {:.1?}; {} code lines scored, {} with levels",
        started.elapsed(),
        scored.load(Ordering::Relaxed),
        leveled.load(Ordering::Relaxed)
    );
    if let Err(e) = result {
        panic!("{e}");
    }
}
