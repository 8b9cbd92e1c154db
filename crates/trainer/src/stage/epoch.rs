//! An epoch's data as this rank takes it: the steps of the one-process run from a position,
//! this rank's pieces of each, loaded (and packed, when the stage packs) in the background.

use std::sync::Arc;
use std::time::Instant;

use data::{Batch, Dataset, Loader};

use super::config::StageConfig;
use super::ranks::Ranks;
use crate::parallel::{self, Piece, PlannedStep};

/// Where the data stands: an epoch, and the place of the next sample in its order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Position {
    /// The epoch.
    pub epoch: u64,
    /// The next sample's place in the epoch's order.
    pub index: usize,
}

/// One optimizer step's data, this rank's part of it loaded.
pub(super) struct StepData {
    /// Micro-batches of the step, over every rank.
    pub micro_batches: usize,
    /// This rank's batches, each with the index of the micro-batch it is (a part of).
    pub batches: Vec<(usize, Batch)>,
    /// Where the data stands after the step.
    pub next: Position,
    /// When the step began loading.
    pub started: Instant,
}

/// The steps of an epoch from a position, as this rank loads them.
pub(super) struct EpochSteps {
    epoch: u64,
    len: usize,
    steps: std::iter::Zip<std::vec::IntoIter<PlannedStep>, std::vec::IntoIter<Vec<Piece>>>,
    loader: Loader,
}

impl EpochSteps {
    /// The steps of `at.epoch` from `at.index` in its `order`, this rank's pieces of them queued
    /// on a loader of `dataset`.
    pub(super) fn new(
        dataset: &Arc<Dataset>,
        config: &StageConfig,
        order: &[usize],
        at: Position,
        ranks: Ranks<'_>,
    ) -> Self {
        let plan = parallel::plan_epoch(order, at.index, config.micro_batch, config.accumulation());
        let shares: Vec<Vec<Piece>> = plan.iter().map(|planned| ranks.share(planned)).collect();
        let slices = shares
            .iter()
            .flatten()
            .map(|piece| (piece.samples.clone(), 0))
            .collect();
        let pack = config.pack.then_some(dataset.templater.max_length);
        EpochSteps {
            epoch: at.epoch,
            len: order.len(),
            steps: plan.into_iter().zip(shares),
            loader: Loader::from_slices_packed(dataset.clone(), slices, 2, pack),
        }
    }

    /// Where the data stands once the epoch's order is taken up to `end`: the next epoch's start
    /// when the epoch is done.
    fn after(&self, end: usize) -> Position {
        if end >= self.len {
            return Position {
                epoch: self.epoch + 1,
                index: 0,
            };
        }
        Position {
            epoch: self.epoch,
            index: end,
        }
    }
}

impl Iterator for EpochSteps {
    type Item = StepData;

    fn next(&mut self) -> Option<StepData> {
        let (planned, pieces) = self.steps.next()?;
        let started = Instant::now();
        let batches = pieces
            .into_iter()
            .map(|piece| (piece.micro, self.loader.next().expect("a batch per piece")))
            .collect();
        Some(StepData {
            micro_batches: planned.micro_batches.len(),
            batches,
            next: self.after(planned.end),
            started,
        })
    }
}
