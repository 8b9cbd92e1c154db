//! VQAv2: LLaVA's `convert_vqav2_for_submission.py` passes every prediction through EvalAI's
//! answer processor; the official `vqaEval.py` then compares it with the ten human answers,
//! normalising both again only when the humans disagree, and scores each question as the mean over
//! the ten leave-one-out subsets of min(1, matches / 3). The overall accuracy is x 100, rounded to
//! two decimals as the official script prints it.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use serde_json::Value;

use super::{Answers, Issues, id_key};

const CONTRACTIONS: &[(&str, &str)] = &[
    ("aint", "ain't"),
    ("arent", "aren't"),
    ("cant", "can't"),
    ("couldve", "could've"),
    ("couldnt", "couldn't"),
    ("couldn'tve", "couldn't've"),
    ("couldnt've", "couldn't've"),
    ("didnt", "didn't"),
    ("doesnt", "doesn't"),
    ("dont", "don't"),
    ("hadnt", "hadn't"),
    ("hadnt've", "hadn't've"),
    ("hadn'tve", "hadn't've"),
    ("hasnt", "hasn't"),
    ("havent", "haven't"),
    ("hed", "he'd"),
    ("hed've", "he'd've"),
    ("he'dve", "he'd've"),
    ("hes", "he's"),
    ("howd", "how'd"),
    ("howll", "how'll"),
    ("hows", "how's"),
    ("Id've", "I'd've"),
    ("I'dve", "I'd've"),
    ("Im", "I'm"),
    ("Ive", "I've"),
    ("isnt", "isn't"),
    ("itd", "it'd"),
    ("itd've", "it'd've"),
    ("it'dve", "it'd've"),
    ("itll", "it'll"),
    ("let's", "let's"),
    ("maam", "ma'am"),
    ("mightnt", "mightn't"),
    ("mightnt've", "mightn't've"),
    ("mightn'tve", "mightn't've"),
    ("mightve", "might've"),
    ("mustnt", "mustn't"),
    ("mustve", "must've"),
    ("neednt", "needn't"),
    ("notve", "not've"),
    ("oclock", "o'clock"),
    ("oughtnt", "oughtn't"),
    ("ow's'at", "'ow's'at"),
    ("'ows'at", "'ow's'at"),
    ("'ow'sat", "'ow's'at"),
    ("shant", "shan't"),
    ("shed've", "she'd've"),
    ("she'dve", "she'd've"),
    ("she's", "she's"),
    ("shouldve", "should've"),
    ("shouldnt", "shouldn't"),
    ("shouldnt've", "shouldn't've"),
    ("shouldn'tve", "shouldn't've"),
    ("somebody'd", "somebodyd"),
    ("somebodyd've", "somebody'd've"),
    ("somebody'dve", "somebody'd've"),
    ("somebodyll", "somebody'll"),
    ("somebodys", "somebody's"),
    ("someoned", "someone'd"),
    ("someoned've", "someone'd've"),
    ("someone'dve", "someone'd've"),
    ("someonell", "someone'll"),
    ("someones", "someone's"),
    ("somethingd", "something'd"),
    ("somethingd've", "something'd've"),
    ("something'dve", "something'd've"),
    ("somethingll", "something'll"),
    ("thats", "that's"),
    ("thered", "there'd"),
    ("thered've", "there'd've"),
    ("there'dve", "there'd've"),
    ("therere", "there're"),
    ("theres", "there's"),
    ("theyd", "they'd"),
    ("theyd've", "they'd've"),
    ("they'dve", "they'd've"),
    ("theyll", "they'll"),
    ("theyre", "they're"),
    ("theyve", "they've"),
    ("twas", "'twas"),
    ("wasnt", "wasn't"),
    ("wed've", "we'd've"),
    ("we'dve", "we'd've"),
    ("weve", "we've"),
    ("werent", "weren't"),
    ("whatll", "what'll"),
    ("whatre", "what're"),
    ("whats", "what's"),
    ("whatve", "what've"),
    ("whens", "when's"),
    ("whered", "where'd"),
    ("wheres", "where's"),
    ("whereve", "where've"),
    ("whod", "who'd"),
    ("whod've", "who'd've"),
    ("who'dve", "who'd've"),
    ("wholl", "who'll"),
    ("whos", "who's"),
    ("whove", "who've"),
    ("whyll", "why'll"),
    ("whyre", "why're"),
    ("whys", "why's"),
    ("wont", "won't"),
    ("wouldve", "would've"),
    ("wouldnt", "wouldn't"),
    ("wouldnt've", "wouldn't've"),
    ("wouldn'tve", "wouldn't've"),
    ("yall", "y'all"),
    ("yall'll", "y'all'll"),
    ("y'allll", "y'all'll"),
    ("yall'd've", "y'all'd've"),
    ("y'alld've", "y'all'd've"),
    ("y'all'dve", "y'all'd've"),
    ("youd", "you'd"),
    ("youd've", "you'd've"),
    ("you'dve", "you'd've"),
    ("youll", "you'll"),
    ("youre", "you're"),
    ("youve", "you've"),
];

const NUMBERS: &[(&str, &str)] = &[
    ("none", "0"),
    ("zero", "0"),
    ("one", "1"),
    ("two", "2"),
    ("three", "3"),
    ("four", "4"),
    ("five", "5"),
    ("six", "6"),
    ("seven", "7"),
    ("eight", "8"),
    ("nine", "9"),
    ("ten", "10"),
];

const PUNCTUATION: [char; 21] = [
    ';', '/', '[', ']', '"', '{', '}', '(', ')', '=', '+', '\\', '_', '-', '>', '<', '@', '`', ',',
    '?', '!',
];

/// Python's `\d` for the texts that matter here.
fn digit(c: char) -> bool {
    c.is_ascii_digit()
}

/// The official `commaStrip` test: a digit, a comma, a digit. EvalAI's version allows a run of
/// commas between the digits.
fn has_digit_comma_digit(text: &str, comma_runs: bool) -> bool {
    let c: Vec<char> = text.chars().collect();
    (0..c.len()).any(|i| {
        if !digit(c[i]) {
            return false;
        }
        let mut j = i + 1;
        let start = j;
        while j < c.len() && c[j] == ',' && (comma_runs || j == start) {
            j += 1;
        }
        j > start && j < c.len() && digit(c[j])
    })
}

/// `processPunctuation`: each punctuation mark is deleted when it touches a space somewhere in
/// the text (or the text has a digit-comma-digit), otherwise replaced by a space; then periods
/// not followed by a digit are deleted (at most 32 of them: the script passes `re.UNICODE` where
/// `re.sub` takes its count).
fn process_punctuation(text: &str, comma_runs: bool) -> String {
    let comma_number = has_digit_comma_digit(text, comma_runs);
    let mut out = text.to_string();
    for p in PUNCTUATION {
        let touches = text.contains(&format!("{p} ")) || text.contains(&format!(" {p}"));
        out = out.replace(p, if touches || comma_number { "" } else { " " });
    }
    let chars: Vec<char> = out.chars().collect();
    let mut result = String::with_capacity(out.len());
    let mut removed = 0;
    for (i, &c) in chars.iter().enumerate() {
        let next_is_digit = chars.get(i + 1).is_some_and(|n| digit(*n));
        if c == '.' && !next_is_digit && removed < 32 {
            removed += 1;
            continue;
        }
        result.push(c);
    }
    result
}

/// `processDigitArticle`: lowercased, split on whitespace, number words to digits, articles
/// dropped, contractions restored, joined by single spaces.
fn process_digit_article(text: &str) -> String {
    let lower = text.to_lowercase();
    let words: Vec<&str> = lower
        .split_whitespace()
        .map(|w| NUMBERS.iter().find(|(k, _)| *k == w).map_or(w, |(_, v)| *v))
        .filter(|w| !matches!(*w, "a" | "an" | "the"))
        .map(|w| {
            CONTRACTIONS
                .iter()
                .find(|(k, _)| *k == w)
                .map_or(w, |(_, v)| *v)
        })
        .collect();
    words.join(" ")
}

/// The official evaluator's normalisation (used only when the ten answers disagree).
pub fn official_normalise(text: &str) -> String {
    process_digit_article(&process_punctuation(text, false))
}

/// EvalAI's answer processor, which LLaVA applies to every prediction before submission:
/// lowercased, `,` and `?` dropped, `'s` split off, whitespace folded, then the official
/// punctuation and digit/article rules.
pub fn evalai_process(text: &str) -> String {
    let lower = text.to_lowercase();
    let word = lower.replace([',', '?'], "").replace("'s", " 's");
    let item = word.trim().replace(['\n', '\t'], " ");
    let item = item.trim();
    process_digit_article(&process_punctuation(item, true))
}

/// One question's accuracy for an (already EvalAI-processed) prediction and its ten answers.
pub fn question_accuracy(prediction: &str, answers: &[String]) -> f64 {
    let clean = |s: &str| s.replace(['\n', '\t'], " ").trim().to_string();
    let mut gts: Vec<String> = answers.iter().map(|a| clean(a)).collect();
    let mut pred = clean(prediction);
    let distinct: BTreeSet<&String> = gts.iter().collect();
    if distinct.len() > 1 {
        gts = gts.iter().map(|a| official_normalise(a)).collect();
        pred = official_normalise(&pred);
    }
    if gts.is_empty() {
        return 0.0;
    }
    let total: f64 = (0..gts.len())
        .map(|i| {
            let matches = gts
                .iter()
                .enumerate()
                .filter(|(j, a)| *j != i && **a == pred)
                .count();
            (matches as f64 / 3.0).min(1.0)
        })
        .sum();
    total / gts.len() as f64
}

/// VQAv2's score.
#[derive(Debug, Clone, Serialize)]
pub struct Score {
    /// Mean accuracy x 100, rounded to two decimals.
    pub accuracy: f64,
    /// Questions scored.
    pub count: usize,
    /// Problems in the inputs.
    pub issues: Issues,
    /// Each question's accuracy (0..1; unanswered 0).
    #[serde(skip)]
    pub units: Vec<crate::stats::Unit>,
}

/// The human answers per question id from the official annotations JSON
/// (`{"annotations": [{"question_id", "answers": [{"answer", ...}]}]}`).
pub fn annotations(value: &Value) -> BTreeMap<String, Vec<String>> {
    value
        .get("annotations")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|a| {
            let id = id_key(a.get("question_id")?)?;
            let answers = a
                .get("answers")?
                .as_array()?
                .iter()
                .filter_map(|x| x.get("answer")?.as_str().map(str::to_string))
                .collect();
            Some((id, answers))
        })
        .collect()
}

/// Scores `answers`. The questions scored are `question_ids` when given (as the official
/// evaluator scores a results file against its question file; a question without an answer
/// counts as wrong), otherwise every answered question that has annotations.
pub fn score(
    mut answers: Answers,
    annotations: &BTreeMap<String, Vec<String>>,
    question_ids: Option<&[String]>,
) -> Score {
    let by_id = answers.by_id();
    let mut issues = answers.issues.clone();
    issues.unknown_ids = by_id
        .keys()
        .filter(|k| !annotations.contains_key(*k))
        .count();
    let ids: Vec<String> = match question_ids {
        Some(ids) => ids
            .iter()
            .filter(|id| annotations.contains_key(*id))
            .cloned()
            .collect(),
        None => by_id
            .keys()
            .filter(|k| annotations.contains_key(*k))
            .cloned()
            .collect(),
    };
    let mut total = 0.0;
    let mut units = Vec::new();
    for id in &ids {
        let acc = match by_id.get(id) {
            Some(a) => question_accuracy(&evalai_process(&a.text), &annotations[id]),
            None => {
                issues.missing_answers += 1;
                0.0
            }
        };
        total += acc;
        units.push(crate::stats::Unit {
            id: id.clone(),
            group: String::new(),
            value: acc,
        });
    }
    let accuracy = 100.0 * total / ids.len().max(1) as f64;
    Score {
        accuracy: (accuracy * 100.0).round() / 100.0,
        count: ids.len(),
        issues,
        units,
    }
}

/// The test-dev submission (`[{"question_id": int, "answer": str}]`): every answer through
/// EvalAI's processor, and, when the test question ids are given, an empty answer for each one
/// left unanswered (as LLaVA's conversion does).
pub fn submission(answers: &Answers, test_ids: Option<&[Value]>) -> Value {
    let mut out: Vec<Value> = Vec::new();
    let mut seen = BTreeSet::new();
    for a in &answers.lines {
        if seen.insert(a.question_id.clone()) {
            out.push(
                serde_json::json!({"question_id": a.raw_id, "answer": evalai_process(&a.text)}),
            );
        }
    }
    for id in test_ids.unwrap_or_default() {
        if let Some(key) = id_key(id)
            && !seen.contains(&key)
        {
            out.push(serde_json::json!({"question_id": id, "answer": ""}));
        }
    }
    Value::Array(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ten(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn evalai_processing_follows_the_rules() {
        assert_eq!(evalai_process("Two"), "2");
        assert_eq!(evalai_process("The dog."), "dog");
        assert_eq!(evalai_process("a red car"), "red car");
        assert_eq!(evalai_process("dont"), "don't");
        assert_eq!(evalai_process("Yes, it is"), "yes it is");
        assert_eq!(evalai_process("what?"), "what");
        assert_eq!(evalai_process("man's hat"), "man 's hat");
        assert_eq!(evalai_process("3.5"), "3.5");
        assert_eq!(evalai_process("1,000"), "1000");
        assert_eq!(evalai_process("black/white"), "black white");
        assert_eq!(evalai_process("black / white"), "black white");
        assert_eq!(evalai_process("  left\n"), "left");
        assert_eq!(evalai_process("ten"), "10");
        assert_eq!(evalai_process("none"), "0");
    }

    #[test]
    fn official_normalisation_keeps_apostrophes_and_strips_periods() {
        assert_eq!(official_normalise("Tennis."), "tennis");
        assert_eq!(official_normalise("an apple"), "apple");
        assert_eq!(official_normalise("isnt"), "isn't");
        assert_eq!(official_normalise("somebody'd"), "somebodyd");
        assert_eq!(official_normalise("e.g"), "eg");
        assert_eq!(official_normalise("1.5"), "1.5");
        // A punctuation mark touching a space anywhere is deleted everywhere.
        assert_eq!(official_normalise("x-ray - yes"), "xray yes");
        assert_eq!(official_normalise("x-ray"), "x ray");
    }

    #[test]
    fn leave_one_out_accuracy() {
        let answers = ten(&["yes"; 10]);
        assert_eq!(question_accuracy("yes", &answers), 1.0);
        // Two of ten say "2": each subset without one of them has 1 match, else 2.
        let answers = ten(&["2", "2", "3", "3", "3", "3", "3", "3", "3", "3"]);
        let expected = (2.0 * (1.0 / 3.0) + 8.0 * (2.0 / 3.0)) / 10.0;
        assert!((question_accuracy("2", &answers) - expected).abs() < 1e-12);
        // Three matches: subsets without one of them have 2 (2/3), the rest 3 (1).
        let answers = ten(&[
            "red", "red", "red", "blue", "blue", "blue", "blue", "b", "b", "b",
        ]);
        let expected = (3.0 * (2.0 / 3.0) + 7.0) / 10.0;
        assert!((question_accuracy("red", &answers) - expected).abs() < 1e-12);
    }

    #[test]
    fn unanimous_answers_compare_raw_strings() {
        // Unanimous humans: no normalisation, so "Yes" (not EvalAI-processed) would miss.
        assert_eq!(question_accuracy("Yes", &ten(&["yes"; 10])), 0.0);
        // Disagreeing humans: both sides normalised.
        let answers = ten(&["two", "2", "2", "2", "2", "2", "2", "2", "2", "2"]);
        assert_eq!(question_accuracy("two", &answers), 1.0);
    }

    #[test]
    fn missing_answers_count_when_questions_are_given() {
        let ann: BTreeMap<String, Vec<String>> = [
            ("1".to_string(), ten(&["yes"; 10])),
            ("2".to_string(), ten(&["no"; 10])),
        ]
        .into();
        let answers = Answers::parse(
            "{\"question_id\": 1, \"text\": \"Yes\"}\n{\"question_id\": 5, \"text\": \"x\"}",
        );
        let s = score(answers.clone(), &ann, None);
        assert_eq!((s.accuracy, s.count, s.issues.unknown_ids), (100.0, 1, 1));
        let ids = ["1".to_string(), "2".to_string()];
        let s = score(answers.clone(), &ann, Some(&ids));
        assert_eq!(
            (s.accuracy, s.count, s.issues.missing_answers),
            (50.0, 2, 1)
        );
        let sub = submission(
            &answers,
            Some(&[serde_json::json!(1), serde_json::json!(2)]),
        );
        assert_eq!(sub.as_array().unwrap().len(), 3);
        assert_eq!(sub[0]["answer"], "yes");
        assert_eq!(sub[2], serde_json::json!({"question_id": 2, "answer": ""}));
    }
}
