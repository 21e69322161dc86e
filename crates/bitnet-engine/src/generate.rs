//! One generation: prefill the prompt, then decode token by token as an iterator. Dropping the
//! iterator cancels the generation (nothing runs in the background).

use bitnet_model::{BatchEntry, KvCache, Logits, Scratch};
use serde::{Deserialize, Serialize};

use crate::candidates::{Row, StepOut, StepRows};
use crate::sampling::{Sampler, SamplingOptions};
use crate::stop::{StopMatcher, StopOutcome};
use crate::{Engine, EngineError};

/// What to generate from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Prompt {
    /// Text, tokenized with the model's tokenizer (special tokens in it are parsed).
    Text(String),
    /// Token ids, fed as they are (no BOS added).
    Tokens(Vec<u32>),
    /// A conversation, rendered with the model's chat template (BOS added once, whether or not
    /// the template writes it) and ending with the assistant's turn.
    Chat(Vec<bitnet_tokenizer::ChatMessage>),
}

impl From<&str> for Prompt {
    fn from(s: &str) -> Self {
        Prompt::Text(s.to_string())
    }
}

impl From<String> for Prompt {
    fn from(s: String) -> Self {
        Prompt::Text(s)
    }
}

impl From<Vec<u32>> for Prompt {
    fn from(t: Vec<u32>) -> Self {
        Prompt::Tokens(t)
    }
}

/// Options of one generation. `Default` samples like llama.cpp and stops after 256 tokens.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct GenerateOptions {
    /// Most tokens to generate.
    pub max_tokens: usize,
    /// Sampling settings.
    pub sampling: SamplingOptions,
    /// Stop strings: generation ends before the first of them, which is not returned.
    pub stop: Vec<String>,
    /// Whether to add BOS in front of a text prompt (`None`: as the model's metadata says).
    pub add_bos: Option<bool>,
    /// Keep going past end-of-generation tokens (EOS/EOT).
    pub ignore_eos: bool,
    /// Return each generated token's full logit vector.
    pub logits: bool,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        Self {
            max_tokens: 256,
            sampling: SamplingOptions::default(),
            stop: Vec::new(),
            add_bos: None,
            ignore_eos: false,
            logits: false,
        }
    }
}

impl GenerateOptions {
    /// Greedy decoding of at most `max_tokens` tokens: reproducible, what tests compare.
    pub fn greedy(max_tokens: usize) -> Self {
        Self {
            max_tokens,
            sampling: SamplingOptions::greedy(),
            ..Self::default()
        }
    }
}

/// Why a generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// An end-of-generation token or a stop string.
    Stop,
    /// `max_tokens` reached.
    Length,
    /// The model's context is full.
    ContextFull,
}

impl FinishReason {
    /// The OpenAI name (`stop` or `length`).
    pub fn openai(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length | FinishReason::ContextFull => "length",
        }
    }
}

/// One generated token.
#[derive(Clone, Debug, PartialEq)]
pub struct Token {
    /// Its id.
    pub id: u32,
    /// Text released by this token: may be empty (an incomplete UTF-8 character or a possible
    /// stop string is held back) or hold text of earlier tokens.
    pub text: String,
    /// The logits it was chosen from (only with [`GenerateOptions::logits`]).
    pub logits: Option<Vec<f32>>,
}

/// A finished generation's KV cache and the tokens it holds ([`Generation::into_prefix`]), for
/// a next prompt that starts with them ([`crate::Engine::generate_after`]): a chat's next turn
/// prefills only its new tokens.
pub struct PromptPrefix {
    tokens: Vec<u32>,
    cache: KvCache,
    /// The engine whose model wrote the cache ([`Engine::handle`]).
    engine: std::sync::Weak<crate::Inner>,
}

impl PromptPrefix {
    /// `cache` and the tokens it holds (the first `cache.len()` of `tokens`), written by
    /// `engine`'s model.
    pub(crate) fn new(engine: &Engine, mut tokens: Vec<u32>, cache: KvCache) -> Self {
        tokens.truncate(cache.len());
        Self {
            tokens,
            cache,
            engine: engine.handle(),
        }
    }

    /// The tokens whose keys and values the cache holds, in order.
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    /// Positions of `prompt` it holds: the shared leading tokens, at most all of the prompt but
    /// its last, whose logits the prompt's pass must return.
    pub(crate) fn shared_with(&self, prompt: &[u32]) -> usize {
        common_prefix(&self.tokens, prompt).min(prompt.len().saturating_sub(1))
    }

    /// Its cache, cut back to `n` positions and made to hold `capacity`
    /// ([`bitnet_model::Model::resize_cache`]).
    pub(crate) fn into_cache(
        self,
        engine: &Engine,
        n: usize,
        capacity: usize,
    ) -> Result<KvCache, EngineError> {
        let mut cache = self.cache;
        cache.truncate(n);
        engine.model().resize_cache(&mut cache, capacity)?;
        Ok(cache)
    }
}

/// How many leading tokens `a` and `b` share.
fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// A running generation; iterate it for tokens.
pub struct Generation {
    engine: Engine,
    opts: GenerateOptions,
    cache: KvCache,
    scratch: Scratch,
    sampler: Sampler,
    tokens: Vec<u32>,
    prompt_len: usize,
    /// What each forward returns: logit rows, or (on a device) the best candidates.
    mode: StepOut,
    rows: StepRows,
    utf8: Vec<u8>,
    stop: StopMatcher,
    finish: Option<FinishReason>,
    tail: Option<String>,
    /// Prompt tokens taken from a [`PromptPrefix`] instead of being prefilled.
    reused: usize,
}

impl Generation {
    /// Tokenizes and prefills `prompt`, after the part of it that `prefix` already holds (all
    /// of it but its last token at most, whose logits are needed).
    pub(crate) fn start(
        engine: Engine,
        prompt: Prompt,
        opts: GenerateOptions,
        prefix: Option<PromptPrefix>,
    ) -> Result<Self, EngineError> {
        opts.sampling.validate().map_err(EngineError::Options)?;
        let tokens = crate::scheduler::tokenize_prompt(&engine, prompt, opts.add_bos)?;
        let ctx = engine.context_length();
        let model = engine.model();
        let (mut cache, reused) = match prefix {
            Some(p) if !engine.made(&p.engine) => {
                return Err(EngineError::Options(
                    "this prompt prefix was made by another engine: its cache holds another \
                     model's keys and values"
                        .into(),
                ));
            }
            Some(p) => {
                let n = p.shared_with(&tokens);
                (p.into_cache(&engine, n, ctx)?, n)
            }
            None => (model.new_cache(ctx), 0),
        };
        let mut scratch = Scratch::default();
        let sampler = Sampler::new(opts.sampling.clone());
        let mode = StepOut::choose(model, [(&sampler, opts.logits)]);
        let mut rows = StepRows::default();
        rows.forward(
            mode,
            model,
            &mut [entry(&tokens[reused..], &mut cache)],
            &mut scratch,
            opts.max_tokens > 1,
        )?;
        let stop = StopMatcher::new(&opts.stop);
        let prompt_len = tokens.len();
        let finish = (opts.max_tokens == 0).then_some(FinishReason::Length);
        Ok(Self {
            engine,
            opts,
            cache,
            scratch,
            sampler,
            tokens,
            prompt_len,
            mode,
            rows,
            utf8: Vec::new(),
            stop,
            finish,
            tail: None,
            reused,
        })
    }

    /// Prompt tokens taken from the [`PromptPrefix`] it started after instead of being
    /// prefilled.
    pub fn reused_tokens(&self) -> usize {
        self.reused
    }

    /// Its KV cache and the tokens it holds (the prompt and every generated token but the
    /// last, which was never fed), for [`crate::Engine::generate_after`].
    pub fn into_prefix(self) -> PromptPrefix {
        PromptPrefix::new(&self.engine, self.tokens, self.cache)
    }

    /// The prompt's token ids (with BOS if one was added).
    pub fn prompt_tokens(&self) -> &[u32] {
        &self.tokens[..self.prompt_len]
    }

    /// The ids generated so far.
    pub fn generated(&self) -> &[u32] {
        &self.tokens[self.prompt_len..]
    }

    /// Why generation ended (`None` while it runs).
    pub fn finish_reason(&self) -> Option<FinishReason> {
        self.finish
    }

    /// Text held back at the end (an unfinished character or a partial stop string that never
    /// completed); call after the iterator returns `None`.
    pub fn take_tail(&mut self) -> String {
        self.tail.take().unwrap_or_default()
    }

    /// Runs the generation to the end and returns the text.
    pub fn collect_text(mut self) -> Result<String, EngineError> {
        let mut out = String::new();
        for t in self.by_ref() {
            out.push_str(&t?.text);
        }
        out.push_str(&self.take_tail());
        Ok(out)
    }

    fn step(&mut self) -> Result<Option<Token>, EngineError> {
        if self.finish.is_some() {
            return Ok(None);
        }
        let generated = &self.tokens[self.prompt_len..];
        let vocab = self.engine.model().config().vocab_size;
        let row = self
            .rows
            .row(0, vocab)
            .ok_or_else(|| EngineError::Device("the step returned no logits".into()))?;
        let logits = match (&row, self.opts.logits) {
            (Row::Logits(l), true) => Some(l.to_vec()),
            _ => None,
        };
        let id = self.sampler.pick(row, &self.tokens, generated);
        self.tokens.push(id);
        let n_gen = self.tokens.len() - self.prompt_len;
        let tok = self.engine.tokenizer();
        let is_eog = tok.is_some_and(|t| t.is_eog(id)) && !self.opts.ignore_eos;
        let mut text = String::new();
        if is_eog {
            self.finish = Some(FinishReason::Stop);
        } else if let Some(t) = tok {
            if let Some(bytes) = t.token_bytes(id) {
                self.utf8.extend_from_slice(&bytes);
            }
            let valid = take_valid_utf8(&mut self.utf8);
            match self.stop.push(&valid) {
                StopOutcome::Continue(s) => text = s,
                StopOutcome::Stopped(s) => {
                    text = s;
                    self.finish = Some(FinishReason::Stop);
                }
            }
        }
        if self.finish.is_none() {
            if n_gen >= self.opts.max_tokens {
                self.finish = Some(FinishReason::Length);
            } else if self.cache.len() >= self.cache.capacity() {
                self.finish = Some(FinishReason::ContextFull);
            } else {
                // Another step follows this one unless it reaches max_tokens (or the text
                // stops, which the step after it then costs).
                let then = n_gen + 1 < self.opts.max_tokens;
                self.rows.forward(
                    self.mode,
                    self.engine.model(),
                    &mut [entry(&[id], &mut self.cache)],
                    &mut self.scratch,
                    then,
                )?;
            }
        }
        if self.finish.is_some() && self.tail.is_none() && self.finish != Some(FinishReason::Stop) {
            let mut rest = self.stop.finish();
            rest.push_str(&String::from_utf8_lossy(&std::mem::take(&mut self.utf8)));
            self.tail = Some(rest);
        }
        Ok(Some(Token { id, text, logits }))
    }
}

impl Iterator for Generation {
    type Item = Result<Token, EngineError>;

    fn next(&mut self) -> Option<Self::Item> {
        match self.step() {
            Ok(Some(t)) => Some(Ok(t)),
            Ok(None) => None,
            Err(e) => {
                self.finish = Some(FinishReason::Stop);
                Some(Err(e))
            }
        }
    }
}

/// Removes and returns the longest valid UTF-8 prefix of `buf`; invalid bytes that can never
/// start a character are replaced with U+FFFD instead of being held forever.
pub(crate) fn take_valid_utf8(buf: &mut Vec<u8>) -> String {
    let mut out = String::new();
    loop {
        match std::str::from_utf8(buf) {
            Ok(s) => {
                out.push_str(s);
                buf.clear();
                return out;
            }
            Err(e) => {
                let good = e.valid_up_to();
                out.push_str(std::str::from_utf8(&buf[..good]).unwrap_or_default());
                match e.error_len() {
                    // An incomplete character at the end: keep it for the next token.
                    None => {
                        buf.drain(..good);
                        return out;
                    }
                    Some(bad) => {
                        out.push('\u{FFFD}');
                        buf.drain(..good + bad);
                    }
                }
            }
        }
    }
}

/// One sequence's entry of a step, wanting its last row.
fn entry<'a>(tokens: &'a [u32], cache: &'a mut KvCache) -> BatchEntry<'a> {
    BatchEntry {
        tokens,
        cache,
        logits: Logits::Last,
    }
}

#[cfg(test)]
mod tests {
    use super::take_valid_utf8;

    #[test]
    fn utf8_is_released_only_when_complete() {
        let heart = "❤".as_bytes();
        let mut buf = heart[..2].to_vec();
        assert_eq!(take_valid_utf8(&mut buf), "");
        buf.extend_from_slice(&heart[2..]);
        buf.extend_from_slice(b"ok");
        assert_eq!(take_valid_utf8(&mut buf), "❤ok");
        assert!(buf.is_empty());
        let mut buf = vec![b'a', 0xff, b'b'];
        assert_eq!(take_valid_utf8(&mut buf), "a\u{FFFD}b");
    }
}
