//! The official scoring rules of the paper's seven benchmarks, one module each, as pure functions
//! over parsed files: what LLaVA's conversion scripts and each benchmark's own evaluator do,
//! including their quirks (see `docs/eval.md`). Problems in the inputs (malformed lines, answers
//! for unknown ids, missing answers) are counted in [`Issues`] rather than stopping the score.

pub mod answers;
pub mod gqa;
pub mod mme;
pub mod mmvet;
pub mod mmvp;
pub mod pope;
pub mod sqa;
pub mod vqav2;

use std::collections::BTreeMap;

use serde::Serialize;

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
}

impl Issues {
    /// True when nothing was wrong.
    pub fn is_clean(&self) -> bool {
        *self == Issues::default()
    }
}

/// A question id as a string key: JSON numbers in their decimal form, strings as they are.
pub fn id_key(value: &serde_json::Value) -> Option<String> {
    match value {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}
