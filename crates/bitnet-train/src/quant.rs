//! The BitNet b1.58 quantizers as differentiable operations: forward values are exactly the
//! inference numerics of `bitnet-core` (absmean ternary weights with one scale per tensor,
//! per-token absmax int8 activations with round-half-to-even), backward is the straight-through
//! estimator (the gradient passes unchanged).
//!
//! Implementing them as custom ops, rather than as `x + (q(x) - x).detach()`, keeps the forward
//! values bit-exact (`x + (q - x)` can differ from `q` by one ulp in f32), which is what lets
//! the exported model reproduce the training graph's logits.

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};

/// Lower bound of the weight scale (`mean|W|`) and of the activation maximum, as at inference.
pub const MIN_SCALE: f32 = 1e-5;

/// Ternary weights of one tensor: codes in {-1, 0, +1} and the scale they multiply.
#[derive(Debug, Clone, PartialEq)]
pub struct TernaryWeights {
    /// Row-major codes `[out, in]`.
    pub codes: Vec<i8>,
    /// The per-tensor scale `s`; the weight the graph uses is `codes * s`.
    pub scale: f32,
}

/// Rounds an f32 to the nearest bfloat16 value (ties to even), returned as f32.
pub fn round_to_bf16(v: f32) -> f32 {
    half::bf16::from_f32(v).to_f32()
}

/// The per-tensor scale of the training graph: `mean|W|` (summed in f64), clamped to
/// [`MIN_SCALE`], then rounded to bfloat16. The rounding makes `s` exactly representable in
/// bf16 (the Hugging Face `weight_scale` dtype) and in f16 (TQ2_0's block scale), so every
/// export carries exactly the scale the model was trained with.
pub fn weight_scale(w: &[f32]) -> f32 {
    let sum: f64 = w.iter().map(|v| f64::from(v.abs())).sum();
    let mean = if w.is_empty() {
        0.0
    } else {
        (sum / w.len() as f64) as f32
    };
    round_to_bf16(mean.max(MIN_SCALE))
}

/// Absmean ternarization: `t = clamp(round_half_even(W / s), -1, 1)` with `s` from
/// [`weight_scale`].
pub fn ternarize(w: &[f32]) -> TernaryWeights {
    let scale = weight_scale(w);
    let codes = w
        .iter()
        .map(|&v| (v / scale).round_ties_even().clamp(-1.0, 1.0) as i8)
        .collect();
    TernaryWeights { codes, scale }
}

/// Per-token absmax int8 quantization of one row, exactly `bitnet_core::quant::quantize_row`:
/// returns the codes and `s_x = 127 / max(max|x|, 1e-5)`.
pub fn quantize_row(x: &[f32], codes: &mut [i8]) -> f32 {
    let max = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let scale = 127.0f32 / max.max(MIN_SCALE);
    for (q, &v) in codes.iter_mut().zip(x) {
        *q = round_half_even_small(v * scale).clamp(-128.0, 127.0) as i8;
    }
    scale
}

/// `round_ties_even` for |v| < 2^22 (activation codes stay within ±128), without the libm call
/// that `f32::round_ties_even` becomes on baseline x86-64: adding and subtracting 1.5 * 2^23
/// makes the FPU round to an integer in its default round-half-to-even mode.
#[inline]
fn round_half_even_small(v: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0; // 1.5 * 2^23
    if v.abs() < 4_194_304.0 {
        (v + MAGIC) - MAGIC
    } else {
        v.round_ties_even()
    }
}

fn contiguous_f32<'a>(
    storage: &'a CpuStorage,
    layout: &Layout,
    op: &str,
) -> candle_core::Result<&'a [f32]> {
    let CpuStorage::F32(data) = storage else {
        candle_core::bail!("{op}: expects f32 input, got another dtype")
    };
    let Some((start, end)) = layout.contiguous_offsets() else {
        candle_core::bail!("{op}: expects a contiguous input")
    };
    data.get(start..end)
        .ok_or_else(|| candle_core::Error::Msg(format!("{op}: layout out of range")))
}

/// Fake-quantizes activations: each row (last dimension) becomes `x_q / s_x`.
struct ActQuant;

impl CustomOp1 for ActQuant {
    fn name(&self) -> &'static str {
        "bitnet-act-quant"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(storage, layout, self.name())?;
        let cols = layout.shape().dims().last().copied().unwrap_or(1).max(1);
        let mut out = vec![0.0f32; x.len()];
        let mut codes = vec![0i8; cols];
        for (row, o) in x.chunks(cols).zip(out.chunks_mut(cols)) {
            let s = quantize_row(row, &mut codes[..row.len()]);
            for (dst, &c) in o.iter_mut().zip(&codes) {
                *dst = f32::from(c) / s;
            }
        }
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }

    fn bwd(
        &self,
        _arg: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(grad.clone()))
    }
}

/// Fake-quantizes a weight tensor: `t * s` over the whole tensor.
struct WeightQuant;

impl CustomOp1 for WeightQuant {
    fn name(&self) -> &'static str {
        "bitnet-weight-quant"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let w = contiguous_f32(storage, layout, self.name())?;
        let t = ternarize(w);
        let out = t.codes.iter().map(|&c| f32::from(c) * t.scale).collect();
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }

    fn bwd(
        &self,
        _arg: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(grad.clone()))
    }
}

/// Causal softmax over the last dimension of `[.., t, t]` scores: row `i` is normalised over
/// columns `0..=i` (the rest become 0), computed as `bitnet_core::ops::softmax` does.
struct CausalSoftmax;

impl CustomOp1 for CausalSoftmax {
    fn name(&self) -> &'static str {
        "bitnet-causal-softmax"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(storage, layout, self.name())?;
        let t = layout.shape().dims().last().copied().unwrap_or(1).max(1);
        let mut out = vec![0.0f32; x.len()];
        for (r, (row, o)) in x.chunks(t).zip(out.chunks_mut(t)).enumerate() {
            let n = (r % t) + 1;
            let (src, dst) = (&row[..n], &mut o[..n]);
            let max = src.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
            let mut sum = 0.0f32;
            for (d, &v) in dst.iter_mut().zip(src) {
                *d = (v - max).exp();
                sum += *d;
            }
            for d in dst.iter_mut() {
                *d /= sum;
            }
        }
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }

    fn bwd(
        &self,
        _arg: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        // d softmax: p * (g - sum(g * p)); masked entries have p = 0 and get no gradient.
        let gp = (grad * res)?;
        let s = gp.sum_keepdim(candle_core::D::Minus1)?;
        Ok(Some((gp - res.broadcast_mul(&s)?)?))
    }
}

/// Causal softmax of attention scores `[.., t, t]` (see [`CausalSoftmax`]), differentiable.
pub fn causal_softmax(scores: &Tensor) -> candle_core::Result<Tensor> {
    scores.contiguous()?.apply_op1(CausalSoftmax)
}

/// `x_q / s_x` per row of the last dimension, with a straight-through gradient.
pub fn quantize_activations(x: &Tensor) -> candle_core::Result<Tensor> {
    x.contiguous()?.apply_op1(ActQuant)
}

/// `t * s` for the whole tensor, with a straight-through gradient.
pub fn quantize_weights(w: &Tensor) -> candle_core::Result<Tensor> {
    w.contiguous()?.apply_op1(WeightQuant)
}

/// The BitLinear forward: `(x_q / s_x) @ (t * s)^T` over the last dimension of `x`
/// (`w` is `[out, in]`). With `float` set it is the plain `x @ w^T` of the float baseline.
pub fn bitlinear(x: &Tensor, w: &Tensor, float: bool) -> candle_core::Result<Tensor> {
    let (xq, wq) = if float {
        (x.clone(), w.clone())
    } else {
        (quantize_activations(x)?, quantize_weights(w)?)
    };
    // One large matmul over all rows (rather than one per batch entry) keeps gemm efficient.
    let dims = xq.dims().to_vec();
    let k = dims.last().copied().unwrap_or(1);
    let rows = xq.elem_count() / k.max(1);
    let y = xq.reshape((rows, k))?.matmul(&wq.t()?)?;
    let mut out = dims;
    if let Some(last) = out.last_mut() {
        *last = wq.dim(0)?;
    }
    y.reshape(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn activation_codes_round_half_to_even() {
        let x = [1.0f32, -1.0, 0.5 / 127.0, 2.5 / 127.0, 0.0];
        let mut q = [0i8; 5];
        assert_eq!(quantize_row(&x, &mut q), 127.0);
        assert_eq!(q, [127, -127, 0, 2, 0]);
    }

    #[test]
    fn causal_softmax_matches_masked_softmax_and_its_gradient() {
        let dev = Device::Cpu;
        let v: Vec<f32> = (0..2 * 16)
            .map(|i| ((i * 7 % 11) as f32) * 0.3 - 1.0)
            .collect();
        let x = Var::from_vec(v, (2, 4, 4), &dev).unwrap();
        let mask: Vec<f32> = (0..16)
            .map(|i| {
                if i % 4 > i / 4 {
                    f32::NEG_INFINITY
                } else {
                    0.0
                }
            })
            .collect();
        let mask = Tensor::from_vec(mask, (4, 4), &dev).unwrap();
        let w = Tensor::from_vec(
            (0..32).map(|i| i as f32 * 0.1).collect::<Vec<_>>(),
            (2, 4, 4),
            &dev,
        )
        .unwrap();
        let ours = causal_softmax(x.as_tensor()).unwrap();
        let reference = candle_nn::ops::softmax(
            &x.as_tensor().broadcast_add(&mask).unwrap(),
            candle_core::D::Minus1,
        )
        .unwrap();
        let diff = (&ours - &reference)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_vec0::<f32>()
            .unwrap();
        assert!(diff < 1e-6);
        let g1 = (ours * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let g2 = (reference * &w)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let (g1, g2) = (
            g1.get(x.as_tensor()).unwrap(),
            g2.get(x.as_tensor()).unwrap(),
        );
        let diff = (g1 - g2)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_vec0::<f32>()
            .unwrap();
        assert!(diff < 1e-6, "{diff}");
    }

    #[test]
    fn fast_rounding_equals_round_ties_even() {
        for i in -300_000..300_000 {
            let v = i as f32 * 0.000_5 + 0.25 * (i % 3) as f32;
            assert_eq!(round_half_even_small(v), v.round_ties_even(), "{v}");
        }
        for v in [0.5f32, 1.5, 2.5, -0.5, -1.5, -2.5, 126.5, -127.5, 1e7, -0.0] {
            assert_eq!(round_half_even_small(v), v.round_ties_even(), "{v}");
        }
    }

    #[test]
    fn scale_is_exact_in_bf16_and_f16() {
        let w: Vec<f32> = (0..1000)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) * 1.3e-3)
            .collect();
        let s = weight_scale(&w);
        assert_eq!(half::bf16::from_f32(s).to_f32(), s);
        assert_eq!(half::f16::from_f32(s).to_f32(), s);
        let mean = w.iter().map(|v| v.abs()).sum::<f32>() / w.len() as f32;
        assert!((s - mean).abs() <= mean * 0.004, "{s} vs {mean}");
    }

    #[test]
    fn ops_match_the_scalar_definitions_and_pass_gradients_straight_through() {
        let dev = Device::Cpu;
        let xs: Vec<f32> = (0..12).map(|i| (i as f32 * 0.37).sin()).collect();
        let x = Var::from_vec(xs.clone(), (3, 4), &dev).unwrap();
        let q = quantize_activations(x.as_tensor()).unwrap();
        let got = q.to_vec2::<f32>().unwrap();
        for (r, row) in xs.chunks(4).enumerate() {
            let mut c = [0i8; 4];
            let s = quantize_row(row, &mut c);
            for j in 0..4 {
                assert_eq!(got[r][j], f32::from(c[j]) / s);
            }
        }
        let g = (q * 3.0).unwrap().sum_all().unwrap().backward().unwrap();
        let gx = g.get(x.as_tensor()).unwrap().to_vec2::<f32>().unwrap();
        assert!(gx.iter().flatten().all(|&v| v == 3.0));
    }
}
