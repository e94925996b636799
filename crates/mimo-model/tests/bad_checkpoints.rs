//! Malformed checkpoints give errors that name the file and the tensor; never a panic.

mod common;

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use common::copy_fixture;
use mimo_model::{MimoModel, ModelError, WeightStore};

fn load_err(dir: &std::path::Path) -> ModelError {
    MimoModel::from_dir(dir, DType::F32, &Device::Cpu).unwrap_err()
}

/// Rewrites `model.safetensors` through `edit`.
fn rewrite(dir: &std::path::Path, edit: impl FnOnce(&mut HashMap<String, Tensor>)) {
    let path = dir.join("model.safetensors");
    let mut t = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    edit(&mut t);
    candle_core::safetensors::save(&t, &path).unwrap();
}

#[test]
fn missing_tensor_is_named() {
    let tmp = copy_fixture("mimo-untied");
    rewrite(tmp.path(), |t| {
        t.remove("model.mtp_layers.1.input_proj.weight");
    });
    let e = load_err(tmp.path());
    assert!(matches!(e, ModelError::MissingTensor { .. }), "{e}");
    assert!(
        e.to_string()
            .contains("model.mtp_layers.1.input_proj.weight"),
        "{e}"
    );
}

#[test]
fn wrong_shape_names_file_tensor_and_shapes() {
    let tmp = copy_fixture("mimo-untied");
    rewrite(tmp.path(), |t| {
        let w = Tensor::zeros((64, 65), DType::F32, &Device::Cpu).unwrap();
        t.insert("model.layers.1.self_attn.q_proj.weight".into(), w);
    });
    let e = load_err(tmp.path()).to_string();
    assert!(e.contains("model.safetensors"), "{e}");
    assert!(e.contains("model.layers.1.self_attn.q_proj.weight"), "{e}");
    assert!(e.contains("[64, 65]") && e.contains("[64, 64]"), "{e}");
}

#[test]
fn integer_weights_are_rejected() {
    let tmp = copy_fixture("mimo-untied");
    rewrite(tmp.path(), |t| {
        let w = Tensor::zeros(64, DType::U32, &Device::Cpu).unwrap();
        t.insert("model.norm.weight".into(), w);
    });
    let e = load_err(tmp.path()).to_string();
    assert!(
        e.contains("model.norm.weight") && e.contains("dtype"),
        "{e}"
    );
}

#[test]
fn truncated_file_names_the_file() {
    let tmp = copy_fixture("mimo-untied");
    let path = tmp.path().join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let e = load_err(tmp.path());
    assert!(matches!(e, ModelError::Safetensors { .. }), "{e}");
    assert!(e.to_string().contains("model.safetensors"), "{e}");
    // A header cut in the middle, and garbage.
    std::fs::write(&path, &bytes[..20]).unwrap();
    assert!(load_err(tmp.path())
        .to_string()
        .contains("model.safetensors"));
    std::fs::write(&path, b"not a safetensors file").unwrap();
    assert!(load_err(tmp.path())
        .to_string()
        .contains("model.safetensors"));
    std::fs::write(&path, b"").unwrap();
    assert!(load_err(tmp.path())
        .to_string()
        .contains("model.safetensors"));
}

#[test]
fn missing_shard_and_lying_index_are_named() {
    let tmp = copy_fixture("mimo-tied-sharded-bf16");
    std::fs::remove_file(tmp.path().join("model-00002-of-00003.safetensors")).unwrap();
    let e = load_err(tmp.path()).to_string();
    assert!(e.contains("model-00002-of-00003.safetensors"), "{e}");

    let tmp = copy_fixture("mimo-tied-sharded-bf16");
    let index = tmp.path().join("model.safetensors.index.json");
    let text = std::fs::read_to_string(&index).unwrap();
    let mut json: serde_json::Value = serde_json::from_str(&text).unwrap();
    // Route model.norm.weight to a shard that does not hold it.
    let holder = json["weight_map"]["model.norm.weight"]
        .as_str()
        .unwrap()
        .to_string();
    let other = if holder.contains("00001") {
        "model-00002-of-00003.safetensors"
    } else {
        "model-00001-of-00003.safetensors"
    };
    json["weight_map"]["model.norm.weight"] = other.into();
    std::fs::write(&index, json.to_string()).unwrap();
    let e = load_err(tmp.path()).to_string();
    assert!(
        e.contains("model.norm.weight") && e.contains("index.json"),
        "{e}"
    );

    std::fs::write(&index, "{\"weight_map\": 3}").unwrap();
    assert!(load_err(tmp.path()).to_string().contains("weight_map"));
    std::fs::write(&index, "{").unwrap();
    assert!(load_err(tmp.path()).to_string().contains("index.json"));
}

#[test]
fn bad_config_and_missing_files() {
    let tmp = copy_fixture("llama-tied");
    let cfg = tmp.path().join("config.json");
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, text.replace("\"llama\"", "\"gpt_neox\"")).unwrap();
    let e = load_err(tmp.path()).to_string();
    assert!(e.contains("gpt_neox") && e.contains("config.json"), "{e}");

    // A config whose dims disagree with the weights: the first mismatching tensor is named.
    std::fs::write(
        &cfg,
        text.replace("\"intermediate_size\": 80", "\"intermediate_size\": 81"),
    )
    .unwrap();
    let e = load_err(tmp.path()).to_string();
    assert!(
        e.contains("mlp.gate_proj.weight") && e.contains("81"),
        "{e}"
    );

    std::fs::remove_file(&cfg).unwrap();
    assert!(load_err(tmp.path()).to_string().contains("config.json"));

    let tmp = copy_fixture("llama-tied");
    std::fs::remove_file(tmp.path().join("model.safetensors")).unwrap();
    let e = load_err(tmp.path());
    assert!(matches!(e, ModelError::NoWeights { .. }), "{e}");
}

#[test]
fn unused_tensors_are_reported() {
    let tmp = copy_fixture("llama-tied");
    rewrite(tmp.path(), |t| {
        let w = Tensor::zeros(4, DType::F32, &Device::Cpu).unwrap();
        t.insert("model.extra.weight".into(), w.clone());
        t.insert("model.layers.0.self_attn.rotary_emb.inv_freq".into(), w);
    });
    let store = WeightStore::open(tmp.path()).unwrap();
    let cfg = mimo_model::ModelConfig::from_dir(tmp.path()).unwrap();
    MimoModel::load(&store, &cfg, DType::F32, &Device::Cpu).unwrap();
    assert_eq!(store.unused(), vec!["model.extra.weight".to_string()]);
}
