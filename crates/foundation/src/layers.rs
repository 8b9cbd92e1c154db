//! Layers shared by the models, with Hugging Face's parameter names and initialisation.

use tch::nn::{Init, Path};
use tch::{Kind, Tensor};

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
    /// The weight quantized to int8 for inference ([`quantize_int8`](Linear::quantize_int8)),
    /// which `forward` then uses instead of `weight`.
    pub int8: Option<Int8Weight>,
}

/// The most rows (tokens) an int8 layer multiplies with its int8 weight; more go through the
/// dense weight.
pub const INT8_MAX_ROWS: i64 = 16;

/// A weight quantized to int8 per output row (symmetric: `w ≈ q * scale`), multiplied by ATen's
/// `_weight_int8pack_mm` with bf16 activations: decoding reads a quarter of an f32 weight's bytes
/// and half of a bf16 one's.
#[derive(Debug)]
pub struct Int8Weight {
    /// `[out, in]`, int8.
    pub q: Tensor,
    /// `[out]`, bf16: `max |w_row| / 127`.
    pub scales: Tensor,
}

impl Int8Weight {
    /// Quantizes `weight` `[out, in]` row by row.
    pub fn quantize(weight: &Tensor) -> Self {
        tch::no_grad(|| {
            let w = weight.to_kind(tch::Kind::Float);
            let scales = (w.abs().amax([1].as_slice(), false) / 127.0).clamp_min(1e-12);
            let q = (w / scales.unsqueeze(1))
                .round()
                .clamp(-128.0, 127.0)
                .to_kind(tch::Kind::Int8)
                .contiguous();
            Int8Weight {
                q,
                scales: scales.to_kind(tch::Kind::BFloat16),
            }
        })
    }

    /// `x W^T` for `x` `[..., in]` (computed in bf16, returned in `x`'s dtype).
    pub fn matmul(&self, x: &Tensor) -> Tensor {
        let mut shape = x.size();
        let inner = *shape.last().expect("an input has a last dimension");
        let out = self.q.size()[0];
        let x2 = x.reshape([-1, inner]).to_kind(tch::Kind::BFloat16);
        let y = x2.internal_weight_int8pack_mm(&self.q, &self.scales);
        *shape.last_mut().expect("checked") = out;
        y.to_kind(x.kind()).reshape(shape.as_slice())
    }
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

impl Linear {
    /// Creates `path.weight` (and `path.bias` when `bias`).
    pub fn new(path: &Path, in_dim: i64, out_dim: i64, bias: bool, std: f64) -> Self {
        let weight = path.var(
            "weight",
            &[out_dim, in_dim],
            Init::Randn {
                mean: 0.0,
                stdev: std,
            },
        );
        let bias = bias.then(|| path.var("bias", &[out_dim], Init::Const(0.0)));
        Linear {
            weight,
            bias,
            lora: None,
            int8: None,
        }
    }

    /// Quantizes the weight to int8 for inference (see [`Int8Weight`]); `forward` uses it from
    /// now on for inputs of at most [`INT8_MAX_ROWS`] rows (decoding), the dense weight, which is
    /// kept, for longer ones (prompts). An attached adapter is merged first. The CPU only: ATen
    /// has no CUDA kernel for it.
    pub fn quantize_int8(&mut self) {
        self.merge_lora();
        self.int8 = Some(Int8Weight::quantize(&self.weight));
    }

    /// Applies the layer to the last dimension of `x`.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        // Int8 weights for decoding's few rows; a prompt's many rows go through the dense
        // weight's GEMM, which ATen's int8 kernel (a matrix-vector product per row) is far slower
        // than (2.4x on the prefill of a Gemma-2B-shaped model, 2 CPU cores).
        let rows = x.numel() as i64 / x.size().last().copied().unwrap_or(1).max(1);
        if let Some(int8) = self.int8.as_ref().filter(|_| rows <= INT8_MAX_ROWS) {
            let y = int8.matmul(x);
            return match &self.bias {
                Some(bias) => y + bias,
                None => y,
            };
        }
        let y = x.linear(&self.weight, self.bias.as_ref());
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
}

impl Embedding {
    /// Creates `path.weight`.
    pub fn new(path: &Path, num: i64, dim: i64, std: f64) -> Self {
        let weight = path.var(
            "weight",
            &[num, dim],
            Init::Randn {
                mean: 0.0,
                stdev: std,
            },
        );
        Embedding { weight }
    }

    /// Looks up the rows for the integer ids in `ids`.
    pub fn forward(&self, ids: &Tensor) -> Tensor {
        Tensor::embedding(&self.weight, ids, -1, false, false)
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
