//! MinHash signatures and LSH band keys with stable hashing (xxh3, fixed seeds).

use crate::common::SplitMix64;
use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

/// MinHash parameters. The defaults are FineWeb's: 5-word shingles, 14 bands × 8 rows = 112 hashes
/// (pairs with Jaccard ≈ 0.75 collide in some band with probability ≈ 0.77; 0.5 → 0.05).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MinHashParams {
    /// Words per shingle.
    pub ngram: usize,
    /// LSH bands.
    pub bands: usize,
    /// Hashes per band.
    pub rows: usize,
    /// Seed of the hash permutations (keep it fixed across a corpus).
    pub seed: u64,
}

impl Default for MinHashParams {
    fn default() -> Self {
        MinHashParams {
            ngram: 5,
            bands: 14,
            rows: 8,
            seed: 0x6d69_6d6f,
        }
    }
}

/// Computes MinHash signatures: each shingle's xxh3 hash `h` is permuted by `(a_i·h + b_i) mod 2^64`
/// (`a_i` odd) and the high 32 bits are kept; the signature is the per-permutation minimum.
#[derive(Debug, Clone)]
pub struct MinHasher {
    params: MinHashParams,
    a: Vec<u64>,
    b: Vec<u64>,
}

/// Normalised words for dedup/decontamination: lowercase alphanumeric runs, digits mapped to `0`.
pub fn words(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(|w| {
            w.chars()
                .flat_map(char::to_lowercase)
                .map(|c| if c.is_numeric() { '0' } else { c })
                .collect()
        })
}

/// xxh3 of each normalised word.
pub fn word_hashes(text: &str) -> Vec<u64> {
    words(text).map(|w| xxh3_64(w.as_bytes())).collect()
}

/// Hash of a window of word hashes.
pub fn window_hash(w: &[u64]) -> u64 {
    let mut bytes = Vec::with_capacity(w.len() * 8);
    for h in w {
        bytes.extend_from_slice(&h.to_le_bytes());
    }
    xxh3_64(&bytes)
}

impl MinHasher {
    /// A hasher with the given parameters.
    pub fn new(params: MinHashParams) -> Self {
        let n = params.bands * params.rows;
        let mut rng = SplitMix64(params.seed);
        let a = (0..n).map(|_| rng.next_u64() | 1).collect();
        let b = (0..n).map(|_| rng.next_u64()).collect();
        MinHasher { params, a, b }
    }

    /// Parameters in use.
    pub fn params(&self) -> MinHashParams {
        self.params
    }

    /// Signature of a text (`bands·rows` values), or `None` when it has no words. Texts shorter than a
    /// shingle use one shingle of all their words. Also returns the word count.
    pub fn signature(&self, text: &str) -> Option<(Vec<u32>, usize)> {
        let wh = word_hashes(text);
        if wh.is_empty() {
            return None;
        }
        let n = self.a.len();
        let mut sig = vec![u32::MAX; n];
        let k = self.params.ngram.max(1).min(wh.len());
        for win in wh.windows(k) {
            let h = window_hash(win);
            for ((s, &a), &b) in sig.iter_mut().zip(&self.a).zip(&self.b) {
                let v = (a.wrapping_mul(h).wrapping_add(b) >> 32) as u32;
                if v < *s {
                    *s = v;
                }
            }
        }
        Some((sig, wh.len()))
    }

    /// One 64-bit key per band (xxh3 of the band's rows, seeded with the band index).
    pub fn band_keys(&self, sig: &[u32]) -> Vec<u64> {
        sig.chunks(self.params.rows)
            .take(self.params.bands)
            .enumerate()
            .map(|(i, rows)| {
                let mut bytes = Vec::with_capacity(rows.len() * 4);
                for r in rows {
                    bytes.extend_from_slice(&r.to_le_bytes());
                }
                xxh3_64_with_seed(&bytes, i as u64)
            })
            .collect()
    }
}

/// Fraction of equal signature entries: an estimate of the Jaccard similarity of the shingle sets.
pub fn estimated_jaccard(a: &[u32], b: &[u32]) -> f64 {
    if a.is_empty() {
        return 0.0;
    }
    a.iter().zip(b).filter(|(x, y)| x == y).count() as f64 / a.len() as f64
}
