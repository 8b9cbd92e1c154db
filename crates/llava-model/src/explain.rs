//! What an answer looked at: relevancy maps (Chefer et al. 2021's generic attention
//! explainability, as LVLM-Interpret applies it to LLaVA) and raw attention, per generated token.
//!
//! For a prompt and the answer generated from it, one forward over prompt + answer keeps every
//! language-model layer's attention probabilities `A` (`[heads, q, k]`, the softmax's output) in
//! the autograd graph. Then, for each answer token `t` (predicted at position `p`):
//!
//! * the one-hot of `t`'s logit at `p` is backpropagated to every `A`;
//! * per layer, `Abar = mean over heads of clamp(grad(A) * A, min 0)`;
//! * starting from `R = I`, `R = R + Abar @ R` layer by layer in forward order; `t`'s relevancy
//!   over the sequence is row `p` of `R`. Only that row is needed, so it is computed as
//!   `e_p (I + Abar_L) … (I + Abar_1)`, right to left from the last layer: the same numbers as
//!   the full recurrence at `O(len²)` per layer instead of `O(len³)`.
//!
//! Raw attention is row `p` of every layer's `A`, per head. Both are restricted to the image
//! tokens by [`Explanation::image_maps`] (one `[side, side]` grid per image) and summarised by
//! [`Explanation::image_share`].
//!
//! Cost: one forward with eager attention over the whole answer, then one backward per answer
//! token through the kept graph; memory is the graph (every layer's `A`, which eager attention's
//! backward needs anyway) plus one gradient at a time.

use gemma_lm::Blocks;
use tch::{Kind, Tensor};

use crate::{Error, LlavaModel, Result};

/// The maps of one answer.
#[derive(Debug)]
pub struct Explanation {
    /// The sequence the maps are over: the prompt (image tokens expanded), then the answer but
    /// its last token.
    pub sequence: Vec<i64>,
    /// The answer's tokens.
    pub answer: Vec<i64>,
    /// Per answer token, its relevancy over `sequence` (`[answer, len]`).
    pub relevancy: Tensor,
    /// Per answer token, each layer's and head's attention over `sequence` at the position that
    /// predicted it (`[answer, layers, heads, len]`).
    pub attention: Tensor,
}

impl LlavaModel {
    /// Explains `answer`, generated from `prompt` (image tokens expanded, as
    /// [`generate`](Self::generate) takes it) about `pixel_values`: see the [module](self).
    /// The language model computes attention eagerly here, in the model's dtype.
    pub fn explain(
        &self,
        prompt: &[i64],
        pixel_values: Option<&Tensor>,
        answer: &[i64],
    ) -> Result<Explanation> {
        if prompt.is_empty() || answer.is_empty() {
            return Err(Error::Input(
                "explaining needs a prompt and at least one answer token".into(),
            ));
        }
        let mut sequence = prompt.to_vec();
        sequence.extend(&answer[..answer.len() - 1]);
        let len = sequence.len() as i64;
        let ids = Tensor::from_slice(&sequence).view([1, len]);
        let embeds = self
            .embed(&ids, pixel_values)?
            .detach()
            .set_requires_grad(true);
        // PaliGemma's prompt is the bidirectional prefix, its answer the causal suffix (the
        // processor's token types); Gemma 3's images are found from the ids.
        let types = (self.family() == crate::config::Family::PaliGemma).then(|| {
            let answer_part =
                Tensor::arange(len, (Kind::Int64, self.device())).ge(prompt.len() as i64);
            answer_part.to_kind(Kind::Int64).view([1, len])
        });
        let blocks: Option<Blocks> = self.blocks(&ids, types.as_ref(), None);
        let (out, attentions) = self
            .lm
            .forward_with_attentions(&embeds, None, blocks.as_ref())?;
        // The positions that predicted the answer: the prompt's last, then each answer token's.
        let first = prompt.len() as i64 - 1;
        let positions = Tensor::arange_start(first, len, (Kind::Int64, self.device()));
        let hidden = out.last_hidden_state.index_select(1, &positions);
        let logits = self.logits(&hidden).squeeze_dim(0); // [answer, vocab]

        let mut relevancy = Vec::with_capacity(answer.len());
        let mut attention = Vec::with_capacity(answer.len());
        for (i, &token) in answer.iter().enumerate() {
            let p = first + i as i64;
            let target = logits.get(i as i64).get(token);
            let grads = Tensor::run_backward(&[target], &attentions, true, false);
            // v = e_p, then v (I + Abar_l) for l from the last layer down to the first.
            let mut row = Tensor::zeros([1, len], (Kind::Float, self.device()));
            let _ = row.narrow(1, p, 1).fill_(1.0);
            for (a, g) in attentions.iter().zip(&grads).rev() {
                let abar = (g * a)
                    .to_kind(Kind::Float)
                    .clamp_min(0.0)
                    .mean_dim(1, false, Kind::Float)
                    .squeeze_dim(0); // [len, len]
                row = &row + row.matmul(&abar);
            }
            relevancy.push(row.squeeze_dim(0));
            let rows: Vec<Tensor> = attentions
                .iter()
                .map(|a| a.detach().get(0).select(1, p).to_kind(Kind::Float)) // [heads, len]
                .collect();
            attention.push(Tensor::stack(&rows, 0));
        }
        Ok(Explanation {
            sequence,
            answer: answer.to_vec(),
            relevancy: Tensor::stack(&relevancy, 0).detach(),
            attention: Tensor::stack(&attention, 0),
        })
    }
}

impl Explanation {
    /// The positions of each image's tokens in [`sequence`](Self::sequence): every run of
    /// `image_token`.
    pub fn image_spans(&self, image_token: i64) -> Vec<std::ops::Range<usize>> {
        let mut spans = Vec::new();
        let mut start = None;
        for (i, &t) in self.sequence.iter().chain([&-1]).enumerate() {
            match (t == image_token, start) {
                (true, None) => start = Some(i),
                (false, Some(s)) => {
                    spans.push(s..i);
                    start = None;
                }
                _ => {}
            }
        }
        spans
    }

    /// `values` `[answer, len]` (a relevancy or an attention summary) restricted to each image's
    /// tokens, as `[answer, side, side]` grids (row-major patches); an image whose token count is
    /// not a square is an error.
    pub fn image_maps(&self, values: &Tensor, image_token: i64) -> Result<Vec<Tensor>> {
        self.image_spans(image_token)
            .into_iter()
            .map(|span| {
                let n = span.len() as i64;
                let side = (n as f64).sqrt().round() as i64;
                if side * side != n {
                    return Err(Error::Input(format!(
                        "an image of {n} tokens is not a square grid"
                    )));
                }
                Ok(values
                    .narrow(1, span.start as i64, n)
                    .view([-1, side, side]))
            })
            .collect()
    }

    /// Per answer token, the share of its relevancy on image tokens (the rest is on text), from
    /// the relevancy with the token's own position (the identity's 1) left out.
    pub fn image_share(&self, image_token: i64) -> Vec<f64> {
        let on_image: Vec<bool> = self.sequence.iter().map(|&t| t == image_token).collect();
        let mask = Tensor::from_slice(&on_image).to_device(self.relevancy.device());
        (0..self.answer.len() as i64)
            .map(|i| {
                let row = self.relevancy.get(i).copy();
                let p = self.sequence.len() as i64 - self.answer.len() as i64 + i;
                let _ = row.narrow(0, p, 1).fill_(0.0);
                let total = row.sum(Kind::Double).double_value(&[]);
                let image = row.masked_select(&mask).sum(Kind::Double).double_value(&[]);
                if total > 0.0 { image / total } else { 0.0 }
            })
            .collect()
    }
}
