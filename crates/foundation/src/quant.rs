//! Weight-only quantization for inference: a linear layer's weight stored as int8 or int4 codes
//! with scales, multiplied by ATen's CPU kernels (`_weight_int8pack_mm`,
//! `_weight_int4pack_mm_for_cpu`) with bf16 activations.
//!
//! Decoding one token reads every weight once, so at batch 1 its speed is the bytes per weight:
//! int8 reads half of bf16's, int4 a quarter (plus its scales). The dense weight is dropped once
//! the codes are made, so the model's memory shrinks by as much.

use tch::{Kind, Tensor};

/// How a weight is quantized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quantization {
    /// Symmetric int8 per output row: `w ≈ q * scale`, `q` in -128..=127.
    Int8,
    /// Asymmetric int4 per group of `group` consecutive inputs of each output row:
    /// `w ≈ (q - 8) * scale + zero`, `q` in 0..=15 (ATen's and torchao's convention).
    Int4 {
        /// Inputs per scale and zero: 32, 64, 128 or 256.
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

/// From this many rows on (a prompt), an int8 weight is dequantized for the call and multiplied
/// by the dense GEMM: ATen's int8 kernel works row by row, 3.4x slower than a bf16 GEMM at 512
/// rows of Gemma-2B's MLP on 2 cores, against 1.5x for dequantizing first (equal at 128 rows).
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
    /// See [`Quantization::Int4`].
    Int4 {
        /// The codes as `_convert_weight_to_int4pack_for_cpu` packs them (its layout depends on
        /// the CPU's vector width; only ATen's kernel reads it).
        packed: Tensor,
        /// `[in / group, out, 2]`, bf16: each group's scale and zero.
        scales_and_zeros: Tensor,
        /// Inputs per group.
        group: i64,
        /// `out`.
        out_features: i64,
    },
}

impl QuantizedWeight {
    /// Quantizes `weight` `[out, in]` as `how` says. Int4 needs `out` a multiple of 16 and `in` of
    /// the group size (ATen's packing); the error says which does not hold.
    pub fn quantize(weight: &Tensor, how: Quantization) -> Result<Self, String> {
        Self::quantize_sliced(weight, how, SLICE_BYTES)
    }

    /// [`quantize`](Self::quantize), holding about `slice_bytes` of f32 temporaries at a time.
    fn quantize_sliced(
        weight: &Tensor,
        how: Quantization,
        slice_bytes: i64,
    ) -> Result<Self, String> {
        let (out, inner) = match weight.size()[..] {
            [out, inner] => (out, inner),
            ref other => return Err(format!("a weight of shape {other:?} is not a matrix")),
        };
        if let Quantization::Int4 { group } = how {
            if out % 16 != 0 || inner % group != 0 {
                return Err(format!(
                    "int4 needs the outputs a multiple of 16 and the inputs of the group size \
                     {group}; this weight is [{out}, {inner}]"
                ));
            }
        }
        // A slice of rows at a time: the f32 temporaries of one slice, not of the whole weight
        // (Gemma's 1 GB embedding made several GB of them). Slices are whole multiples of 256
        // rows, so ATen's int4 packing of each is the packing of the whole, row for row.
        let per = ((slice_bytes / (4 * inner.max(1))).max(1) / 256).max(1) * 256;
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
                let (mut packed, mut scales_and_zeros) = (Vec::new(), Vec::new());
                for (row, n) in slices {
                    let (p, sz) = int4_slice(&weight.narrow(0, row, n), group);
                    packed.push(p);
                    scales_and_zeros.push(sz);
                }
                Ok(QuantizedWeight::Int4 {
                    packed: Tensor::cat(&packed, 0),
                    // [groups, out, 2]: the slices' outputs side by side.
                    scales_and_zeros: Tensor::cat(&scales_and_zeros, 1),
                    group,
                    out_features: out,
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

    /// `x W^T` for `x` `[..., in]`, computed with bf16 activations and returned in `x`'s dtype.
    /// Int8 inputs of at least [`INT8_DEQUANTIZE_ROWS`] rows (prompts) multiply the weight
    /// dequantized for the call instead.
    pub fn matmul(&self, x: &Tensor) -> Tensor {
        let mut shape = x.size();
        let inner = *shape.last().expect("an input has a last dimension");
        let rows = x.numel() as i64 / inner.max(1);
        if let QuantizedWeight::Int8 { q, scales } = self {
            if let Some(y) = crate::cpu_gemv::int8(x, q, scales) {
                return y;
            }
            if rows >= INT8_DEQUANTIZE_ROWS {
                let w = q.to_kind(x.kind()) * scales.to_kind(x.kind()).unsqueeze(1);
                return x.matmul(&w.tr());
            }
        }
        let x2 = x.reshape([-1, inner]).to_kind(Kind::BFloat16);
        let (y, out) = match self {
            QuantizedWeight::Int8 { q, scales } => {
                (x2.internal_weight_int8pack_mm(q, scales), q.size()[0])
            }
            QuantizedWeight::Int4 {
                packed,
                scales_and_zeros,
                group,
                out_features,
            } => (
                x2.internal_weight_int4pack_mm_for_cpu(packed, *group, scales_and_zeros),
                *out_features,
            ),
        };
        *shape.last_mut().expect("checked") = out;
        y.to_kind(x.kind()).reshape(shape.as_slice())
    }

    /// The same codes and scales, shared (no copy).
    pub fn share(&self) -> Self {
        match self {
            QuantizedWeight::Int8 { q, scales } => QuantizedWeight::Int8 {
                q: q.shallow_clone(),
                scales: scales.shallow_clone(),
            },
            QuantizedWeight::Int4 {
                packed,
                scales_and_zeros,
                group,
                out_features,
            } => QuantizedWeight::Int4 {
                packed: packed.shallow_clone(),
                scales_and_zeros: scales_and_zeros.shallow_clone(),
                group: *group,
                out_features: *out_features,
            },
        }
    }

    /// The bytes the codes and scales take.
    pub fn bytes(&self) -> i64 {
        let size = |t: &Tensor| t.numel() as i64 * t.kind().elt_size_in_bytes() as i64;
        match self {
            QuantizedWeight::Int8 { q, scales } => size(q) + size(scales),
            QuantizedWeight::Int4 {
                packed,
                scales_and_zeros,
                ..
            } => size(packed) + size(scales_and_zeros),
        }
    }
}

/// How much f32 one quantizing step holds (per slice of rows).
const SLICE_BYTES: i64 = 32 << 20;

/// Int4 codes of `w` `[n, in]` packed by ATen, and its groups' scales and zeros `[groups, n, 2]`.
fn int4_slice(w: &Tensor, group: i64) -> (Tensor, Tensor) {
    let (out, inner) = (w.size()[0], w.size()[1]);
    let w = w.to_kind(Kind::Float).view([out, inner / group, group]);
    let min = w.amin([2].as_slice(), true);
    let max = w.amax([2].as_slice(), true);
    let scales = ((&max - &min) / 15.0).clamp_min(1e-12);
    // Rounded through bf16 first, so the codes are chosen for the scales and zeros the kernel
    // multiplies with.
    let scales = scales.to_kind(Kind::BFloat16).to_kind(Kind::Float);
    let zeros = (&min + &scales * 8.0)
        .to_kind(Kind::BFloat16)
        .to_kind(Kind::Float);
    // w = (q - 8) * s + z  =>  q = (w - z) / s + 8.
    let q = ((w - &zeros) / &scales + 8.0)
        .round()
        .clamp(0.0, 15.0)
        .to_kind(Kind::Int)
        .view([out, inner]);
    let packed = q.internal_convert_weight_to_int4pack_for_cpu(1);
    // [out, groups, 1] twice -> [groups, out, 2].
    let scales_and_zeros = Tensor::cat(&[scales, zeros], 2)
        .transpose(0, 1)
        .contiguous()
        .to_kind(Kind::BFloat16);
    (packed, scales_and_zeros)
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
    fn int8_prompts_multiply_the_dequantized_weight() {
        tch::manual_seed(2);
        let w = Tensor::randn([48, 64], (Kind::Float, tch::Device::Cpu));
        let q = QuantizedWeight::quantize(&w, Quantization::Int8).unwrap();
        let x = Tensor::randn([INT8_DEQUANTIZE_ROWS, 64], (Kind::Float, tch::Device::Cpu));
        let QuantizedWeight::Int8 { q: codes, scales } = &q else {
            unreachable!()
        };
        let dequantized = codes.to_kind(Kind::Float) * scales.to_kind(Kind::Float).unsqueeze(1);
        let by_rows = q.matmul(&x.narrow(0, 0, 1));
        let by_prompt = q.matmul(&x);
        assert!(by_prompt.allclose(&x.matmul(&dequantized.tr()), 1e-5, 1e-5, false));
        // One row through the int8 kernel (bf16 activations) is close to the same row.
        let diff = (by_rows - by_prompt.narrow(0, 0, 1))
            .abs()
            .max()
            .double_value(&[]);
        assert!(diff < 0.1, "{diff}");
    }

    #[test]
    fn slices_quantize_as_the_whole_weight_does() {
        let w = Tensor::randn([1040, 64], (Kind::Float, tch::Device::Cpu));
        for how in [Quantization::Int8, Quantization::Int4 { group: 32 }] {
            let whole = QuantizedWeight::quantize_sliced(&w, how, i64::MAX).unwrap();
            // 256 rows a slice: five slices, the last 16 rows.
            let sliced = QuantizedWeight::quantize_sliced(&w, how, 256 * 64 * 4).unwrap();
            match (whole, sliced) {
                (
                    QuantizedWeight::Int8 { q, scales },
                    QuantizedWeight::Int8 { q: q2, scales: s2 },
                ) => {
                    assert!(q.equal(&q2) && scales.equal(&s2));
                }
                (
                    QuantizedWeight::Int4 {
                        packed,
                        scales_and_zeros,
                        ..
                    },
                    QuantizedWeight::Int4 {
                        packed: p2,
                        scales_and_zeros: sz2,
                        ..
                    },
                ) => {
                    assert!(packed.equal(&p2), "{how}: packing differs by slices");
                    assert!(scales_and_zeros.equal(&sz2));
                }
                _ => unreachable!(),
            }
        }
    }

    #[test]
    fn int4_computes_its_definition() {
        // Codes, scales and zeros read back through the kernel with an identity input give
        // (q - 8) * s + z for every weight: the kernel and our convention agree.
        tch::manual_seed(1);
        let w = Tensor::randn([32, 64], (Kind::Float, tch::Device::Cpu));
        let q = QuantizedWeight::quantize(&w, Quantization::Int4 { group: 32 }).unwrap();
        let eye = Tensor::eye(64, (Kind::Float, tch::Device::Cpu));
        let back = q.matmul(&eye).tr(); // [32, 64]
        // Every weight is within half a step of its group's grid.
        let QuantizedWeight::Int4 {
            scales_and_zeros, ..
        } = &q
        else {
            unreachable!()
        };
        let step = scales_and_zeros
            .select(2, 0)
            .to_kind(Kind::Float)
            .tr()
            .repeat_interleave_self_int(32, 1, None);
        let slack: Tensor = &step * 0.5 + step.abs() * 1e-2;
        let off = ((&back - &w).abs() - slack).max().double_value(&[]);
        assert!(off <= 0.02, "{off}");
        assert!(q.bytes() < 32 * 64 / 2 + 2 * 2 * 2 * 32 + 1);
    }

    #[test]
    fn int4_names_the_shapes_it_cannot_pack() {
        let w = Tensor::zeros([20, 64], (Kind::Float, tch::Device::Cpu));
        let err = QuantizedWeight::quantize(&w, Quantization::Int4 { group: 32 }).unwrap_err();
        assert!(err.contains("[20, 64]"), "{err}");
    }
}
