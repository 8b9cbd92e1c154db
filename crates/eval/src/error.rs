//! The error type of evaluation, shared by every module of the crate.

/// Errors of evaluation.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read or parsed.
    #[error("{0}")]
    File(String),
    /// From the model.
    #[error(transparent)]
    Model(#[from] llava_model::Error),
    /// From the tokenizer.
    #[error(transparent)]
    Gemma(#[from] gemma_lm::Error),
}
