//! Ternary weights `W = t * scale` with one scale per tensor: recovering them from any of the
//! encodings a BitNet checkpoint can arrive in (TQ1_0, TQ2_0, I2_S, or a float type).

use super::float::f16_to_f32;
use super::tq::{QK_K, TQ1_0_BLOCK_BYTES, TQ2_0_BLOCK_BYTES, tq1_0_unpack, tq2_0_unpack};
use super::{check_len, decode_f32, i2s};
use crate::error::{GgufError, Result};
use crate::types::TensorType;

/// The absmean scale is clamped from below, as the reference quantizer does
/// (`weight.abs().mean().clamp_(min=1e-5)` in transformers' BitNet `WeightQuant`).
pub const ABSMEAN_MIN_SCALE: f32 = 1e-5;

/// A BitNet weight tensor: codes in {-1, 0, +1} and one f32 scale, `W[i] = codes[i] * scale`.
#[derive(Debug, Clone, PartialEq)]
pub struct Ternary {
    /// One code per element, row-major in the tensor's element order (ggml order: `dims[0]`
    /// varies fastest).
    pub codes: Vec<i8>,
    /// The per-tensor scale. 0 only for an all-zero TQ1_0/TQ2_0 tensor.
    pub scale: f32,
}

/// Decodes a tensor of `n` elements to ternary codes and its per-tensor scale.
///
/// - TQ1_0 / TQ2_0: every block with a non-zero code must carry the same f16 `d` (finite,
///   positive); all-zero blocks may carry any `d`. Per-block scales that differ are refused: such a
///   tensor is not a BitNet per-tensor ternary tensor. TQ2_0's code 3 (value `2d`) is refused.
/// - I2_S: code 3 and a non-finite or non-positive scale are refused.
/// - F32 / F16 / BF16: see [`ternarize_f32`].
/// - Other types are not ternary encodings and are refused.
pub fn decode_ternary(kind: TensorType, data: &[u8], n: usize) -> Result<Ternary> {
    match kind {
        TensorType::F32 | TensorType::F16 | TensorType::BF16 => {
            ternarize_f32(&decode_f32(kind, data, n)?)
        }
        TensorType::I2_S => {
            check_len(kind, data, n)?;
            let mut codes = vec![0i8; n];
            let scale = i2s::decode_codes(data, 0, &mut codes)?;
            Ok(Ternary { codes, scale })
        }
        TensorType::TQ1_0 => {
            check_len(kind, data, n)?;
            let (blocks, _) = data.as_chunks::<TQ1_0_BLOCK_BYTES>();
            decode_tq_blocks("TQ1_0", blocks, n, |block, codes| {
                Ok(tq1_0_unpack(block, codes))
            })
        }
        TensorType::TQ2_0 => {
            check_len(kind, data, n)?;
            let (blocks, _) = data.as_chunks::<TQ2_0_BLOCK_BYTES>();
            decode_tq_blocks("TQ2_0", blocks, n, |block, codes| {
                let d = tq2_0_unpack(block, codes);
                match codes.iter().position(|&c| c == 3) {
                    Some(j) => Err(j),
                    None => Ok(d),
                }
            })
        }
        TensorType::Q4_0 | TensorType::Q8_0 | TensorType::Q4_K | TensorType::Q6_K => {
            Err(GgufError::data(
                kind.name(),
                "not a ternary encoding: a BitNet linear weight must be TQ1_0, TQ2_0, I2_S or a float type",
            ))
        }
    }
}

/// Shared TQ block walk: `unpack` fills 0..=2 codes and returns the block's `d` bits, or the
/// in-block index of a non-ternary code.
fn decode_tq_blocks<const B: usize>(
    format: &'static str,
    blocks: &[[u8; B]],
    n: usize,
    unpack: impl Fn(&[u8; B], &mut [u8; QK_K]) -> Result<u16, usize>,
) -> Result<Ternary> {
    let mut codes = vec![0i8; n];
    let (outs, _) = codes.as_chunks_mut::<QK_K>();
    let mut raw = [0u8; QK_K];
    // (block index, d bits) of the first block holding a non-zero code.
    let mut shared: Option<(usize, u16)> = None;
    for (b, (block, out)) in blocks.iter().zip(outs).enumerate() {
        let d_bits = unpack(block, &mut raw).map_err(|j| {
            GgufError::data(
                format,
                format!(
                    "element {} (block {b}) has code 3 (value +2d), which is not ternary",
                    b * QK_K + j
                ),
            )
        })?;
        let mut nonzero = false;
        for (o, &q) in out.iter_mut().zip(&raw) {
            *o = q as i8 - 1;
            nonzero |= q != 1;
        }
        if !nonzero {
            continue;
        }
        match shared {
            None => {
                let d = f16_to_f32(d_bits);
                if !d.is_finite() || d <= 0.0 {
                    return Err(GgufError::data(
                        format,
                        format!("block {b} has scale d = {d}, which is not finite and positive"),
                    ));
                }
                shared = Some((b, d_bits));
            }
            Some((first, bits)) if bits != d_bits => {
                return Err(GgufError::data(
                    format,
                    format!(
                        "per-block scales differ: not a BitNet per-tensor ternary tensor \
                         (block {first} has d = {}, block {b} has d = {})",
                        f16_to_f32(bits),
                        f16_to_f32(d_bits)
                    ),
                ));
            }
            Some(_) => {}
        }
    }
    let scale = shared.map_or(0.0, |(_, bits)| f16_to_f32(bits));
    Ok(Ternary { codes, scale })
}

/// Turns float weights into ternary codes and one scale.
///
/// - If the non-zero values share exactly one magnitude `m` (a converter already wrote `t * s`),
///   the codes are the signs and `scale = m` exactly (bitnet.cpp's `max|W|` rule).
/// - Otherwise the values are a float master and are quantized with the absmean rule of the
///   reference (transformers' BitNet `WeightQuant`): `s = max(mean(|W|), 1e-5)`, then
///   `t = clamp(round_half_even(W * (1/s)), -1, 1)` in f32 and `scale = s`. The mean is computed
///   by summing `|W|` in f64 and dividing by `n`, then rounding once to f32; PyTorch sums in f32
///   pairwise, which can differ from this correctly rounded mean by an ulp on large tensors.
///   (An all-zero tensor gets `s = 1e-5` and all-zero codes.)
///
/// Refuses non-finite values.
pub fn ternarize_f32(values: &[f32]) -> Result<Ternary> {
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        return Err(GgufError::data(
            "float ternary",
            format!(
                "value {} at index {i} is not finite",
                values.get(i).copied().unwrap_or(0.0)
            ),
        ));
    }
    let mut magnitude: Option<f32> = None;
    let mut single = true;
    for &v in values {
        let a = v.abs();
        if a == 0.0 {
            continue;
        }
        match magnitude {
            None => magnitude = Some(a),
            Some(m) if m.to_bits() == a.to_bits() => {}
            Some(_) => {
                single = false;
                break;
            }
        }
    }
    if let (true, Some(m)) = (single, magnitude) {
        let codes = values
            .iter()
            .map(|&v| {
                if v > 0.0 {
                    1
                } else if v < 0.0 {
                    -1
                } else {
                    0
                }
            })
            .collect();
        return Ok(Ternary { codes, scale: m });
    }
    let sum: f64 = values.iter().map(|&v| f64::from(v.abs())).sum();
    let mean = if values.is_empty() {
        0.0
    } else {
        (sum / values.len() as f64) as f32
    };
    let scale = mean.max(ABSMEAN_MIN_SCALE);
    let inv = 1.0f32 / scale;
    let codes = values
        .iter()
        .map(|&v| (v * inv).round_ties_even().clamp(-1.0, 1.0) as i8)
        .collect();
    Ok(Ternary { codes, scale })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quants::{encode_f16, encode_tq1_0, encode_tq2_0};

    #[test]
    fn single_magnitude_floats_recover_codes_and_scale_exactly() {
        let t = [1i8, 0, -1, -1, 0, 1, 1, 0];
        let s = 1.4375f32;
        let w: Vec<f32> = t.iter().map(|&c| f32::from(c) * s).collect();
        let data = encode_f16(&w).unwrap();
        let got = decode_ternary(TensorType::F16, &data, 8).unwrap();
        assert_eq!(got.codes, t);
        assert_eq!(got.scale, s);
    }

    #[test]
    fn absmean_master_matches_reference_rule() {
        // mean |W| = (0.2 + 0.9 + 0.05 + 1.25) / 4 = 0.6
        let w = [0.2f32, -0.9, 0.05, 1.25];
        let got = ternarize_f32(&w).unwrap();
        let mean = ((0.2f32 as f64 + 0.9f32 as f64 + 0.05f32 as f64 + 1.25f32 as f64) / 4.0) as f32;
        assert_eq!(got.scale, mean);
        assert_eq!(got.codes, vec![0, -1, 0, 1]);
        // Exactly half a step rounds to even (0), not away from zero.
        let w = [0.5f32, 1.5, -1.0, 1.0];
        let got = ternarize_f32(&w).unwrap();
        assert_eq!(got.scale, 1.0);
        assert_eq!(got.codes, vec![0, 1, -1, 1]);
        let zero = ternarize_f32(&[0.0; 4]).unwrap();
        assert_eq!(zero.scale, ABSMEAN_MIN_SCALE);
        assert_eq!(zero.codes, vec![0; 4]);
        assert!(ternarize_f32(&[1.0, f32::NAN]).is_err());
    }

    #[test]
    fn tq_blocks_must_share_one_scale() {
        let mut codes = vec![0i8; 768];
        codes[1] = 1;
        codes[300] = -1;
        let mut bytes = encode_tq2_0(&codes, 0.5).unwrap();
        // Block 2 is all zero and may carry any d.
        bytes[66 * 2 + 64..66 * 3].copy_from_slice(&half::f16::from_f32(7.0).to_le_bytes());
        let t = decode_ternary(TensorType::TQ2_0, &bytes, 768).unwrap();
        assert_eq!(t.codes, codes);
        assert_eq!(t.scale, 0.5);
        // Block 1 holds a non-zero code with another d: refused.
        bytes[66 + 64..66 * 2].copy_from_slice(&half::f16::from_f32(0.25).to_le_bytes());
        let err = decode_ternary(TensorType::TQ2_0, &bytes, 768)
            .unwrap_err()
            .to_string();
        assert!(err.contains("per-block scales differ"), "{err}");

        let bytes = encode_tq1_0(&codes, 0.5).unwrap();
        let t = decode_ternary(TensorType::TQ1_0, &bytes, 768).unwrap();
        assert_eq!((t.codes, t.scale), (codes, 0.5));
    }

    #[test]
    fn tq2_0_code_3_and_wrong_types_are_refused() {
        let mut bytes = encode_tq2_0(&[0i8; 256], 1.0).unwrap();
        bytes[10] = 0b11 << 4;
        let err = decode_ternary(TensorType::TQ2_0, &bytes, 256)
            .unwrap_err()
            .to_string();
        assert!(err.contains("code 3"), "{err}");
        assert!(err.contains("element 74"), "{err}"); // g = 2, m = 10
        assert!(decode_ternary(TensorType::Q8_0, &[0; 34], 32).is_err());
        assert!(decode_ternary(TensorType::TQ2_0, &bytes[..65], 256).is_err());
    }
}
