//! Frozen vision towers for LLaVA on libtorch, exact to Hugging Face `transformers`:
//!
//! * [`ClipVision`]: the CLIP ViT (`ClipVisionConfig::clip_vit_large_patch14_336()` is LLaVA-1.5's);
//! * [`Dinov2`]: DINOv2 with layer scale and bicubic position-embedding interpolation, ViT-S/B/L/g;
//! * [`SiglipVision`]: SigLIP (and SigLIP 2's fixed-resolution checkpoints): no class token, every
//!   token post-normed, the attention-pooling head when present, position embeddings resized
//!   bicubically for other image sizes;
//! * [`VisionTower`] and [`FeatureSelect`]: one interface over both, with LLaVA's feature selection
//!   (a layer of `hidden_states`, with or without CLS), run without autograd.
//!
//! Weights load from vision-only, full CLIP and LLaVA checkpoints alike. The image processing that
//! feeds the towers is the pure-Rust [`processing`] crate (no libtorch), re-exported here.
//! [`parity`] checks the towers and the processors against Hugging Face's outputs.

pub mod clip;
pub mod dinov2;
mod error;
pub mod parity;
pub mod siglip;
pub mod tower;
mod vit;

pub use image_processing as processing;

use tch::Tensor;

pub use clip::{ClipVision, ClipVisionConfig};
pub use dinov2::{Dinov2, Dinov2Config};
pub use error::{Error, Result};
pub use siglip::{SiglipVision, SiglipVisionConfig};
pub use tower::{FeatureSelect, SelectStrategy, VisionConfig, VisionTower};

/// What a tower's forward pass returns, as transformers names it.
#[derive(Debug)]
pub struct VisionOutput {
    /// Output of the last layer (DINOv2, SigLIP: after the final layer norm; CLIP: before
    /// `post_layernorm`).
    pub last_hidden_state: Tensor,
    /// The embeddings (CLIP: after `pre_layrnorm`) and the output of every layer (SigLIP: the
    /// last one before `post_layernorm`).
    pub hidden_states: Vec<Tensor>,
    /// CLIP: `post_layernorm` of the CLS token; DINOv2: the CLS token of `last_hidden_state`;
    /// SigLIP: the attention-pooling head's output, `None` for a tower without the head.
    pub pooler_output: Option<Tensor>,
}

/// The MLP activations of the towers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `x * sigmoid(1.702 x)` (OpenAI CLIP).
    QuickGelu,
    /// Exact GELU.
    Gelu,
    /// GELU, tanh approximation.
    GeluTanh,
    /// ReLU.
    Relu,
}

impl Activation {
    /// Parses transformers' activation names.
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "quick_gelu" => Ok(Activation::QuickGelu),
            "gelu" => Ok(Activation::Gelu),
            "gelu_pytorch_tanh" | "gelu_new" | "gelu_fast" => Ok(Activation::GeluTanh),
            "relu" => Ok(Activation::Relu),
            other => Err(error::config_error(format!(
                "unsupported activation `{other}`"
            ))),
        }
    }

    /// Applies the activation.
    pub fn apply(self, x: &Tensor) -> Tensor {
        match self {
            Activation::QuickGelu => x * (x * 1.702).sigmoid(),
            Activation::Gelu => x.gelu("none"),
            Activation::GeluTanh => x.gelu("tanh"),
            Activation::Relu => x.relu(),
        }
    }
}
