//! `mimo-data`: the pretraining data pipeline (design §2.1–2.2).
//!
//! One pub function + one args struct per `mimo data` subcommand, each returning a serialisable [`Report`]:
//! [`extract`], [`dedup`], [`filter`], [`classifier_train`], [`classifier_score`], [`decontaminate`], [`pack`].
//! Every stage is "task i of N over a shard list": it processes the units with `index % N == i`, writes its
//! own outputs (temp file + rename) and a completion marker (`*.done`, the unit's JSON report), and skips
//! units that already have one, so a relaunch runs only unfinished work. With Slurm:
//!
//! ```text
//! #SBATCH --array=0-63
//! mimo data extract --input shards/*.warc.gz --output text/ --task-index $SLURM_ARRAY_TASK_ID --num-tasks 64
//! ```
//! (Kubernetes indexed Jobs: `$JOB_COMPLETION_INDEX`.) Dedup runs its four stages as four such arrays
//! (see [`dedup`](mod@dedup)). Removed documents go to `<stem>.excluded.jsonl` with a reason, never silently.
//! The packed token format and its reader are in [`pack`](mod@pack) and [`packed`].

pub mod classifier;
mod common;
pub mod decontam;
pub mod dedup;
mod error;
pub mod extract;
pub mod filter;
pub mod html;
mod mathml;
pub mod minhash;
mod nesting;
pub mod pack;
pub mod packed;
mod stream;
pub mod warc;

pub use classifier::{
    classifier_score, classifier_train, Classifier, ClassifierScoreArgs, ClassifierTrainArgs,
};
pub use common::{invalid_utf8_line, Report, ShardReport, SplitMix64};
pub use decontam::{decontaminate, DecontamArgs};
pub use dedup::{dedup, DedupArgs, DedupStage};
pub use error::DataError;
pub use extract::{extract, ExtractArgs, InputFormat};
pub use filter::{filter, FilterArgs};
pub use minhash::{MinHashParams, MinHasher};
pub use pack::{pack, MixtureSpec, PackArgs, PackedIndex, ShardEntry};
pub use packed::PackedDataset;
