//! Parity with Hugging Face `transformers`: runs our models on fixtures that hold the reference
//! outputs (`fixtures/hf-parity/README.md` describes the format) and reports, per output, the largest
//! absolute difference against the fixture's tolerance.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use foundation::layers::max_abs_diff;
use gemma_lm::{Gemma, GemmaTokenizer, GenerationConfig};
use llava_model::LlavaModel;
use serde::Deserialize;
use tch::{Device, Kind, Tensor};
use vision_encoders::VisionTower;
use vision_encoders::processing::{self, ImageProcessor, ProcessorConfig, Resize};

use crate::{Error, Result};

/// The fixture kinds this build can check.
pub const SUPPORTED_KINDS: &[&str] = &[
    "tokenizer",
    "gemma-causal-lm",
    "clip-vision",
    "dinov2",
    "image-processing",
];

/// `meta.json` of a fixture: the fields every kind shares, the rest kept as JSON.
#[derive(Debug, Clone, Deserialize)]
pub struct Meta {
    /// What is being checked (`gemma-causal-lm`, `tokenizer`, …).
    pub kind: String,
    /// Model directory, relative to the fixture.
    #[serde(default = "default_model_dir")]
    pub model_dir: String,
    /// Inputs file, relative to the fixture.
    #[serde(default = "default_inputs")]
    pub inputs: String,
    /// Expected outputs file, relative to the fixture.
    #[serde(default = "default_expected")]
    pub expected: String,
    /// Absolute tolerance.
    #[serde(default)]
    pub atol: f64,
    /// Relative tolerance.
    #[serde(default)]
    pub rtol: f64,
    /// Everything else (`cases`, `special_ids`, …).
    #[serde(flatten)]
    pub extra: HashMap<String, serde_json::Value>,
}

fn default_model_dir() -> String {
    "model".into()
}
fn default_inputs() -> String {
    "inputs.safetensors".into()
}
fn default_expected() -> String {
    "expected.safetensors".into()
}

/// The result of comparing one output.
#[derive(Debug, Clone)]
pub struct Check {
    /// The output's name (`logits`, `hidden_states[1]`, `case 2 ids`, …).
    pub output: String,
    /// Largest absolute difference (for token sequences: the number of tokens that differ).
    pub max_abs_diff: f64,
    /// Whether it is within tolerance.
    pub passed: bool,
    /// A short note shown when the check fails.
    pub note: String,
}

/// All checks of one fixture.
#[derive(Debug, Clone)]
pub struct Report {
    /// The fixture directory.
    pub fixture: PathBuf,
    /// Its kind.
    pub kind: String,
    /// `atol` and `rtol`.
    pub tolerance: (f64, f64),
    /// One entry per output.
    pub checks: Vec<Check>,
}

impl Report {
    /// Whether every check passed.
    pub fn passed(&self) -> bool {
        !self.checks.is_empty() && self.checks.iter().all(|c| c.passed)
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = self.fixture.display();
        let (atol, rtol) = self.tolerance;
        writeln!(f, "{name} ({}, atol {atol:e}, rtol {rtol:e})", self.kind)?;
        for c in &self.checks {
            let verdict = if c.passed { "ok" } else { "FAIL" };
            write!(
                f,
                "  {:<28} max|diff| {:<10.3e} {verdict}",
                c.output, c.max_abs_diff
            )?;
            if !c.passed && !c.note.is_empty() {
                write!(f, "  ({})", c.note)?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

/// Reads `meta.json` of the fixture in `dir`.
pub fn read_meta(dir: &Path) -> Result<Meta> {
    let path = dir.join("meta.json");
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::Parse {
        path,
        message: e.to_string(),
    })
}

/// Runs the fixture in `dir` and returns its report; an unsupported kind is an error.
pub fn run(dir: &Path) -> Result<Report> {
    let meta = read_meta(dir)?;
    let checks = match meta.kind.as_str() {
        "tokenizer" => tokenizer(dir, &meta)?,
        "gemma-causal-lm" => gemma_causal_lm(dir, &meta)?,
        "clip-vision" | "dinov2" => vision(dir, &meta)?,
        "image-processing" => image_processing(dir, &meta)?,
        "llava" => llava(dir, &meta)?,
        other => {
            return Err(Error::Unsupported(format!(
                "{}: fixture kind `{other}` is not supported yet (supported: {})",
                dir.display(),
                SUPPORTED_KINDS.join(", ")
            )));
        }
    };
    Ok(Report {
        fixture: dir.to_path_buf(),
        kind: meta.kind,
        tolerance: (meta.atol, meta.rtol),
        checks,
    })
}

fn tokenizer(dir: &Path, meta: &Meta) -> Result<Vec<Check>> {
    let tokenizer = GemmaTokenizer::from_file(dir.join(&meta.model_dir))?;
    let mut checks = Vec::new();
    if let Some(specials) = meta.extra.get("special_ids").and_then(|v| v.as_object()) {
        for (token, id) in specials {
            let got = tokenizer.token_id(token);
            checks.push(exact(
                format!("special {token}"),
                got == id.as_i64(),
                format!("got {got:?}"),
            ));
        }
    }
    if let Some(size) = meta.extra.get("vocab_size").and_then(|v| v.as_u64()) {
        let got = tokenizer.vocab_size();
        checks.push(exact(
            "vocab_size".into(),
            got as u64 == size,
            format!("got {got}"),
        ));
    }
    let cases: Vec<TokenizerCase> = match meta.extra.get("cases") {
        Some(cases) => serde_json::from_value(cases.clone()).map_err(|e| Error::Parse {
            path: dir.join("meta.json"),
            message: format!("`cases`: {e}"),
        })?,
        None => Vec::new(),
    };
    for (i, case) in cases.iter().enumerate() {
        let ids = tokenizer.encode(&case.text, true)?;
        let differ = count_differences(&ids, &case.ids);
        checks.push(Check {
            output: format!("case {i} ids"),
            max_abs_diff: differ as f64,
            passed: differ == 0,
            note: format!("got {ids:?}"),
        });
        if let Some(decoded) = &case.decoded {
            let got = tokenizer.decode(&case.ids, true)?;
            checks.push(exact(
                format!("case {i} decoded"),
                &got == decoded,
                format!("got {got:?}"),
            ));
        }
    }
    Ok(checks)
}

#[derive(Debug, Deserialize)]
struct TokenizerCase {
    text: String,
    ids: Vec<i64>,
    decoded: Option<String>,
}

fn gemma_causal_lm(dir: &Path, meta: &Meta) -> Result<Vec<Check>> {
    let (_vs, model) = Gemma::from_pretrained(dir.join(&meta.model_dir), Device::Cpu, Kind::Float)?;
    let inputs = read_tensors(&dir.join(&meta.inputs))?;
    let expected = read_tensors(&dir.join(&meta.expected))?;
    let tol = (meta.atol, meta.rtol);
    let mut checks = Vec::new();

    let ids = need(&inputs, "input_ids", dir)?;
    let mask = inputs.get("attention_mask");
    let out = tch::no_grad(|| model.forward(ids, mask, None, true))?;
    let at_real = |t: &Tensor| at_real_positions(t, mask);
    let logits = model.logits(&out.last_hidden_state);
    if let Some(want) = expected.get("logits") {
        checks.push(close("logits", &at_real(&logits), &at_real(want), tol));
    }
    if let Some(want) = expected.get("hidden_states") {
        for (i, got) in out.hidden_states.iter().enumerate() {
            let want_i = want.get(i as i64);
            checks.push(close(
                &format!("hidden_states[{i}]"),
                &at_real(got),
                &at_real(&want_i),
                tol,
            ));
        }
        if want.size()[0] != out.hidden_states.len() as i64 {
            checks.push(exact(
                "hidden_states count".into(),
                false,
                format!(
                    "expected {}, got {}",
                    want.size()[0],
                    out.hidden_states.len()
                ),
            ));
        }
    }
    // The training path: causal attention without a mask, exact wherever the mask is 1.
    if let (Some(want), Some(_)) = (expected.get("logits"), mask) {
        let fast = tch::no_grad(|| model.forward(ids, None, None, false))?;
        let got = model.logits(&fast.last_hidden_state);
        checks.push(close(
            "logits (causal, no mask)",
            &at_real(&got),
            &at_real(want),
            tol,
        ));
    }
    if let (Some(want), Some(labels)) = (expected.get("loss"), inputs.get("labels")) {
        let (loss, _) = tch::no_grad(|| model.loss(&out.last_hidden_state, labels))?;
        checks.push(close("loss", &loss.reshape([1]), &want.reshape([1]), tol));
    }
    if let (Some(want), Some(prompt)) = (expected.get("generated_ids"), inputs.get("prompt_ids")) {
        checks.push(greedy_check(&model, prompt, want)?);
    }
    Ok(checks)
}

/// A vision tower: every hidden state, the last hidden state and the pooled output, for each set of
/// pixel values in the inputs (`pixel_values`, and `pixel_values_interp` for a larger image).
fn vision(dir: &Path, meta: &Meta) -> Result<Vec<Check>> {
    let (_vs, tower) =
        VisionTower::from_pretrained(dir.join(&meta.model_dir), Device::Cpu, Kind::Float)?;
    let inputs = read_tensors(&dir.join(&meta.inputs))?;
    let expected = read_tensors(&dir.join(&meta.expected))?;
    let tol = (meta.atol, meta.rtol);
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
            ("last_hidden_state", &out.last_hidden_state),
            ("pooler_output", &out.pooler_output),
        ] {
            let name = format!("{name}{suffix}");
            if let Some(want) = expected.get(&name) {
                checks.push(close(&name, got, want, tol));
            }
        }
    }
    Ok(checks)
}

/// The processor an image-processing output is named after: `clip_<N>` (shortest edge N, crop N,
/// CLIP statistics), `dinov2_<N>` (shortest edge N * 256 / 224, crop N, ImageNet statistics, as
/// `facebook/dinov2-*` ships), with `_pad` for LLaVA's `expand2square` first.
pub fn processor_for_output(name: &str) -> Option<ProcessorConfig> {
    let (base, pad) = match name.strip_suffix("_pad") {
        Some(base) => (base, true),
        None => (name, false),
    };
    let (family, size) = base.rsplit_once('_')?;
    let size: u32 = size.parse().ok()?;
    let config = match family {
        "clip" => ProcessorConfig {
            resize: Some(Resize::ShortestEdge(size)),
            crop: Some((size, size)),
            ..ProcessorConfig::clip_336()
        },
        "dinov2" => ProcessorConfig {
            resize: Some(Resize::ShortestEdge(size * 256 / 224)),
            crop: Some((size, size)),
            ..ProcessorConfig::dinov2_224()
        },
        _ => return None,
    };
    Some(if pad {
        config.with_pad_to_square()
    } else {
        config
    })
}

/// Image processing: for every expected output, our pixels against PIL's, by the largest and the
/// mean absolute difference (a Rust resize is compared within `atol` and `mean_abs_max`).
fn image_processing(dir: &Path, meta: &Meta) -> Result<Vec<Check>> {
    let image_name = meta
        .extra
        .get("image")
        .and_then(|v| v.as_str())
        .unwrap_or("model/image.png");
    let image = processing::open(dir.join(image_name))?;
    let expected = read_tensors(&dir.join(&meta.expected))?;
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

/// A LLaVA model: the projected image features, logits where the mask is 1 (with and without the
/// mask), the loss, and greedy generation after a prompt with the first image.
fn llava(dir: &Path, meta: &Meta) -> Result<Vec<Check>> {
    let model = LlavaModel::from_pretrained(dir.join(&meta.model_dir), Device::Cpu, Kind::Float)?;
    let inputs = read_tensors(&dir.join(&meta.inputs))?;
    let expected = read_tensors(&dir.join(&meta.expected))?;
    let tol = (meta.atol, meta.rtol);
    let mut checks = Vec::new();
    let ids = need(&inputs, "input_ids", dir)?;
    let pixels = inputs.get("pixel_values");
    let mask = inputs.get("attention_mask");
    if let (Some(want), Some(px)) = (expected.get("image_features"), pixels) {
        let got = tch::no_grad(|| model.image_features(px))?;
        checks.push(close("image_features", &got, want, tol));
    }
    let hidden = tch::no_grad(|| model.forward(ids, pixels, mask))?;
    let at_real = |t: &Tensor| at_real_positions(t, mask);
    if let Some(want) = expected.get("logits") {
        checks.push(close(
            "logits",
            &at_real(&model.logits(&hidden)),
            &at_real(want),
            tol,
        ));
        if mask.is_some() {
            let fast = tch::no_grad(|| model.forward(ids, pixels, None))?;
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
        let prompts = Vec::<Vec<i64>>::try_from(prompt).map_err(gemma_lm::Error::from)?;
        let want = Vec::<Vec<i64>>::try_from(want).map_err(gemma_lm::Error::from)?;
        let images = px.narrow(0, 0, prompts.len() as i64);
        let config = GenerationConfig {
            max_new_tokens: want[0].len().saturating_sub(prompts[0].len()),
            ..GenerationConfig::default()
        };
        let generated = model.generate(&prompts, Some(&images), &config, |_, _| {})?;
        checks.push(token_check(&prompts, &generated, &want));
    }
    Ok(checks)
}

/// Greedy generation without early stop, compared token for token (prompt included).
fn greedy_check(model: &Gemma, prompt: &Tensor, want: &Tensor) -> Result<Check> {
    let prompts = Vec::<Vec<i64>>::try_from(prompt).map_err(gemma_lm::Error::from)?;
    let want = Vec::<Vec<i64>>::try_from(want).map_err(gemma_lm::Error::from)?;
    let new_tokens = want[0].len().saturating_sub(prompts[0].len());
    let config = GenerationConfig {
        max_new_tokens: new_tokens,
        ..GenerationConfig::default()
    };
    let generated = gemma_lm::generate(model, &prompts, &config, |_, _| {})?;
    Ok(token_check(&prompts, &generated, &want))
}

/// Prompt + generated tokens against the expected sequences, token for token.
fn token_check(prompts: &[Vec<i64>], generated: &[Vec<i64>], want: &[Vec<i64>]) -> Check {
    let mut differ = 0;
    let mut got_all = Vec::new();
    for ((prompt, new), want) in prompts.iter().zip(generated).zip(want) {
        let got: Vec<i64> = prompt.iter().chain(new).copied().collect();
        differ += count_differences(&got, want);
        got_all.push(got);
    }
    Check {
        output: "generated_ids".into(),
        max_abs_diff: differ as f64,
        passed: differ == 0,
        note: format!("got {got_all:?}"),
    }
}

/// The positions of `[batch, len, ...]` where `mask` `[batch, len]` is 1, flattened to
/// `[positions, ...]` (every position without a mask): outputs at padding are not compared.
fn at_real_positions(t: &Tensor, mask: Option<&Tensor>) -> Tensor {
    let flat = t.flatten(0, 1);
    match mask {
        Some(m) => flat.index_select(0, &m.flatten(0, -1).nonzero().squeeze_dim(1)),
        None => flat,
    }
}

fn count_differences(a: &[i64], b: &[i64]) -> usize {
    a.iter().zip(b).filter(|(x, y)| x != y).count() + a.len().abs_diff(b.len())
}

/// `torch.allclose`-style comparison: `|got - want| <= atol + rtol * |want|` everywhere.
pub fn close(name: &str, got: &Tensor, want: &Tensor, (atol, rtol): (f64, f64)) -> Check {
    if got.size() != want.size() {
        return exact(
            name.into(),
            false,
            format!("shape {:?}, expected {:?}", got.size(), want.size()),
        );
    }
    let (g, w) = (got.to_kind(Kind::Double), want.to_kind(Kind::Double));
    let within = (&g - &w)
        .abs()
        .le_tensor(&(w.abs() * rtol + atol))
        .all()
        .int64_value(&[])
        == 1;
    let finite = g.isfinite().all().int64_value(&[]) == 1;
    Check {
        output: name.into(),
        max_abs_diff: max_abs_diff(&g, &w),
        passed: within && finite,
        note: if finite {
            String::new()
        } else {
            "non-finite values".into()
        },
    }
}

fn exact(output: String, passed: bool, note: String) -> Check {
    Check {
        output,
        max_abs_diff: if passed { 0.0 } else { f64::NAN },
        passed,
        note,
    }
}

fn read_tensors(path: &Path) -> Result<HashMap<String, Tensor>> {
    Ok(foundation::checkpoint::read_all(path)?)
}

fn need<'a>(tensors: &'a HashMap<String, Tensor>, name: &str, dir: &Path) -> Result<&'a Tensor> {
    tensors.get(name).ok_or_else(|| Error::Parse {
        path: dir.to_path_buf(),
        message: format!("the inputs have no `{name}` tensor"),
    })
}
