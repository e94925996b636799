//! Pathologically deep HTML must never overflow the stack: each case runs on a 256 KiB thread with
//! 5,000 and 50,000 levels of one element kind and checks that the text still comes out.

use mimo_data::html::{extract_text, HtmlText, MAX_STRUCTURE_DEPTH};

const SMALL_STACK: usize = 256 << 10;

/// Runs `f` on a thread with a small stack (an overflow aborts the test binary, which fails the test).
fn small_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::Builder::new()
        .stack_size(SMALL_STACK)
        .spawn(f)
        .expect("spawn")
        .join()
        .expect("no panic")
}

fn nested(open: &str, depth: usize, inner: &str) -> String {
    let mut s = String::with_capacity(open.len() * depth + inner.len() + 64);
    s.push_str("<html><body><p>before</p>");
    for _ in 0..depth {
        s.push_str(open);
    }
    s.push_str(inner);
    s
}

fn run(open: &'static str, depth: usize, inner: &'static str) -> HtmlText {
    let html = nested(open, depth, inner);
    small_stack(move || extract_text(&html))
}

/// (opening markup repeated, innermost content, text that must survive).
const CASES: &[(&str, &str, &str)] = &[
    ("<div>", "deep text", "deep text"),
    ("<b>", "deep text", "deep text"),
    ("<i><b>", "deep text", "deep text"),
    ("<table><tr><td>", "deep text", "deep text"),
    ("<td>", "deep text", "deep text"),
    ("<ul><li>", "deep text", "deep text"),
    ("<ol><li>", "deep text", "deep text"),
    ("<blockquote>", "deep text", "deep text"),
    ("<a href=x>", "deep text", "deep text"),
    ("<span>", "<pre>let x = 1;</pre>", "let x = 1;"),
    (
        "<div class=content>",
        "<code>deep_code()</code>",
        "deep_code()",
    ),
];

#[test]
fn deep_elements_keep_their_text() {
    for &(open, inner, want) in CASES {
        for depth in [5_000, 50_000] {
            let t = run(open, depth, inner);
            assert!(t.text.contains("before"), "{open} × {depth}");
            assert!(t.text.contains(want), "{open} × {depth}: {:.200}", t.text);
        }
    }
}

#[test]
fn structure_is_flattened_past_the_bound() {
    // Tags past the bound are dropped before parsing, so the tree stays about that deep.
    let t = run("<div>", 5_000, "deep text");
    assert!(t.max_depth <= MAX_STRUCTURE_DEPTH + 8, "{}", t.max_depth);
    assert!(t.dropped_tags > 4_000, "{}", t.dropped_tags);
    for open in [
        "<ul><li>",
        "<table><tr><td>",
        "<b>",
        "<mrow>",
        "<blockquote>",
    ] {
        let t = run(open, 50_000, "deep text");
        assert!(
            t.max_depth <= 2 * MAX_STRUCTURE_DEPTH,
            "{open}: {}",
            t.max_depth
        );
    }
    // Shallow nesting keeps its structure.
    let t = run("<div>", MAX_STRUCTURE_DEPTH / 2, "deep text");
    assert_eq!((t.flattened, t.dropped_tags), (0, 0));
    // Nested lists do not turn into thousands of marker lines.
    let t = run("<ul><li>", 20_000, "deep text");
    let lines = t.text.lines().count();
    assert!(lines < 2 * MAX_STRUCTURE_DEPTH, "{lines}");
}

#[test]
fn deep_code_keeps_whitespace() {
    let t = run(
        "<span>",
        50_000,
        "<pre class=\"language-python\">def f():\n    return 1</pre>",
    );
    assert!(t.text.contains("def f():\n    return 1"), "{:.300}", t.text);
}

#[test]
fn deep_mathml_converts() {
    // <mrow> chains, nested fractions, nested superscripts, with and without a <math> parent.
    for depth in [5_000, 50_000] {
        let t = run("<mrow>", depth, "<mi>x</mi>");
        assert!(t.text.contains("before"));
        let html = format!("<p>a</p><math>{}<mi>x</mi>", "<mrow>".repeat(depth));
        let t = small_stack(move || extract_text(&html));
        assert!(t.text.contains("$x$"), "{:.200}", t.text);
        let html = format!("<math>{}<mn>1</mn>", "<mfrac><mi>a</mi>".repeat(depth));
        let t = small_stack(move || extract_text(&html));
        assert!(
            t.text.starts_with("$\\frac{a}{\\frac{a}"),
            "{:.200}",
            t.text
        );
        let html = format!("<math>{}<mn>2</mn>", "<msup><mi>b</mi>".repeat(depth));
        let t = small_stack(move || extract_text(&html));
        assert!(t.text.contains("{b}^{{b}^"), "{:.200}", t.text);
        let html = format!("<math>{}<mo>^</mo>", "<mover><mi>v</mi>".repeat(depth));
        let t = small_stack(move || extract_text(&html));
        assert!(t.text.contains("{v}"), "{:.200}", t.text);
    }
}

#[test]
fn deep_math_carriers() {
    let depth = 20_000;
    let katex = format!(
        "<p>k</p><span class=katex>{}<annotation encoding=\"application/x-tex\">e^x</annotation>",
        "<span>".repeat(depth)
    );
    let t = small_stack(move || extract_text(&katex));
    assert!(t.text.contains("$e^x$"), "{:.200}", t.text);
    let annotated = format!(
        "<math>{}<semantics><mi>y</mi><annotation encoding=\"TeX\">y^2</annotation>",
        "<mrow>".repeat(depth)
    );
    let t = small_stack(move || extract_text(&annotated));
    assert!(t.text.contains("$y^2$"), "{:.200}", t.text);
    let tex = format!(
        "{}<script type=\"math/tex\">a+b</script>",
        "<div>".repeat(depth)
    );
    let t = small_stack(move || extract_text(&tex));
    assert!(t.text.contains("$a+b$"), "{:.200}", t.text);
}

#[test]
fn deep_skipped_subtrees_and_mixed_soup() {
    let mut soup = String::new();
    for i in 0..30_000 {
        soup.push_str(["<div>", "<b>", "<li>", "<td>", "<mrow>", "<span>", "</b>"][i % 7]);
    }
    soup.push_str("end of soup");
    let t = small_stack(move || extract_text(&soup));
    assert!(t.text.contains("end of soup"), "{:.200}", t.text);
    let nav = format!("<p>keep</p><nav>{}drop</nav>", "<div>".repeat(50_000));
    let t = small_stack(move || extract_text(&nav));
    assert_eq!(t.text, "keep");
}

#[test]
fn rebuilt_formatting_and_unmatched_end_tags_stay_bounded() {
    // html5ever re-creates every distinct unclosed formatting element at each block: without a cap this
    // builds n²/2 nodes (4,000 repetitions: 8 M).
    let html: String = (0..20_000)
        .map(|i| format!("<div><b id={i}>x{i}</div>"))
        .collect();
    let t = small_stack(move || extract_text(&html));
    assert!(t.text.contains("x19999"), "{:.200}", t.text);
    assert!(t.dropped_tags > 19_000, "{}", t.dropped_tags);
    assert!(t.max_depth < 100, "{}", t.max_depth);
    // Unmatched end tags under deep inline nesting (each scans the open-element stack).
    let html = format!("{}text{}", "<span>".repeat(50_000), "</p>".repeat(50_000));
    let t = small_stack(move || extract_text(&html));
    assert!(t.text.contains("text"));
    assert!(t.max_depth <= MAX_STRUCTURE_DEPTH + 8, "{}", t.max_depth);
}

#[test]
fn foreign_content_cannot_hide_nesting() {
    // Found by the fuzzer: markup the bound's bookkeeping took for raw text (a `<script>` inside SVG or
    // MathML is not raw) or for a breakout that never happened (its tag was dropped).
    let deep = "<div>".repeat(20_000);
    let cases = [
        format!("{}<math><div><script>{deep}x", "<ul>".repeat(600)),
        format!("<svg><mi><script>{deep}x"),
        format!("<math><annotation-xml><script>{deep}x"),
        format!("<math><annotation-xml encoding=\"text/html\"><script>{deep}</script>{deep}x"),
        format!("<mfrac><math><mi><math></mfrac><![CDATA[{deep}x"),
        format!("<math><mi><mglyph><script>{deep}x"),
    ];
    for html in cases {
        let head = html[..40].to_string();
        let t = small_stack(move || extract_text(&html));
        assert!(
            t.max_depth <= 2 * MAX_STRUCTURE_DEPTH,
            "{head}: {}",
            t.max_depth
        );
    }
}
