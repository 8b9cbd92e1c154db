//! `LlavaModel`: the vision tower, the connector and Gemma, as `LlavaForConditionalGeneration`,
//! `Gemma3ForConditionalGeneration` and `PaliGemmaForConditionalGeneration` compute them.
//!
//! ```text
//! features = connector(tower(pixels).hidden_states[-2][:, 1:])      # no autograd through the tower
//!            (Gemma 3, PaliGemma: the tower's last_hidden_state)
//! embeds   = gemma.embed(ids), with the rows of <image> tokens replaced by `features`, in order
//! logits   = gemma(embeds)      # causal; Gemma 3: each image's tokens see each other both ways;
//!                               # PaliGemma: the prefix (image + prompt) is one such block
//! ```

use gemma_lm::{Blocks, Gemma, GenerationConfig, IGNORE_INDEX, generate_from_embeds_with};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};
use vision_encoders::processing::ProcessorConfig;
use vision_encoders::{FeatureSelect, VisionTower};

use crate::config::{Family, LlavaConfig};
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
        Self::create(config, device, kind, false)
    }

    /// [`new`](Self::new) for a model whose weights are loaded next: variables are born in `kind`
    /// ([`foundation::build_to_load`]), never as an f32 copy.
    pub(crate) fn new_to_load(config: &LlavaConfig, device: Device, kind: Kind) -> Result<Self> {
        Self::create(config, device, kind, true)
    }

    fn create(config: &LlavaConfig, device: Device, kind: Kind, to_load: bool) -> Result<Self> {
        let vision = config.vision()?;
        let (vision_vs, tower) = foundation::build_with(device, kind, to_load, |root| {
            VisionTower::new(root, &vision)
        })?;
        let (lm_vs, mut lm) = foundation::build_with(device, kind, to_load, |root| {
            Gemma::new(root, &config.lm_config())
        })?;
        // transformers' composite heads call the LM head without the causal LM's final soft-cap.
        lm.set_final_logit_softcap(None);
        let family = config.family();
        if family == Family::PaliGemma {
            lm.set_position_offset(1);
        }
        let layers = match family {
            Family::Llava => config.feature_layers().len() as i64,
            Family::Gemma3 | Family::PaliGemma => 1,
        };
        let (connector_vs, connector) = foundation::build_with(device, kind, to_load, |root| {
            let (width, text) = (
                vision.hidden_size() * layers,
                config.text_config.hidden_size,
            );
            Ok::<_, Error>(match config.projector()? {
                connector::ProjectorType::Gemma3 { tokens_per_side } => {
                    connector::Connector::gemma3(
                        root,
                        tokens_per_side,
                        width,
                        text,
                        vision.layer_norm_eps(),
                    )
                }
                projector => connector::Connector::new(
                    root,
                    projector,
                    width,
                    text,
                    config.multimodal_projector_bias,
                    config.text_config.initializer_range,
                )?,
            })
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

    /// Quantizes the language model's linear layers and head (a tied head with its embedding)
    /// for inference as `how` says (`foundation::quant`: int8 per row or int4 per group, dense
    /// weights freed), on the CPU only; the tower and connector stay as they are. Returns how
    /// many decoder linear layers. [`save_pretrained`](Self::save_pretrained) then saves the
    /// codes.
    pub fn quantize(&mut self, how: foundation::quant::Quantization) -> Result<usize> {
        if self.device() != Device::Cpu {
            return Err(Error::Input(format!(
                "{how} weights run on the CPU (our kernels for them are CPU kernels)"
            )));
        }
        Ok(self.lm.quantize(how)?)
    }

    /// The form of the language model's quantized weights (`None`: dense).
    pub fn quantization(&self) -> Option<foundation::quant::Quantization> {
        self.lm.quantization()
    }

    /// The image processor this model expects ([`LlavaConfig::image_processor`]).
    pub fn image_processor(&self, dir: Option<&std::path::Path>) -> Result<ProcessorConfig> {
        self.config.image_processor(dir)
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

    /// The model family.
    pub fn family(&self) -> Family {
        self.config.family()
    }

    /// How many tokens one image becomes for a `height` x `width` input.
    pub fn tokens_per_image(&self, height: i64, width: i64) -> i64 {
        let patch = self.tower.patch_size();
        let keep_cls = self.family() == Family::Llava
            && self.config.vision_feature_select_strategy == "full"
            && self.tower.has_class_token();
        self.connector
            .tokens_for((height / patch) * (width / patch) + i64::from(keep_cls))
    }

    /// Projected image features `[images, tokens, hidden]` for `pixel_values` `[images, 3, H, W]`:
    /// the selected tower layer(s) (Gemma 3, PaliGemma: the tower's `last_hidden_state`) without
    /// autograd, then the connector (with autograd). With `image_features_scaled` they are
    /// multiplied by `sqrt(hidden_size)` as token embeddings are.
    pub fn image_features(&self, pixel_values: &Tensor) -> Result<Tensor> {
        let features = match self.family() {
            Family::Llava => self.selected_features(pixel_values)?,
            Family::Gemma3 | Family::PaliGemma => {
                tch::no_grad(|| self.tower.forward(pixel_values))?.last_hidden_state
            }
        };
        let kind = self.connector_kind();
        let projected = self
            .connector
            .forward(&features.to_kind(kind).to_device(self.device()))?;
        Ok(if self.config.image_features_scaled.unwrap_or(false) {
            projected * (self.config.text_config.hidden_size as f64).sqrt()
        } else {
            projected
        })
    }

    /// LLaVA's features: the selected layer(s) of the tower, concatenated.
    fn selected_features(&self, pixel_values: &Tensor) -> Result<Tensor> {
        let select = self.config.select()?;
        let mut per_layer = Vec::new();
        for layer in self.config.feature_layers() {
            per_layer.push(
                self.tower
                    .features(pixel_values, FeatureSelect { layer, ..select })?,
            );
        }
        Ok(Tensor::cat(&per_layer, -1))
    }

    /// The runs of tokens that attend to each other both ways, for `input_ids` `[batch, len]`
    /// (`padding`: 1 at real tokens). Gemma 3: each image's run of image tokens. PaliGemma: the
    /// prefix, which `token_types` marks with 0 (the processor's `token_type_ids`); without them
    /// every real token is prefix (a prompt to answer). LLaVA: none.
    pub fn blocks(
        &self,
        input_ids: &Tensor,
        token_types: Option<&Tensor>,
        padding: Option<&Tensor>,
    ) -> Option<Blocks> {
        let device = self.device();
        match self.family() {
            Family::Llava => None,
            Family::Gemma3 => {
                let images = match token_types {
                    Some(types) => types.to_device(device).ne(0),
                    None => input_ids.to_device(device).eq(self.image_token()),
                };
                Some(Blocks::from_runs(&images, false))
            }
            Family::PaliGemma => {
                let mut prefix = match token_types {
                    Some(types) => types.to_device(device).eq(0),
                    None => input_ids.to_device(device).ones_like().ne(0),
                };
                if let Some(padding) = padding {
                    prefix = prefix.logical_and(&padding.to_device(device).ne(0));
                }
                let ids = prefix.to_kind(Kind::Int64) - 1; // 0 in the prefix, -1 elsewhere
                Some(Blocks {
                    ids,
                    over_window: true,
                })
            }
        }
    }

    /// PaliGemma's token types of a training batch: the prefix (0) is every token before the
    /// first labelled one of its sample, the suffix (1) the rest, as PaliGemma's processor labels
    /// exactly the suffix. `segments` (packed batches) restart the count per sample.
    pub fn token_types_from_labels(labels: &Tensor, segments: Option<&Tensor>) -> Tensor {
        let labelled = labels.ne(IGNORE_INDEX).to_kind(Kind::Int64);
        let seen = labelled.cumsum(-1, Kind::Int64);
        let seen = match segments {
            None => seen,
            Some(segments) => {
                // Labelled tokens before each sample's start, subtracted from the running count.
                let segments = segments.to_device(labels.device());
                let previous = Tensor::cat(
                    &[
                        segments.narrow(-1, 0, 1).full_like(-2),
                        segments.narrow(-1, 0, segments.size()[1] - 1),
                    ],
                    -1,
                );
                let starts = segments.ne_tensor(&previous);
                let before = (&seen - &labelled).where_self(&starts, &seen.zeros_like());
                let (offset, _) = before.cummax(-1);
                seen - offset
            }
        };
        seen.gt(0).to_kind(Kind::Int64)
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
        self.forward_typed(input_ids, pixel_values, padding, None)
    }

    /// [`forward`](Self::forward) with the processor's `token_type_ids` (see
    /// [`blocks`](Self::blocks)).
    pub fn forward_typed(
        &self,
        input_ids: &Tensor,
        pixel_values: Option<&Tensor>,
        padding: Option<&Tensor>,
        token_types: Option<&Tensor>,
    ) -> Result<Tensor> {
        let embeds = self.embed(input_ids, pixel_values)?;
        let blocks = self.blocks(input_ids, token_types, padding);
        Ok(self
            .lm
            .forward_embeds_with(&embeds, padding, blocks.as_ref(), None, false)?
            .last_hidden_state)
    }

    /// The blocks of a training batch: PaliGemma's prefix ends where its labels start.
    fn train_blocks(
        &self,
        input_ids: &Tensor,
        labels: &Tensor,
        packing: Option<&gemma_lm::Packing>,
    ) -> Option<Blocks> {
        let types = (self.family() == Family::PaliGemma)
            .then(|| Self::token_types_from_labels(labels, packing.map(|p| &p.segments)));
        let padding = packing.map(|p| p.segments.ge(0));
        let mut blocks = self.blocks(input_ids, types.as_ref(), padding.as_ref())?;
        if let Some(packing) = packing {
            // One block per sample: block ids offset by the sample's index.
            let segments = packing.segments.to_device(blocks.ids.device());
            let ids = &blocks.ids + &segments * (input_ids.size()[1] + 1);
            blocks.ids = ids.where_self(&blocks.ids.ge(0), &blocks.ids);
        }
        Some(blocks)
    }

    /// The decoder's last hidden states for a training batch with its `labels`, packed (several
    /// samples per row, see `gemma_lm::Packing`) or not (right padding, causal attention).
    pub fn forward_train(
        &self,
        input_ids: &Tensor,
        pixel_values: Option<&Tensor>,
        labels: &Tensor,
        packing: Option<&gemma_lm::Packing>,
    ) -> Result<Tensor> {
        let embeds = self.embed(input_ids, pixel_values)?;
        let blocks = self.train_blocks(input_ids, labels, packing);
        Ok(self.lm.forward_train(&embeds, packing, blocks.as_ref())?)
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
        let blocks = self.train_blocks(input_ids, labels, packing);
        Ok(self
            .lm
            .backward_checkpointed_with(&embeds, packing, blocks.as_ref(), |hidden| {
                let (loss, count) = self.lm.loss(hidden, labels)?;
                Ok((&loss / divisor, (loss.detach(), count)))
            })?)
    }

    /// Replaces each lone `<image>` in `ids` by `per_image` copies, as LLaVA's processor does.
    /// Runs of several are left as they are: prompts of the families whose processors expand
    /// images in the text (Gemma 3, PaliGemma; see [`crate::prompt`]) come expanded.
    pub fn expand_image_tokens(&self, ids: &[i64], per_image: i64) -> Vec<i64> {
        let image = self.image_token();
        let is_image = |i: usize| ids.get(i) == Some(&image);
        ids.iter()
            .enumerate()
            .flat_map(|(i, &id)| {
                let lone = id == image && !(i > 0 && is_image(i - 1)) && !is_image(i + 1);
                let n = if lone { per_image as usize } else { 1 };
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
        let blocks = self.blocks(&ids, None, mask.as_ref());
        Ok(generate_from_embeds_with(
            &self.lm,
            &embeds,
            mask.as_ref(),
            blocks.as_ref(),
            config,
            on_token,
        )?)
    }
}
