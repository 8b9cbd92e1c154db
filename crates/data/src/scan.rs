//! The byte scanner that splits a JSON list into its elements without parsing them, shared by
//! `read_records` (records kept in memory) and `RecordFile` (records indexed by byte range), which
//! both sit above it.

use std::io::Read;
use std::path::Path;

use crate::{Error, Result};

/// Elements are parsed in blocks of about this many bytes.
const BLOCK_BYTES: usize = 8 << 20;

/// One element of the list: where it is and its bytes.
pub(crate) struct Element {
    /// Position in the list.
    pub index: usize,
    /// Byte offset of its first byte in the file.
    pub offset: u64,
    /// Its bytes.
    pub bytes: Vec<u8>,
}

/// Where the scanner is in the list.
#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    /// Before the opening `[`.
    Start,
    /// Between elements; `comma` when the last thing seen was a separating comma.
    Between { comma: bool, any: bool },
    /// Inside an element: nesting depth (0 for a bare scalar).
    Inside { depth: u32 },
    /// After the closing `]`.
    End,
}

/// Splits the JSON list read from `reader` into its elements without parsing them, handing them to `block`
/// in groups of about [`BLOCK_BYTES`] together with the bytes read so far. Returns the number of
/// elements. Each element's syntax is the parser's business; the scanner tracks only strings,
/// brackets and the separating commas, so a broken element costs that element, while a file that
/// is not a list, ends early or has trailing text is an error naming it.
pub(crate) fn scan_elements(
    path: &Path,
    reader: impl Read,
    mut block: impl FnMut(&[Element], u64) -> Result<()>,
) -> Result<usize> {
    let format = |message: String| Error::Format {
        path: path.to_path_buf(),
        message,
    };
    let mut reader = reader;
    let mut chunk = vec![0u8; 1 << 20];
    let mut state = State::Start;
    let (mut in_string, mut escape) = (false, false);
    let mut base = 0u64;
    let mut elements = Elements::default();
    loop {
        let n = reader.read(&mut chunk).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        let bytes = &chunk[..n];
        // Start of the current element within this chunk, when it began here.
        let mut from: Option<usize> = matches!(state, State::Inside { .. }).then_some(0);
        let mut i = 0;
        while i < n {
            let b = bytes[i];
            if in_string {
                // Skip to the next quote or backslash quickly.
                if escape {
                    escape = false;
                } else if b == b'\\' {
                    escape = true;
                } else if b == b'"' {
                    in_string = false;
                    if state == (State::Inside { depth: 0 }) {
                        // A bare string element ends with its closing quote.
                        let start = from.take().expect("an element is open");
                        elements.close(&bytes[start..=i]);
                        state = State::Between {
                            comma: false,
                            any: true,
                        };
                    }
                }
                i += 1;
                continue;
            }
            match state {
                State::Start => match b {
                    b'[' => {
                        state = State::Between {
                            comma: false,
                            any: false,
                        }
                    }
                    b' ' | b'\n' | b'\r' | b'\t' => {}
                    0xEF if base == 0 && i == 0 => {
                        // A UTF-8 byte order mark.
                        if bytes.get(..3) == Some(&[0xEF, 0xBB, 0xBF][..]) {
                            i += 2;
                        } else {
                            return Err(format("not a JSON list of records".into()));
                        }
                    }
                    _ => {
                        return Err(format(
                            "not a JSON list of records (it does not start with `[`)".into(),
                        ));
                    }
                },
                State::Between { comma, any } => match b {
                    b' ' | b'\n' | b'\r' | b'\t' => {}
                    b',' if any && !comma => state = State::Between { comma: true, any },
                    b',' => {
                        return Err(format(format!(
                            "byte {}: a comma where a record should be",
                            base + i as u64
                        )));
                    }
                    b']' if comma => {
                        return Err(format(format!(
                            "byte {}: a trailing comma before `]`",
                            base + i as u64
                        )));
                    }
                    b']' => state = State::End,
                    _ if any && !comma => {
                        return Err(format(format!(
                            "byte {}: a missing comma after record #{}",
                            base + i as u64,
                            elements.count - 1
                        )));
                    }
                    _ => {
                        from = Some(i);
                        elements.offset = base + i as u64;
                        match b {
                            b'{' | b'[' => state = State::Inside { depth: 1 },
                            b'"' => {
                                in_string = true;
                                state = State::Inside { depth: 0 };
                            }
                            _ => state = State::Inside { depth: 0 },
                        }
                    }
                },
                State::Inside { depth } => {
                    let mut close = false;
                    match b {
                        b'"' => in_string = true,
                        b'{' | b'[' => state = State::Inside { depth: depth + 1 },
                        b'}' | b']' if depth > 0 => {
                            state = State::Inside { depth: depth - 1 };
                            close = depth == 1;
                        }
                        b',' | b']' | b' ' | b'\n' | b'\r' | b'\t' if depth == 0 => {
                            // The end of a bare scalar: the delimiter belongs to the list.
                            let start = from.take().expect("an element is open");
                            elements.close(&bytes[start..i]);
                            state = State::Between {
                                comma: false,
                                any: true,
                            };
                            continue; // Look at the delimiter again, between elements.
                        }
                        _ => {}
                    }
                    if close {
                        let start = from.take().expect("an element is open");
                        elements.close(&bytes[start..=i]);
                        state = State::Between {
                            comma: false,
                            any: true,
                        };
                    }
                }
                State::End => match b {
                    b' ' | b'\n' | b'\r' | b'\t' => {}
                    _ => {
                        return Err(format(format!(
                            "byte {}: text after the end of the list",
                            base + i as u64
                        )));
                    }
                },
            }
            i += 1;
        }
        if let Some(start) = from {
            elements.current.extend_from_slice(&bytes[start..n]);
        }
        base += n as u64;
        if elements.pending_bytes >= BLOCK_BYTES {
            block(&elements.pending, base)?;
            elements.pending.clear();
            elements.pending_bytes = 0;
        }
    }
    if state != State::End {
        return Err(format(format!(
            "the file ends before the list does (after {} records): is it truncated?",
            elements.count
        )));
    }
    if !elements.pending.is_empty() {
        block(&elements.pending, base)?;
    }
    Ok(elements.count)
}

/// The scanner's elements: the one being read and the finished ones not yet handed on.
#[derive(Default)]
struct Elements {
    /// The bytes of the element being read, from earlier chunks.
    current: Vec<u8>,
    /// Its offset in the file.
    offset: u64,
    /// Elements finished so far.
    count: usize,
    /// Finished elements not yet handed to the block callback, and their bytes.
    pending: Vec<Element>,
    pending_bytes: usize,
}

impl Elements {
    /// Ends the current element with `tail`, its last bytes in this chunk.
    fn close(&mut self, tail: &[u8]) {
        self.current.extend_from_slice(tail);
        self.pending_bytes += self.current.len();
        self.pending.push(Element {
            index: self.count,
            offset: self.offset,
            bytes: std::mem::take(&mut self.current),
        });
        self.count += 1;
    }
}

#[cfg(test)]
mod tests {
    use std::fs::File;

    use super::*;

    fn scan(text: &str) -> Result<Vec<(usize, u64, String)>> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data.json");
        std::fs::write(&path, text).unwrap();
        let file = File::open(&path).unwrap();
        let mut out = Vec::new();
        scan_elements(&path, file, |block, _| {
            out.extend(block.iter().map(|e| {
                (
                    e.index,
                    e.offset,
                    String::from_utf8(e.bytes.clone()).unwrap(),
                )
            }));
            Ok(())
        })?;
        Ok(out)
    }

    #[test]
    fn elements_and_their_offsets() {
        let text = r#" [ {"a": "x,]}\"y"}, 12 ,"s]" ,[1,[2]], true,{"b":{}}]  "#;
        let got = scan(text).unwrap();
        let texts: Vec<&str> = got.iter().map(|g| g.2.as_str()).collect();
        assert_eq!(
            texts,
            [
                r#"{"a": "x,]}\"y"}"#,
                "12",
                r#""s]""#,
                "[1,[2]]",
                "true",
                r#"{"b":{}}"#
            ]
        );
        for (index, offset, s) in &got {
            assert_eq!(&text[*offset as usize..][..s.len()], s, "element {index}");
        }
        assert!(scan("[]").unwrap().is_empty());
        assert!(scan("\u{feff}[1]").unwrap().len() == 1);
    }

    #[test]
    fn broken_lists_are_errors_naming_the_file() {
        for bad in [
            "", "{}", "[1,", "[1 2]", "[1,,2]", "[1,]", "[1] x", r#"["abc"#, "[{",
        ] {
            let err = scan(bad).unwrap_err().to_string();
            assert!(err.contains("data.json"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn elements_across_read_chunks_are_whole() {
        let long = "y".repeat(3 << 20);
        let text = format!(r#"[{{"id": 1, "v": "{long}"}}, {{"id": 2}}]"#);
        let got = scan(&text).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].2.len(), long.len() + 18);
        assert_eq!(got[1].2, r#"{"id": 2}"#);
    }
}
