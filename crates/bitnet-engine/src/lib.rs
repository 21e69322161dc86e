//! The engine: loads a model (GGUF file, Hugging Face directory or hub id) with its tokenizer and
//! chat template, and runs generations on it.
//!
//! A [`Generation`] is an iterator: it prefills the prompt when created and produces one token
//! per `next()`. Dropping it cancels the work; nothing runs behind the caller's back. The CLI and
//! the library facade are both clients of this crate.
#![deny(missing_docs)]

pub mod bench;
mod candidates;
pub mod convert;
mod error;
mod generate;
mod inspect;
mod load;
pub mod perplexity;
pub mod sampling;
pub mod scheduler;
pub mod stop;

use std::sync::Arc;

pub use bitnet_model::{KvType, Model, ModelConfig};
pub use bitnet_tokenizer::{ChatMessage, ChatTemplate, Tokenizer};
pub use error::EngineError;
pub use generate::{FinishReason, GenerateOptions, Generation, Prompt, PromptPrefix, Token};
pub use inspect::{Inspection, TensorSummary, inspect, load_tokenizer};
pub use load::{Device, EngineBuilder, ModelFormat, ModelInfo};
/// The GPU backend's public options (its KV type follows [`EngineBuilder::kv`]).
pub mod cuda {
    pub use bitnet_cuda::HeadType;
}
pub use perplexity::{PerplexityOptions, PerplexityReport, perplexity};
pub use sampling::{Sampler, SamplingOptions};
pub use scheduler::{
    Completion, Event, EventSink, Request, Scheduler, SchedulerConfig, SchedulerStats, SubmitError,
};

/// The default thread count: the machine's physical cores.
pub fn default_threads() -> usize {
    bitnet_core::pool::physical_cores()
}

/// A loaded model, its tokenizer and chat template. Cheap to clone (shared).
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

struct Inner {
    model: Model,
    tokenizer: Option<Tokenizer>,
    chat_template: Option<ChatTemplate>,
    context_length: usize,
    info: ModelInfo,
}

impl Engine {
    /// Loads a model with default options: `model` is a GGUF file, a Hugging Face directory or a
    /// hub repo id.
    pub fn load(model: &str) -> Result<Self, EngineError> {
        EngineBuilder::new(model).build()
    }

    /// The model.
    pub fn model(&self) -> &Model {
        &self.inner.model
    }

    /// The tokenizer, if the model came with one.
    pub fn tokenizer(&self) -> Option<&Tokenizer> {
        self.inner.tokenizer.as_ref()
    }

    /// The chat template in use (the file's, else the built-in 2B4T one).
    pub fn chat_template(&self) -> Option<&ChatTemplate> {
        self.inner.chat_template.as_ref()
    }

    /// A handle on the loaded model (shared by the engine's clones) that a prefix's cache keeps,
    /// so that [`Engine::made`] tells whose it is (the allocation cannot be reused meanwhile).
    pub(crate) fn handle(&self) -> std::sync::Weak<Inner> {
        Arc::downgrade(&self.inner)
    }

    /// Whether `handle` ([`Engine::handle`]) is this engine's (or a clone's).
    pub(crate) fn made(&self, handle: &std::sync::Weak<Inner>) -> bool {
        std::ptr::eq(handle.as_ptr(), Arc::as_ptr(&self.inner))
    }

    /// Positions a generation may use (prompt plus output).
    pub fn context_length(&self) -> usize {
        self.inner.context_length
    }

    /// Where the model came from and what it is.
    pub fn info(&self) -> &ModelInfo {
        &self.inner.info
    }

    /// Starts a generation: tokenizes and prefills the prompt; iterate the result for tokens.
    pub fn generate(
        &self,
        prompt: impl Into<Prompt>,
        opts: GenerateOptions,
    ) -> Result<Generation, EngineError> {
        Generation::start(self.clone(), prompt.into(), opts, None)
    }

    /// Starts a generation of a prompt that goes on from `prefix` (an earlier generation's
    /// [`Generation::into_prefix`] on this engine or a clone of it, e.g. a chat's previous
    /// turn): the tokens the two share are taken from its cache and only the rest is prefilled.
    /// The output is the same as [`generate`](Self::generate)'s (a position's keys and values do
    /// not depend on how the prompt was split into passes); where they share nothing, the cache
    /// is reused empty. A prefix from another engine is an error.
    pub fn generate_after(
        &self,
        prompt: impl Into<Prompt>,
        opts: GenerateOptions,
        prefix: PromptPrefix,
    ) -> Result<Generation, EngineError> {
        Generation::start(self.clone(), prompt.into(), opts, Some(prefix))
    }

    /// Generates and returns the whole text.
    pub fn generate_text(
        &self,
        prompt: impl Into<Prompt>,
        opts: GenerateOptions,
    ) -> Result<String, EngineError> {
        self.generate(prompt, opts)?.collect_text()
    }

    /// Renders chat messages with the chat template into a prompt (ending with the assistant's
    /// turn).
    pub fn render_chat(&self, messages: &[ChatMessage]) -> Result<String, EngineError> {
        let template = self.chat_template().ok_or(EngineError::NoChatTemplate)?;
        let tok = self.tokenizer().ok_or(EngineError::NoTokenizer)?;
        let piece = |id: Option<u32>| id.and_then(|i| tok.token_piece(i)).unwrap_or_default();
        Ok(template.render(messages, true, piece(tok.bos_id()), piece(tok.eos_id()))?)
    }
}
