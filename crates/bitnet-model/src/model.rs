//! The BitNet b1.58 forward pass (model.md), batched over the tokens of one sequence.
//!
//! Per layer: `h += o(subnorm(attn(rope(q(n(h))), rope(k(n(h))), v(n(h)))))`, then
//! `h += down(subnorm(act(gate(n(h))) * up(n(h))))`. Every projection is a BitLinear: its input is
//! quantized to int8 per token, multiplied by ternary weights through the kernel trait, and
//! rescaled by `s_w / s_x`. The embedding, norms and head stay float.

use bitnet_core::ops::{self, FloatMatrix, Rope};
use std::sync::Arc;

use bitnet_core::pool::ThreadPool;
use bitnet_core::screen::{HeadScreen, ScreenScratch};
use bitnet_core::{LinearKernel, PreparedLinear, QuantizedActivations};

thread_local! {
    /// Attention scores of one (token, head) task, reused across calls on each thread.
    static SCORES: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    /// A head task's block of results (`rows x vectors`), reused across calls on each thread.
    static HEAD_PART: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Vocabulary rows of the head per thread-pool task.
fn head_rows_per_task() -> usize {
    static V: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *V.get_or_init(|| {
        std::env::var("BITNET_HEADROWS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(2048)
    })
}

use crate::accel::{Accelerator, DeviceEntry};
use crate::config::{Activation, ModelConfig};
use crate::stacked::Stacked;
use crate::{KvCache, KvType, ModelError};

/// The weights of one transformer block.
pub struct Layer {
    /// RMSNorm before attention.
    pub attn_norm: Vec<f32>,
    /// RMSNorm over the concatenated heads, before `o`.
    pub attn_sub_norm: Vec<f32>,
    /// RMSNorm before the FFN.
    pub ffn_norm: Vec<f32>,
    /// RMSNorm over the gated FFN activations, before `down`.
    pub ffn_sub_norm: Vec<f32>,
    /// Query, key and value projections, stacked (one multiply per step).
    pub qkv: Stacked,
    /// Attention output projection.
    pub o: Box<dyn PreparedLinear>,
    /// FFN gate and up projections, stacked.
    pub gate_up: Stacked,
    /// FFN down projection.
    pub down: Box<dyn PreparedLinear>,
}

/// Where an int8 activation was taken, for tracing against the reference.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TracePoint {
    /// Input of q/k/v.
    AttnIn,
    /// Input of the attention output projection.
    OIn,
    /// Input of gate/up.
    FfnIn,
    /// Input of down.
    DownIn,
}

/// Observes intermediates of a forward pass (tests compare them with the reference).
pub trait Tracer {
    /// Int8 codes and scales entering a BitLinear, `tokens x width`.
    fn activation(&mut self, layer: usize, point: TracePoint, q: &QuantizedActivations) {
        let _ = (layer, point, q);
    }
    /// The residual stream after a layer, `tokens x hidden`.
    fn layer_output(&mut self, layer: usize, h: &[f32]) {
        let _ = (layer, h);
    }
    /// The final-normed hidden state fed to the head, `tokens x hidden`.
    fn final_norm(&mut self, x: &[f32]) {
        let _ = x;
    }
}

/// Which logits a forward pass returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Logits {
    /// Only the last token's (generation).
    Last,
    /// Every token's (scoring, perplexity, tests).
    All,
}

/// A loaded model: configuration, float tensors and prepared ternary linears.
pub struct Model {
    config: ModelConfig,
    embed: FloatMatrix,
    head: Option<FloatMatrix>,
    output_norm: Vec<f32>,
    layers: Vec<Layer>,
    rope: Rope,
    kernel: String,
    pool: Option<Arc<ThreadPool>>,
    accel: Option<Box<dyn Accelerator>>,
    kv: KvType,
    /// The head's int8 screen for greedy and top-k steps ([`Model::with_head_screen`]).
    screen: Option<HeadScreen>,
}

/// Reusable buffers of a forward pass, so decode steps stop allocating once warmed up.
#[derive(Default)]
pub struct Scratch {
    h: Vec<f32>,
    x: Vec<f32>,
    qa: QuantizedActivations,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    attn: Vec<f32>,
    proj: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    ints: Vec<i32>,
    segs: Vec<Segment>,
    /// The head's input rows, from a 64-byte boundary (the head reads them in 64-byte vectors).
    head_in: bitnet_core::aligned::AlignedVec<f32>,
    head_out: Vec<f32>,
    greedy_logits: Vec<f32>,
    screen: ScreenScratch,
    /// Attention: each row's (sequence, position).
    owner: Vec<(usize, usize)>,
}

/// Rows `row..row + n` of a batched step belong to one sequence at positions `start..start + n`.
#[derive(Clone, Copy, Debug, Default)]
struct Segment {
    start: usize,
    n: usize,
    row: usize,
}

/// One sequence's share of [`Model::forward_batch`].
pub struct BatchEntry<'a> {
    /// Its new tokens (one to decode, many to prefill).
    pub tokens: &'a [u32],
    /// Its KV cache; advanced by `tokens.len()`.
    pub cache: &'a mut KvCache,
    /// Which of its logits to return.
    pub logits: Logits,
}

impl Scratch {
    /// Rows of the head computed exactly by the last screened step (see
    /// [`Model::with_head_screen`]), over all its sequences.
    pub fn screened_exact_rows(&self) -> usize {
        self.screen.exact_rows()
    }

    /// Sets the residual stream (`tokens x hidden`) that [`Model::run_layer`] works on.
    pub fn set_hidden(&mut self, h: &[f32]) {
        self.h.clear();
        self.h.extend_from_slice(h);
    }

    /// The residual stream after the last layer run.
    pub fn hidden(&self) -> &[f32] {
        &self.h
    }
}

impl Model {
    /// The output head (the embedding when tied).
    pub fn output_head(&self) -> &FloatMatrix {
        self.head.as_ref().unwrap_or(&self.embed)
    }

    /// Bytes one decode step reads from weights: every ternary linear in its kernel's layout plus
    /// the whole head (the KV cache comes on top: [`KvCache::bytes`]).
    pub fn weight_bytes_per_token(&self) -> u64 {
        if let Some(a) = &self.accel {
            return a.weight_bytes_per_token();
        }
        let linears: usize = self
            .layers
            .iter()
            .map(|l| {
                l.qkv.weight_bytes()
                    + l.o.weight_bytes()
                    + l.gate_up.weight_bytes()
                    + l.down.weight_bytes()
            })
            .sum();
        (linears + self.output_head().storage_bytes()) as u64
    }

    /// Bytes one greedy or top-k decode step reads from weights: as
    /// [`Model::weight_bytes_per_token`], with the head's int8 screen in place of the head where
    /// the model has one (the few rows it computes exactly come on top).
    pub fn greedy_weight_bytes_per_token(&self) -> u64 {
        let full = self.weight_bytes_per_token();
        match &self.screen {
            Some(screen) => {
                full - self.output_head().storage_bytes() as u64 + screen.bytes() as u64
            }
            None => full,
        }
    }

    /// Bytes one cached position of one sequence takes (all layers, keys and values, q8 scales
    /// included): the model's [`KvType`] on the CPU, the device's element type on a device.
    pub fn kv_bytes_per_position(&self) -> usize {
        match &self.accel {
            Some(a) => a.kv_bytes_per_position(),
            None => {
                let c = &self.config;
                2 * c.n_layers * c.n_kv_heads * self.kv.vector_bytes(c.head_dim)
            }
        }
    }

    /// Sets how the caches of [`Model::new_cache`] store keys and values on the CPU (default:
    /// [`KvType::F16`]). A model on a device stores them as its backend was told when it was
    /// placed there; this only records the type for reports.
    pub fn with_kv_type(mut self, kv: KvType) -> Self {
        self.kv = kv;
        self
    }

    /// Builds (`on`) or drops the head's int8 screen, with which greedy and top-k steps
    /// ([`Model::forward_batch_greedy`], [`Model::forward_batch_top_k`]) read about half of
    /// the head's bytes and compute exactly only the rows that can still be chosen: the same
    /// tokens and candidate logits, bit for bit (`bitnet_core::screen`). Built only for a
    /// model on the host whose head is f32, f16 or bf16 with finite values, on a CPU with the
    /// vector instructions for it (AVX-512 VNNI or AVX2); it holds `vocab x hidden` bytes
    /// (328 MB for 2B4T's 656 MB f16 head).
    pub fn with_head_screen(mut self, on: bool) -> Self {
        self.screen = None;
        if on && self.accel.is_none() && HeadScreen::accelerated() {
            self.screen = HeadScreen::build(self.output_head(), self.pool.as_deref());
        }
        self
    }

    /// Bytes of the head's screen (0 without one).
    pub fn head_screen_bytes(&self) -> usize {
        self.screen.as_ref().map_or(0, HeadScreen::bytes)
    }

    /// How this model's caches store keys and values.
    pub fn kv_type(&self) -> KvType {
        self.kv
    }

    /// The token embedding.
    pub fn embedding(&self) -> &FloatMatrix {
        &self.embed
    }

    /// Assembles a model from its parts, checking every shape against the config.
    pub fn new(
        config: ModelConfig,
        embed: FloatMatrix,
        head: Option<FloatMatrix>,
        output_norm: Vec<f32>,
        layers: Vec<Layer>,
        kernel: &dyn LinearKernel,
    ) -> Result<Self, ModelError> {
        config.validate()?;
        let c = &config;
        let shape_err = |name: &str, msg: String| ModelError::Tensor {
            name: name.to_string(),
            msg,
        };
        if embed.rows() != c.vocab_size || embed.cols() != c.hidden_size {
            return Err(shape_err(
                "token embedding",
                format!(
                    "shape {}x{}, expected {}x{}",
                    embed.rows(),
                    embed.cols(),
                    c.vocab_size,
                    c.hidden_size
                ),
            ));
        }
        if let Some(h) = &head
            && (h.rows() != c.vocab_size || h.cols() != c.hidden_size)
        {
            return Err(shape_err(
                "output head",
                format!(
                    "shape {}x{}, expected {}x{}",
                    h.rows(),
                    h.cols(),
                    c.vocab_size,
                    c.hidden_size
                ),
            ));
        }
        if output_norm.len() != c.hidden_size {
            return Err(shape_err(
                "output norm",
                format!("length {}, expected {}", output_norm.len(), c.hidden_size),
            ));
        }
        if layers.len() != c.n_layers {
            return Err(ModelError::Config(format!(
                "{} layers given, config says {}",
                layers.len(),
                c.n_layers
            )));
        }
        for (i, l) in layers.iter().enumerate() {
            let norms = [
                ("attn_norm", &l.attn_norm, c.hidden_size),
                ("attn_sub_norm", &l.attn_sub_norm, c.hidden_size),
                ("ffn_norm", &l.ffn_norm, c.hidden_size),
                ("ffn_sub_norm", &l.ffn_sub_norm, c.intermediate_size),
            ];
            for (name, w, n) in norms {
                if w.len() != n {
                    return Err(shape_err(
                        &format!("layer {i} {name}"),
                        format!("length {}, expected {n}", w.len()),
                    ));
                }
            }
            let stacked = [
                ("q, k, v", &l.qkv, vec![c.q_dim(), c.kv_dim(), c.kv_dim()]),
                ("gate, up", &l.gate_up, vec![c.intermediate_size; 2]),
            ];
            let linears = stacked
                .into_iter()
                .map(|(name, w, rows)| (name, w.segment_rows().collect(), w.cols(), rows))
                .chain([
                    ("o", vec![l.o.rows()], l.o.cols(), vec![c.hidden_size]),
                    (
                        "down",
                        vec![l.down.rows()],
                        l.down.cols(),
                        vec![c.hidden_size],
                    ),
                ]);
            let want_cols = [c.hidden_size, c.hidden_size, c.q_dim(), c.intermediate_size];
            for ((name, rows, cols, want_rows), want_cols) in linears.zip(want_cols) {
                if rows != want_rows || cols != want_cols {
                    return Err(shape_err(
                        &format!("layer {i} {name}"),
                        format!(
                            "rows {rows:?} x {cols} columns (out, in), expected \
                             {want_rows:?} x {want_cols}"
                        ),
                    ));
                }
            }
        }
        let rope = Rope::new(config.head_dim, config.rope_theta);
        Ok(Self {
            config,
            embed,
            head,
            output_norm,
            layers,
            rope,
            kernel: kernel.name().to_string(),
            pool: kernel.thread_pool(),
            accel: None,
            kv: KvType::default(),
            screen: None,
        })
    }

    /// A model whose whole forward pass runs on a device. `embed` stays on the host for reports
    /// (pass the source's embedding; a mapped f16 table costs no memory); the host-side layer
    /// APIs ([`Model::run_layer`]) are not available on such a model.
    pub fn on_device(
        config: ModelConfig,
        embed: FloatMatrix,
        accel: Box<dyn Accelerator>,
    ) -> Result<Self, ModelError> {
        config.validate()?;
        let rope = Rope::new(config.head_dim, config.rope_theta);
        Ok(Self {
            output_norm: vec![1.0; config.hidden_size],
            config,
            embed,
            head: None,
            layers: Vec::new(),
            rope,
            kernel: accel.describe(),
            pool: None,
            accel: Some(accel),
            kv: KvType::default(),
            screen: None,
        })
    }

    /// The device running this model, if it is not the CPU.
    pub fn device(&self) -> Option<String> {
        self.accel.as_ref().map(|a| a.describe())
    }

    /// The free and total memory in bytes of the device running this model, where it is not
    /// the CPU and its backend can tell.
    pub fn device_memory(&self) -> Option<(u64, u64)> {
        self.accel.as_ref().and_then(|a| a.memory())
    }

    /// The hyper-parameters.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The linear kernel the weights were prepared for.
    pub fn kernel_name(&self) -> &str {
        &self.kernel
    }

    /// Storage type of the output head (`f16`, `q6_k`, ...).
    pub fn head_type(&self) -> &'static str {
        if let Some(a) = &self.accel {
            return a.head_type();
        }
        self.head.as_ref().unwrap_or(&self.embed).type_name()
    }

    /// A KV cache for up to `capacity` positions (at most the model's context length), storing
    /// the model's [`KvType`].
    pub fn new_cache(&self, capacity: usize) -> KvCache {
        let capacity = capacity.min(self.config.context_length);
        match self.accel {
            Some(_) => KvCache::new_on_device(&self.config, capacity, self.kv),
            None => KvCache::new(&self.config, capacity, self.kv),
        }
    }

    /// Makes `cache` hold `capacity` positions (at most the context, at least its length) from
    /// now on, keeping the ones it holds: a cache taken over by another request (the server's
    /// prompt cache). A host cache only changes its limit (its storage grows as positions are
    /// written); a device cache of another size moves to new storage of exactly that size with
    /// its positions copied, so that what it holds on the device is what its request reserved.
    pub fn resize_cache(&self, cache: &mut KvCache, capacity: usize) -> Result<(), ModelError> {
        let capacity = capacity.min(self.config.context_length).max(cache.len());
        let device = match (&self.accel, cache.device()) {
            (Some(accel), Some(old)) if capacity != cache.capacity() => {
                let new = accel.new_cache(capacity)?;
                accel.copy_cache(old, new.as_ref(), cache.len())?;
                Some(new)
            }
            _ => None,
        };
        cache.set_capacity(capacity, device);
        Ok(())
    }

    /// Runs `tokens` at the next positions of `cache`, appends their keys and values, and writes
    /// the requested logits into `logits` (`vocab` per returned token).
    pub fn forward(
        &self,
        tokens: &[u32],
        cache: &mut KvCache,
        which: Logits,
        logits: &mut Vec<f32>,
        scratch: &mut Scratch,
        tracer: Option<&mut dyn Tracer>,
    ) -> Result<(), ModelError> {
        let mut batch = [BatchEntry {
            tokens,
            cache,
            logits: which,
        }];
        self.forward_batch(&mut batch, logits, scratch, tracer)
    }

    /// One forward pass over several sequences at once: every BitLinear multiplies the rows of
    /// all sequences together (one GEMM, not a GEMV per sequence), while attention runs per
    /// sequence against its own KV cache. A sequence may bring one token (decode) or many
    /// (prefill, or a chunk of it). Logits are written entry after entry, as each asks.
    ///
    /// Nothing is changed when an entry is invalid (context overflow, unknown token).
    pub fn forward_batch(
        &self,
        batch: &mut [BatchEntry<'_>],
        logits: &mut Vec<f32>,
        scratch: &mut Scratch,
        tracer: Option<&mut dyn Tracer>,
    ) -> Result<(), ModelError> {
        if let Some(accel) = &self.accel {
            self.check_batch(batch)?;
            logits.clear();
            if batch.iter().all(|e| e.tokens.is_empty()) {
                return Ok(());
            }
            let mut tracer = tracer;
            return self.forward_on_device(accel.as_ref(), batch, &mut |entries| {
                accel.forward_batch(entries, logits, tracer.take())
            });
        }
        let m = self.host_hidden(batch, scratch, tracer)?;
        self.head_logits(m, logits, scratch);
        Ok(())
    }

    /// [`Model::forward_batch`] on the host up to the head: runs every layer, advances the
    /// caches, and gathers the wanted rows, final-normed, into `scratch.head_in`; returns how
    /// many.
    fn host_hidden(
        &self,
        batch: &mut [BatchEntry<'_>],
        scratch: &mut Scratch,
        mut tracer: Option<&mut dyn Tracer>,
    ) -> Result<usize, ModelError> {
        let c = &self.config;
        let hd = c.hidden_size;
        let s = scratch;
        let mut segs = std::mem::take(&mut s.segs);
        segs.clear();
        self.check_batch(batch)?;
        let mut rows = 0;
        for e in batch.iter() {
            let (start, n) = (e.cache.len(), e.tokens.len());
            segs.push(Segment {
                start,
                n,
                row: rows,
            });
            rows += n;
        }
        if rows == 0 {
            s.segs = segs;
            return Ok(0);
        }
        s.h.resize(rows * hd, 0.0);
        for (e, seg) in batch.iter().zip(&segs) {
            for (t, &id) in e.tokens.iter().enumerate() {
                let r = (seg.row + t) * hd;
                self.embed.row_into(id as usize, &mut s.h[r..r + hd]);
            }
        }
        for li in 0..self.layers.len() {
            self.layer_step(li, batch, &segs, s, tracer.as_deref_mut());
        }
        for (e, seg) in batch.iter_mut().zip(&segs) {
            e.cache.advance(seg.n);
        }

        // Final norm, only for the rows whose logits are wanted.
        s.x.resize(rows * hd, 0.0);
        let wanted = |e: &BatchEntry<'_>, seg: &Segment| match e.logits {
            Logits::Last if seg.n > 0 => seg.row + seg.n - 1..seg.row + seg.n,
            Logits::Last => seg.row..seg.row,
            Logits::All => seg.row..seg.row + seg.n,
        };
        // Gather the wanted rows, normed, then run the head once over all of them: each head
        // row is read from memory once per step, not once per sequence.
        let mut m = 0;
        s.head_in.clear();
        for (e, seg) in batch.iter().zip(&segs) {
            for t in wanted(e, seg) {
                let r = t * hd..(t + 1) * hd;
                ops::rmsnorm(
                    &s.h[r.clone()],
                    &self.output_norm,
                    c.rms_norm_eps,
                    &mut s.x[r.clone()],
                );
                s.head_in.extend_from_slice(&s.x[r]);
                m += 1;
            }
        }
        if let Some(tr) = tracer {
            tr.final_norm(&s.x);
        }
        s.segs = segs;
        Ok(m)
    }

    /// The head over the `m` rows gathered in `s.head_in`, into `logits` (`m x vocab`).
    fn head_logits(&self, m: usize, logits: &mut Vec<f32>, s: &mut Scratch) {
        let v = self.config.vocab_size;
        if m == 0 {
            logits.clear();
            return;
        }
        let head = self.output_head();
        let xs = &s.head_in;
        // Every element is written below, so a buffer kept from the last step of the same size
        // is not cleared first (8 MB at batch 16).
        logits.truncate(m * v);
        logits.resize(m * v, 0.0);
        let hr = head_rows_per_task().max(1);
        match &self.pool {
            Some(pool) if m > 1 => {
                // Head results come out row-major by vocabulary entry (`rows x m`); each task
                // turns its own block of them into its share of every vector's logits, so the
                // transposition runs on every thread (on the caller's alone it was 33 MB of
                // scattered writes per batch-64 step). Task i's share is piece i (rows i * hr..)
                // of every vector's row, vector by vector.
                let mut rows: Vec<_> = logits
                    .chunks_exact_mut(v)
                    .map(|r| r.chunks_mut(hr))
                    .collect();
                let mut shares: Vec<&mut [f32]> = Vec::with_capacity(v.div_ceil(hr) * m);
                for _ in 0..v.div_ceil(hr) {
                    shares.extend(rows.iter_mut().filter_map(Iterator::next));
                }
                pool.for_each_chunk_mut(&mut shares, m, &|i, share| {
                    HEAD_PART.with_borrow_mut(|part| {
                        part.resize(share[0].len() * m, 0.0);
                        head.matmul_rows(xs, m, i * hr, part);
                        for (j, dst) in share.iter_mut().enumerate() {
                            for (y, results) in dst.iter_mut().zip(part.chunks_exact(m)) {
                                *y = results[j];
                            }
                        }
                    })
                });
            }
            Some(pool) => pool
                .for_each_chunk_mut(logits, hr, &|i, part| head.matmul_rows(xs, 1, i * hr, part)),
            None if m == 1 => head.matmul_rows(xs, 1, 0, logits),
            None => {
                s.head_out.resize(v * m, 0.0);
                head.matmul_rows(xs, m, 0, &mut s.head_out);
                for (r, row) in s.head_out.chunks_exact(m).enumerate() {
                    for (j, &y) in row.iter().enumerate() {
                        logits[j * v + r] = y;
                    }
                }
            }
        }
    }

    fn forward_on_device(
        &self,
        accel: &dyn Accelerator,
        batch: &mut [BatchEntry<'_>],
        run: &mut dyn FnMut(&[DeviceEntry<'_>]) -> Result<(), ModelError>,
    ) -> Result<(), ModelError> {
        for e in batch.iter_mut() {
            if !e.cache.on_device {
                return Err(ModelError::Device(
                    "a host KV cache was given to a model on a device (use Model::new_cache)"
                        .into(),
                ));
            }
            if e.cache.device.is_none() && !e.tokens.is_empty() {
                e.cache.device = Some(accel.new_cache(e.cache.capacity())?);
            }
        }
        let entries: Vec<DeviceEntry<'_>> = batch
            .iter()
            .filter_map(|e| {
                let cache = e.cache.device.as_deref()?;
                Some(DeviceEntry {
                    tokens: e.tokens,
                    start: e.cache.len(),
                    cache,
                    logits: e.logits,
                })
            })
            .collect();
        run(&entries)?;
        drop(entries);
        for e in batch.iter_mut() {
            e.cache.advance(e.tokens.len());
        }
        Ok(())
    }

    /// Checks every entry against its cache and the vocabulary.
    fn check_batch(&self, batch: &[BatchEntry<'_>]) -> Result<(), ModelError> {
        let c = &self.config;
        for e in batch {
            let (start, n) = (e.cache.len(), e.tokens.len());
            if start + n > e.cache.capacity() {
                return Err(ModelError::ContextExceeded {
                    needed: start + n,
                    capacity: e.cache.capacity(),
                });
            }
            if let Some(&id) = e.tokens.iter().find(|&&t| t as usize >= c.vocab_size) {
                return Err(ModelError::TokenOutOfRange {
                    id,
                    vocab: c.vocab_size,
                });
            }
        }
        Ok(())
    }

    /// One batched step like [`Model::forward_batch`] that returns, for every entry with tokens,
    /// the greedy next token (the first largest logit of its last token) instead of logits. On
    /// a device the choice is made there and only the ids travel back.
    pub fn forward_batch_greedy(
        &self,
        batch: &mut [BatchEntry<'_>],
        tokens: &mut Vec<u32>,
        scratch: &mut Scratch,
    ) -> Result<(), ModelError> {
        self.greedy_step(batch, tokens, scratch, false)
    }

    /// [`Model::forward_batch_greedy`] for a caller that expects to continue every sequence of
    /// `batch` by its returned token in its next call (a decode loop, nothing joining or
    /// leaving): on a GPU the next step is launched before this one's tokens are back, and
    /// serves the next call if it asks for exactly that step (any other call is served as
    /// usual). The same tokens as [`Model::forward_batch_greedy`].
    pub fn forward_batch_greedy_ahead(
        &self,
        batch: &mut [BatchEntry<'_>],
        tokens: &mut Vec<u32>,
        scratch: &mut Scratch,
    ) -> Result<(), ModelError> {
        self.greedy_step(batch, tokens, scratch, true)
    }

    fn greedy_step(
        &self,
        batch: &mut [BatchEntry<'_>],
        tokens: &mut Vec<u32>,
        scratch: &mut Scratch,
        then: bool,
    ) -> Result<(), ModelError> {
        tokens.clear();
        for e in batch.iter_mut() {
            e.logits = Logits::Last;
        }
        if let Some(accel) = &self.accel {
            self.check_batch(batch)?;
            return self.forward_on_device(accel.as_ref(), batch, &mut |entries| match then {
                true => accel.forward_batch_greedy_ahead(entries, tokens),
                false => accel.forward_batch_greedy(entries, tokens),
            });
        }
        if let Some(screen) = &self.screen {
            let m = self.host_hidden(batch, scratch, None)?;
            let s = scratch;
            let pool = self.pool.as_deref();
            screen.greedy(
                self.output_head(),
                &s.head_in,
                m,
                pool,
                &mut s.screen,
                tokens,
            );
            return Ok(());
        }
        let mut logits = std::mem::take(&mut scratch.greedy_logits);
        self.forward_batch(batch, &mut logits, scratch, None)?;
        let v = self.config.vocab_size;
        tokens.extend(
            logits
                .chunks_exact(v)
                .map(|row| ops::first_argmax(row.iter().copied()) as u32),
        );
        scratch.greedy_logits = logits;
        Ok(())
    }

    /// One batched step like [`Model::forward_batch_greedy`] that returns, for every entry with
    /// tokens, the `k` best candidates of its last token's logits (as
    /// [`bitnet_core::ops::top_k`] orders them: `k` per entry, fewer only where a row has fewer
    /// non-NaN logits — then padded with `(0, NaN)`), entry after entry. On a device they are
    /// chosen there and only the `k` pairs per entry travel back.
    pub fn forward_batch_top_k(
        &self,
        batch: &mut [BatchEntry<'_>],
        k: usize,
        out: &mut Vec<(u32, f32)>,
        scratch: &mut Scratch,
    ) -> Result<(), ModelError> {
        out.clear();
        let v = self.config.vocab_size;
        if k == 0 || k > v {
            return Err(ModelError::Device(format!(
                "top-k candidates: k = {k} must be in 1..={v}"
            )));
        }
        for e in batch.iter_mut() {
            e.logits = Logits::Last;
        }
        if let Some(accel) = &self.accel {
            self.check_batch(batch)?;
            return self.forward_on_device(accel.as_ref(), batch, &mut |entries| {
                accel.forward_batch_top_k(entries, k, out)
            });
        }
        if let Some(screen) = &self.screen {
            let m = self.host_hidden(batch, scratch, None)?;
            let s = scratch;
            let pool = self.pool.as_deref();
            screen.top_k(
                self.output_head(),
                &s.head_in,
                m,
                k,
                pool,
                &mut s.screen,
                out,
            );
            return Ok(());
        }
        let mut logits = std::mem::take(&mut scratch.greedy_logits);
        self.forward_batch(batch, &mut logits, scratch, None)?;
        bitnet_core::ops::top_k_rows(&logits, v, k, out);
        scratch.greedy_logits = logits;
        Ok(())
    }

    /// Runs layer `li` on the residual stream held in `scratch` (`n` tokens at positions
    /// `start..start + n`), writing their keys and values into `cache` (which is not advanced).
    /// Public so that tests can drive one layer at a time from the reference's inputs.
    ///
    /// # Panics
    /// On a model built with [`Model::on_device`] (its layers live on the device).
    pub fn run_layer<'t>(
        &self,
        li: usize,
        start: usize,
        n: usize,
        cache: &mut KvCache,
        s: &mut Scratch,
        tracer: Option<&mut (dyn Tracer + 't)>,
    ) {
        let mut batch = [BatchEntry {
            tokens: &[],
            cache,
            logits: Logits::Last,
        }];
        self.layer_step(li, &mut batch, &[Segment { start, n, row: 0 }], s, tracer);
    }

    fn layer_step<'t>(
        &self,
        li: usize,
        batch: &mut [BatchEntry<'_>],
        segs: &[Segment],
        s: &mut Scratch,
        mut tracer: Option<&mut (dyn Tracer + 't)>,
    ) {
        let c = &self.config;
        let (hd, qd, kvd) = (c.hidden_size, c.q_dim(), c.kv_dim());
        let n: usize = segs.iter().map(|g| g.n).sum();
        let layer = &self.layers[li];
        // Attention block.
        self.norm_quantize(&s.h, &layer.attn_norm, n, &mut s.qa);
        if let Some(tr) = tracer.as_deref_mut() {
            tr.activation(li, TracePoint::AttnIn, &s.qa);
        }
        s.q.resize(n * qd, 0.0);
        s.k.resize(n * kvd, 0.0);
        s.v.resize(n * kvd, 0.0);
        layer
            .qkv
            .forward(&s.qa, &mut [&mut s.q, &mut s.k, &mut s.v], &mut s.ints);
        s.attn.resize(n * qd, 0.0);
        for (e, seg) in batch.iter_mut().zip(segs) {
            for t in seg.row..seg.row + seg.n {
                let pos = seg.start + t - seg.row;
                self.rope.apply_heads(&mut s.q[t * qd..(t + 1) * qd], pos);
                self.rope.apply_heads(&mut s.k[t * kvd..(t + 1) * kvd], pos);
            }
            let rows = seg.row * kvd..(seg.row + seg.n) * kvd;
            e.cache.write(li, seg.start, &s.k[rows.clone()], &s.v[rows]);
        }
        self.attention(li, segs, batch, s);
        self.norm_quantize(&s.attn[..n * qd], &layer.attn_sub_norm, n, &mut s.qa);
        if let Some(tr) = tracer.as_deref_mut() {
            tr.activation(li, TracePoint::OIn, &s.qa);
        }
        s.proj.resize(n * hd, 0.0);
        layer.o.forward(&s.qa, &mut s.proj, &mut s.ints);
        for (h, p) in s.h.iter_mut().zip(&s.proj) {
            *h += p;
        }

        // Feed-forward block.
        self.norm_quantize(&s.h, &layer.ffn_norm, n, &mut s.qa);
        if let Some(tr) = tracer.as_deref_mut() {
            tr.activation(li, TracePoint::FfnIn, &s.qa);
        }
        let id = c.intermediate_size;
        s.gate.resize(n * id, 0.0);
        s.up.resize(n * id, 0.0);
        layer
            .gate_up
            .forward(&s.qa, &mut [&mut s.gate, &mut s.up], &mut s.ints);
        // act(gate) * up, normed and quantized row by row. Generic over the activation, so
        // each inlines and vectorizes (through a function pointer it was a call per element,
        // ~1% of a decode step in perf).
        fn gated<'a>(
            act: impl Fn(f32) -> f32 + Sync + 'a,
            (gate, up): (&'a [f32], &'a [f32]),
            w: &'a [f32],
            eps: f32,
        ) -> impl Fn(usize, &mut [f32]) + Sync + 'a {
            let id = w.len();
            move |t, row| {
                let r = t * id..(t + 1) * id;
                for ((y, &g), &u) in row.iter_mut().zip(&gate[r.clone()]).zip(&up[r]) {
                    *y = act(g) * u;
                }
                ops::rmsnorm_in_place(row, w, eps);
            }
        }
        let (gu, w, eps) = (
            (&s.gate[..], &s.up[..]),
            &layer.ffn_sub_norm,
            c.rms_norm_eps,
        );
        let pool = self.rows_pool(n);
        match c.activation {
            Activation::Relu2 => {
                s.qa.quantize_rows(n, id, pool, &gated(ops::relu2, gu, w, eps))
            }
            Activation::Silu => {
                s.qa.quantize_rows(n, id, pool, &gated(ops::silu, gu, w, eps))
            }
        }
        if let Some(tr) = tracer.as_deref_mut() {
            tr.activation(li, TracePoint::DownIn, &s.qa);
        }
        layer.down.forward(&s.qa, &mut s.proj, &mut s.ints);
        for (h, p) in s.h.iter_mut().zip(&s.proj) {
            *h += p;
        }
        if let Some(tr) = tracer {
            tr.layer_output(li, &s.h);
        }
    }

    /// The `n` rows of `x` (each `weight.len()` wide) RMS-normed with `weight` and quantized
    /// into `qa`, rows spread over the pool where there are enough of them ([`Self::rows_pool`]).
    fn norm_quantize(&self, x: &[f32], weight: &[f32], n: usize, qa: &mut QuantizedActivations) {
        let (cols, eps) = (weight.len(), self.config.rms_norm_eps);
        qa.quantize_rows(n, cols, self.rows_pool(n), &|t, row| {
            ops::rmsnorm(&x[t * cols..(t + 1) * cols], weight, eps, row)
        });
    }

    /// The pool for per-row work on `n` rows (norms, quantization): only from
    /// [`PAR_ROWS`] rows, below which a row's few microseconds do not pay for waking the
    /// workers.
    fn rows_pool(&self, n: usize) -> Option<&ThreadPool> {
        self.pool.as_deref().filter(|_| n >= PAR_ROWS)
    }

    /// Causal attention of every new token (rows of `segs`, each against its own sequence's
    /// cache), softmax in f32; one task per (token, head) on the thread pool. Keys and values are
    /// read as stored (f32, f16 or q8), widened a vector at a time inside the loops.
    fn attention(&self, layer: usize, segs: &[Segment], batch: &[BatchEntry<'_>], s: &mut Scratch) {
        let c = &self.config;
        let (hd, qd, kvd) = (c.head_dim, c.q_dim(), c.kv_dim());
        let group = c.n_heads / c.n_kv_heads;
        let scaling = (hd as f64).powf(-0.5) as f32;
        // Row t -> (its sequence, its position), in a buffer kept across steps.
        let mut owner = std::mem::take(&mut s.owner);
        owner.clear();
        for (i, seg) in segs.iter().enumerate() {
            owner.extend((0..seg.n).map(|j| (i, seg.start + j)));
        }
        let q = &s.q;
        let n = owner.len();
        let threads = self.pool.as_ref().map_or(1, |p| p.threads());
        let g = if crate::kv::reads_heads_together() {
            heads_per_task(group, n * c.n_heads, threads)
        } else {
            1
        };
        // Task i: row t's query heads h0..h0 + g, which share kv head h0 / group (each cached
        // key and value is read and widened once for the g of them).
        let task = |i: usize, out: &mut [f32]| {
            let (t, h0) = (i / (c.n_heads / g), i % (c.n_heads / g) * g);
            let (seq, pos) = owner[t];
            let (keys, values) = batch[seq].cache.layer(layer);
            let kvh = h0 / group;
            let qv = &q[t * qd + h0 * hd..t * qd + (h0 + g) * hd];
            SCORES.with_borrow_mut(|scores| {
                scores.clear();
                scores.resize(g * (pos + 1), 0.0);
                keys.scores_heads(qv, g, kvh, kvd, scaling, scores);
                scores.chunks_exact_mut(pos + 1).for_each(ops::softmax);
                values.mix_heads(scores, g, kvh, kvd, out);
            });
        };
        let out = &mut s.attn[..n * qd];
        match &self.pool {
            Some(pool) if n * c.n_heads / g > 1 => pool.for_each_chunk_mut(out, g * hd, &task),
            _ => out
                .chunks_exact_mut(g * hd)
                .enumerate()
                .for_each(|(i, o)| task(i, o)),
        }
        s.owner = owner;
    }
}

/// Rows from which the per-row work of a layer (norms, quantization, the gated activation)
/// runs on the thread pool.
const PAR_ROWS: usize = 8;

/// Query heads per attention task: 4 or 2 of a key/value head's `group` together where that
/// still leaves every thread two tasks or more (`tasks` = rows x query heads), else 1.
fn heads_per_task(group: usize, tasks: usize, threads: usize) -> usize {
    [4, 2]
        .into_iter()
        .find(|&g| group.is_multiple_of(g) && tasks / g >= 2 * threads)
        .unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::heads_per_task;

    #[test]
    fn attention_tasks_group_heads_only_where_threads_stay_busy() {
        // 2B4T (4 query heads per kv head, 20 heads), one row, two threads: 5 tasks of 4.
        assert_eq!(heads_per_task(4, 20, 2), 4);
        // Eight threads would idle: pairs, then single heads.
        assert_eq!(heads_per_task(4, 40, 8), 2);
        assert_eq!(heads_per_task(4, 20, 8), 1);
        // Only divisors of the group: 2 of 2 (or 6), never across kv heads.
        assert_eq!(heads_per_task(2, 64, 2), 2);
        assert_eq!(heads_per_task(6, 600, 2), 2);
        assert_eq!(heads_per_task(3, 600, 2), 1);
        assert_eq!(heads_per_task(1, 600, 2), 1);
    }
}
