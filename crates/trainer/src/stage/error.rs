//! What stops a stage, and how libtorch's failures during a step become errors that say what to do.

use std::path::{Path, PathBuf};

use data::Batch;

use super::checkpoint::resolve_checkpoint;
use crate::dist::DistError;
use crate::parallel::OptimizerError;

/// Errors that stop a stage.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    /// The loss became NaN or infinite.
    #[error("step {step}: the loss is {loss}; stopping rather than corrupting the weights")]
    NonFinite {
        /// The optimizer step.
        step: usize,
        /// The value.
        loss: f64,
    },
    /// From the model.
    #[error(transparent)]
    Model(#[from] llava_model::Error),
    /// The optimizer's kernels failed (out of device memory, say).
    #[error("optimizer: {0}")]
    Optimizer(#[from] tch::TchError),
    /// Writing a checkpoint failed.
    #[error(transparent)]
    Checkpoint(foundation::Error),
    /// A checkpoint cannot be resumed from.
    #[error("cannot resume: {0}")]
    Resume(String),
    /// The device ran out of memory during a step.
    #[error(
        "out of memory at step {step}{shape}: {message}\n  lower --micro-batch (the global batch stays, through more accumulation) or --max-length\n  {checkpoint}"
    )]
    OutOfMemory {
        /// The optimizer step being taken.
        step: usize,
        /// `, micro-batch B x L tokens` when a forward pass ran out.
        shape: String,
        /// libtorch's message.
        message: String,
        /// Where the last checkpoint is, and how to resume.
        checkpoint: String,
    },
    /// libtorch failed during a step.
    #[error("step {step}: libtorch: {message}")]
    Torch {
        /// The optimizer step being taken.
        step: usize,
        /// libtorch's message.
        message: String,
    },
    /// A collective failed: a rank died or stopped answering.
    #[error("data parallel: {0}")]
    Dist(DistError),
    /// Writing metrics failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
}

impl StageError {
    /// The error for a failure of the optimizer: libtorch's or a collective's.
    pub(super) fn optimizer(e: OptimizerError) -> StageError {
        match e {
            OptimizerError::Torch(e) => StageError::Optimizer(e),
            OptimizerError::Dist(e) => StageError::Dist(e),
        }
    }

    /// A failure to read or write `path`, as the map of an [`std::io::Error`].
    pub(super) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StageError {
        let path = path.to_path_buf();
        move |source| StageError::Io { path, source }
    }

    /// The error for a libtorch failure during `step` on `batch`: an out-of-memory error names the
    /// batch's shape, what to lower and the checkpoint to resume from.
    fn torch(
        message: String,
        step: usize,
        batch: &Batch,
        output: &Path,
        save_every: Option<usize>,
    ) -> StageError {
        if !foundation::torch_panic::is_out_of_memory(&message) {
            return StageError::Torch { step, message };
        }
        StageError::OutOfMemory {
            step,
            shape: shape_of(batch),
            message: message.lines().next().unwrap_or_default().to_string(),
            checkpoint: where_to_resume(output, save_every),
        }
    }
}

/// What ran out of memory: the micro-batch, or (an empty batch) the optimizer step.
fn shape_of(batch: &Batch) -> String {
    if batch.batch_size == 0 {
        return " (in the optimizer step)".into();
    }
    format!(
        " (micro-batch of {} x {} tokens, {} images)",
        batch.batch_size, batch.seq_len, batch.images
    )
}

/// The advice on resuming: the last checkpoint in `output`, or that there is none (yet).
fn where_to_resume(output: &Path, save_every: Option<usize>) -> String {
    match resolve_checkpoint(output) {
        Ok(dir) => format!(
            "the last checkpoint is {}; continue with --resume {}",
            dir.display(),
            output.display()
        ),
        Err(_) if save_every.is_none() => {
            "no checkpoint was written (add --save-every N to keep one)".into()
        }
        Err(_) => "no checkpoint was written yet".into(),
    }
}

/// What a failure during a step is reported with: where the run writes its checkpoints.
#[derive(Debug, Clone, Copy)]
pub(super) struct Guard<'a> {
    /// The run's output directory.
    pub output: &'a Path,
    /// How often the run writes a checkpoint.
    pub save_every: Option<usize>,
}

impl Guard<'_> {
    /// Runs one part of optimizer step `step` on `batch` (an empty batch for the optimizer's
    /// part), turning libtorch's failures (panics included) into errors; running out of memory
    /// becomes [`StageError::OutOfMemory`], which says what to lower and where to resume.
    pub(super) fn run<T>(
        self,
        step: usize,
        batch: &Batch,
        f: impl FnOnce() -> Result<T, StageError>,
    ) -> Result<T, StageError> {
        let torch = |message| StageError::torch(message, step, batch, self.output, self.save_every);
        match foundation::torch_panic::catch(f) {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) if foundation::torch_panic::is_out_of_memory(&e.to_string()) => {
                Err(torch(e.to_string()))
            }
            Ok(Err(e)) => Err(e),
            Err(panic) => Err(torch(panic.message)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_memory_says_what_ran_out_what_to_lower_and_where_to_resume() {
        let dir = tempfile::tempdir().unwrap();
        let batch = Batch {
            batch_size: 4,
            seq_len: 1024,
            images: 4,
            ..Batch::default()
        };
        let oom = "CUDA out of memory. Tried to allocate 2.00 GiB.".to_string();
        let text = StageError::torch(oom.clone(), 7, &batch, dir.path(), None).to_string();
        for part in [
            "step 7",
            "4 x 1024",
            "--micro-batch",
            "--max-length",
            "--save-every",
        ] {
            assert!(text.contains(part), "{part}: {text}");
        }
        let checkpoint = dir.path().join("checkpoint-5");
        std::fs::create_dir_all(&checkpoint).unwrap();
        std::fs::write(checkpoint.join("trainer_state.json"), "{}").unwrap();
        let text = StageError::torch(oom, 7, &batch, dir.path(), Some(5)).to_string();
        assert!(
            text.contains("checkpoint-5") && text.contains("--resume"),
            "{text}"
        );
        let other = StageError::torch("shape mismatch".into(), 3, &batch, dir.path(), None);
        assert!(matches!(other, StageError::Torch { step: 3, .. }));
    }
}
