//! The BitNet b1.58 training graph (2B4T layout) in candle.
//!
//! Parameters are candle `Var`s named as in Hugging Face checkpoints (`model.layers.0.self_attn.q_proj.weight`,
//! ...). The forward pass mirrors `bitnet_model::Model` operation for operation: the RoPE
//! tables are computed with the same f32 formula, the quantizers are [`crate::quant`]'s exact
//! ones, and the head is the tied float embedding.

use candle_core::{D, DType, Device, Tensor, Var};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::config::ModelShape;
use crate::error::{Result, TrainError};
use crate::quant;

/// Names of the seven BitLinears of a layer, as `(hf suffix, gguf name)`.
pub const LINEARS: [(&str, &str); 7] = [
    ("self_attn.q_proj", "attn_q"),
    ("self_attn.k_proj", "attn_k"),
    ("self_attn.v_proj", "attn_v"),
    ("self_attn.o_proj", "attn_output"),
    ("mlp.gate_proj", "ffn_gate"),
    ("mlp.up_proj", "ffn_up"),
    ("mlp.down_proj", "ffn_down"),
];

/// Names of the four norms of a layer, as `(hf suffix, gguf name)`.
pub const NORMS: [(&str, &str); 4] = [
    ("input_layernorm", "attn_norm"),
    ("self_attn.attn_sub_norm", "attn_sub_norm"),
    ("post_attention_layernorm", "ffn_norm"),
    ("mlp.ffn_sub_norm", "ffn_sub_norm"),
];

/// The embedding's parameter name.
pub const EMBED: &str = "model.embed_tokens.weight";
/// The final norm's parameter name.
pub const FINAL_NORM: &str = "model.norm.weight";

/// A BitNet b1.58 model being trained: its shape, whether it is the float baseline, and its
/// parameters in a fixed order.
pub struct BitNetModel {
    shape: ModelShape,
    float: bool,
    params: Vec<(String, Var)>,
    device: Device,
}

/// One layer's parameter tensors, looked up once per forward.
struct LayerParams {
    norms: [Tensor; 4],
    linears: [Tensor; 7],
}

impl BitNetModel {
    /// A freshly initialised model: linears and embedding `N(0, 0.02)`, norms 1. `float` makes
    /// the BitLinears plain float linears (the baseline the BitNet papers compare against).
    pub fn new(shape: ModelShape, float: bool, seed: u64) -> Result<Self> {
        shape.validate()?;
        let device = Device::Cpu;
        let mut rng = StdRng::seed_from_u64(seed);
        let mut params = Vec::new();
        let mut normal = |n: usize, std: f32| -> Vec<f32> {
            (0..n)
                .map(|_| {
                    // Box-Muller from two uniforms; reproducible for a seed on every platform.
                    let u1: f32 = rng.random::<f32>().max(1e-12);
                    let u2: f32 = rng.random::<f32>();
                    std * (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
                })
                .collect()
        };
        let var = |v: Vec<f32>, dims: &[usize]| -> Result<Var> {
            Ok(Var::from_tensor(&Tensor::from_vec(v, dims, &device)?)?)
        };
        let (h, i) = (shape.hidden_size, shape.intermediate_size);
        params.push((
            EMBED.to_string(),
            var(normal(shape.vocab_size * h, 0.02), &[shape.vocab_size, h])?,
        ));
        for l in 0..shape.n_layers {
            for (name, _) in NORMS {
                let n = if name == "mlp.ffn_sub_norm" { i } else { h };
                params.push((
                    format!("model.layers.{l}.{name}.weight"),
                    var(vec![1.0; n], &[n])?,
                ));
            }
            for (name, _) in LINEARS {
                let (out, inp) = linear_shape(&shape, name);
                params.push((
                    format!("model.layers.{l}.{name}.weight"),
                    var(normal(out * inp, 0.02), &[out, inp])?,
                ));
            }
        }
        params.push((FINAL_NORM.to_string(), var(vec![1.0; h], &[h])?));
        Ok(BitNetModel {
            shape,
            float,
            params,
            device,
        })
    }

    /// The model's shape.
    pub fn shape(&self) -> &ModelShape {
        &self.shape
    }

    /// Whether this is the unquantized float baseline.
    pub fn is_float(&self) -> bool {
        self.float
    }

    /// Parameters in a fixed order (embedding, layers, final norm), with their names.
    pub fn params(&self) -> &[(String, Var)] {
        &self.params
    }

    /// The parameter called `name`.
    pub fn param(&self, name: &str) -> Result<&Var> {
        self.params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v)
            .ok_or_else(|| TrainError::Options(format!("no parameter named {name}")))
    }

    /// The parameter's values as f32, row-major.
    pub fn values(&self, name: &str) -> Result<Vec<f32>> {
        Ok(self
            .param(name)?
            .as_tensor()
            .flatten_all()?
            .to_vec1::<f32>()?)
    }

    /// Replaces the embedding by its f16-rounded values (what a GGUF F16 embedding stores), so
    /// the training graph and an exported model compute with the same numbers.
    pub fn round_embedding_to_f16(&self) -> Result<()> {
        let var = self.param(EMBED)?;
        let v: Vec<f32> = self
            .values(EMBED)?
            .into_iter()
            .map(|x| half::f16::from_f32(x).to_f32())
            .collect();
        var.set(&Tensor::from_vec(v, var.as_tensor().dims(), &self.device)?)?;
        Ok(())
    }

    fn t(&self, name: &str) -> Result<Tensor> {
        Ok(self.param(name)?.as_tensor().clone())
    }

    fn layer(&self, l: usize) -> Result<LayerParams> {
        let p = |n: &str| self.t(&format!("model.layers.{l}.{n}.weight"));
        Ok(LayerParams {
            norms: [
                p(NORMS[0].0)?,
                p(NORMS[1].0)?,
                p(NORMS[2].0)?,
                p(NORMS[3].0)?,
            ],
            linears: [
                p(LINEARS[0].0)?,
                p(LINEARS[1].0)?,
                p(LINEARS[2].0)?,
                p(LINEARS[3].0)?,
                p(LINEARS[4].0)?,
                p(LINEARS[5].0)?,
                p(LINEARS[6].0)?,
            ],
        })
    }

    /// RoPE tables `[t, head_dim/2]` computed exactly as `bitnet_core::ops::Rope` does.
    fn rope_tables(&self, t: usize) -> Result<(Tensor, Tensor)> {
        let hd = self.shape.head_dim();
        let half = hd / 2;
        let theta = self.shape.rope_theta;
        let inv: Vec<f32> = (0..half)
            .map(|i| 1.0f32 / theta.powf((2 * i) as f32 / hd as f32))
            .collect();
        let (mut cos, mut sin) = (Vec::with_capacity(t * half), Vec::with_capacity(t * half));
        for p in 0..t {
            for f in &inv {
                let (s, c) = (p as f32 * f).sin_cos();
                sin.push(s);
                cos.push(c);
            }
        }
        Ok((
            Tensor::from_vec(cos, (t, half), &self.device)?,
            Tensor::from_vec(sin, (t, half), &self.device)?,
        ))
    }

    /// Logits `[batch, t, vocab]` for token ids `[batch, t]` (u32), every position, causal.
    /// `quant_inputs`, when given, collects the input of every BitLinear quantizer (for tests
    /// that need to know how far the int8 codes are from rounding ties).
    pub fn forward(
        &self,
        ids: &Tensor,
        mut quant_inputs: Option<&mut Vec<Tensor>>,
    ) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let s = &self.shape;
        let (hd, nh, nkv) = (s.head_dim(), s.n_heads, s.n_kv_heads);
        let group = nh / nkv;
        let eps = s.rms_norm_eps;
        let embed = self.t(EMBED)?;
        let mut h = embed
            .embedding(&ids.flatten_all()?)?
            .reshape((b, t, s.hidden_size))?;
        let (cos, sin) = self.rope_tables(t)?;
        let scaling = (hd as f64).powf(-0.5) as f32;
        let mut lin = |x: &Tensor, w: &Tensor| -> Result<Tensor> {
            if let Some(v) = quant_inputs.as_deref_mut() {
                v.push(x.clone());
            }
            Ok(quant::bitlinear(x, w, self.float)?)
        };
        for l in 0..s.n_layers {
            let p = self.layer(l)?;
            let [attn_norm, attn_sub_norm, ffn_norm, ffn_sub_norm] = &p.norms;
            let [wq, wk, wv, wo, wg, wu, wd] = &p.linears;
            let a = rmsnorm(&h, attn_norm, eps)?;
            // Each projection quantizes the same input; collect it once per use like the engine
            // (which quantizes once and runs three matmuls on the same codes).
            let q = lin(&a, wq)?;
            let k = quant::bitlinear(&a, wk, self.float)?;
            let v = quant::bitlinear(&a, wv, self.float)?;
            let q = q.reshape((b, t, nh, hd))?.transpose(1, 2)?;
            let k = k.reshape((b, t, nkv, hd))?.transpose(1, 2)?;
            let v = v.reshape((b, t, nkv, hd))?.transpose(1, 2)?.contiguous()?;
            let q = rope(&q, &cos, &sin)?;
            let k = rope(&k, &cos, &sin)?;
            let (k, v) = if group > 1 {
                (repeat_kv(&k, group)?, repeat_kv(&v, group)?)
            } else {
                (k, v)
            };
            let scores = (q.contiguous()?.matmul(&k.t()?.contiguous()?)? * f64::from(scaling))?;
            let probs = quant::causal_softmax(&scores)?;
            let o = probs.matmul(&v)?; // [b, nh, t, hd]
            let o = o.transpose(1, 2)?.reshape((b, t, nh * hd))?;
            let o = rmsnorm(&o, attn_sub_norm, eps)?;
            h = (h + lin(&o, wo)?)?;
            let f = rmsnorm(&h, ffn_norm, eps)?;
            let g = lin(&f, wg)?;
            let u = quant::bitlinear(&f, wu, self.float)?;
            let m = (g.relu()?.sqr()? * u)?;
            let m = rmsnorm(&m, ffn_sub_norm, eps)?;
            h = (h + lin(&m, wd)?)?;
        }
        let x = rmsnorm(&h, &self.t(FINAL_NORM)?, eps)?;
        Ok(x.broadcast_matmul(&embed.t()?)?)
    }

    /// Mean cross-entropy of predicting `targets` `[batch, t]` from `ids` `[batch, t]`.
    pub fn loss(&self, ids: &Tensor, targets: &Tensor) -> Result<Tensor> {
        let logits = self.forward(ids, None)?;
        let v = self.shape.vocab_size;
        Ok(candle_nn::loss::cross_entropy(
            &logits.reshape(((), v))?,
            &targets.flatten_all()?,
        )?)
    }

    /// Logits of one sequence, row-major `[t, vocab]` as f32 (for comparisons with the engine).
    pub fn logits(&self, tokens: &[u32]) -> Result<Vec<f32>> {
        let ids = Tensor::from_vec(tokens.to_vec(), (1, tokens.len()), &self.device)?;
        Ok(self.forward(&ids, None)?.flatten_all()?.to_vec1::<f32>()?)
    }

    /// Loads parameter values (by name) from `tensors`, checking every shape.
    pub fn load_params(&self, mut get: impl FnMut(&str) -> Option<Tensor>) -> Result<()> {
        for (name, var) in &self.params {
            let t = get(name)
                .ok_or_else(|| TrainError::Options(format!("missing parameter {name}")))?;
            if t.dims() != var.as_tensor().dims() {
                return Err(TrainError::Options(format!(
                    "parameter {name}: shape {:?}, model expects {:?}",
                    t.dims(),
                    var.as_tensor().dims()
                )));
            }
            var.set(&t.to_dtype(DType::F32)?)?;
        }
        Ok(())
    }

    /// The device tensors live on.
    pub fn device(&self) -> &Device {
        &self.device
    }
}

/// `[out, in]` of a linear, by its Hugging Face suffix.
pub fn linear_shape(s: &ModelShape, name: &str) -> (usize, usize) {
    let (h, i, kv) = (s.hidden_size, s.intermediate_size, s.kv_dim());
    match name {
        "self_attn.k_proj" | "self_attn.v_proj" => (kv, h),
        "mlp.gate_proj" | "mlp.up_proj" => (i, h),
        "mlp.down_proj" => (h, i),
        _ => (h, h),
    }
}

/// `w * x / sqrt(mean(x^2) + eps)` over the last dimension, in f32.
fn rmsnorm(x: &Tensor, w: &Tensor, eps: f32) -> Result<Tensor> {
    let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
    let inv = (ms + f64::from(eps))?.sqrt()?.recip()?;
    Ok(x.broadcast_mul(&inv)?.broadcast_mul(w)?)
}

/// Half-split rotation of `[b, heads, t, hd]` with tables `[t, hd/2]`.
fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let hd = x.dim(D::Minus1)?;
    let half = hd / 2;
    let x1 = x.narrow(D::Minus1, 0, half)?;
    let x2 = x.narrow(D::Minus1, half, half)?;
    let a = (x1.broadcast_mul(cos)? - x2.broadcast_mul(sin)?)?;
    let b = (x2.broadcast_mul(cos)? + x1.broadcast_mul(sin)?)?;
    Ok(Tensor::cat(&[a, b], D::Minus1)?)
}

/// `[b, kv, t, hd]` -> `[b, kv * group, t, hd]`, query head `j` using kv head `j / group`.
fn repeat_kv(x: &Tensor, group: usize) -> Result<Tensor> {
    let (b, kv, t, hd) = x.dims4()?;
    Ok(x.unsqueeze(2)?
        .broadcast_as((b, kv, group, t, hd))?
        .contiguous()?
        .reshape((b, kv * group, t, hd))?)
}
