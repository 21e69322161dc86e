//! Q6_K: super-blocks of 256 values, 16 sub-blocks of 16 with an i8 scale each and one f16 `d`.
//! Layout (210 bytes): `ql[128]` (low 4 bits), `qh[64]` (high 2 bits), `scales[16]`, `d`.
//! Value = `d * scale[sub] * (q - 32)` with q in 0..64.
//!
//! The encoder ports ggml's `quantize_row_q6_K_ref` and its `make_qx_quants(.., rmse_type = 1)`
//! search step by step, in the same f32 operation order (no fused multiply-add), so it produces
//! the bytes of a ggml build compiled without FMA contraction.

use super::dot::{ActRef, LANE, RowDots};
use super::float::{f16_to_f32, f32_to_f16_bits};
use crate::error::{GgufError, Result};

/// Values per super-block.
pub const QK_K: usize = 256;
/// Bytes per super-block.
pub const BLOCK_BYTES: usize = 210;

/// ggml's `GROUP_MAX_EPS`: groups whose largest magnitude is below it quantize to zero.
const GROUP_MAX_EPS: f32 = 1e-15;

/// Largest magnitude Q6_K can hold: `|d| <= 65504` (f16), `|scale| <= 128`, `|q| <= 32`. Beyond
/// it ggml's search overflows (`x^3` in f32), returns NaN scales and silently zeroes the block;
/// this encoder refuses instead.
pub const MAX_ABS: f32 = 65504.0 * 128.0 * 32.0;

/// ggml's `nearest_int`: round half to even. ggml's bit trick is exact for |v| < 2^22 (asserted
/// there); beyond that this saturates instead of returning garbage.
fn nearest_int(v: f32) -> i32 {
    v.round_ties_even() as i32
}

/// `make_qx_quants(16, nmax, x, L, rmse_type = 1, qw = NULL)`: picks a scale for one sub-block by
/// least squares weighted by x², trying 19 candidate inverse scales. Writes `L[i] = l + nmax`.
fn make_qx_quants(x: &[f32; 16], nmax: i32, levels: &mut [u8; 16]) -> f32 {
    let mut max = 0.0f32;
    let mut amax = 0.0f32;
    for &v in x {
        let ax = v.abs();
        if ax > amax {
            amax = ax;
            max = v;
        }
    }
    if amax < GROUP_MAX_EPS {
        *levels = [0; 16];
        return 0.0;
    }
    let nmaxf = nmax as f32;
    let quant = |iscale: f32, v: f32| nearest_int(iscale * v).clamp(-nmax, nmax - 1);
    let sums = |iscale: f32| {
        let mut sumlx = 0.0f32;
        let mut suml2 = 0.0f32;
        for &v in x {
            let l = quant(iscale, v) as f32;
            let w = v * v;
            sumlx += w * v * l;
            suml2 += w * l * l;
        }
        (sumlx, suml2)
    };
    let set_levels = |iscale: f32, levels: &mut [u8; 16]| {
        for (lv, &v) in levels.iter_mut().zip(x) {
            *lv = (quant(iscale, v) + nmax) as u8;
        }
    };

    let iscale = -nmaxf / max;
    set_levels(iscale, levels);
    let (sumlx, suml2) = sums(iscale);
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for is in -9i32..=9 {
        if is == 0 {
            continue;
        }
        let iscale = -(nmaxf + 0.1f32 * is as f32) / max;
        let (sumlx, suml2) = sums(iscale);
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            set_levels(iscale, levels);
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// Quantizes one super-block; returns `None` when `d` overflows f16.
fn quantize_block(x: &[f32; QK_K], out: &mut [u8; BLOCK_BYTES]) -> Option<()> {
    let mut levels = [0u8; QK_K];
    let mut scales = [0.0f32; QK_K / 16];
    let mut max_scale = 0.0f32;
    let mut max_abs_scale = 0.0f32;
    let (xs, _) = x.as_chunks::<16>();
    let (ls, _) = levels.as_chunks_mut::<16>();
    for ((xb, lb), s) in xs.iter().zip(ls.iter_mut()).zip(scales.iter_mut()) {
        let scale = make_qx_quants(xb, 32, lb);
        *s = scale;
        if scale.abs() > max_abs_scale {
            max_abs_scale = scale.abs();
            max_scale = scale;
        }
    }
    if max_abs_scale < GROUP_MAX_EPS {
        *out = [0; BLOCK_BYTES];
        return Some(());
    }
    let iscale = -128.0f32 / max_scale;
    let d_bits = f32_to_f16_bits(1.0 / iscale);
    let d = f16_to_f32(d_bits);
    if !d.is_finite() {
        return None;
    }
    let mut sc = [0i8; QK_K / 16];
    for (q, &s) in sc.iter_mut().zip(&scales) {
        *q = nearest_int(iscale * s).clamp(-128, 127) as i8;
    }
    for ((xb, lb), &s) in xs.iter().zip(ls.iter_mut()).zip(&sc) {
        let dd = d * f32::from(s);
        if dd == 0.0 {
            continue; // ggml keeps make_qx_quants' levels here; they decode to 0 anyway
        }
        for (lv, &v) in lb.iter_mut().zip(xb) {
            *lv = (nearest_int(v / dd).clamp(-32, 31) + 32) as u8;
        }
    }

    pack_block(&levels, &sc, d_bits, out);
    Some(())
}

/// Writes levels (q + 32, 0..64), sub-block scales and `d` into the 210-byte layout.
pub(crate) fn pack_block(
    levels: &[u8; QK_K],
    sc: &[i8; QK_K / 16],
    d_bits: u16,
    out: &mut [u8; BLOCK_BYTES],
) {
    let (ql, rest) = out.split_at_mut(128);
    let (qh, rest) = rest.split_at_mut(64);
    let (scales_out, d_out) = rest.split_at_mut(16);
    for (o, &s) in scales_out.iter_mut().zip(sc) {
        *o = s as u8;
    }
    d_out.copy_from_slice(&d_bits.to_le_bytes());
    for half in 0..2 {
        let lv = &levels[128 * half..128 * half + 128];
        let ql = &mut ql[64 * half..64 * half + 64];
        let qh = &mut qh[32 * half..32 * half + 32];
        for l in 0..32 {
            let (a, b, c, e) = (lv[l], lv[l + 32], lv[l + 64], lv[l + 96]);
            ql[l] = (a & 0xF) | ((c & 0xF) << 4);
            ql[l + 32] = (b & 0xF) | ((e & 0xF) << 4);
            qh[l] = (a >> 4) | ((b >> 4) << 2) | ((c >> 4) << 4) | ((e >> 4) << 6);
        }
    }
}

/// Quantizes `values` (a multiple of 256, all finite, |x| <= [`MAX_ABS`]) with ggml's reference
/// Q6_K quantizer, byte for byte, except where that would lose information on a block that Q6_K
/// can represent exactly: there a lossless representation is written instead, so re-encoding
/// decoded Q6_K data is the identity on values (`decode(encode(decode(b))) == decode(b)` as f32
/// values; a zero may come back with the other sign, as ggml's own zero blocks decode to -0.0).
pub fn encode_q6_k(values: &[f32]) -> Result<Vec<u8>> {
    const CTX: &str = "Q6_K encoder";
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
            format!("value at index {i} exceeds the Q6_K range (|x| <= {MAX_ABS})"),
        ));
    }
    let (blocks, _) = values.as_chunks::<QK_K>();
    let mut out = vec![0u8; blocks.len() * BLOCK_BYTES];
    let (outs, _) = out.as_chunks_mut::<BLOCK_BYTES>();
    let mut check = [0.0f32; QK_K];
    for (b, (x, y)) in blocks.iter().zip(outs).enumerate() {
        quantize_block(x, y).ok_or_else(|| {
            GgufError::input(
                CTX,
                format!("block {b}: the super-block scale overflows f16"),
            )
        })?;
        // Keep ggml's bytes when they are exact; otherwise, if the block is exactly
        // representable (e.g. it was decoded from Q6_K), use a lossless representation.
        decode_into(&y[..], &mut check);
        let exact = check.iter().zip(x).all(|(a, b)| a == b);
        if !exact && let Some(lossless) = super::q6_k_exact::exact_block(x) {
            *y = lossless;
        }
    }
    Ok(out)
}

/// Dequantizes whole super-blocks exactly as ggml's `dequantize_row_q6_K`
/// (`d * scale * q`, evaluated left to right in f32). The caller guarantees
/// `data.len() == out.len() / 256 * 210`.
pub(crate) fn decode_into(data: &[u8], out: &mut [f32]) {
    let (blocks, _) = data.as_chunks::<BLOCK_BYTES>();
    let (outs, _) = out.as_chunks_mut::<QK_K>();
    for (block, y) in blocks.iter().zip(outs) {
        let (ql, rest) = block.split_at(128);
        let (qh, rest) = rest.split_at(64);
        let (sc, d) = rest.split_at(16);
        let d = f16_to_f32(u16::from_le_bytes([d[0], d[1]]));
        for half in 0..2 {
            let ql = &ql[64 * half..64 * half + 64];
            let qh = &qh[32 * half..32 * half + 32];
            let sc = &sc[8 * half..8 * half + 8];
            let y = &mut y[128 * half..128 * half + 128];
            for l in 0..32 {
                let is = l / 16;
                let q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i8 - 32;
                let q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i8 - 32;
                let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i8 - 32;
                let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i8 - 32;
                let s = |k: usize| f32::from(sc[is + k] as i8);
                y[l] = d * s(0) * f32::from(q1);
                y[l + 32] = d * s(2) * f32::from(q2);
                y[l + 64] = d * s(4) * f32::from(q3);
                y[l + 96] = d * s(6) * f32::from(q4);
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

/// Level (`q - 32`, in -32..32) of value `v` (0..256) of a super-block.
fn level(block: &[u8], v: usize) -> i32 {
    let (half, r) = (v / 128, v % 128);
    let (k, l) = (r / 32, r % 32);
    let b = block[64 * half + l + 32 * (k & 1)];
    let low = if k >= 2 { b >> 4 } else { b & 0xF };
    let high = (block[128 + 32 * half + l] >> (2 * k)) & 3;
    i32::from(low | (high << 4)) - 32
}

/// Portable reference: per 32-value activation block, the exact i32 sum of
/// `scale * (q - 32) * x_q` over its two sub-blocks, scaled in f32 by `d_x`, then by `d`.
fn row_scalar(row: &[u8], x: ActRef<'_>) -> f32 {
    let mut sum = 0.0f32;
    for (s, block) in row.chunks_exact(BLOCK_BYTES).enumerate() {
        let d = f16_to_f32(u16::from_le_bytes([block[208], block[209]]));
        let xq = &x.q[s * QK_K..(s + 1) * QK_K];
        let mut sb = 0.0f32;
        for c in 0..QK_K / 32 {
            let mut isum = 0i32;
            for sub in 2 * c..2 * c + 2 {
                let p: i32 = (16 * sub..16 * sub + 16)
                    .map(|v| level(block, v) * i32::from(xq[v]))
                    .sum();
                isum += p * i32::from(block[192 + sub] as i8);
            }
            sb += isum as f32 * x.scale[(s * QK_K + 32 * c) / LANE];
        }
        sum += sb * d;
    }
    sum
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{ActRef, BLOCK_BYTES, LANE, QK_K};
    use crate::quants::dot::h2f;

    /// `pshufb` masks that spread sub-block scales over i32 lanes: mask `g` maps byte `i` to
    /// scale `per * g + i / 4` (each 16-value sub-block covers 4 lanes of 4 values).
    fn scale_masks<const N: usize>(per: usize) -> [[u8; 16]; N] {
        let mut out = [[0u8; 16]; N];
        for (g, m) in out.iter_mut().enumerate() {
            for (i, b) in m.iter_mut().enumerate() {
                *b = ((per * g + i / 4) % 16) as u8;
            }
        }
        out
    }

    /// Per half super-block (128 values): 64 `ql` bytes and 32 `qh` bytes (broadcast to both
    /// halves of a register) unpack into two registers of 64 unsigned levels (0..64): values
    /// 0..64 (low nibbles, `qh` bits 0-1 / 2-3) and 64..128 (high nibbles, bits 4-5 / 6-7).
    /// `vpdpbusd` starts from `-32 * (lane sum of x)` to remove the level offset, the i32 lanes
    /// are multiplied by their sub-block's scale, then scaled by `d_x` per lane in f32 and by `d`
    /// per super-block.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c")]
    pub(super) fn row_avx512(row: &[u8], x: ActRef<'_>) -> f32 {
        let n = x.blocks_of(row, BLOCK_BYTES, QK_K);
        let m0f = _mm512_set1_epi8(0x0F);
        let m30 = _mm512_set1_epi8(0x30);
        // Per-16-bit-lane shift counts: bytes 0..32 (values 0..32 resp. 64..96) and 32..64.
        let sh_low = _mm512_inserti64x4(
            _mm512_castsi256_si512(_mm256_set1_epi16(4)),
            _mm256_set1_epi16(2),
            1,
        );
        let sh_high = _mm512_inserti64x4(_mm512_setzero_si512(), _mm256_set1_epi16(2), 1);
        let masks = scale_masks::<4>(4);
        // SAFETY: each mask is 16 bytes.
        let masks = masks.map(|m| unsafe { _mm_loadu_si128(m.as_ptr().cast()) });
        let mut acc = _mm512_setzero_ps();
        for s in 0..n {
            // SAFETY: super-block s lies inside `row` (s < n), so its bytes 0..210 are in
            // bounds: ql 0..128, qh 128..192, scales 192..208, d 208..210.
            let (scv, d) = unsafe {
                let blk = row.as_ptr().add(s * BLOCK_BYTES);
                (
                    _mm_loadu_si128(blk.add(192).cast()),
                    u16::from_le_bytes([*blk.add(208), *blk.add(209)]),
                )
            };
            let mut sacc = _mm512_setzero_ps();
            for h in 0..2 {
                // SAFETY: as above (64 * h + 64 <= 128, 128 + 32 * h + 32 <= 192).
                let (qlv, qhv) = unsafe {
                    let blk = row.as_ptr().add(s * BLOCK_BYTES);
                    (
                        _mm512_loadu_si512(blk.add(64 * h).cast()),
                        _mm512_broadcast_i64x4(_mm256_loadu_si256(blk.add(128 + 32 * h).cast())),
                    )
                };
                let lo = _mm512_or_si512(
                    _mm512_and_si512(qlv, m0f),
                    _mm512_and_si512(_mm512_sllv_epi16(qhv, sh_low), m30),
                );
                let hi = _mm512_or_si512(
                    _mm512_and_si512(_mm512_srli_epi16(qlv, 4), m0f),
                    _mm512_and_si512(_mm512_srlv_epi16(qhv, sh_high), m30),
                );
                for (k, w) in [lo, hi].into_iter().enumerate() {
                    let g = 2 * h + k;
                    let e = s * QK_K + 64 * g;
                    // SAFETY: x covers n super-blocks (`check`): codes e..e+64 and lanes
                    // e/4..e/4+16 are in bounds.
                    let (xv, ns, xs) = unsafe {
                        (
                            _mm512_loadu_si512(x.q.as_ptr().add(e).cast()),
                            _mm512_loadu_si512(x.neg_sum.as_ptr().add(e / LANE).cast()),
                            _mm512_loadu_ps(x.scale.as_ptr().add(e / LANE)),
                        )
                    };
                    let dot = _mm512_dpbusd_epi32(_mm512_slli_epi32(ns, 5), w, xv);
                    let sc = _mm512_cvtepi8_epi32(_mm_shuffle_epi8(scv, masks[g]));
                    let prod = _mm512_mullo_epi32(dot, sc);
                    sacc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(prod), xs, sacc);
                }
            }
            acc = _mm512_fmadd_ps(sacc, _mm512_set1_ps(h2f(d)), acc);
        }
        _mm512_reduce_add_ps(acc)
    }

    /// 32 values per step: `vpmaddubsw(level, x)` (pair sums <= 2 * 63 * 127, no saturation),
    /// `vpmaddwd` with ones to 8 i32 lanes, plus `-32 * (lane sum of x)`, times the sub-block
    /// scales, then `d_x` per lane in f32 and `d` per super-block.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) fn row_avx2(row: &[u8], x: ActRef<'_>) -> f32 {
        // SAFETY: this function is compiled for the body's features.
        let [y] = unsafe { rows_avx2::<1>(row, [x]) };
        y
    }

    /// [`row_avx2`] of one row against four vectors: each super-block's levels and scales are
    /// unpacked once for all four (a batched head unpacked them once per vector), and each
    /// vector's product goes through exactly the operations [`row_avx2`] applies to it.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) fn row_avx2_x4(row: &[u8], xs: [ActRef<'_>; 4]) -> [f32; 4] {
        // SAFETY: this function is compiled for the body's features.
        unsafe { rows_avx2(row, xs) }
    }

    /// The row kernel against `V` vectors. (A target-feature function, not merely inlined into
    /// one: closures inherit the features only from the function they are written in.)
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
        // SAFETY: the CPU has the features (the caller's promise).
        unsafe {
            let m0f = _mm256_set1_epi8(0x0F);
            let m30 = _mm256_set1_epi8(0x30);
            let ones = _mm256_set1_epi16(1);
            let masks = scale_masks::<8>(2);
            // SAFETY: each mask is 16 bytes.
            let masks = masks.map(|m| _mm_loadu_si128(m.as_ptr().cast()));
            let mut acc = [_mm256_setzero_ps(); V];
            for s in 0..n {
                // SAFETY: super-block s lies inside `row` (s < n): bytes 192..208 and 208..210.
                let blk = row.as_ptr().add(s * BLOCK_BYTES);
                let scv = _mm_loadu_si128(blk.add(192).cast());
                let d = u16::from_le_bytes([*blk.add(208), *blk.add(209)]);
                let mut sacc = [_mm256_setzero_ps(); V];
                for h in 0..2 {
                    // SAFETY: as above (64 * h + 64 <= 128, 128 + 32 * h + 32 <= 192).
                    let ql0 = _mm256_loadu_si256(blk.add(64 * h).cast());
                    let ql1 = _mm256_loadu_si256(blk.add(64 * h + 32).cast());
                    let qh = _mm256_loadu_si256(blk.add(128 + 32 * h).cast());
                    let levels = [
                        _mm256_or_si256(
                            _mm256_and_si256(ql0, m0f),
                            _mm256_and_si256(_mm256_slli_epi16(qh, 4), m30),
                        ),
                        _mm256_or_si256(
                            _mm256_and_si256(ql1, m0f),
                            _mm256_and_si256(_mm256_slli_epi16(qh, 2), m30),
                        ),
                        _mm256_or_si256(
                            _mm256_and_si256(_mm256_srli_epi16(ql0, 4), m0f),
                            _mm256_and_si256(qh, m30),
                        ),
                        _mm256_or_si256(
                            _mm256_and_si256(_mm256_srli_epi16(ql1, 4), m0f),
                            _mm256_and_si256(_mm256_srli_epi16(qh, 2), m30),
                        ),
                    ];
                    for (c, w) in levels.into_iter().enumerate() {
                        let chunk = 4 * h + c;
                        let e = s * QK_K + 32 * chunk;
                        let sc = _mm256_cvtepi8_epi32(_mm_shuffle_epi8(scv, masks[chunk]));
                        for (x, sacc) in xs.iter().zip(&mut sacc) {
                            // SAFETY: x covers n super-blocks (`blocks_of`): codes e..e+32 and
                            // lanes e/4..e/4+8 are in bounds.
                            let xv = _mm256_loadu_si256(x.q.as_ptr().add(e).cast());
                            let ns = _mm256_loadu_si256(x.neg_sum.as_ptr().add(e / LANE).cast());
                            let xsc = _mm256_loadu_ps(x.scale.as_ptr().add(e / LANE));
                            let dot = _mm256_add_epi32(
                                _mm256_madd_epi16(_mm256_maddubs_epi16(w, xv), ones),
                                _mm256_slli_epi32(ns, 5),
                            );
                            let prod = _mm256_mullo_epi32(dot, sc);
                            *sacc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(prod), xsc, *sacc);
                        }
                    }
                }
                let dv = _mm256_set1_ps(h2f(d));
                for (acc, sacc) in acc.iter_mut().zip(sacc) {
                    *acc = _mm256_fmadd_ps(sacc, dv, *acc);
                }
            }
            acc.map(|acc| {
                let mut lanes = [0.0f32; 8];
                // SAFETY: `lanes` holds 8 f32.
                _mm256_storeu_ps(lanes.as_mut_ptr(), acc);
                lanes.iter().sum()
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_int_is_half_to_even() {
        assert_eq!(nearest_int(0.5), 0);
        assert_eq!(nearest_int(1.5), 2);
        assert_eq!(nearest_int(-2.5), -2);
        assert_eq!(nearest_int(-2.6), -3);
    }

    fn decode_f32_vec(bytes: &[u8]) -> Vec<f32> {
        let mut y = vec![0.0f32; bytes.len() / BLOCK_BYTES * QK_K];
        decode_into(bytes, &mut y);
        y
    }

    #[test]
    fn zero_block_encodes_to_zero_bytes() {
        let bytes = encode_q6_k(&[0.0; 256]).unwrap();
        assert_eq!(bytes, vec![0u8; 210]);
    }

    #[test]
    fn encode_error_paths() {
        assert!(encode_q6_k(&[0.0; 255]).is_err());
        let mut x = vec![0.0f32; 256];
        x[7] = f32::INFINITY;
        assert!(encode_q6_k(&x).is_err());
        x[7] = 3e38; // would overflow ggml's f32 search and zero the block silently
        assert!(encode_q6_k(&x).is_err());
        x[7] = 2.6e8; // within range: d = 2.6e8 / 32 / 128 fits in f16
        let y = decode_f32_vec(&encode_q6_k(&x).unwrap());
        assert!((y[7] - 2.6e8).abs() < 2.6e8 / 64.0, "{}", y[7]);
    }

    #[test]
    fn small_integer_grid_is_reproduced_exactly() {
        // Values on a grid d*sc*q with d a power of two are representable; the quantizer must
        // find a representation that decodes to nearly the same values.
        let x: Vec<f32> = (0..256)
            .map(|i| ((i * 37 % 61) as f32 - 30.0) * 0.25)
            .collect();
        let bytes = encode_q6_k(&x).unwrap();
        let mut y = vec![0.0f32; 256];
        decode_into(&bytes, &mut y);
        let max_err = x
            .iter()
            .zip(&y)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(max_err <= 0.25, "max error {max_err}");
    }
}
