//! Gemma 3's projector (`Gemma3MultiModalProjector`): the tower's patch grid average-pooled to
//! `tokens_per_side`², a Gemma RMS norm with `(1 + w)`, then `x @ W` with `W` stored `[vision,
//! text]` (a parameter, not a linear layer's `[out, in]` weight).
//!
//! ```text
//! x = patches [B, p*p, Dv] -> [B, Dv, p, p] -> avg_pool(k = p / t) -> [B, t*t, Dv]
//! x = rms_norm(x) * (1 + mm_soft_emb_norm.weight)          # in f32, eps = the tower's
//! y = x @ mm_input_projection_weight                        # [Dv, Dt]
//! ```

use tch::nn::{Init, Path as VarPath};
use tch::{Kind, Tensor};

use crate::{Error, Result};

/// Gemma 3's projector with its weights.
#[derive(Debug)]
pub struct Gemma3Projector {
    /// `[vision]`, the norm's weight (applied as `1 + w`).
    pub norm_weight: Tensor,
    /// `[vision, language]`.
    pub projection: Tensor,
    /// Tokens along each side of the pooled grid.
    pub tokens_per_side: i64,
    /// The norm's epsilon (the tower's `layer_norm_eps`).
    pub eps: f64,
}

impl Gemma3Projector {
    /// Creates `p.mm_soft_emb_norm.weight` (zeros: a unit norm) and `p.mm_input_projection_weight`
    /// (zeros, as transformers initialises it; [`crate::Connector::reset_parameters`] draws a
    /// random start for training).
    pub fn new(p: &VarPath, tokens_per_side: i64, vision: i64, language: i64, eps: f64) -> Self {
        Gemma3Projector {
            norm_weight: p
                .sub("mm_soft_emb_norm")
                .var("weight", &[vision], Init::Const(0.0)),
            projection: p.var(
                "mm_input_projection_weight",
                &[vision, language],
                Init::Const(0.0),
            ),
            tokens_per_side,
            eps,
        }
    }

    /// Projects patch features `[images, patches, vision]` (a square grid of patches) to
    /// `[images, tokens_per_side², language]`.
    pub fn forward(&self, features: &Tensor) -> Result<Tensor> {
        let (images, patches, width) = features.size3().map_err(|_| Error::Grid {
            patches: -1,
            tokens_per_side: self.tokens_per_side,
        })?;
        let side = (patches as f64).sqrt().round() as i64;
        let t = self.tokens_per_side;
        if side * side != patches || t <= 0 || side % t != 0 {
            return Err(Error::Grid {
                patches,
                tokens_per_side: t,
            });
        }
        let kernel = side / t;
        let grid = features
            .transpose(1, 2)
            .reshape([images, width, side, side]);
        let pooled = grid
            .avg_pool2d(
                [kernel, kernel],
                [kernel, kernel],
                [0, 0],
                false,
                true,
                None::<i64>,
            )
            .flatten(2, -1)
            .transpose(1, 2); // [images, t*t, vision]
        let x = pooled.to_kind(Kind::Float);
        let variance = x.pow_tensor_scalar(2).mean_dim(-1, true, Kind::Float);
        let normed = &x * (variance + self.eps).rsqrt();
        let normed = normed * (self.norm_weight.to_kind(Kind::Float) + 1.0);
        let normed = normed.to_kind(pooled.kind());
        Ok(normed.matmul(&self.projection.to_kind(pooled.kind())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;
    use tch::nn::VarStore;

    #[test]
    fn pools_a_grid_then_normalises_and_projects() {
        let vs = VarStore::new(Device::Cpu);
        let p = Gemma3Projector::new(&vs.root(), 2, 3, 5, 1e-6);
        tch::no_grad(|| {
            p.projection
                .shallow_clone()
                .copy_(&Tensor::randn([3, 5], (Kind::Float, Device::Cpu)));
            p.norm_weight
                .shallow_clone()
                .copy_(&Tensor::from_slice(&[0.5f32, -0.25, 1.0]));
        });
        // A 4x4 grid of 3-wide patches, row-major.
        let x = Tensor::randn([2, 16, 3], (Kind::Float, Device::Cpu));
        let y = p.forward(&x).unwrap();
        assert_eq!(y.size(), [2, 4, 5]);
        // Token 1 of image 0 is the mean of patches (0,2), (0,3), (1,2), (1,3).
        let rows = Tensor::from_slice(&[2i64, 3, 6, 7]);
        let mean = x
            .get(0)
            .index_select(0, &rows)
            .mean_dim(0, false, Kind::Float);
        let rms = (mean.pow_tensor_scalar(2).mean(Kind::Float) + 1e-6).rsqrt();
        let want = (&mean * rms * (&p.norm_weight + 1.0)).matmul(&p.projection);
        assert!(y.get(0).get(1).allclose(&want, 1e-5, 1e-6, false));
        // A grid the pool cannot divide is refused, naming both numbers.
        let err = p.forward(&Tensor::zeros([1, 9, 3], (Kind::Float, Device::Cpu)));
        assert!(err.unwrap_err().to_string().contains('9'));
    }
}
