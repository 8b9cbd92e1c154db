//! VLMEvalKit's rule-based readings of an answer (its `exact_matching` policy: no LLM), the rules
//! behind the OpenVLM leaderboard's numbers (VLMEvalKit commit e8e78f05): `can_infer` for a
//! choice letter (`vlmeval/utils/matching_util.py`) and `YOrN_Extraction` for yes/no
//! (`vlmeval/dataset/utils/yorn.py`). Scorers report them beside lmms-eval's as `vlmevalkit_*`
//! metrics.

use fancy_regex::Regex;

use super::pystr;

/// Answers VLMEvalKit reads as a refusal (`Z`).
const REFUSALS: [&str; 4] = [
    "Sorry, I can't help with images of people yet.",
    "I can't process this file.",
    "I'm sorry, but without the image provided",
    "Cannot determine the answer",
];

/// `can_infer_option`: the answer's punctuation (`.()[],:;!*#{}`) becomes spaces; when exactly one
/// choice letter is among its words and it first appears among the last five, that letter; when
/// none is and a bare `Z` is, `Z`; else "the answer is X" (A-D); else nothing.
pub fn can_infer_option(answer: &str, letters: &[char]) -> Option<char> {
    if answer.contains("Failed to obtain answer via API") {
        return None;
    }
    if REFUSALS.iter().any(|r| answer.contains(r)) {
        return Some('Z');
    }
    let spaced: String = answer
        .chars()
        .map(|c| if ".()[],:;!*#{}".contains(c) { ' ' } else { c })
        .collect();
    let words: Vec<&str> = pystr::split(&spaced).collect();
    let is_word = |c: char| words.iter().any(|w| *w == c.to_string());
    let count = letters.iter().filter(|&&c| is_word(c)).count();
    if count == 1 {
        for &c in letters {
            let first = words.iter().position(|w| *w == c.to_string());
            if let Some(i) = first
                && i as i64 > words.len() as i64 - 5
            {
                return Some(c);
            }
        }
    } else if count == 0 && is_word('Z') {
        return Some('Z');
    }
    thread_local! {
        static VERBOSE: Regex =
            Regex::new(r"(?i)(?:correct\s+)?answer\s+is\s+\**([ABCD])\**").expect("valid");
    }
    let found = VERBOSE.with(|re| {
        re.captures(answer)
            .ok()
            .flatten()
            .and_then(|c| c.get(1))
            .and_then(|m| m.as_str().to_uppercase().chars().next())
    });
    found.filter(|c| letters.contains(c))
}

/// `can_infer_text`: for an answer at most twice as long as all option texts together, the one
/// option whose (lowercased) text is inside it.
pub fn can_infer_text(answer: &str, choices: &[(char, String)]) -> Option<char> {
    let answer = answer.to_lowercase();
    let total: usize = choices.iter().map(|(_, t)| t.chars().count()).sum();
    if answer.chars().count() > 2 * total {
        return None;
    }
    let found: Vec<char> = choices
        .iter()
        .filter(|(_, t)| answer.contains(&t.to_lowercase()))
        .map(|(c, _)| *c)
        .collect();
    (found.len() == 1).then(|| found[0])
}

/// `can_infer`: the letter VLMEvalKit reads from `answer` for `choices` (letter, option text),
/// or nothing (then an LLM extractor is asked, or the answer is `Z`).
pub fn can_infer(answer: &str, choices: &[(char, String)]) -> Option<char> {
    let letters: Vec<char> = choices.iter().map(|(c, _)| *c).collect();
    can_infer_option(answer, &letters).or_else(|| can_infer_text(answer, choices))
}

/// `can_infer`, then `Z` where it finds nothing (what `exact_matching` scores).
pub fn infer_letter(answer: &str, choices: &[(char, String)]) -> char {
    can_infer(answer, choices).unwrap_or('Z')
}

/// A multiple-choice question as VLMEvalKit scores it: its id, question text, choices and gold
/// letter (MMMU's open questions as `MMMU_preproc` makes them: the answer as A, "Other Answers"
/// as B, gold A).
#[derive(Debug, Clone, PartialEq)]
pub struct McqItem {
    /// The scorer's id.
    pub id: String,
    /// The question text.
    pub question: String,
    /// (letter, option text).
    pub choices: Vec<(char, String)>,
    /// The gold letter.
    pub gold: char,
}

/// `bench`'s record (mmstar, ai2d, mmmu) as VLMEvalKit's multiple-choice item.
pub fn mcq_item(bench: &str, r: &crate::records::Record) -> Result<McqItem, String> {
    use super::{lettered, text_field};
    let question = text_field(r, &["question"])?;
    let (id, choices, answer) = match bench {
        "mmstar" => {
            let q = super::mmstar::Question::from_record(r)?;
            let choices = if q.options.is_empty() {
                ['A', 'B', 'C', 'D'].map(|c| (c, String::new())).to_vec()
            } else {
                lettered(&q.options)
            };
            (q.id, choices, q.answer)
        }
        "ai2d" => {
            let q = super::ai2d::Question::from_record(r)?;
            (q.id, lettered(&q.options), q.answer)
        }
        "mmmu" => {
            let q = super::mmmu::Question::from_record(r)?;
            let choices = if q.open {
                lettered(&[q.answer.clone(), "Other Answers".into()])
            } else {
                lettered(&q.options)
            };
            (q.id, choices, q.answer)
        }
        other => return Err(format!("{other} is not a multiple-choice benchmark")),
    };
    let mut letters = answer.chars();
    let gold = match (letters.next(), letters.next()) {
        (Some(c), None) if c.is_ascii_uppercase() => c,
        _ => 'A',
    };
    Ok(McqItem {
        id,
        question,
        choices,
        gold,
    })
}

/// VLMEvalKit's prompt to its choice extractor (`build_prompt` with `build_option_str`), for an
/// answer `can_infer` cannot read.
pub fn extractor_prompt(item: &McqItem, prediction: &str) -> String {
    let mut options = String::from("There are several options: \n");
    for (c, text) in &item.choices {
        options.push_str(&format!("{c}. {text}\n"));
    }
    format!(
        "You are an AI assistant who will help me to match an answer with several options of a \
         single-choice question. You are provided with a question, several options, and an \
         answer, and you need to find which option is most similar to the answer. If the meaning \
         of all options are significantly different from the answer, output Z. Your should output \
         a single uppercase character in A, B, C, D (if they are valid options), and Z. \n\
         Example 1: \n\
         Question: What is the main object in image?\nOptions: A. teddy bear B. rabbit C. cat D. dog\n\
         Answer: a cute teddy bear\nYour output: A\n\
         Example 2: \n\
         Question: What is the main object in image?\nOptions: A. teddy bear B. rabbit C. cat D. dog\n\
         Answer: Spider\nYour output: Z\n\
         Example 3: \n\
         Question: {}?\nOptions: {options}\nAnswer: {prediction}\nYour output: ",
        item.question
    )
}

/// VLMEvalKit's multiple-choice accuracy with its choice extractor's `grades` (`{"question_id",
/// "letter"}` lines from `llava grade --extractor`): the letter `can_infer` reads, else the
/// extractor's, else `Z`. Named `vlmevalkit_llm_<metric>` beside the rule-only figure.
pub fn extracted_metric(
    bench: &str,
    name: &str,
    records: &[crate::records::Record],
    answers: super::Answers,
    grades: &[serde_json::Value],
) -> crate::stats::Metric {
    use std::collections::HashMap;
    let letters: HashMap<String, char> = grades
        .iter()
        .filter_map(|g| {
            let id = super::id_key(g.get("question_id")?)?;
            let letter = g.get("letter")?.as_str()?.chars().next()?;
            Some((id, letter))
        })
        .collect();
    let mut issues = super::Issues::default();
    let items = super::questions_of(records, |r| mcq_item(bench, r), &mut issues);
    let pairs = super::pair_answers(&items, |q| &q.id, answers, &mut issues);
    let units = pairs
        .iter()
        .map(|(q, a)| {
            let letter = can_infer(&a.text, &q.choices)
                .or_else(|| letters.get(&q.id).copied())
                .unwrap_or('Z');
            crate::stats::Unit::of(&q.id, letter == q.gold)
        })
        .collect();
    crate::stats::Metric::new(
        &format!("vlmevalkit_llm_{name}"),
        crate::stats::Aggregate::Mean,
        1.0,
        units,
    )
}

/// VLMEvalKit's `process_punctuation` (`vlmeval/smp/misc.py`): each mark deleted when it touches a
/// space (or the text has digit,digit), else a space; then periods without a digit on either side
/// deleted (at most 32: `re.UNICODE` passed as the count).
fn punctuation(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let comma_number = chars
        .windows(3)
        .any(|w| w[0].is_ascii_digit() && w[1] == ',' && w[2].is_ascii_digit());
    let mut out = text.to_string();
    for p in [
        ';', '/', '[', ']', '"', '{', '}', '(', ')', '=', '+', '\\', '_', '-', '>', '<', '@', '`',
        ',', '?', '!',
    ] {
        let touches = text.contains(&format!("{p} ")) || text.contains(&format!(" {p}"));
        out = out.replace(p, if touches || comma_number { "" } else { " " });
    }
    let c: Vec<char> = out.chars().collect();
    let mut result = String::with_capacity(out.len());
    let mut removed = 0;
    for (i, &ch) in c.iter().enumerate() {
        let digit_before = i > 0 && c[i - 1].is_ascii_digit();
        let digit_after = c.get(i + 1).is_some_and(char::is_ascii_digit);
        if ch == '.' && !digit_before && !digit_after && removed < 32 {
            removed += 1;
            continue;
        }
        result.push(ch);
    }
    result
}

/// `YOrN_Extraction`: `Some(true)` when the answer's words include "yes" and not "no",
/// `Some(false)` for the reverse, `None` (Unknown, scored wrong without a judge) otherwise.
pub fn yes_or_no(answer: &str) -> Option<bool> {
    let text = punctuation(&answer.to_lowercase());
    let words: Vec<&str> = pystr::split(&text).collect();
    let (yes, no) = (words.contains(&"yes"), words.contains(&"no"));
    match (yes, no) {
        (true, false) => Some(true),
        (false, true) => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn abcd() -> Vec<(char, String)> {
        ["red apple", "green pear", "blue sky", "yellow sun"]
            .iter()
            .zip(['A', 'B', 'C', 'D'])
            .map(|(t, c)| (c, t.to_string()))
            .collect()
    }

    #[test]
    fn letters_as_vlmevalkit_reads_them() {
        let l = |s: &str| infer_letter(s, &abcd());
        assert_eq!(l("B"), 'B');
        assert_eq!(l("(C)"), 'C');
        assert_eq!(l("B. green pear"), 'B');
        // Two letters among the words: no option; the text names none alone.
        assert_eq!(l("A or B"), 'Z');
        // One letter but not among the last five words, and no "answer is".
        assert_eq!(l("B is what one might say at first glance here"), 'Z');
        assert_eq!(l("The correct answer is **D**"), 'D');
        assert_eq!(l("green pear"), 'B');
        assert_eq!(l("Z"), 'Z');
        assert_eq!(l("Cannot determine the answer"), 'Z');
    }

    #[test]
    fn yes_and_no_as_whole_words() {
        assert_eq!(yes_or_no("Yes, it is."), Some(true));
        assert_eq!(yes_or_no("No."), Some(false));
        assert_eq!(yes_or_no("Eyes say nothing"), None);
        assert_eq!(yes_or_no("yes and no"), None);
        assert_eq!(yes_or_no("Absolutely, yes"), Some(true));
    }
}
