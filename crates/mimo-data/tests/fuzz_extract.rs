//! Property tests of the extractor and the WARC reader on hostile input, each case on a 256 KiB stack.
//!
//! - HTML: random tag soup (block, table, list, MathML, code, script and math-carrier tags, unclosed and
//!   mismatched, some runs nested up to 20,000 deep), entities, comments and lossily decoded invalid
//!   UTF-8 through [`extract_text`]. Properties: no panic or stack overflow; the tree stays within the
//!   nesting bound; the text is trimmed and not much longer than the input; text inside the soup survives.
//! - WARC: random bytes and WARC fragments, and valid files with one record mutated (plain and as gzip
//!   members, the compressed bytes mutated too) through the reader. Properties: no panic; no payload over
//!   the cap; records before the damage come out intact; records after it come out intact unless a
//!   mutated Content-Length happened to swallow them whole.
//!
//! Cases: env `MIMO_FUZZ_CASES` per property (default 2,000: about 6 s for the four properties in the
//! test build on 2 cores).

use mimo_data::html::{extract_text, MAX_STRUCTURE_DEPTH};
use mimo_data::warc::{read_warc, read_warc_file, WarcDoc, WarcLimits};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use std::io::Write;

const SMALL_STACK: usize = 256 << 10;

fn cases() -> u32 {
    let n = std::env::var("MIMO_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    eprintln!("fuzz_extract: {n} cases per property (MIMO_FUZZ_CASES)");
    n
}

/// Runs a property on a small-stack thread (an overflow aborts the binary, failing the test).
fn run_small_stack<S: Strategy + Send + 'static>(
    strategy: S,
    test: fn(S::Value) -> Result<(), TestCaseError>,
) {
    let n = cases();
    let done = std::thread::Builder::new()
        .stack_size(SMALL_STACK)
        .spawn(move || {
            let config = Config {
                cases: n,
                failure_persistence: None,
                ..Config::default()
            };
            TestRunner::new(config)
                .run(&strategy, test)
                .map_err(|e| e.to_string())
        })
        .map(|h| h.join());
    match done {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => panic!("{e}"),
        Ok(Err(_)) => panic!("property panicked"),
        Err(e) => panic!("spawn: {e}"),
    }
}

const TAGS: &[&str] = &[
    "div",
    "b",
    "i",
    "span",
    "p",
    "td",
    "th",
    "tr",
    "table",
    "tbody",
    "ul",
    "ol",
    "li",
    "a",
    "math",
    "mrow",
    "mfrac",
    "msup",
    "msub",
    "msqrt",
    "mi",
    "mn",
    "mo",
    "mtext",
    "semantics",
    "annotation",
    "pre",
    "code",
    "script",
    "style",
    "textarea",
    "title",
    "svg",
    "select",
    "option",
    "button",
    "font",
    "nav",
    "br",
    "img",
    "template",
    "header",
    "main",
    "mglyph",
    "foreignObject",
    "desc",
    "annotation-xml",
    "caption",
];

const ATTRS: &[&str] = &[
    "",
    " class=katex",
    " class=\"language-python\"",
    " type=\"math/tex\"",
    " type=\"math/tex; mode=display\"",
    " encoding=\"application/x-tex\"",
    " display=block",
    " class=MathJax",
    " alt=\"\\frac{a}{b}\"",
    " href=x",
    " hidden",
    " id='a>b'",
    " style=\"display:none\"",
];

const BITS: &[&str] = &[
    "&amp;",
    "&lt;",
    "&#x41;",
    "&#99999999;",
    "&bogus;",
    "&",
    "<",
    ">",
    "<!--",
    "-->",
    "<!-- c -->",
    "<![CDATA[",
    "]]>",
    "\\(x^2\\)",
    "$$",
    "</",
    "<!doctype html>",
    "\u{0}",
    "```",
    "\n",
    "  ",
];

fn tag() -> impl Strategy<Value = &'static str> {
    prop::sample::select(TAGS)
}

/// One piece of soup as bytes (invalid UTF-8 included), and whether it is well-formed markup or text
/// (not a stray `<`, comment opener, CDATA or raw bytes that may swallow what follows).
fn piece() -> impl Strategy<Value = (bool, Vec<u8>)> {
    prop_oneof![
        4 => (tag(), prop::sample::select(ATTRS))
            .prop_map(|(t, a)| (true, format!("<{t}{a}>").into_bytes())),
        3 => tag().prop_map(|t| (true, format!("</{t}>").into_bytes())),
        3 => "[a-z0-9 ]{1,12}".prop_map(|s| (true, s.into_bytes())),
        2 => prop::sample::select(BITS).prop_map(|b| (false, b.as_bytes().to_vec())),
        1 => prop::collection::vec(any::<u8>(), 1..8).prop_map(|b| (false, b)),
        1 => (tag(), prop_oneof![1usize..64, 64usize..2_000, 2_000usize..=20_000])
            .prop_map(|(t, n)| (true, format!("<{t}>").repeat(n).into_bytes())),
    ]
}

/// The soup as text, and whether its trailing word must come out: only well-formed pieces and none of
/// the elements that hide or transform their content (raw text, code, math, boilerplate, links, …).
fn soup() -> impl Strategy<Value = (String, bool)> {
    prop::collection::vec(piece(), 0..40).prop_map(|ps| {
        let benign = ps.iter().all(|(ok, _)| *ok);
        let mut b: Vec<u8> = ps.into_iter().flat_map(|(_, p)| p).collect();
        b.extend_from_slice(b" zzsurvivorzz");
        let html = String::from_utf8_lossy(&b).into_owned();
        let plain = benign && !HIDING.iter().any(|m| html.contains(m));
        (html, plain)
    })
}

/// Markup whose content may legitimately not come out as plain text.
const HIDING: &[&str] = &[
    "<script",
    "<style",
    "<textarea",
    "<title",
    "<math",
    "<pre",
    "<code",
    "<annotation",
    "<nav",
    "<header",
    "<template",
    "<select",
    "<option",
    "<svg",
    "<button",
    "<a ",
    "<a>",
    "hidden",
    "display:",
    "katex",
    "MathJax",
    "type=",
    "<mi",
    "<mn",
    "<mo",
    "<mtext",
    "<semantics",
    "<mr",
    "<mf",
    "<ms",
];

fn check_html((html, plain): (String, bool)) -> Result<(), TestCaseError> {
    let t = extract_text(&html);
    prop_assert!(
        t.max_depth <= 2 * MAX_STRUCTURE_DEPTH + 64,
        "depth {}",
        t.max_depth
    );
    prop_assert_eq!(t.text.trim(), t.text.as_str());
    prop_assert!(
        t.text.len() <= 4 * html.len() + 64,
        "{} from {}",
        t.text.len(),
        html.len()
    );
    if plain {
        prop_assert!(t.text.contains("zzsurvivorzz"), "{:.300}", t.text);
    }
    Ok(())
}

#[test]
fn fuzz_html_soup() {
    run_small_stack(soup(), check_html);
}

// ---- WARC ----

/// Limits small enough that the oversized and bomb paths run on small inputs.
fn limits() -> WarcLimits {
    WarcLimits {
        max_record_bytes: 4096,
        max_header_bytes: 1024,
        max_gzip_ratio: 20,
    }
}

fn page(j: usize) -> String {
    format!("<p>page {j} marker{j}z</p>")
}

fn record(j: usize) -> Vec<u8> {
    let http = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n\r\n{}",
        page(j)
    );
    let mut r = format!(
        "WARC/1.0\r\nWARC-Type: response\r\nWARC-Target-URI: http://r/{j}\r\n\
         Content-Type: application/http; msgtype=response\r\nContent-Length: {}\r\n\r\n",
        http.len()
    )
    .into_bytes();
    r.extend(http.as_bytes());
    r.extend(b"\r\n\r\n");
    r
}

const FRAGMENTS: &[&str] = &[
    "WARC/1.0\r\n",
    "WARC/1.1\n",
    "WARC-Type: response\r\n",
    "WARC-Type: resource\r\n",
    "Content-Type: application/http; msgtype=response\r\n",
    "Content-Type: text/html; charset=iso-8859-1\r\n",
    "Content-Length: 0\r\n",
    "Content-Length: 40\r\n",
    "Content-Length: 99999999999999999999\r\n",
    "Content-Length: -5\r\n",
    "\r\n",
    "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n\r\n<p>x</p>",
    "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    "HTTP/1.1 200 OK\r\nContent-Encoding: br\r\nContent-Type: text/html\r\n\r\nxx",
];

fn warc_soup() -> impl Strategy<Value = Vec<u8>> {
    let part = prop_oneof![
        3 => prop::sample::select(FRAGMENTS).prop_map(|f| f.as_bytes().to_vec()),
        2 => prop::collection::vec(any::<u8>(), 0..64),
        1 => (0usize..8).prop_map(record),
    ];
    prop::collection::vec(part, 0..24).prop_map(|p| p.concat())
}

fn read_all(b: &[u8]) -> Vec<WarcDoc> {
    let mut docs = Vec::new();
    read_warc(b, &limits(), |d| docs.push(d));
    docs
}

fn check_docs(docs: &[WarcDoc], input_len: usize) -> Result<(), TestCaseError> {
    prop_assert!(
        docs.len() <= input_len + 1,
        "{} docs from {input_len} bytes",
        docs.len()
    );
    for d in docs {
        if let Ok(h) = &d.html {
            prop_assert!(h.len() as u64 <= limits().max_record_bytes);
        }
    }
    Ok(())
}

#[test]
fn fuzz_warc_random_bytes() {
    run_small_stack(warc_soup(), |b| {
        let docs = read_all(&b);
        check_docs(&docs, b.len())
    });
}

/// How a record is damaged.
#[derive(Debug, Clone)]
enum Damage {
    Flip(usize, u8),
    Delete(usize, usize),
    Insert(usize, Vec<u8>),
    Length(String),
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        (any::<usize>(), 1u8..=255).prop_map(|(i, x)| Damage::Flip(i, x)),
        (any::<usize>(), 1usize..40).prop_map(|(i, n)| Damage::Delete(i, n)),
        (any::<usize>(), prop::collection::vec(any::<u8>(), 1..40))
            .prop_map(|(i, b)| Damage::Insert(i, b)),
        prop_oneof![
            "[0-9]{1,6}",
            "[0-9]{15,25}",
            Just(String::new()),
            "[ 0-9a-z+-]{1,8}",
        ]
        .prop_map(Damage::Length),
    ]
}

/// Applies `d` to `r`, keeping its final line break (so the next record still starts a line).
fn apply(r: &mut Vec<u8>, d: &Damage) {
    let room = r.len() - 1;
    match d {
        Damage::Flip(i, x) => r[i % room] ^= x,
        Damage::Delete(i, n) => {
            let at = i % room;
            r.drain(at..(at + n).min(room));
        }
        Damage::Insert(i, b) => {
            let at = i % room;
            r.splice(at..at, b.iter().copied());
        }
        Damage::Length(v) => {
            let s = String::from_utf8_lossy(r).into_owned();
            if let Some(k) = s.find("Content-Length: ") {
                let start = k + "Content-Length: ".len();
                let end = start + s[start..].find('\r').unwrap_or(0);
                r.splice(start..end, v.bytes());
            }
        }
    }
}

/// Records before the damaged one (bar its neighbour, whose boundary check reads into it) come out
/// exactly; later ones exactly or swallowed whole into another document.
fn check_recovery(docs: &[WarcDoc], n: usize, bad: usize) -> Result<(), TestCaseError> {
    let ok: Vec<&str> = docs
        .iter()
        .filter_map(|d| d.html.as_ref().ok())
        .map(|h| h.as_str())
        .collect();
    for j in (0..n).filter(|&j| j + 1 < bad || j > bad) {
        let p = page(j);
        let exact = ok.contains(&p.as_str());
        let swallowed = j > bad
            && ok
                .iter()
                .any(|h| *h != p && h.contains(&format!("marker{j}z")));
        prop_assert!(
            exact || swallowed,
            "record {j} of {n} lost (damaged {bad}): {docs:?}"
        );
    }
    Ok(())
}

fn mutated() -> impl Strategy<Value = (usize, usize, Damage, bool, Vec<(usize, u8)>)> {
    (
        2usize..7,
        any::<usize>(),
        damage(),
        any::<bool>(),
        prop::collection::vec((any::<usize>(), 1u8..=255), 0..3),
    )
}

#[test]
fn fuzz_warc_mutated_records() {
    let dir = std::env::temp_dir().join(format!("mimo-fuzz-warc-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    run_small_stack(mutated(), |(n, which, d, gz, flips)| {
        let bad = which % n;
        let mut recs: Vec<Vec<u8>> = (0..n).map(record).collect();
        apply(&mut recs[bad], &d);
        if !gz {
            let plain = recs.concat();
            let docs = read_all(&plain);
            check_docs(&docs, plain.len())?;
            return check_recovery(&docs, n, bad);
        }
        // One gzip member per record; the damaged record's member also gets byte flips.
        let mut file = Vec::new();
        for (j, r) in recs.iter().enumerate() {
            let mut m = gzip(r);
            if j == bad {
                for (i, x) in &flips {
                    let k = i % m.len();
                    m[k] ^= x;
                }
            }
            file.extend(m);
        }
        let path = std::env::temp_dir()
            .join(format!("mimo-fuzz-warc-{}", std::process::id()))
            .join(format!("{:?}.warc.gz", std::thread::current().id()));
        std::fs::write(&path, &file).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let mut docs = Vec::new();
        read_warc_file(&path, &limits(), |x| docs.push(x))
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        check_docs(&docs, file.len() * 64)?;
        if flips.is_empty() {
            check_recovery(&docs, n, bad)?;
        }
        Ok(())
    });
    let _ = std::fs::remove_dir_all(&dir);
}

fn gzip(b: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let _ = e.write_all(b);
    e.finish().unwrap_or_default()
}

#[test]
fn fuzz_gzip_bombs_are_capped() {
    // A member of one repeated byte expands ~230× at the fast level: far past the cap, abandoned.
    run_small_stack((1usize..4, 20_000usize..200_000), |(n, size)| {
        let mut file = Vec::new();
        let mut bomb = b"WARC/1.0\r\nWARC-Type: resource\r\nContent-Type: text/html\r\n".to_vec();
        bomb.extend(format!("Content-Length: {size}\r\n\r\n").as_bytes());
        bomb.resize(bomb.len() + size, b'a');
        for _ in 0..n {
            file.extend(gzip(&bomb));
        }
        file.extend(gzip(&record(0)));
        let path = std::env::temp_dir().join(format!(
            "mimo-fuzz-bomb-{}-{:?}.warc.gz",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::write(&path, &file).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let mut docs = Vec::new();
        let st = read_warc_file(&path, &limits(), |x| docs.push(x));
        let _ = std::fs::remove_file(&path);
        let st = st.map_err(|e| TestCaseError::fail(e.to_string()))?;
        check_docs(&docs, file.len() * 64)?;
        prop_assert_eq!(st.gzip_bombs, n as u64, "{:?}", st);
        prop_assert!(
            docs.iter()
                .any(|d| d.html.as_deref().ok() == Some(page(0).as_str())),
            "{docs:?}"
        );
        Ok(())
    });
}
