use std::path::PathBuf;

/// Errors of checkpoint and configuration handling; each names the file or tensor involved.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// A JSON file (config, shard index) did not parse or has the wrong shape.
    #[error("{path}: {message}")]
    Json {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// A safetensors file is malformed.
    #[error("{path}: not a valid safetensors file: {message}")]
    Safetensors {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// A directory holds no checkpoint we can read.
    #[error("{path}: no model.safetensors, model.safetensors.index.json or *.safetensors file")]
    NoCheckpoint {
        /// The directory.
        path: PathBuf,
    },
    /// The model needs a tensor that the checkpoint does not have.
    #[error("tensor `{name}` is missing from the checkpoint in {location} (looked for: {tried})")]
    MissingTensor {
        /// The model's name for the tensor.
        name: String,
        /// The checkpoint's directory or file.
        location: PathBuf,
        /// The checkpoint names that were tried.
        tried: String,
    },
    /// The checkpoint has tensors that no module of the model takes: another architecture, or a
    /// configuration that does not describe this checkpoint.
    #[error(
        "{count} tensor(s) of the checkpoint in {location} belong to no module of this model \
         (another architecture, or a config.json that does not match?): {names}"
    )]
    UnusedTensors {
        /// The checkpoint's directory or file.
        location: PathBuf,
        /// How many.
        count: usize,
        /// The first few of them.
        names: String,
    },
    /// A tensor exists but has the wrong shape for the model's configuration.
    #[error(
        "tensor `{name}` in {file}: the checkpoint has shape {found:?}, the model expects {expected:?}"
    )]
    ShapeMismatch {
        /// The checkpoint's name for the tensor.
        name: String,
        /// The file holding it.
        file: PathBuf,
        /// The model's shape.
        expected: Vec<i64>,
        /// The checkpoint's shape.
        found: Vec<i64>,
    },
    /// A tensor is stored in a dtype libtorch cannot hold.
    #[error("tensor `{name}` in {file}: unsupported dtype {dtype}")]
    UnsupportedDtype {
        /// The checkpoint's name for the tensor.
        name: String,
        /// The file holding it.
        file: PathBuf,
        /// The stored dtype.
        dtype: String,
    },
    /// A tensor is stored as integers where the model holds floating point, or the other way
    /// round (a file written wrongly, or a header that lies).
    #[error(
        "tensor `{name}` in {file}: stored as {found}, but the model holds it as {expected}: a {found} tensor cannot be a {expected} weight"
    )]
    DtypeMismatch {
        /// The checkpoint's name for the tensor.
        name: String,
        /// The file holding it.
        file: PathBuf,
        /// The model's dtype.
        expected: String,
        /// The stored dtype.
        found: String,
    },
    /// A parity fixture lacks something its kind needs (an input tensor, …).
    #[error("{path}: {message}")]
    Fixture {
        /// The fixture directory.
        path: PathBuf,
        /// What is missing or wrong.
        message: String,
    },
    /// A model named by a Hugging Face id could not be found or fetched.
    #[error("model `{model}`: {message}")]
    Hub {
        /// The model as named.
        model: String,
        /// Where we looked and what failed.
        message: String,
    },
    /// A device that this machine does not have.
    #[error("device `{device}` is not available: {reason}; use --device cpu")]
    DeviceUnavailable {
        /// The device as named.
        device: String,
        /// Why it cannot be used.
        reason: String,
    },
    /// A device or dtype name that we do not know.
    #[error("unknown {what} `{value}` (expected one of: {expected})")]
    UnknownName {
        /// `device` or `dtype`.
        what: &'static str,
        /// The name given.
        value: String,
        /// The names accepted.
        expected: &'static str,
    },
    /// libtorch reported an error.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
