//! The rotary position embedding (rotate-half layout), as transformers computes it.

use tch::{Device, Kind, Tensor};

use crate::config::GemmaConfig;

/// Rotary position embedding in the rotate-half layout.
#[derive(Debug)]
pub(crate) struct Rotary {
    /// `[head_dim / 2]`, f32.
    inv_freq: Tensor,
}

impl Rotary {
    pub(crate) fn new(config: &GemmaConfig, device: Device) -> Self {
        let dim = config.head_dim;
        let exponents = Tensor::arange_start_step(0, dim, 2, (Kind::Int64, device))
            .to_kind(Kind::Float)
            / dim as f64;
        let inv_freq = Tensor::from(config.rope_theta() as f32)
            .to_device(device)
            .pow(&exponents)
            .reciprocal();
        Rotary { inv_freq }
    }

    /// `cos` and `sin` of shape `[batch, 1, len, head_dim]` in `kind` for positions `[batch, len]`,
    /// computed in f32 as transformers does.
    pub(crate) fn cos_sin(&self, positions: &Tensor, kind: Kind) -> (Tensor, Tensor) {
        let freqs = positions.to_kind(Kind::Float).unsqueeze(-1) * &self.inv_freq;
        let emb = Tensor::cat(&[&freqs, &freqs], -1).unsqueeze(1);
        (emb.cos().to_kind(kind), emb.sin().to_kind(kind))
    }
}

fn rotate_half(x: &Tensor) -> Tensor {
    let half = x
        .size()
        .last()
        .copied()
        .expect("rotary input has a last dimension")
        / 2;
    let x1 = x.narrow(-1, 0, half);
    let x2 = x.narrow(-1, half, half);
    Tensor::cat(&[&x2.neg(), &x1], -1)
}

fn apply_rotary(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Tensor {
    x * cos + rotate_half(x) * sin
}

/// The rotary embedding of queries and keys in the projections' layout `[batch, len, heads, dim]`,
/// returned as `[batch, heads, len, dim]` (a transposed view). On a GPU with our kernels built in,
/// one kernel per tensor (in place when nothing needs a gradient); libtorch's operations otherwise.
pub(crate) fn rotate_queries_keys(
    q: Tensor,
    k: Tensor,
    cos_sin: &(Tensor, Tensor),
) -> (Tensor, Tensor) {
    let (cos, sin) = cos_sin;
    let fused = foundation::cuda::kernels_for(q.device(), q.kind())
        && [&q, &k, cos, sin].iter().all(|t| t.is_contiguous());
    if !fused {
        let (q, k) = (q.transpose(1, 2), k.transpose(1, 2));
        return (apply_rotary(&q, cos, sin), apply_rotary(&k, cos, sin));
    }
    // A kernel error here is our bug (the shapes were checked above and by the caller); unwrap
    // panics as tch does, so a caller catching libtorch errors catches it too.
    let rotate = |x: Tensor| {
        if x.requires_grad() {
            foundation::cuda::rotary(&x, cos, sin).unwrap()
        } else {
            foundation::cuda::rotary_(&x, cos, sin).unwrap();
            x
        }
    };
    (rotate(q).transpose(1, 2), rotate(k).transpose(1, 2))
}
