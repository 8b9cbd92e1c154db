//! Talking to a LLaVA model about one image: what `llava generate` and `llava chat` run.

use std::path::Path;

use gemma_lm::{GemmaTokenizer, GenerationConfig, Message, TextStreamer};
use llava_model::LlavaModel;
use tch::{Device, Kind, Tensor};
use vision_encoders::processing::{self, ImageProcessor};

use crate::{Error, Result};

/// A model, its tokenizer and one preprocessed image, ready for a conversation.
#[derive(Debug)]
pub struct ImageChat {
    model: LlavaModel,
    tokenizer: GemmaTokenizer,
    pixels: Tensor,
    tokens_per_image: i64,
}

impl ImageChat {
    /// Loads the LLaVA directory `model_dir` (with its `tokenizer.json`), with the PEFT adapter in
    /// `adapter` merged when given, and the image at `image`. `scale_image_features` overrides the
    /// config's choice (see `LlavaConfig::image_features_scaled`).
    pub fn open(
        model_dir: &Path,
        adapter: Option<&Path>,
        image: &Path,
        device: Device,
        kind: Kind,
        scale_image_features: Option<bool>,
    ) -> Result<Self> {
        let mut model = LlavaModel::from_pretrained_with_adapter(model_dir, adapter, device, kind)?;
        if let Some(scale) = scale_image_features {
            model.config.image_features_scaled = Some(scale);
        }
        let tokenizer = GemmaTokenizer::from_file(model_dir)?;
        let processor = ImageProcessor::new(model.image_processor(Some(model_dir))?);
        let (data, h, w) = processor.preprocess(&processing::open(image)?);
        let pixels = Tensor::from_slice(&data).view([1, 3, h as i64, w as i64]);
        let tokens_per_image = model.tokens_per_image(h as i64, w as i64);
        Ok(ImageChat {
            model,
            tokenizer,
            pixels,
            tokens_per_image,
        })
    }

    /// The model.
    pub fn model(&self) -> &LlavaModel {
        &self.model
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &GemmaTokenizer {
        &self.tokenizer
    }

    /// The prompt tokens for a conversation: the chat template with the image at the front of the
    /// first user turn, expanded to the image's tokens, ending with the model's turn opening (as
    /// the model's family writes prompts: [`llava_model::prompt`]).
    pub fn prompt(&self, conversation: &[Message]) -> Result<Vec<i64>> {
        let mut messages = conversation.to_vec();
        let first = messages.first_mut().ok_or_else(|| {
            Error::Unsupported("an empty conversation has nothing to answer".into())
        })?;
        let format = self
            .model
            .prompt_format(&self.tokenizer, self.tokens_per_image);
        first.content = format.mark_images(&first.content, 1);
        let ids = format.encode(&self.tokenizer, &messages)?;
        Ok(self.model.expand_image_tokens(&ids, self.tokens_per_image))
    }

    /// Generation settings with the chat's stop tokens.
    pub fn generation_config(&self, mut config: GenerationConfig) -> GenerationConfig {
        config.stop_tokens.extend(self.tokenizer.chat_stop_tokens());
        config.pad_token = self.tokenizer.pad;
        config
    }

    /// Answers the last user turn of `conversation`, passing text to `on_text` as it is generated.
    /// Returns the answer's text and its number of tokens.
    pub fn answer(
        &self,
        conversation: &[Message],
        config: &GenerationConfig,
        mut on_text: impl FnMut(&str),
    ) -> Result<(String, usize)> {
        let prompt = self.prompt(conversation)?;
        let config = self.generation_config(config.clone());
        let mut streamer = TextStreamer::new(&self.tokenizer);
        let mut stream_error = None;
        let output =
            self.model.generate(
                &[prompt],
                Some(&self.pixels),
                &config,
                |_, token| match streamer.push(token) {
                    Ok(piece) => on_text(&piece),
                    Err(e) => stream_error = Some(e),
                },
            )?;
        if let Some(e) = stream_error {
            return Err(e.into());
        }
        let tokens = &output[0];
        let text = self.tokenizer.decode(tokens, true)?;
        Ok((text.trim().to_string(), tokens.len()))
    }
}
