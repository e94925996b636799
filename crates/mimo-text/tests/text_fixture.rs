//! Tokenizer, streaming detokenizer and chat templates against the Python reference
//! (`tools/make_tokenizer_fixture.py` → `fixtures/tokenizer/`).

use std::path::PathBuf;
use std::process::Command;

use mimo_text::{
    template_value_from_json, ChatTemplate, ModelText, TemplateValue, TextError, Tokenizer,
};

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/tokenizer")
}

fn expected() -> serde_json::Value {
    let text = std::fs::read_to_string(fixture_dir().join("expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// expected.json as a template value, keeping object key order (tools are printed with `tojson`).
fn expected_ordered() -> TemplateValue {
    let text = std::fs::read_to_string(fixture_dir().join("expected.json")).unwrap();
    template_value_from_json(&text).unwrap()
}

fn ids_of(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn stream(tok: &Tokenizer, ids: &[u32], skip_special: bool) -> (String, usize) {
    let mut s = tok.decode_stream(skip_special);
    let mut out = String::new();
    let mut held = 0;
    for &id in ids {
        match s.step(id).unwrap() {
            Some(piece) => {
                assert!(!piece.is_empty());
                out += &piece;
            }
            None => held += 1,
        }
    }
    if let Some(rest) = s.finish().unwrap() {
        out += &rest;
    }
    (out, held)
}

#[test]
fn encode_and_decode_match_python_tokenizers() {
    let tok = Tokenizer::from_dir(fixture_dir()).unwrap();
    let exp = expected();
    assert_eq!(tok.vocab_size() as u64, exp["vocab_size"].as_u64().unwrap());
    let cases = exp["encode"].as_array().unwrap();
    assert!(cases.len() >= 40);
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let add = case["add_special_tokens"].as_bool().unwrap();
        let want = ids_of(&case["ids"]);
        assert_eq!(tok.encode(text, add).unwrap(), want, "encode {text:?}");
        assert_eq!(
            tok.decode(&want, false).unwrap(),
            case["decode"].as_str().unwrap(),
            "decode {text:?}"
        );
        assert_eq!(
            tok.decode(&want, true).unwrap(),
            case["decode_skip_special"].as_str().unwrap(),
            "decode skip_special {text:?}"
        );
    }
}

#[test]
fn special_and_reasoning_tokens() {
    let tok = Tokenizer::from_dir(fixture_dir()).unwrap();
    for t in [
        "<|endoftext|>",
        "<|im_start|>",
        "<|im_end|>",
        "<think>",
        "</think>",
    ] {
        let id = tok.token_to_id(t).unwrap();
        assert_eq!(tok.encode(t, false).unwrap(), vec![id]);
        assert_eq!(tok.id_to_token(id).as_deref(), Some(t));
    }
    let ids = tok
        .encode("<|im_start|><think>x</think><|im_end|>", false)
        .unwrap();
    // Special tokens are dropped by skip_special; the reasoning markers are plain added tokens and stay.
    assert_eq!(tok.decode(&ids, true).unwrap(), "<think>x</think>");
    // Unknown ids are ignored rather than panicking.
    assert!(tok.decode(&[u32::MAX], false).is_ok());
}

#[test]
fn streaming_decode_equals_full_decode() {
    let tok = Tokenizer::from_dir(fixture_dir()).unwrap();
    let mut held_total = 0;
    for case in expected()["encode"].as_array().unwrap() {
        let ids = ids_of(&case["ids"]);
        for skip in [false, true] {
            let (streamed, held) = stream(&tok, &ids, skip);
            assert_eq!(
                streamed,
                tok.decode(&ids, skip).unwrap(),
                "{:?}",
                case["text"]
            );
            held_total += held;
        }
    }
    assert!(
        held_total > 0,
        "CJK/emoji cases must split characters across byte-level tokens"
    );

    // A character split over byte-level tokens is only emitted once complete.
    let ids = tok.encode("日", false).unwrap();
    assert!(
        ids.len() > 1,
        "fixture vocabulary should split 日 into byte tokens"
    );
    let mut s = tok.decode_stream(false);
    for &id in &ids[..ids.len() - 1] {
        assert_eq!(s.step(id).unwrap(), None);
    }
    assert_eq!(s.step(ids[ids.len() - 1]).unwrap().as_deref(), Some("日"));

    // Random valid text, and random id sequences (including invalid UTF-8 byte runs).
    let pool: Vec<char> = "ab c\n\t日本語😀👩‍💻é\u{301}$\\{}<>|_".chars().collect();
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for _ in 0..200 {
        let len = (next() % 40) as usize;
        let text: String = (0..len)
            .map(|_| pool[(next() % pool.len() as u64) as usize])
            .collect();
        let ids = tok.encode(&text, false).unwrap();
        assert_eq!(
            stream(&tok, &ids, false).0,
            tok.decode(&ids, false).unwrap(),
            "{text:?}"
        );
        let ids: Vec<u32> = (0..len)
            .map(|_| (next() % tok.vocab_size() as u64) as u32)
            .collect();
        assert_eq!(
            stream(&tok, &ids, true).0,
            tok.decode(&ids, true).unwrap(),
            "{ids:?}"
        );
    }
}

#[test]
fn chat_templates_match_transformers() {
    let model = ModelText::load(fixture_dir()).unwrap();
    assert!(!model.chat_template_is_fallback);
    let root = expected_ordered();
    let feature_src = root
        .get_attr("templates")
        .unwrap()
        .get_attr("feature")
        .unwrap()
        .to_string();
    let feature = ChatTemplate::new(feature_src, "feature", model.special_tokens.clone()).unwrap();
    let main_src = root
        .get_attr("templates")
        .unwrap()
        .get_attr("main")
        .unwrap();
    assert_eq!(model.chat_template.source(), main_src.as_str().unwrap());
    let cases = root.get_attr("chat").unwrap();
    let mut n = 0;
    for case in cases.try_iter().unwrap() {
        let name = case.get_attr("name").unwrap().to_string();
        let template = match case.get_attr("template").unwrap().as_str().unwrap() {
            "main" => &model.chat_template,
            _ => &feature,
        };
        let tools = case.get_attr("tools").unwrap();
        let tools = if tools.is_undefined() || tools.is_none() {
            None
        } else {
            Some(tools)
        };
        let kwargs = case.get_attr("kwargs").unwrap();
        let keys: Vec<String> = kwargs.try_iter().unwrap().map(|k| k.to_string()).collect();
        let extra: Vec<(&str, TemplateValue)> = keys
            .iter()
            .map(|k| (k.as_str(), kwargs.get_attr(k).unwrap()))
            .collect();
        let got = template
            .render_with(
                &case.get_attr("messages").unwrap(),
                case.get_attr("add_generation_prompt").unwrap().is_true(),
                tools.as_ref(),
                &extra,
            )
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(
            got,
            case.get_attr("expected").unwrap().as_str().unwrap(),
            "case {name}"
        );
        n += 1;
    }
    assert!(n >= 7);

    for case in root.get_attr("chat_errors").unwrap().try_iter().unwrap() {
        let err = model
            .chat_template
            .render_with(&case.get_attr("messages").unwrap(), false, None, &[])
            .unwrap_err();
        let want = case.get_attr("message").unwrap().to_string();
        assert!(matches!(err, TextError::Template { .. }));
        let msg = err.to_string();
        assert!(
            msg.contains(&want) && msg.contains("tokenizer_config.json"),
            "{msg}"
        );
    }
}

#[test]
fn eos_ids_and_generation_defaults() {
    let model = ModelText::load(fixture_dir()).unwrap();
    let exp = expected();
    assert_eq!(model.eos_ids, ids_of(&exp["eos_ids"]));
    let im_end = model.tokenizer.token_to_id("<|im_end|>").unwrap();
    assert!(model.is_eos(im_end));
    assert_eq!(
        model.special_tokens.get("eos_token").map(String::as_str),
        Some("<|im_end|>")
    );
    assert!(!model.special_tokens.contains_key("bos_token"));
    let g = &model.generation;
    assert_eq!(
        (g.temperature, g.top_p, g.top_k, g.do_sample),
        (Some(0.6), Some(0.95), Some(20), Some(true))
    );
}

/// Compares the Rust tokenizer with Python `tokenizers` run now, on the committed strings plus random ones.
/// Skipped without Python unless `CI` is set.
#[test]
fn encode_matches_python_live() {
    let python = std::env::var_os("MIMO_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/python")
        });
    if !python.exists() {
        if std::env::var_os("CI").is_some() {
            panic!(
                "CI is set but Python {} is missing (run tools/setup-python.sh)",
                python.display()
            );
        }
        eprintln!(
            "skipping: no Python at {} (set MIMO_PYTHON or run tools/setup-python.sh)",
            python.display()
        );
        return;
    }
    let mut texts: Vec<String> = expected()["encode"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["text"].as_str().unwrap().to_string())
        .collect();
    let pool: Vec<char> =
        "aZ 0 9\n\r\t  日本語中文😀🇯🇵é\u{301}ü$\\^_{}()[]<>|'\"-+=#.,;:!?\u{200d}"
            .chars()
            .collect();
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..300 {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let len = (state >> 58) as usize;
        let mut s = String::new();
        for _ in 0..len {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            s.push(pool[((state >> 33) % pool.len() as u64) as usize]);
        }
        texts.push(s);
    }
    texts.push("<|im_start|>system\n<|im_end|>\n<think>\n".into());
    let input = std::env::temp_dir().join(format!("mimo-engine-live-{}.json", std::process::id()));
    std::fs::write(&input, serde_json::to_string(&texts).unwrap()).unwrap();
    let script = "import json,sys\nfrom tokenizers import Tokenizer\n\
        t=Tokenizer.from_file(sys.argv[1])\ntexts=json.load(open(sys.argv[2],encoding='utf-8'))\n\
        print(json.dumps([t.encode(x).ids for x in texts]))";
    let out = Command::new(&python)
        .arg("-c")
        .arg(script)
        .arg(fixture_dir().join("tokenizer.json"))
        .arg(&input)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&input);
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let want: Vec<Vec<u32>> = serde_json::from_slice(&out.stdout).unwrap();
    let tok = Tokenizer::from_dir(fixture_dir()).unwrap();
    assert_eq!(want.len(), texts.len());
    for (text, want) in texts.iter().zip(want) {
        assert_eq!(tok.encode(text, true).unwrap(), want, "{text:?}");
    }
}
