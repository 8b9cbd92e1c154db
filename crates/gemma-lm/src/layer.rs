//! One decoder layer: attention and MLP, each behind its norm, each added to the residual.

use foundation::layers::Linear;
use tch::Tensor;

use crate::attention::{Attention, AttentionPlan};
use crate::cache::LayerCache;
use crate::config::{Activation, GemmaConfig};
use crate::mlp::Mlp;
use crate::norm::RmsNorm;

/// One pre-norm decoder layer.
#[derive(Debug)]
pub struct DecoderLayer {
    input_layernorm: RmsNorm,
    self_attn: Attention,
    post_attention_layernorm: RmsNorm,
    mlp: Mlp,
}

impl DecoderLayer {
    pub(crate) fn new(path: &tch::nn::Path, c: &GemmaConfig, activation: Activation) -> Self {
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
