//! The two-stage LLaVA-Gemma recipe: connector pretraining, then instruction finetuning.
//!
//! The trainer arrives with issue 6; the crate exists now so that the workspace layout is final.
