//! What a stage is told: which stage, its schedule and batch sizes, its checkpoints.

use std::path::PathBuf;

use serde::Serialize;

use crate::optim::AdamWConfig;
use crate::schedule::WarmupCosine;

/// Which stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Stage {
    /// Connector pretraining.
    Pretrain,
    /// Instruction finetuning.
    Finetune,
}

/// The settings of one stage.
#[derive(Debug, Clone, Serialize)]
pub struct StageConfig {
    /// Which stage.
    pub stage: Stage,
    /// Peak learning rate (1e-3 for stage 1, 2e-5 for stage 2 in the recipe).
    pub lr: f64,
    /// Samples per forward pass.
    pub micro_batch: usize,
    /// Samples per optimizer step (256 / 128 in the recipe).
    pub global_batch: usize,
    /// Passes over the data.
    pub epochs: usize,
    /// Stop after this many optimizer steps.
    pub max_steps: Option<usize>,
    /// Fraction of the steps spent warming up.
    pub warmup_ratio: f64,
    /// AdamW settings.
    pub adamw: AdamWConfig,
    /// Global gradient-norm clipping.
    pub max_grad_norm: f64,
    /// Seed of the data order.
    pub seed: u64,
    /// Write a checkpoint every this many optimizer steps (`checkpoint-<step>/` in the output).
    pub save_every: Option<usize>,
    /// Continue from this checkpoint directory.
    pub resume: Option<PathBuf>,
    /// The connector's peak learning rate when it differs from `lr` (LLaVA's `mm_projector_lr`);
    /// it follows the same schedule.
    pub connector_lr: Option<f64>,
    /// Keep only each decoder layer's input and recompute the layer in backward.
    pub activation_checkpointing: bool,
    /// Pack each micro-batch's samples into rows of up to the templater's `max_length` tokens,
    /// each sample attending only to itself: less padding, the same loss.
    pub pack: bool,
}

impl StageConfig {
    /// Micro-batches per optimizer step: as many as make up the global batch.
    pub(super) fn accumulation(&self) -> usize {
        self.global_batch.div_ceil(self.micro_batch.max(1)).max(1)
    }

    /// Passes over the data the stage makes (at least one).
    pub(super) fn epoch_count(&self) -> u64 {
        self.epochs.max(1) as u64
    }

    /// Optimizer steps the stage takes over `samples` samples: every epoch's, or `max_steps`.
    pub(super) fn total_steps(&self, samples: usize) -> usize {
        let steps_per_epoch = samples.div_ceil(self.global_batch.max(1));
        self.max_steps
            .unwrap_or(usize::MAX)
            .min(steps_per_epoch * self.epochs.max(1))
            .max(1)
    }

    /// The learning rate of each of `total` steps.
    pub(super) fn schedule(&self, total: usize) -> WarmupCosine {
        WarmupCosine::with_ratio(self.lr, self.warmup_ratio, total)
    }

    /// Whether the stage writes a checkpoint after optimizer step `step`.
    pub(super) fn saves_after(&self, step: usize) -> bool {
        self.save_every.is_some_and(|every| step % every == 0)
    }
}
