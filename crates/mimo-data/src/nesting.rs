//! Bounds the element nesting html5ever will build, before it parses.
//!
//! html5ever's tree builder does not recurse, but several of its steps scan the whole stack of open
//! elements (scope checks on block tags and on unmatched end tags), and it re-creates every unclosed
//! formatting element at each new block (`<div><b id=1>x</div><div><b id=2>x</div>…`). Deep or hostile
//! markup therefore costs quadratic time and memory: 50,000 `<ul><li>` take ~27 s to parse, 4,000
//! distinct unclosed `<b>` build 8 M nodes. This pass lexes the markup, follows the open-element stack
//! and the list of active formatting elements roughly as the tree builder does, and drops the *tags*
//! (never the text) that would open an element more than [`MAX_OPEN`] deep or a formatting element past
//! [`MAX_FORMATTING`] since the last table cell; end tags of dropped elements are dropped with them. Code,
//! `<pre>` and math carriers may open [`PROTECTED_EXTRA`] levels deeper so that their content keeps its
//! meaning. Raw text (`<script>`, `<style>`, `<textarea>`, comments, …) is copied untouched. Documents
//! that stay within the bounds are passed through as they are.

use std::borrow::Cow;
use std::collections::HashMap;

/// Deepest element nesting kept (as this pass counts it; html5ever adds `html`, `body`, `tbody`, …).
pub(crate) const MAX_OPEN: usize = crate::html::MAX_STRUCTURE_DEPTH;

/// Most active formatting elements (`<b>`, `<font>`, `<a>`, …) since the last table cell or similar.
pub(crate) const MAX_FORMATTING: usize = 32;

/// Extra levels allowed for [`is_protected`] elements past [`MAX_OPEN`].
pub(crate) const PROTECTED_EXTRA: usize = 16;

/// `fn $name(tag name) -> bool`: membership in a fixed set of (lowercase) names.
macro_rules! set {
    ($(#[$m:meta])* $name:ident: $($s:literal)|+) => {
        $(#[$m])*
        fn $name(n: &str) -> bool {
            matches!(n, $($s)|+)
        }
    };
}

set!(
    /// Elements whose tags carry meaning for the extractor even deep down (code, math).
    is_protected:
    "pre" | "listing" | "code" | "kbd" | "samp" | "tt" | "math" | "semantics" | "annotation"
    | "annotation-xml"
);

set!(
    /// Elements without content or end tag.
    is_void:
    "area" | "base" | "basefont" | "bgsound" | "br" | "col" | "embed" | "frame" | "hr" | "image"
    | "img" | "input" | "keygen" | "link" | "meta" | "param" | "source" | "track" | "wbr"
);

set!(
    /// Elements whose content the tokenizer reads as text up to their end tag (in HTML content).
    is_raw_text:
    "script" | "style" | "xmp" | "iframe" | "noembed" | "noframes" | "noscript" | "textarea"
    | "title" | "plaintext"
);

set!(
    /// Formatting elements: kept on the list of active formatting elements and re-created after blocks.
    is_formatting:
    "a" | "b" | "big" | "code" | "em" | "font" | "i" | "nobr" | "s" | "small" | "strike" | "strong"
    | "tt" | "u"
);

set!(
    /// Elements that put a marker on the list of active formatting elements.
    is_marker:
    "applet" | "caption" | "marquee" | "object" | "template" | "td" | "th"
);

set!(
    /// Table parts (ignored outside a table).
    is_table_part:
    "caption" | "colgroup" | "tbody" | "td" | "tfoot" | "th" | "thead" | "tr"
);

set!(
    /// Boundaries of the default element scope (HTML elements).
    is_scope:
    "applet" | "caption" | "html" | "marquee" | "object" | "table" | "td" | "template" | "th"
);

set!(
    /// MathML integration points: HTML rules apply inside; scope boundaries. (`annotation-xml` is
    /// not one for html5ever, whatever its encoding: a `<script>` in it is MathML.)
    is_mathml_integration:
    "mi" | "mo" | "mn" | "ms" | "mtext"
);

set!(
    /// SVG integration points: HTML rules apply inside; scope boundaries.
    is_svg_integration:
    "foreignobject" | "desc" | "title"
);

set!(
    /// Start tags that close an open `<p>` in button scope.
    closes_p:
    "address" | "article" | "aside" | "blockquote" | "center" | "details" | "dialog" | "dir" | "div"
    | "dl" | "fieldset" | "figcaption" | "figure" | "footer" | "header" | "hgroup" | "main" | "menu"
    | "nav" | "ol" | "p" | "search" | "section" | "summary" | "ul" | "h1" | "h2" | "h3" | "h4"
    | "h5" | "h6" | "pre" | "listing" | "form" | "li" | "dd" | "dt" | "plaintext" | "table" | "hr"
    | "xmp"
);

set!(
    /// HTML "special" elements: an unmatched end tag stops at them.
    is_special_name:
    "address" | "applet" | "area" | "article" | "aside" | "base" | "basefont" | "bgsound"
    | "blockquote" | "body" | "br" | "button" | "caption" | "center" | "col" | "colgroup" | "dd"
    | "details" | "dir" | "div" | "dl" | "dt" | "embed" | "fieldset" | "figcaption" | "figure"
    | "footer" | "form" | "frame" | "frameset" | "h1" | "h2" | "h3" | "h4" | "h5" | "h6" | "head"
    | "header" | "hgroup" | "hr" | "html" | "iframe" | "img" | "input" | "keygen" | "li" | "link"
    | "listing" | "main" | "marquee" | "menu" | "meta" | "nav" | "noembed" | "noframes" | "noscript"
    | "object" | "ol" | "p" | "param" | "plaintext" | "pre" | "script" | "search" | "section"
    | "select" | "source" | "style" | "summary" | "table" | "tbody" | "td" | "template" | "textarea"
    | "tfoot" | "th" | "thead" | "title" | "tr" | "track" | "ul" | "wbr" | "xmp"
);

set!(
    /// HTML start tags that end foreign (SVG/MathML) content.
    is_breakout:
    "b" | "big" | "blockquote" | "body" | "br" | "center" | "code" | "dd" | "div" | "dl" | "dt"
    | "em" | "embed" | "h1" | "h2" | "h3" | "h4" | "h5" | "h6" | "head" | "hr" | "i" | "img" | "li"
    | "listing" | "menu" | "meta" | "nobr" | "ol" | "p" | "pre" | "ruby" | "s" | "small" | "span"
    | "strong" | "strike" | "sub" | "sup" | "table" | "tt" | "u" | "ul" | "var"
);

/// The markup with over-deep tags removed, and how many tags were removed.
pub(crate) struct Limited<'a> {
    pub(crate) html: Cow<'a, str>,
    pub(crate) dropped: usize,
}

/// Applies the bounds described in the module docs.
pub(crate) fn limit(html: &str) -> Limited<'_> {
    // Fewer tags than the bound cannot nest past it (nor rebuild much formatting).
    if html.bytes().filter(|&b| b == b'<').count() <= MAX_OPEN {
        return Limited {
            html: Cow::Borrowed(html),
            dropped: 0,
        };
    }
    let mut l = Limiter::new(html);
    l.run();
    l.finish()
}

/// A lexed piece of markup starting at a `<`.
enum Tok<'a> {
    Start(Tag<'a>),
    End(Tag<'a>),
    /// Comment, doctype, processing instruction, CDATA: copied.
    Other,
}

struct Tag<'a> {
    name: String,
    /// Raw attribute text (tells formatting elements apart).
    attrs: &'a [u8],
    self_closing: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Ns {
    Html,
    Svg,
    MathMl,
}

struct Open {
    name: String,
    ns: Ns,
    /// An SVG or MathML element inside which HTML rules apply (an integration point).
    point: bool,
}

impl Open {
    /// An SVG or MathML element.
    fn foreign(&self) -> bool {
        self.ns != Ns::Html
    }

    /// An SVG or MathML element inside which HTML rules apply.
    fn integration(&self) -> bool {
        self.point
    }
}

/// An entry of the list of active formatting elements.
enum Fmt {
    Marker,
    El { name: String, attrs: Vec<u8> },
}

enum Scope {
    Default,
    Button,
    List,
    Table,
    /// Everything but `optgroup` and `option` is a boundary.
    Select,
}

struct Limiter<'a> {
    src: &'a str,
    pos: usize,
    out: String,
    /// `src[..copied]` is accounted for in `out`.
    copied: usize,
    dropped_tags: usize,
    stack: Vec<Open>,
    /// Occurrences of each name in `stack`.
    counts: HashMap<String, usize>,
    fmt: Vec<Fmt>,
    /// Dropped start tags by name whose end tags are still to come.
    dropped: HashMap<String, usize>,
}

impl<'a> Limiter<'a> {
    fn new(src: &'a str) -> Self {
        Limiter {
            src,
            pos: 0,
            out: String::new(),
            copied: 0,
            dropped_tags: 0,
            stack: Vec::new(),
            counts: HashMap::new(),
            fmt: Vec::new(),
            dropped: HashMap::new(),
        }
    }

    fn finish(mut self) -> Limited<'a> {
        if self.dropped_tags == 0 {
            return Limited {
                html: Cow::Borrowed(self.src),
                dropped: 0,
            };
        }
        self.out.push_str(&self.src[self.copied..]);
        Limited {
            html: Cow::Owned(self.out),
            dropped: self.dropped_tags,
        }
    }

    fn run(&mut self) {
        let b = self.src.as_bytes();
        while let Some(off) = b[self.pos..].iter().position(|&c| c == b'<') {
            let lt = self.pos + off;
            let foreign = self.stack.last().is_some_and(Open::foreign);
            let Some((tok, end)) = lex(b, lt, foreign) else {
                self.pos = lt + 1;
                continue;
            };
            self.pos = end;
            let keep = match tok {
                Tok::Other => true,
                Tok::Start(t) => self.start(&t),
                Tok::End(t) => self.end(&t.name),
            };
            if !keep {
                self.out.push_str(&self.src[self.copied..lt]);
                self.copied = end;
                self.dropped_tags += 1;
            }
        }
    }

    fn count(&self, name: &str) -> usize {
        self.counts.get(name).copied().unwrap_or(0)
    }

    fn push(&mut self, name: &str, ns: Ns) {
        match self.counts.get_mut(name) {
            Some(c) => *c += 1,
            None => {
                self.counts.insert(name.to_string(), 1);
            }
        }
        if ns == Ns::Html && is_marker(name) {
            self.fmt.push(Fmt::Marker);
        }
        let point = match ns {
            Ns::Html => false,
            Ns::Svg => is_svg_integration(name),
            Ns::MathMl => is_mathml_integration(name),
        };
        self.stack.push(Open {
            name: name.to_string(),
            ns,
            point,
        });
    }

    /// Pops the stack down to `len` entries.
    fn truncate(&mut self, len: usize) {
        while self.stack.len() > len {
            let Some(o) = self.stack.pop() else { return };
            self.forget(&o);
        }
    }

    /// Bookkeeping for an element leaving the stack.
    fn forget(&mut self, o: &Open) {
        if let Some(c) = self.counts.get_mut(&o.name) {
            *c = c.saturating_sub(1);
        }
        if !o.foreign() && is_marker(&o.name) {
            self.clear_to_marker();
        }
    }

    fn clear_to_marker(&mut self) {
        while let Some(f) = self.fmt.pop() {
            if matches!(f, Fmt::Marker) {
                return;
            }
        }
    }

    /// Records a dropped start tag; returns false (drop it).
    fn drop_start(&mut self, name: &str) -> bool {
        *self.dropped.entry(name.to_string()).or_default() += 1;
        false
    }

    /// Handles a start tag; returns whether it is kept. The elements it closes implicitly are worked out
    /// first as a stack length, and applied only when the tag is kept: a dropped tag changes nothing.
    fn start(&mut self, t: &Tag) -> bool {
        let name = t.name.as_str();
        let mut len = self.stack.len();
        if self.foreign_at(len) && is_breakout(name) {
            while self.foreign_at(len) {
                len -= 1;
            }
        }
        // In <mi> & co., <mglyph> and <malignmark> stay MathML.
        let glyph = matches!(name, "mglyph" | "malignmark")
            && len > 0
            && self.stack[len - 1].ns == Ns::MathMl
            && self.stack[len - 1].point;
        let foreign = self.foreign_at(len) || glyph;
        if !foreign {
            // Merged into the existing elements, or (table parts outside a table) ignored.
            let ignored = matches!(name, "html" | "body" | "head")
                || (is_table_part(name) && self.count("table") == 0);
            if !ignored {
                len = self.autoclose(name, len);
            }
            if ignored || is_void(name) {
                self.truncate(len);
                return true;
            }
            if self.is_raw(name) {
                self.truncate(len);
                self.pos = raw_end(self.src.as_bytes(), self.pos, name);
                return true;
            }
        }
        let ns = match name {
            "svg" => Ns::Svg,
            "math" => Ns::MathMl,
            _ if foreign => self.stack[len - 1].ns,
            _ => Ns::Html,
        };
        if ns != Ns::Html && t.self_closing {
            self.truncate(len);
            return true;
        }
        let room = if is_protected(name) {
            MAX_OPEN + PROTECTED_EXTRA
        } else {
            MAX_OPEN
        };
        let formatting = !foreign && is_formatting(name);
        if len >= room || (formatting && self.formatting_full(t)) {
            return self.drop_start(name);
        }
        self.truncate(len);
        if formatting {
            if matches!(name, "a" | "nobr") {
                self.close_formatting(name);
            }
            self.add_formatting(t);
        }
        self.push(name, ns);
        true
    }

    /// Whether the element at `stack[len - 1]` is SVG/MathML content (not an integration point).
    fn foreign_at(&self, len: usize) -> bool {
        len.checked_sub(1)
            .and_then(|i| self.stack.get(i))
            .is_some_and(|o| o.foreign() && !o.integration())
    }

    /// Whether the tokenizer reads this HTML element's content as text (in a `<select>`, only
    /// `<script>` and `<textarea>`: the others are ignored there).
    fn is_raw(&self, name: &str) -> bool {
        is_raw_text(name) && (self.count("select") == 0 || matches!(name, "script" | "textarea"))
    }

    /// The stack length left once an HTML start tag has closed what it closes implicitly, from `len`.
    fn autoclose(&self, name: &str, mut len: usize) -> usize {
        if closes_p(name) {
            len = self
                .find_in_scope(&["p"], &Scope::Button, len)
                .unwrap_or(len);
        }
        let top_is = |len: usize, n: &str| len > 0 && self.stack[len - 1].name == n;
        let found = match name {
            "li" => self.find_item(&["li"], len),
            "dd" | "dt" => self.find_item(&["dd", "dt"], len),
            "h1" | "h2" | "h3" | "h4" | "h5" | "h6" => {
                (len > 0 && is_heading(&self.stack[len - 1].name)).then(|| len - 1)
            }
            "td" | "th" => self.find_table_part(&["td", "th"], len),
            "tr" => self.find_table_part(&["tr"], len),
            "tbody" | "thead" | "tfoot" => self.find_table_part(&["tbody", "thead", "tfoot"], len),
            "table" => self.find_table_part(&["table"], len),
            "select" | "input" | "keygen" | "textarea" => {
                self.find_in_scope(&["select"], &Scope::Select, len)
            }
            "option" | "optgroup" => {
                let l = if top_is(len, "option") { len - 1 } else { len };
                Some(if name == "optgroup" && top_is(l, "optgroup") {
                    l - 1
                } else {
                    l
                })
            }
            "button" => self.find_in_scope(&["button"], &Scope::Default, len),
            _ => None,
        };
        found.unwrap_or(len)
    }

    /// Index in `stack[..len]` of the nearest element named in `names`, unless a boundary of `scope`
    /// comes first.
    fn find_in_scope(&self, names: &[&str], scope: &Scope, len: usize) -> Option<usize> {
        if names.iter().all(|n| self.count(n) == 0) {
            return None;
        }
        for i in (0..len).rev() {
            let o = &self.stack[i];
            if !o.foreign() && names.contains(&o.name.as_str()) {
                return Some(i);
            }
            if is_boundary(o, scope) {
                return None;
            }
        }
        None
    }

    /// `<li>`, `<dd>`, `<dt>`: an open item closes unless a special element (other than `address`,
    /// `div`, `p`) comes first.
    fn find_item(&self, names: &[&str], len: usize) -> Option<usize> {
        if names.iter().all(|n| self.count(n) == 0) {
            return None;
        }
        for i in (0..len).rev() {
            let o = &self.stack[i];
            if !o.foreign() && names.contains(&o.name.as_str()) {
                return Some(i);
            }
            if is_special(o) && !matches!(o.name.as_str(), "address" | "div" | "p") {
                return None;
            }
        }
        None
    }

    /// Table parts close the previous one of their kind inside the same table (a `<table>` directly in
    /// a table closes it; one inside a cell nests).
    fn find_table_part(&self, names: &[&str], len: usize) -> Option<usize> {
        for i in (0..len).rev() {
            let o = &self.stack[i];
            if o.foreign() {
                continue;
            }
            if !o.foreign() && names.contains(&o.name.as_str()) {
                return Some(i);
            }
            if matches!(
                o.name.as_str(),
                "table" | "html" | "template" | "td" | "th" | "caption"
            ) {
                return None;
            }
        }
        None
    }

    /// Closes the nearest of `names` in `scope`; true when one was open.
    fn close_in_scope(&mut self, names: &[&str], scope: Scope) -> bool {
        match self.find_in_scope(names, &scope, self.stack.len()) {
            Some(i) => {
                self.truncate(i);
                true
            }
            None => false,
        }
    }

    /// Closes the active formatting element `name` the way the adoption agency does, as far as depth
    /// goes; false when none is active. Also how `<a>` inside `<a>` (and `<nobr>`) closes the open one.
    fn close_formatting(&mut self, name: &str) -> bool {
        let since = self.since_marker();
        let Some(fi) = (since..self.fmt.len())
            .rev()
            .find(|&i| matches!(&self.fmt[i], Fmt::El { name: n, .. } if n == name))
        else {
            return false;
        };
        let mut at = None;
        for i in (0..self.stack.len()).rev() {
            let o = &self.stack[i];
            if o.name == name && !o.foreign() {
                at = Some(i);
                break;
            }
            if is_boundary(o, &Scope::Default) {
                return true; // Not in scope: ignored.
            }
        }
        self.fmt.remove(fi);
        if let Some(i) = at {
            self.adopt(i);
        }
        true
    }

    /// Closes the formatting element at `stack[i]`. With no special element above it, everything down to
    /// it is popped; otherwise the first special element above it (the "furthest block") and all above
    /// stay open, and only the elements from `i` up to that block go.
    fn adopt(&mut self, i: usize) {
        match (i + 1..self.stack.len()).find(|&j| is_special(&self.stack[j])) {
            None => self.truncate(i),
            Some(f) => {
                for j in (i..f).rev() {
                    let o = self.stack.remove(j);
                    self.forget(&o);
                }
            }
        }
    }

    /// Indices (since the last marker) of the active formatting elements identical to `t`.
    fn identical(&self, t: &Tag) -> Vec<usize> {
        (self.since_marker()..self.fmt.len())
            .filter(|&i| {
                matches!(&self.fmt[i], Fmt::El { name, attrs }
                    if *name == t.name && attrs.eq_ignore_ascii_case(t.attrs))
            })
            .collect()
    }

    /// Whether adding `t` would grow the list since the last marker past [`MAX_FORMATTING`].
    fn formatting_full(&self, t: &Tag) -> bool {
        self.identical(t).len() < 3 && self.fmt.len() - self.since_marker() >= MAX_FORMATTING
    }

    /// Adds a formatting element to the active list (Noah's Ark: at most three identical ones).
    fn add_formatting(&mut self, t: &Tag) {
        let same = self.identical(t);
        if same.len() >= 3 {
            self.fmt.remove(same[0]);
        }
        self.fmt.push(Fmt::El {
            name: t.name.clone(),
            attrs: t.attrs.to_vec(),
        });
    }

    /// Index just past the last marker of the formatting list.
    fn since_marker(&self) -> usize {
        self.fmt
            .iter()
            .rposition(|f| matches!(f, Fmt::Marker))
            .map_or(0, |i| i + 1)
    }

    /// Handles an end tag; returns whether it is kept.
    fn end(&mut self, name: &str) -> bool {
        if let Some(n) = self.dropped.get_mut(name).filter(|n| **n > 0) {
            *n -= 1;
            return false;
        }
        if self.stack.last().is_some_and(Open::foreign) {
            if matches!(name, "br" | "p") {
                self.leave_foreign();
            } else if self.end_foreign(name) {
                return true;
            }
        }
        self.end_html(name);
        true
    }

    /// An end tag in SVG/MathML content closes the nearest foreign element of that name above the first
    /// HTML element; false when an HTML element comes first (HTML rules then apply).
    fn end_foreign(&mut self, name: &str) -> bool {
        let top = self.stack.len().saturating_sub(1);
        for i in (0..self.stack.len()).rev() {
            let o = &self.stack[i];
            if i < top && !o.foreign() {
                return false;
            }
            if o.name == name {
                self.truncate(i);
                return true;
            }
        }
        true
    }

    /// Pops SVG/MathML elements until an HTML element or integration point is current.
    fn leave_foreign(&mut self) {
        let mut len = self.stack.len();
        while self.foreign_at(len) {
            len -= 1;
        }
        self.truncate(len);
    }

    /// An end tag under HTML rules.
    fn end_html(&mut self, name: &str) {
        match name {
            "p" => {
                self.close_in_scope(&["p"], Scope::Button);
            }
            "li" => {
                self.close_in_scope(&["li"], Scope::List);
            }
            "td" | "th" | "tr" | "tbody" | "thead" | "tfoot" | "table" | "caption" => {
                self.close_in_scope(&[name], Scope::Table);
            }
            "select" => {
                self.close_in_scope(&["select"], Scope::Select);
            }
            "body" | "html" | "br" => {}
            _ if is_formatting(name) => {
                if !self.close_formatting(name) {
                    self.close_any(name);
                }
            }
            _ if is_heading(name) => {
                self.close_in_scope(&["h1", "h2", "h3", "h4", "h5", "h6"], Scope::Default);
            }
            _ if is_special_name(name) => {
                self.close_in_scope(&[name], Scope::Default);
            }
            _ => self.close_any(name),
        }
    }

    /// Any other end tag: closes the nearest element of that name unless a special element comes first.
    fn close_any(&mut self, name: &str) {
        if self.count(name) == 0 {
            return;
        }
        for i in (0..self.stack.len()).rev() {
            let o = &self.stack[i];
            if o.name == name && !o.foreign() {
                self.truncate(i);
                return;
            }
            if is_special(o) {
                return;
            }
        }
    }
}

fn is_heading(name: &str) -> bool {
    matches!(name, "h1" | "h2" | "h3" | "h4" | "h5" | "h6")
}

/// An HTML element of the "special" category (html5ever counts no SVG/MathML element as one).
fn is_special(o: &Open) -> bool {
    !o.foreign() && is_special_name(&o.name)
}

fn is_boundary(o: &Open, scope: &Scope) -> bool {
    let n = o.name.as_str();
    if o.foreign() {
        return !matches!(scope, Scope::Table) && o.integration();
    }
    match scope {
        Scope::Table => matches!(n, "html" | "table" | "template"),
        Scope::Select => !matches!(n, "optgroup" | "option"),
        Scope::Default => is_scope(n),
        Scope::Button => is_scope(n) || n == "button",
        Scope::List => is_scope(n) || n == "ol" || n == "ul",
    }
}

fn is_space(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | b'\r' | b'\x0c')
}

/// Lexes the markup at `b[lt] == b'<'`: the token and the index after it, or `None` when the `<` is text.
/// A construct left open at the end of input runs to the end.
fn lex(b: &[u8], lt: usize, foreign: bool) -> Option<(Tok<'_>, usize)> {
    let rest = &b[lt..];
    let find = |pat: &[u8], from: usize| {
        rest.get(from..)
            .and_then(|r| r.windows(pat.len()).position(|w| w == pat))
            .map_or(b.len(), |i| lt + from + i + pat.len())
    };
    match rest.get(1).copied() {
        Some(c) if c.is_ascii_alphabetic() => {
            let (t, end) = tag(b, lt + 1);
            Some((Tok::Start(t), end))
        }
        Some(b'/') => match rest.get(2) {
            Some(c) if c.is_ascii_alphabetic() => {
                let (t, end) = tag(b, lt + 2);
                Some((Tok::End(t), end))
            }
            None => None,
            Some(_) => Some((Tok::Other, find(b">", 2))),
        },
        Some(b'!') if rest.starts_with(b"<!--") => Some((Tok::Other, find(b"-->", 2))),
        Some(b'!') if foreign && rest.starts_with(b"<![CDATA[") => {
            Some((Tok::Other, find(b"]]>", 9)))
        }
        Some(b'!') | Some(b'?') => Some((Tok::Other, find(b">", 1))),
        _ => None,
    }
}

/// Lexes a tag whose name starts at `b[i]`: the tag and the index after its `>` (or the end of input).
fn tag(b: &[u8], mut i: usize) -> (Tag<'_>, usize) {
    let start = i;
    while i < b.len() && !is_space(b[i]) && b[i] != b'/' && b[i] != b'>' {
        i += 1;
    }
    let name = String::from_utf8_lossy(&b[start..i]).to_ascii_lowercase();
    let attrs_start = i;
    let mut self_closing = false;
    while i < b.len() {
        match b[i] {
            b'>' => {
                let t = Tag {
                    name,
                    attrs: &b[attrs_start..i],
                    self_closing,
                };
                return (t, i + 1);
            }
            b'/' => {
                self_closing = true;
                i += 1;
                continue;
            }
            c if is_space(c) => {}
            _ => i = attribute(b, i),
        }
        self_closing = false;
        i += 1;
    }
    let t = Tag {
        name,
        attrs: &[],
        self_closing: false,
    };
    (t, b.len())
}

/// Skips an attribute starting at `b[i]`; returns the index of its last byte.
fn attribute(b: &[u8], mut i: usize) -> usize {
    // The name (a leading `=` belongs to it).
    i += 1;
    while i < b.len() && !is_space(b[i]) && !matches!(b[i], b'/' | b'>' | b'=') {
        i += 1;
    }
    let mut j = i;
    while j < b.len() && is_space(b[j]) {
        j += 1;
    }
    if b.get(j) != Some(&b'=') {
        return i - 1;
    }
    j += 1;
    while j < b.len() && is_space(b[j]) {
        j += 1;
    }
    match b.get(j) {
        Some(&q) if q == b'"' || q == b'\'' => match b[j + 1..].iter().position(|&c| c == q) {
            Some(k) => j + 1 + k,
            None => b.len(),
        },
        Some(_) => {
            while j < b.len() && !is_space(b[j]) && b[j] != b'>' {
                j += 1;
            }
            j - 1
        }
        None => b.len(),
    }
}

/// Where the raw text of `name` (started before `from`) ends: at its end tag, or the end of input.
fn raw_end(b: &[u8], from: usize, name: &str) -> usize {
    if name == "plaintext" {
        return b.len();
    }
    let n = name.len();
    let mut i = from;
    while let Some(k) = b[i.min(b.len())..].windows(2).position(|w| w == b"</") {
        let at = i + k;
        let after = b.get(at + 2 + n).copied();
        if b.len() >= at + 2 + n
            && b[at + 2..at + 2 + n].eq_ignore_ascii_case(name.as_bytes())
            && after.is_none_or(|c| is_space(c) || c == b'/' || c == b'>')
        {
            return at;
        }
        i = at + 2;
    }
    b.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lim(s: &str) -> (String, usize) {
        let l = limit(s);
        (l.html.into_owned(), l.dropped)
    }

    #[test]
    fn shallow_documents_pass_through() {
        let mut s = String::new();
        for i in 0..2000 {
            s.push_str(&format!(
                "<div class=\"a>b\"><p>para {i}<span>x</span><li>item<td>cell<!-- <div> --></div>"
            ));
        }
        s.push_str("<script>if (a < b) { '<div>'.repeat(9) }</script><table>");
        // Sloppy but common: unclosed cells, rows, paragraphs, items and fonts; misnested bold.
        for i in 0..2000 {
            s.push_str(&format!(
                "<tr><td><font size={}>a<td><p>b<p><b>c<div>d</b></div><ul><li>e<li>f</ul>",
                i % 7
            ));
        }
        s.push_str("</table><svg><g><rect/></g></svg><math><mi>x</mi></math>");
        let l = limit(&s);
        assert!(matches!(l.html, Cow::Borrowed(_)));
        assert_eq!(l.dropped, 0);
    }

    #[test]
    fn deep_tags_dropped_text_kept() {
        let s = format!("{}deep{}", "<div>".repeat(2000), "</div>".repeat(2000));
        let (out, dropped) = lim(&s);
        assert_eq!(dropped, 2 * (2000 - MAX_OPEN));
        assert_eq!(out.matches("<div>").count(), MAX_OPEN);
        assert_eq!(out.matches("</div>").count(), MAX_OPEN);
        assert!(out.contains("deep"));
        // Protected code past the bound is kept, its inner tags are not.
        let s = format!("{}<pre>a<b>b</b>c</pre>", "<span>".repeat(1000));
        let (out, _) = lim(&s);
        assert!(out.contains("<pre>abc</pre>"), "{out:.100}");
    }

    #[test]
    fn misnested_formatting_keeps_blocks_open() {
        // `</b>` with a block inside leaves the block open (adoption agency): the divs still nest.
        let s = "<b><div>x</b>".repeat(1000);
        let (out, dropped) = lim(&s);
        let divs = out.matches("<div>").count();
        assert!((MAX_OPEN - 1..=MAX_OPEN).contains(&divs), "{divs}");
        assert!(dropped > 0);
    }

    #[test]
    fn formatting_elements_are_capped() {
        let s: String = (0..1000)
            .map(|i| format!("<div><b id={i}>x</div>"))
            .collect();
        let (out, dropped) = lim(&s);
        assert_eq!(out.matches("<b ").count(), MAX_FORMATTING);
        assert_eq!(dropped, 1000 - MAX_FORMATTING);
        // Cells reset the list; identical elements do not grow it.
        let s: String = (0..1000)
            .map(|i| format!("<table><td><b id={i}>x</table>"))
            .collect();
        assert_eq!(lim(&s).1, 0);
        let s = "<div><b>x</div>".repeat(1000);
        assert_eq!(lim(&s).1, 0);
    }
}
