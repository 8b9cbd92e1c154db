//! The LLaVA datasets (CC3M-595K, LCS-558K, the 665K instruction mix), templates, loss masks and batching.
//!
//! The readers arrive with issue 5; the crate exists now so that the workspace layout is final.
