//! Parity with Hugging Face `transformers`: runs our models on fixtures that hold the reference
//! outputs (`fixtures/hf-parity/README.md` describes the format) and reports, per output, the largest
//! absolute difference against the fixture's tolerance.
//!
//! Each kind is checked by the crate that owns its model, and [`run`] dispatches on the fixture's
//! kind:
//!
//! | kind | check |
//! | --- | --- |
//! | `tokenizer` | [`gemma_lm::parity::tokenizer`] |
//! | `gemma-causal-lm` | [`gemma_lm::parity::causal_lm`] |
//! | `clip-vision`, `dinov2`, `siglip-vision` | [`vision_encoders::parity::tower`] |
//! | `image-processing` | [`vision_encoders::parity::image_processing`] |
//! | `llava`, `gemma3`, `paligemma` | [`llava_model::parity::llava`] |
//!
//! The fixture's [`Meta`], the [`Check`]s and the [`Report`] are [`foundation::parity`]'s.

use std::path::Path;

pub use foundation::parity::{Check, Meta, Report, close, read_meta};
pub use vision_encoders::processing::parity::processor_for_output;

use crate::{Error, Result};

/// The fixture kinds this build can check.
pub const SUPPORTED_KINDS: &[&str] = &[
    "tokenizer",
    "gemma-causal-lm",
    "clip-vision",
    "dinov2",
    "siglip-vision",
    "image-processing",
    "llava",
    "gemma3",
    "paligemma",
];

/// Runs the fixture in `dir` and returns its report; an unsupported kind is an error.
pub fn run(dir: &Path) -> Result<Report> {
    let meta = read_meta(dir)?;
    let checks = match meta.kind.as_str() {
        "tokenizer" => gemma_lm::parity::tokenizer(dir, &meta)?,
        "gemma-causal-lm" => gemma_lm::parity::causal_lm(dir, &meta)?,
        "clip-vision" | "dinov2" | "siglip-vision" => vision_encoders::parity::tower(dir, &meta)?,
        "image-processing" => vision_encoders::parity::image_processing(dir, &meta)?,
        "llava" | "gemma3" | "paligemma" => llava_model::parity::llava(dir, &meta)?,
        other => {
            return Err(Error::Unsupported(format!(
                "{}: fixture kind `{other}` is not supported yet (supported: {})",
                dir.display(),
                SUPPORTED_KINDS.join(", ")
            )));
        }
    };
    Ok(Report::new(dir, meta, checks))
}
