//! The data-parallel layer of a stage: which rank this process is, and the sums over the ranks
//! the loop needs. One process is the case of rank 0 of 1, with nothing to add up.

use std::rc::Rc;

use tch::Tensor;

use super::StageError;
use crate::dist::{ProcessGroup, Reduce};
use crate::parallel::{self, Piece, PlannedStep};

/// The ranks a stage trains on, when more than one process does.
#[derive(Debug, Clone)]
pub struct Parallel {
    /// The process group of every rank of the job.
    pub group: Rc<ProcessGroup>,
    /// Split the optimizer state across the ranks (ZeRO-2) instead of replicating it.
    pub shard_optimizer: bool,
}

/// This process's place among the ranks of a stage.
#[derive(Debug, Clone, Copy)]
pub(super) struct Ranks<'a> {
    group: Option<&'a ProcessGroup>,
    rank: usize,
    world: usize,
}

impl<'a> Ranks<'a> {
    /// The ranks of `parallel`, or the one process when it is `None`.
    pub(super) fn of(parallel: Option<&'a Parallel>) -> Self {
        let group = parallel.map(|p| p.group.as_ref());
        let (rank, world) = group.map_or((0, 1), |g| (g.rank(), g.world()));
        Ranks { group, rank, world }
    }

    /// Whether this is rank 0, which writes what the stage leaves besides checkpoints.
    pub(super) fn is_leader(self) -> bool {
        self.rank == 0
    }

    /// How many ranks train.
    pub(super) fn world(self) -> usize {
        self.world
    }

    /// This rank's pieces of a step the one-process run takes ([`parallel::share`]).
    pub(super) fn share(self, step: &PlannedStep) -> Vec<Piece> {
        parallel::share(step, self.rank, self.world)
    }

    /// Waits for every rank.
    pub(super) fn barrier(self) -> Result<(), StageError> {
        match self.group {
            Some(g) => g.barrier().map_err(StageError::Dist),
            None => Ok(()),
        }
    }

    /// Each of `values` summed over the ranks.
    pub(super) fn sum_each(self, values: Vec<f64>) -> Result<Vec<f64>, StageError> {
        let Some(group) = self.group else {
            return Ok(values);
        };
        let t = Tensor::from_slice(&values);
        group
            .all_reduce(&t, Reduce::Sum)
            .map_err(StageError::Dist)?;
        Ok(Vec::<f64>::try_from(&t).expect("f64 values"))
    }

    /// `value` summed over the ranks.
    pub(super) fn sum(self, value: f64) -> Result<f64, StageError> {
        let Some(group) = self.group else {
            return Ok(value);
        };
        let t = Tensor::from_slice(&[value]);
        group
            .all_reduce(&t, Reduce::Sum)
            .map_err(StageError::Dist)?;
        Ok(t.double_value(&[0]))
    }
}
