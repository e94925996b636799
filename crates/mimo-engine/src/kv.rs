//! Paged KV cache owned by the engine (vLLM's design): fixed-size blocks from a free list, one block table
//! per sequence, shared by the main layers and every MTP layer (each attention layer has its own storage, all
//! indexed by the same block table, since MTP layer k caches the same positions as the main model).
//!
//! Storage of a layer is one `[num_blocks * block_size, kv_heads * head_dim]` tensor for keys and one for values;
//! position `p` of a sequence lives in slot `table[p / block_size] * block_size + p % block_size`.

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
