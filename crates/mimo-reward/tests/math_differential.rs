//! Differential test against the Python `math-verify` package: 2000 generated (gold, pred) pairs in the
//! formats real models write (tools/reward/math_differential.py, which also runs Math-Verify on them), our
//! verdict vs Math-Verify's vs the generator's intent (the prediction wraps the gold or an equivalent
//! rewriting of it, or a wrong answer). Every disagreement is printed with its class:
//! * `ours-right`: we match the intent, Math-Verify does not (documented in docs/math-verify.md);
//! * `theirs-right`: Math-Verify matches the intent, we do not (a bug of ours);
//! * `both-wrong`: neither matches the intent (a generator case both read differently).
//!
//! Fails on any false positive of ours that Math-Verify does not make, or if we match the intent less often.
//! Skipped with a message when the venv has no `math_verify`, unless `CI` is set.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

fn python() -> Option<PathBuf> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let p = std::env::var_os("MIMO_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join(".venv/bin/python"));
    let ok = Command::new(&p)
        .args(["-c", "import math_verify"])
        .output()
        .is_ok_and(|o| o.status.success());
    ok.then_some(p)
}

#[test]
fn agrees_with_math_verify_or_is_right() {
    let Some(py) = python() else {
        if std::env::var_os("CI").is_some() {
            panic!("CI is set but the venv has no math_verify (run tools/setup-python.sh)");
        }
        eprintln!("SKIPPED agrees_with_math_verify_or_is_right: no venv with math_verify");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("pairs.jsonl");
    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tools/reward/math_differential.py");
    let run = Command::new(py)
        .arg(script)
        .args(["--n", "2000", "--seed", "0", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let theirs: Value = serde_json::from_slice(&run.stdout).unwrap();
    let pairs: Vec<Value> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let t0 = Instant::now();
    let ours: Vec<bool> = pairs
        .iter()
        .map(|p| {
            mimo_reward::math::verify(
                p["gold"].as_str().unwrap(),
                p["pred"].as_str().unwrap(),
                Duration::from_secs(5),
            )
            .correct
        })
        .collect();
    let secs = t0.elapsed().as_secs_f64();
    let (mut same, mut ours_right, mut theirs_right, mut both_wrong) = (0, vec![], vec![], vec![]);
    let (mut our_fp, mut their_fp, mut our_hits, mut their_hits) = (0, 0, 0, 0);
    for (p, &o) in pairs.iter().zip(&ours) {
        let mv = p["math_verify"].as_bool().unwrap();
        let want = p["intended"].as_bool().unwrap();
        our_hits += (o == want) as usize;
        their_hits += (mv == want) as usize;
        our_fp += (o && !want) as usize;
        their_fp += (mv && !want) as usize;
        let line = format!(
            "  gold {:?} pred …{:?}: ours {o}, math-verify {mv}, intended {want}",
            p["gold"].as_str().unwrap(),
            tail(p["pred"].as_str().unwrap(), 70)
        );
        match (o == mv, o == want) {
            (true, _) => same += 1,
            (false, true) => ours_right.push(line),
            (false, false) if mv == want => theirs_right.push(line),
            _ => both_wrong.push(line),
        }
    }
    let n = pairs.len();
    eprintln!(
        "differential: {n} pairs, agreement with math-verify {same}/{n} ({:.1} %); intent matched: ours {our_hits}, \
         math-verify {their_hits}; false positives: ours {our_fp}, math-verify {their_fp}; cases/s: ours {:.0}, \
         math-verify {:.0}\nours-right ({}):\n{}\ntheirs-right ({}):\n{}\nboth-wrong ({}):\n{}",
        100.0 * same as f64 / n as f64,
        n as f64 / secs,
        theirs["math_verify_cases_per_s"].as_f64().unwrap_or(0.0),
        ours_right.len(),
        ours_right.join("\n"),
        theirs_right.len(),
        theirs_right.join("\n"),
        both_wrong.len(),
        both_wrong.join("\n"),
    );
    assert!(
        our_fp <= their_fp,
        "{our_fp} false positives (math-verify: {their_fp})"
    );
    assert!(
        our_hits >= their_hits,
        "intent matched {our_hits} < math-verify's {their_hits}"
    );
}

fn tail(s: &str, n: usize) -> &str {
    let mut k = s.len().saturating_sub(n);
    while !s.is_char_boundary(k) {
        k += 1;
    }
    &s[k..]
}
