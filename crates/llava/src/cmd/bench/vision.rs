//! `llava bench-vision`: a preset's vision tower on random images.

use std::process::ExitCode;

use llava::vision_encoders::{FeatureSelect, VisionTower};
use serde::Serialize;
use tch::{Device, Kind, Tensor};

use super::{PresetOn, timed};
use crate::cmd::print_json;

/// Its arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    on: PresetOn,
    /// Images per batch.
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Timed runs (the best is reported).
    #[arg(long, default_value_t = 5)]
    runs: usize,
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

/// Runs it: one JSON object.
pub fn run(a: &Args) -> llava::Result<ExitCode> {
    let (device, kind) = a.on.device_and_kind()?;
    let report = measure(a, device, kind)?;
    print_json(&report, true);
    Ok(ExitCode::SUCCESS)
}

/// The tower of the preset on `batch` random images (LLaVA's features: layer -2, no CLS),
/// without autograd; one warm-up, then the best of `runs`.
fn measure(a: &Args, device: Device, kind: Kind) -> llava::Result<VisionReport> {
    let config = a.on.config()?;
    let vision = config.vision()?;
    tch::manual_seed(0);
    let (_vs, tower) =
        llava::foundation::build(device, kind, |root| VisionTower::new(root, &vision))?;
    let size = config.image_side()?;
    let pixels = Tensor::randn([a.batch as i64, 3, size, size], (kind, device));
    let _ = tower.features(&pixels, FeatureSelect::default())?;
    let mut best = f64::INFINITY;
    for _ in 0..a.runs.max(1) {
        let seconds = timed(device, || {
            let _ = tower.features(&pixels, FeatureSelect::default())?;
            Ok(())
        })?;
        best = best.min(seconds);
    }
    Ok(VisionReport {
        preset: a.on.preset.clone(),
        device: format!("{device:?}"),
        dtype: format!("{kind:?}"),
        batch: a.batch,
        batch_s: best,
        images_per_s: a.batch as f64 / best,
    })
}
