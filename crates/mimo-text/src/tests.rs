use std::collections::BTreeMap;
use std::path::Path;

use crate::error::*;
use crate::model_text::*;
use crate::pycompat::*;
use crate::template::*;
use crate::*;

#[test]
fn python_float_repr() {
    for (f, want) in [
        (2.5, "2.5"),
        (1.0, "1.0"),
        (-0.5, "-0.5"),
        (1e-10, "1e-10"),
        (1e-5, "1e-05"),
        (0.0001, "0.0001"),
        (1e16, "1e+16"),
        (123456789.0, "123456789.0"),
        (0.1 + 0.2, "0.30000000000000004"),
        (1.5e300, "1.5e+300"),
    ] {
        assert_eq!(python_float(f), want, "{f}");
    }
}

#[test]
fn chatml_fallback_renders() {
    let t = ChatTemplate::chatml(BTreeMap::new());
    let out = t
        .render(
            &[
                ChatMessage::new("system", ""),
                ChatMessage::new("user", "hi"),
            ],
            true,
        )
        .unwrap();
    assert_eq!(
        out,
        "<|im_start|>system\n<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    );
    assert_eq!(t.source(), CHATML_TEMPLATE);
}

#[test]
fn python_printing_and_tojson() {
    let t = ChatTemplate::new(
            "{{ true }} {{ none }} {{ [1, 'a', none, 1.5] }} {{ {'k': \"it's\"} }} {{ x | tojson }} \
             {{ x | tojson(ensure_ascii=true, sort_keys=true, separators=(',', ':')) }} {{ [] | tojson(indent=2) }}",
            "test",
            BTreeMap::new(),
        )
        .unwrap();
    let x = template_value_from_json(r#"{"z": "é\u0001", "a": [1e-5, 2]}"#).unwrap();
    let out = t
        .render_with(&TemplateValue::from(()), false, None, &[("x", x)])
        .unwrap();
    assert_eq!(
        out,
        "True None [1, 'a', None, 1.5] {'k': \"it's\"} {\"z\": \"é\\u0001\", \"a\": [1e-05, 2]} \
             {\"a\":[1e-05,2],\"z\":\"\\u00e9\\u0001\"} []"
    );
}

#[test]
fn generation_defaults_are_range_checked() {
    let path = Path::new("/m/generation_config.json");
    let parse = |v: serde_json::Value| {
        let serde_json::Value::Object(map) = v else {
            unreachable!()
        };
        generation_defaults(&map, path)
    };
    let ok = parse(serde_json::json!({
        "temperature": 0.0, "top_p": 1.0, "min_p": 0.0, "repetition_penalty": 1.05, "top_k": 20,
    }))
    .unwrap();
    assert_eq!(ok.temperature, Some(0.0));
    assert_eq!(ok.repetition_penalty, Some(1.05));
    let ok = parse(serde_json::json!({"temperature": 0.6, "top_p": 0.95, "min_p": 1.0})).unwrap();
    assert_eq!((ok.top_p, ok.min_p), (Some(0.95), Some(1.0)));
    assert_eq!(
        parse(serde_json::json!({"top_p": null})).unwrap().top_p,
        None
    );
    for (field, value) in [
        ("temperature", serde_json::json!(-0.1)),
        ("temperature", serde_json::json!(1e39)),
        ("top_p", serde_json::json!(0.0)),
        ("top_p", serde_json::json!(1.01)),
        ("top_p", serde_json::json!(-1)),
        ("top_p", serde_json::json!(1e-50)),
        ("min_p", serde_json::json!(-0.01)),
        ("min_p", serde_json::json!(1.5)),
        ("repetition_penalty", serde_json::json!(0.0)),
        ("repetition_penalty", serde_json::json!(-1.0)),
        ("repetition_penalty", serde_json::json!(1e300)),
    ] {
        let err = parse(serde_json::json!({ field: value.clone() })).unwrap_err();
        match &err {
            TextError::Field {
                path: p,
                field: f,
                message,
            } => {
                assert_eq!((p.as_path(), f.as_str()), (path, field), "{err}");
                assert!(message.contains("out of range"), "{err}");
            }
            other => panic!("{field} = {value}: {other}"),
        }
        let shown = err.to_string();
        assert!(
            shown.contains("generation_config.json") && shown.contains(field),
            "{shown}"
        );
    }
}

#[test]
fn template_errors_are_typed() {
    let err = ChatTemplate::new("{% if %}", "bad.jinja", BTreeMap::new()).unwrap_err();
    assert!(matches!(err, TextError::Template { .. }));
    assert!(err.to_string().contains("bad.jinja"), "{err}");
    let t = ChatTemplate::new("{{ raise_exception('nope: ' + x) }}", "t", BTreeMap::new()).unwrap();
    let err = t
        .render_with(&TemplateValue::from(()), false, None, &[("x", "y".into())])
        .unwrap_err();
    assert!(err.to_string().contains("nope: y"), "{err}");
}

#[test]
fn looping_template_runs_out_of_fuel() {
    let t = ChatTemplate::new(
        "{% for i in range(100000) %}{% for j in range(100000) %}{{ '' }}{% endfor %}{% endfor %}",
        "loop.jinja",
        BTreeMap::new(),
    )
    .unwrap();
    let start = std::time::Instant::now();
    let err = t.render(&[], true).unwrap_err();
    assert!(err.to_string().contains("loop.jinja"), "{err}");
    assert!(start.elapsed().as_secs() < 60, "{:?}", start.elapsed());
}

#[test]
fn template_output_is_capped() {
    let t = ChatTemplate::new(
        "{% set s = 'x' * 1000000 %}{% for i in range(100) %}{{ s }}{% endfor %}",
        "bomb.jinja",
        BTreeMap::new(),
    )
    .unwrap();
    let err = t.render(&[], true).unwrap_err();
    assert!(err.to_string().contains("exceeds"), "{err}");
    // A render after a failed one starts with the full allowance again.
    let ok = ChatTemplate::new("{{ 'y' * 1000 }}", "ok.jinja", BTreeMap::new()).unwrap();
    assert_eq!(ok.render(&[], true).unwrap().len(), 1000);
}

#[test]
fn render_sft_splits_at_the_generation_prompt_and_refuses_unstable_templates() {
    let t = ChatTemplate::chatml(BTreeMap::new());
    let (p, r) = t.render_sft("2+2?", "<think>\nadd\n</think>\n4").unwrap();
    assert_eq!(
        p,
        "<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n"
    );
    assert_eq!(r, "<think>\nadd\n</think>\n4<|im_end|>\n");
    // A template whose conversation does not extend its generation prompt cannot be trained on faithfully.
    let odd = ChatTemplate::new(
        "{% if add_generation_prompt %}GEN:{% endif %}{% for m in messages %}[{{ m.content }}]{% endfor %}",
        "odd.jinja",
        BTreeMap::new(),
    )
    .unwrap();
    let e = odd.render_sft("q", "a").unwrap_err().to_string();
    assert!(
        e.contains("odd.jinja") && e.contains("does not start with"),
        "{e}"
    );
}
