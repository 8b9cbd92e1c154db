//! The shared machinery of the Hugging Face parity checks: a fixture's [`Meta`], the [`Check`] of
//! one output and the [`Report`] of one fixture, and the comparisons every model's check uses.
//!
//! A fixture (`fixtures/hf-parity/README.md` describes the format) is a directory with `meta.json`,
//! an HF model directory, `inputs.safetensors` and `expected.safetensors`. Each model crate checks
//! its own kinds in its `parity` module with these pieces (`gemma_lm::parity`,
//! `vision_encoders::parity`, `llava_model::parity`); the `llava` facade dispatches on
//! [`Meta::kind`] and builds the [`Report`].

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde::de::DeserializeOwned;
use tch::{Kind, Tensor};

use crate::layers::max_abs_diff;
use crate::{Error, Result};

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

impl Meta {
    /// The fixture's model directory.
    pub fn model_path(&self, dir: &Path) -> PathBuf {
        dir.join(&self.model_dir)
    }

    /// The fixture's inputs, by name.
    pub fn read_inputs(&self, dir: &Path) -> Result<HashMap<String, Tensor>> {
        read_tensors(&dir.join(&self.inputs))
    }

    /// The fixture's expected outputs, by name.
    pub fn read_expected(&self, dir: &Path) -> Result<HashMap<String, Tensor>> {
        read_tensors(&dir.join(&self.expected))
    }

    /// `(atol, rtol)`, as [`close`] takes them.
    pub fn tolerance(&self) -> (f64, f64) {
        (self.atol, self.rtol)
    }

    /// The extra field `key` of the fixture in `dir`, deserialised; `None` when absent, an error
    /// naming `meta.json` and the field when it has the wrong shape.
    pub fn extra_field<T: DeserializeOwned>(&self, dir: &Path, key: &str) -> Result<Option<T>> {
        match self.extra.get(key) {
            Some(value) => serde_json::from_value(value.clone())
                .map(Some)
                .map_err(|e| Error::Json {
                    path: dir.join("meta.json"),
                    message: format!("`{key}`: {e}"),
                }),
            None => Ok(None),
        }
    }
}

/// Reads `meta.json` of the fixture in `dir`.
pub fn read_meta(dir: &Path) -> Result<Meta> {
    crate::read_json(dir.join("meta.json"))
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
    /// The report of the fixture in `dir`, described by `meta`, with its `checks`.
    pub fn new(dir: &Path, meta: Meta, checks: Vec<Check>) -> Self {
        Report {
            fixture: dir.to_path_buf(),
            tolerance: meta.tolerance(),
            kind: meta.kind,
            checks,
        }
    }

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

/// `torch.allclose`-style comparison: `|got - want| <= atol + rtol * |want|` everywhere, and every
/// value of `got` finite; a shape mismatch fails.
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

/// A check without a numeric difference (equal strings, counts, ids): `0` when it passes, `NaN`
/// when it does not, with `note` shown on failure.
pub fn exact(output: String, passed: bool, note: String) -> Check {
    Check {
        output,
        max_abs_diff: if passed { 0.0 } else { f64::NAN },
        passed,
        note,
    }
}

/// The number of positions where two token sequences differ, a length difference included.
pub fn count_differences(a: &[i64], b: &[i64]) -> usize {
    a.iter().zip(b).filter(|(x, y)| x != y).count() + a.len().abs_diff(b.len())
}

/// Prompt + generated tokens against the expected sequences (prompt included), token for token,
/// as the `generated_ids` check.
pub fn token_check(prompts: &[Vec<i64>], generated: &[Vec<i64>], want: &[Vec<i64>]) -> Check {
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

/// The rows of a `[batch, len]` integer tensor (prompts, expected token sequences).
pub fn token_rows(t: &Tensor) -> Result<Vec<Vec<i64>>> {
    Ok(Vec::<Vec<i64>>::try_from(t)?)
}

/// The positions of `[batch, len, ...]` where `mask` `[batch, len]` is 1, flattened to
/// `[positions, ...]` (every position without a mask): outputs at padding are not compared.
pub fn at_real_positions(t: &Tensor, mask: Option<&Tensor>) -> Tensor {
    let flat = t.flatten(0, 1);
    match mask {
        Some(m) => flat.index_select(0, &m.flatten(0, -1).nonzero().squeeze_dim(1)),
        None => flat,
    }
}

/// Every tensor of a safetensors file (a fixture's inputs or expected outputs), by name.
pub fn read_tensors(path: &Path) -> Result<HashMap<String, Tensor>> {
    crate::checkpoint::read_all(path)
}

/// The tensor `name` of a fixture's inputs; its absence is an error naming the fixture `dir`.
pub fn need<'a>(
    tensors: &'a HashMap<String, Tensor>,
    name: &str,
    dir: &Path,
) -> Result<&'a Tensor> {
    tensors.get(name).ok_or_else(|| Error::Fixture {
        path: dir.to_path_buf(),
        message: format!("the inputs have no `{name}` tensor"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_follows_allclose_and_rejects_shapes_and_non_finite_values() {
        let want = Tensor::from_slice(&[1.0f32, -2.0, 100.0]);
        let got = Tensor::from_slice(&[1.0f32 + 1e-5, -2.0, 100.0 + 1e-3]);
        let check = close("x", &got, &want, (1e-4, 1e-5));
        assert!(check.passed, "{check:?}");
        assert!((check.max_abs_diff - 1e-3).abs() < 1e-5);
        assert!(!close("x", &got, &want, (1e-4, 0.0)).passed);

        let shape = close("x", &got.view([1, 3]), &want, (1.0, 0.0));
        assert!(!shape.passed && shape.max_abs_diff.is_nan());
        assert_eq!(shape.note, "shape [1, 3], expected [3]");

        let nan = Tensor::from_slice(&[f32::NAN, -2.0, 100.0]);
        assert_eq!(
            close("x", &nan, &want, (1e9, 0.0)).note,
            "non-finite values"
        );
    }

    #[test]
    fn tokens_count_every_difference_and_length_mismatch() {
        assert_eq!(count_differences(&[1, 2, 3], &[1, 5, 3, 4]), 2);
        let check = token_check(&[vec![1, 2]], &[vec![3, 4]], &[vec![1, 2, 3, 5]]);
        assert_eq!(
            (check.output.as_str(), check.max_abs_diff),
            ("generated_ids", 1.0)
        );
        assert!(!check.passed);
        assert_eq!(check.note, "got [[1, 2, 3, 4]]");
    }

    #[test]
    fn only_real_positions_are_kept() {
        let t = Tensor::arange(6, (Kind::Float, tch::Device::Cpu)).view([2, 3, 1]);
        let mask = Tensor::from_slice(&[1i64, 1, 0, 1, 0, 0]).view([2, 3]);
        let kept = Vec::<f32>::try_from(at_real_positions(&t, Some(&mask)).flatten(0, -1)).unwrap();
        assert_eq!(kept, [0.0, 1.0, 3.0]);
        assert_eq!(at_real_positions(&t, None).size(), [6, 1]);
    }

    #[test]
    fn a_report_prints_one_line_per_output_and_notes_failures() {
        let meta: Meta = serde_json::from_str(r#"{"kind": "k", "atol": 1e-4}"#).unwrap();
        let checks = vec![
            exact("a".into(), true, "unused".into()),
            exact("b".into(), false, "got 3".into()),
        ];
        let report = Report::new(Path::new("fx"), meta, checks);
        assert!(!report.passed());
        assert_eq!(
            report.to_string(),
            "fx (k, atol 1e-4, rtol 0e0)\n  \
             a                            max|diff| 0.000e0    ok\n  \
             b                            max|diff| NaN        FAIL  (got 3)\n"
        );
    }
}
