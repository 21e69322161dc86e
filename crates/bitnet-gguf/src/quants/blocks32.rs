//! The x86 row drivers shared by the formats whose blocks hold one f16 scale and then the codes
//! of 32 elements (Q8_0, Q4_0): the loops, the `vpdpbusd` step and the per-lane scaling are the
//! same, only how a block's codes become bytes differs ([`Blocks32`]).

use std::arch::x86_64::*;

use super::dot::{ActRef, LANE};
use crate::quants::dot::h2f;

/// Elements per block.
const QK: usize = 32;

/// One 32-element block format's part of the x86 kernels.
pub(crate) trait Blocks32 {
    /// Bytes per block (the f16 scale first).
    const BYTES: usize;
    /// log2 of the offset that makes the codes unsigned (`w + offset`: 128 for Q8_0's flipped
    /// codes, 8 for Q4_0's nibbles): `vpdpbusd`'s accumulator starts at `offset * -(lane sum of
    /// x)`, that is `neg_sum << BIAS_SHIFT`.
    const BIAS_SHIFT: i32;

    /// The 64 codes of the blocks at `pa` and `pb` as unsigned bytes (`w + offset`), in
    /// element order: block `pa`'s 32 in the low half.
    ///
    /// # Safety
    ///
    /// Both blocks are readable; the CPU has AVX-512 F/BW.
    unsafe fn pair_codes(pa: *const u8, pb: *const u8) -> __m512i;

    /// The codes of the block at `pa` as the AVX2 step takes them ([`Blocks32::dot_avx2`]).
    ///
    /// # Safety
    ///
    /// The block is readable; the CPU has AVX2.
    unsafe fn weights_avx2(pa: *const u8) -> __m256i;

    /// The exact i32 sums per lane of block `b`'s codes `w` ([`Blocks32::weights_avx2`]) times
    /// `x`'s codes.
    ///
    /// # Safety
    ///
    /// `x` covers block `b`; the CPU has AVX2.
    unsafe fn dot_avx2(w: __m256i, x: ActRef<'_>, b: usize) -> __m256i;

    /// Block `b`'s exact i32 sum of code products (the tail of the AVX-512 loop).
    fn block_isum(block: &[u8], xq: &[i8]) -> i32;
}

/// Two blocks per step: `vpdpbusd` of the unsigned codes with the signed activation codes from
/// `-offset * (lane sum of x)`; the 16 i32 lanes (8 per block) are scaled by `d_w * d_x` per lane
/// in f32 and summed; an odd last block is summed exactly in scalar code.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c")]
pub(crate) fn row_avx512<B: Blocks32>(row: &[u8], x: ActRef<'_>) -> f32 {
    let nb = x.blocks_of(row, B::BYTES, QK);
    let mut acc = [_mm512_setzero_ps(); 2];
    let mut b = 0;
    while b + 4 <= nb {
        for (k, acc) in acc.iter_mut().enumerate() {
            // SAFETY: b + 2k + 2 <= nb.
            *acc = unsafe { pair_avx512::<B>(row, x, b + 2 * k, *acc) };
        }
        b += 4;
    }
    if b + 2 <= nb {
        // SAFETY: b + 2 <= nb.
        acc[0] = unsafe { pair_avx512::<B>(row, x, b, acc[0]) };
        b += 2;
    }
    let mut sum = _mm512_reduce_add_ps(_mm512_add_ps(acc[0], acc[1]));
    if b < nb {
        let block = &row[b * B::BYTES..(b + 1) * B::BYTES];
        let isum = B::block_isum(block, &x.q[b * QK..(b + 1) * QK]);
        let d = h2f(u16::from_le_bytes([block[0], block[1]]));
        sum += isum as f32 * (d * x.scale[b * QK / LANE]);
    }
    sum
}

/// `acc + (blocks b, b + 1 of row) . x` per lane (see [`row_avx512`]).
///
/// # Safety
///
/// `b + 2 <= nb` for `row` and `x` (`ActRef::blocks_of`); the CPU has the features.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c")]
unsafe fn pair_avx512<B: Blocks32>(row: &[u8], x: ActRef<'_>, b: usize, acc: __m512) -> __m512 {
    // Lanes 0..8 take scale 0 (first block), lanes 8..16 scale 1.
    let halves = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
    // SAFETY: blocks b and b + 1 lie inside `row` (b + 2 <= nb); x's arrays cover nb blocks, so
    // codes b*32..b*32+64 and lanes b*8..b*8+16 are in bounds.
    unsafe {
        let pa = row.as_ptr().add(b * B::BYTES);
        let pb = pa.add(B::BYTES);
        let w = B::pair_codes(pa, pb);
        let xv = _mm512_loadu_si512(x.q.as_ptr().add(b * QK).cast());
        let ns = _mm512_loadu_si512(x.neg_sum.as_ptr().add(b * 8).cast());
        let bias = _mm512_sll_epi32(ns, _mm_cvtsi32_si128(B::BIAS_SHIFT));
        let dot = _mm512_dpbusd_epi32(bias, w, xv);
        let bits = u32::from(pa.cast::<u16>().read_unaligned().to_le())
            | (u32::from(pb.cast::<u16>().read_unaligned().to_le()) << 16);
        let dw = _mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32));
        let dw = _mm512_permutexvar_ps(halves, _mm512_castps128_ps512(dw));
        let s = _mm512_mul_ps(dw, _mm512_loadu_ps(x.scale.as_ptr().add(b * 8)));
        _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), s, acc)
    }
}

/// One block per step, two accumulators (even and odd blocks), summed at the end; each
/// block's i32 lanes are scaled by `d_w * d_x` in f32.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn row_avx2<B: Blocks32>(row: &[u8], x: ActRef<'_>) -> f32 {
    // SAFETY: this function is compiled for the body's features.
    let [y] = unsafe { rows_avx2::<B, 1>(row, [x]) };
    y
}

/// [`row_avx2`] of one row against four vectors: each block's codes and scale are loaded and
/// prepared once for all four, and each vector's product goes through exactly the operations
/// [`row_avx2`] applies to it.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn row_avx2_x4<B: Blocks32>(row: &[u8], xs: [ActRef<'_>; 4]) -> [f32; 4] {
    // SAFETY: this function is compiled for the body's features.
    unsafe { rows_avx2::<B, 4>(row, xs) }
}

/// The AVX2 row driver against `V` vectors. (A target-feature function, not merely inlined into
/// one: closures inherit the features only from the function they are written in.)
///
/// # Safety
///
/// The CPU has AVX2, FMA and F16C.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn rows_avx2<B: Blocks32, const V: usize>(row: &[u8], xs: [ActRef<'_>; V]) -> [f32; V] {
    let mut nb = 0;
    for x in &xs {
        nb = x.blocks_of(row, B::BYTES, QK);
    }
    // SAFETY (every call below): the CPU has the features (the caller's promise); blocks
    // b < nb lie inside `row`, and every x covers them (`blocks_of`).
    unsafe {
        let step = |b: usize, acc: &mut [[__m256; 2]; V], k: usize| {
            let pa = row.as_ptr().add(b * B::BYTES);
            let w = B::weights_avx2(pa);
            let dw = h2f(pa.cast::<u16>().read_unaligned().to_le());
            for (x, acc) in xs.iter().zip(acc.iter_mut()) {
                let s = _mm256_set1_ps(dw * *x.scale.get_unchecked(b * QK / LANE));
                let dot = B::dot_avx2(w, *x, b);
                acc[k] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), s, acc[k]);
            }
        };
        let mut acc = [[_mm256_setzero_ps(); 2]; V];
        let mut b = 0;
        while b + 2 <= nb {
            step(b, &mut acc, 0);
            step(b + 1, &mut acc, 1);
            b += 2;
        }
        if b < nb {
            step(b, &mut acc, 0);
        }
        acc.map(|[a0, a1]| {
            let mut lanes = [0.0f32; 8];
            // SAFETY: `lanes` holds 8 f32.
            _mm256_storeu_ps(lanes.as_mut_ptr(), _mm256_add_ps(a0, a1));
            lanes.iter().sum()
        })
    }
}
