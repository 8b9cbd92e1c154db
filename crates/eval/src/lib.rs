//! Evaluation on the paper's seven benchmarks with the official scoring rules.
//!
//! The runners and scorers arrive with issue 7; the crate exists now so that the workspace layout is final.
