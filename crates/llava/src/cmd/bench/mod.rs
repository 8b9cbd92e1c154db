//! The `bench-*` commands: throughput on random weights of a model preset, for any device. Each
//! prints one JSON object, so that a GPU run and the Python reference
//! (`bench/hf_llava_baseline.py` of the shared notes, `scripts/bench_reference.py`) can be
//! compared side by side.
//!
//! * [`generate`]: `llava bench-generate`, greedy generation;
//! * [`vision`]: `llava bench-vision`, a preset's vision tower;
//! * [`text`]: `llava bench-text`, a Gemma checkpoint from disk: load, prefill, decode;
//! * [`train`]: `llava bench-train`, training steps (one rank or several).

pub mod generate;
pub mod text;
pub mod train;
pub mod vision;

use std::time::Instant;

use llava::llava_model::{LlavaConfig, presets};
use tch::{Device, Kind};

use super::device_and_kind;

/// The flags `bench-generate` and `bench-vision` share: which preset, on which device, in which
/// dtype.
#[derive(Debug, clap::Args)]
pub struct PresetOn {
    /// bench-small, paper-2b-clip, paper-2b-dinov2; bench-small-gemma2 / -gemma3 and
    /// tiny(-gemma2/-gemma3) for the other Gemma generations.
    #[arg(long, default_value = "paper-2b-clip")]
    preset: String,
    /// cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "auto")]
    device: String,
    /// f32, bf16 or f16 (default: bf16 on CUDA, f32 on CPU).
    #[arg(long)]
    dtype: Option<String>,
}

impl PresetOn {
    /// The device and the dtype.
    fn device_and_kind(&self) -> llava::Result<(Device, Kind)> {
        device_and_kind(&self.device, &self.dtype)
    }

    /// The preset's configuration.
    fn config(&self) -> llava::Result<LlavaConfig> {
        preset(&self.preset)
    }
}

/// The configuration of the preset `name`.
fn preset(name: &str) -> llava::Result<LlavaConfig> {
    presets::by_name(name).ok_or_else(|| {
        llava::Error::Unsupported(format!(
            "unknown preset `{name}` ({})",
            presets::NAMES.join(", ")
        ))
    })
}

/// Waits until `device` has finished the work queued on it.
fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

/// Seconds `work` takes on `device`, the device's queue drained before and after.
fn timed(device: Device, work: impl FnOnce() -> llava::Result<()>) -> llava::Result<f64> {
    sync(device);
    let start = Instant::now();
    work()?;
    sync(device);
    Ok(start.elapsed().as_secs_f64())
}
