//! Decontamination: drop documents sharing a word 16-gram with any evaluation set (design §3.1).
//! Words are normalised as for dedup (lowercase alphanumeric runs, digits → 0).

use crate::common::{run_jsonl_stage, text_of, Decision, JsonlReader, Line, Report};
use crate::minhash::{window_hash, word_hashes};
use crate::DataError;
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;

/// Arguments of `mimo data decontaminate`.
#[derive(Debug, Clone)]
pub struct DecontamArgs {
    /// Input JSONL shards.
    pub inputs: Vec<PathBuf>,
    /// Output directory (or file, with one input).
    pub output: PathBuf,
    /// Evaluation sets (JSONL).
    pub eval_sets: Vec<PathBuf>,
    /// String fields of the evaluation records that are indexed (absent ones are ignored).
    pub eval_fields: Vec<String>,
    /// n-gram length in words.
    pub ngram: usize,
    /// Field holding the document text.
    pub text_field: String,
    /// This task's index.
    pub task_index: usize,
    /// Number of tasks.
    pub num_tasks: usize,
    /// Redo shards that already have a completion marker.
    pub force: bool,
    /// Show progress bars on stderr.
    pub progress: bool,
}

impl Default for DecontamArgs {
    fn default() -> Self {
        DecontamArgs {
            inputs: vec![],
            output: PathBuf::new(),
            eval_sets: vec![],
            eval_fields: ["question", "problem", "solution", "answer"]
                .iter()
                .map(|s| s.to_string())
                .collect(),
            ngram: 16,
            text_field: "text".into(),
            task_index: 0,
            num_tasks: 1,
            force: false,
            progress: false,
        }
    }
}

/// The n-gram index of the evaluation sets: n-gram hash → "file:line".
#[derive(Debug, Default)]
pub struct EvalIndex {
    grams: HashMap<u64, String>,
    n: usize,
    /// Eval texts shorter than n words (indexed whole, matched as a contiguous run).
    short: HashSet<u64>,
    short_lens: Vec<usize>,
}

impl EvalIndex {
    /// Builds the index from JSONL evaluation files.
    pub fn build(files: &[PathBuf], fields: &[String], n: usize) -> Result<(Self, u64), DataError> {
        let mut idx = EvalIndex {
            n: n.max(1),
            ..Default::default()
        };
        let mut records = 0;
        let mut lens = HashSet::new();
        for f in files {
            let mut r = JsonlReader::open(f)?;
            while let Some((line, l)) = r.next_line() {
                let d = match l {
                    Line::Doc(d) => d,
                    Line::Malformed(reason, detail) => {
                        let at = format!("{}:{line}: ", f.display());
                        let why = detail.strip_prefix(&at).unwrap_or(&detail);
                        let msg = format!("evaluation set line is unusable ({reason}): {why}");
                        return Err(DataError::parse(f, line, msg));
                    }
                };
                records += 1;
                for field in fields {
                    if let Some(Value::String(s)) = d.get(field) {
                        let wh = word_hashes(s);
                        if wh.len() >= idx.n {
                            for w in wh.windows(idx.n) {
                                idx.grams
                                    .entry(window_hash(w))
                                    .or_insert_with(|| format!("{}:{line}", f.display()));
                            }
                        } else if wh.len() >= 8 {
                            idx.short.insert(window_hash(&wh));
                            lens.insert(wh.len());
                        }
                    }
                }
            }
        }
        idx.short_lens = lens.into_iter().collect();
        Ok((idx, records))
    }

    /// Number of distinct n-grams indexed.
    pub fn len(&self) -> usize {
        self.grams.len()
    }

    /// True when nothing is indexed.
    pub fn is_empty(&self) -> bool {
        self.grams.is_empty() && self.short.is_empty()
    }

    /// The evaluation record a text overlaps with, if any.
    pub fn hit(&self, text: &str) -> Option<String> {
        let wh = word_hashes(text);
        for w in wh.windows(self.n) {
            if let Some(src) = self.grams.get(&window_hash(w)) {
                return Some(src.clone());
            }
        }
        for &l in &self.short_lens {
            for w in wh.windows(l) {
                if self.short.contains(&window_hash(w)) {
                    return Some("short evaluation item".into());
                }
            }
        }
        None
    }
}

/// Drops documents overlapping the evaluation sets (reason `contamination`, detail names the eval record).
pub fn decontaminate(args: &DecontamArgs) -> Result<Report, DataError> {
    let (idx, records) = EvalIndex::build(&args.eval_sets, &args.eval_fields, args.ngram)?;
    let mut r = run_jsonl_stage(
        "decontaminate",
        &args.inputs,
        &args.output,
        args.task_index,
        args.num_tasks,
        args.force,
        args.progress,
        |_s, _p, _l, doc| match idx.hit(text_of(&doc, &args.text_field)) {
            Some(src) => Ok(Decision::Drop(
                doc,
                "contamination".into(),
                format!("{}-gram shared with {src}", args.ngram),
            )),
            None => Ok(Decision::Keep(doc)),
        },
    )?;
    r.extra.insert("eval_records".into(), json!(records));
    r.extra.insert("eval_ngrams".into(), json!(idx.len()));
    Ok(r)
}
