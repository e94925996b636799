//! Row-interleaved Q8_0 and Q4_K weights for CPUs with AVX-512 VNNI (`vpdpbusd`).
//!
//! The weight rows are regrouped at load in eights, the bytes of the eight rows interleaved four at a time, so
//! that one 256-bit register holds four consecutive quants of eight rows and one `vpdpbusd` against four broadcast
//! activation bytes yields one partial dot product per row, lane r for row r (ggml's `repack` layouts follow the
//! same idea). The scales of the eight rows are a vector too, so the float work of a block is shared by eight
//! outputs and no horizontal sums remain: about three instructions per 32 multiply-adds per activation row
//! instead of eight in the compact kernels, which is what lets a two-row MTP verification cost little more than
//! one row. The packed copy replaces the original bytes (same size within 3 %).

use std::arch::x86_64::*;

use rayon::prelude::*;

use super::{X256, X32};

/// Rows per packed group.
pub(super) const ROWS: usize = 8;
/// Bytes of a packed Q8_0 block of 8 rows: 8 f16 scales, then 8 groups of (8 rows × 4 quants + 128, as u8).
pub(super) const Q8_0_BYTES: usize = 16 + 256;
/// Bytes of a packed Q4_K super-block of 8 rows: d[8], dmin[8] (f16), scales[8 sub-blocks][8 rows] (u8),
/// mins[4 sub-block pairs][8 rows][2] (u8), then 4 pairs × 8 groups of (8 rows × 4 bytes of nibbles).
pub(super) const Q4K_BYTES: usize = 32 + 64 + 64 + 1024;

/// Whether this CPU has the instructions of the packed kernels.
pub(super) fn cpu_ok() -> bool {
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512vl")
        && is_x86_feature_detected!("avx512vnni")
}

/// A zeroed buffer for packed weights, on huge pages where the kernel allows.
fn huge_zeroed(len: usize) -> Vec<u8> {
    let v = vec![0u8; len];
    crate::weights::advise_huge_pages(&v);
    v
}

/// Interleaves `n` rows (a multiple of 8) of `nb` Q8_0 blocks (34 bytes) into groups of 8 rows.
pub(super) fn pack_q8_0(src: &[u8], n: usize, nb: usize) -> Vec<u8> {
    let mut out = huge_zeroed(n / ROWS * nb * Q8_0_BYTES);
    out.par_chunks_mut(nb * Q8_0_BYTES)
        .enumerate()
        .for_each(|(g, dst)| {
            for b in 0..nb {
                let d = &mut dst[b * Q8_0_BYTES..(b + 1) * Q8_0_BYTES];
                for r in 0..ROWS {
                    let s = &src[((g * ROWS + r) * nb + b) * 34..][..34];
                    d[2 * r..2 * r + 2].copy_from_slice(&s[..2]);
                    for q in 0..8 {
                        for i in 0..4 {
                            d[16 + 32 * q + 4 * r + i] = (s[2 + 4 * q + i] as i8 as u8) ^ 0x80;
                        }
                    }
                }
            }
        });
    out
}

/// Interleaves `n` rows (a multiple of 8) of `nb` Q4_K super-blocks (144 bytes) into groups of 8 rows, with the
/// 6-bit scales and mins unpacked.
pub(super) fn pack_q4k(src: &[u8], n: usize, nb: usize) -> Vec<u8> {
    let mut out = huge_zeroed(n / ROWS * nb * Q4K_BYTES);
    out.par_chunks_mut(nb * Q4K_BYTES)
        .enumerate()
        .for_each(|(g, dst)| {
            for b in 0..nb {
                let d = &mut dst[b * Q4K_BYTES..(b + 1) * Q4K_BYTES];
                for r in 0..ROWS {
                    let s = &src[((g * ROWS + r) * nb + b) * 144..][..144];
                    d[2 * r..2 * r + 2].copy_from_slice(&s[..2]);
                    d[16 + 2 * r..16 + 2 * r + 2].copy_from_slice(&s[2..4]);
                    // SAFETY: `s` has the 12 scale bytes at 4..16.
                    let (sc, mn) = unsafe { super::q4k_scales_mins(s.as_ptr().add(4)) };
                    for j in 0..8 {
                        d[32 + 8 * j + r] = sc[j];
                        d[96 + 16 * (j / 2) + 2 * r + j % 2] = mn[j];
                    }
                    for p in 0..4 {
                        for q in 0..8 {
                            for i in 0..4 {
                                d[160 + 256 * p + 32 * q + 4 * r + i] = s[16 + 32 * p + 4 * q + i];
                            }
                        }
                    }
                }
            }
        });
    out
}

#[inline(always)]
unsafe fn bcast4(p: *const i8) -> __m256i {
    _mm256_set1_epi32(std::ptr::read_unaligned(p as *const i32))
}

/// `out[r][0..8] = x[r] · w[g·8 + 0..8]` for the `T` activation rows at `x` (each `nb` blocks, stride `xs`) and
/// the packed Q8_0 group at `w`.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512vnni")]
pub(super) unsafe fn group_q8_0<const T: usize>(
    w: *const u8,
    nb: usize,
    x: *const X32,
    xs: usize,
    out: [*mut f32; T],
) {
    let mut acc = [_mm256_setzero_ps(); T];
    for b in 0..nb {
        let blk = w.add(b * Q8_0_BYTES);
        let dw = _mm256_cvtph_ps(_mm_loadu_si128(blk as *const __m128i));
        let q = blk.add(16);
        let wq: [__m256i; 8] =
            std::array::from_fn(|g| _mm256_loadu_si256(q.add(32 * g) as *const __m256i));
        for (r, a) in acc.iter_mut().enumerate() {
            let xb = &*x.add(r * xs + b);
            let xq = xb.qs.as_ptr();
            // The weights are stored +128 (unsigned for vpdpbusd): start from −128·Σx.
            let mut s = [_mm256_setzero_si256(); 4];
            s[0] = _mm256_set1_epi32(-128 * xb.sum);
            for g in 0..8 {
                s[g % 4] = _mm256_dpbusd_epi32(s[g % 4], wq[g], bcast4(xq.add(4 * g)));
            }
            let s = _mm256_add_epi32(_mm256_add_epi32(s[0], s[1]), _mm256_add_epi32(s[2], s[3]));
            let s = _mm256_cvtepi32_ps(s);
            *a = _mm256_fmadd_ps(s, _mm256_mul_ps(dw, _mm256_set1_ps(xb.d)), *a);
        }
    }
    for (a, o) in acc.iter().zip(out) {
        _mm256_storeu_ps(o, *a);
    }
}

/// As [`group_q8_0`] for a packed Q4_K group: `w = d·scale_j·q − dmin·min_j` per row and 32-value sub-block j.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512vnni")]
pub(super) unsafe fn group_q4k<const T: usize>(
    w: *const u8,
    nb: usize,
    x: *const X256,
    xs: usize,
    out: [*mut f32; T],
) {
    let mut acc = [_mm256_setzero_ps(); T];
    let low = _mm256_set1_epi8(0x0f);
    for b in 0..nb {
        let blk = w.add(b * Q4K_BYTES);
        let dd = _mm256_cvtph_ps(_mm_loadu_si128(blk as *const __m128i));
        let dm = _mm256_cvtph_ps(_mm_loadu_si128(blk.add(16) as *const __m128i));
        let (scales, mins, qs) = (blk.add(32), blk.add(96), blk.add(160));
        let mut sumi = [_mm256_setzero_si256(); T];
        let mut summ = [_mm256_setzero_si256(); T];
        for p in 0..4 {
            let sc_lo = _mm256_cvtepu8_epi32(_mm_loadl_epi64(scales.add(16 * p) as *const __m128i));
            let sc_hi =
                _mm256_cvtepu8_epi32(_mm_loadl_epi64(scales.add(16 * p + 8) as *const __m128i));
            let mn = _mm256_cvtepu8_epi16(_mm_loadu_si128(mins.add(16 * p) as *const __m128i));
            let mut a_lo = [_mm256_setzero_si256(); T];
            let mut a_hi = [_mm256_setzero_si256(); T];
            for g in 0..8 {
                let bits = _mm256_loadu_si256(qs.add(256 * p + 32 * g) as *const __m256i);
                let q_lo = _mm256_and_si256(bits, low);
                let q_hi = _mm256_and_si256(_mm256_srli_epi16(bits, 4), low);
                for r in 0..T {
                    let xq = (*x.add(r * xs + b)).qs.as_ptr().add(64 * p + 4 * g);
                    a_lo[r] = _mm256_dpbusd_epi32(a_lo[r], q_lo, bcast4(xq));
                    a_hi[r] = _mm256_dpbusd_epi32(a_hi[r], q_hi, bcast4(xq.add(32)));
                }
            }
            for r in 0..T {
                let lo = _mm256_mullo_epi32(a_lo[r], sc_lo);
                let hi = _mm256_mullo_epi32(a_hi[r], sc_hi);
                sumi[r] = _mm256_add_epi32(sumi[r], _mm256_add_epi32(lo, hi));
                // Σ over the pair's two sub-blocks of min · (sum of the sub-block's 32 activations).
                let s = (*x.add(r * xs + b)).s32.as_ptr().add(2 * p);
                summ[r] = _mm256_add_epi32(summ[r], _mm256_madd_epi16(mn, bcast4(s as *const i8)));
            }
        }
        for r in 0..T {
            let d = _mm256_set1_ps((*x.add(r * xs + b)).d);
            acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sumi[r]), _mm256_mul_ps(dd, d), acc[r]);
            acc[r] = _mm256_fnmadd_ps(_mm256_cvtepi32_ps(summ[r]), _mm256_mul_ps(dm, d), acc[r]);
        }
    }
    for (a, o) in acc.iter().zip(out) {
        _mm256_storeu_ps(o, *a);
    }
}
