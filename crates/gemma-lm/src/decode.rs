//! Decoding steps of one fixed shape, which a CUDA graph can record once and replay per token.
//!
//! An eager step attends over the cache's filled part, so its shapes grow by one position per
//! token, and the host launches each of its few hundred kernels. A static step attends over the
//! whole preallocated cache under a mask that opens one position per token, and keeps its inputs
//! (token ids, positions, the next cache slot) in device tensors that it advances itself, so every
//! step is the same work on the same memory: recorded as a [`Graph`], a token costs one launch.

use foundation::cuda::Graph;
use tch::{Device, Kind, Tensor};

use crate::attention::{AttentionPlan, additive_mask};
use crate::cache::{KvCache, LayerCache};
use crate::model::Gemma;
use crate::{Error, Result};

/// How generation runs its decoding steps (one token per row each).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Decode {
    /// CUDA graphs on a GPU when they are built in and switched on (`LLAVA_CUDA_GRAPHS=1`; see
    /// `foundation::cuda::ON_BY_DEFAULT`), eager steps otherwise. A graph that cannot be captured
    /// falls back to static steps, with a warning.
    #[default]
    Auto,
    /// Each step launched by the host over the cache's filled part.
    Eager,
    /// Fixed-shape steps launched by the host: what [`Decode::Graph`] records.
    Static,
    /// Fixed-shape steps recorded once as a CUDA graph and replayed; an error off a GPU.
    Graph,
}

impl Decode {
    /// What `self` means for a model on `device`.
    pub fn resolve(self, device: Device) -> Decode {
        match self {
            Decode::Auto if device.is_cuda() && foundation::cuda::graphs_by_default() => {
                Decode::Graph
            }
            Decode::Auto => Decode::Eager,
            other => other,
        }
    }
}

impl std::str::FromStr for Decode {
    type Err = Error;

    /// `auto`, `eager`, `static` or `graph`.
    fn from_str(name: &str) -> Result<Decode> {
        match name {
            "auto" => Ok(Decode::Auto),
            "eager" => Ok(Decode::Eager),
            "static" => Ok(Decode::Static),
            "graph" => Ok(Decode::Graph),
            other => Err(Error::Input(format!(
                "unknown decoding `{other}` (auto, eager, static or graph)"
            ))),
        }
    }
}

/// The cache as a static step sees it: every layer's whole `[batch, kv_heads, capacity,
/// head_dim]`, written at the slot the step's device tensor names.
struct SlotWriter<'a> {
    keys: &'a [Tensor],
    values: &'a [Tensor],
    slot: &'a Tensor,
}

impl LayerCache for SlotWriter<'_> {
    fn update(&mut self, layer: usize, k: &Tensor, v: &Tensor) -> (Tensor, Tensor) {
        let (mut keys, mut values) = (
            self.keys[layer].shallow_clone(),
            self.values[layer].shallow_clone(),
        );
        let _ = keys.index_copy_(2, self.slot, k);
        let _ = values.index_copy_(2, self.slot, v);
        (keys, values)
    }
}

/// Fixed-shape decoding after a prefill: the cache and the step's inputs in device tensors, and
/// the step's graph once recorded.
pub(crate) struct StaticDecoder {
    keys: Vec<Tensor>,
    values: Vec<Tensor>,
    /// `[batch, 1]` token ids of the step.
    ids: Tensor,
    /// `[batch, 1]` rotary positions of the step (real tokens before it).
    positions: Tensor,
    /// `[1]`: the cache position the step writes.
    slot: Tensor,
    /// `[batch, 1, 1, capacity]` additive mask: open at real positions written so far.
    mask: Tensor,
    graph: Option<(Graph, Tensor)>,
    /// Whether to record a graph (at the first step).
    use_graph: bool,
}

impl StaticDecoder {
    /// Takes over `cache` after a prefill of `prompt_len` positions; `padding` `[batch,
    /// prompt_len]` marks the prompts' real tokens (1) when they are left-padded.
    pub(crate) fn new(
        model: &Gemma,
        cache: KvCache,
        padding: Option<&Tensor>,
        use_graph: bool,
    ) -> Result<Self> {
        let device = model.device();
        if use_graph && !device.is_cuda() {
            return Err(Error::Input(format!(
                "CUDA-graph decoding needs a CUDA device, not {device:?}"
            )));
        }
        let (keys, values, prompt_len, capacity) = cache.into_parts();
        let batch = keys[0].size()[0];
        let filled = Tensor::arange(capacity, (Kind::Int64, device))
            .lt(prompt_len)
            .unsqueeze(0)
            .expand([batch, capacity], false);
        let (keep, positions) = match padding {
            Some(padding) => {
                let real = padding.to_device(device).ne(0);
                let keep = filled.logical_and(&Tensor::cat(
                    &[
                        real.shallow_clone(),
                        Tensor::ones([batch, capacity - prompt_len], (Kind::Bool, device)),
                    ],
                    1,
                ));
                (keep, real.sum_dim_intlist(-1, true, Kind::Int64))
            }
            None => (
                filled.shallow_clone(),
                Tensor::full([batch, 1], prompt_len, (Kind::Int64, device)),
            ),
        };
        let kind = model.kind();
        Ok(StaticDecoder {
            keys,
            values,
            ids: Tensor::zeros([batch, 1], (Kind::Int64, device)),
            positions,
            slot: Tensor::full([1], prompt_len, (Kind::Int64, device)),
            mask: additive_mask(&keep, kind).view([batch, 1, 1, capacity]),
            graph: None,
            use_graph,
        })
    }

    /// Runs the step for the tokens `chosen` (one per row) and returns the next logits `[batch,
    /// vocab]` in f32. With a graph, they are the graph's output buffer: read them before the
    /// next call.
    pub(crate) fn next(&mut self, model: &Gemma, chosen: &[i64]) -> Result<Tensor> {
        let batch = self.ids.size()[0];
        self.ids.copy_(
            &Tensor::from_slice(chosen)
                .view([batch, 1])
                .to_device(self.ids.device()),
        );
        if !self.use_graph {
            return Ok(tch::no_grad(|| self.step(model)));
        }
        if self.graph.is_none() {
            self.graph = Some(self.record(model)?);
        }
        let (graph, logits) = self.graph.as_ref().expect("recorded above");
        graph.replay()?;
        Ok(logits.shallow_clone())
    }

    /// Runs the steps without a graph from now on.
    pub(crate) fn without_graph(&mut self) {
        self.use_graph = false;
        self.graph = None;
    }

    /// Records the step: one warm-up run on the capture's stream (its effects on the cache's
    /// next slot are undone: the slot stays masked, the inputs are restored), then the capture.
    fn record(&self, model: &Gemma) -> Result<(Graph, Tensor)> {
        let mut graph = Graph::new(model.device())?;
        graph.warm_up(|| {
            tch::no_grad(|| {
                let saved = [&self.positions, &self.slot, &self.mask].map(|t| t.copy());
                drop(self.step(model));
                for (t, s) in [&self.positions, &self.slot, &self.mask].iter().zip(&saved) {
                    t.shallow_clone().copy_(s);
                }
            })
        })?;
        let logits = graph.capture(|| tch::no_grad(|| self.step(model)))?;
        Ok((graph, logits))
    }

    /// One step on the device tensors alone: embed the ids, open the slot, run the layers
    /// (writing the slot), take the logits, advance positions and slot.
    fn step(&self, model: &Gemma) -> Tensor {
        let x = model.embed(&self.ids);
        let _ = self.mask.shallow_clone().index_fill_(-1, &self.slot, 0.0);
        let capacity = self.mask.size()[3];
        let plan = AttentionPlan::from_parts(
            self.positions.shallow_clone(),
            Some(self.mask.shallow_clone()),
            false,
            capacity,
        )
        .with_query_slots(self.slot.view([1, 1]));
        let mut writer = SlotWriter {
            keys: &self.keys,
            values: &self.values,
            slot: &self.slot,
        };
        let hidden = model.forward_planned(&x, &plan, &mut writer);
        let logits = model.logits(&hidden).squeeze_dim(1).to_kind(Kind::Float);
        let _ = self.positions.shallow_clone().g_add_scalar_(1);
        let _ = self.slot.shallow_clone().g_add_scalar_(1);
        logits
    }
}
