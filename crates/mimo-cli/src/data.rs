//! `mimo data …`: the pretraining data pipeline (design §2.1–2.2). Every stage is "task i of N over a shard
//! list" with completion markers, so a relaunch runs only unfinished work; the JSON report goes to stdout.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Subcommand, ValueEnum};
use mimo_data::{DataError, DedupStage, InputFormat, Report};

/// Options every distributed stage takes.
#[derive(Args, Clone)]
pub struct TaskOpts {
    /// This task's index (0-based) among --num-tasks.
    #[arg(long, default_value_t = 0)]
    task_index: usize,
    /// Number of tasks splitting the shard list.
    #[arg(long, default_value_t = 1)]
    num_tasks: usize,
    /// Redo shards that already have a completion marker.
    #[arg(long)]
    force: bool,
    /// No progress bars.
    #[arg(long)]
    quiet: bool,
}

/// Input format of `extract`.
#[derive(Clone, Copy, ValueEnum)]
pub enum FormatArg {
    Auto,
    Jsonl,
    Warc,
}

/// Which dedup stage to run.
#[derive(Clone, Copy, ValueEnum)]
pub enum StageArg {
    All,
    Signatures,
    Buckets,
    Cluster,
    Filter,
}

/// `mimo data` verbs.
#[derive(Subcommand)]
pub enum DataCmd {
    /// HTML (JSONL {"url","html"} or WARC) → JSONL {"url","text"} keeping math as $…$ and code as fenced blocks.
    Extract {
        /// Input shards.
        #[arg(long = "input", required = true)]
        inputs: Vec<PathBuf>,
        /// Output directory, or output file (.jsonl) for a single input.
        #[arg(long)]
        output: PathBuf,
        #[arg(long, value_enum, default_value_t = FormatArg::Auto)]
        format: FormatArg,
        #[command(flatten)]
        task: TaskOpts,
    },
    /// Exact-URL and MinHash-LSH near-duplicate removal (5-gram shingles, 14 bands × 8 hashes).
    Dedup {
        #[arg(long = "input", required = true)]
        inputs: Vec<PathBuf>,
        /// Directory for intermediate signature/bucket files.
        #[arg(long)]
        work_dir: PathBuf,
        #[arg(long)]
        output: PathBuf,
        #[arg(long, value_enum, default_value_t = StageArg::All)]
        stage: StageArg,
        #[command(flatten)]
        task: TaskOpts,
    },
    /// Language ID and Gopher/C4/FineWeb heuristics, with math/code exemptions; removals go to an exclusion file.
    Filter {
        #[arg(long = "input", required = true)]
        inputs: Vec<PathBuf>,
        #[arg(long)]
        output: PathBuf,
        #[command(flatten)]
        task: TaskOpts,
    },
    /// Drop documents sharing a 16-gram with an evaluation set.
    Decontaminate {
        #[arg(long = "input", required = true)]
        inputs: Vec<PathBuf>,
        #[arg(long)]
        output: PathBuf,
        /// Evaluation sets (JSONL).
        #[arg(long = "eval", required = true)]
        eval_sets: Vec<PathBuf>,
        #[command(flatten)]
        task: TaskOpts,
    },
    /// Tokenize one stage of a mixture spec (TOML) into packed u32 shards with an index.json.
    Pack {
        #[arg(long)]
        mixture: PathBuf,
        #[arg(long)]
        stage: String,
        /// tokenizer.json (or a model directory holding one).
        #[arg(long)]
        tokenizer: PathBuf,
        #[arg(long)]
        output: PathBuf,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[command(flatten)]
        task: TaskOpts,
    },
    /// fastText-style domain/quality classifier.
    #[command(subcommand)]
    Classifier(ClassifierCmd),
    /// Synthetic verifiable reasoning data (<think>…</think> then \boxed{}), train/held-out split by hash.
    Synth(crate::train::SynthCli),
}

/// `mimo data classifier` verbs.
#[derive(Subcommand)]
pub enum ClassifierCmd {
    /// Train on JSONL lines with a text and a label field.
    Train {
        #[arg(long = "input", required = true)]
        inputs: Vec<PathBuf>,
        /// Where to write the model (JSON).
        #[arg(long)]
        model: PathBuf,
        #[arg(long, default_value = "label")]
        label_field: String,
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Add {"quality": {"label", "scores"}} to each document (optionally dropping labels).
    Score {
        #[arg(long = "input", required = true)]
        inputs: Vec<PathBuf>,
        #[arg(long)]
        output: PathBuf,
        #[arg(long)]
        model: PathBuf,
        /// Labels whose documents go to the exclusion file.
        #[arg(long = "drop")]
        drop_labels: Vec<String>,
        #[command(flatten)]
        task: TaskOpts,
    },
}

fn report(r: std::result::Result<Report, DataError>) -> Result<()> {
    let r = r.map_err(|e| match e {
        DataError::Usage(msg) => anyhow::Error::new(crate::UsageError(msg)),
        e @ DataError::Parse { .. } => anyhow::Error::new(crate::UsageError(e.to_string())),
        e => anyhow::Error::new(e),
    })?;
    crate::write_stdout(&serde_json::to_string(&r)?)
}

/// Runs a `mimo data` verb.
pub fn run(cmd: DataCmd) -> Result<()> {
    match cmd {
        DataCmd::Extract {
            inputs,
            output,
            format,
            task,
        } => report(mimo_data::extract(&mimo_data::ExtractArgs {
            inputs,
            output,
            format: match format {
                FormatArg::Auto => InputFormat::Auto,
                FormatArg::Jsonl => InputFormat::Jsonl,
                FormatArg::Warc => InputFormat::Warc,
            },
            task_index: task.task_index,
            num_tasks: task.num_tasks,
            force: task.force,
            progress: !task.quiet,
            ..Default::default()
        })),
        DataCmd::Dedup {
            inputs,
            work_dir,
            output,
            stage,
            task,
        } => report(mimo_data::dedup(&mimo_data::DedupArgs {
            inputs,
            work_dir,
            output,
            stage: match stage {
                StageArg::All => DedupStage::All,
                StageArg::Signatures => DedupStage::Signatures,
                StageArg::Buckets => DedupStage::Buckets,
                StageArg::Cluster => DedupStage::Cluster,
                StageArg::Filter => DedupStage::Filter,
            },
            task_index: task.task_index,
            num_tasks: task.num_tasks,
            force: task.force,
            progress: !task.quiet,
            ..Default::default()
        })),
        DataCmd::Filter {
            inputs,
            output,
            task,
        } => report(mimo_data::filter(&mimo_data::FilterArgs {
            inputs,
            output,
            task_index: task.task_index,
            num_tasks: task.num_tasks,
            force: task.force,
            progress: !task.quiet,
            ..Default::default()
        })),
        DataCmd::Decontaminate {
            inputs,
            output,
            eval_sets,
            task,
        } => report(mimo_data::decontaminate(&mimo_data::DecontamArgs {
            inputs,
            output,
            eval_sets,
            task_index: task.task_index,
            num_tasks: task.num_tasks,
            force: task.force,
            progress: !task.quiet,
            ..Default::default()
        })),
        DataCmd::Pack {
            mixture,
            stage,
            tokenizer,
            output,
            seed,
            task,
        } => {
            let tokenizer = if tokenizer.is_dir() {
                tokenizer.join("tokenizer.json")
            } else {
                tokenizer
            };
            report(mimo_data::pack(&mimo_data::PackArgs {
                mixture,
                stage,
                tokenizer,
                output,
                seed,
                task_index: task.task_index,
                num_tasks: task.num_tasks,
                force: task.force,
                progress: !task.quiet,
                ..Default::default()
            }))
        }
        DataCmd::Synth(a) => crate::train::synth(a),
        DataCmd::Classifier(ClassifierCmd::Train {
            inputs,
            model,
            label_field,
            seed,
        }) => report(mimo_data::classifier_train(
            &mimo_data::ClassifierTrainArgs {
                inputs,
                model,
                label_field,
                seed,
                ..Default::default()
            },
        )),
        DataCmd::Classifier(ClassifierCmd::Score {
            inputs,
            output,
            model,
            drop_labels,
            task,
        }) => report(mimo_data::classifier_score(
            &mimo_data::ClassifierScoreArgs {
                inputs,
                output,
                model,
                drop_labels,
                task_index: task.task_index,
                num_tasks: task.num_tasks,
                force: task.force,
                progress: !task.quiet,
                ..Default::default()
            },
        )),
    }
}
