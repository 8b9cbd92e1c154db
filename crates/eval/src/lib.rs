//! Evaluation. So far: the held-out split of the built-in synthetic dataset ([`synthetic`]), scored
//! by exact match per question kind, with the same questions asked about the wrong images to show
//! whether the model looks. The paper's seven benchmarks arrive with issue 7.

pub mod synthetic;
