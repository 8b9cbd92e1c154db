//! What the ranks add up about a step before its backward passes.

use data::{Batch, SkipReason};

use super::StageError;
use super::ranks::Ranks;

/// Each micro-batch's labelled tokens (the denominators of its loss, which a micro-batch cut
/// among ranks needs whole), and the step's samples, tokens and skips by reason, for the metrics.
pub(super) struct StepTotals {
    /// Labelled tokens of each micro-batch of the step.
    pub labels: Vec<f64>,
    /// Samples trained on.
    pub samples: usize,
    /// Tokens, padding excluded.
    pub tokens: usize,
    /// Token slots of the batches' tensors, padding included.
    pub slots: usize,
    /// Samples skipped, per [`SkipReason::ALL`].
    pub skipped: Vec<usize>,
}

/// Where the totals sit in the flat vector the ranks sum: one slot per micro-batch, then these.
const SAMPLES: usize = 0;
const TOKENS: usize = 1;
const SLOTS: usize = 2;
const SKIPPED: usize = 3;

impl StepTotals {
    /// The totals over every rank of the step of `micro_batches` micro-batches of which this rank
    /// loaded `batches` (micro-batch index, batch).
    pub(super) fn reduce(
        batches: &[(usize, Batch)],
        micro_batches: usize,
        ranks: Ranks<'_>,
    ) -> Result<Self, StageError> {
        let all = ranks.sum_each(local(batches, micro_batches))?;
        Ok(Self::unpack(&all, micro_batches))
    }

    /// The totals from their flat layout.
    fn unpack(flat: &[f64], micro_batches: usize) -> Self {
        let (labels, rest) = flat.split_at(micro_batches);
        StepTotals {
            labels: labels.to_vec(),
            samples: rest[SAMPLES] as usize,
            tokens: rest[TOKENS] as usize,
            slots: rest[SLOTS] as usize,
            skipped: rest[SKIPPED..].iter().map(|&n| n as usize).collect(),
        }
    }

    /// The fraction of the step's token slots that were padding.
    pub(super) fn padding_fraction(&self) -> f64 {
        1.0 - self.tokens as f64 / self.slots.max(1) as f64
    }
}

/// This rank's share of the totals, laid out flat to be summed in one collective.
fn local(batches: &[(usize, Batch)], micro_batches: usize) -> Vec<f64> {
    let mut flat = vec![0f64; micro_batches + SKIPPED + SkipReason::ALL.len()];
    for (micro, batch) in batches {
        flat[*micro] += batch.label_tokens as f64;
        let rest = &mut flat[micro_batches..];
        rest[SAMPLES] += batch.ids.len() as f64;
        rest[SLOTS] += (batch.batch_size * batch.seq_len) as f64;
        rest[TOKENS] += batch.attention_mask.iter().filter(|&&m| m == 1).count() as f64;
        for (_, reason, _) in &batch.skipped {
            rest[SKIPPED + reason_index(*reason)] += 1.0;
        }
    }
    flat
}

/// The place of `reason` in [`SkipReason::ALL`].
fn reason_index(reason: SkipReason) -> usize {
    SkipReason::ALL
        .iter()
        .position(|&x| x == reason)
        .expect("listed")
}
