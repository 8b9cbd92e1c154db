//! Evaluation: the paper's seven benchmarks scored by their official rules ([`score`]), each
//! scored from its files ([`scoring`]), where their files sit in LLaVA's `playground/data/eval`
//! layout ([`layout`]), the runners that answer their question files ([`runner`]), the paper's
//! Table 1 row ([`table`]), the LLM judges of MM-Vet and MMVP ([`grade`]), and the held-out split
//! of the built-in synthetic dataset ([`synthetic`]), scored by exact match per question kind with
//! the same questions asked about the wrong images to show whether the model looks.

mod error;
pub mod grade;
pub mod layout;
mod prompt;
pub mod records;
pub mod runner;
pub mod score;
pub mod scoring;
pub mod stats;
pub mod synthetic;
pub mod table;

pub use error::Error;
