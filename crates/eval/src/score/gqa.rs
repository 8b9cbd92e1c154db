//! GQA (testdev-balanced): LLaVA's `convert_gqa_for_eval.py` turns each answer into
//! `text.rstrip('.').lower()`, and GQA's `eval.py` counts exact matches with the gold `answer` over
//! the balanced questions of the official questions file.

use serde::Serialize;
use serde_json::Value;

use super::{Answers, Issues};
use crate::stats::Unit;

/// GQA's score.
#[derive(Debug, Clone, Serialize)]
pub struct Score {
    /// Exact-match accuracy over the balanced questions, 0..1.
    pub accuracy: f64,
    /// Balanced questions scored.
    pub count: usize,
    /// Problems in the inputs.
    pub issues: Issues,
    /// Each balanced question, right (1) or not (0).
    #[serde(skip)]
    pub units: Vec<Unit>,
}

/// What the conversion script makes of a prediction: trailing periods dropped, lowercased; no
/// whitespace is stripped (`"yes "` stays wrong).
pub fn normalise(text: &str) -> String {
    text.trim_end_matches('.').to_lowercase()
}

/// Scores `answers` against the official questions file (`questionId -> {answer, isBalanced,
/// ...}`). A balanced question without an answer counts as wrong.
pub fn score(mut answers: Answers, questions: &Value) -> Score {
    let by_id = answers.by_id();
    let mut issues = answers.issues.clone();
    let empty = serde_json::Map::new();
    let questions = questions.as_object().unwrap_or(&empty);
    issues.unknown_ids = by_id.keys().filter(|k| !questions.contains_key(*k)).count();
    let (mut right, mut count) = (0usize, 0usize);
    let mut units = Vec::new();
    for (id, q) in questions {
        if !q
            .get("isBalanced")
            .and_then(Value::as_bool)
            .unwrap_or(false)
        {
            continue;
        }
        count += 1;
        let gold = q.get("answer").and_then(Value::as_str).unwrap_or_default();
        let ok = match by_id.get(id) {
            Some(a) => normalise(&a.text) == gold,
            None => {
                issues.missing_answers += 1;
                false
            }
        };
        right += usize::from(ok);
        units.push(Unit::of(id, ok));
    }
    Score {
        accuracy: right as f64 / count.max(1) as f64,
        count,
        issues,
        units,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_trailing_periods_go_and_case_folds() {
        assert_eq!(normalise("Yes."), "yes");
        assert_eq!(normalise("left..."), "left");
        assert_eq!(normalise("yes "), "yes ");
        assert_eq!(normalise(" yes"), " yes");
        assert_eq!(normalise("St. Louis"), "st. louis");
        assert_eq!(normalise("ÉCOLE"), "école");
    }

    #[test]
    fn balanced_questions_only_and_missing_is_wrong() {
        let questions = json!({
            "1": {"answer": "yes", "isBalanced": true},
            "2": {"answer": "table", "isBalanced": true},
            "3": {"answer": "no", "isBalanced": false},
            "4": {"answer": "red", "isBalanced": true},
        });
        let answers = Answers::parse(
            "{\"question_id\": \"1\", \"text\": \"Yes.\"}\n\
             {\"question_id\": \"2\", \"text\": \"table \"}\n\
             {\"question_id\": \"3\", \"text\": \"no\"}\n\
             {\"question_id\": \"99\", \"text\": \"no\"}\n",
        );
        let s = score(answers, &questions);
        assert_eq!(s.count, 3);
        assert!((s.accuracy - 1.0 / 3.0).abs() < 1e-12);
        assert_eq!(s.issues.missing_answers, 1);
        assert_eq!(s.issues.unknown_ids, 1);
    }
}
