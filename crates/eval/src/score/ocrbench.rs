//! OCRBench (1,000 questions in ten categories), scored as lmms-eval 0.7.3's
//! `tasks/ocrbench/utils.py` does (OCRBench's own rule): the answer is right when one of the
//! references is inside it, both lowercased, trimmed, line breaks as spaces and full-width ASCII
//! folded; for handwritten mathematical expressions (`HME100k`) case is kept and every space
//! removed. The score is the number right, out of 1000.

use super::{Answers, BenchScore, Issues, pair_answers, pystr, questions_of, text_field};
use crate::records::Record;
use crate::stats::{Aggregate, Metric, Unit};

/// OCRBench's ten categories, in its order (the first six are its text recognition).
pub const CATEGORIES: [&str; 10] = [
    "Regular Text Recognition",
    "Irregular Text Recognition",
    "Artistic Text Recognition",
    "Handwriting Recognition",
    "Digit String Recognition",
    "Non-Semantic Text Recognition",
    "Scene Text-centric VQA",
    "Doc-oriented VQA",
    "Key Information Extraction",
    "Handwritten Mathematical Expression Recognition",
];

/// One question, as scoring needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct Question {
    /// `index`, `question_id` or `id`.
    pub id: String,
    /// Its category (`question_type` in lmms-eval's rows, `category` in VLMEvalKit's).
    pub category: String,
    /// True for handwritten mathematical expressions (`dataset == "HME100k"`, or that category
    /// where the rows do not name their source dataset).
    pub math: bool,
    /// The reference answers.
    pub answers: Vec<String>,
}

impl Question {
    /// From a record of either harness: `answer` a list, a Python list literal or one string.
    pub fn from_record(r: &Record) -> Result<Self, String> {
        let category = text_field(r, &["question_type", "category"])?;
        if !CATEGORIES.contains(&category.as_str()) {
            return Err(format!("unknown OCRBench category `{category}`"));
        }
        let answers = match r.get("answer") {
            Some(serde_json::Value::Array(list)) => list
                .iter()
                .map(|v| v.as_str().map(String::from))
                .collect::<Option<Vec<_>>>()
                .ok_or("`answer` holds a non-string")?,
            Some(serde_json::Value::String(s)) => {
                pystr::string_list(s).unwrap_or_else(|| vec![s.clone()])
            }
            _ => return Err("no `answer`".into()),
        };
        let math = match r.get("dataset").and_then(|v| v.as_str()) {
            Some(d) => d == "HME100k",
            None => category == CATEGORIES[9],
        };
        Ok(Question {
            id: text_field(r, &["index", "question_id", "id"])?,
            category,
            math,
            answers,
        })
    }
}

/// Full-width ASCII (U+FF01..U+FF5E) to ASCII and the ideographic space to a space.
fn fold_fullwidth(s: &str) -> String {
    s.chars()
        .map(|c| match c as u32 {
            0xFF01..=0xFF5E => char::from_u32(c as u32 - 0xFEE0).unwrap_or(c),
            0x3000 => ' ',
            _ => c,
        })
        .collect()
}

/// One answer against its references.
pub fn is_right(prediction: &str, q: &Question) -> bool {
    let pred = pystr::strip(prediction);
    if q.math {
        let squash = |s: &str| pystr::strip(s).replace('\n', " ").replace(' ', "");
        let p = squash(pred);
        return q.answers.iter().any(|a| p.contains(&squash(a)));
    }
    let clean = |s: &str| pystr::strip(&fold_fullwidth(s).to_lowercase()).replace('\n', " ");
    let p = clean(pred);
    q.answers.iter().any(|a| p.contains(&clean(a)))
}

/// Scores `answers` against the benchmark's `records`.
pub fn score(records: &[Record], answers: Answers) -> BenchScore {
    let mut issues = Issues::default();
    let questions = questions_of(records, Question::from_record, &mut issues);
    let pairs = pair_answers(&questions, |q| &q.id, answers, &mut issues);
    let units: Vec<Unit> = pairs
        .iter()
        .map(|(q, a)| Unit {
            id: q.id.clone(),
            group: q.category.clone(),
            value: f64::from(u8::from(is_right(&a.text, q))),
        })
        .collect();
    let of = |cats: &[&str]| -> Vec<Unit> {
        units
            .iter()
            .filter(|u| cats.contains(&u.group.as_str()))
            .cloned()
            .collect()
    };
    let mut metrics = vec![
        Metric::new("final_score", Aggregate::Sum, 1.0, units.clone()),
        Metric::new(
            "text_recognition",
            Aggregate::Sum,
            1.0,
            of(&CATEGORIES[..6]),
        ),
    ];
    for c in CATEGORIES {
        metrics.push(Metric::new(c, Aggregate::Sum, 1.0, of(&[c])));
    }
    BenchScore {
        metrics,
        issues,
        ..BenchScore::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containment_with_folding_and_math_spacing() {
        let q = |cat: &str, answers: &[&str]| Question {
            id: "0".into(),
            category: cat.into(),
            math: cat == CATEGORIES[9],
            answers: answers.iter().map(|s| s.to_string()).collect(),
        };
        assert!(is_right(
            "The sign says ＳＴＯＰ here",
            &q(CATEGORIES[0], &["stop"])
        ));
        assert!(!is_right("STO P", &q(CATEGORIES[0], &["stop"])));
        assert!(is_right("x ^ { 2 }", &q(CATEGORIES[9], &["x^{2}"])));
        assert!(!is_right("X^{2}", &q(CATEGORIES[9], &["x^{2}"])));
        let r: Record = serde_json::from_value(serde_json::json!({
            "index": 3, "category": "Doc-oriented VQA", "answer": "['a', 'b']"
        }))
        .unwrap();
        assert_eq!(Question::from_record(&r).unwrap().answers, ["a", "b"]);
        let bad: Record =
            serde_json::from_value(serde_json::json!({"index": 3, "category": "x", "answer": "a"}))
                .unwrap();
        assert!(
            Question::from_record(&bad)
                .unwrap_err()
                .contains("unknown OCRBench category")
        );
    }
}
