//! A preallocated key/value cache for incremental decoding.

use tch::{Device, Kind, Tensor};

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
        (kind, device): (Kind, Device),
    ) -> Self {
        let make = || {
            (0..layers)
                .map(|_| Tensor::zeros([batch, kv_heads, capacity, head_dim], (kind, device)))
                .collect()
        };
        KvCache {
            keys: make(),
            values: make(),
            len: 0,
            capacity,
        }
    }

    /// A cache sized for `model` with room for `capacity` positions.
    pub fn for_model(model: &crate::Gemma, batch: i64, capacity: i64) -> Self {
        let c = model.config();
        KvCache::new(
            c.num_hidden_layers as usize,
            batch,
            c.num_key_value_heads,
            capacity,
            c.head_dim,
            (model.kind(), model.device()),
        )
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
