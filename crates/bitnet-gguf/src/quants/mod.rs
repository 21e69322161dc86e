//! Pure, bounds-checked codecs for the ggml tensor encodings a BitNet engine meets: float types,
//! Q8_0, Q6_K, Q4_K and Q4_0 (embeddings and heads), and the ternary packings TQ1_0, TQ2_0 and
//! I2_S.
//!
//! Decoders take `&[u8]` and an element count and check that the byte length is exactly what the
//! format needs before allocating anything, so a hostile length can never size an allocation.

#[cfg(target_arch = "x86_64")]
mod blocks32;
pub mod dot;
pub mod float;
pub mod i2s;
pub mod q4_0;
pub mod q4_k;
pub mod q6_k;
mod q6_k_exact;
pub mod q8_0;
pub mod ternary;
pub mod tq;

pub use dot::{DotKernel, QuantizedActs, dot_rows_f32, supports_dot};
pub use float::{encode_bf16, encode_f16, encode_f32};
pub use i2s::encode_i2_s;
pub use q4_0::encode_q4_0;
pub use q4_k::encode_q4_k;
pub use q6_k::encode_q6_k;
pub use q8_0::encode_q8_0;
pub use ternary::{Ternary, decode_ternary, ternarize_f32};
pub use tq::{encode_tq1_0, encode_tq2_0};

use crate::error::{GgufError, Result};
use crate::types::TensorType;

/// Checks that `data` is exactly the size `kind` needs for `n` elements.
pub(crate) fn check_len(kind: TensorType, data: &[u8], n: usize) -> Result<()> {
    let expected = kind.n_bytes(n as u64)?;
    if data.len() as u64 != expected {
        return Err(GgufError::data(
            kind.name(),
            format!(
                "{n} elements need {expected} bytes, but {} were given",
                data.len()
            ),
        ));
    }
    Ok(())
}

/// Decodes `data` into `out`; the caller has checked `data.len() == kind.n_bytes(out.len())`.
fn decode_into(kind: TensorType, data: &[u8], out: &mut [f32]) -> Result<()> {
    match kind {
        TensorType::F32 => float::decode_f32_into(data, out),
        TensorType::F16 => float::decode_f16_into(data, out),
        TensorType::BF16 => float::decode_bf16_into(data, out),
        TensorType::Q4_0 => q4_0::decode_into(data, out),
        TensorType::Q8_0 => q8_0::decode_into(data, out),
        TensorType::Q4_K => q4_k::decode_into(data, out),
        TensorType::Q6_K => q6_k::decode_into(data, out),
        TensorType::TQ1_0 => tq::decode_tq1_0_into(data, out),
        TensorType::TQ2_0 => tq::decode_tq2_0_into(data, out),
        TensorType::I2_S => i2s::decode_f32_range(data, 0, out)?,
    }
    Ok(())
}

/// Dequantizes a whole tensor of `n` elements to f32, value for value what ggml's
/// `dequantize_row_*` (or `to_float`) produces. TQ1_0/TQ2_0 use each block's own `d` (TQ2_0's
/// code 3 reads as `2d`, as in ggml); I2_S refuses code 3 and invalid scales.
pub fn decode_f32(kind: TensorType, data: &[u8], n: usize) -> Result<Vec<f32>> {
    check_len(kind, data, n)?;
    let mut out = vec![0.0f32; n];
    decode_into(kind, data, &mut out)?;
    Ok(out)
}

/// Dequantizes rows `row_index..row_index + out.len() / row_len` of a tensor whose rows hold
/// `row_len` elements, without touching the rest: lets a large embedding or head be read one row
/// at a time. `data` is the whole tensor's bytes; `out.len()` must be a non-zero multiple of
/// `row_len`. For I2_S the rows are located in the flat code section and the scale is read from
/// the tensor tail.
pub fn decode_rows_f32(
    kind: TensorType,
    data: &[u8],
    row_len: usize,
    row_index: usize,
    out: &mut [f32],
) -> Result<()> {
    if row_len == 0 || out.is_empty() || !out.len().is_multiple_of(row_len) {
        return Err(GgufError::data(
            kind.name(),
            format!(
                "output of {} values is not a non-zero multiple of the row length {row_len}",
                out.len()
            ),
        ));
    }
    let n_rows = out.len() / row_len;
    let out_of_range = || {
        GgufError::data(
            kind.name(),
            format!(
                "rows {row_index}..{} of {row_len} elements are past the end of {} bytes",
                row_index.saturating_add(n_rows),
                data.len()
            ),
        )
    };
    if kind == TensorType::I2_S {
        let start = row_index.checked_mul(row_len).ok_or_else(out_of_range)?;
        let codes = data.len().saturating_sub(i2s::TAIL_BYTES).saturating_mul(4);
        if start.checked_add(out.len()).is_none_or(|end| end > codes) {
            return Err(out_of_range());
        }
        return i2s::decode_f32_range(data, start, out);
    }
    let row_bytes = kind.row_bytes(row_len as u64)?;
    let start = row_bytes
        .checked_mul(row_index as u64)
        .ok_or_else(out_of_range)?;
    let len = row_bytes
        .checked_mul(n_rows as u64)
        .ok_or_else(out_of_range)?;
    let end = start.checked_add(len).ok_or_else(out_of_range)?;
    let slice = usize::try_from(start)
        .ok()
        .zip(usize::try_from(end).ok())
        .and_then(|(s, e)| data.get(s..e))
        .ok_or_else(out_of_range)?;
    decode_into(kind, slice, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_decoding_equals_the_slice_of_a_full_decode() {
        let values: Vec<f32> = (0..1024)
            .map(|i| ((i * 7919) % 257) as f32 / 64.0 - 2.0)
            .collect();
        for (kind, data) in [
            (TensorType::Q8_0, encode_q8_0(&values).unwrap()),
            (TensorType::Q4_0, encode_q4_0(&values).unwrap()),
            (TensorType::Q6_K, encode_q6_k(&values).unwrap()),
            (TensorType::Q4_K, encode_q4_k(&values).unwrap()),
            (TensorType::F16, encode_f16(&values).unwrap()),
            (TensorType::BF16, encode_bf16(&values).unwrap()),
            (TensorType::F32, encode_f32(&values)),
        ] {
            let full = decode_f32(kind, &data, 1024).unwrap();
            let mut row = vec![0.0f32; 256];
            for r in 0..4 {
                decode_rows_f32(kind, &data, 256, r, &mut row).unwrap();
                assert_eq!(row, full[r * 256..(r + 1) * 256], "{kind} row {r}");
            }
            let mut two = vec![0.0f32; 512];
            decode_rows_f32(kind, &data, 256, 2, &mut two).unwrap();
            assert_eq!(two, full[512..]);
            assert!(decode_rows_f32(kind, &data, 256, 3, &mut two).is_err());
            assert!(decode_rows_f32(kind, &data, 256, usize::MAX, &mut row).is_err());
            assert!(decode_rows_f32(kind, &data, 0, 0, &mut row).is_err());
        }
    }

    #[test]
    fn i2_s_rows_and_ternary_rows() {
        let codes: Vec<i8> = (0..512).map(|i| (i % 3) as i8 - 1).collect();
        let data = encode_i2_s(&codes, 2.5).unwrap();
        let full = decode_f32(TensorType::I2_S, &data, 512).unwrap();
        let mut row = vec![0.0f32; 64];
        for r in 0..8 {
            decode_rows_f32(TensorType::I2_S, &data, 64, r, &mut row).unwrap();
            assert_eq!(row, full[r * 64..(r + 1) * 64]);
        }
        assert!(decode_rows_f32(TensorType::I2_S, &data, 64, 8, &mut row).is_err());
        for (kind, data) in [
            (TensorType::TQ1_0, encode_tq1_0(&codes, 2.5).unwrap()),
            (TensorType::TQ2_0, encode_tq2_0(&codes, 2.5).unwrap()),
        ] {
            let full2 = decode_f32(kind, &data, 512).unwrap();
            assert_eq!(full2, full);
            let mut row = vec![0.0f32; 256];
            decode_rows_f32(kind, &data, 256, 1, &mut row).unwrap();
            assert_eq!(row, full[256..]);
        }
    }

    #[test]
    fn wrong_lengths_are_refused_before_allocating() {
        assert!(decode_f32(TensorType::F32, &[0; 8], 3).is_err());
        assert!(decode_f32(TensorType::F32, &[0; 8], usize::MAX).is_err());
        assert!(decode_f32(TensorType::TQ1_0, &[0; 54], 512).is_err());
        assert!(decode_f32(TensorType::I2_S, &[0; 64], 1 << 60).is_err());
    }
}
