//! Math-Verify–style answer verification (design §3.2: math rewards are checked with Math-Verify).
//!
//! [`verify`] extracts the answer from a model response, normalises LaTeX, parses both sides into an
//! [`ast::Node`] and decides equivalence:
//! * numbers: exact big rationals (`num-rational`); decimals compared after rounding to 6 places;
//! * symbolic expressions: evaluation at several deterministic pseudo-random points, exact rational
//!   arithmetic where the expression allows it (polynomials, rational functions) and f64 otherwise;
//! * tuples (ordered), sets and bare lists (unordered), intervals (closedness must match), unions,
//!   matrices, equations and inequalities (`x = 2` matches a bare gold `2`; `x > 2` matches `(2, \infty)`).
//!
//! Every comparison runs under a deadline checked inside the parser and evaluator loops, so a case always
//! finishes in about the given time from any thread (no signals). Input never drives unbounded recursion
//! (nesting is capped at [`parse::MAX_NESTING`], trees at [`parse::MAX_TREE_DEPTH`]), work is linear in the
//! input before the first deadline check, and values that cannot be decided exactly (beyond
//! [`eval::MAX_BITS`], f64 overflow/underflow) never compare equal: such inputs give `correct = false`.

pub mod ast;
pub mod eval;
pub mod normalize;
pub mod parse;

use ast::{Expr, Node, RelOp};
use eval::{eval, val_eq, Tol, Val};
use num_bigint::BigInt;
use num_rational::BigRational;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Outcome of one verification.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MathVerdict {
    /// Whether the prediction's answer is equivalent to the gold answer.
    pub correct: bool,
    /// Normalised form of the gold answer (None when it could not be parsed).
    pub gold_parsed: Option<String>,
    /// Normalised form of the extracted prediction answer (None when nothing could be extracted/parsed).
    pub pred_parsed: Option<String>,
    /// Why parsing or comparison failed, when it did.
    pub error: Option<String>,
}

/// Internal errors of the math pipeline.
#[derive(Debug, Clone, thiserror::Error)]
pub enum MathError {
    #[error("timeout")]
    Timeout,
    #[error("parse error: {0}")]
    Parse(String),
    /// The input exceeds a safety bound (nesting depth, literal length, exponent size).
    #[error("{0}")]
    Limit(String),
}

impl MathError {
    /// Whether the answer was refused (timeout or bound) rather than merely unparsable: the lenient
    /// string comparison must not then decide the case.
    fn refused(&self) -> bool {
        matches!(self, MathError::Timeout | MathError::Limit(_))
    }
}

/// A deadline checked cooperatively in loops.
#[derive(Debug, Clone, Copy)]
pub struct Deadline(Instant);

impl Deadline {
    /// Deadline `d` from now (saturating far in the future).
    pub fn after(d: Duration) -> Self {
        let now = Instant::now();
        Deadline(
            now.checked_add(d)
                .unwrap_or(now + Duration::from_secs(86_400 * 365)),
        )
    }
    /// Errors with [`MathError::Timeout`] once the deadline has passed.
    pub fn check(&self) -> Result<(), MathError> {
        if Instant::now() > self.0 {
            Err(MathError::Timeout)
        } else {
            Ok(())
        }
    }
}

type R<T> = Result<T, MathError>;

/// Inputs longer than this are cut to their tail before extraction (answers are at the end).
const MAX_PRED_CHARS: usize = 20_000;
/// Printed forms in a verdict are cut after this many bytes.
const MAX_PRINTED: usize = 4096;

/// Math-Verify's comparison settings (its `parse` extraction targets and `verify` flags), for running its test
/// suite with the configuration each test uses. The default is what RL rewards and `mimo eval` use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyConfig {
    /// Extract LaTeX answers (`\boxed{}`, `$…$`, "the answer is …").
    pub latex: bool,
    /// Extract plain expressions and numbers.
    pub expr: bool,
    /// Decimal places numbers are rounded to before comparing.
    pub float_rounding: u32,
    /// Variables must match by name (`x` ≠ `y`); off: a lone variable on either side is ignored.
    pub strict: bool,
    /// A set may match a relation that describes it (`{1, 2}` vs `x = 1 or x = 2`, intervals vs inequalities).
    pub allow_set_relation_comp: bool,
}

impl Default for VerifyConfig {
    fn default() -> Self {
        Self {
            latex: true,
            expr: true,
            float_rounding: 6,
            strict: true,
            allow_set_relation_comp: false,
        }
    }
}

/// Verifies a model response `pred` against the reference answer `gold` within `timeout`.
///
/// Gold is parsed leniently as a bare answer (a `\boxed{}` in it is honoured); the prediction is treated as a
/// full solution from which the answer is extracted.
pub fn verify(gold: &str, pred: &str, timeout: Duration) -> MathVerdict {
    verify_with(gold, pred, &VerifyConfig::default(), timeout)
}

/// [`verify`] with explicit settings.
pub fn verify_with(gold: &str, pred: &str, cfg: &VerifyConfig, timeout: Duration) -> MathVerdict {
    let before = SET_RELATION.with(|c| c.replace(cfg.allow_set_relation_comp));
    let v = eval::with_decimals(cfg.float_rounding, || {
        verify_inner(gold, pred, cfg, timeout)
    });
    SET_RELATION.with(|c| c.set(before));
    v
}

thread_local! {
    /// `allow_set_relation_comp` of the verification running on this thread (see [`eval::with_decimals`] for
    /// why a thread-local).
    static SET_RELATION: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

fn verify_inner(gold: &str, pred: &str, cfg: &VerifyConfig, timeout: Duration) -> MathVerdict {
    let dl = Deadline::after(timeout);
    let mut errors = Vec::new();
    // the lenient string comparison is allowed only when nothing was refused
    let mut lenient = true;

    let gold_src = if cfg.latex {
        normalize::gold_answer(gold)
    } else {
        normalize::last_plain_number(gold).unwrap_or_else(|| gold.to_string())
    };
    let gold_norm = normalize::normalize(&gold_src);
    let gold_node = match parse_norm(&gold_norm, &dl) {
        Ok(n) => Some(n),
        Err(e) => {
            lenient &= !e.refused();
            errors.push(format!("gold: {e}"));
            None
        }
    };

    let pred_tail = tail_chars(pred, MAX_PRED_CHARS);
    // a final boxed answer longer than the tail is refused, not re-extracted from the inside of it
    let box_cut = box_crosses_cut(pred, pred.len() - pred_tail.len());
    let cands = if box_cut {
        Vec::new()
    } else if !cfg.latex {
        normalize::last_plain_number(pred_tail)
            .into_iter()
            .collect()
    } else {
        normalize::extract_candidates(pred_tail)
    };
    if cands.is_empty() {
        errors.push(if box_cut {
            format!("pred: boxed answer longer than {MAX_PRED_CHARS} characters")
        } else {
            "pred: no answer found".into()
        });
        return MathVerdict {
            correct: false,
            gold_parsed: gold_node.as_ref().map(printed),
            pred_parsed: None,
            error: Some(errors.join("; ")),
        };
    }
    let (pred_node, pred_norm_first) = parse_candidates(&cands, &dl, &mut lenient);
    if pred_node.is_none() {
        errors.push(format!(
            "pred: could not parse {:?}",
            parse::clip(&pred_norm_first, 200)
        ));
    }

    let correct = match (&gold_node, &pred_node) {
        (Some(g), Some(p)) => match equiv(g, p, &dl) {
            Ok(false) if !cfg.strict => match (g, p) {
                (Node::Expr(a), Node::Expr(b)) => expr_equiv_unnamed(a, b, &dl).unwrap_or(false),
                _ => false,
            },
            Ok(b) => b,
            Err(e) => {
                errors.push(format!("compare: {e}"));
                false
            }
        },
        // string fallback when either side is unparsable
        _ if lenient => {
            let gk = normalize::text_key(&gold_norm);
            !gk.is_empty() && gk == normalize::text_key(&pred_norm_first)
        }
        _ => false,
    };
    MathVerdict {
        correct,
        gold_parsed: gold_node.as_ref().map(printed),
        pred_parsed: pred_node.as_ref().map(printed),
        error: (!errors.is_empty()).then(|| errors.join("; ")),
    }
}

/// Parses the first candidate that parses; returns it with the normalised first candidate. A refused
/// candidate (timeout or bound) clears `lenient`; a timeout stops the search.
fn parse_candidates(cands: &[String], dl: &Deadline, lenient: &mut bool) -> (Option<Node>, String) {
    let mut first = None;
    for c in cands {
        let n = normalize::normalize(c);
        let res = parse_norm(&n, dl);
        if first.is_none() {
            first = Some(n);
        }
        match res {
            Ok(node) => return (Some(node), first.unwrap_or_default()),
            Err(e) => {
                *lenient &= !e.refused();
                if matches!(e, MathError::Timeout) {
                    break;
                }
            }
        }
    }
    (None, first.unwrap_or_default())
}

/// `n` printed, cut after [`MAX_PRINTED`] bytes (the cut stops the formatting early, so a huge answer
/// costs no more than the cap).
fn printed(n: &Node) -> String {
    use std::fmt::Write;
    struct Capped(String);
    impl Write for Capped {
        fn write_str(&mut self, s: &str) -> std::fmt::Result {
            if self.0.len() + s.len() > MAX_PRINTED {
                let mut k = MAX_PRINTED.saturating_sub(self.0.len()).min(s.len());
                while !s.is_char_boundary(k) {
                    k -= 1;
                }
                self.0.push_str(&s[..k]);
                return Err(std::fmt::Error);
            }
            self.0.push_str(s);
            Ok(())
        }
    }
    let mut out = Capped(String::new());
    if write!(out, "{n}").is_err() {
        out.0.push('…');
    }
    out.0
}

/// Whether the last `\boxed`/`\fbox` of `s` starts before byte `cut` and its (closed) argument ends at or
/// after it: cutting `s` at `cut` would leave only the inside of the final boxed answer.
fn box_crosses_cut(s: &str, cut: usize) -> bool {
    if cut == 0 {
        return false;
    }
    let Some((k, pat)) = ["\\boxed", "\\fbox"]
        .into_iter()
        .filter_map(|p| s.rfind(p).map(|k| (k, p)))
        .max_by_key(|&(k, p)| k + p.len())
    else {
        return false;
    };
    if k >= cut {
        return false;
    }
    let rest = &s[k + pat.len()..];
    let arg = rest.trim_start();
    let start = s.len() - arg.len();
    let end = match arg.strip_prefix('{') {
        Some(inner) => match normalize::balanced(inner) {
            Some(a) => start + 1 + a.len(),
            // unclosed: extraction falls back to the other forms, as without the cut
            None => return false,
        },
        None => {
            start
                + arg
                    .find(|c: char| c == '$' || c.is_whitespace())
                    .unwrap_or(arg.len())
        }
    };
    end >= cut
}

fn tail_chars(s: &str, n: usize) -> &str {
    if s.len() <= n {
        return s;
    }
    let mut k = s.len() - n;
    while !s.is_char_boundary(k) {
        k += 1;
    }
    &s[k..]
}

const FUNC_WORDS: &[&str] = &[
    "sqrt",
    "sin",
    "cos",
    "tan",
    "sec",
    "csc",
    "cot",
    "arcsin",
    "arccos",
    "arctan",
    "asin",
    "acos",
    "atan",
    "sinh",
    "cosh",
    "tanh",
    "ln",
    "log",
    "exp",
    "pi",
    "oo",
    "inf",
    "infty",
    "frac",
    "dfrac",
    "binom",
    "begin",
    "end",
    "pmatrix",
    "bmatrix",
    "matrix",
    "vmatrix",
    "array",
    "cup",
    "cdot",
    "times",
    "left",
    "right",
    "le",
    "leq",
    "ge",
    "geq",
    "neq",
    "infinity",
    "and",
    "or",
    "in",
    "floor",
    "ceil",
    "abs",
    "lfloor",
    "rfloor",
    "lceil",
    "rceil",
    "emptyset",
    "varnothing",
    "div",
    "cases",
    "lg",
];

/// A normalised answer made of words (e.g. `Monday`, `(C)`, `no solution`) is a text answer.
fn looks_like_text(s: &str) -> bool {
    let mut word = String::new();
    let mut prev_backslash = false;
    let mut has_word = false;
    for ch in s.chars().chain(std::iter::once(' ')) {
        if ch.is_ascii_alphabetic() {
            word.push(ch);
            continue;
        }
        if word.len() >= 3 && !prev_backslash && !FUNC_WORDS.contains(&word.as_str()) {
            has_word = true;
        }
        prev_backslash = ch == '\\';
        word.clear();
    }
    has_word
}

fn parse_norm(s: &str, dl: &Deadline) -> R<Node> {
    if s.is_empty() {
        return Err(MathError::Parse("empty answer".into()));
    }
    if looks_like_text(s) {
        return Ok(Node::Text(
            s.split_whitespace().collect::<Vec<_>>().join(" "),
        ));
    }
    parse::parse_answer(s, dl)
}

// ---------------------------------------------------------------------------------------------
// Equivalence
// ---------------------------------------------------------------------------------------------

/// Deterministic point generator (splitmix64): reproducible verdicts, no `rand` dependency needed.
struct Points(u64);

impl Points {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// A positive rational p/q (positive keeps sqrt/log in their real domain).
    fn rational(&mut self, k: usize) -> BigRational {
        let scale = if k % 3 == 2 { 1000 } else { 37 };
        let p = 1 + (self.next() % scale) as i64;
        let q = 1 + (self.next() % 11) as i64;
        BigRational::new(BigInt::from(p), BigInt::from(q))
    }
}

const SAMPLE_POINTS: usize = 8;

/// Symbolic/numeric equivalence of two scalar expressions.
pub fn expr_equiv(a: &Expr, b: &Expr, dl: &Deadline) -> R<bool> {
    if a == b {
        return Ok(true);
    }
    let tol = if a.has_decimal() || b.has_decimal() {
        Tol::Decimal
    } else {
        Tol::Float
    };
    let mut syms = Vec::new();
    a.symbols(&mut syms);
    b.symbols(&mut syms);
    syms.sort_unstable();
    let mut pts = Points(0x5EED ^ syms.len() as u64);
    let rounds = if syms.is_empty() {
        1
    } else {
        SAMPLE_POINTS * 2
    };
    let mut ok = 0;
    for k in 0..rounds {
        dl.check()?;
        let env: HashMap<String, Val> = syms
            .iter()
            .map(|s| (s.clone(), Val::Exact(pts.rational(k))))
            .collect();
        let (x, y) = match (eval(a, &env, dl), eval(b, &env, dl)) {
            (Ok(x), Ok(y)) => (x, y),
            (Err(eval::EvalErr::Timeout), _) | (_, Err(eval::EvalErr::Timeout)) => {
                return Err(MathError::Timeout)
            }
            // a point where exactly one side is defined proves nothing either way (removable
            // singularities); skip it
            _ => continue,
        };
        if !val_eq(&x, &y, tol) {
            return Ok(false);
        }
        ok += 1;
        if ok >= SAMPLE_POINTS {
            break;
        }
    }
    if ok == 0 {
        // undefined everywhere we looked: fall back to the printed forms
        return Ok(a.to_string() == b.to_string());
    }
    Ok(true)
}

/// Equivalence up to the names of the variables (Math-Verify's `strict=False`): the `k`-th variable of `b` to
/// appear takes the values of the `k`-th of `a` (`f(x)` and `f(y)` are the same function).
fn expr_equiv_unnamed(a: &Expr, b: &Expr, dl: &Deadline) -> R<bool> {
    let (mut sa, mut sb) = (Vec::new(), Vec::new());
    a.symbols(&mut sa);
    b.symbols(&mut sb);
    if sa.len() != sb.len() || sa.is_empty() || sa == sb {
        return Ok(false);
    }
    let mut pts = Points(0x5EED ^ sa.len() as u64);
    let mut ok = 0;
    for k in 0..SAMPLE_POINTS * 2 {
        dl.check()?;
        let vals: Vec<Val> = (0..sa.len()).map(|_| Val::Exact(pts.rational(k))).collect();
        let env = |names: &[String]| -> HashMap<String, Val> {
            names.iter().cloned().zip(vals.iter().cloned()).collect()
        };
        let (Ok(x), Ok(y)) = (eval(a, &env(&sa), dl), eval(b, &env(&sb), dl)) else {
            continue;
        };
        if !val_eq(&x, &y, Tol::Float) {
            return Ok(false);
        }
        ok += 1;
        if ok >= SAMPLE_POINTS {
            break;
        }
    }
    Ok(ok > 0)
}

fn expr_equiv_pct(a: &Expr, b: &Expr, dl: &Deadline) -> R<bool> {
    if expr_equiv(a, b, dl)? {
        return Ok(true);
    }
    let (sa, sb) = (a.strip_percent(), b.strip_percent());
    if (sa != *a || sb != *b) && expr_equiv(&sa, &sb, dl)? {
        return Ok(true);
    }
    Ok(false)
}

fn is_sym(n: &Node) -> bool {
    matches!(n, Node::Expr(Expr::Sym(_)))
}

/// Whether the left side of a gold equation names what is asked for (`x`, `AB`, `|AB|`, `f(x)`, `NO/BO`,
/// `(p, q)`) rather than being an expression of the answer (`2x + z`, `7`): then the right side is the answer.
fn names_a_quantity(n: &Node) -> bool {
    fn named(e: &Expr) -> bool {
        match e {
            Expr::Sym(_) => true,
            Expr::Mul(v) => v.iter().all(named),
            Expr::Div(a, b) => named(a) && named(b),
            Expr::Func(_, a) => named(a),
            _ => false,
        }
    }
    match n {
        Node::Expr(e) => named(e),
        Node::Tuple(v) => v.iter().all(names_a_quantity),
        _ => false,
    }
}

/// `x > 2`, `2 < x \le 5`, ... as an interval (None when it is not a one-variable bound).
fn ineq_to_interval(sides: &[Node], ops: &[RelOp]) -> Option<Node> {
    let inf = || Node::Expr(Expr::Inf);
    let ninf = || Node::Expr(Expr::Neg(Box::new(Expr::Inf)));
    let lower = |op: RelOp| matches!(op, RelOp::Lt | RelOp::Le);
    match (sides, ops) {
        ([x, c], [op]) | ([c, x], [op]) if is_sym(x) && !is_sym(c) => {
            // normalise to `x op c`
            let op = if is_sym(&sides[0]) { *op } else { op.flip() };
            match op {
                RelOp::Lt | RelOp::Le => Some(Node::Interval(
                    Box::new(ninf()),
                    Box::new(c.clone()),
                    false,
                    op == RelOp::Le,
                )),
                RelOp::Gt | RelOp::Ge => Some(Node::Interval(
                    Box::new(c.clone()),
                    Box::new(inf()),
                    op == RelOp::Ge,
                    false,
                )),
                _ => None,
            }
        }
        ([a, x, b], [o1, o2]) if is_sym(x) || names_a_quantity(x) => {
            if lower(*o1) && lower(*o2) {
                Some(Node::Interval(
                    Box::new(a.clone()),
                    Box::new(b.clone()),
                    *o1 == RelOp::Le,
                    *o2 == RelOp::Le,
                ))
            } else if !lower(*o1) && !lower(*o2) && !matches!(o1, RelOp::Eq | RelOp::Ne | RelOp::In)
            {
                Some(Node::Interval(
                    Box::new(b.clone()),
                    Box::new(a.clone()),
                    *o2 == RelOp::Ge,
                    *o1 == RelOp::Ge,
                ))
            } else {
                None
            }
        }
        _ => None,
    }
}

fn sub(a: &Node, b: &Node) -> Option<Expr> {
    match (a, b) {
        (Node::Expr(x), Node::Expr(y)) => {
            Some(Expr::Add(vec![x.clone(), Expr::Neg(Box::new(y.clone()))]))
        }
        _ => None,
    }
}

/// An equation chain `a = b = … = z` as its two ends `a = z` (Math-Verify compares the first and last sides:
/// `x = 5+5+1 = 11` states `x = 11`).
fn chain_ends<'a>(sides: &'a [Node], ops: &[RelOp]) -> Option<[&'a Node; 2]> {
    (sides.len() > 2 && ops.iter().all(|o| *o == RelOp::Eq))
        .then(|| [&sides[0], &sides[sides.len() - 1]])
}

fn is_order(op: RelOp) -> bool {
    matches!(op, RelOp::Lt | RelOp::Le | RelOp::Gt | RelOp::Ge)
}

/// Whether `g ≡ k·p` for a constant `k` (found at one sample point where both are exact and `p ≠ 0`), with
/// `k > 0` when `positive`: `2x + 4y − 3 = 0` and `y = −x/2 + 3/4` describe the same line.
fn proportional(g: &Expr, p: &Expr, positive: bool, dl: &Deadline) -> R<bool> {
    let mut syms = Vec::new();
    g.symbols(&mut syms);
    p.symbols(&mut syms);
    syms.sort_unstable();
    syms.dedup();
    if syms.is_empty() {
        return Ok(false);
    }
    let mut pts = Points(0xC0FFEE);
    for k in 0..SAMPLE_POINTS {
        dl.check()?;
        let env: HashMap<String, Val> = syms
            .iter()
            .map(|s| (s.clone(), Val::Exact(pts.rational(k))))
            .collect();
        if let (Ok(Val::Exact(a)), Ok(Val::Exact(b))) = (eval(g, &env, dl), eval(p, &env, dl)) {
            let zero = BigRational::from_integer(BigInt::from(0));
            if b == zero || a == zero {
                continue;
            }
            let ratio = a / b;
            if positive && ratio < zero {
                return Ok(false);
            }
            let scaled = Expr::Mul(vec![Expr::Num(ratio, false), p.clone()]);
            return expr_equiv(g, &scaled, dl);
        }
    }
    Ok(false)
}

fn rel_equiv(gs: &[Node], gops: &[RelOp], ps: &[Node], pops: &[RelOp], dl: &Deadline) -> R<bool> {
    if let (Some(a), Some(b)) = (ineq_to_interval(gs, gops), ineq_to_interval(ps, pops)) {
        return equiv(&a, &b, dl);
    }
    // gold an inequality, prediction `x ∈ S`: S must be the inequality's interval
    if pops == [RelOp::In] && ps.len() == 2 {
        if let Some(iv) = ineq_to_interval(gs, gops) {
            return equiv(&iv, &ps[1], dl);
        }
    }
    // gold `x ∈ S`, prediction an inequality describing S: only when set/relation comparison is allowed
    if gops == [RelOp::In] && gs.len() == 2 && SET_RELATION.with(|c| c.get()) {
        if let Some(iv) = ineq_to_interval(ps, pops) {
            return equiv(&gs[1], &iv, dl);
        }
    }
    if let Some(g) = chain_ends(gs, gops) {
        let g = [g[0].clone(), g[1].clone()];
        return rel_equiv(&g, &[RelOp::Eq], ps, pops, dl);
    }
    if let Some(p) = chain_ends(ps, pops) {
        let p = [p[0].clone(), p[1].clone()];
        return rel_equiv(gs, gops, &p, &[RelOp::Eq], dl);
    }
    if gs.len() != ps.len() {
        return Ok(false);
    }
    if gops == pops {
        let mut all = true;
        for (g, p) in gs.iter().zip(ps) {
            if !equiv(g, p, dl)? {
                all = false;
                break;
            }
        }
        if all {
            return Ok(true);
        }
    }
    if gs.len() == 2 {
        // sides swapped
        if pops[0] == gops[0].flip() && equiv(&gs[0], &ps[1], dl)? && equiv(&gs[1], &ps[0], dl)? {
            return Ok(true);
        }
        // equations with the same zero set: a − b ≡ k·(c − d), k ≠ 0
        if gops[0] == RelOp::Eq && pops[0] == RelOp::Eq {
            if let (Some(g), Some(p)) = (sub(&gs[0], &gs[1]), sub(&ps[0], &ps[1])) {
                if expr_equiv(&g, &p, dl)?
                    || expr_equiv(&g, &Expr::Neg(Box::new(p.clone())), dl)?
                    || proportional(&g, &p, false, dl)?
                {
                    return Ok(true);
                }
            }
        }
        // inequalities with the same solution set: a − b ≡ k·(c − d), k > 0 for the same direction, k < 0
        // for the flipped one (`−x > −1` is `x < 1`)
        if is_order(gops[0]) && is_order(pops[0]) {
            if let (Some(g), Some(p)) = (sub(&gs[0], &gs[1]), sub(&ps[0], &ps[1])) {
                let flipped = Expr::Neg(Box::new(p.clone()));
                if (pops[0] == gops[0]
                    && (expr_equiv(&g, &p, dl)? || proportional(&g, &p, true, dl)?))
                    || (pops[0] == gops[0].flip()
                        && (expr_equiv(&g, &flipped, dl)? || proportional(&g, &flipped, true, dl)?))
                {
                    return Ok(true);
                }
            }
        }
    }
    Ok(false)
}

/// `v` without elements equivalent to an earlier one (a set lists each element once).
fn distinct<'a>(v: &'a [Node], dl: &Deadline) -> R<Vec<&'a Node>> {
    let mut out: Vec<&Node> = Vec::with_capacity(v.len());
    'next: for x in v {
        for y in &out {
            if equiv(y, x, dl)? {
                continue 'next;
            }
        }
        out.push(x);
    }
    Ok(out)
}

fn unordered(a: &[Node], b: &[Node], dl: &Deadline) -> R<bool> {
    if a.len() != b.len() {
        // a repeated element (`(3, 17), (3, 17)`) does not make another set
        let (da, db) = (distinct(a, dl)?, distinct(b, dl)?);
        if da.len() != a.len() || db.len() != b.len() {
            let da: Vec<Node> = da.into_iter().cloned().collect();
            let db: Vec<Node> = db.into_iter().cloned().collect();
            return if da.len() == db.len() {
                unordered(&da, &db, dl)
            } else {
                Ok(false)
            };
        }
        return Ok(false);
    }
    let mut used = vec![false; b.len()];
    'outer: for x in a {
        for (j, y) in b.iter().enumerate() {
            if !used[j] && equiv(x, y, dl)? {
                used[j] = true;
                continue 'outer;
            }
        }
        return Ok(false);
    }
    Ok(true)
}

fn ordered(a: &[Node], b: &[Node], dl: &Deadline) -> R<bool> {
    if a.len() != b.len() {
        return Ok(false);
    }
    for (x, y) in a.iter().zip(b) {
        if !equiv(x, y, dl)? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// `p = 5, q = 2, p = 7, q = 2` (solutions listed by name) as the tuples `(5, 2), (7, 2)`: a list of
/// equations whose left sides repeat a sequence of names.
fn named_solutions(items: &[Node]) -> Option<Node> {
    let mut names = vec![];
    let mut values = vec![];
    for it in items {
        match it {
            Node::Rel(s, ops) if ops == &[RelOp::Eq] && is_sym(&s[0]) => {
                names.push(s[0].to_string());
                values.push(s[1].clone());
            }
            _ => return None,
        }
    }
    let width = names.iter().skip(1).position(|n| *n == names[0])? + 1;
    if width < 2 || names.len() % width != 0 || names.chunks(width).any(|c| c != &names[..width]) {
        return None;
    }
    Some(Node::List(
        values
            .chunks(width)
            .map(|c| Node::Tuple(c.to_vec()))
            .collect(),
    ))
}

/// Equivalence of a gold answer and a predicted answer (asymmetric: `gold` is the reference).
pub fn equiv(gold: &Node, pred: &Node, dl: &Deadline) -> R<bool> {
    dl.check()?;
    use Node::*;
    if let List(items) = gold {
        if let (Some(g), false) = (
            named_solutions(items),
            matches!(pred, List(p) if named_solutions(p).is_some()),
        ) {
            if equiv(&g, pred, dl)? {
                return Ok(true);
            }
        }
    }
    Ok(match (gold, pred) {
        (Expr(a), Expr(b)) => expr_equiv_pct(a, b, dl)?,
        (Rel(gs, gops), Rel(ps, pops)) => rel_equiv(gs, gops, ps, pops, dl)?,
        (Rel(gs, gops), p) => {
            if gops.iter().all(|o| *o == RelOp::Eq) && (gs.len() > 2 || names_a_quantity(&gs[0])) {
                // gold `x = 2` (or `(p, q) = (3, 2)`, `|AB| = 1`, `x = 1 + 1 = 2`), prediction the value: the
                // last side is the answer, as in Math-Verify
                equiv(&gs[gs.len() - 1], p, dl)?
            } else if gops == &[RelOp::In] && gs.len() == 2 {
                equiv(&gs[1], p, dl)?
            } else if let Some(iv) = ineq_to_interval(gs, gops) {
                equiv(&iv, p, dl)?
            } else {
                false
            }
        }
        (g, Rel(ps, pops)) => {
            if pops.iter().all(|o| *o == RelOp::Eq) {
                // `x = 2` or `x = y = 2`: the value side is the last one (or the first, `2 = x`)
                let last = &ps[ps.len() - 1];
                if !is_sym(last) || is_sym(&ps[0]) {
                    equiv(g, last, dl)? || (!is_sym(&ps[0]) && equiv(g, &ps[0], dl)?)
                } else {
                    equiv(g, &ps[0], dl)?
                }
            } else if pops == &[RelOp::In] && ps.len() == 2 {
                equiv(g, &ps[1], dl)?
            } else if let Some(iv) = ineq_to_interval(ps, pops) {
                equiv(g, &iv, dl)?
            } else {
                false
            }
        }
        (Set(a), Set(b) | List(b)) | (List(a), Set(b) | List(b)) => unordered(a, b, dl)?,
        (Tuple(a), Tuple(b) | List(b)) | (List(a), Tuple(b)) => ordered(a, b, dl)?,
        (Tuple(a), Interval(l, h, false, false)) if a.len() == 2 => {
            equiv(&a[0], l, dl)? && equiv(&a[1], h, dl)?
        }
        (Interval(l, h, false, false), Tuple(b)) if b.len() == 2 => {
            equiv(l, &b[0], dl)? && equiv(h, &b[1], dl)?
        }
        (Interval(l1, h1, a1, b1), Interval(l2, h2, a2, b2)) => {
            a1 == a2 && b1 == b2 && equiv(l1, l2, dl)? && equiv(h1, h2, dl)?
        }
        (Union(a), Union(b)) => unordered(a, b, dl)?,
        (Matrix(a), Matrix(b)) => {
            if a.len() != b.len() {
                false
            } else {
                let mut all = true;
                for (ra, rb) in a.iter().zip(b) {
                    if !ordered(ra, rb, dl)? {
                        all = false;
                        break;
                    }
                }
                all
            }
        }
        (Text(a), Text(b)) => normalize::text_key(a) == normalize::text_key(b),
        (Text(a), p) => normalize::text_key(a) == normalize::text_key(&p.to_string()),
        (g, Text(b)) => normalize::text_key(&g.to_string()) == normalize::text_key(b),
        (Set(a) | List(a) | Tuple(a) | Union(a), p) if a.len() == 1 => equiv(&a[0], p, dl)?,
        (g, Set(b) | List(b) | Tuple(b) | Union(b)) if b.len() == 1 => equiv(g, &b[0], dl)?,
        _ => false,
    })
}

#[cfg(test)]
mod tests;
