//! Reading a choice letter out of a free-form answer, as each reference does it: lmms-eval's
//! shared extractor (MMStar), MMMU's own parser (its `parse_multi_choice_response`, which
//! lmms-eval keeps), and AI2D's filter in lmms-eval. They disagree on purpose: each benchmark is
//! scored the way its published numbers were.

use super::pystr::{self, chars, find, rfind};

/// The letters `A`, `B`, … for `n` options.
pub fn letters(n: usize) -> Vec<char> {
    (0..n.min(26)).map(|i| (b'A' + i as u8) as char).collect()
}

/// The phrases after which lmms-eval looks for the letter.
const ANSWER_PHRASES: &[&str] = &[
    "the answer is",
    "answer is",
    "the correct answer is",
    "correct answer is",
    "the best answer is",
    "best answer is",
    "the correct option is",
    "correct option is",
    "the best option is",
    "best option is",
    "the choice is",
    "choice is",
    "the correct choice is",
    "correct choice is",
    "i choose",
    "i select",
    "i pick",
    "my answer is",
    "my choice is",
    "옵션",
    "정답은",
    "답은",
    "답:",
    "答案是",
    "答案为",
    "选",
    "答えは",
];

/// lmms-eval's `extract_mcq_answer` (`tasks/_task_utils/mcq_extract.py`, 0.7.3): every place a
/// choice letter appears in a known format (`(B)`, `B.`, `B:`, `B)`, `B `, after "the answer
/// is", at the start, at the end, anywhere as a last resort) is a candidate; the most confident
/// format wins, then the latest position. `None` where it returns `""`.
pub fn lmms_eval_letter(response: &str, choices: &[char]) -> Option<char> {
    if pystr::strip(response).is_empty() {
        return None;
    }
    let stripped = pystr::strip_each(
        pystr::strip(response),
        &[',', '.', '!', '?', ';', ':', '\'', '"'],
    );
    let text = chars(&format!(" {stripped} "));
    // (letter, position, priority) in the order the reference appends them.
    let mut candidates: Vec<(char, usize, u8)> = Vec::new();
    let formats: [(&dyn Fn(char) -> String, u8); 5] = [
        (&|c| format!("({c})"), 6),
        (&|c| format!("{c}."), 5),
        (&|c| format!("{c}:"), 4),
        (&|c| format!("{c})"), 3),
        (&|c| format!("{c} "), 2),
    ];
    for (pattern, priority) in formats {
        for &c in choices {
            if let Some(at) = rfind(&text, &chars(&pattern(c))) {
                candidates.push((c, at, priority));
            }
        }
    }
    let lower = chars(&text.iter().collect::<String>().to_lowercase());
    for phrase in ANSWER_PHRASES {
        if let Some(idx) = find(&lower, &chars(phrase), 0) {
            let after = idx + phrase.chars().count();
            for &c in choices {
                if let Some(at) = find(&text, &[c], after.min(text.len())) {
                    candidates.push((c, at, 7));
                }
            }
        }
    }
    let s = chars(pystr::strip(&text.iter().collect::<String>()));
    for &c in choices {
        if s.first() == Some(&c) && (s.len() == 1 || !pystr::is_alpha(s[1])) {
            candidates.push((c, 0, 10));
        }
    }
    for &c in choices {
        if s.last() == Some(&c) && (s.len() == 1 || !pystr::is_alpha(s[s.len() - 2])) {
            candidates.push((c, text.len() - 1, 9));
        }
    }
    if candidates.is_empty() {
        for &c in choices {
            if let Some(at) = rfind(&text, &[c]) {
                candidates.push((c, at, 0));
            }
        }
    }
    // Python's stable sort by (priority, position), descending: the first of equal keys wins.
    let mut best: Option<(char, usize, u8)> = None;
    for c in candidates {
        if best.is_none_or(|b| (c.2, c.1) > (b.2, b.1)) {
            best = Some(c);
        }
    }
    best.map(|b| b.0)
}

/// MMMU's `parse_multi_choice_response` (MMMU `eval/eval_utils.py` at 51ce7f3, kept by lmms-eval
/// as `parse_mmmu_multi_choice_response`): `(A)` first, then `A ` , then `A.`, then (for answers
/// of more than five words) the option's text; of several, the one that appears last. `None`
/// where the reference picks a random letter (nothing found): we count it wrong and report it.
pub fn mmmu_letter(response: &str, options: &[String]) -> Option<char> {
    let choices = letters(options.len());
    let stripped = pystr::strip_each(response, &[',', '.', '!', '?', ';', ':', '\'']);
    let text = chars(&format!(" {stripped} "));
    let has = |pattern: String| rfind(&text, &chars(&pattern)).is_some();
    let mut candidates: Vec<char> = choices
        .iter()
        .copied()
        .filter(|c| has(format!("({c})")))
        .collect();
    let with_brackets = !candidates.is_empty();
    if candidates.is_empty() {
        candidates = choices
            .iter()
            .copied()
            .filter(|c| has(format!("{c} ")))
            .collect();
    }
    if candidates.is_empty() {
        candidates = choices
            .iter()
            .copied()
            .filter(|c| has(format!("{c}.")))
            .collect();
    }
    let text_string: String = text.iter().collect();
    let lower = chars(&text_string.to_lowercase());
    let mut by_text = false;
    if candidates.is_empty() && pystr::split(&text_string).count() > 5 {
        for (c, option) in choices.iter().zip(options) {
            if find(&lower, &chars(&option.to_lowercase()), 0).is_some() {
                candidates.push(*c);
                by_text = true;
            }
        }
    }
    if candidates.len() <= 1 {
        return candidates.first().copied();
    }
    let position = |c: char| -> i64 {
        let at = if by_text {
            let option = &options[(c as u8 - b'A') as usize];
            rfind(&lower, &chars(&option.to_lowercase()))
        } else if with_brackets {
            rfind(&text, &chars(&format!("({c})")))
        } else {
            rfind(&text, &chars(&format!(" {c} ")))
        };
        at.map_or(-1, |p| p as i64)
    };
    // numpy's argmax: the first of the largest.
    let mut best = candidates[0];
    let mut best_at = position(best);
    for &c in &candidates[1..] {
        let at = position(c);
        if at > best_at {
            best = c;
            best_at = at;
        }
    }
    Some(best)
}

/// AI2D's filter in lmms-eval (`MultiChoiceRegexFilter`): a letter followed by a period at the
/// start (`^\s*([A-Z])\.`) becomes that letter; any other answer is kept whole.
pub fn ai2d_filter(response: &str) -> String {
    let rest = response.trim_start_matches(pystr::is_space);
    let mut it = rest.chars();
    match (it.next(), it.next()) {
        (Some(c), Some('.')) if c.is_ascii_uppercase() => c.to_string(),
        _ => response.to_string(),
    }
}

/// lmms-eval's `exact_match` with `ignore_case` and `ignore_punctuation`: both sides lowercased,
/// ASCII punctuation deleted, then compared whole (white space kept).
pub fn exact_match_loose(prediction: &str, reference: &str) -> bool {
    let clean = |s: &str| -> String {
        s.to_lowercase()
            .chars()
            .filter(|c| !c.is_ascii_punctuation())
            .collect()
    };
    clean(prediction) == clean(reference)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn abcd() -> Vec<char> {
        letters(4)
    }

    #[test]
    fn lmms_eval_extraction_prefers_confident_formats() {
        let l = |s: &str| lmms_eval_letter(s, &abcd());
        assert_eq!(l("B"), Some('B'));
        assert_eq!(l("(C) a cat"), Some('C'));
        assert_eq!(l("The answer is (B)."), Some('B'));
        // A letter that starts the answer outranks "the answer is", in the reference too.
        assert_eq!(l("A is wrong, the answer is D"), Some('A'));
        assert_eq!(l("Between A and B, I choose B."), Some('B'));
        assert_eq!(l("Answer: C"), Some('C'));
        assert_eq!(l("Apple"), Some('A'));
        assert_eq!(l("banana"), None);
        assert_eq!(l("   "), None);
        assert_eq!(l("D. Dog"), Some('D'));
    }

    #[test]
    fn mmmu_parser_follows_its_order() {
        let options: Vec<String> = ["red apple", "green pear", "blue sky", "yellow sun"]
            .map(String::from)
            .to_vec();
        let p = |s: &str| mmmu_letter(s, &options);
        assert_eq!(p("(B)"), Some('B'));
        assert_eq!(p("B"), Some('B'));
        assert_eq!(p("A or (C)"), Some('C'));
        assert_eq!(p("A and then B are both"), Some('B'));
        assert_eq!(p("I think that it is the green pear for sure"), Some('B'));
        assert_eq!(p("green pear"), None);
        assert_eq!(p("x"), None);
    }

    #[test]
    fn ai2d_takes_a_leading_letter_with_a_period() {
        assert_eq!(ai2d_filter("  B. the moon"), "B");
        assert_eq!(ai2d_filter("B"), "B");
        assert_eq!(ai2d_filter("b. x"), "b. x");
        assert!(exact_match_loose("B", "b"));
        assert!(exact_match_loose("(b)", "B"));
        assert!(!exact_match_loose("B ", "B"));
    }
}
