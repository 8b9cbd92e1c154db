//! `llava bench-generate`: greedy generation on a random-weight preset.

use std::process::ExitCode;

use llava::gemma_lm::{self, Decode, GenerationConfig};
use llava::llava_model::{LlavaConfig, LlavaModel};
use serde::Serialize;
use tch::{Device, Kind, Tensor};

use super::{PresetOn, timed};
use crate::cmd::print_json;

/// Its arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    on: PresetOn,
    /// Prompts per batch.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Prompt length in tokens, image tokens included.
    #[arg(long, default_value_t = 608)]
    prompt_len: usize,
    /// New tokens per prompt.
    #[arg(long, default_value_t = 128)]
    new_tokens: usize,
    /// Timed runs (the best is reported).
    #[arg(long, default_value_t = 2)]
    runs: usize,
    /// How decoding steps run: auto (CUDA graphs on a GPU), eager, static or graph.
    #[arg(long, default_value = "auto")]
    decode: String,
    /// `int8`, `int4` or `int4:G`: the language model's linear layers quantized (CPU; see
    /// `llava generate --quantize`).
    #[arg(long)]
    quantize: Option<String>,
}

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
    /// How the decoding steps ran: `Graph` (CUDA graphs), `Eager`, `Static`; `Auto` is resolved.
    pub decode: String,
    /// The weight quantization, when any (`int8`, `int4:32`, …).
    pub quantize: Option<String>,
    /// Decoding alone: `batch * (new_tokens - 1) / (gen_s - prefill_s)` (the first new token
    /// comes from the prefill).
    pub decode_tokens_per_s: f64,
    /// The process's resident memory once the model is built (and quantized), in MiB (Linux).
    pub model_rss_mib: Option<f64>,
}

/// Runs it: one JSON object.
pub fn run(a: &Args) -> llava::Result<ExitCode> {
    let (device, kind) = a.on.device_and_kind()?;
    let decode = a.decode.parse::<Decode>()?;
    let report = measure(a, device, kind, decode)?;
    print_json(&report, true);
    Ok(ExitCode::SUCCESS)
}

/// Greedy generation with a random-weight model of the preset: `batch` prompts of `prompt_len`
/// tokens (one image each, the rest random text), `new_tokens` new tokens each, decoding as
/// `decode` says; one warm-up, then the best of `runs`. A CUDA graph is recorded per generation
/// call, inside the timed part.
fn measure(a: &Args, device: Device, kind: Kind, decode: Decode) -> llava::Result<GenerateReport> {
    let preset = a.on.config()?;
    tch::manual_seed(0);
    let mut model = LlavaModel::new(&preset, device, kind)?;
    llava::chat::quantize(&mut model, a.quantize.as_deref())?;
    llava::foundation::device::return_freed_host_memory();
    let model_rss_mib =
        llava::foundation::device::host_memory().map(|b| b as f64 / (1u64 << 20) as f64);
    let prompts = random_prompts(&preset, model.image_token(), a.batch, a.prompt_len)?;
    let size = model.config.image_side()?;
    let pixels = Tensor::randn([a.batch as i64, 3, size, size], (kind, device));
    let config = GenerationConfig {
        max_new_tokens: a.new_tokens,
        decode,
        ..GenerationConfig::default()
    };
    let warm = GenerationConfig {
        max_new_tokens: a.new_tokens.min(8),
        ..config.clone()
    };
    model.generate(&prompts, Some(&pixels), &warm, |_, _| {})?;
    let (ids, _) = gemma_lm::left_pad(&prompts, 0);
    let (mut best_prefill, mut best_gen) = (f64::INFINITY, f64::INFINITY);
    for _ in 0..a.runs.max(1) {
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
        preset: a.on.preset.clone(),
        device: format!("{device:?}"),
        dtype: format!("{kind:?}"),
        batch: a.batch,
        prompt_len: a.prompt_len,
        new_tokens: a.new_tokens,
        prefill_s: best_prefill,
        gen_s: best_gen,
        tokens_per_s: (a.batch * a.new_tokens) as f64 / best_gen,
        decode: format!("{:?}", decode.resolve(device)),
        quantize: a.quantize.clone(),
        decode_tokens_per_s: (a.batch * a.new_tokens.saturating_sub(1)) as f64
            / (best_gen - best_prefill).max(1e-9),
        model_rss_mib,
    })
}

/// `batch` prompts of `prompt_len` tokens for a model of `config`: `<bos>`, one image's tokens
/// (`image_token`), random text.
fn random_prompts(
    config: &LlavaConfig,
    image_token: i64,
    batch: usize,
    prompt_len: usize,
) -> llava::Result<Vec<Vec<i64>>> {
    let per_image = config.image_seq_length.unwrap_or(576) as usize;
    if prompt_len < per_image + 2 {
        return Err(llava::Error::Unsupported(format!(
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
    Ok(text
        .into_iter()
        .map(|t| {
            std::iter::once(2)
                .chain(std::iter::repeat_n(image_token, per_image))
                .chain(t)
                .collect()
        })
        .collect())
}
