//! Gemma's self-attention: the projections, grouped key/value heads, the rotary embedding, and
//! the attention itself under a plan ([`plan`]: positions and masks) or over sequences laid end to
//! end ([`varlen`]).

mod plan;
mod varlen;

pub use plan::{AttentionPlan, Packing, additive_mask};

use foundation::layers::Linear;
use tch::Tensor;

use crate::cache::LayerCache;
use crate::config::GemmaConfig;
use crate::rotary::rotate_queries_keys;

/// Multi-head attention with grouped (or multi-query) key/value heads and rotary positions.
#[derive(Debug)]
pub struct Attention {
    pub(crate) q_proj: Linear,
    pub(crate) k_proj: Linear,
    pub(crate) v_proj: Linear,
    pub(crate) o_proj: Linear,
    heads: i64,
    kv_heads: i64,
    head_dim: i64,
}

impl Attention {
    pub(crate) fn new(path: &tch::nn::Path, c: &GemmaConfig) -> Self {
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

    pub(crate) fn forward(
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
pub(crate) fn repeat_kv(x: &Tensor, groups: i64) -> Tensor {
    if groups == 1 {
        return x.shallow_clone();
    }
    let s = x.size();
    x.unsqueeze(2)
        .expand([s[0], s[1], groups, s[2], s[3]], false)
        .reshape([s[0], s[1] * groups, s[2], s[3]])
}
