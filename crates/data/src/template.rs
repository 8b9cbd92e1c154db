//! Conversation templates and the loss mask: which tokens the model learns to produce.
//!
//! * `gemma` (Intel's LLaVA-Gemma, both stages):
//!   `<bos><start_of_turn>user\n<image>\n{q}<end_of_turn>\n<start_of_turn>model\n{a}<end_of_turn>\n…`;
//!   labels on each answer, its `<end_of_turn>` and the newline after it; `-100` elsewhere.
//! * `plain` (LLaVA-1.5 stage 1): `<bos><image>{caption}\n`; labels on the caption and newline.
//! * `gemma3` (Gemma 3's chat template and processor): as `gemma`, but the image is written as
//!   Gemma 3's processor writes it, `\n\n<start_of_image>` + its tokens + `<end_of_image>\n\n`
//!   before the question.
//! * `paligemma` (PaliGemma's processor, one question and answer): `<image> x n <bos>{q}\n` as the
//!   prefix, `{a}<eos>` as the suffix, labels on the suffix.
//!
//! A lone `<image>` is moved to the front of the first user turn (LLaVA's rule); the images of a
//! multi-image record stay where their marks are, each written as the template writes an image.
//! Each image is expanded to its tokens; a sample is truncated at `max_length`, never through
//! image tokens.

use std::fmt::Write as _;

use gemma_lm::GemmaTokenizer;

use crate::record::{Record, SkipReason};

/// Label value that carries no loss.
pub const IGNORE: i64 = -100;

/// The text that marks where the image goes.
pub const IMAGE_MARK: &str = "<image>";

/// A conversation template.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Template {
    /// Gemma's chat format (Intel's choice for both stages).
    Gemma,
    /// Image then caption (LLaVA-1.5's stage 1).
    Plain,
    /// Gemma's chat format with Gemma 3's image delimiters.
    Gemma3,
    /// PaliGemma's prefix and suffix (the first question and answer of a conversation).
    PaliGemma,
}

impl Template {
    /// Parses `gemma` or `plain`.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "gemma" => Some(Template::Gemma),
            "plain" => Some(Template::Plain),
            "gemma3" => Some(Template::Gemma3),
            "paligemma" => Some(Template::PaliGemma),
            _ => None,
        }
    }
}

/// A tokenized sample: ids and labels of equal length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tokenized {
    /// Token ids, `<image>` expanded.
    pub input_ids: Vec<i64>,
    /// `-100` or the id to predict at that position (aligned with `input_ids`; the model shifts).
    pub labels: Vec<i64>,
    /// How many images the sample has (their tokens in order in `input_ids`).
    pub images: usize,
    /// Whether it was cut at `max_length`.
    pub truncated: bool,
}

/// Turns records into tokenized samples.
#[derive(Debug, Clone)]
pub struct Templater {
    /// The tokenizer.
    pub tokenizer: GemmaTokenizer,
    /// The template.
    pub template: Template,
    /// The id of `<image>`.
    pub image_token: i64,
    /// How many tokens an image becomes.
    pub tokens_per_image: usize,
    /// The longest sample (2048 in the recipe).
    pub max_length: usize,
}

impl Templater {
    /// Tokenizes `record` (its image assumed present when it names one), or says why it cannot
    /// be used.
    pub fn tokenize(&self, record: &Record) -> Result<Tokenized, (SkipReason, String)> {
        let images = record.images.len();
        let marks: usize = record
            .conversations
            .iter()
            .map(|t| t.value.matches(IMAGE_MARK).count())
            .sum();
        // One image goes to the front of the first question wherever its mark is (LLaVA's
        // `preprocess_multimodal`); several stay where their marks are (LLaVA-OneVision's records).
        if images > 1 && marks != images {
            return Err((
                SkipReason::Malformed,
                format!(
                    "{images} images but {marks} `{IMAGE_MARK}` marks: a record with several \
                     images marks where each one goes"
                ),
            ));
        }
        // The image token's own text (`<image>`, Gemma 3's `<image_soft_token>`).
        let image_mark = self
            .tokenizer
            .decode(&[self.image_token], false)
            .ok()
            .filter(|t| !t.is_empty())
            .unwrap_or_else(|| IMAGE_MARK.to_string());
        // How the template writes one image in a question.
        let image_text = match self.template {
            Template::Gemma3 => format!("\n\n<start_of_image>{image_mark}<end_of_image>\n\n"),
            _ => image_mark.clone(),
        };
        let question = |i: usize, text: &str| -> String {
            if images > 1 {
                return text.trim().replace(IMAGE_MARK, &image_text);
            }
            let text = clean(text);
            match (i, images, self.template) {
                (0, 1, Template::Gemma3) => format!("{image_text}{text}"),
                (0, 1, _) => format!("{image_text}\n{text}"),
                _ => text,
            }
        };
        // PaliGemma's images come before `<bos>`, which its prefix writes.
        let (mut ids, mut labels) = match self.template {
            Template::PaliGemma => (Vec::new(), Vec::new()),
            _ => (vec![self.tokenizer.bos], vec![IGNORE]),
        };
        let mut push = |text: &str, learn: bool| -> Result<(), (SkipReason, String)> {
            let piece = self
                .tokenizer
                .encode(text, false)
                .map_err(|e| (SkipReason::Malformed, e.to_string()))?;
            for id in piece {
                if id == self.image_token {
                    // Only the marks we place ourselves survive; see `clean`.
                    ids.extend(std::iter::repeat_n(id, self.tokens_per_image));
                    labels.extend(std::iter::repeat_n(IGNORE, self.tokens_per_image));
                } else {
                    ids.push(id);
                    labels.push(if learn { id } else { IGNORE });
                }
            }
            Ok(())
        };
        match self.template {
            Template::Gemma | Template::Gemma3 => {
                for (i, pair) in record.conversations.chunks(2).enumerate() {
                    let question = question(i, &pair[0].value);
                    push(
                        &format!(
                            "<start_of_turn>user\n{question}<end_of_turn>\n<start_of_turn>model\n"
                        ),
                        false,
                    )?;
                    if let Some(answer) = pair.get(1) {
                        push(&format!("{}<end_of_turn>\n", clean(&answer.value)), true)?;
                    }
                }
            }
            Template::PaliGemma => {
                let question = clean(&record.conversations[0].value);
                push(
                    &format!("{}<bos>{question}\n", image_mark.repeat(images)),
                    false,
                )?;
                if let Some(answer) = record.conversations.get(1) {
                    push(&format!("{}<eos>", clean(&answer.value)), true)?;
                }
            }
            Template::Plain => {
                push(&image_mark.repeat(images), false)?;
                push(
                    &format!("{}\n", clean(&record.conversations[1].value)),
                    true,
                )?;
            }
        }
        let image_end = ids
            .iter()
            .rposition(|&t| t == self.image_token)
            .map_or(0, |p| p + 1);
        if image_end > self.max_length {
            return Err((
                SkipReason::TooLong,
                format!(
                    "{images} x {} image tokens end at {image_end}, beyond max_length {}",
                    self.tokens_per_image, self.max_length
                ),
            ));
        }
        let truncated = ids.len() > self.max_length;
        ids.truncate(self.max_length);
        labels.truncate(self.max_length);
        if labels.iter().all(|&l| l == IGNORE) {
            return Err((
                SkipReason::NoLabels,
                format!("no answer token within max_length {}", self.max_length),
            ));
        }
        Ok(Tokenized {
            input_ids: ids,
            labels,
            images,
            truncated,
        })
    }

    /// `tokens` as a table for people: one line per token (position, id, text, label), each run of
    /// image tokens on one line, then the count of tokens and of those with loss (what
    /// `llava data show` prints).
    pub fn render(&self, tokens: &Tokenized) -> crate::Result<String> {
        let mut out = String::new();
        let _ = writeln!(out, "{:>5}  {:>7}  {:<24} label", "pos", "id", "token");
        let mut pos = 0;
        while pos < tokens.input_ids.len() {
            let id = tokens.input_ids[pos];
            if id == self.image_token {
                let run = tokens.input_ids[pos..]
                    .iter()
                    .take_while(|&&t| t == id)
                    .count();
                let _ = writeln!(
                    out,
                    "{pos:>5}  {id:>7}  {:<24} -100",
                    format!("<image> x{run}")
                );
                pos += run;
                continue;
            }
            let text = self.tokenizer.decode(&[id], false)?;
            let label = tokens.labels[pos];
            let shown = if label == IGNORE {
                "-100".to_string()
            } else {
                format!("{label} (learn)")
            };
            let _ = writeln!(
                out,
                "{pos:>5}  {id:>7}  {:<24} {shown}",
                format!("{text:?}")
            );
            pos += 1;
        }
        let learned = tokens.labels.iter().filter(|&&l| l != IGNORE).count();
        let _ = writeln!(
            out,
            "{} tokens, {learned} with loss{}",
            tokens.input_ids.len(),
            if tokens.truncated { ", truncated" } else { "" }
        );
        Ok(out)
    }
}

/// A turn's text without image marks (the template places a lone image itself), trimmed as the
/// Gemma chat template trims.
fn clean(text: &str) -> String {
    text.replace(IMAGE_MARK, "").trim().to_string()
}
