//! Q6_K: super-blocks of 256 values, 16 sub-blocks of 16 with an i8 scale each and one f16 `d`.
//! Layout (210 bytes): `ql[128]` (low 4 bits), `qh[64]` (high 2 bits), `scales[16]`, `d`.
//! Value = `d * scale[sub] * (q - 32)` with q in 0..64.
//!
//! The encoder ports ggml's `quantize_row_q6_K_ref` and its `make_qx_quants(.., rmse_type = 1)`
//! search step by step, in the same f32 operation order (no fused multiply-add), so it produces
//! the bytes of a ggml build compiled without FMA contraction.

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
