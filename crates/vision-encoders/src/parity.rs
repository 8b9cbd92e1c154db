//! Parity with Hugging Face `transformers` for the kinds this crate owns, on the fixtures of
//! `fixtures/hf-parity` (the machinery is [`foundation::parity`]):
//!
//! * `clip-vision`, `dinov2`, `siglip-vision`: a vision tower's hidden states, last hidden state and pooled output
//!   ([`tower`]);
//! * `image-processing`: our preprocessing against PIL's pixels ([`image_processing()`]), with the
//!   processors named by [`processing::parity::processor_for_output`].

use std::path::Path;

use foundation::parity::{Check, Meta, close, exact};
use tch::{Device, Kind, Tensor};

use crate::processing::parity::processor_for_output;
use crate::processing::{self, ImageProcessor};
use crate::{Result, VisionTower};

/// A vision tower, in f32 on the CPU: every hidden state, the last hidden state and the pooled
/// output, for each set of pixel values in the inputs (`pixel_values`, and `pixel_values_interp`
/// for a larger image, whose outputs carry the `_interp` suffix).
pub fn tower(dir: &Path, meta: &Meta) -> Result<Vec<Check>> {
    let (_vs, tower) =
        VisionTower::from_pretrained(meta.model_path(dir), Device::Cpu, Kind::Float)?;
    let inputs = meta.read_inputs(dir)?;
    let expected = meta.read_expected(dir)?;
    let tol = meta.tolerance();
    let mut checks = Vec::new();
    for suffix in ["", "_interp"] {
        let Some(pixels) = inputs.get(&format!("pixel_values{suffix}")) else {
            continue;
        };
        let out = tch::no_grad(|| tower.forward(pixels))?;
        if let Some(want) = expected.get(&format!("hidden_states{suffix}")) {
            if want.size()[0] != out.hidden_states.len() as i64 {
                checks.push(exact(
                    format!("hidden_states{suffix} count"),
                    false,
                    format!(
                        "expected {}, got {}",
                        want.size()[0],
                        out.hidden_states.len()
                    ),
                ));
            }
            for (i, got) in out
                .hidden_states
                .iter()
                .enumerate()
                .take(want.size()[0] as usize)
            {
                let name = format!("hidden_states{suffix}[{i}]");
                checks.push(close(&name, got, &want.get(i as i64), tol));
            }
        }
        for (name, got) in [
            ("last_hidden_state", Some(&out.last_hidden_state)),
            ("pooler_output", out.pooler_output.as_ref()),
        ] {
            let name = format!("{name}{suffix}");
            match (expected.get(&name), got) {
                (Some(want), Some(got)) => checks.push(close(&name, got, want, tol)),
                (Some(_), None) => {
                    checks.push(exact(name, false, "the tower has no pooling head".into()))
                }
                (None, _) => {}
            }
        }
    }
    Ok(checks)
}

/// Image processing: for every expected output, our pixels of the fixture's `image` (default
/// `model/image.png`) against PIL's, by the largest absolute difference (within `atol`) and the
/// mean one (within `mean_abs_max`, default `atol`).
pub fn image_processing(dir: &Path, meta: &Meta) -> Result<Vec<Check>> {
    let image_name = meta
        .extra
        .get("image")
        .and_then(|v| v.as_str())
        .unwrap_or("model/image.png");
    let image = processing::open(dir.join(image_name))?;
    let expected = meta.read_expected(dir)?;
    let mean_max = meta
        .extra
        .get("mean_abs_max")
        .and_then(|v| v.as_f64())
        .unwrap_or(meta.atol);
    let mut names: Vec<&String> = expected.keys().collect();
    names.sort();
    let mut checks = Vec::new();
    for name in names {
        let want = &expected[name];
        let Some(config) = processor_for_output(name) else {
            checks.push(exact(
                name.clone(),
                false,
                "no processor is known for this output name".into(),
            ));
            continue;
        };
        let (pixels, h, w) = ImageProcessor::new(config).preprocess(&image);
        let got = Tensor::from_slice(&pixels).view([1, 3, h as i64, w as i64]);
        if got.size() != want.size() {
            checks.push(close(name, &got, want, (meta.atol, 0.0)));
            continue;
        }
        let diff = (got.to_kind(Kind::Double) - want.to_kind(Kind::Double)).abs();
        let max = diff.max().double_value(&[]);
        let mean = diff.mean(Kind::Double).double_value(&[]);
        checks.push(Check {
            output: name.clone(),
            max_abs_diff: max,
            passed: max <= meta.atol,
            note: String::new(),
        });
        checks.push(Check {
            output: format!("{name} (mean)"),
            max_abs_diff: mean,
            passed: mean <= mean_max,
            note: format!("mean abs diff above {mean_max}"),
        });
    }
    Ok(checks)
}
