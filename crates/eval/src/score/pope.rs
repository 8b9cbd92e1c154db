//! POPE: LLaVA's `eval_pope.py`. Each answer keeps the text before its first `.`, loses its commas
//! and is split on single spaces; `No`, `not` or `no` among the words means "no", anything else
//! "yes". By default answers are matched with labels **by position** within each category, as the
//! script does: the category's answers in answer-file order against the lines of
//! `coco_pope_<category>.json`. That holds only while the label file lists the questions in the
//! question file's order (true of the label files LLaVA used, POPE at commit `e3e3926`; not of
//! POPE's later `coco_pope_random.json`), so every positional pair is checked: an answer whose
//! image or question is not its label's is reported in `issues.label_mismatches`, and
//! [`Pairing::ImageQuestion`] pairs each answer with the label of the same image and question.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::Path;
use std::str::FromStr;

use serde::Serialize;
use serde_json::Value;

use super::{Answers, Issues, id_key, read_jsonl};
use crate::Error;
use crate::prompt::SHORT_ANSWER;

/// How many mismatched answers each category keeps as examples.
pub const MISMATCH_EXAMPLES: usize = 5;

/// How answers are paired with labels.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Pairing {
    /// The category's answers in file order against the label file's lines, as `eval_pope.py`
    /// does (the default: it reproduces the official numbers with the label files LLaVA used).
    #[default]
    Position,
    /// Each answer with the label of the same image and question text (see [`question_key`]),
    /// whatever the order of either file; for label files that do not follow the question file.
    ImageQuestion,
}

impl Pairing {
    /// The command-line name: `position` or `image-question`.
    pub fn name(self) -> &'static str {
        match self {
            Pairing::Position => "position",
            Pairing::ImageQuestion => "image-question",
        }
    }
}

impl FromStr for Pairing {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        match name {
            "position" => Ok(Pairing::Position),
            "image-question" => Ok(Pairing::ImageQuestion),
            other => Err(format!(
                "unknown POPE pairing `{other}` (position or image-question)"
            )),
        }
    }
}

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
    /// Each scored pair's outcome for "yes" (`tp`, `fp`, `tn`, `fn`), in pair order.
    #[serde(skip)]
    pub outcomes: Vec<&'static str>,
}

impl CategoryScore {
    /// Its accuracy and F1 as metrics `<category>/accuracy` and `<category>/f1`, one unit per
    /// scored pair (named by `ids`, in pair order) with its outcome as the group.
    pub fn metrics(
        &self,
        category: &str,
        ids: impl IntoIterator<Item = String>,
    ) -> [crate::stats::Metric; 2] {
        use crate::stats::{Aggregate, Metric, Unit};
        let units: Vec<Unit> = ids
            .into_iter()
            .zip(&self.outcomes)
            .map(|(id, o)| Unit {
                id,
                group: o.to_string(),
                value: f64::from(u8::from(matches!(*o, "tp" | "tn"))),
            })
            .collect();
        [
            Metric::new(
                &format!("{category}/accuracy"),
                Aggregate::Mean,
                1.0,
                units.clone(),
            ),
            Metric::new(&format!("{category}/f1"), Aggregate::F1, 1.0, units),
        ]
    }
}

/// POPE's score: one object per category (`adversarial`, `popular`, `random`) at the top level,
/// next to `pairing` and `issues`.
#[derive(Debug, Clone, Serialize)]
pub struct Score {
    /// Per category (`adversarial`, `popular`, `random`).
    #[serde(flatten)]
    pub categories: BTreeMap<String, CategoryScore>,
    /// How answers were paired with labels.
    pub pairing: Pairing,
    /// Problems: unknown ids; `missing_answers` counts labels left without an answer;
    /// `label_mismatches` the answers whose question is not their label's.
    pub issues: Issues,
}

/// An answer whose question is not the one of the label it was paired with (by position), or
/// for which no label has its image and question (by image and question).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LabelMismatch {
    /// The answer's question id.
    pub question_id: String,
    /// Its place among the category's answers, from 0 (by position: the label line's too).
    pub position: usize,
    /// The question's image (from the question file).
    pub image: Option<String>,
    /// The question's text as compared (see [`question_key`]).
    pub question: Option<String>,
    /// The image of the label paired by position (`None` by image and question).
    pub label_image: Option<String>,
    /// The question of the label paired by position, as compared (`None` by image and question).
    pub label_question: Option<String>,
}

/// One category's mismatched answers: how many, and the first [`MISMATCH_EXAMPLES`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct LabelMismatches {
    /// Answers paired with a label of another image or question, or (by image and question)
    /// with no label.
    pub count: usize,
    /// The first few of them.
    pub examples: Vec<LabelMismatch>,
}

impl LabelMismatches {
    fn push(&mut self, m: LabelMismatch) {
        self.count += 1;
        if self.examples.len() < MISMATCH_EXAMPLES {
            self.examples.push(m);
        }
    }
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

/// A question's text as answers and labels are compared: trimmed, without LLaVA's short-answer
/// suffix (`llava_pope_test.jsonl` appends `\nAnswer the question using a single word or
/// phrase.`; POPE's label files do not), and with POPE's misspelling `imange` read as `image`
/// (LLaVA's question file and POPE's label files up to commit `e3e3926` have it in some
/// questions; POPE's "Fix spelling errors" commit removed it from the label files).
pub fn question_key(text: &str) -> String {
    let t = text.trim();
    let t = t.strip_suffix(SHORT_ANSWER).unwrap_or(t).trim_end();
    t.replace("imange", "image")
}

/// Scores one category: `answers` in file order against `labels` (`"yes"`/`"no"`; anything else
/// counts as yes, as the script does), zipped by position.
pub fn score_category(answers: &[&str], labels: &[&str]) -> CategoryScore {
    let pairs: Vec<(&str, &str)> = answers
        .iter()
        .copied()
        .zip(labels.iter().copied())
        .collect();
    score_pairs(&pairs, answers, labels.len())
}

/// Scores paired `(answer, label)` texts; `answers` are all the category's answers (for the yes
/// ratio) and `labels` the number of lines of its label file.
pub fn score_pairs(pairs: &[(&str, &str)], answers: &[&str], labels: usize) -> CategoryScore {
    let (mut tp, mut tn, mut fp, mut fn_) = (0usize, 0usize, 0usize, 0usize);
    let mut outcomes = Vec::with_capacity(pairs.len());
    for &(answer, label) in pairs {
        let outcome = match (reads_yes(answer), label != "no") {
            (true, true) => {
                tp += 1;
                "tp"
            }
            (true, false) => {
                fp += 1;
                "fp"
            }
            (false, false) => {
                tn += 1;
                "tn"
            }
            (false, true) => {
                fn_ += 1;
                "fn"
            }
        };
        outcomes.push(outcome);
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
        yes_ratio: ratio(
            answers.iter().filter(|a| reads_yes(a)).count(),
            answers.len(),
        ),
        answers: answers.len(),
        labels,
        outcomes,
    }
}

/// A question of `llava_pope_test.jsonl`.
struct Question {
    category: String,
    image: Option<String>,
    text: Option<String>,
}

/// An answer with the question it answers.
struct Answered<'a> {
    id: &'a str,
    text: &'a str,
    image: Option<&'a str>,
    question: Option<String>,
}

/// A line of a label file.
struct Label<'a> {
    label: &'a str,
    image: Option<&'a str>,
    question: Option<String>,
}

/// Pairs by position and checks each pair's image and question where both sides name them.
fn pair_by_position<'a>(
    answers: &[Answered<'a>],
    labels: &[Label<'a>],
    mismatches: &mut LabelMismatches,
) -> Vec<(&'a str, &'a str)> {
    answers
        .iter()
        .zip(labels)
        .enumerate()
        .map(|(i, (a, l))| {
            let differs =
                |x: Option<&str>, y: Option<&str>| matches!((x, y), (Some(x), Some(y)) if x != y);
            if differs(a.image, l.image) || differs(a.question.as_deref(), l.question.as_deref()) {
                mismatches.push(LabelMismatch {
                    question_id: a.id.to_string(),
                    position: i,
                    image: a.image.map(str::to_string),
                    question: a.question.clone(),
                    label_image: l.image.map(str::to_string),
                    label_question: l.question.clone(),
                });
            }
            (a.text, l.label)
        })
        .collect()
}

/// Pairs each answer with the first unused label of the same image and question.
fn pair_by_image_question<'a>(
    answers: &[Answered<'a>],
    labels: &[Label<'a>],
    mismatches: &mut LabelMismatches,
) -> Vec<(&'a str, &'a str)> {
    let mut by_key: HashMap<(&str, &str), VecDeque<&str>> = HashMap::new();
    for l in labels {
        if let (Some(image), Some(question)) = (l.image, l.question.as_deref()) {
            by_key
                .entry((image, question))
                .or_default()
                .push_back(l.label);
        }
    }
    let mut pairs = Vec::new();
    for (i, a) in answers.iter().enumerate() {
        let label = match (a.image, a.question.as_deref()) {
            (Some(image), Some(question)) => by_key
                .get_mut(&(image, question))
                .and_then(VecDeque::pop_front),
            _ => None,
        };
        match label {
            Some(label) => pairs.push((a.text, label)),
            None => mismatches.push(LabelMismatch {
                question_id: a.id.to_string(),
                position: i,
                image: a.image.map(str::to_string),
                question: a.question.clone(),
                label_image: None,
                label_question: None,
            }),
        }
    }
    pairs
}

/// Scores `answers` with the question file (`question_id`, `category`, `image`, `text`) and a
/// directory of `coco_pope_<category>.json` label files (JSON lines with `label`, `image`,
/// `text`), pairing them as `pairing` says. An answer's question text is its question's `text`
/// (or, when the question file has none, the answer's `prompt`); positional pairs are checked
/// only where both sides carry an image or a text.
pub fn score(
    answers: Answers,
    questions: &[Value],
    labels_dir: &Path,
    pairing: Pairing,
) -> Result<Score, Error> {
    let mut issues = answers.issues.clone();
    let questions: HashMap<String, Question> = questions
        .iter()
        .filter_map(|q| {
            let text = |key: &str| q.get(key).and_then(Value::as_str).map(str::to_string);
            Some((
                id_key(q.get("question_id")?)?,
                Question {
                    category: text("category")?,
                    image: text("image"),
                    text: text("text"),
                },
            ))
        })
        .collect();
    let mut per_category: BTreeMap<&str, Vec<Answered>> = BTreeMap::new();
    for a in &answers.lines {
        match questions.get(&a.question_id) {
            Some(q) => {
                let text = q
                    .text
                    .as_deref()
                    .or((!a.prompt.is_empty()).then_some(a.prompt.as_str()));
                per_category
                    .entry(q.category.as_str())
                    .or_default()
                    .push(Answered {
                        id: &a.question_id,
                        text: &a.text,
                        image: q.image.as_deref(),
                        question: text.map(question_key),
                    });
            }
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
        let labels: Vec<Label> = lines
            .iter()
            .map(|l| Label {
                label: l.get("label").and_then(Value::as_str).unwrap_or("yes"),
                image: l.get("image").and_then(Value::as_str),
                question: l.get("text").and_then(Value::as_str).map(question_key),
            })
            .collect();
        let answered = per_category.remove(cat.as_str()).unwrap_or_default();
        let mut mismatches = LabelMismatches::default();
        let pairs = match pairing {
            Pairing::Position => pair_by_position(&answered, &labels, &mut mismatches),
            Pairing::ImageQuestion => pair_by_image_question(&answered, &labels, &mut mismatches),
        };
        issues.missing_answers += labels.len() - pairs.len();
        if mismatches.count > 0 {
            issues.label_mismatches.insert(cat.clone(), mismatches);
        }
        let texts: Vec<&str> = answered.iter().map(|a| a.text).collect();
        categories.insert(cat, score_pairs(&pairs, &texts, labels.len()));
    }
    Ok(Score {
        categories,
        pairing,
        issues,
    })
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

    #[test]
    fn questions_compare_without_the_suffix_and_the_misspelling() {
        let llava = "Is there an umbrella in the imange?\nAnswer the question using a single word or phrase.";
        assert_eq!(question_key(llava), "Is there an umbrella in the image?");
        assert_eq!(
            question_key(
                "Is there a dog in the image? Answer the question using a single word or phrase."
            ),
            "Is there a dog in the image?"
        );
        assert_eq!(
            question_key(" Is there a dog in the image? "),
            "Is there a dog in the image?"
        );
        assert_ne!(
            question_key("Is there a cat in the image?"),
            question_key("Is there a dog in the image?")
        );
        assert_eq!(
            "image-question".parse::<Pairing>(),
            Ok(Pairing::ImageQuestion)
        );
        assert_eq!("position".parse::<Pairing>(), Ok(Pairing::Position));
        assert!("id".parse::<Pairing>().is_err());
    }

    /// Six `random` questions in LLaVA's format (ids offset as LLaVA's file offsets them, the
    /// suffix appended), the answers (all right), and the label lines in the given order.
    struct Case {
        dir: std::path::PathBuf,
        questions: Vec<Value>,
        answers: String,
    }

    const QUESTIONS: [(&str, &str, &str, &str); 6] = [
        (
            "a.jpg",
            "Is there a dog in the image?",
            "yes",
            "Yes, there is a dog.",
        ),
        ("a.jpg", "Is there a cat in the image?", "no", "No"),
        ("b.jpg", "Is there a car in the image?", "yes", "Yes"),
        (
            "b.jpg",
            "Is there an umbrella in the imange?",
            "no",
            "There is no umbrella.",
        ),
        ("c.jpg", "Is there a dog in the image?", "no", "No"),
        ("c.jpg", "Is there a person in the image?", "yes", "Yes"),
    ];

    impl Case {
        fn new(name: &str, label_order: &[usize]) -> Self {
            let dir =
                std::env::temp_dir().join(format!("llava-pope-{name}-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let questions = QUESTIONS
                .iter()
                .enumerate()
                .map(|(i, (image, text, _, _))| {
                    serde_json::json!({
                        "question_id": 10_000_001 + i,
                        "image": image,
                        "text": format!("{text}\n{SHORT_ANSWER}"),
                        "category": "random",
                    })
                })
                .collect();
            let answers = QUESTIONS
                .iter()
                .enumerate()
                .map(|(i, (_, text, _, answer))| {
                    serde_json::json!({
                        "question_id": 10_000_001 + i,
                        "prompt": format!("{text}\n{SHORT_ANSWER}"),
                        "text": answer,
                    })
                    .to_string()
                        + "\n"
                })
                .collect();
            // POPE's label files: their own ids from 1, no suffix, the spelling fixed.
            let labels: String = label_order
                .iter()
                .enumerate()
                .map(|(n, &i)| {
                    let (image, text, label, _) = QUESTIONS[i];
                    serde_json::json!({
                        "question_id": n + 1,
                        "image": image,
                        "text": text.replace("imange", "image"),
                        "label": label,
                    })
                    .to_string()
                        + "\n"
                })
                .collect();
            std::fs::write(dir.join("coco_pope_random.json"), labels).unwrap();
            Case {
                dir,
                questions,
                answers,
            }
        }

        fn score(&self, pairing: Pairing) -> Score {
            score(
                Answers::parse(&self.answers),
                &self.questions,
                &self.dir,
                pairing,
            )
            .unwrap()
        }
    }

    impl Drop for Case {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    #[test]
    fn shuffled_labels_are_reported_by_position_and_paired_by_image_and_question() {
        let case = Case::new("shuffled", &[2, 0, 1, 3, 5, 4]);
        let by_position = case.score(Pairing::Position);
        let m = &by_position.issues.label_mismatches["random"];
        // Positions 0, 1, 2, 4 and 5 hold another question's label; position 3 lines up.
        assert_eq!(m.count, 5);
        assert_eq!(m.examples.len(), MISMATCH_EXAMPLES);
        assert_eq!(m.examples[0].question_id, "10000001");
        assert_eq!(m.examples[0].image.as_deref(), Some("a.jpg"));
        assert_eq!(m.examples[0].label_image.as_deref(), Some("b.jpg"));
        assert_eq!(
            m.examples[0].label_question.as_deref(),
            Some("Is there a car in the image?")
        );
        // Same image, other question: a mismatch too.
        assert_eq!(m.examples[3].position, 4);
        assert_eq!(m.examples[3].image, m.examples[3].label_image);
        assert!(by_position.categories["random"].accuracy < 1.0);

        let by_image = case.score(Pairing::ImageQuestion);
        assert!(by_image.issues.is_clean(), "{:?}", by_image.issues);
        let s = &by_image.categories["random"];
        assert_eq!(
            (s.accuracy, s.precision, s.recall, s.f1),
            (1.0, 1.0, 1.0, 1.0)
        );
        assert_eq!((s.answers, s.labels, s.yes_ratio), (6, 6, 0.5));
        assert_eq!(by_image.pairing, Pairing::ImageQuestion);
    }

    #[test]
    fn aligned_labels_score_the_same_both_ways() {
        let case = Case::new("aligned", &[0, 1, 2, 3, 4, 5]);
        let a = case.score(Pairing::Position);
        let b = case.score(Pairing::ImageQuestion);
        assert!(a.issues.is_clean(), "{:?}", a.issues);
        assert!(b.issues.is_clean(), "{:?}", b.issues);
        assert_eq!(
            serde_json::to_value(&a.categories).unwrap(),
            serde_json::to_value(&b.categories).unwrap()
        );
        assert_eq!(a.categories["random"].accuracy, 1.0);
    }

    #[test]
    fn unmatched_answers_and_labels_are_counted_by_image_and_question() {
        // The label file lacks question 4 (c.jpg, dog) and has one the answers lack.
        let case = Case::new("partial", &[0, 1, 2, 3, 5]);
        let mut labels = std::fs::read_to_string(case.dir.join("coco_pope_random.json")).unwrap();
        labels.push_str("{\"image\": \"d.jpg\", \"text\": \"Is there a cow in the image?\", \"label\": \"yes\"}\n");
        std::fs::write(case.dir.join("coco_pope_random.json"), labels).unwrap();
        let s = case.score(Pairing::ImageQuestion);
        let m = &s.issues.label_mismatches["random"];
        assert_eq!(m.count, 1);
        assert_eq!(
            (m.examples[0].position, m.examples[0].label_image.as_deref()),
            (4, None)
        );
        assert_eq!(s.issues.missing_answers, 1);
        let r = &s.categories["random"];
        assert_eq!((r.accuracy, r.answers, r.labels), (1.0, 6, 6));
        // Without a question text in the question file, the answer's prompt is compared.
        let questions: Vec<Value> = case
            .questions
            .iter()
            .map(|q| {
                let mut q = q.clone();
                q.as_object_mut().unwrap().remove("text");
                q
            })
            .collect();
        let s = score(
            Answers::parse(&case.answers),
            &questions,
            &case.dir,
            Pairing::ImageQuestion,
        )
        .unwrap();
        assert_eq!(s.issues.label_mismatches["random"].count, 1);
    }
}
