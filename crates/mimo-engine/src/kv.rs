//! Paged KV cache owned by the engine (vLLM's design): fixed-size blocks from a free list, one block table
//! per sequence, shared by the main layers and every MTP layer (each attention layer has its own storage, all
//! indexed by the same block table, since MTP layer k caches the same positions as the main model).
//!
//! Storage of a layer is one `[num_blocks * block_size, kv_heads * head_dim]` tensor for keys and one for values;
//! position `p` of a sequence lives in slot `table[p / block_size] * block_size + p % block_size`.

use candle_core::{DType, Device, Tensor};
use mimo_model::{KvCache, ModelConfig, ModelError};

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

/// The paged cache: block pool, per-layer storage and per-sequence block tables.
#[derive(Debug)]
pub struct PagedKvCache {
    block_size: usize,
    num_blocks: usize,
    free: Vec<u32>,
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

    /// Free blocks.
    pub fn free_blocks(&self) -> usize {
        self.free.len()
    }

    /// Total blocks.
    pub fn total_blocks(&self) -> usize {
        self.num_blocks
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

    /// Frees a sequence's blocks and slot.
    pub fn free_sequence(&mut self, slot: usize) {
        if let Some(Some(table)) = self.tables.get_mut(slot).map(Option::take) {
            self.free.extend(table.blocks.iter().rev());
        }
    }

    /// The block table of a sequence slot.
    pub fn table(&self, slot: usize) -> Option<&BlockTable> {
        self.tables.get(slot).and_then(Option::as_ref)
    }

    /// Makes sure `slot` has blocks for `positions` positions, taking them from the free list.
    pub fn reserve(&mut self, slot: usize, positions: usize) -> Result<(), KvError> {
        let need = self.blocks_for(positions);
        let (free, total) = (self.free.len(), self.num_blocks);
        let table = self
            .tables
            .get_mut(slot)
            .and_then(Option::as_mut)
            .ok_or(KvError::NoSuchSequence(slot))?;
        if need > table.blocks.len() {
            let extra = need - table.blocks.len();
            if extra > free {
                return Err(KvError::OutOfBlocks {
                    need: extra,
                    free,
                    total,
                });
            }
            for _ in 0..extra {
                if let Some(b) = self.free.pop() {
                    table.blocks.push(b);
                }
            }
        }
        Ok(())
    }

    /// Releases blocks beyond what `positions` positions need (after rejected drafts).
    pub fn shrink(&mut self, slot: usize, positions: usize) {
        let need = self.blocks_for(positions);
        if let Some(Some(table)) = self.tables.get_mut(slot) {
            while table.blocks.len() > need {
                if let Some(b) = table.blocks.pop() {
                    self.free.push(b);
                }
            }
            for l in table.lens.iter_mut() {
                *l = (*l).min(positions);
            }
        }
    }

    fn slot_of(&self, table: &BlockTable, pos: usize) -> usize {
        table.blocks[pos / self.block_size] as usize * self.block_size + pos % self.block_size
    }

    /// Writes `k`, `v` (`[1, kv, t, d]`) at `start..start+t` of `slot` in `layer` and gathers `0..start+t`.
    fn write_and_gather(
        &mut self,
        layer: usize,
        slot: usize,
        start: usize,
        k: &Tensor,
        v: &Tensor,
    ) -> Result<(Tensor, Tensor), KvError> {
        let t = k.dim(2)?;
        let end = start + t;
        self.reserve(slot, end)?;
        let table = self
            .tables
            .get(slot)
            .and_then(Option::as_ref)
            .ok_or(KvError::NoSuchSequence(slot))?
            .clone();
        let width = self.kv_heads * self.head_dim;
        let (ks, vs) = &self.storage[layer];
        let flat = |x: &Tensor| -> candle_core::Result<Tensor> {
            x.squeeze(0)?
                .transpose(0, 1)?
                .reshape((t, width))?
                .to_dtype(ks.dtype())
        };
        let (kf, vf) = (flat(k)?, flat(v)?);
        // Copy block-contiguous runs of positions with one slice_set each.
        let mut i = 0;
        while i < t {
            let pos = start + i;
            let run = (self.block_size - pos % self.block_size).min(t - i);
            let at = self.slot_of(&table, pos);
            ks.slice_set(&kf.narrow(0, i, run)?, 0, at)?;
            vs.slice_set(&vf.narrow(0, i, run)?, 0, at)?;
            i += run;
        }
        let idx: Vec<u32> = (0..end).map(|p| self.slot_of(&table, p) as u32).collect();
        let idx = Tensor::from_vec(idx, end, ks.device())?;
        let unflat = |x: Tensor| -> candle_core::Result<Tensor> {
            x.reshape((end, self.kv_heads, self.head_dim))?
                .transpose(0, 1)?
                .unsqueeze(0)
        };
        let kk = unflat(ks.index_select(&idx, 0)?)?;
        let vv = unflat(vs.index_select(&idx, 0)?)?;
        if let Some(Some(t)) = self.tables.get_mut(slot) {
            t.lens[layer] = end;
        }
        Ok((kk, vv))
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

impl KvCache for PagedView<'_> {
    fn update(
        &mut self,
        layer: usize,
        row: usize,
        start_pos: usize,
        k: &Tensor,
        v: &Tensor,
    ) -> mimo_model::Result<(Tensor, Tensor)> {
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
        self.cache
            .write_and_gather(layer, slot, start_pos, k, v)
            .map_err(|e| ModelError::Input(e.to_string()))
    }
}
