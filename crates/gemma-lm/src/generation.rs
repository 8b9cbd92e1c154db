//! Text generation with a KV cache: greedy or sampled, batched, with stop tokens.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tch::{Kind, Tensor};

use crate::attention::Blocks;
use crate::cache::KvCache;
use crate::decode::{Decode, StaticDecoder};
use crate::model::Gemma;
use crate::{Error, Result};

/// How to pick tokens. The default is greedy decoding of up to 128 tokens.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationConfig {
    /// Most tokens to generate per prompt.
    pub max_new_tokens: usize,
    /// `None` or `0.0`: greedy. Otherwise logits are divided by it before sampling.
    pub temperature: Option<f64>,
    /// Sample only among the `k` most likely tokens.
    pub top_k: Option<usize>,
    /// Sample only among the most likely tokens whose probabilities add up to `p`.
    pub top_p: Option<f64>,
    /// Tokens that end a sequence (included in its output).
    pub stop_tokens: Vec<i64>,
    /// Token that fills finished rows and left-pads shorter prompts.
    pub pad_token: i64,
    /// Seed for sampling.
    pub seed: u64,
    /// How the decoding steps run (see [`Decode`]).
    pub decode: Decode,
}

impl Default for GenerationConfig {
    fn default() -> Self {
        GenerationConfig {
            max_new_tokens: 128,
            temperature: None,
            top_k: None,
            top_p: None,
            stop_tokens: Vec::new(),
            pad_token: 0,
            seed: 0,
            decode: Decode::Auto,
        }
    }
}

impl GenerationConfig {
    /// Whether tokens are sampled rather than chosen greedily.
    pub fn is_sampling(&self) -> bool {
        self.temperature.is_some_and(|t| t > 0.0)
    }
}

/// Picks one token from a row of logits, on the host: temperature, then top-k, then top-p, in the
/// order transformers applies its logits warpers.
#[derive(Debug)]
pub struct Sampler {
    temperature: f64,
    top_k: Option<usize>,
    top_p: Option<f64>,
    rng: StdRng,
}

impl Sampler {
    /// A sampler for `config` (which must be sampling).
    pub fn new(config: &GenerationConfig) -> Self {
        Sampler {
            temperature: config.temperature.unwrap_or(1.0),
            top_k: config.top_k.filter(|&k| k > 0),
            top_p: config.top_p.filter(|&p| p < 1.0),
            rng: StdRng::seed_from_u64(config.seed),
        }
    }

    /// The candidate tokens and their probabilities after temperature, top-k and top-p.
    pub fn distribution(&self, logits: &[f32]) -> Vec<(usize, f64)> {
        let mut order: Vec<usize> = (0..logits.len()).collect();
        order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
        if let Some(k) = self.top_k {
            order.truncate(k.max(1));
        }
        let max = logits[order[0]] as f64 / self.temperature;
        let weights: Vec<f64> = order
            .iter()
            .map(|&i| (logits[i] as f64 / self.temperature - max).exp())
            .collect();
        let total: f64 = weights.iter().sum();
        let mut candidates: Vec<(usize, f64)> = order
            .into_iter()
            .zip(weights.into_iter().map(|w| w / total))
            .collect();
        if let Some(p) = self.top_p {
            // transformers drops the tokens whose ascending cumulative probability is <= 1 - p,
            // always keeping the most likely one: here, the less likely tail while it stays <= 1 - p.
            let mut tail = 0.0;
            let mut keep = candidates.len();
            for n in (1..candidates.len()).rev() {
                tail += candidates[n].1;
                if tail > 1.0 - p {
                    break;
                }
                keep = n;
            }
            candidates.truncate(keep.max(1));
            let total: f64 = candidates.iter().map(|c| c.1).sum();
            candidates.iter_mut().for_each(|c| c.1 /= total);
        }
        candidates
    }

    /// Draws a token.
    pub fn sample(&mut self, logits: &[f32]) -> i64 {
        let candidates = self.distribution(logits);
        let mut u: f64 = self.rng.random();
        for &(token, prob) in &candidates {
            if u < prob {
                return token as i64;
            }
            u -= prob;
        }
        candidates.last().map_or(0, |c| c.0 as i64)
    }
}

/// Generates continuations of `prompts` (token ids, not padded; the batch is left-padded here).
/// `on_token(row, token)` sees each new token as soon as it is chosen. Returns the new tokens of
/// each row, ending with its stop token if one came.
pub fn generate(
    model: &Gemma,
    prompts: &[Vec<i64>],
    config: &GenerationConfig,
    on_token: impl FnMut(usize, i64),
) -> Result<Vec<Vec<i64>>> {
    if prompts.is_empty() || prompts.iter().any(Vec::is_empty) {
        return Err(Error::Input("every prompt needs at least one token".into()));
    }
    let vocab = model.config().vocab_size;
    if let Some(bad) = prompts.iter().flatten().find(|&&t| t < 0 || t >= vocab) {
        return Err(Error::Input(format!(
            "token id {bad} is outside the vocabulary of {vocab}"
        )));
    }
    let (ids, mask) = left_pad(prompts, config.pad_token);
    generate_from_embeds(model, &model.embed(&ids), mask.as_ref(), config, on_token)
}

/// Left-pads `prompts` with `pad` into `[batch, longest]` ids, with the mask of real tokens when
/// any prompt is shorter than the longest (`None` when none is: no mask needed).
pub fn left_pad(prompts: &[Vec<i64>], pad: i64) -> (Tensor, Option<Tensor>) {
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let mut ids = Vec::with_capacity(prompts.len() * longest);
    let mut mask = Vec::with_capacity(prompts.len() * longest);
    for prompt in prompts {
        let missing = longest - prompt.len();
        ids.extend(std::iter::repeat_n(pad, missing).chain(prompt.iter().copied()));
        mask.extend(std::iter::repeat_n(0i64, missing).chain(std::iter::repeat_n(1, prompt.len())));
    }
    let shape = [prompts.len() as i64, longest as i64];
    let padded = prompts.iter().any(|p| p.len() != longest);
    let mask = padded.then(|| Tensor::from_slice(&mask).view(shape));
    (Tensor::from_slice(&ids).view(shape), mask)
}

/// Generates after prompt embeddings `[batch, len, hidden]` (LLaVA passes text and image features
/// this way). `padding` marks real positions (1) when prompts are left-padded.
pub fn generate_from_embeds(
    model: &Gemma,
    embeds: &Tensor,
    padding: Option<&Tensor>,
    config: &GenerationConfig,
    on_token: impl FnMut(usize, i64),
) -> Result<Vec<Vec<i64>>> {
    generate_from_embeds_with(model, embeds, padding, None, config, on_token)
}

/// [`generate_from_embeds`] with `blocks` of the prompt that attend to each other both ways
/// (Gemma 3's images, PaliGemma's prefix); generated tokens attend causally, as transformers
/// passes `token_type_ids` to the prefill only.
pub fn generate_from_embeds_with(
    model: &Gemma,
    embeds: &Tensor,
    padding: Option<&Tensor>,
    blocks: Option<&Blocks>,
    config: &GenerationConfig,
    mut on_token: impl FnMut(usize, i64),
) -> Result<Vec<Vec<i64>>> {
    let size = embeds.size();
    let (batch, prompt_len) = (size[0], size[1]);
    let max_new = config.max_new_tokens as i64;
    let mut outputs = vec![Vec::new(); batch as usize];
    if max_new == 0 {
        return Ok(outputs);
    }
    let device = model.device();
    let mut cache = KvCache::for_model(model, batch, prompt_len + max_new);
    let mask = padding.map(|m| m.to_device(device).to_kind(Kind::Int64));
    let mut sampler = config.is_sampling().then(|| Sampler::new(config));
    let mut finished = vec![false; batch as usize];

    // Inference throughout: nothing recorded for autograd (the tied head's embedding is a
    // trainable variable), so the head takes the CPU's matrix-vector kernels too.
    let mut logits = tch::no_grad(|| -> Result<Tensor> {
        let hidden = model
            .forward_embeds_with(embeds, mask.as_ref(), blocks, Some(&mut cache), false)?
            .last_hidden_state
            .narrow(1, prompt_len - 1, 1);
        Ok(model.logits(&hidden).squeeze_dim(1).to_kind(Kind::Float))
    })?;
    let mut steps = Steps::new(model, config.decode, cache, mask)?;
    for step in 0..max_new {
        let next: Vec<i64> = match sampler.as_mut() {
            None => Vec::<i64>::try_from(logits.argmax(-1, false).to_device(tch::Device::Cpu))?,
            Some(sampler) => {
                let rows = Vec::<Vec<f32>>::try_from(logits.to_device(tch::Device::Cpu))?;
                rows.iter().map(|row| sampler.sample(row)).collect()
            }
        };
        let mut chosen = Vec::with_capacity(next.len());
        for (row, &token) in next.iter().enumerate() {
            if finished[row] {
                chosen.push(config.pad_token);
                continue;
            }
            outputs[row].push(token);
            on_token(row, token);
            if config.stop_tokens.contains(&token) {
                finished[row] = true;
            }
            chosen.push(token);
        }
        if finished.iter().all(|&f| f) || step + 1 == max_new {
            break;
        }
        logits = steps.next(model, &chosen)?;
    }
    Ok(outputs)
}

/// The decoding steps after the prefill, eager or static (see [`Decode`]).
enum Steps {
    Eager {
        cache: KvCache,
        mask: Option<Tensor>,
    },
    Static {
        decoder: StaticDecoder,
        /// Whether a failed capture may fall back to static steps ([`Decode::Auto`]).
        fallback: bool,
    },
}

impl Steps {
    /// The steps `requested` means for `model`, continuing from a prefilled `cache` (and the
    /// padding `mask` of the prompts, if any).
    fn new(
        model: &Gemma,
        requested: Decode,
        cache: KvCache,
        mask: Option<Tensor>,
    ) -> Result<Steps> {
        Ok(match requested.resolve(model.device()) {
            resolved @ (Decode::Static | Decode::Graph) => Steps::Static {
                decoder: StaticDecoder::new(
                    model,
                    cache,
                    mask.as_ref(),
                    resolved == Decode::Graph,
                )?,
                fallback: requested == Decode::Auto,
            },
            Decode::Eager | Decode::Auto => Steps::Eager { cache, mask },
        })
    }

    /// The logits `[batch, vocab]` (f32) after the tokens `chosen`, one per row.
    fn next(&mut self, model: &Gemma, chosen: &[i64]) -> Result<Tensor> {
        let device = model.device();
        let batch = chosen.len() as i64;
        match self {
            Steps::Eager { cache, mask } => {
                let ids = Tensor::from_slice(chosen)
                    .view([batch, 1])
                    .to_device(device);
                if let Some(m) = mask.as_mut() {
                    *m = Tensor::cat(&[&*m, &m.ones_like().narrow(1, 0, 1)], 1);
                }
                tch::no_grad(|| {
                    let hidden = model
                        .forward_embeds(&model.embed(&ids), mask.as_ref(), Some(cache), false)?
                        .last_hidden_state;
                    Ok(model.logits(&hidden).squeeze_dim(1).to_kind(Kind::Float))
                })
            }
            Steps::Static { decoder, fallback } => match decoder.next(model, chosen) {
                Err(e) if *fallback => {
                    eprintln!(
                        "warning: CUDA-graph decoding is off for this call, steps run one kernel at a time ({e})"
                    );
                    *fallback = false;
                    decoder.without_graph();
                    decoder.next(model, chosen)
                }
                other => other,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sampler(temperature: f64, top_k: Option<usize>, top_p: Option<f64>) -> Sampler {
        Sampler::new(&GenerationConfig {
            temperature: Some(temperature),
            top_k,
            top_p,
            ..GenerationConfig::default()
        })
    }

    #[test]
    fn top_k_keeps_the_k_most_likely() {
        let d = sampler(1.0, Some(2), None).distribution(&[0.0, 3.0, 1.0, 2.0]);
        assert_eq!(d.iter().map(|c| c.0).collect::<Vec<_>>(), [1, 3]);
        let e = 1f64.exp();
        assert!((d[0].1 - e / (e + 1.0)).abs() < 1e-12);
    }

    #[test]
    fn top_p_keeps_the_smallest_set_reaching_p() {
        // Probabilities 0.5, 0.3, 0.15, 0.05.
        let logits: Vec<f32> = [0.5f32, 0.3, 0.15, 0.05].iter().map(|p| p.ln()).collect();
        let kept = |p| sampler(1.0, None, Some(p)).distribution(&logits).len();
        assert_eq!(kept(0.5), 1);
        assert_eq!(kept(0.6), 2);
        assert_eq!(kept(0.75), 2, "0.5 + 0.3 reaches 0.75");
        assert_eq!(kept(0.81), 3);
        assert_eq!(kept(0.01), 1, "the most likely token always stays");
    }

    #[test]
    fn temperature_sharpens_and_sampling_is_seeded() {
        let logits = [1.0f32, 2.0, 0.0];
        let cold = sampler(0.1, None, None).distribution(&logits);
        assert_eq!(cold[0].0, 1);
        assert!(cold[0].1 > 0.99);
        let draw = |seed| {
            let mut s = Sampler::new(&GenerationConfig {
                temperature: Some(1.0),
                seed,
                ..GenerationConfig::default()
            });
            (0..20).map(|_| s.sample(&logits)).collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert!(draw(7).iter().all(|&t| (0..3).contains(&t)));
    }
}
