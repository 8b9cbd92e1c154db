//! The CLIP vision transformer (Radford et al., 2021) as `transformers.CLIPVisionModel` computes it.
//!
//! ```text
//! x = [class_embedding; patch_embedding(pixels)] + position_embedding
//! x = pre_layrnorm(x)                                   # hidden_states[0]
//! for each layer: x = x + attn(layer_norm1(x)); x = x + mlp(layer_norm2(x))
//! pooled = post_layernorm(x[:, 0])
//! ```

use std::path::Path;

use foundation::Checkpoint;
use foundation::layers::LayerNorm;
use serde::{Deserialize, Serialize};
use tch::nn::{Init, VarStore};
use tch::{Device, Kind, Tensor};

use crate::error::{config_error, config_from_file, vision_section};
use crate::vit::{EncoderLayer, VitShape};
use crate::{Error, Result, VisionOutput};

/// `CLIPVisionConfig`, field for field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ClipVisionConfig {
    /// Width of the residual stream.
    pub hidden_size: i64,
    /// Width of the MLP.
    pub intermediate_size: i64,
    /// Width of the (unused here) projection into the joint space.
    pub projection_dim: i64,
    /// Number of encoder layers.
    pub num_hidden_layers: i64,
    /// Number of attention heads.
    pub num_attention_heads: i64,
    /// Input channels.
    pub num_channels: i64,
    /// Input resolution.
    pub image_size: i64,
    /// Patch size.
    pub patch_size: i64,
    /// MLP activation (`quick_gelu` in OpenAI's checkpoints).
    pub hidden_act: String,
    /// Epsilon of the layer norms.
    pub layer_norm_eps: f64,
    /// Attention dropout (training only).
    pub attention_dropout: f64,
    /// Standard deviation of the random initialisation.
    pub initializer_range: f64,
    /// Scale of the random initialisation.
    pub initializer_factor: f64,
    /// `clip_vision_model`.
    pub model_type: Option<String>,
}

impl Default for ClipVisionConfig {
    fn default() -> Self {
        ClipVisionConfig {
            hidden_size: 768,
            intermediate_size: 3072,
            projection_dim: 512,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            num_channels: 3,
            image_size: 224,
            patch_size: 32,
            hidden_act: "quick_gelu".into(),
            layer_norm_eps: 1e-5,
            attention_dropout: 0.0,
            initializer_range: 0.02,
            initializer_factor: 1.0,
            model_type: Some("clip_vision_model".into()),
        }
    }
}

impl ClipVisionConfig {
    /// `openai/clip-vit-large-patch14-336`, LLaVA-1.5's tower: 24 layers, width 1024, 336 px, 576 patches.
    pub fn clip_vit_large_patch14_336() -> Self {
        ClipVisionConfig {
            hidden_size: 1024,
            intermediate_size: 4096,
            projection_dim: 768,
            num_hidden_layers: 24,
            num_attention_heads: 16,
            image_size: 336,
            patch_size: 14,
            ..Default::default()
        }
    }

    /// `openai/clip-vit-large-patch14`: as above at 224 px.
    pub fn clip_vit_large_patch14() -> Self {
        ClipVisionConfig {
            image_size: 224,
            ..Self::clip_vit_large_patch14_336()
        }
    }

    /// Reads a vision-only `config.json`, or the `vision_config` of a full CLIP or LLaVA one.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        config_from_file(path.as_ref(), Self::from_value)
    }

    /// Parses a config object (vision-only, or with `vision_config` inside).
    pub fn from_value(json: serde_json::Value) -> Result<Self> {
        let config: Self = vision_section(json)?;
        config.validate()?;
        Ok(config)
    }

    /// Checks sizes and the activation.
    pub fn validate(&self) -> Result<()> {
        if self.hidden_size <= 0 || self.num_attention_heads <= 0 || self.patch_size <= 0 {
            return Err(config_error("sizes must be positive"));
        }
        if self.hidden_size % self.num_attention_heads != 0 {
            return Err(config_error(format!(
                "`hidden_size` {} is not a multiple of `num_attention_heads` {}",
                self.hidden_size, self.num_attention_heads
            )));
        }
        if self.image_size % self.patch_size != 0 {
            return Err(config_error(format!(
                "`image_size` {} is not a multiple of `patch_size` {}",
                self.image_size, self.patch_size
            )));
        }
        crate::Activation::parse(&self.hidden_act)?;
        Ok(())
    }

    /// Patches per side.
    pub fn grid(&self) -> i64 {
        self.image_size / self.patch_size
    }

    fn shape(&self) -> VitShape {
        VitShape {
            hidden: self.hidden_size,
            intermediate: self.intermediate_size,
            heads: self.num_attention_heads,
            layers: self.num_hidden_layers,
            eps: self.layer_norm_eps,
            std: self.initializer_range * self.initializer_factor,
        }
    }
}

/// The CLIP vision tower (`CLIPVisionModel`), variables under `vision_model.`.
#[derive(Debug)]
pub struct ClipVision {
    config: ClipVisionConfig,
    class_embedding: Tensor,
    patch_embedding: Tensor,
    position_embedding: Tensor,
    pre_layrnorm: LayerNorm,
    layers: Vec<EncoderLayer>,
    post_layernorm: LayerNorm,
}

impl ClipVision {
    /// A randomly initialised tower under `root` (variables `vision_model.*`).
    pub fn new(root: &tch::nn::Path, config: &ClipVisionConfig) -> Result<Self> {
        config.validate()?;
        let act = crate::Activation::parse(&config.hidden_act)?;
        let p = root.sub("vision_model");
        let e = p.sub("embeddings");
        let (h, std) = (
            config.hidden_size,
            config.initializer_range * config.initializer_factor,
        );
        let positions = config.grid() * config.grid() + 1;
        let normal = |s: f64| Init::Randn {
            mean: 0.0,
            stdev: s,
        };
        Ok(ClipVision {
            class_embedding: e.var(
                "class_embedding",
                &[h],
                normal((h as f64).powf(-0.5) * config.initializer_factor),
            ),
            patch_embedding: e.sub("patch_embedding").var(
                "weight",
                &[h, config.num_channels, config.patch_size, config.patch_size],
                normal(std),
            ),
            position_embedding: e.sub("position_embedding").var(
                "weight",
                &[positions, h],
                normal(std),
            ),
            pre_layrnorm: LayerNorm::new(&p.sub("pre_layrnorm"), h, config.layer_norm_eps),
            layers: (0..config.num_hidden_layers)
                .map(|i| {
                    EncoderLayer::new(&p.sub("encoder").sub("layers").sub(i), &config.shape(), act)
                })
                .collect(),
            post_layernorm: LayerNorm::new(&p.sub("post_layernorm"), h, config.layer_norm_eps),
            config: config.clone(),
        })
    }

    /// Loads a CLIP checkpoint directory (vision-only or full CLIP) onto `device` in `kind`.
    pub fn from_pretrained(
        dir: impl AsRef<Path>,
        device: Device,
        kind: Kind,
    ) -> Result<(VarStore, Self)> {
        let dir = dir.as_ref();
        let config = ClipVisionConfig::from_file(dir)?;
        Self::from_checkpoint(&config, &Checkpoint::open(dir)?, device, kind)
    }

    /// Builds the tower for `config` from `checkpoint`, wherever in it the tower sits.
    pub fn from_checkpoint(
        config: &ClipVisionConfig,
        checkpoint: &Checkpoint,
        device: Device,
        kind: Kind,
    ) -> Result<(VarStore, Self)> {
        let (vs, tower) = foundation::build(device, kind, |root| Self::new(root, config))?;
        tower.load(&vs, checkpoint)?;
        Ok((vs, tower))
    }

    /// Fills the tower's variables from `checkpoint`: a vision-only or full CLIP checkpoint
    /// (`vision_model.*`), transformers 5's bare layout (`embeddings.*`), or the tower inside a
    /// LLaVA checkpoint (`vision_tower.vision_model.*`, `model.vision_tower.vision_model.*`).
    pub fn load(&self, vs: &VarStore, checkpoint: &Checkpoint) -> Result<()> {
        let anchor = "embeddings.patch_embedding.weight";
        let prefix = checkpoint.require_prefix(anchor, &format!("vision_model.{anchor}"))?;
        let used = checkpoint.load_into(vs, |name| {
            let rest = name.strip_prefix("vision_model.").unwrap_or(name);
            vec![format!("{prefix}{rest}")]
        })?;
        // Older files keep the position ids, which are recomputed.
        checkpoint.reject_unused(&prefix, &used, |name| name.ends_with("position_ids"))?;
        Ok(())
    }

    /// The configuration.
    pub fn config(&self) -> &ClipVisionConfig {
        &self.config
    }

    /// Runs the tower on `pixel_values` `[batch, 3, image_size, image_size]`.
    pub fn forward(&self, pixel_values: &Tensor) -> Result<VisionOutput> {
        let c = &self.config;
        let size = pixel_values.size();
        if size.len() != 4
            || size[1] != c.num_channels
            || size[2] != c.image_size
            || size[3] != c.image_size
        {
            return Err(Error::Input(format!(
                "CLIP expects pixel values [batch, {}, {}, {}], got {size:?}",
                c.num_channels, c.image_size, c.image_size
            )));
        }
        let weight = &self.patch_embedding;
        let pixels = pixel_values
            .to_device(weight.device())
            .to_kind(weight.kind());
        let patches = pixels
            .conv2d::<Tensor>(
                weight,
                None,
                [c.patch_size, c.patch_size],
                [0, 0],
                [1, 1],
                1,
            )
            .flatten(2, -1)
            .transpose(1, 2);
        let batch = size[0];
        let cls = self
            .class_embedding
            .view([1, 1, -1])
            .expand([batch, 1, c.hidden_size], false);
        let x = Tensor::cat(&[&cls, &patches], 1) + self.position_embedding.unsqueeze(0);
        let mut x = self.pre_layrnorm.forward(&x);
        let mut hidden_states = vec![x.shallow_clone()];
        for layer in &self.layers {
            x = layer.forward(&x);
            hidden_states.push(x.shallow_clone());
        }
        let pooler_output = Some(self.post_layernorm.forward(&x.select(1, 0)));
        Ok(VisionOutput {
            last_hidden_state: x,
            hidden_states,
            pooler_output,
        })
    }
}
