//! Scaled dot-product attention over what the KV cache returns: a dense padded batch, or paged block storage
//! read in place by a fused CPU kernel (vLLM's paged attention, on CPU).
//!
//! The fused kernel is hand-written because candle has no paged attention: without it every layer of every
//! decode step gathers the cached K/V of each sequence into a fresh padded tensor and transposes it, which costs
//! more than the attention itself at batch 16.

use candle_core::{CpuStorage, DType, Device, Layout, Shape, Tensor};

use crate::error::Result;

/// One attention layer's cached keys and values for a batch, as the cache hands them over.
#[derive(Debug, Clone)]
pub enum LayerKv {
    /// `[b, kv_heads, T, head_dim]` each, padded to the longest row (the padding is masked).
    Dense { k: Tensor, v: Tensor },
    /// Block storage `[slots, kv_heads * head_dim]` for keys and values, and for every batch row the storage slot
    /// of each of its positions `0..len`.
    Paged {
        k: Tensor,
        v: Tensor,
        slots: Vec<Vec<u32>>,
    },
}

/// Longest queries for which the fused paged kernel is used; longer ones (prefill) take the gather + matmul path.
const FUSED_MAX_QUERIES: usize = 16;

/// Shapes of one attention call.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Heads {
    pub n_kv_heads: usize,
    pub head_dim: usize,
}

impl LayerKv {
    /// Dense `[b, kv_heads, T, head_dim]` keys and values, gathering paged storage with one `index_select` each.
    pub fn into_dense(self, kv_heads: usize, head_dim: usize) -> Result<(Tensor, Tensor)> {
        match self {
            LayerKv::Dense { k, v } => Ok((k, v)),
            LayerKv::Paged { k, v, slots } => {
                let total = slots.iter().map(Vec::len).max().unwrap_or(0);
                let mut idx = Vec::with_capacity(slots.len() * total);
                for row in &slots {
                    idx.extend_from_slice(row);
                    // Padding points at slot 0; the mask hides it.
                    idx.extend(std::iter::repeat_n(0u32, total - row.len()));
                }
                let idx = Tensor::from_vec(idx, slots.len() * total, k.device())?;
                let unflat = |x: Tensor| -> Result<Tensor> {
                    Ok(x.reshape((slots.len(), total, kv_heads, head_dim))?
                        .transpose(1, 2)?)
                };
                Ok((
                    unflat(k.index_select(&idx, 0)?)?,
                    unflat(v.index_select(&idx, 0)?)?,
                ))
            }
        }
    }
}

/// Attention of `q` (`[b, heads, t, d]`, f32, rotated) over the cached keys/values: row `r`'s query `i` sits at
/// position `starts[r] + i` and attends to positions `0..=starts[r] + i`. Returns `[b, heads, t, d]` in f32.
pub(crate) fn attend(q: &Tensor, kv: LayerKv, starts: &[usize], heads: Heads) -> Result<Tensor> {
    let t = q.dim(2)?;
    if let LayerKv::Paged { k, v, slots } = &kv {
        if q.device().is_cpu()
            && matches!(k.dtype(), DType::F32 | DType::F16)
            && t <= FUSED_MAX_QUERIES
        {
            let op = PagedAttention {
                slots,
                starts,
                heads,
                scale: 1.0 / (heads.head_dim as f32).sqrt(),
            };
            return Ok(q.contiguous()?.apply_op3_no_bwd(k, v, &op)?);
        }
    }
    let (k, v) = kv.into_dense(heads.n_kv_heads, heads.head_dim)?;
    dense_attention(q, &k, &v, starts, heads)
}

/// Additive attention mask `[b, 1, t, T]`: row `r`'s query `i` sees key positions `0..=starts[r] + i`; later
/// positions (the causal future and the padding of shorter rows) get −∞.
fn attention_mask(starts: &[usize], t: usize, total: usize, device: &Device) -> Result<Tensor> {
    let mask: Vec<f32> = starts
        .iter()
        .flat_map(|&start| {
            (0..t).flat_map(move |i| {
                (0..total).map(move |j| {
                    if j > start + i {
                        f32::NEG_INFINITY
                    } else {
                        0.0
                    }
                })
            })
        })
        .collect();
    Ok(Tensor::from_vec(mask, (starts.len(), 1, t, total), device)?)
}

/// Softmax attention with matmuls over a padded batch, in f32. Grouped-query attention without copying K/V: the
/// `n_rep` query heads that share KV head `g` (heads `g*n_rep..`) are stacked as extra query rows.
fn dense_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    starts: &[usize],
    heads: Heads,
) -> Result<Tensor> {
    let (b, h, t, d) = q.dims4()?;
    let total = k.dim(2)?;
    let kv = heads.n_kv_heads;
    let n_rep = h / kv;
    let k = k.to_dtype(DType::F32)?.contiguous()?;
    let v = v.to_dtype(DType::F32)?.contiguous()?;
    let q = q.contiguous()?.reshape((b, kv, n_rep * t, d))?;
    let mut scores = (q.matmul(&k.t()?)? * (1.0 / (d as f64).sqrt()))?;
    if t > 1 || starts.iter().any(|&s| s + t != total) {
        let mask = attention_mask(starts, t, total, q.device())?;
        scores = scores
            .reshape((b, h, t, total))?
            .broadcast_add(&mask)?
            .reshape((b, kv, n_rep * t, total))?;
    }
    let probs = candle_nn::ops::softmax_last_dim(&scores)?;
    Ok(probs.matmul(&v)?.reshape((b, h, t, d))?)
}

/// The fused paged attention kernel (CPU, f32 or f16 storage, f32 math): reads each row's keys and values from
/// block storage in place.
struct PagedAttention<'a> {
    slots: &'a [Vec<u32>],
    starts: &'a [usize],
    heads: Heads,
    scale: f32,
}

/// A cache element type the fused kernel reads: f32 as is, f16 widened per head row (F16C via `half`).
trait KvElem: Copy + Send + Sync {
    /// `src` as f32, converted into `buf` when needed.
    fn row<'a>(src: &'a [Self], buf: &'a mut [f32]) -> &'a [f32];
}

impl KvElem for f32 {
    fn row<'a>(src: &'a [f32], _buf: &'a mut [f32]) -> &'a [f32] {
        src
    }
}

impl KvElem for half::f16 {
    fn row<'a>(src: &'a [half::f16], buf: &'a mut [f32]) -> &'a [f32] {
        use half::slice::HalfFloatSliceExt;
        src.convert_to_f32_slice(&mut buf[..src.len()]);
        &buf[..src.len()]
    }
}

fn contiguous<'s, T>(data: &'s [T], l: &Layout, what: &str) -> candle_core::Result<&'s [T]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("paged attention: {what} must be contiguous"),
    }
}

fn f32_slice<'s>(s: &'s CpuStorage, l: &Layout, what: &str) -> candle_core::Result<&'s [f32]> {
    let CpuStorage::F32(data) = s else {
        candle_core::bail!("paged attention: {what} must be f32");
    };
    contiguous(data, l, what)
}

/// `a·b + c`, fused when the caller is compiled with FMA (a plain `mul_add` without it is a slow libm call).
#[inline(always)]
fn madd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

/// `Σ a_i b_i`, in 8 independent lanes so that the compiler vectorises it.
#[inline(always)]
fn dot<const FMA: bool>(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] = madd::<FMA>(x[l], y[l], acc[l]);
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// `eˣ` for `x ≤ 0` to about 2 ulp (Cephes' `expf`: `x = n·ln 2 + r`, a degree-6 polynomial in `r`, `2ⁿ` from the
/// exponent bits), written branch-free so that the softmax loop vectorises; libm's `expf` is a call per score.
#[inline(always)]
fn exp_approx<const FMA: bool>(x: f32) -> f32 {
    let x = x.max(-87.3);
    let n = (x * std::f32::consts::LOG2_E).round();
    let r = madd::<FMA>(n, -0.693_359_4, x);
    let r = madd::<FMA>(n, 2.121_944_4e-4, r);
    let mut p = 1.987_569_1e-4_f32;
    for c in [
        1.398_199_9e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        1.666_666_5e-1,
        0.5,
    ] {
        p = madd::<FMA>(p, r, c);
    }
    let e = madd::<FMA>(p, r * r, r) + 1.0;
    e * f32::from_bits((((n as i32) + 127) as u32) << 23)
}

/// One job of the kernel: batch row `r`, KV head `g`.
struct GroupJob<'a> {
    /// The `n_rep` query heads of the group, `[n_rep, t, d]`.
    q: &'a [f32],
    /// Storage slot of each cached position of the row.
    slots: &'a [u32],
    /// Position of the first query.
    start: usize,
    t: usize,
    d: usize,
    n_rep: usize,
    /// Offset of the KV head inside a storage row, and the row width.
    off: usize,
    width: usize,
    scale: f32,
}

impl GroupJob<'_> {
    /// Attention of the group's queries, written to `out` (`[n_rep, t, d]`, zeroed): scores of every cached key
    /// against all `n_rep` queries, softmax, then the probability-weighted sum of the values.
    #[inline(always)]
    fn run<const FMA: bool, T: KvElem>(&self, k: &[T], v: &[T], out: &mut [f32]) {
        let (t, d, n_rep) = (self.t, self.d, self.n_rep);
        let mut scores = vec![0f32; n_rep * (self.start + t)];
        let mut buf = vec![0f32; d];
        for i in 0..t {
            let len = self.start + i + 1;
            for (j, &s) in self.slots[..len].iter().enumerate() {
                let key = T::row(&k[s as usize * self.width + self.off..][..d], &mut buf);
                for rep in 0..n_rep {
                    let query = &self.q[(rep * t + i) * d..][..d];
                    scores[rep * len + j] = dot::<FMA>(query, key) * self.scale;
                }
            }
            for rep in 0..n_rep {
                let row = &mut scores[rep * len..][..len];
                let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let mut sum = 0f32;
                for x in row.iter_mut() {
                    *x = exp_approx::<FMA>(*x - max);
                    sum += *x;
                }
                for x in row.iter_mut() {
                    *x /= sum;
                }
            }
            for (j, &s) in self.slots[..len].iter().enumerate() {
                let value = T::row(&v[s as usize * self.width + self.off..][..d], &mut buf);
                for rep in 0..n_rep {
                    let p = scores[rep * len + j];
                    let o = &mut out[(rep * t + i) * d..][..d];
                    for (o, &x) in o.iter_mut().zip(value) {
                        *o = madd::<FMA>(p, x, *o);
                    }
                }
            }
        }
    }

    /// [`GroupJob::run`] compiled for AVX2 + FMA (the default x86-64 target has neither; candle's gemm picks
    /// them at run time the same way).
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn run_avx2<T: KvElem>(&self, k: &[T], v: &[T], out: &mut [f32]) {
        self.run::<true, T>(k, v, out)
    }

    fn run_best<T: KvElem>(&self, k: &[T], v: &[T], out: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: both features were just detected.
            return unsafe { self.run_avx2(k, v, out) };
        }
        self.run::<false, T>(k, v, out)
    }
}

impl candle_core::CustomOp3 for PagedAttention<'_> {
    fn name(&self) -> &'static str {
        "paged-attention"
    }

    fn cpu_fwd(
        &self,
        qs: &CpuStorage,
        ql: &Layout,
        ks: &CpuStorage,
        kl: &Layout,
        vs: &CpuStorage,
        vl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let q = f32_slice(qs, ql, "q")?;
        match (ks, vs) {
            (CpuStorage::F32(k), CpuStorage::F32(v)) => self.run(
                q,
                ql,
                contiguous(k, kl, "key storage")?,
                contiguous(v, vl, "value storage")?,
            ),
            (CpuStorage::F16(k), CpuStorage::F16(v)) => self.run(
                q,
                ql,
                contiguous(k, kl, "key storage")?,
                contiguous(v, vl, "value storage")?,
            ),
            _ => candle_core::bail!(
                "paged attention: key/value storage must be both f32 or both f16"
            ),
        }
    }
}

impl PagedAttention<'_> {
    fn run<T: KvElem>(
        &self,
        q: &[f32],
        ql: &Layout,
        k: &[T],
        v: &[T],
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (b, h, t, d) = ql.shape().dims4()?;
        let Heads {
            n_kv_heads: kv,
            head_dim,
            ..
        } = self.heads;
        if d != head_dim || h % kv != 0 || b != self.slots.len() || b != self.starts.len() {
            candle_core::bail!(
                "paged attention: q {:?} does not match the cache",
                ql.dims()
            );
        }
        let width = kv * d;
        let n_rep = h / kv;
        for (r, (row, &start)) in self.slots.iter().zip(self.starts).enumerate() {
            if row.len() < start + t || row.iter().any(|&s| (s as usize + 1) * width > k.len()) {
                candle_core::bail!("paged attention: row {r} has too few cached positions");
            }
        }
        // One job per (row, KV head): the n_rep query heads sharing that KV head read each cached key and
        // value once. Their outputs `[n_rep, t, d]` are contiguous in `[b, h, t, d]`.
        // On candle's spinning worker pool, the one the quantized GEMVs run on: a decode step alternates the two
        // dozens of times, and waking rayon's sleeping workers for each small attention costs more than it does.
        // Too few groups to keep every thread busy (batch-1 decode of a 3-KV-head model on 2 threads): one job
        // per query head instead, each reading its group's keys again from cache.
        let pool = candle_core::utils::barrier_pool();
        let per_group = b * kv >= 4 * (pool.n_workers() + 1);
        let reps = if per_group { n_rep } else { 1 };
        let mut out = vec![0f32; b * h * t * d];
        let out_ptr = out.as_mut_ptr() as usize;
        let job_len = reps * t * d;
        pool.execute_chunked(b * h / reps, |jobs| {
            for job in jobs {
                let (r, first) = (job / (h / reps), job % (h / reps) * reps);
                // SAFETY: job `job` alone writes `out[job * job_len..(job + 1) * job_len]`, inside `out`.
                let out = unsafe {
                    std::slice::from_raw_parts_mut(
                        (out_ptr as *mut f32).add(job * job_len),
                        job_len,
                    )
                };
                GroupJob {
                    q: &q[(r * h + first) * t * d..][..job_len],
                    slots: &self.slots[r],
                    start: self.starts[r],
                    t,
                    d,
                    n_rep: reps,
                    off: first / n_rep * d,
                    width,
                    scale: self.scale,
                }
                .run_best(k, v, out)
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((b, h, t, d))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Random paged storage for `rows` sequences whose positions are scattered over the slots.
    fn paged(lens: &[usize], heads: Heads, seed: u64) -> (Tensor, Tensor, Vec<Vec<u32>>) {
        let total: usize = lens.iter().sum::<usize>() + 3;
        let width = heads.n_kv_heads * heads.head_dim;
        let dev = Device::Cpu;
        let k = Tensor::randn(0f32, 1.0, (total, width), &dev).unwrap();
        let v = Tensor::randn(0f32, 1.0, (total, width), &dev).unwrap();
        // Hand out slots in a scrambled order so that no row is contiguous.
        let mut order: Vec<u32> = (0..total as u32).collect();
        let mut s = seed;
        for i in (1..order.len()).rev() {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            order.swap(i, (s >> 33) as usize % (i + 1));
        }
        let mut next = order.into_iter();
        let slots = lens
            .iter()
            .map(|&len| next.by_ref().take(len).collect())
            .collect();
        (k, v, slots)
    }

    #[test]
    fn fused_paged_kernel_matches_dense_attention() {
        let heads = Heads {
            n_kv_heads: 2,
            head_dim: 12,
        };
        for (t, starts) in [(1, vec![5, 0, 9]), (3, vec![2, 7, 0]), (1, vec![4])] {
            let lens: Vec<usize> = starts.iter().map(|s| s + t).collect();
            let (k, v, slots) = paged(&lens, heads, t as u64);
            let q = Tensor::randn(0f32, 1.0, (starts.len(), 4, t, 12), &Device::Cpu).unwrap();
            let kv = LayerKv::Paged { k, v, slots };
            let fused = attend(&q, kv.clone(), &starts, heads).unwrap();
            let (dk, dv) = kv.into_dense(2, 12).unwrap();
            let dense = dense_attention(&q, &dk, &dv, &starts, heads).unwrap();
            let diff = (fused - dense)
                .unwrap()
                .abs()
                .unwrap()
                .flatten_all()
                .unwrap()
                .max(0)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(diff < 1e-5, "t {t} starts {starts:?}: max |Δ| {diff}");
        }
    }

    #[test]
    fn fused_kernel_reads_f16_storage() {
        let heads = Heads {
            n_kv_heads: 2,
            head_dim: 12,
        };
        let starts = vec![5, 0, 9];
        let lens: Vec<usize> = starts.iter().map(|s| s + 2).collect();
        let (k, v, slots) = paged(&lens, heads, 7);
        let q = Tensor::randn(0f32, 1.0, (3, 4, 2, 12), &Device::Cpu).unwrap();
        let half = |x: &Tensor| x.to_dtype(DType::F16).unwrap();
        let kv16 = LayerKv::Paged {
            k: half(&k),
            v: half(&v),
            slots: slots.clone(),
        };
        let fused = attend(&q, kv16, &starts, heads).unwrap();
        let (dk, dv) = LayerKv::Paged { k, v, slots }.into_dense(2, 12).unwrap();
        let dense = dense_attention(&q, &dk, &dv, &starts, heads).unwrap();
        let diff = (fused - dense)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(diff < 1e-2, "f16 storage: max |Δ| {diff}");
    }

    #[test]
    fn fused_kernel_rejects_short_block_tables() {
        let heads = Heads {
            n_kv_heads: 1,
            head_dim: 8,
        };
        let (k, v, mut slots) = paged(&[4], heads, 1);
        slots[0].truncate(2);
        let q = Tensor::zeros((1, 2, 1, 8), DType::F32, &Device::Cpu).unwrap();
        let err = attend(&q, LayerKv::Paged { k, v, slots }, &[3], heads).unwrap_err();
        assert!(
            err.to_string().contains("too few cached positions"),
            "{err}"
        );
    }
}
