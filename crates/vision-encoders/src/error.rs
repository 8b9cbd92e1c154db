use std::path::PathBuf;

/// Errors of the vision towers; each names the file, tensor or value at fault.
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
    /// A configuration we cannot build.
    #[error("{path}: {message}")]
    Config {
        /// The configuration file (or `<config>`).
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

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn config_error(message: impl Into<String>) -> Error {
    Error::Config {
        path: "<config>".into(),
        message: message.into(),
    }
}

/// Reads a JSON config file; `dir/config.json` when given a directory.
pub(crate) fn read_json(path: &std::path::Path) -> Result<(PathBuf, serde_json::Value)> {
    let path = if path.is_dir() {
        path.join("config.json")
    } else {
        path.to_path_buf()
    };
    let text = std::fs::read_to_string(&path).map_err(|source| Error::Io {
        path: path.clone(),
        source,
    })?;
    let value = serde_json::from_str(&text).map_err(|e| Error::Config {
        path: path.clone(),
        message: e.to_string(),
    })?;
    Ok((path, value))
}
