use std::path::PathBuf;

/// Errors of the vision towers; each names the file, tensor or value at fault.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading a checkpoint failed (missing or mis-shaped tensor, bad file).
    #[error(transparent)]
    Checkpoint(#[from] foundation::Error),
    /// Decoding or preprocessing an image failed.
    #[error(transparent)]
    Image(#[from] image_processing::Error),
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

/// Reads a JSON config file (`dir/config.json` when given a directory) and parses it with `parse`;
/// a configuration error names the file.
pub(crate) fn config_from_file<T>(
    path: &std::path::Path,
    parse: impl FnOnce(serde_json::Value) -> Result<T>,
) -> Result<T> {
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
    parse(value).map_err(|e| match e {
        Error::Config { message, .. } => Error::Config { path, message },
        other => other,
    })
}

/// Deserialises a tower's config from a config object: the object itself, or its `vision_config`
/// (full CLIP and LLaVA configs).
pub(crate) fn vision_section<T: serde::de::DeserializeOwned>(
    mut json: serde_json::Value,
) -> Result<T> {
    if let Some(vision) = json.get_mut("vision_config") {
        json = vision.take();
    }
    serde_json::from_value(json).map_err(|e| config_error(e.to_string()))
}
