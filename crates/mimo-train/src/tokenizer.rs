//! `mimo tokenizer train`: a byte-level BPE tokenizer trained with the `tokenizers` crate, with the ChatML
//! special tokens (`<|endoftext|>`, `<|im_start|>`, `<|im_end|>`) and `<think>`/`</think>` as added tokens,
//! written as `tokenizer.json` + `tokenizer_config.json` (with `mimo_text::CHATML_TEMPLATE`) that Python
//! `tokenizers`/`transformers` load.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tokenizers::decoders::DecoderWrapper;
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::normalizers::NormalizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::processors::PostProcessorWrapper;
use tokenizers::{AddedToken, TokenizerBuilder};

use mimo_text::{ChatTemplate, CHATML_TEMPLATE};

use crate::error::{Result, TrainError};

/// Special tokens, in id order (ids 0, 1, 2).
pub const SPECIAL_TOKENS: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];
/// Reasoning delimiters, added after the BPE vocabulary as (non-special) added tokens so they decode as text.
pub const THINK_TOKENS: [&str; 2] = ["<think>", "</think>"];

/// `mimo tokenizer train` arguments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TokenizerTrainArgs {
    /// Text files (one document per line) or JSONL files (fields `text`, or `prompt`/`response` rendered as
    /// ChatML).
    pub inputs: Vec<PathBuf>,
    /// Output directory.
    pub out: PathBuf,
    /// Target vocabulary size (BPE merges + 256 bytes + special tokens).
    pub vocab_size: usize,
    pub min_frequency: u64,
    pub force: bool,
}

impl Default for TokenizerTrainArgs {
    fn default() -> Self {
        Self {
            inputs: vec![],
            out: PathBuf::from("tokenizer"),
            vocab_size: 4096,
            min_frequency: 2,
            force: false,
        }
    }
}

/// What was written.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TokenizerReport {
    pub vocab_size: usize,
    pub documents: usize,
    pub files: Vec<PathBuf>,
}

/// The training texts of one input file.
fn texts_of(path: &Path) -> Result<Vec<String>> {
    let s = std::fs::read_to_string(path).map_err(|e| TrainError::io(path, e))?;
    let jsonl = path.extension().is_some_and(|e| e == "jsonl");
    let mut out = vec![];
    for (i, line) in s.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        if !jsonl {
            out.push(line.to_string());
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| TrainError::Json {
            path: path.to_path_buf(),
            msg: format!("line {}: {e}", i + 1),
        })?;
        let field = |k: &str| v.get(k).and_then(|x| x.as_str());
        match (field("text"), field("prompt"), field("response")) {
            (Some(t), _, _) => out.push(t.to_string()),
            (None, Some(p), Some(r)) => {
                let (p, r) = ChatTemplate::chatml(Default::default())
                    .render_sft(p, r)
                    .map_err(|e| TrainError::Data(format!("{}:{}: {e}", path.display(), i + 1)))?;
                out.push(p + &r)
            }
            _ => {
                return Err(TrainError::Data(format!(
                    "{}:{}: expected a `text` field or `prompt` and `response`",
                    path.display(),
                    i + 1
                )))
            }
        }
    }
    Ok(out)
}

/// Trains the tokenizer and writes `out/tokenizer.json` and `out/tokenizer_config.json`.
pub fn train_tokenizer(args: &TokenizerTrainArgs) -> Result<TokenizerReport> {
    if args.inputs.is_empty() {
        return Err(TrainError::Config("tokenizer train: no inputs".into()));
    }
    let min_vocab = 256 + SPECIAL_TOKENS.len();
    if args.vocab_size <= min_vocab {
        return Err(TrainError::Config(format!(
            "tokenizer train: vocab_size must exceed {min_vocab} (bytes + specials)"
        )));
    }
    let tok_path = args.out.join("tokenizer.json");
    let cfg_path = args.out.join("tokenizer_config.json");
    if !args.force {
        if let Some(f) = [&tok_path, &cfg_path].into_iter().find(|f| f.exists()) {
            return Err(TrainError::Exists(f.clone()));
        }
    }
    let mut texts = vec![];
    for f in &args.inputs {
        texts.extend(texts_of(f)?);
    }
    let tok_err = |e: tokenizers::Error| TrainError::Tokenizer {
        path: tok_path.clone(),
        msg: e.to_string(),
    };
    let specials: Vec<AddedToken> = SPECIAL_TOKENS
        .iter()
        .map(|s| AddedToken::from(*s, true))
        .collect();
    let mut trainer = BpeTrainerBuilder::new()
        .show_progress(false)
        .vocab_size(args.vocab_size - THINK_TOKENS.len())
        .min_frequency(args.min_frequency)
        .special_tokens(specials)
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .build();
    let byte_level = ByteLevel::default()
        .add_prefix_space(false)
        .trim_offsets(false);
    let mut tokenizer = TokenizerBuilder::<
        BPE,
        NormalizerWrapper,
        PreTokenizerWrapper,
        PostProcessorWrapper,
        DecoderWrapper,
    >::new()
    .with_model(BPE::default())
    .with_normalizer(None)
    // Digits are split one by one before byte-level BPE (as Qwen2's tokenizer does), so numbers are digit
    // sequences the model can learn arithmetic over, not arbitrary merged chunks.
    .with_pre_tokenizer(Some(
        Sequence::new(vec![Digits::new(true).into(), byte_level.into()]).into(),
    ))
    .with_post_processor(Some(byte_level.into()))
    .with_decoder(Some(byte_level.into()))
    .build()
    .map_err(tok_err)?;
    tokenizer
        .train(&mut trainer, texts.iter())
        .map_err(tok_err)?;
    tokenizer
        .add_tokens(THINK_TOKENS.iter().map(|s| AddedToken::from(*s, false)))
        .map_err(tok_err)?;
    std::fs::create_dir_all(&args.out).map_err(|e| TrainError::io(&args.out, e))?;
    let json = tokenizer.to_string(true).map_err(tok_err)?;
    crate::io::write_atomic(&tok_path, json.as_bytes())?;
    let cfg = serde_json::json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": null,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": null,
        "model_max_length": 32768,
        "clean_up_tokenization_spaces": false,
        "chat_template": CHATML_TEMPLATE,
    });
    crate::io::write_json(&cfg_path, &cfg)?;
    Ok(TokenizerReport {
        vocab_size: tokenizer.get_vocab_size(true),
        documents: texts.len(),
        files: vec![tok_path, cfg_path],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trains_round_trips_and_keeps_specials_whole() {
        let dir = tempfile::tempdir().unwrap();
        let synth = crate::synth::SynthArgs {
            out: dir.path().join("synth"),
            train: 300,
            heldout: 20,
            ..Default::default()
        };
        crate::synth::synth(&synth).unwrap();
        let args = TokenizerTrainArgs {
            inputs: vec![synth.out.join("train.jsonl")],
            out: dir.path().join("tok"),
            vocab_size: 600,
            ..Default::default()
        };
        let r = train_tokenizer(&args).unwrap();
        assert!(
            r.vocab_size <= 600 && r.vocab_size > 300,
            "{}",
            r.vocab_size
        );
        let tok = tokenizers::Tokenizer::from_file(args.out.join("tokenizer.json")).unwrap();
        let text = "<|im_start|>user\nWhat is 12 + 7?<|im_end|>\n<|im_start|>assistant\n<think>\n12 + 7 = 19\n</think>\n\\boxed{19}<|im_end|>\n";
        let enc = tok.encode(text, false).unwrap();
        let ids = enc.get_ids();
        for s in SPECIAL_TOKENS.iter().skip(1).chain(&THINK_TOKENS) {
            let id = tok.token_to_id(s).unwrap();
            assert!(ids.contains(&id), "{s} not a single token");
        }
        assert_eq!(tok.token_to_id("<|endoftext|>"), Some(0));
        assert_eq!(tok.decode(ids, false).unwrap(), text);
        assert!(
            train_tokenizer(&args).is_err(),
            "no overwrite without force"
        );
    }
}
