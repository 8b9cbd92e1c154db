//! The two-stage LLaVA-Gemma recipe.
//!
//! So far: [`optim::AdamW`] with state a checkpoint can hold, global-norm clipping, and the
//! [`schedule::WarmupCosine`] learning rate. The training loop, checkpoints and the `pretrain` /
//! `finetune` commands come with the rest of issue 6.

pub mod optim;
pub mod schedule;

pub use optim::{AdamW, AdamWConfig};
pub use schedule::WarmupCosine;
