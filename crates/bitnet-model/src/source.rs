//! Where a model's decoded weights come from. Every reader (GGUF, Hugging Face) implements
//! [`WeightSource`] once; the model loader and the converter both consume it, so the mapping from
//! file names to roles lives in one place per format.

use bitnet_core::ops::FloatMatrix;
use bitnet_core::{LinearKernel, TernaryMatrix};

use crate::model::{Layer, Model};
use crate::stacked::Stacked;
use crate::{ModelConfig, ModelError};

/// The seven BitLinear projections of a block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proj {
    /// Query.
    Q,
    /// Key.
    K,
    /// Value.
    V,
    /// Attention output.
    O,
    /// FFN gate.
    Gate,
    /// FFN up.
    Up,
    /// FFN down.
    Down,
}

impl Proj {
    /// All projections in block order.
    pub const ALL: [Proj; 7] = [
        Proj::Q,
        Proj::K,
        Proj::V,
        Proj::O,
        Proj::Gate,
        Proj::Up,
        Proj::Down,
    ];

    /// `(out_features, in_features)` under `c`.
    pub fn shape(self, c: &ModelConfig) -> (usize, usize) {
        match self {
            Proj::Q => (c.q_dim(), c.hidden_size),
            Proj::K | Proj::V => (c.kv_dim(), c.hidden_size),
            Proj::O => (c.hidden_size, c.q_dim()),
            Proj::Gate | Proj::Up => (c.intermediate_size, c.hidden_size),
            Proj::Down => (c.hidden_size, c.intermediate_size),
        }
    }

    /// llama.cpp's tensor name stem (`attn_q`, ...).
    pub fn gguf_name(self) -> &'static str {
        match self {
            Proj::Q => "attn_q",
            Proj::K => "attn_k",
            Proj::V => "attn_v",
            Proj::O => "attn_output",
            Proj::Gate => "ffn_gate",
            Proj::Up => "ffn_up",
            Proj::Down => "ffn_down",
        }
    }

    /// Hugging Face module path within a layer (`self_attn.q_proj`, ...).
    pub fn hf_name(self) -> &'static str {
        match self {
            Proj::Q => "self_attn.q_proj",
            Proj::K => "self_attn.k_proj",
            Proj::V => "self_attn.v_proj",
            Proj::O => "self_attn.o_proj",
            Proj::Gate => "mlp.gate_proj",
            Proj::Up => "mlp.up_proj",
            Proj::Down => "mlp.down_proj",
        }
    }
}

/// The four RMSNorms of a block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Norm {
    /// Before attention.
    Attn,
    /// Over the heads, before `o`.
    AttnSub,
    /// Before the FFN.
    Ffn,
    /// Over the gated activations, before `down`.
    FfnSub,
}

impl Norm {
    /// All norms in block order.
    pub const ALL: [Norm; 4] = [Norm::Attn, Norm::AttnSub, Norm::Ffn, Norm::FfnSub];

    /// Length under `c`.
    pub fn len(self, c: &ModelConfig) -> usize {
        match self {
            Norm::FfnSub => c.intermediate_size,
            _ => c.hidden_size,
        }
    }

    /// llama.cpp's tensor name stem.
    pub fn gguf_name(self) -> &'static str {
        match self {
            Norm::Attn => "attn_norm",
            Norm::AttnSub => "attn_sub_norm",
            Norm::Ffn => "ffn_norm",
            Norm::FfnSub => "ffn_sub_norm",
        }
    }

    /// Hugging Face name within a layer.
    pub fn hf_name(self) -> &'static str {
        match self {
            Norm::Attn => "input_layernorm",
            Norm::AttnSub => "self_attn.attn_sub_norm",
            Norm::Ffn => "post_attention_layernorm",
            Norm::FfnSub => "mlp.ffn_sub_norm",
        }
    }
}

/// Decoded weights of a model, by role. Shared by the threads that load layers in parallel.
pub trait WeightSource: Sync {
    /// Hyper-parameters.
    fn config(&self) -> &ModelConfig;
    /// A BitLinear's ternary codes and per-tensor scale, shape `proj.shape(config)`.
    fn ternary(&self, layer: usize, proj: Proj) -> Result<TernaryMatrix, ModelError>;
    /// BitLinears of block `layer` that read the same input, stacked row-wise in `projs`' order:
    /// their codes as one matrix (its scale is unused) and each projection's output rows and
    /// scale. The default stacks [`WeightSource::ternary`]'s matrices (one more copy of the
    /// codes); a reader may decode them straight into one buffer.
    fn ternary_stacked(
        &self,
        layer: usize,
        projs: &[Proj],
    ) -> Result<(TernaryMatrix, Vec<(usize, f32)>), ModelError> {
        let mats = projs
            .iter()
            .map(|&p| self.ternary(layer, p))
            .collect::<Result<Vec<_>, _>>()?;
        stack_matrices(&mats)
    }
    /// A block's RMSNorm weight.
    fn norm(&self, layer: usize, norm: Norm) -> Result<Vec<f32>, ModelError>;
    /// The final RMSNorm weight.
    fn output_norm(&self) -> Result<Vec<f32>, ModelError>;
    /// The token embedding `[vocab, hidden]`.
    fn embedding(&self) -> Result<FloatMatrix, ModelError>;
    /// The output head `[vocab, hidden]`, `None` when tied to the embedding.
    fn head(&self) -> Result<Option<FloatMatrix>, ModelError>;
}

impl Model {
    /// Loads every weight from `src`, preparing the ternary linears with `kernel`.
    pub fn from_source(
        src: &dyn WeightSource,
        kernel: &dyn LinearKernel,
    ) -> Result<Model, ModelError> {
        let c = src.config().clone();
        let layer = |i: usize| -> Result<Layer, ModelError> {
            let lin =
                |p: Proj| -> Result<_, ModelError> { Ok(kernel.prepare(&src.ternary(i, p)?)?) };
            let stack = |ps: &[Proj]| {
                let (m, segments) = src.ternary_stacked(i, ps)?;
                Stacked::prepare(kernel, &m, segments)
            };
            Ok(Layer {
                attn_norm: src.norm(i, Norm::Attn)?,
                attn_sub_norm: src.norm(i, Norm::AttnSub)?,
                ffn_norm: src.norm(i, Norm::Ffn)?,
                ffn_sub_norm: src.norm(i, Norm::FfnSub)?,
                qkv: stack(&[Proj::Q, Proj::K, Proj::V])?,
                o: lin(Proj::O)?,
                gate_up: stack(&[Proj::Gate, Proj::Up])?,
                down: lin(Proj::Down)?,
            })
        };
        let layers = in_parallel(c.n_layers, layer)?;
        Model::new(
            c,
            src.embedding()?,
            src.head()?,
            src.output_norm()?,
            layers,
            kernel,
        )
    }
}

/// Most threads that load layers at once: each holds one layer's decoded codes while it repacks
/// them (about 80 MB for 2B4T's FFN), and loading is bound by memory long before eight.
const LOAD_THREADS: usize = 8;

/// `f(0..n)` in order, computed by up to one thread per core ([`LOAD_THREADS`] at most;
/// decoding and repacking a layer's weights is independent of every other layer's); the error
/// of the lowest failing index.
fn in_parallel<T: Send>(
    n: usize,
    f: impl Fn(usize) -> Result<T, ModelError> + Sync,
) -> Result<Vec<T>, ModelError> {
    let workers = std::thread::available_parallelism()
        .map_or(1, |w| w.get())
        .min(LOAD_THREADS)
        .min(n);
    if workers <= 1 {
        return (0..n).map(f).collect();
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let mut done: Vec<(usize, Result<T, ModelError>)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                s.spawn(|| {
                    let mut mine = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if i >= n {
                            break mine;
                        }
                        mine.push((i, f(i)));
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    });
    done.sort_by_key(|(i, _)| *i);
    done.into_iter().map(|(_, r)| r).collect()
}

/// The input width shared by stacked projections; an error if they differ.
pub(crate) fn common_width(widths: impl IntoIterator<Item = usize>) -> Result<usize, ModelError> {
    let mut widths = widths.into_iter();
    let first = widths.next().unwrap_or(0);
    match widths.find(|&w| w != first) {
        Some(w) => Err(ModelError::Config(format!(
            "stacked projections need one input width: {w} columns next to {first}"
        ))),
        None => Ok(first),
    }
}

/// `mats` stacked row-wise, as [`WeightSource::ternary_stacked`] returns them.
pub(crate) fn stack_matrices(
    mats: &[TernaryMatrix],
) -> Result<(TernaryMatrix, Vec<(usize, f32)>), ModelError> {
    let cols = common_width(mats.iter().map(|m| m.cols()))?;
    let mut codes = Vec::with_capacity(mats.iter().map(|m| m.codes().len()).sum());
    for m in mats {
        codes.extend_from_slice(m.codes());
    }
    stacked_matrix(
        cols,
        codes,
        mats.iter().map(|m| (m.rows(), m.scale())).collect(),
    )
}

/// The stacked matrix of `codes` (`cols` wide, the segments' rows in all) and its segments.
pub(crate) fn stacked_matrix(
    cols: usize,
    codes: Vec<i8>,
    segments: Vec<(usize, f32)>,
) -> Result<(TernaryMatrix, Vec<(usize, f32)>), ModelError> {
    let rows = segments.iter().map(|s| s.0).sum();
    Ok((TernaryMatrix::new(rows, cols, codes, 1.0)?, segments))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_parallel_keeps_the_order_and_reports_the_lowest_failing_index() {
        let squares = in_parallel(37, |i| Ok(i * i)).unwrap();
        assert_eq!(squares, (0..37).map(|i| i * i).collect::<Vec<_>>());
        let err = in_parallel(37, |i| {
            if i % 10 == 7 {
                Err(ModelError::Config(format!("layer {i}")))
            } else {
                Ok(i)
            }
        })
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            ModelError::Config("layer 7".into()).to_string()
        );
        assert!(in_parallel(0, Ok).unwrap().is_empty());
    }
}
