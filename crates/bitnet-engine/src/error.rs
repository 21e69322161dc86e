use thiserror::Error;

/// Errors of loading models and generating.
#[derive(Debug, Error)]
pub enum EngineError {
    /// The model could not be loaded or run.
    #[error(transparent)]
    Model(Box<bitnet_model::ModelError>),
    /// Tokenizer or chat template failure.
    #[error(transparent)]
    Tokenizer(Box<bitnet_tokenizer::TokenizerError>),
    /// Reading a GGUF file failed.
    #[error(transparent)]
    Gguf(Box<bitnet_gguf::GgufError>),
    /// Reading a Hugging Face directory or the hub failed.
    #[error(transparent)]
    Hf(Box<bitnet_hf::HfError>),
    /// A text prompt was given but the model has no tokenizer.
    #[error("this model has no tokenizer: pass token ids instead of text")]
    NoTokenizer,
    /// Chat needs a template and none is available.
    #[error("this model has no chat template")]
    NoChatTemplate,
    /// The prompt does not fit the context.
    #[error(
        "the prompt has {tokens} tokens but the context holds {context}: shorten it or raise the context length"
    )]
    PromptTooLong {
        /// Prompt tokens.
        tokens: usize,
        /// Context length.
        context: usize,
    },
    /// Invalid options.
    #[error("invalid options: {0}")]
    Options(String),
    /// The model argument names nothing usable.
    #[error("{0}")]
    Source(String),
    /// The requested device cannot be used.
    #[error("{0}")]
    Device(String),
    /// A file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
}

/// Boxed so that `Result<_, EngineError>` stays small on the happy path.
macro_rules! boxed_from {
    ($($variant:ident($ty:ty)),* $(,)?) => {$(
        impl From<$ty> for EngineError {
            fn from(e: $ty) -> Self {
                EngineError::$variant(Box::new(e))
            }
        }
    )*};
}

boxed_from!(
    Model(bitnet_model::ModelError),
    Tokenizer(bitnet_tokenizer::TokenizerError),
    Gguf(bitnet_gguf::GgufError),
    Hf(bitnet_hf::HfError),
);
