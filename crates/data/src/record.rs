//! Records of the LLaVA data files: a JSON list of
//! `{"id", "image"?, "conversations": [{"from": "human"|"gpt", "value"}]}`, where `image` is one
//! path or (LLaVA-OneVision's multi-image records) a list of paths, one `<image>` mark each.
//!
//! The list is split into its elements by a byte scanner (`store`), each element is parsed on its
//! own and checked, so a 1 GB file (the 665K mix) is never held as a document tree, and one
//! malformed element costs one record, not the file. A skipped record keeps its `id` whenever the
//! element has a readable one, however malformed the rest is.

use std::fmt;
use std::path::Path;

use rayon::prelude::*;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::{Error, Result};

/// Who speaks a turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Speaker {
    /// `human` (or `user`).
    Human,
    /// `gpt` (or `assistant`, `model`).
    Gpt,
}

/// One turn of a conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Turn {
    /// The speaker.
    pub from: Speaker,
    /// The text, with `<image>` where the image goes.
    pub value: String,
}

/// A checked record: a non-empty conversation that alternates human/gpt, starting with the human.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The record's id (numbers are kept as their decimal text).
    pub id: String,
    /// The image paths relative to the image root, in the order of their `<image>` marks (none
    /// for a text-only record).
    pub images: Vec<String>,
    /// The turns.
    pub conversations: Vec<Turn>,
}

/// Why a record, a sample or an image was skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SkipReason {
    /// Not a JSON object of the expected shape.
    Malformed,
    /// No turns, or a turn with empty text.
    EmptyConversation,
    /// Turns do not alternate human/gpt starting with the human, or there is no answer.
    TurnOrder,
    /// The image file is not in the image folder or zip.
    MissingImage,
    /// The image does not decode.
    CorruptImage,
    /// The image's tokens alone do not fit `max_length`.
    TooLong,
    /// Nothing is left to learn after truncation.
    NoLabels,
}

impl SkipReason {
    /// Every reason, in report order.
    pub const ALL: [SkipReason; 7] = [
        SkipReason::Malformed,
        SkipReason::EmptyConversation,
        SkipReason::TurnOrder,
        SkipReason::MissingImage,
        SkipReason::CorruptImage,
        SkipReason::TooLong,
        SkipReason::NoLabels,
    ];

    /// A short snake_case name for reports.
    pub fn name(self) -> &'static str {
        match self {
            SkipReason::Malformed => "malformed",
            SkipReason::EmptyConversation => "empty_conversation",
            SkipReason::TurnOrder => "turn_order",
            SkipReason::MissingImage => "missing_image",
            SkipReason::CorruptImage => "corrupt_image",
            SkipReason::TooLong => "too_long",
            SkipReason::NoLabels => "no_labels",
        }
    }
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A record that was skipped while reading, with where and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRecord {
    /// Position in the file's list.
    pub index: usize,
    /// The record's id, when it had one.
    pub id: Option<String>,
    /// Why it was skipped.
    pub reason: SkipReason,
    /// Details.
    pub detail: String,
}

#[derive(Deserialize)]
struct RawRecord {
    id: Option<serde_json::Value>,
    image: Option<serde_json::Value>,
    conversations: Option<Box<RawValue>>,
}

#[derive(Deserialize)]
struct RawTurn {
    from: Option<String>,
    value: Option<String>,
}

/// Checks one element of the list (its JSON bytes).
pub(crate) fn check(index: usize, bytes: &[u8]) -> Result<Record, BadRecord> {
    let bad = |id: Option<String>, reason, detail: String| BadRecord {
        index,
        id,
        reason,
        detail,
    };
    let record: RawRecord = serde_json::from_slice(bytes).map_err(|e| {
        // Name the record even when the rest of it is malformed.
        bad(id_of(bytes), SkipReason::Malformed, e.to_string())
    })?;
    let id = match record.id {
        Some(serde_json::Value::String(s)) => s,
        Some(serde_json::Value::Number(n)) => n.to_string(),
        _ => {
            return Err(bad(
                None,
                SkipReason::Malformed,
                "no string or number `id`".into(),
            ));
        }
    };
    let turns: Option<Vec<RawTurn>> = match record.conversations {
        None => None,
        Some(raw) if raw.get() == "null" => None,
        Some(raw) => Some(serde_json::from_str(raw.get()).map_err(|e| {
            bad(
                Some(id.clone()),
                SkipReason::Malformed,
                format!("`conversations`: {e}"),
            )
        })?),
    };
    let path = |v: serde_json::Value| match v {
        serde_json::Value::String(s) if !s.trim().is_empty() => Some(s),
        _ => None,
    };
    let images = match record.image {
        None | Some(serde_json::Value::Null) => Vec::new(),
        Some(serde_json::Value::Array(list)) if !list.is_empty() => {
            match list.into_iter().map(path).collect::<Option<Vec<_>>>() {
                Some(images) => images,
                None => {
                    return Err(bad(
                        Some(id),
                        SkipReason::Malformed,
                        "`image` lists something that is not a path".into(),
                    ));
                }
            }
        }
        Some(value) => match path(value) {
            Some(image) => vec![image],
            None => {
                return Err(bad(
                    Some(id),
                    SkipReason::Malformed,
                    "`image` is not a path or a list of paths".into(),
                ));
            }
        },
    };
    let Some(turns) = turns.filter(|t| !t.is_empty()) else {
        return Err(bad(
            Some(id),
            SkipReason::EmptyConversation,
            "no turns".into(),
        ));
    };
    let mut conversations = Vec::with_capacity(turns.len());
    for (i, turn) in turns.into_iter().enumerate() {
        let from = match turn.from.as_deref() {
            Some("human" | "user") => Speaker::Human,
            Some("gpt" | "assistant" | "model") => Speaker::Gpt,
            other => {
                return Err(bad(
                    Some(id),
                    SkipReason::Malformed,
                    format!("turn {i}: unknown speaker {other:?}"),
                ));
            }
        };
        let value = turn.value.unwrap_or_default();
        if value.trim().is_empty() {
            return Err(bad(
                Some(id),
                SkipReason::EmptyConversation,
                format!("turn {i} is empty"),
            ));
        }
        let expected = if i % 2 == 0 {
            Speaker::Human
        } else {
            Speaker::Gpt
        };
        if from != expected {
            return Err(bad(
                Some(id),
                SkipReason::TurnOrder,
                format!("turn {i} is {from:?}, expected {expected:?}"),
            ));
        }
        conversations.push(Turn { from, value });
    }
    if conversations.len() < 2 {
        return Err(bad(
            Some(id),
            SkipReason::TurnOrder,
            "a question without an answer".into(),
        ));
    }
    Ok(Record {
        id,
        images,
        conversations,
    })
}

/// The `id` of a record whose other fields are malformed, when the element is an object with a
/// string or number `id`.
fn id_of(bytes: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct IdOnly {
        id: Option<serde_json::Value>,
    }
    // Only `id` is read; other fields are skipped whatever their types.
    match serde_json::from_slice::<IdOnly>(bytes).ok()?.id? {
        serde_json::Value::String(s) => Some(s),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// What reading a data file gives: the usable records and the skipped ones.
#[derive(Debug, Default)]
pub struct Records {
    /// Records that passed the checks, in file order.
    pub records: Vec<Record>,
    /// Records that did not.
    pub bad: Vec<BadRecord>,
}

/// Reads a LLaVA data file (a JSON list of records) into memory. A file that is not a JSON list is
/// an error; a bad element is a [`BadRecord`]. Training and `llava data check` use
/// [`crate::RecordFile`] instead, which keeps only an index.
pub fn read_records(path: impl AsRef<Path>) -> Result<Records> {
    let path = path.as_ref();
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    read_from(path, file)
}

/// Parses records from JSON text (tests, small inline datasets).
pub fn parse_records(text: &str) -> Result<Records> {
    read_from(Path::new("<json>"), text.as_bytes())
}

fn read_from(path: &Path, reader: impl std::io::Read) -> Result<Records> {
    let mut out = Records::default();
    crate::scan::scan_elements(path, reader, |block, _| {
        let checked: Vec<_> = block.par_iter().map(|e| check(e.index, &e.bytes)).collect();
        for result in checked {
            match result {
                Ok(record) => out.records.push(record),
                Err(bad) => out.bad.push(bad),
            }
        }
        Ok(())
    })?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_cc3m_record_reads() {
        let text = r#"[{"id": "GCC_train_002582585", "image": "GCC_train_002582585.jpg",
            "conversations": [{"from": "human", "value": "Provide a brief description of the given image.\n<image>"},
                              {"from": "gpt", "value": "olive oil is a healthy ingredient used liberally ."}]}]"#;
        let r = parse_records(text).unwrap();
        assert!(r.bad.is_empty());
        assert_eq!(r.records[0].id, "GCC_train_002582585");
        assert_eq!(r.records[0].images, ["GCC_train_002582585.jpg"]);
        assert_eq!(r.records[0].conversations[1].from, Speaker::Gpt);
    }

    #[test]
    fn every_kind_of_bad_record_is_skipped_and_named() {
        let text = r#"[
            {"id": 1, "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]},
            {"id": "no-turns", "image": "a.jpg", "conversations": []},
            {"id": "empty-turn", "conversations": [{"from": "human", "value": " "}, {"from": "gpt", "value": "x"}]},
            {"id": "order", "conversations": [{"from": "gpt", "value": "a"}, {"from": "human", "value": "b"}]},
            {"id": "unanswered", "conversations": [{"from": "human", "value": "a"}]},
            {"id": "speaker", "conversations": [{"from": "bot", "value": "a"}, {"from": "gpt", "value": "b"}]},
            {"conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"}]},
            {"id": "types", "conversations": "not a list"},
            "not an object",
            {"id": "ok", "image": "x/y.jpg", "conversations": [{"from": "human", "value": "<image>\nq"}, {"from": "gpt", "value": "a"}]},
            {"id": "two", "image": ["a.jpg", "b.jpg"], "conversations": [{"from": "human", "value": "<image><image>q"}, {"from": "gpt", "value": "a"}]},
            {"id": "list-of-junk", "image": ["a.jpg", 3], "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]},
            {"id": "empty-list", "image": [], "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}
        ]"#;
        let r = parse_records(text).unwrap();
        assert_eq!(
            r.records.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
            ["1", "ok", "two"]
        );
        assert_eq!(r.records[2].images, ["a.jpg", "b.jpg"]);
        let reasons: Vec<(usize, SkipReason)> = r.bad.iter().map(|b| (b.index, b.reason)).collect();
        assert_eq!(
            reasons,
            [
                (1, SkipReason::EmptyConversation),
                (2, SkipReason::EmptyConversation),
                (3, SkipReason::TurnOrder),
                (4, SkipReason::TurnOrder),
                (5, SkipReason::Malformed),
                (6, SkipReason::Malformed),
                (7, SkipReason::Malformed),
                (8, SkipReason::Malformed),
                (11, SkipReason::Malformed),
                (12, SkipReason::Malformed),
            ]
        );
        assert_eq!(r.bad[0].id.as_deref(), Some("no-turns"));
        // Malformed fields do not hide a readable id.
        assert_eq!(r.bad[6].id.as_deref(), Some("types"));
        assert_eq!(r.bad[4].id.as_deref(), Some("speaker"));
        assert_eq!(r.bad[5].id, None);
        let typed = parse_records(
            r#"[{"id": 42, "conversations": [{"from": "human", "value": 3}]},
                {"id": "img", "image": ["a.jpg"], "conversations": []}]"#,
        )
        .unwrap();
        let ids: Vec<_> = typed.bad.iter().map(|b| b.id.as_deref()).collect();
        assert_eq!(ids, [Some("42"), Some("img")]);
    }

    #[test]
    fn a_file_that_is_not_a_list_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chat.json");
        std::fs::write(&path, r#"{"id": 1}"#).unwrap();
        let err = read_records(&path).unwrap_err().to_string();
        assert!(err.contains("chat.json"), "{err}");
        std::fs::write(&path, r#"[{"id": 1}, "#).unwrap();
        assert!(read_records(&path).is_err(), "truncated file");
    }
}
