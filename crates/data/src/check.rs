//! Validating a whole dataset before anyone spends GPU hours on it.

use std::collections::BTreeMap;

use rayon::prelude::*;
use serde::Serialize;

use crate::batch::Dataset;
use crate::record::SkipReason;

/// One unusable record or sample.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BadSample {
    /// Position in the file's list.
    pub index: usize,
    /// The record's id, when it had one.
    pub id: Option<String>,
    /// Why it is unusable.
    pub reason: String,
    /// Details (file, turn, lengths).
    pub detail: String,
}

/// Token-length statistics of the usable samples, after the template.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct LengthStats {
    /// Shortest.
    pub min: usize,
    /// Mean.
    pub mean: f64,
    /// Median.
    pub p50: usize,
    /// 95th percentile.
    pub p95: usize,
    /// Longest.
    pub max: usize,
    /// Samples cut at `max_length`.
    pub truncated: usize,
}

/// What `llava data check` reports.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct CheckReport {
    /// Elements in the file's list.
    pub records: usize,
    /// Usable samples.
    pub ok: usize,
    /// Unusable records and samples.
    pub bad: usize,
    /// Usable samples without an image.
    pub text_only: usize,
    /// Ids of the unusable ones (`#<index>` where a record had no id).
    pub bad_ids: Vec<String>,
    /// Count per reason.
    pub reasons: BTreeMap<String, usize>,
    /// Each unusable record or sample, in file order.
    pub bad_samples: Vec<BadSample>,
    /// Token lengths of the usable samples.
    pub tokens: LengthStats,
}

/// What checking one usable sample finds.
struct Checked {
    len: usize,
    text_only: bool,
    truncated: bool,
}

/// Checks every record of `dataset`: the read-time checks, the template (lengths, truncation), and
/// each image, decoded when `decode_images` (else only looked up). Runs on rayon's threads.
pub fn check(dataset: &Dataset, decode_images: bool) -> CheckReport {
    let results: Vec<Result<Checked, (SkipReason, String)>> = dataset
        .records
        .par_iter()
        .map(|record| {
            let tokens = dataset.templater.tokenize(record)?;
            if let Some(path) = &record.image {
                let source = dataset.images.as_ref().ok_or_else(|| {
                    (
                        SkipReason::MissingImage,
                        format!("{path}: no image folder or zip given"),
                    )
                })?;
                if decode_images {
                    source.load(path).map_err(|f| (f.reason, f.detail))?;
                } else if !source.exists(path) {
                    return Err((SkipReason::MissingImage, format!("{path}: not found")));
                }
            }
            Ok(Checked {
                len: tokens.input_ids.len(),
                text_only: record.image.is_none(),
                truncated: tokens.truncated,
            })
        })
        .collect();

    let mut report = CheckReport {
        records: dataset.records.len() + dataset.bad_records.len(),
        ..Default::default()
    };
    // Read-time failures carry their list index; sample failures get the index of their record
    // among all elements, recovered by merging the two in file order.
    let mut bad: Vec<BadSample> = dataset
        .bad_records
        .iter()
        .map(|b| BadSample {
            index: b.index,
            id: b.id.clone(),
            reason: b.reason.name().into(),
            detail: b.detail.clone(),
        })
        .collect();
    let mut read_bad = dataset.bad_records.iter().map(|b| b.index).peekable();
    let mut lengths = Vec::new();
    let mut element = 0;
    for (record, result) in dataset.records.iter().zip(results) {
        while read_bad.peek() == Some(&element) {
            read_bad.next();
            element += 1;
        }
        match result {
            Ok(c) => {
                report.ok += 1;
                report.text_only += usize::from(c.text_only);
                report.tokens.truncated += usize::from(c.truncated);
                lengths.push(c.len);
            }
            Err((reason, detail)) => bad.push(BadSample {
                index: element,
                id: Some(record.id.clone()),
                reason: reason.name().into(),
                detail,
            }),
        }
        element += 1;
    }
    bad.sort_by_key(|b| b.index);
    for b in &bad {
        *report.reasons.entry(b.reason.clone()).or_default() += 1;
        report
            .bad_ids
            .push(b.id.clone().unwrap_or_else(|| format!("#{}", b.index)));
    }
    report.bad = bad.len();
    report.bad_samples = bad;
    lengths.sort_unstable();
    if let (Some(&min), Some(&max)) = (lengths.first(), lengths.last()) {
        let at = |q: f64| lengths[((lengths.len() - 1) as f64 * q).round() as usize];
        report.tokens.min = min;
        report.tokens.max = max;
        report.tokens.mean = lengths.iter().sum::<usize>() as f64 / lengths.len() as f64;
        report.tokens.p50 = at(0.5);
        report.tokens.p95 = at(0.95);
    }
    report
}
