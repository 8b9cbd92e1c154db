//! Gemma's self-attention: the projections, grouped key/value heads, the rotary embedding, and
//! the attention itself under a plan ([`plan`]: positions and masks) or over sequences laid end to
//! end ([`varlen`]).

mod plan;
mod varlen;

pub use plan::{AttentionPlan, AttentionRecord, Blocks, Packing, additive_mask};

use foundation::layers::Linear;
use tch::{Kind, Tensor};

use crate::cache::LayerCache;
use crate::config::GemmaConfig;
use crate::norm::RmsNorm;
use crate::rotary::rotate_queries_keys;

/// Multi-head attention with grouped (or multi-query) key/value heads and rotary positions; Gemma
/// 2's soft-capped scores and Gemma 3's query and key norms where the config has them.
#[derive(Debug)]
pub struct Attention {
    pub(crate) q_proj: Linear,
    pub(crate) k_proj: Linear,
    pub(crate) v_proj: Linear,
    pub(crate) o_proj: Linear,
    /// Gemma 3: an RMS norm over each query head and each key head, before the rotary embedding.
    qk_norms: Option<(RmsNorm, RmsNorm)>,
    heads: i64,
    kv_heads: i64,
    head_dim: i64,
    /// What scores are multiplied by, when not `head_dim^-0.5` (Gemma 2/3:
    /// `query_pre_attn_scalar^-0.5`).
    scale: Option<f64>,
    /// Gemma 2: scores become `c * tanh(s / c)` before the mask.
    softcap: Option<f64>,
}

impl Attention {
    pub(crate) fn new(path: &tch::nn::Path, c: &GemmaConfig) -> Self {
        let (h, d, std) = (c.hidden_size, c.head_dim, c.initializer_range);
        let bias = c.attention_bias;
        let qk_norms = c.qk_norm().then(|| {
            (
                RmsNorm::new(&path.sub("q_norm"), d, c.rms_norm_eps),
                RmsNorm::new(&path.sub("k_norm"), d, c.rms_norm_eps),
            )
        });
        Attention {
            q_proj: Linear::new(&path.sub("q_proj"), h, c.num_attention_heads * d, bias, std),
            k_proj: Linear::new(&path.sub("k_proj"), h, c.num_key_value_heads * d, bias, std),
            v_proj: Linear::new(&path.sub("v_proj"), h, c.num_key_value_heads * d, bias, std),
            o_proj: Linear::new(&path.sub("o_proj"), c.num_attention_heads * d, h, bias, std),
            qk_norms,
            heads: c.num_attention_heads,
            kv_heads: c.num_key_value_heads,
            head_dim: d,
            scale: c.sandwich_norms().then(|| c.attention_scale()),
            softcap: c.attn_softcap(),
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
        let mut q = split(self.q_proj.forward(x), self.heads);
        let mut k = split(self.k_proj.forward(x), self.kv_heads);
        let v = split(self.v_proj.forward(x), self.kv_heads).transpose(1, 2);
        if let Some((q_norm, k_norm)) = &self.qk_norms {
            (q, k) = (q_norm.forward(&q), k_norm.forward(&k));
        }
        let (q, k) = rotate_queries_keys(q, k, cos_sin);
        if let Some(varlen) = &plan.varlen {
            // [b, n, l, d] back to the tokens laid end to end, [b * l, n, d].
            let flat = |t: &Tensor| t.transpose(1, 2).reshape([b * l, -1, self.head_dim]);
            let out = varlen.attend(
                &flat(&q),
                &flat(&k),
                &flat(&v),
                self.softcap.is_none() && self.scale.is_none(),
                &|q, k, v, mask, causal| self.attend(q, k, v, mask, causal, None),
            );
            return self
                .o_proj
                .forward(&out.reshape([b, l, self.heads * self.head_dim]));
        }
        let (k, v) = match cache {
            Some((cache, layer)) => cache.update(layer, &k, &v),
            None => (k, v),
        };
        let out = self.attend(
            &q,
            &k,
            &v,
            plan.mask.as_ref(),
            plan.is_causal,
            plan.record.as_ref(),
        );
        let out = out
            .transpose(1, 2)
            .reshape([b, l, self.heads * self.head_dim]);
        self.o_proj.forward(&out)
    }

    /// Attention of `q` `[batch, heads, len, dim]` over `k`, `v` `[batch, kv_heads, keys, dim]`
    /// under an additive `mask` and/or causality. Without a soft-cap or a `record`, libtorch's
    /// fused attention; otherwise as transformers' eager path computes it: scaled scores, capped
    /// (Gemma 2), the mask added, softmax in f32 cast back (the probabilities `record` keeps),
    /// times the values.
    fn attend(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        mask: Option<&Tensor>,
        is_causal: bool,
        record: Option<&AttentionRecord>,
    ) -> Tensor {
        let groups = self.heads / self.kv_heads;
        let (k, v) = (repeat_kv(k, groups), repeat_kv(v, groups));
        if self.softcap.is_none() && record.is_none() {
            return Tensor::scaled_dot_product_attention(
                q, &k, &v, mask, 0.0, is_causal, self.scale, false,
            );
        }
        let scale = self.scale.unwrap_or((self.head_dim as f64).powf(-0.5));
        let mut scores = q.matmul(&k.transpose(-2, -1)) * scale;
        if let Some(cap) = self.softcap {
            scores = (scores / cap).tanh() * cap;
        }
        if is_causal {
            let (len, keys) = (q.size()[2], k.size()[2]);
            let keep = plan::causal(len, keys - len, q.device());
            let kind = scores.kind();
            scores += additive_mask(&keep, kind);
        }
        if let Some(mask) = mask {
            scores += mask;
        }
        let probs = scores.softmax(-1, Kind::Float).to_kind(q.kind());
        if let Some(record) = record {
            record.push(&probs);
        }
        probs.matmul(&v)
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
