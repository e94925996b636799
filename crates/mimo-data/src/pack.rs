//! Mixture spec and packing into token shards.
//!
//! Mixture spec (TOML, unknown keys are errors; paths relative to the spec file):
//! ```toml
//! [sources.web]
//! files = ["web/a.jsonl", "web/b.jsonl"]
//! [sources.math]
//! files = ["math.jsonl"]
//! text_field = "text"          # optional
//!
//! [[stages]]
//! name = "stage1"
//! seq_len = 8192
//! tokens = 1_000_000           # optional total target; sources are repeated (upsampled) to reach it
//! weights = { web = 0.8, math = 0.2 }
//! ```
//! Without `tokens`, mixing stops when the first source runs out, so the proportions hold exactly.
//!
//! Output format (read by [`crate::packed::PackedDataset`] and `mimo train`): `shard-TTTTT-KKKKK.bin` files
//! (task T, shard K) of little-endian `u32` token ids, each document followed by the EOS id, documents never
//! split across shards; `index.json` = `{"dtype":"u32","eos_id":..,"shards":[{"file","tokens","documents"}],
//! "tokenizer":"tokenizer.json", "stage", "seq_len", "sources"}`, written once every task's marker
//! `task-TTTTT.done` exists; `tokenizer.json` is copied beside it.
//! Task i of N tokenizes every N-th document (index ≡ i mod N) of each source and aims at `tokens / N`.

use crate::common::{
    check_task, line_of, read_marker, read_text, text_of, write_json_file, AtomicWriter, BadLines,
    JsonlReader, Line, Report, ShardReport, SplitMix64,
};
use crate::DataError;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// A data source of the mixture.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceSpec {
    /// JSONL files (relative paths are resolved against the spec file's directory).
    pub files: Vec<PathBuf>,
    /// Field holding the text (default `text`).
    #[serde(default)]
    pub text_field: Option<String>,
}

/// One training stage of the mixture.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageSpec {
    /// Stage name (`stage1`, ...).
    pub name: String,
    /// Training sequence length of the stage (recorded in the index).
    pub seq_len: usize,
    /// Optional total token target.
    #[serde(default)]
    pub tokens: Option<u64>,
    /// Source weights (need not sum to 1).
    pub weights: BTreeMap<String, f64>,
}

/// A mixture: named sources and per-stage weights.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MixtureSpec {
    /// Sources by name.
    pub sources: BTreeMap<String, SourceSpec>,
    /// Stages in training order.
    pub stages: Vec<StageSpec>,
}

impl MixtureSpec {
    /// Parses and validates a TOML spec; relative file paths are resolved against its directory.
    pub fn load(path: &Path) -> Result<Self, DataError> {
        let s = read_text(path)?;
        let mut m: MixtureSpec = toml::from_str(&s).map_err(|e| {
            let line = e.span().map_or(0, |sp| line_of(&s, sp.start));
            DataError::parse(path, line, e.message().to_string())
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        for src in m.sources.values_mut() {
            for f in &mut src.files {
                if f.is_relative() {
                    *f = base.join(&*f);
                }
            }
        }
        for st in &m.stages {
            for (name, w) in &st.weights {
                if !m.sources.contains_key(name) {
                    return Err(DataError::parse(
                        path,
                        0,
                        format!("stage {}: unknown source {name}", st.name),
                    ));
                }
                if !(w.is_finite() && *w >= 0.0) {
                    return Err(DataError::parse(
                        path,
                        0,
                        format!("stage {}: weight of {name} must be ≥ 0", st.name),
                    ));
                }
            }
            if st.weights.values().sum::<f64>() <= 0.0 {
                return Err(DataError::parse(
                    path,
                    0,
                    format!("stage {}: weights sum to 0", st.name),
                ));
            }
        }
        Ok(m)
    }

    /// Normalised weights of a stage.
    pub fn stage_weights(&self, stage: &str) -> Option<BTreeMap<String, f64>> {
        let st = self.stages.iter().find(|s| s.name == stage)?;
        let total: f64 = st.weights.values().sum();
        Some(
            st.weights
                .iter()
                .map(|(k, v)| (k.clone(), v / total))
                .collect(),
        )
    }
}

/// Arguments of `mimo data pack`.
#[derive(Debug, Clone)]
pub struct PackArgs {
    /// Mixture spec (TOML).
    pub mixture: PathBuf,
    /// Stage to pack.
    pub stage: String,
    /// `tokenizer.json` of the model.
    pub tokenizer: PathBuf,
    /// Output directory.
    pub output: PathBuf,
    /// EOS token (default: the first of `<|endoftext|>`, `</s>`, `<|im_end|>`, `<eos>` in the vocabulary).
    pub eos_token: Option<String>,
    /// Tokens per output shard (a shard is closed at the first document boundary past this).
    pub shard_tokens: u64,
    /// Sampling seed.
    pub seed: u64,
    /// This task's index.
    pub task_index: usize,
    /// Number of tasks.
    pub num_tasks: usize,
    /// Redo a task that already has a completion marker.
    pub force: bool,
    /// Show progress bars on stderr.
    pub progress: bool,
}

impl Default for PackArgs {
    fn default() -> Self {
        PackArgs {
            mixture: PathBuf::new(),
            stage: "stage1".into(),
            tokenizer: PathBuf::new(),
            output: PathBuf::new(),
            eos_token: None,
            shard_tokens: 1 << 28,
            seed: 0,
            task_index: 0,
            num_tasks: 1,
            force: false,
            progress: false,
        }
    }
}

/// One entry of `index.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ShardEntry {
    /// File name relative to the index.
    pub file: String,
    /// Tokens in the file.
    pub tokens: u64,
    /// Documents in the file.
    pub documents: u64,
}

/// `index.json` of a packed dataset.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PackedIndex {
    /// Always `"u32"` (little-endian).
    pub dtype: String,
    /// Id separating documents.
    pub eos_id: u32,
    /// Shards in order.
    pub shards: Vec<ShardEntry>,
    /// Tokenizer file name relative to the index.
    pub tokenizer: String,
    /// Mixture stage.
    #[serde(default)]
    pub stage: String,
    /// Training sequence length of the stage.
    #[serde(default)]
    pub seq_len: usize,
    /// Tokens per source.
    #[serde(default)]
    pub sources: BTreeMap<String, u64>,
}

struct SourceStream {
    name: String,
    files: Vec<PathBuf>,
    text_field: String,
    file_i: usize,
    reader: Option<JsonlReader>,
    doc_counter: u64,
    epoch: u64,
    tokens: u64,
    docs: u64,
    produced_this_epoch: bool,
}

impl SourceStream {
    /// Next text owned by this task; `Ok(None)` at the end of an epoch.
    fn next_text(
        &mut self,
        task: usize,
        n: usize,
        bad: &mut BadLines,
    ) -> Result<Option<String>, DataError> {
        loop {
            if self.reader.is_none() {
                if self.file_i >= self.files.len() {
                    return Ok(None);
                }
                self.reader = Some(JsonlReader::open(&self.files[self.file_i])?);
                self.file_i += 1;
            }
            let Some(r) = self.reader.as_mut() else {
                continue;
            };
            match r.next_line() {
                None => self.reader = None,
                Some((_, Line::Malformed(_, detail))) => bad.note(&detail),
                Some((_, Line::Doc(d))) => {
                    let mine = self.doc_counter % n as u64 == task as u64;
                    self.doc_counter += 1;
                    if mine {
                        return Ok(Some(text_of(&d, &self.text_field).to_string()));
                    }
                }
            }
        }
    }

    fn restart(&mut self) {
        self.file_i = 0;
        self.reader = None;
        self.doc_counter = 0;
        self.epoch += 1;
        self.produced_this_epoch = false;
    }
}

fn find_eos(
    tok: &tokenizers::Tokenizer,
    name: Option<&str>,
    path: &Path,
) -> Result<u32, DataError> {
    if let Some(n) = name {
        return tok.token_to_id(n).ok_or_else(|| DataError::Tokenizer {
            path: path.into(),
            msg: format!("EOS token {n} not in vocabulary"),
        });
    }
    for n in ["<|endoftext|>", "</s>", "<|im_end|>", "<eos>", "[SEP]"] {
        if let Some(id) = tok.token_to_id(n) {
            return Ok(id);
        }
    }
    Err(DataError::Tokenizer {
        path: path.into(),
        msg: "no EOS token found; pass eos_token".into(),
    })
}

/// Packs this task's share of a mixture stage into token shards; writes `index.json` when all tasks are done.
pub fn pack(args: &PackArgs) -> Result<Report, DataError> {
    check_task(args.task_index, args.num_tasks)?;
    let start = Instant::now();
    let spec = MixtureSpec::load(&args.mixture)?;
    let stage = spec
        .stages
        .iter()
        .find(|s| s.name == args.stage)
        .ok_or_else(|| {
            DataError::parse(&args.mixture, 0, format!("no stage named {}", args.stage))
        })?
        .clone();
    let weights = spec.stage_weights(&stage.name).unwrap_or_default();
    let tok =
        tokenizers::Tokenizer::from_file(&args.tokenizer).map_err(|e| DataError::Tokenizer {
            path: args.tokenizer.clone(),
            msg: e.to_string(),
        })?;
    let eos = find_eos(&tok, args.eos_token.as_deref(), &args.tokenizer)?;
    std::fs::create_dir_all(&args.output).map_err(DataError::io(&args.output))?;
    let mut report = Report::new("pack", args.task_index, args.num_tasks);
    let marker = args
        .output
        .join(format!("task-{:05}.done", args.task_index));
    let existing = if args.force {
        None
    } else {
        read_marker(&marker)
    };
    if let Some(mut m) = existing {
        m.resumed = true;
        report.add(m);
    } else {
        let sr = pack_task(args, &spec, &stage, &weights, &tok, eos)?;
        write_json_file(&marker, &sr)?;
        report.add(sr);
    }
    // Index once every task is done.
    let gathered = gather_markers(&args.output, args.num_tasks)?;
    let complete = gathered.is_some();
    if let Some((shards, sources)) = gathered {
        let dst = args.output.join("tokenizer.json");
        let bytes = std::fs::read(&args.tokenizer).map_err(DataError::io(&args.tokenizer))?;
        let mut w = AtomicWriter::create(&dst)?;
        w.write_all(&bytes)?;
        w.finish()?;
        let index = PackedIndex {
            dtype: "u32".into(),
            eos_id: eos,
            shards,
            tokenizer: "tokenizer.json".into(),
            stage: stage.name.clone(),
            seq_len: stage.seq_len,
            sources,
        };
        write_json_file(&args.output.join("index.json"), &index)?;
    }
    report.extra.insert("index_written".into(), json!(complete));
    report.finish(start);
    let tokens: u64 = report
        .shards
        .iter()
        .filter(|s| !s.resumed)
        .filter_map(|s| s.extra.get("tokens").and_then(|v| v.as_u64()))
        .sum();
    report.extra.insert("tokens".into(), json!(tokens));
    report.extra.insert(
        "tokens_per_s".into(),
        json!(tokens as f64 / report.seconds.max(1e-9)),
    );
    Ok(report)
}

/// Shards and tokens per source gathered from the task markers.
type Gathered = (Vec<ShardEntry>, BTreeMap<String, u64>);

/// Shards and per-source token counts from every task's marker; `None` while a task is unfinished.
/// A marker whose figures do not parse is an error naming it.
fn gather_markers(dir: &Path, num_tasks: usize) -> Result<Option<Gathered>, DataError> {
    let mut shards = Vec::new();
    let mut sources: BTreeMap<String, u64> = BTreeMap::new();
    for t in 0..num_tasks {
        let path = dir.join(format!("task-{t:05}.done"));
        let Some(m) = read_marker(&path) else {
            return Ok(None);
        };
        let field = |k: &str| m.extra.get(k).cloned().unwrap_or(Value::Null);
        let bad = |k: &str, e: serde_json::Error| DataError::parse(&path, 0, format!("{k}: {e}"));
        let s: Option<Vec<ShardEntry>> =
            serde_json::from_value(field("shards")).map_err(|e| bad("shards", e))?;
        shards.extend(s.unwrap_or_default());
        let st: Option<BTreeMap<String, u64>> =
            serde_json::from_value(field("source_tokens")).map_err(|e| bad("source_tokens", e))?;
        for (k, v) in st.unwrap_or_default() {
            *sources.entry(k).or_default() += v;
        }
    }
    Ok(Some((shards, sources)))
}

fn pack_task(
    args: &PackArgs,
    spec: &MixtureSpec,
    stage: &StageSpec,
    weights: &BTreeMap<String, f64>,
    tok: &tokenizers::Tokenizer,
    eos: u32,
) -> Result<ShardReport, DataError> {
    let t0 = Instant::now();
    let mut sr = ShardReport {
        input: args.mixture.display().to_string(),
        output: args.output.display().to_string(),
        ..Default::default()
    };
    let mut streams: Vec<(SourceStream, f64)> = weights
        .iter()
        .filter(|(_, w)| **w > 0.0)
        .filter_map(|(name, w)| {
            let src = spec.sources.get(name)?;
            Some((
                SourceStream {
                    name: name.clone(),
                    files: src.files.clone(),
                    text_field: src.text_field.clone().unwrap_or_else(|| "text".into()),
                    file_i: 0,
                    reader: None,
                    doc_counter: 0,
                    epoch: 0,
                    tokens: 0,
                    docs: 0,
                    produced_this_epoch: false,
                },
                *w,
            ))
        })
        .collect();
    let target = stage.tokens.map(|t| t.div_ceil(args.num_tasks as u64));
    let mut rng =
        SplitMix64(args.seed ^ (args.task_index as u64).wrapping_mul(0xA24B_AED4_963E_E407));
    let mut shards: Vec<ShardEntry> = Vec::new();
    let mut buf: Vec<u8> = Vec::new();
    let mut shard_docs = 0u64;
    let mut total = 0u64;
    let mut bad = BadLines::default();
    let pb = crate::common::bar(
        args.progress,
        target.unwrap_or(0),
        &format!("pack {} task {}", stage.name, args.task_index),
    );
    let flush = |buf: &mut Vec<u8>,
                 docs: &mut u64,
                 shards: &mut Vec<ShardEntry>|
     -> Result<(), DataError> {
        if buf.is_empty() {
            return Ok(());
        }
        let file = format!("shard-{:05}-{:05}.bin", args.task_index, shards.len());
        let mut w = AtomicWriter::create(&args.output.join(&file))?;
        w.write_all(buf)?;
        w.finish()?;
        shards.push(ShardEntry {
            file,
            tokens: buf.len() as u64 / 4,
            documents: *docs,
        });
        buf.clear();
        *docs = 0;
        Ok(())
    };
    'outer: loop {
        if let Some(t) = target {
            if total >= t {
                break;
            }
        }
        // Weighted choice among the sources.
        let wsum: f64 = streams.iter().map(|s| s.1).sum();
        let mut x = rng.next_f64() * wsum;
        let mut pick = streams.len() - 1;
        for (i, s) in streams.iter().enumerate() {
            if x < s.1 {
                pick = i;
                break;
            }
            x -= s.1;
        }
        let s = &mut streams[pick].0;
        let text = loop {
            match s.next_text(args.task_index, args.num_tasks, &mut bad)? {
                Some(t) => break t,
                None => {
                    if target.is_none() || !s.produced_this_epoch {
                        // Out of data: stop (no target), or the source has nothing for this task.
                        break 'outer;
                    }
                    s.restart();
                }
            }
        };
        sr.docs_in += 1;
        s.produced_this_epoch = true;
        if text.trim().is_empty() {
            sr.exclude("empty_text");
            continue;
        }
        let enc = match tok.encode(text.as_str(), false) {
            Ok(enc) => enc,
            Err(e) => {
                // One document the tokenizer rejects is excluded, not fatal to the task.
                sr.exclude("tokenizer_error");
                bad.note(&format!("{}: tokenizer: {e}", s.name));
                continue;
            }
        };
        let ids = enc.get_ids();
        for id in ids {
            buf.extend_from_slice(&id.to_le_bytes());
        }
        buf.extend_from_slice(&eos.to_le_bytes());
        let n = ids.len() as u64 + 1;
        s.tokens += n;
        s.docs += 1;
        total += n;
        shard_docs += 1;
        sr.docs_out += 1;
        pb.inc(n);
        if buf.len() as u64 / 4 >= args.shard_tokens {
            flush(&mut buf, &mut shard_docs, &mut shards)?;
        }
    }
    flush(&mut buf, &mut shard_docs, &mut shards)?;
    pb.finish_and_clear();
    sr.malformed = bad.count;
    bad.record(&mut sr.extra);
    sr.seconds = t0.elapsed().as_secs_f64();
    let source_tokens: BTreeMap<String, u64> = streams
        .iter()
        .map(|(s, _)| (s.name.clone(), s.tokens))
        .collect();
    let epochs: BTreeMap<String, u64> = streams
        .iter()
        .map(|(s, _)| (s.name.clone(), s.epoch))
        .collect();
    sr.extra.insert("tokens".into(), json!(total));
    sr.extra.insert("shards".into(), json!(shards));
    sr.extra
        .insert("source_tokens".into(), json!(source_tokens));
    sr.extra.insert("source_repeats".into(), json!(epochs));
    Ok(sr)
}
