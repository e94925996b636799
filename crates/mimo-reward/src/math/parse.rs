//! Tokenizer and recursive-descent parser for normalised LaTeX / plain-text answers.
//!
//! Hand-written: the Rust LaTeX crates render or convert to MathML and do not produce an evaluable
//! expression tree, and Math-Verify's own parser (latex2sympy2) is Python; this parser covers the answer
//! notations that occur in math RL data (see the unit tests for the supported families).

use super::ast::{int, Expr, Func, Node, RelOp};
use super::{Deadline, MathError};
use num_bigint::BigInt;
use num_rational::BigRational;
use num_traits::{Num, Zero};

/// Deepest nesting the parser accepts: brackets, braces, `\frac`/`\sqrt`/function arguments, signs and
/// exponents each count one level. Legitimate answers stay far below it; it keeps the recursive parser
/// (and every later tree walk) well inside a 256 KiB stack: one level costs up to about 7 KiB of stack in
/// the test build (opt-level 1), so 64 levels overflowed 256 KiB (`tests/fuzz_math.rs`).
pub const MAX_NESTING: usize = 24;
/// Tallest expression tree the parser returns (loops such as `a/b/c/…` or `x!!!…` deepen a tree without
/// nesting); every tree walk after parsing recurses at most this deep.
pub const MAX_TREE_DEPTH: usize = 160;
/// Longest number literal accepted, in digits (longer ones are refused rather than parsed in quadratic time).
pub const MAX_DIGITS: usize = 5000;
/// Largest `e`/`E` exponent of a scientific literal.
const MAX_SCI_EXP: u64 = 400;

fn limit<T>(m: impl Into<String>) -> R<T> {
    Err(MathError::Limit(m.into()))
}

/// At most `n` characters of `s`, marking a cut with `…` (error messages quote input).
pub fn clip(s: &str, n: usize) -> String {
    match s.char_indices().nth(n) {
        Some((k, _)) => format!("{}…", &s[..k]),
        None => s.to_string(),
    }
}

fn show(t: &Tok) -> String {
    match t {
        Tok::Num(s) | Tok::Ident(s) | Tok::Cmd(s) => format!("{:?}", clip(s, 40)),
        t => format!("{t:?}"),
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    /// Decimal literal text (digits, optional point, optional exponent).
    Num(String),
    Ident(String),
    /// A LaTeX command without the backslash, for the ones the parser handles structurally.
    Cmd(String),
    Func(Func),
    LBrace,
    RBrace,
    LParen,
    RParen,
    LBrack,
    RBrack,
    LSet,
    RSet,
    Plus,
    Minus,
    Star,
    Slash,
    Caret,
    Under,
    Bang,
    Percent,
    Comma,
    Bar,
    Amp,
    RowSep,
    Cup,
    Rel(RelOp),
    Pi,
    Inf,
    EConst,
}

fn tokenize(s: &str, dl: &Deadline) -> Result<Vec<Tok>, MathError> {
    let c: Vec<char> = s.chars().collect();
    let mut i = 0;
    let mut out = Vec::new();
    while i < c.len() {
        dl.check()?;
        let ch = c[i];
        if ch.is_whitespace() {
            i += 1;
            continue;
        }
        if ch.is_ascii_digit() || (ch == '.' && i + 1 < c.len() && c[i + 1].is_ascii_digit()) {
            let st = i;
            while i < c.len() && c[i].is_ascii_digit() {
                i += 1;
            }
            if i < c.len() && c[i] == '.' && i + 1 < c.len() && c[i + 1].is_ascii_digit() {
                i += 1;
                while i < c.len() && c[i].is_ascii_digit() {
                    i += 1;
                }
            } else if i < c.len() && c[i] == '.' && (i + 1 == c.len() || !c[i + 1].is_alphabetic())
            {
                // "5." is 5
                i += 1;
            }
            // plain scientific notation: 1.5e3, 2E-4 (only when digits follow)
            if i < c.len() && (c[i] == 'e' || c[i] == 'E') {
                let mut j = i + 1;
                if j < c.len() && (c[j] == '+' || c[j] == '-') {
                    j += 1;
                }
                if j < c.len() && c[j].is_ascii_digit() {
                    while j < c.len() && c[j].is_ascii_digit() {
                        j += 1;
                    }
                    i = j;
                }
            }
            out.push(Tok::Num(
                c[st..i]
                    .iter()
                    .collect::<String>()
                    .trim_end_matches('.')
                    .to_string(),
            ));
            continue;
        }
        if ch.is_alphabetic() {
            let st = i;
            while i < c.len() && c[i].is_ascii_alphabetic() {
                i += 1;
            }
            if i == st {
                // non-ASCII letter (e.g. π, α)
                i += 1;
            }
            let word: String = c[st..i].iter().collect();
            push_word(&word, &mut out);
            continue;
        }
        if ch == '\\' {
            i += 1;
            if i >= c.len() {
                break;
            }
            if !c[i].is_ascii_alphabetic() {
                let t = match c[i] {
                    '{' => Some(Tok::LSet),
                    '}' => Some(Tok::RSet),
                    '\\' => Some(Tok::RowSep),
                    '%' => Some(Tok::Percent),
                    _ => None,
                };
                if let Some(t) = t {
                    out.push(t);
                }
                i += 1;
                continue;
            }
            let st = i;
            while i < c.len() && c[i].is_ascii_alphabetic() {
                i += 1;
            }
            let name: String = c[st..i].iter().collect();
            out.push(command_token(&name));
            continue;
        }
        let t = match ch {
            '{' => Tok::LBrace,
            '}' => Tok::RBrace,
            '(' => Tok::LParen,
            ')' => Tok::RParen,
            '[' => Tok::LBrack,
            ']' => Tok::RBrack,
            '+' => Tok::Plus,
            '-' | '−' | '–' => Tok::Minus,
            '*' | '×' | '·' => Tok::Star,
            '/' | '÷' => Tok::Slash,
            '^' => Tok::Caret,
            '_' => Tok::Under,
            '!' => {
                if i + 1 < c.len() && c[i + 1] == '=' {
                    i += 1;
                    Tok::Rel(RelOp::Ne)
                } else {
                    Tok::Bang
                }
            }
            '%' => Tok::Percent,
            ',' | ';' => Tok::Comma,
            '|' => Tok::Bar,
            '&' => Tok::Amp,
            '=' => Tok::Rel(RelOp::Eq),
            '≤' => Tok::Rel(RelOp::Le),
            '≥' => Tok::Rel(RelOp::Ge),
            '≠' => Tok::Rel(RelOp::Ne),
            '∞' => Tok::Inf,
            '∪' => Tok::Cup,
            '√' => Tok::Func(Func::Sqrt),
            '<' | '>' => {
                let eq = i + 1 < c.len() && c[i + 1] == '=';
                if eq {
                    i += 1;
                }
                Tok::Rel(match (ch, eq) {
                    ('<', false) => RelOp::Lt,
                    ('<', true) => RelOp::Le,
                    (_, false) => RelOp::Gt,
                    _ => RelOp::Ge,
                })
            }
            '.' | '\'' | '"' | ':' | '?' => {
                i += 1;
                continue;
            }
            other => return Err(MathError::Parse(format!("unexpected character {other:?}"))),
        };
        out.push(t);
        i += 1;
    }
    Ok(out)
}

fn push_word(word: &str, out: &mut Vec<Tok>) {
    let lw = word.to_ascii_lowercase();
    if let Some(f) = Func::from_name(&lw) {
        if lw != "lfloor" && lw != "lceil" {
            out.push(Tok::Func(f));
            return;
        }
    }
    match word {
        "pi" | "π" => return out.push(Tok::Pi),
        "oo" | "inf" | "infty" | "infinity" | "Infinity" | "∞" => return out.push(Tok::Inf),
        "or" | "and" => return out.push(Tok::Comma),
        _ => {}
    }
    // LaTeX convention: adjacent letters are a product of single-letter symbols.
    for ch in word.chars() {
        if ch == 'e' {
            out.push(Tok::EConst);
        } else if ch == 'π' {
            out.push(Tok::Pi);
        } else {
            out.push(Tok::Ident(ch.to_string()));
        }
    }
}

fn command_token(name: &str) -> Tok {
    match name {
        "cdot" | "times" | "ast" => Tok::Star,
        "div" => Tok::Slash,
        "le" | "leq" | "leqslant" | "leqq" => Tok::Rel(RelOp::Le),
        "ge" | "geq" | "geqslant" | "geqq" => Tok::Rel(RelOp::Ge),
        "lt" => Tok::Rel(RelOp::Lt),
        "gt" => Tok::Rel(RelOp::Gt),
        "ne" | "neq" => Tok::Rel(RelOp::Ne),
        "in" => Tok::Rel(RelOp::In),
        "approx" | "equiv" => Tok::Rel(RelOp::Eq),
        "pi" => Tok::Pi,
        "infty" | "infinity" => Tok::Inf,
        "cup" => Tok::Cup,
        "lbrace" => Tok::LSet,
        "rbrace" => Tok::RSet,
        "langle" => Tok::LParen,
        "rangle" => Tok::RParen,
        "vert" | "lvert" | "rvert" | "mid" => Tok::Bar,
        "rfloor" | "rceil" => Tok::RParen,
        "lfloor" => Tok::Func(Func::Floor),
        "lceil" => Tok::Func(Func::Ceil),
        "e" => Tok::EConst,
        "quad" | "qquad" | "text" | "mathrm" => Tok::Cmd("space".into()),
        "emptyset" | "varnothing" => Tok::Cmd("emptyset".into()),
        _ => {
            if let Some(f) = Func::from_name(name) {
                Tok::Func(f)
            } else if matches!(
                name,
                "frac" | "sqrt" | "binom" | "begin" | "end" | "log" | "circ"
            ) {
                Tok::Cmd(name.to_string())
            } else {
                // Greek letters and other unknown commands are symbols.
                Tok::Ident(format!("\\{name}"))
            }
        }
    }
}

/// Parses a normalised answer string into a [`Node`].
pub fn parse_answer(s: &str, dl: &Deadline) -> Result<Node, MathError> {
    let toks: Vec<Tok> = tokenize(s, dl)?
        .into_iter()
        .filter(|t| !matches!(t, Tok::Cmd(c) if c == "space" || c == "circ"))
        .collect();
    if toks.is_empty() {
        return Err(MathError::Parse("empty answer".into()));
    }
    let mut p = Parser {
        t: toks,
        i: 0,
        depth: 0,
        dl,
    };
    let n = p.top()?;
    if let Some(t) = p.t.get(p.i) {
        return perr(format!("unexpected token {} at position {}", show(t), p.i));
    }
    check_tree(n.depth())?;
    Ok(n)
}

struct Parser<'a> {
    t: Vec<Tok>,
    i: usize,
    /// Current nesting level (see [`MAX_NESTING`]).
    depth: usize,
    dl: &'a Deadline,
}

type R<T> = Result<T, MathError>;

fn perr<T>(m: impl Into<String>) -> R<T> {
    Err(MathError::Parse(m.into()))
}

fn as_expr(n: Node) -> R<Expr> {
    match n {
        Node::Expr(e) => Ok(e),
        Node::Tuple(mut v) | Node::List(mut v) if v.len() == 1 => as_expr(v.remove(0)),
        other => perr(format!(
            "expected a scalar expression, found {}",
            other.kind()
        )),
    }
}

/// Refuses a tree taller than [`MAX_TREE_DEPTH`].
fn check_tree(depth: usize) -> R<()> {
    if depth > MAX_TREE_DEPTH {
        return limit(format!("expression nested deeper than {MAX_TREE_DEPTH}"));
    }
    Ok(())
}

impl Parser<'_> {
    /// Runs `f` one nesting level deeper, refusing input nested beyond [`MAX_NESTING`].
    fn nested<T>(&mut self, f: fn(&mut Self) -> R<T>) -> R<T> {
        if self.depth >= MAX_NESTING {
            return limit(format!("expression nested deeper than {MAX_NESTING}"));
        }
        self.depth += 1;
        let r = f(self);
        self.depth -= 1;
        r
    }

    fn peek(&self) -> Option<&Tok> {
        self.t.get(self.i)
    }
    fn eat(&mut self, t: &Tok) -> bool {
        if self.peek() == Some(t) {
            self.i += 1;
            true
        } else {
            false
        }
    }
    fn expect(&mut self, t: Tok) -> R<()> {
        if self.eat(&t) {
            Ok(())
        } else {
            let found = self.peek().map_or_else(|| "end of input".into(), show);
            perr(format!("expected {t:?}, found {found}"))
        }
    }

    /// Top level: comma list of unions of relations.
    fn top(&mut self) -> R<Node> {
        let mut items = vec![self.union()?];
        while self.eat(&Tok::Comma) {
            if self.peek().is_none() {
                break;
            }
            items.push(self.union()?);
        }
        Ok(if items.len() == 1 {
            items.remove(0)
        } else {
            Node::List(items)
        })
    }

    fn union(&mut self) -> R<Node> {
        let mut parts = vec![self.relation()?];
        while self.eat(&Tok::Cup) {
            parts.push(self.relation()?);
        }
        Ok(if parts.len() == 1 {
            parts.remove(0)
        } else {
            Node::Union(parts)
        })
    }

    fn relation(&mut self) -> R<Node> {
        let first = self.additive()?;
        let mut sides = vec![first];
        let mut ops = Vec::new();
        while let Some(Tok::Rel(op)) = self.peek().cloned() {
            self.i += 1;
            ops.push(op);
            sides.push(self.additive()?);
        }
        Ok(if ops.is_empty() {
            sides.remove(0)
        } else {
            Node::Rel(sides, ops)
        })
    }

    fn additive(&mut self) -> R<Node> {
        let mut first = self.term()?;
        // matrix sums: `A + B`, `A - B`
        while let Node::Matrix(a) = &first {
            let sign = if self.eat(&Tok::Plus) {
                false
            } else if self.eat(&Tok::Minus) {
                true
            } else {
                break;
            };
            let Node::Matrix(b) = self.term()? else {
                return perr("a matrix plus a non-matrix");
            };
            first = Node::Matrix(matrix_sum(a, &b, sign)?);
        }
        if !matches!(self.peek(), Some(Tok::Plus | Tok::Minus)) {
            return Ok(first);
        }
        let mut terms = vec![as_expr(first)?];
        loop {
            if self.eat(&Tok::Plus) {
                terms.push(as_expr(self.term()?)?);
            } else if self.eat(&Tok::Minus) {
                terms.push(Expr::Neg(Box::new(as_expr(self.term()?)?)));
            } else {
                break;
            }
        }
        Ok(Node::Expr(Expr::Add(terms)))
    }

    fn starts_primary(&self) -> bool {
        matches!(
            self.peek(),
            Some(
                Tok::Num(_)
                    | Tok::Ident(_)
                    | Tok::Func(_)
                    | Tok::LBrace
                    | Tok::LParen
                    | Tok::Pi
                    | Tok::Inf
                    | Tok::EConst
                    | Tok::Cmd(_)
            )
        ) && !matches!(self.peek(), Some(Tok::Cmd(c)) if c == "end")
    }

    fn term(&mut self) -> R<Node> {
        let mut first = self.unary()?;
        // matrix products: `A B`, `A \cdot B`, `A * B`
        while let Node::Matrix(a) = &first {
            let save = self.i;
            if !(self.eat(&Tok::Star) || self.starts_primary()) {
                break;
            }
            match self.unary()? {
                Node::Matrix(b) => first = Node::Matrix(matrix_product(a, &b)?),
                _ => {
                    self.i = save;
                    break;
                }
            }
        }
        // the product/quotient so far and its tree depth
        let mut acc: Option<(Expr, usize)> = None;
        let mut first = Some(first);
        loop {
            self.dl.check()?;
            let op = if self.eat(&Tok::Star) {
                '*'
            } else if self.eat(&Tok::Slash) {
                '/'
            } else if self.starts_primary() {
                '*'
            } else {
                break;
            };
            let (lhs, ld) = match acc.take() {
                Some(x) => x,
                None => {
                    let e = as_expr(
                        first
                            .take()
                            .ok_or_else(|| MathError::Parse("term".into()))?,
                    )?;
                    let d = e.depth();
                    (e, d)
                }
            };
            let rhs = as_expr(self.unary()?)?;
            let rd = rhs.depth();
            let next = match (op, lhs) {
                ('*', Expr::Mul(mut v)) => {
                    v.push(rhs);
                    (Expr::Mul(v), ld.max(rd + 1))
                }
                ('*', l) => (Expr::Mul(vec![l, rhs]), 1 + ld.max(rd)),
                (_, l) => (Expr::Div(Box::new(l), Box::new(rhs)), 1 + ld.max(rd)),
            };
            check_tree(next.1)?;
            acc = Some(next);
        }
        match acc {
            Some((e, _)) => Ok(Node::Expr(e)),
            None => first.ok_or_else(|| MathError::Parse("term".into())),
        }
    }

    fn unary(&mut self) -> R<Node> {
        if self.eat(&Tok::Minus) {
            let inner = as_expr(self.nested(Self::unary)?)?;
            return Ok(Node::Expr(Expr::Neg(Box::new(inner))));
        }
        if self.eat(&Tok::Plus) {
            return self.nested(Self::unary);
        }
        self.power()
    }

    fn power(&mut self) -> R<Node> {
        let base = self.postfix()?;
        if self.eat(&Tok::Caret) {
            // degree sign: x^\circ
            if let Some(Tok::Cmd(c)) = self.peek() {
                if c == "circ" {
                    self.i += 1;
                    return Ok(base);
                }
            }
            let exp = self.exponent()?;
            let b = as_expr(base)?;
            let n = Node::Expr(Expr::Pow(Box::new(b), Box::new(exp)));
            return self.postfix_ops(n, false);
        }
        Ok(base)
    }

    /// Exponent after `^`: a braced group, or a single token (LaTeX), or a signed primary (plain text).
    fn exponent(&mut self) -> R<Expr> {
        self.nested(Self::exponent_at)
    }

    fn exponent_at(&mut self) -> R<Expr> {
        if self.eat(&Tok::Minus) {
            return Ok(Expr::Neg(Box::new(self.exponent()?)));
        }
        match self.peek().cloned() {
            Some(Tok::LBrace) => {
                self.i += 1;
                let e = as_expr(self.top()?)?;
                self.expect(Tok::RBrace)?;
                Ok(e)
            }
            Some(Tok::Num(s)) => {
                self.i += 1;
                // LaTeX x^23 means x^2·3 only in pathological input; take the whole number.
                num_from_str(&s)
            }
            _ => Ok(as_expr(self.power()?)?),
        }
    }

    fn postfix(&mut self) -> R<Node> {
        let n = self.primary()?;
        self.postfix_ops(n, true)
    }

    /// Applies trailing `!` (and `%` when `percent`), bounding the depth the chain adds.
    fn postfix_ops(&mut self, mut n: Node, percent: bool) -> R<Node> {
        let mut depth = None;
        loop {
            let wrap: fn(Box<Expr>) -> Expr = if self.eat(&Tok::Bang) {
                Expr::Fact
            } else if percent && self.eat(&Tok::Percent) {
                Expr::Percent
            } else {
                return Ok(n);
            };
            let e = as_expr(n)?;
            let d = 1 + depth.unwrap_or_else(|| e.depth());
            check_tree(d)?;
            depth = Some(d);
            n = Node::Expr(wrap(Box::new(e)));
        }
    }

    /// A braced group `{...}` parsed as a full answer.
    fn group(&mut self) -> R<Node> {
        if self.eat(&Tok::LBrace) {
            let n = self.top()?;
            self.expect(Tok::RBrace)?;
            Ok(n)
        } else {
            // un-braced single argument (`\frac12` was normalised already; this handles `\sqrt x`)
            self.postfix()
        }
    }

    /// Function argument: `(x)`, `{x}`, or the following power-level factor (`\sin x`, `\sin 2x` = sin(2)·x).
    fn func_arg(&mut self) -> R<Expr> {
        match self.peek() {
            Some(Tok::LParen) | Some(Tok::LBrace) => as_expr(self.postfix()?),
            _ => as_expr(self.power()?),
        }
    }

    fn primary(&mut self) -> R<Node> {
        self.nested(Self::primary_at)
    }

    fn primary_at(&mut self) -> R<Node> {
        self.dl.check()?;
        let Some(t) = self.peek().cloned() else {
            return perr("unexpected end of input");
        };
        self.i += 1;
        match t {
            Tok::Num(s) => Ok(Node::Expr(num_from_str(&s)?)),
            Tok::Pi => Ok(Node::Expr(Expr::Pi)),
            Tok::Inf => Ok(Node::Expr(Expr::Inf)),
            Tok::EConst => Ok(Node::Expr(Expr::E)),
            Tok::Ident(name) => {
                let mut name = name;
                if self.eat(&Tok::Under) {
                    let sub = match self.peek().cloned() {
                        Some(Tok::LBrace) => {
                            self.i += 1;
                            let mut depth = 1;
                            let mut s = String::new();
                            while let Some(t) = self.peek().cloned() {
                                self.i += 1;
                                match t {
                                    Tok::LBrace => depth += 1,
                                    Tok::RBrace => {
                                        depth -= 1;
                                        if depth == 0 {
                                            break;
                                        }
                                    }
                                    _ => {}
                                }
                                s.push_str(&tok_text(&t));
                            }
                            s
                        }
                        Some(t) => {
                            self.i += 1;
                            tok_text(&t)
                        }
                        None => return perr("dangling subscript"),
                    };
                    name = format!("{name}_{sub}");
                }
                Ok(Node::Expr(Expr::Sym(name)))
            }
            Tok::Func(f) => {
                // \sin^2 x
                let mut pow = None;
                if self.eat(&Tok::Caret) {
                    pow = Some(self.exponent()?);
                }
                if f == Func::Log && self.eat(&Tok::Under) {
                    let base = as_expr(self.group()?)?;
                    let arg = self.func_arg()?;
                    let e = Expr::Log(Box::new(base), Box::new(arg));
                    return Ok(Node::Expr(apply_pow(e, pow)));
                }
                if f == Func::Sqrt {
                    return self.sqrt_rest();
                }
                let arg = self.func_arg()?;
                let e = Expr::Func(f, Box::new(arg));
                Ok(Node::Expr(apply_pow(e, pow)))
            }
            Tok::Cmd(c) => match c.as_str() {
                "frac" => {
                    let a = as_expr(self.group()?)?;
                    let b = as_expr(self.group()?)?;
                    Ok(Node::Expr(Expr::Div(Box::new(a), Box::new(b))))
                }
                "binom" => {
                    let a = as_expr(self.group()?)?;
                    let b = as_expr(self.group()?)?;
                    Ok(Node::Expr(Expr::Binom(Box::new(a), Box::new(b))))
                }
                "sqrt" => self.sqrt_rest(),
                "begin" => self.matrix(),
                "emptyset" => Ok(Node::Set(vec![])),
                other => perr(format!("unsupported command \\{other}")),
            },
            Tok::LBrace => {
                let n = self.top()?;
                self.expect(Tok::RBrace)?;
                Ok(n)
            }
            Tok::LSet => {
                if self.eat(&Tok::RSet) {
                    return Ok(Node::Set(vec![]));
                }
                let n = self.top()?;
                self.expect(Tok::RSet)?;
                Ok(Node::Set(match n {
                    Node::List(v) => v,
                    n => vec![n],
                }))
            }
            Tok::Bar => {
                let e = as_expr(self.additive()?)?;
                self.expect(Tok::Bar)?;
                Ok(Node::Expr(Expr::Func(Func::Abs, Box::new(e))))
            }
            Tok::LParen | Tok::LBrack => {
                let open_closed = t == Tok::LBrack;
                let n = self.top()?;
                let close_closed = if self.eat(&Tok::RParen) {
                    false
                } else if self.eat(&Tok::RBrack) {
                    true
                } else {
                    return perr("unbalanced bracket");
                };
                let items = match n {
                    Node::List(v) => v,
                    n => {
                        if !open_closed && !close_closed {
                            return Ok(n); // grouping parentheses
                        }
                        if open_closed && close_closed {
                            return Ok(n); // [x] used as brackets
                        }
                        return perr("half-open bracket around a single value");
                    }
                };
                if items.len() == 2 && (open_closed || close_closed) {
                    let mut it = items.into_iter();
                    let (a, b) = match (it.next(), it.next()) {
                        (Some(a), Some(b)) => (a, b),
                        _ => return perr("interval"),
                    };
                    return Ok(Node::Interval(
                        Box::new(a),
                        Box::new(b),
                        open_closed,
                        close_closed,
                    ));
                }
                Ok(Node::Tuple(items))
            }
            other => perr(format!("unexpected token {}", show(&other))),
        }
    }

    fn sqrt_rest(&mut self) -> R<Node> {
        if self.eat(&Tok::LBrack) {
            let n = as_expr(self.top()?)?;
            self.expect(Tok::RBrack)?;
            let a = as_expr(self.group()?)?;
            return Ok(Node::Expr(Expr::Root(Box::new(n), Box::new(a))));
        }
        let a = match self.peek() {
            Some(Tok::LParen) => as_expr(self.postfix()?)?,
            _ => as_expr(self.group()?)?,
        };
        Ok(Node::Expr(Expr::Func(Func::Sqrt, Box::new(a))))
    }

    fn env_name(&mut self) -> R<String> {
        self.expect(Tok::LBrace)?;
        let mut s = String::new();
        while let Some(t) = self.peek().cloned() {
            self.i += 1;
            if t == Tok::RBrace {
                return Ok(s);
            }
            s.push_str(&tok_text(&t));
        }
        perr("unterminated environment name")
    }

    fn matrix(&mut self) -> R<Node> {
        let env = self.env_name()?;
        // array column spec: \begin{array}{cc}
        if env == "array" && self.peek() == Some(&Tok::LBrace) {
            self.env_name()?;
        }
        let mut rows: Vec<Vec<Node>> = vec![vec![]];
        loop {
            self.dl.check()?;
            if let Some(Tok::Cmd(c)) = self.peek() {
                if c == "end" {
                    self.i += 1;
                    self.env_name()?;
                    break;
                }
            }
            if self.peek().is_none() {
                return perr("unterminated matrix");
            }
            let cell = self.relation()?;
            if let Some(r) = rows.last_mut() {
                r.push(cell);
            }
            if self.eat(&Tok::Amp) {
                continue;
            }
            if self.eat(&Tok::RowSep) {
                rows.push(vec![]);
            }
        }
        rows.retain(|r| !r.is_empty());
        if env.contains("matrix") || env == "array" {
            Ok(Node::Matrix(rows))
        } else {
            // cases / aligned: treat rows as a list of answers
            Ok(Node::List(rows.into_iter().flatten().collect()))
        }
    }
}

fn apply_pow(e: Expr, pow: Option<Expr>) -> Expr {
    match pow {
        Some(p) => Expr::Pow(Box::new(e), Box::new(p)),
        None => e,
    }
}

fn tok_text(t: &Tok) -> String {
    match t {
        Tok::Num(s) | Tok::Ident(s) => s.clone(),
        Tok::Cmd(s) => s.clone(),
        Tok::Func(f) => f.name().into(),
        Tok::EConst => "e".into(),
        Tok::Pi => "pi".into(),
        Tok::Comma => ",".into(),
        Tok::Plus => "+".into(),
        Tok::Minus => "-".into(),
        _ => String::new(),
    }
}

/// Parses a decimal literal (with optional exponent) to an exact rational, flagged as decimal when it
/// has a fractional part or exponent. Literals beyond [`MAX_DIGITS`] digits or a `10^±400` exponent are
/// refused with [`MathError::Limit`].
pub fn num_from_str(s: &str) -> R<Expr> {
    let (mant, exp) = match s.find(['e', 'E']) {
        Some(k) => (&s[..k], Some(&s[k + 1..])),
        None => (s, None),
    };
    let (ip, fp) = mant.split_once('.').unwrap_or((mant, ""));
    if ip.len() + fp.len() > MAX_DIGITS {
        return limit(format!("number with more than {MAX_DIGITS} digits"));
    }
    let digits = if ip.is_empty() && fp.is_empty() {
        "0".to_string()
    } else {
        format!("{ip}{fp}")
    };
    let bad = || MathError::Parse(format!("bad number {:?}", clip(s, 40)));
    let n = BigInt::from_str_radix(&digits, 10).map_err(|_| bad())?;
    let mut r = BigRational::new(n, BigInt::from(10u32).pow(fp.len() as u32));
    if let Some(e) = exp {
        let e: i64 = match e.parse() {
            Ok(e) => e,
            Err(_)
                if e.trim_start_matches(['+', '-'])
                    .bytes()
                    .all(|b| b.is_ascii_digit()) =>
            {
                return limit(format!("exponent too large in {:?}", clip(s, 40)))
            }
            Err(_) => return Err(bad()),
        };
        if e.unsigned_abs() > MAX_SCI_EXP {
            return limit(format!("exponent too large in {:?}", clip(s, 40)));
        }
        let p = BigRational::from_integer(BigInt::from(10u32).pow(e.unsigned_abs() as u32));
        r = if e >= 0 { r * p } else { r / p };
    }
    let dec = !fp.is_empty() || exp.is_some();
    if r.is_zero() {
        return Ok(int(0));
    }
    Ok(Expr::Num(r, dec))
}

fn matrix_entry(n: &Node) -> R<Expr> {
    match n {
        Node::Expr(e) => Ok(e.clone()),
        _ => perr("a matrix entry that is not an expression"),
    }
}

/// `a ± b` entry by entry (same shapes).
fn matrix_sum(a: &[Vec<Node>], b: &[Vec<Node>], minus: bool) -> R<Vec<Vec<Node>>> {
    if a.len() != b.len() || a.iter().zip(b).any(|(x, y)| x.len() != y.len()) {
        return perr("matrices of different shapes added");
    }
    a.iter()
        .zip(b)
        .map(|(ra, rb)| {
            ra.iter()
                .zip(rb)
                .map(|(x, y)| {
                    let y = matrix_entry(y)?;
                    let y = if minus { Expr::Neg(Box::new(y)) } else { y };
                    Ok(Node::Expr(Expr::Add(vec![matrix_entry(x)?, y])))
                })
                .collect()
        })
        .collect()
}

/// The matrix product `a·b` (columns of `a` = rows of `b`).
fn matrix_product(a: &[Vec<Node>], b: &[Vec<Node>]) -> R<Vec<Vec<Node>>> {
    let inner = b.len();
    let cols = b.first().map_or(0, Vec::len);
    if a.iter().any(|r| r.len() != inner)
        || b.iter().any(|r| r.len() != cols)
        || inner * cols > 4096
    {
        return perr("matrices of incompatible shapes multiplied");
    }
    a.iter()
        .map(|ra| {
            (0..cols)
                .map(|j| {
                    let terms = (0..inner)
                        .map(|k| {
                            Ok(Expr::Mul(vec![
                                matrix_entry(&ra[k])?,
                                matrix_entry(&b[k][j])?,
                            ]))
                        })
                        .collect::<R<Vec<Expr>>>()?;
                    Ok(Node::Expr(Expr::Add(terms)))
                })
                .collect()
        })
        .collect()
}
