#![allow(dead_code)]
//! Helpers shared by the integration tests: fixture paths and reference logits.

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};

/// The committed fixtures made by `tools/make_fixtures.py`.
pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

pub const CASES: [&str; 3] = ["mimo-untied", "mimo-tied-sharded-bf16", "llama-tied"];

/// Reference tensors of a case: `ids`, `logits`, `mtp_logits.{k}`.
pub struct Reference {
    pub ids: Vec<u32>,
    pub logits: Tensor,
    pub mtp: Vec<Tensor>,
}

pub fn reference(dir: &std::path::Path) -> Reference {
    let mut t: HashMap<String, Tensor> =
        candle_core::safetensors::load(dir.join("reference.safetensors"), &Device::Cpu).unwrap();
    let ids: Vec<i64> = t.remove("ids").unwrap().to_vec1().unwrap();
    let mut mtp = vec![];
    while let Some(m) = t.remove(&format!("mtp_logits.{}", mtp.len())) {
        mtp.push(m);
    }
    Reference {
        ids: ids.into_iter().map(|i| i as u32).collect(),
        logits: t.remove("logits").unwrap(),
        mtp,
    }
}

/// max |a − b| over all elements (shapes must match).
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shape mismatch");
    if a.elem_count() == 0 {
        return 0.0;
    }
    let a = a.to_dtype(DType::F32).unwrap();
    let b = b.to_dtype(DType::F32).unwrap();
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// Copies a fixture into a fresh temp dir so a test can damage it.
pub fn copy_fixture(name: &str) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(fixtures().join(name)).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), tmp.path().join(entry.file_name())).unwrap();
    }
    tmp
}

/// The project's Python env (`MIMO_PYTHON`, else the repository's `.venv`), for reference tests; `None` (the
/// test skips) when there is none, except under CI, where reference tests must run.
pub fn python() -> Option<PathBuf> {
    let py = match std::env::var("MIMO_PYTHON") {
        Ok(p) => Some(PathBuf::from(p)),
        Err(_) => {
            let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/python");
            venv.exists().then_some(venv)
        }
    };
    if py.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must run the Python reference tests: run tools/setup-python.sh"
        );
        eprintln!("SKIPPED: no Python env (.venv or MIMO_PYTHON); run tools/setup-python.sh");
    }
    py
}
