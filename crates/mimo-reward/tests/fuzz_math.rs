//! Property tests of the math verifier ([`verify`]: `\boxed{}` extraction, normalisation, parsing,
//! equivalence) on hostile LaTeX, each property on a thread with a 256 KiB stack.
//!
//! Inputs: random soups of LaTeX fragments (`\frac{`, `\sqrt{`, `^{`, `\left(`, `\infty`, `!`, `e^`,
//! `10^{`, operators, interval brackets, unbalanced braces, long digit strings), runs of one opener nested
//! up to 12,000 deep (closed, half closed or not at all), and well-formed random expressions and answer
//! forms (intervals, tuples, sets, relations, unions).
//!
//! Properties:
//! - no panic, no stack overflow, and every verification finishes in under [`MAX_CASE`] (the verifier's
//!   own deadline is [`TIMEOUT`]); printed forms stay capped;
//! - an answer against itself: the same parse on both sides, equal whenever it parses; a parsed answer is
//!   [`equiv`] to itself; [`equiv`] is symmetric on scalar expressions (the only place the implementation
//!   promises it: gold and prediction play different roles for relations, sets and text);
//! - no magnitude false positive: huge values (`2^{N}` vs `2^{N}+1`, `N!` vs `(N+1)!`, `10^{K}` vs
//!   `\infty`, `e^{A}` vs `e^{A+1}`, `10^{-10^{K}}` vs `0`, ...) never compare equal, either way round.
//!
//! Plus one plain test of the deepest probe inputs of the hardening issue.
//!
//! Cases: env `MIMO_FUZZ_CASES` per property (default 800: about 5 s for the four properties in the test
//! build on 2 cores).

use mimo_reward::math::normalize::{balanced, normalize};
use mimo_reward::math::parse::parse_answer;
use mimo_reward::math::{ast::Node, equiv, verify, Deadline, MathVerdict};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use std::cell::Cell;
use std::time::{Duration, Instant};

const SMALL_STACK: usize = 256 << 10;
/// The verifier's deadline per call (the JSONL driver's default).
const TIMEOUT: Duration = Duration::from_secs(5);
/// Longest one verification may take in the debug test build.
const MAX_CASE: Duration = Duration::from_secs(2);
/// The verdict's printed forms are cut after 4096 bytes, plus a `…`.
const MAX_PRINTED: usize = 4096 + '…'.len_utf8();

thread_local! {
    /// Per-property tallies (each property runs on its own thread): how many cases reached the
    /// interesting paths, printed with the case count.
    static HITS: [Cell<usize>; 2] = const { [Cell::new(0), Cell::new(0)] };
}

fn hit(i: usize) {
    HITS.with(|h| h[i].set(h[i].get() + 1));
}

fn cases(name: &str) -> u32 {
    let n = std::env::var("MIMO_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(800);
    eprintln!("fuzz_math::{name}: {n} cases (MIMO_FUZZ_CASES)");
    n
}

/// Runs `f` on a small-stack thread (an overflow aborts the binary, failing the test).
fn on_small_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    match std::thread::Builder::new()
        .stack_size(SMALL_STACK)
        .spawn(f)
        .map(|h| h.join())
    {
        Ok(Ok(v)) => v,
        Ok(Err(_)) => panic!("the check panicked"),
        Err(e) => panic!("spawn: {e}"),
    }
}

/// Runs a property on a small-stack thread (the strategy is built there: boxed strategies are not `Send`).
fn run_small_stack<S: Strategy + 'static>(
    name: &'static str,
    tallies: [&'static str; 2],
    strategy: fn() -> S,
    test: fn(S::Value) -> Result<(), TestCaseError>,
) {
    let n = cases(name);
    let started = Instant::now();
    let r = on_small_stack(move || {
        let strategy = strategy();
        let config = Config {
            cases: n,
            failure_persistence: None,
            ..Config::default()
        };
        let r = TestRunner::new(config)
            .run(&strategy, test)
            .map_err(|e| e.to_string());
        (r, HITS.with(|h| [h[0].get(), h[1].get()]))
    });
    let (r, hits) = r;
    eprintln!(
        "fuzz_math::{name}: {n} cases in {:.1?} ({} {}, {} {})",
        started.elapsed(),
        hits[0],
        tallies[0],
        hits[1],
        tallies[1]
    );
    if let Err(e) = r {
        panic!("{e}");
    }
}

fn clip(s: &str) -> String {
    if s.len() <= 300 {
        return s.to_string();
    }
    let mut k = 300;
    while !s.is_char_boundary(k) {
        k -= 1;
    }
    format!("{}… ({} bytes)", &s[..k], s.len())
}

/// One verification, checked for time and for the shape of its verdict.
fn check(gold: &str, pred: &str) -> Result<MathVerdict, TestCaseError> {
    let t = Instant::now();
    let v = verify(gold, pred, TIMEOUT);
    let took = t.elapsed();
    prop_assert!(
        took < MAX_CASE,
        "slow verification ({took:.1?}): gold={:?} pred={:?}",
        clip(gold),
        clip(pred)
    );
    for p in [&v.gold_parsed, &v.pred_parsed].into_iter().flatten() {
        prop_assert!(p.len() <= MAX_PRINTED, "printed form of {} bytes", p.len());
    }
    if v.pred_parsed.is_none() || v.gold_parsed.is_none() {
        // something failed to parse: the verdict says why
        prop_assert!(v.error.as_deref().is_some_and(|e| !e.is_empty()), "{v:?}");
    }
    Ok(v)
}

fn boxed(s: &str) -> String {
    format!("\\boxed{{{s}}}")
}

// ---------------------------------------------------------------------------------------------
// Generators
// ---------------------------------------------------------------------------------------------

const FRAGMENTS: &[&str] = &[
    "\\frac{",
    "\\dfrac",
    "\\sqrt{",
    "\\sqrt[",
    "^{",
    "^",
    "_",
    "(",
    ")",
    "{",
    "}",
    "[",
    "]",
    "\\left(",
    "\\right)",
    "\\left[",
    "\\right]",
    "\\left.",
    "\\infty",
    "-\\infty",
    "!",
    "e^",
    "e^{",
    "10^{",
    "2^{",
    "+",
    "-",
    "*",
    "/",
    "\\cdot",
    "\\times",
    ",",
    ";",
    "=",
    "<",
    ">",
    "\\le",
    "\\geq",
    "\\ne",
    "\\in",
    "x",
    "y",
    "n",
    "\\pi",
    "\\alpha",
    "\\cup",
    "\\{",
    "\\}",
    "|",
    "\\sin",
    "\\ln",
    "\\log_",
    "\\binom{",
    "\\begin{pmatrix}",
    "\\end{pmatrix}",
    "\\begin{cases}",
    "&",
    "\\\\",
    "\\%",
    "%",
    ".",
    " ",
    "\\,",
    "\\text{",
    "\\text{ cm}",
    "\\mathrm{",
    "\\boxed{",
    "\\fbox{",
    "$",
    "0",
    "1",
    "2",
    "0.5",
    "1e400",
    "1e-400",
    "1.5e3",
    "\\emptyset",
    "°",
    "</think>",
    "The answer is ",
    "\\",
];

/// A random soup of LaTeX fragments, numbers and odd characters.
fn soup() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            12 => prop::sample::select(FRAGMENTS).prop_map(str::to_string),
            3 => "[0-9]{1,8}",
            1 => "[1-9][0-9]{20,6000}",
            1 => "[0-9]{1,3}\\.[0-9]{1,3000}",
            1 => "\\PC{1,3}",
        ],
        0..40,
    )
    .prop_map(|v| v.concat())
}

/// Openers and their closers for deep runs.
const NESTS: &[(&str, &str)] = &[
    ("(", ")"),
    ("{", "}"),
    ("[", "]"),
    ("\\frac{", "}{1}"),
    ("\\frac{1}{", "}"),
    ("\\sqrt{", "}"),
    ("\\sqrt[3]{", "}"),
    ("2^{", "}"),
    ("10^{", "}"),
    ("e^{", "}"),
    ("\\left(", "\\right)"),
    ("\\left[", "\\right]"),
    ("\\{", "\\}"),
    ("|", "|"),
    ("-", ""),
    ("+", ""),
    ("2^", ""),
    ("\\sin ", ""),
    ("\\ln(", ")"),
    ("\\binom{1}{", "}"),
    ("1+\\frac{1}{", "}"),
    ("x!", ""),
    ("(x+1)*", ""),
    ("1/", ""),
];

/// A run of one opener `n` deep around an atom, with all, some or none of its closers, maybe boxed.
fn deep() -> impl Strategy<Value = String> {
    (
        prop::sample::select(NESTS),
        prop_oneof![1usize..80, 1usize..12_000],
        prop::sample::select(&["1", "x", "2", "\\infty", "", "0.5", "(1,2)"][..]),
        prop_oneof![3 => Just(1.0f64), 1 => 0.0f64..1.0],
        any::<bool>(),
    )
        .prop_map(|((open, close), n, atom, closed, boxed)| {
            let k = (n as f64 * closed) as usize;
            let body = format!("{}{atom}{}", open.repeat(n), close.repeat(k));
            if boxed {
                format!("\\boxed{{{body}}}")
            } else {
                body
            }
        })
}

/// A well-formed random scalar expression.
fn expr() -> BoxedStrategy<String> {
    let leaf = prop_oneof![
        4 => "[0-9]{1,4}",
        2 => prop::sample::select(&["x", "y", "\\pi", "e", "\\infty", "0.5", "1.25", "\\alpha"][..])
            .prop_map(str::to_string),
        1 => "[1-9][0-9]{20,400}",
    ];
    leaf.prop_recursive(6, 48, 3, |inner| {
        let two = (inner.clone(), inner.clone());
        prop_oneof![
            two.clone()
                .prop_map(|(a, b)| format!("\\frac{{{a}}}{{{b}}}")),
            two.clone().prop_map(|(a, b)| format!("{a}+{b}")),
            two.clone().prop_map(|(a, b)| format!("{a}-{b}")),
            two.clone().prop_map(|(a, b)| format!("({a})\\cdot({b})")),
            two.clone().prop_map(|(a, b)| format!("({a})({b})")),
            two.clone().prop_map(|(a, b)| format!("{{{a}}}^{{{b}}}")),
            two.clone()
                .prop_map(|(a, b)| format!("\\binom{{{a}}}{{{b}}}")),
            two.prop_map(|(a, b)| format!("\\sqrt[{a}]{{{b}}}")),
            inner.clone().prop_map(|a| format!("\\sqrt{{{a}}}")),
            inner.clone().prop_map(|a| format!("({a})")),
            inner.clone().prop_map(|a| format!("\\left({a}\\right)")),
            inner.clone().prop_map(|a| format!("-{a}")),
            inner.clone().prop_map(|a| format!("({a})!")),
            inner.clone().prop_map(|a| format!("\\sin({a})")),
            inner.clone().prop_map(|a| format!("\\ln({a})")),
            inner.clone().prop_map(|a| format!("e^{{{a}}}")),
            inner.clone().prop_map(|a| format!("10^{{{a}}}")),
            inner.clone().prop_map(|a| format!("|{a}|")),
            inner.prop_map(|a| format!("{a}\\%")),
        ]
    })
    .boxed()
}

/// A well-formed random answer: an expression or a structured form around expressions.
fn answer() -> impl Strategy<Value = String> {
    let two = (expr(), expr());
    prop_oneof![
        6 => expr(),
        1 => two.clone().prop_map(|(a, b)| format!("({a}, {b})")),
        1 => two.clone().prop_map(|(a, b)| format!("[{a}, {b})")),
        1 => two.clone().prop_map(|(a, b)| format!("\\left({a}, {b}\\right]")),
        1 => two.clone().prop_map(|(a, b)| format!("\\{{{a}, {b}\\}}")),
        1 => two.clone().prop_map(|(a, b)| format!("{a}, {b}")),
        1 => two.clone().prop_map(|(a, b)| format!("(-\\infty, {a}) \\cup ({b}, \\infty)")),
        1 => two.clone().prop_map(|(a, b)| format!("\\begin{{pmatrix}} {a} & {b} \\\\ {b} & {a} \\end{{pmatrix}}")),
        1 => two.prop_map(|(a, b)| format!("{a} \\le x < {b}")),
        1 => expr().prop_map(|a| format!("x = {a}")),
        1 => expr().prop_map(|a| format!("x > {a}")),
    ]
}

/// Any input: hostile or well-formed.
fn any_input() -> impl Strategy<Value = String> {
    prop_oneof![3 => soup(), 2 => deep(), 3 => answer()]
}

// ---------------------------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------------------------

/// No panic, no overflow, bounded time, both ways round, boxed or bare.
#[test]
fn verifier_survives_hostile_input() {
    run_small_stack(
        "verifier_survives_hostile_input",
        ["with both sides parsed", "equal"],
        || (any_input(), any_input()),
        |(a, b)| {
            let v = check(&a, &b)?;
            if v.gold_parsed.is_some() && v.pred_parsed.is_some() {
                hit(0);
            }
            if v.correct {
                hit(1);
            }
            check(&b, &boxed(&a))?;
            check(&a, &format!("Thus the final answer is ${b}$."))?;
            Ok(())
        },
    );
}

/// Whether `\boxed{s}` extracts exactly `s` and a bare gold `s` is taken as is.
fn boxes_cleanly(s: &str) -> bool {
    s.len() < 19_000
        && !s.contains("\\boxed")
        && !s.contains("\\fbox")
        && !s.contains("</think>")
        && balanced(&format!("{s}}}")) == Some(s)
}

/// An answer against itself: same parse on both sides, equal when it parses; `equiv` is reflexive.
#[test]
fn answer_equals_itself() {
    run_small_stack(
        "answer_equals_itself",
        ["parsed on both sides", "checked equiv to itself"],
        || prop_oneof![1 => soup(), 1 => deep(), 4 => answer()],
        |s| {
            let v = check(&s, &boxed(&s))?;
            if boxes_cleanly(&s) {
                prop_assert_eq!(&v.gold_parsed, &v.pred_parsed, "{:?}", clip(&s));
                if v.gold_parsed.is_some() {
                    hit(0);
                    prop_assert!(v.correct, "{:?} differs from itself: {:?}", clip(&s), v);
                }
            }
            let dl = Deadline::after(TIMEOUT);
            let t = Instant::now();
            if let Ok(n) = parse_answer(&normalize(&s), &dl) {
                hit(1);
                let same = equiv(&n, &n, &dl);
                prop_assert!(
                    matches!(same, Ok(true)),
                    "{:?} not equiv to itself: {:?}",
                    clip(&s),
                    same
                );
            }
            prop_assert!(t.elapsed() < MAX_CASE, "slow: {:?}", clip(&s));
            Ok(())
        },
    );
}

/// Variants of `a` that are often, but not always, equal to it.
fn variant(a: String) -> impl Strategy<Value = String> {
    prop_oneof![
        Just(format!("{a}+0")),
        Just(format!("({a})")),
        Just(format!("\\frac{{2({a})}}{{2}}")),
        Just(format!("1\\cdot{a}")),
        Just(format!("{a}+1")),
        Just(format!("{a}+10^{{-9}}")),
        Just(format!("-({a})")),
        Just(a.replacen('1', "2", 1)),
        Just(a.replacen('x', "y", 1)),
        Just(a),
    ]
}

/// `equiv` on two scalar expressions does not depend on which is the gold.
#[test]
fn scalar_equivalence_is_symmetric() {
    run_small_stack(
        "scalar_equivalence_is_symmetric",
        ["scalar pairs", "equal"],
        || {
            prop_oneof![
                1 => (expr(), expr()),
                2 => expr().prop_flat_map(|a| (Just(a.clone()), variant(a))),
            ]
        },
        |(a, b)| {
            let dl = Deadline::after(TIMEOUT);
            let t = Instant::now();
            if let (Ok(x @ Node::Expr(_)), Ok(y @ Node::Expr(_))) = (
                parse_answer(&normalize(&a), &dl),
                parse_answer(&normalize(&b), &dl),
            ) {
                let xy = equiv(&x, &y, &dl);
                let yx = equiv(&y, &x, &dl);
                prop_assert!(xy.is_ok() && yx.is_ok(), "{xy:?} {yx:?}");
                hit(0);
                if matches!(xy, Ok(true)) {
                    hit(1);
                }
                prop_assert_eq!(
                    xy.ok(),
                    yx.ok(),
                    "asymmetric: {:?} vs {:?}",
                    clip(&a),
                    clip(&b)
                );
            }
            prop_assert!(
                t.elapsed() < MAX_CASE,
                "slow: {:?} {:?}",
                clip(&a),
                clip(&b)
            );
            Ok(())
        },
    );
}

/// Pairs of different huge (or tiny) values.
fn huge_pair() -> impl Strategy<Value = (String, String)> {
    let big = prop_oneof![
        1u64..100,
        100u64..20_000,
        20_000u64..10_000_000,
        Just(u64::MAX / 2)
    ];
    let exp = prop_oneof![
        1i64..50,
        50i64..5000,
        5000i64..10_000_000,
        -10_000_000i64..0
    ];
    prop_oneof![
        big.clone()
            .prop_map(|n| (format!("2^{{{n}}}"), format!("2^{{{n}}}+1"))),
        big.clone()
            .prop_map(|n| (format!("2^{{{n}}}"), format!("2^{{{}}}", n + 1))),
        big.clone()
            .prop_map(|n| (format!("2^{{2^{{{n}}}}}"), format!("2^{{2^{{{n}}}}}+1"))),
        big.clone()
            .prop_map(|n| (format!("{n}!"), format!("{}!", n + 1))),
        big.clone()
            .prop_map(|n| (format!("{n}!"), format!("{n}!+1"))),
        big.clone()
            .prop_map(|n| (format!("{n}^{{{n}}}"), format!("{n}^{{{n}}}-1"))),
        big.clone()
            .prop_map(|n| (format!("10^{{{n}}}"), "\\infty".to_string())),
        big.clone()
            .prop_map(|n| (format!("-10^{{{n}}}"), "-\\infty".to_string())),
        big.clone()
            .prop_map(|n| (format!("\\pi \\cdot 10^{{{n}}}"), "\\infty".to_string())),
        big.clone().prop_map(|n| (
            format!("[10^{{{n}}}, \\infty)"),
            format!("[10^{{{n}}}+1, \\infty)")
        )),
        big.clone()
            .prop_map(|n| (format!("10^{{-10^{{{n}}}}}"), "0".to_string())),
        big.clone()
            .prop_map(|n| (format!("10^{{-{n}}}"), "0".to_string())),
        big.clone()
            .prop_map(|n| (format!("\\frac{{1}}{{2^{{{n}}}}}"), "0".to_string())),
        big.clone()
            .prop_map(|n| (format!("\\pi^{{{n}}}"), format!("\\pi^{{{}}}", n + 1))),
        big.clone()
            .prop_map(|n| (format!("x^{{{n}}}"), format!("x^{{{n}}}+1"))),
        big.clone().prop_map(|n| (
            format!("\\binom{{{n}}}{{{}}}", n / 2),
            format!("\\binom{{{n}}}{{{}}}+1", n / 2)
        )),
        big.prop_map(|n| (format!("1e{}", n % 500), format!("1e{}", n % 500 + 1))),
        exp.clone()
            .prop_map(|a| (format!("e^{{{a}}}"), format!("e^{{{a}+1}}"))),
        exp.prop_map(|a| (format!("e^{{{a}}}"), "0".to_string())),
        "[1-9][0-9]{15,6000}".prop_map(|d| (d.clone(), format!("{d}+1"))),
        "[1-9][0-9]{15,6000}".prop_map(|d| (d.clone(), format!("{d}0"))),
        "[1-9][0-9]{15,4000}".prop_map(|d| (format!("\\frac{{{d}}}{{{d}1}}"), "0".to_string())),
    ]
}

/// Huge values never compare equal to a different huge value (or to ∞, or to 0).
#[test]
fn huge_values_are_never_equal() {
    let tallies = ["with both sides parsed", "refused or unparsed"];
    run_small_stack(
        "huge_values_are_never_equal",
        tallies,
        huge_pair,
        |(a, b)| {
            for (g, p) in [(&a, &b), (&b, &a)] {
                let v = check(g, &boxed(p))?;
                hit(if v.gold_parsed.is_some() && v.pred_parsed.is_some() {
                    0
                } else {
                    1
                });
                prop_assert!(
                    !v.correct,
                    "false positive: gold={:?} pred={:?} -> {:?}",
                    clip(g),
                    clip(p),
                    v
                );
            }
            Ok(())
        },
    );
}

/// The deepest probe inputs of the hardening issue, as predictions and as golds, on a 256 KiB stack.
#[test]
fn deepest_probes_answer_without_crashing() {
    let started = Instant::now();
    let n = on_small_stack(|| {
        let probes = [
            ("(", ")", 5000),
            ("{", "}", 6000),
            ("\\frac{", "}{1}", 5000),
            ("\\sqrt{", "}", 6000),
            ("2^{", "}", 10_000),
            ("\\left(", "\\right)", 7000),
        ];
        let mut n = 0;
        for (open, close, depth) in probes {
            let closed = format!("{}2{}", open.repeat(depth), close.repeat(depth));
            let unclosed = format!("{}2", open.repeat(depth));
            for (body, closed) in [(closed, true), (unclosed, false)] {
                let pred = boxed(&body);
                // an unclosed box is no box: extraction falls back to the last number (here the `2`)
                let inner = if closed { "2" } else { "3" };
                for (gold, pred) in [
                    (inner.to_string(), pred.clone()),
                    ("x".to_string(), pred.clone()),
                    (body.clone(), pred.clone()),
                    (pred.clone(), pred.clone()),
                    (body.clone(), "\\boxed{2}".to_string()),
                    (pred.clone(), "The answer is 2".to_string()),
                ] {
                    let t = Instant::now();
                    let v = verify(&gold, &pred, TIMEOUT);
                    let took = t.elapsed();
                    let what = format!(
                        "{depth} x {open:?}: gold={:?} pred={:?}",
                        clip(&gold),
                        clip(&pred)
                    );
                    assert!(took < MAX_CASE, "slow ({took:.1?}): {what}");
                    assert!(!v.correct, "equal: {what} -> {v:?}");
                    if closed {
                        // a closed deep answer is refused (nesting bound, or a box longer than the
                        // prediction tail), never parsed into something else
                        if gold.len() > 1000 {
                            assert!(v.gold_parsed.is_none(), "gold parsed: {what} -> {v:?}");
                        }
                        if pred.len() > 1000 {
                            assert!(v.pred_parsed.is_none(), "pred parsed: {what} -> {v:?}");
                        }
                        assert!(v.error.is_some(), "no error: {what} -> {v:?}");
                    }
                    n += 1;
                }
            }
        }
        n
    });
    eprintln!(
        "fuzz_math::deepest_probes: {n} verifications in {:.1?}",
        started.elapsed()
    );
}
