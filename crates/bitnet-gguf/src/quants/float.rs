//! The float encodings F32, F16 and BF16: decoding to f32 and encoding from f32 with
//! round-to-nearest-even, exactly as ggml converts (`GGML_FP32_TO_FP16`, `ggml_compute_fp32_to_bf16`).

use half::f16;

use crate::error::{GgufError, Result};

/// f16 bits to f32 (exact: every f16 is an f32).
pub fn f16_to_f32(bits: u16) -> f32 {
    f16::from_bits(bits).to_f32()
}

/// bf16 bits to f32 (exact: bf16 is the top half of an f32).
pub fn bf16_to_f32(bits: u16) -> f32 {
    f32::from_bits(u32::from(bits) << 16)
}

/// f32 to f16 bits, rounding to nearest even (what F16C's `_cvtss_sh(x, 0)` and ggml's software
/// fallback do). Values beyond the f16 range become infinity; callers that must be exact check.
pub fn f32_to_f16_bits(v: f32) -> u16 {
    f16::from_f32(v).to_bits()
}

/// f32 to bf16 bits with ggml's rule: NaN is kept quiet, everything else rounds to nearest even.
pub fn f32_to_bf16_bits(v: f32) -> u16 {
    let u = v.to_bits();
    if (u & 0x7fff_ffff) > 0x7f80_0000 {
        // NaN: keep sign and top mantissa bits, force the quiet bit.
        return ((u >> 16) | 64) as u16;
    }
    let rounded = (u64::from(u) + 0x7fff + u64::from((u >> 16) & 1)) >> 16;
    rounded as u16
}

/// True when `v` is exactly representable as an f16 (so storing it as f16 loses nothing).
pub fn is_exact_f16(v: f32) -> bool {
    f16_to_f32(f32_to_f16_bits(v)).to_bits() == v.to_bits()
}

/// Encodes finite f32 values as little-endian f16, rounding to nearest even. Refuses non-finite
/// inputs and finite values that round to infinity (|v| >= 65520), since either would silently
/// change a weight.
pub fn encode_f16(values: &[f32]) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(values.len() * 2);
    for (i, &v) in values.iter().enumerate() {
        if !v.is_finite() {
            return Err(GgufError::input(
                "F16 encoder",
                format!("value {v} at index {i} is not finite"),
            ));
        }
        let bits = f32_to_f16_bits(v);
        if !f16_to_f32(bits).is_finite() {
            return Err(GgufError::input(
                "F16 encoder",
                format!("value {v} at index {i} overflows f16 (max 65504)"),
            ));
        }
        out.extend_from_slice(&bits.to_le_bytes());
    }
    Ok(out)
}

/// Encodes finite f32 values as little-endian bf16, rounding to nearest even. Refuses
/// non-finite inputs and values that round to infinity.
pub fn encode_bf16(values: &[f32]) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(values.len() * 2);
    for (i, &v) in values.iter().enumerate() {
        if !v.is_finite() {
            return Err(GgufError::input(
                "BF16 encoder",
                format!("value {v} at index {i} is not finite"),
            ));
        }
        let bits = f32_to_bf16_bits(v);
        if !bf16_to_f32(bits).is_finite() {
            return Err(GgufError::input(
                "BF16 encoder",
                format!("value {v} at index {i} overflows bf16"),
            ));
        }
        out.extend_from_slice(&bits.to_le_bytes());
    }
    Ok(out)
}

/// Encodes f32 values as little-endian f32 (for symmetry with the other encoders).
pub fn encode_f32(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// Decodes little-endian F32 bytes; the caller guarantees `data.len() == 4 * out.len()`.
pub(crate) fn decode_f32_into(data: &[u8], out: &mut [f32]) {
    let (words, _) = data.as_chunks::<4>();
    for (o, w) in out.iter_mut().zip(words) {
        *o = f32::from_le_bytes(*w);
    }
}

/// Decodes little-endian F16 bytes; the caller guarantees `data.len() == 2 * out.len()`.
pub(crate) fn decode_f16_into(data: &[u8], out: &mut [f32]) {
    let (halves, _) = data.as_chunks::<2>();
    for (o, h) in out.iter_mut().zip(halves) {
        *o = f16_to_f32(u16::from_le_bytes(*h));
    }
}

/// Decodes little-endian BF16 bytes; the caller guarantees `data.len() == 2 * out.len()`.
pub(crate) fn decode_bf16_into(data: &[u8], out: &mut [f32]) {
    let (halves, _) = data.as_chunks::<2>();
    for (o, h) in out.iter_mut().zip(halves) {
        *o = bf16_to_f32(u16::from_le_bytes(*h));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_rounds_to_nearest_even_and_keeps_nan_quiet() {
        // 1 + 2^-8 is exactly halfway between two bf16 values: ties go to the even mantissa (1.0).
        assert_eq!(f32_to_bf16_bits(1.0 + 1.0 / 256.0), 0x3f80);
        // 1 + 3*2^-8 is halfway between odd 1+2^-7 and even 1+2^-6: goes up to even.
        assert_eq!(f32_to_bf16_bits(1.0 + 3.0 / 256.0), 0x3f82);
        assert_eq!(f32_to_bf16_bits(1.0 + 1.0 / 256.0 + 1e-6), 0x3f81);
        let nan = f32_to_bf16_bits(f32::from_bits(0x7f80_0001));
        assert!(bf16_to_f32(nan).is_nan());
        assert_eq!(nan, 0x7fc0);
    }

    #[test]
    fn f16_encoder_refuses_overflow_and_non_finite() {
        assert!(encode_f16(&[65504.0]).is_ok());
        assert!(encode_f16(&[65520.0]).is_err());
        assert!(encode_f16(&[f32::NAN]).is_err());
        assert!(encode_bf16(&[f32::INFINITY]).is_err());
        assert!(encode_bf16(&[f32::MAX]).is_err());
        assert_eq!(
            encode_f16(&[1.0, -2.0]).unwrap(),
            vec![0x00, 0x3c, 0x00, 0xc0]
        );
    }

    #[test]
    fn exact_f16_detection() {
        assert!(is_exact_f16(0.75));
        assert!(is_exact_f16(-0.0));
        assert!(!is_exact_f16(0.1));
        assert!(!is_exact_f16(1e6));
    }
}
