//! MM-Vet: a judge scores each answer 0..1; the total averages over every question of
//! `mm-vet.json` (an ungraded one scores 0), and each capability (rec, ocr, know, gen, spat,
//! math) averages the questions that list it; both x 100 and rounded to one decimal, as the
//! evaluator prints them.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

use super::{Issues, id_key};

/// MM-Vet's score.
#[derive(Debug, Clone, Serialize)]
pub struct Score {
    /// Mean score x 100 over every question, to one decimal.
    pub total: f64,
    /// Mean score x 100 per capability.
    pub capabilities: BTreeMap<String, f64>,
    /// Questions.
    pub count: usize,
    /// Problems in the grades.
    pub issues: Issues,
    /// Each question's grade (0..1; ungraded 0).
    #[serde(skip)]
    pub units: Vec<crate::stats::Unit>,
}

/// Scores grade lines `{"question_id": "v1_N", "score": 0..1}` against `mm-vet.json`.
pub fn score(grades: &[Value], annotations: &Value) -> Score {
    let mut issues = Issues::default();
    let mut scores: BTreeMap<String, f64> = BTreeMap::new();
    for g in grades {
        let id = g.get("question_id").and_then(id_key);
        match (id, g.get("score").and_then(Value::as_f64)) {
            (Some(id), Some(s)) => {
                if scores.insert(id, s.clamp(0.0, 1.0)).is_some() {
                    issues.duplicate_ids += 1;
                }
            }
            _ => issues.malformed_lines += 1,
        }
    }
    let empty = serde_json::Map::new();
    let questions = annotations.as_object().unwrap_or(&empty);
    issues.unknown_ids = scores
        .keys()
        .filter(|k| !questions.contains_key(*k))
        .count();
    let mut sums: BTreeMap<String, (f64, usize)> = BTreeMap::new();
    let mut total = 0.0;
    let mut units = Vec::new();
    for (id, q) in questions {
        let s = match scores.get(id) {
            Some(s) => *s,
            None => {
                issues.missing_answers += 1;
                0.0
            }
        };
        total += s;
        units.push(crate::stats::Unit {
            id: id.clone(),
            group: String::new(),
            value: s,
        });
        for cap in q
            .get("capability")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            let e = sums.entry(cap.to_string()).or_default();
            e.0 += s;
            e.1 += 1;
        }
    }
    let round1 = |v: f64| (v * 10.0).round() / 10.0;
    Score {
        total: round1(100.0 * total / questions.len().max(1) as f64),
        capabilities: sums
            .into_iter()
            .map(|(k, (s, n))| (k, round1(100.0 * s / n.max(1) as f64)))
            .collect(),
        count: questions.len(),
        issues,
        units,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn total_over_every_question_and_capabilities_over_theirs() {
        let ann = json!({
            "v1_0": {"capability": ["rec", "ocr"]},
            "v1_1": {"capability": ["rec"]},
            "v1_2": {"capability": ["math", "ocr"]},
        });
        let grades = [
            json!({"question_id": "v1_0", "score": 1.0}),
            json!({"question_id": "v1_1", "score": 0.5}),
            json!({"question_id": "v1_9", "score": 1.0}),
        ];
        let s = score(&grades, &ann);
        assert!((s.total - 50.0).abs() < 1e-9);
        assert!((s.capabilities["rec"] - 75.0).abs() < 1e-9);
        assert!((s.capabilities["ocr"] - 50.0).abs() < 1e-9);
        assert_eq!(s.capabilities["math"], 0.0);
        assert_eq!((s.issues.missing_answers, s.issues.unknown_ids), (1, 1));
    }
}
