//! Evaluation of expressions: exact rational arithmetic where possible, f64 otherwise.
//!
//! A value that cannot be computed faithfully is refused with [`EvalErr::Inexact`] rather than
//! approximated: exact results above [`MAX_BITS`], f64 overflow to ±∞ or underflow to zero/subnormal from
//! finite non-zero operands, exact values outside the f64 range entering float arithmetic. Only `\infty`
//! (and arithmetic on it) is infinite, so a huge finite value never compares equal to ∞ or to another
//! huge value.

use super::ast::{Expr, Func};
use super::{Deadline, MathError};
use num_bigint::BigInt;
use num_integer::Integer;
use num_rational::BigRational;
use num_traits::{One, Signed, ToPrimitive, Zero};
use std::collections::HashMap;

/// A value: exact rational or floating approximation (±∞ only for a real `\infty`).
#[derive(Debug, Clone)]
pub enum Val {
    Exact(BigRational),
    Approx(f64),
}

/// Exact values (numerator plus denominator) larger than this many bits are refused.
pub const MAX_BITS: u64 = 16_384;
/// Largest `n` for which `n!` and `\binom{n}{k}` are computed exactly.
const MAX_FACT: u64 = 5000;

impl Val {
    /// The value as f64 (exact values out of range give ±∞ or 0; see [`exact_f64`] for a checked one).
    pub fn to_f64(&self) -> f64 {
        match self {
            Val::Exact(r) => r.to_f64().unwrap_or(f64::NAN),
            Val::Approx(x) => *x,
        }
    }

    /// The f64 for float arithmetic: an exact value must convert without overflow or underflow.
    fn float(&self) -> Result<f64, EvalErr> {
        match self {
            Val::Exact(r) => exact_f64(r).ok_or(EvalErr::Inexact),
            Val::Approx(x) => Ok(*x),
        }
    }

    /// An exact result, refused when it is larger than [`MAX_BITS`].
    fn exact(r: BigRational) -> R {
        if r.numer().bits() + r.denom().bits() > MAX_BITS {
            Err(EvalErr::Inexact)
        } else {
            Ok(Val::Exact(r))
        }
    }
}

/// A rational as a normal f64, or None when it would overflow, underflow or become subnormal.
pub fn exact_f64(r: &BigRational) -> Option<f64> {
    if r.is_zero() {
        return Some(0.0);
    }
    r.to_f64().filter(|x| x.is_normal())
}

/// Why evaluation failed at a point (domain error, unbound symbol, ...); the point is skipped.
#[derive(Debug)]
pub enum EvalErr {
    Domain,
    Unbound,
    /// The value is beyond what can be computed faithfully (size limits, f64 overflow/underflow).
    Inexact,
    Timeout,
}

impl From<MathError> for EvalErr {
    fn from(_: MathError) -> Self {
        EvalErr::Timeout
    }
}

type R = Result<Val, EvalErr>;

/// Checks a float result computed from `args`: NaN is a domain error; ±∞ from finite operands is an
/// overflow, and (when `scaling`, for products, quotients, powers, exp) zero from non-zero finite operands
/// is an underflow; subnormals are inexact.
fn checked(y: f64, args: &[f64], scaling: bool) -> R {
    let finite = args.iter().all(|a| a.is_finite());
    if y.is_nan() {
        Err(EvalErr::Domain)
    } else if (y.is_infinite() && finite)
        || y.is_subnormal()
        || (scaling && y == 0.0 && finite && args.iter().all(|a| *a != 0.0))
    {
        Err(EvalErr::Inexact)
    } else {
        Ok(Val::Approx(y))
    }
}

fn ratio_int(r: &BigRational) -> Option<&BigInt> {
    r.denom().is_one().then(|| r.numer())
}

/// Exact n-th root of a rational if it is a perfect power.
fn exact_root(r: &BigRational, n: u32) -> Option<BigRational> {
    if r.is_negative() {
        if n % 2 == 1 {
            return exact_root(&-r, n).map(|x| -x);
        }
        return None;
    }
    let a = r.numer().nth_root(n);
    let b = r.denom().nth_root(n);
    (a.pow(n) == *r.numer() && b.pow(n) == *r.denom()).then(|| BigRational::new(a, b))
}

/// `b^n` exactly, refused when the result would exceed [`MAX_BITS`].
fn pow_int(b: &BigRational, n: &BigInt) -> R {
    if b.is_zero() {
        return match () {
            _ if n.is_negative() => Err(EvalErr::Domain),
            _ if n.is_zero() => Ok(Val::Exact(BigRational::one())),
            _ => Ok(Val::Exact(BigRational::zero())),
        };
    }
    if b.abs().is_one() {
        let neg = b.is_negative() && n.is_odd();
        return Ok(Val::Exact(if neg {
            -BigRational::one()
        } else {
            BigRational::one()
        }));
    }
    let k = n.magnitude().to_u64().ok_or(EvalErr::Inexact)?;
    // x^k has at least (bits(x) - 1)·k + 1 bits: refuse before computing anything gigantic
    let low = (b.numer().bits() - 1).saturating_add(b.denom().bits() - 1);
    if low.saturating_mul(k) > MAX_BITS {
        return Err(EvalErr::Inexact);
    }
    let k = u32::try_from(k).map_err(|_| EvalErr::Inexact)?;
    let (p, q) = (b.numer().pow(k), b.denom().pow(k));
    // powers of coprime numbers stay coprime: no reduction needed
    let r = if !n.is_negative() {
        BigRational::new_raw(p, q)
    } else if p.is_negative() {
        BigRational::new_raw(-q, -p)
    } else {
        BigRational::new_raw(q, p)
    };
    Val::exact(r)
}

/// `b^(p/q)` for a non-integer rational exponent: exact for perfect powers, a real odd root for negative
/// bases; None defers to float evaluation.
fn pow_ratio(b: &BigRational, e: &BigRational) -> Result<Option<Val>, EvalErr> {
    let (Some(p), Some(q)) = (e.numer().to_i64(), e.denom().to_u32()) else {
        return Ok(None);
    };
    if q > 64 || p.unsigned_abs() > 64 {
        return Ok(None);
    }
    if let Some(root) = exact_root(b, q) {
        return pow_int(&root, &BigInt::from(p)).map(Some);
    }
    if b.is_negative() && q % 2 == 1 {
        let x = Val::Exact(-b).float()?;
        let y = p as f64 / q as f64;
        let mag = checked(x.powf(y), &[x, y], true)?.to_f64();
        return Ok(Some(Val::Approx(if p % 2 == 0 { mag } else { -mag })));
    }
    Ok(None)
}

fn pow_val(b: Val, e: Val) -> R {
    if let (Val::Exact(br), Val::Exact(er)) = (&b, &e) {
        if let Some(n) = ratio_int(er) {
            return pow_int(br, n);
        }
        if let Some(v) = pow_ratio(br, er)? {
            return Ok(v);
        }
    }
    let (x, y) = (b.float()?, e.float()?);
    checked(x.powf(y), &[x, y], true)
}

/// A non-negative integer argument of `!`/`binom` (None: not one), refused above [`MAX_FACT`].
fn small_nat(r: &BigRational) -> Result<Option<u64>, EvalErr> {
    match ratio_int(r) {
        Some(n) if !n.is_negative() => match n.to_u64() {
            Some(n) if n <= MAX_FACT => Ok(Some(n)),
            _ => Err(EvalErr::Inexact),
        },
        _ => Ok(None),
    }
}

fn factorial(v: Val, dl: &Deadline) -> R {
    match v {
        Val::Exact(r) => {
            let n = small_nat(&r)?.ok_or(EvalErr::Domain)?;
            let mut acc = BigInt::one();
            for k in 2..=n {
                acc *= k;
                if acc.bits() > MAX_BITS {
                    return Err(EvalErr::Inexact);
                }
                if k % 256 == 0 {
                    dl.check()?;
                }
            }
            Ok(Val::Exact(BigRational::from_integer(acc)))
        }
        Val::Approx(x) if x >= 0.0 && x.fract() == 0.0 && x <= 170.0 => {
            Ok(Val::Approx((1..=x as u64).map(|k| k as f64).product()))
        }
        Val::Approx(x) if x.is_finite() && x > 170.0 && x.fract() == 0.0 => Err(EvalErr::Inexact),
        Val::Approx(_) => Err(EvalErr::Domain),
    }
}

fn binom(n: Val, k: Val, dl: &Deadline) -> R {
    let (Val::Exact(n), Val::Exact(k)) = (n, k) else {
        return Err(EvalErr::Domain);
    };
    let n = small_nat(&n)?.ok_or(EvalErr::Domain)?;
    let k = ratio_int(&k)
        .and_then(|x| x.to_i64())
        .ok_or(EvalErr::Domain)?;
    if k < 0 {
        return Err(EvalErr::Domain);
    }
    let k = k as u64;
    if k > n {
        return Ok(Val::Exact(BigRational::zero()));
    }
    let mut acc = BigInt::one();
    for i in 0..k.min(n - k) {
        acc = acc * BigInt::from(n - i) / BigInt::from(i + 1);
        if i % 256 == 255 {
            dl.check()?;
        }
    }
    Val::exact(BigRational::from_integer(acc))
}

fn func(f: Func, v: Val) -> R {
    if let Val::Exact(r) = &v {
        match f {
            Func::Sqrt => {
                if r.is_negative() {
                    return Err(EvalErr::Domain);
                }
                if let Some(x) = exact_root(r, 2) {
                    return Ok(Val::Exact(x));
                }
            }
            Func::Abs => return Ok(Val::Exact(r.abs())),
            Func::Floor => return Ok(Val::Exact(r.floor())),
            Func::Ceil => return Ok(Val::Exact(r.ceil())),
            _ => {}
        }
    }
    let x = v.float()?;
    let y = match f {
        Func::Sqrt => {
            if x < 0.0 {
                return Err(EvalErr::Domain);
            }
            x.sqrt()
        }
        Func::Sin => x.sin(),
        Func::Cos => x.cos(),
        Func::Tan => x.tan(),
        Func::Sec => 1.0 / x.cos(),
        Func::Csc => 1.0 / x.sin(),
        Func::Cot => 1.0 / x.tan(),
        Func::Asin => x.asin(),
        Func::Acos => x.acos(),
        Func::Atan => x.atan(),
        Func::Sinh => x.sinh(),
        Func::Cosh => x.cosh(),
        Func::Tanh => x.tanh(),
        Func::Ln | Func::Log => {
            if x <= 0.0 {
                return Err(EvalErr::Domain);
            }
            x.ln()
        }
        Func::Exp => x.exp(),
        Func::Abs => x.abs(),
        Func::Floor => x.floor(),
        Func::Ceil => x.ceil(),
    };
    if y.is_infinite() && x.is_infinite() {
        return Err(EvalErr::Domain);
    }
    checked(y, &[x], f == Func::Exp)
}

/// gcd of `a` and `b` (non-negative), reducing the larger modulo the smaller first: num-bigint's gcd
/// (Stein's algorithm) takes time quadratic in the larger operand even when the other one is small, and
/// num-rational reduces every sum and product with it, so exact arithmetic near [`MAX_BITS`] cost
/// milliseconds per operation (a long product such as `(x+1)(x+1)…` took seconds per comparison).
fn gcd(a: &BigInt, b: &BigInt) -> BigInt {
    let (a, b) = (a.abs(), b.abs());
    let (big, small) = if a.bits() >= b.bits() { (a, b) } else { (b, a) };
    if small.is_zero() {
        return big;
    }
    (big % &small).gcd(&small)
}

/// `x · y` of reduced rationals, cancelling crosswise so the product needs no further reduction.
fn mul_exact(x: &BigRational, y: &BigRational) -> BigRational {
    if x.is_zero() || y.is_zero() {
        return BigRational::zero();
    }
    let (g1, g2) = (gcd(x.numer(), y.denom()), gcd(x.denom(), y.numer()));
    let n = (x.numer() / &g1) * (y.numer() / &g2);
    let d = (x.denom() / &g2) * (y.denom() / &g1);
    BigRational::new_raw(n, d)
}

/// `x + y` of reduced rationals (Knuth, TAOCP 4.5.1): only the gcd with the denominators' gcd is needed.
fn add_exact(x: &BigRational, y: &BigRational) -> BigRational {
    let d1 = gcd(x.denom(), y.denom());
    let (xd, yd) = (x.denom() / &d1, y.denom() / &d1);
    let t = x.numer() * &yd + y.numer() * &xd;
    if t.is_zero() {
        return BigRational::zero();
    }
    let d2 = gcd(&t, &d1);
    BigRational::new_raw(t / &d2, xd * (y.denom() / &d2))
}

/// `a + b` / `a · b` of two values (integers skip the gcd of general rational arithmetic).
fn arith(a: Val, b: Val, mul: bool) -> R {
    match (a, b) {
        (Val::Exact(x), Val::Exact(y)) => {
            Val::exact(match (x.is_integer() && y.is_integer(), mul) {
                (true, false) => BigRational::from_integer(x.numer() + y.numer()),
                (true, true) => BigRational::from_integer(x.numer() * y.numer()),
                (false, false) => add_exact(&x, &y),
                (false, true) => mul_exact(&x, &y),
            })
        }
        (a, b) => {
            let (x, y) = (a.float()?, b.float()?);
            checked(if mul { x * y } else { x + y }, &[x, y], mul)
        }
    }
}

fn div(p: Val, q: Val) -> R {
    match (p, q) {
        (Val::Exact(p), Val::Exact(q)) => {
            if q.is_zero() {
                return Err(EvalErr::Domain);
            }
            Val::exact(mul_exact(&p, &q.recip()))
        }
        (p, q) => {
            let (x, d) = (p.float()?, q.float()?);
            if d == 0.0 {
                return Err(EvalErr::Domain);
            }
            checked(x / d, &[x, d], true)
        }
    }
}

fn log_base(b: Val, x: Val) -> R {
    let (b, x) = (b.float()?, x.float()?);
    if b <= 0.0 || b == 1.0 || x <= 0.0 {
        return Err(EvalErr::Domain);
    }
    checked(x.ln() / b.ln(), &[b, x], false)
}

fn root(n: Val, a: Val) -> R {
    let inv = match n {
        Val::Exact(r) if !r.is_zero() => Val::Exact(r.recip()),
        Val::Approx(x) if x != 0.0 && x.is_finite() => Val::Approx(1.0 / x),
        _ => return Err(EvalErr::Domain),
    };
    pow_val(a, inv)
}

/// Evaluates `e` with the given symbol values (recursion is bounded by the parser's tree depth).
pub fn eval(e: &Expr, env: &HashMap<String, Val>, dl: &Deadline) -> R {
    dl.check()?;
    let ev = |x: &Expr| eval(x, env, dl);
    match e {
        Expr::Num(r, _) => Ok(Val::Exact(r.clone())),
        Expr::Sym(s) => env.get(s).cloned().ok_or(EvalErr::Unbound),
        Expr::Pi => Ok(Val::Approx(std::f64::consts::PI)),
        Expr::E => Ok(Val::Approx(std::f64::consts::E)),
        Expr::Inf => Ok(Val::Approx(f64::INFINITY)),
        Expr::Add(v) | Expr::Mul(v) => {
            let mul = matches!(e, Expr::Mul(_));
            let mut acc = Val::Exact(if mul {
                BigRational::one()
            } else {
                BigRational::zero()
            });
            for t in v {
                acc = arith(acc, ev(t)?, mul)?;
            }
            Ok(acc)
        }
        Expr::Neg(a) => Ok(match ev(a)? {
            Val::Exact(r) => Val::Exact(-r),
            Val::Approx(x) => Val::Approx(-x),
        }),
        Expr::Div(a, b) => div(ev(a)?, ev(b)?),
        Expr::Pow(a, b) => pow_val(ev(a)?, ev(b)?),
        Expr::Func(f, a) => func(*f, ev(a)?),
        Expr::Log(base, a) => log_base(ev(base)?, ev(a)?),
        Expr::Root(n, a) => root(ev(n)?, ev(a)?),
        Expr::Fact(a) => factorial(ev(a)?, dl),
        Expr::Binom(a, b) => binom(ev(a)?, ev(b)?, dl),
        Expr::Percent(a) => match ev(a)? {
            Val::Exact(r) => Val::exact(mul_exact(
                &r,
                &BigRational::new_raw(BigInt::one(), BigInt::from(100)),
            )),
            Val::Approx(x) => checked(x / 100.0, &[x], true),
        },
    }
}

/// Numeric tolerance mode for comparing two values.
#[derive(Debug, Clone, Copy)]
pub enum Tol {
    /// At least one side came from a decimal literal: equal after rounding to 6 places (as Math-Verify).
    Decimal,
    /// Symbolic values evaluated in f64: relative 1e-8.
    Float,
}

thread_local! {
    /// Decimal places of the [`Tol::Decimal`] comparison for the verification running on this thread (set by
    /// `math::verify_with` for its duration; Math-Verify's `float_rounding`). A thread-local because the
    /// equivalence functions recurse through every node kind and this one number would otherwise be threaded
    /// through all their signatures.
    static DECIMALS: std::cell::Cell<u32> = const { std::cell::Cell::new(6) };
}

/// Runs `f` with decimal comparisons at `places` decimal places (restored afterwards).
pub fn with_decimals<T>(places: u32, f: impl FnOnce() -> T) -> T {
    let before = DECIMALS.with(|d| d.replace(places.min(30)));
    let out = f();
    DECIMALS.with(|d| d.set(before));
    out
}

/// Compares two values: exactly when both are exact rationals (the decimal tolerance is then applied in
/// exact arithmetic too), otherwise in f64 with the tolerance. An infinity equals only the same infinity;
/// an exact value outside the f64 range never equals an approximation.
pub fn val_eq(a: &Val, b: &Val, tol: Tol) -> bool {
    if let (Val::Exact(x), Val::Exact(y)) = (a, b) {
        return match tol {
            Tol::Float => x == y,
            Tol::Decimal => exact_close(x, y),
        };
    }
    let (Ok(x), Ok(y)) = (a.float(), b.float()) else {
        return false;
    };
    if x.is_infinite() || y.is_infinite() {
        return x == y;
    }
    if !x.is_finite() || !y.is_finite() {
        return false;
    }
    let d = (x - y).abs();
    match tol {
        // equal after rounding to 6 decimal places, or to 9 significant digits
        Tol::Decimal => {
            let places = DECIMALS.with(|d| d.get()) as i32;
            d <= 0.5 * 10f64.powi(-places) + 1e-15 || d <= 1e-9 * x.abs().max(y.abs())
        }
        Tol::Float => d <= 1e-8 * x.abs().max(y.abs()) || d < 1e-12,
    }
}

/// The decimal tolerance of [`val_eq`] in exact arithmetic: |x − y| ≤ ½·10⁻ᵈ (d decimal places, 6 by
/// default) or ≤ 10⁻⁹·max(|x|, |y|).
fn exact_close(x: &BigRational, y: &BigRational) -> bool {
    let d = (x - y).abs();
    let places = DECIMALS.with(|d| d.get());
    let abs_tol = BigRational::new(BigInt::from(5), BigInt::from(10u32).pow(places + 1));
    d <= abs_tol
        || d * BigRational::from_integer(BigInt::from(1_000_000_000)) <= x.abs().max(y.abs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_arithmetic_matches_num_rational() {
        let mut vals = Vec::new();
        for (n, d) in [
            (0, 1),
            (1, 1),
            (-1, 1),
            (3, 4),
            (-6, 9),
            (10, 15),
            (7, 1),
            (1, 1024),
        ] {
            vals.push(BigRational::new(BigInt::from(n), BigInt::from(d)));
        }
        let big = BigInt::from(3u32).pow(400) * BigInt::from(10u32).pow(50);
        vals.push(BigRational::new(big.clone(), BigInt::from(6u32).pow(30)));
        vals.push(BigRational::new(-BigInt::from(2u32).pow(90), big + 7u32));
        for x in &vals {
            for y in &vals {
                assert_eq!(add_exact(x, y), x + y, "{x} + {y}");
                assert_eq!(mul_exact(x, y), x * y, "{x} * {y}");
                let (s, p) = (add_exact(x, y), mul_exact(x, y));
                for r in [s, p] {
                    // canonical form, as num-rational's own
                    assert_eq!(
                        r.clone(),
                        BigRational::new(r.numer().clone(), r.denom().clone())
                    );
                    assert!(r.denom().is_positive());
                }
            }
        }
    }
}
