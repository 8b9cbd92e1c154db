//! Continuous batching: a key/value cache with one slot per sequence, and decoding steps over any
//! set of slots.
//!
//! A [`SlotCache`] preallocates `[slots, kv_heads, capacity, head_dim]` per layer. Each slot holds
//! one sequence with its own length, so sequences join and leave a running batch at any step:
//! [`prefill`] runs a new prompt alone (batch 1, the same computation as [`crate::generate`] for one
//! prompt) and writes its keys and values into a free slot; [`decode_step`] then advances any set
//! of occupied slots by one token each, with per-row positions and an attention mask over each
//! row's valid cache positions; [`SlotCache::release`] frees a slot at once.
//!
//! ```no_run
//! # fn main() -> gemma_lm::Result<()> {
//! use gemma_lm::batch::{SlotCache, decode_step, prefill};
//! let (_vs, model) = gemma_lm::Gemma::from_pretrained("gemma-2b-it", tch::Device::Cpu, tch::Kind::Float)?;
//! let mut cache = SlotCache::for_model(&model, 8, 512);
//! let slot = cache.acquire().expect("a free slot");
//! let ids = tch::Tensor::from_slice(&[2i64, 100, 200]).view([1, 3]);
//! let hidden = prefill(&model, &mut cache, slot, &model.embed(&ids))?;
//! let first = model.logits(&hidden).squeeze_dim(1).argmax(-1, false).int64_value(&[0]);
//! let hidden = decode_step(&model, &mut cache, &[(slot, first)])?;
//! cache.release(slot);
//! # let _ = hidden; Ok(()) }
//! ```

use tch::{Device, Kind, Tensor};

use crate::attention::{AttentionPlan, Blocks, additive_mask};
use crate::cache::{Buffers, LayerCache};
use crate::model::Gemma;
use crate::{Error, Result};

/// A key/value cache with one slot per sequence, each with its own length.
#[derive(Debug)]
pub struct SlotCache {
    keys: Vec<Tensor>,
    values: Vec<Tensor>,
    /// The length of each occupied slot; `None` for a free one.
    lens: Vec<Option<i64>>,
    capacity: i64,
}

impl SlotCache {
    /// An empty cache of `slots` slots for `layers` layers of `[slots, kv_heads, capacity, head_dim]`.
    pub fn new(
        layers: usize,
        slots: usize,
        kv_heads: i64,
        capacity: i64,
        head_dim: i64,
        on: (Kind, Device),
    ) -> Self {
        let buffers = Buffers::zeros(layers, slots as i64, kv_heads, capacity, head_dim, on);
        Self::from_buffers(buffers, slots, capacity)
    }

    /// A cache sized for `model`: `slots` sequences of up to `capacity` positions each.
    pub fn for_model(model: &Gemma, slots: usize, capacity: i64) -> Self {
        let buffers = Buffers::for_model(model, slots as i64, capacity);
        Self::from_buffers(buffers, slots, capacity)
    }

    fn from_buffers(Buffers { keys, values }: Buffers, slots: usize, capacity: i64) -> Self {
        SlotCache {
            keys,
            values,
            lens: vec![None; slots],
            capacity,
        }
    }

    /// Number of slots.
    pub fn slots(&self) -> usize {
        self.lens.len()
    }

    /// Positions each slot can hold.
    pub fn capacity(&self) -> i64 {
        self.capacity
    }

    /// Number of occupied slots.
    pub fn occupied(&self) -> usize {
        self.lens.iter().filter(|l| l.is_some()).count()
    }

    /// Takes the lowest free slot (empty), or `None` when all are occupied.
    pub fn acquire(&mut self) -> Option<usize> {
        let slot = self.lens.iter().position(Option::is_none)?;
        self.lens[slot] = Some(0);
        Some(slot)
    }

    /// Frees `slot` (its contents are overwritten by the next sequence).
    pub fn release(&mut self, slot: usize) {
        if let Some(len) = self.lens.get_mut(slot) {
            *len = None;
        }
    }

    /// The number of cached positions of an occupied slot.
    pub fn len(&self, slot: usize) -> Option<i64> {
        self.lens.get(slot).copied().flatten()
    }

    fn check_slot(&self, slot: usize) -> Result<i64> {
        self.len(slot).ok_or_else(|| {
            Error::Input(format!(
                "slot {slot} is not occupied (the cache has {} slots)",
                self.slots()
            ))
        })
    }
}

/// Writes a prompt's keys and values into an empty slot.
struct PrefillWriter<'a> {
    cache: &'a mut SlotCache,
    slot: i64,
}

impl LayerCache for PrefillWriter<'_> {
    fn update(&mut self, layer: usize, k: &Tensor, v: &Tensor) -> (Tensor, Tensor) {
        let new = k.size()[2];
        for (store, x) in [(&self.cache.keys, k), (&self.cache.values, v)] {
            store[layer]
                .narrow(0, self.slot, 1)
                .narrow(2, 0, new)
                .copy_(x);
        }
        // The slot was empty: the prompt attends to its own keys and values only.
        (k.shallow_clone(), v.shallow_clone())
    }
}

/// Writes one new position per row at each row's own length, and returns every row's keys and
/// values up to the longest.
struct DecodeWriter<'a> {
    cache: &'a mut SlotCache,
    /// `[rows]` slot indices.
    slots: Tensor,
    /// `[rows]` where each row's new position goes (its length before the step).
    positions: Tensor,
    /// The first slot when the rows are consecutive slots in order (no gather needed).
    first: Option<i64>,
    rows: i64,
    /// Keys to attend to: the longest row's length after the step.
    total: i64,
}

impl LayerCache for DecodeWriter<'_> {
    fn update(&mut self, layer: usize, k: &Tensor, v: &Tensor) -> (Tensor, Tensor) {
        let mut out = Vec::with_capacity(2);
        for (store, x) in [(&mut self.cache.keys, k), (&mut self.cache.values, v)] {
            let indices = [
                Some(self.slots.shallow_clone()),
                None,
                Some(self.positions.shallow_clone()),
            ];
            // x: [rows, kv_heads, 1, head_dim]; store[slots, :, positions] is [rows, kv_heads, head_dim].
            let _ = store[layer].index_put_(&indices, &x.squeeze_dim(2), false);
            let rows = match self.first {
                Some(first) => store[layer].narrow(0, first, self.rows),
                None => store[layer].index_select(0, &self.slots),
            };
            out.push(rows.narrow(2, 0, self.total));
        }
        let v = out.pop().expect("two tensors");
        let k = out.pop().expect("two tensors");
        (k, v)
    }
}

/// Runs a prompt's embeddings `[1, len, hidden]` into the empty, acquired `slot` (causal attention
/// over the prompt alone, positions `0..len`, as [`crate::generate`] runs one prompt) and returns
/// the last position's hidden state `[1, 1, hidden]`.
pub fn prefill(
    model: &Gemma,
    cache: &mut SlotCache,
    slot: usize,
    embeds: &Tensor,
) -> Result<Tensor> {
    prefill_with(model, cache, slot, embeds, None)
}

/// [`prefill`] with `blocks` of the prompt that attend to each other both ways (Gemma 3's images,
/// PaliGemma's prefix; see [`Blocks`]).
pub fn prefill_with(
    model: &Gemma,
    cache: &mut SlotCache,
    slot: usize,
    embeds: &Tensor,
    blocks: Option<&Blocks>,
) -> Result<Tensor> {
    let size = embeds.size();
    let hidden = model.config().hidden_size;
    if size.len() != 3 || size[0] != 1 || size[1] < 1 || size[2] != hidden {
        return Err(Error::Input(format!(
            "prefill takes embeddings [1, len >= 1, {hidden}], got {size:?}"
        )));
    }
    let len = size[1];
    if cache.check_slot(slot)? != 0 {
        return Err(Error::Input(format!("slot {slot} is not empty")));
    }
    if len > cache.capacity {
        return Err(Error::Input(format!(
            "a prompt of {len} tokens exceeds the cache's {} positions",
            cache.capacity
        )));
    }
    let mut plan = AttentionPlan::new(None, 1, len, 0, model.device(), model.kind());
    if let Some(blocks) = blocks {
        if blocks.ids.size() != [1, len] {
            return Err(Error::Input(format!(
                "attention blocks {:?} do not match the prompt's [1, {len}]",
                blocks.ids.size()
            )));
        }
        plan = plan.with_blocks(blocks, model.kind());
    }
    let out = tch::no_grad(|| {
        model.forward_planned(
            embeds,
            &plan,
            &mut PrefillWriter {
                cache,
                slot: slot as i64,
            },
        )
    });
    cache.lens[slot] = Some(len);
    Ok(out.narrow(1, len - 1, 1))
}

/// One decoding step for `rows`: each `(slot, token)` feeds `token` to the sequence in `slot` at
/// position `len(slot)`. Every row attends to its own slot's positions only (an additive mask
/// hides the rest when lengths differ). Returns the hidden states `[rows, 1, hidden]`, in the
/// order of `rows`; each slot grows by one.
pub fn decode_step(model: &Gemma, cache: &mut SlotCache, rows: &[(usize, i64)]) -> Result<Tensor> {
    if rows.is_empty() {
        return Err(Error::Input(
            "a decoding step needs at least one row".into(),
        ));
    }
    let vocab = model.config().vocab_size;
    let mut lens = Vec::with_capacity(rows.len());
    for (i, &(slot, token)) in rows.iter().enumerate() {
        let len = cache.check_slot(slot)?;
        if len == 0 {
            return Err(Error::Input(format!("slot {slot} has no prompt yet")));
        }
        if len >= cache.capacity {
            return Err(Error::Input(format!(
                "slot {slot} is full ({} positions)",
                cache.capacity
            )));
        }
        if !(0..vocab).contains(&token) {
            return Err(Error::Input(format!(
                "token id {token} is outside the vocabulary of {vocab}"
            )));
        }
        if rows[..i].iter().any(|r| r.0 == slot) {
            return Err(Error::Input(format!(
                "slot {slot} appears twice in one step"
            )));
        }
        lens.push(len);
    }
    let (device, kind) = (model.device(), model.kind());
    let n = rows.len() as i64;
    let total = lens.iter().max().copied().unwrap_or(0) + 1;
    let slots: Vec<i64> = rows.iter().map(|r| r.0 as i64).collect();
    let tokens: Vec<i64> = rows.iter().map(|r| r.1).collect();
    let positions = Tensor::from_slice(&lens).to_device(device);
    let mask = lens.iter().any(|&l| l != lens[0]).then(|| {
        // Row r sees keys 0..=lens[r] (its cache and the new token).
        let keys = Tensor::arange(total, (Kind::Int64, device)).unsqueeze(0);
        let keep = keys.le_tensor(&positions.unsqueeze(1)); // [n, total]
        additive_mask(&keep.unsqueeze(1).unsqueeze(1), kind)
    });
    let consecutive = slots.windows(2).all(|w| w[1] == w[0] + 1);
    let plan = AttentionPlan::from_parts(positions.view([n, 1]), mask, false, total);
    let ids = Tensor::from_slice(&tokens).view([n, 1]).to_device(device);
    let mut writer = DecodeWriter {
        cache,
        slots: Tensor::from_slice(&slots).to_device(device),
        positions,
        first: consecutive.then_some(slots[0]),
        rows: n,
        total,
    };
    let hidden = tch::no_grad(|| model.forward_planned(&model.embed(&ids), &plan, &mut writer));
    for &(slot, _) in rows {
        if let Some(len) = cache.lens[slot].as_mut() {
            *len += 1;
        }
    }
    Ok(hidden)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{GenerationConfig, generate};
    use std::collections::VecDeque;

    fn model() -> (tch::nn::VarStore, Gemma) {
        let dir = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../fixtures/hf-parity/gemma/model"
        );
        let _rng = crate::global_rng();
        Gemma::from_pretrained(dir, Device::Cpu, Kind::Float).expect("the gemma fixture loads")
    }

    fn greedy(model: &Gemma, hidden: &Tensor) -> Vec<i64> {
        let logits = model.logits(hidden).squeeze_dim(1).to_kind(Kind::Float);
        Vec::<i64>::try_from(logits.argmax(-1, false)).expect("int64 ids")
    }

    /// Sequences join (at different steps, into whichever slot is free) and leave (at their own
    /// lengths) a running batch; each one's greedy tokens equal `generate` on its prompt alone.
    #[test]
    fn slot_batched_greedy_equals_generate_alone() {
        let (_vs, model) = model();
        let vocab = model.config().vocab_size;
        let prompts: Vec<(Vec<i64>, usize)> = (0..7)
            .map(|i| {
                let len = 3 + (i * 5) % 11;
                let ids = (0..len)
                    .map(|j| (2 + i as i64 * 31 + j as i64 * 17) % vocab)
                    .collect();
                (ids, 4 + (i * 3) % 9)
            })
            .collect();
        let alone: Vec<Vec<i64>> = prompts
            .iter()
            .map(|(p, max)| {
                let config = GenerationConfig {
                    max_new_tokens: *max,
                    ..GenerationConfig::default()
                };
                generate(&model, std::slice::from_ref(p), &config, |_, _| {}).unwrap()[0].clone()
            })
            .collect();

        let mut cache = SlotCache::for_model(&model, 3, 64);
        let mut waiting: VecDeque<usize> = (0..prompts.len()).collect();
        // (request, slot, last token)
        let mut running: Vec<(usize, usize, i64)> = Vec::new();
        let mut outputs = vec![Vec::new(); prompts.len()];
        for _step in 0..200 {
            // Admit one new prompt per step while slots are free (so joins are staggered).
            if let Some(&request) = waiting.front()
                && let Some(slot) = cache.acquire()
            {
                waiting.pop_front();
                let ids = Tensor::from_slice(&prompts[request].0).view([1, -1]);
                let hidden = prefill(&model, &mut cache, slot, &model.embed(&ids)).unwrap();
                let token = greedy(&model, &hidden)[0];
                outputs[request].push(token);
                running.push((request, slot, token));
            }
            running.retain(|&(request, slot, _)| {
                let done = outputs[request].len() >= prompts[request].1;
                if done {
                    cache.release(slot);
                }
                !done
            });
            if running.is_empty() {
                if waiting.is_empty() {
                    break;
                }
                continue;
            }
            let rows: Vec<(usize, i64)> = running.iter().map(|r| (r.1, r.2)).collect();
            let hidden = decode_step(&model, &mut cache, &rows).unwrap();
            for (r, token) in running.iter_mut().zip(greedy(&model, &hidden)) {
                outputs[r.0].push(token);
                r.2 = token;
            }
        }
        assert_eq!(cache.occupied(), 0);
        assert_eq!(outputs, alone);
    }

    #[test]
    fn bad_rows_are_errors() {
        let (_vs, model) = model();
        let mut cache = SlotCache::for_model(&model, 2, 8);
        assert!(decode_step(&model, &mut cache, &[]).is_err());
        assert!(
            decode_step(&model, &mut cache, &[(0, 1)]).is_err(),
            "free slot"
        );
        let slot = cache.acquire().unwrap();
        assert!(
            decode_step(&model, &mut cache, &[(slot, 1)]).is_err(),
            "empty slot"
        );
        let ids = Tensor::from_slice(&[2i64, 5, 6]).view([1, 3]);
        let _ = prefill(&model, &mut cache, slot, &model.embed(&ids)).unwrap();
        assert_eq!(cache.len(slot), Some(3));
        assert!(decode_step(&model, &mut cache, &[(slot, -1)]).is_err());
        assert!(decode_step(&model, &mut cache, &[(slot, 1), (slot, 1)]).is_err());
        let long = Tensor::zeros([1, 9], (Kind::Int64, Device::Cpu));
        let other = cache.acquire().unwrap();
        assert!(prefill(&model, &mut cache, other, &model.embed(&long)).is_err());
        cache.release(slot);
        cache.release(other);
        assert_eq!(cache.occupied(), 0);
    }
}
