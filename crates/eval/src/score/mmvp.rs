//! MMVP: 150 image pairs, 300 questions; a judge grades each answer right or wrong, and a pair
//! (questions 2k-1 and 2k) counts as right only when both of its answers are. As MMVP's
//! `scripts/gpt_grader.py` does, the score is over the pairs the grades have: the grader walks the
//! graded lines two at a time and divides by the number of complete pairs it saw (a lone last
//! line is not counted), not by the benchmark's 150. A pair with one grade of two is left out and
//! listed in `issues.incomplete_pairs`.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

use super::Issues;

/// MMVP's score.
#[derive(Debug, Clone, Serialize)]
pub struct Score {
    /// Pairs with both answers right / pairs scored (0 when none is).
    pub pair_accuracy: f64,
    /// Pairs scored: those with both questions graded.
    pub pairs: usize,
    /// Problems: malformed grade lines; grades for ids past the question count (`unknown_ids`);
    /// questions without a grade (`missing_answers`: not scored); pairs with one grade of two
    /// (`incomplete_pairs`: not scored).
    pub issues: Issues,
    /// Each scored pair (`pair <k>`), right when both answers are.
    #[serde(skip)]
    pub units: Vec<crate::stats::Unit>,
}

/// Scores grade lines `{"question_id": 1..N, "correct": bool}`. `questions` is the number of
/// questions (300, or the rows of `Questions.csv`); without it, the largest graded id rounded up
/// to a pair. Only pairs with both questions graded are scored; the others are reported.
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
    let largest = correct.keys().next_back().copied().unwrap_or(0);
    let n = questions.map_or(largest.div_ceil(2).saturating_mul(2), |n| n as u64);
    // Ids are at least 1, so `..=n` is 1..=n (and empty when n is 0).
    let known = correct.range(..=n).count() as u64;
    issues.unknown_ids = correct.len() - known as usize;
    issues.missing_answers = usize::try_from(n - known).unwrap_or(usize::MAX);
    // Pair k holds questions 2k-1 and 2k; with an odd question count the last pair cannot be
    // complete.
    let mut per_pair: BTreeMap<u64, (usize, bool)> = BTreeMap::new();
    for (&id, &c) in correct.range(..=n) {
        let e = per_pair.entry(id.div_ceil(2)).or_insert((0, true));
        e.0 += 1;
        e.1 &= c;
    }
    let (mut pairs, mut right) = (0usize, 0usize);
    let mut units = Vec::new();
    for (k, (graded, both_right)) in per_pair {
        if graded == 2 {
            pairs += 1;
            right += usize::from(both_right);
            units.push(crate::stats::Unit::of(&format!("pair {k}"), both_right));
        } else {
            issues.incomplete_pairs.push(k);
        }
    }
    Score {
        pair_accuracy: if pairs == 0 {
            0.0
        } else {
            right as f64 / pairs as f64
        },
        pairs,
        issues,
        units,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn grades(correct: impl IntoIterator<Item = (u64, bool)>) -> Vec<Value> {
        correct
            .into_iter()
            .map(|(id, c)| json!({"question_id": id, "correct": c}))
            .collect()
    }

    #[test]
    fn a_pair_needs_both_answers() {
        let mut g = grades([(1, true), (2, true), (3, true), (4, false), (5, true)]);
        g.push(json!({"question_id": "x"}));
        let s = score(&g, Some(6));
        // (1,2) right, (3,4) wrong, (5,6) has one grade: left out.
        assert_eq!(s.pairs, 2);
        assert_eq!(s.pair_accuracy, 0.5);
        assert_eq!(s.issues.incomplete_pairs, vec![3]);
        assert_eq!(s.issues.missing_answers, 1);
        assert_eq!(s.issues.malformed_lines, 1);
        // Pairs are (1,2), (3,4): not (2,3).
        let shifted = score(&grades([(2, true), (3, true)]), Some(4));
        assert_eq!((shifted.pairs, shifted.pair_accuracy), (0, 0.0));
        assert_eq!(shifted.issues.incomplete_pairs, vec![1, 2]);
    }

    #[test]
    fn the_pairs_graded_are_the_denominator_as_the_official_grader_counts() {
        // 50 graded questions of 300: 25 pairs, 14 with both answers right. MMVP's
        // gpt_grader.py reads these 50 lines two at a time: 14 / 25 = 0.56, not 14 / 150.
        let g = grades((1..=50).map(|id| (id, id <= 28 || id % 2 == 1)));
        let s = score(&g, Some(300));
        assert_eq!(s.pairs, 25);
        assert!(
            (s.pair_accuracy - 0.56).abs() < 1e-12,
            "{}",
            s.pair_accuracy
        );
        assert_eq!(s.issues.missing_answers, 250);
        assert!(s.issues.incomplete_pairs.is_empty());
        // Without Questions.csv the question count is the largest id rounded up to a pair.
        let s = score(&g, None);
        assert_eq!((s.pairs, s.issues.missing_answers), (25, 0));
        // A lone 51st grade is not a pair, as the grader drops an odd last line.
        let mut g51 = g.clone();
        g51.extend(grades([(51, true)]));
        let s = score(&g51, Some(300));
        assert_eq!(s.pairs, 25);
        assert!((s.pair_accuracy - 0.56).abs() < 1e-12);
        assert_eq!(s.issues.incomplete_pairs, vec![26]);
    }

    #[test]
    fn ids_past_the_questions_and_huge_ids_are_unknown() {
        let s = score(
            &grades([(1, true), (2, true), (7, true), (u64::MAX, true)]),
            Some(6),
        );
        assert_eq!(s.issues.unknown_ids, 2);
        assert_eq!((s.pairs, s.pair_accuracy), (1, 1.0));
        // An odd question count: question 5's pair cannot be complete.
        let s = score(&grades([(5, true)]), Some(5));
        assert_eq!(s.issues.incomplete_pairs, vec![3]);
        assert_eq!(score(&grades([(1, true)]), Some(0)).issues.unknown_ids, 1);
        // A huge id without Questions.csv: counted, not iterated.
        let s = score(&grades([(u64::MAX, true)]), None);
        assert_eq!(s.pairs, 0);
        assert_eq!(s.issues.incomplete_pairs, vec![u64::MAX / 2 + 1]);
    }
}
