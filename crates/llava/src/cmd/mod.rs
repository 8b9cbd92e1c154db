//! The subcommands of `llava`, a room each (a file, or a folder when it grows: `bench/`): its
//! arguments, its handler and what only it uses. What several share (sampling flags, device and
//! dtype, model names, JSON output) is here, and the launcher of local ranks in [`launch`].

pub mod assemble;
pub mod bench;
pub mod chat;
pub mod data;
pub mod eval;
pub mod eval_synthetic;
pub mod explain;
pub mod explain_synthetic;
pub mod export_gguf;
pub mod generate;
pub mod generate_text;
pub mod grade;
pub mod launch;
pub mod merge_lora;
pub mod parity;
pub mod plan;
pub mod quantize;
pub mod score;
pub mod serve;
pub mod train;

use std::path::PathBuf;
use std::time::Instant;

use llava::chat::ImageChat;
use llava::foundation::device::{parse_device, parse_kind};
use llava::gemma_lm::GenerationConfig;

/// The device and dtype of `--device` and `--dtype` (the device's default dtype when not given).
pub fn device_and_kind(
    device: &str,
    dtype: &Option<String>,
) -> llava::Result<(tch::Device, tch::Kind)> {
    let device = parse_device(device)?;
    let kind = match dtype {
        Some(name) => parse_kind(name)?,
        None => llava::foundation::device::default_kind(device),
    };
    Ok((device, kind))
}

/// Sampling and device flags shared by the generating commands.
#[derive(Debug, clap::Args)]
pub struct Sampling {
    /// Most tokens to generate.
    #[arg(long, default_value_t = 256)]
    max_new_tokens: usize,
    /// Sampling temperature; 0 (the default) decodes greedily.
    #[arg(long, default_value_t = 0.0)]
    temperature: f64,
    /// Sample among the k most likely tokens.
    #[arg(long)]
    top_k: Option<usize>,
    /// Sample among the most likely tokens with cumulative probability p.
    #[arg(long)]
    top_p: Option<f64>,
    /// Sampling seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "auto")]
    device: String,
    /// Weights and compute dtype: f32, bf16 or f16 (default: bf16 on CUDA, f32 on CPU).
    #[arg(long)]
    dtype: Option<String>,
}

impl Sampling {
    fn device_and_kind(&self) -> llava::Result<(tch::Device, tch::Kind)> {
        device_and_kind(&self.device, &self.dtype)
    }

    fn config(&self) -> GenerationConfig {
        GenerationConfig {
            max_new_tokens: self.max_new_tokens,
            temperature: Some(self.temperature),
            top_k: self.top_k,
            top_p: self.top_p,
            seed: self.seed,
            ..GenerationConfig::default()
        }
    }
}

/// Prints `value` as one line of JSON (`--json`) or indented.
pub fn print_json(value: &impl serde::Serialize, one_line: bool) {
    let text = if one_line {
        serde_json::to_string(value)
    } else {
        serde_json::to_string_pretty(value)
    };
    println!("{}", text.expect("reports serialise"));
}

/// A model argument as a directory: a path as it is, or a Hugging Face id (`Intel/llava-gemma-2b`)
/// through the local Hugging Face cache, downloading when a network is there.
pub fn model_path(arg: &std::path::Path) -> llava::Result<PathBuf> {
    Ok(llava::foundation::hub::resolve_model(arg)?)
}

/// The model, image and sampling flags of `llava generate` and `llava chat`.
#[derive(Debug, clap::Args)]
pub struct ImageModel {
    /// LLaVA model directory (config.json, safetensors weights, tokenizer.json) or Hugging Face id
    /// (`Intel/llava-gemma-2b`, through the local Hugging Face cache).
    #[arg(long)]
    pub model: PathBuf,
    /// A PEFT LoRA adapter directory (adapter_config.json, adapter_model.safetensors) to apply to
    /// the model, such as `llava train --lora` writes; merged into the weights when loading.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// The image (JPEG, PNG, WebP, GIF, BMP or TIFF); give it again for several images, which
    /// the question shows in order.
    #[arg(long, required = true)]
    pub image: Vec<PathBuf>,
    /// Gemma 3: show long images also as crops along their long side (pan-and-scan, with
    /// transformers' defaults), whatever `preprocessor_config.json` says.
    #[arg(long)]
    pub pan_and_scan: bool,
    /// `int8`, `int4` or `int4:G`: the language model's linear layers as int8 weights with
    /// per-row scales, or int4 with a scale and minimum per G inputs (32 by default), multiplied
    /// by our CPU kernels (CPU only): faster decoding and less memory, answers close to the
    /// plain model's.
    #[arg(long)]
    pub quantize: Option<String>,
    /// Scale image features by sqrt(hidden) as the original LLaVA-Gemma code did (Intel's checkpoints).
    #[arg(long)]
    pub scale_image_features: bool,
    #[command(flatten)]
    pub sampling: Sampling,
}

impl ImageModel {
    /// Loads the model and the image, saying how long it took.
    pub fn open(&self) -> llava::Result<ImageChat> {
        let (device, kind) = self.sampling.device_and_kind()?;
        let model = &model_path(&self.model)?;
        let start = Instant::now();
        let options = llava::chat::ChatOptions {
            adapter: self.adapter.clone(),
            scale_image_features: self.scale_image_features.then_some(true),
            pan_and_scan: self.pan_and_scan.then_some(true),
            quantize: self.quantize.clone(),
        };
        let adapter = self.adapter.as_deref();
        let chat = ImageChat::open(model, &self.image, device, kind, &options)?;
        eprintln!(
            "loaded {}{} on {device:?} as {kind:?} in {:.2}s",
            model.display(),
            adapter.map_or(String::new(), |a| format!(" with adapter {}", a.display())),
            start.elapsed().as_secs_f64()
        );
        Ok(chat)
    }
}
