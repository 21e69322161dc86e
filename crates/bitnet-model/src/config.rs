//! Hyper-parameters of the architectures the engine runs, independent of where they were read.

use crate::ModelError;

/// The feed-forward activation of the gated FFN.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// Squared ReLU: BitNet b1.58 (2B4T, `bitnet-b1.58`, `bitnet-25`, HF `BitNetForCausalLM`).
    Relu2,
    /// SiLU: llama.cpp's `bitnet` architecture (1bitLLM, Llama3-8B-1.58) unless the file says
    /// otherwise.
    Silu,
}

impl Activation {
    /// Name as written in configs (`relu2`, `silu`).
    pub fn name(self) -> &'static str {
        match self {
            Activation::Relu2 => "relu2",
            Activation::Silu => "silu",
        }
    }

    /// Parses a config's activation name.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "relu2" | "relu_squared" | "squared_relu" => Some(Activation::Relu2),
            "silu" | "swish" => Some(Activation::Silu),
            _ => None,
        }
    }
}

/// Everything the forward pass needs to know about a model's shape.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    /// Architecture name as the file gave it (`bitnet-b1.58`, `bitnet`, `BitNetForCausalLM`).
    pub architecture: String,
    /// FFN activation.
    pub activation: Activation,
    /// Model width.
    pub hidden_size: usize,
    /// FFN width.
    pub intermediate_size: usize,
    /// Transformer blocks.
    pub n_layers: usize,
    /// Query heads.
    pub n_heads: usize,
    /// Key/value heads (grouped-query attention when fewer than `n_heads`).
    pub n_kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// Vocabulary size (rows of the embedding).
    pub vocab_size: usize,
    /// RoPE base.
    pub rope_theta: f32,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f32,
    /// Longest context the model was trained for.
    pub context_length: usize,
    /// Whether the output head is the token embedding.
    pub tied_embeddings: bool,
}

impl ModelConfig {
    /// Rejects shapes the forward pass cannot run, naming the offending field.
    pub fn validate(&self) -> Result<(), ModelError> {
        let bad = |msg: String| Err(ModelError::Config(msg));
        for (name, v) in [
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("n_layers", self.n_layers),
            ("n_heads", self.n_heads),
            ("n_kv_heads", self.n_kv_heads),
            ("head_dim", self.head_dim),
            ("vocab_size", self.vocab_size),
            ("context_length", self.context_length),
        ] {
            if v == 0 {
                return bad(format!("{name} is 0"));
            }
            if v > 1 << 24 {
                return bad(format!("{name} = {v} is implausibly large"));
            }
        }
        if !self.n_heads.is_multiple_of(self.n_kv_heads) {
            return bad(format!(
                "head count {} is not a multiple of the key/value head count {}",
                self.n_heads, self.n_kv_heads
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return bad(format!(
                "head_dim {} is odd; rotary embeddings need it even",
                self.head_dim
            ));
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 0.0) {
            return bad(format!(
                "rope theta {} is not a positive number",
                self.rope_theta
            ));
        }
        if !(self.rms_norm_eps.is_finite() && self.rms_norm_eps >= 0.0) {
            return bad(format!(
                "rms_norm_eps {} is not a non-negative number",
                self.rms_norm_eps
            ));
        }
        Ok(())
    }

    /// Query projection width.
    pub fn q_dim(&self) -> usize {
        self.n_heads * self.head_dim
    }

    /// Key/value projection width.
    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }
}
