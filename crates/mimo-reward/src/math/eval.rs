//! Evaluation of expressions: exact rational arithmetic where possible, f64 otherwise.

use super::ast::{Expr, Func};
use super::{Deadline, MathError};
use num_bigint::BigInt;
use num_rational::BigRational;
use num_traits::{One, Signed, ToPrimitive, Zero};
use std::collections::HashMap;

/// A value: exact rational or floating approximation.
#[derive(Debug, Clone)]
pub enum Val {
    Exact(BigRational),
    Approx(f64),
}

/// Exact values larger than this many bits are demoted to f64 to keep every case fast.
const MAX_BITS: u64 = 4096;

impl Val {
    pub fn to_f64(&self) -> f64 {
        match self {
            Val::Exact(r) => r.to_f64().unwrap_or(f64::NAN),
            Val::Approx(x) => *x,
        }
    }
    fn exact(r: BigRational) -> Val {
        if r.numer().bits() + r.denom().bits() > MAX_BITS {
            Val::Approx(r.to_f64().unwrap_or(f64::NAN))
        } else {
            Val::Exact(r)
        }
    }
}

/// Why evaluation failed at a point (domain error, unbound symbol, ...); the point is skipped.
#[derive(Debug)]
pub enum EvalErr {
    Domain,
    Unbound,
    Timeout,
}

impl From<MathError> for EvalErr {
    fn from(_: MathError) -> Self {
        EvalErr::Timeout
    }
}

type R = Result<Val, EvalErr>;

fn approx(x: f64) -> R {
    if x.is_nan() {
        Err(EvalErr::Domain)
    } else {
        Ok(Val::Approx(x))
    }
}

fn ratio_int(r: &BigRational) -> Option<&BigInt> {
    r.denom().is_one().then(|| r.numer())
}

/// Exact n-th root of a non-negative rational if it is a perfect power.
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

fn pow_val(b: Val, e: Val) -> R {
    if let (Val::Exact(br), Val::Exact(er)) = (&b, &e) {
        if let Some(n) = ratio_int(er).and_then(|n| n.to_i64()) {
            let bits = br.numer().bits().max(br.denom().bits()).max(1);
            if n.unsigned_abs() <= 100_000 && bits.saturating_mul(n.unsigned_abs()) <= MAX_BITS {
                if br.is_zero() && n < 0 {
                    return Err(EvalErr::Domain);
                }
                let p = num_traits::pow::pow(br.clone(), n.unsigned_abs() as usize);
                return Ok(Val::exact(if n < 0 { p.recip() } else { p }));
            }
        } else if let (Some(p), Some(q)) = (er.numer().to_i64(), er.denom().to_u32()) {
            // rational exponent p/q: exact when the base is a perfect q-th power
            if q <= 64 && p.unsigned_abs() <= 64 {
                if let Some(root) = exact_root(br, q) {
                    if root.is_zero() && p < 0 {
                        return Err(EvalErr::Domain);
                    }
                    let pw = num_traits::pow::pow(root, p.unsigned_abs() as usize);
                    return Ok(Val::exact(if p < 0 { pw.recip() } else { pw }));
                }
                let x = br.to_f64().unwrap_or(f64::NAN);
                if x < 0.0 && q % 2 == 1 {
                    let mag = (-x).powf(p as f64 / q as f64);
                    return approx(if p % 2 == 0 { mag } else { -mag });
                }
            }
        }
    }
    let (x, y) = (b.to_f64(), e.to_f64());
    approx(x.powf(y))
}

fn factorial(v: Val) -> R {
    match v {
        Val::Exact(r) => {
            let n = ratio_int(&r)
                .and_then(|n| n.to_u64())
                .ok_or(EvalErr::Domain)?;
            if n > 2000 {
                return Err(EvalErr::Domain);
            }
            let mut acc = BigInt::one();
            for k in 2..=n {
                acc *= k;
            }
            Ok(Val::exact(BigRational::from_integer(acc)))
        }
        Val::Approx(x) => {
            if x >= 0.0 && x.fract() == 0.0 && x <= 170.0 {
                Ok(Val::Approx((1..=x as u64).map(|k| k as f64).product()))
            } else {
                Err(EvalErr::Domain)
            }
        }
    }
}

fn binom(n: Val, k: Val) -> R {
    let (Val::Exact(n), Val::Exact(k)) = (n, k) else {
        return Err(EvalErr::Domain);
    };
    let n = ratio_int(&n)
        .and_then(|x| x.to_i64())
        .ok_or(EvalErr::Domain)?;
    let k = ratio_int(&k)
        .and_then(|x| x.to_i64())
        .ok_or(EvalErr::Domain)?;
    if n < 0 || k < 0 || n > 5000 {
        return Err(EvalErr::Domain);
    }
    if k > n {
        return Ok(Val::Exact(BigRational::zero()));
    }
    let mut acc = BigInt::one();
    for i in 0..k {
        acc = acc * BigInt::from(n - i) / BigInt::from(i + 1);
    }
    Ok(Val::exact(BigRational::from_integer(acc)))
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
    let x = v.to_f64();
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
    if y.is_infinite() {
        return Err(EvalErr::Domain);
    }
    approx(y)
}

/// Evaluates `e` with the given symbol values.
pub fn eval(e: &Expr, env: &HashMap<String, Val>, dl: &Deadline) -> R {
    dl.check()?;
    Ok(match e {
        Expr::Num(r, _) => Val::Exact(r.clone()),
        Expr::Sym(s) => env.get(s).cloned().ok_or(EvalErr::Unbound)?,
        Expr::Pi => Val::Approx(std::f64::consts::PI),
        Expr::E => Val::Approx(std::f64::consts::E),
        Expr::Inf => Val::Approx(f64::INFINITY),
        Expr::Add(v) => {
            let mut acc = Val::Exact(BigRational::zero());
            for t in v {
                let x = eval(t, env, dl)?;
                acc = match (acc, x) {
                    (Val::Exact(a), Val::Exact(b)) => Val::exact(a + b),
                    (a, b) => approx(a.to_f64() + b.to_f64())?,
                };
            }
            acc
        }
        Expr::Mul(v) => {
            let mut acc = Val::Exact(BigRational::one());
            for t in v {
                let x = eval(t, env, dl)?;
                acc = match (acc, x) {
                    (Val::Exact(a), Val::Exact(b)) => Val::exact(a * b),
                    (a, b) => approx(a.to_f64() * b.to_f64())?,
                };
            }
            acc
        }
        Expr::Neg(a) => match eval(a, env, dl)? {
            Val::Exact(r) => Val::Exact(-r),
            Val::Approx(x) => Val::Approx(-x),
        },
        Expr::Div(a, b) => {
            let (x, y) = (eval(a, env, dl)?, eval(b, env, dl)?);
            match (x, y) {
                (Val::Exact(p), Val::Exact(q)) => {
                    if q.is_zero() {
                        return Err(EvalErr::Domain);
                    }
                    Val::exact(p / q)
                }
                (p, q) => {
                    let d = q.to_f64();
                    if d == 0.0 {
                        return Err(EvalErr::Domain);
                    }
                    approx(p.to_f64() / d)?
                }
            }
        }
        Expr::Pow(a, b) => pow_val(eval(a, env, dl)?, eval(b, env, dl)?)?,
        Expr::Func(f, a) => func(*f, eval(a, env, dl)?)?,
        Expr::Log(base, a) => {
            let (b, x) = (eval(base, env, dl)?.to_f64(), eval(a, env, dl)?.to_f64());
            if b <= 0.0 || b == 1.0 || x <= 0.0 {
                return Err(EvalErr::Domain);
            }
            approx(x.ln() / b.ln())?
        }
        Expr::Root(n, a) => {
            let n = eval(n, env, dl)?;
            let inv = match n {
                Val::Exact(r) if !r.is_zero() => Val::Exact(r.recip()),
                Val::Approx(x) if x != 0.0 => Val::Approx(1.0 / x),
                _ => return Err(EvalErr::Domain),
            };
            pow_val(eval(a, env, dl)?, inv)?
        }
        Expr::Fact(a) => factorial(eval(a, env, dl)?)?,
        Expr::Binom(a, b) => binom(eval(a, env, dl)?, eval(b, env, dl)?)?,
        Expr::Percent(a) => match eval(a, env, dl)? {
            Val::Exact(r) => Val::Exact(r / BigRational::from_integer(BigInt::from(100))),
            Val::Approx(x) => Val::Approx(x / 100.0),
        },
    })
}

/// Numeric tolerance mode for comparing two values.
#[derive(Debug, Clone, Copy)]
pub enum Tol {
    /// At least one side came from a decimal literal: equal after rounding to 6 places (as Math-Verify).
    Decimal,
    /// Symbolic values evaluated in f64: relative 1e-8.
    Float,
}

/// Compares two values: exactly when both are exact rationals (and no decimal literal is involved),
/// otherwise with the tolerance.
pub fn val_eq(a: &Val, b: &Val, tol: Tol) -> bool {
    if let (Val::Exact(x), Val::Exact(y), Tol::Float) = (a, b, tol) {
        return x == y;
    }
    let (x, y) = (a.to_f64(), b.to_f64());
    if x.is_infinite() || y.is_infinite() {
        return x == y;
    }
    if !x.is_finite() || !y.is_finite() {
        return false;
    }
    let d = (x - y).abs();
    match tol {
        // equal after rounding to 6 decimal places, or to 9 significant digits
        Tol::Decimal => d <= 5e-7 || d <= 1e-9 * x.abs().max(y.abs()),
        Tol::Float => d <= 1e-8 * x.abs().max(y.abs()) || d < 1e-12,
    }
}
