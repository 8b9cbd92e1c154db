//! From OpenAI messages to the prompt `llava generate` and `llava chat` build: Gemma's chat
//! template (`GemmaTokenizer::encode_chat`) with `<image>` at the front of the turn that carries
//! each image, expanded to the image's tokens by `LlavaModel::expand_image_tokens` (in the model
//! thread). One image in the first user turn gives exactly `ImageChat::prompt`'s tokens
//! (a test in crates/llava checks it).

use std::path::{Path, PathBuf};

use base64::Engine as _;
use gemma_lm::{GemmaTokenizer, Message, Role};
use image_processing::ImageProcessor;

use crate::api::{ChatMessage, Content, Part};
use crate::{Error, Result};

/// Where an image comes from.
#[derive(Debug, Clone)]
pub enum ImageSource {
    /// The decoded bytes of a `data:` URL.
    Bytes(Vec<u8>),
    /// A local file, already canonicalised and checked to lie under `--allow-local-files`.
    File(PathBuf),
}

/// An image to decode, with the request field it came from (for error messages).
#[derive(Debug, Clone)]
pub struct ImageInput {
    /// Its bytes or file.
    pub source: ImageSource,
    /// `messages[i].content[j].image_url`.
    pub param: String,
}

/// The conversation as Gemma turns, with each image's `<image>` placeholder at the front of its
/// turn, and the images in order.
#[derive(Debug, Clone)]
pub struct Conversation {
    /// Alternating user/model turns.
    pub messages: Vec<Message>,
    /// The images, in the order of their placeholders.
    pub images: Vec<ImageInput>,
}

/// Reads OpenAI messages: `system`/`developer` text goes in front of the next user turn (Gemma
/// has no system role); text parts of one message are joined with newlines; each image becomes an
/// `<image>` line at the front of its turn, as `llava generate` places its image.
pub fn conversation(
    messages: &[ChatMessage],
    allow_local_files: Option<&Path>,
    max_images: usize,
    format: &llava_model::PromptFormat,
) -> Result<Conversation> {
    if messages.is_empty() {
        return Err(Error::bad_request(
            "`messages` must hold at least one message",
            Some("messages"),
        ));
    }
    let mut turns = Vec::new();
    let mut images = Vec::new();
    let mut system = Vec::new();
    for (i, message) in messages.iter().enumerate() {
        let param = format!("messages[{i}]");
        let mut texts = Vec::new();
        let mut here = 0;
        match &message.content {
            None => {}
            Some(Content::Text(text)) => texts.push(text.clone()),
            Some(Content::Parts(parts)) => {
                for (j, part) in parts.iter().enumerate() {
                    match part {
                        Part::Text { text } => texts.push(text.clone()),
                        Part::ImageUrl { image_url } => {
                            let param = format!("{param}.content[{j}].image_url");
                            if images.len() >= max_images {
                                return Err(Error::bad_request(
                                    format!("at most {max_images} images per request"),
                                    Some(&param),
                                ));
                            }
                            let source = image_source(&image_url.url, allow_local_files, &param)?;
                            images.push(ImageInput { source, param });
                            here += 1;
                        }
                    }
                }
            }
        }
        let text = texts.join("\n");
        if text.contains(llava_model::IMAGE_TOKEN) {
            return Err(Error::bad_request(
                format!(
                    "message text may not contain `{}`: send images as image_url parts",
                    llava_model::IMAGE_TOKEN
                ),
                Some(&param),
            ));
        }
        let role = match message.role.as_str() {
            "system" | "developer" => {
                if here > 0 {
                    return Err(Error::bad_request(
                        "images belong in user messages",
                        Some(&param),
                    ));
                }
                system.push(text.trim().to_string());
                continue;
            }
            other => Role::parse(other)
                .map_err(|e| Error::bad_request(e.to_string(), Some(&format!("{param}.role"))))?,
        };
        let mut content = text;
        if role == Role::User && !system.is_empty() {
            system.push(content.trim().to_string());
            content = system.join("\n\n");
            system.clear();
        }
        if here > 0 {
            content = format.mark_images(&content, here);
        }
        turns.push(Message { role, content });
    }
    if !system.is_empty() {
        return Err(Error::bad_request(
            "a system message must be followed by a user message",
            Some("messages"),
        ));
    }
    if turns.last().is_some_and(|m| m.role != Role::User) {
        return Err(Error::bad_request(
            "the last message must be the user's",
            Some("messages"),
        ));
    }
    Ok(Conversation {
        messages: turns,
        images,
    })
}

/// The chat prompt's token ids: LLaVA's with one `<image>` token per image (expanded later),
/// Gemma 3's and PaliGemma's expanded already (see `llava_model::prompt`).
///
/// `crops[i]` is the number of pan-and-scan crops of image `i` (Gemma 3; empty for none).
pub fn encode(
    tokenizer: &GemmaTokenizer,
    conversation: &Conversation,
    format: &llava_model::PromptFormat,
    crops: &[usize],
) -> Result<Vec<i64>> {
    format
        .encode_with_crops(tokenizer, &conversation.messages, crops)
        .map_err(|e| Error::bad_request(e.to_string(), Some("messages")))
}

/// Reads an image URL: `data:` URLs always; `file://` URLs and plain paths only under
/// `allow_local_files`; http(s) never (the server makes no outgoing requests).
pub fn image_source(
    url: &str,
    allow_local_files: Option<&Path>,
    param: &str,
) -> Result<ImageSource> {
    let bad = |message: String| Error::bad_request(message, Some(param));
    if let Some(rest) = url.strip_prefix("data:") {
        let (header, data) = rest
            .split_once(',')
            .ok_or_else(|| bad("a data: URL needs a comma before its data".into()))?;
        if !header.ends_with(";base64") {
            return Err(bad(
                "only base64 data: URLs are supported (data:image/png;base64,...)".into(),
            ));
        }
        let cleaned: String = data.chars().filter(|c| !c.is_ascii_whitespace()).collect();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(cleaned.as_bytes())
            .or_else(|_| base64::engine::general_purpose::URL_SAFE.decode(cleaned.as_bytes()))
            .map_err(|e| bad(format!("the data: URL is not valid base64: {e}")))?;
        return Ok(ImageSource::Bytes(bytes));
    }
    let lower = url.to_ascii_lowercase();
    if lower.starts_with("http://") || lower.starts_with("https://") {
        return Err(bad(
            "image URLs are not fetched: send the image as a data: URL (data:image/png;base64,...)"
                .into(),
        ));
    }
    let path = if let Some(rest) = url.strip_prefix("file://") {
        rest
    } else if lower.contains("://") {
        return Err(bad(format!(
            "unsupported image URL scheme in `{}`",
            url.chars().take(40).collect::<String>()
        )));
    } else {
        url
    };
    let Some(root) = allow_local_files else {
        return Err(bad(
            "local image files are refused: start the server with --allow-local-files DIR, or send a data: URL"
                .into(),
        ));
    };
    let root = root
        .canonicalize()
        .map_err(|e| Error::Internal(format!("{}: {e}", root.display())))?;
    let candidate = Path::new(path);
    let candidate = if candidate.is_absolute() {
        candidate.to_path_buf()
    } else {
        root.join(candidate)
    };
    let resolved = candidate
        .canonicalize()
        .map_err(|_| bad("the image file does not exist under the allowed directory".into()))?;
    if !resolved.starts_with(&root) || !resolved.is_file() {
        return Err(bad(
            "the image file does not exist under the allowed directory".into(),
        ));
    }
    Ok(ImageSource::File(resolved))
}

/// Decodes and preprocesses an image: each of its views (the image, then its pan-and-scan crops
/// when the processor makes them) as pixels `[3, h, w]` (flattened), `h` and `w`. Images over
/// `max_pixels` are refused from their header; undecodable ones are a 400.
pub fn load_image(
    input: &ImageInput,
    processor: &ImageProcessor,
    max_pixels: u64,
    max_file_bytes: usize,
) -> Result<Vec<(Vec<f32>, usize, usize)>> {
    let bytes;
    let data = match &input.source {
        ImageSource::Bytes(b) => b.as_slice(),
        ImageSource::File(path) => {
            let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
            if size > max_file_bytes as u64 {
                return Err(Error::Request {
                    status: 413,
                    message: format!("the image file is larger than {max_file_bytes} bytes"),
                    param: Some(input.param.clone()),
                    code: Some("image_too_large"),
                });
            }
            bytes = std::fs::read(path).map_err(|_| {
                Error::bad_request("the image file cannot be read", Some(&input.param))
            })?;
            bytes.as_slice()
        }
    };
    let image =
        image_processing::decode_with_limit(data, &input.param, max_pixels).map_err(|e| {
            let code = match &e {
                image_processing::Error::TooLarge { .. } => "image_too_large",
                _ => "invalid_image",
            };
            Error::Request {
                status: 400,
                message: e.to_string(),
                param: Some(input.param.clone()),
                code: Some(code),
            }
        })?;
    let processed =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| processor.views(&image)))
            .map_err(|_| {
                Error::bad_request("the image could not be preprocessed", Some(&input.param))
            })?;
    Ok(processed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ImageUrl;
    use llava_model::PromptFormat;

    fn user(parts: Vec<Part>) -> ChatMessage {
        ChatMessage {
            role: "user".into(),
            content: Some(Content::Parts(parts)),
        }
    }

    #[test]
    fn an_image_goes_in_front_of_its_turn() {
        let png = base64::engine::general_purpose::STANDARD.encode([1u8, 2, 3]);
        let messages = [
            ChatMessage {
                role: "system".into(),
                content: Some(Content::Text("Be brief.".into())),
            },
            user(vec![
                Part::Text {
                    text: " What is it? ".into(),
                },
                Part::ImageUrl {
                    image_url: ImageUrl {
                        url: format!("data:image/png;base64,{png}"),
                        detail: None,
                    },
                },
            ]),
        ];
        let c = conversation(&messages, None, 4, &PromptFormat::llava()).unwrap();
        assert_eq!(c.messages.len(), 1);
        assert_eq!(c.messages[0].content, "<image>\nBe brief.\n\nWhat is it?");
        assert!(matches!(&c.images[0].source, ImageSource::Bytes(b) if b == &[1, 2, 3]));
    }

    #[test]
    fn remote_and_local_urls_are_refused() {
        for url in ["http://example.com/a.png", "https://x/y.jpg", "ftp://x/y"] {
            assert!(image_source(url, None, "p").is_err(), "{url}");
        }
        assert!(image_source("/etc/passwd", None, "p").is_err());
        let dir = tempfile::tempdir().unwrap();
        let inner = dir.path().join("inner");
        std::fs::create_dir(&inner).unwrap();
        std::fs::write(inner.join("a.png"), b"x").unwrap();
        std::fs::write(dir.path().join("secret.png"), b"x").unwrap();
        assert!(image_source("a.png", Some(&inner), "p").is_ok());
        assert!(image_source("../secret.png", Some(&inner), "p").is_err());
        let escape = format!("file://{}/../secret.png", inner.display());
        assert!(image_source(&escape, Some(&inner), "p").is_err());
        let inside = format!("file://{}/a.png", inner.display());
        assert!(image_source(&inside, Some(&inner), "p").is_ok());
    }

    #[test]
    fn malformed_conversations_are_400() {
        assert!(conversation(&[], None, 4, &PromptFormat::llava()).is_err());
        let text = |role: &str, t: &str| ChatMessage {
            role: role.into(),
            content: Some(Content::Text(t.into())),
        };
        assert!(conversation(&[text("tool", "x")], None, 4, &PromptFormat::llava()).is_err());
        assert!(
            conversation(
                &[text("user", "a <image> b")],
                None,
                4,
                &PromptFormat::llava()
            )
            .is_err()
        );
        assert!(
            conversation(
                &[text("user", "a"), text("assistant", "b")],
                None,
                4,
                &PromptFormat::llava()
            )
            .is_err()
        );
        assert!(conversation(&[text("user", "a")], None, 4, &PromptFormat::llava()).is_ok());
    }
}
