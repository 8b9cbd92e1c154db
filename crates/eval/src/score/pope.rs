//! POPE: LLaVA's `eval_pope.py`. Each answer keeps the text before its first `.`, loses its commas
//! and is split on single spaces; `No`, `not` or `no` among the words means "no", anything else
//! "yes". Answers are matched with labels **by position** within each category: the category's
//! answers in answer-file order against the lines of `coco_pope_<category>.json`.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde::Serialize;
use serde_json::Value;

use super::{Answers, Issues, id_key, read_jsonl};
use crate::Error;

/// One category's metrics ("yes" is the positive class).
#[derive(Debug, Clone, Default, Serialize)]
pub struct CategoryScore {
    /// (TP + TN) / pairs.
    pub accuracy: f64,
    /// TP / (TP + FP); 0 when nothing was predicted "yes" (the script would divide by zero).
    pub precision: f64,
    /// TP / (TP + FN); 0 when no label is "yes".
    pub recall: f64,
    /// Harmonic mean of precision and recall; 0 when both are 0.
    pub f1: f64,
    /// Fraction of the category's answers that read "yes".
    pub yes_ratio: f64,
    /// Answers in the category.
    pub answers: usize,
    /// Labels in the category's file.
    pub labels: usize,
}

/// POPE's score: one object per category (`adversarial`, `popular`, `random`) at the top level,
/// next to `issues`.
#[derive(Debug, Clone, Serialize)]
pub struct Score {
    /// Per category (`adversarial`, `popular`, `random`).
    #[serde(flatten)]
    pub categories: BTreeMap<String, CategoryScore>,
    /// Problems: unknown ids; `missing_answers` counts labels left without an answer.
    pub issues: Issues,
}

/// True when the script reads `text` as "yes".
pub fn reads_yes(text: &str) -> bool {
    let first = match text.find('.') {
        Some(i) => &text[..i],
        None => text,
    };
    let words = first.replace(',', "");
    !words
        .split(' ')
        .any(|w| w == "No" || w == "not" || w == "no")
}

/// Scores one category: `answers` in file order against `labels` (`"yes"`/`"no"`; anything else
/// counts as yes, as the script does), zipped by position.
pub fn score_category(answers: &[&str], labels: &[&str]) -> CategoryScore {
    let preds: Vec<bool> = answers.iter().map(|a| reads_yes(a)).collect();
    let gold: Vec<bool> = labels.iter().map(|l| *l != "no").collect();
    let (mut tp, mut tn, mut fp, mut fn_) = (0usize, 0usize, 0usize, 0usize);
    for (&p, &g) in preds.iter().zip(&gold) {
        match (p, g) {
            (true, true) => tp += 1,
            (true, false) => fp += 1,
            (false, false) => tn += 1,
            (false, true) => fn_ += 1,
        }
    }
    let ratio = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    let precision = ratio(tp, tp + fp);
    let recall = ratio(tp, tp + fn_);
    CategoryScore {
        accuracy: ratio(tp + tn, tp + tn + fp + fn_),
        precision,
        recall,
        f1: if precision + recall == 0.0 {
            0.0
        } else {
            2.0 * precision * recall / (precision + recall)
        },
        yes_ratio: ratio(preds.iter().filter(|p| **p).count(), preds.len()),
        answers: answers.len(),
        labels: labels.len(),
    }
}

/// Scores `answers` with the question file (`question_id` -> `category`) and a directory of
/// `coco_pope_<category>.json` label files (JSON lines with `label`).
pub fn score(answers: Answers, questions: &[Value], labels_dir: &Path) -> Result<Score, Error> {
    let mut issues = answers.issues.clone();
    let category: HashMap<String, String> = questions
        .iter()
        .filter_map(|q| {
            Some((
                id_key(q.get("question_id")?)?,
                q.get("category")?.as_str()?.to_string(),
            ))
        })
        .collect();
    let mut per_category: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    for a in &answers.lines {
        match category.get(&a.question_id) {
            Some(c) => per_category.entry(c.clone()).or_default().push(&a.text),
            None => issues.unknown_ids += 1,
        }
    }
    let mut files: Vec<_> = std::fs::read_dir(labels_dir)
        .map_err(|e| Error::File(format!("{}: {e}", labels_dir.display())))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("coco_pope_") && n.ends_with(".json"))
        })
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(Error::File(format!(
            "{}: no coco_pope_<category>.json label files",
            labels_dir.display()
        )));
    }
    let mut categories = BTreeMap::new();
    for file in files {
        let name = file
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        let cat = name["coco_pope_".len()..name.len() - ".json".len()].to_string();
        let (lines, bad) = read_jsonl(&file)?;
        issues.malformed_lines += bad;
        let labels: Vec<&str> = lines
            .iter()
            .map(|l| l.get("label").and_then(Value::as_str).unwrap_or("yes"))
            .collect();
        let answers = per_category.get(&cat).cloned().unwrap_or_default();
        issues.missing_answers += labels.len().saturating_sub(answers.len());
        categories.insert(cat, score_category(&answers, &labels));
    }
    Ok(Score { categories, issues })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yes_and_no_as_the_script_reads_them() {
        assert!(!reads_yes("No"));
        assert!(!reads_yes("no, there is no dog."));
        assert!(!reads_yes("There is not a dog"));
        assert!(reads_yes("Yes"));
        // Only the first sentence counts.
        assert!(reads_yes("Yes. There is no cat."));
        // Case-sensitive words, split on single spaces.
        assert!(reads_yes("NO"));
        assert!(reads_yes("Nope"));
        assert!(reads_yes("no\nthere is"));
        assert!(!reads_yes("No,"));
        assert!(!reads_yes("well  no"));
        assert!(reads_yes("cannot"));
        assert!(reads_yes(""));
    }

    #[test]
    fn metrics_pair_by_position_and_survive_empty_classes() {
        let s = score_category(&["Yes", "No", "yes", "no"], &["yes", "yes", "no", "no"]);
        assert_eq!(
            (s.accuracy, s.precision, s.recall, s.yes_ratio),
            (0.5, 0.5, 0.5, 0.5)
        );
        assert!((s.f1 - 0.5).abs() < 1e-12);
        // Extra answers count in the yes ratio but not in the pairs.
        let s = score_category(&["no", "no", "yes"], &["no", "no"]);
        assert_eq!(s.accuracy, 1.0);
        assert_eq!(s.precision, 0.0);
        assert!((s.yes_ratio - 1.0 / 3.0).abs() < 1e-12);
    }
}
