//! Binding a Hugging Face `BitNetForCausalLM` directory (packed or float master weights) to the
//! model.

use bitnet_core::ops::{FloatMatrix, FloatStorage};
use bitnet_core::{LinearKernel, PreparedLinear, TernaryMatrix};
use bitnet_hf::{HfConfig, HfModel};

use crate::ModelError;
use crate::config::{Activation, ModelConfig};
use crate::model::{Layer, Model};

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

/// Loads a Hugging Face BitNet directory, preparing every ternary linear with `kernel`.
pub fn load_hf(hf: &HfModel, kernel: &dyn LinearKernel) -> Result<Model, ModelError> {
    let c = config_from_hf(hf.config())?;
    let matrix = |name: &str| -> Result<FloatMatrix, ModelError> {
        let v = bitnet_hf::load_float(hf, name, &[c.vocab_size, c.hidden_size])?;
        Ok(FloatMatrix::new(
            c.vocab_size,
            c.hidden_size,
            FloatStorage::F32(v),
        )?)
    };
    let embed = matrix("model.embed_tokens.weight")?;
    let head = if c.tied_embeddings {
        None
    } else {
        Some(matrix("lm_head.weight")?)
    };
    let vector = |name: &str, n: usize| -> Result<Vec<f32>, ModelError> {
        Ok(bitnet_hf::load_float(hf, name, &[n])?)
    };
    let output_norm = vector("model.norm.weight", c.hidden_size)?;
    let mut layers = Vec::with_capacity(c.n_layers);
    for i in 0..c.n_layers {
        let p = |n: &str| format!("model.layers.{i}.{n}");
        let lin =
            |n: &str, rows: usize, cols: usize| -> Result<Box<dyn PreparedLinear>, ModelError> {
                let name = p(n);
                let w = bitnet_hf::load_linear(hf, &name, rows, cols)?;
                let m = TernaryMatrix::new(rows, cols, w.codes, w.scale).map_err(|e| {
                    ModelError::Tensor {
                        name: name.clone(),
                        msg: e.to_string(),
                    }
                })?;
                Ok(kernel.prepare(&m)?)
            };
        layers.push(Layer {
            attn_norm: vector(&p("input_layernorm.weight"), c.hidden_size)?,
            attn_sub_norm: vector(&p("self_attn.attn_sub_norm.weight"), c.hidden_size)?,
            ffn_norm: vector(&p("post_attention_layernorm.weight"), c.hidden_size)?,
            ffn_sub_norm: vector(&p("mlp.ffn_sub_norm.weight"), c.intermediate_size)?,
            q: lin("self_attn.q_proj", c.q_dim(), c.hidden_size)?,
            k: lin("self_attn.k_proj", c.kv_dim(), c.hidden_size)?,
            v: lin("self_attn.v_proj", c.kv_dim(), c.hidden_size)?,
            o: lin("self_attn.o_proj", c.hidden_size, c.q_dim())?,
            gate: lin("mlp.gate_proj", c.intermediate_size, c.hidden_size)?,
            up: lin("mlp.up_proj", c.intermediate_size, c.hidden_size)?,
            down: lin("mlp.down_proj", c.hidden_size, c.intermediate_size)?,
        });
    }
    Model::new(c, embed, head, output_norm, layers, kernel.name())
}
