//! Answer AST: expressions plus the structured answer forms (tuples, sets, intervals, matrices, relations).

use num_bigint::BigInt;
use num_rational::BigRational;
use num_traits::{One, Signed, Zero};
use std::fmt;

/// Named functions understood by the parser and evaluator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Func {
    Sqrt,
    Sin,
    Cos,
    Tan,
    Sec,
    Csc,
    Cot,
    Asin,
    Acos,
    Atan,
    Sinh,
    Cosh,
    Tanh,
    Ln,
    /// `\log`: natural log in sympy/Math-Verify's reading of LaTeX; `\log_b` becomes [`Expr::Log`].
    Log,
    Exp,
    Abs,
    Floor,
    Ceil,
}

impl Func {
    /// Name as written in plain text (also the canonical printed form).
    pub fn name(self) -> &'static str {
        match self {
            Func::Sqrt => "sqrt",
            Func::Sin => "sin",
            Func::Cos => "cos",
            Func::Tan => "tan",
            Func::Sec => "sec",
            Func::Csc => "csc",
            Func::Cot => "cot",
            Func::Asin => "asin",
            Func::Acos => "acos",
            Func::Atan => "atan",
            Func::Sinh => "sinh",
            Func::Cosh => "cosh",
            Func::Tanh => "tanh",
            Func::Ln => "ln",
            Func::Log => "log",
            Func::Exp => "exp",
            Func::Abs => "abs",
            Func::Floor => "floor",
            Func::Ceil => "ceil",
        }
    }

    /// Looks a function up by its (plain or LaTeX command) name.
    pub fn from_name(s: &str) -> Option<Func> {
        Some(match s {
            "sqrt" => Func::Sqrt,
            "sin" => Func::Sin,
            "cos" => Func::Cos,
            "tan" => Func::Tan,
            "sec" => Func::Sec,
            "csc" => Func::Csc,
            "cot" => Func::Cot,
            "arcsin" | "asin" => Func::Asin,
            "arccos" | "acos" => Func::Acos,
            "arctan" | "atan" => Func::Atan,
            "sinh" => Func::Sinh,
            "cosh" => Func::Cosh,
            "tanh" => Func::Tanh,
            "ln" => Func::Ln,
            "log" | "lg" => Func::Log,
            "exp" => Func::Exp,
            "abs" => Func::Abs,
            "floor" | "lfloor" => Func::Floor,
            "ceil" | "lceil" => Func::Ceil,
            _ => return None,
        })
    }
}

/// A scalar expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    /// Exact rational; the flag is true when it came from a decimal literal (compared with tolerance).
    Num(BigRational, bool),
    /// A free variable (`x`, `x_1`, `\alpha`).
    Sym(String),
    Pi,
    E,
    /// Imaginary unit is not supported; `i` is a plain symbol. `Inf` is +∞ (negate for −∞).
    Inf,
    Add(Vec<Expr>),
    Mul(Vec<Expr>),
    Neg(Box<Expr>),
    Div(Box<Expr>, Box<Expr>),
    Pow(Box<Expr>, Box<Expr>),
    Func(Func, Box<Expr>),
    /// `\log_b x`: (base, argument).
    Log(Box<Expr>, Box<Expr>),
    /// `\sqrt[n]{x}`: (index, radicand).
    Root(Box<Expr>, Box<Expr>),
    Fact(Box<Expr>),
    Binom(Box<Expr>, Box<Expr>),
    /// `x\%`, evaluates to x/100 (equivalence also tries dropping the percent sign).
    Percent(Box<Expr>),
}

/// Relation operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    /// `x \in S`
    In,
}

impl RelOp {
    /// The operator seen from the other side (`a < b` ⇔ `b > a`).
    pub fn flip(self) -> RelOp {
        match self {
            RelOp::Lt => RelOp::Gt,
            RelOp::Le => RelOp::Ge,
            RelOp::Gt => RelOp::Lt,
            RelOp::Ge => RelOp::Le,
            o => o,
        }
    }

    fn symbol(self) -> &'static str {
        match self {
            RelOp::Eq => "=",
            RelOp::Ne => "!=",
            RelOp::Lt => "<",
            RelOp::Le => "<=",
            RelOp::Gt => ">",
            RelOp::Ge => ">=",
            RelOp::In => "in",
        }
    }
}

/// A parsed answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    Expr(Expr),
    /// `(a, b, ...)`; a 2-tuple also matches the open interval `(a, b)`.
    Tuple(Vec<Node>),
    /// `\{a, b\}`
    Set(Vec<Node>),
    /// Bare comma list `a, b` (compared as an unordered collection, or in order against a tuple).
    List(Vec<Node>),
    /// Interval with closedness flags (left, right).
    Interval(Box<Node>, Box<Node>, bool, bool),
    /// `A \cup B`
    Union(Vec<Node>),
    Matrix(Vec<Vec<Node>>),
    /// Relation chain: `sides[0] ops[0] sides[1] ops[1] ...`.
    Rel(Vec<Node>, Vec<RelOp>),
    /// Free text answer (already normalised).
    Text(String),
}

pub fn int(n: i64) -> Expr {
    Expr::Num(BigRational::from_integer(BigInt::from(n)), false)
}

fn fmt_rational(r: &BigRational, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    if r.denom().is_one() {
        write!(f, "{}", r.numer())
    } else {
        write!(f, "{}/{}", r.numer(), r.denom())
    }
}

fn prec(e: &Expr) -> u8 {
    match e {
        Expr::Add(_) => 1,
        Expr::Mul(_) | Expr::Div(..) => 2,
        Expr::Neg(_) => 3,
        Expr::Num(r, _) if r.is_negative() || !r.denom().is_one() => 2,
        Expr::Pow(..) => 4,
        _ => 5,
    }
}

fn wrap(e: &Expr, min: u8, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    if prec(e) < min {
        write!(f, "({e})")
    } else {
        write!(f, "{e}")
    }
}

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expr::Num(r, _) => fmt_rational(r, f),
            Expr::Sym(s) => write!(f, "{s}"),
            Expr::Pi => write!(f, "pi"),
            Expr::E => write!(f, "E"),
            Expr::Inf => write!(f, "oo"),
            Expr::Add(v) => {
                for (i, t) in v.iter().enumerate() {
                    match t {
                        Expr::Neg(inner) if i > 0 => {
                            write!(f, " - ")?;
                            wrap(inner, 2, f)?;
                        }
                        _ => {
                            if i > 0 {
                                write!(f, " + ")?;
                            }
                            wrap(t, 1, f)?;
                        }
                    }
                }
                Ok(())
            }
            Expr::Mul(v) => {
                for (i, t) in v.iter().enumerate() {
                    if i > 0 {
                        write!(f, "*")?;
                    }
                    wrap(t, 3, f)?;
                }
                Ok(())
            }
            Expr::Neg(e) => {
                write!(f, "-")?;
                wrap(e, 3, f)
            }
            Expr::Div(a, b) => {
                wrap(a, 2, f)?;
                write!(f, "/")?;
                wrap(b, 3, f)
            }
            Expr::Pow(a, b) => {
                wrap(a, 5, f)?;
                write!(f, "^")?;
                wrap(b, 5, f)
            }
            Expr::Func(func, a) => write!(f, "{}({a})", func.name()),
            Expr::Log(b, a) => write!(f, "log({a}, {b})"),
            Expr::Root(n, a) => write!(f, "root({a}, {n})"),
            Expr::Fact(a) => {
                wrap(a, 5, f)?;
                write!(f, "!")
            }
            Expr::Binom(a, b) => write!(f, "binomial({a}, {b})"),
            Expr::Percent(a) => {
                wrap(a, 5, f)?;
                write!(f, "%")
            }
        }
    }
}

fn join(v: &[Node], f: &mut fmt::Formatter<'_>) -> fmt::Result {
    for (i, n) in v.iter().enumerate() {
        if i > 0 {
            write!(f, ", ")?;
        }
        write!(f, "{n}")?;
    }
    Ok(())
}

impl fmt::Display for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Node::Expr(e) => write!(f, "{e}"),
            Node::Tuple(v) => {
                write!(f, "(")?;
                join(v, f)?;
                write!(f, ")")
            }
            Node::Set(v) => {
                write!(f, "{{")?;
                join(v, f)?;
                write!(f, "}}")
            }
            Node::List(v) => join(v, f),
            Node::Interval(a, b, lc, rc) => write!(
                f,
                "{}{a}, {b}{}",
                if *lc { "[" } else { "(" },
                if *rc { "]" } else { ")" }
            ),
            Node::Union(v) => {
                for (i, n) in v.iter().enumerate() {
                    if i > 0 {
                        write!(f, " U ")?;
                    }
                    write!(f, "{n}")?;
                }
                Ok(())
            }
            Node::Matrix(rows) => {
                write!(f, "Matrix([")?;
                for (i, r) in rows.iter().enumerate() {
                    if i > 0 {
                        write!(f, ", ")?;
                    }
                    write!(f, "[")?;
                    join(r, f)?;
                    write!(f, "]")?;
                }
                write!(f, "])")
            }
            Node::Rel(sides, ops) => {
                for (i, s) in sides.iter().enumerate() {
                    if i > 0 {
                        write!(f, " {} ", ops[i - 1].symbol())?;
                    }
                    write!(f, "{s}")?;
                }
                Ok(())
            }
            Node::Text(t) => write!(f, "{t}"),
        }
    }
}

impl Expr {
    /// True when the expression contains a decimal literal (compare with tolerance).
    pub fn has_decimal(&self) -> bool {
        let mut found = false;
        self.walk(&mut |e| {
            if let Expr::Num(_, true) = e {
                found = true;
            }
        });
        found
    }

    /// Collects free symbols into `out` in order of first appearance, without duplicates.
    pub fn symbols(&self, out: &mut Vec<String>) {
        let mut seen: std::collections::HashSet<String> = out.iter().cloned().collect();
        self.walk(&mut |e| {
            if let Expr::Sym(s) = e {
                if seen.insert(s.clone()) {
                    out.push(s.clone());
                }
            }
        });
    }

    /// Pre-order traversal (iterative, so any depth is safe).
    pub fn walk(&self, f: &mut dyn FnMut(&Expr)) {
        let mut stack = vec![self];
        while let Some(e) = stack.pop() {
            f(e);
            let at = stack.len();
            e.each_child(&mut |c| stack.push(c));
            stack[at..].reverse();
        }
    }

    /// Calls `f` on each direct child, left to right.
    pub fn each_child<'a>(&'a self, f: &mut dyn FnMut(&'a Expr)) {
        match self {
            Expr::Add(v) | Expr::Mul(v) => v.iter().for_each(f),
            Expr::Neg(a) | Expr::Func(_, a) | Expr::Fact(a) | Expr::Percent(a) => f(a),
            Expr::Div(a, b)
            | Expr::Pow(a, b)
            | Expr::Log(a, b)
            | Expr::Root(a, b)
            | Expr::Binom(a, b) => {
                f(a);
                f(b);
            }
            _ => {}
        }
    }

    /// Height of the tree (a leaf is 1), computed without recursion.
    pub fn depth(&self) -> usize {
        tree_depth(Item::E(self))
    }

    /// Replaces `x%` by `x` everywhere.
    pub fn strip_percent(&self) -> Expr {
        self.map(&|e| match e {
            Expr::Percent(a) => Some(a.strip_percent()),
            _ => None,
        })
    }

    /// Bottom-up rewrite: `f` returns `Some(replacement)` to replace a node (its children are not visited).
    pub fn map(&self, f: &dyn Fn(&Expr) -> Option<Expr>) -> Expr {
        if let Some(r) = f(self) {
            return r;
        }
        let b = |e: &Expr| Box::new(e.map(f));
        match self {
            Expr::Add(v) => Expr::Add(v.iter().map(|e| e.map(f)).collect()),
            Expr::Mul(v) => Expr::Mul(v.iter().map(|e| e.map(f)).collect()),
            Expr::Neg(a) => Expr::Neg(b(a)),
            Expr::Func(fun, a) => Expr::Func(*fun, b(a)),
            Expr::Fact(a) => Expr::Fact(b(a)),
            Expr::Percent(a) => Expr::Percent(b(a)),
            Expr::Div(x, y) => Expr::Div(b(x), b(y)),
            Expr::Pow(x, y) => Expr::Pow(b(x), b(y)),
            Expr::Log(x, y) => Expr::Log(b(x), b(y)),
            Expr::Root(x, y) => Expr::Root(b(x), b(y)),
            Expr::Binom(x, y) => Expr::Binom(b(x), b(y)),
            e => e.clone(),
        }
    }

    /// Is this the literal zero?
    pub fn is_zero_lit(&self) -> bool {
        matches!(self, Expr::Num(r, _) if r.is_zero())
    }
}

impl Node {
    /// Height of the tree including the expressions inside (a leaf is 1), computed without recursion.
    pub fn depth(&self) -> usize {
        tree_depth(Item::N(self))
    }

    /// Short name of the answer form, for error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Node::Expr(_) => "an expression",
            Node::Tuple(_) => "a tuple",
            Node::Set(_) => "a set",
            Node::List(_) => "a list",
            Node::Interval(..) => "an interval",
            Node::Union(_) => "a union",
            Node::Matrix(_) => "a matrix",
            Node::Rel(..) => "a relation",
            Node::Text(_) => "text",
        }
    }
}

#[derive(Clone, Copy)]
enum Item<'a> {
    N(&'a Node),
    E(&'a Expr),
}

fn tree_depth(root: Item<'_>) -> usize {
    let mut max = 0;
    let mut stack = vec![(root, 1usize)];
    while let Some((item, d)) = stack.pop() {
        max = max.max(d);
        let mut push = |it| stack.push((it, d + 1));
        match item {
            Item::E(e) => e.each_child(&mut |c| push(Item::E(c))),
            Item::N(n) => match n {
                Node::Expr(e) => push(Item::E(e)),
                Node::Tuple(v)
                | Node::Set(v)
                | Node::List(v)
                | Node::Union(v)
                | Node::Rel(v, _) => v.iter().for_each(|c| push(Item::N(c))),
                Node::Interval(a, b, ..) => {
                    push(Item::N(a));
                    push(Item::N(b));
                }
                Node::Matrix(rows) => rows.iter().flatten().for_each(|c| push(Item::N(c))),
                Node::Text(_) => {}
            },
        }
    }
    max
}
