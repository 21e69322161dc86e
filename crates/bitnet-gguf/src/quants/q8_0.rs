//! Q8_0: blocks of 32 values stored as an f16 scale `d` followed by 32 signed bytes; `x = q * d`.
//! The encoder is ggml's `quantize_row_q8_0_ref` (also gguf-py's `Q8_0.quantize_blocks`).

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
