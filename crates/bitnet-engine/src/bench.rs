//! `bitnet bench`: prompt processing (pp) and token generation (tg) speed measured the way
//! llama-bench measures them, so numbers line up side by side: pp = `n_prompt` tokens in one
//! batch from an empty context; tg = `n_gen` tokens decoded one at a time from an empty context;
//! one warm-up run, then `repetitions` timed runs, reported as mean and standard deviation of
//! tokens per second.

use std::time::Instant;

use bitnet_model::{Logits, Scratch};
use serde::Serialize;

use crate::{Engine, EngineError};

/// One measured test.
#[derive(Clone, Debug, Serialize)]
pub struct BenchResult {
    /// `pp512`, `tg128`, ...
    pub test: String,
    /// Tokens per run.
    pub n_tokens: usize,
    /// Mean tokens per second.
    pub avg_ts: f64,
    /// Standard deviation of tokens per second.
    pub stddev_ts: f64,
    /// Each run's tokens per second.
    pub samples_ts: Vec<f64>,
    /// Weight bytes read per generated token (tg only): ternary linears in the kernel's layout
    /// plus the whole head; the KV cache adds [`BenchResult::kv_bytes_per_token`].
    pub bytes_per_token: u64,
    /// Mean KV-cache bytes read per generated token (tg only).
    pub kv_bytes_per_token: u64,
    /// Achieved read bandwidth in GB/s (tg only): (weights + KV) bytes x tokens/s.
    pub gb_per_s: f64,
}

/// Deterministic token ids spread over the vocabulary (speed does not depend on them).
fn tokens(n: usize, vocab: usize, salt: usize) -> Vec<u32> {
    (0..n)
        .map(|i| ((i * 7919 + salt * 104_729 + 13) % vocab) as u32)
        .collect()
}

fn stats(samples: &[f64]) -> (f64, f64) {
    let n = samples.len() as f64;
    let mean = samples.iter().sum::<f64>() / n;
    let var = if samples.len() > 1 {
        samples.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    (mean, var.sqrt())
}

/// Prompt processing: `n_prompt` tokens in one forward pass (chunked as the engine would).
pub fn bench_pp(
    engine: &Engine,
    n_prompt: usize,
    repetitions: usize,
) -> Result<BenchResult, EngineError> {
    let model = engine.model();
    let vocab = model.config().vocab_size;
    let mut samples = Vec::new();
    let mut scratch = Scratch::default();
    let mut logits = Vec::new();
    for rep in 0..=repetitions {
        let toks = tokens(n_prompt, vocab, rep);
        let mut cache = model.new_cache(n_prompt + 1);
        let t = Instant::now();
        model.forward(
            &toks,
            &mut cache,
            Logits::Last,
            &mut logits,
            &mut scratch,
            None,
        )?;
        let dt = t.elapsed().as_secs_f64();
        if rep > 0 {
            samples.push(n_prompt as f64 / dt);
        }
    }
    let (avg_ts, stddev_ts) = stats(&samples);
    Ok(BenchResult {
        test: format!("pp{n_prompt}"),
        n_tokens: n_prompt,
        avg_ts,
        stddev_ts,
        samples_ts: samples,
        bytes_per_token: 0,
        kv_bytes_per_token: 0,
        gb_per_s: 0.0,
    })
}

/// Token generation: `n_gen` single-token decode steps from an empty context.
pub fn bench_tg(
    engine: &Engine,
    n_gen: usize,
    repetitions: usize,
) -> Result<BenchResult, EngineError> {
    let model = engine.model();
    let c = model.config();
    let mut samples = Vec::new();
    let mut scratch = Scratch::default();
    let mut logits = Vec::new();
    for rep in 0..=repetitions {
        let toks = tokens(n_gen, c.vocab_size, rep);
        let mut cache = model.new_cache(n_gen + 1);
        let t = Instant::now();
        for tok in &toks {
            model.forward(
                std::slice::from_ref(tok),
                &mut cache,
                Logits::Last,
                &mut logits,
                &mut scratch,
                None,
            )?;
        }
        let dt = t.elapsed().as_secs_f64();
        if rep > 0 {
            samples.push(n_gen as f64 / dt);
        }
    }
    let (avg_ts, stddev_ts) = stats(&samples);
    let bytes_per_token = model.weight_bytes_per_token();
    // Step i reads the keys and values of positions 0..=i: on average (n + 1) / 2 positions.
    let kv_bytes_per_token = model.kv_bytes_per_position() as u64 * (n_gen as u64 + 1) / 2;
    Ok(BenchResult {
        test: format!("tg{n_gen}"),
        n_tokens: n_gen,
        avg_ts,
        stddev_ts,
        samples_ts: samples,
        bytes_per_token,
        kv_bytes_per_token,
        gb_per_s: (bytes_per_token + kv_bytes_per_token) as f64 * avg_ts / 1e9,
    })
}

/// Peak resident memory of this process in bytes (Linux `VmHWM`), if known.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// `batch` sequences of one model decoded together, greedily, one token each per step: what
/// [`bench_batch`] times (the `two_chains` example times it on several copies of a model at
/// once).
pub struct BatchDecode<'m> {
    model: &'m bitnet_model::Model,
    caches: Vec<bitnet_model::KvCache>,
    step: Vec<[u32; 1]>,
    next: Vec<u32>,
    scratch: Scratch,
}

impl<'m> BatchDecode<'m> {
    /// `batch` sequences, each filled to `depth` positions with deterministic prompts (`salt`
    /// and on, one per sequence) four at a time, as a server's chunked prefill would, with room
    /// for `n_gen` more tokens.
    pub fn new(
        model: &'m bitnet_model::Model,
        batch: usize,
        depth: usize,
        n_gen: usize,
        salt: usize,
    ) -> Result<Self, EngineError> {
        use bitnet_model::BatchEntry;
        let vocab = model.config().vocab_size;
        let mut caches: Vec<_> = (0..batch)
            .map(|_| model.new_cache(depth + n_gen + 1))
            .collect();
        let prompts: Vec<Vec<u32>> = (0..batch)
            .map(|i| tokens(depth.max(1), vocab, salt + i))
            .collect();
        let mut scratch = Scratch::default();
        let mut logits = Vec::new();
        for (cs, ps) in caches.chunks_mut(4).zip(prompts.chunks(4)) {
            let mut entries: Vec<BatchEntry<'_>> = cs
                .iter_mut()
                .zip(ps)
                .map(|(cache, p)| BatchEntry {
                    tokens: p,
                    cache,
                    logits: Logits::Last,
                })
                .collect();
            model.forward_batch(&mut entries, &mut logits, &mut scratch, None)?;
        }
        Ok(Self {
            model,
            caches,
            step: prompts.iter().map(|p| [p[0]]).collect(),
            next: Vec::new(),
            scratch,
        })
    }

    /// One greedy decode step of every sequence; `more`: another follows (on a GPU it is then
    /// launched before this one's tokens are back: [`bitnet_model::Model::forward_batch_greedy_ahead`]).
    pub fn step(&mut self, more: bool) -> Result<(), EngineError> {
        use bitnet_model::BatchEntry;
        let mut entries: Vec<BatchEntry<'_>> = (self.caches.iter_mut())
            .zip(&self.step)
            .map(|(cache, tok)| BatchEntry {
                tokens: tok,
                cache,
                logits: Logits::Last,
            })
            .collect();
        let (model, next, scratch) = (self.model, &mut self.next, &mut self.scratch);
        match more {
            true => model.forward_batch_greedy_ahead(&mut entries, next, scratch)?,
            false => model.forward_batch_greedy(&mut entries, next, scratch)?,
        }
        for (s, &n) in self.step.iter_mut().zip(&self.next) {
            s[0] = n;
        }
        Ok(())
    }
}

/// Aggregate decode: `batch` sequences, each first filled to `depth` positions, then `n_gen`
/// batched decode steps (one token per sequence per step, greedy on the device when there is
/// one, through the head screen on a CPU model that has one). Reports generated tokens per
/// second over all sequences; pp is not counted.
pub fn bench_batch(
    engine: &Engine,
    batch: usize,
    depth: usize,
    n_gen: usize,
    repetitions: usize,
) -> Result<BenchResult, EngineError> {
    let model = engine.model();
    if batch == 0 || n_gen == 0 {
        return Err(EngineError::Options(
            "batch and n-gen must be at least 1".into(),
        ));
    }
    let mut samples = Vec::new();
    for rep in 0..=repetitions {
        let mut run = BatchDecode::new(model, batch, depth, n_gen, rep * batch)?;
        let t = Instant::now();
        for i in 0..n_gen {
            run.step(i + 1 < n_gen)?;
        }
        let dt = t.elapsed().as_secs_f64();
        if rep > 0 {
            samples.push((batch * n_gen) as f64 / dt);
        }
    }
    let (avg_ts, stddev_ts) = stats(&samples);
    let weights = model.greedy_weight_bytes_per_token();
    let kv_per_step = model.kv_bytes_per_position() as u64
        * batch as u64
        * (depth as u64 + (n_gen as u64).div_ceil(2));
    // Bytes per generated token: one pass over the weights serves the whole batch.
    let bytes_per_token = weights / batch as u64;
    let kv_bytes_per_token = kv_per_step / batch as u64;
    Ok(BenchResult {
        test: format!("tg{n_gen} b{batch} d{depth}"),
        n_tokens: batch * n_gen,
        avg_ts,
        stddev_ts,
        samples_ts: samples,
        bytes_per_token,
        kv_bytes_per_token,
        gb_per_s: (bytes_per_token + kv_bytes_per_token) as f64 * avg_ts / 1e9,
    })
}
