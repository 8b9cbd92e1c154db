//! The rotary position embedding (rotate-half layout), as transformers computes it.

use tch::{Device, Kind, Tensor};

use crate::config::{GemmaConfig, LayerType, Rope};

/// Rotary position embedding in the rotate-half layout.
#[derive(Debug)]
pub(crate) struct Rotary {
    /// `[head_dim / 2]`, f32.
    inv_freq: Tensor,
}

impl Rotary {
    /// The frequencies of `rope` over heads of width `head_dim`: `theta^(-2i / head_dim)`, divided
    /// by the linear scaling factor (transformers' `linear` rope type).
    pub(crate) fn new(rope: Rope, head_dim: i64, device: Device) -> Self {
        let exponents = Tensor::arange_start_step(0, head_dim, 2, (Kind::Int64, device))
            .to_kind(Kind::Float)
            / head_dim as f64;
        let inv_freq = Tensor::from(rope.theta as f32)
            .to_device(device)
            .pow(&exponents)
            .reciprocal();
        let inv_freq = if rope.linear_factor == 1.0 {
            inv_freq
        } else {
            inv_freq / rope.linear_factor
        };
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

/// The rotary embeddings of a model's layer types: one table, or (Gemma 3) a second one for
/// sliding layers.
#[derive(Debug)]
pub(crate) struct Rotaries {
    full: Rotary,
    /// `None` when sliding layers use the full layers' table.
    sliding: Option<Rotary>,
}

impl Rotaries {
    pub(crate) fn new(config: &GemmaConfig, device: Device) -> crate::Result<Self> {
        let full = config.rope(LayerType::FullAttention)?;
        let sliding = config.rope(LayerType::SlidingAttention)?;
        Ok(Rotaries {
            full: Rotary::new(full, config.head_dim, device),
            sliding: (sliding != full).then(|| Rotary::new(sliding, config.head_dim, device)),
        })
    }

    /// `cos` and `sin` for `positions` in each layer type's table: the full layers', and the
    /// sliding layers' when they have their own.
    pub(crate) fn cos_sin(&self, positions: &Tensor, kind: Kind) -> CosSin {
        CosSin {
            full: self.full.cos_sin(positions, kind),
            sliding: self.sliding.as_ref().map(|r| r.cos_sin(positions, kind)),
        }
    }
}

/// One forward's `cos` and `sin` per layer type.
#[derive(Debug)]
pub(crate) struct CosSin {
    full: (Tensor, Tensor),
    sliding: Option<(Tensor, Tensor)>,
}

impl CosSin {
    /// The table a layer of `layer_type` takes.
    pub(crate) fn of(&self, layer_type: LayerType) -> &(Tensor, Tensor) {
        match (layer_type, &self.sliding) {
            (LayerType::SlidingAttention, Some(sliding)) => sliding,
            _ => &self.full,
        }
    }
}
