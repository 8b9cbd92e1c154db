//! Throughput measurements on random weights, for any device: `llava bench-generate` and
//! `llava bench-vision`. They print one JSON object, so a GPU run and the Python reference
//! (`bench/hf_llava_baseline.py` of the shared notes) can be compared side by side.

use std::time::Instant;

use gemma_lm::GenerationConfig;
use llava_model::{LlavaModel, presets};
use serde::Serialize;
use tch::{Device, Kind, Tensor};
use vision_encoders::{FeatureSelect, VisionTower};

use crate::{Error, Result};

/// What `bench-generate` reports.
#[derive(Debug, Clone, Serialize)]
pub struct GenerateReport {
    /// The model preset.
    pub preset: String,
    /// Device and dtype.
    pub device: String,
    /// `bf16`, `f32`, …
    pub dtype: String,
    /// Prompts per batch.
    pub batch: usize,
    /// Prompt length in tokens, image tokens included.
    pub prompt_len: usize,
    /// New tokens per prompt (no early stop).
    pub new_tokens: usize,
    /// Seconds for the image features and the prompt's forward pass (time to first token).
    pub prefill_s: f64,
    /// Seconds for the whole generation, prefill included (as the reference measures it).
    pub gen_s: f64,
    /// New tokens per second over all rows: `batch * new_tokens / gen_s`.
    pub tokens_per_s: f64,
}

/// Seconds `work` takes on `device`, the device's queue drained before and after.
fn timed(device: Device, work: impl FnOnce() -> Result<()>) -> Result<f64> {
    let sync = || {
        if let Device::Cuda(i) = device {
            tch::Cuda::synchronize(i as i64);
        }
    };
    sync();
    let start = Instant::now();
    work()?;
    sync();
    Ok(start.elapsed().as_secs_f64())
}

fn preset(name: &str) -> Result<llava_model::LlavaConfig> {
    presets::by_name(name).ok_or_else(|| {
        Error::Unsupported(format!(
            "unknown preset `{name}` (bench-small, paper-2b-clip, paper-2b-dinov2)"
        ))
    })
}

/// Greedy generation with a random-weight model of `preset`: `batch` prompts of `prompt_len`
/// tokens (one image each, the rest random text), `new_tokens` new tokens each; one warm-up, then
/// the best of `runs`.
pub fn generate(
    preset_name: &str,
    device: Device,
    kind: Kind,
    batch: usize,
    prompt_len: usize,
    new_tokens: usize,
    runs: usize,
) -> Result<GenerateReport> {
    let config = preset(preset_name)?;
    tch::manual_seed(0);
    let model = LlavaModel::new(&config, device, kind)?;
    let image_token = model.image_token();
    let per_image = config.image_seq_length.unwrap_or(576) as usize;
    if prompt_len < per_image + 2 {
        return Err(Error::Unsupported(format!(
            "--prompt-len must be at least {} (an image and two tokens)",
            per_image + 2
        )));
    }
    let vocab = config.text_config.vocab_size.min(image_token);
    let text = Tensor::randint(
        vocab,
        [batch as i64, (prompt_len - per_image - 1) as i64],
        (Kind::Int64, Device::Cpu),
    );
    let text = Vec::<Vec<i64>>::try_from(&text).map_err(gemma_lm::Error::from)?;
    let prompts: Vec<Vec<i64>> = text
        .into_iter()
        .map(|t| {
            std::iter::once(2)
                .chain(std::iter::repeat_n(image_token, per_image))
                .chain(t)
                .collect()
        })
        .collect();
    let size = model.config.image_side()?;
    let pixels = Tensor::randn([batch as i64, 3, size, size], (kind, device));
    let config = GenerationConfig {
        max_new_tokens: new_tokens,
        ..GenerationConfig::default()
    };
    let warm = GenerationConfig {
        max_new_tokens: new_tokens.min(8),
        ..config.clone()
    };
    model.generate(&prompts, Some(&pixels), &warm, |_, _| {})?;
    let (ids, _) = gemma_lm::left_pad(&prompts, 0);
    let (mut best_prefill, mut best_gen) = (f64::INFINITY, f64::INFINITY);
    for _ in 0..runs.max(1) {
        let prefill = timed(device, || {
            let hidden = tch::no_grad(|| model.forward(&ids, Some(&pixels), None))?;
            let last = hidden.narrow(1, hidden.size()[1] - 1, 1);
            let _ = model.logits(&last).argmax(-1, false);
            Ok(())
        })?;
        let generation = timed(device, || {
            model.generate(&prompts, Some(&pixels), &config, |_, _| {})?;
            Ok(())
        })?;
        best_prefill = best_prefill.min(prefill);
        best_gen = best_gen.min(generation);
    }
    Ok(GenerateReport {
        preset: preset_name.into(),
        device: format!("{device:?}"),
        dtype: format!("{kind:?}"),
        batch,
        prompt_len,
        new_tokens,
        prefill_s: best_prefill,
        gen_s: best_gen,
        tokens_per_s: (batch * new_tokens) as f64 / best_gen,
    })
}

/// What `bench-vision` reports.
#[derive(Debug, Clone, Serialize)]
pub struct VisionReport {
    /// The model preset whose tower was measured.
    pub preset: String,
    /// Device.
    pub device: String,
    /// dtype.
    pub dtype: String,
    /// Images per batch.
    pub batch: usize,
    /// Seconds per batch (best of the runs).
    pub batch_s: f64,
    /// Images per second.
    pub images_per_s: f64,
}

/// The tower of `preset` on `batch` random images (LLaVA's features: layer -2, no CLS), without
/// autograd; one warm-up, then the best of `runs`.
pub fn vision(
    preset_name: &str,
    device: Device,
    kind: Kind,
    batch: usize,
    runs: usize,
) -> Result<VisionReport> {
    let config = preset(preset_name)?;
    let vision = config.vision()?;
    tch::manual_seed(0);
    let (_vs, tower) = foundation::build(device, kind, |root| VisionTower::new(root, &vision))?;
    let size = config.image_side()?;
    let pixels = Tensor::randn([batch as i64, 3, size, size], (kind, device));
    let _ = tower.features(&pixels, FeatureSelect::default())?;
    let mut best = f64::INFINITY;
    for _ in 0..runs.max(1) {
        let seconds = timed(device, || {
            let _ = tower.features(&pixels, FeatureSelect::default())?;
            Ok(())
        })?;
        best = best.min(seconds);
    }
    Ok(VisionReport {
        preset: preset_name.into(),
        device: format!("{device:?}"),
        dtype: format!("{kind:?}"),
        batch,
        batch_s: best,
        images_per_s: batch as f64 / best,
    })
}
