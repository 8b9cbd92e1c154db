//! A data file's records kept where they are: an index of byte ranges, each record read and parsed
//! again when a batch needs it.
//!
//! Opening a file is one streaming pass: a byte scanner splits the JSON list into its elements
//! without building any document, and each block of elements is parsed and checked on rayon's
//! threads. What stays in memory is 24 bytes per record (its byte range, its place in the list and
//! LLaVA's cheap length estimate) and the skipped records, so the 665K mix (871 MB) costs about
//! 16 MB however long its conversations are. Reading a record is one positioned read.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use crate::record::{BadRecord, Record, SkipReason, check};
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

/// Where one usable record lies.
#[derive(Debug, Clone, Copy)]
struct Entry {
    offset: u64,
    len: u32,
    index: u32,
    modality_length: i64,
}

/// The usable records of a LLaVA data file, indexed by byte range and read on demand.
#[derive(Debug)]
pub struct RecordFile {
    path: PathBuf,
    file: File,
    entries: Vec<Entry>,
    elements: usize,
}

impl RecordFile {
    /// Indexes the JSON list in `path`: checks every element once (in parallel), keeps the byte
    /// ranges of the usable ones and returns the skipped ones. A file that is not a JSON list is an
    /// error naming it; a bad element costs that element only.
    pub fn open(path: impl AsRef<Path>) -> Result<(RecordFile, Vec<BadRecord>)> {
        Self::open_with_progress(path, |_, _| {})
    }

    /// [`RecordFile::open`], calling `progress(bytes_read, file_size)` after each block.
    pub fn open_with_progress(
        path: impl AsRef<Path>,
        mut progress: impl FnMut(u64, u64),
    ) -> Result<(RecordFile, Vec<BadRecord>)> {
        let path = path.as_ref();
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let size = file.metadata().map_err(|e| Error::io(path, e))?.len();
        let mut entries = Vec::new();
        let mut bad = Vec::new();
        let elements = scan_elements(path, &file, |block, read| {
            let checked: Vec<_> = block
                .par_iter()
                .map(|e| check(e.index, &e.bytes).map(|r| modality_length(&r)))
                .collect();
            for (element, result) in block.iter().zip(checked) {
                match result {
                    Ok(modality_length) => entries.push(Entry {
                        offset: element.offset,
                        len: u32::try_from(element.bytes.len()).map_err(|_| Error::Format {
                            path: path.to_path_buf(),
                            message: format!("record #{} is larger than 4 GiB", element.index),
                        })?,
                        index: u32::try_from(element.index).map_err(|_| Error::Format {
                            path: path.to_path_buf(),
                            message: "more than 4 billion records".into(),
                        })?,
                        modality_length,
                    }),
                    Err(b) => bad.push(b),
                }
            }
            progress(read, size);
            Ok(())
        })?;
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        Ok((
            RecordFile {
                path: path.to_path_buf(),
                file,
                entries,
                elements,
            },
            bad,
        ))
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Usable records.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no record is usable.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Elements in the file's list, usable or not.
    pub fn elements(&self) -> usize {
        self.elements
    }

    /// The position in the file's list of usable record `i`.
    pub fn element_index(&self, i: usize) -> usize {
        self.entries[i].index as usize
    }

    /// LLaVA's `modality_lengths` of usable record `i` (see [`modality_length`]).
    pub fn modality_length(&self, i: usize) -> i64 {
        self.entries[i].modality_length
    }

    /// Reads and parses usable record `i`. It passed the checks when the file was indexed, so an
    /// error here means the file changed underneath (or could not be read): the record is skipped
    /// as malformed.
    pub fn get(&self, i: usize) -> Result<Record, BadRecord> {
        let entry = self.entries[i];
        let mut bytes = vec![0u8; entry.len as usize];
        read_at(&self.file, &mut bytes, entry.offset).map_err(|e| BadRecord {
            index: entry.index as usize,
            id: None,
            reason: SkipReason::Malformed,
            detail: format!("{}: {e}", self.path.display()),
        })?;
        check(entry.index as usize, &bytes)
    }

    /// The id of usable record `i` (`#<index>` when it can no longer be read).
    pub fn id(&self, i: usize) -> String {
        match self.get(i) {
            Ok(record) => record.id,
            Err(bad) => bad.id.unwrap_or_else(|| format!("#{}", bad.index)),
        }
    }

    /// Every usable record, in file order (small files: tests, `llava data show --id`).
    pub fn iter(&self) -> impl Iterator<Item = Result<Record, BadRecord>> + '_ {
        (0..self.len()).map(|i| self.get(i))
    }
}

#[cfg(unix)]
fn read_at(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(file, buf, offset)
}

#[cfg(not(unix))]
fn read_at(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    use std::io::{Seek, SeekFrom};
    let mut file = file.try_clone()?;
    file.seek(SeekFrom::Start(offset))?;
    file.read_exact(buf)
}

/// LLaVA's cheap length estimate of a record: its words, plus 128 for an image; positive for image
/// records and negative for text-only ones (`LazySupervisedDataset.modality_lengths`).
pub fn modality_length(record: &Record) -> i64 {
    let words: usize = record
        .conversations
        .iter()
        .map(|t| t.value.split_whitespace().count())
        .sum();
    if record.image.is_some() {
        words as i64 + 128
    } else {
        -(words as i64).max(1)
    }
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
