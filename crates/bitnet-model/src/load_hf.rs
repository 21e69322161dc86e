//! Binding a Hugging Face `BitNetForCausalLM` directory (packed or float master weights) to the
//! model.

use bitnet_core::ops::{FloatMatrix, FloatStorage};
use bitnet_core::{LinearKernel, TernaryMatrix};
use bitnet_hf::{HfConfig, HfModel};

use crate::ModelError;
use crate::config::{Activation, ModelConfig};
use crate::model::Model;
use crate::source::{Norm, Proj, WeightSource};

/// Maps `config.json` to the engine's hyper-parameters.
pub fn config_from_hf(cfg: &HfConfig) -> Result<ModelConfig, ModelError> {
    let arch = cfg
        .architectures
        .first()
        .cloned()
        .unwrap_or_else(|| cfg.model_type.clone());
    let is_bitnet = arch == "BitNetForCausalLM" || cfg.model_type == "bitnet";
    if !is_bitnet {
        return Err(ModelError::Architecture(arch));
    }
    if cfg.rope_scaling.as_ref().is_some_and(|v| !v.is_null()) {
        return Err(ModelError::Config(
            "rope_scaling is set; scaled rotary embeddings are not supported".into(),
        ));
    }
    if cfg
        .quantization_config
        .as_ref()
        .is_some_and(|q| q.use_rms_norm)
    {
        return Err(ModelError::Config(
            "quantization_config.use_rms_norm is set (an extra RMSNorm before each BitLinear); not supported".into(),
        ));
    }
    let act = cfg.hidden_act.as_str();
    let activation = Activation::parse(act)
        .ok_or_else(|| ModelError::Config(format!("hidden_act '{act}' is not supported")))?;
    let config = ModelConfig {
        architecture: arch,
        activation,
        hidden_size: cfg.hidden_size,
        intermediate_size: cfg.intermediate_size,
        n_layers: cfg.num_hidden_layers,
        n_heads: cfg.num_attention_heads,
        n_kv_heads: cfg.num_key_value_heads,
        head_dim: cfg.resolved_head_dim(),
        vocab_size: cfg.vocab_size,
        rope_theta: cfg.rope_theta as f32,
        rms_norm_eps: cfg.rms_norm_eps as f32,
        context_length: cfg.max_position_embeddings,
        tied_embeddings: cfg.tie_word_embeddings,
    };
    config.validate()?;
    Ok(config)
}

/// A Hugging Face `BitNetForCausalLM` directory as a [`WeightSource`].
pub struct HfSource<'a> {
    hf: &'a HfModel,
    config: ModelConfig,
}

impl<'a> HfSource<'a> {
    /// Reads the hyper-parameters; tensors are decoded on demand.
    pub fn new(hf: &'a HfModel) -> Result<Self, ModelError> {
        Ok(Self {
            config: config_from_hf(hf.config())?,
            hf,
        })
    }

    fn matrix(&self, name: &str) -> Result<FloatMatrix, ModelError> {
        let c = &self.config;
        let v = bitnet_hf::load_float(self.hf, name, &[c.vocab_size, c.hidden_size])?;
        Ok(FloatMatrix::new(
            c.vocab_size,
            c.hidden_size,
            FloatStorage::F32(v),
        )?)
    }
}

impl WeightSource for HfSource<'_> {
    fn config(&self) -> &ModelConfig {
        &self.config
    }

    fn ternary(&self, layer: usize, proj: Proj) -> Result<TernaryMatrix, ModelError> {
        let (rows, cols) = proj.shape(&self.config);
        let name = format!("model.layers.{layer}.{}", proj.hf_name());
        let w = bitnet_hf::load_linear(self.hf, &name, rows, cols)?;
        TernaryMatrix::new(rows, cols, w.codes, w.scale).map_err(|e| ModelError::Tensor {
            name,
            msg: e.to_string(),
        })
    }

    fn norm(&self, layer: usize, norm: Norm) -> Result<Vec<f32>, ModelError> {
        let name = format!("model.layers.{layer}.{}.weight", norm.hf_name());
        Ok(bitnet_hf::load_float(
            self.hf,
            &name,
            &[norm.len(&self.config)],
        )?)
    }

    fn output_norm(&self) -> Result<Vec<f32>, ModelError> {
        Ok(bitnet_hf::load_float(
            self.hf,
            "model.norm.weight",
            &[self.config.hidden_size],
        )?)
    }

    fn embedding(&self) -> Result<FloatMatrix, ModelError> {
        self.matrix("model.embed_tokens.weight")
    }

    fn head(&self) -> Result<Option<FloatMatrix>, ModelError> {
        if self.config.tied_embeddings {
            return Ok(None);
        }
        self.matrix("lm_head.weight").map(Some)
    }
}

/// Loads a Hugging Face BitNet directory, preparing every ternary linear with `kernel`.
pub fn load_hf(hf: &HfModel, kernel: &dyn LinearKernel) -> Result<Model, ModelError> {
    Model::from_source(&HfSource::new(hf)?, kernel)
}
