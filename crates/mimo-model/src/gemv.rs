//! f32 products of 2–8 activation rows with a dense weight, on the CPU.
//!
//! Hand-written because candle's f32 matmul (the `gemm` crate) is several times slower for a few rows than for
//! one (measured 25 ms vs 7 ms on a 49152×576 layer at 2 rows), and a few rows is exactly the shape of an MTP
//! verification forward and of small-batch decode. The weight is read once in its stored layout (`[in, out]`
//! row-major, how the model keeps dense weights) and every row's outputs accumulate in an L1-sized block.

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Storage, Tensor};

/// Most activation rows this kernel takes; more go to candle's matmul.
pub(crate) const MAX_ROWS: usize = 8;

/// Most output columns per task (a multiple of 32; `MAX_ROWS × BLOCK` f32 accumulators stay in L1).
const BLOCK: usize = 256;

/// Output columns per task for `n` outputs: at most [`BLOCK`], and few enough that every thread gets at least two
/// tasks (a 256-wide layer of a small model would otherwise run on one core while the other waits).
fn block_width(n: usize, threads: usize) -> usize {
    (n.div_ceil(2 * threads.max(1)).div_ceil(32) * 32).clamp(32, BLOCK)
}

/// `x · W` where `weight` is the model's `[out, in]` view of an `[in, out]` row-major buffer. `None` when the
/// tensors are not in that form (the caller then uses candle's matmul).
pub(crate) fn small_rows(x: &Tensor, weight: &Tensor) -> candle_core::Result<Option<Tensor>> {
    let (n, k) = weight.dims2()?;
    let rows = x.elem_count() / k.max(1);
    let transposed = weight.stride() == [1, n];
    if !x.device().is_cpu()
        || x.dtype() != candle_core::DType::F32
        || weight.dtype() != candle_core::DType::F32
        || !transposed
        || !(2..=MAX_ROWS).contains(&rows)
        || x.dim(candle_core::D::Minus1)? != k
    {
        return Ok(None);
    }
    let op = SmallRows { weight, n, k };
    Ok(Some(x.contiguous()?.apply_op1_no_bwd(&op)?))
}

struct SmallRows<'a> {
    weight: &'a Tensor,
    n: usize,
    k: usize,
}

impl CustomOp1 for SmallRows<'_> {
    fn name(&self) -> &'static str {
        "small-rows-f32"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(xs) = s else {
            candle_core::bail!("small-rows: x must be f32");
        };
        let Some((a, b)) = l.contiguous_offsets() else {
            candle_core::bail!("small-rows: x must be contiguous");
        };
        let x = &xs[a..b];
        let (guard, wl) = self.weight.storage_and_layout();
        let Storage::Cpu(CpuStorage::F32(ws)) = &*guard else {
            candle_core::bail!("small-rows: the weight must be f32 on the CPU");
        };
        let (n, k) = (self.n, self.k);
        let w = &ws[wl.start_offset()..wl.start_offset() + n * k];
        let t = x.len() / k;
        let mut out = vec![0f32; t * n];
        let out_ptr = out.as_mut_ptr() as usize;
        // On candle's spinning worker pool, shared with the other kernels of a decode step (see `half.rs`).
        let pool = candle_core::utils::barrier_pool();
        let width = block_width(n, pool.n_workers() + 1);
        pool.execute_chunked(n.div_ceil(width), |blocks| {
            let mut acc = vec![0f32; t * width];
            for bi in blocks {
                let c0 = bi * width;
                let bw = width.min(n - c0);
                let acc = &mut acc[..t * bw];
                acc.fill(0.0);
                block_best(x, t, k, w, n, c0, bw, acc);
                for r in 0..t {
                    // SAFETY: block `bi` alone writes columns `c0..c0 + bw` of each output row, inside `out`.
                    let dst = unsafe {
                        std::slice::from_raw_parts_mut((out_ptr as *mut f32).add(r * n + c0), bw)
                    };
                    dst.copy_from_slice(&acc[r * bw..(r + 1) * bw]);
                }
            }
        });
        let mut dims = l.shape().dims().to_vec();
        if let Some(last) = dims.last_mut() {
            *last = n;
        }
        Ok((CpuStorage::F32(out), Shape::from(dims)))
    }
}

/// `acc[r, j] = Σ_i x[r, i] · w[i, c0 + j]` for `j < bw`: rows in groups of up to 4 and columns in strips of 32,
/// so each group's accumulators stay in registers while the weight strip streams past once per group.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn block<const FMA: bool>(
    x: &[f32],
    t: usize,
    k: usize,
    w: &[f32],
    n: usize,
    c0: usize,
    bw: usize,
    acc: &mut [f32],
) {
    let mut r0 = 0;
    while r0 < t {
        match t - r0 {
            1 => strips::<FMA, 1>(x, r0, k, w, n, c0, bw, acc),
            2 => strips::<FMA, 2>(x, r0, k, w, n, c0, bw, acc),
            3 => strips::<FMA, 3>(x, r0, k, w, n, c0, bw, acc),
            _ => strips::<FMA, 4>(x, r0, k, w, n, c0, bw, acc),
        }
        r0 += (t - r0).min(4);
    }
}

/// Rows `r0 .. r0+R` of [`block`].
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn strips<const FMA: bool, const R: usize>(
    x: &[f32],
    r0: usize,
    k: usize,
    w: &[f32],
    n: usize,
    c0: usize,
    bw: usize,
    acc: &mut [f32],
) {
    const S: usize = 32;
    let madd = |a: f32, b: f32, c: f32| if FMA { a.mul_add(b, c) } else { a * b + c };
    let mut j0 = 0;
    while j0 < bw {
        let sw = S.min(bw - j0);
        let mut a = [[0f32; S]; R];
        if sw == S {
            for i in 0..k {
                let wv: &[f32; S] = w[i * n + c0 + j0..][..S].try_into().unwrap_or(&[0.0; S]);
                for (r, ar) in a.iter_mut().enumerate() {
                    let xv = x[(r0 + r) * k + i];
                    for j in 0..S {
                        ar[j] = madd(xv, wv[j], ar[j]);
                    }
                }
            }
        } else {
            for i in 0..k {
                let wv = &w[i * n + c0 + j0..][..sw];
                for (r, ar) in a.iter_mut().enumerate() {
                    let xv = x[(r0 + r) * k + i];
                    for j in 0..sw {
                        ar[j] = madd(xv, wv[j], ar[j]);
                    }
                }
            }
        }
        for (r, ar) in a.iter().enumerate() {
            acc[(r0 + r) * bw + j0..][..sw].copy_from_slice(&ar[..sw]);
        }
        j0 += sw;
    }
}

/// [`block`] compiled for AVX2 + FMA.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn block_avx2(
    x: &[f32],
    t: usize,
    k: usize,
    w: &[f32],
    n: usize,
    c0: usize,
    bw: usize,
    acc: &mut [f32],
) {
    block::<true>(x, t, k, w, n, c0, bw, acc)
}

#[allow(clippy::too_many_arguments)]
fn block_best(
    x: &[f32],
    t: usize,
    k: usize,
    w: &[f32],
    n: usize,
    c0: usize,
    bw: usize,
    acc: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: both features were just detected.
        return unsafe { block_avx2(x, t, k, w, n, c0, bw, acc) };
    }
    block::<false>(x, t, k, w, n, c0, bw, acc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Module};

    #[test]
    fn matches_candle_matmul() {
        let dev = Device::Cpu;
        for (n, k, t) in [
            (7, 5, 2),
            (300, 64, 3),
            (513, 256, 8),
            (1536, 576, 2),
            (9, 33, 5),
        ] {
            let w = Tensor::randn(0f32, 1.0, (n, k), &dev).unwrap();
            let wt = w.t().unwrap().contiguous().unwrap().t().unwrap();
            let x = Tensor::randn(0f32, 1.0, (1, t, k), &dev).unwrap();
            let got = small_rows(&x, &wt).unwrap().expect("kernel applies");
            let want = candle_nn::Linear::new(wt.clone(), None)
                .forward(&x)
                .unwrap();
            let d = (got - want)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(d < 1e-3, "n {n} k {k} t {t}: max |Δ| {d}");
        }
        let w = Tensor::randn(0f32, 1.0, (8, 4), &dev).unwrap();
        let x = Tensor::randn(0f32, 1.0, (2, 4), &dev).unwrap();
        assert!(
            small_rows(&x, &w).unwrap().is_none(),
            "row-major weights fall back"
        );
        let wt = w.t().unwrap().contiguous().unwrap().t().unwrap();
        let one = Tensor::randn(0f32, 1.0, (1, 4), &dev).unwrap();
        assert!(
            small_rows(&one, &wt).unwrap().is_none(),
            "one row stays with candle"
        );
    }
}
