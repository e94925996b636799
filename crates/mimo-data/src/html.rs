//! HTML → text with math and code preserved.
//!
//! Parsing is html5ever via `scraper`. The hand-written part is the math/code pass, applied while walking
//! the tree, *before* boilerplate pruning sees the text:
//! - MathJax `<script type="math/tex">` (and `; mode=display`) → `$…$` / `$$…$$`; MathJax's rendered
//!   copies (`.MathJax`, `.MathJax_Preview`, `mjx-container` without MathML) are dropped.
//! - KaTeX (`.katex`, `.katex-display`) and MathML `<math>` with a TeX `<annotation>` → that TeX;
//!   MathML without annotation is converted to LaTeX (`mfrac`, `msup`, `msqrt`, … and common symbols).
//! - Wikipedia-style `.mwe-math-element` and formula `<img alt>` (LaTeX-looking alt or math-ish class/src).
//! - `\(…\)` → `$…$` and `\[…\]` → `$$…$$` in running text; `$…$`/`$$…$$` are kept as they are.
//! - `<pre>` → fenced block (language from `language-*`/`lang-*`/`highlight-*` classes) with whitespace kept;
//!   inline `<code>` → backticks (fenced when it spans lines).
//!
//! Main-content extraction: `<head>`, scripts, styles, forms, `nav`/`aside`/`footer`, site `header`s,
//! ARIA landmarks, hidden elements and elements whose class/id names navigation, sidebars, cookie banners,
//! ads, share bars etc. are removed; list/div/table blocks whose text is mostly link text are pruned.

use ego_tree::NodeRef;
use scraper::node::Element;
use scraper::{Html, Node};

/// Extracts the main text of an HTML document, math as `$…$` LaTeX and code in fenced blocks.
pub fn html_to_text(html: &str) -> String {
    let doc = Html::parse_document(html);
    let mut r = Renderer::default();
    r.walk(doc.tree.root());
    let out = finish(&r.out);
    convert_tex_delimiters(&out)
}

#[derive(Default)]
struct Renderer {
    out: String,
    pending_space: bool,
    in_link: usize,
    in_main: usize,
    text_chars: usize,
    link_chars: usize,
    list_stack: Vec<Option<usize>>,
    cell_index: Vec<usize>,
}

const SKIP_TAGS: &[&str] = &[
    "head", "script", "style", "noscript", "template", "nav", "aside", "form", "button", "select",
    "option", "iframe", "svg", "canvas", "object", "embed", "input", "textarea", "footer", "menu",
    "dialog", "link", "meta",
];

const BLOCK_TAGS: &[&str] = &[
    "p",
    "div",
    "section",
    "article",
    "main",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "ul",
    "ol",
    "li",
    "dl",
    "dt",
    "dd",
    "table",
    "tr",
    "blockquote",
    "hr",
    "figure",
    "figcaption",
    "header",
    "address",
    "details",
    "summary",
    "center",
    "caption",
    "tbody",
    "thead",
    "tfoot",
    "body",
];

/// Tokens in class/id names that mark boilerplate.
const BOILER_TOKENS: &[&str] = &[
    "nav",
    "navbar",
    "navigation",
    "menu",
    "footer",
    "sidebar",
    "sphinxsidebar",
    "breadcrumb",
    "breadcrumbs",
    "cookie",
    "cookies",
    "advert",
    "advertisement",
    "ads",
    "ad",
    "adsbygoogle",
    "banner",
    "social",
    "share",
    "sharing",
    "related",
    "popup",
    "modal",
    "newsletter",
    "subscribe",
    "promo",
    "sponsored",
    "masthead",
    "skip",
    "pagination",
    "pager",
    "widget",
    "headerlink",
    "toolbar",
    "linenos",
    "printfooter",
    "catlinks",
    "mw-jump-link",
];

const LANDMARK_ROLES: &[&str] = &[
    "navigation",
    "banner",
    "contentinfo",
    "complementary",
    "search",
    "menu",
    "menubar",
    "dialog",
    "alert",
];

fn classes_and_id(el: &Element) -> impl Iterator<Item = &str> {
    el.attr("class")
        .unwrap_or("")
        .split_whitespace()
        .chain(el.attr("id"))
}

fn has_class(el: &Element, c: &str) -> bool {
    el.attr("class")
        .is_some_and(|s| s.split_whitespace().any(|x| x == c))
}

fn is_boilerplate(el: &Element) -> bool {
    if let Some(role) = el.attr("role") {
        if LANDMARK_ROLES.contains(&role.trim().to_ascii_lowercase().as_str()) {
            return true;
        }
    }
    if el.attr("hidden").is_some() || el.attr("aria-hidden").is_some_and(|v| v.trim() == "true") {
        return true;
    }
    if let Some(style) = el.attr("style") {
        let s: String = style
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect::<String>()
            .to_ascii_lowercase();
        if s.contains("display:none") || s.contains("visibility:hidden") {
            return true;
        }
    }
    if matches!(el.name(), "html" | "body" | "main" | "article") {
        return false;
    }
    classes_and_id(el).any(|name| {
        let lower = name.to_ascii_lowercase();
        BOILER_TOKENS.contains(&lower.as_str())
            || lower
                .split(['-', '_'])
                .any(|part| BOILER_TOKENS.contains(&part) && part.len() > 2)
    })
}

impl Renderer {
    fn push_str(&mut self, s: &str) {
        for c in s.chars() {
            if c.is_whitespace() {
                self.pending_space = true;
                continue;
            }
            if self.pending_space {
                if !self.out.is_empty() && !self.out.ends_with([' ', '\n']) {
                    self.out.push(' ');
                }
                self.pending_space = false;
            }
            self.out.push(c);
            self.text_chars += 1;
            if self.in_link > 0 {
                self.link_chars += 1;
            }
        }
    }

    /// Appends text verbatim (math, code), counted as content.
    fn push_raw(&mut self, s: &str) {
        if self.pending_space && !self.out.is_empty() && !self.out.ends_with([' ', '\n']) {
            self.out.push(' ');
        }
        self.pending_space = false;
        self.out.push_str(s);
        self.text_chars += s.chars().filter(|c| !c.is_whitespace()).count();
    }

    fn newline(&mut self, n: usize) {
        self.pending_space = false;
        while self.out.ends_with(' ') {
            self.out.pop();
        }
        if self.out.is_empty() {
            return;
        }
        let have = self.out.len() - self.out.trim_end_matches('\n').len();
        for _ in have..n {
            self.out.push('\n');
        }
    }

    fn walk(&mut self, node: NodeRef<'_, Node>) {
        match node.value() {
            Node::Text(t) => self.push_str(t),
            Node::Element(el) => self.element(node, el),
            Node::Document | Node::Fragment => {
                for c in node.children() {
                    self.walk(c);
                }
            }
            _ => {}
        }
    }

    fn element(&mut self, node: NodeRef<'_, Node>, el: &Element) {
        let name = el.name();
        // Math first: some math carriers are hidden or are scripts.
        if self.math(node, el) {
            return;
        }
        if SKIP_TAGS.contains(&name) || name == "title" {
            return;
        }
        if name == "header" && self.in_main == 0 {
            return;
        }
        if is_boilerplate(el) {
            return;
        }
        match name {
            "pre" => return self.pre(node, el),
            "code" | "kbd" | "samp" | "tt" => return self.inline_code(node),
            "br" => {
                self.newline(1);
                return;
            }
            "img" => {
                return;
            }
            _ => {}
        }
        let block = BLOCK_TAGS.contains(&name);
        let para = matches!(
            name,
            "p" | "h1"
                | "h2"
                | "h3"
                | "h4"
                | "h5"
                | "h6"
                | "ul"
                | "ol"
                | "dl"
                | "table"
                | "blockquote"
                | "pre"
                | "figure"
                | "section"
                | "article"
                | "main"
                | "header"
                | "details"
        );
        if block {
            self.newline(if para { 2 } else { 1 });
        }
        let start = (self.out.len(), self.text_chars, self.link_chars);
        let main = matches!(name, "main" | "article") || el.attr("role") == Some("main");
        if main {
            self.in_main += 1;
        }
        match name {
            "a" => self.in_link += 1,
            "ul" => self.list_stack.push(None),
            "ol" => self.list_stack.push(Some(
                el.attr("start")
                    .and_then(|s| s.trim().parse().ok())
                    .unwrap_or(1),
            )),
            "li" => {
                let marker = match self.list_stack.last_mut() {
                    Some(Some(n)) => {
                        *n += 1;
                        format!("{}. ", *n - 1)
                    }
                    _ => "- ".to_string(),
                };
                self.out.push_str(&marker);
            }
            "tr" => self.cell_index.push(0),
            "td" | "th" => {
                if let Some(ci) = self.cell_index.last_mut() {
                    if *ci > 0 {
                        self.out.push_str(" | ");
                    }
                    *ci += 1;
                }
            }
            _ => {}
        }
        for c in node.children() {
            self.walk(c);
        }
        match name {
            "a" => self.in_link -= 1,
            "ul" | "ol" => {
                self.list_stack.pop();
            }
            "tr" => {
                self.cell_index.pop();
            }
            _ => {}
        }
        if main {
            self.in_main -= 1;
        }
        // Link-density pruning of navigation-like blocks.
        if matches!(name, "ul" | "ol" | "div" | "table" | "section" | "dl") {
            let text = self.text_chars - start.1;
            let links = self.link_chars - start.2;
            if text > 0 && links * 10 > text * 6 {
                self.out.truncate(start.0);
                self.text_chars = start.1;
                self.link_chars = start.2;
            }
        }
        if block {
            self.newline(if para { 2 } else { 1 });
        }
    }

    fn pre(&mut self, node: NodeRef<'_, Node>, el: &Element) {
        let mut code = String::new();
        raw_text(node, &mut code);
        let code = code.trim_end().trim_start_matches('\n');
        if code.trim().is_empty() {
            return;
        }
        let mut lang = code_lang(el);
        if lang.is_empty() {
            for c in node.children() {
                if let Node::Element(ce) = c.value() {
                    lang = code_lang(ce);
                    if !lang.is_empty() {
                        break;
                    }
                }
            }
        }
        if lang.is_empty() {
            // Sphinx: <div class="highlight-python3"><div class="highlight"><pre>.
            let mut p = node.parent();
            for _ in 0..3 {
                let Some(pn) = p else { break };
                if let Node::Element(pe) = pn.value() {
                    lang = code_lang(pe);
                    if !lang.is_empty() {
                        break;
                    }
                }
                p = pn.parent();
            }
        }
        let fence = if code.contains("```") { "````" } else { "```" };
        self.newline(2);
        self.push_raw(&format!("{fence}{lang}\n{code}\n{fence}"));
        self.newline(2);
    }

    fn inline_code(&mut self, node: NodeRef<'_, Node>) {
        let mut code = String::new();
        raw_text(node, &mut code);
        if code.trim().is_empty() {
            return;
        }
        if code.trim_matches('\n').contains('\n') {
            self.newline(2);
            self.push_raw(&format!("```\n{}\n```", code.trim_matches('\n').trim_end()));
            self.newline(2);
        } else {
            let c = code.split_whitespace().collect::<Vec<_>>().join(" ");
            self.push_raw(&format!("`{c}`"));
        }
    }

    fn emit_math(&mut self, tex: &str, display: bool) {
        let tex = clean_tex(tex);
        if tex.is_empty() {
            return;
        }
        if display {
            self.newline(1);
            self.push_raw(&format!("$${tex}$$"));
            self.newline(1);
        } else {
            self.push_raw(&format!("${tex}$"));
        }
    }

    /// Handles a math carrier; returns true when the element was consumed.
    fn math(&mut self, node: NodeRef<'_, Node>, el: &Element) -> bool {
        let name = el.name();
        if name == "script" {
            let ty = el.attr("type").unwrap_or("").to_ascii_lowercase();
            if ty.starts_with("math/tex") || ty.starts_with("math/asciimath") {
                let mut tex = String::new();
                raw_text(node, &mut tex);
                self.emit_math(&tex, ty.contains("mode=display"));
                return true;
            }
            return false;
        }
        if has_class(el, "MathJax_Preview")
            || has_class(el, "MathJax")
            || has_class(el, "MathJax_Display")
            || has_class(el, "MathJax_SVG")
            || has_class(el, "MathJax_SVG_Display")
            || has_class(el, "MathJax_CHTML")
            || has_class(el, "katex-html")
        {
            return true; // rendered copy of math that also exists as a script/annotation
        }
        if has_class(el, "katex")
            || has_class(el, "katex-display")
            || has_class(el, "mwe-math-element")
            || name == "mjx-container"
        {
            let display = has_class(el, "katex-display")
                || el.attr("display") == Some("true")
                || descendants_el(node).any(|(_, e)| {
                    e.attr("display") == Some("block")
                        || has_class(e, "mwe-math-fallback-image-display")
                });
            if let Some(tex) = find_annotation(node) {
                self.emit_math(&tex, display);
            } else if let Some((mn, _)) = descendants_el(node).find(|(_, e)| e.name() == "math") {
                let tex = mathml_to_tex(mn);
                self.emit_math(&tex, display);
            } else if let Some(alt) = descendants_el(node)
                .find_map(|(_, e)| (e.name() == "img").then(|| e.attr("alt")).flatten())
            {
                self.emit_math(alt, display);
            } else if name == "mjx-container" {
                // MathJax 3 output without assistive MathML: the source is lost, drop the glyph soup.
            } else {
                let mut t = String::new();
                raw_text(node, &mut t);
                self.push_str(&t);
            }
            return true;
        }
        if name == "math" {
            let display = el.attr("display") == Some("block") || el.attr("mode") == Some("display");
            let tex = find_annotation(node).unwrap_or_else(|| mathml_to_tex(node));
            self.emit_math(&tex, display);
            return true;
        }
        if name == "img" {
            if let Some(alt) = el.attr("alt") {
                if is_formula_img(el, alt) {
                    let display = el.attr("class").is_some_and(|c| c.contains("display"));
                    self.emit_math(alt, display);
                    return true;
                }
            }
        }
        false
    }
}

fn descendants_el<'a>(
    node: NodeRef<'a, Node>,
) -> impl Iterator<Item = (NodeRef<'a, Node>, &'a Element)> {
    node.descendants().filter_map(|n| match n.value() {
        Node::Element(e) => Some((n, e)),
        _ => None,
    })
}

fn find_annotation(node: NodeRef<'_, Node>) -> Option<String> {
    descendants_el(node).find_map(|(n, e)| {
        if e.name() != "annotation" {
            return None;
        }
        let enc = e.attr("encoding").unwrap_or("").to_ascii_lowercase();
        if enc.contains("tex") {
            let mut s = String::new();
            raw_text(n, &mut s);
            Some(s)
        } else {
            None
        }
    })
}

fn is_formula_img(el: &Element, alt: &str) -> bool {
    let alt = alt.trim();
    if alt.is_empty() {
        return false;
    }
    let class = el.attr("class").unwrap_or("").to_ascii_lowercase();
    let src = el.attr("src").unwrap_or("").to_ascii_lowercase();
    let marked = ["latex", "tex", "math", "equation", "formula"]
        .iter()
        .any(|k| class.contains(k))
        || [
            "latex", "mathtex", "codecogs", "/math/", "mimetex", "wp-latex", "tex?", "tex.cgi",
        ]
        .iter()
        .any(|k| src.contains(k));
    let texy = alt.contains('\\') || (alt.starts_with('$') && alt.ends_with('$') && alt.len() > 2);
    marked || texy
}

/// Trims, unwraps `{\displaystyle …}` and existing `$`/`\(` delimiters, collapses whitespace.
fn clean_tex(tex: &str) -> String {
    let mut t = tex.trim();
    for (a, b) in [("$$", "$$"), ("\\[", "\\]"), ("\\(", "\\)"), ("$", "$")] {
        if t.len() >= a.len() + b.len() && t.starts_with(a) && t.ends_with(b) {
            t = t[a.len()..t.len() - b.len()].trim();
        }
    }
    for pre in ["{\\displaystyle", "{\\textstyle"] {
        if t.starts_with(pre) && t.ends_with('}') {
            t = t[pre.len()..t.len() - 1].trim();
        }
    }
    t.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn code_lang(el: &Element) -> String {
    for c in el.attr("class").unwrap_or("").split_whitespace() {
        for pre in ["language-", "lang-", "highlight-", "sourceCode-", "brush:"] {
            if let Some(l) = c.strip_prefix(pre) {
                let l = l.trim_end_matches(';');
                if !l.is_empty()
                    && l.chars()
                        .all(|ch| ch.is_ascii_alphanumeric() || "+#-_".contains(ch))
                {
                    return match l {
                        "python3" | "py" | "pycon" => "python".into(),
                        "default" | "none" | "text" => String::new(),
                        _ => l.to_string(),
                    };
                }
            }
        }
    }
    String::new()
}

/// Text of a subtree with whitespace kept; `<br>` becomes a newline; line-number gutters are skipped.
fn raw_text(node: NodeRef<'_, Node>, out: &mut String) {
    for c in node.children() {
        match c.value() {
            Node::Text(t) => out.push_str(t),
            Node::Element(e) => {
                if e.name() == "br" {
                    out.push('\n');
                } else if !(has_class(e, "linenos")
                    || has_class(e, "lineno")
                    || e.name() == "script"
                    || e.name() == "style")
                {
                    raw_text(c, out);
                }
            }
            _ => {}
        }
    }
}

/// Converts presentation MathML (without a TeX annotation) to LaTeX.
pub fn mathml_to_tex(node: NodeRef<'_, Node>) -> String {
    let mut s = String::new();
    ml(node, &mut s);
    let s = s.split_whitespace().collect::<Vec<_>>().join(" ");
    // Keep a space only where it separates two alphanumerics (`\phi x`), not in `\phi =`.
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

fn ml_group(node: Option<NodeRef<'_, Node>>, out: &mut String) {
    out.push('{');
    if let Some(n) = node {
        ml(n, out);
    }
    out.push('}');
}

fn ml(node: NodeRef<'_, Node>, out: &mut String) {
    let el = match node.value() {
        Node::Element(e) => e,
        Node::Text(t) => {
            out.push_str(t.trim());
            return;
        }
        _ => return,
    };
    let kids = el_children(node);
    let k = |i: usize| kids.get(i).copied();
    match el.name() {
        "annotation" | "annotation-xml" | "mphantom" | "none" | "mprescripts" => {}
        "semantics" => {
            if let Some(first) = k(0) {
                ml(first, out);
            }
        }
        "mi" | "mn" | "mo" | "ms" => {
            let mut t = String::new();
            raw_text(node, &mut t);
            let t = t.trim();
            let mut chars = t.chars();
            let single = chars.next().filter(|_| chars.next().is_none());
            match single.and_then(symbol) {
                Some(cmd) => {
                    out.push_str(cmd);
                    out.push(' ');
                }
                None if el.name() == "mi"
                    && t.chars().count() > 1
                    && t.chars().all(|c| c.is_ascii_alphabetic()) =>
                {
                    if [
                        "sin", "cos", "tan", "log", "ln", "exp", "lim", "max", "min", "det", "sup",
                        "inf",
                    ]
                    .contains(&t)
                    {
                        out.push('\\');
                        out.push_str(t);
                        out.push(' ');
                    } else {
                        out.push_str(&format!("\\mathrm{{{t}}}"));
                    }
                }
                None => {
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
        }
        "mtext" => {
            let mut t = String::new();
            raw_text(node, &mut t);
            if !t.trim().is_empty() {
                out.push_str(&format!("\\text{{{}}}", t.trim()));
            }
        }
        "mspace" => out.push(' '),
        "mfrac" => {
            out.push_str("\\frac");
            ml_group(k(0), out);
            ml_group(k(1), out);
        }
        "msqrt" => {
            out.push_str("\\sqrt{");
            for c in &kids {
                ml(*c, out);
            }
            out.push('}');
        }
        "mroot" => {
            out.push_str("\\sqrt[");
            if let Some(i) = k(1) {
                ml(i, out);
            }
            out.push(']');
            ml_group(k(0), out);
        }
        "msup" => {
            ml_group(k(0), out);
            out.push('^');
            ml_group(k(1), out);
        }
        "msub" => {
            ml_group(k(0), out);
            out.push('_');
            ml_group(k(1), out);
        }
        "msubsup" => {
            ml_group(k(0), out);
            out.push('_');
            ml_group(k(1), out);
            out.push('^');
            ml_group(k(2), out);
        }
        "munder" => {
            ml_group(k(0), out);
            out.push('_');
            ml_group(k(1), out);
        }
        "mover" => {
            let mut accent = String::new();
            if let Some(a) = k(1) {
                raw_text(a, &mut accent);
            }
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
                    out.push_str(c);
                    ml_group(k(0), out);
                }
                None => {
                    ml_group(k(0), out);
                    out.push('^');
                    ml_group(k(1), out);
                }
            }
        }
        "munderover" => {
            ml_group(k(0), out);
            out.push('_');
            ml_group(k(1), out);
            out.push('^');
            ml_group(k(2), out);
        }
        "mfenced" => {
            let open = el.attr("open").unwrap_or("(");
            let close = el.attr("close").unwrap_or(")");
            out.push_str(&format!("\\left{open}"));
            for (i, c) in kids.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                ml(*c, out);
            }
            out.push_str(&format!("\\right{close}"));
        }
        "mtable" => {
            out.push_str("\\begin{matrix}");
            for (i, row) in kids.iter().enumerate() {
                if i > 0 {
                    out.push_str("\\\\");
                }
                for (j, cell) in el_children(*row).iter().enumerate() {
                    if j > 0 {
                        out.push('&');
                    }
                    ml(*cell, out);
                }
            }
            out.push_str("\\end{matrix}");
        }
        _ => {
            for c in node.children() {
                ml(c, out);
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

/// Collapses runs of blank lines and trims line ends.
fn finish(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut blank = 0;
    let mut in_fence = false;
    for line in s.lines() {
        let l = if in_fence {
            line.trim_end()
        } else {
            line.trim()
        };
        if l.starts_with("```") {
            in_fence = !in_fence;
        }
        if l.is_empty() && !in_fence {
            blank += 1;
            continue;
        }
        if !out.is_empty() {
            out.push_str(if blank > 0 { "\n\n" } else { "\n" });
        }
        blank = 0;
        out.push_str(l);
    }
    out
}

/// Rewrites `\(…\)` to `$…$` and `\[…\]` to `$$…$$` outside fenced code blocks.
pub fn convert_tex_delimiters(s: &str) -> String {
    if !s.contains("\\(") && !s.contains("\\[") {
        return s.to_string();
    }
    let out = s;
    // Spans may cover several lines; fenced code is copied untouched.
    let mut res = String::with_capacity(out.len());
    let mut rest = out;
    let mut fence_open = false;
    while !rest.is_empty() {
        // Find next fence line start.
        let next_fence = find_fence(rest);
        let (seg, tail) = rest.split_at(next_fence.unwrap_or(rest.len()));
        if fence_open {
            res.push_str(seg);
        } else {
            res.push_str(&replace_delims(seg));
        }
        if next_fence.is_some() {
            let end = tail.find('\n').map_or(tail.len(), |e| e + 1);
            res.push_str(&tail[..end]);
            rest = &tail[end..];
            fence_open = !fence_open;
        } else {
            rest = "";
        }
    }
    res
}

fn find_fence(s: &str) -> Option<usize> {
    let mut pos = 0;
    for line in s.split_inclusive('\n') {
        if line.trim_start().starts_with("```") {
            return Some(pos);
        }
        pos += line.len();
    }
    None
}

fn replace_delims(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    let b = s.as_bytes();
    while i < b.len() {
        if b[i] == b'\\' && i + 1 < b.len() && (b[i + 1] == b'(' || b[i + 1] == b'[') {
            let (close, delim) = if b[i + 1] == b'(' {
                ("\\)", "$")
            } else {
                ("\\]", "$$")
            };
            if let Some(end) = s[i + 2..].find(close) {
                let inner = &s[i + 2..i + 2 + end];
                if inner.len() <= 4000 {
                    out.push_str(delim);
                    out.push_str(inner.trim());
                    out.push_str(delim);
                    i = i + 2 + end + 2;
                    continue;
                }
            }
        }
        let ch = s[i..].chars().next().unwrap_or(' ');
        out.push(ch);
        i += ch.len_utf8().max(1);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delimiters_outside_code_only() {
        let s = "a \\(x+1\\) b \\[y\\]\n```\nkeep \\(this\\)\n```\nc \\(z\\)";
        assert_eq!(
            convert_tex_delimiters(s),
            "a $x+1$ b $$y$$\n```\nkeep \\(this\\)\n```\nc $z$"
        );
    }

    #[test]
    fn clean_tex_unwraps() {
        assert_eq!(clean_tex("  {\\displaystyle  x^2 }"), "x^2");
        assert_eq!(clean_tex("$$a$$"), "a");
        assert_eq!(clean_tex("\\(b\\)"), "b");
    }

    #[test]
    fn boilerplate_classes() {
        let t = html_to_text("<div class='site-nav'>Menu stuff</div><p>Body text.</p><div id='comments'>A comment.</div>");
        assert_eq!(t, "Body text.\n\nA comment.");
    }
}
