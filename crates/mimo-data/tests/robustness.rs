//! Damaged and hostile input: poison documents, failing shards, stale temporaries, broken WARC files
//! and bad JSONL lines must cost only themselves, with the file and line named.

use mimo_data::warc::{read_warc, WarcErrorKind, WarcLimits};
use mimo_data::{classifier_train, extract, filter, ClassifierTrainArgs, ExtractArgs, FilterArgs};
use serde_json::{json, Value};
use std::io::Write;
use std::path::{Path, PathBuf};

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("mimo-data-robust-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn lines(p: &Path) -> Vec<Value> {
    std::fs::read_to_string(p)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn write_jsonl(p: &Path, docs: &[Value]) {
    let s: String = docs.iter().map(|d| format!("{d}\n")).collect();
    std::fs::write(p, s).unwrap();
}

fn temps_in(d: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(d)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp"))
        .collect();
    v.sort();
    v
}

#[test]
fn poison_document_does_not_stop_its_shard_or_the_next() {
    let d = tmpdir("poison");
    let a = d.join("a.jsonl");
    let b = d.join("b.jsonl");
    let mut poison = "<div>".repeat(50_000);
    poison.push_str("survivor");
    let mathml = format!("<math>{}<mi>z</mi>", "<mrow><mrow>".repeat(25_000));
    write_jsonl(
        &a,
        &[
            json!({"url": "p", "html": poison}),
            json!({"url": "m", "html": mathml}),
            json!({"url": "ok", "html": "<p>after the poison</p>"}),
        ],
    );
    write_jsonl(&b, &[json!({"url": "b", "html": "<p>second shard</p>"})]);
    let out = d.join("out");
    let args = ExtractArgs {
        inputs: vec![a, b],
        output: out.clone(),
        threads: 1,
        ..Default::default()
    };
    let r = extract(&args).unwrap();
    assert_eq!(r.shards_run, 2);
    let la = lines(&out.join("a.jsonl"));
    assert!(la[0]["text"].as_str().unwrap().contains("survivor"));
    assert_eq!(la[1]["text"], "$z$");
    assert_eq!(la[2]["text"], "after the poison");
    assert_eq!(lines(&out.join("b.jsonl"))[0]["text"], "second shard");
    assert!(out.join("a.done").exists() && out.join("b.done").exists());
    assert_eq!(r.extra["docs_flattened"], 2, "both deep documents");
    assert!(temps_in(&out).is_empty(), "{:?}", temps_in(&out));
}

#[test]
fn failing_shard_does_not_stop_the_others() {
    let d = tmpdir("failing");
    let good = d.join("good.jsonl");
    write_jsonl(&good, &[json!({"url": "g", "html": "<p>fine</p>"})]);
    let missing = d.join("missing.jsonl");
    let out = d.join("out");
    let e = extract(&ExtractArgs {
        inputs: vec![missing.clone(), good],
        output: out.clone(),
        ..Default::default()
    })
    .unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("1 of 2 units failed"), "{msg}");
    assert!(msg.contains(&missing.display().to_string()), "{msg}");
    assert!(!e.is_bad_input());
    assert_eq!(lines(&out.join("good.jsonl"))[0]["text"], "fine");
    assert!(out.join("good.done").exists() && !out.join("missing.done").exists());
    assert!(temps_in(&out).is_empty(), "{:?}", temps_in(&out));
}

#[test]
fn stale_temporaries_are_removed_on_resume() {
    let d = tmpdir("stale");
    let input = d.join("s.jsonl");
    write_jsonl(&input, &[json!({"url": "s", "html": "<p>resumed</p>"})]);
    let out = d.join("out");
    std::fs::create_dir_all(&out).unwrap();
    // Left by crashed runs (no such processes), and one of a live process (PID 1) that must stay.
    for name in [
        "s.jsonl.tmp4000000000",
        "s.jsonl.tmp4000000001",
        "s.done.tmp4000000002",
    ] {
        std::fs::write(out.join(name), "partial").unwrap();
    }
    std::fs::write(out.join("s.jsonl.tmp1"), "live").unwrap();
    std::fs::write(out.join("other.jsonl.tmp4000000003"), "not ours").unwrap();
    let args = ExtractArgs {
        inputs: vec![input],
        output: out.clone(),
        ..Default::default()
    };
    extract(&args).unwrap();
    assert_eq!(
        temps_in(&out),
        vec!["other.jsonl.tmp4000000003", "s.jsonl.tmp1"],
        "only the unit's dead temporaries go"
    );
    assert_eq!(lines(&out.join("s.jsonl"))[0]["text"], "resumed");
}

fn http_record(url: &str, html: &str) -> Vec<u8> {
    let http = format!("HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n\r\n{html}");
    record_with_length(url, &http, &http.len().to_string())
}

fn record_with_length(url: &str, block: &str, len: &str) -> Vec<u8> {
    let mut r = format!(
        "WARC/1.0\r\nWARC-Type: response\r\nWARC-Target-URI: {url}\r\n\
         Content-Type: application/http; msgtype=response\r\nContent-Length: {len}\r\n\r\n"
    )
    .into_bytes();
    r.extend(block.as_bytes());
    r.extend(b"\r\n\r\n");
    r
}

fn bad_records() -> Vec<Vec<u8>> {
    let page = "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n\r\n<p>lost</p>";
    vec![
        http_record("http://good/1", "<p>good one</p>"),
        record_with_length("http://bad/nan", page, "abc"),
        http_record("http://good/2", "<p>good two</p>"),
        record_with_length("http://bad/huge", page, "99999999999999"),
        http_record("http://good/3", "<p>good three</p>"),
        record_with_length("http://bad/long", page, "5000"),
        http_record("http://good/4", "<p>good four</p>"),
        record_with_length("http://bad/short", page, "20"),
        http_record("http://good/5", "<p>good five</p>"),
        b"WARC/1.0\r\nWARC-Type: response\r\nContent-Length: 400\r\n\r\nHTTP/1.1 200".to_vec(),
    ]
}

fn gzip(b: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(b).unwrap();
    e.finish().unwrap()
}

fn check_bad_records(l: &[Value]) {
    let texts: Vec<&str> = l.iter().filter_map(|v| v["text"].as_str()).collect();
    assert_eq!(
        texts,
        [
            "good one",
            "good two",
            "good three",
            "good four",
            "good five"
        ],
        "{l:?}"
    );
    for url in [
        "http://bad/nan",
        "http://bad/huge",
        "http://bad/long",
        "http://bad/short",
    ] {
        assert!(
            l.iter().any(|v| v["url"] == url && v["error"].is_string()),
            "{url} reported: {l:?}"
        );
    }
    let last = &l[l.len() - 1];
    assert!(
        last["error"].as_str().unwrap().contains("truncated"),
        "{last}"
    );
}

#[test]
fn warc_resynchronises_after_bad_lengths_plain_and_gzip() {
    let d = tmpdir("warc-bad");
    let recs = bad_records();
    let plain = d.join("plain.warc");
    std::fs::write(&plain, recs.concat()).unwrap();
    // One gzip member per record, plus a corrupt member and a decompression bomb in the middle.
    let mut gz = Vec::new();
    for (i, r) in recs.iter().enumerate() {
        gz.extend(gzip(r));
        if i == 2 {
            let mut corrupt = gzip(&http_record("http://corrupt/", "<p>x</p>"));
            let n = corrupt.len();
            corrupt[n / 2..n - 8].iter_mut().for_each(|b| *b ^= 0x5a);
            gz.extend(corrupt);
            let mut bomb =
                b"WARC/1.0\r\nWARC-Type: resource\r\nContent-Type: text/html\r\n".to_vec();
            bomb.extend(format!("Content-Length: {}\r\n\r\n", 64 << 20).as_bytes());
            bomb.resize(bomb.len() + (64 << 20), b'a');
            gz.extend(gzip(&bomb));
        }
    }
    let gzp = d.join("members.warc.gz");
    std::fs::write(&gzp, &gz).unwrap();
    let out = d.join("out");
    let r = extract(&ExtractArgs {
        inputs: vec![plain, gzp],
        output: out.clone(),
        ..Default::default()
    })
    .unwrap();
    check_bad_records(&lines(&out.join("plain.jsonl")));
    let lg = lines(&out.join("members.jsonl"));
    check_bad_records(&lg);
    let w = &r.shards[1].extra["warc"];
    // The bomb declares its 64 MiB length, so the record cap skips it before the gzip cap has to.
    let skipped = w["gzip_bombs"].as_u64().unwrap() + w["oversized"].as_u64().unwrap();
    assert!(skipped >= 1, "{w}");
    assert!(w["bad_gzip_members"].as_u64().unwrap() >= 1, "{w}");
    assert!(r.shards[0].extra["warc"]["resyncs"].as_u64().unwrap() >= 4);
    assert!(r.reasons["malformed:warc_length"] >= 8, "{:?}", r.reasons);
}

#[test]
fn oversized_records_are_skipped_and_counted() {
    let big = format!("<p>{}</p>", "word ".repeat(2_000));
    let mut w = http_record("http://big/", &big);
    w.extend(record_with_length(
        "http://video/",
        &"v".repeat(50_000),
        "50000",
    ));
    w.extend(http_record("http://after/", "<p>after big</p>"));
    let limits = WarcLimits {
        max_record_bytes: 4096,
        ..Default::default()
    };
    let mut docs = Vec::new();
    let st = read_warc(&w[..], &limits, |d| docs.push(d));
    assert_eq!(docs.len(), 2);
    assert_eq!(docs[0].url.as_deref(), Some("http://big/"));
    let e = docs[0].html.as_ref().unwrap_err();
    assert_eq!(e.kind, WarcErrorKind::Oversized);
    assert_eq!(e.kind.reason(), "oversized_record");
    assert!(docs[1].html.as_ref().unwrap().contains("after big"));
    assert_eq!((st.oversized, st.records, st.malformed), (2, 3, 0));
}

#[test]
fn warc_garbage_and_interrupted_headers() {
    let mut w = b"garbage before".to_vec();
    w.extend(vec![b'x'; 200_000]);
    w.extend(b"\r\n\r\nWARC/1.0\r\nWARC-Type: response\r\nWARC-Target-URI: http://cut/\r\n");
    w.extend(http_record("http://next/", "<p>next</p>"));
    w.extend(http_record("http://last/", "<p>last</p>"));
    let mut docs = Vec::new();
    let st = read_warc(&w[..], &WarcLimits::default(), |d| docs.push(d));
    let ok: Vec<_> = docs.iter().filter_map(|d| d.html.as_ref().ok()).collect();
    assert_eq!(ok.len(), 2, "{docs:?}");
    assert!(ok[0].contains("next") && ok[1].contains("last"));
    assert_eq!((st.malformed, st.resyncs), (2, 2), "{st:?}");
    assert_eq!(docs[1].url.as_deref(), Some("http://cut/"));
}

#[test]
fn warc_length_ending_inside_the_next_record_start() {
    // The claimed block ends three bytes into the next record's "WARC/1.0" line.
    let page = "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n\r\n<p>cut</p>";
    let len = (page.len() + "\r\n\r\nWAR".len()).to_string();
    let mut w = record_with_length("http://cut/", page, &len);
    w.extend(http_record("http://next/", "<p>next one</p>"));
    for len in ["0", "1"] {
        w.extend(record_with_length("http://short/", page, len));
        w.extend(http_record("http://after/", "<p>after short</p>"));
    }
    let mut docs = Vec::new();
    let st = read_warc(&w[..], &WarcLimits::default(), |d| docs.push(d));
    let ok: Vec<_> = docs.iter().filter_map(|d| d.html.as_ref().ok()).collect();
    assert_eq!(ok.len(), 3, "{docs:?}");
    assert!(
        ok[0].contains("next one") && ok[2].contains("after short"),
        "{ok:?}"
    );
    assert_eq!(st.malformed, 3, "{st:?}");
}

#[test]
fn bad_jsonl_lines_name_file_and_line() {
    let d = tmpdir("jsonl-lines");
    let input = d.join("in.jsonl");
    let mut b = Vec::new();
    b.extend(b"{\"text\": \"fine words here for the filter to look at\"}\n");
    b.extend(b"{\"text\": \"bad \xff utf8\"}\n");
    b.extend(b"\n");
    b.extend(b"[1, 2]\n");
    b.extend(b"{\"text\": ");
    std::fs::write(&input, b).unwrap();
    let out = d.join("out");
    filter(&FilterArgs {
        inputs: vec![input.clone()],
        output: out.clone(),
        ..Default::default()
    })
    .unwrap();
    let exc = lines(&out.join("in.excluded.jsonl"));
    let p = input.display().to_string();
    let by_line = |n: u64| {
        exc.iter()
            .find(|e| e["line"] == n)
            .unwrap_or_else(|| panic!("line {n}: {exc:?}"))
    };
    for (n, reason) in [
        (2, "invalid_utf8"),
        (4, "not_an_object"),
        (5, "truncated_json"),
    ] {
        let e = by_line(n);
        assert_eq!(e["reason"], format!("malformed:{reason}"));
        assert!(
            e["detail"]
                .as_str()
                .unwrap()
                .starts_with(&format!("{p}:{n}:")),
            "{e}"
        );
    }
    // Classifier training skips such lines and says which.
    let train = d.join("train.jsonl");
    let mut t = String::new();
    for i in 0..20 {
        t.push_str(&format!(
            "{}\n",
            json!({"text": format!("math {i} equation"), "label": "math"})
        ));
        t.push_str(&format!(
            "{}\n",
            json!({"text": format!("cake {i} recipe"), "label": "food"})
        ));
    }
    t.push_str("{oops\n{\"text\": \"no label\"}\n");
    std::fs::write(&train, t).unwrap();
    let r = classifier_train(&ClassifierTrainArgs {
        inputs: vec![train.clone()],
        model: d.join("model.json"),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(r.malformed, 2);
    let samples = r.extra["bad_line_samples"].to_string();
    let tp = train.display().to_string();
    assert!(samples.contains(&format!("{tp}:41:")), "{samples}");
    assert!(samples.contains(&format!("{tp}:42:")), "{samples}");
}

#[test]
fn whole_file_json_errors_name_the_line() {
    let d = tmpdir("json-files");
    std::fs::write(
        d.join("index.json"),
        b"{\n  \"dtype\": \"u32\",\n  \"x\": \"\xff\"\n}",
    )
    .unwrap();
    let e = mimo_data::PackedDataset::open(&d).unwrap_err().to_string();
    assert!(e.contains("index.json:3:") && e.contains("UTF-8"), "{e}");
    std::fs::write(d.join("index.json"), "{\n  \"dtype\": \"u32\",\n  oops\n}").unwrap();
    let e = mimo_data::PackedDataset::open(&d).unwrap_err().to_string();
    assert!(e.contains("index.json:3:"), "{e}");
    let m = d.join("model.json");
    std::fs::write(&m, "{\"labels\": [\n1,]}").unwrap();
    let e = mimo_data::Classifier::load(&m).unwrap_err().to_string();
    assert!(e.contains("model.json:2:"), "{e}");
}
