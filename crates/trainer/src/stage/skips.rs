//! The samples a stage skips: logged as this rank meets them, counted over every rank.

use std::collections::BTreeMap;

use data::{Batch, SkipCounter, SkipReason};

/// This rank's skips, for the log (the first few of each reason), and every rank's, by reason.
#[derive(Debug, Default)]
pub(super) struct Skips {
    logged: SkipCounter,
    counts: BTreeMap<SkipReason, usize>,
}

impl Skips {
    /// The counts a checkpoint saved (by the reasons' names); nothing logged yet.
    pub(super) fn resumed(saved: &BTreeMap<String, usize>) -> Self {
        let mut skips = Skips::default();
        for (reason, n) in saved {
            if let Some(r) = SkipReason::ALL.iter().find(|r| r.name() == reason) {
                skips.counts.insert(*r, *n);
            }
        }
        skips
    }

    /// Logs the first few skips of each reason among this rank's `batches`.
    pub(super) fn log(&mut self, batches: &[(usize, Batch)]) {
        for (_, batch) in batches {
            for (id, reason, detail) in &batch.skipped {
                if self.logged.add(id, *reason, detail) {
                    eprintln!("skipped sample {id}: {reason}: {detail}");
                }
            }
        }
    }

    /// Counts a step's skips over every rank, given per [`SkipReason::ALL`].
    pub(super) fn add(&mut self, per_reason: &[usize]) {
        for (reason, n) in SkipReason::ALL.iter().zip(per_reason) {
            if *n > 0 {
                *self.counts.entry(*reason).or_default() += n;
            }
        }
    }

    /// Every skip so far.
    pub(super) fn total(&self) -> usize {
        self.counts.values().sum()
    }

    /// The counts keyed by the reasons' names (as `summary.json` and checkpoints hold them).
    pub(super) fn by_name(&self) -> BTreeMap<String, usize> {
        self.counts
            .iter()
            .map(|(r, n)| (r.name().to_string(), *n))
            .collect()
    }
}
