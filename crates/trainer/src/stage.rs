//! One stage of the recipe as a plain loop: batches from the loader, forward, loss at labelled
//! positions, backward, gradient accumulation to the global batch, clipping, AdamW on the warmup-
//! cosine schedule, one metrics line per optimizer step.
//!
//! Stage 1 trains the connector alone; stage 2 the connector and the language model; the vision
//! tower is frozen in both (its features are computed without autograd).
//!
//! This file is the loop; its parts have their own modules: the settings (`config`), what trains
//! (`trainable`), an epoch's data as this rank loads it (`epoch`), the ranks and their sums
//! (`ranks`, `totals`), a micro-batch's passes (`micro_batch`), the metrics and summary
//! (`metrics`, `progress`, `skips`), checkpoints (`checkpoint`) and errors (`error`).

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use data::{Batch, Dataset};
use llava_model::LlavaModel;
use tch::{Kind, Tensor};

use crate::parallel::Optimizer;
use crate::schedule::WarmupCosine;

mod checkpoint;
mod config;
mod epoch;
mod error;
mod metrics;
mod micro_batch;
mod progress;
mod ranks;
mod skips;
mod totals;
mod trainable;

pub use checkpoint::{TrainerState, resolve_checkpoint};
pub use config::{Stage, StageConfig};
pub use error::StageError;
pub use metrics::{StepMetrics, Summary, peak_host_memory};
pub use ranks::Parallel;

use epoch::{EpochSteps, Position, StepData};
use error::Guard;
use metrics::MetricsLog;
use micro_batch::{loss_backward, seed_dropout};
use progress::Progress;
use ranks::Ranks;
use totals::StepTotals;

/// Trains `model` for one stage on `dataset`, writing `metrics.jsonl` into `output`. `order_for`
/// gives the sample order of an epoch.
pub fn train(
    model: &mut LlavaModel,
    dataset: Arc<Dataset>,
    config: &StageConfig,
    output: &Path,
    order_for: impl Fn(u64) -> Vec<usize>,
    on_step: impl FnMut(&StepMetrics),
) -> Result<Summary, StageError> {
    train_parallel(model, dataset, config, output, order_for, on_step, None)
}

/// [`train`] as one rank of `parallel`: every rank takes its share of each step the one-process
/// run takes ([`crate::parallel::share`]), the gradients are summed across the ranks before the
/// update, and rank 0 alone writes the metrics and calls `on_step`. Checkpoints are written by all.
pub fn train_parallel(
    model: &mut LlavaModel,
    dataset: Arc<Dataset>,
    config: &StageConfig,
    output: &Path,
    order_for: impl Fn(u64) -> Vec<usize>,
    mut on_step: impl FnMut(&StepMetrics),
    parallel: Option<&Parallel>,
) -> Result<Summary, StageError> {
    let ranks = Ranks::of(parallel);
    let mut optimizer = trainable::optimizer(model, config, parallel)?;
    model.set_training(true);
    let total = config.total_steps(dataset.records.len());
    let resumed = checkpoint::resume(config, output, &mut optimizer, ranks)?;
    let metrics = ranks
        .is_leader()
        .then(|| MetricsLog::open(output, resumed.as_ref()))
        .transpose()?;
    let mut trainer = Trainer {
        model,
        optimizer,
        dataset,
        config,
        output,
        ranks,
        guard: Guard {
            output,
            save_every: config.save_every,
        },
        schedule: config.schedule(total),
        total,
        metrics,
        progress: Progress::new(resumed.as_ref()),
        started: Instant::now(),
    };
    trainer.run(&order_for, &mut on_step)?;
    trainer.model.set_training(false);
    Ok(trainer.summary())
}

/// A stage under way: the model and its optimizer, the data, where the run writes, and how far
/// it has come.
struct Trainer<'a> {
    model: &'a mut LlavaModel,
    optimizer: Optimizer,
    dataset: Arc<Dataset>,
    config: &'a StageConfig,
    output: &'a Path,
    ranks: Ranks<'a>,
    guard: Guard<'a>,
    schedule: WarmupCosine,
    /// Optimizer steps the stage takes.
    total: usize,
    /// Rank 0's `metrics.jsonl`.
    metrics: Option<MetricsLog>,
    progress: Progress,
    /// When this invocation began training.
    started: Instant,
}

impl Trainer<'_> {
    /// The epochs from where the stage starts, step by step, until the last step.
    fn run(
        &mut self,
        order_for: &dyn Fn(u64) -> Vec<usize>,
        on_step: &mut dyn FnMut(&StepMetrics),
    ) -> Result<(), StageError> {
        let start = self.progress.start;
        for epoch in start.epoch..self.config.epoch_count() {
            let index = if epoch == start.epoch { start.index } else { 0 };
            let at = Position { epoch, index };
            let order = order_for(epoch);
            for step in EpochSteps::new(&self.dataset, self.config, &order, at, self.ranks) {
                self.take_step(step, on_step)?;
                if self.progress.step >= self.total {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// One optimizer step: this rank's micro-batches forward and backward, the gradients summed
    /// over the ranks, clipped and applied at the schedule's rate; then the step's metrics and,
    /// when one is due, a checkpoint.
    fn take_step(
        &mut self,
        data: StepData,
        on_step: &mut dyn FnMut(&StepMetrics),
    ) -> Result<(), StageError> {
        self.progress.skips.log(&data.batches);
        let totals = StepTotals::reduce(&data.batches, data.micro_batches, self.ranks)?;
        self.progress.skips.add(&totals.skipped);
        let loss = self.accumulate_gradients(&data.batches, &totals, data.micro_batches)?;
        let step = self.progress.begin_step();
        if !loss.is_finite() {
            return Err(StageError::NonFinite { step, loss });
        }
        let lr = self.schedule.lr(step - 1);
        let grad_norm = self.update(step, lr)?;
        let seconds = data.started.elapsed().as_secs_f64().max(1e-9);
        let metrics = StepMetrics {
            step,
            total_steps: self.total,
            loss,
            lr,
            grad_norm,
            samples_per_s: totals.samples as f64 / seconds,
            tokens_per_s: totals.tokens as f64 / seconds,
            samples_skipped: self.progress.skips.total(),
            padding_fraction: totals.padding_fraction(),
        };
        self.report(&metrics, on_step)?;
        self.progress.record(loss, totals.samples);
        if self.config.saves_after(step) {
            self.save_checkpoint(data.next)?;
        }
        Ok(())
    }

    /// The forward and backward passes of this rank's micro-batches of the step, their gradients
    /// adding up in the parameters; returns the step's loss: the mean over its `micro_batches`
    /// micro-batches, every rank's included.
    fn accumulate_gradients(
        &mut self,
        batches: &[(usize, Batch)],
        totals: &StepTotals,
        micro_batches: usize,
    ) -> Result<f64, StageError> {
        let step = self.progress.step;
        let mut step_loss = Tensor::zeros([], (Kind::Float, self.model.device()));
        for (micro, batch) in batches {
            if batch.batch_size == 0 || batch.label_tokens == 0 {
                continue;
            }
            seed_dropout(self.config.seed, step, *micro);
            // The micro-batch's loss is the mean over its labelled tokens; a rank holding a
            // slice of it contributes its tokens' share.
            let share = batch.label_tokens as f64 / totals.labels[*micro];
            let divisor = self.config.accumulation() as f64 / share;
            let checkpointed = self.config.activation_checkpointing;
            let model = &*self.model;
            let loss = self.guard.run(step + 1, batch, || {
                loss_backward(model, batch, divisor, checkpointed)
            })?;
            step_loss += loss * share;
        }
        Ok(self.ranks.sum(step_loss.double_value(&[]))? / micro_batches.max(1) as f64)
    }

    /// The optimizer's part of step `step`, at `lr`: the gradients summed over the ranks, clipped,
    /// applied, then dropped. Returns their norm before clipping.
    fn update(&mut self, step: usize, lr: f64) -> Result<f64, StageError> {
        let max_norm = self.config.max_grad_norm;
        let optimizer = &mut self.optimizer;
        let grad_norm = self.guard.run(step, &Batch::default(), || {
            optimizer
                .reduce_gradients()
                .map_err(StageError::optimizer)?;
            let norm = optimizer
                .clip_grad_norm(max_norm)
                .map_err(StageError::optimizer)?;
            optimizer.step(lr).map_err(StageError::optimizer)?;
            Ok(norm)
        })?;
        self.optimizer.zero_grad();
        Ok(grad_norm)
    }

    /// On rank 0: the step's line of `metrics.jsonl`, then `on_step`.
    fn report(
        &mut self,
        metrics: &StepMetrics,
        on_step: &mut dyn FnMut(&StepMetrics),
    ) -> Result<(), StageError> {
        let Some(log) = &mut self.metrics else {
            return Ok(());
        };
        log.write(metrics)?;
        on_step(metrics);
        Ok(())
    }

    /// A checkpoint of the stage as it is now, the data standing at `next`.
    fn save_checkpoint(&self, next: Position) -> Result<(), StageError> {
        let state = self.progress.state(next, self.ranks.world());
        checkpoint::save_checkpoint(self.output, &self.optimizer, &state, self.ranks)
    }

    /// What the finished stage reports.
    fn summary(&self) -> Summary {
        let seconds = self.started.elapsed().as_secs_f64();
        self.progress
            .summary(seconds, self.ranks.world(), self.optimizer.state_bytes())
    }
}
