//! Shared plumbing: task assignment, JSONL reading, atomic outputs, completion markers and reports.

use crate::DataError;
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// A JSON object: one document of a JSONL file.
pub type Doc = Map<String, Value>;

/// Counts and throughput of one stage run (one task), printed as JSON by the CLI.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Report {
    /// Stage name (`extract`, `dedup/signatures`, `filter`, ...).
    pub stage: String,
    /// This task's index (0-based).
    pub task_index: usize,
    /// Number of tasks the work is split into.
    pub num_tasks: usize,
    /// Work units (shards, bands) processed by this run.
    pub shards_run: usize,
    /// Work units skipped because their completion marker was already there.
    pub shards_skipped: usize,
    /// Documents read by this run.
    pub docs_in: u64,
    /// Documents written to the main output.
    pub docs_out: u64,
    /// Documents written to the exclusion file (or as error lines for `extract`).
    pub docs_excluded: u64,
    /// Malformed input records (invalid JSON or UTF-8, truncated WARC, ...), also excluded.
    pub malformed: u64,
    /// Exclusions by reason.
    pub reasons: BTreeMap<String, u64>,
    /// Wall-clock seconds of this run.
    pub seconds: f64,
    /// `docs_in / seconds`.
    pub docs_per_s: f64,
    /// Stage-specific figures (tokens, accuracy, words/s, ...).
    pub extra: BTreeMap<String, Value>,
    /// Per-unit reports (resumed ones are flagged).
    pub shards: Vec<ShardReport>,
}

/// Counts for one work unit; also the content of its completion marker.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ShardReport {
    /// Input file (or unit name).
    pub input: String,
    /// Main output file.
    pub output: String,
    /// Documents read.
    pub docs_in: u64,
    /// Documents kept.
    pub docs_out: u64,
    /// Documents excluded.
    pub docs_excluded: u64,
    /// Malformed records.
    pub malformed: u64,
    /// Exclusions by reason.
    pub reasons: BTreeMap<String, u64>,
    /// Seconds spent.
    pub seconds: f64,
    /// True when this unit was done by an earlier run (marker found) and skipped now.
    #[serde(default)]
    pub resumed: bool,
    /// Unit-specific figures.
    #[serde(default)]
    pub extra: BTreeMap<String, Value>,
}

impl ShardReport {
    pub(crate) fn exclude(&mut self, reason: &str) {
        self.docs_excluded += 1;
        *self.reasons.entry(reason.to_string()).or_default() += 1;
    }
}

impl Report {
    pub(crate) fn new(stage: &str, task_index: usize, num_tasks: usize) -> Self {
        Report {
            stage: stage.to_string(),
            task_index,
            num_tasks,
            ..Default::default()
        }
    }

    pub(crate) fn add(&mut self, s: ShardReport) {
        if s.resumed {
            self.shards_skipped += 1;
        } else {
            self.shards_run += 1;
            self.docs_in += s.docs_in;
            self.docs_out += s.docs_out;
            self.docs_excluded += s.docs_excluded;
            self.malformed += s.malformed;
            for (k, v) in &s.reasons {
                *self.reasons.entry(k.clone()).or_default() += v;
            }
        }
        self.shards.push(s);
    }

    pub(crate) fn finish(&mut self, start: Instant) {
        self.seconds = start.elapsed().as_secs_f64();
        self.docs_per_s = if self.seconds > 0.0 {
            self.docs_in as f64 / self.seconds
        } else {
            0.0
        };
    }
}

/// Checks `task_index < num_tasks`.
pub(crate) fn check_task(task_index: usize, num_tasks: usize) -> Result<(), DataError> {
    if num_tasks == 0 || task_index >= num_tasks {
        return Err(DataError::Usage(format!(
            "task index {task_index} must be below the number of tasks {num_tasks}"
        )));
    }
    Ok(())
}

/// The units of `0..n` owned by a task: `i % num_tasks == task_index`.
pub(crate) fn owned(n: usize, task_index: usize, num_tasks: usize) -> impl Iterator<Item = usize> {
    (0..n).filter(move |i| i % num_tasks == task_index)
}

/// Output stem of an input shard: the file name without `.gz` and `.jsonl`/`.json`/`.warc`.
pub(crate) fn shard_stem(path: &Path) -> String {
    let mut name = path
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    for ext in [".gz", ".jsonl", ".json", ".warc", ".html"] {
        if let Some(s) = name.strip_suffix(ext) {
            name = s.to_string();
        }
    }
    if name.is_empty() {
        name = "shard".into();
    }
    name
}

/// Stems of all inputs, rejecting two inputs that would write the same output.
pub(crate) fn stems(inputs: &[PathBuf]) -> Result<Vec<String>, DataError> {
    let mut seen = BTreeMap::new();
    let mut out = Vec::with_capacity(inputs.len());
    for p in inputs {
        let s = shard_stem(p);
        if let Some(prev) = seen.insert(s.clone(), p.clone()) {
            return Err(DataError::Usage(format!(
                "inputs {} and {} map to the same output name {s}",
                prev.display(),
                p.display()
            )));
        }
        out.push(s);
    }
    Ok(out)
}

/// Opens a file for reading, transparently gunzipping `.gz` files or gzip content.
pub(crate) fn open_read(path: &Path) -> Result<Box<dyn BufRead + Send>, DataError> {
    let f = File::open(path).map_err(DataError::io(path))?;
    let mut r = BufReader::with_capacity(1 << 20, f);
    let head = r.fill_buf().map_err(DataError::io(path))?;
    if head.len() >= 2 && head[0] == 0x1f && head[1] == 0x8b {
        Ok(Box::new(BufReader::with_capacity(
            1 << 20,
            flate2::read::MultiGzDecoder::new(r),
        )))
    } else {
        Ok(Box::new(r))
    }
}

/// Longest JSONL line read; a longer one is reported as malformed and skipped without buffering it.
pub(crate) const MAX_LINE_BYTES: u64 = 64 << 20;

/// One line of a JSONL file.
pub(crate) enum Line {
    /// A JSON object.
    Doc(Doc),
    /// Anything else: the reason, and a detail that starts with `path:line:`.
    Malformed(String, String),
}

/// Streams a JSONL file line by line; malformed lines are reported, never fatal.
pub(crate) struct JsonlReader {
    path: PathBuf,
    reader: Box<dyn BufRead + Send>,
    line: u64,
    buf: Vec<u8>,
}

impl JsonlReader {
    pub(crate) fn open(path: &Path) -> Result<Self, DataError> {
        Ok(JsonlReader {
            path: path.to_path_buf(),
            reader: open_read(path)?,
            line: 0,
            buf: Vec::new(),
        })
    }

    fn malformed(&self, reason: &str, msg: impl std::fmt::Display) -> Option<(u64, Line)> {
        let detail = format!("{}:{}: {msg}", self.path.display(), self.line);
        Some((self.line, Line::Malformed(reason.into(), detail)))
    }

    /// Next non-empty line as (1-based line number, parsed line). A read error mid-file (e.g. a truncated
    /// gzip stream) ends the file with one malformed line.
    pub(crate) fn next_line(&mut self) -> Option<(u64, Line)> {
        loop {
            self.buf.clear();
            let read = (&mut self.reader)
                .take(MAX_LINE_BYTES + 1)
                .read_until(b'\n', &mut self.buf);
            match read {
                Ok(0) => return None,
                Ok(_) => {}
                Err(e) => {
                    self.line += 1;
                    // Make further calls return None.
                    self.reader = Box::new(std::io::empty());
                    return self.malformed("read_error", format!("read error: {e}"));
                }
            }
            self.line += 1;
            let truncated = self.buf.last() != Some(&b'\n');
            if truncated && self.buf.len() as u64 > MAX_LINE_BYTES {
                self.buf.truncate(2000);
                if let Err(e) = skip_line(&mut self.reader) {
                    self.reader = Box::new(std::io::empty());
                    return self.malformed("read_error", format!("read error: {e}"));
                }
                let msg = format!("line longer than {MAX_LINE_BYTES} bytes, skipped");
                return self.malformed("line_too_long", msg);
            }
            let bytes = trim_ascii(&self.buf);
            if bytes.is_empty() {
                continue;
            }
            let text = match std::str::from_utf8(bytes) {
                Ok(t) => t,
                Err(e) => return self.malformed("invalid_utf8", e),
            };
            return match serde_json::from_str::<Value>(text) {
                Ok(Value::Object(m)) => Some((self.line, Line::Doc(m))),
                Ok(_) => self.malformed("not_an_object", "line is not a JSON object"),
                Err(e) if truncated => self.malformed("truncated_json", e),
                Err(e) => self.malformed("invalid_json", e),
            };
        }
    }

    pub(crate) fn raw_line(&self) -> String {
        let s = String::from_utf8_lossy(trim_ascii(&self.buf));
        s.chars().take(2000).collect()
    }
}

/// Consumes the rest of the current line (through its newline) without buffering it.
fn skip_line(r: &mut dyn BufRead) -> std::io::Result<()> {
    loop {
        let chunk = r.fill_buf()?;
        if chunk.is_empty() {
            return Ok(());
        }
        match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => {
                r.consume(i + 1);
                return Ok(());
            }
            None => {
                let n = chunk.len();
                r.consume(n);
            }
        }
    }
}

fn trim_ascii(b: &[u8]) -> &[u8] {
    let start = b
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(b.len());
    let end = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &b[start..end.max(start)]
}

/// Reads a whole text file (gzip allowed); invalid UTF-8 is a parse error naming the line.
pub(crate) fn read_text(path: &Path) -> Result<String, DataError> {
    let mut b = Vec::new();
    open_read(path)?
        .read_to_end(&mut b)
        .map_err(DataError::io(path))?;
    String::from_utf8(b).map_err(|e| {
        let at = e.utf8_error().valid_up_to();
        let line = invalid_utf8_line(e.as_bytes()).unwrap_or(1);
        DataError::parse(path, line, format!("invalid UTF-8 at byte {at}"))
    })
}

/// 1-based line of the first invalid UTF-8 byte of `bytes`, None when all of it is valid UTF-8.
pub fn invalid_utf8_line(bytes: &[u8]) -> Option<u64> {
    let at = std::str::from_utf8(bytes).err()?.valid_up_to();
    Some(bytes[..at].iter().filter(|&&c| c == b'\n').count() as u64 + 1)
}

/// 1-based line of a byte offset in `s`.
pub(crate) fn line_of(s: &str, offset: usize) -> u64 {
    s.as_bytes()[..offset.min(s.len())]
        .iter()
        .filter(|&&c| c == b'\n')
        .count() as u64
        + 1
}

/// Malformed lines a stage skipped: the count and the first few details (`path:line: why`).
#[derive(Debug, Default)]
pub(crate) struct BadLines {
    pub(crate) count: u64,
    samples: Vec<String>,
}

impl BadLines {
    const SAMPLES: usize = 20;

    pub(crate) fn note(&mut self, detail: &str) {
        self.count += 1;
        if self.samples.len() < Self::SAMPLES {
            self.samples.push(detail.to_string());
        }
    }

    /// Adds `bad_lines` (count) and `bad_line_samples` to a report's `extra` when there were any.
    pub(crate) fn record(&self, extra: &mut BTreeMap<String, Value>) {
        if self.count > 0 {
            extra.insert("bad_lines".into(), Value::from(self.count));
            extra.insert("bad_line_samples".into(), Value::from(self.samples.clone()));
        }
    }
}

/// A file written under a temporary name (`<name>.tmp<PID>`) and renamed into place by
/// [`AtomicWriter::finish`]. Dropped unfinished (an error), it removes its temporary file. Creating one
/// also removes the destination's temporaries left by processes that are no longer running on this host
/// (crashed runs), so resumes do not pile them up; a temporary of a live process is left alone.
pub(crate) struct AtomicWriter {
    tmp: PathBuf,
    dst: PathBuf,
    w: Option<BufWriter<File>>,
}

impl AtomicWriter {
    pub(crate) fn create(dst: &Path) -> Result<Self, DataError> {
        if let Some(parent) = dst.parent() {
            std::fs::create_dir_all(parent).map_err(DataError::io(parent))?;
        }
        remove_stale_temps(dst);
        let mut name = dst
            .file_name()
            .map(|s| s.to_os_string())
            .unwrap_or_default();
        name.push(format!(".tmp{}", std::process::id()));
        let tmp = dst.with_file_name(name);
        let f = File::create(&tmp).map_err(DataError::io(&tmp))?;
        Ok(AtomicWriter {
            tmp,
            dst: dst.to_path_buf(),
            w: Some(BufWriter::with_capacity(1 << 20, f)),
        })
    }

    fn writer(&mut self) -> Result<&mut BufWriter<File>, DataError> {
        let tmp = &self.tmp;
        self.w.as_mut().ok_or_else(|| DataError::Io {
            path: tmp.clone(),
            source: std::io::Error::other("write after finish"),
        })
    }

    pub(crate) fn write_all(&mut self, b: &[u8]) -> Result<(), DataError> {
        let r = self.writer()?.write_all(b);
        r.map_err(DataError::io(&self.tmp))
    }

    pub(crate) fn write_json_line(&mut self, v: &impl Serialize) -> Result<(), DataError> {
        let mut s =
            serde_json::to_vec(v).map_err(|e| DataError::parse(&self.tmp, 0, e.to_string()))?;
        s.push(b'\n');
        self.write_all(&s)
    }

    pub(crate) fn finish(mut self) -> Result<(), DataError> {
        let tmp = self.tmp.clone();
        let w = self.writer()?;
        w.flush().map_err(DataError::io(&tmp))?;
        w.get_ref().sync_all().map_err(DataError::io(&tmp))?;
        self.w = None;
        std::fs::rename(&self.tmp, &self.dst).map_err(|e| {
            let _ = std::fs::remove_file(&self.tmp);
            DataError::io(&self.dst)(e)
        })
    }
}

impl Drop for AtomicWriter {
    fn drop(&mut self) {
        if self.w.take().is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Directory listings taken by [`remove_stale_temps`]: file name → its `.tmp<PID>` siblings. One listing
/// per directory and process, so writing many units into a large directory stays linear.
type TempListing = BTreeMap<std::ffi::OsString, Vec<(PathBuf, u32)>>;

static TEMP_LISTINGS: std::sync::Mutex<BTreeMap<PathBuf, TempListing>> =
    std::sync::Mutex::new(BTreeMap::new());

/// Removes `dst`'s `<name>.tmp<PID>` siblings whose process is gone (see [`AtomicWriter`]).
fn remove_stale_temps(dst: &Path) {
    let (Some(dir), Some(name)) = (dst.parent(), dst.file_name()) else {
        return;
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let temps = {
        let Ok(mut listings) = TEMP_LISTINGS.lock() else {
            return;
        };
        let listing = listings
            .entry(dir.to_path_buf())
            .or_insert_with(|| list_temps(dir));
        listing.remove(name).unwrap_or_default()
    };
    let me = std::process::id();
    for (path, pid) in temps {
        if pid != me && !process_alive(pid) {
            let _ = std::fs::remove_file(path);
        }
    }
}

fn list_temps(dir: &Path) -> TempListing {
    let mut out = TempListing::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let file = e.file_name();
        let Some(s) = file.to_str() else { continue };
        let Some((base, pid)) = s.rsplit_once(".tmp") else {
            continue;
        };
        if let Ok(pid) = pid.parse::<u32>() {
            out.entry(base.into()).or_default().push((e.path(), pid));
        }
    }
    out
}

/// Whether a process with this id runs on this host (`/proc`); without `/proc`, assumed gone.
fn process_alive(pid: u32) -> bool {
    Path::new("/proc/self").exists() && Path::new(&format!("/proc/{pid}")).exists()
}

/// Writes `v` as pretty JSON to `path` atomically.
pub(crate) fn write_json_file(path: &Path, v: &impl Serialize) -> Result<(), DataError> {
    let mut w = AtomicWriter::create(path)?;
    let s = serde_json::to_vec_pretty(v).map_err(|e| DataError::parse(path, 0, e.to_string()))?;
    w.write_all(&s)?;
    w.write_all(b"\n")?;
    w.finish()
}

/// Reads a completion marker if present and parseable.
pub(crate) fn read_marker(path: &Path) -> Option<ShardReport> {
    let mut s = String::new();
    File::open(path).ok()?.read_to_string(&mut s).ok()?;
    serde_json::from_str(&s).ok()
}

/// A progress bar on stderr, hidden unless `show`.
pub(crate) fn bar(show: bool, len: u64, msg: &str) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let b = ProgressBar::new(len);
    if let Ok(style) =
        ProgressStyle::with_template("{msg} [{elapsed_precise}] {wide_bar} {pos}/{len} ({per_sec})")
    {
        b.set_style(style);
    }
    b.set_message(msg.to_string());
    b
}

/// Exclusion record: the reason, a detail, where the document came from, and the document itself.
pub(crate) fn exclusion(source: &Path, line: u64, reason: &str, detail: &str, doc: Value) -> Value {
    serde_json::json!({
        "reason": reason,
        "detail": detail,
        "source": source.display().to_string(),
        "line": line,
        "doc": doc,
    })
}

/// What a per-document stage decides.
pub(crate) enum Decision {
    /// Write (possibly modified) document to the output.
    Keep(Doc),
    /// Write to the exclusion file with (reason, detail).
    Drop(Doc, String, String),
}

/// Runs `unit(i)` for every unit `i` of `0..n` owned by this task and adds its report. A failing unit is
/// logged to stderr and the others still run (their outputs and markers are written); the failures are
/// then returned together as [`DataError::Units`].
pub(crate) fn for_each_unit(
    report: &mut Report,
    n: usize,
    mut unit: impl FnMut(usize) -> Result<ShardReport, DataError>,
) -> Result<(), DataError> {
    let mut failures = Vec::new();
    let mut total = 0;
    for i in owned(n, report.task_index, report.num_tasks) {
        total += 1;
        match unit(i) {
            Ok(sr) => report.add(sr),
            Err(e) => {
                eprintln!("mimo data {}: {e}", report.stage);
                failures.push(e);
            }
        }
    }
    if failures.is_empty() {
        return Ok(());
    }
    let failed = failures.len();
    Err(DataError::Units {
        failed,
        total,
        first: Box::new(failures.swap_remove(0)),
    })
}

/// Generic driver of a JSONL → JSONL stage: for every input shard owned by this task and without a
/// completion marker, streams the documents through `f` and writes `<stem>.jsonl`,
/// `<stem>.excluded.jsonl` and the marker `<stem>.done`. A shard that fails does not stop the others.
#[allow(clippy::too_many_arguments)]
pub(crate) fn run_jsonl_stage<F>(
    stage: &str,
    inputs: &[PathBuf],
    output_dir: &Path,
    task_index: usize,
    num_tasks: usize,
    force: bool,
    progress: bool,
    mut f: F,
) -> Result<Report, DataError>
where
    F: FnMut(usize, &Path, u64, Doc) -> Result<Decision, DataError>,
{
    check_task(task_index, num_tasks)?;
    let start = Instant::now();
    let stems = stems(inputs)?;
    let mut report = Report::new(stage, task_index, num_tasks);
    for_each_unit(&mut report, inputs.len(), |i| {
        let (out, exc, marker) = shard_outputs(output_dir, &stems[i], inputs.len());
        if !force {
            if let Some(mut m) = read_marker(&marker) {
                m.resumed = true;
                return Ok(m);
            }
        }
        let pb = bar(progress, 0, &format!("{stage} {}", stems[i]));
        let sr = jsonl_shard(i, &inputs[i], (&out, &exc), &pb, &mut f)?;
        pb.finish_and_clear();
        write_json_file(&marker, &sr)?;
        Ok(sr)
    })?;
    report.finish(start);
    Ok(report)
}

/// One shard of [`run_jsonl_stage`]: writes the kept documents to `out.0` and the exclusions to `out.1`.
fn jsonl_shard<F>(
    i: usize,
    input: &Path,
    out: (&Path, &Path),
    pb: &ProgressBar,
    f: &mut F,
) -> Result<ShardReport, DataError>
where
    F: FnMut(usize, &Path, u64, Doc) -> Result<Decision, DataError>,
{
    let t0 = Instant::now();
    let mut sr = ShardReport {
        input: input.display().to_string(),
        output: out.0.display().to_string(),
        ..Default::default()
    };
    let mut r = JsonlReader::open(input)?;
    let mut w = AtomicWriter::create(out.0)?;
    let mut x = AtomicWriter::create(out.1)?;
    while let Some((line, l)) = r.next_line() {
        sr.docs_in += 1;
        pb.inc(1);
        let (reason, detail, doc) = match l {
            Line::Malformed(reason, detail) => {
                sr.malformed += 1;
                let raw = Value::String(r.raw_line());
                (format!("malformed:{reason}"), detail, raw)
            }
            Line::Doc(doc) => match f(i, input, line, doc)? {
                Decision::Keep(doc) => {
                    sr.docs_out += 1;
                    w.write_json_line(&doc)?;
                    continue;
                }
                Decision::Drop(doc, reason, detail) => (reason, detail, Value::Object(doc)),
            },
        };
        sr.exclude(&reason);
        x.write_json_line(&exclusion(input, line, &reason, &detail, doc))?;
    }
    w.finish()?;
    x.finish()?;
    sr.seconds = t0.elapsed().as_secs_f64();
    Ok(sr)
}

/// Output, exclusion and marker paths of a shard. `output` is a directory (`<stem>.jsonl`,
/// `<stem>.excluded.jsonl`, `<stem>.done` inside it) unless it ends in `.jsonl` and there is exactly one
/// input, in which case it is the output file itself (`X.excluded.jsonl`, `X.done` beside it).
pub(crate) fn shard_outputs(
    output: &Path,
    stem: &str,
    n_inputs: usize,
) -> (PathBuf, PathBuf, PathBuf) {
    let is_file = n_inputs == 1 && output.extension().is_some_and(|e| e == "jsonl");
    if is_file {
        let base = output.with_extension("");
        let b = base.display().to_string();
        (
            output.to_path_buf(),
            PathBuf::from(format!("{b}.excluded.jsonl")),
            PathBuf::from(format!("{b}.done")),
        )
    } else {
        (
            output.join(format!("{stem}.jsonl")),
            output.join(format!("{stem}.excluded.jsonl")),
            output.join(format!("{stem}.done")),
        )
    }
}

/// The document's text field as a string ("" if absent or not a string).
pub(crate) fn text_of<'a>(doc: &'a Doc, field: &str) -> &'a str {
    doc.get(field).and_then(Value::as_str).unwrap_or("")
}

/// SplitMix64: small deterministic RNG used for seeds, permutations and sampling.
#[derive(Debug, Clone)]
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform float in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform integer in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }
}
