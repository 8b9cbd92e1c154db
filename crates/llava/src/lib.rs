//! LLaVA-Gemma in Rust: the facade over the workspace's crates, and the `llava` command.
//!
//! The facade holds two things:
//!
//! * the crates, re-exported so that one dependency gives the whole system: [`foundation`]
//!   (checkpoints, devices), [`gemma_lm`] (the language model), [`vision_encoders`],
//!   [`connector`], [`llava_model`], [`data`], [`trainer`] and [`eval`];
//! * the few compositions of several crates that a library user calls: [`chat::ImageChat`] (a
//!   model directory, its tokenizer and one image, ready for a conversation), [`benchmarks::run`]
//!   (a model directory answering and scoring benchmarks laid out as LLaVA's
//!   `playground/data/eval`), and [`parity`], which hands a fixture of Hugging Face
//!   `transformers`' reference outputs to the check of the crate that owns its model.
//!
//! Everything only the `llava` command uses (its arguments, the `bench-*` measurements, the
//! launcher of local ranks, the dataset audit's printing) lives with the command, one room per
//! subcommand under `src/cmd/`.

pub use {connector, data, eval, foundation, gemma_lm, llava_model, trainer, vision_encoders};

pub mod benchmarks;
pub mod chat;
pub mod parity;

use std::path::PathBuf;

/// Errors of the facade and the `llava` command.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// From the language model.
    #[error(transparent)]
    Gemma(#[from] gemma_lm::Error),
    /// From the datasets.
    #[error(transparent)]
    Data(#[from] data::Error),
    /// From the composed LLaVA model.
    #[error(transparent)]
    Llava(#[from] llava_model::Error),
    /// From the vision towers.
    #[error(transparent)]
    Vision(#[from] vision_encoders::Error),
    /// From image decoding and preprocessing.
    #[error(transparent)]
    Image(#[from] vision_encoders::processing::Error),
    /// From checkpoint handling.
    #[error(transparent)]
    Foundation(#[from] foundation::Error),
    /// From evaluation.
    #[error(transparent)]
    Eval(#[from] eval::Error),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// A file did not parse.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// Something this build does not do yet.
    #[error("{0}")]
    Unsupported(String),
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

/// `Result` with the facade's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
