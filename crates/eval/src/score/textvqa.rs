//! TextVQA validation (5,000 questions about text in images, ten human answers each), scored as
//! lmms-eval 0.7.3's `tasks/textvqa/utils.py` and LLaVA's `m4c_evaluator` do: the answer and
//! every human answer through EvalAI's answer processor ([`super::vqav2::evalai_process`]), then
//! the mean over the ten leave-one-out subsets of min(1, matches/3).

use super::{Answers, BenchScore, Issues, pair_answers, pystr, questions_of, text_field};
use crate::records::Record;
use crate::stats::{Aggregate, Metric, Unit};

/// One question, as scoring needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct Question {
    /// `question_id` (lmms-eval) or `index` (VLMEvalKit).
    pub id: String,
    /// The human answers.
    pub answers: Vec<String>,
}

impl Question {
    /// From a record: `answers` as a list (lmms-eval) or `answer` as a Python list literal
    /// (VLMEvalKit).
    pub fn from_record(r: &Record) -> Result<Self, String> {
        let answers = match (r.get("answers"), r.get("answer")) {
            (Some(serde_json::Value::Array(list)), _) => list
                .iter()
                .map(|v| v.as_str().map(String::from))
                .collect::<Option<Vec<_>>>()
                .ok_or("`answers` holds a non-string")?,
            (_, Some(serde_json::Value::String(s))) => {
                pystr::string_list(s).unwrap_or_else(|| vec![s.clone()])
            }
            _ => return Err("no `answers` list or `answer`".into()),
        };
        if answers.is_empty() {
            return Err("no reference answers".into());
        }
        Ok(Question {
            id: text_field(r, &["question_id", "index"])?,
            answers,
        })
    }
}

/// One answer's accuracy against the human answers.
pub fn accuracy(prediction: &str, answers: &[String]) -> f64 {
    let pred = super::vqav2::evalai_process(prediction);
    let refs: Vec<String> = answers
        .iter()
        .map(|a| super::vqav2::evalai_process(a))
        .collect();
    let per: Vec<f64> = (0..refs.len())
        .map(|i| {
            let matches = refs
                .iter()
                .enumerate()
                .filter(|(j, r)| *j != i && **r == pred)
                .count();
            (matches as f64 / 3.0).min(1.0)
        })
        .collect();
    per.iter().sum::<f64>() / per.len() as f64
}

/// Scores `answers` against the benchmark's `records`.
pub fn score(records: &[Record], answers: Answers) -> BenchScore {
    let mut issues = Issues::default();
    let questions = questions_of(records, Question::from_record, &mut issues);
    let pairs = pair_answers(&questions, |q| &q.id, answers, &mut issues);
    let units = pairs
        .iter()
        .map(|(q, a)| Unit {
            id: q.id.clone(),
            group: String::new(),
            value: accuracy(&a.text, &q.answers),
        })
        .collect();
    BenchScore {
        metrics: vec![Metric::new("accuracy", Aggregate::Mean, 1.0, units)],
        issues,
        ..BenchScore::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leave_one_out_over_processed_answers() {
        let ten = |a: &[(&str, usize)]| -> Vec<String> {
            a.iter()
                .flat_map(|(s, n)| std::iter::repeat_n(s.to_string(), *n))
                .collect()
        };
        assert_eq!(accuracy("Coca-Cola", &ten(&[("coca cola", 10)])), 1.0);
        // Two of ten agree: each subset without one of them has 1 match, others 2.
        let two = ten(&[("stop", 2), ("go", 8)]);
        let expected = (2.0 * (1.0 / 3.0) + 8.0 * (2.0 / 3.0)) / 10.0;
        assert!((accuracy("STOP.", &two) - expected).abs() < 1e-12);
        assert_eq!(accuracy("three", &ten(&[("3", 10)])), 1.0);
    }
}
