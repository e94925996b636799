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
    MimoModel::load(
        &store,
        &cfg,
        mimo_model::WeightFormat::float(DType::F32),
        &Device::Cpu,
    )
    .unwrap();
    assert_eq!(store.unused(), vec!["model.extra.weight".to_string()]);
}

#[test]
fn non_finite_weights_are_named() {
    for (case, bad) in [("mimo-untied", f32::NAN), ("llama-tied", f32::INFINITY)] {
        let tmp = copy_fixture(case);
        rewrite(tmp.path(), |t| {
            let w = t["model.norm.weight"].to_vec1::<f32>().unwrap();
            let mut w2 = w.clone();
            w2[3] = bad;
            w2[5] = bad;
            let n = w2.len();
            t.insert(
                "model.norm.weight".into(),
                Tensor::from_vec(w2, n, &Device::Cpu).unwrap(),
            );
        });
        let e = load_err(tmp.path());
        assert!(matches!(e, ModelError::NonFinite { .. }), "{e}");
        let s = e.to_string();
        assert!(
            s.contains("model.norm.weight") && s.contains("2 non-finite") && s.contains("index 3"),
            "{s}"
        );
    }
    // bf16 shards: NaN in a half-precision tensor is found too.
    let tmp = copy_fixture("mimo-tied-sharded-bf16");
    let index = tmp.path().join("model.safetensors.index.json");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&index).unwrap()).unwrap();
    let shard = tmp
        .path()
        .join(json["weight_map"]["model.norm.weight"].as_str().unwrap());
    let mut t = candle_core::safetensors::load(&shard, &Device::Cpu).unwrap();
    let w = t["model.norm.weight"].to_dtype(DType::F32).unwrap();
    let nan = Tensor::full(f32::NAN, w.dims(), &Device::Cpu).unwrap();
    t.insert(
        "model.norm.weight".into(),
        nan.to_dtype(DType::BF16).unwrap(),
    );
    candle_core::safetensors::save(&t, &shard).unwrap();
    let e = load_err(tmp.path());
    assert!(matches!(e, ModelError::NonFinite { .. }), "{e}");
}

#[test]
fn non_finite_scan_covers_every_float_type() {
    use mimo_model::weights::non_finite;
    use safetensors::Dtype;
    let f32s: Vec<u8> = [1.0f32, -0.0, f32::MAX, f32::MIN_POSITIVE, 1e-45]
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    assert_eq!(non_finite(Dtype::F32, &f32s), None);
    let mut big = vec![0u8; 4 * 200_000];
    big[4 * 150_001..4 * 150_002].copy_from_slice(&f32::NEG_INFINITY.to_le_bytes());
    assert_eq!(non_finite(Dtype::F32, &big), Some((1, 150_001)));
    let h: Vec<u8> = [half::f16::ONE, half::f16::NAN, half::f16::MAX]
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    assert_eq!(non_finite(Dtype::F16, &h), Some((1, 1)));
    let b: Vec<u8> = [half::bf16::INFINITY, half::bf16::MAX, half::bf16::NAN]
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    assert_eq!(non_finite(Dtype::BF16, &b), Some((2, 0)));
    let d: Vec<u8> = [f64::MAX, f64::NAN]
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    assert_eq!(non_finite(Dtype::F64, &d), Some((1, 1)));
}

#[test]
fn config_with_fewer_layers_than_the_checkpoint_is_rejected() {
    let tmp = copy_fixture("mimo-untied");
    let cfg = tmp.path().join("config.json");
    let text = std::fs::read_to_string(&cfg).unwrap();
    let mut json: serde_json::Value = serde_json::from_str(&text).unwrap();
    let layers = json["num_hidden_layers"].as_u64().unwrap();
    json["num_hidden_layers"] = (layers - 1).into();
    std::fs::write(&cfg, json.to_string()).unwrap();
    let e = load_err(tmp.path());
    assert!(matches!(e, ModelError::ExtraLayers { .. }), "{e}");
    assert!(
        e.to_string()
            .contains(&format!("stores {layers} decoder layers")),
        "{e}"
    );
    // Fewer MTP layers than stored is allowed (MTP is optional at inference).
    json["num_hidden_layers"] = layers.into();
    json["num_nextn_predict_layers"] = 1.into();
    std::fs::write(&cfg, json.to_string()).unwrap();
    let m = MimoModel::from_dir(tmp.path(), DType::F32, &Device::Cpu).unwrap();
    assert_eq!(m.num_mtp_layers(), 1);
}

#[test]
fn absurd_config_values_are_errors_not_allocations() {
    let tmp = copy_fixture("llama-tied");
    let cfg = tmp.path().join("config.json");
    let text = std::fs::read_to_string(&cfg).unwrap();
    let base: serde_json::Value = serde_json::from_str(&text).unwrap();
    let cases: [(&str, serde_json::Value); 10] = [
        ("num_hidden_layers", (1u64 << 62).into()),
        ("num_hidden_layers", 0.into()),
        ("max_position_embeddings", 1_000_000_000u64.into()),
        ("vocab_size", u64::MAX.into()),
        ("intermediate_size", (1u64 << 40).into()),
        ("num_nextn_predict_layers", 100_000.into()),
        ("rms_norm_eps", (-1e-6).into()),
        ("rms_norm_eps", 2.0.into()),
        ("head_dim", 1_000_000.into()),
        ("num_attention_heads", (1u64 << 33).into()),
    ];
    for (field, value) in cases {
        let mut json = base.clone();
        json[field] = value.clone();
        if field == "num_attention_heads" {
            json["num_key_value_heads"] = value.clone();
        }
        std::fs::write(&cfg, json.to_string()).unwrap();
        let e = load_err(tmp.path()).to_string();
        assert!(
            e.contains(field) && e.contains("config.json"),
            "{field}={value}: {e}"
        );
    }
    // Sizes that are each allowed but multiply beyond 2^40 parameters.
    let mut json = base.clone();
    json["hidden_size"] = (1u64 << 17).into();
    json["intermediate_size"] = (1u64 << 20).into();
    json["num_hidden_layers"] = 4096.into();
    json["num_attention_heads"] = 128.into();
    json["num_key_value_heads"] = 128.into();
    json["head_dim"] = 1024.into();
    std::fs::write(&cfg, json.to_string()).unwrap();
    let e = load_err(tmp.path()).to_string();
    assert!(e.contains("2^40"), "{e}");
}
