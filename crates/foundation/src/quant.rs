//! Weight-only quantization for inference: a linear layer's weight stored as int8 or int4 codes
//! with scales, multiplied on the CPU by our kernels ([`crate::cpu_gemv`]), elsewhere (or with
//! the kernels off) by libtorch's ops on the weight dequantized for the call (int8 on the CPU:
//! ATen's `_weight_int8pack_mm`).
//!
//! Decoding one token reads every weight once, so at batch 1 its speed is the bytes per weight:
//! int8 reads half of bf16's, int4 a quarter (plus its scales). The dense weight is dropped once
//! the codes are made, so the model's memory shrinks by as much.

use std::path::Path;

use safetensors::Dtype;
use tch::{Kind, Tensor};

use crate::{Checkpoint, Error, cpu_gemv};

/// How a weight is quantized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quantization {
    /// Symmetric int8 per output row: `w ≈ q * scale`, `q` in -128..=127.
    Int8,
    /// Asymmetric int4 per group of `group` consecutive inputs of each output row:
    /// `w ≈ q * scale + min`, `q` in 0..=15, `scale = (max - min) / 15` (llama.cpp's Q4_1).
    Int4 {
        /// Inputs per scale and minimum: 32, 64, 128 or 256.
        group: i64,
    },
}

/// The int4 group size `int4` alone means: 32 inputs, as llama.cpp's Q4_0 blocks.
pub const DEFAULT_INT4_GROUP: i64 = 32;

impl std::str::FromStr for Quantization {
    type Err = String;

    /// `int8`, `int4` (groups of [`DEFAULT_INT4_GROUP`]) or `int4:G` with G in 32, 64, 128, 256.
    fn from_str(s: &str) -> Result<Self, String> {
        let choices =
            "the choices are int8, int4 and int4:G (G = 32, 64, 128 or 256 inputs per scale)";
        match s {
            "int8" => Ok(Quantization::Int8),
            "int4" => Ok(Quantization::Int4 {
                group: DEFAULT_INT4_GROUP,
            }),
            _ => match s.strip_prefix("int4:").map(str::parse::<i64>) {
                Some(Ok(group)) if [32, 64, 128, 256].contains(&group) => {
                    Ok(Quantization::Int4 { group })
                }
                _ => Err(format!("quantization `{s}`: {choices}")),
            },
        }
    }
}

impl std::fmt::Display for Quantization {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Quantization::Int8 => write!(f, "int8"),
            Quantization::Int4 { group } => write!(f, "int4:{group}"),
        }
    }
}

/// `quantization_config.quant_method` in the `config.json` of a model directory whose weights we
/// saved quantized ([`QuantizedWeight::tensors`]): our form alone. transformers 5 only warns
/// about a method it does not know, so the weights go in [`QUANTIZED_WEIGHTS`] instead.
pub const QUANT_METHOD: &str = "llava-gemma-rs";

/// The file of a model directory whose weights we saved quantized. Not `model.safetensors`:
/// transformers looks for that name (or an index of shards) alone, so it refuses such a
/// directory ("no file named model.safetensors") rather than loading it with the quantized layers
/// left at random, as it does when the codes sit in `model.safetensors`. Our loaders read any
/// `*.safetensors` of a directory without `model.safetensors`.
pub const QUANTIZED_WEIGHTS: &str = "model-quantized.safetensors";

/// Saves a quantized model's `tensors` (codes, scales and its dense remainder) as `dir`'s
/// [`QUANTIZED_WEIGHTS`], atomically, then removes a `model.safetensors` or shard index left
/// in `dir` by an earlier save, which our loaders would read instead.
pub fn save_quantized_weights(
    dir: &Path,
    tensors: &[(String, Tensor)],
    metadata: Option<std::collections::HashMap<String, String>>,
) -> crate::Result<()> {
    crate::save_safetensors(dir.join(QUANTIZED_WEIGHTS), tensors, metadata)?;
    for stale in ["model.safetensors", "model.safetensors.index.json"] {
        let path = dir.join(stale);
        if path.exists() {
            std::fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
        }
    }
    Ok(())
}

impl Quantization {
    /// `config.json`'s `quantization_config` for weights saved in this form:
    /// `{"quant_method": "llava-gemma-rs", "bits": 8}` or `{…, "bits": 4, "group_size": G}`.
    pub fn to_config(self) -> serde_json::Value {
        match self {
            Quantization::Int8 => serde_json::json!({"quant_method": QUANT_METHOD, "bits": 8}),
            Quantization::Int4 { group } => serde_json::json!({
                "quant_method": QUANT_METHOD,
                "bits": 4,
                "group_size": group,
            }),
        }
    }

    /// The form a parsed `config.json` says its weights are saved in ([`to_config`]
    /// (Self::to_config)): `None` without a `quantization_config`; an error for another method
    /// (GPTQ, bitsandbytes, …) or a config of ours we cannot read.
    pub fn from_config(config: &serde_json::Value) -> Result<Option<Self>, String> {
        let q = match config.get("quantization_config") {
            None | Some(serde_json::Value::Null) => return Ok(None),
            Some(q) => q,
        };
        let method = q.get("quant_method").and_then(|m| m.as_str()).unwrap_or("");
        if method != QUANT_METHOD {
            return Err(format!(
                "quantization_config: weights quantized as `{method}`, which we do not read \
                 (ours say `{QUANT_METHOD}`, written by `llava quantize`)"
            ));
        }
        let bits = q.get("bits").and_then(|b| b.as_i64());
        let group = q.get("group_size").and_then(|g| g.as_i64());
        match (bits, group) {
            (Some(8), None) => Ok(Some(Quantization::Int8)),
            (Some(4), Some(group)) => format!("int4:{group}")
                .parse()
                .map(Some)
                .map_err(|e| format!("quantization_config: {e}")),
            _ => Err(format!(
                "quantization_config: expected bits 8 (no group_size) or bits 4 with a \
                 group_size, found {q}"
            )),
        }
    }

    /// The form model directory `dir`'s weights are saved in, from its `config.json`
    /// ([`from_config`](Self::from_config)); `None` when it has no config or no
    /// `quantization_config`.
    pub fn of_directory(dir: &Path) -> crate::Result<Option<Self>> {
        let path = dir.join("config.json");
        if !path.exists() {
            return Ok(None);
        }
        let config: serde_json::Value = crate::read_json(&path)?;
        Self::from_config(&config).map_err(|message| Error::Json { path, message })
    }
}

/// How a model's quantizable weights (the language model's linear layers and head) come out of
/// its checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loading {
    /// Dense, as stored.
    Dense,
    /// Stored dense, quantized as they load.
    Quantize(Quantization),
    /// Stored quantized (`llava quantize`, [`QUANTIZED_WEIGHTS`]): the codes read as they are.
    Saved(Quantization),
}

impl Loading {
    /// The loading of a checkpoint that holds weights saved in form `stored` (`None`: dense),
    /// when form `asked` is requested: the saved codes (then `asked` must be their form or
    /// none), else quantizing as asked, else dense. The error says why they cannot meet.
    pub fn resolve(
        stored: Option<Quantization>,
        asked: Option<Quantization>,
    ) -> Result<Self, String> {
        match (stored, asked) {
            (Some(stored), Some(asked)) if stored != asked => Err(format!(
                "holds {stored} weights (written by `llava quantize`); they cannot be quantized \
                 again as {asked}: quantize the dense model, or leave out --quantize"
            )),
            (Some(stored), _) => Ok(Loading::Saved(stored)),
            (None, Some(asked)) => Ok(Loading::Quantize(asked)),
            (None, None) => Ok(Loading::Dense),
        }
    }

    /// The form the weights end in (`None`: dense).
    pub fn quantization(self) -> Option<Quantization> {
        match self {
            Loading::Dense => None,
            Loading::Quantize(how) | Loading::Saved(how) => Some(how),
        }
    }
}

/// From this many rows on (a prompt), where our kernels do not run, an int8 weight is
/// dequantized for the call and multiplied by the dense GEMM: ATen's int8 kernel works row by
/// row, 3.4x slower than a bf16 GEMM at 512 rows of Gemma-2B's MLP on 2 cores, against 1.5x for
/// dequantizing first (equal at 128 rows).
pub const INT8_DEQUANTIZE_ROWS: i64 = 128;

/// A weight `[out, in]` in quantized form.
#[derive(Debug)]
pub enum QuantizedWeight {
    /// See [`Quantization::Int8`].
    Int8 {
        /// `[out, in]`, int8.
        q: Tensor,
        /// `[out]`, bf16: `max |w_row| / 127`.
        scales: Tensor,
    },
    /// See [`Quantization::Int4`]; the layout is [`cpu_gemv::Int4`]'s, the same on every CPU.
    Int4 {
        /// `[out, in / 2]`, uint8: two codes a byte (see [`cpu_gemv::Int4::codes`]).
        codes: Tensor,
        /// `[out, in / group]`, bf16.
        scales: Tensor,
        /// `[out, in / group]`, bf16.
        mins: Tensor,
        /// Inputs per group.
        group: i64,
    },
}

impl QuantizedWeight {
    /// Quantizes `weight` `[out, in]` as `how` says. Int4 needs `in` a multiple of the group
    /// size; the error says when it is not.
    pub fn quantize(weight: &Tensor, how: Quantization) -> Result<Self, String> {
        Self::check_shape(weight, how)?;
        if weight.device() != tch::Device::Cpu {
            return Self::quantize_sliced(weight, how, SLICE_BYTES);
        }
        let (out, inner) = (weight.size()[0], weight.size()[1]);
        // On the CPU, one pass over each row in the shim (the tensor ops below take several);
        // the same arithmetic.
        let quantized = match how {
            Quantization::Int8 => QuantizedWeight::Int8 {
                q: Tensor::empty([out, inner], (Kind::Int8, weight.device())),
                scales: Tensor::empty([out], (Kind::BFloat16, weight.device())),
            },
            Quantization::Int4 { group } => QuantizedWeight::Int4 {
                codes: Tensor::empty([out, inner / 2], (Kind::Uint8, weight.device())),
                scales: Tensor::empty([out, inner / group], (Kind::BFloat16, weight.device())),
                mins: Tensor::empty([out, inner / group], (Kind::BFloat16, weight.device())),
                group,
            },
        };
        let done = match &quantized {
            QuantizedWeight::Int8 { q, scales } => {
                cpu_gemv::quantize_rows(weight, None, q, scales, None)
            }
            QuantizedWeight::Int4 {
                codes,
                scales,
                mins,
                group,
            } => cpu_gemv::quantize_rows(weight, Some(*group), codes, scales, Some(mins)),
        };
        if done {
            return Ok(quantized);
        }
        Self::quantize_sliced(weight, how, SLICE_BYTES)
    }

    /// Whether `how` can take a weight of this shape; the error says why not.
    fn check_shape(weight: &Tensor, how: Quantization) -> Result<(), String> {
        let (out, inner) = match weight.size()[..] {
            [out, inner] => (out, inner),
            ref other => return Err(format!("a weight of shape {other:?} is not a matrix")),
        };
        if let Quantization::Int4 { group } = how {
            if inner % group != 0 {
                return Err(format!(
                    "int4 needs the inputs a multiple of the group size {group}; this weight is \
                     [{out}, {inner}]"
                ));
            }
        }
        Ok(())
    }

    /// [`quantize`](Self::quantize) by libtorch's tensor ops (any device), holding about
    /// `slice_bytes` of f32 temporaries at a time.
    fn quantize_sliced(
        weight: &Tensor,
        how: Quantization,
        slice_bytes: i64,
    ) -> Result<Self, String> {
        Self::check_shape(weight, how)?;
        let (out, inner) = (weight.size()[0], weight.size()[1]);
        // A slice of rows at a time: the f32 temporaries of one slice, not of the whole weight
        // (Gemma's 1 GB embedding made several GB of them).
        let per = (slice_bytes / (4 * inner.max(1))).max(1);
        let slices = (0..out)
            .step_by(per as usize)
            .map(|r| (r, per.min(out - r)));
        tch::no_grad(|| match how {
            Quantization::Int8 => {
                let q = Tensor::empty([out, inner], (Kind::Int8, weight.device()));
                let mut scales = Vec::new();
                for (row, n) in slices {
                    let w = weight.narrow(0, row, n).to_kind(Kind::Float);
                    let s = (w.abs().amax([1].as_slice(), false) / 127.0).clamp_min(1e-12);
                    let codes = (w / s.unsqueeze(1)).round_().clamp_(-128.0, 127.0);
                    q.narrow(0, row, n).copy_(&codes);
                    scales.push(s);
                }
                Ok(QuantizedWeight::Int8 {
                    q,
                    scales: Tensor::cat(&scales, 0).to_kind(Kind::BFloat16),
                })
            }
            Quantization::Int4 { group } => {
                let device = weight.device();
                let codes = Tensor::empty([out, inner / 2], (Kind::Uint8, device));
                let scales = Tensor::empty([out, inner / group], (Kind::BFloat16, device));
                let mins = Tensor::empty([out, inner / group], (Kind::BFloat16, device));
                for (row, n) in slices {
                    let (c, s, m) = int4_slice(&weight.narrow(0, row, n), group);
                    codes.narrow(0, row, n).copy_(&c);
                    scales.narrow(0, row, n).copy_(&s);
                    mins.narrow(0, row, n).copy_(&m);
                }
                Ok(QuantizedWeight::Int4 {
                    codes,
                    scales,
                    mins,
                    group,
                })
            }
        })
    }

    /// Quantizes `weight` as [`quantize`](Self::quantize) does, then empties it: `set_` empties
    /// the tensor itself, not this handle, so the variable store's handle to the same tensor lets
    /// go of the storage too, and the dense weight's memory is freed.
    pub fn replace(weight: &mut Tensor, how: Quantization) -> Result<Self, String> {
        let quantized = Self::quantize(weight, how)?;
        tch::no_grad(|| {
            let _ = weight.set_();
        });
        Ok(quantized)
    }

    /// `x W^T` for `x` `[..., in]`, in `x`'s dtype: on the CPU by our kernels (see
    /// [`cpu_gemv::int8`] and [`cpu_gemv::int4`]); elsewhere, with the kernels off or where
    /// autograd records, by libtorch (int8 on the CPU: ATen's kernel with bf16 activations, or
    /// from [`INT8_DEQUANTIZE_ROWS`] rows on the weight dequantized for the call; int4: the
    /// weight dequantized for the call).
    pub fn matmul(&self, x: &Tensor) -> Tensor {
        let kernel = match self {
            QuantizedWeight::Int8 { q, scales } => cpu_gemv::int8(x, q, scales),
            QuantizedWeight::Int4 { .. } => cpu_gemv::int4(x, self.int4().expect("int4")),
        };
        if let Some(y) = kernel {
            return y;
        }
        let mut shape = x.size();
        let inner = *shape.last().expect("an input has a last dimension");
        let rows = x.numel() as i64 / inner.max(1);
        match self {
            QuantizedWeight::Int8 { q, scales }
                if x.device() == tch::Device::Cpu && rows < INT8_DEQUANTIZE_ROWS =>
            {
                let x2 = x.reshape([-1, inner]).to_kind(Kind::BFloat16);
                let y = x2.internal_weight_int8pack_mm(q, scales);
                *shape.last_mut().expect("checked") = q.size()[0];
                y.to_kind(x.kind()).reshape(shape.as_slice())
            }
            _ => x.matmul(&self.dequantize(x.kind()).tr()),
        }
    }

    /// The weight the codes stand for, `[out, in]` in `kind`.
    pub fn dequantize(&self, kind: Kind) -> Tensor {
        match self {
            QuantizedWeight::Int8 { q, scales } => {
                q.to_kind(kind) * scales.to_kind(kind).unsqueeze(1)
            }
            QuantizedWeight::Int4 {
                codes,
                scales,
                mins,
                group,
            } => {
                let (out, inner) = (codes.size()[0], codes.size()[1] * 2);
                // Each 16 bytes: inputs 0..15 in the low nibbles, 16..31 in the high ones.
                let bytes = codes.view([out, inner / 32, 1, 16]);
                let q = Tensor::cat(
                    &[
                        bytes.bitwise_and(15),
                        bytes.bitwise_right_shift_tensor_scalar(4),
                    ],
                    2,
                )
                .view([out, inner / group, *group])
                .to_kind(Kind::Float);
                let w = q * scales.to_kind(Kind::Float).unsqueeze(2)
                    + mins.to_kind(Kind::Float).unsqueeze(2);
                w.view([out, inner]).to_kind(kind)
            }
        }
    }

    /// Rows `ids` (any shape of integer ids) of the weight, dequantized to `kind`: an embedding
    /// table's lookup, `[..ids, in]`.
    pub fn rows(&self, ids: &Tensor, kind: Kind) -> Tensor {
        let flat = ids.reshape([-1]);
        let picked = match self {
            QuantizedWeight::Int8 { q, scales } => QuantizedWeight::Int8 {
                q: q.index_select(0, &flat),
                scales: scales.index_select(0, &flat),
            },
            QuantizedWeight::Int4 {
                codes,
                scales,
                mins,
                group,
            } => QuantizedWeight::Int4 {
                codes: codes.index_select(0, &flat),
                scales: scales.index_select(0, &flat),
                mins: mins.index_select(0, &flat),
                group: *group,
            },
        };
        let mut shape = ids.size();
        shape.push(-1);
        picked.dequantize(kind).reshape(shape.as_slice())
    }

    /// The int4 weight as the kernels take it; `None` for int8.
    pub fn int4(&self) -> Option<cpu_gemv::Int4<'_>> {
        match self {
            QuantizedWeight::Int4 {
                codes,
                scales,
                mins,
                group,
            } => Some(cpu_gemv::Int4 {
                codes,
                scales,
                mins,
                group: *group,
            }),
            QuantizedWeight::Int8 { .. } => None,
        }
    }

    /// The same codes and scales, shared (no copy).
    pub fn share(&self) -> Self {
        match self {
            QuantizedWeight::Int8 { q, scales } => QuantizedWeight::Int8 {
                q: q.shallow_clone(),
                scales: scales.shallow_clone(),
            },
            QuantizedWeight::Int4 {
                codes,
                scales,
                mins,
                group,
            } => QuantizedWeight::Int4 {
                codes: codes.shallow_clone(),
                scales: scales.shallow_clone(),
                mins: mins.shallow_clone(),
                group: *group,
            },
        }
    }

    /// The form these codes are in.
    pub fn how(&self) -> Quantization {
        match self {
            QuantizedWeight::Int8 { .. } => Quantization::Int8,
            QuantizedWeight::Int4 { group, .. } => Quantization::Int4 { group: *group },
        }
    }

    /// The tensors this weight is saved as, for the dense weight's name `name` (`….weight`):
    /// `{name}_codes` and `{name}_scales` (int4 also `{name}_mins`), each in its field's dtype
    /// and layout. [`read`](Self::read) takes them back.
    pub fn tensors(&self, name: &str) -> Vec<(String, Tensor)> {
        let named = |suffix: &str, t: &Tensor| (format!("{name}_{suffix}"), t.shallow_clone());
        match self {
            QuantizedWeight::Int8 { q, scales } => {
                vec![named("codes", q), named("scales", scales)]
            }
            QuantizedWeight::Int4 {
                codes,
                scales,
                mins,
                ..
            } => vec![
                named("codes", codes),
                named("scales", scales),
                named("mins", mins),
            ],
        }
    }

    /// Whether `checkpoint` holds weight `name` as [`tensors`](Self::tensors) saves it.
    pub fn is_saved(checkpoint: &Checkpoint, name: &str) -> bool {
        checkpoint.contains(&format!("{name}_codes"))
    }

    /// Reads weight `name` of dense shape `[out, in]` from `checkpoint`, saved in form `how` by
    /// [`tensors`](Self::tensors) (each slice's file pages released once read). Returns the weight
    /// and the checkpoint names it took; an error names a missing tensor, or one whose dtype or
    /// shape is not the form's.
    pub fn read(
        checkpoint: &Checkpoint,
        name: &str,
        how: Quantization,
        [out, inner]: [i64; 2],
    ) -> crate::Result<(Self, Vec<String>)> {
        let mut names = Vec::new();
        let mut take = |suffix: &str, dtype: Dtype, shape: Vec<i64>| -> crate::Result<Tensor> {
            let full = format!("{name}_{suffix}");
            let file: std::path::PathBuf = checkpoint
                .file_of(&full)
                .unwrap_or(checkpoint.location())
                .into();
            let info = checkpoint.info(&full).ok_or_else(|| Error::MissingTensor {
                name: full.clone(),
                location: checkpoint.location().into(),
                tried: full.clone(),
            })?;
            if info.dtype != dtype {
                return Err(Error::DtypeMismatch {
                    name: full,
                    file,
                    expected: format!("{dtype:?} ({how} codes)"),
                    found: format!("{:?}", info.dtype),
                });
            }
            if info.shape != shape {
                return Err(Error::ShapeMismatch {
                    name: full,
                    file,
                    expected: shape,
                    found: info.shape.clone(),
                });
            }
            let t = checkpoint.tensor_released(&full)?;
            names.push(full);
            Ok(t)
        };
        let weight = match how {
            Quantization::Int8 => QuantizedWeight::Int8 {
                q: take("codes", Dtype::I8, vec![out, inner])?,
                scales: take("scales", Dtype::BF16, vec![out])?,
            },
            Quantization::Int4 { group } => {
                let groups = inner / group;
                if inner % group != 0 {
                    return Err(Error::Json {
                        path: checkpoint.location().into(),
                        message: format!(
                            "`{name}` has {inner} inputs, not a multiple of int4's group {group}"
                        ),
                    });
                }
                QuantizedWeight::Int4 {
                    codes: take("codes", Dtype::U8, vec![out, inner / 2])?,
                    scales: take("scales", Dtype::BF16, vec![out, groups])?,
                    mins: take("mins", Dtype::BF16, vec![out, groups])?,
                    group,
                }
            }
        };
        Ok((weight, names))
    }

    /// The bytes the codes and scales take.
    pub fn bytes(&self) -> i64 {
        let size = |t: &Tensor| t.numel() as i64 * t.kind().elt_size_in_bytes() as i64;
        match self {
            QuantizedWeight::Int8 { q, scales } => size(q) + size(scales),
            QuantizedWeight::Int4 {
                codes,
                scales,
                mins,
                ..
            } => size(codes) + size(scales) + size(mins),
        }
    }
}

/// How much f32 one quantizing step holds (per slice of rows).
const SLICE_BYTES: i64 = 32 << 20;

/// Int4 codes of `w` `[n, in]` packed as [`cpu_gemv::Int4`] lays them out, and its groups'
/// scales and minimums `[n, in / group]` (bf16).
fn int4_slice(w: &Tensor, group: i64) -> (Tensor, Tensor, Tensor) {
    let (out, inner) = (w.size()[0], w.size()[1]);
    let w = w.to_kind(Kind::Float).view([out, inner / group, group]);
    let min = w.amin([2].as_slice(), true);
    let max = w.amax([2].as_slice(), true);
    // Rounded through bf16 first, so the codes are chosen for the scales and minimums the
    // kernels multiply with.
    let scales = ((&max - &min) / 15.0)
        .clamp_min(1e-12)
        .to_kind(Kind::BFloat16)
        .to_kind(Kind::Float);
    let mins = min.to_kind(Kind::BFloat16).to_kind(Kind::Float);
    let q = ((w - &mins) / &scales)
        .round()
        .clamp(0.0, 15.0)
        .to_kind(Kind::Uint8)
        .view([out, inner / 32, 2, 16]);
    // Byte b of each 32 inputs: input b low, input 16 + b high.
    let codes = (q.select(2, 0) + q.select(2, 1) * 16).view([out, inner / 2]);
    let groups = [out, inner / group];
    (
        codes,
        scales.view(groups).to_kind(Kind::BFloat16),
        mins.view(groups).to_kind(Kind::BFloat16),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_print() {
        assert_eq!("int8".parse(), Ok(Quantization::Int8));
        assert_eq!(
            "int4".parse(),
            Ok(Quantization::Int4 {
                group: DEFAULT_INT4_GROUP
            })
        );
        assert_eq!("int4:128".parse(), Ok(Quantization::Int4 { group: 128 }));
        for bad in ["int3", "int4:48", "int4:", "fp8"] {
            let err = bad.parse::<Quantization>().unwrap_err();
            assert!(err.contains(bad) && err.contains("int4:G"), "{err}");
        }
        assert_eq!(Quantization::Int4 { group: 64 }.to_string(), "int4:64");
    }

    #[test]
    fn loading_reads_saved_codes_quantizes_dense_ones_and_refuses_a_second_form() {
        let (int8, int4) = (Quantization::Int8, Quantization::Int4 { group: 32 });
        assert_eq!(Loading::resolve(None, None), Ok(Loading::Dense));
        assert_eq!(
            Loading::resolve(None, Some(int4)),
            Ok(Loading::Quantize(int4))
        );
        assert_eq!(Loading::resolve(Some(int8), None), Ok(Loading::Saved(int8)));
        assert_eq!(
            Loading::resolve(Some(int8), Some(int8)),
            Ok(Loading::Saved(int8))
        );
        let err = Loading::resolve(Some(int8), Some(int4)).unwrap_err();
        assert!(
            err.contains("int8 weights") && err.contains("as int4:32"),
            "{err}"
        );
        assert_eq!(Loading::Saved(int4).quantization(), Some(int4));
        assert_eq!(Loading::Dense.quantization(), None);
    }

    /// The dequantized weight each form stands for, computed from its definition.
    fn close_to_dense(how: Quantization, tolerance: f64) {
        tch::manual_seed(0);
        let w = Tensor::randn([96, 128], (Kind::Float, tch::Device::Cpu)) * 0.05;
        let x = Tensor::randn([5, 128], (Kind::Float, tch::Device::Cpu));
        let q = QuantizedWeight::quantize(&w, how).unwrap();
        let dense = x.matmul(&w.tr());
        let y = q.matmul(&x);
        assert_eq!(y.size(), [5, 96]);
        assert_eq!(y.kind(), Kind::Float);
        let err = (&y - &dense).abs().max().double_value(&[]);
        let scale = dense.abs().max().double_value(&[]);
        assert!(err < tolerance * scale, "{how}: {err} against {scale}");
    }

    #[test]
    fn int8_is_close_to_the_dense_product() {
        close_to_dense(Quantization::Int8, 0.02);
    }

    #[test]
    fn int4_is_close_to_the_dense_product() {
        close_to_dense(Quantization::Int4 { group: 32 }, 0.12);
        close_to_dense(Quantization::Int4 { group: 128 }, 0.15);
    }

    #[test]
    fn configs_name_the_saved_form_and_refuse_others() {
        let read = |q: serde_json::Value| {
            Quantization::from_config(&serde_json::json!({ "quantization_config": q }))
        };
        for how in [
            Quantization::Int8,
            Quantization::Int4 { group: 32 },
            Quantization::Int4 { group: 128 },
        ] {
            assert_eq!(read(how.to_config()), Ok(Some(how)));
        }
        assert_eq!(Quantization::from_config(&serde_json::json!({})), Ok(None));
        assert_eq!(read(serde_json::Value::Null), Ok(None));
        let gptq = read(serde_json::json!({"quant_method": "gptq", "bits": 4})).unwrap_err();
        assert!(gptq.contains("`gptq`"), "{gptq}");
        let odd = serde_json::json!({"quant_method": QUANT_METHOD, "bits": 4, "group_size": 48});
        assert!(read(odd).unwrap_err().contains("int4:48"));
        let three = read(serde_json::json!({"quant_method": QUANT_METHOD, "bits": 3})).unwrap_err();
        assert!(three.contains("bits 8"), "{three}");
    }

    #[test]
    fn int8_prompts_and_rows_multiply_the_dequantized_weight() {
        tch::manual_seed(2);
        let w = Tensor::randn([48, 64], (Kind::Float, tch::Device::Cpu));
        let q = QuantizedWeight::quantize(&w, Quantization::Int8).unwrap();
        let x = Tensor::randn([INT8_DEQUANTIZE_ROWS, 64], (Kind::Float, tch::Device::Cpu));
        let QuantizedWeight::Int8 { q: codes, scales } = &q else {
            unreachable!()
        };
        let dequantized = codes.to_kind(Kind::Float) * scales.to_kind(Kind::Float).unsqueeze(1);
        let exact = x.matmul(&dequantized.tr());
        // Exact but for the activations, which with VNNI (a prompt's rows in the integer GEMM,
        // a decoding step's in the matrix-vector kernel) are rounded to 8 bits per block of 32
        // (Q8_0, scale amax/127). Each output is then off by at most sum_k |w_jk| * scale_k / 2.
        let half_step = (x.view([-1, 2, 32]).abs().amax([2], true) / 254.0)
            .repeat([1, 1, 32])
            .view([-1, 64]);
        let bound = half_step.matmul(&dequantized.abs().tr());
        let excess = |got: &Tensor, rows: i64| {
            ((got - exact.narrow(0, 0, rows)).abs() - bound.narrow(0, 0, rows) - 1e-4)
                .max()
                .double_value(&[])
        };
        let by_prompt = q.matmul(&x);
        assert!(excess(&by_prompt, INT8_DEQUANTIZE_ROWS) <= 0.0);
        let by_row = q.matmul(&x.narrow(0, 0, 1));
        assert!(excess(&by_row, 1) <= 0.0);
    }

    /// Whether two quantized weights hold the same form, codes, scales and minimums.
    fn same_codes(a: &QuantizedWeight, b: &QuantizedWeight) -> bool {
        let (a_parts, b_parts) = (a.tensors("w"), b.tensors("w"));
        a.how() == b.how()
            && a_parts.len() == b_parts.len()
            && a_parts
                .iter()
                .zip(&b_parts)
                .all(|((_, x), (_, y))| x.equal(y))
    }

    #[test]
    fn slices_quantize_as_the_whole_weight_does() {
        let w = Tensor::randn([1040, 64], (Kind::Float, tch::Device::Cpu));
        for how in [Quantization::Int8, Quantization::Int4 { group: 32 }] {
            let whole = QuantizedWeight::quantize_sliced(&w, how, i64::MAX).unwrap();
            // 256 rows a slice: five slices, the last 16 rows.
            let sliced = QuantizedWeight::quantize_sliced(&w, how, 256 * 64 * 4).unwrap();
            assert!(same_codes(&whole, &sliced), "{how}: codes differ by slices");
        }
    }

    #[test]
    fn the_one_pass_quantizer_equals_the_tensor_ops() {
        tch::manual_seed(4);
        for kind in [Kind::BFloat16, Kind::Half, Kind::Float] {
            // Rows of different ranges, and one constant row (a zero range).
            let w = (Tensor::randn([67, 256], (Kind::Float, tch::Device::Cpu))
                * Tensor::rand([67, 1], (Kind::Float, tch::Device::Cpu))
                * 3.0)
                .to_kind(kind);
            let _ = w.narrow(0, 5, 1).fill_(0.25);
            for how in [
                Quantization::Int8,
                Quantization::Int4 { group: 32 },
                Quantization::Int4 { group: 128 },
            ] {
                let fast = QuantizedWeight::quantize(&w, how).unwrap();
                let ops = QuantizedWeight::quantize_sliced(&w, how, SLICE_BYTES).unwrap();
                assert!(same_codes(&fast, &ops), "{kind:?} {how}");
            }
        }
    }

    #[test]
    fn int4_computes_its_definition() {
        tch::manual_seed(1);
        let w = Tensor::randn([32, 128], (Kind::Float, tch::Device::Cpu));
        let q = QuantizedWeight::quantize(&w, Quantization::Int4 { group: 32 }).unwrap();
        let QuantizedWeight::Int4 {
            codes,
            scales,
            mins,
            ..
        } = &q
        else {
            unreachable!()
        };
        // The codes by their layout, read one by one: byte j / 32 * 16 + j % 16 of a row, low
        // nibble for j % 32 < 16.
        let bytes = Vec::<u8>::try_from(codes.reshape([-1])).unwrap();
        let scales = Vec::<f32>::try_from(scales.to_kind(Kind::Float).reshape([-1])).unwrap();
        let mins = Vec::<f32>::try_from(mins.to_kind(Kind::Float).reshape([-1])).unwrap();
        let mut by_definition = vec![0f32; 32 * 128];
        for r in 0..32 {
            for j in 0..128 {
                let byte = bytes[r * 64 + j / 32 * 16 + j % 16];
                let code = if j % 32 < 16 { byte & 15 } else { byte >> 4 };
                let g = r * 4 + j / 32;
                by_definition[r * 128 + j] = f32::from(code) * scales[g] + mins[g];
            }
        }
        let by_definition = Tensor::from_slice(&by_definition).view([32, 128]);
        assert!(q.dequantize(Kind::Float).equal(&by_definition));
        // Every weight is within half a step of its group's grid (plus bf16's rounding).
        let step = Tensor::from_slice(&scales)
            .view([32, 4])
            .repeat_interleave_self_int(32, 1, None);
        let slack: Tensor = &step * 0.5 + 1e-2 * (w.abs() + &step);
        let off = ((&by_definition - &w).abs() - slack)
            .max()
            .double_value(&[]);
        assert!(off <= 0.0, "{off}");
        // A prompt's rows (the f32 GEMM on dequantized blocks) multiply exactly this weight.
        let eye = Tensor::eye(128, (Kind::Float, tch::Device::Cpu));
        assert!(
            q.matmul(&eye)
                .tr()
                .allclose(&by_definition, 1e-6, 1e-6, false)
        );
        // 5 bits a weight: the codes, then a bf16 scale and minimum per 32.
        assert_eq!(q.bytes(), 32 * 128 / 2 + 2 * 2 * 32 * 4);
    }

    #[test]
    fn int4_names_the_shapes_it_cannot_pack() {
        let w = Tensor::zeros([16, 96], (Kind::Float, tch::Device::Cpu));
        let err = QuantizedWeight::quantize(&w, Quantization::Int4 { group: 64 }).unwrap_err();
        assert!(err.contains("[16, 96]") && err.contains("64"), "{err}");
    }
}
