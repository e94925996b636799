//! The JSONL drivers answer every non-blank line, in order, whatever the bytes: bad lines get an error line
//! naming their line number, numeric fields that would drive allocation or time are bounded, and an I/O
//! error ends the run only after the lines read so far are answered. None of these lines reaches the
//! sandbox, so the tests run anywhere.

use mimo_reward::jsonl::{run_code_jsonl, run_math_jsonl, CodeOptions, MAX_LINE_BYTES, MAX_TESTS};
use mimo_reward::RewardError;
use serde_json::{json, Value};
use std::io::{BufReader, Read};
use std::time::{Duration, Instant};

fn parse_out(out: &[u8]) -> Vec<Value> {
    out.split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).expect("every output line is JSON"))
        .collect()
}

fn error_of(v: &Value) -> &str {
    v["error"].as_str().unwrap_or("")
}

#[test]
fn invalid_utf8_lines_are_answered_in_place() {
    // 600 lines crossing the 256-line chunks; bad bytes at chunk edges, blank lines in between
    let bad_at = [1usize, 255, 256, 257, 300, 513, 600];
    let mut input = Vec::new();
    let mut expect = Vec::new(); // (line number, Some(id) | None for an error line)
    for n in 1..=600usize {
        if n % 97 == 0 {
            input.extend_from_slice(b"  \r\n");
            continue;
        }
        if bad_at.contains(&n) {
            input.extend_from_slice(b"{\"gold\": \"1\", \"pred\": \"\xff\xfe\"}\n");
            expect.push((n, None));
        } else {
            input.extend_from_slice(
                format!("{}\n", json!({"gold": "2", "pred": "\\boxed{2}", "id": n})).as_bytes(),
            );
            expect.push((n, Some(n)));
        }
    }
    let mut out = Vec::new();
    let st = run_math_jsonl(&input[..], &mut out).unwrap();
    let v = parse_out(&out);
    assert_eq!(v.len(), expect.len());
    for (got, (n, id)) in v.iter().zip(&expect) {
        match id {
            Some(id) => {
                assert_eq!(got["id"], json!(id), "{got}");
                assert_eq!(got["correct"], json!(true), "{got}");
            }
            None => {
                assert_eq!(got["line"], json!(n), "{got}");
                assert!(error_of(got).starts_with(&format!("line {n}: invalid UTF-8")));
            }
        }
    }
    assert_eq!(st.lines, expect.len());
    assert_eq!(st.malformed, bad_at.len());
    assert_eq!(st.correct, expect.len() - bad_at.len());
}

#[test]
fn overlong_line_is_answered_and_skipped() {
    let head = r#"{"gold": "1", "pred": "1", "pad": ""#;
    let tail = "\"}";
    // exactly at the cap: processed
    let fit = format!(
        "{head}{}{tail}",
        "x".repeat(MAX_LINE_BYTES - head.len() - tail.len())
    );
    assert_eq!(fit.len(), MAX_LINE_BYTES);
    let mut input = Vec::new();
    input.extend_from_slice(b"{\"gold\": \"1\", \"pred\": \"1\"}\n");
    input.extend_from_slice(fit.as_bytes());
    input.push(b'\n');
    // one byte over (with CRLF), and far over
    input.extend_from_slice(fit.as_bytes());
    input.extend_from_slice(b"x\r\n");
    input.extend(std::iter::repeat_n(b'[', 3 * MAX_LINE_BYTES));
    input.push(b'\n');
    input.extend_from_slice(b"{\"gold\": \"3\", \"pred\": \"3\", \"id\": 5}");
    let t = Instant::now();
    let mut out = Vec::new();
    // a small BufReader so that the long lines arrive in many pieces
    let st = run_math_jsonl(BufReader::with_capacity(4096, &input[..]), &mut out).unwrap();
    let v = parse_out(&out);
    assert_eq!(v.len(), 5);
    assert_eq!(v[0]["correct"], json!(true));
    assert_eq!(v[1]["correct"], json!(true), "{}", error_of(&v[1]));
    for (i, n) in [(2, 3), (3, 4)] {
        assert_eq!(v[i]["line"], json!(n));
        assert_eq!(
            error_of(&v[i]),
            format!("line {n}: line longer than {MAX_LINE_BYTES} bytes")
        );
    }
    assert_eq!(v[4]["id"], json!(5));
    assert_eq!(st.malformed, 2);
    assert!(t.elapsed() < Duration::from_secs(60));
}

#[test]
fn crlf_bom_nul_and_non_objects() {
    let input: &[u8] = b"\xEF\xBB\xBF{\"gold\": \"1\", \"pred\": \"1\"}\r\n\
        {\"gold\": \"1\", \"pred\": \"1\"}\0\n\
        \0\n\
        [1, 2]\n\
        \"str\"\n\
        \r\n\
        {\"gold\": 1, \"pred\": \"1\"}\n\
        {\"gold\": \"1\", \"pred\": \"1\"}";
    let mut out = Vec::new();
    let st = run_math_jsonl(input, &mut out).unwrap();
    let v = parse_out(&out);
    assert_eq!(v.len(), 7);
    assert_eq!(v[0]["correct"], json!(true), "{}", v[0]);
    for (i, n, what) in [
        (1, 2, "invalid JSON"),
        (2, 3, "invalid JSON"),
        (3, 4, "not a JSON object"),
        (4, 5, "not a JSON object"),
        (5, 7, "field \"gold\""),
    ] {
        assert_eq!(v[i]["line"], json!(n), "{}", v[i]);
        assert!(error_of(&v[i]).contains(what), "{}", v[i]);
    }
    assert_eq!(v[6]["correct"], json!(true));
    assert_eq!(st.malformed, 5);
}

/// Yields its data, then an I/O error.
struct FailAfter(Vec<u8>, usize);

impl Read for FailAfter {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.1 >= self.0.len() {
            return Err(std::io::Error::other("disk on fire"));
        }
        let k = buf.len().min(self.0.len() - self.1).min(7);
        buf[..k].copy_from_slice(&self.0[self.1..self.1 + k]);
        self.1 += k;
        Ok(k)
    }
}

#[test]
fn io_error_answers_pending_lines_then_fails() {
    let mut data = Vec::new();
    for i in 0..10 {
        data.extend_from_slice(
            format!("{}\n", json!({"gold": "1", "pred": "1", "id": i})).as_bytes(),
        );
    }
    data.extend_from_slice(b"\xff\n");
    let mut out = Vec::new();
    let r = run_math_jsonl(BufReader::new(FailAfter(data, 0)), &mut out);
    assert!(matches!(r, Err(RewardError::Io(_))), "{r:?}");
    let v = parse_out(&out);
    assert_eq!(v.len(), 11);
    assert_eq!(v[9]["id"], json!(9));
    assert_eq!(v[10]["line"], json!(11));
}

/// Code lines whose numeric fields are out of range: each is an error naming the field, answered at once
/// (no multi-terabyte allocation, no sandbox run).
#[test]
fn code_numeric_fields_are_bounded() {
    let t1 = json!([{"stdin": "", "stdout": ""}]);
    let many: Vec<Value> = (0..MAX_TESTS + 1)
        .map(|_| json!({"stdin": "", "stdout": ""}))
        .collect();
    let cases: Vec<(Value, &str)> = vec![
        (
            json!({"code": "x", "tests": t1, "test_levels": [1_000_000_000_000u64]}),
            "test_levels",
        ),
        (
            json!({"code": "x", "tests": t1, "test_levels": [u64::MAX]}),
            "test_levels",
        ),
        (
            json!({"code": "x", "tests": t1, "test_levels": [-1]}),
            "test_levels",
        ),
        (
            json!({"code": "x", "tests": t1, "test_levels": [0.5]}),
            "test_levels",
        ),
        (
            json!({"code": "x", "tests": t1, "test_levels": ["0"]}),
            "test_levels",
        ),
        (
            json!({"code": "x", "tests": t1, "test_levels": [[0]]}),
            "test_levels",
        ),
        (
            json!({"code": "x", "tests": t1, "test_levels": 0}),
            "test_levels",
        ),
        (
            json!({"code": "x", "tests": t1, "test_levels": [0, 1]}),
            "test_levels",
        ),
        (
            json!({"code": "x", "tests": t1, "test_levels": []}),
            "test_levels",
        ),
        (
            json!({"code": "x", "tests": t1, "test_levels": [1], "level_weights": [1.0]}),
            "test_levels",
        ),
        (
            json!({"code": "x", "tests": t1, "test_levels": [0], "level_weights": [1e308, 1e308]}),
            "level_weights",
        ),
        (
            json!({"code": "x", "tests": t1, "test_levels": [0], "level_weights": []}),
            "level_weights",
        ),
        (
            json!({"code": "x", "tests": t1, "test_levels": [0], "level_weights": [-1]}),
            "level_weights",
        ),
        (
            json!({"code": "x", "tests": t1, "test_levels": [0], "level_weights": vec![0.1; 5000]}),
            "level_weights",
        ),
        (
            json!({"code": "x", "tests": t1, "pass_rates": [2]}),
            "pass_rates",
        ),
        (
            json!({"code": "x", "tests": t1, "pass_rates": [0.5, 0.5]}),
            "pass_rates",
        ),
        (
            json!({"code": "x", "tests": t1, "pass_rates": [f64::MAX]}),
            "pass_rates",
        ),
        (
            json!({"code": "x", "tests": t1, "pass_rates": [0.5], "level_weights": [1, "a"]}),
            "level_weights",
        ),
        (
            json!({"code": "x", "tests": t1, "timeout_s": 1e300}),
            "timeout_s",
        ),
        (
            json!({"code": "x", "tests": t1, "timeout_s": 0}),
            "timeout_s",
        ),
        (
            json!({"code": "x", "tests": t1, "timeout_s": -1}),
            "timeout_s",
        ),
        (
            json!({"code": "x", "tests": t1, "timeout_s": 600.5}),
            "timeout_s",
        ),
        (
            json!({"code": "x", "tests": t1, "timeout_s": "5"}),
            "timeout_s",
        ),
        (
            json!({"code": "x", "tests": t1, "timeout_s": u64::MAX}),
            "timeout_s",
        ),
        (json!({"code": "x", "tests": many}), "tests"),
        (json!({"code": "x", "tests": "print"}), "tests"),
        (json!({"code": "x", "tests": [1]}), "tests"),
        (
            json!({"code": "x", "tests": [{"stdin": 1, "stdout": ""}]}),
            "tests",
        ),
        (json!({"code": 5, "tests": t1}), "code"),
        (json!({"code": "x", "language": 7, "tests": t1}), "language"),
        (
            json!({"code": "x", "language": "cobol", "tests": t1}),
            "language",
        ),
        (
            json!({"code": "x", "test_program": ["pass"]}),
            "test_program",
        ),
    ];
    let mut input = String::new();
    for (c, _) in &cases {
        input.push_str(&c.to_string());
        input.push('\n');
    }
    // a huge exponent that serde_json rejects as out of range
    input.push_str("{\"code\": \"x\", \"tests\": [{\"stdin\": \"\", \"stdout\": \"\"}], \"timeout_s\": 1e999}\n");
    let t = Instant::now();
    let mut out = Vec::new();
    let st = run_code_jsonl(input.as_bytes(), &mut out, &CodeOptions::default()).unwrap();
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    let v = parse_out(&out);
    assert_eq!(v.len(), cases.len() + 1);
    for (i, (got, (case, field))) in v.iter().zip(&cases).enumerate() {
        assert_eq!(got["line"], json!(i + 1), "{case} → {got}");
        let e = error_of(got);
        assert!(e.starts_with(&format!("line {}: ", i + 1)), "{e}");
        assert!(e.contains(&format!("\"{field}\"")), "{case} → {e}");
        assert!(e.len() < 300, "message too long: {e}");
    }
    assert!(error_of(&v[cases.len()]).contains("invalid JSON"));
    assert_eq!(st.malformed, cases.len() + 1);
}

#[test]
fn code_bad_sandbox_options_fail_before_reading() {
    let mut opts = CodeOptions::default();
    opts.sandbox.concurrency = 0;
    let r = run_code_jsonl(&b"{}\n"[..], Vec::new(), &opts);
    assert!(matches!(r, Err(RewardError::Config(_))), "{r:?}");
}
