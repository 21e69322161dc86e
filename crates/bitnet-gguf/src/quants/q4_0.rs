//! Q4_0: blocks of 32 values stored as an f16 scale `d` followed by 16 bytes of 4-bit codes;
//! byte `j` holds value `j` in its low nibble and value `j + 16` in its high nibble, and
//! `x = (q - 8) * d` with `q` in 0..16. The encoder is ggml's `quantize_row_q4_0_ref` (also
//! gguf-py's `Q4_0.quantize_blocks`): the scale maps the block's largest-magnitude value to
//! code 0 (level -8), so the other extreme gets at most level +7.

#[cfg(target_arch = "x86_64")]
use super::blocks32;
use super::dot::{ActRef, LANE, RowDots};
use super::float::{f16_to_f32, f32_to_f16_bits};
use crate::error::{GgufError, Result};

/// Values per block.
pub const QK4_0: usize = 32;
/// Bytes per block.
pub const BLOCK_BYTES: usize = 18;

/// Quantizes `values` (a multiple of 32, all finite) exactly as ggml's reference quantizer:
/// per block, `max` is the first value of largest magnitude (sign kept), `d = max / -8` (f32),
/// `id = 1 / d` (0 when `d` is 0), code `min(15, (i8)(x * id + 8.5))` (truncation), `d` stored
/// as f16.
///
/// Only where ggml's result is undefined behaviour (a block so tiny that `1 / d` overflows to
/// infinity, |max| below about 2.9e-38, whose f16 `d` is 0 anyway) do the codes differ from
/// ggml's: the casts saturate and the codes are clamped to 0..16.
pub fn encode_q4_0(values: &[f32]) -> Result<Vec<u8>> {
    const CTX: &str = "Q4_0 encoder";
    if !values.len().is_multiple_of(QK4_0) {
        return Err(GgufError::input(
            CTX,
            format!("{} values is not a multiple of {QK4_0}", values.len()),
        ));
    }
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        return Err(GgufError::input(
            CTX,
            format!("value at index {i} is not finite"),
        ));
    }
    let mut out = Vec::with_capacity(values.len() / QK4_0 * BLOCK_BYTES);
    for (b, block) in values.chunks_exact(QK4_0).enumerate() {
        let max = signed_max(block);
        let d = max / -8.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let d_bits = f32_to_f16_bits(d);
        if !f16_to_f32(d_bits).is_finite() {
            return Err(GgufError::input(
                CTX,
                format!("block {b}: scale {d} overflows f16 (max |x| {})", max.abs()),
            ));
        }
        out.extend_from_slice(&d_bits.to_le_bytes());
        let code = |x: f32| ((x * id + 8.5) as i8).clamp(0, 15) as u8;
        let (lo, hi) = block.split_at(QK4_0 / 2);
        out.extend(lo.iter().zip(hi).map(|(&a, &b)| code(a) | (code(b) << 4)));
    }
    Ok(out)
}

/// The first value of largest magnitude, with its sign (ggml's `if (amax < fabsf(v))` scan,
/// which starts from `+0.0`: an all-zero block gives `+0.0`, hence `d = -0.0`).
fn signed_max(block: &[f32]) -> f32 {
    let mut amax = 0.0f32;
    let mut max = 0.0f32;
    for &v in block {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    max
}

/// Dequantizes whole blocks: `out[j] = (q[j] - 8) * d` in f32, as ggml's
/// `dequantize_row_q4_0`. The caller guarantees `data.len() == out.len() / 32 * 18`.
pub(crate) fn decode_into(data: &[u8], out: &mut [f32]) {
    let (blocks, _) = data.as_chunks::<BLOCK_BYTES>();
    let (outs, _) = out.as_chunks_mut::<QK4_0>();
    for (block, y) in blocks.iter().zip(outs) {
        let d = block_scale(block);
        let (lo, hi) = y.split_at_mut(QK4_0 / 2);
        for ((&q, a), b) in block[2..].iter().zip(lo).zip(hi) {
            *a = f32::from((q & 0x0F) as i8 - 8) * d;
            *b = f32::from((q >> 4) as i8 - 8) * d;
        }
    }
}

/// The f16 scale of a block (its first two bytes).
fn block_scale(block: &[u8]) -> f32 {
    f16_to_f32(u16::from_le_bytes([block[0], block[1]]))
}

/// This format's row kernels for [`super::dot`].
pub(crate) const ROW_DOTS: RowDots = RowDots {
    scalar: row_scalar,
    #[cfg(target_arch = "x86_64")]
    avx512: blocks32::row_avx512::<x86::Q4>,
    #[cfg(target_arch = "x86_64")]
    avx2: blocks32::row_avx2::<x86::Q4>,
    #[cfg(target_arch = "x86_64")]
    avx2_x4: Some(blocks32::row_avx2_x4::<x86::Q4>),
};

/// `block . xq` (one block of 18 bytes, 32 activation codes) as an exact i32 sum of
/// `(q - 8) * x_q`.
fn block_isum(block: &[u8], xq: &[i8]) -> i32 {
    let (lo, hi) = xq.split_at(QK4_0 / 2);
    block[2..]
        .iter()
        .zip(lo)
        .zip(hi)
        .map(|((&q, &a), &b)| {
            (i32::from(q & 0x0F) - 8) * i32::from(a) + (i32::from(q >> 4) - 8) * i32::from(b)
        })
        .sum()
}

/// Portable reference: per block, the exact i32 sum of code products, scaled in f32 by
/// `d_w * d_x`.
fn row_scalar(row: &[u8], x: ActRef<'_>) -> f32 {
    let mut sum = 0.0f32;
    for (b, (block, xq)) in row
        .chunks_exact(BLOCK_BYTES)
        .zip(x.q.chunks_exact(QK4_0))
        .enumerate()
    {
        sum += block_isum(block, xq) as f32 * (block_scale(block) * x.scale[b * QK4_0 / LANE]);
    }
    sum
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{ActRef, BLOCK_BYTES, QK4_0};
    use crate::quants::blocks32::Blocks32;

    /// Q4_0 in the shared row drivers. AVX-512: the 2 x 16 code bytes are spread over the four
    /// 128-bit lanes of a register as `[a, a, b, b]`; lanes 1 and 3 are shifted right by 4, and
    /// masking with 0x0F leaves the 64 unsigned nibbles (0..16, `q - 8` offset by 8) in element
    /// order. AVX2, one block per step: the 16 code bytes and their copy shifted right by 4 form
    /// the 32 nibbles in element order; `vpmaddubsw(nibbles, x)` (pair sums <= 2 * 15 * 127, no
    /// saturation), `vpmaddwd` with ones to 8 i32 lanes, plus `-8 * (lane sum of x)`, scaled by
    /// `d_w * d_x`.
    pub(super) struct Q4;

    impl Blocks32 for Q4 {
        const BYTES: usize = BLOCK_BYTES;
        const BIAS_SHIFT: i32 = 3;

        #[inline]
        #[target_feature(enable = "avx512f,avx512bw")]
        unsafe fn pair_codes(pa: *const u8, pb: *const u8) -> __m512i {
            // SAFETY: both blocks' code bytes (2..18) are readable (the caller's contract).
            unsafe {
                let qa = _mm_loadu_si128(pa.add(2).cast());
                let qb = _mm_loadu_si128(pb.add(2).cast());
                let ab = _mm512_castsi256_si512(_mm256_set_m128i(qb, qa));
                // 128-bit lanes [a, a, b, b]; the high nibbles go to lanes 1 and 3.
                let q = _mm512_shuffle_i64x2::<0x50>(ab, ab);
                let q = _mm512_mask_blend_epi64(0xCC, q, _mm512_srli_epi16::<4>(q));
                _mm512_and_si512(q, _mm512_set1_epi8(0x0F))
            }
        }

        #[inline]
        #[target_feature(enable = "avx2")]
        unsafe fn weights_avx2(pa: *const u8) -> __m256i {
            // SAFETY: the block's codes (bytes 2..18) are readable (the caller's contract).
            let q = unsafe { _mm_loadu_si128(pa.add(2).cast()) };
            _mm256_and_si256(
                _mm256_set_m128i(_mm_srli_epi16::<4>(q), q),
                _mm256_set1_epi8(0x0F),
            )
        }

        #[inline]
        #[target_feature(enable = "avx2")]
        unsafe fn dot_avx2(w: __m256i, x: ActRef<'_>, b: usize) -> __m256i {
            // SAFETY: codes b*32..b*32+32 and lanes b*8..b*8+8 of x exist (the caller's
            // contract).
            let (xv, ns) = unsafe {
                (
                    _mm256_loadu_si256(x.q.as_ptr().add(b * QK4_0).cast()),
                    _mm256_loadu_si256(x.neg_sum.as_ptr().add(b * 8).cast()),
                )
            };
            let pairs = _mm256_maddubs_epi16(w, xv);
            _mm256_add_epi32(
                _mm256_madd_epi16(pairs, _mm256_set1_epi16(1)),
                _mm256_slli_epi32::<3>(ns),
            )
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
        x[0] = 0.5;
        x[1] = -1.6; // the largest magnitude: d = -1.6 / -8 = 0.2, code 0 (level -8)
        x[2] = 1.6; // level +8 does not exist: 16 clamps to 15 (level +7)
        // Half-way levels round up (`+ 8.5`, then truncation): 0.5 -> 1, -0.5 -> 0.
        x[16] = 0.1; // 0.5 + 8.5 = 9 (level +1)
        x[17] = -0.1; // -0.5 + 8.5 = 8 (level 0)
        let bytes = encode_q4_0(&x).unwrap();
        assert_eq!(bytes.len(), 18);
        let d = f16_to_f32(u16::from_le_bytes([bytes[0], bytes[1]]));
        assert_eq!(d, half::f16::from_f32(0.2).to_f32());
        // x[0] = 0.5 -> 2.5 + 8.5 = 11; byte 0 also holds x[16] in its high nibble.
        assert_eq!(bytes[2], 11 | (9 << 4));
        assert_eq!(bytes[3], 8 << 4);
        assert_eq!(bytes[4], 15 | (8 << 4));
        let mut y = [0.0f32; 32];
        decode_into(&bytes, &mut y);
        assert_eq!(y[1], -8.0 * d);
        assert_eq!(y[2], 7.0 * d);
        assert_eq!(y[16], d);
        assert_eq!(y[17], 0.0);
    }

    #[test]
    fn ties_and_signs_follow_ggml() {
        // The first of two equal magnitudes wins, sign included.
        let mut x = [0.0f32; 32];
        x[3] = 2.0;
        x[9] = -2.0;
        let bytes = encode_q4_0(&x).unwrap();
        assert_eq!(f16_to_f32(u16::from_le_bytes([bytes[0], bytes[1]])), -0.25);
        x[3] = -2.0;
        x[9] = 2.0;
        let bytes = encode_q4_0(&x).unwrap();
        assert_eq!(f16_to_f32(u16::from_le_bytes([bytes[0], bytes[1]])), 0.25);
    }

    #[test]
    fn zero_block_and_errors() {
        let bytes = encode_q4_0(&[0.0; 32]).unwrap();
        // d = +0 / -8 = -0.0 as in ggml; every code is 8 (level 0).
        assert_eq!(&bytes[..2], &0x8000u16.to_le_bytes());
        assert!(bytes[2..].iter().all(|&b| b == 0x88));
        assert!(encode_q4_0(&[0.0; 31]).is_err());
        let mut x = [0.0f32; 32];
        x[5] = f32::NAN;
        assert!(encode_q4_0(&x).is_err());
        x[5] = f32::INFINITY;
        assert!(encode_q4_0(&x).is_err());
        x[5] = 1e6; // d = 1.25e5 does not fit in f16
        assert!(encode_q4_0(&x).is_err());
        x[5] = 5e5; // d = 62500 does
        assert!(encode_q4_0(&x).is_ok());
        // Tiny blocks never panic (1/d overflows; d is 0 in f16).
        x[5] = 1e-39;
        let bytes = encode_q4_0(&x).unwrap();
        let mut y = [1.0f32; 32];
        decode_into(&bytes, &mut y);
        assert!(y.iter().all(|&v| v == 0.0));
    }
}
