//! `GemmaConfig`: the Hugging Face `config.json` of a Gemma, Gemma 2 or Gemma 3 checkpoint, field
//! for field, and what each generation makes of it ([`Generation`], [`LayerType`], [`Rope`]).

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// One id or several, as `eos_token_id` may be in `config.json` and `generation_config.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TokenIds {
    /// A single id.
    One(i64),
    /// A list of ids.
    Many(Vec<i64>),
}

impl TokenIds {
    /// The ids as a list.
    pub fn to_vec(&self) -> Vec<i64> {
        match self {
            TokenIds::One(id) => vec![*id],
            TokenIds::Many(ids) => ids.clone(),
        }
    }
}

/// Rotary-embedding parameters in the transformers 5 layout (`rope_parameters`), or a legacy
/// `rope_scaling` object (which names its kind `type` in older files).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RopeParameters {
    /// The base of the rotary frequencies (absent in a legacy `rope_scaling`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_theta: Option<f64>,
    /// `default`, or `linear` (positions divided by `factor`, Gemma 3's global layers).
    #[serde(default = "default_rope_type", alias = "type")]
    pub rope_type: String,
    /// The divisor of `linear` scaling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub factor: Option<f64>,
}

fn default_rope_type() -> String {
    "default".into()
}

/// `rope_parameters` as transformers 5 writes it: one set for every layer (Gemma, Gemma 2), or
/// one per layer type (Gemma 3: `full_attention`, `sliding_attention`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RopeSpec {
    /// A rotary embedding per layer type. (Tried first: a map of layer types would also read as
    /// one set of parameters with every field defaulted.)
    ByLayerType(BTreeMap<String, RopeParameters>),
    /// The same rotary embedding in every layer.
    One(RopeParameters),
}

/// The most decoder layers a config may ask for (Gemma 3 27B has 62).
const MAX_LAYERS: i64 = 4096;

/// The Gemma generations `gemma-lm` builds, from `model_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Generation {
    /// `gemma` (2024): pre-norm layers, full attention.
    Gemma1,
    /// `gemma2`: four norms per layer, attention scaled by `query_pre_attn_scalar`, soft-capped
    /// attention and final logits, sliding-window layers.
    Gemma2,
    /// `gemma3_text`: Gemma 2's layers with q/k norms and no attention cap, a rotary embedding per
    /// layer type, five sliding layers to one global by default.
    Gemma3,
}

/// Which keys a layer's queries see.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LayerType {
    /// Every earlier key (`full_attention`).
    FullAttention,
    /// The `sliding_window` keys up to and including the query's own slot (`sliding_attention`).
    SlidingAttention,
}

/// A rotary embedding as a layer uses it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rope {
    /// The base of the frequencies.
    pub theta: f64,
    /// Linear scaling: the frequencies divided by this (1 for none).
    pub linear_factor: f64,
}

/// A value that may be absent (the generation's default applies), `null` (none) or given.
fn nullable<'de, D, T>(d: D) -> std::result::Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// The configuration of a Gemma model, as `transformers.GemmaConfig` reads `config.json`.
///
/// Both the transformers 4 layout (`rope_theta`, `hidden_act`) and the transformers 5 layout
/// (`rope_parameters`, `hidden_activation`) are accepted. Defaults are those of `GemmaConfig`
/// (the 7B model). Unknown fields are ignored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct GemmaConfig {
    /// Size of the vocabulary.
    pub vocab_size: i64,
    /// Width of the residual stream.
    pub hidden_size: i64,
    /// Width of the MLP.
    pub intermediate_size: i64,
    /// Number of decoder layers.
    pub num_hidden_layers: i64,
    /// Number of query heads.
    pub num_attention_heads: i64,
    /// Number of key/value heads (1 = multi-query attention, as in Gemma-2B).
    pub num_key_value_heads: i64,
    /// Width of one head (256 in both Gemma sizes; not `hidden_size / num_attention_heads` in 7B).
    pub head_dim: i64,
    /// The activation the original checkpoints named; transformers ignores it for Gemma.
    pub hidden_act: Option<String>,
    /// The MLP activation; `gelu_pytorch_tanh` when absent, as transformers decides.
    pub hidden_activation: Option<String>,
    /// Longest sequence the model was trained for.
    pub max_position_embeddings: i64,
    /// Standard deviation of the random initialisation.
    pub initializer_range: f64,
    /// Epsilon of the RMS norms.
    pub rms_norm_eps: f64,
    /// Whether generation keeps a KV cache.
    pub use_cache: bool,
    /// Padding token.
    pub pad_token_id: Option<i64>,
    /// End-of-sequence token(s).
    pub eos_token_id: Option<TokenIds>,
    /// Beginning-of-sequence token.
    pub bos_token_id: Option<i64>,
    /// Whether the output projection shares the embedding matrix.
    pub tie_word_embeddings: bool,
    /// Rotary base (transformers 4 layout).
    pub rope_theta: Option<f64>,
    /// Rotary parameters (transformers 5 layout): one set, or one per layer type (Gemma 3).
    pub rope_parameters: Option<RopeSpec>,
    /// Rotary scaling (transformers 4 layout): `linear` on Gemma 3's global layers.
    pub rope_scaling: Option<RopeParameters>,
    /// Gemma 3's rotary base on sliding layers (transformers 4 layout; default 10000).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rope_local_base_freq: Option<f64>,
    /// Gemma 2/3: attention scores are scaled by `query_pre_attn_scalar^-0.5` (default 256);
    /// Gemma 1 scales by `head_dim^-0.5`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub query_pre_attn_scalar: Option<i64>,
    /// Gemma 2/3: the window of sliding layers, in cache slots (default 4096; `null` for none).
    #[serde(deserialize_with = "nullable", skip_serializing_if = "Option::is_none")]
    pub sliding_window: Option<Option<i64>>,
    /// Each layer's attention; when absent, the generation's pattern decides.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub layer_types: Option<Vec<LayerType>>,
    /// Gemma 3 (transformers 4 layout): every `n`-th layer is global (default 6).
    #[serde(
        alias = "_sliding_window_pattern",
        skip_serializing_if = "Option::is_none"
    )]
    pub sliding_window_pattern: Option<i64>,
    /// Gemma 2: attention scores become `c * tanh(s / c)` before the mask (default 50). Gemma 3
    /// stores it and, as transformers does, never applies it.
    #[serde(deserialize_with = "nullable", skip_serializing_if = "Option::is_none")]
    pub attn_logit_softcapping: Option<Option<f64>>,
    /// The causal LM's logits become `c * tanh(logits / c)` (Gemma 2 default 30; Gemma 3 none).
    /// Composite vision-language heads never apply it.
    #[serde(deserialize_with = "nullable", skip_serializing_if = "Option::is_none")]
    pub final_logit_softcapping: Option<Option<f64>>,
    /// Bidirectional attention (embedding models); must be false or absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub use_bidirectional_attention: Option<bool>,
    /// Whether q/k/v/o projections have biases.
    pub attention_bias: bool,
    /// Attention dropout probability (training only).
    pub attention_dropout: f64,
    /// The architectures the checkpoint was saved from.
    pub architectures: Option<Vec<String>>,
    /// `gemma`.
    pub model_type: Option<String>,
    /// The dtype the checkpoint was saved in (transformers 4 name).
    pub torch_dtype: Option<String>,
    /// The dtype the checkpoint was saved in (transformers 5 name).
    pub dtype: Option<String>,
}

impl Default for GemmaConfig {
    fn default() -> Self {
        GemmaConfig {
            vocab_size: 256000,
            hidden_size: 3072,
            intermediate_size: 24576,
            num_hidden_layers: 28,
            num_attention_heads: 16,
            num_key_value_heads: 16,
            head_dim: 256,
            hidden_act: Some("gelu_pytorch_tanh".into()),
            hidden_activation: None,
            max_position_embeddings: 8192,
            initializer_range: 0.02,
            rms_norm_eps: 1e-6,
            use_cache: true,
            pad_token_id: Some(0),
            eos_token_id: Some(TokenIds::One(1)),
            bos_token_id: Some(2),
            tie_word_embeddings: true,
            rope_theta: None,
            rope_parameters: None,
            rope_scaling: None,
            rope_local_base_freq: None,
            query_pre_attn_scalar: None,
            sliding_window: None,
            layer_types: None,
            sliding_window_pattern: None,
            attn_logit_softcapping: None,
            final_logit_softcapping: None,
            use_bidirectional_attention: None,
            attention_bias: false,
            attention_dropout: 0.0,
            architectures: Some(vec!["GemmaForCausalLM".into()]),
            model_type: Some("gemma".into()),
            torch_dtype: None,
            dtype: None,
        }
    }
}

/// The MLP activations Gemma checkpoints use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// GELU with the tanh approximation (`gelu_pytorch_tanh`, also `gelu_new`, `gelu_fast`).
    GeluTanh,
    /// Exact GELU (`gelu`).
    Gelu,
}

impl GemmaConfig {
    /// `google/gemma-2b`: multi-query attention (1 KV head), 18 layers.
    pub fn gemma_2b() -> Self {
        GemmaConfig {
            hidden_size: 2048,
            intermediate_size: 16384,
            num_hidden_layers: 18,
            num_attention_heads: 8,
            num_key_value_heads: 1,
            hidden_act: Some("gelu".into()),
            rope_theta: Some(10000.0),
            ..GemmaConfig::default()
        }
    }

    /// `google/gemma-7b`: 16 heads of width 256 (not hidden/heads), 28 layers.
    pub fn gemma_7b() -> Self {
        GemmaConfig {
            hidden_act: Some("gelu".into()),
            rope_theta: Some(10000.0),
            ..GemmaConfig::default()
        }
    }

    /// `google/gemma-2-2b`: 26 layers alternating sliding (window 4096) and global, four norms
    /// per layer, soft-caps 50 (attention) and 30 (final logits).
    pub fn gemma2_2b() -> Self {
        GemmaConfig {
            hidden_size: 2304,
            intermediate_size: 9216,
            num_hidden_layers: 26,
            num_attention_heads: 8,
            num_key_value_heads: 4,
            hidden_act: None,
            hidden_activation: Some("gelu_pytorch_tanh".into()),
            rope_theta: Some(10000.0),
            query_pre_attn_scalar: Some(256),
            sliding_window: Some(Some(4096)),
            attn_logit_softcapping: Some(Some(50.0)),
            final_logit_softcapping: Some(Some(30.0)),
            architectures: Some(vec!["Gemma2ForCausalLM".into()]),
            model_type: Some("gemma2".into()),
            ..GemmaConfig::default()
        }
    }

    /// `google/gemma-2-9b`: 42 layers, 16 query and 8 key/value heads.
    pub fn gemma2_9b() -> Self {
        GemmaConfig {
            hidden_size: 3584,
            intermediate_size: 14336,
            num_hidden_layers: 42,
            num_attention_heads: 16,
            num_key_value_heads: 8,
            ..GemmaConfig::gemma2_2b()
        }
    }

    /// `google/gemma-3-1b-pt`: 26 layers, five sliding (window 512) to one global, q/k norms,
    /// rotary bases 10000 (sliding) and 1e6 (global), a vocabulary of 262144.
    pub fn gemma3_1b() -> Self {
        GemmaConfig {
            vocab_size: 262144,
            hidden_size: 1152,
            intermediate_size: 6912,
            num_hidden_layers: 26,
            num_attention_heads: 4,
            num_key_value_heads: 1,
            hidden_act: None,
            hidden_activation: Some("gelu_pytorch_tanh".into()),
            max_position_embeddings: 32768,
            rope_theta: Some(1e6),
            rope_local_base_freq: Some(1e4),
            query_pre_attn_scalar: Some(256),
            sliding_window: Some(Some(512)),
            sliding_window_pattern: Some(6),
            attn_logit_softcapping: Some(None),
            final_logit_softcapping: Some(None),
            architectures: Some(vec!["Gemma3ForCausalLM".into()]),
            model_type: Some("gemma3_text".into()),
            ..GemmaConfig::default()
        }
    }

    /// The language model of `google/gemma-3-4b-pt`: 34 layers, window 1024, the global layers'
    /// rotary embedding scaled linearly by 8.
    pub fn gemma3_4b() -> Self {
        GemmaConfig {
            vocab_size: 262208,
            hidden_size: 2560,
            intermediate_size: 10240,
            num_hidden_layers: 34,
            num_attention_heads: 8,
            num_key_value_heads: 4,
            max_position_embeddings: 131072,
            sliding_window: Some(Some(1024)),
            rope_scaling: Some(RopeParameters {
                rope_theta: None,
                rope_type: "linear".into(),
                factor: Some(8.0),
            }),
            ..GemmaConfig::gemma3_1b()
        }
    }

    /// The language model of `google/gemma-3-12b-pt`: 48 layers, 16 query and 8 key/value heads.
    pub fn gemma3_12b() -> Self {
        GemmaConfig {
            hidden_size: 3840,
            intermediate_size: 15360,
            num_hidden_layers: 48,
            num_attention_heads: 16,
            num_key_value_heads: 8,
            ..GemmaConfig::gemma3_4b()
        }
    }

    /// A small Gemma-shaped model for tests, benchmarks and the CPU demo: 2 layers, hidden 64,
    /// 4 query heads and 1 KV head of width 32 (head_dim != hidden/heads, as in 7B).
    pub fn tiny(vocab_size: i64) -> Self {
        GemmaConfig {
            vocab_size,
            hidden_size: 64,
            intermediate_size: 160,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            num_key_value_heads: 1,
            head_dim: 32,
            max_position_embeddings: 2048,
            rope_theta: Some(10000.0),
            hidden_activation: Some("gelu_pytorch_tanh".into()),
            ..GemmaConfig::default()
        }
    }

    /// Reads `config.json` (or a model directory holding one) and checks it.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let mut path = path.as_ref().to_path_buf();
        if path.is_dir() {
            path = path.join("config.json");
        }
        let text = std::fs::read_to_string(&path).map_err(|source| Error::Io {
            path: path.clone(),
            source,
        })?;
        Self::from_json(&text).map_err(|e| match e {
            Error::Config { message, .. } => Error::Config { path, message },
            other => other,
        })
    }

    /// Parses a `config.json` text and checks it. A vision-language model's file (`gemma3`,
    /// `paligemma`, `llava`) gives its `text_config`.
    pub fn from_json(text: &str) -> Result<Self> {
        let bad = |message: String| Error::Config {
            path: "<json>".into(),
            message,
        };
        let mut value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
        let outer = value.get("model_type").and_then(|t| t.as_str());
        if matches!(outer, Some("gemma3" | "paligemma" | "llava" | "llava_next")) {
            let outer = outer.unwrap_or_default().to_string();
            value = value
                .get_mut("text_config")
                .map(serde_json::Value::take)
                .ok_or_else(|| bad(format!("a `{outer}` config without a `text_config`")))?;
        }
        let config: GemmaConfig = serde_json::from_value(value).map_err(|e| bad(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks that the model can be built: positive sizes, heads that divide evenly, a known
    /// activation and rotary type.
    pub fn validate(&self) -> Result<()> {
        let fail = |message: String| {
            Err(Error::Config {
                path: "<config>".into(),
                message,
            })
        };
        for (name, value) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("head_dim", self.head_dim),
        ] {
            if value <= 0 {
                return fail(format!("`{name}` must be positive, got {value}"));
            }
        }
        if self.num_attention_heads % self.num_key_value_heads != 0 {
            return fail(format!(
                "`num_attention_heads` ({}) is not a multiple of `num_key_value_heads` ({})",
                self.num_attention_heads, self.num_key_value_heads
            ));
        }
        if self.head_dim % 2 != 0 {
            return fail(format!(
                "`head_dim` must be even for rotary embeddings, got {}",
                self.head_dim
            ));
        }
        // Per-layer lists are built from the layer count: bound it before anything allocates.
        if self.num_hidden_layers > MAX_LAYERS {
            return fail(format!(
                "`num_hidden_layers` is {}, more than the {MAX_LAYERS} any model has",
                self.num_hidden_layers
            ));
        }
        let generation = self.generation()?;
        if self.use_bidirectional_attention == Some(true) {
            return fail(
                "`use_bidirectional_attention: true` (an embedding model's attention) is not \
                 supported"
                    .into(),
            );
        }
        let types = self.layer_types()?;
        if types.contains(&LayerType::SlidingAttention) {
            match self.window() {
                Some(w) if w > 0 => {}
                other => {
                    return fail(format!(
                        "sliding layers need a positive `sliding_window`, got {other:?}"
                    ));
                }
            }
        }
        if generation == Generation::Gemma1 {
            for key in [
                (
                    "query_pre_attn_scalar",
                    self.query_pre_attn_scalar.is_some(),
                ),
                ("attn_logit_softcapping", self.attn_softcap().is_some()),
                ("final_logit_softcapping", self.final_softcap().is_some()),
                ("layer_types", types.contains(&LayerType::SlidingAttention)),
            ] {
                if key.1 {
                    return fail(format!(
                        "`{}` is set, but `model_type` says Gemma 1, which has none: is this a \
                         Gemma 2 or 3 config with the wrong `model_type`?",
                        key.0
                    ));
                }
            }
        }
        for layer in [LayerType::FullAttention, LayerType::SlidingAttention] {
            self.rope(layer)?;
        }
        self.activation().map(|_| ())
    }

    /// The generation `model_type` names: absent or `gemma`, `gemma2`, `gemma3_text`. Any other
    /// is an error that names it (a checkpoint must not load as a model it is not).
    pub fn generation(&self) -> Result<Generation> {
        match self.model_type.as_deref() {
            None | Some("gemma") => Ok(Generation::Gemma1),
            Some("gemma2") => Ok(Generation::Gemma2),
            Some("gemma3_text") => Ok(Generation::Gemma3),
            Some(other) => Err(Error::Config {
                path: "<config>".into(),
                message: format!(
                    "`model_type` `{other}` is not a Gemma language model (gemma, gemma2, \
                     gemma3_text)"
                ),
            }),
        }
    }

    /// Each layer's attention: `layer_types` when given, else the generation's pattern (Gemma 2:
    /// even layers slide; Gemma 3: every `sliding_window_pattern`-th layer, default 6, is global;
    /// Gemma 1: all full).
    pub fn layer_types(&self) -> Result<Vec<LayerType>> {
        let n = self.num_hidden_layers.max(0) as usize;
        if let Some(types) = &self.layer_types {
            if types.len() != n {
                return Err(Error::Config {
                    path: "<config>".into(),
                    message: format!(
                        "`layer_types` names {} layers, `num_hidden_layers` is {n}",
                        types.len()
                    ),
                });
            }
            return Ok(types.clone());
        }
        let every = match self.generation()? {
            Generation::Gemma1 => return Ok(vec![LayerType::FullAttention; n]),
            Generation::Gemma2 => 2,
            Generation::Gemma3 => self.sliding_window_pattern.unwrap_or(6).max(1) as usize,
        };
        Ok((0..n)
            .map(|i| match (i + 1) % every {
                0 => LayerType::FullAttention,
                _ => LayerType::SlidingAttention,
            })
            .collect())
    }

    /// The window of sliding layers, in cache slots.
    pub fn window(&self) -> Option<i64> {
        match self.sliding_window {
            Some(given) => given,
            None if self.generation().ok() != Some(Generation::Gemma1) => Some(4096),
            None => None,
        }
    }

    /// The scale of attention scores: `query_pre_attn_scalar^-0.5` (Gemma 2/3, default 256), or
    /// `head_dim^-0.5` (Gemma 1).
    pub fn attention_scale(&self) -> f64 {
        let scalar = match self.generation() {
            Ok(Generation::Gemma1) | Err(_) => self.query_pre_attn_scalar,
            Ok(_) => self.query_pre_attn_scalar.or(Some(256)),
        };
        (scalar.unwrap_or(self.head_dim) as f64).powf(-0.5)
    }

    /// The attention soft-cap that is applied: Gemma 2's (default 50). Gemma 3 never applies
    /// one, whatever its config stores, as transformers does not.
    pub fn attn_softcap(&self) -> Option<f64> {
        match (self.generation(), self.attn_logit_softcapping) {
            (Ok(Generation::Gemma3), _) => None,
            (_, Some(given)) => given,
            (Ok(Generation::Gemma2), None) => Some(50.0),
            _ => None,
        }
    }

    /// The causal LM's final soft-cap (Gemma 2 default 30).
    pub fn final_softcap(&self) -> Option<f64> {
        match (self.generation(), self.final_logit_softcapping) {
            (_, Some(given)) => given,
            (Ok(Generation::Gemma2), None) => Some(30.0),
            _ => None,
        }
    }

    /// Whether a layer has norms on its queries and keys (Gemma 3).
    pub fn qk_norm(&self) -> bool {
        self.generation().ok() == Some(Generation::Gemma3)
    }

    /// Whether a layer has four norms (Gemma 2/3: around attention and around the MLP) rather
    /// than two (Gemma 1: before each).
    pub fn sandwich_norms(&self) -> bool {
        self.generation().ok() != Some(Generation::Gemma1)
    }

    /// The rotary embedding of `layer`'s type: `rope_parameters` (one set, or the type's), else the
    /// legacy keys (`rope_theta` with `rope_scaling` for Gemma 3's global layers,
    /// `rope_local_base_freq` for its sliding ones). Kinds other than `default` and `linear` are
    /// errors that name them.
    pub fn rope(&self, layer: LayerType) -> Result<Rope> {
        let gemma3 = self.generation()? == Generation::Gemma3;
        let key = match layer {
            LayerType::FullAttention => "full_attention",
            LayerType::SlidingAttention => "sliding_attention",
        };
        let (params, default_theta) = match (&self.rope_parameters, gemma3, layer) {
            (Some(RopeSpec::ByLayerType(map)), _, _) => {
                let params = map.get(key).ok_or_else(|| Error::Config {
                    path: "<config>".into(),
                    message: format!("`rope_parameters` has no `{key}` entry"),
                })?;
                (Some(params.clone()), 10000.0)
            }
            (_, true, LayerType::SlidingAttention) => {
                let theta = self.rope_local_base_freq.unwrap_or(10000.0);
                return Ok(Rope {
                    theta,
                    linear_factor: 1.0,
                });
            }
            (Some(RopeSpec::One(p)), _, _) => (Some(p.clone()), 10000.0),
            (None, _, _) => (
                self.rope_scaling.clone(),
                if gemma3 { 1e6 } else { 10000.0 },
            ),
        };
        let theta = params
            .as_ref()
            .and_then(|p| p.rope_theta)
            .or(self.rope_theta)
            .unwrap_or(default_theta);
        let linear_factor = match params {
            None => 1.0,
            Some(p) => match (p.rope_type.as_str(), p.factor) {
                ("default", _) => 1.0,
                ("linear", Some(f)) if f > 0.0 => f,
                (kind, factor) => {
                    return Err(Error::Config {
                        path: "<config>".into(),
                        message: format!(
                            "rotary embedding `{kind}` (factor {factor:?}) for `{key}` layers is \
                             not supported (default, or linear with a positive factor)"
                        ),
                    });
                }
            },
        };
        Ok(Rope {
            theta,
            linear_factor,
        })
    }

    /// The MLP activation. Like transformers, `hidden_activation` decides and defaults to the tanh
    /// approximation; `hidden_act` (which says `gelu` in the original checkpoints) is ignored.
    pub fn activation(&self) -> Result<Activation> {
        match self.hidden_activation.as_deref() {
            None | Some("gelu_pytorch_tanh" | "gelu_new" | "gelu_fast") => Ok(Activation::GeluTanh),
            Some("gelu") => Ok(Activation::Gelu),
            Some(other) => Err(Error::Config {
                path: "<config>".into(),
                message: format!("unsupported `hidden_activation` `{other}`"),
            }),
        }
    }

    /// The rotary base of full-attention layers.
    pub fn rope_theta(&self) -> f64 {
        self.rope(LayerType::FullAttention)
            .map_or(10000.0, |rope| rope.theta)
    }

    /// The end-of-sequence ids (empty when the config names none).
    pub fn eos_token_ids(&self) -> Vec<i64> {
        self.eos_token_id
            .as_ref()
            .map(TokenIds::to_vec)
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transformers_4_layout_of_gemma_2b() {
        // The config.json that google/gemma-2b ships.
        let text = r#"{
          "architectures": ["GemmaForCausalLM"], "attention_bias": false, "attention_dropout": 0.0,
          "bos_token_id": 2, "eos_token_id": 1, "head_dim": 256, "hidden_act": "gelu",
          "hidden_size": 2048, "initializer_range": 0.02, "intermediate_size": 16384,
          "max_position_embeddings": 8192, "model_type": "gemma", "num_attention_heads": 8,
          "num_hidden_layers": 18, "num_key_value_heads": 1, "pad_token_id": 0,
          "rms_norm_eps": 1e-06, "rope_scaling": null, "rope_theta": 10000.0,
          "torch_dtype": "bfloat16", "transformers_version": "4.38.0.dev0", "use_cache": true,
          "vocab_size": 256000}"#;
        let config = GemmaConfig::from_json(text).unwrap();
        assert_eq!(
            config,
            GemmaConfig {
                torch_dtype: Some("bfloat16".into()),
                ..GemmaConfig::gemma_2b()
            }
        );
        assert_eq!(config.activation().unwrap(), Activation::GeluTanh);
        assert_eq!(config.rope_theta(), 10000.0);
    }

    #[test]
    fn transformers_5_layout() {
        let text = r#"{"head_dim": 32, "hidden_activation": "gelu_pytorch_tanh", "hidden_size": 64,
          "rope_parameters": {"rope_theta": 500.0, "rope_type": "default"}, "eos_token_id": [1, 107],
          "use_bidirectional_attention": null}"#;
        let config = GemmaConfig::from_json(text).unwrap();
        assert_eq!(config.rope_theta(), 500.0);
        assert_eq!(config.eos_token_ids(), [1, 107]);
        assert_eq!(config.num_hidden_layers, 28, "defaults are GemmaConfig's");
    }

    #[test]
    fn bad_configs_say_why() {
        let err = GemmaConfig::from_json(r#"{"num_attention_heads": 6, "num_key_value_heads": 4}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("num_key_value_heads"), "{err}");
        let err = GemmaConfig::from_json(r#"{"hidden_activation": "swish"}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("swish"), "{err}");
        let err = GemmaConfig::from_json(r#"{"hidden_size": "big"}"#)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("hidden_size") || err.contains("invalid type"),
            "{err}"
        );
    }

    #[test]
    fn named_sizes_match_the_paper() {
        let c = GemmaConfig::gemma_2b();
        assert_eq!(
            (c.hidden_size, c.num_hidden_layers, c.num_key_value_heads),
            (2048, 18, 1)
        );
        let c = GemmaConfig::gemma_7b();
        assert_eq!(
            (c.hidden_size, c.num_attention_heads, c.head_dim),
            (3072, 16, 256)
        );
    }
}
