//! AI2D (science diagrams, multiple choice), scored as lmms-eval 0.7.3's `ai2d` task does: its
//! filter keeps a leading `X.` letter or the whole answer ([`mcq::ai2d_filter`]), then exact match
//! with the answer letter, case and ASCII punctuation ignored. `vlmevalkit_accuracy` reads the
//! letter by VLMEvalKit's rules ([`super::vlmevalkit`]).

use super::{
    Answers, BenchScore, Issues, lettered, mcq, options, pair_answers, questions_of, text_field,
    vlmevalkit,
};
use crate::records::Record;
use crate::stats::{Aggregate, Metric, Unit};

/// One question, as scoring needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct Question {
    /// `index` (VLMEvalKit), `question_id` or `id`.
    pub id: String,
    /// The answer letter (lmms-eval's rows keep the option's number, which becomes its letter).
    pub answer: String,
    /// The option texts.
    pub options: Vec<String>,
}

impl Question {
    /// From a record of either harness.
    pub fn from_record(r: &Record) -> Result<Self, String> {
        let answer = text_field(r, &["answer"])?;
        let answer = match answer.trim().parse::<u8>() {
            Ok(n) if n < 26 => ((b'A' + n) as char).to_string(),
            _ => answer,
        };
        Ok(Question {
            id: text_field(r, &["index", "question_id", "id"])?,
            answer,
            options: options(r)?,
        })
    }
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
            value: f64::from(u8::from(mcq::exact_match_loose(
                &mcq::ai2d_filter(&a.text),
                &q.answer,
            ))),
        })
        .collect();
    let kit = pairs
        .iter()
        .map(|(q, a)| {
            let letter = vlmevalkit::infer_letter(&a.text, &lettered(&q.options));
            Unit::of(&q.id, q.answer == letter.to_string())
        })
        .collect();
    BenchScore {
        metrics: vec![
            Metric::new("accuracy", Aggregate::Mean, 1.0, units),
            Metric::new("vlmevalkit_accuracy", Aggregate::Mean, 1.0, kit),
        ],
        issues,
        ..BenchScore::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_become_letters_and_the_filter_decides() {
        let records: Vec<Record> = (0..3)
            .map(|i| {
                serde_json::from_value(serde_json::json!({"index": i, "answer": "1"})).unwrap()
            })
            .collect();
        let answers = Answers::parse(
            "{\"question_id\": 0, \"text\": \"B. the sun\"}\n{\"question_id\": 1, \"text\": \"b\"}\n\
             {\"question_id\": 2, \"text\": \"The answer is B\"}\n",
        );
        let s = score(&records, answers);
        assert!((s.metrics[0].value() - 2.0 / 3.0).abs() < 1e-12);
    }
}
