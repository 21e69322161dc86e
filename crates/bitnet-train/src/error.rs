//! The error type of training and export.

use std::path::PathBuf;

use thiserror::Error;

/// Everything that can go wrong while training or exporting a model.
#[derive(Debug, Error)]
pub enum TrainError {
    /// A tensor operation failed (a shape bug or an unsupported operation).
    #[error("tensor operation: {0}")]
    Candle(#[from] candle_core::Error),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The tokenizer could not be trained, loaded or run.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// The training data is unusable (too small, empty, ...).
    #[error("data: {0}")]
    Data(String),
    /// Options or presets that contradict each other or the data.
    #[error("invalid options: {0}")]
    Options(String),
    /// A checkpoint is missing parts or belongs to a different configuration.
    #[error("checkpoint {path}: {msg}")]
    Checkpoint {
        /// The checkpoint file.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
    /// Writing the GGUF export failed.
    #[error("GGUF export: {0}")]
    Gguf(#[from] bitnet_gguf::GgufError),
    /// Writing the Hugging Face export failed.
    #[error("Hugging Face export: {0}")]
    Hf(String),
    /// Training diverged (loss became NaN or infinite).
    #[error("training diverged at step {step}: loss {loss}")]
    Diverged {
        /// The step.
        step: usize,
        /// The loss seen.
        loss: f32,
    },
}

impl TrainError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> TrainError {
        let path = path.into();
        move |source| TrainError::Io { path, source }
    }
}

/// Results of this crate.
pub type Result<T> = std::result::Result<T, TrainError>;
