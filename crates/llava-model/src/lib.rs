//! The composed vision-language models: a frozen vision tower, a connector and Gemma, as LLaVA,
//! Gemma 3 (`Gemma3ForConditionalGeneration`) and PaliGemma compose them ([`config::Family`]).
//!
//! * [`LlavaConfig`]: the HF `config.json` of `LlavaForConditionalGeneration`;
//! * [`LlavaModel`]: image features scattered into the `<image>` positions of the token embeddings,
//!   the loss at labelled positions, and generation with a KV cache;
//! * loading every HF LLaVA layout in use, assembling a model from a Gemma, a tower and a connector
//!   file ([`Parts`]), and saving in the layout transformers loads ([`LlavaModel::save_pretrained`]);
//! * [`prompt`]: each family's prompts with images, as its transformers processor writes them;
//! * [`explain`]: relevancy and attention maps of a generated answer;
//! * [`parity`]: the model against Hugging Face's outputs on a `llava`, `gemma3` or `paligemma`
//!   parity fixture.

pub mod checkpoint;
pub mod config;
pub mod explain;
pub mod gguf;
pub mod model;
pub mod parity;
pub mod peft;
pub mod presets;
pub mod processor_files;
pub mod prompt;

use std::path::PathBuf;

pub use checkpoint::{IMAGE_TOKEN, Parts, with_image_marks};
pub use config::{FeatureLayers, LlavaConfig};
pub use model::LlavaModel;
pub use peft::AdapterConfig;
pub use prompt::PromptFormat;

/// Errors of the LLaVA model.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// From the language model.
    #[error(transparent)]
    Gemma(#[from] gemma_lm::Error),
    /// From the vision tower.
    #[error(transparent)]
    Vision(#[from] vision_encoders::Error),
    /// From image decoding and preprocessing.
    #[error(transparent)]
    Image(#[from] vision_encoders::processing::Error),
    /// From the connector.
    #[error(transparent)]
    Connector(#[from] connector::Error),
    /// From checkpoint handling.
    #[error(transparent)]
    Checkpoint(#[from] foundation::Error),
    /// A file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// `config.json` is not a LLaVA configuration we can build.
    #[error("{path}: {message}")]
    Config {
        /// The configuration file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A PEFT adapter that cannot be read or applied.
    #[error("{path}: {message}")]
    Adapter {
        /// The adapter's file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// Inputs that do not fit the model.
    #[error("invalid input: {0}")]
    Input(String),
    /// libtorch reported an error.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
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
