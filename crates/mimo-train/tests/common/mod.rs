//! Shared by the trainer's reference tests.

use std::path::PathBuf;

/// The Python reference environment (`MIMO_PYTHON`, else the repository's `.venv`). Without one the test is
/// skipped, except under CI, where that is a failure.
pub fn python_or_skip() -> Option<PathBuf> {
    let py = std::env::var_os("MIMO_PYTHON")
        .map(PathBuf::from)
        .or_else(|| {
            let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/python");
            venv.exists().then_some(venv)
        });
    if py.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must run the Python reference tests: run tools/setup-python.sh"
        );
        eprintln!("SKIPPED: no Python env (.venv or MIMO_PYTHON); run tools/setup-python.sh");
    }
    py
}
