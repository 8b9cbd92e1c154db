//! How queries may attend: positions for the rotary embedding and the mask (causal, padding,
//! packed samples), prepared once per forward and shared by every layer.

use tch::{Device, Kind, Tensor};

use super::varlen::Varlen;

/// How queries may attend, prepared once per forward and shared by every layer.
#[derive(Debug)]
pub struct AttentionPlan {
    /// Positions `[batch, len]` of the new tokens, for the rotary embedding.
    pub(crate) positions: Tensor,
    /// Additive mask `[batch, 1, len, past + len]`, or `None` for plain causal attention.
    pub(crate) mask: Option<Tensor>,
    /// Whether to let the kernel apply the causal mask itself (no past, no explicit mask).
    pub(crate) is_causal: bool,
    /// Sequences laid end to end instead of a mask (packed batches).
    pub(crate) varlen: Option<Varlen>,
    /// Each query's index among the keys it attends over (its cache slot), `[batch or 1, len]`:
    /// what a sliding window is measured in.
    query_slots: Tensor,
    /// How many keys the queries attend over.
    keys: i64,
    /// Runs of tokens that see each other both ways (see [`Blocks`]): `[batch, 1, len, keys]`
    /// true where a query and a key share a block, and whether that reaches past a window.
    blocks: Option<(Tensor, bool)>,
    /// Where each layer's attention probabilities go, when they are kept (see
    /// [`AttentionRecord`]).
    pub(crate) record: Option<AttentionRecord>,
}

/// Each layer's attention probabilities `[batch, heads, len, keys]` (the softmax's output, as
/// transformers' eager attention returns them with `output_attentions`), in layer order, kept in
/// the autograd graph: what relevancy maps are made of. A plan that records runs attention
/// eagerly (scores, mask, softmax, values) rather than through a fused kernel.
#[derive(Debug, Clone, Default)]
pub struct AttentionRecord(std::sync::Arc<std::sync::Mutex<Vec<Tensor>>>);

impl AttentionRecord {
    /// Adds one layer's probabilities.
    pub(crate) fn push(&self, probs: &Tensor) {
        self.0
            .lock()
            .expect("no panic while recording")
            .push(probs.shallow_clone());
    }

    /// The probabilities recorded so far, one tensor per layer, and empties the record.
    pub fn take(&self) -> Vec<Tensor> {
        std::mem::take(&mut *self.0.lock().expect("no panic while recording"))
    }
}

/// Runs of tokens that attend to each other both ways, on top of causal attention: the tokens of
/// one image in Gemma 3, the image and prefix in PaliGemma (transformers' `block_sequence_ids`).
#[derive(Debug)]
pub struct Blocks {
    /// `[batch, len]`: each token's block (0, 1, …), -1 for tokens in none. Padding must be -1.
    pub ids: Tensor,
    /// Whether a block reaches past a sliding window (PaliGemma 2: `OR(AND(window, causal),
    /// block)`) or is clipped by it (Gemma 3: `AND(window, OR(causal, block))`).
    pub over_window: bool,
}

impl Blocks {
    /// Blocks from per-token flags `[batch, len]` (non-zero = bidirectional): each contiguous run
    /// of flagged tokens is one block, as transformers' `get_block_sequence_ids_for_mask` numbers
    /// them (Gemma 3's `token_type_ids`).
    pub fn from_runs(flags: &Tensor, over_window: bool) -> Self {
        let flags = flags.ne(0).to_kind(Kind::Int64);
        let (batch, len) = (flags.size()[0], flags.size()[1]);
        let previous = Tensor::cat(
            &[
                Tensor::zeros([batch, 1], (Kind::Int64, flags.device())),
                flags.narrow(-1, 0, len - 1),
            ],
            -1,
        );
        let starts = flags.gt_tensor(&previous).to_kind(Kind::Int64);
        let run = starts.cumsum(-1, Kind::Int64) - 1;
        Blocks {
            ids: run.where_self(&flags.ne(0), &run.full_like(-1)),
            over_window,
        }
    }
}

impl AttentionPlan {
    /// Plans attention for `len` new tokens after `past` cached ones.
    ///
    /// `padding` is the `[batch, past + len]` mask of real tokens (1) and padding (0) over the whole
    /// sequence. Pass `None` when no row has padding, or when padding is only on the right and
    /// outputs at padded positions are ignored (training batches): causal attention alone is then
    /// exact at every real position, and the fast fused kernels apply. With a padding mask,
    /// positions count real tokens only, as transformers' `generate` does for left padding.
    pub fn new(
        padding: Option<&Tensor>,
        batch: i64,
        len: i64,
        past: i64,
        device: Device,
        kind: Kind,
    ) -> Self {
        match padding {
            None => {
                let positions = Tensor::arange_start(past, past + len, (Kind::Int64, device))
                    .unsqueeze(0)
                    .expand([batch, len], false);
                let mask = (past > 0 && len > 1).then(|| {
                    let keep = causal(len, past, device).unsqueeze(0).unsqueeze(0);
                    additive(&keep, kind)
                });
                AttentionPlan {
                    positions,
                    is_causal: past == 0 && len > 1,
                    mask,
                    varlen: None,
                    query_slots: slots(past, len, device),
                    keys: past + len,
                    blocks: None,
                    record: None,
                }
            }
            Some(padding) => {
                let padding = padding.to_device(device).to_kind(Kind::Int64);
                let positions = (padding.cumsum(-1, Kind::Int64) - 1)
                    .clamp_min(0)
                    .narrow(-1, past, len);
                let keys = padding.ne(0).unsqueeze(1).unsqueeze(1); // [b, 1, 1, past + len]
                let keep = causal(len, past, device)
                    .unsqueeze(0)
                    .unsqueeze(0)
                    .logical_and(&keys);
                AttentionPlan {
                    positions,
                    mask: Some(additive(&keep, kind)),
                    is_causal: false,
                    varlen: None,
                    query_slots: slots(past, len, device),
                    keys: past + len,
                    blocks: None,
                    record: None,
                }
            }
        }
    }
}

impl AttentionPlan {
    /// A plan from explicit parts: `positions` `[batch, len]` for the rotary embedding, which are
    /// also the queries' slots among the `keys` keys (a cache without left padding), an additive
    /// `mask` `[batch, 1, len, keys]` (see [`additive_mask`]) or `None`, and whether the kernel
    /// applies causality itself. [`crate::batch`] and [`crate::decode`] use it for per-row
    /// positions.
    pub fn from_parts(positions: Tensor, mask: Option<Tensor>, is_causal: bool, keys: i64) -> Self {
        AttentionPlan {
            query_slots: positions.shallow_clone(),
            positions,
            mask,
            is_causal,
            varlen: None,
            keys,
            blocks: None,
            record: None,
        }
    }

    /// The plan with the queries' slots among the keys given apart from their rotary positions
    /// (`[batch or 1, len]`): a cache whose prompts were left-padded.
    pub fn with_query_slots(mut self, slots: Tensor) -> Self {
        self.query_slots = slots;
        self
    }

    /// This plan for a sliding-window layer: each query also loses the keys `window` or more
    /// slots behind its own (transformers' `sliding_window_overlay`: key slot > query slot -
    /// window). Slots count padding, as transformers' do. `kind` is the mask's dtype (the
    /// model's).
    pub fn windowed(&self, window: i64, kind: Kind) -> AttentionPlan {
        let device = self.positions.device();
        let keys = Tensor::arange(self.keys, (Kind::Int64, device)).view([1, 1, -1]);
        let near = keys.gt_tensor(&(self.query_slots.unsqueeze(-1) - window)); // [b, len, keys]
        let keep = match &self.mask {
            Some(_) => near,
            None if self.is_causal => {
                let len = self.query_slots.size()[1];
                near.logical_and(&causal(len, self.keys - len, device).unsqueeze(0))
            }
            None => near,
        };
        let window_mask = additive(&keep.unsqueeze(1), kind);
        let mut mask = match &self.mask {
            // Both masks' lowest values stay the lowest (a sum could overflow to -inf).
            Some(mask) => mask.minimum(&window_mask.to_kind(mask.kind())),
            None => window_mask,
        };
        if let Some((same, true)) = &self.blocks {
            mask = mask.masked_fill(same, 0.0);
        }
        AttentionPlan {
            positions: self.positions.shallow_clone(),
            mask: (self.varlen.is_none()).then_some(mask),
            is_causal: false,
            varlen: self.varlen.as_ref().map(|v| v.windowed(window)),
            query_slots: self.query_slots.shallow_clone(),
            keys: self.keys,
            blocks: self
                .blocks
                .as_ref()
                .map(|(same, over)| (same.shallow_clone(), *over)),
            record: self.record.clone(),
        }
    }

    /// This plan keeping each layer's attention probabilities in `record` (see
    /// [`AttentionRecord`]). Not for packed (varlen) plans.
    pub fn recording(self, record: &AttentionRecord) -> AttentionPlan {
        debug_assert!(
            self.varlen.is_none(),
            "a recording plan needs a mask, not varlen"
        );
        AttentionPlan {
            record: Some(record.clone()),
            ..self
        }
    }

    /// This plan with `blocks` of the new tokens opened both ways: a query also sees every key
    /// of its own block, later ones included (transformers' `OR(causal, same_block)`). Blocks
    /// cover the new tokens only; cached keys are in none. A packed plan must be the masked one
    /// ([`packed_masked`](Self::packed_masked)).
    pub fn with_blocks(self, blocks: &Blocks, kind: Kind) -> AttentionPlan {
        debug_assert!(self.varlen.is_none(), "blocks need a mask, not varlen");
        let device = self.positions.device();
        let ids = blocks.ids.to_device(device).to_kind(Kind::Int64);
        let (batch, len) = (ids.size()[0], ids.size()[1]);
        let past = self.keys - len;
        let key_ids = Tensor::cat(
            &[
                Tensor::full([batch, past], -1, (Kind::Int64, device)),
                ids.shallow_clone(),
            ],
            1,
        );
        let same = ids
            .unsqueeze(2)
            .eq_tensor(&key_ids.unsqueeze(1))
            .logical_and(&ids.ge(0).unsqueeze(2))
            .unsqueeze(1); // [b, 1, len, keys]
        let base = match self.mask {
            Some(mask) => mask,
            None if self.is_causal || len > 1 => {
                additive(&causal(len, past, device).unsqueeze(0).unsqueeze(0), kind)
            }
            None => Tensor::zeros([1, 1, len, self.keys], (kind, device)),
        };
        AttentionPlan {
            mask: Some(base.masked_fill(&same, 0.0)),
            is_causal: false,
            blocks: Some((same, blocks.over_window)),
            ..self
        }
    }

    /// Whether the plan runs sequences laid end to end.
    pub fn is_varlen(&self) -> bool {
        self.varlen.is_some()
    }
}

/// Several samples packed into each row of a training batch: each attends only to itself, and
/// its positions restart at 0.
#[derive(Debug)]
pub struct Packing {
    /// Each token's position within its sample, `[batch, len]`.
    pub positions: Tensor,
    /// Each token's sample within its row (0, 1, …), -1 at padding, `[batch, len]`.
    pub segments: Tensor,
}

impl AttentionPlan {
    /// The plan of a packed batch: query `i` sees key `j` when both are of the same sample and
    /// `j <= i`, so the samples' outputs are those each would have alone (outputs at padding are
    /// ignored). The samples run as sequences laid end to end ([`Varlen`]) when each is one run
    /// of tokens, as [`crate::Packing`]'s makers lay them; otherwise under a block-diagonal mask.
    pub fn packed(packing: &Packing, device: Device, kind: Kind) -> Self {
        if let Some(varlen) = Varlen::from_segments(&packing.segments, device) {
            let len = packing.positions.size()[1];
            return AttentionPlan {
                positions: packing.positions.to_device(device),
                mask: None,
                is_causal: false,
                varlen: Some(varlen),
                query_slots: slots(0, len, device),
                keys: len,
                blocks: None,
                record: None,
            };
        }
        Self::packed_masked(packing, device, kind)
    }

    /// [`packed`](Self::packed) under a block-diagonal mask, whatever the layout of the samples.
    pub fn packed_masked(packing: &Packing, device: Device, kind: Kind) -> Self {
        let segments = foundation::device::upload(&packing.segments, device);
        let len = segments.size()[1];
        let same = segments
            .unsqueeze(2)
            .eq_tensor(&segments.unsqueeze(1)) // [b, len, len]
            .logical_and(&segments.ge(0).unsqueeze(1));
        let keep = same
            .logical_and(&causal(len, 0, device).unsqueeze(0))
            .unsqueeze(1);
        AttentionPlan {
            positions: packing.positions.to_device(device),
            mask: Some(additive(&keep, kind)),
            is_causal: false,
            varlen: None,
            query_slots: slots(0, len, device),
            keys: len,
            blocks: None,
            record: None,
        }
    }
}

/// A boolean keep-mask as an additive attention mask in `kind` (0 where kept, the dtype's lowest
/// finite value elsewhere), as [`AttentionPlan`] builds its own.
pub fn additive_mask(keep: &Tensor, kind: Kind) -> Tensor {
    additive(keep, kind)
}

/// `[1, len]`: the slots `past..past + len` of new queries.
fn slots(past: i64, len: i64, device: Device) -> Tensor {
    Tensor::arange_start(past, past + len, (Kind::Int64, device)).unsqueeze(0)
}

/// `[len, past + len]`: query `i` (at absolute position `past + i`) sees keys `0..=past + i`.
pub(crate) fn causal(len: i64, past: i64, device: Device) -> Tensor {
    Tensor::ones([len, past + len], (Kind::Bool, device)).tril(past)
}

/// A boolean keep-mask as an additive mask: 0 where kept, the dtype's lowest finite value elsewhere
/// (finite, so a fully masked row of padding yields numbers rather than NaN).
fn additive(keep: &Tensor, kind: Kind) -> Tensor {
    let lowest = match kind {
        Kind::BFloat16 => -3.389_531_389_251_535_5e38,
        Kind::Half => -65504.0,
        Kind::Double => f64::MIN,
        _ => f32::MIN as f64,
    };
    Tensor::zeros(keep.size(), (kind, keep.device())).masked_fill(&keep.logical_not(), lowest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keep(plan: &AttentionPlan) -> Vec<Vec<i64>> {
        let mask = plan.mask.as_ref().expect("a masked plan").get(0).get(0);
        Vec::<Vec<i64>>::try_from(mask.eq(0.0).to_kind(Kind::Int64)).unwrap()
    }

    fn rows(text: &[&str]) -> Vec<Vec<i64>> {
        text.iter()
            .map(|r| r.bytes().map(|b| i64::from(b == b'1')).collect())
            .collect()
    }

    #[test]
    fn runs_of_flagged_tokens_are_numbered_blocks() {
        let flags = Tensor::from_slice(&[1i64, 1, 0, 1, 1, 0, 0, 1]).view([1, 8]);
        let blocks = Blocks::from_runs(&flags, false);
        assert_eq!(
            Vec::<i64>::try_from(blocks.ids.view([-1])).unwrap(),
            [0, 0, -1, 1, 1, -1, -1, 2]
        );
    }

    #[test]
    fn a_block_sees_itself_both_ways_and_a_window_clips_it_or_not() {
        // t t [i i i] t: the image tokens see each other, later text sees all before it.
        let ids = Tensor::from_slice(&[-1i64, -1, 0, 0, 0, -1]).view([1, 6]);
        let plan = AttentionPlan::new(None, 1, 6, 0, Device::Cpu, Kind::Float);
        let gemma3 = plan.with_blocks(
            &Blocks {
                ids: ids.shallow_clone(),
                over_window: false,
            },
            Kind::Float,
        );
        let want = rows(&["100000", "110000", "111110", "111110", "111110", "111111"]);
        assert_eq!(keep(&gemma3), want);
        // Gemma 3 (window 2): AND(window, OR(causal, block)); forward keys stay inside the block.
        assert_eq!(
            keep(&gemma3.windowed(2, Kind::Float)),
            rows(&["100000", "110000", "011110", "001110", "000110", "000011"])
        );
        // PaliGemma 2: OR(AND(window, causal), block): the block reaches past the window.
        let plan = AttentionPlan::new(None, 1, 6, 0, Device::Cpu, Kind::Float);
        let paligemma = plan.with_blocks(
            &Blocks {
                ids,
                over_window: true,
            },
            Kind::Float,
        );
        assert_eq!(
            keep(&paligemma.windowed(2, Kind::Float)),
            rows(&["100000", "110000", "011110", "001110", "001110", "000011"])
        );
    }
}
