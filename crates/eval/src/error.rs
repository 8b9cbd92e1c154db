//! The error type of evaluation, shared by every module of the crate.

/// Errors of evaluation.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read or parsed.
    #[error("{0}")]
    File(String),
    /// What was asked for cannot be done as asked: a file it needs was not given, or a benchmark
    /// is unknown.
    #[error("{0}")]
    Request(String),
    /// From the model.
    #[error(transparent)]
    Model(#[from] llava_model::Error),
    /// From the tokenizer.
    #[error(transparent)]
    Gemma(#[from] gemma_lm::Error),
}
