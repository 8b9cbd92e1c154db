//! Layers shared by the models, with Hugging Face's parameter names and initialisation.

use tch::nn::{Init, Path};
use tch::{Kind, Tensor};

use crate::quant::{Quantization, QuantizedWeight};

/// A linear layer `y = x W^T + b` with `weight: [out, in]` and an optional `bias: [out]`, as in
/// `torch.nn.Linear`. Weights start from N(0, `std`), biases from zero, as HF's `_init_weights` does.
/// A layer may carry a [`Lora`] adapter, which adds its low-rank update to the output.
#[derive(Debug)]
pub struct Linear {
    /// `[out, in]`.
    pub weight: Tensor,
    /// `[out]`, when the layer has one.
    pub bias: Option<Tensor>,
    /// A low-rank adapter, when one is attached.
    pub lora: Option<Lora>,
    /// The weight quantized for inference ([`quantize`](Linear::quantize)), which `forward`
    /// then uses; `weight` is emptied.
    pub quantized: Option<QuantizedWeight>,
}

/// A LoRA adapter (Hu et al., 2021) on a linear layer, as PEFT's `lora.Linear` computes it:
/// `y = x W^T + b + scale * B(A(dropout(x)))`, with `a: [r, in]`, `b: [out, r]` and
/// `scale = alpha / r` (`alpha / sqrt(r)` with rsLoRA). The adapter's weights are kept in f32
/// (they train, with the optimizer's f32 moments), and the update is computed in the input's dtype
/// with them cast to it, as `torch.autocast` computes it: bf16 on a GPU, so no f32 copy of each
/// adapted layer's input is kept for backward; on the CPU (f32) it is PEFT's computation exactly.
#[derive(Debug)]
pub struct Lora {
    /// `lora_A.weight`, `[r, in]`.
    pub a: Tensor,
    /// `lora_B.weight`, `[out, r]`.
    pub b: Tensor,
    /// `alpha / r`, or `alpha / sqrt(r)`.
    pub scale: f64,
    /// Dropout on the adapter's input while training.
    pub dropout: f64,
    /// Whether the model is training (dropout on); shared by all adapters of a model.
    pub training: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Lora {
    /// The adapter's update for `x` `[..., in]`, in `x`'s dtype.
    pub fn update(&self, x: &Tensor) -> Tensor {
        let training = self.training.load(std::sync::atomic::Ordering::Relaxed);
        let dropped;
        let x = if training && self.dropout > 0.0 {
            dropped = x.dropout(self.dropout, true);
            &dropped
        } else {
            x
        };
        // The scale is folded into `B` (`[out, r]`, small) rather than applied to the `[.., out]`
        // update: one activation-sized temporary less in each pass.
        let kind = x.kind();
        x.linear::<Tensor>(&self.a.to_kind(kind), None)
            .linear::<Tensor>(&(&self.b * self.scale).to_kind(kind), None)
    }

    /// `scale * B A`, `[out, in]` in the adapter's dtype: what merging adds to the weight.
    pub fn delta_weight(&self) -> Tensor {
        self.b.matmul(&self.a) * self.scale
    }
}

/// Variable `weight` of `dims` under `path`, drawn from a normal distribution with `std`; while a
/// model whose weights are loaded next is built ([`crate::build_to_load`]) it is left unwritten
/// instead (no memory touched until the checkpoint fills it): drawing 2.5 billion bf16 normals
/// alone takes most of a minute on two cores, and untouched pages let a quantized load hold one
/// layer's dense weights at a time.
pub fn weight(path: &Path, dims: &[i64], std: f64) -> Tensor {
    if crate::building_to_load() {
        path.add(
            "weight",
            Tensor::empty(dims, (path.kind(), path.device())),
            true,
        )
    } else {
        path.var(
            "weight",
            dims,
            Init::Randn {
                mean: 0.0,
                stdev: std,
            },
        )
    }
}

impl Linear {
    /// Creates `path.weight` (and `path.bias` when `bias`).
    pub fn new(path: &Path, in_dim: i64, out_dim: i64, bias: bool, std: f64) -> Self {
        let weight = weight(path, &[out_dim, in_dim], std);
        let bias = bias.then(|| path.var("bias", &[out_dim], Init::Const(0.0)));
        Linear {
            weight,
            bias,
            lora: None,
            quantized: None,
        }
    }

    /// Quantizes the weight for inference (see [`QuantizedWeight`]): an attached adapter is
    /// merged first, then the dense weight is replaced by its codes and scales (its memory freed,
    /// also in the variable store that shares it), and `forward` multiplies with those. Meant for
    /// the CPU, where our kernels multiply them (`cpu_gemv`); elsewhere the weight is dequantized
    /// for every call.
    pub fn quantize(&mut self, how: Quantization) -> Result<(), String> {
        self.merge_lora();
        self.quantized = Some(QuantizedWeight::replace(&mut self.weight, how)?);
        Ok(())
    }

    /// Applies the layer to the last dimension of `x`.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        if let Some(quantized) = &self.quantized {
            let y = quantized.matmul(x);
            return match &self.bias {
                Some(bias) => {
                    let kind = y.kind();
                    y + bias.to_kind(kind)
                }
                None => y,
            };
        }
        let y = match crate::cpu_gemv::linear(x, &self.weight) {
            Some(y) => match &self.bias {
                Some(bias) => y + bias,
                None => y,
            },
            None => x.linear(&self.weight, self.bias.as_ref()),
        };
        match &self.lora {
            None => y,
            // In place: the base product is not needed by its own backward pass.
            Some(lora) => {
                let mut y = y;
                y += lora.update(x);
                y
            }
        }
    }

    /// Folds the adapter into the weight (`W += scale * B A`, computed in the adapter's dtype and
    /// rounded once into the weight's) and removes it. Without an adapter, nothing happens.
    pub fn merge_lora(&mut self) {
        if let Some(lora) = self.lora.take() {
            tch::no_grad(|| {
                let merged = (self.weight.to_kind(lora.a.kind()) + lora.delta_weight())
                    .to_kind(self.weight.kind());
                self.weight.shallow_clone().copy_(&merged);
            });
        }
    }
}

/// A lookup table `weight: [num, dim]`, as `torch.nn.Embedding`, initialised from N(0, `std`).
#[derive(Debug)]
pub struct Embedding {
    /// `[num, dim]`.
    pub weight: Tensor,
    /// The table's quantized rows ([`quantize`](Embedding::quantize)), which `forward` then looks
    /// up; `weight` is emptied.
    pub quantized: Option<QuantizedWeight>,
}

impl Embedding {
    /// Creates `path.weight`.
    pub fn new(path: &Path, num: i64, dim: i64, std: f64) -> Self {
        let weight = weight(path, &[num, dim], std);
        Embedding {
            weight,
            quantized: None,
        }
    }

    /// Replaces the table by its quantized rows, int8 with per-row scales or int4 with per-group
    /// scales and minimums (its memory freed, also in the variable store); looked-up rows are
    /// dequantized to the table's dtype. A tied head multiplies with the same codes.
    pub fn quantize(&mut self, how: Quantization) -> Result<(), String> {
        self.quantized = Some(QuantizedWeight::replace(&mut self.weight, how)?);
        Ok(())
    }

    /// Looks up the rows for the integer ids in `ids`.
    pub fn forward(&self, ids: &Tensor) -> Tensor {
        match &self.quantized {
            Some(quantized) => quantized.rows(ids, self.weight.kind()),
            None => Tensor::embedding(&self.weight, ids, -1, false, false),
        }
    }
}

/// Layer normalisation over the last dimension with `weight` and `bias`, as `torch.nn.LayerNorm`.
#[derive(Debug)]
pub struct LayerNorm {
    /// `[dim]`, initialised to one.
    pub weight: Tensor,
    /// `[dim]`, initialised to zero.
    pub bias: Tensor,
    /// Added to the variance.
    pub eps: f64,
}

impl LayerNorm {
    /// Creates `path.weight` and `path.bias`.
    pub fn new(path: &Path, dim: i64, eps: f64) -> Self {
        LayerNorm {
            weight: path.var("weight", &[dim], Init::Const(1.0)),
            bias: path.var("bias", &[dim], Init::Const(0.0)),
            eps,
        }
    }

    /// Normalises the last dimension of `x`.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let dim = *x.size().last().expect("layer norm of a scalar");
        x.layer_norm([dim], Some(&self.weight), Some(&self.bias), self.eps, true)
    }
}

/// A `[shape]` f32 CPU tensor drawn from N(0, `std`) by a generator seeded with `seed`: the same
/// numbers on every machine and device, whatever else used libtorch's global generator meanwhile.
pub fn seeded_normal(shape: &[i64], std: f64, seed: u64) -> Tensor {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let n: i64 = shape.iter().product();
    let values: Vec<f32> = (0..n)
        .map(|_| {
            // Box-Muller: two uniforms to one standard normal.
            let u1: f64 = 1.0 - rng.random::<f64>();
            let u2: f64 = rng.random();
            ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos() * std) as f32
        })
        .collect();
    Tensor::from_slice(&values).view(shape)
}

/// A `[shape]` f32 CPU tensor drawn from U(-`bound`, `bound`) by a generator seeded with `seed`
/// (see [`seeded_normal`]).
pub fn seeded_uniform(shape: &[i64], bound: f64, seed: u64) -> Tensor {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let n: i64 = shape.iter().product();
    let values: Vec<f32> = (0..n)
        .map(|_| ((2.0 * rng.random::<f64>() - 1.0) * bound) as f32)
        .collect();
    Tensor::from_slice(&values).view(shape)
}

/// Largest absolute difference between two tensors of the same shape, in f64.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    if a.numel() == 0 {
        return 0.0;
    }
    (a.to_kind(Kind::Double) - b.to_kind(Kind::Double))
        .abs()
        .max()
        .double_value(&[])
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, nn::VarStore};

    #[test]
    fn seeded_normal_is_reproducible_and_normal() {
        let a = seeded_normal(&[200, 50], 0.5, 3);
        assert!(a.equal(&seeded_normal(&[200, 50], 0.5, 3)));
        assert!(!a.equal(&seeded_normal(&[200, 50], 0.5, 4)));
        let std = a.std(true).double_value(&[]);
        assert!((std - 0.5).abs() < 0.02, "{std}");
    }

    #[test]
    fn seeded_uniform_stays_in_bounds() {
        let a = seeded_uniform(&[100, 100], 0.25, 7);
        assert!(a.equal(&seeded_uniform(&[100, 100], 0.25, 7)));
        assert!(a.abs().max().double_value(&[]) <= 0.25);
        // U(-b, b) has standard deviation b / sqrt(3).
        let std = a.std(true).double_value(&[]);
        assert!((std - 0.25 / 3f64.sqrt()).abs() < 0.005, "{std}");
    }

    #[test]
    fn names_and_shapes_follow_torch_nn() {
        let vs = VarStore::new(Device::Cpu);
        let root = vs.root();
        let lin = Linear::new(&root.sub("proj"), 3, 5, true, 0.02);
        let _ = Embedding::new(&root.sub("embed"), 7, 3, 0.02);
        let _ = LayerNorm::new(&root.sub("norm"), 3, 1e-5);
        let mut names: Vec<_> = vs.variables().into_keys().collect();
        names.sort();
        assert_eq!(
            names,
            [
                "embed.weight",
                "norm.bias",
                "norm.weight",
                "proj.bias",
                "proj.weight"
            ]
        );
        let y = lin.forward(&Tensor::ones([2, 3], (Kind::Float, Device::Cpu)));
        assert_eq!(y.size(), [2, 5]);
    }
}
