//! Loading and saving LLaVA models in the layouts people have.
//!
//! Loading reads every Hugging Face LLaVA layout in use, because each part finds its own prefix:
//! `language_model.model.*` / `vision_tower.*` / `multi_modal_projector.*` (what transformers 5.17
//! writes), `model.language_model.*` / `model.vision_tower.*` / `model.multi_modal_projector.*` /
//! `lm_head.weight`, and `vision_tower.vision_model.*` (llava-hf's CLIP towers); original LLaVA
//! connectors (`model.mm_projector.*`) too. Saving writes `language_model.*`, `vision_tower.*` (a
//! CLIP tower as `vision_tower.vision_model.*`) and `multi_modal_projector.*`, which
//! `LlavaForConditionalGeneration.from_pretrained` loads in transformers 5.17 and in 4.57 alike
//! (checked: the same greedy answers as ours in both).

use std::path::{Path, PathBuf};

use foundation::quant::Loading;
use foundation::{Checkpoint, save_safetensors, write_atomic};
use gemma_lm::{GemmaConfig, GemmaTokenizer};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};
use vision_encoders::VisionConfig;

use crate::config::{Family, LlavaConfig};
use crate::model::LlavaModel;
use crate::{Error, Result};

impl LlavaModel {
    /// Writes what `LlavaProcessor.save_pretrained` writes: `preprocessor_config.json`,
    /// `processor_config.json`, `tokenizer_config.json` (with the chat template),
    /// `special_tokens_map.json` and `chat_template.jinja`.
    pub fn save_processor(&self, dir: &Path, tokenizer: &GemmaTokenizer) -> Result<()> {
        use crate::processor_files as files;
        let vision = self.config.vision()?;
        let family = self.family();
        let image_token_id = self.image_token();
        let text_of = |id: i64| {
            tokenizer
                .decode(&[id], false)
                .ok()
                .filter(|t| !t.is_empty())
        };
        let image_token = text_of(image_token_id).unwrap_or_else(|| IMAGE_TOKEN.to_string());
        let pretty = |v: serde_json::Value| serde_json::to_string_pretty(&v).expect("serialises");
        let added = tokenizer.added_tokens();
        let processor = self.image_processor(None)?;
        let side = self.config.image_side()?;
        let per_image = self.tokens_per_image(side, side);
        let mut files = vec![(
            "preprocessor_config.json",
            pretty(files::preprocessor_config(
                &processor, &vision, family, per_image,
            )),
        )];
        match family {
            Family::Llava => files.extend([
                (
                    "processor_config.json",
                    pretty(files::processor_config(
                        &vision,
                        &self.config.vision_feature_select_strategy,
                        &image_token,
                    )),
                ),
                (
                    "tokenizer_config.json",
                    pretty(files::tokenizer_config(&image_token, &added)),
                ),
                ("chat_template.jinja", files::CHAT_TEMPLATE.to_string()),
            ]),
            family => {
                let delimiters = self
                    .config
                    .image_delimiters()
                    .and_then(|(boi, eoi)| Some((text_of(boi)?, text_of(eoi)?)));
                let delimiters = delimiters.as_ref().map(|(b, e)| (b.as_str(), e.as_str()));
                files.extend([
                    (
                        "processor_config.json",
                        pretty(files::family_processor_config(family, per_image)),
                    ),
                    (
                        "tokenizer_config.json",
                        pretty(files::family_tokenizer_config(
                            family,
                            &image_token,
                            &added,
                            delimiters,
                        )),
                    ),
                ]);
                if family == Family::Gemma3 {
                    files.push((
                        "chat_template.jinja",
                        gemma_lm::tokenizer::GEMMA3_JINJA.to_string(),
                    ));
                }
            }
        }
        files.push((
            "special_tokens_map.json",
            pretty(files::special_tokens_map(&image_token)),
        ));
        for (name, text) in files {
            write_atomic(dir.join(name), text.as_bytes())?;
        }
        Ok(())
    }
}

/// The tokens `<image>` is added as when a model is assembled from parts.
pub const IMAGE_TOKEN: &str = "<image>";

/// A user turn's text with `images` image marks in front, one line each, as LLaVA-Gemma's template
/// places them (`<image>\n{question}`, the question trimmed as the chat template trims it): what
/// `llava generate`, `llava chat` and `llava serve` all send, and what training's `gemma` template
/// builds.
pub fn with_image_marks(text: &str, images: usize) -> String {
    format!(
        "{}{}",
        format!("{IMAGE_TOKEN}\n").repeat(images),
        text.trim()
    )
}

/// How to assemble a model from separately downloaded parts.
#[derive(Debug, Clone)]
pub struct Parts {
    /// A Gemma directory (config.json, safetensors, tokenizer.json).
    pub lm: PathBuf,
    /// A CLIP or DINOv2 directory.
    pub vision: PathBuf,
    /// A connector file (stage 1's output); a seeded random connector when `None`.
    pub connector: Option<PathBuf>,
    /// Seed of the random connector.
    pub seed: u64,
    /// The connector architecture (`mlp2x_gelu`).
    pub projector_type: String,
    /// Input resolution of the tower in the assembled model (the tower's `image_size` when `None`;
    /// DINOv2 is usually run at 224 rather than its 518). LLaVA only.
    pub image_size: Option<i64>,
    /// Which model to assemble: LLaVA (with `projector_type`), a `Gemma3ForConditionalGeneration`
    /// (Gemma 3's pooling projector) or a `PaliGemmaForConditionalGeneration` (a linear one); the
    /// latter two need a SigLIP tower.
    pub family: Family,
    /// Gemma 3: the tokens each image is pooled to (`mm_tokens_per_image`); by default the
    /// largest square of at most 256 whose side divides the tower's patches per side.
    pub image_tokens: Option<i64>,
}

/// Gemma 3's image-soft-token text, the image token of its VLMs.
pub const IMAGE_SOFT_TOKEN: &str = "<image_soft_token>";

impl LlavaModel {
    /// Loads an HF LLaVA directory (config.json and one or sharded safetensors files) onto `device`
    /// with weights in `kind`; one saved quantized loads quantized (see
    /// [`from_pretrained_quantized`](Self::from_pretrained_quantized)).
    pub fn from_pretrained(dir: impl AsRef<Path>, device: Device, kind: Kind) -> Result<Self> {
        Self::from_pretrained_quantized(dir, device, kind, None)
    }

    /// [`from_pretrained`](Self::from_pretrained) with the language model's linear layers
    /// quantized as they load when `how` says so (`Gemma::load_quantized`: one decoder layer's
    /// dense weights at a time, never the dense model; the CPU only), as
    /// [`quantize`](Self::quantize) would leave them. A directory saved quantized (its
    /// `config.json` has our `quantization_config`) loads its codes as they are, in its own
    /// form; `how`, if given, must be that form.
    pub fn from_pretrained_quantized(
        dir: impl AsRef<Path>,
        device: Device,
        kind: Kind,
        how: Option<foundation::quant::Quantization>,
    ) -> Result<Self> {
        let dir = dir.as_ref();
        if !dir.is_dir() {
            return Err(Error::io(
                dir,
                std::io::Error::new(std::io::ErrorKind::NotFound, "no such model directory"),
            ));
        }
        let stored = foundation::quant::Quantization::of_directory(dir)?;
        let loading = Loading::resolve(stored, how)
            .map_err(|e| Error::Input(format!("{} {e}", dir.display())))?;
        if let Some(how) = loading.quantization() {
            if device != Device::Cpu {
                return Err(Error::Input(format!(
                    "{how} weights run on the CPU (our kernels for them are CPU kernels)"
                )));
            }
        }
        let config = LlavaConfig::from_file(dir)?;
        let checkpoint = Checkpoint::open(dir)?;
        let mut model = LlavaModel::new_to_load(&config, device, kind)?;
        model.tower.load(&model.vision_vs, &checkpoint)?;
        model.connector.load(&model.connector_vs, &checkpoint)?;
        model.lm.load_as(&model.lm_vs, &checkpoint, loading)?;
        Ok(model)
    }

    /// Assembles a model from a Gemma directory, a vision directory and an optional connector file,
    /// adding `<image>` to the tokenizer (and growing the vocabulary) when it lacks one. Returns the
    /// model and the tokenizer that goes with it.
    pub fn from_parts(parts: &Parts, device: Device, kind: Kind) -> Result<(Self, GemmaTokenizer)> {
        let mut tokenizer = GemmaTokenizer::from_file(&parts.lm)?;
        let text = GemmaConfig::from_file(&parts.lm)?;
        let vision = VisionConfig::from_file(&parts.vision)?;
        let (patch, native) = (vision.patch_size(), vision.image_size());
        if parts.family != Family::Llava {
            if !matches!(vision, VisionConfig::Siglip(_)) {
                return Err(Error::Input(format!(
                    "{} needs a SigLIP tower; {} is not one",
                    parts.family.architecture(),
                    parts.vision.display()
                )));
            }
            // transformers reads a Gemma 3 VLM's text config as Gemma 3's, a PaliGemma's as
            // Gemma's or (PaliGemma 2) Gemma 2's.
            let generation = text.generation()?;
            let fits = match parts.family {
                Family::Gemma3 => generation == gemma_lm::Generation::Gemma3,
                _ => generation != gemma_lm::Generation::Gemma3,
            };
            if !fits {
                return Err(Error::Input(format!(
                    "{} takes {} language model; {} is a {generation:?}",
                    parts.family.architecture(),
                    if parts.family == Family::Gemma3 {
                        "a Gemma 3 (`gemma3_text`)"
                    } else {
                        "a Gemma or Gemma 2"
                    },
                    parts.lm.display()
                )));
            }
            if parts.image_size.is_some_and(|s| s != native) {
                return Err(Error::Input(format!(
                    "{} runs the tower at its own image_size ({native}); --image-size is LLaVA's",
                    parts.family.architecture()
                )));
            }
        }
        let config = match parts.family {
            Family::Llava => {
                let image_token = tokenizer.add_special_token(IMAGE_TOKEN);
                let size = parts.image_size.unwrap_or(native);
                let tokens = (size / patch) * (size / patch);
                let mut config = LlavaConfig::new(&vision, text, image_token, tokens);
                config.projector_type = Some(parts.projector_type.clone());
                config
            }
            Family::Gemma3 => {
                // Gemma 3's own tokenizer has all three; another Gemma's gains them.
                let boi = tokenizer.add_special_token(crate::prompt::START_OF_IMAGE);
                let eoi = tokenizer.add_special_token(crate::prompt::END_OF_IMAGE);
                let image_token = tokenizer.add_special_token(IMAGE_SOFT_TOKEN);
                let side = native / patch;
                let tokens = parts.image_tokens.unwrap_or_else(|| {
                    (1..=side.min(16))
                        .rev()
                        .find(|t| side % t == 0)
                        .unwrap_or(1)
                        .pow(2)
                });
                LlavaConfig::gemma3(&vision, text, image_token, (boi, eoi), tokens)
            }
            Family::PaliGemma => {
                let image_token = tokenizer.add_special_token(IMAGE_TOKEN);
                LlavaConfig::paligemma(&vision, text, image_token)
            }
        };
        // Room for every token the tokenizer has, the ones just added included.
        let vocab = tokenizer
            .added_tokens()
            .iter()
            .map(|t| t.id + 1)
            .chain([config.text_config.vocab_size])
            .max()
            .unwrap_or_default();
        config.check().map_err(Error::Input)?;
        config.projector()?;

        let mut model = LlavaModel::new(&config, device, kind)?;
        model.connector.reset_parameters(parts.seed);
        model
            .tower
            .load(&model.vision_vs, &Checkpoint::open(&parts.vision)?)?;
        model.lm.load(&model.lm_vs, &Checkpoint::open(&parts.lm)?)?;
        if let Some(file) = &parts.connector {
            model
                .connector
                .load(&model.connector_vs, &Checkpoint::open(file)?)?;
        }
        model.lm.resize_vocab(vocab)?;
        model.config.text_config.vocab_size = vocab;
        Ok((model, tokenizer))
    }

    /// Saves the model as an HF LLaVA directory: `config.json`, `model.safetensors` in a layout
    /// transformers 5 and 4 both load (see the module's documentation), and (when given a
    /// tokenizer) `tokenizer.json`,
    /// `generation_config.json` and the processor's files (see [`crate::processor_files`]), so that
    /// `AutoProcessor.from_pretrained` opens the directory too. Each file is written atomically.
    pub fn save_pretrained(
        &self,
        dir: impl AsRef<Path>,
        tokenizer: Option<&GemmaTokenizer>,
    ) -> Result<()> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let mut tensors: Vec<(String, Tensor)> = Vec::new();
        let sorted = |vs: &VarStore| {
            let mut v: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
            v.sort_by(|a, b| a.0.cmp(&b.0));
            v
        };
        for (name, t) in self.lm.tensors(&self.lm_vs) {
            tensors.push((format!("language_model.{name}"), t));
        }
        // A CLIP tower keeps its `vision_model.` level (`vision_tower.vision_model.*`, as llava-hf's
        // checkpoints have it): transformers 5 reads it, and transformers 4 reads nothing else
        // (it leaves a `vision_tower.embeddings.*` tower at its random initialisation).
        for (name, t) in sorted(&self.vision_vs) {
            tensors.push((format!("vision_tower.{name}"), t.detach()));
        }
        for (name, t) in sorted(&self.connector_vs) {
            tensors.push((name, t.detach()));
        }
        let metadata = [("format".to_string(), "pt".to_string())]
            .into_iter()
            .collect();
        if self.quantization().is_some() {
            foundation::quant::save_quantized_weights(dir, &tensors, Some(metadata))?;
        } else {
            save_safetensors(dir.join("model.safetensors"), &tensors, Some(metadata))?;
        }

        let mut config = self.config.clone();
        let dtype = match self.lm.kind() {
            Kind::BFloat16 => "bfloat16",
            Kind::Half => "float16",
            _ => "float32",
        };
        config.extra.insert("dtype".into(), dtype.into());
        // Quantized language-model weights are saved as their codes; the config says so.
        match self.lm.quantization() {
            Some(how) => config
                .extra
                .insert("quantization_config".into(), how.to_config()),
            None => config.extra.remove("quantization_config"),
        };
        let json = serde_json::to_string_pretty(&config.to_json()).expect("config serialises");
        write_atomic(dir.join("config.json"), json.as_bytes())?;

        if let Some(tokenizer) = tokenizer {
            tokenizer.save(dir.join("tokenizer.json"))?;
            let generation = serde_json::json!({
                "bos_token_id": tokenizer.bos,
                "eos_token_id": tokenizer.chat_stop_tokens(),
                "pad_token_id": tokenizer.pad,
            });
            write_atomic(
                dir.join("generation_config.json"),
                generation.to_string().as_bytes(),
            )?;
            self.save_processor(dir, tokenizer)?;
        }
        Ok(())
    }
}
