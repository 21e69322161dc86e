use thiserror::Error;

/// Errors from loading or running a model.
#[derive(Debug, Error)]
pub enum ModelError {
    /// A hyper-parameter is missing, contradictory or unusable.
    #[error("model config: {0}")]
    Config(String),
    /// A tensor is missing or has the wrong shape or type.
    #[error("tensor {name}: {msg}")]
    Tensor {
        /// Tensor name as stored in the file.
        name: String,
        /// What is wrong.
        msg: String,
    },
    /// The file's architecture is not one this engine runs.
    #[error(
        "unsupported architecture '{0}' (supported: bitnet-b1.58, bitnet-25, bitnet, BitNetForCausalLM)"
    )]
    Architecture(String),
    /// A token id outside the vocabulary.
    #[error("token id {id} is outside the vocabulary (size {vocab})")]
    TokenOutOfRange {
        /// The id.
        id: u32,
        /// Vocabulary size.
        vocab: usize,
    },
    /// The sequence would grow past the KV cache.
    #[error("context length exceeded: {needed} tokens needed, the context holds {capacity}")]
    ContextExceeded {
        /// Positions the request needs.
        needed: usize,
        /// Positions the cache holds.
        capacity: usize,
    },
    /// A GGUF-level error.
    #[error(transparent)]
    Gguf(#[from] bitnet_gguf::GgufError),
    /// A Hugging Face directory error.
    #[error(transparent)]
    Hf(#[from] bitnet_hf::HfError),
    /// A kernel or core-type error.
    #[error(transparent)]
    Core(#[from] bitnet_core::CoreError),
    /// The accelerator (GPU) failed: driver, compiler or memory.
    #[error("device: {0}")]
    Device(String),
}
