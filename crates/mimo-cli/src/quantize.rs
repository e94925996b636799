//! `mimo quantize --model DIR --out OUT --quant q4_k`: an HF checkpoint (MTP layers included) as a directory
//! holding `model.gguf` plus the text files, so that later starts load the quantized weights directly
//! (`--model OUT`) instead of quantizing again.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use mimo_model::{ModelConfig, QuantType, WeightStore};

use crate::UsageError;

/// Arguments of `mimo quantize`.
#[derive(clap::Args)]
pub struct QuantizeArgs {
    /// HF model directory (config.json + safetensors).
    #[arg(long)]
    model: PathBuf,
    /// Output directory (created; must not hold a model already).
    #[arg(long)]
    out: PathBuf,
    /// Format: q8_0, q4_0, q4_1, q5_0, q5_1, q2_k, q3_k, q4_k, q5_k, q6_k.
    #[arg(long, default_value = "q8_0")]
    quant: String,
}

/// The text files a model directory may hold, copied next to `model.gguf`.
const TEXT_FILES: [&str; 5] = [
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "generation_config.json",
];

/// Runs `mimo quantize` and prints a JSON summary.
pub fn run(args: QuantizeArgs) -> Result<()> {
    let quant = QuantType::parse(&args.quant)?;
    if args.out.join("model.gguf").exists() || args.out.join("model.safetensors").exists() {
        return Err(UsageError(format!(
            "--out {}: already holds a model; choose a new directory",
            args.out.display()
        ))
        .into());
    }
    let cfg = ModelConfig::from_dir(&args.model)?;
    let store = WeightStore::open(&args.model)?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let t0 = Instant::now();
    let file = args.out.join("model.gguf");
    let (tensors, bytes) = mimo_model::gguf::write_gguf(&store, &cfg, quant, &file)?;
    for name in TEXT_FILES {
        let src = args.model.join(name);
        if src.is_file() {
            std::fs::copy(&src, args.out.join(name))
                .with_context(|| format!("copying {}", src.display()))?;
        }
    }
    if !file.is_file() {
        bail!("{} was not written", file.display());
    }
    crate::write_stdout(
        &serde_json::json!({
            "out": file.display().to_string(),
            "quant": args.quant,
            "tensors": tensors,
            "bytes": bytes,
            "seconds": t0.elapsed().as_secs_f64(),
        })
        .to_string(),
    )
}
