//! Serves the scripted test checkpoint of `mimo_serve::testing` on loopback (for `tools/serve/load_test.py`
//! and manual checks without real weights).
//!
//! `cargo run --release -p mimo-serve --example serve_test_model -- [--port 8000] [--max-num-seqs 16]
//! [--mtp 0] [--max-model-len 1024] [--api-key KEY]`

use std::path::PathBuf;

fn main() -> anyhow::Result<()> {
    let mut args = mimo_serve::ServeArgs {
        served_model_name: Some("mimo-test".into()),
        ..Default::default()
    };
    let mut max_len = 1024usize;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it
            .next()
            .ok_or_else(|| anyhow::anyhow!("{flag} needs a value"))?;
        match flag.as_str() {
            "--port" => args.port = value.parse()?,
            "--max-num-seqs" => args.max_num_seqs = value.parse()?,
            "--mtp" => args.mtp = value.parse()?,
            "--max-model-len" => max_len = value.parse()?,
            "--api-key" => args.api_key = Some(value),
            other => anyhow::bail!("unknown flag {other}"),
        }
    }
    let dir = std::env::temp_dir().join(format!("mimo-serve-test-model-{}", std::process::id()));
    let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/tokenizer");
    mimo_serve::testing::write_test_model(&dir, &fixtures, max_len)?;
    args.model = dir.clone();
    let rt = tokio::runtime::Runtime::new()?;
    let r = rt.block_on(mimo_serve::serve(args));
    let _ = std::fs::remove_dir_all(&dir);
    r
}
