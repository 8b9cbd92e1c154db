//! Evaluation: the paper's seven benchmarks scored by their official rules and the six recent ones
//! (MMStar, MMMU, OCRBench, AI2D, TextVQA, HallusionBench) by lmms-eval's ([`score`]), each
//! scored from its files ([`scoring`]), where their files sit in LLaVA's `playground/data/eval`
//! layout ([`layout`]) or as VLMEvalKit's TSV and lmms-eval's rows ([`records`], [`recent`]), the
//! runners that answer their questions ([`runner`]), the paper's Table 1 row and the recent row
//! ([`table`]), intervals and paired comparisons ([`stats`]), the manifest that says how a score
//! was made ([`manifest`]), the LLM judges of MM-Vet and MMVP ([`grade`]), and the held-out split
//! of the built-in synthetic dataset ([`synthetic`]), scored by exact match per question kind with
//! the same questions asked about the wrong images to show whether the model looks.

mod error;
pub mod grade;
pub mod layout;
pub mod lmms_eval;
pub mod manifest;
mod prompt;
pub mod recent;
pub mod records;
pub mod runner;
pub mod score;
pub mod scoring;
pub mod stats;
pub mod synthetic;
pub mod table;

pub use error::Error;
