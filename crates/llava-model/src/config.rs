//! `LlavaConfig`: the Hugging Face `config.json` of `LlavaForConditionalGeneration`.

use std::path::Path;

use gemma_lm::GemmaConfig;
use serde::{Deserialize, Serialize};
use vision_encoders::processing::{ProcessorConfig, Resize};
use vision_encoders::{FeatureSelect, SelectStrategy, VisionConfig};

use crate::{Error, Result};

/// Which composite model a `config.json` describes (its `model_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// `llava`: `LlavaForConditionalGeneration` (LLaVA-1.5, LLaVA-Gemma, LLaVA with SigLIP).
    Llava,
    /// `gemma3`: `Gemma3ForConditionalGeneration`: SigLIP, a pooling projector, each image's
    /// tokens between `<start_of_image>` and `<end_of_image>` attending to each other both ways.
    Gemma3,
    /// `paligemma`: `PaliGemmaForConditionalGeneration`: SigLIP, one linear layer, the image and
    /// the prefix one bidirectional block, positions from 1.
    PaliGemma,
}

impl Family {
    /// The family of `model_type` (`None`: LLaVA, as configs without one are).
    pub fn of(model_type: Option<&str>) -> Result<Self, String> {
        match model_type {
            None | Some("llava") => Ok(Family::Llava),
            Some("gemma3") => Ok(Family::Gemma3),
            Some("paligemma") => Ok(Family::PaliGemma),
            Some(other) => Err(format!(
                "model_type `{other}` is not a vision-language model we build (llava, gemma3, paligemma)"
            )),
        }
    }

    /// Its `model_type`.
    pub fn model_type(self) -> &'static str {
        match self {
            Family::Llava => "llava",
            Family::Gemma3 => "gemma3",
            Family::PaliGemma => "paligemma",
        }
    }

    /// Its transformers class.
    pub fn architecture(self) -> &'static str {
        match self {
            Family::Llava => "LlavaForConditionalGeneration",
            Family::Gemma3 => "Gemma3ForConditionalGeneration",
            Family::PaliGemma => "PaliGemmaForConditionalGeneration",
        }
    }
}

/// One layer or several (their features concatenated), as `vision_feature_layer` may be.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum FeatureLayers {
    /// A single layer (LLaVA: -2).
    One(i64),
    /// Several layers, concatenated along the feature axis.
    Many(Vec<i64>),
}

impl FeatureLayers {
    /// The layers as a list.
    pub fn to_vec(&self) -> Vec<i64> {
        match self {
            FeatureLayers::One(l) => vec![*l],
            FeatureLayers::Many(ls) => ls.clone(),
        }
    }
}

/// The configuration of a LLaVA model, as transformers reads `config.json` (both the
/// `image_token_index` and `image_token_id` spellings). Fields we do not use are kept in `extra`
/// and written back unchanged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LlavaConfig {
    /// The vision tower's configuration (`model_type` picks CLIP or DINOv2).
    pub vision_config: serde_json::Value,
    /// The language model's configuration.
    pub text_config: GemmaConfig,
    /// The id of `<image>` (transformers 4 name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_token_index: Option<i64>,
    /// The id of `<image>` (transformers 5 name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_token_id: Option<i64>,
    /// How many tokens one image becomes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_seq_length: Option<i64>,
    /// Which hidden state(s) of the tower feed the connector.
    #[serde(default = "default_layer")]
    pub vision_feature_layer: FeatureLayers,
    /// `default` (drop CLS) or `full`.
    #[serde(default = "default_strategy")]
    pub vision_feature_select_strategy: String,
    /// The connector's activation (`gelu`).
    #[serde(default = "default_act")]
    pub projector_hidden_act: String,
    /// Whether the connector's linear layers have biases.
    #[serde(default = "default_true")]
    pub multimodal_projector_bias: bool,
    /// The connector architecture in LLaVA's spelling; transformers' LLaVA is always `mlp2x_gelu`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub projector_type: Option<String>,
    /// Whether projected image features are scaled by `sqrt(hidden_size)` like token embeddings,
    /// as the original LLaVA-Gemma code did (and Intel's released checkpoints need). transformers 5
    /// inserts them unscaled, the default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_features_scaled: Option<bool>,
    /// Everything else (`model_type`, `architectures`, `tie_word_embeddings`, …).
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

fn default_layer() -> FeatureLayers {
    FeatureLayers::One(-2)
}
fn default_strategy() -> String {
    "default".into()
}
fn default_act() -> String {
    "gelu".into()
}
fn default_true() -> bool {
    true
}

impl LlavaConfig {
    /// A configuration for `vision` and `text` with LLaVA-1.5's choices (layer -2, CLS dropped,
    /// `mlp2x_gelu`).
    pub fn new(
        vision: &VisionConfig,
        text: GemmaConfig,
        image_token: i64,
        image_seq_length: i64,
    ) -> Self {
        let vision_config = match vision {
            VisionConfig::Clip(c) => serde_json::to_value(c),
            VisionConfig::Dinov2(c) => serde_json::to_value(c),
            VisionConfig::Siglip(c) => serde_json::to_value(c),
        }
        .expect("configs serialise");
        let mut extra = serde_json::Map::new();
        extra.insert("model_type".into(), "llava".into());
        extra.insert(
            "architectures".into(),
            serde_json::json!(["LlavaForConditionalGeneration"]),
        );
        extra.insert(
            "tie_word_embeddings".into(),
            text.tie_word_embeddings.into(),
        );
        LlavaConfig {
            vision_config,
            text_config: text,
            image_token_index: Some(image_token),
            image_token_id: None,
            image_seq_length: Some(image_seq_length),
            vision_feature_layer: default_layer(),
            // A tower without a class token keeps every patch (transformers' `full`).
            vision_feature_select_strategy: if vision.has_class_token() {
                default_strategy()
            } else {
                "full".into()
            },
            projector_hidden_act: default_act(),
            multimodal_projector_bias: true,
            projector_type: None,
            image_features_scaled: None,
            extra,
        }
    }

    /// A `Gemma3ForConditionalGeneration` configuration: `vision` (SigLIP), `text`, `<image>` =
    /// `image_token` between `<start_of_image>` = `boi` and `<end_of_image>` = `eoi`, each image
    /// pooled to `mm_tokens_per_image` tokens.
    pub fn gemma3(
        vision: &VisionConfig,
        text: GemmaConfig,
        image_token: i64,
        (boi, eoi): (i64, i64),
        mm_tokens_per_image: i64,
    ) -> Self {
        let mut config = Self::new(vision, text, image_token, mm_tokens_per_image);
        config.set_family(Family::Gemma3);
        for (key, value) in [
            ("boi_token_index", boi),
            ("eoi_token_index", eoi),
            ("mm_tokens_per_image", mm_tokens_per_image),
        ] {
            config.extra.insert(key.into(), value.into());
        }
        config
    }

    /// A `PaliGemmaForConditionalGeneration` configuration: `vision` (SigLIP), `text`, `<image>` =
    /// `image_token`, every patch one token.
    pub fn paligemma(vision: &VisionConfig, text: GemmaConfig, image_token: i64) -> Self {
        let patches = (vision.image_size() / vision.patch_size()).pow(2);
        let hidden = text.hidden_size;
        // As transformers' `PaliGemmaConfig` sets it: the prefix attends both ways.
        let text = GemmaConfig {
            use_bidirectional_attention: Some(true),
            ..text
        };
        let mut config = Self::new(vision, text, image_token, patches);
        config.set_family(Family::PaliGemma);
        for key in ["projection_dim", "hidden_size"] {
            config.extra.insert(key.into(), hidden.into());
        }
        config
    }

    fn set_family(&mut self, family: Family) {
        self.extra
            .insert("model_type".into(), family.model_type().into());
        self.extra.insert(
            "architectures".into(),
            serde_json::json!([family.architecture()]),
        );
    }

    /// Reads `config.json` (or a model directory holding one) and checks it.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let mut path = path.as_ref().to_path_buf();
        if path.is_dir() {
            path = path.join("config.json");
        }
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        let config: LlavaConfig = serde_json::from_str(&text).map_err(|e| Error::Config {
            path: path.clone(),
            message: e.to_string(),
        })?;
        config
            .check()
            .map_err(|message| Error::Config { path, message })?;
        Ok(config)
    }

    pub(crate) fn check(&self) -> Result<(), String> {
        let family = Family::of(self.extra.get("model_type").and_then(|v| v.as_str()))?;
        self.lm_config().validate().map_err(|e| e.to_string())?;
        let vision = self.vision().map_err(|e| e.to_string())?;
        if family != Family::Llava && !matches!(vision, VisionConfig::Siglip(_)) {
            return Err(format!(
                "{} needs a SigLIP vision tower (`siglip_vision_model`)",
                family.architecture()
            ));
        }
        match family {
            Family::Gemma3 => {
                let tokens = self.mm_tokens_per_image();
                let side = (tokens as f64).sqrt().round() as i64;
                let patches = vision.image_size() / vision.patch_size();
                if tokens <= 0 || side * side != tokens || patches % side != 0 {
                    return Err(format!(
                        "mm_tokens_per_image {tokens} must be a square whose root divides the tower's \
                         {patches} patches per side"
                    ));
                }
            }
            Family::PaliGemma => {
                let projection = self.extra_int("projection_dim");
                if projection.is_some_and(|d| d != self.text_config.hidden_size) {
                    return Err(format!(
                        "projection_dim {} must equal the language model's hidden_size {}",
                        projection.unwrap_or_default(),
                        self.text_config.hidden_size
                    ));
                }
            }
            Family::Llava => {}
        }
        self.select().map_err(|e| e.to_string())?;
        self.image_token()
            .ok_or("no `image_token_index` or `image_token_id`")?;
        if self.projector_hidden_act != "gelu" {
            return Err(format!(
                "projector_hidden_act `{}` is not supported (gelu)",
                self.projector_hidden_act
            ));
        }
        Ok(())
    }

    /// The language model's configuration as the decoder runs it: PaliGemma's text config says
    /// `use_bidirectional_attention` (transformers sets it), which the composite model carries out
    /// as its prefix block (see `LlavaModel::blocks`), so the decoder itself stays causal.
    pub fn lm_config(&self) -> GemmaConfig {
        let mut text = self.text_config.clone();
        if self.family() == Family::PaliGemma {
            text.use_bidirectional_attention = None;
        }
        text
    }

    /// The model family (`model_type`, checked when the config was read).
    pub fn family(&self) -> Family {
        Family::of(self.extra.get("model_type").and_then(|v| v.as_str())).unwrap_or(Family::Llava)
    }

    /// An integer of the configuration's other keys.
    pub fn extra_int(&self, key: &str) -> Option<i64> {
        self.extra.get(key).and_then(serde_json::Value::as_i64)
    }

    /// Gemma 3: the tokens each image becomes (`mm_tokens_per_image`, 256 by default).
    pub fn mm_tokens_per_image(&self) -> i64 {
        self.extra_int("mm_tokens_per_image").unwrap_or(256)
    }

    /// Gemma 3: the ids of `<start_of_image>` and `<end_of_image>` (`boi_token_index`,
    /// `eoi_token_index`, or their `_id` spellings).
    pub fn image_delimiters(&self) -> Option<(i64, i64)> {
        let id = |a: &str, b: &str| self.extra_int(a).or_else(|| self.extra_int(b));
        Some((
            id("boi_token_index", "boi_token_id")?,
            id("eoi_token_index", "eoi_token_id")?,
        ))
    }

    /// The configuration as `config.json` holds it: LLaVA's own keys (feature layer, select
    /// strategy, projector) only for LLaVA, as transformers writes each family's.
    pub fn to_json(&self) -> serde_json::Value {
        let mut json = serde_json::to_value(self).expect("configs serialise");
        if self.family() != Family::Llava {
            let map = json.as_object_mut().expect("an object");
            for key in [
                "vision_feature_layer",
                "vision_feature_select_strategy",
                "projector_hidden_act",
                "multimodal_projector_bias",
                "projector_type",
                "image_features_scaled",
                "image_seq_length",
            ] {
                map.remove(key);
            }
        }
        json
    }

    /// The id of `<image>`.
    pub fn image_token(&self) -> Option<i64> {
        self.image_token_id.or(self.image_token_index)
    }

    /// The vision tower's configuration.
    pub fn vision(&self) -> Result<VisionConfig> {
        Ok(VisionConfig::from_value(self.vision_config.clone())?)
    }

    /// The feature selection (for the first layer; see [`feature_layers`](Self::feature_layers)).
    pub fn select(&self) -> Result<FeatureSelect> {
        let strategy = SelectStrategy::parse(&self.vision_feature_select_strategy)?;
        Ok(FeatureSelect {
            layer: self.feature_layers()[0],
            strategy,
        })
    }

    /// The image processor the model expects: `preprocessor_config.json` in `dir` when there is
    /// one, else the tower's own (CLIP: shortest edge and crop at `image_size`, CLIP statistics;
    /// DINOv2: a crop that gives `image_seq_length` tokens, the shortest edge at 256/224 of it,
    /// ImageNet statistics; SigLIP: a square resize, bicubic, Gemma 3's bilinear). LLaVA's images
    /// are padded to squares unless `config.json` says `"image_aspect_ratio"` is something other
    /// than `pad` (LLaVA-1.5 pads); Gemma 3's and PaliGemma's never are.
    pub fn image_processor(&self, dir: Option<&std::path::Path>) -> Result<ProcessorConfig> {
        // Gemma 3's and PaliGemma's processors resize without padding.
        let pad = self.family() == Family::Llava
            && self
                .extra
                .get("image_aspect_ratio")
                .and_then(|v| v.as_str())
                .is_none_or(|v| v == "pad");
        if let Some(file) = dir
            .map(|d| d.join("preprocessor_config.json"))
            .filter(|f| f.exists())
        {
            let config = ProcessorConfig::from_file(&file)?;
            return Ok(ProcessorConfig {
                pad_to_square: pad,
                ..config
            });
        }
        let side = self.image_side()? as u32;
        let config = match self.vision()? {
            VisionConfig::Clip(_) => ProcessorConfig {
                resize: Some(Resize::ShortestEdge(side)),
                crop: Some((side, side)),
                ..ProcessorConfig::clip_336()
            },
            VisionConfig::Dinov2(_) => ProcessorConfig {
                resize: Some(Resize::ShortestEdge(side * 256 / 224)),
                crop: Some((side, side)),
                ..ProcessorConfig::dinov2_224()
            },
            VisionConfig::Siglip(_) if self.family() == Family::Gemma3 => {
                ProcessorConfig::gemma3(side)
            }
            VisionConfig::Siglip(_) => ProcessorConfig::siglip(side),
        };
        Ok(ProcessorConfig {
            pad_to_square: pad,
            ..config
        })
    }

    /// The side of the square images the tower is given: CLIP's and SigLIP's `image_size`; for
    /// DINOv2 (which takes any grid) the side that yields `image_seq_length` patches, else its
    /// `image_size`.
    pub fn image_side(&self) -> Result<i64> {
        Ok(match self.vision()? {
            VisionConfig::Clip(c) => c.image_size,
            VisionConfig::Siglip(c) => c.image_size,
            VisionConfig::Dinov2(c) => match self.image_seq_length {
                Some(n) if n > 0 => ((n as f64).sqrt() as i64) * c.patch_size,
                _ => c.image_size,
            },
        })
    }

    /// The feature layers.
    pub fn feature_layers(&self) -> Vec<i64> {
        let layers = self.vision_feature_layer.to_vec();
        if layers.is_empty() { vec![-2] } else { layers }
    }

    /// The connector architecture: the family's (PaliGemma's linear layer, Gemma 3's pooling
    /// projector), or LLaVA's `projector_type`.
    pub fn projector(&self) -> Result<connector::ProjectorType> {
        Ok(match self.family() {
            Family::Gemma3 => connector::ProjectorType::Gemma3 {
                tokens_per_side: (self.mm_tokens_per_image() as f64).sqrt().round() as i64,
            },
            Family::PaliGemma => connector::ProjectorType::PaliGemma,
            Family::Llava => connector::ProjectorType::parse(
                self.projector_type.as_deref().unwrap_or("mlp2x_gelu"),
            )?,
        })
    }
}
