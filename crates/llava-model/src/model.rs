//! `LlavaModel`: the vision tower, the connector and Gemma, as `LlavaForConditionalGeneration`.
//!
//! ```text
//! features = connector(tower(pixels).hidden_states[-2][:, 1:])      # no autograd through the tower
//! embeds   = gemma.embed(ids), with the rows of <image> tokens replaced by `features`, in order
//! logits   = gemma(embeds)
//! ```

use gemma_lm::{Gemma, GenerationConfig, generate_from_embeds};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};
use vision_encoders::processing::{ProcessorConfig, Resize};
use vision_encoders::{FeatureSelect, VisionTower};

use crate::config::LlavaConfig;
use crate::{Error, Result};

/// A LLaVA model. Each part has its own variable store, so that a training stage can freeze or
/// train each part as a whole (stage 1: connector only; stage 2: connector and language model).
#[derive(Debug)]
pub struct LlavaModel {
    /// The configuration (kept in sync with the parts, e.g. after the vocabulary grows).
    pub config: LlavaConfig,
    /// The vision tower's variables (frozen in both stages).
    pub vision_vs: VarStore,
    /// The vision tower.
    pub tower: VisionTower,
    /// The connector's variables.
    pub connector_vs: VarStore,
    /// The connector.
    pub connector: connector::Connector,
    /// The language model's variables.
    pub lm_vs: VarStore,
    /// The language model.
    pub lm: Gemma,
    /// The LoRA adapters' variables, when the language model carries adapters
    /// (see [`crate::peft`]).
    pub lora_vs: Option<VarStore>,
}

impl LlavaModel {
    /// A randomly initialised model for `config` on `device`, weights in `kind`.
    pub fn new(config: &LlavaConfig, device: Device, kind: Kind) -> Result<Self> {
        let vision = config.vision()?;
        let (vision_vs, tower) =
            foundation::build(device, kind, |root| VisionTower::new(root, &vision))?;
        let (lm_vs, mut lm) =
            foundation::build(device, kind, |root| Gemma::new(root, &config.text_config))?;
        // transformers' LLaVA head calls the LM head without the causal LM's final soft-cap.
        lm.set_final_logit_softcap(None);
        let layers = config.feature_layers().len() as i64;
        let (connector_vs, connector) = foundation::build(device, kind, |root| {
            connector::Connector::new(
                root,
                config.projector()?,
                vision.hidden_size() * layers,
                config.text_config.hidden_size,
                config.multimodal_projector_bias,
                config.text_config.initializer_range,
            )
            .map_err(crate::Error::from)
        })?;
        Ok(LlavaModel {
            config: config.clone(),
            vision_vs,
            tower,
            connector_vs,
            connector,
            lm_vs,
            lm,
            lora_vs: None,
        })
    }

    /// The image processor this model expects: `preprocessor_config.json` in `dir` when there is
    /// one, else the tower's own (CLIP: shortest edge and crop at `image_size`, CLIP statistics;
    /// DINOv2: a crop that gives `image_seq_length` tokens, the shortest edge at 256/224 of it,
    /// ImageNet statistics). Images are padded to squares unless `config.json` says
    /// `"image_aspect_ratio"` is something other than `pad` (LLaVA-1.5 pads).
    pub fn image_processor(&self, dir: Option<&std::path::Path>) -> Result<ProcessorConfig> {
        let pad = self
            .config
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
        let side = self.config.image_side()? as u32;
        let config = match &self.tower {
            VisionTower::Clip(_) => ProcessorConfig {
                resize: Some(Resize::ShortestEdge(side)),
                crop: Some((side, side)),
                ..ProcessorConfig::clip_336()
            },
            VisionTower::Dinov2(_) => ProcessorConfig {
                resize: Some(Resize::ShortestEdge(side * 256 / 224)),
                crop: Some((side, side)),
                ..ProcessorConfig::dinov2_224()
            },
            VisionTower::Siglip(_) => ProcessorConfig::siglip(side),
        };
        Ok(ProcessorConfig {
            pad_to_square: pad,
            ..config
        })
    }

    /// The id of `<image>`.
    pub fn image_token(&self) -> i64 {
        self.config
            .image_token()
            .expect("checked when the config was read")
    }

    /// The device of the language model.
    pub fn device(&self) -> Device {
        self.lm.device()
    }

    /// How many tokens one image becomes for a `height` x `width` input.
    pub fn tokens_per_image(&self, height: i64, width: i64) -> i64 {
        let patch = self.tower.patch_size();
        let keep_cls =
            self.config.vision_feature_select_strategy == "full" && self.tower.has_class_token();
        (height / patch) * (width / patch) + i64::from(keep_cls)
    }

    /// Projected image features `[images, tokens, hidden]` for `pixel_values` `[images, 3, H, W]`:
    /// the selected tower layer(s) without autograd, then the connector (with autograd). With
    /// `image_features_scaled` they are multiplied by `sqrt(hidden_size)` as token embeddings are.
    pub fn image_features(&self, pixel_values: &Tensor) -> Result<Tensor> {
        let select = self.config.select()?;
        let mut per_layer = Vec::new();
        for layer in self.config.feature_layers() {
            per_layer.push(
                self.tower
                    .features(pixel_values, FeatureSelect { layer, ..select })?,
            );
        }
        let features = Tensor::cat(&per_layer, -1);
        let kind = self.connector_kind();
        let projected = self
            .connector
            .forward(&features.to_kind(kind).to_device(self.device()));
        Ok(if self.config.image_features_scaled.unwrap_or(false) {
            projected * (self.config.text_config.hidden_size as f64).sqrt()
        } else {
            projected
        })
    }

    fn connector_kind(&self) -> Kind {
        self.connector_vs
            .trainable_variables()
            .first()
            .map_or(self.lm.kind(), Tensor::kind)
    }

    /// Input embeddings for `input_ids` `[batch, len]` in which each image appears as its run of
    /// `<image>` tokens; their rows become the images' features, in order (several images per
    /// batch, text-only rows alike). The number of `<image>` tokens must equal the features'.
    ///
    /// Ids on the host are counted there and uploaded without waiting for the device; ids already
    /// on the device are counted there (which waits for it).
    pub fn embed(&self, input_ids: &Tensor, pixel_values: Option<&Tensor>) -> Result<Tensor> {
        let image_tokens = input_ids
            .eq(self.image_token())
            .sum(Kind::Int64)
            .int64_value(&[]);
        let ids = foundation::device::upload(input_ids, self.device());
        let is_image = ids.eq(self.image_token());
        let embeds = self.lm.embed(&ids.masked_fill(&is_image, 0));
        let Some(pixels) = pixel_values else {
            if image_tokens > 0 {
                return Err(Error::Input(format!(
                    "the input has {image_tokens} <image> tokens but no images were given"
                )));
            }
            return Ok(embeds);
        };
        let features = self.image_features(pixels)?;
        let (images, per_image) = (features.size()[0], features.size()[1]);
        if image_tokens != images * per_image {
            return Err(Error::Input(format!(
                "the input has {image_tokens} <image> tokens, but {images} image(s) of {per_image} features each \
                 need {}",
                images * per_image
            )));
        }
        let mask = is_image.unsqueeze(-1).expand_as(&embeds);
        Ok(embeds.masked_scatter(&mask, &features.to_kind(embeds.kind())))
    }

    /// The decoder's last hidden states for a batch (see [`embed`](Self::embed) and
    /// `Gemma::forward_embeds` for `padding`).
    pub fn forward(
        &self,
        input_ids: &Tensor,
        pixel_values: Option<&Tensor>,
        padding: Option<&Tensor>,
    ) -> Result<Tensor> {
        let embeds = self.embed(input_ids, pixel_values)?;
        Ok(self
            .lm
            .forward_embeds(&embeds, padding, None, false)?
            .last_hidden_state)
    }

    /// The decoder's last hidden states for a training batch, packed (several samples per row,
    /// see `gemma_lm::Packing`) or not (right padding, causal attention).
    pub fn forward_train(
        &self,
        input_ids: &Tensor,
        pixel_values: Option<&Tensor>,
        packing: Option<&gemma_lm::Packing>,
    ) -> Result<Tensor> {
        let Some(packing) = packing else {
            return self.forward(input_ids, pixel_values, None);
        };
        let embeds = self.embed(input_ids, pixel_values)?;
        Ok(self.lm.forward_packed(&embeds, packing)?)
    }

    /// Logits over the vocabulary.
    pub fn logits(&self, hidden: &Tensor) -> Tensor {
        self.lm.logits(hidden)
    }

    /// The causal-LM loss at labelled positions, and their number (see `Gemma::loss`).
    pub fn loss(&self, hidden: &Tensor, labels: &Tensor) -> Result<(Tensor, i64)> {
        Ok(self.lm.loss(hidden, labels)?)
    }

    /// One micro-batch's loss with activation checkpointing: embeds, then runs the decoder
    /// keeping only each layer's input and backpropagates `loss / divisor` (see
    /// `Gemma::backward_checkpointed`). Returns the loss (detached) and the labelled positions.
    pub fn loss_backward_checkpointed(
        &self,
        input_ids: &Tensor,
        pixel_values: Option<&Tensor>,
        labels: &Tensor,
        divisor: f64,
    ) -> Result<(Tensor, i64)> {
        self.loss_backward_checkpointed_packed(input_ids, pixel_values, labels, divisor, None)
    }

    /// [`loss_backward_checkpointed`](Self::loss_backward_checkpointed) for a batch that may be
    /// packed.
    pub fn loss_backward_checkpointed_packed(
        &self,
        input_ids: &Tensor,
        pixel_values: Option<&Tensor>,
        labels: &Tensor,
        divisor: f64,
        packing: Option<&gemma_lm::Packing>,
    ) -> Result<(Tensor, i64)> {
        let embeds = self.embed(input_ids, pixel_values)?;
        Ok(self
            .lm
            .backward_checkpointed_packed(&embeds, packing, |hidden| {
                let (loss, count) = self.lm.loss(hidden, labels)?;
                Ok((&loss / divisor, (loss.detach(), count)))
            })?)
    }

    /// Replaces each single `<image>` in `ids` by `per_image` copies, as the HF processor does.
    pub fn expand_image_tokens(&self, ids: &[i64], per_image: i64) -> Vec<i64> {
        let image = self.image_token();
        ids.iter()
            .flat_map(|&id| {
                let n = if id == image { per_image as usize } else { 1 };
                std::iter::repeat_n(id, n)
            })
            .collect()
    }

    /// Generates continuations of `prompts` (token ids with expanded `<image>` runs), the images of
    /// all prompts in order in `pixel_values`. `on_token(row, token)` sees each token as it comes.
    pub fn generate(
        &self,
        prompts: &[Vec<i64>],
        pixel_values: Option<&Tensor>,
        config: &GenerationConfig,
        on_token: impl FnMut(usize, i64),
    ) -> Result<Vec<Vec<i64>>> {
        if prompts.is_empty() || prompts.iter().any(Vec::is_empty) {
            return Err(Error::Input("every prompt needs at least one token".into()));
        }
        let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
        let context = self.config.text_config.max_position_embeddings as usize;
        if longest + config.max_new_tokens > context {
            return Err(Error::Input(format!(
                "a prompt of {longest} tokens plus {} new tokens exceeds the model's context of {context}",
                config.max_new_tokens
            )));
        }
        let (ids, mask) = gemma_lm::generation::left_pad(prompts, config.pad_token);
        let embeds = tch::no_grad(|| self.embed(&ids, pixel_values))?;
        Ok(generate_from_embeds(
            &self.lm,
            &embeds,
            mask.as_ref(),
            config,
            on_token,
        )?)
    }
}
