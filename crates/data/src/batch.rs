//! From records to padded batches: sample order (seeded shuffle, LLaVA's modality-length
//! grouping), a resumable position, collation with right padding, and background prefetch.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

use image::RgbImage;
use image_processing::ImageProcessor;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rayon::prelude::*;

use crate::images::ImageSource;
use crate::record::{BadRecord, SkipReason};
use crate::store::RecordFile;
use crate::template::{IGNORE, Templater, Tokenized};

/// A dataset ready for batching: checked records, where their images are, how to tokenize them and
/// how to prepare their images.
#[derive(Debug)]
pub struct Dataset {
    /// The usable records, indexed in their file.
    pub records: RecordFile,
    /// Records skipped while reading.
    pub bad_records: Vec<BadRecord>,
    /// The image store (`None` for text-only data).
    pub images: Option<ImageSource>,
    /// Template and tokenizer.
    pub templater: Templater,
    /// Image preprocessing (pad to square for stage 2).
    pub processor: ImageProcessor,
}

/// One sample, tokenized, with its decoded images.
#[derive(Debug)]
pub struct Sample {
    /// The record's id.
    pub id: String,
    /// Ids and labels.
    pub tokens: Tokenized,
    /// The images, in the order of their tokens.
    pub images: Vec<RgbImage>,
}

impl Dataset {
    /// LLaVA's `modality_lengths`: a cheap length estimate per record (words, plus 128 for an
    /// image), positive for image records and negative for text-only ones, without tokenizing
    /// (computed when the file was indexed).
    pub fn modality_lengths(&self) -> Vec<i64> {
        (0..self.records.len())
            .map(|i| self.records.modality_length(i))
            .collect()
    }

    /// Tokenizes record `index` and loads its images, or says why it cannot be used.
    pub fn sample(&self, index: usize) -> Result<Sample, (SkipReason, String)> {
        let record = self
            .records
            .get(index)
            .map_err(|bad| (bad.reason, bad.detail))?;
        let tokens = self.templater.tokenize(&record)?;
        let images = record
            .images
            .iter()
            .map(|path| {
                let source = self.images.as_ref().ok_or_else(|| {
                    (
                        SkipReason::MissingImage,
                        format!("{path}: the dataset was opened without an image folder"),
                    )
                })?;
                source.load(path).map_err(|f| (f.reason, f.detail))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Sample {
            id: record.id,
            tokens,
            images,
        })
    }
}

/// A seeded permutation of `0..n` for `epoch`.
pub fn shuffled(n: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    let mut rng =
        rand::rngs::StdRng::seed_from_u64(seed ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    order.shuffle(&mut rng);
    order
}

/// LLaVA's `get_modality_length_grouped_indices` (one process): image and text-only samples in
/// separate groups of `group` (the global batch), each group sorted longest first, groups in seeded
/// random order, and the two remainders together in a last, mixed group.
pub fn modality_grouped(lengths: &[i64], group: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let group = group.max(1);
    let mut rng =
        rand::rngs::StdRng::seed_from_u64(seed ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let split = |image: bool, rng: &mut rand::rngs::StdRng| -> Vec<Vec<usize>> {
        let mut indices: Vec<usize> = (0..lengths.len())
            .filter(|&i| (lengths[i] > 0) == image)
            .collect();
        indices.shuffle(rng);
        indices
            .chunks(group)
            .map(|chunk| {
                let mut chunk = chunk.to_vec();
                chunk.sort_by_key(|&i| std::cmp::Reverse(lengths[i].abs()));
                chunk
            })
            .collect()
    };
    let mut image_groups = split(true, &mut rng);
    let mut text_groups = split(false, &mut rng);
    let mut rest: Vec<usize> = Vec::new();
    rest.extend(image_groups.pop().unwrap_or_default());
    rest.extend(text_groups.pop().unwrap_or_default());
    let mut groups: Vec<Vec<usize>> = image_groups.into_iter().chain(text_groups).collect();
    groups.shuffle(&mut rng);
    if !rest.is_empty() {
        rest.sort_unstable();
        groups.push(rest);
    }
    groups.into_iter().flatten().collect()
}

/// A padded batch in plain buffers (tensors are made on the training thread).
#[derive(Debug, Clone, Default)]
pub struct Batch {
    /// `[batch_size, seq_len]`, right-padded with the pad id.
    pub input_ids: Vec<i64>,
    /// `[batch_size, seq_len]`, `-100` at padding.
    pub labels: Vec<i64>,
    /// `[batch_size, seq_len]`, 1 for tokens, 0 for padding.
    pub attention_mask: Vec<i64>,
    /// Rows (samples, or with packing rows of several samples each).
    pub batch_size: usize,
    /// Columns.
    pub seq_len: usize,
    /// `[images, 3, H, W]`: every sample's images, in row order.
    pub pixel_values: Vec<f32>,
    /// Number of images.
    pub images: usize,
    /// `(H, W)` of each image.
    pub image_size: (usize, usize),
    /// The record ids of the samples, in order.
    pub ids: Vec<String>,
    /// Packed batches: each token's position within its sample, `[batch_size, seq_len]`
    /// (empty when every row is one sample).
    pub position_ids: Vec<i64>,
    /// Packed batches: each token's sample within its row (0, 1, …), -1 at padding,
    /// `[batch_size, seq_len]` (empty when every row is one sample).
    pub segment_ids: Vec<i64>,
    /// Samples of this batch's slice of the order that were skipped: record id, reason, detail.
    pub skipped: Vec<(String, SkipReason, String)>,
    /// Labelled positions (the loss's denominator).
    pub label_tokens: usize,
    /// Where the next batch starts in the epoch's order (the resumable position).
    pub next_position: usize,
}

/// Right-pads tokenized samples into a batch and preprocesses their images (in parallel).
pub fn collate(samples: Vec<Sample>, pad: i64, processor: &ImageProcessor) -> Batch {
    let seq_len = samples
        .iter()
        .map(|s| s.tokens.input_ids.len())
        .max()
        .unwrap_or(0);
    let mut batch = Batch {
        batch_size: samples.len(),
        seq_len,
        ..Batch::default()
    };
    let mut images = Vec::new();
    for s in &samples {
        let n = s.tokens.input_ids.len();
        batch.input_ids.extend(
            s.tokens
                .input_ids
                .iter()
                .copied()
                .chain(std::iter::repeat_n(pad, seq_len - n)),
        );
        batch.labels.extend(
            s.tokens
                .labels
                .iter()
                .copied()
                .chain(std::iter::repeat_n(IGNORE, seq_len - n)),
        );
        batch
            .attention_mask
            .extend(std::iter::repeat_n(1, n).chain(std::iter::repeat_n(0, seq_len - n)));
        batch.label_tokens += s
            .tokens
            .labels
            .iter()
            .skip(1)
            .filter(|&&l| l != IGNORE)
            .count();
        batch.ids.push(s.id.clone());
        images.extend(&s.images);
    }
    if let Some((h, w)) = processor.output_size() {
        let (pixels, statuses) = processor
            .process_batch(images.len(), |i| Ok(images[i].clone()))
            .expect("an output size was checked");
        debug_assert!(
            statuses.iter().all(Result::is_ok),
            "decoded images always preprocess"
        );
        batch.pixel_values = pixels;
        batch.images = images.len();
        batch.image_size = (h as usize, w as usize);
    }
    batch
}

/// Packs tokenized samples into as few rows of at most `budget` tokens as it can, balanced (the
/// longest samples first, each into the row with the fewest tokens: rows come out about equally
/// long, so little padding is left), right-pads the rows, and preprocesses the images as
/// [`collate`] does, in the packed order. Each sample's positions restart at 0 and its first token
/// carries no label (it follows another sample, which it must not be predicted from), so the loss
/// over the packed batch, with attention kept within each sample, is the unpacked batch's.
pub fn collate_packed(
    samples: Vec<Sample>,
    pad: i64,
    processor: &ImageProcessor,
    budget: usize,
) -> Batch {
    let lengths: Vec<usize> = samples.iter().map(|s| s.tokens.input_ids.len()).collect();
    let rows = balanced_rows(&lengths, budget.max(1));
    let width = |row: &Vec<usize>| -> usize { row.iter().map(|&i| lengths[i]).sum() };
    let seq_len = rows.iter().map(width).max().unwrap_or(0);
    let mut batch = Batch {
        batch_size: rows.len(),
        seq_len,
        ..Batch::default()
    };
    for row in &rows {
        for (segment, &i) in row.iter().enumerate() {
            let t = &samples[i].tokens;
            let n = t.input_ids.len();
            batch.input_ids.extend(&t.input_ids);
            batch.labels.push(IGNORE);
            batch.labels.extend(t.labels.iter().skip(1));
            batch.attention_mask.extend(std::iter::repeat_n(1, n));
            batch.position_ids.extend(0..n as i64);
            batch
                .segment_ids
                .extend(std::iter::repeat_n(segment as i64, n));
        }
        let pad_len = seq_len - width(row);
        batch.input_ids.extend(std::iter::repeat_n(pad, pad_len));
        batch.labels.extend(std::iter::repeat_n(IGNORE, pad_len));
        batch.attention_mask.extend(std::iter::repeat_n(0, pad_len));
        batch.position_ids.extend(std::iter::repeat_n(0, pad_len));
        batch.segment_ids.extend(std::iter::repeat_n(-1, pad_len));
    }
    // The images (and ids, and the label count) in the packed order, which is the order the
    // `<image>` runs appear in reading the rows.
    let mut slots: Vec<Option<Sample>> = samples.into_iter().map(Some).collect();
    let ordered: Vec<Sample> = rows
        .iter()
        .flatten()
        .map(|&i| slots[i].take().expect("each sample in one row"))
        .collect();
    let unpacked = collate(ordered, pad, processor);
    Batch {
        pixel_values: unpacked.pixel_values,
        images: unpacked.images,
        image_size: unpacked.image_size,
        ids: unpacked.ids,
        label_tokens: unpacked.label_tokens,
        ..batch
    }
}

/// Sample indices per row: the fewest rows of at most `budget` tokens that the longest-first
/// greedy fill manages, each row's samples in their original order ([`collate_packed`]'s rows).
pub fn balanced_rows(lengths: &[usize], budget: usize) -> Vec<Vec<usize>> {
    if lengths.is_empty() {
        return Vec::new();
    }
    let mut by_length: Vec<usize> = (0..lengths.len()).collect();
    by_length.sort_by_key(|&i| std::cmp::Reverse(lengths[i]));
    let total: usize = lengths.iter().sum();
    let mut count = total.div_ceil(budget).max(1);
    loop {
        let mut rows: Vec<Vec<usize>> = vec![Vec::new(); count];
        let mut used = vec![0usize; count];
        let fits = by_length.iter().all(|&i| {
            let row = (0..count).min_by_key(|&r| used[r]).expect("a row");
            if used[row] + lengths[i] > budget && !rows[row].is_empty() {
                return false;
            }
            used[row] += lengths[i];
            rows[row].push(i);
            true
        });
        if fits {
            for row in &mut rows {
                row.sort_unstable();
            }
            rows.retain(|r| !r.is_empty());
            return rows;
        }
        count += 1;
    }
}

/// Counts skipped samples by reason and keeps the first few of each for the log.
#[derive(Debug, Clone, Default)]
pub struct SkipCounter {
    /// Count per reason.
    pub counts: BTreeMap<SkipReason, usize>,
    /// The first examples per reason: record id and detail.
    pub examples: BTreeMap<SkipReason, Vec<(String, String)>>,
}

impl SkipCounter {
    /// How many examples per reason are kept.
    pub const EXAMPLES: usize = 5;

    /// Records one skip; returns whether it is among the first few of its reason (worth logging).
    pub fn add(&mut self, id: &str, reason: SkipReason, detail: &str) -> bool {
        *self.counts.entry(reason).or_default() += 1;
        let examples = self.examples.entry(reason).or_default();
        let first = examples.len() < Self::EXAMPLES;
        if first {
            examples.push((id.to_string(), detail.to_string()));
        }
        first
    }

    /// Total skips.
    pub fn total(&self) -> usize {
        self.counts.values().sum()
    }
}

/// Batches of one epoch, built ahead on a background thread (images preprocessed on rayon's
/// threads) so the training loop does not wait on JPEG decoding. Batches come in order: the same
/// order, seed and start position give the same batches, however the threads are scheduled.
pub struct Loader {
    receiver: Receiver<Batch>,
    worker: Option<std::thread::JoinHandle<()>>,
}

impl Loader {
    /// Starts loading `order[start..]` in batches of `batch_size`, keeping up to `prefetch`
    /// batches ready. A skipped sample leaves its batch smaller; it is reported in the batch's
    /// `skipped`, and the position still moves past it, so a resumed run sees the same samples.
    pub fn new(
        dataset: Arc<Dataset>,
        order: Vec<usize>,
        start: usize,
        batch_size: usize,
        prefetch: usize,
    ) -> Self {
        let batch_size = batch_size.max(1);
        let start = start.min(order.len());
        let mut slices = Vec::new();
        let mut position = start;
        while position < order.len() {
            let end = (position + batch_size).min(order.len());
            slices.push((order[position..end].to_vec(), end));
            position = end;
        }
        Self::from_slices(dataset, slices, prefetch)
    }

    /// Loads one batch per slice of record indices, in order, keeping up to `prefetch` ready;
    /// each batch's `next_position` is the number given with its slice. An empty slice gives an
    /// empty batch (a data-parallel rank with no share of a step still takes part in it).
    pub fn from_slices(
        dataset: Arc<Dataset>,
        slices: Vec<(Vec<usize>, usize)>,
        prefetch: usize,
    ) -> Self {
        Self::from_slices_packed(dataset, slices, prefetch, None)
    }

    /// [`from_slices`](Self::from_slices), packing each batch's samples into rows of at most
    /// `pack` tokens ([`collate_packed`]) when given.
    pub fn from_slices_packed(
        dataset: Arc<Dataset>,
        slices: Vec<(Vec<usize>, usize)>,
        prefetch: usize,
        pack: Option<usize>,
    ) -> Self {
        let (sender, receiver): (SyncSender<Batch>, _) = sync_channel(prefetch.max(1));
        let worker = std::thread::spawn(move || {
            for (indices, next_position) in slices {
                // Decode the batch's images on rayon's threads; results keep the order's order.
                let loaded: Vec<_> = indices
                    .par_iter()
                    .map(|&index| (index, dataset.sample(index)))
                    .collect();
                let mut samples = Vec::with_capacity(indices.len());
                let mut skipped = Vec::new();
                for (index, result) in loaded {
                    match result {
                        Ok(sample) => samples.push(sample),
                        Err((reason, detail)) => {
                            skipped.push((dataset.records.id(index), reason, detail))
                        }
                    }
                }
                let pad = dataset.templater.tokenizer.pad;
                let mut batch = match pack {
                    Some(budget) => collate_packed(samples, pad, &dataset.processor, budget),
                    None => collate(samples, pad, &dataset.processor),
                };
                batch.skipped = skipped;
                batch.next_position = next_position;
                if sender.send(batch).is_err() {
                    return; // The consumer stopped early.
                }
            }
        });
        Loader {
            receiver,
            worker: Some(worker),
        }
    }
}

impl Iterator for Loader {
    type Item = Batch;

    fn next(&mut self) -> Option<Batch> {
        match self.receiver.recv() {
            Ok(batch) => Some(batch),
            Err(_) => {
                if let Some(worker) = self.worker.take()
                    && let Err(panic) = worker.join()
                {
                    std::panic::resume_unwind(panic);
                }
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packing_balances_rows_within_the_budget() {
        let lengths = [300, 20, 250, 40, 200, 100, 90, 5];
        let rows = balanced_rows(&lengths, 512);
        let sums: Vec<usize> = rows
            .iter()
            .map(|r| r.iter().map(|&i| lengths[i]).sum())
            .collect();
        assert_eq!(rows.len(), 2, "{rows:?}");
        assert!(sums.iter().all(|&s| s <= 512), "{sums:?}");
        let mut all: Vec<usize> = rows.concat();
        all.sort_unstable();
        assert_eq!(all, (0..8).collect::<Vec<_>>());
        assert!(rows.iter().all(|r| r.windows(2).all(|w| w[0] < w[1])));
        // A sample longer than the budget still gets a row of its own.
        assert_eq!(balanced_rows(&[600, 10], 512).len(), 2);
        assert!(balanced_rows(&[], 512).is_empty());
    }

    #[test]
    fn shuffles_are_seeded_per_epoch() {
        assert_eq!(shuffled(50, 1, 0), shuffled(50, 1, 0));
        assert_ne!(shuffled(50, 1, 0), shuffled(50, 1, 1));
        let mut sorted = shuffled(50, 1, 0);
        sorted.sort_unstable();
        assert_eq!(sorted, (0..50).collect::<Vec<_>>());
    }

    #[test]
    fn modality_groups_never_mix_except_the_remainder() {
        // 10 image samples (positive) and 7 text-only (negative), groups of 4.
        let lengths: Vec<i64> = (0..17)
            .map(|i| if i % 5 < 3 { 100 + i } else { -(10 + i) })
            .collect();
        let order = modality_grouped(&lengths, 4, 3, 0);
        let mut sorted = order.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..17).collect::<Vec<_>>(), "a permutation");
        let images = lengths.iter().filter(|&&l| l > 0).count();
        let remainder = |n: usize| if n % 4 == 0 { 4.min(n) } else { n % 4 };
        let mixed = remainder(images) + remainder(17 - images);
        for (g, chunk) in order[..17 - mixed].chunks(4).enumerate() {
            assert!(
                chunk
                    .iter()
                    .all(|&i| (lengths[i] > 0) == (lengths[chunk[0]] > 0)),
                "group {g} mixes: {chunk:?}"
            );
            let lens: Vec<i64> = chunk.iter().map(|&i| lengths[i].abs()).collect();
            assert!(
                lens.windows(2).all(|w| w[0] >= w[1]),
                "group {g} is longest first"
            );
        }
        assert_eq!(order, modality_grouped(&lengths, 4, 3, 0), "seeded");
    }

    #[test]
    fn skip_counter_keeps_the_first_examples() {
        let mut c = SkipCounter::default();
        for i in 0..8 {
            let first = c.add(&format!("r{i}"), SkipReason::CorruptImage, "bad");
            assert_eq!(first, i < SkipCounter::EXAMPLES);
        }
        c.add("x", SkipReason::TooLong, "long");
        assert_eq!(c.total(), 9);
        assert_eq!(c.counts[&SkipReason::CorruptImage], 8);
        assert_eq!(
            c.examples[&SkipReason::CorruptImage].len(),
            SkipCounter::EXAMPLES
        );
    }
}
