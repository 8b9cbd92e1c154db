//! The SigLIP vision transformer (Zhai et al., 2023) as `transformers.SiglipVisionModel` computes
//! it; SigLIP 2's fixed-resolution checkpoints are the same model.
//!
//! ```text
//! x = patch_embedding(pixels) + position_embedding      # hidden_states[0]; no class token, no pre-norm
//! for each layer: x = x + attn(layer_norm1(x)); x = x + mlp(layer_norm2(x))
//! last_hidden_state = post_layernorm(x)                  # every token
//! pooled = head(last_hidden_state)                       # attention pooling, when the model has it
//! ```

use std::path::Path;

use foundation::Checkpoint;
use foundation::layers::{LayerNorm, Linear};
use serde::{Deserialize, Serialize};
use tch::nn::{Init, VarStore};
use tch::{Device, Kind, Tensor};

use crate::error::{config_error, config_from_file, vision_section};
use crate::vit::{EncoderLayer, Mlp, VitShape};
use crate::{Error, Result, VisionOutput};

/// `SiglipVisionConfig`, field for field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SiglipVisionConfig {
    /// Width of the residual stream.
    pub hidden_size: i64,
    /// Width of the MLP.
    pub intermediate_size: i64,
    /// Number of encoder layers.
    pub num_hidden_layers: i64,
    /// Number of attention heads.
    pub num_attention_heads: i64,
    /// Input channels.
    pub num_channels: i64,
    /// Input resolution the position embeddings are for.
    pub image_size: i64,
    /// Patch size.
    pub patch_size: i64,
    /// MLP activation (`gelu_pytorch_tanh`).
    pub hidden_act: String,
    /// Epsilon of the layer norms.
    pub layer_norm_eps: f64,
    /// Attention dropout (training only).
    pub attention_dropout: f64,
    /// Whether the model has the attention-pooling head (`SiglipVisionModel`'s default: yes;
    /// Gemma 3's and PaliGemma's towers: no).
    pub vision_use_head: Option<bool>,
    /// `siglip_vision_model`.
    pub model_type: Option<String>,
}

impl Default for SiglipVisionConfig {
    fn default() -> Self {
        SiglipVisionConfig {
            hidden_size: 768,
            intermediate_size: 3072,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            num_channels: 3,
            image_size: 224,
            patch_size: 16,
            hidden_act: "gelu_pytorch_tanh".into(),
            layer_norm_eps: 1e-6,
            attention_dropout: 0.0,
            vision_use_head: None,
            model_type: Some("siglip_vision_model".into()),
        }
    }
}

impl SiglipVisionConfig {
    /// `google/siglip-so400m-patch14-384`'s tower: 27 layers of width 1152, MLP 4304, 16 heads,
    /// 384 px in 14 px patches (729 tokens).
    pub fn so400m_patch14_384() -> Self {
        SiglipVisionConfig {
            hidden_size: 1152,
            intermediate_size: 4304,
            num_hidden_layers: 27,
            num_attention_heads: 16,
            image_size: 384,
            patch_size: 14,
            ..Default::default()
        }
    }

    /// Reads a vision-only `config.json`, or the `vision_config` of a full SigLIP or VLM one.
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
        let shape = self.shape();
        shape.validate()?;
        if self.patch_size <= 0 || self.image_size < self.patch_size {
            return Err(config_error(format!(
                "`image_size` {} and `patch_size` {} give no patch",
                self.image_size, self.patch_size
            )));
        }
        crate::Activation::parse(&self.hidden_act)?;
        Ok(())
    }

    /// Patches per side at `image_size`.
    pub fn grid(&self) -> i64 {
        self.image_size / self.patch_size
    }

    /// Whether the attention-pooling head exists.
    pub fn has_head(&self) -> bool {
        self.vision_use_head.unwrap_or(true)
    }

    fn shape(&self) -> VitShape {
        VitShape {
            hidden: self.hidden_size,
            intermediate: self.intermediate_size,
            heads: self.num_attention_heads,
            layers: self.num_hidden_layers,
            eps: self.layer_norm_eps,
            std: 0.02,
        }
    }
}

/// The attention-pooling head (`SiglipMultiheadAttentionPoolingHead`): a learned probe attends
/// over every token through `torch.nn.MultiheadAttention`, then a residual MLP behind a layer norm.
#[derive(Debug)]
struct PoolingHead {
    /// `[1, 1, hidden]`.
    probe: Tensor,
    /// `[3 hidden, hidden]`: the query, key and value projections stacked.
    in_proj_weight: Tensor,
    /// `[3 hidden]`.
    in_proj_bias: Tensor,
    out_proj: Linear,
    layernorm: LayerNorm,
    mlp: Mlp,
    heads: i64,
}

impl PoolingHead {
    fn new(p: &tch::nn::Path, c: &SiglipVisionConfig, act: crate::Activation) -> Self {
        let h = c.hidden_size;
        let attn = p.sub("attention");
        let normal = Init::Randn {
            mean: 0.0,
            stdev: 0.02,
        };
        PoolingHead {
            probe: p.var("probe", &[1, 1, h], normal),
            in_proj_weight: attn.var("in_proj_weight", &[3 * h, h], normal),
            in_proj_bias: attn.var("in_proj_bias", &[3 * h], Init::Const(0.0)),
            out_proj: Linear::new(&attn.sub("out_proj"), h, h, true, 0.02),
            layernorm: LayerNorm::new(&p.sub("layernorm"), h, c.layer_norm_eps),
            mlp: Mlp::new(&p.sub("mlp"), &c.shape(), act),
            heads: c.num_attention_heads,
        }
    }

    /// `[batch, hidden]`: the probe's attention over `x` `[batch, tokens, hidden]`.
    fn forward(&self, x: &Tensor) -> Tensor {
        let (b, l, h) = x.size3().expect("[batch, tokens, hidden]");
        let d = h / self.heads;
        let w = self.in_proj_weight.chunk(3, 0);
        let bias = self.in_proj_bias.chunk(3, 0);
        let project = |t: &Tensor, i: usize| t.linear(&w[i], Some(&bias[i]));
        let probe = self.probe.expand([b, 1, h], false);
        let split = |t: Tensor, n: i64| t.view([b, n, self.heads, d]).transpose(1, 2);
        let q = split(project(&probe, 0), 1);
        let k = split(project(x, 1), l);
        let v = split(project(x, 2), l);
        let attended = Tensor::scaled_dot_product_attention::<Tensor>(
            &q, &k, &v, None, 0.0, false, None, false,
        );
        let pooled = self
            .out_proj
            .forward(&attended.transpose(1, 2).reshape([b, 1, h]));
        let out = &pooled + self.mlp.forward(&self.layernorm.forward(&pooled));
        out.select(1, 0)
    }
}

/// The SigLIP vision tower (`SiglipVisionModel`), variables under `vision_model.`.
#[derive(Debug)]
pub struct SiglipVision {
    config: SiglipVisionConfig,
    patch_embedding: Tensor,
    patch_bias: Tensor,
    position_embedding: Tensor,
    layers: Vec<EncoderLayer>,
    post_layernorm: LayerNorm,
    /// Boxed: most towers in VLMs have none, and the tower enum stays small.
    head: Option<Box<PoolingHead>>,
}

impl SiglipVision {
    /// A randomly initialised tower under `root` (variables `vision_model.*`).
    pub fn new(root: &tch::nn::Path, config: &SiglipVisionConfig) -> Result<Self> {
        config.validate()?;
        let act = crate::Activation::parse(&config.hidden_act)?;
        let shape = config.shape();
        let p = root.sub("vision_model");
        let e = p.sub("embeddings");
        let h = config.hidden_size;
        let normal = |s: f64| Init::Randn {
            mean: 0.0,
            stdev: s,
        };
        let patch = e.sub("patch_embedding");
        Ok(SiglipVision {
            patch_embedding: patch.var(
                "weight",
                &[h, config.num_channels, config.patch_size, config.patch_size],
                normal(0.02),
            ),
            patch_bias: patch.var("bias", &[h], Init::Const(0.0)),
            position_embedding: e.sub("position_embedding").var(
                "weight",
                &[config.grid() * config.grid(), h],
                normal((h as f64).powf(-0.5)),
            ),
            layers: (0..config.num_hidden_layers)
                .map(|i| EncoderLayer::new(&p.sub("encoder").sub("layers").sub(i), &shape, act))
                .collect(),
            post_layernorm: LayerNorm::new(&p.sub("post_layernorm"), h, config.layer_norm_eps),
            head: config
                .has_head()
                .then(|| Box::new(PoolingHead::new(&p.sub("head"), config, act))),
            config: config.clone(),
        })
    }

    /// Loads a SigLIP checkpoint directory (vision-only or a full SigLIP with its text tower)
    /// onto `device` in `kind`.
    pub fn from_pretrained(
        dir: impl AsRef<Path>,
        device: Device,
        kind: Kind,
    ) -> Result<(VarStore, Self)> {
        let dir = dir.as_ref();
        let config = SiglipVisionConfig::from_file(dir)?;
        let checkpoint = Checkpoint::open(dir)?;
        let (vs, tower) = foundation::build(device, kind, |root| Self::new(root, &config))?;
        tower.load(&vs, &checkpoint)?;
        Ok((vs, tower))
    }

    /// Fills the tower's variables from `checkpoint`, wherever the tower sits: transformers 5's
    /// bare layout (`embeddings.*`), a vision-only or full SigLIP checkpoint (`vision_model.*`,
    /// the text tower beside it skipped), or inside a VLM (`vision_tower.*`,
    /// `vision_tower.vision_model.*`, `model.vision_tower.*`). Every tensor under the tower's
    /// prefix must be taken.
    pub fn load(&self, vs: &VarStore, checkpoint: &Checkpoint) -> Result<()> {
        let anchor = "embeddings.patch_embedding.weight";
        let prefix = checkpoint.require_prefix(anchor, &format!("vision_model.{anchor}"))?;
        let used = checkpoint.load_into(vs, |name| {
            let rest = name.strip_prefix("vision_model.").unwrap_or(name);
            vec![format!("{prefix}{rest}")]
        })?;
        checkpoint.reject_unused(&prefix, &used, |_| false)?;
        Ok(())
    }

    /// The configuration.
    pub fn config(&self) -> &SiglipVisionConfig {
        &self.config
    }

    /// Runs the tower on `pixel_values` `[batch, 3, height, width]`; a size other than
    /// `image_size` (a multiple of the patch size) interpolates the position embeddings as
    /// transformers' `interpolate_pos_encoding=True` does (bicubic, `align_corners=False`).
    pub fn forward(&self, pixel_values: &Tensor) -> Result<VisionOutput> {
        let c = &self.config;
        let size = pixel_values.size();
        let fits = size.len() == 4
            && size[1] == c.num_channels
            && size[2] >= c.patch_size
            && size[3] >= c.patch_size
            && size[2] % c.patch_size == 0
            && size[3] % c.patch_size == 0;
        if !fits {
            return Err(Error::Input(format!(
                "SigLIP expects pixel values [batch, {}, height, width] with sides multiples of {}, \
                 got {size:?}",
                c.num_channels, c.patch_size
            )));
        }
        let weight = &self.patch_embedding;
        let pixels = pixel_values
            .to_device(weight.device())
            .to_kind(weight.kind());
        let patches = pixels
            .conv2d(
                weight,
                Some(&self.patch_bias),
                [c.patch_size, c.patch_size],
                [0, 0],
                [1, 1],
                1,
            )
            .flatten(2, -1)
            .transpose(1, 2);
        let grid = (size[2] / c.patch_size, size[3] / c.patch_size);
        let mut x = patches + self.positions(grid).unsqueeze(0);
        let mut hidden_states = vec![x.shallow_clone()];
        for layer in &self.layers {
            x = layer.forward(&x);
            hidden_states.push(x.shallow_clone());
        }
        let last_hidden_state = self.post_layernorm.forward(&x);
        let pooler_output = self.head.as_ref().map(|h| h.forward(&last_hidden_state));
        Ok(VisionOutput {
            last_hidden_state,
            hidden_states,
            pooler_output,
        })
    }

    /// The position embeddings `[rows * cols, hidden]` for a `(rows, cols)` patch grid: the
    /// learned ones, or them resized bicubically from the square grid they were trained for.
    fn positions(&self, (rows, cols): (i64, i64)) -> Tensor {
        let trained = self.config.grid();
        if rows == trained && cols == trained {
            return self.position_embedding.shallow_clone();
        }
        let h = self.config.hidden_size;
        self.position_embedding
            .reshape([1, trained, trained, h])
            .permute([0, 3, 1, 2])
            .upsample_bicubic2d([rows, cols], false, None, None)
            .permute([0, 2, 3, 1])
            .reshape([rows * cols, h])
    }
}
