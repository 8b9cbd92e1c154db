//! The official scoring rules, one module per benchmark, as pure functions over parsed files:
//! for the paper's seven, what LLaVA's conversion scripts and each benchmark's own evaluator do;
//! for the six that compact models are compared on today (MMStar, MMMU, OCRBench, AI2D,
//! TextVQA, HallusionBench), what lmms-eval's task code does. Quirks included (see
//! `docs/eval.md`). Problems in the inputs (malformed lines and records, answers for unknown ids,
//! missing answers) are counted in [`Issues`] rather than stopping the score.

pub mod ai2d;
pub mod answers;
pub mod gqa;
pub mod hallusion;
pub mod mcq;
pub mod mme;
pub mod mmmu;
pub mod mmstar;
pub mod mmvet;
pub mod mmvp;
pub mod ocrbench;
pub mod paper_tsv;
pub mod pope;
pub mod pystr;
pub mod sqa;
pub mod textvqa;
pub mod vlmevalkit;
pub mod vqav2;

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{Value, json};

use crate::records::Record;
use crate::stats::Metric;

pub use answers::{AnswerLine, Answers, read_answers, read_json, read_jsonl};

/// What was wrong with the inputs of a score, by kind.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Issues {
    /// Lines that are not JSON objects with a question id (and text).
    pub malformed_lines: usize,
    /// Answers whose question id the benchmark does not know (ignored).
    pub unknown_ids: usize,
    /// Questions without an answer (scored as wrong where the official script does so).
    pub missing_answers: usize,
    /// Answers repeated for one question id (the last one counts, as a Python dict keeps it).
    pub duplicate_ids: usize,
    /// MMVP: the pairs (`k` for questions `2k-1` and `2k`) with a grade for one question of the
    /// two, left out of the score (absent from the JSON when there are none).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub incomplete_pairs: Vec<u64>,
    /// POPE: per category, the answers scored against a label of another image or question
    /// (by position), or left without a label (by image and question); absent from the JSON
    /// when there are none.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub label_mismatches: BTreeMap<String, pope::LabelMismatches>,
    /// Benchmark records (TSV rows, dataset rows) that lack what scoring needs, left out; absent
    /// from the JSON when there are none.
    #[serde(skip_serializing_if = "is_zero")]
    pub bad_records: usize,
    /// The first five of them, each naming its row and what is wrong.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub bad_record_examples: Vec<String>,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

impl Issues {
    /// True when nothing was wrong.
    pub fn is_clean(&self) -> bool {
        *self == Issues::default()
    }

    /// Counts a bad record, keeping the first five messages.
    pub fn bad_record(&mut self, message: String) {
        self.bad_records += 1;
        if self.bad_record_examples.len() < 5 {
            self.bad_record_examples.push(message);
        }
    }
}

/// Questions of one benchmark built from its records; the records that cannot be read count in
/// `issues` (with the row named) and are left out.
pub fn questions_of<Q>(
    records: &[Record],
    parse: impl Fn(&Record) -> Result<Q, String>,
    issues: &mut Issues,
) -> Vec<Q> {
    records
        .iter()
        .enumerate()
        .filter_map(|(row, r)| match parse(r) {
            Ok(q) => Some(q),
            Err(e) => {
                issues.bad_record(format!("record {}: {e}", row + 1));
                None
            }
        })
        .collect()
}

/// Each question paired with its answer, in question order, with what did not pair counted:
/// answers for ids no question has, questions without an answer (left out of the score, as a
/// harness run with a limit leaves them out), repeated answers (the last wins).
pub fn pair_answers<'q, Q>(
    questions: &'q [Q],
    id: impl Fn(&Q) -> &str,
    mut answers: Answers,
    issues: &mut Issues,
) -> Vec<(&'q Q, AnswerLine)> {
    let mut by_id = answers.by_id();
    issues.malformed_lines += answers.issues.malformed_lines;
    issues.duplicate_ids += answers.issues.duplicate_ids;
    let mut pairs = Vec::new();
    for q in questions {
        match by_id.remove(id(q)) {
            Some(a) => pairs.push((q, a)),
            None => issues.missing_answers += 1,
        }
    }
    issues.unknown_ids += by_id.len();
    pairs
}

/// A benchmark's score as the newer benchmarks report it: named metrics (the headline first,
/// with one unit per question scored), each with the units it came from, counts of answers the
/// rules could not read, and the input's issues.
#[derive(Debug, Clone, Default)]
pub struct BenchScore {
    /// The metrics, headline first.
    pub metrics: Vec<Metric>,
    /// Counts worth showing beside the metrics (answers no rule could read, …).
    pub counts: BTreeMap<String, usize>,
    /// What was wrong with the inputs.
    pub issues: Issues,
}

impl BenchScore {
    /// Each scored question's value, by id (the headline metric's units).
    pub fn per_question(&self) -> std::collections::HashMap<&str, f64> {
        self.metrics
            .first()
            .map(|m| m.units.iter().map(|u| (u.id.as_str(), u.value)).collect())
            .unwrap_or_default()
    }

    /// The metric called `name`.
    pub fn metric(&self, name: &str) -> Option<&Metric> {
        self.metrics.iter().find(|m| m.name == name)
    }

    /// The JSON `llava score` prints: `headline`, then `metrics` (value, 95 % interval, units),
    /// the counts and the issues.
    pub fn to_json(&self) -> Value {
        let metrics: serde_json::Map<String, Value> = self
            .metrics
            .iter()
            .map(|m| (m.name.clone(), json!(m.summary())))
            .collect();
        json!({
            "headline": self.metrics.first().map(|m| m.name.clone()),
            "metrics": metrics,
            "counts": self.counts,
            "issues": self.issues,
        })
    }
}

/// A record's options: lmms-eval's `options` (a list, or a Python list literal), else
/// VLMEvalKit's option columns `A`, `B`, … up to the first empty one (`None` for an `options`
/// cell that is not a list of strings).
pub fn options(r: &Record) -> Result<Vec<String>, String> {
    use serde_json::Value;
    match r.get("options") {
        Some(Value::Array(list)) => list
            .iter()
            .map(|v| {
                v.as_str()
                    .map(String::from)
                    .ok_or_else(|| "`options` holds a non-string".to_string())
            })
            .collect(),
        Some(Value::String(s)) => pystr::string_list(s)
            .ok_or_else(|| format!("`options` is not a list of strings: {s:.80}")),
        _ => Ok(mcq::letters(26)
            .iter()
            .map_while(|c| {
                r.get(&c.to_string())
                    .and_then(Value::as_str)
                    .filter(|s| !s.is_empty() && *s != "nan")
                    .map(String::from)
            })
            .collect()),
    }
}

/// Options with their letters.
pub fn lettered(options: &[String]) -> Vec<(char, String)> {
    mcq::letters(options.len())
        .into_iter()
        .zip(options.iter().cloned())
        .collect()
}

/// A record's field as text: a string as it is, a number in its decimal form; `Err` naming the
/// field when it is absent, empty (an empty TSV cell) or neither.
pub fn text_field(r: &Record, names: &[&str]) -> Result<String, String> {
    names
        .iter()
        .find_map(|n| r.get(*n).and_then(id_key).filter(|s| !s.is_empty()))
        .ok_or_else(|| format!("no `{}`", names.join("` or `")))
}

/// A question id as a string key: JSON numbers in their decimal form, strings as they are.
pub fn id_key(value: &serde_json::Value) -> Option<String> {
    match value {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}
