//! How far a stage has come: what a checkpoint saves and the summary reports.

use super::checkpoint::TrainerState;
use super::epoch::Position;
use super::metrics::{Summary, peak_host_memory};
use super::skips::Skips;

/// Steps taken, samples seen, losses and skips, and where this invocation's data starts.
#[derive(Debug)]
pub(super) struct Progress {
    /// Optimizer steps taken.
    pub step: usize,
    /// Samples trained on.
    pub samples_seen: usize,
    /// Loss of the first step.
    pub first_loss: f64,
    /// Loss of the latest step.
    pub last_loss: f64,
    /// Samples skipped.
    pub skips: Skips,
    /// Where the data starts (a resumed run's checkpoint position).
    pub start: Position,
}

impl Progress {
    /// Nothing done yet, or what a resumed checkpoint says was done.
    pub(super) fn new(resumed: Option<&TrainerState>) -> Self {
        let Some(state) = resumed else {
            return Progress {
                step: 0,
                samples_seen: 0,
                first_loss: f64::NAN,
                last_loss: f64::NAN,
                skips: Skips::default(),
                start: Position { epoch: 0, index: 0 },
            };
        };
        Progress {
            step: state.step,
            samples_seen: state.samples_seen,
            first_loss: state.first_loss,
            last_loss: f64::NAN,
            skips: Skips::resumed(&state.skipped),
            start: Position {
                epoch: state.epoch,
                index: state.position,
            },
        }
    }

    /// Counts the start of an optimizer step; returns its number, from 1.
    pub(super) fn begin_step(&mut self) -> usize {
        self.step += 1;
        self.step
    }

    /// Records the finished step's loss and the samples it trained on.
    pub(super) fn record(&mut self, loss: f64, samples: usize) {
        if self.step == 1 {
            self.first_loss = loss;
        }
        self.last_loss = loss;
        self.samples_seen += samples;
    }

    /// What a checkpoint taken now saves, the data standing at `next`.
    pub(super) fn state(&self, next: Position, world_size: usize) -> TrainerState {
        TrainerState {
            step: self.step,
            epoch: next.epoch,
            position: next.index,
            samples_seen: self.samples_seen,
            skipped: self.skips.by_name(),
            first_loss: self.first_loss,
            world_size,
        }
    }

    /// The summary of the finished stage, which ran `seconds` in this invocation.
    pub(super) fn summary(
        &self,
        seconds: f64,
        world_size: usize,
        optimizer_state_bytes: u64,
    ) -> Summary {
        Summary {
            steps: self.step,
            samples_seen: self.samples_seen,
            samples_skipped: self.skips.total(),
            skipped_by_reason: self.skips.by_name(),
            final_loss: self.last_loss,
            first_loss: self.first_loss,
            seconds,
            peak_memory_bytes: peak_host_memory(),
            world_size,
            optimizer_state_bytes,
        }
    }
}
