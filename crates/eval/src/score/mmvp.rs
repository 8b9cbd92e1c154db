//! MMVP: 150 image pairs, 300 questions; a judge grades each answer right or wrong, and a pair
//! counts only when both of its questions (ids 2k-1 and 2k) are right.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

use super::Issues;

/// MMVP's score.
#[derive(Debug, Clone, Serialize)]
pub struct Score {
    /// Pairs with both answers right / pairs.
    pub pair_accuracy: f64,
    /// Pairs scored.
    pub pairs: usize,
    /// Problems: malformed grade lines; questions without a grade (wrong).
    pub issues: Issues,
}

/// Scores grade lines `{"question_id": 1..N, "correct": bool}`. `questions` is the number of
/// questions (300, or the rows of `Questions.csv`); without it, the largest graded id rounded up
/// to a pair. A question without a grade is wrong.
pub fn score(grades: &[Value], questions: Option<usize>) -> Score {
    let mut issues = Issues::default();
    let mut correct: BTreeMap<u64, bool> = BTreeMap::new();
    for g in grades {
        let id = g.get("question_id").and_then(|v| {
            v.as_u64()
                .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
        });
        match (id, g.get("correct").and_then(Value::as_bool)) {
            (Some(id), Some(c)) if id >= 1 => {
                if correct.insert(id, c).is_some() {
                    issues.duplicate_ids += 1;
                }
            }
            _ => issues.malformed_lines += 1,
        }
    }
    let largest = correct.keys().next_back().copied().unwrap_or(0) as usize;
    let n = questions.unwrap_or(largest.div_ceil(2) * 2);
    issues.unknown_ids = correct.keys().filter(|&&id| id as usize > n).count();
    issues.missing_answers = (1..=n as u64)
        .filter(|id| !correct.contains_key(id))
        .count();
    let pairs = n / 2;
    let right = (1..=pairs as u64)
        .filter(|k| {
            correct.get(&(2 * k - 1)) == Some(&true) && correct.get(&(2 * k)) == Some(&true)
        })
        .count();
    Score {
        pair_accuracy: right as f64 / pairs.max(1) as f64,
        pairs,
        issues,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_pair_needs_both_answers() {
        let grades = [
            json!({"question_id": 1, "correct": true}),
            json!({"question_id": 2, "correct": true}),
            json!({"question_id": 3, "correct": true}),
            json!({"question_id": 4, "correct": false}),
            json!({"question_id": 5, "correct": true}),
            json!({"question_id": "x"}),
        ];
        let s = score(&grades, Some(6));
        assert_eq!(s.pairs, 3);
        assert!((s.pair_accuracy - 1.0 / 3.0).abs() < 1e-12);
        assert_eq!(s.issues.missing_answers, 1);
        assert_eq!(s.issues.malformed_lines, 1);
        // Pairs are (1,2), (3,4), (5,6): not (2,3).
        let shifted = [
            json!({"question_id": 2, "correct": true}),
            json!({"question_id": 3, "correct": true}),
        ];
        assert_eq!(score(&shifted, Some(4)).pair_accuracy, 0.0);
    }
}
