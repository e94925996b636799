//! The KV-cache interface the model writes to. The cache is owned by the caller (the engine); the model only
//! asks it to store new keys/values and hand back everything to attend over.

use candle_core::{Tensor, D};

use crate::error::{ModelError, Result};

/// Storage for the keys and values of every attention layer: the main layers `0..num_hidden_layers`, then one
/// per MTP layer (`ModelConfig::mtp_cache_layer`).
pub trait KvCache {
    /// Stores `k`, `v` (`[batch, kv_heads, t, head_dim]`) of `layer` at positions `start_pos..start_pos+t`,
    /// dropping anything cached at or after `start_pos` (this is how rejected draft positions are rolled back),
    /// and returns the keys and values of positions `0..start_pos+t`.
    fn update(
        &mut self,
        layer: usize,
        start_pos: usize,
        k: &Tensor,
        v: &Tensor,
    ) -> Result<(Tensor, Tensor)>;
}

/// A plain contiguous cache: one growing `[batch, kv_heads, len, head_dim]` tensor pair per layer.
#[derive(Debug, Clone, Default)]
pub struct ContiguousKvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
}

impl ContiguousKvCache {
    /// An empty cache for `num_layers` attention layers.
    pub fn new(num_layers: usize) -> Self {
        Self {
            layers: vec![None; num_layers],
        }
    }

    /// Number of cached positions of `layer`.
    pub fn len(&self, layer: usize) -> usize {
        match self.layers.get(layer) {
            Some(Some((k, _))) => k.dim(2).unwrap_or(0),
            _ => 0,
        }
    }

    /// True when no layer holds anything.
    pub fn is_empty(&self) -> bool {
        self.layers.iter().all(Option::is_none)
    }

    /// Keeps only the first `len` positions of every layer.
    pub fn truncate(&mut self, len: usize) -> Result<()> {
        for slot in self.layers.iter_mut() {
            if let Some((k, v)) = slot {
                if k.dim(2)? > len {
                    if len == 0 {
                        *slot = None;
                    } else {
                        *slot = Some((k.narrow(2, 0, len)?, v.narrow(2, 0, len)?));
                    }
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
        start_pos: usize,
        k: &Tensor,
        v: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let n = self.layers.len();
        let slot = self.layers.get_mut(layer).ok_or_else(|| {
            ModelError::Input(format!("KV cache has {n} layers, asked for layer {layer}"))
        })?;
        let cached = match slot {
            Some((k, _)) => k.dim(2)?,
            None => 0,
        };
        if start_pos > cached {
            return Err(ModelError::Input(format!(
                "KV cache layer {layer} holds {cached} positions, cannot write at position {start_pos}"
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
