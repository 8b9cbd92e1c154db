//! A memory planner: what one training step of a preset needs per device, by arithmetic on the
//! model's shapes (nothing is built, so the 7B plan is instant). `llava plan` prints it.
//!
//! The model follows what this trainer keeps (see [`crate::optim`] and `gemma-lm`'s model):
//!
//! - **weights**: every parameter (the frozen vision tower included) in the compute dtype: bf16 on
//!   CUDA, f32 on the CPU; LoRA adapters in f32;
//! - **gradients**: only trainable parameters, in their own dtype;
//! - **master weights**: an f32 copy of each trainable parameter that is not f32 (CUDA only);
//! - **moments**: AdamW's two f32 moments of each trainable parameter;
//! - **activations**: what autograd keeps at the end of the forward pass (counted tensor by tensor
//!   from the code, see [`layer_activation_bytes`]), plus the loss's logits, which are computed at
//!   labelled positions only, and their backward pass;
//! - **context**: the CUDA context, cuBLAS workspaces and the caching allocator's slack (1 GiB; 0 on
//!   the CPU, where the process's baseline is subtracted instead).
//!
//! With `gpus > 1` the optimizer is sharded as the trainer shards it ([`crate::parallel`]): each
//! device keeps 1/N of the masters and moments; the weights stay replicated, and so do the
//! gradients until the step's last backward pass ends (they are reduce-scattered then, not bucket
//! by bucket during the pass), when the device briefly holds them and its reduced 1/N.
//!
//! The peak is the larger of two moments of a step: the start of the backward pass (every
//! activation still held, the logits' gradients in flight, and of the gradients only the LM head's,
//! which the loss's backward writes first; the other gradients appear as layers free their
//! activations) and the optimizer step (every gradient, plus one group of gradients made f32).

use gemma_lm::GemmaConfig;
use llava_model::{LlavaConfig, presets};
use serde::Serialize;

/// Bytes in a GiB.
pub const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

/// The allowance for the CUDA context, cuBLAS workspaces and allocator slack.
pub const CUDA_CONTEXT_BYTES: u64 = 1 << 30;

/// The presets the planner knows: those of [`presets::by_name`] and the 7B ones.
pub const PRESETS: [&str; 19] = [
    "tiny",
    "tiny-gemma2",
    "tiny-gemma3",
    "tiny-siglip-gemma3",
    "tiny-gemma3-vlm",
    "tiny-paligemma",
    "bench-small",
    "bench-small-gemma2",
    "bench-small-gemma3",
    "paper-2b-clip",
    "paper-2b-dinov2",
    "siglip-gemma2-2b",
    "siglip-gemma3-1b",
    "siglip-gemma3-4b",
    "gemma3-4b",
    "paligemma-3b-224",
    "paligemma2-3b-224",
    "paper-7b-clip",
    "paper-7b-dinov2",
];

/// The configuration of preset `name` (see [`PRESETS`]). The 7B presets are the 2B ones with
/// Gemma-7B as the language model (same 256128-token vocabulary).
pub fn preset(name: &str) -> Option<LlavaConfig> {
    let seven = |two: &str| {
        let mut config = presets::by_name(two)?;
        config.text_config = GemmaConfig {
            vocab_size: config.text_config.vocab_size,
            hidden_activation: Some("gelu_pytorch_tanh".into()),
            ..GemmaConfig::gemma_7b()
        };
        Some(config)
    };
    match name {
        "paper-7b-clip" => seven("paper-2b-clip"),
        "paper-7b-dinov2" => seven("paper-2b-dinov2"),
        other => presets::by_name(other),
    }
}

/// The shapes of a Gemma language model that memory depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct LmShape {
    /// Vocabulary size.
    pub vocab: u64,
    /// Residual width.
    pub hidden: u64,
    /// MLP width.
    pub intermediate: u64,
    /// Decoder layers.
    pub layers: u64,
    /// Query heads.
    pub heads: u64,
    /// Key/value heads.
    pub kv_heads: u64,
    /// Width of a head.
    pub head_dim: u64,
    /// Whether the LM head is the embedding.
    pub tied: bool,
    /// Whether the attention projections have biases.
    pub attention_bias: bool,
    /// Norms of width `hidden` per layer: 2 (Gemma), 4 (Gemma 2/3).
    pub norms_per_layer: u64,
    /// Whether each layer normalises its query and key heads (Gemma 3: two norms of `head_dim`).
    pub qk_norm: bool,
    /// Whether attention runs the eager path that keeps its score matrices (Gemma 2's soft-cap,
    /// which libtorch's fused kernels cannot apply).
    pub eager_attention: bool,
}

impl LmShape {
    /// The shapes of `c`.
    pub fn of(c: &GemmaConfig) -> Self {
        LmShape {
            vocab: c.vocab_size as u64,
            hidden: c.hidden_size as u64,
            intermediate: c.intermediate_size as u64,
            layers: c.num_hidden_layers as u64,
            heads: c.num_attention_heads as u64,
            kv_heads: c.num_key_value_heads as u64,
            head_dim: c.head_dim as u64,
            tied: c.tie_word_embeddings,
            attention_bias: c.attention_bias,
            norms_per_layer: if c.sandwich_norms() { 4 } else { 2 },
            qk_norm: c.qk_norm(),
            eager_attention: c.attn_softcap().is_some(),
        }
    }

    /// The (in, out) widths of the seven projections of a layer: q, k, v, o, gate, up, down.
    fn projections(&self) -> [(u64, u64); 7] {
        let (h, m) = (self.hidden, self.intermediate);
        let (q, kv) = (self.heads * self.head_dim, self.kv_heads * self.head_dim);
        [(h, q), (h, kv), (h, kv), (q, h), (h, m), (h, m), (m, h)]
    }

    /// Parameters of one decoder layer.
    pub fn layer_params(&self) -> u64 {
        let linear: u64 = self.projections().iter().map(|(i, o)| i * o).sum();
        let bias = if self.attention_bias {
            let (q, kv) = (self.heads * self.head_dim, self.kv_heads * self.head_dim);
            q + 2 * kv + self.hidden
        } else {
            0
        };
        let qk_norm = if self.qk_norm { 2 * self.head_dim } else { 0 };
        linear + bias + self.norms_per_layer * self.hidden + qk_norm
    }

    /// Parameters of the embedding, the LM head when untied, and the final norm.
    pub fn head_params(&self) -> u64 {
        let embed = self.vocab * self.hidden;
        embed + if self.tied { 0 } else { embed } + self.hidden
    }

    /// Every parameter.
    pub fn params(&self) -> u64 {
        self.layers * self.layer_params() + self.head_params()
    }

    /// Parameters of rank-`r` LoRA adapters on q, k, v, o, gate, up and down of every layer
    /// (`r * (in + out)` each), as LLaVA's `finetune_lora.sh` places them.
    pub fn lora_params(&self, r: u64) -> u64 {
        let per_layer: u64 = self.projections().iter().map(|(i, o)| r * (i + o)).sum();
        self.layers * per_layer
    }
}

/// A vision tower's shapes, read from a LLaVA configuration's `vision_config`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct VisionShape {
    /// DINOv2 (`mlp_ratio`, layer scales, a mask token) rather than CLIP.
    pub dinov2: bool,
    /// Width.
    pub hidden: u64,
    /// MLP width (CLIP's `intermediate_size`, DINOv2's `hidden * mlp_ratio`).
    pub intermediate: u64,
    /// Layers.
    pub layers: u64,
    /// Image side the position embeddings are for.
    pub image_size: u64,
    /// Patch side.
    pub patch_size: u64,
    /// Input channels.
    pub channels: u64,
    /// DINOv2: biases on q, k, v.
    pub qkv_bias: bool,
    /// DINOv2: the mask token.
    pub mask_token: bool,
    /// DINOv2: a SwiGLU MLP (ViT-g).
    pub swiglu: bool,
    /// SigLIP: no class token or pre-norm, a biased patch projection, the attention-pooling head
    /// when `Some(true)`.
    pub siglip: Option<bool>,
}

impl VisionShape {
    /// The shapes in `vision_config` (a CLIP or DINOv2 configuration as JSON).
    pub fn of(v: &serde_json::Value) -> Result<Self, String> {
        let int = |key: &str| {
            v.get(key)
                .and_then(serde_json::Value::as_u64)
                .ok_or(format!("vision_config has no `{key}`"))
        };
        let flag = |key: &str, default: bool| {
            v.get(key)
                .and_then(serde_json::Value::as_bool)
                .unwrap_or(default)
        };
        let hidden = int("hidden_size")?;
        let ratio = v.get("mlp_ratio").and_then(serde_json::Value::as_f64);
        let dinov2 = ratio.is_some();
        Ok(VisionShape {
            dinov2,
            hidden,
            intermediate: match ratio {
                Some(r) => (hidden as f64 * r) as u64,
                None => int("intermediate_size")?,
            },
            layers: int("num_hidden_layers")?,
            image_size: int("image_size")?,
            patch_size: int("patch_size")?,
            channels: int("num_channels").unwrap_or(3),
            qkv_bias: flag("qkv_bias", true),
            mask_token: dinov2 && flag("use_mask_token", true),
            swiglu: flag("use_swiglu_ffn", false),
            siglip: v
                .get("model_type")
                .and_then(serde_json::Value::as_str)
                .filter(|t| t.starts_with("siglip"))
                .map(|_| flag("vision_use_head", true)),
        })
    }

    /// Parameters: CLIP's `CLIPVisionModel` (embeddings, pre-norm, layers, post-norm) or DINOv2's
    /// backbone (embeddings with the mask token, layers with layer scales, the final norm).
    pub fn params(&self) -> u64 {
        let (h, m, p) = (self.hidden, self.intermediate, self.patch_size);
        let grid = self.image_size / p;
        let positions = (grid * grid + 1) * h;
        let conv = h * self.channels * p * p;
        let norms = 2 * 2 * h;
        if let Some(head) = self.siglip {
            let layer = 4 * (h * h + h) + (h * m + m) + (m * h + h) + norms;
            // Probe, packed in-projection, out-projection, layer norm, MLP.
            let pooling = h + (3 * h * h + 3 * h) + (h * h + h) + 2 * h + (h * m + m) + (m * h + h);
            let head = if head { pooling } else { 0 };
            return conv + h + grid * grid * h + self.layers * layer + 2 * h + head;
        }
        if !self.dinov2 {
            let layer = 4 * (h * h + h) + (h * m + m) + (m * h + h) + norms;
            return h + conv + positions + 2 * h + self.layers * layer + 2 * h;
        }
        let mlp = if self.swiglu {
            let hidden = (m * 2 / 3).div_ceil(8) * 8;
            (h * 2 * hidden + 2 * hidden) + (hidden * h + h)
        } else {
            (h * m + m) + (m * h + h)
        };
        let qkv_bias = if self.qkv_bias { 3 * h } else { 0 };
        let layer = 3 * h * h + qkv_bias + (h * h + h) + mlp + norms + 2 * h;
        let mask = if self.mask_token { h } else { 0 };
        h + mask + conv + h + positions + self.layers * layer + 2 * h
    }
}

/// A LLaVA model's shapes, as the planner needs them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ModelShape {
    /// The language model.
    pub lm: LmShape,
    /// Parameters of the vision tower (frozen).
    pub vision_params: u64,
    /// Width of the features the connector takes (tower width times feature layers).
    pub vision_features: u64,
    /// Parameters of the connector.
    pub connector_params: u64,
    /// Tokens per image.
    pub image_tokens: u64,
}

impl ModelShape {
    /// The shapes of `config`.
    pub fn of(config: &LlavaConfig) -> Result<Self, String> {
        let vision = VisionShape::of(&config.vision_config)?;
        let (vision_params, width) = (vision.params(), vision.hidden);
        let lm = LmShape::of(&config.text_config);
        let family = config.family();
        let layers = match family {
            llava_model::config::Family::Llava => config.feature_layers().len() as u64,
            _ => 1,
        };
        let features = width * layers;
        let bias = |n: u64| {
            if config.multimodal_projector_bias {
                n
            } else {
                0
            }
        };
        let connector_params = match config.projector().map_err(|e| e.to_string())? {
            connector::ProjectorType::Identity => 0,
            connector::ProjectorType::Linear => features * lm.hidden + bias(lm.hidden),
            connector::ProjectorType::PaliGemma => features * lm.hidden + lm.hidden,
            connector::ProjectorType::Gemma3 { .. } => features * lm.hidden + features,
            connector::ProjectorType::MlpGelu { depth } => {
                features * lm.hidden
                    + (depth as u64 - 1) * lm.hidden * lm.hidden
                    + depth as u64 * bias(lm.hidden)
            }
        };
        Ok(ModelShape {
            lm,
            vision_params,
            vision_features: features,
            connector_params,
            image_tokens: match family {
                llava_model::config::Family::Gemma3 => config.mm_tokens_per_image().max(0) as u64,
                _ => config.image_seq_length.unwrap_or(576).max(0) as u64,
            },
        })
    }
}

/// Where the step runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PlanDevice {
    /// bf16 weights, f32 masters and moments, a CUDA context.
    Cuda,
    /// Everything f32, no masters.
    Cpu,
}

/// What is trained, and how.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct PlanConfig {
    /// 1 (connector) or 2 (connector and LM, or its adapters with `lora_rank`).
    pub stage: u8,
    /// Samples per micro-batch on each device.
    pub micro_batch: u64,
    /// Tokens per sample, image tokens included.
    pub seq: u64,
    /// Labelled tokens per sample (every text token, `seq - image_tokens - 1`, when `None`).
    pub loss_tokens: Option<u64>,
    /// Devices the optimizer state is sharded over (ZeRO-2); 1 = none.
    pub gpus: u64,
    /// Stage 2 with rank-`r` LoRA adapters (f32) instead of the whole LM.
    pub lora_rank: Option<u64>,
    /// Whether the adapters apply dropout to their inputs (LLaVA's 0.05): each adapted layer then
    /// keeps its own dropped copy of the input and the mask.
    pub lora_dropout: bool,
    /// Keep only each layer's input and recompute the layer in the backward pass.
    pub activation_checkpointing: bool,
    /// Where.
    pub device: PlanDevice,
    /// The device's memory in bytes, to say whether the plan fits.
    pub memory_bytes: u64,
}

/// Parameter counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ParamCounts {
    /// The vision tower.
    pub vision: u64,
    /// The connector.
    pub connector: u64,
    /// The language model.
    pub lm: u64,
    /// LoRA adapters.
    pub lora: u64,
    /// What trains.
    pub trainable: u64,
}

/// Bytes per device.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Plan {
    /// The settings.
    pub config: PlanConfig,
    /// Parameter counts.
    pub params: ParamCounts,
    /// Every weight.
    pub weights: u64,
    /// Gradients of what trains (1/N under sharding).
    pub gradients: u64,
    /// f32 masters of trainable bf16 weights (1/N under sharding).
    pub master_weights: u64,
    /// The two f32 AdamW moments (1/N under sharding).
    pub moments: u64,
    /// Activations at the start of the backward pass, the logits included.
    pub activations: u64,
    /// Of `activations`: the loss's logits at the labelled positions, with their backward pass.
    pub logits: u64,
    /// Gradients present at the start of the backward pass (the LM head's, when it trains).
    pub head_gradients: u64,
    /// One group of gradients made f32 during the optimizer step.
    pub optimizer_transient: u64,
    /// CUDA context, workspaces and allocator slack.
    pub context: u64,
    /// The peak: the larger of the backward pass's start and the optimizer step.
    pub total: u64,
    /// Whether `total` fits the device's memory.
    pub fits: bool,
}

/// Bytes autograd keeps for one decoder layer over `tokens` tokens (the code's tensors: see
/// `gemma-lm`'s `DecoderLayer::forward`). `s` is the compute dtype's size; `trains` says whether
/// the layer's linear layers save their inputs (their weights or adapters train); `norm_trains`
/// whether the norms' weights do.
///
/// - each RMS norm keeps its f32 input (on CUDA a cast copy; on the CPU the input itself, plus the
///   normalised tensor when its weight trains) and, when the next linears train, its output;
/// - attention keeps the rotated queries, the keys and values repeated to every query head (a copy
///   when there are fewer KV heads), the fused kernel's output and f32 log-sum-exp, and the
///   reshaped output for `o_proj` when it trains;
/// - the MLP keeps the gate projection (for GELU), GELU's output and the up projection (for their
///   product), and the product for `down_proj` when it trains.
pub fn layer_activation_bytes(
    lm: &LmShape,
    tokens: u64,
    s: u64,
    trains: bool,
    norm_trains: bool,
    cpu: bool,
) -> u64 {
    let (h, m) = (lm.hidden, lm.intermediate);
    let q = lm.heads * lm.head_dim;
    let norm = if cpu {
        4 * h + if norm_trains { 4 * h } else { 0 } + if trains { 4 * h } else { 0 }
    } else {
        4 * h + if trains { s * h } else { 0 }
    };
    let attention = 4 * q * s + 4 * lm.heads + if trains { q * s } else { 0 };
    let mlp = 3 * m * s + if trains { m * s } else { 0 };
    // Gemma 3's q/k norms keep their f32 inputs.
    let qk_norm = if lm.qk_norm {
        4 * (q + lm.kv_heads * lm.head_dim)
    } else {
        0
    };
    tokens * (lm.norms_per_layer * norm + attention + mlp + qk_norm)
}

/// What eager attention (Gemma 2's soft-capped scores) keeps per layer beyond
/// [`layer_activation_bytes`]: for each sample's `heads x seq x seq` scores, `tanh`'s output and
/// the weights in the compute dtype and the softmax's f32 output.
pub fn eager_attention_bytes(lm: &LmShape, micro_batch: u64, seq: u64, s: u64) -> u64 {
    if !lm.eager_attention {
        return 0;
    }
    micro_batch * lm.heads * seq * seq * (2 * s + 4)
}

impl PlanConfig {
    /// Whether the step runs on the CPU.
    fn is_cpu(&self) -> bool {
        self.device == PlanDevice::Cpu
    }

    /// Bytes of an element of the compute dtype: bf16 on CUDA, f32 on the CPU.
    fn dtype_bytes(&self) -> u64 {
        if self.is_cpu() { 4 } else { 2 }
    }

    /// Devices the optimizer state is split over.
    fn shards(&self) -> u64 {
        self.gpus.max(1)
    }

    /// Whether the language model trains (stage 2), whole or through adapters.
    fn trains_lm(&self) -> bool {
        self.stage >= 2
    }

    /// Whether the whole language model trains (stage 2 without LoRA).
    fn trains_whole_lm(&self) -> bool {
        self.trains_lm() && self.lora_rank.is_none()
    }

    /// Samples' tokens in a micro-batch.
    fn tokens(&self) -> u64 {
        self.micro_batch * self.seq
    }
}

/// The plan for `shape` under `c`.
pub fn plan(shape: &ModelShape, c: &PlanConfig) -> Plan {
    let (s, n) = (c.dtype_bytes(), c.shards());
    let params = param_counts(shape, c);
    // Trainable weights in the compute dtype (they get masters on CUDA) and in f32 (adapters).
    let trainable_narrow = params.trainable - params.lora;
    let weights = (params.vision + params.connector + params.lm) * s + params.lora * 4;
    let gradients = trainable_narrow * s + params.lora * 4;
    let master_weights = if c.is_cpu() {
        0
    } else {
        (trainable_narrow * 4).div_ceil(n)
    };
    let moments = (params.trainable * 8).div_ceil(n);
    let logits = logit_bytes(shape, c);
    let activations = decoder_activation_bytes(&shape.lm, c)
        + adapter_activation_bytes(&shape.lm, c, params.lora)
        + edge_activation_bytes(shape, c)
        + logits;
    let head_gradients = if c.trains_whole_lm() {
        shape.lm.head_params() * s
    } else {
        0
    };
    let optimizer_transient = optimizer_transient_bytes(c, &params, gradients);
    let context = if c.is_cpu() { 0 } else { CUDA_CONTEXT_BYTES };
    let state = weights + master_weights + moments + context;
    let backward = state + head_gradients + activations;
    let step = state + gradients + optimizer_transient;
    let total = backward.max(step);
    Plan {
        config: *c,
        params,
        weights,
        gradients,
        master_weights,
        moments,
        activations,
        logits,
        head_gradients,
        optimizer_transient,
        context,
        total,
        fits: total <= c.memory_bytes,
    }
}

/// The parameter counts of `shape`, and what of them trains under `c`.
fn param_counts(shape: &ModelShape, c: &PlanConfig) -> ParamCounts {
    let lm_params = shape.lm.params();
    let lora = match (c.trains_lm(), c.lora_rank) {
        (true, Some(r)) => shape.lm.lora_params(r),
        _ => 0,
    };
    let lm_trains = if c.trains_whole_lm() { lm_params } else { 0 };
    ParamCounts {
        vision: shape.vision_params,
        connector: shape.connector_params,
        lm: lm_params,
        lora,
        trainable: shape.connector_params + lm_trains + lora,
    }
}

/// What the decoder layers keep for the backward pass: every layer's activations, or with
/// activation checkpointing each layer's input and one layer's activations (the one being
/// recomputed).
fn decoder_activation_bytes(lm: &LmShape, c: &PlanConfig) -> u64 {
    let (tokens, s) = (c.tokens(), c.dtype_bytes());
    let one_layer = layer_activation_bytes(
        lm,
        tokens,
        s,
        c.trains_lm(),
        c.trains_whole_lm(),
        c.is_cpu(),
    ) + eager_attention_bytes(lm, c.micro_batch, c.seq, s);
    if c.activation_checkpointing {
        lm.layers * tokens * lm.hidden * s + one_layer
    } else {
        lm.layers * one_layer
    }
}

/// What `lora` adapter parameters add to the activations: each adapter's rank-`r` intermediate,
/// and with dropout the dropped inputs and their masks.
fn adapter_activation_bytes(lm: &LmShape, c: &PlanConfig, lora: u64) -> u64 {
    if lora == 0 {
        return 0;
    }
    let (tokens, s) = (c.tokens(), c.dtype_bytes());
    let intermediate = lm.layers * 7 * tokens * c.lora_rank.unwrap_or(0) * s;
    if !c.lora_dropout {
        return intermediate;
    }
    let kept_layers = if c.activation_checkpointing {
        1
    } else {
        lm.layers
    };
    // With dropout, `A` keeps the dropped input instead of the input itself, and dropout its
    // mask (f32 noise on the CPU, bool on CUDA): per layer seven dropped copies (q, k, v, o,
    // gate, up, down) in place of the four distinct inputs the plain count has.
    let q = lm.heads * lm.head_dim;
    let adapted = 6 * lm.hidden + q + lm.intermediate;
    let distinct = 2 * lm.hidden + q + lm.intermediate;
    let mask = if c.is_cpu() { 4 } else { 1 };
    intermediate + kept_layers * tokens * (adapted * (s + mask) - distinct * s)
}

/// The final norm's input; the connector's input and GELU's input and output.
fn edge_activation_bytes(shape: &ModelShape, c: &PlanConfig) -> u64 {
    let lm = &shape.lm;
    c.tokens() * lm.hidden * 4
        + c.micro_batch
            * shape.image_tokens
            * (shape.vision_features + 2 * lm.hidden)
            * c.dtype_bytes()
}

/// The loss's logits at the labelled positions: the f32 log-softmax output kept, then in the
/// backward pass its gradient, the logits' f32 gradient and (on CUDA) their bf16 cast.
fn logit_bytes(shape: &ModelShape, c: &PlanConfig) -> u64 {
    let text = c.seq.saturating_sub(shape.image_tokens + 1);
    let labelled = c.micro_batch * c.loss_tokens.unwrap_or(text).min(text);
    let cast = if c.is_cpu() { 0 } else { c.dtype_bytes() };
    labelled * shape.lm.vocab * (3 * 4 + cast)
}

/// Sharded: the reduce-scattered 1/N beside the whole gradients, and one bucket's flat copy;
/// unsharded: one group of gradients made f32 in the update.
fn optimizer_transient_bytes(c: &PlanConfig, params: &ParamCounts, gradients: u64) -> u64 {
    let n = c.shards();
    if n > 1 {
        let bucket = (crate::parallel::BUCKET_ELEMENTS as u64).min(params.trainable);
        return gradients.div_ceil(n) + bucket * c.dtype_bytes();
    }
    if c.is_cpu() {
        return 0;
    }
    let trainable_narrow = params.trainable - params.lora;
    trainable_narrow.min(crate::optim::GROUP_ELEMENTS as u64) * 4
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(name: &str) -> ModelShape {
        ModelShape::of(&preset(name).unwrap()).unwrap()
    }

    fn config(stage: u8) -> PlanConfig {
        PlanConfig {
            stage,
            micro_batch: 4,
            seq: 1024,
            loss_tokens: None,
            gpus: 1,
            lora_rank: None,
            lora_dropout: false,
            activation_checkpointing: false,
            device: PlanDevice::Cuda,
            memory_bytes: 80_000_000_000,
        }
    }

    fn within(value: u64, expected: f64, tolerance: f64) -> bool {
        (value as f64 / expected - 1.0).abs() <= tolerance
    }

    #[test]
    fn parameter_counts_match_the_published_models() {
        let gemma_2b = LmShape::of(&GemmaConfig::gemma_2b()).params();
        let gemma_7b = LmShape::of(&GemmaConfig::gemma_7b()).params();
        assert!(within(gemma_2b, 2.506e9, 0.01), "{gemma_2b}");
        assert!(within(gemma_7b, 8.538e9, 0.01), "{gemma_7b}");
        // Gemma 2 and 3 (language models; Gemma 3 4B and 12B without their SigLIP tower).
        for (config, published) in [
            (GemmaConfig::gemma2_2b(), 2_614_341_888.0),
            (GemmaConfig::gemma2_9b(), 9_241_705_984.0),
            (GemmaConfig::gemma3_1b(), 999_885_952.0),
            (GemmaConfig::gemma3_4b(), 3.883e9),
            (GemmaConfig::gemma3_12b(), 11.77e9),
        ] {
            let count = LmShape::of(&config).params();
            assert!(
                within(count, published, 0.01),
                "{:?}: {count}",
                config.model_type
            );
        }
        assert_eq!(
            LmShape::of(&GemmaConfig::gemma2_2b()).params(),
            2_614_341_888,
            "exactly google/gemma-2-2b's count"
        );
        let paper = shape("paper-2b-clip");
        // CLIP ViT-L/14-336 and DINOv2-L as the presets configure them.
        assert!(within(paper.vision_params, 303.5e6, 0.01), "{paper:?}");
        let dinov2 = shape("paper-2b-dinov2").vision_params;
        assert!(within(dinov2, 304.4e6, 0.01), "{dinov2}");
        // mlp2x_gelu: 1024 -> 2048 -> 2048 with biases.
        assert_eq!(
            paper.connector_params,
            1024 * 2048 + 2048 + 2048 * 2048 + 2048
        );
        assert_eq!(paper.image_tokens, 576);
        assert!(shape("paper-7b-dinov2").lm.layers == 28);
    }

    #[test]
    fn counts_match_a_built_model() {
        // The tiny preset is small enough to build: the formulas count what the code creates.
        let config = preset("tiny").unwrap();
        let model = llava_model::LlavaModel::new(&config, tch::Device::Cpu, tch::Kind::Float)
            .expect("the tiny model builds");
        let count = |vs: &tch::nn::VarStore| -> u64 {
            vs.variables().values().map(|t| t.numel() as u64).sum()
        };
        let shape = ModelShape::of(&config).unwrap();
        assert_eq!(shape.lm.params(), count(&model.lm_vs));
        assert_eq!(shape.vision_params, count(&model.vision_vs));
        assert_eq!(shape.connector_params, count(&model.connector_vs));
        // And Gemma 2 and 3 layers, with their extra norms.
        for dir in ["gemma2", "gemma3-text"] {
            let path = foundation::parity_fixtures().join(dir).join("model");
            let config = GemmaConfig::from_file(&path).unwrap();
            let (vs, _) =
                gemma_lm::Gemma::from_pretrained(&path, tch::Device::Cpu, tch::Kind::Float)
                    .unwrap();
            assert_eq!(LmShape::of(&config).params(), count(&vs), "{dir}");
        }
    }

    #[test]
    fn stage_1_trains_only_the_connector() {
        let shape = shape("paper-2b-clip");
        let p = plan(&shape, &config(1));
        assert_eq!(p.params.trainable, shape.connector_params);
        assert_eq!(p.gradients, shape.connector_params * 2);
        assert_eq!(p.master_weights, shape.connector_params * 4);
        assert_eq!(p.moments, shape.connector_params * 8);
        let all = shape.vision_params + shape.connector_params + shape.lm.params();
        assert_eq!(p.weights, all * 2);
    }

    #[test]
    fn sharding_divides_the_optimizer_state_not_the_weights_or_gradients() {
        let shape = shape("paper-7b-clip");
        let one = plan(&shape, &config(2));
        let eight = plan(
            &shape,
            &PlanConfig {
                gpus: 8,
                ..config(2)
            },
        );
        assert_eq!(eight.weights, one.weights);
        assert_eq!(eight.activations, one.activations);
        assert_eq!(eight.moments, one.moments.div_ceil(8));
        assert_eq!(eight.master_weights, one.master_weights.div_ceil(8));
        assert_eq!(eight.gradients, one.gradients);
        assert!(eight.optimizer_transient >= one.gradients / 8);
        assert!(eight.total < one.total);
    }

    #[test]
    fn lora_trains_adapters_and_the_connector() {
        let shape = shape("paper-2b-clip");
        let lm = shape.lm;
        // Per layer: q 2048x2048, k and v 2048x256, o 2048x2048, gate/up 2048x16384, down back.
        let per_layer = 128 * ((2048 + 2048) * 2 + (2048 + 256) * 2 + (2048 + 16384) * 3);
        assert_eq!(lm.lora_params(128), 18 * per_layer);
        let p = plan(
            &shape,
            &PlanConfig {
                lora_rank: Some(128),
                ..config(2)
            },
        );
        let lora = lm.lora_params(128);
        assert_eq!(p.params.trainable, lora + shape.connector_params);
        assert_eq!(p.gradients, lora * 4 + shape.connector_params * 2);
        assert_eq!(p.master_weights, shape.connector_params * 4);
        assert_eq!(p.moments, (lora + shape.connector_params) * 8);
        assert!(p.total < plan(&shape, &config(2)).total);
    }

    #[test]
    fn checkpointing_and_the_cpu_layout() {
        let shape = shape("paper-2b-clip");
        let full = plan(&shape, &config(2));
        let ckpt = plan(
            &shape,
            &PlanConfig {
                activation_checkpointing: true,
                ..config(2)
            },
        );
        assert!(ckpt.activations < full.activations / 2);
        assert_eq!(ckpt.logits, full.logits);
        let cpu = plan(
            &shape,
            &PlanConfig {
                device: PlanDevice::Cpu,
                ..config(2)
            },
        );
        assert_eq!(cpu.master_weights, 0);
        assert_eq!(cpu.context, 0);
        assert_eq!(cpu.weights, full.weights * 2);
        // Loss on every text token: 4 x (1024 - 577) positions of a 256128-token vocabulary.
        assert_eq!(full.logits, 4 * 447 * 256128 * 14);
    }
}
