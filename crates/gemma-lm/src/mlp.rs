//! Gemma's gated MLP.

use foundation::layers::Linear;
use tch::Tensor;

use crate::config::{Activation, GemmaConfig};

/// The gated MLP: `down(act(gate(x)) * up(x))`.
#[derive(Debug)]
pub struct Mlp {
    pub(crate) gate_proj: Linear,
    pub(crate) up_proj: Linear,
    pub(crate) down_proj: Linear,
    activation: Activation,
}

impl Mlp {
    pub(crate) fn new(path: &tch::nn::Path, c: &GemmaConfig, activation: Activation) -> Self {
        let (h, m, std) = (c.hidden_size, c.intermediate_size, c.initializer_range);
        Mlp {
            gate_proj: Linear::new(&path.sub("gate_proj"), h, m, false, std),
            up_proj: Linear::new(&path.sub("up_proj"), h, m, false, std),
            down_proj: Linear::new(&path.sub("down_proj"), m, h, false, std),
            activation,
        }
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Tensor {
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
