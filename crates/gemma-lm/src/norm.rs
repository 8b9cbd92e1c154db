//! Gemma's RMS norm.

use tch::nn::Init;
use tch::{Kind, Tensor};

/// Gemma's RMS norm: computed in f32, scaled by `(1 + weight)`; the weight starts at zero.
#[derive(Debug)]
pub struct RmsNorm {
    /// `[dim]`, stored as the offset from one.
    pub weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    pub(crate) fn new(path: &tch::nn::Path, dim: i64, eps: f64) -> Self {
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
