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

use gemma_lm::{Blocks, GemmaTokenizer};
use serde_json::{Value, json};
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

impl Explanation {
    /// The maps as JSON, for people and for clients (`llava explain`'s `explanation.json`, the
    /// server's `explanation` field): the image grids' side, the layers and heads; per answer
    /// token its text, image share, relevancy and raw attention (mean over heads and layers) on
    /// each image's grid and relevancy over each text token of the prompt; per word (see
    /// [`words`]) the mean of its tokens' maps. The tokens that end a chat turn or the text
    /// (`<end_of_turn>`, `<eos>`) are in `tokens` but in no word.
    pub fn report(&self, tokenizer: &GemmaTokenizer, image_token: i64) -> Result<Value> {
        let mut skip = tokenizer.chat_stop_tokens();
        skip.push(tokenizer.eos);
        let relevancy = self.image_maps(&self.relevancy, image_token)?;
        let mean_attention = self
            .attention
            .mean_dim([1, 2].as_slice(), false, Kind::Float);
        let attention = self.image_maps(&mean_attention, image_token)?;
        let texts: Vec<String> = self
            .answer
            .iter()
            .map(|&t| tokenizer.decode(&[t], false))
            .collect::<Result<_, _>>()?;
        let shares = self.image_share(image_token);
        let prompt_len = self.sequence.len() - self.answer.len() + 1;
        let prompt_texts: Vec<(usize, String)> = (0..prompt_len)
            .filter(|&p| self.sequence[p] != image_token)
            .map(|p| Ok((p, tokenizer.decode(&[self.sequence[p]], false)?)))
            .collect::<Result<_>>()?;
        let grids = |maps: &[Tensor], rows: &Tensor| -> Value {
            Value::Array(
                maps.iter()
                    .map(|m| grid_json(&m.index_select(0, rows).mean_dim(0, false, Kind::Float)))
                    .collect(),
            )
        };
        let tokens: Vec<Value> = (0..self.answer.len())
            .map(|i| {
                let rows = Tensor::from_slice(&[i as i64]);
                let row = self.relevancy.get(i as i64);
                let prompt: Vec<Value> = prompt_texts
                    .iter()
                    .map(|(p, t)| json!([t, row.double_value(&[*p as i64])]))
                    .collect();
                json!({
                    "id": self.answer[i],
                    "text": texts[i],
                    "image_share": shares[i],
                    "relevancy": grids(&relevancy, &rows),
                    "attention": grids(&attention, &rows),
                    "prompt_relevancy": prompt,
                })
            })
            .collect();
        let words: Vec<Value> = words(&texts, &self.answer, |t| skip.contains(&t))
            .into_iter()
            .map(|(text, members)| {
                let rows =
                    Tensor::from_slice(&members.iter().map(|&i| i as i64).collect::<Vec<_>>());
                let share = members.iter().map(|&i| shares[i]).sum::<f64>() / members.len() as f64;
                json!({
                    "text": text,
                    "tokens": members,
                    "image_share": share,
                    "relevancy": grids(&relevancy, &rows),
                    "attention": grids(&attention, &rows),
                })
            })
            .collect();
        let sides: Vec<i64> = relevancy.iter().map(|m| m.size()[1]).collect();
        Ok(json!({
            "grids": sides.iter().map(|s| [s, s]).collect::<Vec<_>>(),
            "layers": self.attention.size()[1],
            "heads": self.attention.size()[2],
            "tokens": tokens,
            "words": words,
        }))
    }
}

/// An answer's words: runs of tokens, a new word starting at a token whose text starts with
/// whitespace (SentencePiece's `▁` decodes to a space); tokens for which `skip` holds (special
/// ones) and blank ones are left out. Each word's text and its token indices.
pub fn words(
    texts: &[String],
    ids: &[i64],
    skip: impl Fn(i64) -> bool,
) -> Vec<(String, Vec<usize>)> {
    let mut words: Vec<(String, Vec<usize>)> = Vec::new();
    for (i, text) in texts.iter().enumerate() {
        if skip(ids[i]) || text.trim().is_empty() {
            continue;
        }
        let starts = text.starts_with(char::is_whitespace) || words.is_empty();
        match words.last_mut() {
            Some((word, tokens)) if !starts && tokens.last() == Some(&(i - 1)) => {
                word.push_str(text);
                tokens.push(i);
            }
            _ => words.push((text.trim().to_string(), vec![i])),
        }
    }
    words
}

/// A `[side, side]` grid as rows of numbers.
fn grid_json(grid: &Tensor) -> Value {
    let side = grid.size()[0];
    let rows: Vec<Vec<f64>> = (0..side)
        .map(|r| {
            Vec::<f32>::try_from(grid.get(r).to_kind(Kind::Float))
                .unwrap_or_default()
                .into_iter()
                .map(f64::from)
                .collect()
        })
        .collect();
    json!(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_join_tokens_until_the_next_space() {
        let texts: Vec<String> = ["a", " red", " cir", "cle", ".", "<end_of_turn>"]
            .map(String::from)
            .to_vec();
        let ids = [1, 2, 3, 4, 5, 106];
        assert_eq!(
            words(&texts, &ids, |t| t == 106),
            vec![
                ("a".to_string(), vec![0]),
                ("red".to_string(), vec![1]),
                ("circle.".to_string(), vec![2, 3, 4]),
            ]
        );
    }
}
