//! Preallocated key/value caches for incremental decoding, and [`LayerCache`], the one interface
//! a decoder layer writes through (this cache, the slot cache of [`crate::batch`], the static
//! steps of [`crate::decode`]).

use tch::{Device, Kind, Tensor};

/// Where a decoder layer keeps its keys and values: given the new keys and values
/// `[batch, kv_heads, new, head_dim]` of `layer`, stores them and returns all keys and values the
/// new queries attend to.
pub trait LayerCache {
    /// Stores the new keys and values of `layer` and returns the keys and values to attend to.
    fn update(&mut self, layer: usize, k: &Tensor, v: &Tensor) -> (Tensor, Tensor);
}

/// Every layer's keys and values, zeros of `[rows, kv_heads, capacity, head_dim]` each: the
/// memory of [`KvCache`] and of [`crate::SlotCache`].
#[derive(Debug)]
pub(crate) struct Buffers {
    pub(crate) keys: Vec<Tensor>,
    pub(crate) values: Vec<Tensor>,
}

impl Buffers {
    pub(crate) fn zeros(
        layers: usize,
        rows: i64,
        kv_heads: i64,
        capacity: i64,
        head_dim: i64,
        (kind, device): (Kind, Device),
    ) -> Self {
        let make = || {
            (0..layers)
                .map(|_| Tensor::zeros([rows, kv_heads, capacity, head_dim], (kind, device)))
                .collect()
        };
        Buffers {
            keys: make(),
            values: make(),
        }
    }

    /// Buffers sized for `model`: `rows` sequences of `capacity` positions.
    pub(crate) fn for_model(model: &crate::Gemma, rows: i64, capacity: i64) -> Self {
        let c = model.config();
        Buffers::zeros(
            c.num_hidden_layers as usize,
            rows,
            c.num_key_value_heads,
            capacity,
            c.head_dim,
            (model.kind(), model.device()),
        )
    }
}

/// Keys and values of every layer, preallocated to `capacity` positions so that each decoding step
/// writes in place instead of concatenating (which would copy the whole cache every token).
#[derive(Debug)]
pub struct KvCache {
    keys: Vec<Tensor>,
    values: Vec<Tensor>,
    len: i64,
    capacity: i64,
}

impl KvCache {
    /// An empty cache for `layers` layers of `[batch, kv_heads, capacity, head_dim]`.
    pub fn new(
        layers: usize,
        batch: i64,
        kv_heads: i64,
        capacity: i64,
        head_dim: i64,
        on: (Kind, Device),
    ) -> Self {
        Self::from_buffers(
            Buffers::zeros(layers, batch, kv_heads, capacity, head_dim, on),
            capacity,
        )
    }

    /// A cache sized for `model` with room for `capacity` positions.
    pub fn for_model(model: &crate::Gemma, batch: i64, capacity: i64) -> Self {
        Self::from_buffers(Buffers::for_model(model, batch, capacity), capacity)
    }

    fn from_buffers(Buffers { keys, values }: Buffers, capacity: i64) -> Self {
        KvCache {
            keys,
            values,
            len: 0,
            capacity,
        }
    }

    /// Number of cached positions.
    pub fn len(&self) -> i64 {
        self.len
    }

    /// Whether nothing is cached yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of positions the cache can hold.
    pub fn capacity(&self) -> i64 {
        self.capacity
    }

    /// Writes the new keys and values `[batch, kv_heads, new, head_dim]` of `layer` after the cached
    /// ones and returns all of them. The length advances in [`advance`](Self::advance), once every
    /// layer has written.
    pub fn update(&mut self, layer: usize, k: &Tensor, v: &Tensor) -> (Tensor, Tensor) {
        let new = k.size()[2];
        let total = self.len + new;
        assert!(
            total <= self.capacity,
            "KV cache overflow: checked by the caller"
        );
        self.keys[layer].narrow(2, self.len, new).copy_(k);
        self.values[layer].narrow(2, self.len, new).copy_(v);
        (
            self.keys[layer].narrow(2, 0, total),
            self.values[layer].narrow(2, 0, total),
        )
    }

    /// The keys and values of every layer, the filled length and the capacity.
    pub(crate) fn into_parts(self) -> (Vec<Tensor>, Vec<Tensor>, i64, i64) {
        (self.keys, self.values, self.len, self.capacity)
    }

    /// Records that `new` positions were written to every layer.
    pub fn advance(&mut self, new: i64) {
        self.len += new;
    }
}

impl LayerCache for KvCache {
    fn update(&mut self, layer: usize, k: &Tensor, v: &Tensor) -> (Tensor, Tensor) {
        KvCache::update(self, layer, k, v)
    }
}
