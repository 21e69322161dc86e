//! bitnet.cpp's I2_S (ggml type 36 in Microsoft's fork), x86 layout.
//!
//! The tensor is flattened row-major and cut into blocks of 128 values; each block becomes 32
//! bytes, value `j` of a block at byte `j % 32`, bits `6 - 2*(j / 32)` (group 0 in bits 7-6), code
//! `t + 1` (-1 -> 0, 0 -> 1, +1 -> 2; 3 is invalid). After all blocks comes a 32-byte tail whose
//! first 4 bytes are the per-tensor f32 scale (little-endian), `W = t * scale`; the other 28
//! bytes are padding. Total: `n/4 + 32` bytes.

use crate::error::{GgufError, Result};

/// Values per packing block.
pub const QK_I2_S: usize = 128;
/// Bytes per packing block.
pub const BLOCK_BYTES: usize = 32;
/// Bytes of the tail holding the scale.
pub const TAIL_BYTES: usize = 32;

/// The 2-bit code of flat element `i` in the code section `body`; `None` past its end.
fn code_at(body: &[u8], i: usize) -> Option<u8> {
    let block = i / QK_I2_S;
    let j = i % QK_I2_S;
    let byte = *body.get(block * BLOCK_BYTES + j % 32)?;
    Some((byte >> (6 - 2 * (j / 32))) & 3)
}

/// Splits I2_S bytes into codes and the validated scale.
pub(crate) fn split(data: &[u8]) -> Result<(&[u8], f32)> {
    if data.len() < TAIL_BYTES || !(data.len() - TAIL_BYTES).is_multiple_of(BLOCK_BYTES) {
        return Err(GgufError::data(
            "I2_S",
            format!(
                "{} bytes is not whole 32-byte blocks plus a 32-byte tail",
                data.len()
            ),
        ));
    }
    let (body, tail) = data.split_at(data.len() - TAIL_BYTES);
    let scale = f32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]);
    if !scale.is_finite() || scale <= 0.0 {
        return Err(GgufError::data(
            "I2_S",
            format!(
                "per-tensor scale {scale} (tail bytes {:02x?}) is not a finite positive number",
                &tail[..4]
            ),
        ));
    }
    Ok((body, scale))
}

/// Decodes codes `start..start + out.len()` of the tensor into -1/0/+1, refusing code 3.
pub(crate) fn decode_codes(data: &[u8], start: usize, out: &mut [i8]) -> Result<f32> {
    let (body, scale) = split(data)?;
    let done = decode_blocks(body, start, out);
    for (k, o) in out.iter_mut().enumerate().skip(done) {
        let i = start.saturating_add(k);
        let code = code_at(body, i).ok_or_else(|| {
            GgufError::data(
                "I2_S",
                format!("element {i} is past the {} codes present", body.len() * 4),
            )
        })?;
        if code == 3 {
            return Err(GgufError::data(
                "I2_S",
                format!("element {i} has code 3, which is not a ternary value (codes are 0, 1, 2)"),
            ));
        }
        *o = code as i8 - 1;
    }
    Ok(scale)
}

/// The whole blocks of `out` from a block boundary `start`, four shifts of each 32-byte block
/// (vectorized; a model's tensors decode at memory speed, where the element-wise loop below took
/// seconds for 2B4T): the elements done, or 0 where a code 3 is among them (the element-wise loop
/// then finds and reports the first).
fn decode_blocks(body: &[u8], start: usize, out: &mut [i8]) -> usize {
    if !start.is_multiple_of(QK_I2_S) {
        return 0;
    }
    let first = start / QK_I2_S;
    // Past the end of the codes: none here (the element-wise loop reports it).
    let Some(rest) = first.checked_mul(BLOCK_BYTES).and_then(|b| body.get(b..)) else {
        return 0;
    };
    let n = (out.len() / QK_I2_S).min(rest.len() / BLOCK_BYTES);
    let (src, _) = rest[..n * BLOCK_BYTES].as_chunks::<BLOCK_BYTES>();
    let (dst, _) = out[..n * QK_I2_S].as_chunks_mut::<QK_I2_S>();
    let mut three = 0u8;
    for (d, b) in dst.iter_mut().zip(src) {
        for (g, part) in d.chunks_exact_mut(32).enumerate() {
            let shift = 6 - 2 * g;
            for (o, &byte) in part.iter_mut().zip(b) {
                let c = (byte >> shift) & 3;
                three |= c & (c >> 1);
                *o = c as i8 - 1;
            }
        }
    }
    if three != 0 { 0 } else { n * QK_I2_S }
}

/// Decodes elements `start..start + out.len()` to f32 (`t * scale`, exact).
pub(crate) fn decode_f32_range(data: &[u8], start: usize, out: &mut [f32]) -> Result<()> {
    let mut codes = vec![0i8; out.len()];
    let scale = decode_codes(data, start, &mut codes)?;
    for (o, &t) in out.iter_mut().zip(&codes) {
        *o = f32::from(t) * scale;
    }
    Ok(())
}

/// Packs ternary `codes` (a multiple of 128, each -1/0/+1) with a finite positive per-tensor
/// `scale` into I2_S, byte-identical to bitnet.cpp's `quantize_i2_s` on `codes * scale` (the 28
/// tail padding bytes are zero).
pub fn encode_i2_s(codes: &[i8], scale: f32) -> Result<Vec<u8>> {
    const CTX: &str = "I2_S encoder";
    if !codes.len().is_multiple_of(QK_I2_S) {
        return Err(GgufError::input(
            CTX,
            format!("{} codes is not a multiple of {QK_I2_S}", codes.len()),
        ));
    }
    if !scale.is_finite() || scale <= 0.0 {
        return Err(GgufError::input(
            CTX,
            format!("scale {scale} must be finite and positive"),
        ));
    }
    if let Some(i) = codes.iter().position(|c| !(-1..=1).contains(c)) {
        return Err(GgufError::input(
            CTX,
            format!(
                "code {} at index {i} is not -1, 0 or +1",
                codes.get(i).copied().unwrap_or(0)
            ),
        ));
    }
    let (blocks, _) = codes.as_chunks::<QK_I2_S>();
    let mut out = Vec::with_capacity(codes.len() / 4 + TAIL_BYTES);
    for block in blocks {
        for m in 0..32 {
            let byte = (0..4).fold(0u8, |acc, g| {
                acc | (((block[32 * g + m] + 1) as u8) << (6 - 2 * g))
            });
            out.push(byte);
        }
    }
    out.extend_from_slice(&scale.to_le_bytes());
    out.extend_from_slice(&[0u8; TAIL_BYTES - 4]);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_matches_bitnet_cpp() {
        let mut codes = vec![0i8; 256];
        codes[0] = 1; // block 0, group 0 -> byte 0 bits 7-6 = 2
        codes[32 + 1] = -1; // group 1, m = 1 -> byte 1 bits 5-4 = 0
        codes[128 + 96 + 31] = 1; // block 1, group 3, m = 31 -> byte 63 bits 1-0 = 2
        let bytes = encode_i2_s(&codes, 1.5).unwrap();
        assert_eq!(bytes.len(), 256 / 4 + 32);
        assert_eq!(bytes[0], 0b10_01_01_01);
        assert_eq!(bytes[1], 0b01_00_01_01);
        assert_eq!(bytes[63], 0b01_01_01_10);
        assert_eq!(bytes[2], 0b01_01_01_01);
        assert_eq!(&bytes[64..68], &1.5f32.to_le_bytes());
        let mut back = vec![0i8; 256];
        assert_eq!(decode_codes(&bytes, 0, &mut back).unwrap(), 1.5);
        assert_eq!(back, codes);
    }

    #[test]
    fn refuses_code_3_and_bad_scales() {
        let mut bytes = encode_i2_s(&[0i8; 128], 2.0).unwrap();
        bytes[5] = 0xFF;
        let mut out = vec![0i8; 128];
        let err = decode_codes(&bytes, 0, &mut out).unwrap_err().to_string();
        assert!(err.contains("code 3"), "{err}");
        for bad in [0.0f32, -1.0, f32::NAN, f32::INFINITY] {
            let mut bytes = encode_i2_s(&[0i8; 128], 2.0).unwrap();
            bytes[32..36].copy_from_slice(&bad.to_le_bytes());
            let err = decode_codes(&bytes, 0, &mut out).unwrap_err().to_string();
            assert!(err.contains("scale"), "{err}");
            assert!(encode_i2_s(&[0i8; 128], bad).is_err());
        }
        assert!(split(&[0u8; 31]).is_err());
        assert!(split(&[0u8; 33]).is_err());
        assert!(encode_i2_s(&[0i8; 64], 1.0).is_err());
    }

    #[test]
    fn block_decoding_equals_the_element_wise_layout_for_every_range() {
        // Codes from a fixed LCG: five blocks, decoded whole, from block boundaries (the
        // vectorized path) and from anywhere (the element-wise path), against `code_at`.
        let mut seed = 12345u32;
        let codes: Vec<i8> = (0..5 * QK_I2_S)
            .map(|_| {
                seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (seed >> 24) as i8 % 2
            })
            .collect();
        let bytes = encode_i2_s(&codes, 0.5).unwrap();
        for (start, len) in [
            (0, 640),
            (128, 384),
            (256, 200),
            (3, 300),
            (127, 1),
            (640, 0),
        ] {
            let mut out = vec![9i8; len];
            decode_codes(&bytes, start, &mut out).unwrap();
            assert_eq!(out, codes[start..start + len], "start {start} len {len}");
        }
        // Ranges past the codes are errors, from a block boundary or not.
        for start in [640, 768, 1 << 40, 641] {
            let err = decode_codes(&bytes, start, &mut [0i8; 128]).unwrap_err();
            assert!(err.to_string().contains("past the 640 codes"), "{err}");
        }
        // A code 3 inside a later block is reported at its element, whichever path meets it.
        let mut bad = bytes.clone();
        bad[2 * BLOCK_BYTES + 7] |= 0b0011_0000; // block 2, byte 7, group 1: element 256 + 32 + 7
        for start in [0, 128, 1] {
            let mut out = vec![0i8; 640 - start];
            let err = decode_codes(&bad, start, &mut out).unwrap_err().to_string();
            assert!(err.contains("element 295 has code 3"), "{err}");
        }
    }
}
