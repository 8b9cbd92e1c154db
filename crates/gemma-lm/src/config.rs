//! `GemmaConfig`: the Hugging Face `config.json` of a Gemma checkpoint, field for field.

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

/// Rotary-embedding parameters in the transformers 5 layout (`rope_parameters`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RopeParameters {
    /// The base of the rotary frequencies.
    pub rope_theta: f64,
    /// `default` is the only kind Gemma uses.
    #[serde(default = "default_rope_type")]
    pub rope_type: String,
}

fn default_rope_type() -> String {
    "default".into()
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
    /// Rotary parameters (transformers 5 layout).
    pub rope_parameters: Option<RopeParameters>,
    /// Rotary scaling (transformers 4 layout); must be absent for Gemma.
    pub rope_scaling: Option<serde_json::Value>,
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

    /// Parses a `config.json` text and checks it.
    pub fn from_json(text: &str) -> Result<Self> {
        let config: GemmaConfig = serde_json::from_str(text).map_err(|e| Error::Config {
            path: "<json>".into(),
            message: e.to_string(),
        })?;
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
        if let Some(p) = &self.rope_parameters
            && p.rope_type != "default"
        {
            return fail(format!(
                "rope_type `{}` is not supported (Gemma uses `default`)",
                p.rope_type
            ));
        }
        if self.rope_scaling.as_ref().is_some_and(|v| !v.is_null()) {
            return fail("`rope_scaling` is not supported for Gemma".into());
        }
        self.activation().map(|_| ())
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

    /// The rotary base: `rope_parameters.rope_theta`, else `rope_theta`, else 10000.
    pub fn rope_theta(&self) -> f64 {
        self.rope_parameters
            .as_ref()
            .map(|p| p.rope_theta)
            .or(self.rope_theta)
            .unwrap_or(10000.0)
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
