//! Parity with Hugging Face `transformers` for the kind this crate owns, on the fixtures of
//! `fixtures/hf-parity` (the machinery is [`foundation::parity`]):
//!
//! * `llava`, `gemma3`, `paligemma`: the projected image features, logits where the mask is 1
//!   (with and without the mask), the loss, and greedy generation after a prompt with its
//!   image(s) ([`llava`]; the processor's `token_type_ids` when the fixture has them).

use std::path::Path;

use foundation::parity::{Check, Meta, at_real_positions, close, need, token_check, token_rows};
use gemma_lm::GenerationConfig;
use tch::{Device, Kind, Tensor};

use crate::{LlavaModel, Result};

/// A `llava`, `gemma3` or `paligemma` fixture, in f32 on the CPU: `image_features` of
/// `pixel_values`, `logits` where the attention mask is 1 (with the mask, and without it), the
/// `loss` at the `labels`, and greedy generation after each row of `prompt_ids` with its images
/// (`prompt_pixel_values`, or the first images of `pixel_values`, one per row).
pub fn llava(dir: &Path, meta: &Meta) -> Result<Vec<Check>> {
    let model = LlavaModel::from_pretrained(meta.model_path(dir), Device::Cpu, Kind::Float)?;
    let inputs = meta.read_inputs(dir)?;
    let expected = meta.read_expected(dir)?;
    let tol = meta.tolerance();
    let mut checks = Vec::new();
    let ids = need(&inputs, "input_ids", dir)?;
    let pixels = inputs.get("pixel_values");
    let mask = inputs.get("attention_mask");
    let types = inputs.get("token_type_ids");
    if let (Some(want), Some(px)) = (expected.get("image_features"), pixels) {
        let got = tch::no_grad(|| model.image_features(px))?;
        checks.push(close("image_features", &got, want, tol));
    }
    let hidden = tch::no_grad(|| model.forward_typed(ids, pixels, mask, types))?;
    let at_real = |t: &Tensor| at_real_positions(t, mask);
    if let Some(want) = expected.get("logits") {
        checks.push(close(
            "logits",
            &at_real(&model.logits(&hidden)),
            &at_real(want),
            tol,
        ));
        if mask.is_some() {
            let fast = tch::no_grad(|| model.forward_typed(ids, pixels, None, types))?;
            checks.push(close(
                "logits (causal, no mask)",
                &at_real(&model.logits(&fast)),
                &at_real(want),
                tol,
            ));
        }
    }
    if let (Some(want), Some(labels)) = (expected.get("loss"), inputs.get("labels")) {
        let (loss, _) = tch::no_grad(|| model.loss(&hidden, labels))?;
        checks.push(close("loss", &loss.reshape([1]), &want.reshape([1]), tol));
    }
    if let (Some(want), Some(prompt), Some(px)) = (
        expected.get("generated_ids"),
        inputs.get("prompt_ids"),
        pixels,
    ) {
        let prompts = token_rows(prompt)?;
        let want = token_rows(want)?;
        let images = match inputs.get("prompt_pixel_values") {
            Some(images) => images.shallow_clone(),
            None => px.narrow(0, 0, prompts.len() as i64),
        };
        let config = GenerationConfig {
            max_new_tokens: want[0].len().saturating_sub(prompts[0].len()),
            ..GenerationConfig::default()
        };
        let generated = model.generate(&prompts, Some(&images), &config, |_, _| {})?;
        checks.push(token_check(&prompts, &generated, &want));
    }
    Ok(checks)
}
