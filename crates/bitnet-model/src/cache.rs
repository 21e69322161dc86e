//! The key/value cache of one sequence: keys and values per layer, `capacity` positions, on the
//! host in the model's [`KvType`] (f32, f16 or q8; their errors are documented there); or, for a model on a
//! device, the device's storage with the same bookkeeping.

use crate::ModelConfig;
use crate::accel::DeviceCache;
use crate::kv::{KvType, KvView, Store};

/// Keys and values of every layer for the positions seen so far.
pub struct KvCache {
    kv: KvType,
    kv_dim: usize,
    head_dim: usize,
    capacity: usize,
    len: usize,
    keys: Vec<Store>,
    values: Vec<Store>,
    /// Set for a model on a device: created at the sequence's first step.
    pub(crate) device: Option<Box<dyn DeviceCache>>,
    pub(crate) on_device: bool,
}

impl std::fmt::Debug for KvCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvCache")
            .field("kv", &self.kv)
            .field("len", &self.len)
            .field("capacity", &self.capacity)
            .field("on_device", &self.on_device)
            .finish()
    }
}

impl KvCache {
    /// An empty host cache storing `kv` elements; memory is reserved lazily as positions are
    /// written. [`crate::Model::new_cache`] picks the model's type.
    pub fn new(config: &ModelConfig, capacity: usize, kv: KvType) -> Self {
        Self {
            kv,
            kv_dim: config.kv_dim(),
            head_dim: config.head_dim,
            capacity,
            len: 0,
            keys: (0..config.n_layers).map(|_| Store::new(kv)).collect(),
            values: (0..config.n_layers).map(|_| Store::new(kv)).collect(),
            device: None,
            on_device: false,
        }
    }

    /// An empty cache whose storage lives on a device (allocated at the first step).
    pub(crate) fn new_on_device(config: &ModelConfig, capacity: usize, kv: KvType) -> Self {
        Self {
            on_device: true,
            keys: Vec::new(),
            values: Vec::new(),
            ..Self::new(config, capacity, kv)
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

    /// How keys and values are stored (on a device: what the model was loaded with; the
    /// backend's own type governs there).
    pub fn kv_type(&self) -> KvType {
        self.kv
    }

    /// Forgets positions from `len` on (to reuse a shared prompt prefix or rewind).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
        for s in self.keys.iter_mut().chain(self.values.iter_mut()) {
            s.truncate(self.len, self.kv_dim, self.head_dim);
        }
    }

    /// Sets the capacity (see [`crate::Model::resize_cache`]); `device`, where given, replaces
    /// the device storage (already holding this cache's positions).
    pub(crate) fn set_capacity(&mut self, capacity: usize, device: Option<Box<dyn DeviceCache>>) {
        self.capacity = capacity;
        if device.is_some() {
            self.device = device;
        }
    }

    /// The device storage, once the cache's first step made it.
    pub(crate) fn device(&self) -> Option<&dyn DeviceCache> {
        self.device.as_deref()
    }

    /// Bytes currently used by keys and values (scales included).
    pub fn bytes(&self) -> usize {
        if let Some(d) = &self.device {
            return self.len * d.bytes_per_position();
        }
        self.keys.iter().chain(&self.values).map(Store::bytes).sum()
    }

    /// The stored keys and values of `layer` (host caches; empty views on a device), for tests
    /// and tools that inspect what attention reads.
    pub fn layer_view(&self, layer: usize) -> (KvView<'_>, KvView<'_>) {
        match (self.keys.get(layer), self.values.get(layer)) {
            (Some(k), Some(v)) => (k.view(), v.view()),
            _ => (KvView::F32(&[]), KvView::F32(&[])),
        }
    }

    pub(crate) fn write(&mut self, layer: usize, start: usize, k: &[f32], v: &[f32]) {
        let (kvd, hd) = (self.kv_dim, self.head_dim);
        self.keys[layer].write(start, k, kvd, hd);
        self.values[layer].write(start, v, kvd, hd);
    }

    pub(crate) fn advance(&mut self, n: usize) {
        self.len += n;
    }

    pub(crate) fn layer(&self, layer: usize) -> (KvView<'_>, KvView<'_>) {
        (self.keys[layer].view(), self.values[layer].view())
    }
}
