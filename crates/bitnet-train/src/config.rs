//! Model shapes and training hyper-parameters, with the `tiny` and `small` presets.

use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};

/// The shape of a BitNet b1.58 model in the 2B4T layout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelShape {
    /// Vocabulary size (rows of the tied embedding), special tokens included.
    pub vocab_size: usize,
    /// Model width.
    pub hidden_size: usize,
    /// FFN width.
    pub intermediate_size: usize,
    /// Transformer blocks.
    pub n_layers: usize,
    /// Query heads.
    pub n_heads: usize,
    /// Key/value heads (grouped-query attention).
    pub n_kv_heads: usize,
    /// Training (and maximum inference) context.
    pub context_length: usize,
    /// RoPE base.
    pub rope_theta: f32,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f32,
}

impl ModelShape {
    /// Width of one head.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.n_heads.max(1)
    }

    /// Key/value projection width.
    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim()
    }

    /// Rejects shapes the model or its exports cannot represent. Every linear's input width must
    /// be a multiple of 256 (TQ2_0 blocks run along rows) and every output width a multiple of
    /// 4 (Hugging Face packs four rows per byte).
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(TrainError::Options(m));
        if self.n_heads == 0 || self.n_kv_heads == 0 || self.n_layers == 0 || self.vocab_size == 0 {
            return bad("heads, kv heads, layers and vocabulary must be non-zero".into());
        }
        if !self.hidden_size.is_multiple_of(self.n_heads) || !self.head_dim().is_multiple_of(2) {
            return bad(format!(
                "hidden_size {} must split into {} heads of even width",
                self.hidden_size, self.n_heads
            ));
        }
        if !self.n_heads.is_multiple_of(self.n_kv_heads) {
            return bad(format!(
                "{} heads is not a multiple of {} kv heads",
                self.n_heads, self.n_kv_heads
            ));
        }
        for (name, v) in [
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
        ] {
            if v == 0 || !v.is_multiple_of(256) {
                return bad(format!(
                    "{name} = {v} must be a positive multiple of 256 (TQ2_0 blocks)"
                ));
            }
        }
        if !self.kv_dim().is_multiple_of(4) {
            return bad(format!(
                "kv width {} must be a multiple of 4",
                self.kv_dim()
            ));
        }
        if self.context_length < 2 {
            return bad("context_length must be at least 2".into());
        }
        Ok(())
    }

    /// Parameter count (tied embedding counted once).
    pub fn n_params(&self) -> usize {
        let (h, i, kv) = (self.hidden_size, self.intermediate_size, self.kv_dim());
        let layer = h * h * 2 + 2 * h * kv + 3 * h * i + 3 * h + i;
        self.vocab_size * h + self.n_layers * layer + h
    }
}

/// A named starting point: model shape plus training hyper-parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Preset {
    /// For tests: about 0.4M parameters, trains in seconds.
    Tiny,
    /// The default model: hidden 256, 6 layers, heads 4/2, FFN 768, vocabulary 4096, context 256.
    Small,
}

impl Preset {
    /// Parses `tiny` or `small`.
    pub fn parse(s: &str) -> Option<Preset> {
        match s {
            "tiny" => Some(Preset::Tiny),
            "small" => Some(Preset::Small),
            _ => None,
        }
    }

    /// The model shape (vocabulary size is the BPE target; the trained tokenizer may be smaller).
    pub fn shape(self) -> ModelShape {
        match self {
            Preset::Tiny => ModelShape {
                vocab_size: 320,
                hidden_size: 256,
                intermediate_size: 256,
                n_layers: 1,
                n_heads: 2,
                n_kv_heads: 1,
                context_length: 32,
                rope_theta: 10000.0,
                rms_norm_eps: 1e-5,
            },
            Preset::Small => ModelShape {
                vocab_size: 4096,
                hidden_size: 256,
                intermediate_size: 768,
                n_layers: 6,
                n_heads: 4,
                n_kv_heads: 2,
                context_length: 256,
                rope_theta: 10000.0,
                rms_norm_eps: 1e-5,
            },
        }
    }

    /// Default optimisation settings for the preset.
    pub fn hyper(self) -> HyperParams {
        match self {
            Preset::Tiny => HyperParams {
                steps: 60,
                batch_size: 8,
                lr: 3e-3,
                min_lr_ratio: 0.1,
                warmup_steps: 5,
                weight_decay: 0.01,
                beta1: 0.9,
                beta2: 0.95,
                grad_clip: 1.0,
                eval_every: 30,
                eval_tokens: 2048,
                val_fraction: 0.1,
            },
            Preset::Small => HyperParams {
                // About an hour on one core of the 2-core reference machine (~650 tokens/s):
                // 1200 x 8 x 256 = 2.46M tokens, about 9 epochs of tinyshakespeare.
                steps: 1200,
                batch_size: 8,
                lr: 2e-3,
                min_lr_ratio: 0.1,
                warmup_steps: 60,
                weight_decay: 0.05,
                beta1: 0.9,
                beta2: 0.95,
                grad_clip: 1.0,
                eval_every: 300,
                eval_tokens: 32768,
                val_fraction: 0.1,
            },
        }
    }
}

/// Optimisation and schedule settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HyperParams {
    /// Optimizer steps in total.
    pub steps: usize,
    /// Sequences per step (each `context_length` tokens).
    pub batch_size: usize,
    /// Peak learning rate (after warm-up).
    pub lr: f64,
    /// Final learning rate as a fraction of the peak (cosine decay ends there).
    pub min_lr_ratio: f64,
    /// Linear warm-up steps.
    pub warmup_steps: usize,
    /// AdamW decoupled weight decay (not applied to norms).
    pub weight_decay: f64,
    /// AdamW beta1.
    pub beta1: f64,
    /// AdamW beta2.
    pub beta2: f64,
    /// Gradients are rescaled when their global L2 norm exceeds this (0 disables clipping).
    pub grad_clip: f64,
    /// Evaluate (and checkpoint) every this many steps.
    pub eval_every: usize,
    /// At most this many validation target tokens per evaluation.
    pub eval_tokens: usize,
    /// Fraction of the tokens (taken from the end of the data) held out for validation.
    pub val_fraction: f64,
}

impl HyperParams {
    /// Learning rate at `step` (0-based): linear warm-up to `lr`, then cosine decay to
    /// `lr * min_lr_ratio` at the last step.
    pub fn lr_at(&self, step: usize) -> f64 {
        if step < self.warmup_steps {
            return self.lr * (step + 1) as f64 / self.warmup_steps as f64;
        }
        let span = self.steps.saturating_sub(self.warmup_steps).max(1) as f64;
        let progress = ((step - self.warmup_steps) as f64 / span).min(1.0);
        let min = self.lr * self.min_lr_ratio;
        min + 0.5 * (self.lr - min) * (1.0 + (std::f64::consts::PI * progress).cos())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_are_valid_and_small_is_a_few_million_parameters() {
        Preset::Tiny.shape().validate().unwrap();
        let s = Preset::Small.shape();
        s.validate().unwrap();
        let n = s.n_params();
        assert!((3_000_000..10_000_000).contains(&n), "{n}");
    }

    #[test]
    fn schedule_warms_up_then_decays_to_the_floor() {
        let h = Preset::Small.hyper();
        assert!(h.lr_at(0) < h.lr_at(50));
        assert!((h.lr_at(h.warmup_steps) - h.lr).abs() < 1e-12);
        assert!((h.lr_at(h.steps) - h.lr * h.min_lr_ratio).abs() < 1e-12);
        assert!(h.lr_at(1000) > h.lr_at(2000));
    }
}
