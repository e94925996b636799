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

use ego_tree::iter::Edge;
use ego_tree::NodeRef;
use scraper::node::Element;
use scraper::{Html, Node};

pub use crate::mathml::mathml_to_tex;

/// Nesting bound (the one browsers use for their DOM). Before parsing, tags that would open elements
/// deeper than this are dropped and their text kept (`<pre>`, `<code>` and math carriers get a few extra
/// levels); so are formatting elements past 32 active ones, which html5ever would otherwise rebuild at
/// every block. This keeps html5ever's work linear (its scope checks scan the open-element stack). The
/// walker then flattens whatever still lies deeper (elements html5ever adds itself): their text, math
/// and code are kept, without block breaks, list markers, table separators or link-density pruning.
/// Every walk uses an explicit stack, so no depth can overflow the call stack.
pub const MAX_STRUCTURE_DEPTH: usize = 512;

/// Text of a document with the figures the extract stage reports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HtmlText {
    /// The extracted text.
    pub text: String,
    /// Deepest element nesting in the parsed tree (the document node is depth 0).
    pub max_depth: usize,
    /// Elements past [`MAX_STRUCTURE_DEPTH`] whose structure the walker dropped (their text is kept).
    pub flattened: usize,
    /// Tags removed before parsing for nesting past the bounds (their text is kept).
    pub dropped_tags: usize,
}

/// Extracts the main text of an HTML document, math as `$…$` LaTeX and code in fenced blocks.
pub fn html_to_text(html: &str) -> String {
    extract_text(html).text
}

/// [`html_to_text`] with nesting figures.
pub fn extract_text(html: &str) -> HtmlText {
    let limited = crate::nesting::limit(html);
    let doc = Html::parse_document(&limited.html);
    let mut r = Renderer::default();
    r.run(doc.tree.root());
    let out = finish(&r.out);
    HtmlText {
        text: convert_tex_delimiters(&out),
        max_depth: r.max_depth,
        flattened: r.flattened,
        dropped_tags: limited.dropped,
    }
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
    max_depth: usize,
    flattened: usize,
}

/// One entry of the walker's explicit stack.
enum Step<'a> {
    /// Visit a node at a depth.
    Enter(NodeRef<'a, Node>, usize),
    /// All children of an element are done.
    Leave(Open<'a>),
}

/// What the walker does with an element.
enum Visit<'a> {
    /// Handled whole (math, code, skipped): children are not walked.
    Consumed,
    /// Past the depth bound: children are walked as plain text.
    Flat,
    /// Children are walked, then [`Renderer::leave`] runs.
    Open(Open<'a>),
}

/// State of an open element needed once its children are done.
struct Open<'a> {
    name: &'a str,
    block: bool,
    para: bool,
    main: bool,
    /// (output length, text chars, link chars) when the element was entered.
    start: (usize, usize, usize),
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

/// Blocks separated by a blank line (the others by a line break).
const PARA_TAGS: &[&str] = &[
    "p",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "ul",
    "ol",
    "dl",
    "table",
    "blockquote",
    "pre",
    "figure",
    "section",
    "article",
    "main",
    "header",
    "details",
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

    /// Walks the tree with an explicit stack (no recursion, so any nesting depth is safe).
    fn run(&mut self, root: NodeRef<'_, Node>) {
        let mut stack = vec![Step::Enter(root, 0)];
        while let Some(step) = stack.pop() {
            match step {
                Step::Leave(open) => self.leave(open),
                Step::Enter(node, depth) => self.enter(node, depth, &mut stack),
            }
        }
    }

    fn enter<'a>(&mut self, node: NodeRef<'a, Node>, depth: usize, stack: &mut Vec<Step<'a>>) {
        let descend = match node.value() {
            Node::Text(t) => {
                self.push_str(t);
                false
            }
            Node::Document | Node::Fragment => true,
            Node::Element(el) => {
                self.max_depth = self.max_depth.max(depth);
                match self.open(node, el, depth) {
                    Visit::Consumed => false,
                    Visit::Flat => {
                        self.flattened += 1;
                        true
                    }
                    Visit::Open(o) => {
                        stack.push(Step::Leave(o));
                        true
                    }
                }
            }
            _ => false,
        };
        if descend {
            stack.extend(node.children().rev().map(|c| Step::Enter(c, depth + 1)));
        }
    }

    /// Handles what comes before an element's children.
    fn open<'a>(&mut self, node: NodeRef<'a, Node>, el: &'a Element, depth: usize) -> Visit<'a> {
        let name = el.name();
        // Math first: some math carriers are hidden or are scripts.
        if self.math(node, el) || self.skipped(el) {
            return Visit::Consumed;
        }
        match name {
            "pre" => {
                self.pre(node, el);
                return Visit::Consumed;
            }
            "code" | "kbd" | "samp" | "tt" => {
                self.inline_code(node);
                return Visit::Consumed;
            }
            "br" => {
                self.newline(1);
                return Visit::Consumed;
            }
            "img" => return Visit::Consumed,
            _ => {}
        }
        if depth > MAX_STRUCTURE_DEPTH {
            return Visit::Flat;
        }
        let block = BLOCK_TAGS.contains(&name);
        let para = PARA_TAGS.contains(&name);
        if block {
            self.newline(if para { 2 } else { 1 });
        }
        let main = matches!(name, "main" | "article") || el.attr("role") == Some("main");
        if main {
            self.in_main += 1;
        }
        let start = (self.out.len(), self.text_chars, self.link_chars);
        self.open_structure(name, el);
        Visit::Open(Open {
            name,
            block,
            para,
            main,
            start,
        })
    }

    /// Elements dropped with their subtree: skipped tags, site headers outside main content, boilerplate.
    fn skipped(&self, el: &Element) -> bool {
        let name = el.name();
        SKIP_TAGS.contains(&name)
            || name == "title"
            || (name == "header" && self.in_main == 0)
            || is_boilerplate(el)
    }

    /// List, table and link state on entering an element.
    fn open_structure(&mut self, name: &str, el: &Element) {
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
                        *n = n.saturating_add(1);
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
    }

    /// Handles what comes after an element's children.
    fn leave(&mut self, o: Open<'_>) {
        match o.name {
            "a" => self.in_link = self.in_link.saturating_sub(1),
            "ul" | "ol" => {
                self.list_stack.pop();
            }
            "tr" => {
                self.cell_index.pop();
            }
            _ => {}
        }
        if o.main {
            self.in_main = self.in_main.saturating_sub(1);
        }
        // Link-density pruning of navigation-like blocks.
        if matches!(o.name, "ul" | "ol" | "div" | "table" | "section" | "dl") {
            let (out_len, text0, links0) = o.start;
            let text = self.text_chars - text0;
            let links = self.link_chars - links0;
            if text > 0 && links * 10 > text * 6 {
                self.out.truncate(out_len);
                self.text_chars = text0;
                self.link_chars = links0;
            }
        }
        if o.block {
            self.newline(if o.para { 2 } else { 1 });
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

/// Text of a subtree with whitespace kept; `<br>` becomes a newline; line-number gutters, scripts and
/// styles below `node` are skipped. Iterative (ego-tree's edge traversal), so any depth is safe.
pub(crate) fn raw_text(node: NodeRef<'_, Node>, out: &mut String) {
    raw_text_limited(node, usize::MAX, out);
}

/// The raw text of a subtree of at most `max_nodes` nodes; `None` for a larger one.
pub(crate) fn short_text(node: NodeRef<'_, Node>, max_nodes: usize) -> Option<String> {
    let mut s = String::new();
    raw_text_limited(node, max_nodes, &mut s).then_some(s)
}

/// [`raw_text`] that stops after visiting `max_nodes` nodes; returns false when it stopped early.
fn raw_text_limited(node: NodeRef<'_, Node>, max_nodes: usize, out: &mut String) -> bool {
    let mut skip = None;
    for (visited, edge) in node.traverse().enumerate() {
        if visited / 2 > max_nodes {
            return false;
        }
        match edge {
            Edge::Open(n) if skip.is_none() && n != node => match n.value() {
                Node::Text(t) => out.push_str(t),
                Node::Element(e) if e.name() == "br" => {
                    out.push('\n');
                    skip = Some(n.id());
                }
                Node::Element(e) if raw_text_skips(e) => skip = Some(n.id()),
                _ => {}
            },
            Edge::Close(n) if skip == Some(n.id()) => skip = None,
            _ => {}
        }
    }
    true
}

fn raw_text_skips(e: &Element) -> bool {
    has_class(e, "linenos") || has_class(e, "lineno") || e.name() == "script" || e.name() == "style"
}

/// Collapses runs of blank lines and trims line ends (and the text's end).
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
    // An unclosed fence keeps its blank lines; none may trail the text.
    out.truncate(out.trim_end().len());
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
