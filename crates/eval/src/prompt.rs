//! The prompt suffixes LLaVA's evaluation appends to benchmark questions: the runner writes them,
//! and scorers that read questions back (POPE) strip them.

/// LLaVA's short-answer prompt suffix.
pub const SHORT_ANSWER: &str = "Answer the question using a single word or phrase.";
/// LLaVA's multiple-choice prompt suffix.
pub const MULTIPLE_CHOICE: &str =
    "Answer with the option's letter from the given choices directly.";
