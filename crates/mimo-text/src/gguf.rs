//! The text side of a GGUF file (llama.cpp's format): the tokenizer, chat template and EOS ids its metadata
//! describes, built the way `transformers` loads a GGUF tokenizer (`AutoTokenizer.from_pretrained(dir,
//! gguf_file=...)`) and with the split regexes llama.cpp uses for each `tokenizer.ggml.pre` name.
//!
//! Reading the file is not done here (mimo-model parses GGUF): callers fill a [`GgufVocab`].
//!
//! Supported: `tokenizer.ggml.model` "gpt2" (byte-level BPE) with the pre-tokenizers listed in
//! [`GGUF_PRE_TOKENIZERS`]; "llama" (SentencePiece) and other models are refused with a clear error.
//!
//! Where transformers and llama.cpp differ, llama.cpp (which is what the file was written for, and what
//! reproduces the model's original `tokenizer.json`) is followed:
//! * "smollm" splits digits one by one before the GPT-2 regex, as llama.cpp and SmolLM's `tokenizer.json` do
//!   (transformers uses the GPT-2 regex alone);
//! * the Llama-3 family and "tekken" ignore merges for a word that is a whole token, as llama.cpp does;
//! * control and user-defined tokens are added tokens under their literal text even when it uses characters
//!   outside the byte-level alphabet (e.g. DeepSeek's `<｜User｜>`), which transformers drops.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use serde::{Deserialize, Serialize};
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::processors::template::{SpecialToken, TemplateProcessing};
use tokenizers::{AddedToken, SplitDelimiterBehavior};

use crate::error::*;
use crate::model_text::{field_err, GenerationDefaults, ModelText};
use crate::template::ChatTemplate;
use crate::tokenizer::Tokenizer;

/// The text-side metadata of a GGUF file, under llama.cpp's key names (`tokenizer.ggml.*`,
/// `tokenizer.chat_template`). Absent keys are `None`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct GgufVocab {
    /// `tokenizer.ggml.model`: "gpt2" (byte-level BPE), "llama" (SentencePiece), ...
    pub model: String,
    /// `tokenizer.ggml.pre`: the pre-tokenizer name ("qwen2", "smollm", "llama-bpe", ...).
    pub pre: Option<String>,
    /// `tokenizer.ggml.tokens`: the vocabulary; a token's id is its index.
    pub tokens: Vec<String>,
    /// `tokenizer.ggml.token_type`: per token, 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte.
    pub token_types: Option<Vec<i32>>,
    /// `tokenizer.ggml.merges`: BPE merges as "left right", best first.
    pub merges: Option<Vec<String>>,
    /// `tokenizer.ggml.scores`: per-token scores (SentencePiece).
    pub scores: Option<Vec<f32>>,
    /// `tokenizer.ggml.bos_token_id`.
    pub bos_id: Option<u32>,
    /// `tokenizer.ggml.eos_token_id`.
    pub eos_id: Option<u32>,
    /// `tokenizer.ggml.unknown_token_id`.
    pub unk_id: Option<u32>,
    /// `tokenizer.ggml.padding_token_id`.
    pub pad_id: Option<u32>,
    /// `tokenizer.ggml.eot_token_id` (end of turn; ends generation like EOS).
    pub eot_id: Option<u32>,
    /// `tokenizer.ggml.add_bos_token`: whether encoding with special tokens prepends BOS (absent: no).
    pub add_bos: Option<bool>,
    /// `tokenizer.ggml.add_eos_token`: whether encoding with special tokens appends EOS (absent: no).
    pub add_eos: Option<bool>,
    /// `tokenizer.chat_template`.
    pub chat_template: Option<String>,
}

/// llama.cpp token types (`tokenizer.ggml.token_type`).
const TOKEN_TYPE_CONTROL: i32 = 3;
const TOKEN_TYPE_USER_DEFINED: i32 = 4;
const TOKEN_TYPE_MAX: i32 = 6;

// Split regexes as the models' `tokenizer.json` (and transformers' GGUF loader) spell them; llama.cpp's
// adaptations of them (`'[sS]` for `(?i:'s)`, no trailing `\s+`) split the same way.
const GPT2_SPLIT: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN35_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const GPT4O_SPLIT: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const TEKKEN_SPLIT: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// How one pre-tokenizer name splits text before byte-level BPE.
#[derive(Debug, Clone, Copy)]
struct PreSpec {
    /// The split regex (isolated pieces).
    split: &'static str,
    /// Split digits one by one first (llama.cpp's "smollm").
    digits_first: bool,
    /// A word that is a whole token is not merged (llama.cpp's `ignore_merges`).
    ignore_merges: bool,
}

/// The `tokenizer.ggml.pre` names a "gpt2" vocabulary may have here. A missing name means "default", which
/// splits with the GPT-2 regex as transformers does (llama.cpp's "default" is an older, looser split).
pub const GGUF_PRE_TOKENIZERS: &[&str] = &[
    "default",
    "gpt-2",
    "smollm",
    "qwen2",
    "deepseek-r1-qwen",
    "kormo",
    "f2llmv2",
    "megrez",
    "qwen35",
    "llama3",
    "llama-v3",
    "llama-bpe",
    "falcon3",
    "falcon-h1",
    "pixtral",
    "midm-2.0",
    "lfm2",
    "jina-v5-nano",
    "dbrx",
    "smaug-bpe",
    "gpt-4o",
    "llama4",
    "kanana2",
    "talkie",
    "minimax-m2",
    "tekken",
];

fn pre_spec(pre: &str) -> Option<PreSpec> {
    let spec = |split, ignore_merges| PreSpec {
        split,
        digits_first: false,
        ignore_merges,
    };
    Some(match pre {
        "default" | "gpt-2" => spec(GPT2_SPLIT, false),
        "smollm" => PreSpec {
            digits_first: true,
            ..spec(GPT2_SPLIT, false)
        },
        "qwen2" | "deepseek-r1-qwen" | "kormo" | "f2llmv2" | "megrez" => spec(QWEN2_SPLIT, false),
        "qwen35" => spec(QWEN35_SPLIT, false),
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0"
        | "lfm2" | "jina-v5-nano" => spec(LLAMA3_SPLIT, true),
        "dbrx" | "smaug-bpe" => spec(LLAMA3_SPLIT, false),
        "gpt-4o" | "llama4" | "kanana2" | "talkie" | "minimax-m2" => spec(GPT4O_SPLIT, false),
        "tekken" => spec(TEKKEN_SPLIT, true),
        _ => return None,
    })
}

impl PreSpec {
    fn pre_tokenizer(&self, source: &Path) -> Result<PreTokenizerWrapper> {
        let split = Split::new(
            SplitPattern::Regex(self.split.to_string()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(|e| tokenizer_err(source, format!("split regex: {e}")))?;
        let mut steps: Vec<PreTokenizerWrapper> = Vec::new();
        if self.digits_first {
            steps.push(Digits::new(true).into());
        }
        steps.push(split.into());
        steps.push(ByteLevel::new(false, false, false).into());
        Ok(Sequence::new(steps).into())
    }
}

fn tokenizer_err(source: &Path, message: impl Into<String>) -> TextError {
    TextError::Tokenizer {
        path: source.to_path_buf(),
        message: message.into(),
    }
}

/// GPT-2's byte-to-character table: the character each byte is spelled with in a byte-level vocabulary.
fn byte_chars() -> [char; 256] {
    let printable = |b: u32| (0x21..=0x7E).contains(&b) || (0xA1..=0xAC).contains(&b) || b >= 0xAE;
    let mut table = ['\0'; 256];
    let mut next = 256u32;
    for (b, slot) in table.iter_mut().enumerate() {
        let b = b as u32;
        let code = if printable(b) {
            b
        } else {
            next += 1;
            next - 1
        };
        *slot = char::from_u32(code).unwrap_or('\u{FFFD}');
    }
    table
}

/// Checks what every builder relies on: a non-empty vocabulary, per-token arrays of its length, known token
/// types, and special-token ids inside it.
fn check_vocab(vocab: &GgufVocab, source: &Path) -> Result<()> {
    let n = vocab.tokens.len();
    if n == 0 {
        return Err(field_err(
            source,
            "tokenizer.ggml.tokens",
            "missing or empty",
        ));
    }
    if u32::try_from(n).is_err() {
        return Err(field_err(
            source,
            "tokenizer.ggml.tokens",
            format!("{n} tokens do not fit u32 ids"),
        ));
    }
    if let Some(types) = &vocab.token_types {
        if types.len() != n {
            return Err(field_err(
                source,
                "tokenizer.ggml.token_type",
                format!("{} entries for {n} tokens", types.len()),
            ));
        }
        if let Some((i, t)) = types
            .iter()
            .enumerate()
            .find(|(_, t)| !(0..=TOKEN_TYPE_MAX).contains(*t))
        {
            return Err(field_err(
                source,
                "tokenizer.ggml.token_type",
                format!("token {i} has type {t}, not a llama.cpp token type (0-{TOKEN_TYPE_MAX})"),
            ));
        }
    }
    if let Some(scores) = &vocab.scores {
        if scores.len() != n {
            return Err(field_err(
                source,
                "tokenizer.ggml.scores",
                format!("{} entries for {n} tokens", scores.len()),
            ));
        }
    }
    for (field, id) in special_id_fields(vocab) {
        if let Some(id) = id {
            if id as usize >= n {
                return Err(field_err(
                    source,
                    field,
                    format!("token id {id} is out of range (the vocabulary has {n} tokens)"),
                ));
            }
        }
    }
    Ok(())
}

fn special_id_fields(vocab: &GgufVocab) -> [(&'static str, Option<u32>); 5] {
    [
        ("tokenizer.ggml.bos_token_id", vocab.bos_id),
        ("tokenizer.ggml.eos_token_id", vocab.eos_id),
        ("tokenizer.ggml.unknown_token_id", vocab.unk_id),
        ("tokenizer.ggml.padding_token_id", vocab.pad_id),
        ("tokenizer.ggml.eot_token_id", vocab.eot_id),
    ]
}

/// The ids that become added tokens, with whether each is special: control tokens and the named
/// BOS/EOS/UNK/PAD tokens (special), user-defined tokens (not special, like `<think>`).
fn added_token_ids(vocab: &GgufVocab) -> BTreeMap<u32, bool> {
    let mut added = BTreeMap::new();
    if let Some(types) = &vocab.token_types {
        for (id, &t) in (0u32..).zip(types) {
            match t {
                TOKEN_TYPE_CONTROL => {
                    added.insert(id, true);
                }
                TOKEN_TYPE_USER_DEFINED => {
                    added.insert(id, false);
                }
                _ => {}
            }
        }
    }
    for id in [vocab.bos_id, vocab.eos_id, vocab.unk_id, vocab.pad_id]
        .into_iter()
        .flatten()
    {
        added.insert(id, true);
    }
    added.retain(|id, _| !vocab.tokens[*id as usize].is_empty());
    added
}

/// The byte-level vocabulary: each token under its own spelling when that is all byte-level characters (or
/// it is an added token, matched by its literal text), else respelled byte by byte, as transformers does.
/// A repeated spelling keeps its last id (as llama.cpp and transformers do).
fn byte_level_vocab(vocab: &GgufVocab, added: &BTreeMap<u32, bool>) -> Vocab {
    let table = byte_chars();
    let alphabet: HashSet<char> = table.iter().copied().collect();
    (0u32..)
        .zip(&vocab.tokens)
        .map(|(id, token)| {
            if added.contains_key(&id) || token.chars().all(|c| alphabet.contains(&c)) {
                (token.clone(), id)
            } else {
                let spelled = token.bytes().map(|b| table[b as usize]).collect();
                (spelled, id)
            }
        })
        .collect()
}

/// `tokenizer.ggml.merges` as pairs, each checked against the vocabulary.
fn bpe_merges(vocab: &GgufVocab, map: &Vocab, source: &Path) -> Result<Vec<(String, String)>> {
    const FIELD: &str = "tokenizer.ggml.merges";
    let Some(merges) = &vocab.merges else {
        return Err(field_err(
            source,
            FIELD,
            "missing (a \"gpt2\" vocabulary needs its merges)",
        ));
    };
    merges
        .iter()
        .enumerate()
        .map(|(i, merge)| {
            let Some((left, right)) = merge.split_once(' ').filter(|(l, r)| {
                !l.is_empty() && !r.is_empty() && !r.contains(' ')
            }) else {
                return Err(field_err(
                    source,
                    FIELD,
                    format!("merge {i} ({merge:?}) is not two tokens separated by one space"),
                ));
            };
            let joined = format!("{left}{right}");
            if let Some(missing) = [left, right, joined.as_str()]
                .into_iter()
                .find(|t| !map.contains_key(*t))
            {
                return Err(field_err(
                    source,
                    FIELD,
                    format!("merge {i} ({merge:?}) names {missing:?}, which is not in tokenizer.ggml.tokens"),
                ));
            }
            Ok((left.to_string(), right.to_string()))
        })
        .collect()
}

/// The post-processor adding BOS and/or EOS when encoding with special tokens (`add_bos`/`add_eos`), built
/// like transformers' `update_post_processor`; `None` when neither is added.
fn bos_eos_processor(vocab: &GgufVocab, source: &Path) -> Result<Option<TemplateProcessing>> {
    let mut specials = Vec::new();
    let mut pieces =
        |flag: Option<bool>, id: Option<u32>, name: &str, flag_key: &str, id_key: &str| {
            if !flag.unwrap_or(false) {
                return Ok(None);
            }
            let Some(id) = id else {
                return Err(field_err(
                    source,
                    flag_key,
                    format!("is true, but {id_key} is not set"),
                ));
            };
            let token = vocab.tokens[id as usize].clone();
            specials.push(
                SpecialToken::new(name.to_string(), vec![id], vec![token])
                    .map_err(|e| tokenizer_err(source, e.to_string()))?,
            );
            Ok(Some(name.to_string()))
        };
    let bos = pieces(
        vocab.add_bos,
        vocab.bos_id,
        "BOS",
        "tokenizer.ggml.add_bos_token",
        "tokenizer.ggml.bos_token_id",
    )?;
    let eos = pieces(
        vocab.add_eos,
        vocab.eos_id,
        "EOS",
        "tokenizer.ggml.add_eos_token",
        "tokenizer.ggml.eos_token_id",
    )?;
    if bos.is_none() && eos.is_none() {
        return Ok(None);
    }
    let template = |seq: &str, type_id: u32| -> Vec<String> {
        let mut t: Vec<String> = bos.iter().map(|b| format!("{b}:{type_id}")).collect();
        t.push(format!("${seq}:{type_id}"));
        t.extend(eos.iter().map(|e| format!("{e}:{type_id}")));
        t
    };
    let single = template("A", 0);
    let mut pair = single.clone();
    pair.extend(template("B", 1));
    TemplateProcessing::builder()
        .try_single(single)
        .and_then(|b| b.try_pair(pair))
        .map_err(|e| tokenizer_err(source, e))?
        .special_tokens(specials)
        .build()
        .map(Some)
        .map_err(|e| tokenizer_err(source, e.to_string()))
}

/// A byte-level BPE tokenizer ("gpt2" model) from the vocabulary, merges and pre-tokenizer name.
fn byte_level_tokenizer(vocab: &GgufVocab, source: &Path) -> Result<tokenizers::Tokenizer> {
    let pre_name = vocab.pre.as_deref().unwrap_or("default");
    let spec = pre_spec(pre_name).ok_or_else(|| {
        field_err(
            source,
            "tokenizer.ggml.pre",
            format!(
                "unknown pre-tokenizer {pre_name:?} for a \"gpt2\" vocabulary (supported: {})",
                GGUF_PRE_TOKENIZERS.join(", ")
            ),
        )
    })?;
    let added = added_token_ids(vocab);
    let map = byte_level_vocab(vocab, &added);
    let merges = bpe_merges(vocab, &map, source)?;
    let bpe = BPE::builder()
        .vocab_and_merges(map, merges)
        .ignore_merges(spec.ignore_merges)
        .build()
        .map_err(|e| tokenizer_err(source, format!("BPE model: {e}")))?;
    let mut tok = tokenizers::Tokenizer::new(bpe);
    tok.with_pre_tokenizer(Some(spec.pre_tokenizer(source)?));
    tok.with_decoder(Some(ByteLevel::default()));
    tok.with_post_processor(bos_eos_processor(vocab, source)?);
    let (special, plain): (Vec<_>, Vec<_>) = added.into_iter().partition(|(_, s)| *s);
    let as_added = |ids: Vec<(u32, bool)>| -> Vec<AddedToken> {
        ids.into_iter()
            .map(|(id, s)| AddedToken::from(vocab.tokens[id as usize].clone(), s).normalized(false))
            .collect()
    };
    tok.add_special_tokens(as_added(special))
        .and_then(|_| tok.add_tokens(as_added(plain)))
        .map_err(|e| tokenizer_err(source, format!("added tokens: {e}")))?;
    Ok(tok)
}

impl Tokenizer {
    /// Builds the tokenizer a GGUF file's metadata describes; `source` (the GGUF file) names it in errors.
    ///
    /// Control tokens and the BOS/EOS/UNK/PAD tokens become special added tokens and user-defined tokens
    /// plain added tokens, so that e.g. `<|im_start|>` in a prompt encodes to its id; encoding with special
    /// tokens prepends BOS / appends EOS when `add_bos` / `add_eos` say so.
    pub fn from_gguf(vocab: &GgufVocab, source: &Path) -> Result<Self> {
        check_vocab(vocab, source)?;
        let unsupported = |what: String| field_err(source, "tokenizer.ggml.model", what);
        let inner =
            match vocab.model.as_str() {
                "gpt2" => byte_level_tokenizer(vocab, source)?,
                "" => return Err(unsupported("missing".into())),
                "llama" => return Err(unsupported(
                    "\"llama\" (SentencePiece) vocabularies are not supported yet; only \"gpt2\" \
                     (byte-level BPE) is"
                        .into(),
                )),
                other => {
                    return Err(unsupported(format!(
                    "unsupported tokenizer model {other:?} (supported: \"gpt2\", byte-level BPE)"
                )))
                }
            };
        Ok(Self::new(inner, source))
    }
}

impl ModelText {
    /// The text side of a GGUF file from its metadata; `source` (the GGUF file) names it in errors.
    ///
    /// The tokenizer is [`Tokenizer::from_gguf`]. The chat template is `tokenizer.chat_template`, given the
    /// BOS/EOS/PAD/UNK token strings, else built-in ChatML (as [`ModelText::load`] falls back).
    /// EOS ids are `eos_token_id` then `eot_token_id`, deduplicated. A GGUF carries no generation config, so
    /// the generation defaults are empty.
    pub fn from_gguf(vocab: &GgufVocab, source: &Path) -> Result<Self> {
        let tokenizer = Tokenizer::from_gguf(vocab, source)?;
        let special_tokens: BTreeMap<String, String> = [
            ("bos_token", vocab.bos_id),
            ("eos_token", vocab.eos_id),
            ("pad_token", vocab.pad_id),
            ("unk_token", vocab.unk_id),
        ]
        .into_iter()
        .filter_map(|(k, id)| Some((k.to_string(), vocab.tokens[id? as usize].clone())))
        .collect();
        let (chat_template, chat_template_is_fallback) = match &vocab.chat_template {
            Some(source_text) => {
                let origin = format!("{}: tokenizer.chat_template", source.display());
                let template =
                    ChatTemplate::new(source_text.clone(), origin, special_tokens.clone())?;
                (template, false)
            }
            None => (ChatTemplate::chatml(special_tokens.clone()), true),
        };
        let mut seen = HashSet::new();
        let eos_ids = [vocab.eos_id, vocab.eot_id]
            .into_iter()
            .flatten()
            .filter(|id| seen.insert(*id))
            .collect();
        Ok(Self {
            tokenizer,
            chat_template,
            chat_template_is_fallback,
            eos_ids,
            special_tokens,
            generation: GenerationDefaults::default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listed_pre_tokenizer_has_a_split() {
        for name in GGUF_PRE_TOKENIZERS {
            let spec = pre_spec(name).unwrap_or_else(|| panic!("{name}"));
            assert!(spec.pre_tokenizer(Path::new("m.gguf")).is_ok(), "{name}");
        }
        assert_eq!(
            pre_spec("qwen2").unwrap().split,
            pre_spec("deepseek-r1-qwen").unwrap().split
        );
        assert!(pre_spec("llama-bpe").unwrap().ignore_merges);
        assert!(!pre_spec("dbrx").unwrap().ignore_merges);
        assert!(pre_spec("smollm").unwrap().digits_first);
        assert!(pre_spec("nonesuch").is_none());
    }

    #[test]
    fn byte_table_is_gpt2s() {
        let t = byte_chars();
        assert_eq!(
            (
                t[b' ' as usize],
                t[b'\n' as usize],
                t[b'a' as usize],
                t[0xAD]
            ),
            ('Ġ', 'Ċ', 'a', 'Ń')
        );
        assert_eq!(t.iter().collect::<HashSet<_>>().len(), 256);
    }
}
