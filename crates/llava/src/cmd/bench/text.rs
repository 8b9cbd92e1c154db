//! `llava bench-text`: a Gemma checkpoint loaded from disk, one prompt of random tokens, greedy
//! decoding: what `cargo xtask bench-cpu` sets beside llama.cpp on the same model.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use llava::foundation::Checkpoint;
use llava::foundation::device::{host_memory, peak_host_memory, return_freed_host_memory};
use llava::foundation::profiler::Profile;
use llava::foundation::quant::{Loading, Quantization};
use llava::gemma_lm::config::GemmaConfig;
use llava::gemma_lm::{Gemma, GenerationConfig, generate};
use serde::Serialize;
use tch::{Device, Kind, Tensor};

use crate::cmd::{device_and_kind, model_path, print_json};

/// Its arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// A Gemma directory (config.json, safetensors weights).
    #[arg(long)]
    model: PathBuf,
    /// cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// f32, bf16 or f16 (default: bf16 on CUDA, f32 on CPU).
    #[arg(long)]
    dtype: Option<String>,
    /// Prompt length in tokens (random ids, `<bos>` first).
    #[arg(long, default_value_t = 128)]
    prompt_len: usize,
    /// New tokens (no early stop).
    #[arg(long, default_value_t = 128)]
    new_tokens: usize,
    /// `int8`, `int4` or `int4:G` (see `llava generate --quantize`).
    #[arg(long)]
    quantize: Option<String>,
    /// Seed of the prompt's ids.
    #[arg(long, default_value_t = 0)]
    seed: i64,
    /// Writes libtorch's profile of the decoding steps (after the first new token) to this file:
    /// a tab-separated line per operator with its total milliseconds and calls.
    #[arg(long)]
    profile: Option<PathBuf>,
}

/// What `bench-text` reports: one run, cold.
#[derive(Debug, Clone, Serialize)]
pub struct TextReport {
    /// Who ran it.
    pub engine: &'static str,
    /// `bf16`, `int8`, `int4:32`, …
    pub weights: String,
    /// Prompt length in tokens.
    pub prompt_len: usize,
    /// New tokens.
    pub new_tokens: usize,
    /// Seconds from nothing to a model ready to run (read, converted, quantized).
    pub load_s: f64,
    /// The process's resident memory once loaded, in MiB.
    pub rss_mib: Option<f64>,
    /// The process's peak resident memory up to then (loading included), in MiB.
    pub peak_rss_mib: Option<f64>,
    /// Prompt tokens per second (the prompt's forward pass to the first new token).
    pub prefill_tokens_per_s: f64,
    /// New tokens per second after the first: `(new_tokens - 1) / (total - prefill)`.
    pub decode_tokens_per_s: f64,
}

/// Runs it: one JSON object.
pub fn run(a: &Args) -> llava::Result<ExitCode> {
    let (device, kind) = device_and_kind(&a.device, &a.dtype)?;
    let dir = model_path(&a.model)?;
    let start = Instant::now();
    let config = GemmaConfig::from_file(&dir)?;
    let checkpoint = Checkpoint::open(&dir)?;
    let asked: Option<Quantization> = a
        .quantize
        .as_deref()
        .map(str::parse)
        .transpose()
        .map_err(llava::Error::Unsupported)?;
    let loading = Loading::resolve(Quantization::of_directory(&dir)?, asked)
        .map_err(|e| llava::Error::Unsupported(format!("{} {e}", dir.display())))?;
    let (_vs, model) = Gemma::from_checkpoint_as(&config, &checkpoint, device, kind, loading)?;
    let weights = match loading {
        Loading::Dense => dtype_name(kind).to_string(),
        Loading::Quantize(how) => how.to_string(),
        Loading::Saved(how) => format!("{how} (saved)"),
    };
    drop(checkpoint);
    return_freed_host_memory();
    let load_s = start.elapsed().as_secs_f64();
    let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
    let (rss_mib, peak_rss_mib) = (host_memory().map(mib), peak_host_memory().map(mib));

    tch::manual_seed(a.seed);
    let vocab = model.config().vocab_size.clamp(4, 640);
    let ids = Tensor::randint_low(
        3,
        vocab,
        [a.prompt_len.max(2) as i64 - 1],
        (Kind::Int64, Device::Cpu),
    );
    let prompt: Vec<i64> = std::iter::once(2)
        .chain(Vec::<i64>::try_from(&ids).map_err(llava::gemma_lm::Error::from)?)
        .collect();
    let config = GenerationConfig {
        max_new_tokens: a.new_tokens.max(2),
        ..GenerationConfig::default()
    };
    let start = Instant::now();
    let mut first = None;
    let mut profile = None;
    let mut profile_error = None;
    generate(&model, &[prompt], &config, |_, _| {
        first.get_or_insert_with(|| {
            if a.profile.is_some() {
                match Profile::start(false) {
                    Ok(p) => profile = Some(p),
                    Err(e) => profile_error = Some(e),
                }
            }
            start.elapsed().as_secs_f64()
        });
    })?;
    let total = start.elapsed().as_secs_f64();
    if let Some(e) = profile_error {
        return Err(e.into());
    }
    if let (Some(p), Some(path)) = (profile, &a.profile) {
        p.finish(path)?;
    }
    let prefill = first.unwrap_or(total);
    print_json(
        &TextReport {
            engine: "ours",
            weights,
            prompt_len: a.prompt_len,
            new_tokens: config.max_new_tokens,
            load_s,
            rss_mib,
            peak_rss_mib,
            prefill_tokens_per_s: a.prompt_len as f64 / prefill,
            decode_tokens_per_s: (config.max_new_tokens - 1) as f64 / (total - prefill).max(1e-9),
        },
        true,
    );
    Ok(ExitCode::SUCCESS)
}

fn dtype_name(kind: Kind) -> &'static str {
    match kind {
        Kind::BFloat16 => "bf16",
        Kind::Half => "f16",
        _ => "f32",
    }
}
