//! Answer files in LLaVA's format: JSON lines `{"question_id", "prompt", "text", "answer_id",
//! "model_id", "metadata"}`, read leniently (bad lines are counted, not fatal).

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;

use super::{Issues, id_key};
use crate::Error;

/// One answer.
#[derive(Debug, Clone, PartialEq)]
pub struct AnswerLine {
    /// The question id as a string key (see [`id_key`]).
    pub question_id: String,
    /// The id as written (a number or a string).
    pub raw_id: Value,
    /// The model's answer.
    pub text: String,
    /// The prompt the model saw (empty when absent).
    pub prompt: String,
}

/// The answers of one file, in file order, with what was wrong with its lines.
#[derive(Debug, Clone, Default)]
pub struct Answers {
    /// Every usable line, in order.
    pub lines: Vec<AnswerLine>,
    /// Malformed lines (in `issues.malformed_lines`).
    pub issues: Issues,
}

impl Answers {
    /// Parses JSON-lines text. Blank lines are skipped; a line that is not an object with a
    /// `question_id` (number or string) and a string `text` is counted as malformed.
    pub fn parse(text: &str) -> Self {
        let mut out = Answers::default();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let parsed: Option<AnswerLine> =
                serde_json::from_str::<Value>(line).ok().and_then(|v| {
                    let raw_id = v.get("question_id")?.clone();
                    Some(AnswerLine {
                        question_id: id_key(&raw_id)?,
                        raw_id,
                        text: v.get("text")?.as_str()?.to_string(),
                        prompt: v
                            .get("prompt")
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_string(),
                    })
                });
            match parsed {
                Some(a) => out.lines.push(a),
                None => out.issues.malformed_lines += 1,
            }
        }
        out
    }

    /// The answers by question id, as a Python dict built in file order keeps them (the last
    /// answer for an id wins); repeated ids are counted in `issues.duplicate_ids`.
    pub fn by_id(&mut self) -> BTreeMap<String, AnswerLine> {
        let mut map = BTreeMap::new();
        for a in &self.lines {
            if map.insert(a.question_id.clone(), a.clone()).is_some() {
                self.issues.duplicate_ids += 1;
            }
        }
        map
    }
}

/// Reads an answer file; a directory reads every `*.jsonl` in it, in name order (LLaVA writes
/// one file per chunk and merges them).
pub fn read_answers(path: &Path) -> Result<Answers, Error> {
    if path.is_dir() {
        let mut files: Vec<_> = std::fs::read_dir(path)
            .map_err(|e| Error::File(format!("{}: {e}", path.display())))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
            .collect();
        files.sort();
        let mut out = Answers::default();
        for f in files {
            let part = read_answers(&f)?;
            out.lines.extend(part.lines);
            out.issues.malformed_lines += part.issues.malformed_lines;
        }
        return Ok(out);
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::File(format!("{}: {e}", path.display())))?;
    Ok(Answers::parse(&text))
}

/// Reads a JSON file.
pub fn read_json(path: &Path) -> Result<Value, Error> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::File(format!("{}: {e}", path.display())))?;
    serde_json::from_str(&text).map_err(|e| Error::File(format!("{}: {e}", path.display())))
}

/// Reads a JSON-lines file into values; returns them and the number of lines that did not parse.
pub fn read_jsonl(path: &Path) -> Result<(Vec<Value>, usize), Error> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::File(format!("{}: {e}", path.display())))?;
    let mut bad = 0;
    let values = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .filter_map(|l| {
            let v = serde_json::from_str(l).ok();
            bad += usize::from(v.is_none());
            v
        })
        .collect();
    Ok((values, bad))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_lines_are_counted_and_ids_keep_their_form() {
        let mut a = Answers::parse(
            "{\"question_id\": 7, \"text\": \"yes\", \"prompt\": \"p\"}\n\
             not json\n\n\
             {\"question_id\": \"v1_3\", \"text\": \"x\"}\n\
             {\"question_id\": 7, \"text\": \"no\"}\n\
             {\"text\": \"no id\"}\n\
             {\"question_id\": [1], \"text\": \"bad id\"}\n",
        );
        assert_eq!(a.lines.len(), 3);
        assert_eq!(a.issues.malformed_lines, 3);
        assert_eq!(a.lines[0].question_id, "7");
        assert_eq!(a.lines[1].question_id, "v1_3");
        let by_id = a.by_id();
        assert_eq!(by_id["7"].text, "no");
        assert_eq!(a.issues.duplicate_ids, 1);
    }
}
