//! POPE, MME and GQA from VLMEvalKit's TSV files (`POPE.tsv`, `MME.tsv`,
//! `GQA_TestDev_Balanced.tsv`), scored by the paper's rules (LLaVA's `eval_pope.py` reading, MME's
//! `eval_tool`, GQA's exact match after LLaVA's conversion), with VLMEvalKit's own figures beside
//! POPE's and MME's (`YOrN_Extraction`, then `POPE_rating` / `MME_rating`).
//!
//! POPE.tsv lists each question once with the categories it belongs to (`adversarial,popular`),
//! its answer `Yes`/`No`; MME.tsv each question with its subtask (`category`), answer and
//! `image_path` (an image's two questions share it).

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::{Answers, Issues, mme, pair_answers, pope, questions_of, text_field, vlmevalkit};
use crate::records::Record;
use crate::stats::{Aggregate, Metric, Unit};

/// One yes/no question of a TSV.
#[derive(Debug, Clone, PartialEq)]
pub struct YesNo {
    /// `index`.
    pub id: String,
    /// True when the answer is `Yes`.
    pub yes: bool,
    /// POPE: its categories; MME: its subtask.
    pub categories: Vec<String>,
    /// MME: the image it asks about (`image_path`, else the `image` cell's reference).
    pub image: String,
}

impl YesNo {
    /// From a VLMEvalKit row.
    pub fn from_record(r: &Record) -> Result<Self, String> {
        let yes = match text_field(r, &["answer"])?.as_str() {
            "Yes" | "yes" => true,
            "No" | "no" => false,
            other => return Err(format!("`answer` is `{other}`, not Yes or No")),
        };
        let id = text_field(r, &["index"])?;
        let image = text_field(r, &["image_path"]).unwrap_or_else(|_| {
            // A shared image is stored once: later rows name the row that holds it.
            match r.get("image").and_then(Value::as_str) {
                Some(cell) if cell.len() <= 64 => cell.to_string(),
                _ => id.clone(),
            }
        });
        Ok(YesNo {
            categories: text_field(r, &["category"])?
                .split(',')
                .map(|c| c.trim().to_string())
                .filter(|c| !c.is_empty())
                .collect(),
            id,
            yes,
            image,
        })
    }
}

/// The answered questions of a TSV's records, with the issues (`malformed`: the file's rows that
/// did not parse, named).
fn answered(
    records: &[Record],
    answers: Answers,
    malformed: &[String],
) -> (Vec<(YesNo, String)>, Issues) {
    let mut issues = Issues::default();
    for m in malformed {
        issues.bad_record(m.clone());
    }
    let questions = questions_of(records, YesNo::from_record, &mut issues);
    let pairs = pair_answers(&questions, |q| &q.id, answers, &mut issues)
        .into_iter()
        .map(|(q, a)| (q.clone(), a.text))
        .collect();
    (pairs, issues)
}

/// POPE from POPE.tsv: per category, LLaVA's reading (`pope::reads_yes`) scored as
/// `eval_pope.py` scores it (the same JSON as the LLaVA layout's score), plus VLMEvalKit's
/// `vlmevalkit_f1` and `vlmevalkit_accuracy` over every question (`POPE_rating`'s Overall: an
/// answer that is neither yes nor no counts as no for F1 and as wrong for accuracy).
pub fn pope(records: &[Record], answers: Answers, malformed: &[String]) -> (Value, Vec<Metric>) {
    let (pairs, issues) = answered(records, answers, malformed);
    let mut categories = BTreeMap::new();
    let mut metrics = Vec::new();
    let mut names: Vec<&str> = pairs
        .iter()
        .flat_map(|(q, _)| q.categories.iter().map(String::as_str))
        .collect();
    names.sort_unstable();
    names.dedup();
    for c in names {
        let of: Vec<&(YesNo, String)> = pairs
            .iter()
            .filter(|(q, _)| q.categories.iter().any(|k| k == c))
            .collect();
        let labelled: Vec<(&str, &str)> = of
            .iter()
            .map(|(q, a)| (a.as_str(), if q.yes { "yes" } else { "no" }))
            .collect();
        let texts: Vec<&str> = of.iter().map(|(_, a)| a.as_str()).collect();
        let score = pope::score_pairs(&labelled, &texts, of.len());
        metrics.extend(score.metrics(c, of.iter().map(|(q, _)| q.id.clone())));
        categories.insert(c.to_string(), score);
    }
    // VLMEvalKit: each question once per category it is listed in (`POPE_rating` explodes the
    // category lists before its Overall), read by its yes/no rule.
    let kit: Vec<Unit> = pairs
        .iter()
        .flat_map(|(q, a)| q.categories.iter().map(move |c| (q, a, c)))
        .map(|(q, a, c)| {
            let said = vlmevalkit::yes_or_no(a);
            let outcome = match (said == Some(true), q.yes) {
                (true, true) => "tp",
                (true, false) => "fp",
                (false, true) => "fn",
                (false, false) => "tn",
            };
            Unit {
                id: format!("{}/{c}", q.id),
                group: outcome.into(),
                value: f64::from(u8::from(said == Some(q.yes))),
            }
        })
        .collect();
    let kit_f1 = Metric::new("vlmevalkit_f1", Aggregate::F1, 100.0, kit.clone());
    let kit_accuracy = Metric::new("vlmevalkit_accuracy", Aggregate::Mean, 100.0, kit);
    let mut value = json!(categories);
    value["vlmevalkit_f1"] = json!(kit_f1.value());
    value["vlmevalkit_accuracy"] = json!(kit_accuracy.value());
    metrics.extend([kit_f1, kit_accuracy]);
    value["pairing"] = json!("by question (VLMEvalKit's TSV)");
    value["issues"] = json!(issues);
    (value, metrics)
}

/// MME from MME.tsv: per subtask, MME's reading of each answer (`mme::parse_prediction`),
/// accuracy over questions plus accuracy+ over images (both questions right), ×100 each, summed
/// over perception's ten and cognition's four subtasks (the same JSON as the LLaVA layout's
/// score); plus VLMEvalKit's `vlmevalkit_perception` and `vlmevalkit_cognition` (`MME_rating`
/// with `YOrN_Extraction`).
pub fn mme(records: &[Record], answers: Answers, malformed: &[String]) -> (Value, Vec<Metric>) {
    let (pairs, issues) = answered(records, answers, malformed);
    // (subtask, image) → [(right by MME's reading, right by VLMEvalKit's)]
    let mut groups: BTreeMap<(String, String), Vec<(bool, bool)>> = BTreeMap::new();
    for (q, a) in &pairs {
        let Some(subtask) = q.categories.first() else {
            continue;
        };
        let truth = if q.yes { "yes" } else { "no" };
        let ours = mme::parse_prediction(a) == truth;
        let kit = vlmevalkit::yes_or_no(a) == Some(q.yes);
        groups
            .entry((subtask.clone(), q.image.clone()))
            .or_default()
            .push((ours, kit));
    }
    let subtask_score = |subtask: &str, pick: fn(&(bool, bool)) -> bool| -> f64 {
        let images: Vec<&Vec<(bool, bool)>> = groups
            .iter()
            .filter(|((s, _), _)| s == subtask)
            .map(|(_, v)| v)
            .collect();
        let questions: Vec<bool> = images.iter().flat_map(|v| v.iter().map(pick)).collect();
        if questions.is_empty() {
            return 0.0;
        }
        let acc = questions.iter().filter(|r| **r).count() as f64 / questions.len() as f64;
        // MME_rating's plus: the product of an image's first two scores.
        let plus = images
            .iter()
            .filter(|v| v.len() >= 2 && pick(&v[0]) && pick(&v[1]))
            .count() as f64
            / images.len() as f64;
        100.0 * acc + 100.0 * plus
    };
    let mut subtasks = BTreeMap::new();
    let (mut perception, mut cognition) = (0.0, 0.0);
    let (mut kit_perception, mut kit_cognition) = (0.0, 0.0);
    let mut missing = Vec::new();
    for (list, sum, kit_sum) in [
        (&mme::PERCEPTION[..], &mut perception, &mut kit_perception),
        (&mme::COGNITION[..], &mut cognition, &mut kit_cognition),
    ] {
        for s in list {
            if !groups.keys().any(|(k, _)| k == s) {
                missing.push(s.to_string());
            }
            let v = subtask_score(s, |r| r.0);
            subtasks.insert(s.to_string(), v);
            *sum += v;
            *kit_sum += subtask_score(s, |r| r.1);
        }
    }
    let value = json!({
        "perception": perception,
        "cognition": cognition,
        "subtasks": subtasks,
        "missing_subtasks": missing,
        "vlmevalkit_perception": kit_perception,
        "vlmevalkit_cognition": kit_cognition,
        "issues": issues,
    });
    (value, Vec::new())
}

/// GQA from its TSV: each answered question right when LLaVA's conversion of the answer
/// (`gqa::normalise`: trailing periods dropped, lowercased) equals the row's `answer` (a Python
/// list literal's first item, where VLMEvalKit stores a list). Over answered questions.
pub fn gqa(records: &[Record], answers: Answers, malformed: &[String]) -> (Value, Vec<Metric>) {
    let mut issues = Issues::default();
    for m in malformed {
        issues.bad_record(m.clone());
    }
    let parse = |r: &Record| -> Result<(String, String), String> {
        let answer = text_field(r, &["answer"])?;
        let answer = super::pystr::string_list(&answer)
            .and_then(|l| l.into_iter().next())
            .unwrap_or(answer);
        Ok((text_field(r, &["index"])?, answer))
    };
    let questions = questions_of(records, parse, &mut issues);
    let pairs = pair_answers(&questions, |q| &q.0, answers, &mut issues);
    let units: Vec<Unit> = pairs
        .iter()
        .map(|((id, gold), a)| Unit::of(id, super::gqa::normalise(&a.text) == *gold))
        .collect();
    let metric = Metric::new("accuracy", Aggregate::Mean, 1.0, units);
    let value = json!({"accuracy": metric.value(), "count": metric.units.len(), "issues": issues});
    (value, vec![metric])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(v: Value) -> Vec<Record> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_object().unwrap().clone())
            .collect()
    }

    #[test]
    fn pope_categories_from_comma_lists() {
        let records = rows(json!([
            {"index": 0, "answer": "Yes", "category": "adversarial,popular"},
            {"index": 1, "answer": "No", "category": "popular"},
        ]));
        let answers = Answers::parse(
            "{\"question_id\": 0, \"text\": \"Yes\"}\n{\"question_id\": 1, \"text\": \"Yes\"}\n",
        );
        let (v, metrics) = pope(&records, answers, &[]);
        assert_eq!(v["adversarial"]["accuracy"], 1.0);
        assert_eq!(v["popular"]["accuracy"], 0.5);
        assert_eq!(v["popular"]["answers"], 2);
        // Question 0 counts once per category: TP, TP, FP → F1 = 4/5.
        let f1 = metrics.iter().find(|m| m.name == "vlmevalkit_f1").unwrap();
        assert!((f1.value() - 80.0).abs() < 1e-9);
    }

    #[test]
    fn gqa_exact_match_after_llavas_conversion() {
        let records = rows(json!([
            {"index": "201", "answer": "yes"},
            {"index": "202", "answer": "['table']"},
            {"index": "203", "answer": "left"},
        ]));
        let answers = Answers::parse(
            "{\"question_id\": \"201\", \"text\": \"Yes.\"}\n\
             {\"question_id\": \"202\", \"text\": \"table \"}\n\
             {\"question_id\": \"203\", \"text\": \"left\"}\n",
        );
        let (v, m) = gqa(&records, answers, &[]);
        assert!((v["accuracy"].as_f64().unwrap() - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(m[0].units.len(), 3);
    }

    #[test]
    fn mme_pairs_by_image() {
        let records = rows(json!([
            {"index": 0, "answer": "Yes", "category": "color", "image_path": "a.jpg"},
            {"index": 1, "answer": "No", "category": "color", "image_path": "a.jpg"},
            {"index": 2, "answer": "Yes", "category": "color", "image_path": "b.jpg"},
            {"index": 3, "answer": "No", "category": "color", "image_path": "b.jpg"},
        ]));
        let answers = Answers::parse(
            "{\"question_id\": 0, \"text\": \"Yes\"}\n{\"question_id\": 1, \"text\": \"No\"}\n\
             {\"question_id\": 2, \"text\": \"yes, it is\"}\n{\"question_id\": 3, \"text\": \"Yes\"}\n",
        );
        let (v, _) = mme(&records, answers, &[]);
        // 3 of 4 right (75) + 1 of 2 images (50).
        assert_eq!(v["subtasks"]["color"], 125.0);
        assert_eq!(v["vlmevalkit_perception"], 125.0);
    }
}
