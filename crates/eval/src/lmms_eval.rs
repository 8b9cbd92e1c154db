//! A recent benchmark's run written as lmms-eval (0.7.3) writes its own: under
//! `<dir>/<model>/`, `<date>_results.json` (per task: `"<metric>,<filter>"` values, configs,
//! versions, n-samples, the run's config) and `<date>_samples_<task>.jsonl` (one line per
//! document: `doc_id`, `target`, `filtered_resps`, `input`, `input_media`, the per-document
//! metric values, and a numeric `score` that lmms-eval's `--baseline` loader reads). lmms-eval's
//! tools then read our runs as theirs: `--baseline <our samples file>` pairs its run with ours.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::Error;
use crate::runner::{Bench, EvalQuestion};
use crate::score::{AnswerLine, BenchScore};

/// lmms-eval's name for one of our metrics: (our metric, its metric, its filter).
pub type MetricName = (&'static str, &'static str, &'static str);

/// The lmms-eval task a benchmark's run is written as.
#[derive(Debug, Clone)]
pub struct Task {
    /// lmms-eval's task name.
    pub name: &'static str,
    /// The metrics it reports.
    pub metrics: Vec<MetricName>,
    /// The factor from our value to its (OCRBench: out of 1000 to a fraction).
    pub factor: f64,
}

/// lmms-eval's task for `bench` (`None` for the paper's seven).
pub fn task(bench: Bench) -> Option<Task> {
    let mmstar = crate::score::mmstar::CATEGORIES
        .iter()
        .map(|c| (*c, *c, "none"))
        .chain([("average", "average", "none")])
        .collect();
    let (name, metrics, factor) = match bench {
        Bench::Mmstar => ("mmstar", mmstar, 1.0),
        Bench::Mmmu => ("mmmu_val", vec![("accuracy", "mmmu_acc", "none")], 1.0),
        Bench::Ocrbench => (
            "ocrbench",
            vec![("final_score", "ocrbench_accuracy", "none")],
            1e-3,
        ),
        Bench::Ai2d => (
            "ai2d",
            vec![("accuracy", "exact_match", "flexible-extract")],
            1.0,
        ),
        Bench::Textvqa => (
            "textvqa_val",
            vec![("accuracy", "exact_match", "none")],
            1.0,
        ),
        Bench::TextvqaOcr => (
            "textvqa_val_ocr",
            vec![("accuracy", "exact_match", "none")],
            1.0,
        ),
        Bench::Hallusionbench => (
            "hallusion_bench_image",
            vec![
                ("aAcc", "aAcc", "none"),
                ("qAcc", "qAcc", "none"),
                ("fAcc", "fAcc", "none"),
            ],
            1.0,
        ),
        _ => return None,
    };
    Some(Task {
        name,
        metrics,
        factor,
    })
}

/// What one run wrote.
#[derive(Debug, Clone)]
pub struct Written {
    /// `<date>_results.json`.
    pub results: PathBuf,
    /// `<date>_samples_<task>.jsonl`.
    pub samples: PathBuf,
}

/// One answered document: its question, its answer, its reference and its score.
pub struct Sample<'a> {
    /// The question as asked.
    pub question: &'a EvalQuestion,
    /// The model's answer.
    pub answer: &'a AnswerLine,
    /// The reference answer, as the row gives it.
    pub target: Value,
    /// Its score (the headline metric's unit, or the per-question metric's).
    pub score: Option<f64>,
}

/// Writes `bench`'s run in lmms-eval's layout under `dir/<model>/`, dated `date`
/// (`YYYYMMDD_HHMMSS`). `samples` are in document order (their position in the data file is the
/// `doc_id`); `settings` are the decoding settings recorded as the task's `generation_kwargs`.
pub fn write(
    dir: &Path,
    model: &str,
    date: &str,
    bench: Bench,
    score: &BenchScore,
    samples: &[Sample<'_>],
    settings: &Value,
) -> Result<Written, Error> {
    let Task {
        name: task_name,
        metrics,
        factor,
    } = task(bench).ok_or_else(|| {
        Error::Request(format!(
            "{} has no lmms-eval task to write results as",
            bench.name()
        ))
    })?;
    let folder = dir.join(sanitize(model));
    std::fs::create_dir_all(&folder)
        .map_err(|e| Error::File(format!("{}: {e}", folder.display())))?;
    let mut task_results = serde_json::Map::new();
    task_results.insert("alias".into(), json!(task_name));
    let mut higher = serde_json::Map::new();
    for (ours, theirs, filter) in &metrics {
        let Some(m) = score.metric(ours) else {
            continue;
        };
        let s = m.summary();
        task_results.insert(format!("{theirs},{filter}"), json!(s.value * factor));
        // lmms-eval's stderr field; ours is the bootstrap interval, kept beside it.
        task_results.insert(format!("{theirs}_stderr,{filter}"), json!("N/A"));
        task_results.insert(
            format!("{theirs}_interval95,{filter}"),
            json!([s.interval[0] * factor, s.interval[1] * factor]),
        );
        higher.insert(theirs.to_string(), json!(true));
    }
    let mut lines = String::new();
    for (doc_id, s) in samples.iter().enumerate() {
        let answer = s.answer.text.trim();
        let mut line = json!({
            "doc_id": doc_id,
            "target": s.target,
            "filtered_resps": answer,
            "doc_hash": crate::manifest::sha256_hex(s.question.question_id.to_string().as_bytes()),
            "input_media": s.question.images,
            "input": s.question.text,
            "question_id": s.question.question_id,
        });
        if answer != s.answer.text {
            line["resps"] = json!(s.answer.text);
        }
        if let Some(v) = s.score {
            line["score"] = json!(v);
        }
        lines.push_str(&line.to_string());
        lines.push('\n');
    }
    let results = json!({
        "results": {task_name: task_results},
        "group_subtasks": {task_name: []},
        "configs": {task_name: {
            "task": task_name,
            "output_type": "generate_until",
            "generation_kwargs": settings,
            "num_fewshot": 0,
            "metadata": {"version": 0.0},
            "scored_by": "llava-gemma-rs, by lmms-eval 0.7.3's task rules",
        }},
        "versions": {task_name: 0.0},
        "n-shot": {task_name: 0},
        "higher_is_better": {task_name: higher},
        "n-samples": {task_name: {"original": samples.len(), "effective": samples.len()}},
        "config": {
            "model": "llava-gemma-rs",
            "model_args": format!("model={model}"),
            "batch_size": settings.get("batch").cloned().unwrap_or(Value::Null),
            "limit": Value::Null,
        },
        "git_hash": option_env!("LLAVA_GIT_COMMIT"),
        "lmms_eval_version": Value::Null,
        "date": date,
    });
    let results_path = folder.join(format!("{date}_results.json"));
    let samples_path = folder.join(format!("{date}_samples_{task_name}.jsonl"));
    let text = serde_json::to_string_pretty(&results).expect("serialises");
    foundation::write_atomic(&results_path, text.as_bytes())
        .and_then(|()| foundation::write_atomic(&samples_path, lines.as_bytes()))
        .map_err(|e| Error::File(e.to_string()))?;
    Ok(Written {
        results: results_path,
        samples: samples_path,
    })
}

/// Now in UTC as lmms-eval dates its files: `YYYYMMDD_HHMMSS`.
pub fn date_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    date(secs)
}

/// `secs` since the Unix epoch as `YYYYMMDD_HHMMSS` (UTC; the civil calendar from days, after
/// Howard Hinnant's `civil_from_days`).
fn date(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rest = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}{month:02}{day:02}_{:02}{:02}{:02}",
        rest / 3600,
        rest / 60 % 60,
        rest % 60
    )
}

/// lmms-eval's folder name for a model: path separators and other unsafe characters to `__`.
fn sanitize(model: &str) -> String {
    model
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c.to_string()
            } else {
                "__".into()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_recent_bench_has_a_task() {
        for b in Bench::RECENT {
            assert!(task(b).is_some(), "{b:?}");
        }
        assert!(task(Bench::Gqa).is_none());
        assert_eq!(sanitize("out/model a"), "out__model__a");
        assert_eq!(date(0), "19700101_000000");
        assert_eq!(date(1_796_525_218), "20261206_024658");
        assert_eq!(date(951_782_400), "20000229_000000");
    }
}
