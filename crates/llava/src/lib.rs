//! LLaVA-Gemma in Rust: the facade over the workspace's crates, and the `llava` command.
//!
//! Each part is its own crate, re-exported here so that one dependency gives the whole system:
//! [`foundation`] (checkpoints, devices), [`gemma_lm`] (the language model), [`vision_encoders`],
//! [`connector`], [`llava_model`], [`data`], [`trainer`] and [`eval`]. [`parity`] checks our models
//! against reference outputs of Hugging Face `transformers`.

pub use {connector, data, eval, foundation, gemma_lm, llava_model, trainer, vision_encoders};

pub mod bench;
pub mod chat;
pub mod data_cmd;
pub mod eval_cmd;
pub mod launch;
pub mod parity;
pub mod score_cmd;

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
