//! `llava bench-generate`: greedy generation on a random-weight preset.

use std::process::ExitCode;

use super::{device_and_kind, print_json};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// bench-small, paper-2b-clip or paper-2b-dinov2.
    #[arg(long, default_value = "paper-2b-clip")]
    preset: String,
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
    /// cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "auto")]
    device: String,
    /// f32, bf16 or f16 (default: bf16 on CUDA, f32 on CPU).
    #[arg(long)]
    dtype: Option<String>,
    /// How decoding steps run: auto (CUDA graphs on a GPU), eager, static or graph.
    #[arg(long, default_value = "auto")]
    decode: String,
}

/// Runs it: one JSON object.
pub fn run(a: &Args) -> llava::Result<ExitCode> {
    let (device, kind) = device_and_kind(&a.device, &a.dtype)?;
    let report = llava::bench::generate(
        &a.preset,
        device,
        kind,
        a.batch,
        a.prompt_len,
        a.new_tokens,
        a.runs,
        a.decode.parse::<llava::gemma_lm::Decode>()?,
    )?;
    print_json(&report, true);
    Ok(ExitCode::SUCCESS)
}
