//! Talking to a LLaVA model about its images: what `llava generate` and `llava chat` run.

use std::path::{Path, PathBuf};

use gemma_lm::{GemmaTokenizer, GenerationConfig, Message, TextStreamer};
use llava_model::LlavaModel;
use tch::{Device, Kind, Tensor};
use vision_encoders::processing::{self, ImageProcessor, PanAndScan};

use crate::{Error, Result};

/// A model, its tokenizer and its preprocessed images, ready for a conversation.
#[derive(Debug)]
pub struct ImageChat {
    model: LlavaModel,
    tokenizer: GemmaTokenizer,
    /// Every view of every image, `[views, 3, h, w]`.
    pixels: Tensor,
    /// Pan-and-scan crops of each image (0: the image alone).
    crops: Vec<usize>,
    tokens_per_image: i64,
    processor: ImageProcessor,
}

/// Quantizes `model`'s weights as `how` names it (`int8`, `int4`, `int4:G`: see
/// `LlavaModel::quantize`), or leaves them when `None`.
pub fn quantize(model: &mut LlavaModel, how: Option<&str>) -> Result<()> {
    let Some(how) = how else { return Ok(()) };
    let how: foundation::quant::Quantization = how.parse().map_err(Error::Unsupported)?;
    model.quantize(how)?;
    Ok(())
}

/// How [`ImageChat::open`] reads the model and the images, beyond their paths.
#[derive(Debug, Clone, Default)]
pub struct ChatOptions {
    /// A PEFT LoRA adapter directory to merge into the weights.
    pub adapter: Option<PathBuf>,
    /// Overrides the config's choice of scaling image features (see
    /// `LlavaConfig::image_features_scaled`).
    pub scale_image_features: Option<bool>,
    /// Overrides `preprocessor_config.json`'s pan-and-scan (Gemma 3): on with transformers'
    /// defaults, or off.
    pub pan_and_scan: Option<bool>,
    /// `int8`, `int4` or `int4:G`: the language model's linear layers quantized (CPU; see
    /// `LlavaModel::quantize`).
    pub quantize: Option<String>,
}

impl ImageChat {
    /// Loads the LLaVA directory `model_dir` (with its `tokenizer.json`) and the images at
    /// `images`, which the first user turn shows in order (each with its pan-and-scan crops when
    /// the processor makes them).
    pub fn open(
        model_dir: &Path,
        images: &[PathBuf],
        device: Device,
        kind: Kind,
        options: &ChatOptions,
    ) -> Result<Self> {
        let how: Option<foundation::quant::Quantization> = options
            .quantize
            .as_deref()
            .map(str::parse)
            .transpose()
            .map_err(Error::Unsupported)?;
        let mut model = match (&options.adapter, how) {
            // Quantized as it loads: the dense model is never in memory.
            (None, Some(how)) => {
                LlavaModel::from_pretrained_quantized(model_dir, device, kind, Some(how))?
            }
            // An adapter merges into the dense weights first.
            (adapter, how) => {
                let mut model = LlavaModel::from_pretrained_with_adapter(
                    model_dir,
                    adapter.as_deref(),
                    device,
                    kind,
                )?;
                if let Some(how) = how {
                    model.quantize(how)?;
                }
                model
            }
        };
        if let Some(scale) = options.scale_image_features {
            model.config.image_features_scaled = Some(scale);
        }
        let tokenizer = GemmaTokenizer::from_file(model_dir)?;
        let mut config = model.image_processor(Some(model_dir))?;
        if let Some(on) = options.pan_and_scan {
            if on && model.family() != llava_model::config::Family::Gemma3 {
                return Err(Error::Unsupported(
                    "pan-and-scan is Gemma 3's (this model is not a Gemma3ForConditionalGeneration)"
                        .into(),
                ));
            }
            config.pan_and_scan = on.then(PanAndScan::default);
        }
        let mut chat = ImageChat {
            model,
            tokenizer,
            pixels: Tensor::new(),
            crops: Vec::new(),
            tokens_per_image: 0,
            processor: ImageProcessor::new(config),
        };
        chat.show(images)?;
        Ok(chat)
    }

    /// Replaces the images the conversation is about with `images` (the model stays loaded).
    pub fn show(&mut self, images: &[PathBuf]) -> Result<()> {
        if images.is_empty() {
            return Err(Error::Unsupported(
                "a conversation about images needs at least one".into(),
            ));
        }
        let (mut data, mut crops, mut size) = (Vec::new(), Vec::new(), (0, 0));
        for path in images {
            let views = self.processor.views(&processing::open(path)?);
            crops.push(views.len() - 1);
            for (pixels, h, w) in views {
                size = (h as i64, w as i64);
                data.extend(pixels);
            }
        }
        let views = crops.iter().map(|c| c + 1).sum::<usize>() as i64;
        self.pixels = Tensor::from_slice(&data).view([views, 3, size.0, size.1]);
        self.crops = crops;
        self.tokens_per_image = self.model.tokens_per_image(size.0, size.1);
        Ok(())
    }

    /// The model.
    pub fn model(&self) -> &LlavaModel {
        &self.model
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &GemmaTokenizer {
        &self.tokenizer
    }

    /// The prompt tokens for a conversation: the chat template with the images at the front of
    /// the first user turn, expanded to their tokens (and crops), ending with the model's turn
    /// opening, as the model's family writes prompts ([`llava_model::prompt`]).
    pub fn prompt(&self, conversation: &[Message]) -> Result<Vec<i64>> {
        let mut messages = conversation.to_vec();
        let first = messages.first_mut().ok_or_else(|| {
            Error::Unsupported("an empty conversation has nothing to answer".into())
        })?;
        let format = self
            .model
            .prompt_format(&self.tokenizer, self.tokens_per_image);
        first.content = format.mark_images(&first.content, self.crops.len());
        let ids = format.encode_with_crops(&self.tokenizer, &messages, &self.crops)?;
        Ok(self.model.expand_image_tokens(&ids, self.tokens_per_image))
    }

    /// Answers the last user turn of `conversation` (greedily with `config`) and explains the
    /// answer: its relevancy and attention maps ([`llava_model::explain`]), over the prompt and
    /// the answer. Returns the answer's text and the maps.
    pub fn explain(
        &self,
        conversation: &[Message],
        config: &GenerationConfig,
    ) -> Result<(String, llava_model::explain::Explanation)> {
        let prompt = self.prompt(conversation)?;
        let config = self.generation_config(config.clone());
        let output = tch::no_grad(|| {
            self.model.generate(
                std::slice::from_ref(&prompt),
                Some(&self.pixels),
                &config,
                |_, _| {},
            )
        })?;
        let tokens = &output[0];
        let text = self.tokenizer.decode(tokens, true)?;
        let explanation = self.model.explain(&prompt, Some(&self.pixels), tokens)?;
        Ok((text.trim().to_string(), explanation))
    }

    /// View `index` (see [`pixels`](Self::pixels)) as an RGB image: the pixels the model sees
    /// (resized, cropped or padded), their normalisation undone.
    pub fn view(&self, index: i64) -> image::RgbImage {
        let config = self.processor.config();
        let (mean, std) = config.normalize.unwrap_or(([0.0; 3], [1.0; 3]));
        let scale = config.rescale.unwrap_or(1.0) as f32;
        let view = self.pixels.get(index).to_kind(Kind::Float);
        let (h, w) = (view.size()[1], view.size()[2]);
        let data = Vec::<f32>::try_from(view.flatten(0, -1)).unwrap_or_default();
        image::RgbImage::from_fn(w as u32, h as u32, |x, y| {
            let at = |c: usize| {
                let v = data[c * (h * w) as usize + (y as i64 * w + x as i64) as usize];
                ((v * std[c] + mean[c]) / scale).round().clamp(0.0, 255.0) as u8
            };
            image::Rgb([at(0), at(1), at(2)])
        })
    }

    /// Every view of every image as the model sees them, `[views, 3, h, w]`.
    pub fn pixels(&self) -> &Tensor {
        &self.pixels
    }

    /// Pan-and-scan crops of each image (all 0 without pan-and-scan).
    pub fn crops(&self) -> &[usize] {
        &self.crops
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
