//! The synthetic held-out split: LLaVA question file + answer key, greedy answers, exact match.

use std::collections::BTreeMap;
use std::path::Path;

use gemma_lm::{GemmaTokenizer, GenerationConfig, Message};
use image_processing::ImageProcessor;
use llava_model::LlavaModel;
use serde::{Deserialize, Serialize};
use tch::Tensor;

/// Errors of the synthetic evaluation.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read or parsed.
    #[error("{0}")]
    File(String),
    /// From the model.
    #[error(transparent)]
    Model(#[from] llava_model::Error),
    /// From the tokenizer.
    #[error(transparent)]
    Gemma(#[from] gemma_lm::Error),
}

#[derive(Debug, Deserialize)]
struct Question {
    question_id: u64,
    image: String,
    text: String,
    category: String,
}

#[derive(Debug, Deserialize)]
struct Answer {
    question_id: u64,
    answer: String,
}

/// Accuracy overall and per question kind.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Accuracy {
    /// Fraction right.
    pub accuracy: f64,
    /// Questions asked.
    pub count: usize,
    /// Fraction right per kind.
    pub by_kind: BTreeMap<String, f64>,
}

fn read_lines<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Vec<T>, Error> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::File(format!("{}: {e}", path.display())))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l)
                .map_err(|e| Error::File(format!("{} line {}: {e}", path.display(), i + 1)))
        })
        .collect()
}

/// Normalises an answer for exact match: trimmed, lowercased, trailing period dropped.
pub fn normalise(text: &str) -> String {
    text.trim().trim_end_matches('.').trim().to_lowercase()
}

/// Answers every held-out question greedily and scores exact matches. With `shuffled`, each
/// question is asked about the image of another question (the next one with a different image).
#[allow(clippy::too_many_arguments)]
pub fn evaluate(
    model: &LlavaModel,
    tokenizer: &GemmaTokenizer,
    processor: &ImageProcessor,
    questions: &Path,
    answers: &Path,
    images: &Path,
    shuffled: bool,
    batch: usize,
) -> Result<Accuracy, Error> {
    let questions: Vec<Question> = read_lines(questions)?;
    let key: BTreeMap<u64, String> = read_lines::<Answer>(answers)?
        .into_iter()
        .map(|a| (a.question_id, a.answer))
        .collect();
    let config = GenerationConfig {
        max_new_tokens: 12,
        stop_tokens: tokenizer.chat_stop_tokens(),
        pad_token: tokenizer.pad,
        ..Default::default()
    };
    let mut right: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for chunk_start in (0..questions.len()).step_by(batch.max(1)) {
        let chunk = &questions[chunk_start..(chunk_start + batch.max(1)).min(questions.len())];
        let mut prompts = Vec::new();
        let mut pixels = Vec::new();
        let mut size = (0, 0);
        for (k, q) in chunk.iter().enumerate() {
            let image_name = if shuffled {
                let i = chunk_start + k;
                let other = (1..questions.len())
                    .map(|d| &questions[(i + d) % questions.len()])
                    .find(|o| o.image != q.image);
                other.map_or(&q.image, |o| &o.image)
            } else {
                &q.image
            };
            let image = image_processing::open(images.join(image_name))
                .map_err(|e| Error::File(e.to_string()))?;
            let (data, h, w) = processor.preprocess(&image);
            size = (h as i64, w as i64);
            pixels.extend(data);
            let text = format!("{}\n{}", llava_model::IMAGE_TOKEN, q.text);
            let ids = tokenizer.encode_chat(&[Message::user(text)], true)?;
            prompts.push(model.expand_image_tokens(&ids, model.tokens_per_image(size.0, size.1)));
        }
        let pixels = Tensor::from_slice(&pixels).view([chunk.len() as i64, 3, size.0, size.1]);
        let outputs = model.generate(&prompts, Some(&pixels), &config, |_, _| {})?;
        for (q, out) in chunk.iter().zip(outputs) {
            let said = normalise(&tokenizer.decode(&out, true)?);
            let want = key
                .get(&q.question_id)
                .map(|a| normalise(a))
                .unwrap_or_default();
            let entry = right.entry(q.category.clone()).or_default();
            entry.0 += usize::from(said == want);
            entry.1 += 1;
        }
    }
    let (hits, count) = right.values().fold((0, 0), |(h, c), (a, b)| (h + a, c + b));
    Ok(Accuracy {
        accuracy: hits as f64 / count.max(1) as f64,
        count,
        by_kind: right
            .into_iter()
            .map(|(k, (a, b))| (k, a as f64 / b.max(1) as f64))
            .collect(),
    })
}
