//! The pre-norm transformer encoder layer CLIP's and SigLIP's vision towers share
//! (`CLIPEncoderLayer`, `SiglipEncoderLayer`): `x + attn(layer_norm1(x))`, then
//! `x + mlp(layer_norm2(x))`, every projection with a bias.

use foundation::layers::{LayerNorm, Linear};
use tch::Tensor;

use crate::Result;
use crate::error::config_error;

/// The sizes of an encoder.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct VitShape {
    /// Width of the residual stream.
    pub hidden: i64,
    /// Width of the MLP.
    pub intermediate: i64,
    /// Attention heads.
    pub heads: i64,
    /// Encoder layers.
    pub layers: i64,
    /// Epsilon of the layer norms.
    pub eps: f64,
    /// Standard deviation of the random initialisation.
    pub std: f64,
}

impl VitShape {
    /// Positive sizes and heads that divide the width.
    pub(crate) fn validate(&self) -> Result<()> {
        if self.hidden <= 0 || self.intermediate <= 0 || self.heads <= 0 || self.layers < 0 {
            return Err(config_error("sizes must be positive"));
        }
        if self.hidden % self.heads != 0 {
            return Err(config_error(format!(
                "`hidden_size` {} is not a multiple of `num_attention_heads` {}",
                self.hidden, self.heads
            )));
        }
        Ok(())
    }
}

/// Multi-head self-attention over every token (no mask), scaled by `head_dim^-0.5`.
#[derive(Debug)]
struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    heads: i64,
}

impl Attention {
    fn new(p: &tch::nn::Path, s: &VitShape) -> Self {
        let linear = |name: &str| Linear::new(&p.sub(name), s.hidden, s.hidden, true, s.std);
        Attention {
            q_proj: linear("q_proj"),
            k_proj: linear("k_proj"),
            v_proj: linear("v_proj"),
            out_proj: linear("out_proj"),
            heads: s.heads,
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let (b, l, h) = x.size3().expect("[batch, tokens, hidden]");
        let d = h / self.heads;
        let split = |t: Tensor| t.view([b, l, self.heads, d]).transpose(1, 2);
        let q = split(self.q_proj.forward(x));
        let k = split(self.k_proj.forward(x));
        let v = split(self.v_proj.forward(x));
        let out = Tensor::scaled_dot_product_attention::<Tensor>(
            &q, &k, &v, None, 0.0, false, None, false,
        );
        self.out_proj
            .forward(&out.transpose(1, 2).reshape([b, l, h]))
    }
}

/// `fc2(act(fc1(x)))`.
#[derive(Debug)]
pub(crate) struct Mlp {
    fc1: Linear,
    fc2: Linear,
    act: crate::Activation,
}

impl Mlp {
    pub(crate) fn new(p: &tch::nn::Path, s: &VitShape, act: crate::Activation) -> Self {
        Mlp {
            fc1: Linear::new(&p.sub("fc1"), s.hidden, s.intermediate, true, s.std),
            fc2: Linear::new(&p.sub("fc2"), s.intermediate, s.hidden, true, s.std),
            act,
        }
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Tensor {
        self.fc2.forward(&self.act.apply(&self.fc1.forward(x)))
    }
}

/// One encoder layer.
#[derive(Debug)]
pub(crate) struct EncoderLayer {
    layer_norm1: LayerNorm,
    self_attn: Attention,
    layer_norm2: LayerNorm,
    mlp: Mlp,
}

impl EncoderLayer {
    pub(crate) fn new(p: &tch::nn::Path, s: &VitShape, act: crate::Activation) -> Self {
        EncoderLayer {
            layer_norm1: LayerNorm::new(&p.sub("layer_norm1"), s.hidden, s.eps),
            self_attn: Attention::new(&p.sub("self_attn"), s),
            layer_norm2: LayerNorm::new(&p.sub("layer_norm2"), s.hidden, s.eps),
            mlp: Mlp::new(&p.sub("mlp"), s, act),
        }
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Tensor {
        let x = x + self.self_attn.forward(&self.layer_norm1.forward(x));
        &x + self.mlp.forward(&self.layer_norm2.forward(&x))
    }
}
