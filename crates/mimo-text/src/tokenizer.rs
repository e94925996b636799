//! The `tokenizer.json` tokenizer (or one built in memory, e.g. from GGUF metadata) and the streaming
//! detokenizer.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::*;

/// A `tokenizer.json` tokenizer (HF `tokenizers`). Cheap to clone (shared).
#[derive(Clone)]
pub struct Tokenizer {
    inner: Arc<tokenizers::Tokenizer>,
    path: PathBuf,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("path", &self.path)
            .field("vocab_size", &self.vocab_size())
            .finish()
    }
}

impl Tokenizer {
    /// Wraps a `tokenizers` tokenizer built in memory; `path` is the file it was built from, named in errors.
    pub fn new(inner: tokenizers::Tokenizer, path: impl Into<PathBuf>) -> Self {
        Self {
            inner: Arc::new(inner),
            path: path.into(),
        }
    }

    /// Loads `DIR/tokenizer.json`.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self> {
        Self::from_file(dir.as_ref().join("tokenizer.json"))
    }

    /// Loads a `tokenizer.json` file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let text = read_text(&path)?;
        // tokenizers' own error for a bad file is serde_json's message (with line and column).
        let inner: tokenizers::Tokenizer = serde_json::from_str(&text).map_err(|e| {
            if e.is_syntax() || e.is_eof() {
                TextError::Json {
                    path: path.clone(),
                    source: e,
                }
            } else {
                TextError::Tokenizer {
                    path: path.clone(),
                    message: e.to_string(),
                }
            }
        })?;
        Ok(Self::new(inner, path))
    }

    /// The file this tokenizer was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The underlying `tokenizers` tokenizer.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// An upper bound on the input bytes one token covers: the longest vocabulary entry (for WordPiece at least
    /// 4 × `max_input_chars_per_word`, the longest word it maps to one `[UNK]`). `None` for models that may map
    /// unbounded text to one unknown token (BPE fusing unknowns, Unigram, WordLevel). Text longer than `n`
    /// times this cannot fit in `n` tokens.
    pub fn max_bytes_per_token(&self) -> Option<usize> {
        use tokenizers::models::ModelWrapper;
        let floor = match self.inner.get_model() {
            ModelWrapper::BPE(b) if b.fuse_unk && b.unk_token.is_some() && !b.byte_fallback => {
                return None
            }
            ModelWrapper::BPE(_) => 1,
            ModelWrapper::WordPiece(w) => w.max_input_chars_per_word.saturating_mul(4),
            _ => return None,
        };
        let longest = self.inner.get_vocab(true).keys().map(String::len).max();
        Some(longest.unwrap_or(1).max(floor))
    }

    /// Id of a token string (vocabulary or added token).
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Token string of an id.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// The bytes each token id decodes to, for token-level grammar engines (a token trie): byte-level BPE
    /// vocabularies map each character back to its byte (GPT-2's byte-to-unicode table); others (SentencePiece
    /// with byte fallback) read `<0xXX>` as that byte and `▁` as a space. Special added tokens are prefixed
    /// with `special_marker` so that no grammar text can match them. Ids without a token get no bytes.
    /// Hand-written because `tokenizers` exposes no per-token byte view and the grammar crates' adapters pin
    /// other `tokenizers` versions or panic on unusual vocabularies.
    pub fn token_bytes(&self, special_marker: u8) -> Vec<Vec<u8>> {
        use tokenizers::decoders::DecoderWrapper;
        let byte_level = match self.inner.get_decoder() {
            Some(DecoderWrapper::ByteLevel(_)) => true,
            Some(DecoderWrapper::Sequence(s)) => s
                .get_decoders()
                .iter()
                .any(|d| matches!(d, DecoderWrapper::ByteLevel(_))),
            _ => false,
        };
        let unbyte = byte_level_decoding_table();
        let n = self.vocab_size();
        let mut out = vec![Vec::new(); n];
        for (tok, id) in self.inner.get_vocab(false) {
            let Some(slot) = out.get_mut(id as usize) else {
                continue;
            };
            *slot = if byte_level {
                tok.chars()
                    .map(|c| unbyte.get(&c).copied())
                    .collect::<Option<Vec<u8>>>()
                    .unwrap_or_else(|| tok.clone().into_bytes())
            } else if let Some(b) = tok
                .strip_prefix("<0x")
                .and_then(|h| h.strip_suffix('>'))
                .filter(|h| h.len() == 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                vec![b]
            } else {
                tok.replace('\u{2581}', " ").into_bytes()
            };
        }
        for (id, added) in self.inner.get_added_tokens_decoder() {
            if let Some(slot) = out.get_mut(id as usize) {
                let mut b = Vec::with_capacity(added.content.len() + 1);
                if added.special {
                    b.push(special_marker);
                }
                b.extend_from_slice(added.content.as_bytes());
                *slot = b;
            }
        }
        out
    }

    /// Encodes text. Special-token strings in `text` (e.g. `<|im_start|>`) are always recognised as their ids;
    /// `add_special_tokens` controls only the post-processor (BOS/EOS templates), as in HF.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        self.inner
            .encode_fast(text, add_special_tokens)
            .map(|enc| enc.get_ids().to_vec())
            .map_err(|e| TextError::Encode {
                path: self.path.clone(),
                message: e.to_string(),
            })
    }

    /// Decodes ids to text; `skip_special` drops tokens marked special (as HF `skip_special_tokens`).
    /// Ids outside the vocabulary are ignored.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special)
            .map_err(|e| TextError::Decode {
                path: self.path.clone(),
                message: e.to_string(),
            })
    }

    /// A new incremental detokenizer for one sequence.
    pub fn decode_stream(&self, skip_special: bool) -> DecodeStream {
        DecodeStream {
            tokenizer: self.clone(),
            skip_special,
            ids: Vec::new(),
            prefix: String::new(),
            prefix_len: 0,
        }
    }
}

/// Held-back tokens after which text still ending in U+FFFD is emitted anyway (a UTF-8 character is at most
/// 4 bytes and every byte-level token carries at least one byte, so the bytes are invalid, not incomplete).
const MAX_PENDING_TOKENS: usize = 4;

/// Incremental detokenizer: feed ids one at a time, get back only complete new text.
///
/// It decodes a short window (the tokens of the last emitted piece as context, plus the pending tokens) and
/// emits the text beyond the context's decode once it does not end in an incomplete UTF-8 character
/// (U+FFFD). The concatenation of all pieces (plus [`DecodeStream::finish`]) equals the full decode.
#[derive(Debug, Clone)]
pub struct DecodeStream {
    tokenizer: Tokenizer,
    skip_special: bool,
    /// Context ids (`..prefix_len`) followed by pending ids.
    ids: Vec<u32>,
    /// Decode of the context ids.
    prefix: String,
    prefix_len: usize,
}

impl DecodeStream {
    /// Adds one id; returns the new complete text, if any.
    pub fn step(&mut self, id: u32) -> Result<Option<String>> {
        self.ids.push(id);
        let text = self.tokenizer.decode(&self.ids, self.skip_special)?;
        let pending = self.ids.len() - self.prefix_len;
        if text.len() <= self.prefix.len()
            || (text.ends_with('\u{FFFD}') && pending < MAX_PENDING_TOKENS)
        {
            return Ok(None);
        }
        self.emit(text).map(Some)
    }

    /// Flushes held-back text at the end of a sequence (an incomplete character comes out as U+FFFD, as in
    /// the full decode) and resets the stream.
    pub fn finish(&mut self) -> Result<Option<String>> {
        let out = if self.ids.len() > self.prefix_len {
            let text = self.tokenizer.decode(&self.ids, self.skip_special)?;
            if text.len() > self.prefix.len() {
                Some(self.emit(text)?)
            } else {
                None
            }
        } else {
            None
        };
        self.ids.clear();
        self.prefix.clear();
        self.prefix_len = 0;
        Ok(out)
    }

    fn emit(&mut self, text: String) -> Result<String> {
        let Some(new) = text.strip_prefix(self.prefix.as_str()) else {
            return Err(TextError::Decode {
                path: self.tokenizer.path.clone(),
                message: format!(
                    "streaming decode: {:?} does not extend the previous text {:?}",
                    text, self.prefix
                ),
            });
        };
        let new = new.to_string();
        // The just-emitted tokens become the context for the next piece.
        self.ids.drain(..self.prefix_len);
        self.prefix = self.tokenizer.decode(&self.ids, self.skip_special)?;
        self.prefix_len = self.ids.len();
        Ok(new)
    }
}

/// GPT-2's byte-level alphabet inverted: the character each byte is written as in a byte-level BPE vocabulary,
/// mapped back to the byte (printable Latin-1 bytes stand for themselves, the rest are shifted past U+0100).
fn byte_level_decoding_table() -> std::collections::HashMap<char, u8> {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    let mut next = 0x100u32;
    let mut table = std::collections::HashMap::with_capacity(256);
    for b in 0..=255u8 {
        let c = if printable(b) {
            b as char
        } else {
            let c = char::from_u32(next).unwrap_or(char::REPLACEMENT_CHARACTER);
            next += 1;
            c
        };
        table.insert(c, b);
    }
    table
}
