//! Sequences laid end to end (packed batches): varlen flash attention on a GPU, one causal
//! attention per sequence elsewhere.

use tch::{Device, Kind, Tensor};

use super::additive_mask;
use super::plan::causal;

/// Attention of one sequence's `q` `[1, heads, n, dim]` over its `k`, `v` `[1, kv_heads, n, dim]`
/// under an additive mask and/or causality: the layer's own attention (its scale and soft-cap).
pub(crate) type AttendOne<'a> =
    dyn Fn(&Tensor, &Tensor, &Tensor, Option<&Tensor>, bool) -> Tensor + 'a;

/// The tokens of a batch as sequences laid end to end, each attending only to itself, causally:
/// a packed batch's samples (and each row's padding, whose outputs are ignored). On a GPU this is
/// one varlen flash-attention call; elsewhere one causal attention per sequence. Either way no
/// query is computed against keys it cannot see, as a block-diagonal mask would.
#[derive(Debug)]
pub(crate) struct Varlen {
    /// Where each sequence starts in the flattened `[batch * len]` tokens, and the total: int32,
    /// on the batch's device (flash attention's `cu_seqlens`).
    cu_seqlens: Tensor,
    /// The same boundaries on the host.
    bounds: Vec<i64>,
    /// The longest sequence.
    max_len: i64,
    /// A sliding layer's window: keys this many slots or more behind a query are hidden too.
    window: Option<i64>,
}

impl Varlen {
    /// The sequences of `segments` `[batch, len]` (sample ids, -1 at padding): each row's runs of
    /// one id. `None` when a sample's tokens are not one run, which a mask handles instead.
    pub(crate) fn from_segments(segments: &Tensor, device: Device) -> Option<Varlen> {
        let (b, l) = (segments.size()[0], segments.size()[1]);
        let ids = Vec::<i64>::try_from(segments.to_device(Device::Cpu).reshape([-1])).ok()?;
        let mut bounds = vec![0i64];
        for row in 0..b as usize {
            let row_ids = &ids[row * l as usize..(row + 1) * l as usize];
            let mut seen = std::collections::HashSet::new();
            for (i, &id) in row_ids.iter().enumerate() {
                let starts = i == 0 || row_ids[i - 1] != id;
                if starts {
                    if i > 0 {
                        bounds.push((row * l as usize + i) as i64);
                    }
                    if id >= 0 && !seen.insert(id) {
                        return None;
                    }
                }
            }
            bounds.push(((row + 1) * l as usize) as i64);
        }
        bounds.dedup();
        let max_len = bounds.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0);
        let host: Vec<i32> = bounds.iter().map(|&x| x as i32).collect();
        Some(Varlen {
            cu_seqlens: foundation::device::upload(&Tensor::from_slice(&host), device),
            bounds,
            max_len,
            window: None,
        })
    }

    /// The same sequences for a sliding-window layer.
    pub(crate) fn windowed(&self, window: i64) -> Varlen {
        Varlen {
            cu_seqlens: self.cu_seqlens.shallow_clone(),
            bounds: self.bounds.clone(),
            max_len: self.max_len,
            window: Some(window),
        }
    }

    /// Causal attention within each sequence, for `q` `[tokens, heads, dim]` and `k`, `v`
    /// `[tokens, kv_heads, dim]`; returns `[tokens, heads, dim]`. One varlen flash-attention call
    /// on a GPU when `flash` allows it (plain scaled scores) and no window applies; otherwise
    /// `one` per sequence.
    pub(crate) fn attend(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        flash: bool,
        one: &AttendOne<'_>,
    ) -> Tensor {
        let fused = flash
            && self.window.is_none()
            && q.device().is_cuda()
            && matches!(q.kind(), Kind::BFloat16 | Kind::Half);
        if fused {
            // Errors here are our bugs (the layout is ours); unwrap panics as tch does.
            return foundation::cuda::flash_varlen(q, k, v, &self.cu_seqlens, self.max_len)
                .unwrap();
        }
        let outputs: Vec<Tensor> = self
            .bounds
            .windows(2)
            .map(|w| {
                let n = w[1] - w[0];
                let part = |t: &Tensor| t.narrow(0, w[0], n).transpose(0, 1).unsqueeze(0);
                let out = match self.window {
                    Some(window) => {
                        let slots = Tensor::arange(n, (Kind::Int64, q.device()));
                        let near = slots.unsqueeze(0).gt_tensor(&(slots.unsqueeze(1) - window));
                        let keep = near.logical_and(&causal(n, 0, q.device()));
                        let mask = additive_mask(&keep, q.kind());
                        one(&part(q), &part(k), &part(v), Some(&mask), false)
                    }
                    None => one(&part(q), &part(k), &part(v), None, true),
                };
                out.squeeze_dim(0).transpose(0, 1)
            })
            .collect();
        Tensor::cat(&outputs, 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segments(rows: &[&[i64]]) -> Tensor {
        let flat: Vec<i64> = rows.iter().flat_map(|r| r.iter().copied()).collect();
        Tensor::from_slice(&flat).view([rows.len() as i64, rows[0].len() as i64])
    }

    #[test]
    fn each_run_of_a_sample_or_of_padding_is_one_sequence() {
        let v = Varlen::from_segments(
            &segments(&[&[0, 0, 1, 1, 1, -1], &[0, 0, 0, 0, 1, 1]]),
            Device::Cpu,
        )
        .unwrap();
        assert_eq!(v.bounds, [0, 2, 5, 6, 10, 12]);
        assert_eq!(v.max_len, 4);
        assert_eq!(
            Vec::<i32>::try_from(&v.cu_seqlens).unwrap(),
            [0, 2, 5, 6, 10, 12]
        );
    }

    #[test]
    fn a_sample_split_in_two_runs_takes_the_mask() {
        assert!(Varlen::from_segments(&segments(&[&[0, 1, 0, -1]]), Device::Cpu).is_none());
    }
}
