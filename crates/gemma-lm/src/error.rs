use std::path::PathBuf;

/// Errors of the Gemma crate; each names the file, tensor or value at fault.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading a checkpoint failed (missing or mis-shaped tensor, bad file).
    #[error(transparent)]
    Checkpoint(#[from] foundation::Error),
    /// A file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// `config.json` is not a Gemma configuration we can build.
    #[error("{path}: {message}")]
    Config {
        /// The configuration file (or `<built-in>`).
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// `tokenizer.json` failed to load, encode or decode.
    #[error("tokenizer {path}: {message}")]
    Tokenizer {
        /// The tokenizer file.
        path: PathBuf,
        /// What the tokenizers library said.
        message: String,
    },
    /// A conversation the Gemma chat template cannot express.
    #[error("chat template: {0}")]
    Chat(String),
    /// Inputs that do not fit the model (empty prompt, too long, wrong shape).
    #[error("invalid input: {0}")]
    Input(String),
    /// libtorch reported an error.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
