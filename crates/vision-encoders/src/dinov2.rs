//! DINOv2 (Oquab et al., 2023) as `transformers.Dinov2Model` computes it.
//!
//! ```text
//! x = [cls_token; patch_embeddings(pixels)] + interpolate(position_embeddings, grid)
//! for each layer:
//!     x = x + layer_scale1 * attention(norm1(x))
//!     x = x + layer_scale2 * mlp(norm2(x))             # GELU MLP, or SwiGLU for ViT-g
//! last_hidden_state = layernorm(x); pooled = last_hidden_state[:, 0]
//! ```

use std::path::Path;

use foundation::Checkpoint;
use foundation::layers::{LayerNorm, Linear};
use serde::{Deserialize, Serialize};
use tch::nn::{Init, VarStore};
use tch::{Device, Kind, Tensor};

use crate::error::{config_error, config_from_file, vision_section};
use crate::{Activation, Error, Result, VisionOutput};

/// `Dinov2Config`, field for field (the backbone fields are kept but unused).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Dinov2Config {
    /// Width of the residual stream.
    pub hidden_size: i64,
    /// Number of encoder layers.
    pub num_hidden_layers: i64,
    /// Number of attention heads.
    pub num_attention_heads: i64,
    /// MLP width as a multiple of `hidden_size`.
    pub mlp_ratio: f64,
    /// MLP activation (`gelu`, exact).
    pub hidden_act: String,
    /// Dropout after the MLP and attention output (training only).
    pub hidden_dropout_prob: f64,
    /// Attention dropout (training only).
    pub attention_probs_dropout_prob: f64,
    /// Standard deviation of the random initialisation.
    pub initializer_range: f64,
    /// Epsilon of the layer norms.
    pub layer_norm_eps: f64,
    /// The resolution the position embeddings were trained for.
    pub image_size: i64,
    /// Patch size.
    pub patch_size: i64,
    /// Input channels.
    pub num_channels: i64,
    /// Whether query/key/value have biases.
    pub qkv_bias: bool,
    /// Initial value of the layer scales.
    pub layerscale_value: f64,
    /// Stochastic depth (training only).
    pub drop_path_rate: f64,
    /// SwiGLU MLP instead of GELU (ViT-g).
    pub use_swiglu_ffn: bool,
    /// Whether the checkpoint has a mask token (it is unused here).
    pub use_mask_token: bool,
    /// `dinov2`.
    pub model_type: Option<String>,
}

impl Default for Dinov2Config {
    fn default() -> Self {
        Dinov2Config {
            hidden_size: 768,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            mlp_ratio: 4.0,
            hidden_act: "gelu".into(),
            hidden_dropout_prob: 0.0,
            attention_probs_dropout_prob: 0.0,
            initializer_range: 0.02,
            layer_norm_eps: 1e-6,
            image_size: 224,
            patch_size: 14,
            num_channels: 3,
            qkv_bias: true,
            layerscale_value: 1.0,
            drop_path_rate: 0.0,
            use_swiglu_ffn: false,
            use_mask_token: true,
            model_type: Some("dinov2".into()),
        }
    }
}

impl Dinov2Config {
    fn sized(hidden_size: i64, num_hidden_layers: i64, num_attention_heads: i64) -> Self {
        Dinov2Config {
            hidden_size,
            num_hidden_layers,
            num_attention_heads,
            image_size: 518,
            ..Default::default()
        }
    }

    /// `facebook/dinov2-small` (ViT-S/14).
    pub fn dinov2_small() -> Self {
        Self::sized(384, 12, 6)
    }

    /// `facebook/dinov2-base` (ViT-B/14).
    pub fn dinov2_base() -> Self {
        Self::sized(768, 12, 12)
    }

    /// `facebook/dinov2-large` (ViT-L/14), the likely tower of the paper's DINOv2 rows.
    pub fn dinov2_large() -> Self {
        Self::sized(1024, 24, 16)
    }

    /// `facebook/dinov2-giant` (ViT-g/14, SwiGLU MLP).
    pub fn dinov2_giant() -> Self {
        Dinov2Config {
            use_swiglu_ffn: true,
            ..Self::sized(1536, 40, 24)
        }
    }

    /// Reads `config.json` (or the `vision_config` of a LLaVA one).
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        config_from_file(path.as_ref(), Self::from_value)
    }

    /// Parses a config object (DINOv2, or with `vision_config` inside).
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
        Activation::parse(&self.hidden_act)?;
        Ok(())
    }

    /// Patches per side at `image_size`.
    pub fn grid(&self) -> i64 {
        self.image_size / self.patch_size
    }

    /// Width of the MLP's hidden layer.
    fn mlp_hidden(&self) -> i64 {
        let hidden = (self.hidden_size as f64 * self.mlp_ratio) as i64;
        if self.use_swiglu_ffn {
            (hidden * 2 / 3 + 7) / 8 * 8
        } else {
            hidden
        }
    }
}

#[derive(Debug)]
enum Mlp {
    Gelu {
        fc1: Linear,
        fc2: Linear,
        act: Activation,
    },
    SwiGlu {
        weights_in: Linear,
        weights_out: Linear,
    },
}

impl Mlp {
    fn forward(&self, x: &Tensor) -> Tensor {
        match self {
            Mlp::Gelu { fc1, fc2, act } => fc2.forward(&act.apply(&fc1.forward(x))),
            Mlp::SwiGlu {
                weights_in,
                weights_out,
            } => {
                let h = weights_in.forward(x).chunk(2, -1);
                weights_out.forward(&(h[0].silu() * &h[1]))
            }
        }
    }
}

#[derive(Debug)]
struct Layer {
    norm1: LayerNorm,
    query: Linear,
    key: Linear,
    value: Linear,
    dense: Linear,
    lambda1: Tensor,
    norm2: LayerNorm,
    mlp: Mlp,
    lambda2: Tensor,
    heads: i64,
}

impl Layer {
    fn new(p: &tch::nn::Path, c: &Dinov2Config, act: Activation) -> Self {
        let (h, std, eps) = (c.hidden_size, c.initializer_range, c.layer_norm_eps);
        let attn = p.sub("attention").sub("attention");
        let m = c.mlp_hidden();
        let mlp = p.sub("mlp");
        let mlp = if c.use_swiglu_ffn {
            Mlp::SwiGlu {
                weights_in: Linear::new(&mlp.sub("weights_in"), h, 2 * m, true, std),
                weights_out: Linear::new(&mlp.sub("weights_out"), m, h, true, std),
            }
        } else {
            Mlp::Gelu {
                fc1: Linear::new(&mlp.sub("fc1"), h, m, true, std),
                fc2: Linear::new(&mlp.sub("fc2"), m, h, true, std),
                act,
            }
        };
        let scale = Init::Const(c.layerscale_value);
        Layer {
            norm1: LayerNorm::new(&p.sub("norm1"), h, eps),
            query: Linear::new(&attn.sub("query"), h, h, c.qkv_bias, std),
            key: Linear::new(&attn.sub("key"), h, h, c.qkv_bias, std),
            value: Linear::new(&attn.sub("value"), h, h, c.qkv_bias, std),
            dense: Linear::new(
                &p.sub("attention").sub("output").sub("dense"),
                h,
                h,
                true,
                std,
            ),
            lambda1: p.sub("layer_scale1").var("lambda1", &[h], scale),
            norm2: LayerNorm::new(&p.sub("norm2"), h, eps),
            mlp,
            lambda2: p.sub("layer_scale2").var("lambda1", &[h], scale),
            heads: c.num_attention_heads,
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let (b, l, h) = x.size3().expect("[batch, tokens, hidden]");
        let d = h / self.heads;
        let y = self.norm1.forward(x);
        let split = |t: Tensor| t.view([b, l, self.heads, d]).transpose(1, 2);
        let (q, k, v) = (
            split(self.query.forward(&y)),
            split(self.key.forward(&y)),
            split(self.value.forward(&y)),
        );
        let attn = Tensor::scaled_dot_product_attention::<Tensor>(
            &q, &k, &v, None, 0.0, false, None, false,
        );
        let attn = self.dense.forward(&attn.transpose(1, 2).reshape([b, l, h]));
        let x = x + attn * &self.lambda1;
        let mlp = self.mlp.forward(&self.norm2.forward(&x));
        &x + mlp * &self.lambda2
    }
}

/// The DINOv2 backbone (`Dinov2Model`); variables carry HF's names without a prefix.
#[derive(Debug)]
pub struct Dinov2 {
    config: Dinov2Config,
    cls_token: Tensor,
    projection: Tensor,
    projection_bias: Tensor,
    position_embeddings: Tensor,
    layers: Vec<Layer>,
    layernorm: LayerNorm,
}

impl Dinov2 {
    /// A randomly initialised backbone under `root`.
    pub fn new(root: &tch::nn::Path, config: &Dinov2Config) -> Result<Self> {
        config.validate()?;
        let act = Activation::parse(&config.hidden_act)?;
        let e = root.sub("embeddings");
        let (h, p, std) = (
            config.hidden_size,
            config.patch_size,
            config.initializer_range,
        );
        let normal = Init::Randn {
            mean: 0.0,
            stdev: std,
        };
        let positions = config.grid() * config.grid() + 1;
        let proj = e.sub("patch_embeddings").sub("projection");
        if config.use_mask_token {
            // Part of the checkpoint layout; only masked pretraining uses it.
            let _ = e.var("mask_token", &[1, h], Init::Const(0.0));
        }
        Ok(Dinov2 {
            cls_token: e.var("cls_token", &[1, 1, h], normal),
            projection: proj.var("weight", &[h, config.num_channels, p, p], normal),
            projection_bias: proj.var("bias", &[h], Init::Const(0.0)),
            position_embeddings: e.var("position_embeddings", &[1, positions, h], normal),
            layers: (0..config.num_hidden_layers)
                .map(|i| Layer::new(&root.sub("encoder").sub("layer").sub(i), config, act))
                .collect(),
            layernorm: LayerNorm::new(&root.sub("layernorm"), h, config.layer_norm_eps),
            config: config.clone(),
        })
    }

    /// Loads a DINOv2 checkpoint directory onto `device` in `kind`.
    pub fn from_pretrained(
        dir: impl AsRef<Path>,
        device: Device,
        kind: Kind,
    ) -> Result<(VarStore, Self)> {
        let dir = dir.as_ref();
        let config = Dinov2Config::from_file(dir)?;
        Self::from_checkpoint(&config, &Checkpoint::open(dir)?, device, kind)
    }

    /// Builds the backbone for `config` from `checkpoint`, wherever in it the backbone sits.
    pub fn from_checkpoint(
        config: &Dinov2Config,
        checkpoint: &Checkpoint,
        device: Device,
        kind: Kind,
    ) -> Result<(VarStore, Self)> {
        let (vs, model) = foundation::build(device, kind, |root| Self::new(root, config))?;
        model.load(&vs, checkpoint)?;
        Ok((vs, model))
    }

    /// Fills the variables from `checkpoint`: a `Dinov2Model` checkpoint (no prefix), or the tower
    /// inside a LLaVA checkpoint (`vision_tower.`, `model.vision_tower.`). A checkpoint without the
    /// unused mask token still loads.
    pub fn load(&self, vs: &VarStore, checkpoint: &Checkpoint) -> Result<()> {
        let anchor = "embeddings.patch_embeddings.projection.weight";
        let prefix = checkpoint.require_prefix(anchor, anchor)?;
        let mask = format!("{prefix}embeddings.mask_token");
        let has_mask = checkpoint.contains(&mask);
        let used = checkpoint.load_into(vs, |name| match name {
            // Unused at inference: a checkpoint without it keeps the initial value.
            "embeddings.mask_token" if !has_mask => vec![],
            _ => vec![format!("{prefix}{name}")],
        })?;
        checkpoint.reject_unused(&prefix, &used, |_| false)?;
        Ok(())
    }

    /// The configuration.
    pub fn config(&self) -> &Dinov2Config {
        &self.config
    }

    /// Position embeddings for a `height` x `width` input: as stored when the grid matches, else the
    /// patch part resized bicubically in f32 exactly as transformers does.
    fn position_embeddings(&self, height: i64, width: i64) -> Tensor {
        let stored = &self.position_embeddings;
        let positions = stored.size()[1] - 1;
        let (new_h, new_w) = (
            height / self.config.patch_size,
            width / self.config.patch_size,
        );
        if new_h * new_w == positions && height == width {
            return stored.shallow_clone();
        }
        let side = (positions as f64).sqrt() as i64;
        let dim = self.config.hidden_size;
        let cls = stored.narrow(1, 0, 1);
        let grid = stored
            .narrow(1, 1, positions)
            .reshape([1, side, side, dim])
            .permute([0, 3, 1, 2])
            .to_kind(Kind::Float);
        // transformers: `interpolate(size=(new_h, new_w), mode="bicubic", align_corners=False)` in f32.
        let resized = grid
            .upsample_bicubic2d([new_h, new_w], false, None, None)
            .to_kind(stored.kind())
            .permute([0, 2, 3, 1])
            .reshape([1, new_h * new_w, dim]);
        Tensor::cat(&[&cls, &resized], 1)
    }

    /// Runs the backbone on `pixel_values` `[batch, 3, H, W]`; any `H`, `W` that are multiples of
    /// the patch size (position embeddings are interpolated to the grid).
    pub fn forward(&self, pixel_values: &Tensor) -> Result<VisionOutput> {
        let c = &self.config;
        let size = pixel_values.size();
        if size.len() != 4
            || size[1] != c.num_channels
            || size[2] < c.patch_size
            || size[3] < c.patch_size
        {
            return Err(Error::Input(format!(
                "DINOv2 expects pixel values [batch, {}, H, W] with H, W >= {}, got {size:?}",
                c.num_channels, c.patch_size
            )));
        }
        let weight = &self.projection;
        let pixels = pixel_values
            .to_device(weight.device())
            .to_kind(weight.kind());
        let patches = pixels
            .conv2d(
                weight,
                Some(&self.projection_bias),
                [c.patch_size, c.patch_size],
                [0, 0],
                [1, 1],
                1,
            )
            .flatten(2, -1)
            .transpose(1, 2);
        let batch = size[0];
        let cls = self.cls_token.expand([batch, 1, c.hidden_size], false);
        let mut x = Tensor::cat(&[&cls, &patches], 1) + self.position_embeddings(size[2], size[3]);
        let mut hidden_states = vec![x.shallow_clone()];
        for layer in &self.layers {
            x = layer.forward(&x);
            hidden_states.push(x.shallow_clone());
        }
        let last_hidden_state = self.layernorm.forward(&x);
        let pooler_output = Some(last_hidden_state.select(1, 0));
        Ok(VisionOutput {
            last_hidden_state,
            hidden_states,
            pooler_output,
        })
    }
}
