//! One interface for LLaVA over any tower: which layer to take features from and whether to keep CLS.

use std::path::Path;

use foundation::Checkpoint;
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

use crate::clip::{ClipVision, ClipVisionConfig};
use crate::dinov2::{Dinov2, Dinov2Config};
use crate::error::{config_error, config_from_file};
use crate::siglip::{SiglipVision, SiglipVisionConfig};
use crate::{Result, VisionOutput};

/// Which tokens of the selected layer LLaVA keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SelectStrategy {
    /// Patch tokens only, CLS dropped (LLaVA's `patch`, HF's `default`).
    Patch,
    /// CLS and patch tokens (`cls_patch`, HF's `full`).
    ClsPatch,
}

impl SelectStrategy {
    /// Parses LLaVA's (`patch`, `cls_patch`) or HF's (`default`, `full`) spelling.
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "patch" | "default" => Ok(SelectStrategy::Patch),
            "cls_patch" | "full" => Ok(SelectStrategy::ClsPatch),
            other => Err(config_error(format!(
                "unknown vision feature select strategy `{other}` (patch/default, cls_patch/full)"
            ))),
        }
    }
}

/// Where LLaVA reads image features: a layer of `hidden_states` (negative counts from the end; LLaVA
/// uses -2) and a token selection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeatureSelect {
    /// Index into `hidden_states`.
    pub layer: i64,
    /// Which tokens to keep.
    pub strategy: SelectStrategy,
}

impl Default for FeatureSelect {
    /// LLaVA-1.5's choice: the second-to-last layer, patch tokens.
    fn default() -> Self {
        FeatureSelect {
            layer: -2,
            strategy: SelectStrategy::Patch,
        }
    }
}

/// A vision tower of either kind, so that LLaVA and the trainer never care which is inside.
#[derive(Debug)]
pub enum VisionTower {
    /// A CLIP vision transformer.
    Clip(ClipVision),
    /// A DINOv2 backbone.
    Dinov2(Dinov2),
    /// A SigLIP vision transformer.
    Siglip(SiglipVision),
}

/// The configuration of either tower.
#[derive(Debug, Clone, PartialEq)]
pub enum VisionConfig {
    /// CLIP.
    Clip(ClipVisionConfig),
    /// DINOv2.
    Dinov2(Dinov2Config),
    /// SigLIP.
    Siglip(SiglipVisionConfig),
}

impl VisionConfig {
    /// Reads `config.json` (or a LLaVA config's `vision_config`) and picks the tower by `model_type`.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        config_from_file(path.as_ref(), Self::from_value)
    }

    /// Parses a config object, picking the tower by `model_type` (of `vision_config`, else of the
    /// whole config: a full CLIP config says `clip`), else by the fields only DINOv2 has.
    pub fn from_value(json: serde_json::Value) -> Result<Self> {
        let vision = json.get("vision_config").unwrap_or(&json);
        let own = vision.get("model_type").and_then(|v| v.as_str());
        let outer = json.get("model_type").and_then(|v| v.as_str());
        let dinov2_fields = ["layerscale_value", "mlp_ratio", "use_swiglu_ffn"]
            .iter()
            .any(|f| vision.get(f).is_some());
        let kind = match (own, outer) {
            (Some(kind), _) => kind,
            (None, Some("clip" | "clip_vision_model")) => "clip",
            (None, Some("dinov2")) => "dinov2",
            (None, Some("siglip" | "siglip_vision_model")) => "siglip_vision_model",
            (None, _) if dinov2_fields => "dinov2",
            (None, _) => "clip_vision_model",
        };
        match kind {
            "clip_vision_model" | "clip" => {
                Ok(VisionConfig::Clip(ClipVisionConfig::from_value(json)?))
            }
            "dinov2" => Ok(VisionConfig::Dinov2(Dinov2Config::from_value(json)?)),
            "siglip_vision_model" | "siglip" => {
                Ok(VisionConfig::Siglip(SiglipVisionConfig::from_value(json)?))
            }
            "siglip2_vision_model" | "siglip2" => Err(config_error(
                "SigLIP 2's NaFlex towers (`siglip2`, variable resolution) are not supported yet; \
                 its fixed-resolution checkpoints are SigLIP models (`siglip`) and load",
            )),
            other => Err(config_error(format!(
                "unsupported vision model_type `{other}` (clip_vision_model, clip, dinov2, \
                 siglip_vision_model, siglip)"
            ))),
        }
    }

    /// Width of the features.
    pub fn hidden_size(&self) -> i64 {
        match self {
            VisionConfig::Clip(c) => c.hidden_size,
            VisionConfig::Dinov2(c) => c.hidden_size,
            VisionConfig::Siglip(c) => c.hidden_size,
        }
    }

    /// The patch size.
    pub fn patch_size(&self) -> i64 {
        match self {
            VisionConfig::Clip(c) => c.patch_size,
            VisionConfig::Dinov2(c) => c.patch_size,
            VisionConfig::Siglip(c) => c.patch_size,
        }
    }

    /// The input resolution of the config.
    pub fn image_size(&self) -> i64 {
        match self {
            VisionConfig::Clip(c) => c.image_size,
            VisionConfig::Dinov2(c) => c.image_size,
            VisionConfig::Siglip(c) => c.image_size,
        }
    }

    /// The layer norms' epsilon (Gemma 3's projector norm takes the tower's).
    pub fn layer_norm_eps(&self) -> f64 {
        match self {
            VisionConfig::Clip(c) => c.layer_norm_eps,
            VisionConfig::Dinov2(c) => c.layer_norm_eps,
            VisionConfig::Siglip(c) => c.layer_norm_eps,
        }
    }

    /// Whether the tower puts a class token before the patches (CLIP, DINOv2; not SigLIP).
    pub fn has_class_token(&self) -> bool {
        !matches!(self, VisionConfig::Siglip(_))
    }
}

impl VisionTower {
    /// A randomly initialised tower for `config` under `root`.
    pub fn new(root: &tch::nn::Path, config: &VisionConfig) -> Result<Self> {
        Ok(match config {
            VisionConfig::Clip(c) => VisionTower::Clip(ClipVision::new(root, c)?),
            VisionConfig::Dinov2(c) => VisionTower::Dinov2(Dinov2::new(root, c)?),
            VisionConfig::Siglip(c) => VisionTower::Siglip(SiglipVision::new(root, c)?),
        })
    }

    /// Loads a CLIP or DINOv2 checkpoint directory onto `device` in `kind`.
    pub fn from_pretrained(
        dir: impl AsRef<Path>,
        device: Device,
        kind: Kind,
    ) -> Result<(VarStore, Self)> {
        let dir = dir.as_ref();
        let config = VisionConfig::from_file(dir)?;
        let checkpoint = Checkpoint::open(dir)?;
        let (vs, tower) = foundation::build(device, kind, |root| Self::new(root, &config))?;
        tower.load(&vs, &checkpoint)?;
        Ok((vs, tower))
    }

    /// Fills the tower's variables from `checkpoint`.
    pub fn load(&self, vs: &VarStore, checkpoint: &Checkpoint) -> Result<()> {
        match self {
            VisionTower::Clip(m) => m.load(vs, checkpoint),
            VisionTower::Dinov2(m) => m.load(vs, checkpoint),
            VisionTower::Siglip(m) => m.load(vs, checkpoint),
        }
    }

    /// The patch size.
    pub fn patch_size(&self) -> i64 {
        match self {
            VisionTower::Clip(m) => m.config().patch_size,
            VisionTower::Dinov2(m) => m.config().patch_size,
            VisionTower::Siglip(m) => m.config().patch_size,
        }
    }

    /// Whether the tower puts a class token before the patches (CLIP, DINOv2; not SigLIP), which
    /// LLaVA's `default` strategy drops.
    pub fn has_class_token(&self) -> bool {
        !matches!(self, VisionTower::Siglip(_))
    }

    /// The full forward pass.
    pub fn forward(&self, pixel_values: &Tensor) -> Result<VisionOutput> {
        match self {
            VisionTower::Clip(m) => m.forward(pixel_values),
            VisionTower::Dinov2(m) => m.forward(pixel_values),
            VisionTower::Siglip(m) => m.forward(pixel_values),
        }
    }

    /// Image features for LLaVA, `[batch, tokens, hidden]`, computed without autograd (the tower is
    /// frozen in both stages of the recipe).
    pub fn features(&self, pixel_values: &Tensor, select: FeatureSelect) -> Result<Tensor> {
        let output = tch::no_grad(|| self.forward(pixel_values))?;
        let n = output.hidden_states.len() as i64;
        let index = if select.layer < 0 {
            n + select.layer
        } else {
            select.layer
        };
        let layer = usize::try_from(index)
            .ok()
            .and_then(|i| output.hidden_states.get(i))
            .ok_or_else(|| {
                config_error(format!(
                    "vision feature layer {} is outside the tower's {n} hidden states",
                    select.layer
                ))
            })?;
        Ok(match select.strategy {
            SelectStrategy::Patch => layer.narrow(1, 1, layer.size()[1] - 1),
            SelectStrategy::ClsPatch => layer.shallow_clone(),
        })
    }
}
