//! What a stage reports: a line of `metrics.jsonl` per optimizer step, and its summary.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::StageError;
use super::checkpoint::TrainerState;

pub use foundation::device::peak_host_memory;

/// What one optimizer step reports (one line of `metrics.jsonl`).
#[derive(Debug, Clone, Serialize)]
pub struct StepMetrics {
    /// Optimizer step, from 1.
    pub step: usize,
    /// Optimizer steps the run will take.
    pub total_steps: usize,
    /// Mean loss over the step's micro-batches.
    pub loss: f64,
    /// Learning rate used.
    pub lr: f64,
    /// Gradient norm before clipping.
    pub grad_norm: f64,
    /// Samples per second of this step.
    pub samples_per_s: f64,
    /// Tokens (padding excluded) per second of this step.
    pub tokens_per_s: f64,
    /// Samples skipped so far.
    pub samples_skipped: usize,
    /// The fraction of the step's token slots that were padding.
    pub padding_fraction: f64,
}

/// What a finished stage reports (`summary.json`).
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Optimizer steps taken.
    pub steps: usize,
    /// Samples trained on.
    pub samples_seen: usize,
    /// Samples skipped, by reason.
    pub samples_skipped: usize,
    /// Counts per skip reason.
    pub skipped_by_reason: BTreeMap<String, usize>,
    /// Loss of the last step.
    pub final_loss: f64,
    /// Loss of the first step.
    pub first_loss: f64,
    /// Wall-clock seconds of this invocation (a resumed run counts from its resume).
    pub seconds: f64,
    /// The process's peak resident set (Linux `VmHWM`): host memory only; tch does not expose the
    /// CUDA allocator's statistics, so GPU memory is measured by `bench-train`'s driver query.
    pub peak_memory_bytes: Option<u64>,
    /// Ranks that trained.
    pub world_size: usize,
    /// Bytes of optimizer state (f32 masters and moments) each rank holds: 1/N of the whole
    /// with a sharded optimizer.
    pub optimizer_state_bytes: u64,
}

/// `metrics.jsonl`, open for the steps to come.
pub(super) struct MetricsLog {
    path: PathBuf,
    file: File,
}

impl MetricsLog {
    /// `metrics.jsonl` in `output`: new, or for a resumed run kept up to its checkpoint (a run
    /// killed later had written lines for steps it now takes again) and appended to.
    pub(super) fn open(output: &Path, resumed: Option<&TrainerState>) -> Result<Self, StageError> {
        let path = output.join("metrics.jsonl");
        if let Some(state) = resumed {
            keep_up_to(&path, state.step)?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(resumed.is_some())
            .write(true)
            .truncate(resumed.is_none())
            .open(&path)
            .map_err(StageError::io(&path))?;
        Ok(MetricsLog { path, file })
    }

    /// Appends the line of a step.
    pub(super) fn write(&mut self, metrics: &StepMetrics) -> Result<(), StageError> {
        let line = serde_json::to_string(metrics).expect("metrics serialise");
        writeln!(self.file, "{line}").map_err(StageError::io(&self.path))
    }
}

/// Drops the lines of `path` (when it can be read) for steps after `step`.
fn keep_up_to(path: &Path, step: usize) -> Result<(), StageError> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(());
    };
    let kept: String = text
        .lines()
        .filter(|l| step_of(l).is_some_and(|s| s as usize <= step))
        .map(|l| format!("{l}\n"))
        .collect();
    foundation::write_atomic(path, kept.as_bytes()).map_err(StageError::Checkpoint)
}

/// The step a line of `metrics.jsonl` is for.
fn step_of(line: &str) -> Option<u64> {
    serde_json::from_str::<serde_json::Value>(line)
        .ok()?
        .get("step")?
        .as_u64()
}
