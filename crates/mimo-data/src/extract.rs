//! `mimo data extract`: HTML (JSONL `{"url","html"}` or WARC) → JSONL `{"url","text"}` / `{"url","error"}`.

use crate::common::{
    bar, check_task, for_each_unit, read_marker, shard_outputs, stems, write_json_file,
    AtomicWriter, JsonlReader, Line, Report, ShardReport,
};
use crate::html::{extract_text, html_to_text};
use crate::warc::{read_warc_file, WarcLimits, WarcStats};
use crate::DataError;
use indicatif::ProgressBar;
use rayon::prelude::*;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
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
    /// Caps of the WARC reader (record payload, header, gzip expansion).
    pub warc_limits: WarcLimits,
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
            warc_limits: WarcLimits::default(),
        }
    }
}

struct Item {
    url: Option<String>,
    html: Result<String, (String, String)>,
}

/// One rendered output line and how it counts.
struct Rendered {
    line: Value,
    /// Exclusion reason, `None` for a document with text.
    reason: Option<String>,
    /// Elements or tags whose structure was dropped (past [`MAX_STRUCTURE_DEPTH`](crate::html::MAX_STRUCTURE_DEPTH)).
    flattened: usize,
}

const BATCH: usize = 256;

/// Stack of the extraction threads: headroom only, since every HTML walk is iterative and no nesting
/// depth reaches the call stack.
const WORKER_STACK: usize = 16 << 20;

/// Figures summed over the shards of one run.
#[derive(Default)]
struct Totals {
    html_bytes: u64,
    docs_flattened: u64,
    warc: WarcStats,
}

/// Extracts text from every input shard owned by this task. Output lines keep input order; unreadable
/// documents become `{"url", "error"}` lines and are counted by reason. Documents nested deeper than
/// [`MAX_STRUCTURE_DEPTH`](crate::html::MAX_STRUCTURE_DEPTH) keep their text with the deep structure flattened (counted as
/// `docs_flattened`). A shard that fails (I/O) does not stop the others; see [`DataError::Units`].
pub fn extract(args: &ExtractArgs) -> Result<Report, DataError> {
    check_task(args.task_index, args.num_tasks)?;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(args.threads)
        .stack_size(WORKER_STACK)
        .build()
        .map_err(|e| DataError::Usage(format!("thread pool: {e}")))?;
    let start = Instant::now();
    let stems = stems(&args.inputs)?;
    let mut report = Report::new("extract", args.task_index, args.num_tasks);
    let mut totals = Totals::default();
    for_each_unit(&mut report, args.inputs.len(), |i| {
        let (out, _exc, marker) = shard_outputs(&args.output, &stems[i], args.inputs.len());
        if !args.force {
            if let Some(mut m) = read_marker(&marker) {
                m.resumed = true;
                return Ok(m);
            }
        }
        let sr = extract_shard(args, &pool, i, &out, &stems[i], &mut totals)?;
        write_json_file(&marker, &sr)?;
        Ok(sr)
    })?;
    report.finish(start);
    let x = &mut report.extra;
    x.insert("html_bytes".into(), json!(totals.html_bytes));
    x.insert(
        "mb_per_s".into(),
        json!(totals.html_bytes as f64 / 1e6 / report.seconds.max(1e-9)),
    );
    x.insert("docs_flattened".into(), json!(totals.docs_flattened));
    if totals.warc != WarcStats::default() {
        x.insert("warc".into(), json!(totals.warc));
    }
    Ok(report)
}

/// Renders batches of documents in parallel and writes them in order.
struct Batcher<'a> {
    pool: &'a rayon::ThreadPool,
    items: Vec<Item>,
    w: AtomicWriter,
    sr: ShardReport,
    flattened_docs: u64,
    pb: ProgressBar,
}

impl Batcher<'_> {
    fn push(&mut self, item: Item) -> Result<(), DataError> {
        self.items.push(item);
        if self.items.len() >= BATCH {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), DataError> {
        let items = std::mem::take(&mut self.items);
        let lines: Vec<Rendered> = self.pool.install(|| items.par_iter().map(render).collect());
        for r in lines {
            self.sr.docs_in += 1;
            if r.flattened > 0 {
                self.flattened_docs += 1;
            }
            match &r.reason {
                None => self.sr.docs_out += 1,
                Some(reason) => {
                    if reason.starts_with("malformed") {
                        self.sr.malformed += 1;
                    }
                    self.sr.exclude(reason);
                }
            }
            self.w.write_json_line(&r.line)?;
        }
        self.pb.inc(items.len() as u64);
        Ok(())
    }
}

/// Extracts one shard into `out`; returns its report (the caller writes the marker).
fn extract_shard(
    args: &ExtractArgs,
    pool: &rayon::ThreadPool,
    i: usize,
    out: &Path,
    stem: &str,
    totals: &mut Totals,
) -> Result<ShardReport, DataError> {
    let input = &args.inputs[i];
    let t0 = Instant::now();
    let mut b = Batcher {
        pool,
        items: Vec::with_capacity(BATCH),
        w: AtomicWriter::create(out)?,
        sr: ShardReport {
            input: input.display().to_string(),
            output: out.display().to_string(),
            ..Default::default()
        },
        flattened_docs: 0,
        pb: bar(args.progress, 0, &format!("extract {stem}")),
    };
    let warc = match args.format {
        InputFormat::Warc => true,
        InputFormat::Jsonl => false,
        InputFormat::Auto => input.to_string_lossy().contains(".warc"),
    };
    let bytes = if warc {
        let (bytes, st) = warc_items(input, &args.warc_limits, &mut b)?;
        b.sr.extra.insert("warc".into(), json!(st));
        // Kept for readers of older reports.
        b.sr.extra
            .insert("warc_records_skipped".into(), json!(st.skipped));
        add_warc(&mut totals.warc, &st);
        bytes
    } else {
        jsonl_items(input, &mut b)?
    };
    b.flush()?;
    b.pb.finish_and_clear();
    let Batcher {
        w,
        mut sr,
        flattened_docs,
        ..
    } = b;
    w.finish()?;
    totals.html_bytes += bytes;
    totals.docs_flattened += flattened_docs;
    sr.extra
        .insert("docs_flattened".into(), json!(flattened_docs));
    sr.seconds = t0.elapsed().as_secs_f64();
    Ok(sr)
}

/// Feeds the HTML records of a WARC file to `b`; returns the HTML bytes read and the reader's figures.
fn warc_items(
    input: &Path,
    limits: &WarcLimits,
    b: &mut Batcher<'_>,
) -> Result<(u64, WarcStats), DataError> {
    let mut bytes = 0u64;
    let mut err: Option<DataError> = None;
    let st = read_warc_file(input, limits, |d| {
        if err.is_some() {
            return;
        }
        if let Ok(h) = &d.html {
            bytes += h.len() as u64;
        }
        let html = d.html.map_err(|e| {
            let detail = format!("{}: {e}", input.display());
            (e.kind.reason().to_string(), detail)
        });
        if let Err(e) = b.push(Item { url: d.url, html }) {
            err = Some(e);
        }
    })?;
    match err {
        Some(e) => Err(e),
        None => Ok((bytes, st)),
    }
}

/// Feeds the documents of a JSONL file to `b`; returns the HTML bytes read.
fn jsonl_items(input: &Path, b: &mut Batcher<'_>) -> Result<u64, DataError> {
    let mut bytes = 0u64;
    let mut r = JsonlReader::open(input)?;
    while let Some((line, l)) = r.next_line() {
        let item = match l {
            Line::Malformed(reason, detail) => Item {
                url: None,
                html: Err((format!("malformed:{reason}"), detail)),
            },
            Line::Doc(mut d) => {
                let url = d.get("url").and_then(Value::as_str).map(str::to_string);
                match d.remove("html") {
                    Some(Value::String(h)) => {
                        bytes += h.len() as u64;
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
        b.push(item)?;
    }
    Ok(bytes)
}

fn add_warc(t: &mut WarcStats, s: &WarcStats) {
    t.records += s.records;
    t.skipped += s.skipped;
    t.malformed += s.malformed;
    t.oversized += s.oversized;
    t.resyncs += s.resyncs;
    t.bad_gzip_members += s.bad_gzip_members;
    t.gzip_bombs += s.gzip_bombs;
}

fn render(item: &Item) -> Rendered {
    let url = &item.url;
    let html = match &item.html {
        Err((reason, detail)) => {
            return Rendered {
                line: json!({"url": url, "error": detail}),
                reason: Some(reason.clone()),
                flattened: 0,
            }
        }
        Ok(html) => html,
    };
    // The walks are iterative and html5ever never fails; a panic would be a bug, caught here so that one
    // document never takes the shard down.
    let (line, reason, flattened) = match std::panic::catch_unwind(|| extract_text(html)) {
        Ok(t) if t.text.trim().is_empty() => (
            json!({"url": url, "error": "no text extracted"}),
            Some("no_text".to_string()),
            t.flattened + t.dropped_tags,
        ),
        Ok(t) => {
            let flat = t.flattened + t.dropped_tags;
            (json!({"url": url, "text": t.text}), None, flat)
        }
        Err(_) => (
            json!({"url": url, "error": "extractor panicked"}),
            Some("internal_error".to_string()),
            0,
        ),
    };
    Rendered {
        line,
        reason,
        flattened,
    }
}

/// Extracts one HTML string (for tests and benchmarks).
pub fn extract_html(html: &str) -> String {
    html_to_text(html)
}
