//! The training model against the fixtures' transformers reference logits, gradients reaching every parameter,
//! and HF checkpoints that load back (here and into the candle engine model).
#![cfg(feature = "tch")]

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use mimo_train::loss::compute_loss;
use mimo_train::model::{Init, TrainModel};
use tch::{Device, Kind, Tensor};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures")
        .join(name)
}

/// `ids` (i64) and f32 tensors of `reference.safetensors`.
fn reference(dir: &Path) -> (Vec<i64>, BTreeMap<String, Tensor>) {
    let bytes = std::fs::read(dir.join("reference.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut ids = vec![];
    let mut out = BTreeMap::new();
    for (name, v) in st.tensors() {
        let shape: Vec<i64> = v.shape().iter().map(|&d| d as i64).collect();
        match v.dtype() {
            safetensors::Dtype::I64 if name == "ids" => {
                ids = v
                    .data()
                    .chunks_exact(8)
                    .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
                    .collect();
            }
            safetensors::Dtype::F32 => {
                let d: Vec<f32> = v
                    .data()
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                    .collect();
                out.insert(name, Tensor::from_slice(&d).reshape(&shape));
            }
            _ => {}
        }
    }
    (ids, out)
}

fn max_abs(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    if a.numel() == 0 {
        return 0.0;
    }
    (a - b).abs().max().double_value(&[])
}

fn check_parity(name: &str) -> f64 {
    let dir = fixture(name);
    let model = TrainModel::from_dir(&dir, Device::Cpu).unwrap();
    let (ids, r) = reference(&dir);
    let out = model
        .forward(&Tensor::from_slice(&ids).unsqueeze(0))
        .unwrap();
    let mut worst = max_abs(&out.logits.squeeze_dim(0), &r["logits"]);
    assert_eq!(out.mtp_logits.len(), model.num_mtp_layers());
    for (k, l) in out.mtp_logits.iter().enumerate() {
        worst = worst.max(max_abs(&l.squeeze_dim(0), &r[&format!("mtp_logits.{k}")]));
    }
    eprintln!("{name}: max |Δ| = {worst:.3e}");
    assert!(worst <= 1e-4, "{name}: max |Δ| {worst}");
    worst
}

#[test]
fn logits_match_transformers_reference() {
    for name in ["mimo-untied", "mimo-tied-sharded-bf16", "llama-tied"] {
        check_parity(name);
    }
}

#[test]
fn every_parameter_gets_a_gradient() {
    for name in ["mimo-untied", "mimo-tied-sharded-bf16"] {
        let model = TrainModel::from_dir(&fixture(name), Device::Cpu).unwrap();
        let v = model.config().vocab_size as i64;
        // Fixed ids, not `randint`: libtorch's generator is process-global and `random_init_is_seeded` runs
        // beside this test.
        let ids: Vec<i64> = (0..24).map(|i| (i * 37 + 5) % v).collect();
        let w = Tensor::from_slice(&ids).reshape([2, 12]);
        let out = model.forward(&w.narrow(1, 0, 11)).unwrap();
        let l = compute_loss(&out, &w, None, 0.3).unwrap();
        assert!(l.main.is_finite() && l.mtp.iter().all(|x| x.is_finite()));
        l.loss.backward();
        for p in model.params() {
            let g = p.tensor.grad();
            assert!(g.defined(), "{name}: no gradient for {}", p.name);
            let s = g.abs().sum(Kind::Float).double_value(&[]);
            assert!(
                s > 0.0 && s.is_finite(),
                "{name}: zero gradient for {}",
                p.name
            );
        }
    }
}

#[test]
fn sft_mask_removes_prompt_tokens_from_the_loss() {
    let model = TrainModel::from_dir(&fixture("mimo-untied"), Device::Cpu).unwrap();
    let ids: Vec<i64> = (0..10).map(|i| (i * 53 + 11) % 397).collect();
    let w = Tensor::from_slice(&ids).unsqueeze(0);
    let out = model.forward(&w.narrow(1, 0, 9)).unwrap();
    let full = compute_loss(&out, &w, None, 0.0).unwrap();
    // Mask out targets 1..5: the main loss becomes the mean over targets 5..9 only.
    let mut m = vec![1.0f32; 10];
    m[..5].iter_mut().for_each(|x| *x = 0.0);
    let mask = Tensor::from_slice(&m).unsqueeze(0);
    let masked = compute_loss(&out, &w, Some(&mask), 0.0).unwrap();
    let ce = out
        .logits
        .squeeze_dim(0)
        .narrow(0, 4, 5)
        .cross_entropy_for_logits(&w.squeeze_dim(0).narrow(0, 5, 5))
        .double_value(&[]);
    assert!((masked.main - ce).abs() < 1e-5, "{} vs {ce}", masked.main);
    assert!((masked.main - full.main).abs() > 1e-6);
}

#[test]
fn checkpoint_round_trips_and_loads_in_the_engine() {
    let tmp = tempfile::tempdir().unwrap();
    for name in ["mimo-untied", "mimo-tied-sharded-bf16"] {
        let src = fixture(name);
        let model = TrainModel::from_dir(&src, Device::Cpu).unwrap();
        let dir = tmp.path().join(name);
        model.save_hf(&dir, &[]).unwrap();
        let back = TrainModel::from_dir(&dir, Device::Cpu).unwrap();
        for (a, b) in model.params().iter().zip(back.params()) {
            assert_eq!(a.name, b.name);
            assert!(a.tensor.equal(&b.tensor), "{}", a.name);
        }
        // The candle engine model loads it and agrees with the training model.
        let ids: Vec<u32> = (0..9).map(|i| (i * 37 + 5) % 200).collect();
        let engine = mimo_model::MimoModel::from_dir(
            &dir,
            candle_core::DType::F32,
            &candle_core::Device::Cpu,
        )
        .unwrap();
        let (logits, mtp) = engine.forward_teacher_forced(&ids).unwrap();
        let to_t = |c: &candle_core::Tensor| {
            let d: Vec<f32> = c.flatten_all().unwrap().to_vec1().unwrap();
            let s: Vec<i64> = c.dims().iter().map(|&x| x as i64).collect();
            Tensor::from_slice(&d).reshape(&s)
        };
        let ids64: Vec<i64> = ids.iter().map(|&x| x as i64).collect();
        let out = back
            .forward(&Tensor::from_slice(&ids64).unsqueeze(0))
            .unwrap();
        let mut worst = max_abs(&out.logits.squeeze_dim(0), &to_t(&logits));
        for (k, l) in mtp.iter().enumerate() {
            worst = worst.max(max_abs(&out.mtp_logits[k].squeeze_dim(0), &to_t(l)));
        }
        eprintln!("{name}: tch vs candle max |Δ| = {worst:.3e}");
        assert!(worst <= 1e-4, "{name}: {worst}");
        let cfg: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap())
                .unwrap();
        assert_eq!(cfg["model_type"], "mimo");
        assert_eq!(cfg["num_nextn_predict_layers"], model.num_mtp_layers());
    }
}

#[test]
fn random_init_is_seeded() {
    let cfg = fixture("mimo-untied").join("config.json");
    let a = TrainModel::new(Init::Random { std: 0.02, seed: 7 }, &cfg, Device::Cpu).unwrap();
    let b = TrainModel::new(Init::Random { std: 0.02, seed: 7 }, &cfg, Device::Cpu).unwrap();
    let c = TrainModel::new(Init::Random { std: 0.02, seed: 8 }, &cfg, Device::Cpu).unwrap();
    let n = a.params().len();
    assert!((0..n).all(|i| a.params()[i].tensor.equal(&b.params()[i].tensor)));
    assert!(!a.params()[0].tensor.equal(&c.params()[0].tensor));
    let norm = a
        .params()
        .iter()
        .find(|p| p.name == "model.norm.weight")
        .unwrap();
    assert!(!norm.decay);
    assert_eq!(norm.tensor.sum(Kind::Float).double_value(&[]), 64.0);
}

/// A checkpoint written by the trainer loads in transformers as Qwen2 with the same main-model logits.
#[test]
fn written_checkpoint_loads_in_transformers() {
    let Some(py) = common::python_or_skip() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let cfg = fixture("mimo-untied").join("config.json");
    // Fresh random weights (std 0.1 so that logits are not all near zero), written by us.
    let model = TrainModel::new(Init::Random { std: 0.1, seed: 3 }, &cfg, Device::Cpu).unwrap();
    let dir = tmp.path().join("ckpt");
    model.save_hf(&dir, &[]).unwrap();
    let ids: Vec<i64> = (0..11).map(|i| (i * 53 + 11) % 397).collect();
    let out = tmp.path().join("hf.safetensors");
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tools/train/hf_logits.py");
    let status = std::process::Command::new(&py)
        .arg(&script)
        .arg(&dir)
        .arg(ids.iter().map(i64::to_string).collect::<Vec<_>>().join(","))
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success(), "{script:?} failed");
    let bytes = std::fs::read(&out).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let v = st.tensor("logits").unwrap();
    let d: Vec<f32> = v
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    let hf = Tensor::from_slice(&d).reshape([ids.len() as i64, 397]);
    let ours = model
        .forward(&Tensor::from_slice(&ids).unsqueeze(0))
        .unwrap()
        .logits
        .squeeze_dim(0)
        .detach();
    let worst = max_abs(&ours, &hf);
    eprintln!("written checkpoint vs transformers: max |Δ| = {worst:.3e}");
    assert!(worst <= 1e-4, "{worst}");
}
