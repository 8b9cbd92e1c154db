//! `llava bench-vision`: a preset's vision tower on random images.

use std::process::ExitCode;

use super::{device_and_kind, print_json};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// bench-small, paper-2b-clip or paper-2b-dinov2.
    #[arg(long, default_value = "paper-2b-clip")]
    preset: String,
    /// Images per batch.
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Timed runs (the best is reported).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "auto")]
    device: String,
    /// f32, bf16 or f16 (default: bf16 on CUDA, f32 on CPU).
    #[arg(long)]
    dtype: Option<String>,
}

/// Runs it: one JSON object.
pub fn run(a: &Args) -> llava::Result<ExitCode> {
    let (device, kind) = device_and_kind(&a.device, &a.dtype)?;
    let report = llava::bench::vision(&a.preset, device, kind, a.batch, a.runs)?;
    print_json(&report, true);
    Ok(ExitCode::SUCCESS)
}
