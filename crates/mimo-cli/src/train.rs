//! `mimo train pretrain|sft`, `mimo data synth` and `mimo tokenizer train` (mimo-train). The libtorch trainer
//! is behind the `train` cargo feature; without it `mimo train` says so and exits 1.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Subcommand};
use mimo_train::{Mode, TrainArgs};

/// `mimo train` verbs.
#[derive(Subcommand)]
pub enum TrainCmd {
    /// Pretraining with the MTP loss on packed token shards (one dataset, or a `[[stages]]` mixture schedule).
    Pretrain(TrainOpts),
    /// SFT: prompt tokens masked out of the loss, MTP layers tuned.
    Sft(TrainOpts),
}

/// Options of a training run.
#[derive(Args)]
pub struct TrainOpts {
    /// TOML config files layered over the embedded defaults, in order.
    #[arg(long)]
    config: Vec<PathBuf>,
    /// Single overrides, e.g. --set optim.lr=3e-4.
    #[arg(long)]
    set: Vec<String>,
    /// Print the effective config and exit.
    #[arg(long)]
    print_config: bool,
}

/// Runs `mimo train`.
pub fn run(cmd: TrainCmd) -> Result<()> {
    let (mode, opts) = match cmd {
        TrainCmd::Pretrain(o) => (Mode::Pretrain, o),
        TrainCmd::Sft(o) => (Mode::Sft, o),
    };
    let usage = |e: mimo_train::TrainError| crate::UsageError(e.to_string());
    let mut args = TrainArgs::layered(&opts.config, &opts.set).map_err(usage)?;
    args.mode = mode;
    if opts.print_config {
        return crate::write_stdout(&args.to_toml());
    }
    args.validate().map_err(usage)?;
    let report = mimo_train::train(&args)?;
    crate::write_stdout(&serde_json::to_string(&report)?)
}

/// `mimo data synth` arguments.
#[derive(Args)]
pub struct SynthCli {
    /// Output directory (train.jsonl, heldout.jsonl).
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value_t = 10000)]
    train: usize,
    #[arg(long, default_value_t = 500)]
    heldout: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Share of math responses that state the result without the worked steps.
    #[arg(long, default_value_t = 0.0)]
    terse_fraction: f64,
    /// Problem kinds, comma-separated (arithmetic, linear, countdown, word, code, code_cases); default: all but
    /// code_cases.
    #[arg(long, value_delimiter = ',')]
    kinds: Vec<String>,
    #[arg(long)]
    force: bool,
}

/// Runs `mimo data synth`.
pub fn synth(a: SynthCli) -> Result<()> {
    use mimo_train::synth::SynthKind;
    let known = || SynthKind::ALL.map(|k| k.name()).join(", ");
    let mut kinds = Vec::with_capacity(a.kinds.len());
    for k in &a.kinds {
        kinds.push(SynthKind::parse(k).ok_or_else(|| {
            crate::UsageError(format!("--kinds: unknown kind `{k}` (known: {})", known()))
        })?);
    }
    if kinds.is_empty() {
        kinds = SynthKind::DEFAULT.to_vec();
    }
    let args = mimo_train::synth::SynthArgs {
        kinds,
        out: a.out,
        train: a.train,
        heldout: a.heldout,
        seed: a.seed,
        terse_fraction: a.terse_fraction,
        force: a.force,
        ..Default::default()
    };
    let report = mimo_train::synth::synth(&args).map_err(|e| crate::UsageError(e.to_string()))?;
    crate::write_stdout(&serde_json::to_string(&report)?)
}

/// `mimo tokenizer` verbs.
#[derive(Subcommand)]
pub enum TokenizerCmd {
    /// Byte-level BPE with ChatML and <think> specials → tokenizer.json + tokenizer_config.json.
    Train {
        /// Text or JSONL files to learn from.
        #[arg(long = "input", required = true)]
        inputs: Vec<PathBuf>,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 1024)]
        vocab_size: usize,
        #[arg(long)]
        force: bool,
    },
}

/// Runs `mimo tokenizer train`.
pub fn tokenizer(cmd: TokenizerCmd) -> Result<()> {
    let TokenizerCmd::Train {
        inputs,
        out,
        vocab_size,
        force,
    } = cmd;
    let args = mimo_train::tokenizer::TokenizerTrainArgs {
        inputs,
        out,
        vocab_size,
        force,
        ..Default::default()
    };
    let report = mimo_train::tokenizer::train_tokenizer(&args)
        .map_err(|e| crate::UsageError(e.to_string()))?;
    crate::write_stdout(&serde_json::to_string(&report)?)
}
