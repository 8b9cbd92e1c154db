//! The Gemma decoder (Gemma Team, 2024), module for module as `transformers.GemmaForCausalLM`.
//!
//! ```text
//! x = embed_tokens(ids) * sqrt(hidden_size)
//! for each layer:
//!     x = x + o_proj(attention(rope(q_proj(norm(x))), rope(k_proj(norm(x))), v_proj(norm(x))))
//!     x = x + down_proj(gelu_tanh(gate_proj(norm(x))) * up_proj(norm(x)))
//! logits = norm(x) @ embed_tokens^T
//! ```
//! with `norm(x) = x / rms(x) * (1 + w)` computed in f32. Variable names are built from the module
//! tree (`model.layers.3.self_attn.q_proj.weight`), so they are the Hugging Face names.

use std::path::Path;

use foundation::Checkpoint;
use foundation::layers::{Embedding, Linear};
use tch::nn::{Init, VarStore};
use tch::{Device, Kind, Tensor};

use crate::batch::LayerCache;
use crate::cache::KvCache;
use crate::config::{Activation, GemmaConfig};
use crate::{Error, Result};

/// Label value that carries no loss, as in PyTorch's `CrossEntropyLoss`.
pub const IGNORE_INDEX: i64 = -100;

/// Gemma's RMS norm: computed in f32, scaled by `(1 + weight)`; the weight starts at zero.
#[derive(Debug)]
pub struct RmsNorm {
    /// `[dim]`, stored as the offset from one.
    pub weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    fn new(path: &tch::nn::Path, dim: i64, eps: f64) -> Self {
        RmsNorm {
            weight: path.var("weight", &[dim], Init::Const(0.0)),
            eps,
        }
    }

    /// Normalises the last dimension of `x`, returning `x`'s dtype. The arithmetic is f32 as in
    /// HF's `GemmaRMSNorm` (`x.float()`, scale by `1 + weight.float()`, cast back), through
    /// libtorch's `rms_norm`, one fused kernel each way on CUDA.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let dim = x.size().last().copied().expect("a tensor to normalise");
        let scale = self.weight.to_kind(Kind::Float) + 1.0;
        x.to_kind(Kind::Float)
            .rms_norm([dim].as_slice(), Some(&scale), Some(self.eps))
            .to_kind(x.kind())
    }
}

/// Rotary position embedding in the rotate-half layout.
#[derive(Debug)]
pub(crate) struct Rotary {
    /// `[head_dim / 2]`, f32.
    inv_freq: Tensor,
}

impl Rotary {
    fn new(config: &GemmaConfig, device: Device) -> Self {
        let dim = config.head_dim;
        let exponents = Tensor::arange_start_step(0, dim, 2, (Kind::Int64, device))
            .to_kind(Kind::Float)
            / dim as f64;
        let inv_freq = Tensor::from(config.rope_theta() as f32)
            .to_device(device)
            .pow(&exponents)
            .reciprocal();
        Rotary { inv_freq }
    }

    /// `cos` and `sin` of shape `[batch, 1, len, head_dim]` in `kind` for positions `[batch, len]`,
    /// computed in f32 as transformers does.
    pub(crate) fn cos_sin(&self, positions: &Tensor, kind: Kind) -> (Tensor, Tensor) {
        let freqs = positions.to_kind(Kind::Float).unsqueeze(-1) * &self.inv_freq;
        let emb = Tensor::cat(&[&freqs, &freqs], -1).unsqueeze(1);
        (emb.cos().to_kind(kind), emb.sin().to_kind(kind))
    }
}

fn rotate_half(x: &Tensor) -> Tensor {
    let half = x
        .size()
        .last()
        .copied()
        .expect("rotary input has a last dimension")
        / 2;
    let x1 = x.narrow(-1, 0, half);
    let x2 = x.narrow(-1, half, half);
    Tensor::cat(&[&x2.neg(), &x1], -1)
}

fn apply_rotary(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Tensor {
    x * cos + rotate_half(x) * sin
}

/// The rotary embedding of queries and keys in the projections' layout `[batch, len, heads, dim]`,
/// returned as `[batch, heads, len, dim]` (a transposed view). On a GPU with our kernels built in,
/// one kernel per tensor (in place when nothing needs a gradient); libtorch's operations otherwise.
fn rotate_queries_keys(q: Tensor, k: Tensor, cos_sin: &(Tensor, Tensor)) -> (Tensor, Tensor) {
    let (cos, sin) = cos_sin;
    let fused = foundation::cuda::kernels_for(q.device(), q.kind())
        && [&q, &k, cos, sin].iter().all(|t| t.is_contiguous());
    if !fused {
        let (q, k) = (q.transpose(1, 2), k.transpose(1, 2));
        return (apply_rotary(&q, cos, sin), apply_rotary(&k, cos, sin));
    }
    // A kernel error here is our bug (the shapes were checked above and by the caller); unwrap
    // panics as tch does, so a caller catching libtorch errors catches it too.
    let rotate = |x: Tensor| {
        if x.requires_grad() {
            foundation::cuda::rotary(&x, cos, sin).unwrap()
        } else {
            foundation::cuda::rotary_(&x, cos, sin).unwrap();
            x
        }
    };
    (rotate(q).transpose(1, 2), rotate(k).transpose(1, 2))
}

/// How queries may attend, prepared once per forward and shared by every layer.
#[derive(Debug)]
pub struct AttentionPlan {
    /// Positions `[batch, len]` of the new tokens, for the rotary embedding.
    pub(crate) positions: Tensor,
    /// Additive mask `[batch, 1, len, past + len]`, or `None` for plain causal attention.
    mask: Option<Tensor>,
    /// Whether to let the kernel apply the causal mask itself (no past, no explicit mask).
    is_causal: bool,
    /// Sequences laid end to end instead of a mask (packed batches).
    varlen: Option<Varlen>,
}

/// The tokens of a batch as sequences laid end to end, each attending only to itself, causally:
/// a packed batch's samples (and each row's padding, whose outputs are ignored). On a GPU this is
/// one varlen flash-attention call; elsewhere one causal attention per sequence. Either way no
/// query is computed against keys it cannot see, as a block-diagonal mask would.
#[derive(Debug)]
pub(crate) struct Varlen {
    /// Where each sequence starts in the flattened `[batch * len]` tokens, and the total: int32,
    /// on the batch's device (flash attention's `cu_seqlens`).
    cu_seqlens: Tensor,
    /// The same boundaries on the host.
    bounds: Vec<i64>,
    /// The longest sequence.
    max_len: i64,
}

impl Varlen {
    /// The sequences of `segments` `[batch, len]` (sample ids, -1 at padding): each row's runs of
    /// one id. `None` when a sample's tokens are not one run, which a mask handles instead.
    fn from_segments(segments: &Tensor, device: Device) -> Option<Varlen> {
        let (b, l) = (segments.size()[0], segments.size()[1]);
        let ids = Vec::<i64>::try_from(segments.to_device(Device::Cpu).reshape([-1])).ok()?;
        let mut bounds = vec![0i64];
        for row in 0..b as usize {
            let row_ids = &ids[row * l as usize..(row + 1) * l as usize];
            let mut seen = std::collections::HashSet::new();
            for (i, &id) in row_ids.iter().enumerate() {
                let starts = i == 0 || row_ids[i - 1] != id;
                if starts {
                    if i > 0 {
                        bounds.push((row * l as usize + i) as i64);
                    }
                    if id >= 0 && !seen.insert(id) {
                        return None;
                    }
                }
            }
            bounds.push(((row + 1) * l as usize) as i64);
        }
        bounds.dedup();
        let max_len = bounds.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0);
        let host: Vec<i32> = bounds.iter().map(|&x| x as i32).collect();
        Some(Varlen {
            cu_seqlens: foundation::device::upload(&Tensor::from_slice(&host), device),
            bounds,
            max_len,
        })
    }

    /// Causal attention within each sequence, for `q` `[tokens, heads, dim]` and `k`, `v`
    /// `[tokens, kv_heads, dim]`; returns `[tokens, heads, dim]`.
    fn attend(&self, q: &Tensor, k: &Tensor, v: &Tensor) -> Tensor {
        if q.device().is_cuda() && matches!(q.kind(), Kind::BFloat16 | Kind::Half) {
            // Errors here are our bugs (the layout is ours); unwrap panics as tch does.
            return foundation::cuda::flash_varlen(q, k, v, &self.cu_seqlens, self.max_len)
                .unwrap();
        }
        let groups = q.size()[1] / k.size()[1];
        let outputs: Vec<Tensor> = self
            .bounds
            .windows(2)
            .map(|w| {
                let part = |t: &Tensor| t.narrow(0, w[0], w[1] - w[0]).transpose(0, 1).unsqueeze(0);
                Tensor::scaled_dot_product_attention(
                    &part(q),
                    &repeat_kv(&part(k), groups),
                    &repeat_kv(&part(v), groups),
                    None::<&Tensor>,
                    0.0,
                    true,
                    None,
                    false,
                )
                .squeeze_dim(0)
                .transpose(0, 1)
            })
            .collect();
        Tensor::cat(&outputs, 0)
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
                }
            }
        }
    }
}

impl AttentionPlan {
    /// A plan from explicit parts: `positions` `[batch, len]` for the rotary embedding, an
    /// additive `mask` `[batch, 1, len, keys]` (see [`additive_mask`]) or `None`, and whether the
    /// kernel applies causality itself. [`crate::batch`] uses it for per-row positions.
    pub fn from_parts(positions: Tensor, mask: Option<Tensor>, is_causal: bool) -> Self {
        AttentionPlan {
            positions,
            mask,
            is_causal,
            varlen: None,
        }
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
            return AttentionPlan {
                positions: packing.positions.to_device(device),
                mask: None,
                is_causal: false,
                varlen: Some(varlen),
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
        }
    }
}

/// A boolean keep-mask as an additive attention mask in `kind` (0 where kept, the dtype's lowest
/// finite value elsewhere), as [`AttentionPlan`] builds its own.
pub fn additive_mask(keep: &Tensor, kind: Kind) -> Tensor {
    additive(keep, kind)
}

/// `[len, past + len]`: query `i` (at absolute position `past + i`) sees keys `0..=past + i`.
fn causal(len: i64, past: i64, device: Device) -> Tensor {
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

/// Multi-head attention with grouped (or multi-query) key/value heads and rotary positions.
#[derive(Debug)]
pub struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    heads: i64,
    kv_heads: i64,
    head_dim: i64,
}

impl Attention {
    fn new(path: &tch::nn::Path, c: &GemmaConfig) -> Self {
        let (h, d, std) = (c.hidden_size, c.head_dim, c.initializer_range);
        let bias = c.attention_bias;
        Attention {
            q_proj: Linear::new(&path.sub("q_proj"), h, c.num_attention_heads * d, bias, std),
            k_proj: Linear::new(&path.sub("k_proj"), h, c.num_key_value_heads * d, bias, std),
            v_proj: Linear::new(&path.sub("v_proj"), h, c.num_key_value_heads * d, bias, std),
            o_proj: Linear::new(&path.sub("o_proj"), c.num_attention_heads * d, h, bias, std),
            heads: c.num_attention_heads,
            kv_heads: c.num_key_value_heads,
            head_dim: d,
        }
    }

    fn forward(
        &self,
        x: &Tensor,
        cos_sin: &(Tensor, Tensor),
        plan: &AttentionPlan,
        cache: Option<(&mut dyn LayerCache, usize)>,
    ) -> Tensor {
        let (b, l) = (x.size()[0], x.size()[1]);
        let split = |t: Tensor, n: i64| t.view([b, l, n, self.head_dim]);
        let q = split(self.q_proj.forward(x), self.heads);
        let k = split(self.k_proj.forward(x), self.kv_heads);
        let v = split(self.v_proj.forward(x), self.kv_heads).transpose(1, 2);
        let (q, k) = rotate_queries_keys(q, k, cos_sin);
        if let Some(varlen) = &plan.varlen {
            // [b, n, l, d] back to the tokens laid end to end, [b * l, n, d].
            let flat = |t: &Tensor| t.transpose(1, 2).reshape([b * l, -1, self.head_dim]);
            let out = varlen.attend(&flat(&q), &flat(&k), &flat(&v));
            return self
                .o_proj
                .forward(&out.reshape([b, l, self.heads * self.head_dim]));
        }
        let (k, v) = match cache {
            Some((cache, layer)) => cache.update(layer, &k, &v),
            None => (k, v),
        };
        let groups = self.heads / self.kv_heads;
        let (k, v) = (repeat_kv(&k, groups), repeat_kv(&v, groups));
        let out = Tensor::scaled_dot_product_attention(
            &q,
            &k,
            &v,
            plan.mask.as_ref(),
            0.0,
            plan.is_causal,
            None,
            false,
        );
        let out = out
            .transpose(1, 2)
            .reshape([b, l, self.heads * self.head_dim]);
        self.o_proj.forward(&out)
    }
}

/// Repeats each key/value head of `x` `[batch, kv_heads, len, dim]` for the `groups` query heads
/// that share it.
fn repeat_kv(x: &Tensor, groups: i64) -> Tensor {
    if groups == 1 {
        return x.shallow_clone();
    }
    let s = x.size();
    x.unsqueeze(2)
        .expand([s[0], s[1], groups, s[2], s[3]], false)
        .reshape([s[0], s[1] * groups, s[2], s[3]])
}

/// The gated MLP: `down(act(gate(x)) * up(x))`.
#[derive(Debug)]
pub struct Mlp {
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
    activation: Activation,
}

impl Mlp {
    fn new(path: &tch::nn::Path, c: &GemmaConfig, activation: Activation) -> Self {
        let (h, m, std) = (c.hidden_size, c.intermediate_size, c.initializer_range);
        Mlp {
            gate_proj: Linear::new(&path.sub("gate_proj"), h, m, false, std),
            up_proj: Linear::new(&path.sub("up_proj"), h, m, false, std),
            down_proj: Linear::new(&path.sub("down_proj"), m, h, false, std),
            activation,
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let approximate = match self.activation {
            Activation::GeluTanh => "tanh",
            Activation::Gelu => "none",
        };
        let (gate, up) = (self.gate_proj.forward(x), self.up_proj.forward(x));
        let fused = self.activation == Activation::GeluTanh
            && foundation::cuda::kernels_for(gate.device(), gate.kind())
            && gate.is_contiguous()
            && up.is_contiguous();
        let hidden = if fused {
            // One kernel each way; an error is our bug, and panics as tch's own would.
            foundation::cuda::gelu_mul(&gate, &up).unwrap()
        } else {
            gate.gelu(approximate) * up
        };
        self.down_proj.forward(&hidden)
    }
}

/// One pre-norm decoder layer.
#[derive(Debug)]
pub struct DecoderLayer {
    input_layernorm: RmsNorm,
    self_attn: Attention,
    post_attention_layernorm: RmsNorm,
    mlp: Mlp,
}

impl DecoderLayer {
    fn new(path: &tch::nn::Path, c: &GemmaConfig, activation: Activation) -> Self {
        DecoderLayer {
            input_layernorm: RmsNorm::new(
                &path.sub("input_layernorm"),
                c.hidden_size,
                c.rms_norm_eps,
            ),
            self_attn: Attention::new(&path.sub("self_attn"), c),
            post_attention_layernorm: RmsNorm::new(
                &path.sub("post_attention_layernorm"),
                c.hidden_size,
                c.rms_norm_eps,
            ),
            mlp: Mlp::new(&path.sub("mlp"), c, activation),
        }
    }

    /// The layer's linear layers by their names inside it (`self_attn.q_proj`, `mlp.up_proj`).
    pub(crate) fn linears(&self) -> [(&'static str, &Linear); 7] {
        let (a, m) = (&self.self_attn, &self.mlp);
        [
            ("self_attn.q_proj", &a.q_proj),
            ("self_attn.k_proj", &a.k_proj),
            ("self_attn.v_proj", &a.v_proj),
            ("self_attn.o_proj", &a.o_proj),
            ("mlp.gate_proj", &m.gate_proj),
            ("mlp.up_proj", &m.up_proj),
            ("mlp.down_proj", &m.down_proj),
        ]
    }

    /// [`linears`](Self::linears), mutably.
    pub(crate) fn linears_mut(&mut self) -> [(&'static str, &mut Linear); 7] {
        let (a, m) = (&mut self.self_attn, &mut self.mlp);
        [
            ("self_attn.q_proj", &mut a.q_proj),
            ("self_attn.k_proj", &mut a.k_proj),
            ("self_attn.v_proj", &mut a.v_proj),
            ("self_attn.o_proj", &mut a.o_proj),
            ("mlp.gate_proj", &mut m.gate_proj),
            ("mlp.up_proj", &mut m.up_proj),
            ("mlp.down_proj", &mut m.down_proj),
        ]
    }

    pub(crate) fn forward(
        &self,
        x: &Tensor,
        cos_sin: &(Tensor, Tensor),
        plan: &AttentionPlan,
        cache: Option<(&mut dyn LayerCache, usize)>,
    ) -> Tensor {
        let h = x + self
            .self_attn
            .forward(&self.input_layernorm.forward(x), cos_sin, plan, cache);
        &h + self.mlp.forward(&self.post_attention_layernorm.forward(&h))
    }
}

/// What a forward pass returns.
#[derive(Debug)]
pub struct ModelOutput {
    /// `[batch, len, hidden]` after the final norm.
    pub last_hidden_state: Tensor,
    /// When asked for: the embeddings, the output of each layer but the last, and the final
    /// normed output, as transformers' `hidden_states` (`num_hidden_layers + 1` tensors).
    pub hidden_states: Vec<Tensor>,
}

/// The Gemma decoder with its language-model head (`GemmaForCausalLM`).
#[derive(Debug)]
pub struct Gemma {
    config: GemmaConfig,
    embed_tokens: Embedding,
    pub(crate) layers: Vec<DecoderLayer>,
    pub(crate) norm: RmsNorm,
    /// `[vocab, hidden]` when the head is not tied to the embedding.
    lm_head: Option<Linear>,
    pub(crate) rotary: Rotary,
    device: Device,
    /// Whether the model is training: switches the adapters' dropout (see [`crate::lora`]).
    pub(crate) training: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Gemma {
    /// Builds a randomly initialised model under `root` (variables `model.*` and, when untied,
    /// `lm_head.weight`), initialised as transformers initialises Gemma.
    pub fn new(root: &tch::nn::Path, config: &GemmaConfig) -> Result<Self> {
        config.validate()?;
        let activation = config.activation()?;
        let model = root.sub("model");
        let embed_tokens = Embedding::new(
            &model.sub("embed_tokens"),
            config.vocab_size,
            config.hidden_size,
            config.initializer_range,
        );
        if let Some(pad) = config
            .pad_token_id
            .filter(|&p| (0..config.vocab_size).contains(&p))
        {
            tch::no_grad(|| {
                let _ = embed_tokens.weight.get(pad).zero_();
            });
        }
        let layers = (0..config.num_hidden_layers)
            .map(|i| DecoderLayer::new(&model.sub("layers").sub(i), config, activation))
            .collect();
        let norm = RmsNorm::new(&model.sub("norm"), config.hidden_size, config.rms_norm_eps);
        let lm_head = (!config.tie_word_embeddings).then(|| {
            Linear::new(
                &root.sub("lm_head"),
                config.hidden_size,
                config.vocab_size,
                false,
                config.initializer_range,
            )
        });
        Ok(Gemma {
            config: config.clone(),
            embed_tokens,
            layers,
            norm,
            lm_head,
            rotary: Rotary::new(config, root.device()),
            device: root.device(),
            training: Default::default(),
        })
    }

    /// Loads a Hugging Face Gemma directory (`config.json` plus one or sharded safetensors files)
    /// onto `device`, with weights converted to `kind`.
    pub fn from_pretrained(
        dir: impl AsRef<Path>,
        device: Device,
        kind: Kind,
    ) -> Result<(VarStore, Self)> {
        let dir = dir.as_ref();
        let config = GemmaConfig::from_file(dir)?;
        let checkpoint = Checkpoint::open(dir)?;
        Self::from_checkpoint(&config, &checkpoint, device, kind)
    }

    /// Builds a model for `config` from `checkpoint`, wherever in it the language model sits.
    pub fn from_checkpoint(
        config: &GemmaConfig,
        checkpoint: &Checkpoint,
        device: Device,
        kind: Kind,
    ) -> Result<(VarStore, Self)> {
        let (vs, model) = foundation::build(device, kind, |root| Self::new(root, config))?;
        model.load(&vs, checkpoint)?;
        Ok((vs, model))
    }

    /// Fills this model's variables in `vs` from `checkpoint`. The language model may sit under any
    /// prefix: `model.` (GemmaForCausalLM), none (GemmaModel), `language_model.model.` or
    /// `model.language_model.` (LLaVA checkpoints).
    pub fn load(&self, vs: &VarStore, checkpoint: &Checkpoint) -> Result<()> {
        let prefix =
            checkpoint.require_prefix("embed_tokens.weight", "model.embed_tokens.weight")?;
        // Where an untied head sits next to the decoder: `lm_head.weight` beside `model.`, or
        // `language_model.lm_head.weight` beside `language_model.model.`.
        let outer = prefix.strip_suffix("model.").unwrap_or("");
        checkpoint.load_into(vs, |name| match name.strip_prefix("model.") {
            Some(rest) => vec![format!("{prefix}{rest}")],
            None => vec![format!("{outer}{name}"), name.to_string()],
        })?;
        Ok(())
    }

    /// Grows the vocabulary to `size` tokens (for added tokens such as LLaVA's `<image>`): new
    /// embedding rows (and head rows, when untied) start at the mean of the existing ones, as
    /// transformers' `resize_token_embeddings` centres them.
    pub fn resize_vocab(&mut self, size: i64) -> Result<()> {
        let old = self.config.vocab_size;
        if size < old {
            return Err(Error::Input(format!(
                "cannot shrink the vocabulary from {old} to {size}"
            )));
        }
        if size == old {
            return Ok(());
        }
        let grow = |weight: &mut Tensor| {
            tch::no_grad(|| {
                let mean = weight.mean_dim(0, true, weight.kind());
                let extra = mean.expand([size - old, weight.size()[1]], false);
                let grown = Tensor::cat(&[&*weight, &extra], 0);
                weight.set_data(&grown);
            })
        };
        grow(&mut self.embed_tokens.weight);
        if let Some(head) = &mut self.lm_head {
            grow(&mut head.weight);
        }
        self.config.vocab_size = size;
        Ok(())
    }

    /// The configuration.
    pub fn config(&self) -> &GemmaConfig {
        &self.config
    }

    /// The device the weights live on.
    pub fn device(&self) -> Device {
        self.device
    }

    /// The dtype of the weights (and of the computation).
    pub fn kind(&self) -> Kind {
        self.embed_tokens.weight.kind()
    }

    /// Token embeddings scaled by `sqrt(hidden_size)` (the scale rounded to the weights' dtype, as
    /// transformers does). This is where LLaVA inserts image features.
    ///
    /// The scale stays a host scalar, an argument of the multiplication's kernel: copying it to
    /// the device would wait for the device, and could not be recorded in a CUDA graph.
    pub fn embed(&self, input_ids: &Tensor) -> Tensor {
        let scale = Tensor::from((self.config.hidden_size as f64).sqrt()).to_kind(self.kind());
        self.embed_tokens.forward(&input_ids.to_device(self.device)) * scale
    }

    /// Runs the decoder on input embeddings `[batch, len, hidden]` (already scaled, see
    /// [`embed`](Self::embed)). With a cache, the new tokens follow the cached ones and the cache
    /// grows by `len`. See [`AttentionPlan::new`] for `padding`.
    pub fn forward_embeds(
        &self,
        embeds: &Tensor,
        padding: Option<&Tensor>,
        mut cache: Option<&mut KvCache>,
        output_hidden_states: bool,
    ) -> Result<ModelOutput> {
        let (b, l) = self.check_embeds(embeds)?;
        let past = cache.as_ref().map_or(0, |c| c.len());
        if let Some(c) = &cache
            && past + l > c.capacity()
        {
            return Err(Error::Input(format!(
                "{} cached + {l} new tokens exceed the cache's {} positions",
                past,
                c.capacity()
            )));
        }
        if let Some(p) = padding
            && p.size() != [b, past + l]
        {
            return Err(Error::Input(format!(
                "padding mask must be [{b}, {}], got {:?}",
                past + l,
                p.size()
            )));
        }
        let plan = AttentionPlan::new(padding, b, l, past, self.device, self.kind());
        let cos_sin = self.rotary.cos_sin(&plan.positions, self.kind());
        let mut hidden_states = Vec::new();
        let mut x = embeds.to_device(self.device).to_kind(self.kind());
        for (i, layer) in self.layers.iter().enumerate() {
            if output_hidden_states {
                hidden_states.push(x.shallow_clone());
            }
            x = layer.forward(
                &x,
                &cos_sin,
                &plan,
                cache.as_deref_mut().map(|c| (c as &mut dyn LayerCache, i)),
            );
        }
        let last_hidden_state = self.norm.forward(&x);
        if output_hidden_states {
            hidden_states.push(last_hidden_state.shallow_clone());
        }
        if let Some(c) = cache {
            c.advance(l);
        }
        Ok(ModelOutput {
            last_hidden_state,
            hidden_states,
        })
    }

    /// Runs the decoder on input embeddings `[batch, len, hidden]` with an explicit attention
    /// plan and a cache of any layout (the slot cache of [`crate::batch`]); returns the last hidden
    /// state after the final norm. The caller checks shapes and advances its cache.
    pub fn forward_planned(
        &self,
        embeds: &Tensor,
        plan: &AttentionPlan,
        cache: &mut dyn LayerCache,
    ) -> Tensor {
        let cos_sin = self.rotary.cos_sin(&plan.positions, self.kind());
        let mut x = embeds.to_device(self.device).to_kind(self.kind());
        for (i, layer) in self.layers.iter().enumerate() {
            x = layer.forward(&x, &cos_sin, plan, Some((&mut *cache, i)));
        }
        self.norm.forward(&x)
    }

    /// Trains through the decoder with activation checkpointing: runs the layers on `embeds`
    /// `[batch, len, hidden]` (a training batch: causal attention, right padding) keeping only each
    /// layer's input, applies `head` to the final normed hidden states (it returns the loss to
    /// backpropagate and whatever the caller wants back), backpropagates, and then recomputes the
    /// layers one at a time from the last, each with autograd, to carry the gradient down to
    /// `embeds` (and through it to whatever made them). Gradients are those of the plain path;
    /// the memory of the activations is one layer's plus each layer's input.
    ///
    /// Adapter dropout draws the same masks in the recomputation as in the first pass: each layer
    /// runs from a seed drawn for it (libtorch's generator is reseeded).
    pub fn backward_checkpointed<R>(
        &self,
        embeds: &Tensor,
        head: impl FnOnce(&Tensor) -> Result<(Tensor, R)>,
    ) -> Result<R> {
        self.backward_checkpointed_packed(embeds, None, head)
    }

    /// [`backward_checkpointed`](Self::backward_checkpointed) for a batch that may be packed.
    pub fn backward_checkpointed_packed<R>(
        &self,
        embeds: &Tensor,
        packing: Option<&Packing>,
        head: impl FnOnce(&Tensor) -> Result<(Tensor, R)>,
    ) -> Result<R> {
        let (b, l) = self.check_embeds(embeds)?;
        let plan = match packing {
            Some(packing) => {
                self.check_packing(packing, b, l)?;
                AttentionPlan::packed(packing, self.device, self.kind())
            }
            None => AttentionPlan::new(None, b, l, 0, self.device, self.kind()),
        };
        let cos_sin = self.rotary.cos_sin(&plan.positions, self.kind());
        let dropout = self.training.load(std::sync::atomic::Ordering::Relaxed)
            && self
                .layers
                .iter()
                .flat_map(|l| l.linears())
                .any(|(_, l)| l.lora.as_ref().is_some_and(|a| a.dropout > 0.0));
        let seeds: Vec<Option<i64>> = self
            .layers
            .iter()
            .map(|_| {
                dropout.then(|| {
                    Tensor::randint(i64::MAX, [1], (Kind::Int64, Device::Cpu)).int64_value(&[0])
                })
            })
            .collect();
        let run = |i: usize, x: &Tensor| {
            if let Some(seed) = seeds[i] {
                tch::manual_seed(seed);
            }
            self.layers[i].forward(x, &cos_sin, &plan, None)
        };
        let first = embeds.to_device(self.device).to_kind(self.kind());
        let mut inputs = Vec::with_capacity(self.layers.len());
        let mut x = first.detach();
        tch::no_grad(|| {
            for i in 0..self.layers.len() {
                let next = run(i, &x);
                inputs.push(std::mem::replace(&mut x, next));
            }
        });
        let last = x.set_requires_grad(true);
        let (loss, out) = head(&self.norm.forward(&last))?;
        loss.backward();
        let mut grad = last.grad();
        for i in (0..self.layers.len()).rev() {
            let input = inputs
                .pop()
                .expect("one input per layer")
                .set_requires_grad(true);
            if grad.defined() {
                (run(i, &input) * &grad).sum(Kind::Float).backward();
            }
            grad = input.grad();
        }
        if grad.defined() && first.requires_grad() {
            (first * grad).sum(Kind::Float).backward();
        }
        Ok(out)
    }

    /// Runs the decoder on a packed training batch's input embeddings `[batch, len, hidden]`
    /// (see [`Packing`]); returns the last hidden state after the final norm.
    pub fn forward_packed(&self, embeds: &Tensor, packing: &Packing) -> Result<Tensor> {
        let (b, l) = self.check_embeds(embeds)?;
        self.check_packing(packing, b, l)?;
        let plan = AttentionPlan::packed(packing, self.device, self.kind());
        let cos_sin = self.rotary.cos_sin(&plan.positions, self.kind());
        let mut x = embeds.to_device(self.device).to_kind(self.kind());
        for layer in &self.layers {
            x = layer.forward(&x, &cos_sin, &plan, None);
        }
        Ok(self.norm.forward(&x))
    }

    fn check_packing(&self, packing: &Packing, b: i64, l: i64) -> Result<()> {
        for (name, t) in [
            ("positions", &packing.positions),
            ("segments", &packing.segments),
        ] {
            if t.size() != [b, l] {
                return Err(Error::Input(format!(
                    "packing {name} {:?} do not match the batch's [{b}, {l}]",
                    t.size()
                )));
            }
        }
        Ok(())
    }

    /// Runs the model on token ids `[batch, len]`.
    pub fn forward(
        &self,
        input_ids: &Tensor,
        padding: Option<&Tensor>,
        cache: Option<&mut KvCache>,
        output_hidden_states: bool,
    ) -> Result<ModelOutput> {
        self.check_ids(input_ids)?;
        self.forward_embeds(&self.embed(input_ids), padding, cache, output_hidden_states)
    }

    /// The language-model head: logits over the vocabulary for hidden states `[..., hidden]`.
    pub fn logits(&self, hidden: &Tensor) -> Tensor {
        match &self.lm_head {
            Some(head) => head.forward(hidden),
            None => hidden.matmul(&self.embed_tokens.weight.tr()),
        }
    }

    /// The causal-LM loss for `hidden` `[batch, len, hidden]` and `labels` `[batch, len]` aligned
    /// with the inputs: position `t` predicts `labels[t + 1]`; [`IGNORE_INDEX`] carries no loss; the
    /// mean is over the labelled positions. Logits are computed only at those positions (in f32):
    /// with a 256k vocabulary the full logits would be the largest tensor of a training step.
    ///
    /// Returns the loss and the number of labelled positions. With none, the loss is a zero that
    /// still carries a gradient path, so a step over it is a no-op rather than NaN.
    pub fn loss(&self, hidden: &Tensor, labels: &Tensor) -> Result<(Tensor, i64)> {
        let (hs, ls) = (hidden.size(), labels.size());
        if hs.len() != 3 || ls.len() != 2 || hs[..2] != ls[..] {
            return Err(Error::Input(format!(
                "labels {ls:?} do not match hidden states {hs:?}"
            )));
        }
        let (b, l, h) = (hs[0], hs[1], hs[2]);
        if l < 2 {
            return Ok((hidden.sum(Kind::Float) * 0.0, 0));
        }
        // Labels on the host are searched there and uploaded without waiting for the device
        // (finding the labelled positions on it would wait for everything queued before).
        let targets = labels.narrow(1, 1, l - 1).reshape([-1]);
        let keep = targets.ne(IGNORE_INDEX).nonzero().squeeze_dim(1);
        let (targets, keep) = (
            foundation::device::upload(&targets, self.device),
            foundation::device::upload(&keep, self.device),
        );
        let count = keep.size()[0];
        if count == 0 {
            return Ok((hidden.sum(Kind::Float) * 0.0, 0));
        }
        let selected = hidden
            .narrow(1, 0, l - 1)
            .reshape([b * (l - 1), h])
            .index_select(0, &keep);
        let logits = self.logits(&selected).to_kind(Kind::Float);
        let loss = logits.cross_entropy_loss::<Tensor>(
            &targets.index_select(0, &keep),
            None,
            tch::Reduction::Mean,
            IGNORE_INDEX,
            0.0,
        );
        Ok((loss, count))
    }

    /// `(batch, len)` of input embeddings, which must be `[batch, len, hidden]`.
    fn check_embeds(&self, embeds: &Tensor) -> Result<(i64, i64)> {
        let size = embeds.size();
        if size.len() != 3 || size[2] != self.config.hidden_size {
            return Err(Error::Input(format!(
                "embeddings must be [batch, len, {}], got {size:?}",
                self.config.hidden_size
            )));
        }
        Ok((size[0], size[1]))
    }

    fn check_ids(&self, ids: &Tensor) -> Result<()> {
        if ids.dim() != 2 || ids.kind() != Kind::Int64 {
            return Err(Error::Input(format!(
                "input ids must be an int64 [batch, len] tensor, got {:?} {:?}",
                ids.kind(),
                ids.size()
            )));
        }
        if ids.numel() > 0 {
            let (min, max) = (ids.min().int64_value(&[]), ids.max().int64_value(&[]));
            if min < 0 || max >= self.config.vocab_size {
                return Err(Error::Input(format!(
                    "token id {} is outside the vocabulary of {}",
                    if min < 0 { min } else { max },
                    self.config.vocab_size
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segments(rows: &[&[i64]]) -> Tensor {
        let flat: Vec<i64> = rows.iter().flat_map(|r| r.iter().copied()).collect();
        Tensor::from_slice(&flat).view([rows.len() as i64, rows[0].len() as i64])
    }

    #[test]
    fn each_run_of_a_sample_or_of_padding_is_one_sequence() {
        let v = Varlen::from_segments(
            &segments(&[&[0, 0, 1, 1, 1, -1], &[0, 0, 0, 0, 1, 1]]),
            Device::Cpu,
        )
        .unwrap();
        assert_eq!(v.bounds, [0, 2, 5, 6, 10, 12]);
        assert_eq!(v.max_len, 4);
        assert_eq!(
            Vec::<i32>::try_from(&v.cu_seqlens).unwrap(),
            [0, 2, 5, 6, 10, 12]
        );
    }

    #[test]
    fn a_sample_split_in_two_runs_takes_the_mask() {
        assert!(Varlen::from_segments(&segments(&[&[0, 1, 0, -1]]), Device::Cpu).is_none());
    }

    #[test]
    fn sequences_laid_end_to_end_attend_as_the_block_diagonal_mask() {
        let _rng = crate::global_rng();
        tch::manual_seed(3);
        let vs = VarStore::new(Device::Cpu);
        let config = GemmaConfig::tiny(64); // one key/value head for four query heads
        let model = Gemma::new(&vs.root(), &config).unwrap();
        let packing = Packing {
            positions: Tensor::from_slice(&[0i64, 1, 2, 0, 1, 0, 0, 1, 2, 3, 0, 1]).view([2, 6]),
            segments: segments(&[&[0, 0, 0, 1, 1, -1], &[0, 0, 0, 0, 1, 1]]),
        };
        let embeds = Tensor::randn([2, 6, config.hidden_size], (Kind::Float, Device::Cpu));
        let run = |plan: &AttentionPlan| {
            let cos_sin = model.rotary.cos_sin(&plan.positions, Kind::Float);
            let mut x = embeds.shallow_clone();
            for layer in &model.layers {
                x = layer.forward(&x, &cos_sin, plan, None);
            }
            x
        };
        let varlen = AttentionPlan::packed(&packing, Device::Cpu, Kind::Float);
        assert!(varlen.varlen.is_some());
        let masked = AttentionPlan::packed_masked(&packing, Device::Cpu, Kind::Float);
        let keep = packing.segments.ge(0).unsqueeze(-1);
        let (a, b) = (run(&varlen) * &keep, run(&masked) * &keep);
        assert!(a.allclose(&b, 1e-5, 1e-5, false), "{}", (a - b).abs().max());
    }
}
