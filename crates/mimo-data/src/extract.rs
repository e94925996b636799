//! `mimo data extract`: HTML (JSONL `{"url","html"}` or WARC) → JSONL `{"url","text"}` / `{"url","error"}`.

use crate::common::{
    bar, check_task, owned, read_marker, shard_outputs, stems, write_json_file, AtomicWriter,
    JsonlReader, Line, Report, ShardReport,
};
use crate::html::html_to_text;
use crate::warc::read_warc;
use crate::DataError;
use rayon::prelude::*;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::Instant;

/// Input container format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum InputFormat {
    /// `.warc`/`.warc.gz` names are WARC, everything else JSONL.
    #[default]
    Auto,
    /// JSONL lines `{"url": ..., "html": ...}`.
    Jsonl,
    /// WARC (plain or gzip); `response` and `resource` records with an HTML content type are used.
    Warc,
}

/// Arguments of `mimo data extract`.
#[derive(Debug, Clone)]
pub struct ExtractArgs {
    /// Input shards.
    pub inputs: Vec<PathBuf>,
    /// Output directory (`<stem>.jsonl` per input), or the output file when there is one input and it ends in `.jsonl`.
    pub output: PathBuf,
    /// Input format.
    pub format: InputFormat,
    /// This task's index.
    pub task_index: usize,
    /// Number of tasks.
    pub num_tasks: usize,
    /// Worker threads (0: all cores).
    pub threads: usize,
    /// Redo shards that already have a completion marker.
    pub force: bool,
    /// Show progress bars on stderr.
    pub progress: bool,
}

impl Default for ExtractArgs {
    fn default() -> Self {
        ExtractArgs {
            inputs: vec![],
            output: PathBuf::new(),
            format: InputFormat::Auto,
            task_index: 0,
            num_tasks: 1,
            threads: 0,
            force: false,
            progress: false,
        }
    }
}

struct Item {
    url: Option<String>,
    html: Result<String, (String, String)>,
}

const BATCH: usize = 256;

/// Extracts text from every input shard owned by this task. Output lines keep input order; unreadable
/// documents become `{"url", "error"}` lines and are counted by reason.
pub fn extract(args: &ExtractArgs) -> Result<Report, DataError> {
    check_task(args.task_index, args.num_tasks)?;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(args.threads)
        .build()
        .map_err(|e| DataError::Usage(format!("thread pool: {e}")))?;
    let start = Instant::now();
    let stems = stems(&args.inputs)?;
    let mut report = Report::new("extract", args.task_index, args.num_tasks);
    let mut bytes_in = 0u64;
    for i in owned(args.inputs.len(), args.task_index, args.num_tasks) {
        let input = &args.inputs[i];
        let (out, _exc, marker) = shard_outputs(&args.output, &stems[i], args.inputs.len());
        if !args.force {
            if let Some(mut m) = read_marker(&marker) {
                m.resumed = true;
                report.add(m);
                continue;
            }
        }
        let t0 = Instant::now();
        let mut sr = ShardReport {
            input: input.display().to_string(),
            output: out.display().to_string(),
            ..Default::default()
        };
        let mut w = AtomicWriter::create(&out)?;
        let pb = bar(args.progress, 0, &format!("extract {}", stems[i]));
        let warc = match args.format {
            InputFormat::Warc => true,
            InputFormat::Jsonl => false,
            InputFormat::Auto => input.to_string_lossy().contains(".warc"),
        };
        let mut batch: Vec<Item> = Vec::with_capacity(BATCH);
        let mut err: Option<DataError> = None;
        let flush = |batch: &mut Vec<Item>,
                     sr: &mut ShardReport,
                     w: &mut AtomicWriter|
         -> Result<(), DataError> {
            let lines: Vec<(Value, Option<String>)> =
                pool.install(|| batch.par_iter().map(render).collect());
            for (v, reason) in lines {
                sr.docs_in += 1;
                match reason {
                    None => sr.docs_out += 1,
                    Some(r) => {
                        if r.starts_with("malformed") {
                            sr.malformed += 1;
                        }
                        sr.exclude(&r);
                    }
                }
                w.write_json_line(&v)?;
            }
            pb.inc(batch.len() as u64);
            batch.clear();
            Ok(())
        };
        if warc {
            let r = crate::common::open_read(input)?;
            let (skipped, _malformed) = read_warc(r, |d| {
                if err.is_some() {
                    return;
                }
                if let Ok(h) = &d.html {
                    bytes_in += h.len() as u64;
                }
                batch.push(Item {
                    url: d.url,
                    html: d.html.map_err(|e| (warc_reason(&e).into(), e)),
                });
                if batch.len() >= BATCH {
                    if let Err(e) = flush(&mut batch, &mut sr, &mut w) {
                        err = Some(e);
                    }
                }
            });
            sr.extra
                .insert("warc_records_skipped".into(), json!(skipped));
        } else {
            let mut r = JsonlReader::open(input)?;
            while let Some((line, l)) = r.next_line() {
                let item = match l {
                    Line::Malformed(reason, detail) => Item {
                        url: None,
                        html: Err((
                            format!("malformed:{reason}"),
                            format!("{}:{line}: {detail}", input.display()),
                        )),
                    },
                    Line::Doc(mut d) => {
                        let url = d.get("url").and_then(Value::as_str).map(str::to_string);
                        match d.remove("html") {
                            Some(Value::String(h)) => {
                                bytes_in += h.len() as u64;
                                Item { url, html: Ok(h) }
                            }
                            _ => Item {
                                url,
                                html: Err((
                                    "malformed:missing_html".into(),
                                    format!("{}:{line}: no string field \"html\"", input.display()),
                                )),
                            },
                        }
                    }
                };
                batch.push(item);
                if batch.len() >= BATCH {
                    flush(&mut batch, &mut sr, &mut w)?;
                }
            }
        }
        if let Some(e) = err {
            return Err(e);
        }
        flush(&mut batch, &mut sr, &mut w)?;
        pb.finish_and_clear();
        w.finish()?;
        sr.seconds = t0.elapsed().as_secs_f64();
        write_json_file(&marker, &sr)?;
        report.add(sr);
    }
    report.finish(start);
    report.extra.insert("html_bytes".into(), json!(bytes_in));
    report.extra.insert(
        "mb_per_s".into(),
        json!(bytes_in as f64 / 1e6 / report.seconds.max(1e-9)),
    );
    Ok(report)
}

fn warc_reason(e: &str) -> &'static str {
    if e.contains("truncated") {
        "malformed:truncated_warc"
    } else if e.contains("UTF-8") {
        "malformed:invalid_utf8"
    } else {
        "malformed:warc"
    }
}

fn render(item: &Item) -> (Value, Option<String>) {
    match &item.html {
        Err((reason, detail)) => (
            json!({"url": item.url, "error": detail}),
            Some(reason.clone()),
        ),
        Ok(html) => {
            // html5ever never fails; guard against panics in the hand-written pass all the same, so one
            // document can never take the others down.
            match std::panic::catch_unwind(|| html_to_text(html)) {
                Ok(t) if t.trim().is_empty() => (
                    json!({"url": item.url, "error": "no text extracted"}),
                    Some("no_text".into()),
                ),
                Ok(t) => (json!({"url": item.url, "text": t}), None),
                Err(_) => (
                    json!({"url": item.url, "error": "extractor panicked"}),
                    Some("internal_error".into()),
                ),
            }
        }
    }
}

/// Extracts one HTML string (for tests and benchmarks).
pub fn extract_html(html: &str) -> String {
    html_to_text(html)
}
