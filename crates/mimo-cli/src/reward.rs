//! `mimo reward math|code`: JSONL in, JSONL out in the same order (the line formats are in mimo-reward's docs).

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Subcommand;
use mimo_reward::jsonl::{CodeOptions, MathOptions};

/// `mimo reward` verbs.
#[derive(Subcommand)]
pub enum RewardCmd {
    /// Math answers: lines {"gold", "pred"} → adds "correct", "gold_parsed", "pred_parsed", "error".
    Math {
        /// Input JSONL ("-" for stdin).
        #[arg(long)]
        input: PathBuf,
        /// Per-case time bound in seconds.
        #[arg(long, default_value_t = 5.0)]
        timeout_s: f64,
    },
    /// Code in the sandbox: lines {"code", "language", "tests" | "test_program", "timeout_s"} → adds "passed",
    /// "status", "binary" and, with test levels, "strict"/"soft".
    Code {
        /// Input JSONL ("-" for stdin).
        #[arg(long)]
        input: PathBuf,
        /// Concurrent sandbox runs (default: number of cores).
        #[arg(long)]
        concurrency: Option<usize>,
    },
}

fn open_input(path: &Path) -> Result<Box<dyn BufRead>> {
    if path == Path::new("-") {
        return Ok(Box::new(BufReader::new(std::io::stdin())));
    }
    let f = File::open(path).map_err(|e| crate::UsageError(format!("{}: {e}", path.display())))?;
    Ok(Box::new(BufReader::new(f)))
}

/// Runs a `mimo reward` verb, writing JSONL to stdout and a summary to stderr.
pub fn run(cmd: RewardCmd) -> Result<()> {
    let out = BufWriter::new(std::io::stdout().lock());
    let stats = match cmd {
        RewardCmd::Math { input, timeout_s } => {
            if !(timeout_s.is_finite() && timeout_s > 0.0) {
                return Err(
                    crate::UsageError(format!("--timeout-s must be > 0, got {timeout_s}")).into(),
                );
            }
            let opts = MathOptions {
                timeout: Duration::from_secs_f64(timeout_s),
            };
            mimo_reward::jsonl::run_math_jsonl_with(open_input(&input)?, out, &opts)
        }
        RewardCmd::Code { input, concurrency } => {
            let mut opts = CodeOptions::default();
            if let Some(c) = concurrency {
                opts.sandbox.concurrency = c.max(1);
            }
            mimo_reward::jsonl::run_code_jsonl(open_input(&input)?, out, &opts)
        }
    }
    .context("reward run failed")?;
    std::io::stdout().flush().ok();
    eprintln!(
        "{} lines, {} malformed, {} correct",
        stats.lines, stats.malformed, stats.correct
    );
    Ok(())
}
