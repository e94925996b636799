//! A small fastText-style classifier: hashed word unigrams+bigrams (bag of features) → linear softmax,
//! trained with SGD (linearly decaying learning rate, seeded shuffling). Used for domain and quality tags.

use crate::common::{
    read_text, run_jsonl_stage, text_of, BadLines, Decision, JsonlReader, Line, Report, SplitMix64,
};
use crate::DataError;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::Instant;
use xxhash_rust::xxh3::xxh3_64;

/// A trained model: labels, hashing setup and the weight matrix `buckets × labels` (+ bias).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Classifier {
    /// Class labels.
    pub labels: Vec<String>,
    /// Number of hash buckets.
    pub buckets: usize,
    /// Longest word n-gram used (1 = unigrams, 2 = +bigrams).
    pub word_ngrams: usize,
    /// Row-major weights, `buckets × labels`.
    pub weights: Vec<f32>,
    /// Per-label bias.
    pub bias: Vec<f32>,
}

/// Arguments of `mimo data classifier train`.
#[derive(Debug, Clone)]
pub struct ClassifierTrainArgs {
    /// Training JSONL files with a text and a label field.
    pub inputs: Vec<PathBuf>,
    /// Optional held-out JSONL files (accuracy reported).
    pub valid: Vec<PathBuf>,
    /// Where the model is written (JSON).
    pub model: PathBuf,
    /// Field holding the text.
    pub text_field: String,
    /// Field holding the label.
    pub label_field: String,
    /// Epochs.
    pub epochs: usize,
    /// Initial learning rate.
    pub lr: f32,
    /// Hash buckets.
    pub buckets: usize,
    /// Longest word n-gram.
    pub word_ngrams: usize,
    /// Shuffle seed.
    pub seed: u64,
}

impl Default for ClassifierTrainArgs {
    fn default() -> Self {
        ClassifierTrainArgs {
            inputs: vec![],
            valid: vec![],
            model: PathBuf::new(),
            text_field: "text".into(),
            label_field: "label".into(),
            epochs: 5,
            lr: 0.5,
            buckets: 1 << 18,
            word_ngrams: 2,
            seed: 1,
        }
    }
}

/// Arguments of `mimo data classifier score`.
#[derive(Debug, Clone)]
pub struct ClassifierScoreArgs {
    /// Input JSONL shards.
    pub inputs: Vec<PathBuf>,
    /// Output directory (or file, with one input).
    pub output: PathBuf,
    /// Model written by `classifier train`.
    pub model: PathBuf,
    /// Field holding the text.
    pub text_field: String,
    /// Field added to each document: `{"label": best, "scores": {label: p}}`.
    pub field: String,
    /// Labels whose documents are dropped (to the exclusion file) when their probability ≥ `min_prob`.
    pub drop_labels: Vec<String>,
    /// Probability needed to drop.
    pub min_prob: f32,
    /// This task's index.
    pub task_index: usize,
    /// Number of tasks.
    pub num_tasks: usize,
    /// Redo shards that already have a completion marker.
    pub force: bool,
    /// Show progress bars on stderr.
    pub progress: bool,
}

impl Default for ClassifierScoreArgs {
    fn default() -> Self {
        ClassifierScoreArgs {
            inputs: vec![],
            output: PathBuf::new(),
            model: PathBuf::new(),
            text_field: "text".into(),
            field: "quality".into(),
            drop_labels: vec![],
            min_prob: 0.5,
            task_index: 0,
            num_tasks: 1,
            force: false,
            progress: false,
        }
    }
}

fn tokens(text: &str) -> Vec<String> {
    text.split_whitespace()
        .map(|w| {
            w.trim_matches(|c: char| c.is_ascii_punctuation() && c != '$' && c != '\\')
                .to_lowercase()
        })
        .filter(|w| !w.is_empty())
        .collect()
}

/// Hashed feature ids of a text (deduplicated bag).
pub fn features(text: &str, buckets: usize, word_ngrams: usize) -> Vec<usize> {
    let toks = tokens(text);
    let hs: Vec<u64> = toks.iter().map(|t| xxh3_64(t.as_bytes())).collect();
    let mut f = Vec::with_capacity(hs.len() * word_ngrams.max(1));
    for n in 1..=word_ngrams.max(1) {
        for w in hs.windows(n) {
            let mut h = n as u64;
            for x in w {
                h = (h ^ x).wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(29);
            }
            f.push((h % buckets as u64) as usize);
        }
    }
    f.sort_unstable();
    f.dedup();
    f
}

impl Classifier {
    fn logits(&self, feats: &[usize]) -> Vec<f32> {
        let k = self.labels.len();
        let mut z = self.bias.clone();
        if !feats.is_empty() {
            let s = 1.0 / feats.len() as f32;
            for &f in feats {
                for (zc, w) in z.iter_mut().zip(&self.weights[f * k..f * k + k]) {
                    *zc += w * s;
                }
            }
        }
        z
    }

    /// Class probabilities of a text, in `labels` order.
    pub fn predict(&self, text: &str) -> Vec<f32> {
        softmax(&self.logits(&features(text, self.buckets, self.word_ngrams)))
    }

    /// Loads a model written by [`classifier_train`].
    pub fn load(path: &Path) -> Result<Self, DataError> {
        let s = read_text(path)?;
        let m: Classifier = serde_json::from_str(&s)
            .map_err(|e| DataError::parse(path, e.line() as u64, e.to_string()))?;
        if m.weights.len() != m.buckets * m.labels.len()
            || m.bias.len() != m.labels.len()
            || m.labels.is_empty()
        {
            return Err(DataError::parse(
                path,
                0,
                "weight shape does not match buckets × labels",
            ));
        }
        Ok(m)
    }
}

fn softmax(z: &[f32]) -> Vec<f32> {
    let m = z.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f32> = z.iter().map(|x| (x - m).exp()).collect();
    let s: f32 = e.iter().sum();
    e.into_iter().map(|x| x / s).collect()
}

/// (text, label) pairs of JSONL files; lines without a label or not JSON are skipped and noted.
fn read_labeled(
    files: &[PathBuf],
    tf: &str,
    lf: &str,
) -> Result<(Vec<(String, String)>, BadLines), DataError> {
    let mut out = Vec::new();
    let mut bad = BadLines::default();
    for p in files {
        let mut r = JsonlReader::open(p)?;
        while let Some((line, l)) = r.next_line() {
            match l {
                Line::Doc(d) => {
                    let label = match d.get(lf) {
                        Some(serde_json::Value::String(s)) => s.clone(),
                        Some(v) if !v.is_null() => v.to_string(),
                        _ => {
                            bad.note(&format!("{}:{line}: no label field {lf:?}", p.display()));
                            continue;
                        }
                    };
                    out.push((text_of(&d, tf).to_string(), label));
                }
                Line::Malformed(_, detail) => bad.note(&detail),
            }
        }
    }
    Ok((out, bad))
}

/// Trains a classifier and writes it to `args.model`; the report has train/valid accuracy in `extra`.
pub fn classifier_train(args: &ClassifierTrainArgs) -> Result<Report, DataError> {
    let start = Instant::now();
    if args.buckets == 0 || args.epochs == 0 {
        return Err(DataError::Usage(
            "buckets and epochs must be positive".into(),
        ));
    }
    let (train, bad) = read_labeled(&args.inputs, &args.text_field, &args.label_field)?;
    if train.is_empty() {
        return Err(DataError::Usage("no labelled training examples".into()));
    }
    let mut labels: Vec<String> = train.iter().map(|(_, l)| l.clone()).collect();
    labels.sort();
    labels.dedup();
    let k = labels.len();
    let data: Vec<(Vec<usize>, usize)> = train
        .iter()
        .map(|(t, l)| {
            (
                features(t, args.buckets, args.word_ngrams),
                labels.binary_search(l).unwrap_or(0),
            )
        })
        .collect();
    let mut m = Classifier {
        labels,
        buckets: args.buckets,
        word_ngrams: args.word_ngrams,
        weights: vec![0.0; args.buckets * k],
        bias: vec![0.0; k],
    };
    let mut rng = SplitMix64(args.seed);
    let mut order: Vec<usize> = (0..data.len()).collect();
    let total_steps = (args.epochs * data.len()) as f32;
    let mut step = 0f32;
    let mut last_loss = 0f64;
    for _ in 0..args.epochs {
        for i in (1..order.len()).rev() {
            order.swap(i, rng.below(i as u64 + 1) as usize);
        }
        let mut loss = 0f64;
        for &i in &order {
            let (feats, y) = &data[i];
            let lr = args.lr * (1.0 - step / total_steps).max(0.0);
            step += 1.0;
            let p = softmax(&m.logits(feats));
            loss -= (p[*y].max(1e-12) as f64).ln();
            let s = if feats.is_empty() {
                0.0
            } else {
                1.0 / feats.len() as f32
            };
            for (c, pc) in p.iter().enumerate() {
                let g = pc - if c == *y { 1.0 } else { 0.0 };
                m.bias[c] -= lr * g;
                for &f in feats {
                    m.weights[f * k + c] -= lr * g * s;
                }
            }
        }
        last_loss = loss / data.len() as f64;
    }
    let acc = |d: &[(String, String)]| -> f64 {
        let ok = d
            .iter()
            .filter(|(t, l)| {
                let p = m.predict(t);
                let best = p
                    .iter()
                    .enumerate()
                    .max_by(|a, b| a.1.total_cmp(b.1))
                    .map(|x| x.0)
                    .unwrap_or(0);
                &m.labels[best] == l
            })
            .count();
        ok as f64 / d.len().max(1) as f64
    };
    let mut report = Report::new("classifier/train", 0, 1);
    report.docs_in = train.len() as u64 + bad.count;
    report.malformed = bad.count;
    bad.record(&mut report.extra);
    report.extra.insert("labels".into(), json!(m.labels));
    report
        .extra
        .insert("train_accuracy".into(), json!(acc(&train)));
    report
        .extra
        .insert("final_train_loss".into(), json!(last_loss));
    if !args.valid.is_empty() {
        let (valid, _) = read_labeled(&args.valid, &args.text_field, &args.label_field)?;
        report
            .extra
            .insert("valid_examples".into(), json!(valid.len()));
        report
            .extra
            .insert("valid_accuracy".into(), json!(acc(&valid)));
    }
    let mut w = crate::common::AtomicWriter::create(&args.model)?;
    let s = serde_json::to_vec(&m).map_err(|e| DataError::parse(&args.model, 0, e.to_string()))?;
    w.write_all(&s)?;
    w.finish()?;
    report
        .extra
        .insert("model".into(), json!(args.model.display().to_string()));
    report.finish(start);
    Ok(report)
}

/// Tags every document with the classifier's label and probabilities; optionally drops some labels.
pub fn classifier_score(args: &ClassifierScoreArgs) -> Result<Report, DataError> {
    let m = Classifier::load(&args.model)?;
    run_jsonl_stage(
        "classifier/score",
        &args.inputs,
        &args.output,
        args.task_index,
        args.num_tasks,
        args.force,
        args.progress,
        |_s, _p, _l, mut doc| {
            let p = m.predict(text_of(&doc, &args.text_field));
            let best = p
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map(|x| x.0)
                .unwrap_or(0);
            let scores: serde_json::Map<String, serde_json::Value> = m
                .labels
                .iter()
                .zip(&p)
                .map(|(l, v)| (l.clone(), json!((*v as f64 * 1e4).round() / 1e4)))
                .collect();
            let label = m.labels[best].clone();
            doc.insert(
                args.field.clone(),
                json!({"label": label, "scores": scores}),
            );
            if args.drop_labels.contains(&label) && p[best] >= args.min_prob {
                return Ok(Decision::Drop(
                    doc,
                    format!("classifier:{label}"),
                    format!("p={:.3}", p[best]),
                ));
            }
            Ok(Decision::Keep(doc))
        },
    )
}
