//! Loading an HF model directory: fallbacks for EOS ids and chat templates, and typed errors naming the file.

use std::path::{Path, PathBuf};

use mimo_text::{ChatMessage, ModelText, TextError, Tokenizer};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/tokenizer")
        .join(name)
}

/// A temp dir holding the fixture's tokenizer.json plus the given files.
fn model_dir(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(fixture("tokenizer.json"), dir.path().join("tokenizer.json")).unwrap();
    for (name, content) in files {
        std::fs::write(dir.path().join(name), content).unwrap();
    }
    dir
}

fn id(dir: &Path, token: &str) -> u32 {
    Tokenizer::from_dir(dir)
        .unwrap()
        .token_to_id(token)
        .unwrap()
}

#[test]
fn chatml_fallback_without_template() {
    let dir = model_dir(&[]);
    let m = ModelText::load(dir.path()).unwrap();
    assert!(m.chat_template_is_fallback);
    assert!(m.eos_ids.is_empty());
    let out = m
        .chat_template
        .render(
            &[
                ChatMessage::new("system", "S"),
                ChatMessage::new("user", "U"),
            ],
            true,
        )
        .unwrap();
    assert_eq!(
        out,
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\n"
    );
    let out = m
        .chat_template
        .render(&[ChatMessage::new("user", "U")], false)
        .unwrap();
    assert_eq!(out, "<|im_start|>user\nU<|im_end|>\n");
}

#[test]
fn eos_from_config_then_tokenizer_config() {
    let dir = model_dir(&[("config.json", r#"{"eos_token_id": 7}"#)]);
    assert_eq!(ModelText::load(dir.path()).unwrap().eos_ids, vec![7]);

    // generation_config.json without eos_token_id falls through to config.json.
    let dir = model_dir(&[
        ("config.json", r#"{"eos_token_id": [7, 8, 7]}"#),
        ("generation_config.json", "{}"),
    ]);
    assert_eq!(ModelText::load(dir.path()).unwrap().eos_ids, vec![7, 8]);

    let dir = model_dir(&[(
        "tokenizer_config.json",
        r#"{"eos_token": {"content": "<|endoftext|>", "special": true}}"#,
    )]);
    let m = ModelText::load(dir.path()).unwrap();
    assert_eq!(m.eos_ids, vec![id(dir.path(), "<|endoftext|>")]);
    assert_eq!(m.special_tokens["eos_token"], "<|endoftext|>");

    let dir = model_dir(&[
        (
            "generation_config.json",
            r#"{"eos_token_id": 3, "temperature": 0.7}"#,
        ),
        ("config.json", r#"{"eos_token_id": 9}"#),
    ]);
    let m = ModelText::load(dir.path()).unwrap();
    assert_eq!(m.eos_ids, vec![3]);
    assert_eq!(m.generation.temperature, Some(0.7));
    assert_eq!(m.generation.top_p, None);
}

#[test]
fn template_sources() {
    let list = r#"{"chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D{{ eos_token }}"}], "eos_token": "<|im_end|>"}"#;
    let dir = model_dir(&[("tokenizer_config.json", list)]);
    let m = ModelText::load(dir.path()).unwrap();
    assert_eq!(m.chat_template.render(&[], false).unwrap(), "D<|im_end|>");

    let dir = model_dir(&[(
        "tokenizer_config.json",
        r#"{"chat_template": [{"name": "x", "template": "T"}]}"#,
    )]);
    let err = ModelText::load(dir.path()).unwrap_err();
    assert!(
        matches!(err, TextError::Field { .. }) && err.to_string().contains("default"),
        "{err}"
    );

    let dir = model_dir(&[(
        "chat_template.jinja",
        "{% for m in messages %}{{ m.role }}:{{ m.content }};{% endfor %}\n",
    )]);
    let m = ModelText::load(dir.path()).unwrap();
    assert!(!m.chat_template_is_fallback);
    assert_eq!(
        m.chat_template
            .render(&[ChatMessage::new("user", "hi")], true)
            .unwrap(),
        "user:hi;"
    );
    assert!(m.chat_template.origin().ends_with("chat_template.jinja"));
}

#[test]
fn errors_name_the_file() {
    let check = |dir: &Path, file: &str, pred: fn(&TextError) -> bool| {
        let err = ModelText::load(dir).unwrap_err();
        assert!(pred(&err), "unexpected variant: {err:?}");
        assert!(err.to_string().contains(file), "{err}");
    };

    let empty = tempfile::tempdir().unwrap();
    check(empty.path(), "tokenizer.json", |e| {
        matches!(e, TextError::Io { .. })
    });

    let bad = tempfile::tempdir().unwrap();
    std::fs::write(bad.path().join("tokenizer.json"), "{\"model\": ").unwrap();
    check(bad.path(), "tokenizer.json", |e| {
        matches!(e, TextError::Json { .. })
    });
    std::fs::write(
        bad.path().join("tokenizer.json"),
        r#"{"model": {"type": "Nope"}}"#,
    )
    .unwrap();
    check(bad.path(), "tokenizer.json", |e| {
        matches!(e, TextError::Tokenizer { .. })
    });

    let dir = model_dir(&[("tokenizer_config.json", "{not json")]);
    check(dir.path(), "tokenizer_config.json", |e| {
        matches!(e, TextError::Json { .. })
    });
    let dir = model_dir(&[("tokenizer_config.json", "[1, 2]")]);
    check(dir.path(), "tokenizer_config.json", |e| {
        matches!(e, TextError::Field { .. })
    });
    let dir = model_dir(&[(
        "tokenizer_config.json",
        r#"{"chat_template": "{% for m in messages %}"}"#,
    )]);
    check(dir.path(), "tokenizer_config.json", |e| {
        matches!(e, TextError::Template { .. })
    });
    let dir = model_dir(&[("tokenizer_config.json", r#"{"chat_template": 5}"#)]);
    check(dir.path(), "tokenizer_config.json", |e| {
        matches!(e, TextError::Field { .. })
    });
    let dir = model_dir(&[("tokenizer_config.json", r#"{"eos_token": "<|nope|>"}"#)]);
    check(dir.path(), "tokenizer_config.json", |e| {
        matches!(e, TextError::Field { .. })
    });
    let dir = model_dir(&[("generation_config.json", r#"{"eos_token_id": "2"}"#)]);
    check(dir.path(), "generation_config.json", |e| {
        matches!(e, TextError::Field { .. })
    });
    let dir = model_dir(&[("generation_config.json", r#"{"eos_token_id": [2, -1]}"#)]);
    check(dir.path(), "generation_config.json", |e| {
        matches!(e, TextError::Field { .. })
    });
    let dir = model_dir(&[("generation_config.json", r#"{"top_k": 0.5}"#)]);
    check(dir.path(), "generation_config.json", |e| {
        matches!(e, TextError::Field { .. })
    });
    let dir = model_dir(&[("config.json", "{")]);
    check(dir.path(), "config.json", |e| {
        matches!(e, TextError::Json { .. })
    });
}
