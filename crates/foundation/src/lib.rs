//! The small shared ground the model crates stand on.
//!
//! * [`Checkpoint`]: safetensors checkpoints as they ship (one file, or shards listed by
//!   `model.safetensors.index.json`), memory-mapped, with errors that name the tensor and the file;
//! * [`Checkpoint::load_into`]: fills a `tch` [`VarStore`](tch::nn::VarStore) whose variable names are
//!   built from the module tree, so they match the Hugging Face names exactly;
//! * [`save_safetensors`] and [`write_atomic`]: writes that never leave a half-written file behind;
//! * [`device`]: device and dtype choices (`cpu`, `cuda`, `bf16`, …);
//! * [`layers`]: the few layers every model here shares, initialised as Hugging Face initialises them.

pub mod checkpoint;
pub mod device;
mod error;
pub mod io;
pub mod layers;

pub use checkpoint::{Checkpoint, TensorInfo};
pub use error::{Error, Result};
pub use io::{save_safetensors, write_atomic};
