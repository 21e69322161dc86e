//! llama.cpp's ternary block formats TQ1_0 and TQ2_0 (256 values per block, one f16 `d` each).
//!
//! TQ2_0 (66 bytes): `qs[64]` then `d`. Value `128h + 32g + m` (h < 2, g < 4, m < 32) lives at
//! byte `32h + m`, bits `2g..2g+2`, stored as `t + 1`.
//!
//! TQ1_0 (54 bytes): `qs[48]`, `qh[4]`, `d`. Five trits per byte in base 3, most significant
//! first, stored as `ceil(sum * 256 / 243)` so a trit is read back as `((u8)(byte * 3^k) * 3) >> 8`:
//! `qs[0..32]` byte m holds values `m + 32k` (k < 5), `qs[32..48]` byte m holds `160 + m + 16k`,
//! `qh` byte m holds `240 + m + 4k` (k < 4, the fifth trit is zero).
//!
//! Both match ggml's `quantize_row_tq{1,2}_0_ref` / `dequantize_row_tq{1,2}_0` and gguf-py byte
//! for byte (see the golden tests).

use super::float::{f16_to_f32, f32_to_f16_bits, is_exact_f16};
use crate::error::{GgufError, Result};

/// Values per block (both formats).
pub const QK_K: usize = 256;
/// TQ1_0 bytes per block.
pub const TQ1_0_BLOCK_BYTES: usize = 54;
/// TQ2_0 bytes per block.
pub const TQ2_0_BLOCK_BYTES: usize = 66;

const POW3: [u8; 5] = [1, 3, 9, 27, 81];

/// The k-th base-3 digit (most significant first) of a TQ1_0 byte, as 0..=2.
fn trit(byte: u8, k: usize) -> u8 {
    let q = byte.wrapping_mul(POW3[k]);
    ((u16::from(q) * 3) >> 8) as u8
}

/// Packs up to five 0..=2 digits (most significant first) into one TQ1_0 byte.
fn pack_trits(digits: impl Iterator<Item = u8>) -> u8 {
    let q = digits.fold(0u16, |acc, t| acc * 3 + u16::from(t));
    // ceil(q * 256 / 243); q <= 242 so the result fits in a byte.
    (q * 256).div_ceil(243) as u8
}

/// Unpacks one TQ1_0 block into 0..=2 codes (t + 1); returns the block's f16 `d` bits.
pub(crate) fn tq1_0_unpack(block: &[u8; TQ1_0_BLOCK_BYTES], out: &mut [u8; QK_K]) -> u16 {
    let (qs, rest) = block.split_at(48);
    let (qh, d) = rest.split_at(4);
    for k in 0..5 {
        for m in 0..32 {
            out[k * 32 + m] = trit(qs[m], k);
        }
        for m in 0..16 {
            out[160 + k * 16 + m] = trit(qs[32 + m], k);
        }
    }
    for k in 0..4 {
        for m in 0..4 {
            out[240 + k * 4 + m] = trit(qh[m], k);
        }
    }
    u16::from_le_bytes([d[0], d[1]])
}

/// Unpacks one TQ2_0 block into 0..=3 codes (t + 1; 3 is not ternary); returns `d` bits.
pub(crate) fn tq2_0_unpack(block: &[u8; TQ2_0_BLOCK_BYTES], out: &mut [u8; QK_K]) -> u16 {
    let (qs, d) = block.split_at(64);
    for h in 0..2 {
        for g in 0..4 {
            for m in 0..32 {
                out[128 * h + 32 * g + m] = (qs[32 * h + m] >> (2 * g)) & 3;
            }
        }
    }
    u16::from_le_bytes([d[0], d[1]])
}

/// Checks codes and scale for the TQ encoders and returns the f16 bits of `scale`.
fn check_input(ctx: &'static str, codes: &[i8], scale: f32) -> Result<u16> {
    if !codes.len().is_multiple_of(QK_K) {
        return Err(GgufError::input(
            ctx,
            format!("{} codes is not a multiple of {QK_K}", codes.len()),
        ));
    }
    if let Some(i) = codes.iter().position(|c| !(-1..=1).contains(c)) {
        return Err(GgufError::input(
            ctx,
            format!(
                "code {} at index {i} is not -1, 0 or +1",
                codes.get(i).copied().unwrap_or(0)
            ),
        ));
    }
    let any_nonzero = codes.iter().any(|&c| c != 0);
    if !scale.is_finite() || (any_nonzero && scale <= 0.0) || scale < 0.0 {
        return Err(GgufError::input(
            ctx,
            format!("scale {scale} must be finite and positive"),
        ));
    }
    if !is_exact_f16(scale) {
        return Err(GgufError::input(
            ctx,
            format!(
                "scale {scale} is not exactly representable in f16 (nearest is {}); \
                 round it first if that loss is acceptable",
                f16_to_f32(f32_to_f16_bits(scale))
            ),
        ));
    }
    Ok(f32_to_f16_bits(scale))
}

/// f16 `d` for one block: the tensor scale, or 0 for an all-zero block (what ggml's quantizer
/// writes, since it takes `d = max|x|` per block).
fn block_d(codes: &[i8], d_bits: u16) -> [u8; 2] {
    if codes.iter().all(|&c| c == 0) {
        [0, 0]
    } else {
        d_bits.to_le_bytes()
    }
}

/// Packs ternary `codes` (a multiple of 256, each -1/0/+1) with one per-tensor `scale` into TQ1_0.
/// `scale` must be exactly representable in f16 (it is stored as f16 in every block); all-zero
/// blocks get `d = 0` as ggml writes them. The bytes equal gguf-py's `quantize(codes * scale)`.
pub fn encode_tq1_0(codes: &[i8], scale: f32) -> Result<Vec<u8>> {
    let d_bits = check_input("TQ1_0 encoder", codes, scale)?;
    let (blocks, _) = codes.as_chunks::<QK_K>();
    let mut out = Vec::with_capacity(blocks.len() * TQ1_0_BLOCK_BYTES);
    for block in blocks {
        let c = |i: usize| (block[i] + 1) as u8;
        for m in 0..32 {
            out.push(pack_trits((0..5).map(|k| c(m + 32 * k))));
        }
        for m in 0..16 {
            out.push(pack_trits((0..5).map(|k| c(160 + m + 16 * k))));
        }
        for m in 0..4 {
            out.push(pack_trits((0..4).map(|k| c(240 + m + 4 * k)).chain([0])));
        }
        out.extend_from_slice(&block_d(block, d_bits));
    }
    Ok(out)
}

/// Packs ternary `codes` with one per-tensor `scale` into TQ2_0 (same rules as [`encode_tq1_0`]).
pub fn encode_tq2_0(codes: &[i8], scale: f32) -> Result<Vec<u8>> {
    let d_bits = check_input("TQ2_0 encoder", codes, scale)?;
    let (blocks, _) = codes.as_chunks::<QK_K>();
    let mut out = Vec::with_capacity(blocks.len() * TQ2_0_BLOCK_BYTES);
    for block in blocks {
        for h in 0..2 {
            for m in 0..32 {
                let byte = (0..4).fold(0u8, |acc, g| {
                    acc | (((block[128 * h + 32 * g + m] + 1) as u8) << (2 * g))
                });
                out.push(byte);
            }
        }
        out.extend_from_slice(&block_d(block, d_bits));
    }
    Ok(out)
}

/// Dequantizes TQ1_0 as ggml does: `(t) * d` per block. Caller guarantees whole blocks.
pub(crate) fn decode_tq1_0_into(data: &[u8], out: &mut [f32]) {
    let (blocks, _) = data.as_chunks::<TQ1_0_BLOCK_BYTES>();
    let (outs, _) = out.as_chunks_mut::<QK_K>();
    let mut codes = [0u8; QK_K];
    for (block, y) in blocks.iter().zip(outs) {
        let d = f16_to_f32(tq1_0_unpack(block, &mut codes));
        for (o, &q) in y.iter_mut().zip(&codes) {
            *o = f32::from(q as i8 - 1) * d;
        }
    }
}

/// Dequantizes TQ2_0 as ggml does: `(q - 1) * d`, so the non-ternary code 3 reads as `2d`.
pub(crate) fn decode_tq2_0_into(data: &[u8], out: &mut [f32]) {
    let (blocks, _) = data.as_chunks::<TQ2_0_BLOCK_BYTES>();
    let (outs, _) = out.as_chunks_mut::<QK_K>();
    let mut codes = [0u8; QK_K];
    for (block, y) in blocks.iter().zip(outs) {
        let d = f16_to_f32(tq2_0_unpack(block, &mut codes));
        for (o, &q) in y.iter_mut().zip(&codes) {
            *o = f32::from(q as i8 - 1) * d;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_tq1_0_byte_value_decodes_to_valid_trits_and_packing_inverts() {
        for byte in 0..=255u8 {
            for k in 0..5 {
                assert!(trit(byte, k) <= 2);
            }
        }
        for q in 0..243u16 {
            let digits: Vec<u8> = (0..5).rev().map(|k| (q / 3u16.pow(k) % 3) as u8).collect();
            let byte = pack_trits(digits.iter().copied());
            let back: Vec<u8> = (0..5).map(|k| trit(byte, k)).collect();
            assert_eq!(back, digits, "q = {q}");
        }
    }

    #[test]
    fn scale_rules() {
        let mut codes = vec![0i8; 256];
        assert!(
            encode_tq2_0(&codes, 0.0).is_ok(),
            "all-zero tensor may have scale 0"
        );
        codes[3] = 1;
        assert!(encode_tq2_0(&codes, 0.0).is_err());
        assert!(encode_tq2_0(&codes, -1.0).is_err());
        assert!(encode_tq2_0(&codes, f32::NAN).is_err());
        assert!(
            encode_tq1_0(&codes, 0.1).is_err(),
            "0.1 is not exact in f16"
        );
        assert!(encode_tq1_0(&codes, 0.099975586).is_ok());
        codes[4] = 2;
        assert!(encode_tq1_0(&codes, 1.0).is_err());
        assert!(encode_tq1_0(&codes[..255], 1.0).is_err());
    }

    #[test]
    fn tq2_0_layout_matches_spec_positions() {
        let mut codes = vec![0i8; 256];
        codes[128 + 32 * 3 + 5] = 1; // h=1, g=3, m=5 -> byte 37, bits 6-7 = 2
        codes[0] = -1; // byte 0 bits 0-1 = 0
        let bytes = encode_tq2_0(&codes, 1.0).unwrap();
        assert_eq!(bytes[37], 0b1001_0101);
        assert_eq!(bytes[0], 0b0101_0100);
        assert_eq!(&bytes[64..], &half::f16::ONE.to_le_bytes());
    }
}
