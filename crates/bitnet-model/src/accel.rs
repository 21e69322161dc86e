//! The seam for running the whole forward pass on another device (a GPU).
//!
//! A backend implements [`Accelerator`] once; [`crate::Model::on_device`] wraps it so that the
//! engine, the scheduler and the benchmarks drive it through the same `forward_batch` and
//! [`crate::KvCache`] as the CPU path. The cache keeps its length and capacity on the host and
//! holds the backend's storage as a [`DeviceCache`], created on the sequence's first step.

use std::any::Any;

use crate::{Logits, ModelError, Tracer};

/// Key/value storage of one sequence on a device.
pub trait DeviceCache: Send + Sync {
    /// Bytes one position occupies (all layers, keys and values).
    fn bytes_per_position(&self) -> usize;
    /// For the backend that made it, to reach its own type.
    fn as_any(&self) -> &dyn Any;
}

/// One sequence's share of an [`Accelerator::forward_batch`].
pub struct DeviceEntry<'a> {
    /// Its new tokens.
    pub tokens: &'a [u32],
    /// Position of the first of them (the cache's length before the step).
    pub start: usize,
    /// Its storage, created by [`Accelerator::new_cache`].
    pub cache: &'a dyn DeviceCache,
    /// Which logits to return.
    pub logits: Logits,
}

/// A whole BitNet forward pass on a device.
pub trait Accelerator: Send + Sync {
    /// The device in words, e.g. `cuda:0 (NVIDIA H100 80GB HBM3, sm_90)`.
    fn describe(&self) -> String;
    /// Storage for one sequence of up to `capacity` positions.
    fn new_cache(&self, capacity: usize) -> Result<Box<dyn DeviceCache>, ModelError>;
    /// Copies the first `positions` positions of `from` into `to` (both made by this backend's
    /// [`Accelerator::new_cache`], `to` at least that long), ordered before the next forward.
    fn copy_cache(
        &self,
        from: &dyn DeviceCache,
        to: &dyn DeviceCache,
        positions: usize,
    ) -> Result<(), ModelError> {
        let _ = (from, to, positions);
        Err(ModelError::Device(
            "this backend cannot copy a KV cache".into(),
        ))
    }
    /// Runs every entry's tokens at its positions, stores their keys and values, and writes the
    /// requested logits entry after entry (as [`crate::Model::forward_batch`] documents). Entries
    /// were validated by the caller (context and vocabulary).
    fn forward_batch(
        &self,
        batch: &[DeviceEntry<'_>],
        logits: &mut Vec<f32>,
        tracer: Option<&mut dyn Tracer>,
    ) -> Result<(), ModelError>;
    /// Like [`Accelerator::forward_batch`] with [`Logits::Last`] for every entry, but returns
    /// each entry's greedy token (the first largest logit), chosen on the device: only the ids
    /// travel back.
    fn forward_batch_greedy(
        &self,
        batch: &[DeviceEntry<'_>],
        tokens: &mut Vec<u32>,
    ) -> Result<(), ModelError>;
    /// [`Accelerator::forward_batch_greedy`] for a caller that expects to continue every
    /// sequence of `batch` by its returned token in its next call (a decode loop with nothing to
    /// join or leave): a backend may launch that step before this one's tokens are back and
    /// serve the next call from it when it asks for exactly that step. The default is
    /// [`Accelerator::forward_batch_greedy`].
    fn forward_batch_greedy_ahead(
        &self,
        batch: &[DeviceEntry<'_>],
        tokens: &mut Vec<u32>,
    ) -> Result<(), ModelError> {
        self.forward_batch_greedy(batch, tokens)
    }
    /// Like [`Accelerator::forward_batch_greedy`], but returns each entry's `k` best
    /// candidates `(id, logit)` as [`crate::Model::forward_batch_top_k`] documents, chosen on
    /// the device (`k` pairs per entry). `k` is at least 1 and at most the vocabulary.
    fn forward_batch_top_k(
        &self,
        batch: &[DeviceEntry<'_>],
        k: usize,
        out: &mut Vec<(u32, f32)>,
    ) -> Result<(), ModelError>;
    /// Bytes one position of one sequence's cache holds on the device (all layers, K and V).
    fn kv_bytes_per_position(&self) -> usize;
    /// Bytes one decode step reads from weights on the device.
    fn weight_bytes_per_token(&self) -> u64;
    /// The storage type of the head on the device (`f16`, `int8`, ...).
    fn head_type(&self) -> &'static str;
    /// The device's free and total memory in bytes now, where the backend can tell.
    fn memory(&self) -> Option<(u64, u64)> {
        None
    }
}
