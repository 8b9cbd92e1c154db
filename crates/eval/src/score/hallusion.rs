//! HallusionBench (yes/no questions about figures, some edited, some without the figure), scored
//! by lmms-eval 0.7.3's rule-based aggregation (`tasks/hallusion_bench/evaluate_hb.py`,
//! `hb_aggregation_result_*_intern`): an answer containing "yes" (any case) means yes, anything
//! else no; `aAcc` is over questions, `qAcc` over question groups (one question asked of each
//! figure variant: right when all are right), `fAcc` over figure groups (every question of one
//! figure right). Percentages.
//!
//! lmms-eval's default path asks GPT-4 whether each answer agrees with the reference answer's
//! explanation (`llava grade --bench hallusionbench`); with those grades, [`add_judged`] adds
//! the judged `judged_aAcc`, `judged_fAcc` and `judged_qAcc` as lmms-eval's `evaluate_hb.py`
//! computes them, beside the rule-based figures, which are always reported.

use super::{Answers, BenchScore, Issues, pair_answers, questions_of, text_field, vlmevalkit};
use crate::records::Record;
use crate::stats::{Aggregate, Metric, Unit};

/// One question, as scoring needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct Question {
    /// The record's id: `index` or `question_key`, else the grouping key with the figure.
    pub id: String,
    /// `VD` (visual dependent) or `VS` (visual supplement).
    pub category: String,
    /// `subcategory` (lmms-eval) or `l2-category` (VLMEvalKit).
    pub subcategory: String,
    /// `set_id`.
    pub set_id: String,
    /// `figure_id` (0: the original figure, or none for VS).
    pub figure_id: String,
    /// `question_id`.
    pub question_id: String,
    /// True when the reference answer is yes (`gt_answer == "1"`, or `answer == "Yes"`).
    pub yes: bool,
}

impl Question {
    /// From a record: lmms-eval's rows (`category`, `subcategory`, `set_id`, `figure_id`,
    /// `question_id`, `gt_answer`) or VLMEvalKit's (`l2-category`, `answer` Yes/No, and the ids in
    /// fields 4-6 of the `_`-separated `index`, as its scorer reads them).
    pub fn from_record(r: &Record) -> Result<Self, String> {
        let index = text_field(r, &["index"]).ok();
        let from_index = |k: usize, name: &str| -> Result<String, String> {
            index
                .as_deref()
                .and_then(|i| i.split('_').nth(k))
                .map(String::from)
                .ok_or_else(|| format!("no `{name}`, and no `index` holding it"))
        };
        let field = |name: &str, k: usize| text_field(r, &[name]).or_else(|_| from_index(k, name));
        let yes = match text_field(r, &["gt_answer"]) {
            Ok(g) => match g.as_str() {
                "1" => true,
                "0" => false,
                other => return Err(format!("`gt_answer` is `{other}`, not 0 or 1")),
            },
            Err(_) => match text_field(r, &["answer"])?.as_str() {
                "Yes" => true,
                "No" => false,
                other => return Err(format!("`answer` is `{other}`, not Yes or No")),
            },
        };
        let category = text_field(r, &["category"])?;
        let subcategory = text_field(r, &["subcategory", "l2-category"])?;
        let set_id = field("set_id", 3)?;
        let figure_id = field("figure_id", 4)?;
        let question_id = field("question_id", 5)?;
        let id = index.unwrap_or_else(|| {
            [&category, &subcategory, &set_id, &figure_id, &question_id]
                .map(String::as_str)
                .join("_")
        });
        Ok(Question {
            id,
            category,
            subcategory,
            set_id,
            figure_id,
            question_id,
            yes,
        })
    }

    /// The key of its question group (lmms-eval's qAcc key).
    pub fn question_key(&self) -> String {
        [
            &self.category,
            &self.subcategory,
            &self.set_id,
            &self.question_id,
        ]
        .map(String::as_str)
        .join("_")
    }

    /// The key of its figure group (lmms-eval's fAcc key).
    pub fn figure_key(&self) -> String {
        [
            &self.category,
            &self.subcategory,
            &self.set_id,
            &self.figure_id,
        ]
        .map(String::as_str)
        .join("_")
    }
}

/// Each group's unit: right when every question in it is right; in first-seen order.
fn grouped(keyed: &[(String, bool)]) -> Vec<Unit> {
    let mut groups: Vec<(String, bool)> = Vec::new();
    let mut at = std::collections::HashMap::new();
    for (key, right) in keyed {
        match at.get(key) {
            Some(&i) => {
                let g: &mut (String, bool) = &mut groups[i];
                g.1 &= *right;
            }
            None => {
                at.insert(key.clone(), groups.len());
                groups.push((key.clone(), *right));
            }
        }
    }
    groups
        .into_iter()
        .map(|(id, right)| Unit {
            id,
            group: String::new(),
            value: f64::from(u8::from(right)),
        })
        .collect()
}

/// Scores `answers` against the benchmark's `records`.
pub fn score(records: &[Record], answers: Answers) -> BenchScore {
    let mut issues = Issues::default();
    let questions = questions_of(records, Question::from_record, &mut issues);
    let pairs = pair_answers(&questions, |q| &q.id, answers, &mut issues);
    let judged: Vec<(&Question, bool)> = pairs
        .iter()
        .map(|(q, a)| (*q, a.text.to_lowercase().contains("yes") == q.yes))
        .collect();
    let per_question: Vec<Unit> = judged
        .iter()
        .map(|(q, right)| Unit {
            id: q.id.clone(),
            group: String::new(),
            value: f64::from(u8::from(*right)),
        })
        .collect();
    let by = |key: fn(&Question) -> String| -> Vec<Unit> {
        grouped(&judged.iter().map(|(q, r)| (key(q), *r)).collect::<Vec<_>>())
    };
    // VLMEvalKit: yes/no as whole words (else wrong), groups by L2 category, set and figure or
    // question (`Hallusion_rating`).
    let kit: Vec<(&Question, bool)> = pairs
        .iter()
        .map(|(q, a)| (*q, vlmevalkit::yes_or_no(&a.text) == Some(q.yes)))
        .collect();
    let kit_units = |key: fn(&Question) -> String| -> Vec<Unit> {
        grouped(&kit.iter().map(|(q, r)| (key(q), *r)).collect::<Vec<_>>())
    };
    BenchScore {
        metrics: vec![
            Metric::new("aAcc", Aggregate::Mean, 100.0, per_question),
            Metric::new("fAcc", Aggregate::Mean, 100.0, by(Question::figure_key)),
            Metric::new("qAcc", Aggregate::Mean, 100.0, by(Question::question_key)),
            Metric::new(
                "vlmevalkit_aAcc",
                Aggregate::Mean,
                100.0,
                kit.iter().map(|(q, r)| Unit::of(&q.id, *r)).collect(),
            ),
            Metric::new(
                "vlmevalkit_fAcc",
                Aggregate::Mean,
                100.0,
                kit_units(|q| format!("{}_{}_{}", q.subcategory, q.set_id, q.figure_id)),
            ),
            Metric::new(
                "vlmevalkit_qAcc",
                Aggregate::Mean,
                100.0,
                kit_units(|q| format!("{}_{}_{}", q.subcategory, q.set_id, q.question_id)),
            ),
        ],
        issues,
        ..BenchScore::default()
    }
}

/// Adds the judged metrics from a judge's grades (`{"question_id", "correctness": 0|1|2}` lines):
/// lmms-eval's `assign_correctness` (1 is right; for a VS question without its figure, "unclear"
/// is right too), then `get_eval_all` (aAcc over questions), `get_eval_fig` (fAcc over figure
/// groups, VS questions without a figure left out) and `get_eval_pair_all` (qAcc over question
/// groups). Answered questions without a grade are counted in `counts.ungraded` and left out.
pub fn add_judged(score: &mut BenchScore, records: &[Record], grades: &[serde_json::Value]) {
    let mut issues = Issues::default();
    let questions = questions_of(records, Question::from_record, &mut issues);
    let codes: std::collections::HashMap<String, u64> = grades
        .iter()
        .filter_map(|g| {
            let id = super::id_key(g.get("question_id")?)?;
            let code = g.get("correctness")?.as_u64().filter(|c| *c <= 2)?;
            Some((id, code))
        })
        .collect();
    let answered: std::collections::HashSet<&str> = score
        .metrics
        .first()
        .map(|m| m.units.iter().map(|u| u.id.as_str()).collect())
        .unwrap_or_default();
    let mut ungraded = 0;
    let mut judged: Vec<(&Question, bool)> = Vec::new();
    for q in questions
        .iter()
        .filter(|q| answered.contains(q.id.as_str()))
    {
        let Some(&code) = codes.get(&q.id) else {
            ungraded += 1;
            continue;
        };
        let no_figure = q.category == "VS" && q.figure_id == "0";
        judged.push((q, code == 1 || (no_figure && code == 2)));
    }
    let per_question = grouped(
        &judged
            .iter()
            .map(|(q, r)| (q.id.clone(), *r))
            .collect::<Vec<_>>(),
    );
    let figures = grouped(
        &judged
            .iter()
            .filter(|(q, _)| !(q.category == "VS" && q.figure_id == "0"))
            .map(|(q, r)| (q.figure_key(), *r))
            .collect::<Vec<_>>(),
    );
    let pairs = grouped(
        &judged
            .iter()
            .map(|(q, r)| (q.question_key(), *r))
            .collect::<Vec<_>>(),
    );
    let judged_metrics = [
        Metric::new("judged_aAcc", Aggregate::Mean, 100.0, per_question),
        Metric::new("judged_fAcc", Aggregate::Mean, 100.0, figures),
        Metric::new("judged_qAcc", Aggregate::Mean, 100.0, pairs),
    ];
    score.metrics.extend(judged_metrics);
    score.counts.insert("ungraded".into(), ungraded);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(i: usize, set: u32, figure: u32, question: u32, gt: &str) -> Record {
        serde_json::from_value(serde_json::json!({
            "index": i, "category": "VD", "subcategory": "chart", "set_id": set,
            "figure_id": figure, "question_id": question, "gt_answer": gt,
        }))
        .unwrap()
    }

    #[test]
    fn question_and_figure_groups() {
        // One set: question 0 asked of figures 0 and 1; question 1 of figure 0.
        let records = vec![
            record(0, 0, 0, 0, "1"),
            record(1, 0, 1, 0, "0"),
            record(2, 0, 0, 1, "1"),
        ];
        let answers = Answers::parse(
            "{\"question_id\": 0, \"text\": \"Yes, it is.\"}\n\
             {\"question_id\": 1, \"text\": \"Yes\"}\n\
             {\"question_id\": 2, \"text\": \"YES\"}\n",
        );
        let s = score(&records, answers);
        assert!((s.metric("aAcc").unwrap().value() - 200.0 / 3.0).abs() < 1e-9);
        // Figure groups: (0,0) both right, (0,1) wrong → 50.
        assert_eq!(s.metric("fAcc").unwrap().value(), 50.0);
        // Question groups: q0 has a wrong answer, q1 right → 50.
        assert_eq!(s.metric("qAcc").unwrap().value(), 50.0);
    }

    #[test]
    fn vlmevalkit_rows_carry_their_ids_in_the_index() {
        let r: Record = serde_json::from_value(serde_json::json!({
            "index": "VD_figure_0_3_1_2", "category": "VD", "l2-category": "figure",
            "answer": "No",
        }))
        .unwrap();
        let q = Question::from_record(&r).unwrap();
        assert_eq!(
            (
                q.set_id.as_str(),
                q.figure_id.as_str(),
                q.question_id.as_str()
            ),
            ("3", "1", "2")
        );
        assert!(!q.yes);
    }
}
