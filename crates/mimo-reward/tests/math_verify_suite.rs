//! Math-Verify 0.9's own test suite (its cases ported as data by tools/reward/port_math_verify_cases.py, with
//! each test's configuration and Math-Verify's verdict): our verdicts against the expected ones. Prints the
//! agreement and every disagreement; fails below the floor, or on a false positive Math-Verify does not make.

use std::time::Duration;

use mimo_reward::math::{verify_with, VerifyConfig};
use serde_json::Value;

/// Agreement floor (cases where our verdict equals the suite's expected one), raised as families are fixed.
const FLOOR: f64 = 0.98;

#[test]
fn math_verify_suite_agreement() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tools/reward/math_verify_cases.jsonl"
    );
    let text = std::fs::read_to_string(path).unwrap();
    let (mut agree, mut total, mut false_pos, mut mv_false_pos) = (0, 0, vec![], 0);
    let mut misses = vec![];
    for line in text.lines() {
        let c: Value = serde_json::from_str(line).unwrap();
        let cfg = VerifyConfig {
            latex: c["match_types"]
                .as_array()
                .unwrap()
                .iter()
                .any(|t| t == "latex"),
            expr: c["match_types"]
                .as_array()
                .unwrap()
                .iter()
                .any(|t| t == "expr"),
            float_rounding: c["precision"].as_u64().unwrap() as u32,
            strict: c["strict"].as_bool().unwrap(),
            allow_set_relation_comp: c["allow_set_relation_comp"].as_bool().unwrap(),
        };
        let (gold, pred) = (c["gold"].as_str().unwrap(), c["pred"].as_str().unwrap());
        let expected = c["expected"].as_bool().unwrap();
        let v = verify_with(gold, pred, &cfg, Duration::from_secs(5));
        total += 1;
        if v.correct == expected {
            agree += 1;
        } else {
            if v.correct {
                false_pos.push(format!("{gold:?} / {pred:?}"));
            }
            misses.push(format!(
                "  {}::{} expected {expected}: gold {gold:?} → {:?}; pred {pred:?} → {:?}",
                c["file"].as_str().unwrap(),
                c["test"].as_str().unwrap(),
                v.gold_parsed,
                v.pred_parsed
            ));
        }
        if c["math_verify"].as_bool().unwrap() && !expected {
            mv_false_pos += 1;
        }
    }
    let rate = agree as f64 / total as f64;
    eprintln!(
        "Math-Verify suite: {agree}/{total} agree ({:.1} %); false positives: {} (Math-Verify: {mv_false_pos})\n{}",
        100.0 * rate,
        false_pos.len(),
        misses.join("\n")
    );
    assert!(rate >= FLOOR, "agreement {rate:.3} below {FLOOR}");
    assert!(
        false_pos.len() <= mv_false_pos,
        "false positives Math-Verify does not make: {false_pos:?}"
    );
}
