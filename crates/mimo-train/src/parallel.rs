//! Data parallelism for pretraining, SFT and GRPO updates (design §8): every rank builds the same global
//! batch (same config, seed and data cursor), computes the loss of its shard of the rows with the *global*
//! token counts as denominators, and the gradients are summed over the ranks (bucketed all-reduce on
//! c10d's gloo group, [`mimo_dist`]) before clipping and AdamW, so each rank takes the single-process step.
//! Rank 0 alone writes metrics, plots and checkpoints.

use std::ops::Range;

use mimo_dist::Group;
pub use mimo_dist::Launch;

use crate::error::{Result, TrainError};
use crate::grpo::split_even;
use crate::model::Param;

/// Gradient bucket size of the all-reduce (DDP's default).
pub const BUCKET_BYTES: usize = 25 << 20;

/// One process, or one rank of a torchrun/Slurm launch.
#[derive(Debug, Default)]
pub struct DataParallel {
    group: Option<Group>,
}

fn dist(e: mimo_dist::DistError) -> TrainError {
    TrainError::Dist(e.to_string())
}

impl DataParallel {
    /// A single process (no collectives).
    pub fn single() -> Self {
        Self { group: None }
    }

    /// The launch the environment describes (`WORLD_SIZE` > 1: rendezvous with the peers now, failing after
    /// the timeout when one never arrives), else a single process.
    pub fn from_env() -> Result<Self> {
        let Some(launch) = Launch::from_env().map_err(dist)? else {
            return Ok(Self::single());
        };
        Self::init(&launch)
    }

    /// Rendezvous as `launch` says (what [`DataParallel::from_env`] does with the environment's launch).
    pub fn init(launch: &Launch) -> Result<Self> {
        let group = Group::init(launch).map_err(dist)?;
        tracing::info!(
            "data parallel: rank {} of {} (rendezvous {}:{})",
            launch.rank,
            launch.world_size,
            launch.master_addr,
            launch.master_port
        );
        Ok(Self { group: Some(group) })
    }

    /// This process's rank (0 for a single process).
    pub fn rank(&self) -> usize {
        self.group.as_ref().map_or(0, Group::rank)
    }

    /// The number of ranks (1 for a single process).
    pub fn world_size(&self) -> usize {
        self.group.as_ref().map_or(1, Group::world_size)
    }

    /// Whether this rank writes the run's files (rank 0).
    pub fn is_main(&self) -> bool {
        self.rank() == 0
    }

    /// This rank's contiguous share of `n` rows (the first ranks take one more when `n` does not divide).
    pub fn shard(&self, n: usize) -> Range<usize> {
        split_even(n, self.world_size())
            .into_iter()
            .nth(self.rank())
            .unwrap_or(0..0)
    }

    /// Errors unless every micro-batch of `rows` rows gives each rank at least one row.
    pub fn check_rows(&self, what: &str, rows: usize) -> Result<()> {
        if rows < self.world_size() {
            return Err(TrainError::Config(format!(
                "{what} = {rows} is below the {} data-parallel ranks: every rank needs a row",
                self.world_size()
            )));
        }
        Ok(())
    }

    /// Rank 0's weights on every rank.
    pub fn broadcast_params(&self, params: &[Param]) -> Result<()> {
        let Some(g) = &self.group else { return Ok(()) };
        let ts: Vec<_> = params.iter().map(|p| p.tensor.shallow_clone()).collect();
        g.broadcast_params(&ts).map_err(dist)
    }

    /// Sums the parameters' gradients over the ranks.
    pub fn all_reduce_grads(&self, params: &[Param]) -> Result<()> {
        let Some(g) = &self.group else { return Ok(()) };
        let ts: Vec<_> = params.iter().map(|p| p.tensor.shallow_clone()).collect();
        g.all_reduce_grads(&ts, BUCKET_BYTES).map_err(dist)
    }

    /// Sums `values` over the ranks.
    pub fn sum(&self, values: &mut [f64]) -> Result<()> {
        let Some(g) = &self.group else { return Ok(()) };
        g.all_reduce_f64(values).map_err(dist)
    }

    /// Errors unless every rank passes the same `value`.
    pub fn check_same(&self, what: &str, value: u64) -> Result<()> {
        let Some(g) = &self.group else { return Ok(()) };
        g.check_same(what, value).map_err(dist)
    }

    /// Rank 0's `bytes` on every rank.
    pub fn broadcast_bytes(&self, bytes: Vec<u8>) -> Result<Vec<u8>> {
        let Some(g) = &self.group else {
            return Ok(bytes);
        };
        g.broadcast_bytes(&bytes).map_err(dist)
    }

    /// Waits for every rank.
    pub fn barrier(&self) -> Result<()> {
        let Some(g) = &self.group else { return Ok(()) };
        g.barrier().map_err(dist)
    }
}

/// A stable 64-bit digest (FNV-1a) of `s`, for checking that ranks run the same config.
pub fn digest(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}
