//! MMStar (1,500 four-option questions in six categories of three L2 categories each), scored as
//! lmms-eval 0.7.3's `tasks/mmstar/utils.py` does: the letter read by its shared extractor
//! ([`mcq::lmms_eval_letter`]) against the answer; each category is the mean of its L2
//! categories' accuracies and `average` the mean over all L2 categories (lmms-eval's headline).
//! `overall` is the plain mean over questions, the figure VLMEvalKit reports; `vlmevalkit_overall`
//! reads the letters by VLMEvalKit's rules ([`super::vlmevalkit`]) instead.

use super::{
    Answers, BenchScore, Issues, lettered, mcq, options, pair_answers, questions_of, text_field,
    vlmevalkit,
};
use crate::records::Record;
use crate::stats::{Aggregate, Metric, Unit};

/// lmms-eval's categories, in its order.
pub const CATEGORIES: [&str; 6] = [
    "coarse perception",
    "fine-grained perception",
    "instance reasoning",
    "logical reasoning",
    "science & technology",
    "math",
];

/// One question, as scoring needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct Question {
    /// `index`.
    pub id: String,
    /// The answer letter.
    pub answer: String,
    /// `category`.
    pub category: String,
    /// `l2_category` (lmms-eval) or `l2-category`; empty where the file has none (VLMEvalKit's
    /// MMStar.tsv).
    pub l2_category: String,
    /// The option texts (VLMEvalKit's columns; lmms-eval's rows keep them in the question, so
    /// there they are empty and only letters are read).
    pub options: Vec<String>,
}

impl Question {
    /// From a record of either harness.
    pub fn from_record(r: &Record) -> Result<Self, String> {
        Ok(Question {
            id: text_field(r, &["index"])?,
            answer: text_field(r, &["answer"])?,
            category: text_field(r, &["category"])?,
            l2_category: text_field(r, &["l2_category", "l2-category"]).unwrap_or_default(),
            options: options(r)?,
        })
    }
}

/// Scores `answers` against the benchmark's `records`.
pub fn score(records: &[Record], answers: Answers) -> BenchScore {
    let mut issues = Issues::default();
    let questions = questions_of(records, Question::from_record, &mut issues);
    let pairs = pair_answers(&questions, |q| &q.id, answers, &mut issues);
    let mut unparsed = 0;
    let units: Vec<(&Question, Unit)> = pairs
        .iter()
        .map(|(q, a)| {
            let letter = mcq::lmms_eval_letter(&a.text, &['A', 'B', 'C', 'D']);
            unparsed += usize::from(letter.is_none());
            let right = letter
                .is_some_and(|l| super::pystr::strip(&q.answer).to_uppercase() == l.to_string());
            let unit = Unit {
                id: q.id.clone(),
                group: q.l2_category.clone(),
                value: f64::from(u8::from(right)),
            };
            (*q, unit)
        })
        .collect();
    let all: Vec<Unit> = units.iter().map(|(_, u)| u.clone()).collect();
    let kit: Vec<Unit> = pairs
        .iter()
        .map(|(q, a)| {
            let choices = if q.options.is_empty() {
                ['A', 'B', 'C', 'D'].map(|c| (c, String::new())).to_vec()
            } else {
                lettered(&q.options)
            };
            let letter = vlmevalkit::infer_letter(&a.text, &choices);
            Unit::of(&q.id, q.answer == letter.to_string())
        })
        .collect();
    let mut metrics = vec![
        Metric::new("overall", Aggregate::Mean, 1.0, all.clone()),
        Metric::new("vlmevalkit_overall", Aggregate::Mean, 1.0, kit),
    ];
    let has_l2 = !all.is_empty() && all.iter().all(|u| !u.group.is_empty());
    if has_l2 {
        metrics.push(Metric::new(
            "average",
            Aggregate::MeanOfGroupMeans,
            1.0,
            all,
        ));
    }
    let aggregate = if has_l2 {
        Aggregate::MeanOfGroupMeans
    } else {
        Aggregate::Mean
    };
    let mut categories: Vec<&str> = CATEGORIES.to_vec();
    for (q, _) in &units {
        if !categories.contains(&q.category.as_str()) {
            categories.push(&q.category);
        }
    }
    for c in categories {
        let of: Vec<Unit> = units
            .iter()
            .filter(|(q, _)| q.category == c)
            .map(|(_, u)| u.clone())
            .collect();
        if !of.is_empty() {
            metrics.push(Metric::new(c, aggregate, 1.0, of));
        }
    }
    let mut s = BenchScore {
        metrics,
        issues,
        ..BenchScore::default()
    };
    s.counts.insert("unparsed_answers".into(), unparsed);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(i: usize, answer: &str, category: &str, l2: &str) -> Record {
        serde_json::from_value(serde_json::json!({
            "index": i, "answer": answer, "category": category, "l2_category": l2,
        }))
        .unwrap()
    }

    #[test]
    fn average_is_over_l2_categories_and_overall_over_questions() {
        let records = vec![
            record(0, "A", "math", "geometry"),
            record(1, "B", "math", "geometry"),
            record(2, "C", "math", "geometry"),
            record(3, "D", "math", "statistical reasoning"),
        ];
        let answers = Answers::parse(
            "{\"question_id\": 0, \"text\": \"A\"}\n{\"question_id\": 1, \"text\": \"(B) two\"}\n\
             {\"question_id\": 2, \"text\": \"no idea\"}\n{\"question_id\": 3, \"text\": \"A\"}\n\
             {\"question_id\": 9, \"text\": \"A\"}\n",
        );
        let s = score(&records, answers);
        assert_eq!(s.metric("overall").unwrap().value(), 0.5);
        // geometry 2/3, statistical reasoning 0 → 1/3.
        assert!((s.metric("average").unwrap().value() - 1.0 / 3.0).abs() < 1e-12);
        assert!((s.metric("math").unwrap().value() - 1.0 / 3.0).abs() < 1e-12);
        assert_eq!(s.counts["unparsed_answers"], 1);
        assert_eq!(s.issues.unknown_ids, 1);
    }
}
