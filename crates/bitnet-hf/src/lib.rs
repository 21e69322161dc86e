//! Hugging Face model directories for BitNet b1.58 models: `config.json`, safetensors
//! checkpoints (single file or sharded), the packed 2-bit ternary weight layout, and hub
//! download into the standard cache.
//!
//! The crate owns the on-disk side only and depends on no other bitnet crate. Its job is to
//! hand the engine, for every BitLinear, ternary codes plus one multiplying scale
//! ([`TernaryWeight`]), and f32 data for embeddings and norms, whatever layout the checkpoint
//! uses:
//!
//! | checkpoint | weight | scale |
//! |---|---|---|
//! | `microsoft/bitnet-b1.58-2B-4T` (`autobitlinear`, offline) | packed uint8 `[out/4, in]` | `weight_scale` |
//! | 1bitLLM / HF1BitLLM (`bitlinear`) | packed uint8 | `1 / weight_scale` |
//! | `microsoft/bitnet-b1.58-2B-4T-bf16` (online) | bf16 master | absmean, as transformers |
//!
//! ```no_run
//! use bitnet_hf::{HfModel, hub, load_linear};
//! let dir = hub::resolve("microsoft/bitnet-b1.58-2B-4T", &hub::HubOptions::default())?;
//! let model = HfModel::open(&dir)?;
//! let c = model.config();
//! let q = load_linear(&model, "model.layers.0.self_attn.q_proj", c.hidden_size, c.hidden_size)?;
//! assert_eq!(q.codes.len(), c.hidden_size * c.hidden_size);
//! # Ok::<(), bitnet_hf::HfError>(())
//! ```
#![deny(missing_docs)]

pub mod config;
mod error;
pub mod hub;
pub mod model;
pub mod ternary;

pub use config::{HfConfig, LinearClass, QuantizationConfig, QuantizationMode};
pub use error::HfError;
pub use model::{DType, HfModel, SafetensorsView, TensorRef};
pub use ternary::{
    TernaryWeight, absmean_ternarize, decode_f32, exact_ternary, load_float, load_linear,
    pack_ternary, unpack_ternary,
};
