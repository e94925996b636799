//! A linear layer with bf16 or f16 weights and f32 activations, fast on CPU.
//!
//! Why this is hand-written: candle 0.11 has no CPU kernel that multiplies half-precision weights with f32
//! activations. Its CPU matmul on bf16 takes slow generic paths (a bf16 model decodes about 4x slower than f32),
//! and `QMatMul::from_arc` dequantizes F16/BF16 weights to f32, which doubles their memory and gives up the
//! reason to keep them in half precision: decoding is bound by the bandwidth of reading the weights, and half
//! the bytes can be read in half the time.
//!
//! Two regimes, like llama.cpp's:
//! - few activation rows (decode, `t < GEMM_MIN_ROWS`): a GEMV that streams each weight row once, widens it to
//!   f32 in registers (AVX2 + FMA + F16C, picked at run time, with a portable scalar fallback) and dots it with
//!   every activation row;
//! - many rows (prefill): each task widens a block of weight rows to f32 into a per-thread scratch buffer and
//!   multiplies it with the `gemm` crate's f32 kernel, the one candle's own f32 matmul uses.
//!
//! The output features are split across rayon tasks; each task writes only its own columns of the output.

use std::cell::RefCell;

use ::half::slice::HalfFloatSliceExt;
use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, CustomOp2, DType, Layout, Module, Shape, Storage, Tensor, D};

/// From this many activation rows on, weight blocks are widened to f32 and multiplied by `gemm`.
const GEMM_MIN_ROWS: usize = 20;
/// Products with at most this many multiply-adds run on the calling thread: rayon would cost more than it saves.
const SERIAL_MAX_MACS: usize = 1 << 17;
/// Upper bound on the f32 scratch block of the prefill path, in floats (512 KiB: stays in L2).
const GEMM_SCRATCH_FLOATS: usize = 1 << 17;

/// y = x · Wᵀ (+ b) with W stored `[out, in]` in bf16 or f16, x and y in f32.
///
/// On CPU the product runs on hand-written kernels that read the half-precision weight directly (see the
/// module docs); on other devices it falls back to candle's matmul in the weight's dtype.
#[derive(Debug, Clone)]
pub struct HalfLinear {
    /// `[out, in]`, BF16 or F16, contiguous.
    weight: Tensor,
    /// `[out]`, F32.
    bias: Option<Tensor>,
}

impl HalfLinear {
    /// Wraps a `[out, in]` contiguous BF16 or F16 `weight` and an optional `[out]` bias (converted to f32).
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> candle_core::Result<Self> {
        if !matches!(weight.dtype(), DType::BF16 | DType::F16) {
            bail!(
                "HalfLinear: weight must be bf16 or f16, got {:?}",
                weight.dtype()
            );
        }
        let (out, _) = match weight.dims() {
            &[out, inp] => (out, inp),
            dims => bail!("HalfLinear: weight must be [out, in], got shape {dims:?}"),
        };
        if !weight.is_contiguous() {
            bail!("HalfLinear: weight must be contiguous");
        }
        let bias = match bias {
            Some(b) if b.dims() != [out] => {
                bail!("HalfLinear: bias must be [{out}], got shape {:?}", b.dims())
            }
            Some(b) if !b.device().same_device(weight.device()) => {
                bail!("HalfLinear: bias and weight are on different devices")
            }
            Some(b) => Some(b.to_dtype(DType::F32)?),
            None => None,
        };
        Ok(Self {
            weight: on_huge_pages(weight)?,
            bias,
        })
    }

    /// `x`: f32 `[..., in]` with any leading dims, returns f32 `[..., out]`.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.forward_with(x, Kernel::detect(), GEMM_MIN_ROWS)
    }

    /// Number of output features (rows of the weight).
    pub fn out_features(&self) -> usize {
        self.weight.dims()[0]
    }

    /// Number of input features (columns of the weight).
    pub fn in_features(&self) -> usize {
        self.weight.dims()[1]
    }

    /// The `[out, in]` half-precision weight.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// The f32 `[out]` bias, if any.
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    fn forward_with(
        &self,
        x: &Tensor,
        kernel: Kernel,
        gemm_min_rows: usize,
    ) -> candle_core::Result<Tensor> {
        if x.dtype() != DType::F32 {
            bail!("HalfLinear: input must be f32, got {:?}", x.dtype());
        }
        let (inp, out) = (self.in_features(), self.out_features());
        let x_in = x.dim(D::Minus1)?;
        if x_in != inp {
            bail!("HalfLinear: input has {x_in} features, the weight expects {inp}");
        }
        let mut out_dims = x.dims().to_vec();
        let rows = out_dims[..out_dims.len() - 1].iter().product::<usize>();
        *out_dims
            .last_mut()
            .expect("rank >= 1 since dim(-1) succeeded") = out;
        let x2 = x.reshape((rows, inp))?;
        let y = if x.device().is_cpu() && self.weight.device().is_cpu() {
            x2.contiguous()?.apply_op2_no_bwd(
                &self.weight,
                &HalfMatMul {
                    kernel,
                    gemm_min_rows,
                },
            )?
        } else {
            x2.to_dtype(self.weight.dtype())?
                .matmul(&self.weight.t()?)?
                .to_dtype(DType::F32)?
        };
        let y = match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        };
        y.reshape(out_dims)
    }
}

impl Module for HalfLinear {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        HalfLinear::forward(self, x)
    }
}

/// Which CPU kernels run the product.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kernel {
    /// Portable Rust, correct on any CPU.
    Scalar,
    /// AVX2 + FMA + F16C intrinsics; only built by [`Kernel::detect`] when the CPU has all three.
    #[cfg(target_arch = "x86_64")]
    Avx2,
}

impl Kernel {
    /// The fastest kernel this CPU supports.
    fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
        {
            return Kernel::Avx2;
        }
        Kernel::Scalar
    }
}

/// The candle op `(x [t, in] f32, w [out, in] bf16/f16) -> x · wᵀ [t, out] f32`, CPU only.
struct HalfMatMul {
    kernel: Kernel,
    /// From this many activation rows on, the prefill (gemm) path is taken.
    gemm_min_rows: usize,
}

impl CustomOp2 for HalfMatMul {
    fn name(&self) -> &'static str {
        "half-linear"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (t, k) = l1.shape().dims2()?;
        let (n, k2) = l2.shape().dims2()?;
        if k != k2 {
            bail!("half-linear: x has {k} features, w has {k2}");
        }
        let x = match s1 {
            CpuStorage::F32(v) => contiguous(v, l1)?,
            s => bail!("half-linear: x must be f32, got {:?}", s.dtype()),
        };
        let (w, bf16) = match s2 {
            CpuStorage::BF16(v) => (contiguous(v, l2)?.reinterpret_cast(), true),
            CpuStorage::F16(v) => (contiguous(v, l2)?.reinterpret_cast(), false),
            s => bail!("half-linear: w must be bf16 or f16, got {:?}", s.dtype()),
        };
        let problem = Problem {
            x,
            w,
            bf16,
            t,
            k,
            n,
            kernel: self.kernel,
            gemm: t >= self.gemm_min_rows,
        };
        Ok((CpuStorage::F32(problem.run()), Shape::from((t, n))))
    }
}

/// The elements of a contiguous layout.
fn contiguous<'a, T>(v: &'a [T], l: &Layout) -> candle_core::Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((start, end)) => Ok(&v[start..end]),
        None => bail!("half-linear: operand is not contiguous"),
    }
}

/// One product `y [t, n] = x [t, k] · w [n, k]ᵀ`, all row-major; `w` holds the raw bits of bf16 or f16 values.
struct Problem<'a> {
    x: &'a [f32],
    w: &'a [u16],
    bf16: bool,
    t: usize,
    k: usize,
    n: usize,
    kernel: Kernel,
    /// Whether to widen weight blocks and run `gemm` rather than the GEMV.
    gemm: bool,
}

/// The `[t, n]` output buffer, shared by the tasks, each of which writes only its own range of columns.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);

// SAFETY: the tasks sharing an `OutPtr` write disjoint columns of the buffer, which outlives them all.
unsafe impl Send for OutPtr {}
// SAFETY: as above; nothing reads through the pointer while the tasks run.
unsafe impl Sync for OutPtr {}

thread_local! {
    /// Per-thread f32 copy of the weight block being multiplied on the prefill path.
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

impl Problem<'_> {
    /// Computes the product into a new `[t, n]` buffer.
    fn run(&self) -> Vec<f32> {
        let (t, k, n) = (self.t, self.k, self.n);
        assert_eq!(self.x.len(), t * k, "half-linear: x length");
        assert_eq!(self.w.len(), n * k, "half-linear: w length");
        let mut y = vec![0f32; t * n];
        if t == 0 || n == 0 || k == 0 {
            return y;
        }
        let rows = self.rows_per_task();
        let tasks = n.div_ceil(rows);
        let out = OutPtr(y.as_mut_ptr());
        let task = |i: usize| {
            let (r0, r1) = (i * rows, ((i + 1) * rows).min(n));
            self.run_rows(r0, r1, out);
        };
        if t * k * n <= SERIAL_MAX_MACS || tasks == 1 {
            (0..tasks).for_each(task);
        } else {
            // candle's spinning pool, shared with the quantized GEMVs and the attention kernel: one pool for every
            // parallel kernel of a decode step, so no thread of another pool spins while this one works.
            candle_core::utils::barrier_pool().execute_chunked(tasks, |r| r.for_each(task));
        }
        y
    }

    /// Output features per task: a few tasks per thread, to balance load without much overhead.
    fn rows_per_task(&self) -> usize {
        let threads = candle_core::utils::barrier_pool().n_workers() + 1;
        if self.gemm {
            let cap = (GEMM_SCRATCH_FLOATS / self.k).max(16) / 8 * 8;
            self.n
                .div_ceil(threads * 4)
                .next_multiple_of(8)
                .clamp(8, cap)
        } else {
            self.n.div_ceil(threads * 8).next_multiple_of(4).max(16)
        }
    }

    /// Computes columns `r0..r1` of the output (output features `r0..r1`).
    fn run_rows(&self, r0: usize, r1: usize, out: OutPtr) {
        let (t, k, n) = (self.t, self.k, self.n);
        let w = &self.w[r0 * k..r1 * k];
        if self.gemm {
            self.gemm_rows(r0, w, out);
            return;
        }
        let mut local = vec![0f32; (r1 - r0) * t];
        self.gemv_rows(w, &mut local);
        for (i, vals) in local.chunks_exact(t).enumerate() {
            for (j, &v) in vals.iter().enumerate() {
                // SAFETY: j < t and r0 + i < r1 <= n, so the index is inside the [t, n] buffer, and column r0 + i
                // belongs to this task alone.
                unsafe { *out.0.add(j * n + r0 + i) = v };
            }
        }
    }

    /// Prefill path: widens the weight rows `w` (starting at output feature `r0`) to f32 and multiplies.
    fn gemm_rows(&self, r0: usize, w: &[u16], out: OutPtr) {
        let (t, k, n) = (self.t, self.k, self.n);
        let nr = w.len() / k;
        SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            if scratch.len() < w.len() {
                scratch.resize(w.len(), 0.0);
            }
            let block = &mut scratch[..w.len()];
            self.widen(w, block);
            // SAFETY: dst(i, j) = out[j * n + r0 + i] for i < nr, j < t stays inside the [t, n] output and in the
            // columns r0..r0 + nr that only this task writes; lhs(i, l) = block[i * k + l] and
            // rhs(l, j) = x[j * k + l] for l < k stay inside `block` ([nr, k]) and `x` ([t, k]).
            unsafe {
                gemm::gemm(
                    nr,
                    t,
                    k,
                    out.0.add(r0),
                    n as isize,
                    1,
                    false,
                    block.as_ptr(),
                    1,
                    k as isize,
                    self.x.as_ptr(),
                    k as isize,
                    1,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                )
            }
        });
    }

    /// Decode path: `out [nr, t] = w [nr, k] · xᵀ`.
    fn gemv_rows(&self, w: &[u16], out: &mut [f32]) {
        match (self.kernel, self.bf16) {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `Kernel::Avx2` is only built when the CPU has avx2, fma and f16c.
            (Kernel::Avx2, true) => unsafe { avx2::gemv_rows::<true>(w, self.x, self.t, out) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above.
            (Kernel::Avx2, false) => unsafe { avx2::gemv_rows::<false>(w, self.x, self.t, out) },
            (Kernel::Scalar, true) => scalar::gemv_rows::<true>(w, self.x, self.t, out),
            (Kernel::Scalar, false) => scalar::gemv_rows::<false>(w, self.x, self.t, out),
        }
    }

    /// Widens `src` half bits to f32 into `dst` (same length).
    fn widen(&self, src: &[u16], dst: &mut [f32]) {
        match (self.kernel, self.bf16) {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `Kernel::Avx2` is only built when the CPU has avx2, fma and f16c.
            (Kernel::Avx2, true) => unsafe { avx2::widen::<true>(src, dst) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above.
            (Kernel::Avx2, false) => unsafe { avx2::widen::<false>(src, dst) },
            (Kernel::Scalar, true) => scalar::widen::<true>(src, dst),
            (Kernel::Scalar, false) => scalar::widen::<false>(src, dst),
        }
    }
}

/// One bf16 (`BF16`) or f16 value, from its bits.
#[inline(always)]
fn half_to_f32<const BF16: bool>(bits: u16) -> f32 {
    if BF16 {
        f32::from_bits(u32::from(bits) << 16)
    } else {
        ::half::f16::from_bits(bits).to_f32()
    }
}

/// Portable kernels.
mod scalar {
    use super::half_to_f32;

    /// `out [nr, t] = w [nr, k] · x [t, k]ᵀ`, with `k = x.len() / t`.
    pub(super) fn gemv_rows<const BF16: bool>(w: &[u16], x: &[f32], t: usize, out: &mut [f32]) {
        let k = x.len() / t;
        let mut row = vec![0f32; k];
        for (wr, o) in w.chunks_exact(k).zip(out.chunks_exact_mut(t)) {
            widen::<BF16>(wr, &mut row);
            for (oj, xj) in o.iter_mut().zip(x.chunks_exact(k)) {
                *oj = dot(&row, xj);
            }
        }
    }

    /// Widens `src` half bits to f32 into `dst` (same length).
    pub(super) fn widen<const BF16: bool>(src: &[u16], dst: &mut [f32]) {
        assert_eq!(src.len(), dst.len());
        for (d, &s) in dst.iter_mut().zip(src) {
            *d = half_to_f32::<BF16>(s);
        }
    }

    /// Dot product with 8 independent partial sums, which the compiler can keep in one vector register.
    fn dot(a: &[f32], b: &[f32]) -> f32 {
        let mut acc = [0f32; 8];
        let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
        let tail: f32 = ca
            .remainder()
            .iter()
            .zip(cb.remainder())
            .map(|(p, q)| p * q)
            .sum();
        for (pa, pb) in ca.zip(cb) {
            for ((s, p), q) in acc.iter_mut().zip(pa).zip(pb) {
                *s += p * q;
            }
        }
        acc.iter().sum::<f32>() + tail
    }
}

/// AVX2 + FMA + F16C kernels. Every function requires those CPU features.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::half_to_f32;

    /// Eight half values at `p` widened to f32.
    ///
    /// # Safety
    /// `p` must point to 8 readable `u16`s.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    unsafe fn load8<const BF16: bool>(p: *const u16) -> __m256 {
        // SAFETY: the caller guarantees 16 readable bytes at `p`; loadu has no alignment requirement.
        let h = unsafe { _mm_loadu_si128(p.cast()) };
        if BF16 {
            _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(h)))
        } else {
            _mm256_cvtph_ps(h)
        }
    }

    /// Sum of the 8 lanes.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps::<1>(s, s)))
    }

    /// Dots the weight row `w` (`k = w.len()` halves) with the `R` activation rows `x[r * k..(r + 1) * k]`,
    /// keeping `U` independent 8-lane accumulators per activation row; each weight vector is loaded once and
    /// used `R` times.
    ///
    /// One weight row per pass on purpose: interleaving two rows streams from DRAM at half the speed here.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    fn dot_rows<const BF16: bool, const R: usize, const U: usize>(
        w: &[u16],
        x: &[f32],
    ) -> [f32; R] {
        let k = w.len();
        assert!(
            x.len() >= R * k,
            "activation rows shorter than the weight row"
        );
        let (wp, xp) = (w.as_ptr(), x.as_ptr());
        let mut acc = [[_mm256_setzero_ps(); U]; R];
        let mut i = 0;
        while i + 8 * U <= k {
            for u in 0..U {
                let o = i + 8 * u;
                // SAFETY: o + 8 <= k = w.len().
                let wv = unsafe { load8::<BF16>(wp.add(o)) };
                for (r, a) in acc.iter_mut().enumerate() {
                    // SAFETY: r * k + o + 8 <= R * k <= x.len().
                    let xv = unsafe { _mm256_loadu_ps(xp.add(r * k + o)) };
                    a[u] = _mm256_fmadd_ps(wv, xv, a[u]);
                }
            }
            i += 8 * U;
        }
        while i + 8 <= k {
            // SAFETY: i + 8 <= k = w.len().
            let wv = unsafe { load8::<BF16>(wp.add(i)) };
            for (r, a) in acc.iter_mut().enumerate() {
                // SAFETY: r * k + i + 8 <= R * k <= x.len().
                let xv = unsafe { _mm256_loadu_ps(xp.add(r * k + i)) };
                a[0] = _mm256_fmadd_ps(wv, xv, a[0]);
            }
            i += 8;
        }
        let mut out = [0f32; R];
        for (r, (o, a)) in out.iter_mut().zip(&acc).enumerate() {
            let mut sum = a[0];
            for &b in &a[1..] {
                sum = _mm256_add_ps(sum, b);
            }
            *o = hsum(sum);
            for l in i..k {
                *o += half_to_f32::<BF16>(w[l]) * x[r * k + l];
            }
        }
        out
    }

    /// `out [nr, t] = w [nr, k] · x [t, k]ᵀ`, with `k = x.len() / t`: each weight row is dotted with four
    /// activation rows at a time.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) fn gemv_rows<const BF16: bool>(w: &[u16], x: &[f32], t: usize, out: &mut [f32]) {
        let k = x.len() / t;
        for (wr, o) in w.chunks_exact(k).zip(out.chunks_exact_mut(t)) {
            let mut j = 0;
            while j + 4 <= t {
                o[j..j + 4].copy_from_slice(&dot_rows::<BF16, 4, 2>(wr, &x[j * k..]));
                j += 4;
            }
            match t - j {
                3 => o[j..].copy_from_slice(&dot_rows::<BF16, 3, 2>(wr, &x[j * k..])),
                2 => o[j..].copy_from_slice(&dot_rows::<BF16, 2, 4>(wr, &x[j * k..])),
                1 => o[j..].copy_from_slice(&dot_rows::<BF16, 1, 4>(wr, &x[j * k..])),
                _ => {}
            }
        }
    }

    /// Widens `src` half bits to f32 into `dst` (same length).
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) fn widen<const BF16: bool>(src: &[u16], dst: &mut [f32]) {
        assert_eq!(src.len(), dst.len());
        let (s8, d8) = (src.chunks_exact(8), dst.chunks_exact_mut(8));
        for (s, d) in s8.remainder().iter().zip(d8.into_remainder()) {
            *d = half_to_f32::<BF16>(*s);
        }
        for (s, d) in src.chunks_exact(8).zip(dst.chunks_exact_mut(8)) {
            // SAFETY: `s` holds 8 halves and `d` 8 floats; storeu has no alignment requirement.
            unsafe { _mm256_storeu_ps(d.as_mut_ptr(), load8::<BF16>(s.as_ptr())) };
        }
    }
}

/// A copy of a large CPU half weight in a buffer on huge pages (see `weights::advise_huge_pages`); others as
/// they are.
fn on_huge_pages(w: Tensor) -> candle_core::Result<Tensor> {
    use ::half::vec::HalfBitsVecExt;
    if !w.device().is_cpu() || w.elem_count() * 2 < (4 << 20) {
        return Ok(w);
    }
    let copy = |src: &[u16]| {
        let mut dst = vec![0u16; src.len()];
        crate::weights::advise_huge_pages(&dst);
        dst.copy_from_slice(src);
        dst
    };
    let (guard, layout) = w.storage_and_layout();
    let range = layout.start_offset()..layout.start_offset() + w.elem_count();
    let t = match &*guard {
        Storage::Cpu(CpuStorage::BF16(v)) => {
            let bits: Vec<::half::bf16> = copy(v[range].reinterpret_cast()).reinterpret_into();
            Tensor::from_vec(bits, w.shape(), w.device())?
        }
        Storage::Cpu(CpuStorage::F16(v)) => {
            let bits: Vec<::half::f16> = copy(v[range].reinterpret_cast()).reinterpret_into();
            Tensor::from_vec(bits, w.shape(), w.device())?
        }
        _ => return Ok(w.clone()),
    };
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Deterministic uniform values in [-1, 1).
    fn lcg(seed: u64, len: usize) -> Vec<f32> {
        let mut s = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..len)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    fn tensor(seed: u64, dims: &[usize]) -> Tensor {
        let len = dims.iter().product();
        Tensor::from_vec(lcg(seed, len), dims, &Device::Cpu).unwrap()
    }

    fn max_abs(t: &Tensor) -> f32 {
        t.abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar()
            .unwrap()
    }

    /// f32 reference: the half weight widened to f32, through candle's matmul.
    fn reference(lin: &HalfLinear, x: &Tensor) -> Tensor {
        let w = lin.weight().to_dtype(DType::F32).unwrap();
        let y = x.broadcast_matmul(&w.t().unwrap()).unwrap();
        match lin.bias() {
            Some(b) => y.broadcast_add(b).unwrap(),
            None => y,
        }
    }

    fn check_close(got: &Tensor, want: &Tensor, what: &str) {
        assert_eq!(got.dims(), want.dims(), "{what}: shape");
        assert_eq!(got.dtype(), DType::F32, "{what}: dtype");
        let diff = max_abs(&(got - want).unwrap());
        let tol = 1e-4 * max_abs(want).max(1.0);
        assert!(diff <= tol, "{what}: max abs diff {diff} > {tol}");
    }

    /// One random case: the SIMD kernels against candle's f32 matmul, and the scalar kernels and both paths
    /// (GEMV, widen + gemm) against the SIMD ones.
    fn check_case(
        out: usize,
        inp: usize,
        dims: &[usize],
        dtype: DType,
        with_bias: bool,
        seed: u64,
    ) {
        let w = tensor(seed, &[out, inp]).to_dtype(dtype).unwrap();
        let bias = with_bias.then(|| tensor(seed + 1, &[out]));
        let lin = HalfLinear::new(w, bias).unwrap();
        let x = tensor(seed + 2, dims);
        let what = format!("out {out} x {dims:?} {dtype:?} bias {with_bias}");
        let simd = Kernel::detect();
        let fast = lin.forward_with(&x, simd, GEMM_MIN_ROWS).unwrap();
        check_close(&fast, &reference(&lin, &x), &format!("{what} {simd:?}"));
        for kernel in [simd, Kernel::Scalar] {
            for (path, min_rows) in [
                ("default", GEMM_MIN_ROWS),
                ("gemv", usize::MAX),
                ("gemm", 0),
            ] {
                let y = lin.forward_with(&x, kernel, min_rows).unwrap();
                check_close(&y, &fast, &format!("{what}: {kernel:?} {path} vs {simd:?}"));
            }
        }
    }

    #[test]
    fn matches_f32_matmul_on_random_shapes() {
        let mut seed = 1;
        for &out in &[1, 7, 64, 576, 1536] {
            for &inp in &[8, 13, 64, 576] {
                for &t in &[1, 2, 3, 5, 16, 40, 128] {
                    for dtype in [DType::BF16, DType::F16] {
                        for with_bias in [false, true] {
                            seed += 3;
                            let b = 1 + (seed as usize % 2);
                            check_case(out, inp, &[b, t, inp], dtype, with_bias, seed);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn accepts_non_contiguous_input_and_plain_2d() {
        let w = tensor(7, &[33, 19]).to_dtype(DType::BF16).unwrap();
        let lin = HalfLinear::new(w, None).unwrap();
        assert_eq!((lin.out_features(), lin.in_features()), (33, 19));
        let x = tensor(8, &[19, 5]).t().unwrap();
        assert!(!x.is_contiguous());
        check_close(
            &lin.forward(&x).unwrap(),
            &reference(&lin, &x),
            "transposed x",
        );
        let x1 = tensor(9, &[19]);
        assert_eq!(lin.forward(&x1).unwrap().dims(), &[33]);
    }

    #[test]
    fn rejects_bad_arguments() {
        let w32 = tensor(1, &[4, 8]);
        assert!(HalfLinear::new(w32.clone(), None).is_err(), "f32 weight");
        let w = w32.to_dtype(DType::F16).unwrap();
        assert!(
            HalfLinear::new(w.reshape((2, 2, 8)).unwrap(), None).is_err(),
            "rank 3"
        );
        assert!(
            HalfLinear::new(w.t().unwrap(), None).is_err(),
            "non-contiguous"
        );
        assert!(
            HalfLinear::new(w.clone(), Some(tensor(2, &[5]))).is_err(),
            "bias shape"
        );
        let lin = HalfLinear::new(w, Some(tensor(2, &[4]))).unwrap();
        assert!(
            lin.forward(&tensor(3, &[2, 7])).is_err(),
            "wrong in features"
        );
        let x16 = tensor(3, &[2, 8]).to_dtype(DType::F16).unwrap();
        assert!(lin.forward(&x16).is_err(), "non-f32 input");
    }

    /// Best seconds per call of each of `fs`, cycling through `layers` weight copies; the candidates are timed
    /// in alternation, so that load from other processes hits them alike.
    fn best_times(layers: usize, fs: &mut [&mut dyn FnMut(usize)]) -> Vec<f64> {
        let mut best = vec![f64::INFINITY; fs.len()];
        for _ in 0..5 {
            for (f, b) in fs.iter_mut().zip(&mut best) {
                (0..layers).for_each(&mut **f);
                let start = std::time::Instant::now();
                let mut calls = 0;
                while calls < 2 * layers || start.elapsed().as_secs_f64() < 0.15 {
                    f(calls % layers);
                    calls += 1;
                }
                *b = b.min(start.elapsed().as_secs_f64() / calls as f64);
            }
        }
        best
    }

    /// Copies of a random `[out, inp]` weight, f32 stored transposed as the model does, then bf16 and f16; enough
    /// copies that the f32 ones exceed the 32 MiB L3, as the layers of a whole model do during decode.
    fn bench_weights(out: usize, inp: usize) -> (Vec<Tensor>, Vec<HalfLinear>, Vec<HalfLinear>) {
        let w = tensor(11, &[out, inp]);
        let copies = (256usize << 20).div_ceil(out * inp * 4);
        let w32: Vec<Tensor> = (0..copies)
            .map(|_| w.t().unwrap().contiguous().unwrap().t().unwrap())
            .collect();
        let half = |dtype| {
            let lin = |w: &Tensor| {
                HalfLinear::new(w.to_dtype(dtype).unwrap().contiguous().unwrap(), None)
            };
            w32.iter()
                .map(lin)
                .collect::<candle_core::Result<Vec<_>>>()
                .unwrap()
        };
        let (bf, f) = (half(DType::BF16), half(DType::F16));
        (w32, bf, f)
    }

    /// `cargo test --release -p mimo-model --lib half -- --ignored --nocapture`
    #[test]
    #[ignore = "benchmark"]
    fn bench_smollm2_layers() {
        println!(
            "threads {}, kernel {:?}",
            rayon::current_num_threads(),
            Kernel::detect()
        );
        for &(out, inp) in &[(1536, 576), (576, 1536), (49152, 576)] {
            let (w32, bf16, f16) = bench_weights(out, inp);
            for &t in &[1, 2, 4, 8, 16, 32, 128] {
                let x = tensor(12, &[t, inp]);
                let (f32_mm, bf16_fw, f16_fw) = (
                    &mut |i: usize| drop(x.matmul(&w32[i].t().unwrap()).unwrap()),
                    &mut |i: usize| drop(bf16[i].forward(&x).unwrap()),
                    &mut |i: usize| drop(f16[i].forward(&x).unwrap()),
                );
                let gemv = &mut |i: usize| {
                    drop(
                        bf16[i]
                            .forward_with(&x, Kernel::detect(), usize::MAX)
                            .unwrap(),
                    )
                };
                let gemm =
                    &mut |i: usize| drop(bf16[i].forward_with(&x, Kernel::detect(), 0).unwrap());
                let s = best_times(w32.len(), &mut [f32_mm, bf16_fw, f16_fw, gemv, gemm]);
                let gbs = |bytes: usize, s: f64| (out * inp * bytes) as f64 / s / 1e9;
                println!(
                    "{out:>5}x{inp:<4} t {t:>3}: f32 {:>8.1} us {:>5.1} GB/s | bf16 {:>8.1} us {:>5.1} GB/s {:.2}x \
                     | f16 {:>8.1} us {:>5.1} GB/s {:.2}x | bf16 gemv {:.2}x gemm {:.2}x",
                    s[0] * 1e6, gbs(4, s[0]), s[1] * 1e6, gbs(2, s[1]), s[0] / s[1],
                    s[2] * 1e6, gbs(2, s[2]), s[0] / s[2], s[0] / s[3], s[0] / s[4],
                );
            }
        }
    }
}
