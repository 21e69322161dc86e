//! The architectures bitnet-rs runs — BitNet b1.58 as in `microsoft/bitnet-b1.58-2B-4T`
//! (GGUF `bitnet-b1.58`/`bitnet-25`, HF `BitNetForCausalLM`) and llama.cpp's `bitnet` (same
//! layout, SiLU FFN unless the file says otherwise) — with weight binding by name from decoded
//! tensors and the KV cache.
//!
//! This crate knows the readers' decoded APIs (names, shapes, decoded values), never byte layouts,
//! and reaches compute only through `bitnet_core`'s kernel trait.
#![deny(missing_docs)]

mod accel;
mod cache;
mod config;
mod error;
mod kv;
mod load_gguf;
mod load_hf;
mod model;
mod source;
mod stacked;

pub use accel::{Accelerator, DeviceCache, DeviceEntry};
pub use cache::KvCache;
pub use config::{Activation, ModelConfig};
pub use error::ModelError;
pub use kv::{KvType, KvView, quantize_q8};
pub use load_gguf::{GgufSource, config_from_gguf, load_gguf};
pub use load_hf::{HfSource, config_from_hf, load_hf};
pub use model::{BatchEntry, Layer, Logits, Model, Scratch, TracePoint, Tracer};
pub use source::{Norm, Proj, WeightSource};
pub use stacked::Stacked;
