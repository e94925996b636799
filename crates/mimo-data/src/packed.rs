//! Reader of packed token shards (see [`crate::pack`] for the format): fixed-length windows, optionally in a
//! deterministic seeded shuffle, optionally split across data-parallel ranks.

use crate::common::{read_text, SplitMix64};
use crate::pack::PackedIndex;
use crate::DataError;
use memmap2::Mmap;
use std::fs::File;
use std::path::{Path, PathBuf};

/// A packed dataset opened from its directory.
#[derive(Debug)]
pub struct PackedDataset {
    dir: PathBuf,
    index: PackedIndex,
    maps: Vec<Mmap>,
}

impl PackedDataset {
    /// Opens `dir/index.json` and maps every shard, checking sizes against the index.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, DataError> {
        let dir = dir.as_ref().to_path_buf();
        let ip = dir.join("index.json");
        let s = read_text(&ip)?;
        let index: PackedIndex = serde_json::from_str(&s)
            .map_err(|e| DataError::parse(&ip, e.line() as u64, e.to_string()))?;
        if index.dtype != "u32" {
            return Err(DataError::parse(
                &ip,
                0,
                format!("dtype {} unsupported (u32 only)", index.dtype),
            ));
        }
        let mut maps = Vec::with_capacity(index.shards.len());
        for sh in &index.shards {
            let p = dir.join(&sh.file);
            let f = File::open(&p).map_err(DataError::io(&p))?;
            // SAFETY: shards are written once (temp file + rename) and never modified afterwards.
            let m = unsafe { Mmap::map(&f) }.map_err(DataError::io(&p))?;
            if m.len() as u64 != sh.tokens * 4 {
                return Err(DataError::parse(
                    &p,
                    0,
                    format!("{} bytes, index says {} tokens", m.len(), sh.tokens),
                ));
            }
            maps.push(m);
        }
        Ok(PackedDataset { dir, index, maps })
    }

    /// The parsed `index.json`.
    pub fn index(&self) -> &PackedIndex {
        &self.index
    }

    /// Directory of the dataset.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Path of the tokenizer recorded in the index.
    pub fn tokenizer_path(&self) -> PathBuf {
        self.dir.join(&self.index.tokenizer)
    }

    /// Total tokens.
    pub fn total_tokens(&self) -> u64 {
        self.index.shards.iter().map(|s| s.tokens).sum()
    }

    /// Tokens of shard `i`.
    pub fn shard_tokens(&self, i: usize) -> impl Iterator<Item = u32> + '_ {
        self.maps[i]
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
    }

    /// Number of windows of `len` tokens (windows never cross shards; each shard's tail is dropped).
    pub fn num_windows(&self, len: usize) -> usize {
        if len == 0 {
            return 0;
        }
        self.index
            .shards
            .iter()
            .map(|s| s.tokens as usize / len)
            .sum()
    }

    /// Window `i` (in file order) of `len` tokens.
    pub fn window(&self, len: usize, mut i: usize) -> Option<Vec<u32>> {
        if len == 0 {
            return None;
        }
        for (s, sh) in self.index.shards.iter().enumerate() {
            let n = sh.tokens as usize / len;
            if i < n {
                let b = &self.maps[s][i * len * 4..(i + 1) * len * 4];
                return Some(
                    b.chunks_exact(4)
                        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                        .collect(),
                );
            }
            i -= n;
        }
        None
    }

    /// Window order for an epoch: a Fisher–Yates permutation seeded by `seed` (identity when `seed` is `None`),
    /// then every `world`-th window starting at `rank`.
    pub fn window_order(
        &self,
        len: usize,
        seed: Option<u64>,
        rank: usize,
        world: usize,
    ) -> Vec<usize> {
        let n = self.num_windows(len);
        let mut order: Vec<usize> = (0..n).collect();
        if let Some(seed) = seed {
            let mut rng = SplitMix64(seed);
            for i in (1..n).rev() {
                order.swap(i, rng.below(i as u64 + 1) as usize);
            }
        }
        let world = world.max(1);
        order.into_iter().skip(rank).step_by(world).collect()
    }

    /// Iterates windows of `len` tokens in the seeded order (for `len = seq_len + 1` a trainer takes inputs
    /// `w[..seq_len]` and targets `w[1..]`).
    pub fn windows(
        &self,
        len: usize,
        seed: Option<u64>,
        rank: usize,
        world: usize,
    ) -> impl Iterator<Item = Vec<u32>> + '_ {
        self.window_order(len, seed, rank, world)
            .into_iter()
            .filter_map(move |i| self.window(len, i))
    }
}
