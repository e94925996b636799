//! Training batches: windows of `seq_len + 1` tokens (inputs `w[..T]`, targets `w[1..]`) from a packed dataset
//! (pretraining) or from prompt/response JSONL (SFT, with a loss mask that is 0 on prompt tokens).
//!
//! The order is a deterministic function of the seed and the epoch, and the position is a [`Cursor`]
//! `(epoch, index)` saved in checkpoints, so a resumed run reads exactly the windows the uninterrupted run would.
//!
//! SFT JSONL lines are `{"prompt_ids": [..], "response_ids": [..]}` or `{"prompt": "..", "response": ".."}`
//! (tokenized with the run's tokenizer; with `chat_template`, rendered through the checkpoint's chat template by
//! [`ChatTemplate::render_sft`], the code the engine renders prompts with, so SFT trains on exactly the prompt
//! inference feeds). Samples are
//! shuffled per epoch, concatenated into one stream and cut into windows, like pretraining; attention crosses
//! sample boundaries (see [`crate`] docs), the loss never covers prompt tokens.

use std::path::{Path, PathBuf};

use mimo_data::{PackedDataset, SplitMix64};
use mimo_text::{ChatTemplate, Tokenizer};
use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};

/// Position in the data stream: epoch and window index within the epoch's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Cursor {
    pub epoch: u64,
    pub index: usize,
}

/// `rows` windows of `len` tokens, row-major, with an optional per-token loss mask (1 = token is a target).
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub tokens: Vec<u32>,
    pub mask: Option<Vec<f32>>,
    pub rows: usize,
    pub len: usize,
}

impl Batch {
    /// Rows `rows` of the batch (a data-parallel rank's shard).
    pub fn rows_slice(&self, rows: std::ops::Range<usize>) -> Batch {
        let cut = |r: &std::ops::Range<usize>| r.start * self.len..r.end * self.len;
        Batch {
            tokens: self.tokens[cut(&rows)].to_vec(),
            mask: self.mask.as_ref().map(|m| m[cut(&rows)].to_vec()),
            rows: rows.len(),
            len: self.len,
        }
    }
}

/// One SFT sample as token ids.
#[derive(Debug, Clone, PartialEq)]
pub struct SftSample {
    pub prompt: Vec<u32>,
    pub response: Vec<u32>,
}

enum Source {
    Packed(PackedDataset),
    Sft(Vec<SftSample>),
}

/// A deterministic, resumable stream of windows.
pub struct DataStream {
    source: Source,
    len: usize,
    seed: u64,
    cursor: Cursor,
    /// The current epoch's windows: packed → window indices; SFT → materialised (tokens, mask) windows.
    order: Vec<usize>,
    sft_windows: Vec<(Vec<u32>, Vec<f32>)>,
    epoch_loaded: Option<u64>,
    /// Tokenizer file recorded by a packed dataset, if any.
    pub dataset_tokenizer: Option<PathBuf>,
}

impl std::fmt::Debug for DataStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataStream")
            .field("len", &self.len)
            .field("cursor", &self.cursor)
            .finish()
    }
}

fn epoch_seed(seed: u64, epoch: u64) -> u64 {
    seed ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

impl DataStream {
    /// Pretraining windows of `seq_len + 1` tokens from a packed dataset directory.
    pub fn packed(dir: &Path, seq_len: usize, seed: u64) -> Result<Self> {
        let ds = PackedDataset::open(dir)?;
        let len = seq_len + 1;
        if ds.num_windows(len) == 0 {
            return Err(TrainError::Data(format!(
                "{}: {} tokens hold no window of seq_len + 1 = {len} tokens",
                dir.display(),
                ds.total_tokens()
            )));
        }
        let tok = ds.tokenizer_path();
        Ok(Self {
            dataset_tokenizer: tok.is_file().then_some(tok),
            source: Source::Packed(ds),
            len,
            seed,
            cursor: Cursor::default(),
            order: vec![],
            sft_windows: vec![],
            epoch_loaded: None,
        })
    }

    /// SFT windows of `seq_len + 1` tokens from samples.
    pub fn sft(samples: Vec<SftSample>, seq_len: usize, seed: u64) -> Result<Self> {
        let total: usize = samples
            .iter()
            .map(|s| s.prompt.len() + s.response.len())
            .sum();
        if total < seq_len + 1 {
            return Err(TrainError::Data(format!(
                "{} SFT samples hold {total} tokens, fewer than one window of {}",
                samples.len(),
                seq_len + 1
            )));
        }
        Ok(Self {
            source: Source::Sft(samples),
            len: seq_len + 1,
            seed,
            cursor: Cursor::default(),
            order: vec![],
            sft_windows: vec![],
            epoch_loaded: None,
            dataset_tokenizer: None,
        })
    }

    /// The `index.json` of a packed dataset (`None` for SFT).
    pub fn packed_index(&self) -> Option<&mimo_data::PackedIndex> {
        match &self.source {
            Source::Packed(ds) => Some(ds.index()),
            Source::Sft(_) => None,
        }
    }

    /// The current position.
    pub fn cursor(&self) -> Cursor {
        self.cursor
    }

    /// Moves to a saved position.
    pub fn seek(&mut self, c: Cursor) {
        self.cursor = c;
    }

    fn load_epoch(&mut self) {
        if self.epoch_loaded == Some(self.cursor.epoch) {
            return;
        }
        let s = epoch_seed(self.seed, self.cursor.epoch);
        match &self.source {
            Source::Packed(ds) => self.order = ds.window_order(self.len, Some(s), 0, 1),
            Source::Sft(samples) => {
                let mut idx: Vec<usize> = (0..samples.len()).collect();
                let mut rng = SplitMix64(s);
                for i in (1..idx.len()).rev() {
                    idx.swap(i, rng.below(i as u64 + 1) as usize);
                }
                let (mut toks, mut mask) = (vec![], vec![]);
                for i in idx {
                    let smp = &samples[i];
                    toks.extend_from_slice(&smp.prompt);
                    mask.extend(std::iter::repeat_n(0.0f32, smp.prompt.len()));
                    toks.extend_from_slice(&smp.response);
                    mask.extend(std::iter::repeat_n(1.0f32, smp.response.len()));
                }
                self.sft_windows = toks
                    .chunks_exact(self.len)
                    .zip(mask.chunks_exact(self.len))
                    .map(|(t, m)| (t.to_vec(), m.to_vec()))
                    .collect();
            }
        }
        self.epoch_loaded = Some(self.cursor.epoch);
    }

    fn epoch_len(&self) -> usize {
        match self.source {
            Source::Packed(_) => self.order.len(),
            Source::Sft(_) => self.sft_windows.len(),
        }
    }

    /// The next window and its mask (SFT only), advancing the cursor (and the epoch at its end).
    pub fn next_window(&mut self) -> Result<(Vec<u32>, Option<Vec<f32>>)> {
        self.load_epoch();
        if self.cursor.index >= self.epoch_len() {
            self.cursor = Cursor {
                epoch: self.cursor.epoch + 1,
                index: 0,
            };
            self.load_epoch();
        }
        let i = self.cursor.index;
        self.cursor.index += 1;
        match &self.source {
            Source::Packed(ds) => {
                let w = ds.window(self.len, self.order[i]).ok_or_else(|| {
                    TrainError::Data(format!("window {} out of range", self.order[i]))
                })?;
                Ok((w, None))
            }
            Source::Sft(_) => {
                let (t, m) = self.sft_windows[i].clone();
                Ok((t, Some(m)))
            }
        }
    }

    /// `rows` windows as one batch.
    pub fn next_batch(&mut self, rows: usize) -> Result<Batch> {
        let mut tokens = Vec::with_capacity(rows * self.len);
        let mut mask: Option<Vec<f32>> = None;
        for _ in 0..rows {
            let (t, m) = self.next_window()?;
            tokens.extend(t);
            if let Some(m) = m {
                mask.get_or_insert_with(Vec::new).extend(m);
            }
        }
        Ok(Batch {
            tokens,
            mask,
            rows,
            len: self.len,
        })
    }
}

fn ids_field(v: &serde_json::Value, key: &str, at: &str) -> Result<Option<Vec<u32>>> {
    match v.get(key) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::Array(a)) => a
            .iter()
            .map(|x| {
                x.as_u64()
                    .filter(|&x| x <= u32::MAX as u64)
                    .map(|x| x as u32)
                    .ok_or_else(|| TrainError::Data(format!("{at}: `{key}` must hold token ids")))
            })
            .collect::<Result<Vec<_>>>()
            .map(Some),
        Some(_) => Err(TrainError::Data(format!(
            "{at}: `{key}` must be a list of token ids"
        ))),
    }
}

/// Reads SFT samples from JSONL (see the module docs). `tokenizer` is needed only for text lines, which are
/// rendered through `template` when one is given and tokenized as they are otherwise.
pub fn read_sft_jsonl(
    path: &Path,
    tokenizer: Option<&Tokenizer>,
    template: Option<&ChatTemplate>,
    vocab_size: usize,
) -> Result<Vec<SftSample>> {
    let text = std::fs::read_to_string(path).map_err(|e| match e.kind() {
        // Which line is at fault, not just "stream did not contain valid UTF-8".
        std::io::ErrorKind::InvalidData => TrainError::Data(format!(
            "{}:{}: invalid UTF-8",
            path.display(),
            first_bad_utf8_line(path)
        )),
        _ => TrainError::io(path, e),
    })?;
    let mut out = vec![];
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = format!("{}:{}", path.display(), i + 1);
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| TrainError::Json {
            path: path.to_path_buf(),
            msg: format!("line {}: {e}", i + 1),
        })?;
        let sample = match (
            ids_field(&v, "prompt_ids", &at)?,
            ids_field(&v, "response_ids", &at)?,
        ) {
            (Some(prompt), Some(response)) => SftSample { prompt, response },
            _ => {
                let get = |k: &str| {
                    v.get(k).and_then(|x| x.as_str()).ok_or_else(|| {
                        TrainError::Data(format!(
                            "{at}: expected `prompt_ids`/`response_ids` or string fields `prompt`/`response` (missing `{k}`)"
                        ))
                    })
                };
                let (p, r) = (get("prompt")?, get("response")?);
                let tok = tokenizer.ok_or_else(|| {
                    TrainError::Data(format!(
                        "{at}: text samples need a tokenizer (data.tokenizer)"
                    ))
                })?;
                let (p, r) = match template {
                    Some(t) => t
                        .render_sft(p, r)
                        .map_err(|e| TrainError::Data(format!("{at}: {e}")))?,
                    None => (p.to_string(), r.to_string()),
                };
                let enc = |s: &str| -> Result<Vec<u32>> {
                    tok.encode(s, false)
                        .map_err(|e| TrainError::Data(format!("{at}: {e}")))
                };
                SftSample {
                    prompt: enc(&p)?,
                    response: enc(&r)?,
                }
            }
        };
        if let Some(&bad) = sample
            .prompt
            .iter()
            .chain(&sample.response)
            .find(|&&t| t as usize >= vocab_size)
        {
            return Err(TrainError::Data(format!(
                "{at}: token id {bad} >= vocab_size {vocab_size}"
            )));
        }
        out.push(sample);
    }
    if out.is_empty() {
        return Err(TrainError::Data(format!(
            "{}: no SFT samples",
            path.display()
        )));
    }
    Ok(out)
}

/// 1-based line of the first invalid UTF-8 byte of `path` (0 when it cannot be read again).
fn first_bad_utf8_line(path: &Path) -> u64 {
    std::fs::read(path)
        .ok()
        .and_then(|b| mimo_data::invalid_utf8_line(&b))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sft_stream_is_deterministic_and_resumable() {
        let samples: Vec<SftSample> = (0..20u32)
            .map(|i| SftSample {
                prompt: vec![i, i + 1],
                response: vec![100 + i, 200 + i, 300 + i],
            })
            .collect();
        let mut a = DataStream::sft(samples.clone(), 7, 3).unwrap();
        let all: Vec<_> = (0..30).map(|_| a.next_window().unwrap()).collect();
        let mut b = DataStream::sft(samples, 7, 3).unwrap();
        for _ in 0..17 {
            b.next_window().unwrap();
        }
        let c = b.cursor();
        let mut r = DataStream::sft(
            (0..20u32)
                .map(|i| SftSample {
                    prompt: vec![i, i + 1],
                    response: vec![100 + i, 200 + i, 300 + i],
                })
                .collect(),
            7,
            3,
        )
        .unwrap();
        r.seek(c);
        for w in &all[17..] {
            assert_eq!(&r.next_window().unwrap(), w);
        }
        // Masks: prompt ids (< 100) are 0, response ids 1.
        for (t, m) in &all {
            let m = m.as_ref().unwrap();
            for (x, y) in t.iter().zip(m) {
                assert_eq!(*y, if *x < 100 { 0.0 } else { 1.0 });
            }
        }
        assert!(all[0] != all[14], "epochs differ in order");
    }
}
