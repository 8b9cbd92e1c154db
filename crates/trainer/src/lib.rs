//! The two-stage LLaVA-Gemma recipe.
//!
//! So far: [`stage::train`], one stage as a plain loop (gradient accumulation, clipping, AdamW on
//! the warmup-cosine schedule, metrics per optimizer step, bad samples skipped and counted);
//! [`optim::AdamW`] with state a checkpoint can hold; [`schedule::WarmupCosine`]. Checkpoints,
//! resume, presets and the `pretrain` / `finetune` commands come with the rest of issue 6.

pub mod dist;
pub mod optim;
pub mod parallel;
pub mod plan;
pub mod plot;
pub mod run;
pub mod schedule;
pub mod stage;

pub use optim::{AdamW, AdamWConfig};
pub use run::{RunConfig, RunError, run};
pub use schedule::WarmupCosine;
pub use stage::{
    Parallel, Stage, StageConfig, StageError, StepMetrics, Summary, TrainerState, train,
    train_parallel,
};
