//! The key/value cache of one sequence: f32 keys and values per layer, `capacity` positions, on
//! the host; or, for a model on a device, the device's storage with the same bookkeeping.

use crate::ModelConfig;
use crate::accel::DeviceCache;

/// Keys and values of every layer for the positions seen so far.
pub struct KvCache {
    kv_dim: usize,
    capacity: usize,
    len: usize,
    keys: Vec<Vec<f32>>,
    values: Vec<Vec<f32>>,
    /// Set for a model on a device: created at the sequence's first step.
    pub(crate) device: Option<Box<dyn DeviceCache>>,
    pub(crate) on_device: bool,
}

impl std::fmt::Debug for KvCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvCache")
            .field("len", &self.len)
            .field("capacity", &self.capacity)
            .field("on_device", &self.on_device)
            .finish()
    }
}

impl KvCache {
    /// An empty cache; memory is reserved lazily as positions are written.
    pub fn new(config: &ModelConfig, capacity: usize) -> Self {
        Self {
            kv_dim: config.kv_dim(),
            capacity,
            len: 0,
            keys: vec![Vec::new(); config.n_layers],
            values: vec![Vec::new(); config.n_layers],
            device: None,
            on_device: false,
        }
    }

    /// An empty cache whose storage lives on a device (allocated at the first step).
    pub(crate) fn new_on_device(config: &ModelConfig, capacity: usize) -> Self {
        Self {
            on_device: true,
            keys: Vec::new(),
            values: Vec::new(),
            ..Self::new(config, capacity)
        }
    }

    /// Positions held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no position is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Positions the cache can hold.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Forgets positions from `len` on (to reuse a shared prompt prefix or rewind).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
        for l in self.keys.iter_mut().chain(self.values.iter_mut()) {
            l.truncate(self.len * self.kv_dim);
        }
    }

    /// Bytes currently used by keys and values.
    pub fn bytes(&self) -> usize {
        if let Some(d) = &self.device {
            return self.len * d.bytes_per_position();
        }
        self.keys
            .iter()
            .chain(&self.values)
            .map(|v| v.len() * 4)
            .sum()
    }

    pub(crate) fn write(&mut self, layer: usize, start: usize, k: &[f32], v: &[f32]) {
        let end = start * self.kv_dim;
        self.keys[layer].truncate(end);
        self.keys[layer].extend_from_slice(k);
        self.values[layer].truncate(end);
        self.values[layer].extend_from_slice(v);
    }

    pub(crate) fn advance(&mut self, n: usize) {
        self.len += n;
    }

    pub(crate) fn layer(&self, layer: usize) -> (&[f32], &[f32]) {
        (&self.keys[layer], &self.values[layer])
    }
}
