//! The continuous-batching scheduler: one engine thread owns the model's time and every running
//! sequence's KV cache; requests arrive over a channel and stream their tokens back through a
//! sink each.
//!
//! Each engine step gathers the active sequences: those still prefilling bring a chunk of their
//! prompt (all prefills of a step share [`SchedulerConfig::prefill_chunk`] tokens, so running
//! streams keep flowing while a long prompt is read), those decoding bring their last token, and
//! one [`Model::forward_batch`](bitnet_model::Model::forward_batch) runs them all. Because that
//! forward is bit-identical per row to running a sequence alone, and sampling, stop strings and
//! UTF-8 handling here mirror [`Generation`](crate::Generation), a greedy request gives exactly
//! the output of [`Engine::generate`](crate::Engine::generate) whatever else runs beside it.
//!
//! Admission: a request reserves the KV memory it may need (`min(prompt + max_tokens, context)`
//! positions x `2 * n_layers * kv_dim * 4` bytes) against [`SchedulerConfig::kv_budget_bytes`];
//! at most [`SchedulerConfig::max_batch`] run at once; the rest wait, and past
//! [`SchedulerConfig::max_queue`] waiting requests [`Scheduler::submit`] refuses with
//! [`SubmitError::QueueFull`] instead of queueing without bound. A sink that reports itself
//! closed (the client went away) has its sequence and cache freed at the next step.
//!
//! Prompt cache: a finished sequence's KV cache is kept (at most
//! [`SchedulerConfig::prompt_cache`] of them, oldest first out, their bytes
//! counted against the same KV budget and given up whenever a request needs the room), with the
//! tokens it holds. A request whose prompt starts with some of those tokens takes that cache over,
//! cut back to the shared prefix, and prefills only the rest: the next turn of a chat, whose
//! request repeats the whole conversation, reads only its new message. Positions are computed
//! the same way whatever else shared their step, so a reused prefix holds exactly the keys and
//! values a fresh prefill would write, and the output is unchanged.
//!
//! This module must not know about HTTP or any async runtime: sinks are plain callbacks.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bitnet_model::{BatchEntry, KvCache, Logits, Scratch};

use crate::candidates::{Row, StepOut, StepRows};
use crate::sampling::Sampler;
use crate::stop::{StopMatcher, StopOutcome};
use crate::{Engine, EngineError, FinishReason, GenerateOptions, Prompt, PromptPrefix, Token};

/// Limits of the scheduler.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SchedulerConfig {
    /// Most sequences stepped together.
    pub max_batch: usize,
    /// Most requests waiting for a slot; past it, submissions are refused.
    pub max_queue: usize,
    /// KV memory all running sequences may reserve together, in bytes.
    pub kv_budget_bytes: usize,
    /// Prompt tokens prefilled per step, over all prefilling sequences together.
    pub prefill_chunk: usize,
    /// Finished sequences' caches kept for requests that start with the same tokens (0: none).
    pub prompt_cache: usize,
}

/// The most sequences batched by default on the CPU.
pub const CPU_MAX_BATCH: usize = 8;
/// Finished sequences' caches kept by default on the CPU ([`SchedulerConfig::prompt_cache`]; on
/// a device, as many as sequences run at once).
pub const PROMPT_CACHE: usize = 4;
/// The most sequences batched by default on a device, however much memory it has: an H200
/// decodes 256 sequences at ~32,300 tok/s against ~22,900 for 64 (BENCHMARKS.md, session 24).
pub const DEVICE_MAX_BATCH: usize = 256;

/// The default batch for a model on a device with `free` bytes of memory left once it is
/// loaded (`None`: on the CPU, or a device that cannot tell), where one sequence at full context
/// takes `per_sequence` bytes of KV cache: [`CPU_MAX_BATCH`] on the CPU (and a device that
/// cannot tell), else as many full contexts as 80% of the free memory holds (the rest left to
/// the kernels' scratch), from 1 to [`DEVICE_MAX_BATCH`].
pub fn default_max_batch(free: Option<u64>, per_sequence: u64) -> usize {
    match free {
        None => CPU_MAX_BATCH,
        Some(free) => {
            let fits = (free / 5 * 4) / per_sequence.max(1);
            fits.clamp(1, DEVICE_MAX_BATCH as u64) as usize
        }
    }
}

impl SchedulerConfig {
    /// Defaults for `engine`: [`default_max_batch`] sequences (by the free memory of its device,
    /// if it runs on one), 64 waiting, room for every sequence at full context, 256-token
    /// prefill chunks, finished caches kept for reuse: [`PROMPT_CACHE`] on the CPU, one per
    /// sequence of the batch on a device (their memory is the budget's, given up on demand).
    pub fn for_engine(engine: &Engine) -> Self {
        let per_sequence = engine
            .context_length()
            .saturating_mul(kv_bytes_per_position(engine)) as u64;
        let free = engine.model().device_memory().map(|(free, _)| free);
        Self::for_batch(engine, default_max_batch(free, per_sequence))
    }

    /// [`for_engine`](Self::for_engine)'s defaults for a batch of `max_batch` sequences (the
    /// KV budget and, on a device, the prompt cache follow it).
    pub fn for_batch(engine: &Engine, max_batch: usize) -> Self {
        let on_device = engine.model().device_memory().is_some();
        Self {
            max_batch,
            max_queue: 64,
            kv_budget_bytes: max_batch
                .saturating_mul(engine.context_length())
                .saturating_mul(kv_bytes_per_position(engine)),
            prefill_chunk: 256,
            prompt_cache: if on_device { max_batch } else { PROMPT_CACHE },
        }
    }
}

/// Bytes of KV cache one position takes (keys and values of every layer; f32 on the CPU, the
/// device's element type on a GPU).
pub fn kv_bytes_per_position(engine: &Engine) -> usize {
    engine.model().kv_bytes_per_position()
}

/// What a request's sink receives, in order: tokens, then exactly one `Done` or `Error`.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// One generated token and the text it releases (possibly empty).
    Token(Token),
    /// Generation ended normally.
    Done(Completion),
    /// Generation was stopped by a failure or by shutdown; no more events follow.
    Error(String),
}

/// How a request ended.
#[derive(Clone, Debug, PartialEq)]
pub struct Completion {
    /// Why it ended.
    pub finish: FinishReason,
    /// Tokens of the prompt.
    pub prompt_tokens: usize,
    /// Tokens generated (an end-of-generation token counts).
    pub completion_tokens: usize,
    /// Prompt tokens taken from the prompt cache rather than prefilled.
    pub cached_tokens: usize,
    /// Text held back until the end (an unfinished character or a partial stop string); append
    /// it after the tokens' text.
    pub tail: String,
}

/// Where a request's events go. `send` returns `false` once nobody listens; `is_closed` lets
/// the scheduler notice a departed client even while it has nothing to send (during prefill).
pub trait EventSink: Send + 'static {
    /// Delivers an event; `false` means the receiver is gone and the sequence should end.
    fn send(&mut self, event: Event) -> bool;
    /// Whether the receiver is gone.
    fn is_closed(&self) -> bool {
        false
    }
}

impl EventSink for Sender<Event> {
    fn send(&mut self, event: Event) -> bool {
        Sender::send(self, event).is_ok()
    }
}

/// Why a request was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// Every slot and queue place is taken: retry later.
    #[error(
        "the server is busy: {running} requests running or waiting (limit {limit}); retry later"
    )]
    QueueFull {
        /// Requests running or waiting.
        running: usize,
        /// The limit (batch + queue).
        limit: usize,
    },
    /// The request could never run within the KV budget.
    #[error(
        "this request may need {needed} bytes of KV cache ({positions} positions) but the server's KV budget is {budget} bytes: lower max_tokens or shorten the prompt"
    )]
    TooLarge {
        /// Bytes the request reserves.
        needed: usize,
        /// Positions it reserves.
        positions: usize,
        /// The whole budget.
        budget: usize,
    },
    /// The prompt is empty, too long or has ids outside the vocabulary.
    #[error(transparent)]
    Invalid(#[from] EngineError),
    /// The scheduler is shutting down (or its thread is gone).
    #[error("the server is shutting down")]
    ShuttingDown,
}

/// A request: prompt token ids (see [`tokenize_prompt`]), its options and its sink.
pub struct Request {
    /// The prompt's token ids, fed as they are.
    pub prompt: Vec<u32>,
    /// Generation options (sampling, max tokens, stop strings, ...).
    pub opts: GenerateOptions,
    /// Where its events go.
    pub sink: Box<dyn EventSink>,
}

/// Counters of the scheduler, readable from any thread.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SchedulerStats {
    /// Requests accepted and not yet finished (running or waiting).
    pub in_flight: usize,
    /// Sequences in the running batch.
    pub active: usize,
    /// Requests waiting for a slot (`in_flight - active`).
    pub waiting: usize,
    /// KV bytes reserved by running sequences.
    pub kv_reserved_bytes: usize,
    /// KV bytes held by running sequences' caches after the last step.
    pub kv_used_bytes: usize,
    /// Engine steps run (batched forwards).
    pub steps: u64,
    /// Tokens generated in total.
    pub generated_tokens: u64,
    /// Prompt tokens prefilled in total.
    pub prompt_tokens: u64,
    /// Prompt tokens taken from the prompt cache instead of being prefilled, in total.
    pub cached_prompt_tokens: u64,
    /// Finished sequences' caches kept for reuse.
    pub cached_entries: usize,
    /// KV bytes those caches hold (counted against the budget beside `kv_reserved_bytes`).
    pub cached_bytes: usize,
}

#[derive(Default)]
struct Shared {
    in_flight: AtomicUsize,
    active: AtomicUsize,
    kv_reserved: AtomicUsize,
    kv_used: AtomicUsize,
    steps: AtomicU64,
    generated: AtomicU64,
    prompt: AtomicU64,
    cached_prompt: AtomicU64,
    cached_entries: AtomicUsize,
    cached_bytes: AtomicUsize,
    shutting_down: AtomicBool,
}

enum Msg {
    Submit(Box<Pending>),
    Shutdown(Instant),
}

struct Pending {
    prompt: Vec<u32>,
    opts: GenerateOptions,
    sink: Box<dyn EventSink>,
    /// KV positions it reserves (prompt + max_tokens, at most the context): its cache holds
    /// exactly that many.
    positions: usize,
}

/// Handle to the engine thread; cheap to clone, shareable across threads.
#[derive(Clone)]
pub struct Scheduler {
    engine: Engine,
    config: SchedulerConfig,
    tx: Sender<Msg>,
    shared: Arc<Shared>,
    thread: Arc<Mutex<Option<JoinHandle<()>>>>,
}

impl Scheduler {
    /// Starts the engine thread for `engine`.
    pub fn start(engine: Engine, config: SchedulerConfig) -> Result<Self, EngineError> {
        if config.max_batch == 0 {
            return Err(EngineError::Options("max_batch must be at least 1".into()));
        }
        let per_pos = kv_bytes_per_position(&engine);
        if config.kv_budget_bytes < per_pos.saturating_mul(2) {
            return Err(EngineError::Options(format!(
                "a KV budget of {} bytes holds fewer than 2 positions ({per_pos} bytes each)",
                config.kv_budget_bytes
            )));
        }
        let (tx, rx) = std::sync::mpsc::channel();
        let shared = Arc::new(Shared::default());
        let worker = Worker {
            engine: engine.clone(),
            config: config.clone(),
            shared: shared.clone(),
            rx,
            waiting: VecDeque::new(),
            active: Vec::new(),
            scratch: Scratch::default(),
            rows: StepRows::default(),
            cached: Vec::new(),
            clock: 0,
            deadline: None,
            disconnected: false,
        };
        let handle = std::thread::Builder::new()
            .name("bitnet-engine".into())
            .spawn(move || worker.run())
            .map_err(|e| EngineError::Options(format!("cannot start the engine thread: {e}")))?;
        Ok(Self {
            engine,
            config,
            tx,
            shared,
            thread: Arc::new(Mutex::new(Some(handle))),
        })
    }

    /// The engine it runs.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Its limits.
    pub fn config(&self) -> &SchedulerConfig {
        &self.config
    }

    /// Queues a request. It joins the running batch at the next step if a slot and KV budget
    /// are free, else waits; refused when the queue is full, the request can never fit, or the
    /// scheduler is stopping.
    pub fn submit(&self, req: Request) -> Result<(), SubmitError> {
        if self.shared.shutting_down.load(Ordering::SeqCst) {
            return Err(SubmitError::ShuttingDown);
        }
        req.opts
            .sampling
            .validate()
            .map_err(|e| SubmitError::Invalid(EngineError::Options(e)))?;
        let ctx = self.engine.context_length();
        if req.prompt.is_empty() {
            return Err(EngineError::Options("the prompt is empty".into()).into());
        }
        if req.prompt.len() >= ctx {
            return Err(EngineError::PromptTooLong {
                tokens: req.prompt.len(),
                context: ctx,
            }
            .into());
        }
        let vocab = self.engine.model().config().vocab_size;
        if let Some(&id) = req.prompt.iter().find(|&&t| t as usize >= vocab) {
            return Err(EngineError::Options(format!(
                "prompt token id {id} is outside the vocabulary ({vocab} tokens)"
            ))
            .into());
        }
        let positions = req
            .prompt
            .len()
            .saturating_add(req.opts.max_tokens)
            .min(ctx);
        let needed = positions.saturating_mul(kv_bytes_per_position(&self.engine));
        if needed > self.config.kv_budget_bytes {
            return Err(SubmitError::TooLarge {
                needed,
                positions,
                budget: self.config.kv_budget_bytes,
            });
        }
        let limit = self.config.max_batch.saturating_add(self.config.max_queue);
        let prev = self.shared.in_flight.fetch_add(1, Ordering::SeqCst);
        if prev >= limit {
            self.shared.in_flight.fetch_sub(1, Ordering::SeqCst);
            return Err(SubmitError::QueueFull {
                running: prev,
                limit,
            });
        }
        let pending = Pending {
            prompt: req.prompt,
            opts: req.opts,
            sink: req.sink,
            positions,
        };
        if self.tx.send(Msg::Submit(Box::new(pending))).is_err() {
            self.shared.in_flight.fetch_sub(1, Ordering::SeqCst);
            return Err(SubmitError::ShuttingDown);
        }
        Ok(())
    }

    /// Current counters.
    pub fn stats(&self) -> SchedulerStats {
        let s = &self.shared;
        let in_flight = s.in_flight.load(Ordering::SeqCst);
        let active = s.active.load(Ordering::SeqCst);
        SchedulerStats {
            in_flight,
            active,
            waiting: in_flight.saturating_sub(active),
            kv_reserved_bytes: s.kv_reserved.load(Ordering::SeqCst),
            kv_used_bytes: s.kv_used.load(Ordering::SeqCst),
            steps: s.steps.load(Ordering::SeqCst),
            generated_tokens: s.generated.load(Ordering::SeqCst),
            prompt_tokens: s.prompt.load(Ordering::SeqCst),
            cached_prompt_tokens: s.cached_prompt.load(Ordering::SeqCst),
            cached_entries: s.cached_entries.load(Ordering::SeqCst),
            cached_bytes: s.cached_bytes.load(Ordering::SeqCst),
        }
    }

    /// Whether [`shutdown`](Self::shutdown) was called.
    pub fn is_shutting_down(&self) -> bool {
        self.shared.shutting_down.load(Ordering::SeqCst)
    }

    /// Stops accepting requests; running and waiting ones go on until `grace` has passed, then
    /// get [`Event::Error`] and the engine thread exits. Call [`join`](Self::join) to wait.
    pub fn shutdown(&self, grace: Duration) {
        self.shared.shutting_down.store(true, Ordering::SeqCst);
        let _ = self.tx.send(Msg::Shutdown(Instant::now() + grace));
    }

    /// Waits for the engine thread to exit (after [`shutdown`](Self::shutdown)).
    pub fn join(&self) {
        let handle = match self.thread.lock() {
            Ok(mut g) => g.take(),
            Err(p) => p.into_inner().take(),
        };
        if let Some(h) = handle {
            let _ = h.join();
        }
    }
}

/// Tokenizes a prompt exactly as [`Engine::generate`](crate::Engine::generate) does (BOS per
/// `add_bos` or the model's default for text; the chat template for conversations), and checks
/// that it is non-empty and fits the context. Runs on the caller's thread, not the engine's.
pub fn tokenize_prompt(
    engine: &Engine,
    prompt: Prompt,
    add_bos: Option<bool>,
) -> Result<Vec<u32>, EngineError> {
    let tokens = match prompt {
        Prompt::Tokens(t) => t,
        Prompt::Text(text) => {
            let tok = engine.tokenizer().ok_or(EngineError::NoTokenizer)?;
            let add_bos = add_bos.unwrap_or_else(|| tok.add_bos_default());
            tok.encode(&text, add_bos, true)?
        }
        Prompt::Chat(messages) => {
            let rendered = engine.render_chat(&messages)?;
            let tok = engine.tokenizer().ok_or(EngineError::NoTokenizer)?;
            tok.encode_chat_prompt(&rendered)?
        }
    };
    if tokens.is_empty() {
        return Err(EngineError::Options("the prompt is empty".into()));
    }
    let ctx = engine.context_length();
    if tokens.len() >= ctx {
        return Err(EngineError::PromptTooLong {
            tokens: tokens.len(),
            context: ctx,
        });
    }
    Ok(tokens)
}

/// One running sequence, owned by the engine thread.
struct Seq {
    tokens: Vec<u32>,
    prompt_len: usize,
    /// Tokens already in the cache.
    fed: usize,
    cache: KvCache,
    sampler: Sampler,
    stop: StopMatcher,
    utf8: Vec<u8>,
    opts: GenerateOptions,
    sink: Box<dyn EventSink>,
    reserve: usize,
    /// Set once it has ended (sent its last event or lost its client).
    done: bool,
    /// Set when it ended by a failure: its cache is not kept.
    failed: bool,
    /// Prompt tokens it took from the prompt cache.
    reused: usize,
}

/// A finished sequence's cache kept for a request that starts with the same tokens.
struct Cached {
    prefix: PromptPrefix,
    /// What it counts against the KV budget (its capacity's worth of positions).
    bytes: usize,
    /// When it was kept ([`Worker::clock`]): the oldest leaves first.
    used: u64,
}

struct Worker {
    engine: Engine,
    config: SchedulerConfig,
    shared: Arc<Shared>,
    rx: Receiver<Msg>,
    waiting: VecDeque<Pending>,
    active: Vec<Seq>,
    scratch: Scratch,
    rows: StepRows,
    /// The prompt cache ([`SchedulerConfig::prompt_cache`] entries at most).
    cached: Vec<Cached>,
    /// Counts the caches kept, to order the prompt cache's entries by age.
    clock: u64,
    deadline: Option<Instant>,
    disconnected: bool,
}

impl Worker {
    fn run(mut self) {
        loop {
            if !self.receive() {
                break;
            }
            if let Some(d) = self.deadline
                && Instant::now() >= d
            {
                self.abort_all("the server is shutting down");
                break;
            }
            self.drop_departed();
            self.admit();
            self.step();
            self.publish();
        }
        self.publish();
    }

    /// Takes in new messages: blocks when idle, polls when work is running. Returns false when
    /// the thread should exit.
    fn receive(&mut self) -> bool {
        let idle = self.active.is_empty() && self.waiting.is_empty();
        if idle && (self.deadline.is_some() || self.disconnected) {
            return false;
        }
        if idle {
            let first = match self.deadline {
                Some(d) => match self
                    .rx
                    .recv_timeout(d.saturating_duration_since(Instant::now()))
                {
                    Ok(m) => Some(m),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => return false,
                },
                None => match self.rx.recv() {
                    Ok(m) => Some(m),
                    Err(_) => return false,
                },
            };
            if let Some(m) = first {
                self.handle(m);
            }
        }
        loop {
            match self.rx.try_recv() {
                Ok(m) => self.handle(m),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    self.disconnected = true;
                    break;
                }
            }
        }
        true
    }

    fn handle(&mut self, m: Msg) {
        match m {
            Msg::Submit(p) => self.waiting.push_back(*p),
            Msg::Shutdown(d) => {
                self.deadline = Some(self.deadline.map_or(d, |old| old.min(d)));
            }
        }
    }

    fn release(&self, reserve: usize) {
        self.shared.in_flight.fetch_sub(1, Ordering::SeqCst);
        self.shared.kv_reserved.fetch_sub(reserve, Ordering::SeqCst);
    }

    fn abort_all(&mut self, why: &str) {
        for mut s in std::mem::take(&mut self.active) {
            s.sink.send(Event::Error(why.to_string()));
            self.release(s.reserve);
        }
        for mut p in std::mem::take(&mut self.waiting) {
            p.sink.send(Event::Error(why.to_string()));
            self.shared.in_flight.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Frees sequences whose client left (keeping their caches for reuse), and forgets waiting
    /// requests whose client left.
    fn drop_departed(&mut self) {
        let mut removed = self.retire(|s| s.done || s.sink.is_closed());
        let before = self.waiting.len();
        self.waiting.retain(|p| !p.sink.is_closed());
        removed += before - self.waiting.len();
        self.shared.in_flight.fetch_sub(removed, Ordering::SeqCst);
        self.shared
            .active
            .store(self.active.len(), Ordering::SeqCst);
    }

    /// Takes the sequences that `ended` says are over out of the batch, gives back their KV
    /// reservations and keeps their caches ([`Worker::keep`]); returns how many.
    fn retire(&mut self, ended: impl Fn(&Seq) -> bool) -> usize {
        let (gone, running): (Vec<Seq>, Vec<Seq>) = std::mem::take(&mut self.active)
            .into_iter()
            .partition(|s| ended(s));
        self.active = running;
        let freed = gone.iter().map(|s| s.reserve).sum();
        self.shared.kv_reserved.fetch_sub(freed, Ordering::SeqCst);
        let n = gone.len();
        for s in gone {
            self.keep(s);
        }
        n
    }

    /// Moves waiting requests into the batch, first come first served, while a slot and KV
    /// budget are free (the prompt cache gives up its oldest entries for them),
    /// each taking the prompt cache's entry with the longest shared prefix if any.
    fn admit(&mut self) {
        while self.active.len() < self.config.max_batch {
            let Some(p) = self.waiting.front() else { break };
            let reserve = (p.positions).saturating_mul(kv_bytes_per_position(&self.engine));
            let reserved = self.shared.kv_reserved.load(Ordering::SeqCst);
            if reserved + reserve > self.config.kv_budget_bytes {
                break;
            }
            let Some(mut p) = self.waiting.pop_front() else {
                break;
            };
            let reused = if p.opts.max_tokens == 0 {
                None
            } else {
                self.take_cached(&p.prompt, p.positions)
            };
            while !self.cached.is_empty() && !self.fits(reserve) {
                self.evict_oldest();
            }
            self.shared.kv_reserved.fetch_add(reserve, Ordering::SeqCst);
            if p.opts.max_tokens == 0 {
                p.sink.send(Event::Done(Completion {
                    finish: FinishReason::Length,
                    prompt_tokens: p.prompt.len(),
                    completion_tokens: 0,
                    cached_tokens: 0,
                    tail: String::new(),
                }));
                self.release(reserve);
                continue;
            }
            let prompt_len = p.prompt.len();
            // As many positions as it reserved: a GPU allocates its cache whole, so a
            // context-sized one per request would hold far more device memory than the budget
            // accounts for (315 MB per sequence for 2B4T at 4,096 positions).
            let (cache, fed) =
                reused.unwrap_or_else(|| (self.engine.model().new_cache(p.positions), 0));
            if fed > 0 {
                self.shared
                    .cached_prompt
                    .fetch_add(fed as u64, Ordering::Relaxed);
            }
            self.active.push(Seq {
                cache,
                sampler: Sampler::new(p.opts.sampling.clone()),
                stop: StopMatcher::new(&p.opts.stop),
                tokens: p.prompt,
                prompt_len,
                fed,
                utf8: Vec::new(),
                opts: p.opts,
                sink: p.sink,
                reserve,
                done: false,
                failed: false,
                reused: fed,
            });
        }
        self.shared
            .active
            .store(self.active.len(), Ordering::SeqCst);
    }

    /// One batched forward over every active sequence, then sampling and events.
    fn step(&mut self) {
        if self.active.is_empty() {
            return;
        }
        let model = self.engine.model();
        let mode = StepOut::choose(
            model,
            self.active.iter().map(|s| (&s.sampler, s.opts.logits)),
        );
        let mut budget = self.config.prefill_chunk.max(1);
        let mut plan: Vec<(usize, usize)> = Vec::with_capacity(self.active.len());
        let mut entries = Vec::with_capacity(self.active.len());
        for (i, s) in self.active.iter_mut().enumerate() {
            let pending = s.tokens.len() - s.fed;
            let n = if s.fed < s.prompt_len {
                let n = pending.min(budget);
                budget -= n;
                n
            } else {
                pending
            };
            if n == 0 {
                continue;
            }
            plan.push((i, n));
            entries.push(BatchEntry {
                tokens: &s.tokens[s.fed..s.fed + n],
                cache: &mut s.cache,
                logits: Logits::Last,
            });
        }
        // Not launched ahead (`then` false): a server's batch changes whenever a request joins
        // or ends, and a step launched for the old batch would then be computed for nothing.
        let result = self
            .rows
            .forward(mode, model, &mut entries, &mut self.scratch, false);
        drop(entries);
        self.shared.steps.fetch_add(1, Ordering::SeqCst);
        if let Err(e) = result {
            // Entries are validated on submission, so this is a model failure: fail the batch.
            let msg = EngineError::from(e).to_string();
            for &(i, _) in &plan {
                if let Some(s) = self.active.get_mut(i) {
                    s.sink.send(Event::Error(msg.clone()));
                    s.done = true;
                    s.failed = true;
                }
            }
            self.finish_done();
            return;
        }
        let vocab = self.engine.model().config().vocab_size;
        let tokenizer = self.engine.tokenizer();
        for (row, &(i, n)) in plan.iter().enumerate() {
            let Some(s) = self.active.get_mut(i) else {
                continue;
            };
            let was_prefill = s.fed < s.prompt_len;
            s.fed += n;
            if was_prefill {
                self.shared.prompt.fetch_add(n as u64, Ordering::Relaxed);
            }
            if s.fed < s.tokens.len() {
                continue; // more prompt to read
            }
            let Some(row) = self.rows.row(row, vocab) else {
                continue;
            };
            sample_one(s, row, tokenizer);
            self.shared.generated.fetch_add(1, Ordering::Relaxed);
        }
        self.finish_done();
    }

    fn finish_done(&mut self) {
        let n = self.retire(|s| s.done);
        self.shared.in_flight.fetch_sub(n, Ordering::SeqCst);
        self.shared
            .active
            .store(self.active.len(), Ordering::SeqCst);
    }

    /// Keeps an ended sequence's cache in the prompt cache, if it holds any position, the
    /// sequence did not fail and there is room (the oldest entries leave for it; it is dropped
    /// if the budget's free part cannot hold it).
    fn keep(&mut self, s: Seq) {
        if self.config.prompt_cache == 0 || s.failed || s.cache.is_empty() {
            return;
        }
        let bytes = s
            .cache
            .capacity()
            .saturating_mul(kv_bytes_per_position(&self.engine));
        while self.cached.len() >= self.config.prompt_cache
            || (!self.cached.is_empty() && !self.fits(bytes))
        {
            self.evict_oldest();
        }
        if !self.fits(bytes) {
            return;
        }
        self.clock += 1;
        self.cached.push(Cached {
            prefix: PromptPrefix::new(&self.engine, s.tokens, s.cache),
            bytes,
            used: self.clock,
        });
        self.publish_cached();
    }

    /// Whether `bytes` more fit the KV budget beside the running sequences' reservations and
    /// the prompt cache.
    fn fits(&self, bytes: usize) -> bool {
        let reserved = self.shared.kv_reserved.load(Ordering::SeqCst);
        reserved + self.cached_bytes() + bytes <= self.config.kv_budget_bytes
    }

    fn cached_bytes(&self) -> usize {
        self.cached.iter().map(|c| c.bytes).sum()
    }

    /// Drops the oldest prompt-cache entry (if any).
    fn evict_oldest(&mut self) {
        if let Some(i) = (0..self.cached.len()).min_by_key(|&i| self.cached[i].used) {
            self.cached.swap_remove(i);
        }
        self.publish_cached();
    }

    fn publish_cached(&self) {
        let s = &self.shared;
        s.cached_entries.store(self.cached.len(), Ordering::SeqCst);
        s.cached_bytes.store(self.cached_bytes(), Ordering::SeqCst);
    }

    /// Takes the prompt-cache entry that shares the longest prefix with `prompt` (at most all
    /// of it but its last token, whose logits the request needs) and at least half of the
    /// entry's tokens, cut back to that prefix and made to hold `positions`; `None` where there
    /// is none.
    fn take_cached(&mut self, prompt: &[u32], positions: usize) -> Option<(KvCache, usize)> {
        let usable = |c: &Cached| c.prefix.shared_with(prompt);
        // An entry is taken only by a request that goes on with most of it (a chat's next turn,
        // the same prompt again), not by any that shares a few tokens (a BOS, a system prompt
        // before another conversation) and would use up what a continuation could reuse.
        let i = (0..self.cached.len())
            .filter(|&i| {
                let (c, n) = (&self.cached[i], usable(&self.cached[i]));
                n > 0 && 2 * n >= c.prefix.tokens().len()
            })
            .max_by_key(|&i| (usable(&self.cached[i]), self.cached[i].used))?;
        let n = usable(&self.cached[i]);
        let c = self.cached.swap_remove(i);
        self.publish_cached();
        // A device cache of another size moves to storage of the request's (its positions
        // copied); where that fails, the request starts afresh.
        let cache = c.prefix.into_cache(&self.engine, n, positions).ok()?;
        Some((cache, n))
    }

    fn publish(&self) {
        let used = self.active.iter().map(|s| s.cache.bytes()).sum();
        self.shared.kv_used.store(used, Ordering::SeqCst);
        self.shared
            .active
            .store(self.active.len(), Ordering::SeqCst);
    }
}

/// Samples the next token of `s` from its logits and sends what it releases, mirroring
/// `Generation::step` so batched and lone runs agree token for token and byte for byte.
fn sample_one(s: &mut Seq, row: Row<'_>, tok: Option<&bitnet_tokenizer::Tokenizer>) {
    let generated = &s.tokens[s.prompt_len..];
    let token_logits = match (&row, s.opts.logits) {
        (Row::Logits(l), true) => Some(l.to_vec()),
        _ => None,
    };
    let id = s.sampler.pick(row, &s.tokens, generated);
    s.tokens.push(id);
    let n_gen = s.tokens.len() - s.prompt_len;
    let is_eog = tok.is_some_and(|t| t.is_eog(id)) && !s.opts.ignore_eos;
    let mut text = String::new();
    let mut finish = None;
    if is_eog {
        finish = Some(FinishReason::Stop);
    } else if let Some(t) = tok {
        if let Some(bytes) = t.token_bytes(id) {
            s.utf8.extend_from_slice(&bytes);
        }
        let valid = crate::generate::take_valid_utf8(&mut s.utf8);
        match s.stop.push(&valid) {
            StopOutcome::Continue(x) => text = x,
            StopOutcome::Stopped(x) => {
                text = x;
                finish = Some(FinishReason::Stop);
            }
        }
    }
    if finish.is_none() {
        if n_gen >= s.opts.max_tokens {
            finish = Some(FinishReason::Length);
        } else if s.cache.len() >= s.cache.capacity() {
            finish = Some(FinishReason::ContextFull);
        }
    }
    let alive = s.sink.send(Event::Token(Token {
        id,
        text,
        logits: token_logits,
    }));
    if !alive {
        s.done = true;
        return;
    }
    if let Some(f) = finish {
        let tail = if f == FinishReason::Stop {
            String::new()
        } else {
            let mut rest = s.stop.finish();
            rest.push_str(&String::from_utf8_lossy(&std::mem::take(&mut s.utf8)));
            rest
        };
        s.sink.send(Event::Done(Completion {
            finish: f,
            prompt_tokens: s.prompt_len,
            completion_tokens: n_gen,
            cached_tokens: s.reused,
            tail,
        }));
        s.done = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_batch_is_eight_on_the_cpu_and_by_free_memory_on_a_device() {
        let gb = 1u64 << 30;
        // 2B4T at context 4096: 300 MiB of f16 cache per sequence.
        let per_sequence = 4096 * 30 * 2 * 640 * 2;
        assert_eq!(default_max_batch(None, per_sequence), CPU_MAX_BATCH);
        // An H200 after loading the model: capped.
        assert_eq!(
            default_max_batch(Some(138 * gb), per_sequence),
            DEVICE_MAX_BATCH
        );
        // A 24 GB card: 80% of 21 GiB holds 57 full contexts of 300 MiB.
        assert_eq!(default_max_batch(Some(21 * gb), per_sequence), 57);
        // Nearly full, or nothing known per sequence: at least one, at most the cap.
        assert_eq!(default_max_batch(Some(gb / 10), per_sequence), 1);
        assert_eq!(default_max_batch(Some(0), per_sequence), 1);
        assert_eq!(default_max_batch(Some(gb), 0), DEVICE_MAX_BATCH);
    }
}
