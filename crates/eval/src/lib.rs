//! Evaluation: the paper's seven benchmarks scored by their official rules ([`score`]), the
//! runners that answer their question files ([`runner`]), and the held-out split of the built-in
//! synthetic dataset ([`synthetic`]), and the LLM judges of MM-Vet and MMVP ([`grade`]), scored by exact match per question kind with the same
//! questions asked about the wrong images to show whether the model looks.

mod error;
pub mod grade;
mod prompt;
pub mod runner;
pub mod score;
pub mod synthetic;

pub use error::Error;
