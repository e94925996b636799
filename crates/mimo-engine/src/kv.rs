//! Paged KV cache owned by the engine (vLLM's design): fixed-size blocks from a free list, one block table
//! per sequence, shared by the main layers and every MTP layer (each attention layer has its own storage, all
//! indexed by the same block table, since MTP layer k caches the same positions as the main model), and
//! automatic prefix caching: full blocks keyed by chained token hashes, reference-counted, shared read-only,
//! kept on an LRU list when no sequence holds them.
//!
//! Storage of a layer is one `[num_blocks * block_size, kv_heads * head_dim]` tensor for keys and one for values;
//! position `p` of a sequence lives in slot `table[p / block_size] * block_size + p % block_size`.

use std::collections::{BTreeMap, HashMap};

use candle_core::{DType, Device, Tensor};
use mimo_model::{KvCache, LayerKv, ModelConfig, ModelError};

/// Errors of the paged cache.
#[derive(Debug, thiserror::Error)]
pub enum KvError {
    /// Not enough free blocks for the request.
    #[error("KV cache out of blocks: need {need}, {free} free of {total}")]
    OutOfBlocks {
        need: usize,
        free: usize,
        total: usize,
    },
    /// Unknown sequence slot.
    #[error("no KV block table for sequence slot {0}")]
    NoSuchSequence(usize),
    /// A tensor operation failed.
    #[error("KV cache tensor operation failed: {0}")]
    Candle(#[from] candle_core::Error),
}

/// One sequence's blocks and the number of positions each layer holds.
#[derive(Debug, Clone, Default)]
pub struct BlockTable {
    pub blocks: Vec<u32>,
    /// Cached positions per attention layer (main layers, then MTP layers).
    pub lens: Vec<usize>,
}

/// What a block of the prefix cache holds: the tokens of its positions, and the tokens right after it that its
/// MTP rows read (row `r` of MTP layer `L` pairs `h_r` with token `r+1+L`), so that a hit reuses MTP keys and
/// values only where they were computed from the same tokens.
#[derive(Debug, Clone)]
struct CachedBlock {
    hash: u64,
    tokens: Vec<u32>,
    lookahead: Vec<u32>,
}

/// Occupancy of the pool.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KvUsage {
    /// Blocks held by at least one sequence.
    pub used: usize,
    /// Blocks no sequence holds, cached or not (what an allocation can take).
    pub free: usize,
    /// Blocks in the prefix cache (held or free).
    pub cached: usize,
    /// All blocks.
    pub total: usize,
}

/// The hash of a full block chained with its predecessor's (vLLM's prefix-cache key): equal hashes mean
/// equal prefixes up to collisions, which [`PagedKvCache::match_prefix`] rules out by comparing tokens.
/// `salt` separates caches whose keys and values differ for equal tokens (the model version).
pub fn block_hash(parent: u64, salt: u64, tokens: &[u32]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (parent, salt, tokens).hash(&mut h);
    h.finish()
}

/// The paged cache: reference-counted block pool with a prefix cache, per-layer storage and per-sequence block
/// tables.
///
/// A block is held by the sequences whose tables list it (`refs`). Full blocks a sequence has computed can be
/// registered under their chained hash; a registered block no one holds stays cached on an LRU list and is
/// evicted only when an allocation finds no uncached free block. Held blocks of the cache are read-only: a
/// sequence writes only positions past its prefix hit, which lie in blocks of its own.
#[derive(Debug)]
pub struct PagedKvCache {
    block_size: usize,
    num_blocks: usize,
    /// Free blocks outside the prefix cache.
    free: Vec<u32>,
    /// Holders per block.
    refs: Vec<u32>,
    /// Prefix-cache entry per block.
    meta: Vec<Option<CachedBlock>>,
    /// Block of each cached hash.
    cached: HashMap<u64, u32>,
    /// Cached blocks no sequence holds, by the tick they were freed at (oldest evicted first).
    lru: BTreeMap<u64, u32>,
    /// The `lru` key of each block on it.
    lru_key: Vec<Option<u64>>,
    tick: u64,
    /// Per attention layer: (keys, values), each `[num_blocks * block_size, kv_heads * head_dim]`.
    storage: Vec<(Tensor, Tensor)>,
    kv_heads: usize,
    head_dim: usize,
    /// Block tables indexed by sequence slot; `None` for free slots.
    tables: Vec<Option<BlockTable>>,
}

impl PagedKvCache {
    /// Allocates `num_blocks` blocks of `block_size` positions for every attention layer of `cfg`.
    pub fn new(
        cfg: &ModelConfig,
        num_blocks: usize,
        block_size: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<Self, KvError> {
        let width = cfg.num_key_value_heads * cfg.head_dim;
        let slots = num_blocks * block_size;
        let storage = (0..cfg.num_cache_layers())
            .map(|_| {
                Ok((
                    Tensor::zeros((slots, width), dtype, device)?,
                    Tensor::zeros((slots, width), dtype, device)?,
                ))
            })
            .collect::<Result<Vec<_>, KvError>>()?;
        Ok(Self {
            block_size,
            num_blocks,
            free: (0..num_blocks as u32).rev().collect(),
            refs: vec![0; num_blocks],
            meta: vec![None; num_blocks],
            cached: HashMap::new(),
            lru: BTreeMap::new(),
            lru_key: vec![None; num_blocks],
            tick: 0,
            storage,
            kv_heads: cfg.num_key_value_heads,
            head_dim: cfg.head_dim,
            tables: vec![],
        })
    }

    /// Positions per block.
    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// Blocks an allocation can take: uncached free blocks and cached ones no sequence holds.
    pub fn free_blocks(&self) -> usize {
        self.free.len() + self.lru.len()
    }

    /// Total blocks.
    pub fn total_blocks(&self) -> usize {
        self.num_blocks
    }

    /// Used, free and cached blocks.
    pub fn usage(&self) -> KvUsage {
        KvUsage {
            used: self.num_blocks - self.free_blocks(),
            free: self.free_blocks(),
            cached: self.cached.len(),
            total: self.num_blocks,
        }
    }

    /// Blocks needed to hold `positions` positions.
    pub fn blocks_for(&self, positions: usize) -> usize {
        positions.div_ceil(self.block_size)
    }

    /// Registers a new sequence and returns its slot.
    pub fn add_sequence(&mut self) -> usize {
        let table = BlockTable {
            blocks: vec![],
            lens: vec![0; self.storage.len()],
        };
        if let Some(i) = self.tables.iter().position(Option::is_none) {
            self.tables[i] = Some(table);
            i
        } else {
            self.tables.push(Some(table));
            self.tables.len() - 1
        }
    }

    /// Releases a sequence's blocks (cached ones stay cached) and its slot. The blocks go to the LRU list tail
    /// first, so a sequence's last blocks are evicted before its first ones, which other prompts share more.
    pub fn free_sequence(&mut self, slot: usize) {
        if let Some(Some(table)) = self.tables.get_mut(slot).map(Option::take) {
            for &b in table.blocks.iter().rev() {
                self.release(b);
            }
        }
    }

    /// The block table of a sequence slot.
    pub fn table(&self, slot: usize) -> Option<&BlockTable> {
        self.tables.get(slot).and_then(Option::as_ref)
    }

    fn release(&mut self, b: u32) {
        let r = &mut self.refs[b as usize];
        *r = r.saturating_sub(1);
        if *r > 0 {
            return;
        }
        if self.meta[b as usize].is_some() {
            self.tick += 1;
            self.lru.insert(self.tick, b);
            self.lru_key[b as usize] = Some(self.tick);
        } else {
            self.free.push(b);
        }
    }

    /// Takes a block for writing: an uncached free one, else the least recently freed cached one (evicted).
    fn allocate(&mut self) -> Option<u32> {
        let b = match self.free.pop() {
            Some(b) => b,
            None => {
                let (_, b) = self.lru.pop_first()?;
                self.lru_key[b as usize] = None;
                if let Some(m) = self.meta[b as usize].take() {
                    self.cached.remove(&m.hash);
                }
                b
            }
        };
        self.refs[b as usize] = 1;
        Some(b)
    }

    /// Makes sure `slot` has blocks for `positions` positions, taking them from the free list (evicting cached
    /// blocks no one holds when it is empty).
    pub fn reserve(&mut self, slot: usize, positions: usize) -> Result<(), KvError> {
        let need = self.blocks_for(positions);
        let have = self
            .table(slot)
            .ok_or(KvError::NoSuchSequence(slot))?
            .blocks
            .len();
        if need <= have {
            return Ok(());
        }
        let extra = need - have;
        if extra > self.free_blocks() {
            return Err(KvError::OutOfBlocks {
                need: extra,
                free: self.free_blocks(),
                total: self.num_blocks,
            });
        }
        for _ in 0..extra {
            let b = self.allocate().ok_or(KvError::OutOfBlocks {
                need: extra,
                free: 0,
                total: self.num_blocks,
            })?;
            if let Some(Some(t)) = self.tables.get_mut(slot) {
                t.blocks.push(b);
            }
        }
        Ok(())
    }

    /// Extra blocks `slot` would take to hold `positions` positions.
    pub fn blocks_to_grow(&self, slot: usize, positions: usize) -> usize {
        let have = self.table(slot).map_or(0, |t| t.blocks.len());
        self.blocks_for(positions).saturating_sub(have)
    }

    /// Releases blocks beyond what `positions` positions need (after padding or rejected drafts).
    pub fn shrink(&mut self, slot: usize, positions: usize) {
        let need = self.blocks_for(positions);
        let mut dropped = vec![];
        if let Some(Some(table)) = self.tables.get_mut(slot) {
            while table.blocks.len() > need {
                if let Some(b) = table.blocks.pop() {
                    dropped.push(b);
                }
            }
            for l in table.lens.iter_mut() {
                *l = (*l).min(positions);
            }
        }
        for b in dropped {
            self.release(b);
        }
    }

    /// The cached blocks holding the longest prefix of `tokens` in whole blocks, at most `max_positions`
    /// positions, each followed in `tokens` by the lookahead it was computed with. Does not take them.
    pub fn match_prefix(&self, tokens: &[u32], max_positions: usize, salt: u64) -> Vec<u32> {
        let bs = self.block_size;
        let mut parent = 0;
        let mut hit = vec![];
        for (i, chunk) in tokens.chunks_exact(bs).enumerate() {
            if (i + 1) * bs > max_positions {
                break;
            }
            parent = block_hash(parent, salt, chunk);
            let Some(&b) = self.cached.get(&parent) else {
                break;
            };
            let Some(m) = &self.meta[b as usize] else {
                break;
            };
            let after = &tokens[(i + 1) * bs..];
            if m.tokens != chunk
                || after.len() < m.lookahead.len()
                || after[..m.lookahead.len()] != m.lookahead[..]
            {
                break;
            }
            hit.push(b);
        }
        hit
    }

    /// How many of `blocks` no sequence holds (taking them lowers [`PagedKvCache::free_blocks`]).
    pub fn unheld(&self, blocks: &[u32]) -> usize {
        blocks
            .iter()
            .filter(|&&b| self.refs[b as usize] == 0)
            .count()
    }

    /// Gives the empty sequence `slot` the cached `blocks` as its first positions, valid in every layer.
    pub fn take_prefix(&mut self, slot: usize, blocks: &[u32]) -> Result<(), KvError> {
        let n = blocks.len() * self.block_size;
        let table = self
            .tables
            .get_mut(slot)
            .and_then(Option::as_mut)
            .ok_or(KvError::NoSuchSequence(slot))?;
        debug_assert!(table.blocks.is_empty());
        table.blocks.extend_from_slice(blocks);
        table.lens.iter_mut().for_each(|l| *l = n);
        for &b in blocks {
            if self.refs[b as usize] == 0 {
                if let Some(k) = self.lru_key[b as usize].take() {
                    self.lru.remove(&k);
                }
            }
            self.refs[b as usize] += 1;
        }
        Ok(())
    }

    /// Enters block `index` of sequence `slot` in the prefix cache under `hash`, unless that hash is cached
    /// already (by another sequence's block) or the block is.
    pub fn register(
        &mut self,
        slot: usize,
        index: usize,
        hash: u64,
        tokens: &[u32],
        lookahead: &[u32],
    ) {
        let Some(&b) = self.table(slot).and_then(|t| t.blocks.get(index)) else {
            return;
        };
        if self.cached.contains_key(&hash) || self.meta[b as usize].is_some() {
            return;
        }
        self.cached.insert(hash, b);
        self.meta[b as usize] = Some(CachedBlock {
            hash,
            tokens: tokens.to_vec(),
            lookahead: lookahead.to_vec(),
        });
    }

    /// Empties the prefix cache (new weights make every cached key and value stale).
    pub fn clear_prefix_cache(&mut self) {
        for (_, b) in std::mem::take(&mut self.lru) {
            self.lru_key[b as usize] = None;
            self.free.push(b);
        }
        self.meta.iter_mut().for_each(|m| *m = None);
        self.cached.clear();
    }

    fn slot_of(&self, table: &BlockTable, pos: usize) -> usize {
        table.blocks[pos / self.block_size] as usize * self.block_size + pos % self.block_size
    }

    /// Writes row `r` of `k`, `v` (`[b, kv, t, d]`) at positions `starts[r]..starts[r]+t` of sequence `slots[r]`
    /// in `layer` with one `scatter_set` per tensor, and returns the storage with every row's slots `0..end`.
    fn write_batch(
        &mut self,
        layer: usize,
        slots: &[usize],
        starts: &[usize],
        k: &Tensor,
        v: &Tensor,
    ) -> Result<LayerKv, KvError> {
        let (b, _, t, _) = k.dims4()?;
        let width = self.kv_heads * self.head_dim;
        let mut rows = Vec::with_capacity(b);
        let mut dest = Vec::with_capacity(b * t * width);
        for (&slot, &start) in slots.iter().zip(starts) {
            self.reserve(slot, start + t)?;
            let table = self.table(slot).ok_or(KvError::NoSuchSequence(slot))?;
            let row: Vec<u32> = (0..start + t)
                .map(|p| self.slot_of(table, p) as u32)
                .collect();
            for &s in &row[start..] {
                dest.extend(std::iter::repeat_n(s, width));
            }
            rows.push(row);
        }
        let (ks, vs) = &self.storage[layer];
        let dest = Tensor::from_vec(dest, (b * t, width), ks.device())?;
        let flat = |x: &Tensor| -> candle_core::Result<Tensor> {
            x.transpose(1, 2)?
                .reshape((b * t, width))?
                .to_dtype(ks.dtype())
        };
        ks.scatter_set(&dest, &flat(k)?, 0)?;
        vs.scatter_set(&dest, &flat(v)?, 0)?;
        for (&slot, &start) in slots.iter().zip(starts) {
            if let Some(Some(table)) = self.tables.get_mut(slot) {
                table.lens[layer] = start + t;
            }
        }
        Ok(LayerKv::Paged {
            k: ks.clone(),
            v: vs.clone(),
            slots: rows,
        })
    }

    /// A view for one forward call: batch row `r` belongs to sequence slot `rows[r]`.
    pub fn view<'a>(&'a mut self, rows: &'a [usize]) -> PagedView<'a> {
        PagedView { cache: self, rows }
    }
}

/// The [`KvCache`] the model sees during one batched forward.
pub struct PagedView<'a> {
    cache: &'a mut PagedKvCache,
    rows: &'a [usize],
}

impl PagedView<'_> {
    fn slot(&self, layer: usize, row: usize, start_pos: usize) -> mimo_model::Result<usize> {
        let slot = *self
            .rows
            .get(row)
            .ok_or_else(|| ModelError::Input(format!("batch row {row} has no sequence")))?;
        let cached = self.cache.table(slot).map_or(0, |t| t.lens[layer]);
        if start_pos > cached {
            return Err(ModelError::Input(format!(
                "KV layer {layer} of sequence slot {slot} holds {cached} positions, cannot write at {start_pos}"
            )));
        }
        Ok(slot)
    }
}

fn kv_err(e: KvError) -> ModelError {
    ModelError::Input(e.to_string())
}

impl KvCache for PagedView<'_> {
    fn update(
        &mut self,
        layer: usize,
        row: usize,
        start_pos: usize,
        k: &Tensor,
        v: &Tensor,
    ) -> mimo_model::Result<(Tensor, Tensor)> {
        let slot = self.slot(layer, row, start_pos)?;
        let (kv_heads, head_dim) = (self.cache.kv_heads, self.cache.head_dim);
        self.cache
            .write_batch(layer, &[slot], &[start_pos], k, v)
            .map_err(kv_err)?
            .into_dense(kv_heads, head_dim)
    }

    fn update_batch(
        &mut self,
        layer: usize,
        starts: &[usize],
        k: &Tensor,
        v: &Tensor,
    ) -> mimo_model::Result<LayerKv> {
        let slots = starts
            .iter()
            .enumerate()
            .map(|(row, &start)| self.slot(layer, row, start))
            .collect::<mimo_model::Result<Vec<_>>>()?;
        self.cache
            .write_batch(layer, &slots, starts, k, v)
            .map_err(kv_err)
    }
}
