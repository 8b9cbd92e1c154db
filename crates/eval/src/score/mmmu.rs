//! MMMU validation (multiple-choice and open questions over 30 subjects in six disciplines),
//! scored as lmms-eval 0.7.3's `tasks/mmmu/utils.py` does, which keeps MMMU's own
//! `eval_utils.py` (commit 51ce7f3): a choice read by [`mcq::mmmu_letter`] must equal the answer;
//! an open answer is cut to its key parts ("so …", "is …", "= …" on the last line), numbers are
//! pulled out and rounded to two decimals, and it is right when a number equals the reference or
//! the reference's text is inside one of the parts. Accuracy per subject, per discipline and
//! overall (over questions).
//!
//! Where MMMU's parser finds no choice it picks one at random; we count such answers wrong and
//! report them as `unparsed_answers`. `vlmevalkit_accuracy` scores as VLMEvalKit does instead: an
//! open question becomes a choice between its answer (A) and "Other Answers" (B), and letters
//! are read by its rules ([`super::vlmevalkit`]).

use fancy_regex::Regex;

use super::{
    Answers, BenchScore, Issues, lettered, mcq, pair_answers, pystr, questions_of, text_field,
    vlmevalkit,
};
use crate::records::Record;
use crate::stats::{Aggregate, Metric, Unit};

/// MMMU's disciplines and their subjects, in its order.
pub const DISCIPLINES: [(&str, &[&str]); 6] = [
    ("Art and Design", &["Art", "Art_Theory", "Design", "Music"]),
    (
        "Business",
        &["Accounting", "Economics", "Finance", "Manage", "Marketing"],
    ),
    (
        "Science",
        &["Biology", "Chemistry", "Geography", "Math", "Physics"],
    ),
    (
        "Health and Medicine",
        &[
            "Basic_Medical_Science",
            "Clinical_Medicine",
            "Diagnostics_and_Laboratory_Medicine",
            "Pharmacy",
            "Public_Health",
        ],
    ),
    (
        "Humanities and Social Science",
        &["History", "Literature", "Sociology", "Psychology"],
    ),
    (
        "Tech and Engineering",
        &[
            "Agriculture",
            "Architecture_and_Engineering",
            "Computer_Science",
            "Electronics",
            "Energy_and_Power",
            "Materials",
            "Mechanical_Engineering",
        ],
    ),
];

/// One question, as scoring needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct Question {
    /// `id` (`validation_Art_Theory_12`), or VLMEvalKit's `index`.
    pub id: String,
    /// The subject (from the id, as MMMU's `extract_subset_name` reads it, or a `subject`/
    /// `category` field).
    pub subject: String,
    /// The options; empty for an open question.
    pub options: Vec<String>,
    /// True for `question_type == "open"`.
    pub open: bool,
    /// The reference answer: a letter, or the open answer's text.
    pub answer: String,
}

impl Question {
    /// From a record: lmms-eval's rows (`id`, `question_type`, `options` as a Python list
    /// literal, `answer`) or VLMEvalKit's (`index`, option columns `A`…`I`, `answer`, `category`).
    pub fn from_record(r: &Record) -> Result<Self, String> {
        let id = text_field(r, &["id", "index"])?;
        let options = super::options(r)?;
        let open = match r.get("question_type").and_then(|v| v.as_str()) {
            Some(t) => t == "open",
            None => options.is_empty(),
        };
        let subject = match subset_name(&id) {
            Some(s) => s,
            None => text_field(r, &["subject", "subfield", "category"])
                .map_err(|_| format!("id `{id}` names no subject and the record has none"))?,
        };
        Ok(Question {
            subject,
            options,
            open,
            answer: text_field(r, &["answer"])?,
            id,
        })
    }
}

/// MMMU's `extract_subset_name`: `validation_Art_Theory_12` → `Art_Theory`.
pub fn subset_name(id: &str) -> Option<String> {
    let split = id.split('_').next()?;
    let rest = id.strip_prefix(split)?.strip_prefix('_')?;
    let (subject, number) = rest.rsplit_once('_')?;
    (!subject.is_empty() && !number.is_empty() && number.chars().all(|c| c.is_ascii_digit()))
        .then(|| subject.to_string())
}

/// A normalised candidate: a number rounded to two decimals, or lowercased text.
#[derive(Debug, Clone, PartialEq)]
pub enum Normal {
    /// A number.
    Number(f64),
    /// Text.
    Text(String),
}

/// MMMU's `normalize_str`.
pub fn normalize(s: &str) -> Vec<Normal> {
    let s = pystr::strip(s);
    if let Some(x) = pystr::float(&s.replace(',', "")) {
        return vec![Normal::Number(pystr::round2(x))];
    }
    let lower = s.to_lowercase();
    if lower.chars().count() == 1 {
        return vec![
            Normal::Text(format!(" {lower}")),
            Normal::Text(format!("{lower} ")),
        ];
    }
    vec![Normal::Text(lower)]
}

/// MMMU's `extract_numbers`: numbers with thousands commas, in scientific notation, then plain.
pub fn extract_numbers(s: &str) -> Vec<String> {
    thread_local! {
        static PATTERNS: [Regex; 3] = [
            Regex::new(r"-?\b\d{1,3}(?:,\d{3})+\b").expect("valid"),
            Regex::new(r"-?\d+(?:\.\d+)?[eE][+-]?\d+").expect("valid"),
            Regex::new(r"-?(?:\d+\.\d+|\.\d+|\d+\b)(?![eE][+-]?\d+)(?![,\d])").expect("valid"),
        ];
    }
    PATTERNS.with(|patterns| {
        patterns
            .iter()
            .flat_map(|p| {
                p.find_iter(s)
                    .filter_map(Result::ok)
                    .map(|m| m.as_str().to_string())
                    .collect::<Vec<_>>()
            })
            .collect()
    })
}

/// MMMU's `parse_open_response`: the candidates an open answer is judged by.
pub fn parse_open(response: &str) -> Vec<Normal> {
    let key_responses = key_subresponses(response);
    let mut preds = key_responses.clone();
    for r in &key_responses {
        preds.extend(extract_numbers(r));
    }
    let mut out: Vec<Normal> = Vec::new();
    for p in preds.iter().flat_map(|p| normalize(p)) {
        if !out.contains(&p) {
            out.push(p);
        }
    }
    out
}

/// `get_key_subresponses`: per line, the shortest tail after an indicator ("so ", "is ", …, and
/// "=" on the last line); the whole answer when no line has one.
fn key_subresponses(response: &str) -> Vec<String> {
    thread_local! {
        static SPLIT: Regex = Regex::new(r"\.\s(?=[A-Z])|\n").expect("valid");
    }
    let response = pystr::strip(response).trim_matches('.').to_lowercase();
    let subs: Vec<String> = SPLIT.with(|re| {
        let mut parts = Vec::new();
        let mut last = 0;
        for m in re.find_iter(&response).filter_map(Result::ok) {
            parts.push(response[last..m.start()].to_string());
            last = m.end();
        }
        parts.push(response[last..].to_string());
        parts
    });
    let mut indicators = vec![
        "could be ",
        "so ",
        "is ",
        "thus ",
        "therefore ",
        "final ",
        "answer ",
        "result ",
    ];
    let mut keys = Vec::new();
    for (i, resp) in subs.iter().enumerate() {
        if i == subs.len() - 1 {
            indicators.push("=");
        }
        let mut shortest = String::new();
        for ind in &indicators {
            if let Some(at) = resp.rfind(ind) {
                let tail = pystr::strip(&resp[at + ind.len()..]).to_string();
                if shortest.is_empty() || tail.chars().count() < shortest.chars().count() {
                    shortest = tail;
                }
            }
        }
        if !shortest.is_empty()
            && !matches!(
                pystr::strip(&shortest),
                ":" | "," | "." | "!" | "?" | ";" | "'"
            )
        {
            keys.push(shortest);
        }
    }
    if keys.is_empty() {
        return vec![response];
    }
    keys
}

/// MMMU's `eval_open`: a number candidate equal to the reference's number, or the reference's
/// text inside a text candidate.
pub fn eval_open(answer: &str, candidates: &[Normal]) -> bool {
    let references = normalize(answer);
    candidates.iter().any(|c| match c {
        Normal::Text(t) => references.iter().any(|r| match r {
            Normal::Text(r) => t.contains(r.as_str()),
            Normal::Number(_) => false,
        }),
        Normal::Number(x) => references.contains(&Normal::Number(*x)),
    })
}

/// Scores `answers` against the benchmark's `records`.
pub fn score(records: &[Record], answers: Answers) -> BenchScore {
    let mut issues = Issues::default();
    let questions = questions_of(records, Question::from_record, &mut issues);
    let pairs = pair_answers(&questions, |q| &q.id, answers, &mut issues);
    let mut unparsed = 0;
    let units: Vec<Unit> = pairs
        .iter()
        .map(|(q, a)| {
            let right = if q.open {
                eval_open(&q.answer, &parse_open(&a.text))
            } else {
                let letter = mcq::mmmu_letter(&a.text, &q.options);
                unparsed += usize::from(letter.is_none());
                letter.is_some_and(|l| q.answer == l.to_string())
            };
            Unit {
                id: q.id.clone(),
                group: q.subject.clone(),
                value: f64::from(u8::from(right)),
            }
        })
        .collect();
    let kit: Vec<Unit> = pairs
        .iter()
        .map(|(q, a)| {
            // VLMEvalKit's `MMMU_preproc` and its answer map.
            let choices = if q.open {
                lettered(&[q.answer.clone(), "Other Answers".into()])
            } else {
                lettered(&q.options)
            };
            let single_letter =
                q.answer.len() == 1 && q.answer.chars().all(|c| c.is_ascii_uppercase());
            let gold = if single_letter {
                q.answer.clone()
            } else {
                "A".into()
            };
            Unit::of(
                &q.id,
                vlmevalkit::infer_letter(&a.text, &choices).to_string() == gold,
            )
        })
        .collect();
    let mut metrics = vec![
        Metric::new("accuracy", Aggregate::Mean, 1.0, units.clone()),
        Metric::new("vlmevalkit_accuracy", Aggregate::Mean, 1.0, kit),
    ];
    let of = |subjects: &[&str]| -> Vec<Unit> {
        units
            .iter()
            .filter(|u| subjects.contains(&u.group.as_str()))
            .cloned()
            .collect()
    };
    for (discipline, subjects) in DISCIPLINES {
        let d = of(subjects);
        if d.is_empty() {
            continue;
        }
        metrics.push(Metric::new(
            &format!("Overall-{discipline}"),
            Aggregate::Mean,
            1.0,
            d,
        ));
        for s in subjects {
            let u = of(&[s]);
            if !u.is_empty() {
                metrics.push(Metric::new(s, Aggregate::Mean, 1.0, u));
            }
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

    #[test]
    fn subjects_from_ids() {
        assert_eq!(
            subset_name("validation_Art_Theory_12").unwrap(),
            "Art_Theory"
        );
        assert_eq!(subset_name("dev_Math_3").unwrap(), "Math");
        assert!(subset_name("Math").is_none());
        assert!(subset_name("validation_Math_x").is_none());
    }

    #[test]
    fn numbers_and_normalisation() {
        assert_eq!(
            extract_numbers("paid 1,234 then -2.5e3, 7.25 and .5 or 12"),
            ["1,234", "-2.5e3", "234", "-2", "7.25", ".5", "12"]
        );
        assert_eq!(normalize(" 1,000.456 "), [Normal::Number(1000.46)]);
        assert_eq!(
            normalize("X"),
            [Normal::Text(" x".into()), Normal::Text("x ".into())]
        );
    }

    #[test]
    fn open_answers_are_judged_by_their_key_parts() {
        assert!(eval_open("4.5", &parse_open("The total is 4.50 dollars.")));
        assert!(eval_open("Paris", &parse_open("I think so: it is Paris")));
        assert!(!eval_open("Paris", &parse_open("London")));
        assert!(eval_open("12", &parse_open("2x = 12")));
        // Only the tail after the last indicator counts.
        assert!(!eval_open("rome", &parse_open("rome is wrong, so madrid")));
    }
}
