//! bitnet-rs: run BitNet b1.58 language models from Rust.
//!
//! Three layers, each a few lines:
//!
//! **Simple** — load a model (a GGUF file, a Hugging Face directory or a hub id) and generate:
//! ```
//! # fn main() -> Result<(), bitnet::Error> {
//! # let path = "../../fixtures/models/tied-gqa2/model-i2_s.gguf";
//! let model = bitnet::load(path)?;
//! let text = model.generate_text("The quick brown fox", bitnet::GenerateOptions::greedy(8))?;
//! assert!(!text.is_empty());
//! # Ok(()) }
//! ```
//!
//! **Builder** — the advanced options (kernel, context length, KV cache type and memory limit,
//! device, offline hub cache):
//! ```
//! # fn main() -> Result<(), bitnet::Error> {
//! # let path = "../../fixtures/models/tied-gqa2/hf-packed";
//! let model = bitnet::EngineBuilder::new(path)
//!     .context_length(64)
//!     .device(bitnet::Device::Cpu)
//!     .build()?;
//! assert_eq!(model.context_length(), 64);
//! # Ok(()) }
//! ```
//!
//! **Streaming** — a generation is an iterator of tokens with their text pieces; dropping it
//! cancels the generation:
//! ```
//! # fn main() -> Result<(), bitnet::Error> {
//! # let model = bitnet::load("../../fixtures/models/tied-gqa2/model-tq2_0.gguf")?;
//! let opts = bitnet::GenerateOptions { max_tokens: 4, ..bitnet::GenerateOptions::default() };
//! for token in model.generate("The quick", opts)? {
//!     print!("{}", token?.text);
//! }
//! # Ok(()) }
//! ```
#![deny(missing_docs)]

pub use bitnet_engine::{
    ChatMessage, ChatTemplate, Device, Engine, EngineBuilder, FinishReason, GenerateOptions,
    Generation, Inspection, KvType, ModelConfig, ModelFormat, ModelInfo, Prompt, PromptPrefix,
    SamplingOptions, TensorSummary, Token, Tokenizer, inspect, load_tokenizer,
};
pub use bitnet_engine::{bench, convert};

/// GPU options (head storage) for [`EngineBuilder::gpu_head`]; the KV cache type is
/// [`EngineBuilder::kv`] on every device.
pub mod cuda {
    pub use bitnet_engine::cuda::HeadType;
}

/// Everything that can go wrong loading or running a model.
pub type Error = bitnet_engine::EngineError;

/// The default thread count: the machine's physical cores.
pub fn default_threads() -> usize {
    bitnet_engine::default_threads()
}

/// Loads a model with default options: a GGUF file, a Hugging Face directory, or a hub repo id
/// (downloaded into the standard Hugging Face cache).
pub fn load(model: &str) -> Result<Engine, Error> {
    Engine::load(model)
}
