//! SFT renders prompts through the checkpoint's own chat template, the code the engine uses: on a template
//! that is not ChatML, the prompt ids SFT trains on equal the ids the engine is fed at inference.

use std::path::{Path, PathBuf};

use mimo_text::{ChatMessage, ChatTemplate, ModelText};
use mimo_train::TrainArgs;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/tokenizer")
}

/// A model directory whose tokenizer config carries a non-ChatML template.
fn model_dir(dir: &Path) {
    std::fs::copy(
        fixtures().join("tokenizer.json"),
        dir.join("tokenizer.json"),
    )
    .unwrap();
    let template =
        "<|endoftext|>{% for m in messages %}### {{ m.role | upper }}:\n{{ m.content }}\n\
                    {% endfor %}{% if add_generation_prompt %}### ASSISTANT:\n{% endif %}";
    let cfg = serde_json::json!({"chat_template": template, "eos_token": "<|im_end|>"});
    std::fs::write(dir.join("tokenizer_config.json"), cfg.to_string()).unwrap();
}

#[test]
fn sft_prompt_ids_equal_engine_prompt_ids_on_a_non_chatml_template() {
    let tmp = tempfile::tempdir().unwrap();
    let init = tmp.path().join("init");
    std::fs::create_dir_all(&init).unwrap();
    model_dir(&init);
    let convs = [
        (
            "What is 12 + 7?",
            "<think>\n12 + 7 = 19\n</think>\n\\boxed{19}",
        ),
        ("Name a prime.", "7"),
    ];
    let data = tmp.path().join("sft.jsonl");
    let lines: Vec<String> = convs
        .iter()
        .map(|(p, r)| serde_json::json!({"prompt": p, "response": r}).to_string())
        .collect();
    std::fs::write(&data, lines.join("\n")).unwrap();
    let args = TrainArgs::from_toml_str(&format!(
        "mode = \"sft\"\n[model]\ninit = {:?}\n[data]\npath = {:?}\n",
        init.display().to_string(),
        data.display().to_string()
    ))
    .unwrap();

    let tok = args.tokenizer_path(None);
    let samples = mimo_train::trainer::sft_samples(&args, tok.as_deref(), 1 << 20).unwrap();
    let engine = ModelText::load(&init).unwrap();
    assert!(!engine.chat_template_is_fallback);
    let chatml = ChatTemplate::chatml(Default::default());
    for ((p, r), s) in convs.iter().zip(&samples) {
        // The prompt SFT trains on is the prompt the engine renders and is fed...
        assert_eq!(s.prompt, engine.user_prompt_ids(p).unwrap(), "{p}");
        // ... and prompt + response is the whole conversation as the checkpoint's template renders it.
        let full = engine
            .chat_template
            .render(
                &[
                    ChatMessage::new("user", *p),
                    ChatMessage::new("assistant", *r),
                ],
                false,
            )
            .unwrap();
        let text = engine
            .tokenizer
            .decode(&[s.prompt.clone(), s.response.clone()].concat(), false)
            .unwrap();
        assert_eq!(text, full);
        // Not ChatML: the old hard-coded wrapping would have trained on other ids.
        let (cp, _) = chatml.render_sft(p, r).unwrap();
        assert_ne!(s.prompt, engine.tokenizer.encode(&cp, false).unwrap());
    }
}
