//! Validating a whole dataset before anyone spends GPU hours on it.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

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

impl CheckReport {
    /// The report for people, of the data file `data`: the counts, the reasons, the first ten
    /// unusable records and the token lengths (what `llava data check` prints without `--json`).
    pub fn summary(&self, data: &Path) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "{}", data.display());
        let _ = writeln!(
            out,
            "  records {}, usable {} ({} text-only), bad {}",
            self.records, self.ok, self.text_only, self.bad
        );
        for (reason, count) in &self.reasons {
            let _ = writeln!(out, "    {reason}: {count}");
        }
        for b in self.bad_samples.iter().take(10) {
            let id = b.id.clone().unwrap_or_else(|| "-".into());
            let _ = writeln!(out, "    #{} {id}: {} ({})", b.index, b.reason, b.detail);
        }
        if self.bad_samples.len() > 10 {
            let _ = writeln!(
                out,
                "    … {} more (--json lists them all)",
                self.bad_samples.len() - 10
            );
        }
        let t = &self.tokens;
        let _ = writeln!(
            out,
            "  tokens per sample: min {}, mean {:.1}, median {}, p95 {}, max {}; truncated {}",
            t.min, t.mean, t.p50, t.p95, t.max, t.truncated
        );
        out
    }
}

/// What checking one usable sample finds.
struct Checked {
    len: usize,
    text_only: bool,
    truncated: bool,
}

/// Records checked per round: enough to keep every core busy, few enough that memory stays flat.
const ROUND: usize = 4096;

/// Checks every record of `dataset`: the read-time checks, the template (lengths, truncation), and
/// each image, decoded when `decode_images` (else only looked up). Runs on rayon's threads.
pub fn check(dataset: &Dataset, decode_images: bool) -> CheckReport {
    check_with_progress(dataset, decode_images, |_| {})
}

/// [`check`], calling `progress(records_done)` after each round of records. Records are read from
/// their file a round at a time, so memory does not grow with the file.
pub fn check_with_progress(
    dataset: &Dataset,
    decode_images: bool,
    mut progress: impl FnMut(usize),
) -> CheckReport {
    let records = &dataset.records;
    // A failure carries the record's id when the record could be read.
    let check_one = |i: usize| -> Result<Checked, (Option<String>, SkipReason, String)> {
        let record = records.get(i).map_err(|b| (b.id, b.reason, b.detail))?;
        let fail =
            |(reason, detail): (SkipReason, String)| (Some(record.id.clone()), reason, detail);
        let tokens = dataset.templater.tokenize(&record).map_err(fail)?;
        for path in &record.images {
            let source = dataset.images.as_ref().ok_or_else(|| {
                fail((
                    SkipReason::MissingImage,
                    format!("{path}: no image folder or zip given"),
                ))
            })?;
            if decode_images {
                source.load(path).map_err(|f| fail((f.reason, f.detail)))?;
            } else if !source.exists(path) {
                return Err(fail((
                    SkipReason::MissingImage,
                    format!("{path}: not found"),
                )));
            }
        }
        Ok(Checked {
            len: tokens.input_ids.len(),
            text_only: record.images.is_empty(),
            truncated: tokens.truncated,
        })
    };

    let mut report = CheckReport {
        records: records.elements(),
        ..Default::default()
    };
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
    let mut lengths = Vec::with_capacity(records.len());
    let mut start = 0;
    while start < records.len() {
        let end = (start + ROUND).min(records.len());
        let results: Vec<_> = (start..end).into_par_iter().map(check_one).collect();
        for (i, result) in (start..end).zip(results) {
            match result {
                Ok(c) => {
                    report.ok += 1;
                    report.text_only += usize::from(c.text_only);
                    report.tokens.truncated += usize::from(c.truncated);
                    lengths.push(c.len);
                }
                Err((id, reason, detail)) => bad.push(BadSample {
                    index: records.element_index(i),
                    id,
                    reason: reason.name().into(),
                    detail,
                }),
            }
        }
        start = end;
        progress(start);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_lists_ten_bad_samples_and_counts_the_rest() {
        let bad_samples: Vec<BadSample> = (0..12)
            .map(|index| BadSample {
                index,
                id: (index % 2 == 0).then(|| format!("r{index}")),
                reason: "missing_image".into(),
                detail: "x.jpg: not found".into(),
            })
            .collect();
        let report = CheckReport {
            records: 20,
            ok: 8,
            bad: 12,
            text_only: 1,
            reasons: [("missing_image".to_string(), 12)].into(),
            bad_samples,
            ..Default::default()
        };
        let text = report.summary(Path::new("chat.json"));
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "chat.json");
        assert_eq!(lines[1], "  records 20, usable 8 (1 text-only), bad 12");
        assert_eq!(lines[2], "    missing_image: 12");
        assert_eq!(lines[3], "    #0 r0: missing_image (x.jpg: not found)");
        assert_eq!(lines[4], "    #1 -: missing_image (x.jpg: not found)");
        assert_eq!(lines[13], "    … 2 more (--json lists them all)");
        assert!(lines[14].starts_with("  tokens per sample: min 0, mean 0.0"));
        assert_eq!(lines.len(), 15);
    }
}
