//! A data file's records kept where they are: an index of byte ranges, each record read and parsed
//! again when a batch needs it.
//!
//! Opening a file is one streaming pass: a byte scanner splits the JSON list into its elements
//! without building any document, and each block of elements is parsed and checked on rayon's
//! threads. What stays in memory is 24 bytes per record (its byte range, its place in the list and
//! LLaVA's cheap length estimate) and the skipped records, so the 665K mix (871 MB) costs about
//! 16 MB however long its conversations are. Reading a record is one positioned read.

use std::fs::File;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use crate::record::{BadRecord, Record, SkipReason, check};
use crate::scan::scan_elements;
use crate::{Error, Result};

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
    use std::io::{Read, Seek, SeekFrom};
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
    if !record.images.is_empty() {
        words as i64 + 128
    } else {
        -(words as i64).max(1)
    }
}
