//! Q8_0: blocks of 32 values stored as an f16 scale `d` followed by 32 signed bytes; `x = q * d`.
//! The encoder is ggml's `quantize_row_q8_0_ref` (also gguf-py's `Q8_0.quantize_blocks`).

#[cfg(target_arch = "x86_64")]
use super::blocks32;
use super::dot::{ActRef, LANE, RowDots};
use super::float::{f16_to_f32, f32_to_f16_bits};
use crate::error::{GgufError, Result};

/// Values per block.
pub const QK8_0: usize = 32;
/// Bytes per block.
pub const BLOCK_BYTES: usize = 34;

/// Quantizes `values` (a multiple of 32, all finite) exactly as ggml's reference quantizer:
/// `d = max|x| / 127` (f32), codes `roundf(x * (1/d))` (ties away from zero), `d` stored as f16.
pub fn encode_q8_0(values: &[f32]) -> Result<Vec<u8>> {
    const CTX: &str = "Q8_0 encoder";
    if !values.len().is_multiple_of(QK8_0) {
        return Err(GgufError::input(
            CTX,
            format!("{} values is not a multiple of {QK8_0}", values.len()),
        ));
    }
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        return Err(GgufError::input(
            CTX,
            format!("value at index {i} is not finite"),
        ));
    }
    let mut out = Vec::with_capacity(values.len() / QK8_0 * BLOCK_BYTES);
    for (b, block) in values.chunks_exact(QK8_0).enumerate() {
        let amax = block
            .iter()
            .fold(0.0f32, |m, v| if m > v.abs() { m } else { v.abs() });
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let d_bits = f32_to_f16_bits(d);
        if !f16_to_f32(d_bits).is_finite() {
            return Err(GgufError::input(
                CTX,
                format!("block {b}: scale {d} overflows f16 (max |x| {amax})"),
            ));
        }
        out.extend_from_slice(&d_bits.to_le_bytes());
        // |x * id| <= 127 up to rounding, so the saturating cast never saturates in practice.
        out.extend(block.iter().map(|x| ((x * id).round() as i8) as u8));
    }
    Ok(out)
}

/// Dequantizes whole blocks: `out[j] = q[j] * d` in f32, as ggml's `dequantize_row_q8_0`. The
/// caller guarantees `data.len() == out.len() / 32 * 34`.
pub(crate) fn decode_into(data: &[u8], out: &mut [f32]) {
    let (blocks, _) = data.as_chunks::<BLOCK_BYTES>();
    let (outs, _) = out.as_chunks_mut::<QK8_0>();
    for (block, y) in blocks.iter().zip(outs) {
        let (d, qs) = block.split_at(2);
        let d = f16_to_f32(u16::from_le_bytes([d[0], d[1]]));
        for (o, &q) in y.iter_mut().zip(qs) {
            *o = f32::from(q as i8) * d;
        }
    }
}

/// This format's row kernels for [`super::dot`].
pub(crate) const ROW_DOTS: RowDots = RowDots {
    scalar: row_scalar,
    #[cfg(target_arch = "x86_64")]
    avx512: blocks32::row_avx512::<x86::Q8>,
    #[cfg(target_arch = "x86_64")]
    avx2: blocks32::row_avx2::<x86::Q8>,
    #[cfg(target_arch = "x86_64")]
    avx2_x4: Some(blocks32::row_avx2_x4::<x86::Q8>),
};

/// Block `b`'s f16 scale.
fn block_scale(row: &[u8], b: usize) -> f32 {
    f16_to_f32(u16::from_le_bytes([
        row[b * BLOCK_BYTES],
        row[b * BLOCK_BYTES + 1],
    ]))
}

/// Portable reference: per block, the exact i32 sum of code products, scaled in f32.
fn row_scalar(row: &[u8], x: ActRef<'_>) -> f32 {
    let mut sum = 0.0f32;
    for (b, (block, xq)) in row
        .chunks_exact(BLOCK_BYTES)
        .zip(x.q.chunks_exact(QK8_0))
        .enumerate()
    {
        sum += block_isum(block, xq) as f32 * (block_scale(row, b) * x.scale[b * QK8_0 / LANE]);
    }
    sum
}

/// `block . xq` (one block of 34 bytes, 32 activation codes) as an exact i32 sum.
fn block_isum(block: &[u8], xq: &[i8]) -> i32 {
    block[2..]
        .iter()
        .zip(xq)
        .map(|(&w, &q)| i32::from(w as i8) * i32::from(q))
        .sum()
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{ActRef, BLOCK_BYTES, QK8_0};
    use crate::quants::blocks32::Blocks32;

    /// Q8_0 in the shared row drivers: the 64 weight codes are flipped to unsigned (`w + 128`)
    /// for `vpdpbusd` (AVX-512); with AVX2 `vpmaddubsw(|w|, sign(x, w))` (pair sums <= 2 * 128 *
    /// 127, no saturation), then `vpmaddwd` with ones to 8 i32 lanes, scaled by `d_w * d_x`.
    pub(super) struct Q8;

    impl Blocks32 for Q8 {
        const BYTES: usize = BLOCK_BYTES;
        const BIAS_SHIFT: i32 = 7;

        #[inline]
        #[target_feature(enable = "avx512f,avx512bw")]
        unsafe fn pair_codes(pa: *const u8, pb: *const u8) -> __m512i {
            // SAFETY: both blocks' codes (bytes 2..34) are readable (the caller's contract).
            unsafe {
                let wa = _mm256_loadu_si256(pa.add(2).cast());
                let wb = _mm256_loadu_si256(pb.add(2).cast());
                let flip = _mm512_set1_epi8(0x80u8 as i8);
                _mm512_xor_si512(_mm512_inserti64x4(_mm512_castsi256_si512(wa), wb, 1), flip)
            }
        }

        #[inline]
        #[target_feature(enable = "avx2")]
        unsafe fn weights_avx2(pa: *const u8) -> __m256i {
            // SAFETY: the block's codes (bytes 2..34) are readable (the caller's contract).
            unsafe { _mm256_loadu_si256(pa.add(2).cast()) }
        }

        #[inline]
        #[target_feature(enable = "avx2")]
        unsafe fn dot_avx2(w: __m256i, x: ActRef<'_>, b: usize) -> __m256i {
            // SAFETY: codes b*32..b*32+32 of x exist (the caller's contract).
            let xv = unsafe { _mm256_loadu_si256(x.q.as_ptr().add(b * QK8_0).cast()) };
            let pairs = _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(xv, w));
            _mm256_madd_epi16(pairs, _mm256_set1_epi16(1))
        }

        fn block_isum(block: &[u8], xq: &[i8]) -> i32 {
            super::block_isum(block, xq)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_matches_hand_computed_block() {
        let mut x = [0.0f32; 32];
        x[0] = 1.27;
        x[1] = -0.5;
        x[2] = 0.005; // 0.5 of a step: rounds away from zero
        let bytes = encode_q8_0(&x).unwrap();
        assert_eq!(bytes.len(), 34);
        let d = f16_to_f32(u16::from_le_bytes([bytes[0], bytes[1]]));
        assert_eq!(d, half::f16::from_f32(0.01).to_f32());
        assert_eq!(bytes[2] as i8, 127);
        assert_eq!(bytes[3] as i8, -50);
        assert_eq!(bytes[4] as i8, 1);
        let mut y = [0.0f32; 32];
        decode_into(&bytes, &mut y);
        assert_eq!(y[0], 127.0 * d);
        assert_eq!(y[1], -50.0 * d);
    }

    #[test]
    fn zero_block_and_errors() {
        let bytes = encode_q8_0(&[0.0; 32]).unwrap();
        assert!(bytes.iter().all(|&b| b == 0));
        assert!(encode_q8_0(&[0.0; 31]).is_err());
        let mut x = [0.0f32; 32];
        x[5] = f32::NAN;
        assert!(encode_q8_0(&x).is_err());
        x[5] = 1e9; // d = 7.9e6 does not fit in f16
        assert!(encode_q8_0(&x).is_err());
    }
}
