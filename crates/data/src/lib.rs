//! The data of the LLaVA-Gemma recipe.
//!
//! * [`record`]: the JSON record format shared by CC3M-595K (`chat.json`), LCS-558K
//!   (`blip_laion_cc_sbu_558k.json`) and `llava_v1_5_mix665k.json`, read element by element with
//!   bad records skipped and counted by reason;
//! * [`store`]: a data file indexed by byte range in one streaming pass, each record read again
//!   when a batch needs it, so memory does not grow with the file;
//! * [`images`]: images from a folder or straight from a zip;
//! * [`template`]: the `gemma` and `plain` templates and the loss mask;
//! * [`mix`]: a generator of files shaped like the 665K mix, for scale tests and benchmarks;
//! * [`synthetic`]: the built-in dataset of coloured shapes, with held-out questions;
//! * [`batch`]: seeded order, LLaVA's modality-length grouping, a resumable position, padded batches
//!   and background prefetch.
//!
//! Everything stays in plain Rust buffers; the trainer turns batches into tensors.

pub mod batch;
pub mod check;
pub mod images;
pub mod mix;
pub mod record;
mod scan;
pub mod store;
pub mod synthetic;
pub mod template;

use std::path::PathBuf;

pub use batch::{
    Batch, Dataset, Loader, Sample, SkipCounter, collate, collate_packed, modality_grouped,
    shuffled,
};
pub use check::{CheckReport, check, check_with_progress};
pub use images::ImageSource;
pub use record::{BadRecord, Record, Records, SkipReason, Speaker, Turn, read_records};
pub use store::{RecordFile, modality_length};
pub use template::{IGNORE, Template, Templater, Tokenized};

/// The tiny Gemma-style tokenizer (640 tokens, `<image>` included) that the synthetic dataset and
/// the tiny models use; also the default of `llava data check` when no tokenizer is given.
pub fn builtin_tokenizer() -> gemma_lm::GemmaTokenizer {
    const JSON: &str = include_str!("../../../fixtures/hf-parity/tokenizer/model/tokenizer.json");
    gemma_lm::GemmaTokenizer::from_json(JSON, "<built-in tiny tokenizer>")
        .expect("the built-in tokenizer parses")
}

/// Errors of the data crate; each names the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// A file is not in the expected format.
    #[error("{path}: {message}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// From the tokenizer.
    #[error(transparent)]
    Tokenizer(#[from] gemma_lm::Error),
}

impl Error {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
