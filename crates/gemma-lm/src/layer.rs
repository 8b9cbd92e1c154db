//! One decoder layer: attention and MLP, each behind its norm, each added to the residual.

use foundation::layers::Linear;
use tch::Tensor;

use crate::attention::{Attention, AttentionPlan};
use crate::cache::LayerCache;
use crate::config::{Activation, GemmaConfig, LayerType};
use crate::mlp::Mlp;
use crate::norm::RmsNorm;

/// Where a layer's norms sit. The names are transformers' weight names, which mean different
/// things per generation: Gemma 1's `post_attention_layernorm` normalises the MLP's *input*,
/// Gemma 2/3's normalises the attention's *output*.
#[derive(Debug)]
enum Norms {
    /// Gemma 1: a norm before attention and one before the MLP.
    Pre {
        input_layernorm: RmsNorm,
        /// Before the MLP.
        post_attention_layernorm: RmsNorm,
    },
    /// Gemma 2/3: a norm before and after attention, and before and after the MLP.
    Sandwich {
        input_layernorm: RmsNorm,
        /// After attention, before the residual sum.
        post_attention_layernorm: RmsNorm,
        pre_feedforward_layernorm: RmsNorm,
        post_feedforward_layernorm: RmsNorm,
    },
}

/// One decoder layer.
#[derive(Debug)]
pub struct DecoderLayer {
    norms: Norms,
    self_attn: Attention,
    mlp: Mlp,
    /// Full or sliding-window attention.
    pub(crate) layer_type: LayerType,
}

impl DecoderLayer {
    pub(crate) fn new(
        path: &tch::nn::Path,
        c: &GemmaConfig,
        activation: Activation,
        layer_type: LayerType,
    ) -> Self {
        let norm = |name: &str| RmsNorm::new(&path.sub(name), c.hidden_size, c.rms_norm_eps);
        let norms = if c.sandwich_norms() {
            Norms::Sandwich {
                input_layernorm: norm("input_layernorm"),
                post_attention_layernorm: norm("post_attention_layernorm"),
                pre_feedforward_layernorm: norm("pre_feedforward_layernorm"),
                post_feedforward_layernorm: norm("post_feedforward_layernorm"),
            }
        } else {
            Norms::Pre {
                input_layernorm: norm("input_layernorm"),
                post_attention_layernorm: norm("post_attention_layernorm"),
            }
        };
        DecoderLayer {
            norms,
            self_attn: Attention::new(&path.sub("self_attn"), c),
            mlp: Mlp::new(&path.sub("mlp"), c, activation),
            layer_type,
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
        match &self.norms {
            Norms::Pre {
                input_layernorm,
                post_attention_layernorm,
            } => {
                let h =
                    x + self
                        .self_attn
                        .forward(&input_layernorm.forward(x), cos_sin, plan, cache);
                &h + self.mlp.forward(&post_attention_layernorm.forward(&h))
            }
            Norms::Sandwich {
                input_layernorm,
                post_attention_layernorm,
                pre_feedforward_layernorm,
                post_feedforward_layernorm,
            } => {
                let attended =
                    self.self_attn
                        .forward(&input_layernorm.forward(x), cos_sin, plan, cache);
                let h = x + post_attention_layernorm.forward(&attended);
                let fed = self.mlp.forward(&pre_feedforward_layernorm.forward(&h));
                &h + post_feedforward_layernorm.forward(&fed)
            }
        }
    }
}
