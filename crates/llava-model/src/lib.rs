//! The composed LLaVA model: vision tower + connector + Gemma, and the checkpoint layouts in use.
//!
//! The model arrives with issue 4; the crate exists now so that the workspace layout is final.
