//! Quantization-aware training of small BitNet b1.58 models (2B4T layout) on CPU with candle,
//! and export to the formats the bitnet-rs engine runs.
//!
//! The BitLinear forward is exactly the inference numerics (absmean ternary weights with one
//! bf16-exact scale per tensor, per-token absmax int8 activations); the backward is
//! straight-through ([`quant`]). [`train`] runs a whole job and writes into its output
//! directory:
//!
//! | file | what |
//! |---|---|
//! | `tokenizer.json` | the byte-level BPE (trained unless given) |
//! | `checkpoint.safetensors` | parameters, AdamW moments, step, run configuration (`--resume`) |
//! | `log.jsonl` | one line per evaluation: step, train/validation loss, lr, gradient norm, tokens/s |
//! | `model.gguf`, `model-tq2_0.gguf` | GGUF `bitnet-b1.58` exports (I2_S, TQ2_0 linears) |
//! | `hf/` | Hugging Face `BitNetForCausalLM` directory (packed uint8 + `weight_scale`) |
//! | `summary.json` | the [`TrainReport`] |
//!
//! candle is a dependency of this crate only; the inference crates never see it.
#![deny(missing_docs)]

pub mod checkpoint;
pub mod config;
pub mod data;
mod error;
pub mod export;
pub mod model;
pub mod optim;
pub mod quant;
pub mod tokenizer;
mod trainer;

pub use config::{HyperParams, ModelShape, Preset};
pub use error::{Result, TrainError};
pub use export::{GgufTernary, export_gguf, export_hf};
pub use model::BitNetModel;
pub use tokenizer::TrainTokenizer;
pub use trainer::{TrainOptions, TrainReport, train};
