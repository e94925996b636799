//! Presentation MathML → LaTeX, for `<math>` without a TeX annotation.
//!
//! The conversion runs on an explicit work stack (no recursion), so arbitrarily deep MathML (a fuzzer's
//! `<mrow>` × 50,000) cannot overflow the call stack; every node is expanded once.

use crate::html::{raw_text, short_text};
use ego_tree::NodeRef;
use scraper::node::Element;
use scraper::Node;

/// Named functions written as `\sin` etc. rather than `\mathrm{sin}`.
const FUNCTIONS: &[&str] = &[
    "sin", "cos", "tan", "log", "ln", "exp", "lim", "max", "min", "det", "sup", "inf",
];

/// Most nodes whose text is read to recognise an `<mover>` accent (an accent is one `<mo>`).
const ACCENT_NODES: usize = 8;

/// One unit of pending output.
enum Task<'a> {
    /// Convert a node.
    Node(NodeRef<'a, Node>),
    /// Literal LaTeX.
    Lit(&'static str),
    /// Computed LaTeX.
    Text(String),
}

/// Converts presentation MathML (without a TeX annotation) to LaTeX.
pub fn mathml_to_tex(node: NodeRef<'_, Node>) -> String {
    let mut s = String::new();
    let mut tasks = vec![Task::Node(node)];
    while let Some(t) = tasks.pop() {
        match t {
            Task::Lit(l) => s.push_str(l),
            Task::Text(x) => s.push_str(&x),
            Task::Node(n) => {
                let seq = expand(n, &mut s);
                tasks.extend(seq.into_iter().rev());
            }
        }
    }
    tidy_spaces(&s)
}

/// Collapses whitespace, keeping a space only between two alphanumerics (`\phi x`, not `\phi =`).
fn tidy_spaces(s: &str) -> String {
    let s = s.split_whitespace().collect::<Vec<_>>().join(" ");
    let chars: Vec<char> = s.chars().collect();
    let mut out = String::with_capacity(s.len());
    for (i, &c) in chars.iter().enumerate() {
        if c == ' ' {
            let prev = i
                .checked_sub(1)
                .and_then(|j| chars.get(j))
                .is_some_and(|p| p.is_alphanumeric());
            let next = chars.get(i + 1).is_some_and(|n| n.is_alphanumeric());
            if !(prev && next) {
                continue;
            }
        }
        out.push(c);
    }
    out
}

fn el_children<'a>(node: NodeRef<'a, Node>) -> Vec<NodeRef<'a, Node>> {
    node.children()
        .filter(|c| matches!(c.value(), Node::Element(_)))
        .collect()
}

/// `{node}` as tasks.
fn group<'a>(seq: &mut Vec<Task<'a>>, node: Option<NodeRef<'a, Node>>) {
    seq.push(Task::Lit("{"));
    seq.extend(node.map(Task::Node));
    seq.push(Task::Lit("}"));
}

/// Writes a leaf's LaTeX to `out`, or returns the tasks (in order) that convert an inner node.
fn expand<'a>(node: NodeRef<'a, Node>, out: &mut String) -> Vec<Task<'a>> {
    let el = match node.value() {
        Node::Element(e) => e,
        Node::Text(t) => {
            out.push_str(t.trim());
            return Vec::new();
        }
        _ => return Vec::new(),
    };
    let kids = el_children(node);
    let k = |i: usize| kids.get(i).copied();
    let mut seq = Vec::new();
    match el.name() {
        "annotation" | "annotation-xml" | "mphantom" | "none" | "mprescripts" => {}
        "semantics" => seq.extend(k(0).map(Task::Node)),
        "mi" | "mn" | "mo" | "ms" => token(node, el, out),
        "mtext" => {
            let mut t = String::new();
            raw_text(node, &mut t);
            if !t.trim().is_empty() {
                out.push_str(&format!("\\text{{{}}}", t.trim()));
            }
        }
        "mspace" => out.push(' '),
        "mfrac" => {
            seq.push(Task::Lit("\\frac"));
            group(&mut seq, k(0));
            group(&mut seq, k(1));
        }
        "msqrt" => {
            seq.push(Task::Lit("\\sqrt{"));
            seq.extend(kids.iter().map(|c| Task::Node(*c)));
            seq.push(Task::Lit("}"));
        }
        "mroot" => {
            seq.push(Task::Lit("\\sqrt["));
            seq.extend(k(1).map(Task::Node));
            seq.push(Task::Lit("]"));
            group(&mut seq, k(0));
        }
        "msup" => scripts(&mut seq, &kids, &["^"]),
        "msub" | "munder" => scripts(&mut seq, &kids, &["_"]),
        "msubsup" | "munderover" => scripts(&mut seq, &kids, &["_", "^"]),
        "mover" => mover(&mut seq, &kids),
        "mfenced" => fenced(&mut seq, el, &kids),
        "mtable" => table(&mut seq, &kids),
        _ => seq.extend(node.children().map(Task::Node)),
    }
    seq
}

/// `{base}op1{a}op2{b}`: sub/superscripts and under/over scripts.
fn scripts<'a>(seq: &mut Vec<Task<'a>>, kids: &[NodeRef<'a, Node>], ops: &[&'static str]) {
    group(seq, kids.first().copied());
    for (i, op) in ops.iter().enumerate() {
        seq.push(Task::Lit(op));
        group(seq, kids.get(i + 1).copied());
    }
}

fn mover<'a>(seq: &mut Vec<Task<'a>>, kids: &[NodeRef<'a, Node>]) {
    let accent = kids
        .get(1)
        .and_then(|a| short_text(*a, ACCENT_NODES))
        .unwrap_or_default();
    let cmd = match accent.trim() {
        "^" | "\u{302}" | "ˆ" => Some("\\hat"),
        "¯" | "\u{304}" | "‾" | "_" | "\u{305}" => Some("\\bar"),
        "→" | "\u{20d7}" => Some("\\vec"),
        "~" | "˜" | "\u{303}" => Some("\\tilde"),
        "." | "˙" | "\u{307}" => Some("\\dot"),
        _ => None,
    };
    match cmd {
        Some(c) => {
            seq.push(Task::Lit(c));
            group(seq, kids.first().copied());
        }
        None => scripts(seq, kids, &["^"]),
    }
}

fn fenced<'a>(seq: &mut Vec<Task<'a>>, el: &Element, kids: &[NodeRef<'a, Node>]) {
    let open = el.attr("open").unwrap_or("(");
    let close = el.attr("close").unwrap_or(")");
    seq.push(Task::Text(format!("\\left{open}")));
    for (i, c) in kids.iter().enumerate() {
        if i > 0 {
            seq.push(Task::Lit(","));
        }
        seq.push(Task::Node(*c));
    }
    seq.push(Task::Text(format!("\\right{close}")));
}

fn table<'a>(seq: &mut Vec<Task<'a>>, rows: &[NodeRef<'a, Node>]) {
    seq.push(Task::Lit("\\begin{matrix}"));
    for (i, row) in rows.iter().enumerate() {
        if i > 0 {
            seq.push(Task::Lit("\\\\"));
        }
        for (j, cell) in el_children(*row).into_iter().enumerate() {
            if j > 0 {
                seq.push(Task::Lit("&"));
            }
            seq.push(Task::Node(cell));
        }
    }
    seq.push(Task::Lit("\\end{matrix}"));
}

/// `<mi>`, `<mn>`, `<mo>`, `<ms>`: symbols to commands, multi-letter identifiers to `\mathrm`/`\sin`.
fn token(node: NodeRef<'_, Node>, el: &Element, out: &mut String) {
    let mut t = String::new();
    raw_text(node, &mut t);
    let t = t.trim();
    let mut chars = t.chars();
    let single = chars.next().filter(|_| chars.next().is_none());
    if let Some(cmd) = single.and_then(symbol) {
        out.push_str(cmd);
        out.push(' ');
    } else if el.name() == "mi"
        && t.chars().count() > 1
        && t.chars().all(|c| c.is_ascii_alphabetic())
    {
        if FUNCTIONS.contains(&t) {
            out.push('\\');
            out.push_str(t);
            out.push(' ');
        } else {
            out.push_str(&format!("\\mathrm{{{t}}}"));
        }
    } else {
        for c in t.chars() {
            match symbol(c) {
                Some(cmd) => {
                    out.push_str(cmd);
                    out.push(' ');
                }
                None => out.push(c),
            }
        }
    }
}

fn symbol(c: char) -> Option<&'static str> {
    Some(match c {
        'α' => "\\alpha",
        'β' => "\\beta",
        'γ' => "\\gamma",
        'δ' => "\\delta",
        'ε' | 'ϵ' => "\\epsilon",
        'ζ' => "\\zeta",
        'η' => "\\eta",
        'θ' => "\\theta",
        'ι' => "\\iota",
        'κ' => "\\kappa",
        'λ' => "\\lambda",
        'μ' => "\\mu",
        'ν' => "\\nu",
        'ξ' => "\\xi",
        'π' => "\\pi",
        'ρ' => "\\rho",
        'σ' => "\\sigma",
        'τ' => "\\tau",
        'φ' | 'ϕ' => "\\phi",
        'χ' => "\\chi",
        'ψ' => "\\psi",
        'ω' => "\\omega",
        'Γ' => "\\Gamma",
        'Δ' => "\\Delta",
        'Θ' => "\\Theta",
        'Λ' => "\\Lambda",
        'Π' => "\\Pi",
        'Σ' => "\\Sigma",
        'Φ' => "\\Phi",
        'Ψ' => "\\Psi",
        'Ω' => "\\Omega",
        '∑' => "\\sum",
        '∏' => "\\prod",
        '∫' => "\\int",
        '∮' => "\\oint",
        '∞' => "\\infty",
        '≤' => "\\leq",
        '≥' => "\\geq",
        '≠' => "\\neq",
        '≈' => "\\approx",
        '≡' => "\\equiv",
        '±' => "\\pm",
        '∓' => "\\mp",
        '×' => "\\times",
        '÷' => "\\div",
        '·' | '⋅' => "\\cdot",
        '→' => "\\to",
        '←' => "\\leftarrow",
        '⇒' => "\\Rightarrow",
        '⇔' => "\\Leftrightarrow",
        '∈' => "\\in",
        '∉' => "\\notin",
        '⊂' => "\\subset",
        '⊆' => "\\subseteq",
        '∪' => "\\cup",
        '∩' => "\\cap",
        '∅' => "\\emptyset",
        '∀' => "\\forall",
        '∃' => "\\exists",
        '∂' => "\\partial",
        '∇' => "\\nabla",
        '√' => "\\sqrt",
        '−' => "-",
        '\u{2061}' | '\u{2062}' | '\u{2063}' => "",
        '…' | '⋯' => "\\cdots",
        _ => return None,
    })
}
