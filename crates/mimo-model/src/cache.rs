//! The KV-cache interface the model writes to. The cache is owned by the caller (the engine); the model only
//! asks it to store new keys/values and hand back everything to attend over.

use candle_core::{Tensor, D};

use crate::attention::LayerKv;
use crate::error::{ModelError, Result};

/// Storage for the keys and values of every attention layer: the main layers `0..num_hidden_layers`, then one
/// per MTP layer (`ModelConfig::mtp_cache_layer`).
pub trait KvCache {
    /// Stores `k`, `v` (`[1, kv_heads, t, head_dim]`) of batch row `row` in `layer` at positions
    /// `start_pos..start_pos+t`, dropping anything that row cached at or after `start_pos` (this is how rejected
    /// draft positions are rolled back), and returns the row's keys and values of positions `0..start_pos+t`.
    fn update(
        &mut self,
        layer: usize,
        row: usize,
        start_pos: usize,
        k: &Tensor,
        v: &Tensor,
    ) -> Result<(Tensor, Tensor)>;

    /// Batched [`KvCache::update`]: row `r` of `k`, `v` (`[b, kv_heads, t, head_dim]`) goes to positions
    /// `starts[r]..starts[r]+t`. Returns what attention reads: by default every row's keys and values padded to
    /// the longest row (the padding is masked by the caller); a paged cache returns its block storage instead.
    fn update_batch(
        &mut self,
        layer: usize,
        starts: &[usize],
        k: &Tensor,
        v: &Tensor,
    ) -> Result<LayerKv> {
        let t = k.dim(2)?;
        let total = starts.iter().max().copied().unwrap_or(0) + t;
        let mut ks = Vec::with_capacity(starts.len());
        let mut vs = Vec::with_capacity(starts.len());
        for (row, &start) in starts.iter().enumerate() {
            let (rk, rv) = self.update(
                layer,
                row,
                start,
                &k.narrow(0, row, 1)?.contiguous()?,
                &v.narrow(0, row, 1)?.contiguous()?,
            )?;
            ks.push(pad_positions(&rk, total)?);
            vs.push(pad_positions(&rv, total)?);
        }
        Ok(LayerKv::Dense {
            k: Tensor::cat(&ks, 0)?,
            v: Tensor::cat(&vs, 0)?,
        })
    }
}

/// Zero-pads `[1, kv, len, d]` along the position axis to `total` positions.
fn pad_positions(x: &Tensor, total: usize) -> Result<Tensor> {
    let len = x.dim(2)?;
    if len == total {
        return Ok(x.clone());
    }
    Ok(x.pad_with_zeros(2, 0, total - len)?)
}

/// A plain contiguous cache: one growing `[1, kv_heads, len, head_dim]` tensor pair per layer and batch row.
#[derive(Debug, Clone, Default)]
pub struct ContiguousKvCache {
    /// `layers[layer][row]`.
    layers: Vec<Vec<Option<(Tensor, Tensor)>>>,
}

impl ContiguousKvCache {
    /// An empty cache for `num_layers` attention layers.
    pub fn new(num_layers: usize) -> Self {
        Self {
            layers: vec![vec![]; num_layers],
        }
    }

    /// Number of cached positions of batch row 0 in `layer`.
    pub fn len(&self, layer: usize) -> usize {
        self.row_len(layer, 0)
    }

    /// Number of cached positions of `row` in `layer`.
    pub fn row_len(&self, layer: usize, row: usize) -> usize {
        match self.layers.get(layer).and_then(|l| l.get(row)) {
            Some(Some((k, _))) => k.dim(2).unwrap_or(0),
            _ => 0,
        }
    }

    /// True when no layer holds anything.
    pub fn is_empty(&self) -> bool {
        self.layers.iter().flatten().all(Option::is_none)
    }

    /// Keeps only the first `len` positions of every layer and row.
    pub fn truncate(&mut self, len: usize) -> Result<()> {
        for slot in self.layers.iter_mut().flatten() {
            if let Some((k, v)) = slot {
                if k.dim(2)? > len {
                    *slot = if len == 0 {
                        None
                    } else {
                        Some((k.narrow(2, 0, len)?, v.narrow(2, 0, len)?))
                    };
                }
            }
        }
        Ok(())
    }
}

impl KvCache for ContiguousKvCache {
    fn update(
        &mut self,
        layer: usize,
        row: usize,
        start_pos: usize,
        k: &Tensor,
        v: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let n = self.layers.len();
        let rows = self.layers.get_mut(layer).ok_or_else(|| {
            ModelError::Input(format!("KV cache has {n} layers, asked for layer {layer}"))
        })?;
        if rows.len() <= row {
            rows.resize(row + 1, None);
        }
        let slot = &mut rows[row];
        let cached = match slot {
            Some((k, _)) => k.dim(2)?,
            None => 0,
        };
        if start_pos > cached {
            return Err(ModelError::Input(format!(
                "KV cache layer {layer} row {row} holds {cached} positions, cannot write at position {start_pos}"
            )));
        }
        let (k_all, v_all) = match slot.take() {
            Some((ck, cv)) if start_pos > 0 => {
                let ck = ck.narrow(2, 0, start_pos)?;
                let cv = cv.narrow(2, 0, start_pos)?;
                (
                    Tensor::cat(&[&ck, k], D::Minus2)?,
                    Tensor::cat(&[&cv, v], D::Minus2)?,
                )
            }
            _ => (k.clone(), v.clone()),
        };
        *slot = Some((k_all.clone(), v_all.clone()));
        Ok((k_all, v_all))
    }
}
