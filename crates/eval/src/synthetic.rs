//! The held-out split of the built-in synthetic dataset: its questions go through the same
//! [`runner`](crate::runner) as the benchmarks, and its answers are scored by exact match per
//! question kind. Asking the same questions about the wrong images ([`shuffled`]) shows whether
//! the model looks: the gap between the two accuracies is what the image contributes.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::Error;
use crate::runner::EvalQuestion;
use crate::score::{Answers, Issues, id_key};

#[derive(Debug, Deserialize)]
struct KeyLine {
    question_id: serde_json::Value,
    answer: String,
    category: String,
}

/// Accuracy overall and per question kind.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Accuracy {
    /// Fraction right (an unanswered question is wrong).
    pub accuracy: f64,
    /// Questions in the key.
    pub count: usize,
    /// Fraction right per kind.
    pub by_kind: BTreeMap<String, f64>,
    /// Problems in the answers.
    pub issues: Issues,
}

/// Normalises an answer for exact match: trimmed, lowercased, trailing period dropped.
pub fn normalise(text: &str) -> String {
    text.trim().trim_end_matches('.').trim().to_lowercase()
}

/// The same questions, each about the image of the next question that shows a different image.
pub fn shuffled(questions: &[EvalQuestion]) -> Vec<EvalQuestion> {
    let n = questions.len();
    questions
        .iter()
        .enumerate()
        .map(|(i, q)| {
            let other = (1..n)
                .map(|d| &questions[(i + d) % n])
                .find(|o| o.images != q.images);
            EvalQuestion {
                images: other.map_or(q.images.clone(), |o| o.images.clone()),
                ..q.clone()
            }
        })
        .collect()
}

/// Scores `answers` against the answer key (`eval_answers.jsonl`).
pub fn score(mut answers: Answers, key: &Path) -> Result<Accuracy, Error> {
    let text =
        std::fs::read_to_string(key).map_err(|e| Error::File(format!("{}: {e}", key.display())))?;
    let key: Vec<KeyLine> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l)
                .map_err(|e| Error::File(format!("{} line {}: {e}", key.display(), i + 1)))
        })
        .collect::<Result<_, _>>()?;
    let by_id = answers.by_id();
    let mut issues = answers.issues.clone();
    let known: std::collections::HashSet<String> =
        key.iter().filter_map(|k| id_key(&k.question_id)).collect();
    issues.unknown_ids = by_id.keys().filter(|k| !known.contains(*k)).count();
    let mut right: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for k in &key {
        let entry = right.entry(k.category.clone()).or_default();
        entry.1 += 1;
        match id_key(&k.question_id).and_then(|id| by_id.get(&id)) {
            Some(a) => entry.0 += usize::from(normalise(&a.text) == normalise(&k.answer)),
            None => issues.missing_answers += 1,
        }
    }
    let (hits, count) = right.values().fold((0, 0), |(h, c), (a, b)| (h + a, c + b));
    Ok(Accuracy {
        accuracy: hits as f64 / count.max(1) as f64,
        count,
        by_kind: right
            .into_iter()
            .map(|(k, (a, b))| (k, a as f64 / b.max(1) as f64))
            .collect(),
        issues,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn q(id: u64, image: &str) -> EvalQuestion {
        EvalQuestion {
            question_id: json!(id),
            images: vec![image.into()],
            text: "t".into(),
            prompt: "t".into(),
            category: None,
        }
    }

    #[test]
    fn shuffled_questions_never_keep_their_image() {
        let qs = [q(0, "a"), q(1, "a"), q(2, "b"), q(3, "c")];
        let s = shuffled(&qs);
        for (a, b) in qs.iter().zip(&s) {
            assert_ne!(a.images, b.images);
            assert_eq!(a.question_id, b.question_id);
        }
    }

    #[test]
    fn exact_match_per_kind_with_missing_answers_wrong() {
        let dir = std::env::temp_dir().join(format!("llava-syn-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let key = dir.join("key.jsonl");
        std::fs::write(
            &key,
            "{\"question_id\": 0, \"answer\": \"red\", \"category\": \"color\"}\n\
             {\"question_id\": 1, \"answer\": \"2\", \"category\": \"count\"}\n\
             {\"question_id\": 2, \"answer\": \"blue\", \"category\": \"color\"}\n",
        )
        .unwrap();
        let answers = Answers::parse(
            "{\"question_id\": 0, \"text\": \"Red.\"}\n{\"question_id\": 1, \"text\": \"3\"}\n",
        );
        let a = score(answers, &key).unwrap();
        assert!((a.accuracy - 1.0 / 3.0).abs() < 1e-12);
        assert_eq!(a.by_kind["color"], 0.5);
        assert_eq!(a.issues.missing_answers, 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
