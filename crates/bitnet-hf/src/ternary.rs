//! Decoding stored tensors into what the engine runs: f32 vectors for float tensors, and
//! ternary codes plus one per-tensor scale for every BitLinear weight, whichever of the
//! Hugging Face layouts the checkpoint uses.
//!
//! The semantics below were read from transformers' `integrations/bitnet.py`:
//! - packing (`pack_weights`/`unpack_weights`): uint8 `[out/4, in]`; with `R = out/4`, bits
//!   `2k..2k+1` of byte `(r, c)` hold row `k*R + r`, column `c`, as code `t + 1`;
//! - `BitLinear` (`linear_class: bitlinear`): `post_quant_process` returns
//!   `y / (input_scale * weight_scale)`, so the stored `weight_scale` is the reciprocal of the
//!   effective weight scale;
//! - `AutoBitLinear` offline (`linear_class: autobitlinear`): `output * weight_scale`, so
//!   `W = t * weight_scale`;
//! - `AutoBitLinear` online: `WeightQuant` runs on the float master every forward:
//!   `s = 1 / mean(|W|).clamp(min=1e-5)`, `round(W * s).clamp(-1, 1) / s` (computed in f32).

use crate::config::{LinearClass, QuantizationMode};
use crate::{DType, HfError, HfModel, TensorRef};

/// A BitLinear weight ready for an integer kernel: `W = codes * scale`.
#[derive(Debug, Clone, PartialEq)]
pub struct TernaryWeight {
    /// Row-major `[out, in]`, each -1, 0 or +1.
    pub codes: Vec<i8>,
    /// The one per-tensor scale, always multiplied (`y = (x_q . t) * scale / s_x`), whatever the
    /// checkpoint's own convention was.
    pub scale: f32,
}

/// Converts a float tensor (F32, F16, BF16, or F64 rounded to f32) to `Vec<f32>`.
///
/// Little-endian, as safetensors stores everything. The byte length is checked against the
/// shape, so a hand-built [`TensorRef`] with inconsistent fields is an error, not a panic.
pub fn decode_f32(tensor: &TensorRef<'_>) -> Result<Vec<f32>, HfError> {
    let numel = tensor
        .shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| {
            HfError::tensor(tensor.name, format!("shape {:?} overflows", tensor.shape))
        })?;
    let Some(size) = tensor
        .dtype
        .size_in_bytes()
        .filter(|_| tensor.dtype.is_float())
    else {
        return Err(HfError::Dtype {
            tensor: tensor.name.to_string(),
            found: tensor.dtype,
            expected: "F32, F16, BF16 or F64",
        });
    };
    if numel.checked_mul(size) != Some(tensor.data.len()) {
        return Err(HfError::tensor(
            tensor.name,
            format!(
                "{} bytes of data for shape {:?} of {}",
                tensor.data.len(),
                tensor.shape,
                tensor.dtype
            ),
        ));
    }
    let d = tensor.data;
    Ok(match tensor.dtype {
        DType::F32 => d
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        DType::F16 => d
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        DType::BF16 => d
            .chunks_exact(2)
            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        DType::F64 => d
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32)
            .collect(),
        _ => Vec::new(), // unreachable: filtered by is_float above
    })
}

fn packed_len(out_features: usize, in_features: usize) -> Result<usize, HfError> {
    if !out_features.is_multiple_of(4) {
        return Err(HfError::Ternary(format!(
            "out_features {out_features} is not a multiple of 4, so it cannot be packed along the output dimension"
        )));
    }
    (out_features / 4)
        .checked_mul(in_features)
        .ok_or_else(|| HfError::Ternary(format!("{out_features} x {in_features} overflows")))
}

/// True when some 2-bit field of `b` is 3 (the one invalid code).
#[inline]
fn has_code3(b: u8) -> bool {
    b & (b >> 1) & 0x55 != 0
}

/// Unpacks Hugging Face's 2-bit packed ternary weights (uint8 `[out/4, in]`) to row-major
/// `[out, in]` codes in {-1, 0, +1}.
///
/// With `R = out/4`, bits `2k..2k+1` of byte `(r, c)` hold row `k*R + r` as `t + 1`. Code 3 never
/// comes out of the packer, so it is reported (with its row and column) instead of guessed.
pub fn unpack_ternary(
    packed: &[u8],
    out_features: usize,
    in_features: usize,
) -> Result<Vec<i8>, HfError> {
    let block = packed_len(out_features, in_features)?;
    if packed.len() != block {
        return Err(HfError::Ternary(format!(
            "{} packed bytes, expected {block} for [{out_features}, {in_features}] packed as [{}, {in_features}]",
            packed.len(),
            out_features / 4
        )));
    }
    if let Some(i) = packed.iter().position(|&b| has_code3(b)) {
        let b = packed[i];
        let k = (0..4).find(|k| (b >> (2 * k)) & 3 == 3).unwrap_or(0);
        let (r, c) = (i / in_features.max(1), i % in_features.max(1));
        return Err(HfError::Ternary(format!(
            "invalid 2-bit code 3 at row {}, column {c} (packed byte {i} = {b:#04x})",
            k * (out_features / 4) + r
        )));
    }
    let mut out = vec![0i8; block * 4];
    if block == 0 {
        return Ok(out);
    }
    for (k, dst) in out.chunks_exact_mut(block).enumerate() {
        let shift = 2 * k as u32;
        for (d, &b) in dst.iter_mut().zip(packed) {
            *d = ((b >> shift) & 3) as i8 - 1;
        }
    }
    Ok(out)
}

/// Packs row-major `[out, in]` ternary codes the way transformers' `pack_weights` does; the
/// inverse of [`unpack_ternary`]. Used to build test fixtures and converters.
pub fn pack_ternary(
    codes: &[i8],
    out_features: usize,
    in_features: usize,
) -> Result<Vec<u8>, HfError> {
    let block = packed_len(out_features, in_features)?;
    if Some(codes.len()) != block.checked_mul(4) {
        return Err(HfError::Ternary(format!(
            "{} codes, expected {out_features} x {in_features}",
            codes.len()
        )));
    }
    if let Some(i) = codes.iter().position(|c| !(-1..=1).contains(c)) {
        return Err(HfError::Ternary(format!(
            "code {} at row {}, column {} is not -1, 0 or 1",
            codes[i],
            i / in_features.max(1),
            i % in_features.max(1)
        )));
    }
    let mut packed = vec![0u8; block];
    if block == 0 {
        return Ok(packed);
    }
    for (k, src) in codes.chunks_exact(block).enumerate() {
        for (p, &t) in packed.iter_mut().zip(src) {
            *p |= ((t + 1) as u8) << (2 * k);
        }
    }
    Ok(packed)
}

/// Ternarizes a float master exactly as transformers' `WeightQuant` does, in f32.
///
/// `scale_inv = 1.0f32 / max(mean(|W|), 1e-5)`, `t = clamp(round_half_even(W * scale_inv), -1, 1)`,
/// effective scale `1.0f32 / scale_inv` (what `/ s` gives for `t = ±1`). Multiplying by the f32
/// reciprocal, rather than dividing by the mean, is what makes the codes match torch's bit for
/// bit at rounding boundaries.
///
/// The mean is summed in f64 and rounded once to f32. torch sums in f32 (cascaded), so on a real
/// tensor the two means can differ in the last bit; that can move a code only for a weight
/// within about one f32 ulp of a ±0.5 boundary.
pub fn absmean_ternarize(values: &[f32]) -> TernaryWeight {
    let sum: f64 = values.iter().map(|v| f64::from(v.abs())).sum();
    let mean = if values.is_empty() {
        0.0f32
    } else {
        (sum / values.len() as f64) as f32
    };
    let scale_inv = 1.0f32 / mean.max(1e-5f32);
    let codes = values
        .iter()
        .map(|&w| (w * scale_inv).round_ties_even().clamp(-1.0, 1.0) as i8)
        .collect();
    TernaryWeight {
        codes,
        scale: 1.0f32 / scale_inv,
    }
}

/// Recovers `t` and `s` from a tensor already stored as `t * s` (exactly one non-zero
/// magnitude, as fake-quantizing converters write): `s = max|W|`, `t = sign(W)`, bitnet.cpp's
/// rule. `None` when the tensor has several magnitudes or is all zero.
pub fn exact_ternary(values: &[f32]) -> Option<TernaryWeight> {
    let mut mag: Option<f32> = None;
    for v in values {
        let a = v.abs();
        if a == 0.0 {
            continue;
        }
        match mag {
            None => mag = Some(a),
            Some(m) if m == a => {}
            Some(_) => return None,
        }
    }
    let scale = mag?;
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
    Some(TernaryWeight { codes, scale })
}

fn check_shape(t: &TensorRef<'_>, expected: &[usize]) -> Result<(), HfError> {
    if t.shape != expected {
        return Err(HfError::Shape {
            tensor: t.name.to_string(),
            expected: expected.to_vec(),
            found: t.shape.clone(),
        });
    }
    Ok(())
}

fn finite_values(t: &TensorRef<'_>) -> Result<Vec<f32>, HfError> {
    let v = decode_f32(t)?;
    if let Some(i) = v.iter().position(|x| !x.is_finite()) {
        return Err(HfError::tensor(
            t.name,
            format!("element {i} is {} (not finite)", v[i]),
        ));
    }
    Ok(v)
}

/// Reads a one-element `weight_scale` (shape `[]`, `[1]` or any all-ones shape, any float dtype).
fn read_scale(model: &HfModel, name: &str) -> Result<f32, HfError> {
    let t = model.tensor(name)?;
    if t.shape.iter().product::<usize>() != 1 {
        return Err(HfError::Shape {
            tensor: name.to_string(),
            expected: vec![1],
            found: t.shape.clone(),
        });
    }
    let v = decode_f32(&t)?.first().copied().unwrap_or(f32::NAN);
    if !(v.is_finite() && v > 0.0) {
        return Err(HfError::tensor(
            name,
            format!("weight_scale {v} is not a positive finite number"),
        ));
    }
    Ok(v)
}

/// Loads the BitLinear `name_prefix` (e.g. `model.layers.0.self_attn.q_proj`) as ternary codes
/// plus one multiplying scale, whichever layout the checkpoint uses:
///
/// - **packed uint8** `[out/4, in]` + `weight_scale`: `autobitlinear` gives
///   `scale = weight_scale`; `bitlinear` (older 1bitLLM checkpoints) stores the reciprocal, so
///   `scale = 1 / weight_scale` (f32 division). A packed weight with no `quantization_config`
///   is refused: nothing says which of the two conventions applies.
/// - **float** `[out, in]` (F32/F16/BF16/F64) with `quantization_mode: online` (2B4T-bf16): always
///   the absmean rule ([`absmean_ternarize`]), exactly what transformers runs, even when the
///   tensor happens to hold one magnitude; the exact-recovery shortcut would give a different
///   scale there (a `t * s` master with a fraction `f` of non-zeros has absmean scale `f * s`).
/// - **float** with no online quantization config: a tensor of the form `t * s` is recovered
///   exactly ([`exact_ternary`]); any other tensor is ternarized with absmean.
/// - **float** holding raw codes in {-1, 0, 1} next to a `weight_scale` (offline, unpacked):
///   the codes are taken as is and the scale follows `linear_class` as for packed weights.
///   Offline float weights that are not ternary are refused: transformers would run them as a
///   float matmul, which a BitNet engine must not.
///
/// Shapes are checked against `out_features` x `in_features`; errors name the tensor.
pub fn load_linear(
    model: &HfModel,
    name_prefix: &str,
    out_features: usize,
    in_features: usize,
) -> Result<TernaryWeight, HfError> {
    let weight_name = format!("{name_prefix}.weight");
    let scale_name = format!("{name_prefix}.weight_scale");
    let w = model.tensor(&weight_name)?;
    let quant = model.config().quantization_config.as_ref();
    if let Some(q) = quant
        && q.quant_method != "bitnet"
    {
        return Err(HfError::tensor(
            &weight_name,
            format!(
                "quantization_config.quant_method {:?} is not supported (only \"bitnet\")",
                q.quant_method
            ),
        ));
    }
    let wrap = |e: HfError| match e {
        HfError::Ternary(m) => HfError::tensor(&weight_name, m),
        other => other,
    };
    let class_scale = |ws: f32| -> Result<f32, HfError> {
        match quant.map(|q| q.linear_class) {
            Some(LinearClass::AutoBitLinear) => Ok(ws),
            Some(LinearClass::BitLinear) => Ok(1.0f32 / ws),
            None => Err(HfError::tensor(
                &weight_name,
                "has a weight_scale but config.json has no quantization_config, so it is unknown \
                 whether the scale multiplies (autobitlinear) or divides (bitlinear)",
            )),
        }
    };

    match w.dtype {
        DType::U8 => {
            if !out_features.is_multiple_of(4) {
                return Err(HfError::tensor(
                    &weight_name,
                    format!(
                        "packed along the output dimension, but out_features {out_features} is not a multiple of 4"
                    ),
                ));
            }
            check_shape(&w, &[out_features / 4, in_features])?;
            if !model.contains(&scale_name) {
                return Err(HfError::tensor(
                    &weight_name,
                    format!("packed ternary weight without its scale tensor {scale_name}"),
                ));
            }
            let ws = read_scale(model, &scale_name)?;
            let scale = class_scale(ws)?;
            let codes = unpack_ternary(w.data, out_features, in_features).map_err(wrap)?;
            Ok(TernaryWeight { codes, scale })
        }
        d if d.is_float() => {
            check_shape(&w, &[out_features, in_features])?;
            let values = finite_values(&w)?;
            let online = quant.map(|q| q.quantization_mode) == Some(QuantizationMode::Online);
            if !online && model.contains(&scale_name) {
                if let Some(i) = values
                    .iter()
                    .position(|&v| v != 0.0 && v != 1.0 && v != -1.0)
                {
                    return Err(HfError::tensor(
                        &weight_name,
                        format!(
                            "float weight stored with {scale_name} must hold ternary codes, but element {i} is {}",
                            values[i]
                        ),
                    ));
                }
                let ws = read_scale(model, &scale_name)?;
                let scale = class_scale(ws)?;
                let codes = values.iter().map(|&v| v as i8).collect();
                return Ok(TernaryWeight { codes, scale });
            }
            if online {
                return Ok(absmean_ternarize(&values));
            }
            Ok(exact_ternary(&values).unwrap_or_else(|| absmean_ternarize(&values)))
        }
        other => Err(HfError::Dtype {
            tensor: weight_name,
            found: other,
            expected: "U8 (packed ternary) or F32/F16/BF16/F64 (float master)",
        }),
    }
}

/// Loads a float tensor (embedding, norm) as f32 after checking its shape.
pub fn load_float(
    model: &HfModel,
    name: &str,
    expected_shape: &[usize],
) -> Result<Vec<f32>, HfError> {
    let t = model.tensor(name)?;
    check_shape(&t, expected_shape)?;
    decode_f32(&t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpack_matches_transformers_docstring_example() {
        // transformers' unpack_weights docstring: packed [[0b10100001, 0b00011000],
        // [0b10010000, 0b00001010]] unpacks to the 8 x 2 matrix below.
        let packed = [0b1010_0001u8, 0b0001_1000, 0b1001_0000, 0b0000_1010];
        let codes = unpack_ternary(&packed, 8, 2).unwrap();
        let expected: [[i8; 2]; 8] = [
            [0, -1],
            [-1, 1],
            [-1, 1],
            [-1, 1],
            [1, 0],
            [0, -1],
            [1, -1],
            [1, -1],
        ];
        assert_eq!(codes, expected.concat());
        assert_eq!(pack_ternary(&codes, 8, 2).unwrap(), packed);
    }

    #[test]
    fn strided_row_blocks() {
        // out = 8 (R = 2), in = 1: byte r holds rows r, 2+r, 4+r, 6+r.
        let codes: Vec<i8> = vec![1, 0, -1, 1, 0, 0, -1, 1];
        let packed = pack_ternary(&codes, 8, 1).unwrap();
        // byte 0: rows 0,2,4,6 = 1,-1,0,-1 -> codes 2,0,1,0 -> 0b00_01_00_10;
        // byte 1: rows 1,3,5,7 = 0,1,0,1 -> codes 1,2,1,2 -> 0b10_01_10_01.
        assert_eq!(packed, vec![0b0001_0010, 0b1001_1001]);
        assert_eq!(unpack_ternary(&packed, 8, 1).unwrap(), codes);
    }

    #[test]
    fn code3_and_bad_sizes_are_errors() {
        let e = unpack_ternary(&[0b0000_1100], 4, 1)
            .unwrap_err()
            .to_string();
        assert!(e.contains("code 3") && e.contains("row 1"), "{e}");
        assert!(unpack_ternary(&[0; 3], 4, 1).is_err());
        assert!(
            unpack_ternary(&[0; 3], 6, 1)
                .unwrap_err()
                .to_string()
                .contains("multiple of 4")
        );
        assert!(pack_ternary(&[2, 0, 0, 0], 4, 1).is_err());
        assert!(pack_ternary(&[0, 0, 0], 4, 1).is_err());
        assert!(unpack_ternary(&[], usize::MAX - 3, 8).is_err());
        assert_eq!(unpack_ternary(&[], 0, 5).unwrap(), Vec::<i8>::new());
        assert_eq!(unpack_ternary(&[], 8, 0).unwrap(), Vec::<i8>::new());
    }

    #[test]
    fn absmean_matches_weightquant_arithmetic() {
        // mean |W| = 0.5 -> s = 2: 0.2*2 = 0.4 -> 0, 0.25*2 = 0.5 -> 0 (ties to even),
        // 0.75*2 = 1.5 -> 2 -> clamp 1, -1.0 -> -2 -> -1, 0.3*2 = 0.6 -> 1.
        let w = [0.2f32, 0.25, 0.75, -1.0, 0.3, -0.5];
        let t = absmean_ternarize(&w);
        assert_eq!(t.codes, vec![0, 0, 1, -1, 1, -1]);
        assert_eq!(t.scale, 0.5);
        let zero = absmean_ternarize(&[0.0; 4]);
        assert_eq!(zero.codes, vec![0; 4]);
        assert_eq!(zero.scale, 1.0 / (1.0 / 1e-5f32));
    }

    #[test]
    fn exact_recovery() {
        let t = exact_ternary(&[0.5, -0.5, 0.0, -0.0, 0.5]).unwrap();
        assert_eq!(t.codes, vec![1, -1, 0, 0, 1]);
        assert_eq!(t.scale, 0.5);
        assert!(exact_ternary(&[0.5, 0.25]).is_none());
        assert!(exact_ternary(&[0.0, 0.0]).is_none());
    }

    #[test]
    fn decode_checks_length_and_dtype() {
        let bytes = 1.5f32.to_le_bytes();
        let t = TensorRef {
            name: "x",
            dtype: DType::F32,
            shape: vec![1],
            data: &bytes,
        };
        assert_eq!(decode_f32(&t).unwrap(), vec![1.5]);
        let t = TensorRef {
            name: "x",
            dtype: DType::F32,
            shape: vec![2],
            data: &bytes,
        };
        assert!(decode_f32(&t).unwrap_err().to_string().contains("tensor x"));
        let t = TensorRef {
            name: "x",
            dtype: DType::U8,
            shape: vec![4],
            data: &bytes,
        };
        assert!(matches!(decode_f32(&t), Err(HfError::Dtype { .. })));
        let t = TensorRef {
            name: "x",
            dtype: DType::F32,
            shape: vec![usize::MAX, 2],
            data: &bytes,
        };
        assert!(decode_f32(&t).is_err());
        let b = half::bf16::from_f32(-2.5).to_le_bytes();
        let t = TensorRef {
            name: "x",
            dtype: DType::BF16,
            shape: vec![],
            data: &b,
        };
        assert_eq!(decode_f32(&t).unwrap(), vec![-2.5]);
        let h = half::f16::from_f32(0.125).to_le_bytes();
        let t = TensorRef {
            name: "x",
            dtype: DType::F16,
            shape: vec![1, 1],
            data: &h,
        };
        assert_eq!(decode_f32(&t).unwrap(), vec![0.125]);
        let d = 3.25f64.to_le_bytes();
        let t = TensorRef {
            name: "x",
            dtype: DType::F64,
            shape: vec![1],
            data: &d,
        };
        assert_eq!(decode_f32(&t).unwrap(), vec![3.25]);
    }
}
