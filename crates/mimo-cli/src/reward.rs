//! `mimo reward math|code`: JSONL in, JSONL out in the same order (the line formats are in mimo-reward's docs).
//!
//! Every non-blank input line is answered, a line that cannot be used with `{"line": N, "error": …}`
//! (lines longer than `mimo_reward::jsonl::MAX_LINE_BYTES`, 16 MiB, included), so malformed lines still
//! exit 0. Exit 2: bad options or an input that cannot be opened; exit 1: reading or writing failed.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Subcommand;
use mimo_reward::jsonl::{CodeOptions, MathOptions};
use mimo_reward::sandbox::MAX_CONCURRENCY;

/// Longest `--timeout-s` of `mimo reward math`, in seconds.
const MAX_MATH_TIMEOUT_S: f64 = 3600.0;

/// `mimo reward` verbs.
#[derive(Subcommand)]
pub enum RewardCmd {
    /// Math answers: lines {"gold", "pred"} → adds "correct", "gold_parsed", "pred_parsed", "error".
    Math {
        /// Input JSONL ("-" for stdin).
        #[arg(long)]
        input: PathBuf,
        /// Per-case time bound in seconds, in (0, 3600].
        #[arg(long, default_value_t = 5.0)]
        timeout_s: f64,
    },
    /// Code in the sandbox: lines {"code", "language", "tests" | "test_program", "timeout_s"} → adds "passed",
    /// "status", "binary" and, with test levels, "strict"/"soft".
    Code {
        /// Input JSONL ("-" for stdin).
        #[arg(long)]
        input: PathBuf,
        /// Concurrent sandbox runs, 1 to 1024 (default: number of cores).
        #[arg(long)]
        concurrency: Option<usize>,
    },
}

fn open_input(path: &Path) -> Result<Box<dyn BufRead>> {
    if path == Path::new("-") {
        return Ok(Box::new(BufReader::new(std::io::stdin())));
    }
    let usage = |e: String| crate::UsageError(format!("{}: {e}", path.display()));
    let f = File::open(path).map_err(|e| usage(e.to_string()))?;
    if f.metadata().is_ok_and(|m| m.is_dir()) {
        return Err(usage("is a directory".into()).into());
    }
    Ok(Box::new(BufReader::new(f)))
}

/// Runs a `mimo reward` verb, writing JSONL to stdout and a summary to stderr.
pub fn run(cmd: RewardCmd) -> Result<()> {
    let out = BufWriter::new(std::io::stdout().lock());
    let stats = match cmd {
        RewardCmd::Math { input, timeout_s } => {
            if !(timeout_s.is_finite() && timeout_s > 0.0 && timeout_s <= MAX_MATH_TIMEOUT_S) {
                return Err(crate::UsageError(format!(
                    "--timeout-s must be in (0, {MAX_MATH_TIMEOUT_S}], got {timeout_s}"
                ))
                .into());
            }
            let opts = MathOptions {
                timeout: Duration::from_secs_f64(timeout_s),
            };
            mimo_reward::jsonl::run_math_jsonl_with(open_input(&input)?, out, &opts)
        }
        RewardCmd::Code { input, concurrency } => {
            let mut opts = CodeOptions::default();
            if let Some(c) = concurrency {
                if c == 0 || c > MAX_CONCURRENCY {
                    return Err(crate::UsageError(format!(
                        "--concurrency must be in 1..={MAX_CONCURRENCY}, got {c}"
                    ))
                    .into());
                }
                opts.sandbox.concurrency = c;
            }
            opts.sandbox
                .validate()
                .map_err(|e| crate::UsageError(e.to_string()))?;
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
