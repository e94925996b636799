//! Checkpoints the committed fixtures never showed: `tools/make_fixtures.py --random SEED` builds random shapes
//! (arch, GQA ratio, head_dim, tied/untied, 1–3 MTP layers, config layout, sharding) with transformers, live.
//! Needs the project's Python env (`tools/setup-python.sh`); skipped without it, except under CI where it fails.

mod common;

use std::path::PathBuf;
use std::process::Command;

use candle_core::{DType, Device};
use common::{max_abs_diff, reference};
use mimo_model::MimoModel;

#[test]
fn unseen_random_checkpoints_match_transformers() {
    let Some(py) = common::python() else {
        return;
    };
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tools/make_fixtures.py");
    let tmp = tempfile::tempdir().unwrap();
    let seeds = [1, 2, 3, 7];
    let out = Command::new(&py)
        .arg(&script)
        .arg("--random")
        .args(seeds.map(|s| s.to_string()))
        .arg("--out")
        .arg(tmp.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "make_fixtures.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for seed in seeds {
        let dir = tmp.path().join(format!("random-{seed}"));
        let r = reference(&dir);
        let model = MimoModel::from_dir(&dir, DType::F32, &Device::Cpu).unwrap();
        let (logits, mtp) = model.forward_teacher_forced(&r.ids).unwrap();
        let d = max_abs_diff(&logits, &r.logits);
        eprintln!(
            "random-{seed} ({:?}, {} MTP): main max|Δ| = {d:.2e}",
            model.config().arch,
            mtp.len()
        );
        assert!(d <= 1e-4, "random-{seed}: main logits differ by {d}");
        assert_eq!(mtp.len(), r.mtp.len());
        for (k, (a, b)) in mtp.iter().zip(&r.mtp).enumerate() {
            let d = max_abs_diff(a, b);
            assert!(d <= 1e-4, "random-{seed}: MTP layer {k} differs by {d}");
        }
    }
}
