//! How each family writes a conversation with images as token ids, as its transformers processor
//! does, so that our prompts are the ones `apply_chat_template` + the processor give:
//!
//! * LLaVA: Gemma's chat template with an `<image>` line at the front of the turn that carries each
//!   image; each `<image>` becomes the image's tokens afterwards
//!   ([`LlavaModel::expand_image_tokens`]).
//! * Gemma 3: its chat template renders each image as `<start_of_image>`, which its processor
//!   replaces, in the text, by `"\n\n<start_of_image>" + <image_soft_token> x 256 +
//!   "<end_of_image>\n\n"` before tokenizing (the newlines merge with their neighbours). A tokenizer
//!   without `<start_of_image>` (the tiny models') writes images as LLaVA does.
//! * PaliGemma: no chat format: `<image> x tokens x images + <bos> + prompt + "\n"`, the prompt
//!   being the last user turn's text.

use gemma_lm::{GemmaTokenizer, Message, Role};

use crate::config::Family;
use crate::{Error, LlavaModel, Result, with_image_marks};

/// What Gemma 3's chat template writes for an image.
pub const START_OF_IMAGE: &str = "<start_of_image>";
/// What closes an image's tokens in Gemma 3.
pub const END_OF_IMAGE: &str = "<end_of_image>";

/// A family's way of writing images into prompts, with the token texts of its tokenizer. Holds no
/// tensors, so a server's request threads keep one.
#[derive(Debug, Clone)]
pub struct PromptFormat {
    kind: Kind,
    /// The image token's text (`<image>`, `<image_soft_token>`).
    image: String,
    /// Tokens per image, for the formats that expand in text.
    per_image: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Llava,
    Gemma3,
    PaliGemma,
}

impl LlavaModel {
    /// This model's prompt format with `tokenizer`, for images of `per_image` tokens.
    pub fn prompt_format(&self, tokenizer: &GemmaTokenizer, per_image: i64) -> PromptFormat {
        let image = tokenizer
            .decode(&[self.image_token()], false)
            .ok()
            .filter(|t| !t.is_empty())
            .unwrap_or_else(|| crate::IMAGE_TOKEN.to_string());
        let delimiters = self.config.image_delimiters();
        let has = |text: &str, id: Option<i64>| id.is_some() && tokenizer.token_id(text) == id;
        let kind = match self.family() {
            Family::Gemma3
                if has(START_OF_IMAGE, delimiters.map(|d| d.0))
                    && has(END_OF_IMAGE, delimiters.map(|d| d.1)) =>
            {
                Kind::Gemma3
            }
            Family::PaliGemma => Kind::PaliGemma,
            _ => Kind::Llava,
        };
        PromptFormat {
            kind,
            image,
            per_image: per_image.max(0) as usize,
        }
    }
}

/// Gives `tokenizer` Gemma 3's `<start_of_image>` and `<end_of_image>` when `model` is a Gemma 3
/// whose tokenizer lacks them (the tiny models' built-in tokenizer), at the ids its config names.
pub fn add_image_delimiters(model: &LlavaModel, tokenizer: &mut GemmaTokenizer) -> Result<()> {
    let Some((boi, eoi)) = model.config.image_delimiters() else {
        return Ok(());
    };
    if model.family() != Family::Gemma3 {
        return Ok(());
    }
    for (text, want) in [(START_OF_IMAGE, boi), (END_OF_IMAGE, eoi)] {
        let got = tokenizer.add_special_token(text);
        if got != want {
            return Err(Error::Input(format!(
                "the tokenizer has {text} at id {got}, but config.json says {want}"
            )));
        }
    }
    Ok(())
}

impl PromptFormat {
    /// LLaVA's format with `<image>`: what a LLaVA model with an `<image>` token has.
    pub fn llava() -> Self {
        PromptFormat {
            kind: Kind::Llava,
            image: crate::IMAGE_TOKEN.to_string(),
            per_image: 1,
        }
    }

    /// Whether [`encode`](Self::encode) writes each image's tokens itself (Gemma 3, PaliGemma)
    /// rather than one `<image>` for [`LlavaModel::expand_image_tokens`] (LLaVA).
    pub fn expands_in_text(&self) -> bool {
        self.kind != Kind::Llava
    }

    /// A user turn's content with `images` images and `text` (trimmed, as the chat templates trim
    /// it).
    pub fn mark_images(&self, text: &str, images: usize) -> String {
        match self.kind {
            Kind::Llava => with_image_marks(text, images),
            Kind::Gemma3 => format!("{}{}", START_OF_IMAGE.repeat(images), text.trim()),
            Kind::PaliGemma => format!("{}{}", self.image.repeat(images), text.trim()),
        }
    }

    /// The token ids of `messages` (images marked by [`mark_images`](Self::mark_images)), ending
    /// where the model's answer starts. LLaVA's images stay one token each until
    /// [`LlavaModel::expand_image_tokens`]; Gemma 3's and PaliGemma's come expanded.
    pub fn encode(&self, tokenizer: &GemmaTokenizer, messages: &[Message]) -> Result<Vec<i64>> {
        self.encode_with_crops(tokenizer, messages, &[])
    }

    /// [`encode`](Self::encode) for images shown with pan-and-scan crops: `crops[i]` crops of
    /// image `i` (missing entries are 0), which Gemma 3's processor writes as `"Here is the
    /// original image " + image + " and here are some crops to help you see better " + the
    /// crops' images joined by spaces`. Crops are Gemma 3's alone.
    pub fn encode_with_crops(
        &self,
        tokenizer: &GemmaTokenizer,
        messages: &[Message],
        crops: &[usize],
    ) -> Result<Vec<i64>> {
        if self.kind != Kind::Gemma3 && crops.iter().any(|&n| n > 0) {
            return Err(Error::Input(
                "pan-and-scan crops are Gemma 3's: this model's prompts have no place for them"
                    .into(),
            ));
        }
        match self.kind {
            Kind::Llava => Ok(tokenizer.encode_chat(messages, true)?),
            Kind::Gemma3 => {
                let rendered = tokenizer.template.render(messages, true)?;
                let image = format!(
                    "\n\n{START_OF_IMAGE}{}{END_OF_IMAGE}\n\n",
                    self.image.repeat(self.per_image)
                );
                let mut text = String::with_capacity(rendered.len());
                for (i, piece) in rendered.split(START_OF_IMAGE).enumerate() {
                    if i > 0 {
                        match crops.get(i - 1).copied().unwrap_or(0) {
                            0 => text.push_str(&image),
                            n => {
                                text.push_str("Here is the original image ");
                                text.push_str(&image);
                                text.push_str(" and here are some crops to help you see better ");
                                text.push_str(&vec![image.as_str(); n].join(" "));
                            }
                        }
                    }
                    text.push_str(piece);
                }
                Ok(tokenizer.encode(&text, false)?)
            }
            Kind::PaliGemma => {
                let last = messages
                    .iter()
                    .rev()
                    .find(|m| m.role == Role::User)
                    .ok_or_else(|| Error::Input("PaliGemma answers a user's prompt".into()))?;
                let images: usize = messages
                    .iter()
                    .map(|m| m.content.matches(&self.image).count())
                    .sum();
                let prompt = last.content.replace(&self.image, "");
                let mut ids =
                    tokenizer.encode(&self.image.repeat(images * self.per_image), false)?;
                ids.push(tokenizer.bos);
                ids.extend(tokenizer.encode(&format!("{}\n", prompt.trim()), false)?);
                Ok(ids)
            }
        }
    }
}
