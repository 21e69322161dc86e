//! The crate's error type: every way loading a vocabulary, encoding, decoding or rendering a chat
//! template can fail, with the context (file, line, token, merge) a user needs to fix the input.

use std::path::PathBuf;

/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// The vocabulary uses a tokenizer family this crate does not implement (e.g. GGUF
    /// `tokenizer.ggml.model = llama`, SentencePiece); refusing is safer than tokenizing wrongly.
    #[error("unsupported tokenizer model '{model}': {reason}")]
    UnsupportedModel {
        /// The model name as found in the vocabulary.
        model: String,
        /// Why it is refused and what is supported instead.
        reason: String,
    },
    /// A byte-level GGUF vocabulary without `tokenizer.ggml.pre`: the split regex cannot be
    /// known, and guessing silently changes token ids.
    #[error(
        "GGUF vocabulary has no tokenizer.ggml.pre, so its pre-tokenizer is unknown; refusing to \
         guess (supported values: {supported})"
    )]
    MissingPre {
        /// The supported `tokenizer.ggml.pre` values.
        supported: String,
    },
    /// A `tokenizer.ggml.pre` value this crate has no pre-tokenizer for.
    #[error("unsupported tokenizer.ggml.pre '{pre}' (supported values: {supported})")]
    UnknownPre {
        /// The value found in the vocabulary.
        pre: String,
        /// The supported values.
        supported: String,
    },
    /// The token list, token types or special-token ids are inconsistent.
    #[error("invalid vocabulary: {0}")]
    InvalidVocab(String),
    /// A BPE merge that cannot be applied (malformed, or naming tokens not in the vocabulary).
    #[error("invalid BPE merge #{index} '{merge}': {reason}")]
    InvalidMerge {
        /// Position of the merge in the merge list (its rank).
        index: usize,
        /// The merge as written in the source.
        merge: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A JSON file (tokenizer.json, tokenizer_config.json) is not valid JSON.
    #[error("{path}: invalid JSON: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// The parser error (with line and column).
        #[source]
        source: serde_json::Error,
    },
    /// A file parsed but its content is not what a tokenizer file must contain.
    #[error("{path}: {reason}")]
    InvalidFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A malformed line in a tiktoken (`base64-token rank`) file.
    #[error("{path}:{line}: {reason}")]
    Tiktoken {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong with the line.
        reason: String,
    },
    /// A token id outside the vocabulary was given to decode.
    #[error("token id {id} is out of range (vocabulary has {vocab_size} tokens)")]
    IdOutOfRange {
        /// The offending id.
        id: u32,
        /// Number of ids the vocabulary defines.
        vocab_size: usize,
    },
    /// The `tokenizers` library rejected an operation.
    #[error("tokenizers library error while {context}: {message}")]
    Backend {
        /// What this crate was doing.
        context: String,
        /// The library's message.
        message: String,
    },
    /// A chat template failed to compile or render (including `raise_exception` calls).
    #[error("chat template: {0}")]
    ChatTemplate(String),
}

/// Shorthand for results of this crate.
pub type Result<T> = std::result::Result<T, TokenizerError>;

impl TokenizerError {
    pub(crate) fn backend(context: impl Into<String>, err: impl std::fmt::Display) -> Self {
        TokenizerError::Backend {
            context: context.into(),
            message: err.to_string(),
        }
    }
}
