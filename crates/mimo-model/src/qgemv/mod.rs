//! Quantized weight × f32 activation products on x86-64 (AVX2): Q8_0, Q4_0, Q4_K and Q6_K weights, any number of
//! activation rows.
//!
//! Hand-written because candle's CPU kernels for these formats stream the weights at a quarter to a half of the
//! machine's read bandwidth and read them again for every activation row (`cargo run --release -p mimo-model
//! --example qgemv`: Q4_K 12–27 GB/s at one row, 4× the time at four rows; Q4_0 7 GB/s), while decode is a pure
//! weight stream and an MTP verification is two rows. These kernels follow ggml's: activations are quantized once
//! per call to 8-bit blocks (32 values for Q8_0/Q4_0, 256 with 16-value sums for the k-quants), each weight block
//! is decoded once into registers and dotted with up to [`TILE`] activation rows, and both cores take disjoint
//! ranges of output rows on candle's spinning worker pool (the one its own quantized matmul uses). The weights stay
//! in their GGUF bytes (no repacked copy, so resident memory is the file's size).

use std::arch::x86_64::*;
use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};

mod packed;

/// Activation rows dotted with one decoded weight block.
const TILE: usize = 4;
/// Output rows per work item (a 4096-wide Q8_0 chunk is ~70 KB and stays in L2 across activation tiles).
const CHUNK: usize = 16;

/// The weight formats with a kernel here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fmt {
    Q8_0,
    Q4_0,
    Q4K,
    Q6K,
}

impl Fmt {
    fn of(dtype: GgmlDType) -> Option<Self> {
        Some(match dtype {
            GgmlDType::Q8_0 => Fmt::Q8_0,
            GgmlDType::Q4_0 => Fmt::Q4_0,
            GgmlDType::Q4K => Fmt::Q4K,
            GgmlDType::Q6K => Fmt::Q6K,
            _ => return None,
        })
    }

    /// Values per weight block and bytes per block.
    fn block(self) -> (usize, usize) {
        match self {
            Fmt::Q8_0 => (32, 34),
            Fmt::Q4_0 => (32, 18),
            Fmt::Q4K => (256, 144),
            Fmt::Q6K => (256, 210),
        }
    }

    fn k_quant(self) -> bool {
        matches!(self, Fmt::Q4K | Fmt::Q6K)
    }
}

/// A quantized `[n, k]` weight with a kernel on this CPU.
#[derive(Debug, Clone)]
pub struct QGemv {
    data: Data,
    fmt: Fmt,
    n: usize,
    k: usize,
}

/// How the weight bytes are held.
#[derive(Debug, Clone)]
enum Data {
    /// The format's own blocks, row after row (the GGUF layout).
    Compact(Arc<QTensor>),
    /// Rows interleaved in eights for the VNNI kernels (`packed.rs`).
    Packed(Arc<Vec<u8>>),
}

/// Whether this CPU runs the kernels (AVX2, FMA and F16C).
fn cpu_ok() -> bool {
    is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c")
}

impl QGemv {
    /// The kernel for `q`, or `None` when its format, device or this CPU has none (candle's `QMatMul` then), or
    /// when `MIMO_CANDLE_QMATMUL=1` asks for candle's kernels (for A/B measurements).
    pub fn new(q: Arc<QTensor>) -> Option<Self> {
        if std::env::var_os("MIMO_CANDLE_QMATMUL").is_some_and(|v| v == "1") {
            return None;
        }
        let fmt = Fmt::of(q.dtype())?;
        let (n, k) = q.shape().dims2().ok()?;
        if !q.device().is_cpu() || !k.is_multiple_of(fmt.block().0) || !cpu_ok() {
            return None;
        }
        let nb = k / fmt.block().0;
        let packable = n.is_multiple_of(packed::ROWS) && packed::cpu_ok();
        let data = match fmt {
            Fmt::Q8_0 if packable => {
                Data::Packed(Arc::new(packed::pack_q8_0(&q.data().ok()?, n, nb)))
            }
            Fmt::Q4K if packable => {
                Data::Packed(Arc::new(packed::pack_q4k(&q.data().ok()?, n, nb)))
            }
            _ => Data::Compact(q),
        };
        Some(Self { data, fmt, n, k })
    }

    /// `x · Wᵀ` for `x` of any shape `[…, k]` (f32), output `[…, n]`.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        x.contiguous()?.apply_op1_no_bwd(self)
    }
}

impl CustomOp1 for QGemv {
    fn name(&self) -> &'static str {
        "mimo-qgemv"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(xs) = s else {
            candle_core::bail!("qgemv: activations must be f32");
        };
        let Some((a, b)) = l.contiguous_offsets() else {
            candle_core::bail!("qgemv: activations must be contiguous");
        };
        let mut dims = l.shape().dims().to_vec();
        if dims.last() != Some(&self.k) {
            candle_core::bail!("qgemv: activations {:?} do not end in {}", dims, self.k);
        }
        let x = &xs[a..b];
        let m = x.len() / self.k;
        let mut out = vec![0f32; m * self.n];
        match &self.data {
            // SAFETY: `cpu_ok()` held at construction; `q` holds `n` rows of `k / block` blocks of this format.
            Data::Compact(q) => unsafe {
                matmul(self.fmt, &q.data()?, self.n, self.k, x, m, &mut out)
            },
            // SAFETY: `packed::cpu_ok()` held at construction; `w` was packed from `n` rows of this format.
            Data::Packed(w) => unsafe {
                matmul_packed(self.fmt, w, self.n, self.k, x, m, &mut out)
            },
        }
        if let Some(last) = dims.last_mut() {
            *last = self.n;
        }
        Ok((CpuStorage::F32(out), Shape::from(dims)))
    }
}

/// 32 activations quantized to i8 with one scale (ggml's `block_q8_0`, f32 scale).
#[repr(C, align(32))]
#[derive(Clone, Copy)]
pub(super) struct X32 {
    pub(super) qs: [i8; 32],
    pub(super) d: f32,
    /// Σ qs (the packed Q8_0 kernel's offset correction).
    pub(super) sum: i32,
}

/// 256 activations quantized to i8 with one scale and the sums of each 16 (ggml's `block_q8_K`).
#[repr(C, align(32))]
#[derive(Clone, Copy)]
pub(super) struct X256 {
    pub(super) qs: [i8; 256],
    bsums: [i16; 16],
    /// Sums of each 32 quants (the packed Q4_K kernel's min term).
    pub(super) s32: [i16; 8],
    pub(super) d: f32,
}

/// ggml's `quantize_row_q8_0`: `d = max|x| / 127` rounded to f16 (the block stores it so), quants
/// `round_half_even(x · 127 / max|x|)`; returns `d`. Rounding the activations as llama.cpp does keeps greedy
/// decoding on the same GGUF token for token equal to it.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn quantize_q8_0(x: &[f32], q: &mut [i8]) -> f32 {
    let amax = x.iter().fold(0f32, |a, v| a.max(v.abs()));
    let id = if amax > 0.0 { 127.0 / amax } else { 0.0 };
    for (o, v) in q.iter_mut().zip(x) {
        *o = (v * id).round_ties_even() as i8;
    }
    ::half::f16::from_f32(amax / 127.0).to_f32()
}

/// ggml's `quantize_row_q8_K`: the value of largest magnitude `max` maps to −127 (`iscale = −127 / max`),
/// quants `min(127, round_half_even(iscale · x))`, `d = 1 / iscale` in f32; returns `d`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn quantize_q8_k(x: &[f32], q: &mut [i8]) -> f32 {
    let (mut amax, mut max) = (0f32, 0f32);
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    if amax == 0.0 {
        q.fill(0);
        return 0.0;
    }
    let iscale = -127.0 / max;
    for (o, v) in q.iter_mut().zip(x) {
        *o = (iscale * v).round_ties_even().min(127.0) as i8;
    }
    1.0 / iscale
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn quantize_x32(x: &[f32]) -> Vec<X32> {
    x.chunks_exact(32)
        .map(|c| {
            let mut b = X32 {
                qs: [0; 32],
                d: 0.0,
                sum: 0,
            };
            b.d = quantize_q8_0(c, &mut b.qs);
            b.sum = b.qs.iter().map(|&v| v as i32).sum();
            b
        })
        .collect()
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn quantize_x256(x: &[f32]) -> Vec<X256> {
    x.chunks_exact(256)
        .map(|c| {
            let mut b = X256 {
                qs: [0; 256],
                bsums: [0; 16],
                s32: [0; 8],
                d: 0.0,
            };
            b.d = quantize_q8_k(c, &mut b.qs);
            for (s, g) in b.bsums.iter_mut().zip(b.qs.chunks_exact(16)) {
                *s = g.iter().map(|&v| v as i16).sum();
            }
            for (i, s) in b.s32.iter_mut().enumerate() {
                *s = b.bsums[2 * i] + b.bsums[2 * i + 1];
            }
            b
        })
        .collect()
}

/// `out[r, j] = x[r] · w[j]` for the `m` rows of `x` and the `n` rows of `w`.
///
/// # Safety
/// The CPU has AVX2, FMA and F16C; `w` holds `n` rows of `k / block` blocks of `fmt`.
unsafe fn matmul(fmt: Fmt, w: &[u8], n: usize, k: usize, x: &[f32], m: usize, out: &mut [f32]) {
    let (bk, bb) = fmt.block();
    let nb = k / bk;
    assert!(w.len() >= n * nb * bb && x.len() >= m * k && out.len() >= m * n);
    // Activations quantized once: row r's blocks are `xq[r * nb..(r + 1) * nb]`.
    let x32 = if fmt.k_quant() {
        Vec::new()
    } else {
        quantize_x32(&x[..m * k])
    };
    let x256 = if fmt.k_quant() {
        quantize_x256(&x[..m * k])
    } else {
        Vec::new()
    };
    let out_ptr = out.as_mut_ptr() as usize;
    let chunks = n.div_ceil(CHUNK);
    candle_core::utils::barrier_pool().execute_chunked(chunks, |range| {
        for c in range {
            let (j0, j1) = (c * CHUNK, ((c + 1) * CHUNK).min(n));
            for r0 in (0..m).step_by(TILE) {
                let t = TILE.min(m - r0);
                for j in j0..j1 {
                    let row = w.as_ptr().add(j * nb * bb);
                    let mut dots = [0f32; TILE];
                    match fmt {
                        Fmt::Q8_0 => row_q8_0(row, nb, &x32, nb, r0, t, &mut dots),
                        Fmt::Q4_0 => row_q4_0(row, nb, &x32, nb, r0, t, &mut dots),
                        Fmt::Q4K => row_q4k(row, nb, &x256, nb, r0, t, &mut dots),
                        Fmt::Q6K => row_q6k(row, nb, &x256, nb, r0, t, &mut dots),
                    }
                    for (i, d) in dots.iter().take(t).enumerate() {
                        // SAFETY: each (row, column) is written by exactly one work item.
                        *(out_ptr as *mut f32).add((r0 + i) * n + j) = *d;
                    }
                }
            }
        }
    });
}

/// As [`matmul`] for weights packed by `packed.rs` (`n` a multiple of 8, Q8_0 or Q4_K).
///
/// # Safety
/// The CPU has the packed kernels' instructions; `w` was packed from `n` rows of `k / block` blocks of `fmt`.
unsafe fn matmul_packed(
    fmt: Fmt,
    w: &[u8],
    n: usize,
    k: usize,
    x: &[f32],
    m: usize,
    out: &mut [f32],
) {
    let (bk, _) = fmt.block();
    let nb = k / bk;
    let gbytes = nb
        * match fmt {
            Fmt::Q8_0 => packed::Q8_0_BYTES,
            _ => packed::Q4K_BYTES,
        };
    let groups = n / packed::ROWS;
    assert!(w.len() >= groups * gbytes && x.len() >= m * k && out.len() >= m * n);
    let x32 = if fmt == Fmt::Q8_0 {
        quantize_x32(&x[..m * k])
    } else {
        Vec::new()
    };
    let x256 = if fmt == Fmt::Q4K {
        quantize_x256(&x[..m * k])
    } else {
        Vec::new()
    };
    let out_ptr = out.as_mut_ptr() as usize;
    let per_item = CHUNK / packed::ROWS;
    candle_core::utils::barrier_pool().execute_chunked(groups.div_ceil(per_item), |range| {
        for c in range {
            for g in c * per_item..((c + 1) * per_item).min(groups) {
                let wg = w.as_ptr().add(g * gbytes);
                for r0 in (0..m).step_by(TILE) {
                    // SAFETY: rows r0..r0 + t, columns 8g..8g + 8 of `out` belong to this work item alone.
                    let o = |i: usize| (out_ptr as *mut f32).add((r0 + i) * n + g * packed::ROWS);
                    let (xa, xb) = (x32.as_ptr().add(r0 * nb), x256.as_ptr().add(r0 * nb));
                    match (fmt, TILE.min(m - r0)) {
                        (Fmt::Q8_0, 1) => packed::group_q8_0::<1>(wg, nb, xa, nb, [o(0)]),
                        (Fmt::Q8_0, 2) => packed::group_q8_0::<2>(wg, nb, xa, nb, [o(0), o(1)]),
                        (Fmt::Q8_0, 3) => {
                            packed::group_q8_0::<3>(wg, nb, xa, nb, [o(0), o(1), o(2)])
                        }
                        (Fmt::Q8_0, _) => {
                            packed::group_q8_0::<4>(wg, nb, xa, nb, [o(0), o(1), o(2), o(3)])
                        }
                        (_, 1) => packed::group_q4k::<1>(wg, nb, xb, nb, [o(0)]),
                        (_, 2) => packed::group_q4k::<2>(wg, nb, xb, nb, [o(0), o(1)]),
                        (_, 3) => packed::group_q4k::<3>(wg, nb, xb, nb, [o(0), o(1), o(2)]),
                        (_, _) => packed::group_q4k::<4>(wg, nb, xb, nb, [o(0), o(1), o(2), o(3)]),
                    }
                }
            }
        }
    });
}

#[inline(always)]
unsafe fn f16_at(p: *const u8) -> f32 {
    let bits = std::ptr::read_unaligned(p as *const u16);
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
}

#[inline(always)]
unsafe fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

#[inline(always)]
unsafe fn hsum128(v: __m128) -> f32 {
    let s = _mm_add_ps(v, _mm_movehl_ps(v, v));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// Σ of i8 products of 32 signed weights `w` and activations `x`, as 8 i32 lanes (ggml's `mul_sum_i8_pairs`:
/// `|w| · sign(x, w)` so that `maddubs` sees an unsigned operand).
#[inline(always)]
unsafe fn dot_i8(w: __m256i, x: __m256i) -> __m256i {
    let p16 = _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w));
    _mm256_madd_epi16(p16, _mm256_set1_epi16(1))
}

/// Dots of one Q8_0 weight row (`nb` blocks at `w`) with activation rows `r0..r0 + t` of `x` (`xs` blocks each).
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn row_q8_0(
    w: *const u8,
    nb: usize,
    x: &[X32],
    xs: usize,
    r0: usize,
    t: usize,
    dots: &mut [f32; TILE],
) {
    match t {
        1 => row_q8_0_t::<1>(w, nb, x, xs, r0, dots),
        2 => row_q8_0_t::<2>(w, nb, x, xs, r0, dots),
        3 => row_q8_0_t::<3>(w, nb, x, xs, r0, dots),
        _ => row_q8_0_t::<4>(w, nb, x, xs, r0, dots),
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn row_q8_0_t<const T: usize>(
    w: *const u8,
    nb: usize,
    x: &[X32],
    xs: usize,
    r0: usize,
    dots: &mut [f32; TILE],
) {
    // Two accumulators per row (even and odd blocks) so consecutive blocks' FMAs do not wait on each other.
    let mut acc = [[_mm256_setzero_ps(); 2]; T];
    let xp = x.as_ptr().add(r0 * xs);
    let mut b = 0;
    while b + 2 <= nb {
        let blk = w.add(b * 34);
        let dw = [f16_at(blk), f16_at(blk.add(34))];
        let qw = [
            _mm256_loadu_si256(blk.add(2) as *const __m256i),
            _mm256_loadu_si256(blk.add(36) as *const __m256i),
        ];
        for (r, a) in acc.iter_mut().enumerate() {
            for u in 0..2 {
                let xb = &*xp.add(r * xs + b + u);
                let qx = _mm256_load_si256(xb.qs.as_ptr() as *const __m256i);
                let p = _mm256_cvtepi32_ps(dot_i8(qw[u], qx));
                a[u] = _mm256_fmadd_ps(_mm256_set1_ps(dw[u] * xb.d), p, a[u]);
            }
        }
        b += 2;
    }
    if b < nb {
        let blk = w.add(b * 34);
        let dw = f16_at(blk);
        let qw = _mm256_loadu_si256(blk.add(2) as *const __m256i);
        for (r, a) in acc.iter_mut().enumerate() {
            let xb = &*xp.add(r * xs + b);
            let qx = _mm256_load_si256(xb.qs.as_ptr() as *const __m256i);
            let p = _mm256_cvtepi32_ps(dot_i8(qw, qx));
            a[0] = _mm256_fmadd_ps(_mm256_set1_ps(dw * xb.d), p, a[0]);
        }
    }
    for r in 0..T {
        dots[r] = hsum(_mm256_add_ps(acc[r][0], acc[r][1]));
    }
}

/// Dots of one Q4_0 weight row with activation rows `r0..r0 + t`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn row_q4_0(
    w: *const u8,
    nb: usize,
    x: &[X32],
    xs: usize,
    r0: usize,
    t: usize,
    dots: &mut [f32; TILE],
) {
    match t {
        1 => row_q4_0_t::<1>(w, nb, x, xs, r0, dots),
        2 => row_q4_0_t::<2>(w, nb, x, xs, r0, dots),
        3 => row_q4_0_t::<3>(w, nb, x, xs, r0, dots),
        _ => row_q4_0_t::<4>(w, nb, x, xs, r0, dots),
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn row_q4_0_t<const T: usize>(
    w: *const u8,
    nb: usize,
    x: &[X32],
    xs: usize,
    r0: usize,
    dots: &mut [f32; TILE],
) {
    let mut acc = [_mm256_setzero_ps(); T];
    let xp = x.as_ptr().add(r0 * xs);
    let low = _mm256_set1_epi8(0x0f);
    let eight = _mm256_set1_epi8(8);
    for b in 0..nb {
        let blk = w.add(b * 18);
        let dw = f16_at(blk);
        // Values 0..15 are the low nibbles of the 16 bytes, 16..31 the high ones; stored offset by 8.
        let lo = _mm_loadu_si128(blk.add(2) as *const __m128i);
        let both = _mm256_set_m128i(_mm_srli_epi16(lo, 4), lo);
        let qw = _mm256_sub_epi8(_mm256_and_si256(both, low), eight);
        for (r, a) in acc.iter_mut().enumerate() {
            let xb = &*xp.add(r * xs + b);
            let qx = _mm256_load_si256(xb.qs.as_ptr() as *const __m256i);
            let p = _mm256_cvtepi32_ps(dot_i8(qw, qx));
            *a = _mm256_fmadd_ps(_mm256_set1_ps(dw * xb.d), p, *a);
        }
    }
    for r in 0..T {
        dots[r] = hsum(acc[r]);
    }
}

/// The 8 six-bit scales and 8 mins of a Q4_K block's 12 packed bytes (ggml's `get_scale_min_k4`, all at once).
#[inline(always)]
pub(super) unsafe fn q4k_scales_mins(p: *const u8) -> ([u8; 8], [u8; 8]) {
    const M1: u32 = 0x3f3f3f3f;
    const M2: u32 = 0x0f0f0f0f;
    const M3: u32 = 0x03030303;
    let u0 = std::ptr::read_unaligned(p as *const u32);
    let u1 = std::ptr::read_unaligned(p.add(4) as *const u32);
    let u2 = std::ptr::read_unaligned(p.add(8) as *const u32);
    let sc_lo = u0 & M1;
    let sc_hi = (u2 & M2) | (((u0 >> 6) & M3) << 4);
    let mn_lo = u1 & M1;
    let mn_hi = ((u2 >> 4) & M2) | (((u1 >> 6) & M3) << 4);
    let sc = ((sc_hi as u64) << 32 | sc_lo as u64).to_le_bytes();
    let mn = ((mn_hi as u64) << 32 | mn_lo as u64).to_le_bytes();
    (sc, mn)
}

/// Dots of one Q4_K weight row with activation rows `r0..r0 + t`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn row_q4k(
    w: *const u8,
    nb: usize,
    x: &[X256],
    xs: usize,
    r0: usize,
    t: usize,
    dots: &mut [f32; TILE],
) {
    match t {
        1 => row_q4k_t::<1>(w, nb, x, xs, r0, dots),
        2 => row_q4k_t::<2>(w, nb, x, xs, r0, dots),
        3 => row_q4k_t::<3>(w, nb, x, xs, r0, dots),
        _ => row_q4k_t::<4>(w, nb, x, xs, r0, dots),
    }
}

/// Q4_K: `w = d·scale_j·q − dmin·min_j` per 32-value group j, q in 0..15; the min term is taken from the
/// activations' 16-value sums.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn row_q4k_t<const T: usize>(
    w: *const u8,
    nb: usize,
    x: &[X256],
    xs: usize,
    r0: usize,
    dots: &mut [f32; TILE],
) {
    let mut acc = [_mm256_setzero_ps(); T];
    let mut acc_m = [_mm_setzero_ps(); T];
    let xp = x.as_ptr().add(r0 * xs);
    let low = _mm256_set1_epi8(0x0f);
    for b in 0..nb {
        let blk = w.add(b * 144);
        let d = f16_at(blk);
        let dmin = f16_at(blk.add(2));
        let (sc, mn) = q4k_scales_mins(blk.add(4));
        let mins = _mm_cvtepu8_epi16(_mm_loadl_epi64(mn.as_ptr() as *const __m128i));
        let qs = blk.add(16);
        let mut sumi = [_mm256_setzero_si256(); T];
        for j in 0..4 {
            let bits = _mm256_loadu_si256(qs.add(32 * j) as *const __m256i);
            let q_lo = _mm256_and_si256(bits, low);
            let q_hi = _mm256_and_si256(_mm256_srli_epi16(bits, 4), low);
            let s_lo = _mm256_set1_epi16(sc[2 * j] as i16);
            let s_hi = _mm256_set1_epi16(sc[2 * j + 1] as i16);
            for (r, s) in sumi.iter_mut().enumerate() {
                let xq = (*xp.add(r * xs + b)).qs.as_ptr().add(64 * j);
                let x_lo = _mm256_load_si256(xq as *const __m256i);
                let x_hi = _mm256_load_si256(xq.add(32) as *const __m256i);
                let p_lo = _mm256_madd_epi16(s_lo, _mm256_maddubs_epi16(q_lo, x_lo));
                let p_hi = _mm256_madd_epi16(s_hi, _mm256_maddubs_epi16(q_hi, x_hi));
                *s = _mm256_add_epi32(*s, _mm256_add_epi32(p_lo, p_hi));
            }
        }
        for r in 0..T {
            let xb = &*xp.add(r * xs + b);
            let bs = xb.bsums.as_ptr() as *const __m128i;
            let pair = _mm_hadd_epi16(_mm_load_si128(bs), _mm_load_si128(bs.add(1)));
            let m = _mm_cvtepi32_ps(_mm_madd_epi16(mins, pair));
            acc_m[r] = _mm_fmadd_ps(_mm_set1_ps(-xb.d * dmin), m, acc_m[r]);
            acc[r] = _mm256_fmadd_ps(
                _mm256_set1_ps(xb.d * d),
                _mm256_cvtepi32_ps(sumi[r]),
                acc[r],
            );
        }
    }
    for r in 0..T {
        dots[r] = hsum(acc[r]) + hsum128(acc_m[r]);
    }
}

/// Dots of one Q6_K weight row with activation rows `r0..r0 + t`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn row_q6k(
    w: *const u8,
    nb: usize,
    x: &[X256],
    xs: usize,
    r0: usize,
    t: usize,
    dots: &mut [f32; TILE],
) {
    match t {
        1 => row_q6k_t::<1>(w, nb, x, xs, r0, dots),
        2 => row_q6k_t::<2>(w, nb, x, xs, r0, dots),
        3 => row_q6k_t::<3>(w, nb, x, xs, r0, dots),
        _ => row_q6k_t::<4>(w, nb, x, xs, r0, dots),
    }
}

/// Q6_K: `w = d·scale_g·(q − 32)` per 16-value group g, q in 0..63 from 4 low bits (`ql`) and 2 high bits (`qh`);
/// the −32 offset is taken from the activations' 16-value sums.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn row_q6k_t<const T: usize>(
    w: *const u8,
    nb: usize,
    x: &[X256],
    xs: usize,
    r0: usize,
    dots: &mut [f32; TILE],
) {
    let mut acc = [_mm256_setzero_ps(); T];
    let xp = x.as_ptr().add(r0 * xs);
    let low = _mm256_set1_epi8(0x0f);
    let m2 = _mm256_set1_epi8(3);
    for b in 0..nb {
        let blk = w.add(b * 210);
        let (ql, qh, scp) = (blk, blk.add(128), blk.add(192) as *const i8);
        let d = f16_at(blk.add(208));
        let scales = _mm256_cvtepi8_epi16(_mm_loadu_si128(scp as *const __m128i));
        let mut sumi = [_mm256_setzero_si256(); T];
        for half in 0..2 {
            let l0 = _mm256_loadu_si256(ql.add(64 * half) as *const __m256i);
            let l1 = _mm256_loadu_si256(ql.add(64 * half + 32) as *const __m256i);
            let h = _mm256_loadu_si256(qh.add(32 * half) as *const __m256i);
            let q = [
                _mm256_or_si256(
                    _mm256_and_si256(l0, low),
                    _mm256_slli_epi16(_mm256_and_si256(h, m2), 4),
                ),
                _mm256_or_si256(
                    _mm256_and_si256(l1, low),
                    _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(h, 2), m2), 4),
                ),
                _mm256_or_si256(
                    _mm256_and_si256(_mm256_srli_epi16(l0, 4), low),
                    _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(h, 4), m2), 4),
                ),
                _mm256_or_si256(
                    _mm256_and_si256(_mm256_srli_epi16(l1, 4), low),
                    _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(h, 6), m2), 4),
                ),
            ];
            for (i, qi) in q.iter().enumerate() {
                // Values 32·i..32·i+31 of this half: groups 8·half + 2·i and the next, 16 values each.
                let g = 8 * half + 2 * i;
                let s = _mm256_set_m128i(
                    _mm_set1_epi16(*scp.add(g + 1) as i16),
                    _mm_set1_epi16(*scp.add(g) as i16),
                );
                for (r, acc_i) in sumi.iter_mut().enumerate() {
                    let xq = (*xp.add(r * xs + b)).qs.as_ptr().add(128 * half + 32 * i);
                    let xv = _mm256_load_si256(xq as *const __m256i);
                    let p = _mm256_madd_epi16(s, _mm256_maddubs_epi16(*qi, xv));
                    *acc_i = _mm256_add_epi32(*acc_i, p);
                }
            }
        }
        for r in 0..T {
            let xb = &*xp.add(r * xs + b);
            let bs = _mm256_load_si256(xb.bsums.as_ptr() as *const __m256i);
            let off = _mm256_slli_epi32(_mm256_madd_epi16(scales, bs), 5);
            let s = _mm256_sub_epi32(sumi[r], off);
            acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(xb.d * d), _mm256_cvtepi32_ps(s), acc[r]);
        }
    }
    for r in 0..T {
        dots[r] = hsum(acc[r]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::QMatMul;
    use candle_core::{Device, Module};

    /// Deterministic values in [-1, 1).
    fn values(seed: u64, len: usize) -> Vec<f32> {
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

    /// ‖a − b‖ / ‖b‖.
    fn rel_err(a: &Tensor, b: &Tensor) -> f32 {
        let num = (a - b)
            .unwrap()
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let den = b
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        (num / den).sqrt()
    }

    /// Each kernel (compact and, where the CPU has VNNI, packed) is as close to the dequantized weight's f32
    /// product as candle's own quantized matmul, for 1–9 activation rows.
    #[test]
    fn kernels_match_dequantized_products() -> candle_core::Result<()> {
        if !cpu_ok() {
            return Ok(());
        }
        let dev = Device::Cpu;
        for (i, dtype) in [
            GgmlDType::Q8_0,
            GgmlDType::Q4_0,
            GgmlDType::Q4K,
            GgmlDType::Q6K,
        ]
        .into_iter()
        .enumerate()
        {
            for &(n, k) in &[
                (37usize, 512usize),
                (5, 256),
                (64, 1024),
                (960, 576),
                (576, 1536),
            ] {
                if !k.is_multiple_of(Fmt::of(dtype).unwrap().block().0) {
                    continue;
                }
                let w = Tensor::from_vec(values(i as u64 * 7 + n as u64, n * k), (n, k), &dev)?;
                let q = Arc::new(QTensor::quantize(&w, dtype)?);
                let wd = q.dequantize(&dev)?;
                let g = QGemv::new(q.clone()).expect("kernel");
                let packed = matches!(g.data, Data::Packed(_));
                assert_eq!(
                    packed,
                    n % 8 == 0
                        && packed::cpu_ok()
                        && matches!(dtype, GgmlDType::Q8_0 | GgmlDType::Q4K)
                );
                for m in [1usize, 2, 3, 4, 5, 9] {
                    let x = Tensor::from_vec(values(1000 + m as u64, m * k), (m, k), &dev)?;
                    let want = x.matmul(&wd.t()?)?;
                    let got = g.forward(&x)?;
                    let cand = QMatMul::from_arc(q.clone())?.forward(&x)?;
                    let (ours, theirs) = (rel_err(&got, &want), rel_err(&cand, &want));
                    assert!(
                        ours <= 1.25 * theirs + 1e-4 && ours < 0.02,
                        "{dtype:?} n={n} k={k} m={m} packed={packed}: error {ours}, candle's {theirs}"
                    );
                }
            }
        }
        Ok(())
    }
}
