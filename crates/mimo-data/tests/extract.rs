//! Extraction on committed HTML fixtures: every math/code notation must survive as LaTeX / fenced code.

use mimo_data::extract::extract_html;
use mimo_data::{extract, ExtractArgs};
use std::path::PathBuf;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/data")
        .join(name)
}

fn text(name: &str) -> String {
    let html = std::fs::read_to_string(fixture(&format!("html/{name}"))).expect("fixture");
    let t = extract_html(&html);
    eprintln!("===== {name}\n{t}\n=====");
    t
}

#[test]
fn mathjax_script_tags() {
    let t = text("mathjax.html");
    assert!(t.contains("$ax^2+bx+c=0$"), "{t}");
    assert!(
        t.contains("$$x = \\frac{-b \\pm \\sqrt{b^2-4ac}}{2a}$$"),
        "{t}"
    );
    assert!(t.contains("$\\Delta = b^2 - 4ac$"), "{t}");
    // Rendered MathJax copies and boilerplate are gone.
    assert!(!t.contains("ax2+bx+c"), "{t}");
    assert!(!t.contains("√"), "{t}");
    assert!(!t.contains("Copyright"), "{t}");
    assert!(!t.contains("sidebar text"), "{t}");
    assert!(!t.contains("Algebra"), "{t}");
    assert!(t.contains("The quadratic formula"));
}

#[test]
fn tex_delimiters() {
    let t = text("tex_delims.html");
    assert!(t.contains("$a^2 + b^2 = c^2$"), "{t}");
    assert!(
        t.contains("$$\\int_{-\\infty}^{\\infty} e^{-x^2}\\,dx = \\sqrt{\\pi}$$"),
        "{t}"
    );
    assert!(t.contains("$$E = mc^2$$"), "{t}");
    assert!(t.contains("$p = mv$"), "{t}");
    assert!(!t.contains("cookies"), "{t}");
}

#[test]
fn katex_annotation() {
    let t = text("katex.html");
    assert!(t.contains("$e^{i\\pi} + 1 = 0$"), "{t}");
    assert!(
        t.contains("$$\\sum_{n=1}^{\\infty} \\frac{1}{n^2} = \\frac{\\pi^2}{6}$$"),
        "{t}"
    );
    assert!(!t.contains("∑ 1/n²"), "{t}");
    assert!(t.contains("is beautiful"));
}

#[test]
fn mathml_with_annotation() {
    let t = text("mathml_annot.html");
    assert!(t.contains("$A = \\pi r^2$"), "{t}");
    assert!(t.contains("for radius r."));
}

#[test]
fn mathml_without_annotation() {
    let t = text("mathml_plain.html");
    assert!(t.contains("$$\\phi=\\frac{1+\\sqrt{5}}{2}$$"), "{t}");
    assert!(t.contains("${\\phi}^{2}=\\phi+1$"), "{t}");
    assert!(t.contains("${x}_{n}\\leq{\\sum}_{k=1}^{n}k$"), "{t}");
}

#[test]
fn img_alt_formulas() {
    let t = text("img_alt.html");
    assert!(t.contains("$\\alpha+\\beta$ is a sum"), "{t}");
    assert!(t.contains("$\\sin ^{2}x+\\cos ^{2}x=1$ always"), "{t}");
    assert_eq!(
        t.matches("\\sin").count(),
        1,
        "no duplicate from the fallback image: {t}"
    );
    assert!(!t.contains("a cat sitting"), "{t}");
}

#[test]
fn code_blocks_keep_indentation() {
    let t = text("code.html");
    assert!(t.contains("`bisect(xs, x)`"), "{t}");
    let py = "```python\ndef bisect(xs, x):\n    lo, hi = 0, len(xs)\n    while lo < hi:\n        mid = (lo + hi) // 2\n        if xs[mid] < x:\n            lo = mid + 1\n        else:\n            hi = mid\n    return lo\n```";
    assert!(t.contains(py), "{t}");
    let rs = "```rust\nfn main() {\n    let v = vec![1, 2, 3];\n    println!(\"{:?}\", v);\n}\n```";
    assert!(t.contains(rs), "{t}");
    assert!(!t.contains("Copyright"), "{t}");
    assert!(!t.contains("API"), "{t}");
}

#[test]
fn broken_html_still_extracts() {
    let t = text("broken.html");
    assert!(t.contains("Unclosed paragraph with bold and italic"), "{t}");
    assert!(t.contains("$x^2$ survives & entities <decode>"), "{t}");
    assert!(t.contains("cell one | cell two"), "{t}");
}

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("mimo-data-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn lines(p: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(p)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn jsonl_in_order_with_malformed_lines() {
    let d = tmpdir("jsonl");
    let good = std::fs::read_to_string(fixture("html/katex.html")).unwrap();
    let mut bytes = Vec::new();
    bytes.extend(serde_json::to_vec(&serde_json::json!({"url": "u1", "html": good})).unwrap());
    bytes.extend(b"\n{\"url\": \"u2\", \"html\": \"<p>bad \xff\xfe utf8</p>\"}\n");
    bytes.extend(b"not json at all\n");
    bytes.extend(b"{\"url\": \"u4\"}\n");
    bytes.extend(
        serde_json::to_vec(&serde_json::json!({"url": "u5", "html": "<p>fifth <b>doc</p>"}))
            .unwrap(),
    );
    bytes.extend(b"\n{\"url\": \"u6\", \"html\": \"<p>trunc");
    let input = d.join("in.jsonl");
    std::fs::write(&input, bytes).unwrap();
    let out = d.join("out.jsonl");
    let r = extract(&ExtractArgs {
        inputs: vec![input],
        output: out.clone(),
        ..Default::default()
    })
    .unwrap();
    let l = lines(&out);
    assert_eq!(l.len(), 6);
    assert_eq!(l[0]["url"], "u1");
    assert!(l[0]["text"]
        .as_str()
        .unwrap()
        .contains("$e^{i\\pi} + 1 = 0$"));
    assert!(
        l[1]["error"].as_str().unwrap().contains("line 2")
            || l[1]["error"].as_str().unwrap().contains(":2:"),
        "{:?}",
        l[1]
    );
    assert!(l[2]["error"].is_string());
    assert_eq!(l[3]["url"], "u4");
    assert!(l[3]["error"].is_string());
    assert_eq!(l[4]["text"], "fifth doc");
    assert!(l[5]["error"].is_string());
    assert_eq!(r.docs_in, 6);
    assert_eq!(r.docs_out, 2);
    assert_eq!(r.malformed, 4);
    assert_eq!(r.reasons["malformed:invalid_utf8"], 1);
    assert_eq!(r.reasons["malformed:truncated_json"], 1);
}

fn warc_record(url: &str, html: &str) -> Vec<u8> {
    let http = format!("HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\n\r\n{html}");
    let mut r = format!(
        "WARC/1.0\r\nWARC-Type: response\r\nWARC-Target-URI: {url}\r\nContent-Type: application/http; msgtype=response\r\nContent-Length: {}\r\n\r\n",
        http.len()
    )
    .into_bytes();
    r.extend(http.as_bytes());
    r.extend(b"\r\n\r\n");
    r
}

#[test]
fn warc_input_plain_gzip_and_truncated() {
    let d = tmpdir("warc");
    let mut w =
        b"WARC/1.0\r\nWARC-Type: warcinfo\r\nContent-Length: 4\r\n\r\nabcd\r\n\r\n".to_vec();
    w.extend(warc_record("http://a/", "<p>first page $x$</p>"));
    w.extend(warc_record(
        "http://b/",
        &std::fs::read_to_string(fixture("html/mathjax.html")).unwrap(),
    ));
    let plain = d.join("a.warc");
    std::fs::write(&plain, &w).unwrap();
    // gzip copy
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(&w).unwrap();
    let gz = d.join("b.warc.gz");
    std::fs::write(&gz, enc.finish().unwrap()).unwrap();
    // truncated: second record cut in the middle
    let mut t = w.clone();
    t.truncate(w.len() - 300);
    let trunc = d.join("c.warc");
    std::fs::write(&trunc, &t).unwrap();
    let out = d.join("out");
    let r = extract(&ExtractArgs {
        inputs: vec![plain, gz, trunc],
        output: out.clone(),
        ..Default::default()
    })
    .unwrap();
    for stem in ["a", "b"] {
        let l = lines(&out.join(format!("{stem}.jsonl")));
        assert_eq!(l.len(), 2, "{stem}");
        assert_eq!(l[0]["url"], "http://a/");
        assert_eq!(l[0]["text"], "first page $x$");
        assert!(l[1]["text"].as_str().unwrap().contains("$ax^2+bx+c=0$"));
    }
    let l = lines(&out.join("c.jsonl"));
    assert_eq!(l.len(), 2);
    assert_eq!(l[0]["text"], "first page $x$");
    assert_eq!(l[1]["url"], "http://b/");
    assert!(l[1]["error"].as_str().unwrap().contains("truncated"));
    assert_eq!(r.reasons["malformed:truncated_warc"], 1);
    assert!(out.join("c.done").exists());
}
