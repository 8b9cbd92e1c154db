//! ScienceQA-IMG: LLaVA's `eval_science_qa.py`. Every problem of the `test` split is scored (an
//! unanswered one is wrong); an answer counts when it is exactly a letter, starts with `X. `, or
//! contains exactly one `The answer is X.`; a letter beyond the problem's choices is wrong. IMG
//! accuracy covers the answers whose prompt contains `<image>`.

use serde::Serialize;
use serde_json::Value;

use super::{Answers, Issues};

/// The option letters of the script.
pub const OPTIONS: [&str; 5] = ["A", "B", "C", "D", "E"];

/// ScienceQA's score.
#[derive(Debug, Clone, Serialize)]
pub struct Score {
    /// Accuracy over the split, x 100.
    pub accuracy: f64,
    /// Accuracy over the image questions, x 100.
    pub img_accuracy: f64,
    /// Problems in the split.
    pub count: usize,
    /// Answered problems with an image.
    pub img_count: usize,
    /// Problems in the inputs.
    pub issues: Issues,
    /// Each problem of the split, right or not, in group `img` when its prompt has an image.
    #[serde(skip)]
    pub units: Vec<crate::stats::Unit>,
}

/// The letter the script reads in `text`, or `None` (its `FAILED`).
pub fn parse_letter(text: &str) -> Option<String> {
    if OPTIONS.contains(&text) {
        return Some(text.to_string());
    }
    let chars: Vec<char> = text.chars().collect();
    if chars.len() >= 3
        && OPTIONS.contains(&chars[0].to_string().as_str())
        && chars[1] == '.'
        && chars[2] == ' '
    {
        return Some(chars[0].to_string());
    }
    // re.findall(r'The answer is ([A-Z]).', text): non-overlapping, `.` is any character but a
    // newline; exactly one match counts.
    let pattern: Vec<char> = "The answer is ".chars().collect();
    let mut found = Vec::new();
    let mut i = 0;
    while i + pattern.len() + 2 <= chars.len() {
        let window = &chars[i..i + pattern.len()];
        let letter = chars[i + pattern.len()];
        let any = chars[i + pattern.len() + 1];
        if window == pattern.as_slice() && letter.is_ascii_uppercase() && any != '\n' {
            found.push(letter.to_string());
            i += pattern.len() + 2;
        } else {
            i += 1;
        }
    }
    (found.len() == 1).then(|| found.remove(0))
}

/// Scores `answers` (keyed by problem id) against `problems.json` and the ids of the split.
pub fn score(mut answers: Answers, problems: &Value, split: &[String]) -> Score {
    let by_id = answers.by_id();
    let mut issues = answers.issues.clone();
    issues.unknown_ids = by_id.keys().filter(|k| !split.contains(*k)).count();
    let (mut right, mut img_right, mut img_count) = (0usize, 0usize, 0usize);
    let mut units = Vec::new();
    for id in split {
        let problem = &problems[id.as_str()];
        let choices = problem
            .get("choices")
            .and_then(Value::as_array)
            .map_or(0, Vec::len);
        let gold = problem.get("answer").and_then(Value::as_u64);
        let (text, prompt) = match by_id.get(id) {
            Some(a) => (a.text.as_str(), a.prompt.as_str()),
            None => {
                issues.missing_answers += 1;
                ("FAILED", "Unknown")
            }
        };
        let index = parse_letter(text)
            .and_then(|l| {
                OPTIONS[..choices.min(OPTIONS.len())]
                    .iter()
                    .position(|o| *o == l)
            })
            .map(|i| i as u64);
        let correct = index.is_some() && index == gold;
        let image = prompt.contains("<image>");
        right += usize::from(correct);
        img_count += usize::from(image);
        img_right += usize::from(correct && image);
        let mut unit = crate::stats::Unit::of(id, correct);
        if image {
            unit.group = "img".into();
        }
        units.push(unit);
    }
    Score {
        accuracy: 100.0 * right as f64 / split.len().max(1) as f64,
        img_accuracy: 100.0 * img_right as f64 / img_count.max(1) as f64,
        count: split.len(),
        img_count,
        issues,
        units,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn letters_as_the_script_parses_them() {
        assert_eq!(parse_letter("A").as_deref(), Some("A"));
        assert_eq!(parse_letter("B. blue").as_deref(), Some("B"));
        assert_eq!(parse_letter("B.blue"), None);
        assert_eq!(parse_letter("The answer is C.").as_deref(), Some("C"));
        assert_eq!(
            parse_letter("I think The answer is D!").as_deref(),
            Some("D")
        );
        assert_eq!(parse_letter("The answer is A. The answer is B."), None);
        assert_eq!(parse_letter("a"), None);
        assert_eq!(parse_letter(" A"), None);
        assert_eq!(parse_letter("The answer is C"), None);
        assert_eq!(parse_letter("F").as_deref(), None);
        assert_eq!(parse_letter("The answer is F.").as_deref(), Some("F"));
    }

    #[test]
    fn the_denominator_is_the_split_and_img_needs_the_image_prompt() {
        let problems = json!({
            "1": {"choices": ["x", "y"], "answer": 1},
            "2": {"choices": ["x", "y", "z"], "answer": 0},
            "3": {"choices": ["x", "y"], "answer": 0},
            "4": {"choices": ["x", "y"], "answer": 0},
        });
        let split: Vec<String> = ["1", "2", "3", "4"].map(String::from).to_vec();
        let answers = Answers::parse(
            "{\"question_id\": \"1\", \"text\": \"B\", \"prompt\": \"<image>\\nQ\"}\n\
             {\"question_id\": \"2\", \"text\": \"A. x\", \"prompt\": \"Q\"}\n\
             {\"question_id\": \"3\", \"text\": \"C\", \"prompt\": \"<image>\\nQ\"}\n",
        );
        let s = score(answers, &problems, &split);
        // 1 and 2 right; 3 picks a letter beyond its two choices; 4 is unanswered.
        assert_eq!(s.accuracy, 50.0);
        assert_eq!(s.img_count, 2);
        assert_eq!(s.img_accuracy, 50.0);
        assert_eq!(s.issues.missing_answers, 1);
    }
}
