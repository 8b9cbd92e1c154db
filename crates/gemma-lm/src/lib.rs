//! Gemma, the language model of LLaVA-Gemma, on libtorch and exact to Hugging Face `transformers`.
//!
//! * [`GemmaConfig`]: `config.json` field for field, with [`GemmaConfig::gemma_2b`] and
//!   [`GemmaConfig::gemma_7b`];
//! * [`Gemma`]: the decoder and its tied head, loaded from one or sharded safetensors files, in f32,
//!   bf16 or f16, on CPU or CUDA; [`Gemma::loss`] computes logits only where labels are;
//! * [`generate`]: greedy or sampled decoding with a preallocated [`KvCache`], batched prompts and
//!   stop tokens;
//! * [`GemmaTokenizer`] and [`apply_chat_template`]: `tokenizer.json` and the Gemma chat format.
//!
//! ```no_run
//! use gemma_lm::{Gemma, GemmaTokenizer, GenerationConfig, Message, generate};
//! # fn main() -> gemma_lm::Result<()> {
//! let (_vs, model) = Gemma::from_pretrained("gemma-2b-it", tch::Device::Cpu, tch::Kind::Float)?;
//! let tokenizer = GemmaTokenizer::from_file("gemma-2b-it")?;
//! let prompt = tokenizer.encode_chat(&[Message::user("Why is the sky blue?")], true)?;
//! let config = GenerationConfig { stop_tokens: tokenizer.chat_stop_tokens(), ..Default::default() };
//! let answer = generate(&model, &[prompt], &config, |_, _| {})?;
//! println!("{}", tokenizer.decode(&answer[0], true)?);
//! # Ok(()) }
//! ```

pub mod attention;
pub mod batch;
pub mod cache;
pub mod config;
pub mod decode;
mod error;
pub mod generation;
pub mod gguf;
mod layer;
pub mod lora;
mod mlp;
pub mod model;
mod norm;
pub mod parity;
mod rotary;
pub mod tokenizer;

pub use batch::SlotCache;
pub use cache::LayerCache;

/// Held by unit tests that use libtorch's process-wide generator (building a model draws its
/// random start from it; adapter dropout reseeds it), so parallel tests do not draw from each
/// other's sequence.
#[cfg(test)]
pub(crate) static GLOBAL_RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[cfg(test)]
pub(crate) fn global_rng() -> std::sync::MutexGuard<'static, ()> {
    GLOBAL_RNG.lock().unwrap_or_else(|e| e.into_inner())
}
pub use attention::{AttentionPlan, AttentionRecord, Blocks, Packing};
pub use cache::KvCache;
pub use config::{Activation, GemmaConfig, Generation, LayerType, Rope, RopeSpec, TokenIds};
pub use decode::Decode;
pub use error::{Error, Result};
pub use generation::{
    GenerationConfig, Sampler, generate, generate_from_embeds, generate_from_embeds_with, left_pad,
};
pub use lora::LoraSpec;
pub use model::{Gemma, IGNORE_INDEX, ModelOutput};
pub use tokenizer::{
    ChatTemplate, GemmaTokenizer, Message, Role, TextStreamer, apply_chat_template,
};
