//! Q4_K: super-blocks of 256 values in 8 sub-blocks of 32, each with a 6-bit scale and a 6-bit
//! min, plus one f16 `d` for the scales and one f16 `dmin` for the mins. Layout (144 bytes):
//! `d`, `dmin`, `scales[12]` (the 16 packed 6-bit numbers), `qs[128]`, where byte `l` of the
//! 32-byte group `g` holds value `64g + l` in its low nibble and `64g + 32 + l` in its high one.
//! Value = `d * sc[j] * q - dmin * m[j]` with q in 0..16 (4.5 bits per weight).
//!
//! The encoder ports ggml's `quantize_row_q4_K_ref` and its `make_qkx2_quants` search step by
//! step, in the same f32 operation order (no fused multiply-add), so it produces the bytes of a
//! ggml build compiled without FMA contraction (checked against one in `tests/golden.rs`).

use super::dot::{ActRef, LANE, RowDots};
use super::float::{f16_to_f32, f32_to_f16_bits};
use crate::error::{GgufError, Result};

/// Values per super-block.
pub const QK_K: usize = 256;
/// Bytes per super-block.
pub const BLOCK_BYTES: usize = 144;

/// Largest magnitude the encoder accepts: a sub-block's min (at most `MAX_ABS`, a little more
/// after the least-squares search) gives `dmin = min / 63`, which must fit in f16 (here with a
/// 2x margin); its scale (about range / 15) then fits too, and ggml's f32 sums stay far from
/// overflow. Beyond it ggml's `dmin` can overflow to infinity (its `nearest_int` then asserts,
/// or returns garbage in a build without asserts); should a search still overflow within it,
/// the encoder refuses the block.
pub const MAX_ABS: f32 = 65504.0 * 63.0 / 2.0;

/// ggml's `nearest_int`: round half to even (the same for finite arguments below 2^22, which
/// every argument is for finite blocks whose value range exceeds about 1e-37).
fn nearest_int(v: f32) -> i32 {
    v.round_ties_even() as i32
}

/// The eight 6-bit scales (bytes 0..8) and mins (bytes 8..16) packed in `scales[12]`, as
/// little-endian words: ggml's `utmp` shuffle, equal to `get_scale_min_k4` for each `j`.
/// Always inlined: the SIMD kernels build a register from the words, and a call would force
/// their accumulators through memory.
#[inline(always)]
fn scales_mins(packed: &[u8; 12]) -> [u32; 4] {
    const KMASK1: u32 = 0x3f3f_3f3f;
    const KMASK2: u32 = 0x0f0f_0f0f;
    const KMASK3: u32 = 0x0303_0303;
    let word = |i: usize| {
        u32::from_le_bytes([
            packed[4 * i],
            packed[4 * i + 1],
            packed[4 * i + 2],
            packed[4 * i + 3],
        ])
    };
    let (u0, u1, u2) = (word(0), word(1), word(2));
    [
        u0 & KMASK1,
        (u2 & KMASK2) | (((u0 >> 6) & KMASK3) << 4),
        u1 & KMASK1,
        ((u2 >> 4) & KMASK2) | (((u1 >> 6) & KMASK3) << 4),
    ]
}

/// The 12 packed scale bytes of a super-block.
#[inline(always)]
fn packed_scales(block: &[u8; BLOCK_BYTES]) -> &[u8; 12] {
    // Always 12 bytes: the fallback is unreachable and compiles away.
    block[4..16].try_into().unwrap_or(&[0; 12])
}

/// [`scales_mins`] as bytes: `sc[0..8]` then `m[0..8]`.
#[inline(always)]
fn scales_mins_bytes(packed: &[u8; 12]) -> [u8; 16] {
    let w = scales_mins(packed);
    let mut out = [0u8; 16];
    for (o, v) in out.chunks_exact_mut(4).zip(w) {
        o.copy_from_slice(&v.to_le_bytes());
    }
    out
}

/// `make_qkx2_quants(32, 15, x, weights, L, &min, Laux, -1, 0.1, 20, false)`: picks a scale and
/// a min (`x ~ scale * l - min`, min >= 0) for one sub-block by weighted least squares over 21
/// candidate inverse scales. Returns `(scale, min)` and writes the levels.
fn make_qkx2_quants(x: &[f32; 32], weights: &[f32; 32], levels: &mut [u8; 32]) -> (f32, f32) {
    const NMAX: i32 = 15;
    const RMIN: f32 = -1.0;
    const RDELTA: f32 = 0.1;
    const NSTEP: i32 = 20;
    let mut min = x[0];
    let mut max = x[0];
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for (&v, &w) in x.iter().zip(weights).skip(1) {
        if v < min {
            min = v;
        }
        if v > max {
            max = v;
        }
        sum_w += w;
        sum_x += w * v;
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        *levels = [0; 32];
        return (0.0, -min);
    }
    let level = |iscale: f32, v: f32, min: f32| nearest_int(iscale * (v - min)).clamp(0, NMAX);
    let error = |scale: f32, min: f32, levels: &[u8; 32]| {
        let mut e = 0.0f32;
        for ((&v, &w), &l) in x.iter().zip(weights).zip(levels) {
            let diff = scale * f32::from(l) + min - v;
            e += w * (diff * diff);
        }
        e
    };

    let iscale = NMAX as f32 / (max - min);
    let mut scale = 1.0 / iscale;
    for (l, &v) in levels.iter_mut().zip(x) {
        *l = level(iscale, v, min) as u8;
    }
    let mut best_error = error(scale, min, levels);
    let mut aux = [0u8; 32];
    for is in 0..=NSTEP {
        let iscale = (RMIN + RDELTA * is as f32 + NMAX as f32) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0.0f32, 0.0f32, 0.0f32);
        for ((a, &v), &w) in aux.iter_mut().zip(x).zip(weights) {
            let l = level(iscale, v, min);
            *a = l as u8;
            let l = l as f32;
            sum_l += w * l;
            sum_l2 += w * l * l;
            sum_xl += w * l * v;
        }
        let det = sum_w * sum_l2 - sum_l * sum_l;
        if det > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let cur_error = error(this_scale, this_min, &aux);
            if cur_error < best_error {
                *levels = aux;
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// Packs 6-bit scales and mins into ggml's 12-byte layout.
fn pack_scales(ls: &[u8; 8], lm: &[u8; 8]) -> [u8; 12] {
    let mut s = [0u8; 12];
    for j in 0..8 {
        if j < 4 {
            s[j] = ls[j];
            s[j + 4] = lm[j];
        } else {
            s[j + 4] = (ls[j] & 0xF) | ((lm[j] & 0xF) << 4);
            s[j - 4] |= (ls[j] >> 4) << 6;
            s[j] |= (lm[j] >> 4) << 6;
        }
    }
    s
}

/// Quantizes one super-block; returns `None` when `d` or `dmin` overflows f16.
fn quantize_block(x: &[f32; QK_K], out: &mut [u8; BLOCK_BYTES]) -> Option<()> {
    let mut levels = [0u8; QK_K];
    let mut scales = [0.0f32; 8];
    let mut mins = [0.0f32; 8];
    let (mut max_scale, mut max_min) = (0.0f32, 0.0f32);
    let (xs, _) = x.as_chunks::<32>();
    let (ls, _) = levels.as_chunks_mut::<32>();
    for (j, (xb, lb)) in xs.iter().zip(ls.iter_mut()).enumerate() {
        let mut sum_x2 = 0.0f32;
        for &v in xb {
            sum_x2 += v * v;
        }
        let av_x = (sum_x2 / 32.0).sqrt();
        let weights = xb.map(|v| av_x + v.abs());
        (scales[j], mins[j]) = make_qkx2_quants(xb, &weights, lb);
        if scales[j] > max_scale {
            max_scale = scales[j];
        }
        if mins[j] > max_min {
            max_min = mins[j];
        }
    }
    let inv_scale = if max_scale > 0.0 {
        63.0 / max_scale
    } else {
        0.0
    };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    // The cast wraps as C's `uint8_t` does, before the MIN(63, .).
    let six_bits = |v: f32| (nearest_int(v) as u8).min(63);
    let q_scales = scales.map(|s| six_bits(inv_scale * s));
    let q_mins = mins.map(|m| six_bits(inv_min * m));
    let d_bits = f32_to_f16_bits(max_scale / 63.0);
    let dmin_bits = f32_to_f16_bits(max_min / 63.0);
    let (d, dmin) = (f16_to_f32(d_bits), f16_to_f32(dmin_bits));
    if !d.is_finite() || !dmin.is_finite() {
        return None;
    }
    for ((xb, lb), (&sc, &m)) in xs
        .iter()
        .zip(ls.iter_mut())
        .zip(q_scales.iter().zip(&q_mins))
    {
        let dd = d * f32::from(sc);
        if dd == 0.0 {
            continue; // ggml keeps make_qkx2_quants' levels here
        }
        let dm = dmin * f32::from(m);
        for (l, &v) in lb.iter_mut().zip(xb) {
            *l = nearest_int((v + dm) / dd).clamp(0, 15) as u8;
        }
    }
    out[0..2].copy_from_slice(&d_bits.to_le_bytes());
    out[2..4].copy_from_slice(&dmin_bits.to_le_bytes());
    out[4..16].copy_from_slice(&pack_scales(&q_scales, &q_mins));
    let (groups, _) = out[16..].as_chunks_mut::<32>();
    for (q, lv) in groups.iter_mut().zip(levels.chunks_exact(64)) {
        for (l, b) in q.iter_mut().enumerate() {
            *b = lv[l] | (lv[l + 32] << 4);
        }
    }
    Some(())
}

/// Quantizes `values` (a multiple of 256, all finite, |x| <= [`MAX_ABS`]) with ggml's reference
/// Q4_K quantizer, byte for byte. (Only where ggml's arithmetic leaves its defined range, a
/// sub-block whose value range is below about 1e-37 so that `15 / range` overflows, may the
/// bytes differ: ggml then rounds infinities and NaNs with a bit trick, this port saturates.)
pub fn encode_q4_k(values: &[f32]) -> Result<Vec<u8>> {
    const CTX: &str = "Q4_K encoder";
    if !values.len().is_multiple_of(QK_K) {
        return Err(GgufError::input(
            CTX,
            format!("{} values is not a multiple of {QK_K}", values.len()),
        ));
    }
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        return Err(GgufError::input(
            CTX,
            format!("value at index {i} is not finite"),
        ));
    }
    if let Some(i) = values.iter().position(|v| v.abs() > MAX_ABS) {
        return Err(GgufError::input(
            CTX,
            format!("value at index {i} exceeds the Q4_K range (|x| <= {MAX_ABS})"),
        ));
    }
    let (blocks, _) = values.as_chunks::<QK_K>();
    let mut out = vec![0u8; blocks.len() * BLOCK_BYTES];
    let (outs, _) = out.as_chunks_mut::<BLOCK_BYTES>();
    for (b, (x, y)) in blocks.iter().zip(outs).enumerate() {
        quantize_block(x, y).ok_or_else(|| {
            GgufError::input(CTX, format!("block {b}: a super-block scale overflows f16"))
        })?;
    }
    Ok(out)
}

/// The two f16 super-block scales `(d, dmin)`.
fn super_scales(block: &[u8]) -> (f32, f32) {
    (
        f16_to_f32(u16::from_le_bytes([block[0], block[1]])),
        f16_to_f32(u16::from_le_bytes([block[2], block[3]])),
    )
}

/// Dequantizes whole super-blocks exactly as ggml's `dequantize_row_q4_K`
/// (`d * sc * q - dmin * m` in f32, no fused multiply-add). The caller guarantees
/// `data.len() == out.len() / 256 * 144`.
pub(crate) fn decode_into(data: &[u8], out: &mut [f32]) {
    let (blocks, _) = data.as_chunks::<BLOCK_BYTES>();
    let (outs, _) = out.as_chunks_mut::<QK_K>();
    for (block, y) in blocks.iter().zip(outs) {
        let (d, dmin) = super_scales(block);
        let sm = scales_mins_bytes(packed_scales(block));
        for (g, (q, y)) in block[16..]
            .chunks_exact(32)
            .zip(y.chunks_exact_mut(64))
            .enumerate()
        {
            let (lo, hi) = y.split_at_mut(32);
            let (d1, m1) = (d * f32::from(sm[2 * g]), dmin * f32::from(sm[8 + 2 * g]));
            let (d2, m2) = (
                d * f32::from(sm[2 * g + 1]),
                dmin * f32::from(sm[8 + 2 * g + 1]),
            );
            for ((&b, a), h) in q.iter().zip(lo).zip(hi) {
                *a = d1 * f32::from(b & 0xF) - m1;
                *h = d2 * f32::from(b >> 4) - m2;
            }
        }
    }
}

/// This format's row kernels for [`super::dot`].
pub(crate) const ROW_DOTS: RowDots = RowDots {
    scalar: row_scalar,
    #[cfg(target_arch = "x86_64")]
    avx512: x86::row_avx512,
    #[cfg(target_arch = "x86_64")]
    avx2: x86::row_avx2,
    #[cfg(target_arch = "x86_64")]
    avx2_x4: Some(x86::row_avx2_x4),
};

/// Portable reference: per 32-value sub-block `j` (one activation block), the exact i32 sums
/// `sc_j * sum(q * x_q)` and `m_j * sum(x_q)`, each scaled in f32 by `d_x`; then `d` and `dmin`
/// per super-block.
fn row_scalar(row: &[u8], x: ActRef<'_>) -> f32 {
    let mut sum = 0.0f32;
    let (blocks, _) = row.as_chunks::<BLOCK_BYTES>();
    for (s, block) in blocks.iter().enumerate() {
        let (d, dmin) = super_scales(block);
        let sm = scales_mins_bytes(packed_scales(block));
        let qs = &block[16..];
        let (mut sum_d, mut sum_m) = (0.0f32, 0.0f32);
        for j in 0..8 {
            let (group, shift) = (&qs[32 * (j / 2)..32 * (j / 2) + 32], 4 * (j % 2));
            let e = s * QK_K + 32 * j;
            let xq = &x.q[e..e + 32];
            let isum: i32 = group
                .iter()
                .zip(xq)
                .map(|(&b, &v)| i32::from((b >> shift) & 0xF) * i32::from(v))
                .sum();
            let xsum: i32 = xq.iter().map(|&v| i32::from(v)).sum();
            let dx = x.scale[e / LANE];
            sum_d += (i32::from(sm[j]) * isum) as f32 * dx;
            sum_m += (i32::from(sm[8 + j]) * xsum) as f32 * dx;
        }
        sum += d * sum_d - dmin * sum_m;
    }
    sum
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{ActRef, BLOCK_BYTES, LANE, QK_K, packed_scales, scales_mins, scales_mins_bytes};
    use crate::quants::dot::h2f;

    /// Per 64 values (one 32-byte group: sub-blocks `2g` and `2g + 1`): the low and high
    /// nibbles side by side are the 64 levels in element order; `vpmaddubsw` with the
    /// activation codes (pair sums <= 2 * 15 * 127), `vpmaddwd` with the sub-block scales
    /// (a `vpermw` of the 16-bit scales) gives `sc * dot` per 4-value lane, scaled by `d_x` in
    /// f32. The mins term `m * (lane sum of x)` uses the negated lane sums, so it is added with
    /// `+dmin`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c")]
    pub(super) fn row_avx512(row: &[u8], x: ActRef<'_>) -> f32 {
        let n = x.blocks_of(row, BLOCK_BYTES, QK_K);
        let m4 = _mm256_set1_epi8(0x0F);
        let half = |a: i16, b: i16| {
            _mm512_inserti64x4::<1>(
                _mm512_castsi256_si512(_mm256_set1_epi16(a)),
                _mm256_set1_epi16(b),
            )
        };
        // vpermw indices: 16-bit lanes 0..16 take scale 2g, 16..32 scale 2g + 1; vpermd
        // indices: 32-bit lanes 0..8 take min 2g (at 8 + 2g), 8..16 min 2g + 1.
        let sc_idx: [__m512i; 4] = std::array::from_fn(|g| half(2 * g as i16, 2 * g as i16 + 1));
        let m_idx: [__m512i; 4] = std::array::from_fn(|g| {
            let (a, b) = (8 + 2 * g as i32, 9 + 2 * g as i32);
            _mm512_set_epi32(b, b, b, b, b, b, b, b, a, a, a, a, a, a, a, a)
        });
        let mut acc = _mm512_setzero_ps();
        let (blocks, _) = row.as_chunks::<BLOCK_BYTES>();
        for (s, blk) in blocks.iter().enumerate().take(n) {
            let (d, dmin) = (
                h2f(u16::from_le_bytes([blk[0], blk[1]])),
                h2f(u16::from_le_bytes([blk[2], blk[3]])),
            );
            let [u0, u1, u2, u3] = scales_mins(packed_scales(blk));
            let smv = _mm_set_epi32(u3 as i32, u2 as i32, u1 as i32, u0 as i32);
            let sm16 = _mm512_cvtepu8_epi16(_mm256_zextsi128_si256(smv));
            let sm32 = _mm512_cvtepu8_epi32(smv);
            let (mut acc_d, mut acc_m) = (_mm512_setzero_ps(), _mm512_setzero_ps());
            for g in 0..4 {
                let e = s * QK_K + 64 * g;
                // SAFETY: super-block s lies inside `row` (s < n): its qs bytes
                // 16 + 32g..16 + 32g + 32 are in bounds; x covers n super-blocks (`check`):
                // codes e..e+64 and lanes e/4..e/4+16 are in bounds.
                let (q, xv, xs, ns) = unsafe {
                    (
                        _mm256_loadu_si256(blk.as_ptr().add(16 + 32 * g).cast()),
                        _mm512_loadu_si512(x.q.as_ptr().add(e).cast()),
                        _mm512_loadu_ps(x.scale.as_ptr().add(e / LANE)),
                        _mm512_loadu_si512(x.neg_sum.as_ptr().add(e / LANE).cast()),
                    )
                };
                let w = _mm512_inserti64x4::<1>(
                    _mm512_castsi256_si512(_mm256_and_si256(q, m4)),
                    _mm256_and_si256(_mm256_srli_epi16::<4>(q), m4),
                );
                let sc = _mm512_permutexvar_epi16(sc_idx[g], sm16);
                let dot = _mm512_madd_epi16(_mm512_maddubs_epi16(w, xv), sc);
                acc_d = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), xs, acc_d);
                let mins = _mm512_mullo_epi32(ns, _mm512_permutexvar_epi32(m_idx[g], sm32));
                acc_m = _mm512_fmadd_ps(_mm512_cvtepi32_ps(mins), xs, acc_m);
            }
            acc = _mm512_fmadd_ps(acc_d, _mm512_set1_ps(d), acc);
            acc = _mm512_fmadd_ps(acc_m, _mm512_set1_ps(dmin), acc);
        }
        _mm512_reduce_add_ps(acc)
    }

    /// Per 32 values (one sub-block, one activation block): `vpmaddubsw(level, x)`,
    /// `vpmaddwd` with the broadcast scale, scaled by `d_x` per lane; the mins term from the
    /// negated lane sums times the broadcast min; `d` and `dmin` per super-block.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) fn row_avx2(row: &[u8], x: ActRef<'_>) -> f32 {
        // SAFETY: this function is compiled for the body's features.
        let [y] = unsafe { rows_avx2::<1>(row, [x]) };
        y
    }

    /// [`row_avx2`] of one row against four vectors: each super-block's levels, scales and
    /// mins are unpacked once for all four, and each vector's product goes through exactly the
    /// operations [`row_avx2`] applies to it.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) fn row_avx2_x4(row: &[u8], xs: [ActRef<'_>; 4]) -> [f32; 4] {
        // SAFETY: this function is compiled for the body's features.
        unsafe { rows_avx2(row, xs) }
    }

    /// The row kernel against `V` vectors (a target-feature function: closures inherit the
    /// features only from the function they are written in).
    ///
    /// # Safety
    ///
    /// The CPU has AVX2, FMA and F16C.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn rows_avx2<const V: usize>(row: &[u8], xs: [ActRef<'_>; V]) -> [f32; V] {
        let mut n = 0;
        for x in &xs {
            n = x.blocks_of(row, BLOCK_BYTES, QK_K);
        }
        let m4 = _mm256_set1_epi8(0x0F);
        let mut acc = [_mm256_setzero_ps(); V];
        let (blocks, _) = row.as_chunks::<BLOCK_BYTES>();
        for (s, blk) in blocks.iter().enumerate().take(n) {
            let (d, dmin) = (
                h2f(u16::from_le_bytes([blk[0], blk[1]])),
                h2f(u16::from_le_bytes([blk[2], blk[3]])),
            );
            let sm = scales_mins_bytes(packed_scales(blk));
            let mut acc_d = [_mm256_setzero_ps(); V];
            let mut acc_m = [_mm256_setzero_ps(); V];
            for g in 0..4 {
                // SAFETY: the 32 qs bytes of group g lie inside super-block s (s < n).
                let q = unsafe { _mm256_loadu_si256(blk.as_ptr().add(16 + 32 * g).cast()) };
                let levels = [
                    _mm256_and_si256(q, m4),
                    _mm256_and_si256(_mm256_srli_epi16::<4>(q), m4),
                ];
                for (k, w) in levels.into_iter().enumerate() {
                    let j = 2 * g + k;
                    let e = s * QK_K + 32 * j;
                    let sc = _mm256_set1_epi16(i16::from(sm[j]));
                    let mn = _mm256_set1_epi32(i32::from(sm[8 + j]));
                    for ((x, acc_d), acc_m) in xs.iter().zip(&mut acc_d).zip(&mut acc_m) {
                        // SAFETY: x covers n super-blocks (`blocks_of`): codes e..e+32 and
                        // lanes e/4..e/4+8 are in bounds.
                        let (xv, xsc, ns) = unsafe {
                            (
                                _mm256_loadu_si256(x.q.as_ptr().add(e).cast()),
                                _mm256_loadu_ps(x.scale.as_ptr().add(e / LANE)),
                                _mm256_loadu_si256(x.neg_sum.as_ptr().add(e / LANE).cast()),
                            )
                        };
                        let dot = _mm256_madd_epi16(_mm256_maddubs_epi16(w, xv), sc);
                        *acc_d = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), xsc, *acc_d);
                        let mins = _mm256_mullo_epi32(ns, mn);
                        *acc_m = _mm256_fmadd_ps(_mm256_cvtepi32_ps(mins), xsc, *acc_m);
                    }
                }
            }
            let (dv, dminv) = (_mm256_set1_ps(d), _mm256_set1_ps(dmin));
            for ((acc, acc_d), acc_m) in acc.iter_mut().zip(acc_d).zip(acc_m) {
                *acc = _mm256_fmadd_ps(acc_d, dv, *acc);
                *acc = _mm256_fmadd_ps(acc_m, dminv, *acc);
            }
        }
        acc.map(|acc| {
            let mut lanes = [0.0f32; 8];
            // SAFETY: `lanes` holds 8 f32.
            unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), acc) };
            lanes.iter().sum()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// ggml's `get_scale_min_k4`, written out.
    fn get_scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
        if j < 4 {
            (q[j] & 63, q[j + 4] & 63)
        } else {
            (
                (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
                (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
            )
        }
    }

    #[test]
    fn scale_unpacking_matches_get_scale_min_k4_and_packing() {
        let mut s = 0x1234_5678u32;
        for _ in 0..200 {
            let packed: [u8; 12] = std::array::from_fn(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                s as u8
            });
            let sm = scales_mins_bytes(&packed);
            for j in 0..8 {
                assert_eq!((sm[j], sm[8 + j]), get_scale_min_k4(j, &packed));
            }
            let ls: [u8; 8] = sm[..8].try_into().unwrap();
            let lm: [u8; 8] = sm[8..].try_into().unwrap();
            assert_eq!(scales_mins_bytes(&pack_scales(&ls, &lm)), sm);
        }
    }

    fn decode_vec(bytes: &[u8]) -> Vec<f32> {
        let mut y = vec![0.0f32; bytes.len() / BLOCK_BYTES * QK_K];
        decode_into(bytes, &mut y);
        y
    }

    #[test]
    fn zero_block_and_errors() {
        let bytes = encode_q4_k(&[0.0; 256]).unwrap();
        assert_eq!(bytes, vec![0u8; 144]);
        assert!(encode_q4_k(&[0.0; 255]).is_err());
        let mut x = vec![0.0f32; 256];
        x[7] = f32::NAN;
        assert!(encode_q4_k(&x).is_err());
        x[7] = 1e30;
        assert!(encode_q4_k(&x).is_err());
        x[7] = MAX_ABS;
        x[8] = -MAX_ABS;
        let y = decode_vec(&encode_q4_k(&x).unwrap());
        assert!((y[7] - MAX_ABS).abs() < MAX_ABS / 8.0, "{}", y[7]);
    }

    #[test]
    fn quantization_error_is_small() {
        // Uniform values with x8 outliers every 97: the outliers' sub-blocks set the 6-bit
        // scale and min grids of their super-block, so the others lose precision. gguf-py's
        // dequantization of ggml's bytes for this vector has relative RMS error 7.9% and a
        // largest error of 3.5% of the super-block's max |x| (0.166, bit for bit ours).
        let x: Vec<f32> = (0..1024)
            .map(|i| {
                let v = (i * 7919 % 257) as f32 / 128.0 - 1.0;
                if i % 97 == 3 { 8.0 * v } else { v }
            })
            .collect();
        let y = decode_vec(&encode_q4_k(&x).unwrap());
        let (mut se, mut sx) = (0.0f64, 0.0f64);
        for (xs, ys) in x.chunks(256).zip(y.chunks(256)) {
            let amax = xs.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            for (a, b) in xs.iter().zip(ys) {
                assert!((a - b).abs() <= 0.04 * amax, "{a} vs {b} (max |x| {amax})");
                se += f64::from(a - b).powi(2);
                sx += f64::from(*a).powi(2);
            }
        }
        assert!(
            (se / sx).sqrt() < 0.085,
            "relative RMS error {}",
            (se / sx).sqrt()
        );
    }
}
