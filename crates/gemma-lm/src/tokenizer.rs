//! The Gemma tokenizer (`tokenizer.json` through the `tokenizers` crate) and the Gemma chat template.

use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// Who speaks a chat turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The person asking (`user`).
    User,
    /// The model answering (`model`; `assistant` in OpenAI-style messages).
    Model,
    /// Instructions before the conversation: Gemma 3's template folds them into the first user
    /// turn; Gemma's and Gemma 2's reject them.
    System,
}

impl Role {
    /// The name the template writes.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Model => "model",
            Role::System => "system",
        }
    }

    /// Parses `user`/`human`, `model`/`assistant`/`gpt` or `system`.
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "user" | "human" => Ok(Role::User),
            "model" | "assistant" | "gpt" => Ok(Role::Model),
            "system" => Ok(Role::System),
            other => Err(Error::Chat(format!("unknown role `{other}`"))),
        }
    }
}

/// One turn of a conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The speaker.
    pub role: Role,
    /// What was said.
    pub content: String,
}

impl Message {
    /// A user turn.
    pub fn user(content: impl Into<String>) -> Self {
        Message {
            role: Role::User,
            content: content.into(),
        }
    }

    /// A model turn.
    pub fn model(content: impl Into<String>) -> Self {
        Message {
            role: Role::Model,
            content: content.into(),
        }
    }
}

/// The chat templates of the Gemma generations, as their `tokenizer_config.json` ship them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ChatTemplate {
    /// Gemma and Gemma 2 (the same template): alternating user/model turns, no system turn.
    #[default]
    Gemma,
    /// Gemma 3: a leading system turn's text, followed by a blank line, opens the first user
    /// turn.
    Gemma3,
}

impl ChatTemplate {
    /// The template's Jinja source (what `tokenizer_config.json`'s `chat_template` holds).
    pub fn jinja(self) -> &'static str {
        match self {
            ChatTemplate::Gemma => GEMMA_JINJA,
            ChatTemplate::Gemma3 => GEMMA3_JINJA,
        }
    }

    /// The template a `chat_template` source is: Gemma 3's folds the system turn
    /// (`first_user_prefix`), Gemma's and Gemma 2's do not.
    pub fn recognise(jinja: &str) -> ChatTemplate {
        if jinja.contains("first_user_prefix") {
            ChatTemplate::Gemma3
        } else {
            ChatTemplate::Gemma
        }
    }

    /// Renders `messages` exactly as the template's Jinja source does:
    ///
    /// ```text
    /// <bos><start_of_turn>user\n{content|trim}<end_of_turn>\n<start_of_turn>model\n{content|trim}<end_of_turn>\n…
    /// ```
    /// followed by `<start_of_turn>model\n` when `add_generation_prompt`. Turns must alternate,
    /// starting with the user, as the templates demand; Gemma 3 first takes a system turn's text
    /// (untrimmed) and a blank line as the start of the first user turn.
    pub fn render(self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let mut text = String::from("<bos>");
        let (prefix, turns) = match (self, messages.first()) {
            (ChatTemplate::Gemma3, Some(m)) if m.role == Role::System => {
                (format!("{}\n\n", m.content), &messages[1..])
            }
            (ChatTemplate::Gemma, Some(m)) if m.role == Role::System => {
                return Err(Error::Chat(
                    "System role not supported (Gemma's and Gemma 2's chat template)".into(),
                ));
            }
            _ => (String::new(), messages),
        };
        for (i, message) in turns.iter().enumerate() {
            let expected = if i % 2 == 0 { Role::User } else { Role::Model };
            if message.role != expected {
                return Err(Error::Chat(format!(
                    "turn {} is `{}`, but turns must alternate user/model starting with user",
                    i + 1,
                    message.role.as_str()
                )));
            }
            text.push_str("<start_of_turn>");
            text.push_str(message.role.as_str());
            text.push('\n');
            if i == 0 {
                text.push_str(&prefix);
            }
            text.push_str(message.content.trim());
            text.push_str("<end_of_turn>\n");
        }
        if add_generation_prompt {
            text.push_str("<start_of_turn>model\n");
        }
        Ok(text)
    }
}

/// Renders `messages` with Gemma's (and Gemma 2's) chat template; see [`ChatTemplate::render`].
pub fn apply_chat_template(messages: &[Message], add_generation_prompt: bool) -> Result<String> {
    ChatTemplate::Gemma.render(messages, add_generation_prompt)
}

/// `google/gemma-2b-it`'s and `google/gemma-2-2b-it`'s `chat_template`.
pub const GEMMA_JINJA: &str = "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}{{ '<start_of_turn>' + role + '\\n' + message['content'] | trim + '<end_of_turn>\\n' }}{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\\n'}}{% endif %}";

/// A token a tokenizer adds beside its model's vocabulary, with the flags `tokenizer.json` and
/// `tokenizer_config.json` give it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddedToken {
    /// Its id.
    pub id: i64,
    /// Its text.
    pub content: String,
    /// Whether it is special (skipped when decoding with `skip_special_tokens`).
    pub special: bool,
    /// Whether it takes the whitespace on its left.
    pub lstrip: bool,
    /// Whether it takes the whitespace on its right.
    pub rstrip: bool,
    /// Whether it is matched after normalisation.
    pub normalized: bool,
    /// Whether it only matches whole words.
    pub single_word: bool,
}

/// `google/gemma-3-*-it`'s `chat_template` (text and image parts).
pub const GEMMA3_JINJA: &str = r#"{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- if messages[0]['content'] is string -%}
        {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}
    {%- else -%}
        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}
    {%- endif -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- if (message['role'] == 'assistant') -%}
        {%- set role = "model" -%}
    {%- else -%}
        {%- set role = message['role'] -%}
    {%- endif -%}
    {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else "") }}
    {%- if message['content'] is string -%}
        {{ message['content'] | trim }}
    {%- elif message['content'] is iterable -%}
        {%- for item in message['content'] -%}
            {%- if item['type'] == 'image' -%}
                {{ '<start_of_image>' }}
            {%- elif item['type'] == 'text' -%}
                {{ item['text'] | trim }}
            {%- endif -%}
        {%- endfor -%}
    {%- else -%}
        {{ raise_exception("Invalid content type") }}
    {%- endif -%}
    {{ '<end_of_turn>\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{'<start_of_turn>model\n'}}
{%- endif -%}
"#;

/// The chat template a model directory ships: `chat_template.jinja`, else `tokenizer_config.json`'s
/// `chat_template`; Gemma's when neither has one.
fn shipped_template(dir: &Path) -> Result<ChatTemplate> {
    let read = |name: &str| -> Result<Option<String>> {
        let path = dir.join(name);
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok(Some(text)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(Error::Io { path, source }),
        }
    };
    if let Some(jinja) = read("chat_template.jinja")? {
        return Ok(ChatTemplate::recognise(&jinja));
    }
    let Some(config) = read("tokenizer_config.json")? else {
        return Ok(ChatTemplate::Gemma);
    };
    let config: serde_json::Value =
        serde_json::from_str(&config).map_err(|e| Error::Tokenizer {
            path: dir.join("tokenizer_config.json"),
            message: e.to_string(),
        })?;
    Ok(config
        .get("chat_template")
        .and_then(|t| t.as_str())
        .map_or(ChatTemplate::Gemma, ChatTemplate::recognise))
}

/// A Gemma tokenizer with its special tokens looked up by name (their ids differ between
/// checkpoints: `<start_of_turn>` is 106 in Gemma, other ids in converted or tiny tokenizers).
#[derive(Debug, Clone)]
pub struct GemmaTokenizer {
    inner: tokenizers::Tokenizer,
    path: PathBuf,
    /// `<bos>`.
    pub bos: i64,
    /// `<eos>`.
    pub eos: i64,
    /// `<pad>` (`<eos>` where the vocabulary has no `<pad>`).
    pub pad: i64,
    /// `<start_of_turn>`, if the vocabulary has it.
    pub start_of_turn: Option<i64>,
    /// `<end_of_turn>`, if the vocabulary has it.
    pub end_of_turn: Option<i64>,
    /// The chat template [`encode_chat`](Self::encode_chat) renders: the one
    /// `tokenizer_config.json` (or `chat_template.jinja`) beside `tokenizer.json` names, else
    /// Gemma's.
    pub template: ChatTemplate,
}

impl GemmaTokenizer {
    /// Loads `tokenizer.json` (or a model directory holding one).
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let mut path = path.as_ref().to_path_buf();
        if path.is_dir() {
            path = path.join("tokenizer.json");
        }
        let inner = tokenizers::Tokenizer::from_file(&path).map_err(|e| Error::Tokenizer {
            path: path.clone(),
            message: e.to_string(),
        })?;
        let template = path
            .parent()
            .map_or(Ok(ChatTemplate::Gemma), shipped_template)?;
        Ok(GemmaTokenizer {
            template,
            ..Self::with_specials(inner, path)?
        })
    }

    /// Parses the text of a `tokenizer.json`; `origin` names it in errors.
    pub fn from_json(text: &str, origin: &str) -> Result<Self> {
        let inner: tokenizers::Tokenizer =
            text.parse()
                .map_err(|e: tokenizers::Error| Error::Tokenizer {
                    path: origin.into(),
                    message: e.to_string(),
                })?;
        Self::with_specials(inner, origin.into())
    }

    fn with_specials(inner: tokenizers::Tokenizer, path: PathBuf) -> Result<Self> {
        let id = |token: &str| inner.token_to_id(token).map(i64::from);
        let required = |token: &str| {
            id(token).ok_or_else(|| Error::Tokenizer {
                path: path.clone(),
                message: format!("the vocabulary has no `{token}` token"),
            })
        };
        Ok(GemmaTokenizer {
            bos: required("<bos>")?,
            eos: required("<eos>")?,
            // Gemma always has `<pad>`; a tokenizer without one pads with `<eos>`.
            pad: match id("<pad>") {
                Some(pad) => pad,
                None => required("<eos>")?,
            },
            start_of_turn: id("<start_of_turn>"),
            end_of_turn: id("<end_of_turn>"),
            template: ChatTemplate::Gemma,
            inner,
            path,
        })
    }

    /// The id of `token`, if the vocabulary has it.
    pub fn token_id(&self, token: &str) -> Option<i64> {
        self.inner.token_to_id(token).map(i64::from)
    }

    /// The tokens added beside the model's vocabulary (`<start_of_turn>`, `<image>`, …), by id:
    /// what transformers lists as `added_tokens_decoder` in `tokenizer_config.json`, without which
    /// its `GemmaTokenizer` reads them as plain text.
    pub fn added_tokens(&self) -> Vec<AddedToken> {
        let mut tokens: Vec<AddedToken> = self
            .inner
            .get_added_tokens_decoder()
            .into_iter()
            .map(|(id, t)| AddedToken {
                id: i64::from(id),
                content: t.content,
                special: t.special,
                lstrip: t.lstrip,
                rstrip: t.rstrip,
                normalized: t.normalized,
                single_word: t.single_word,
            })
            .collect();
        tokens.sort_by_key(|t| t.id);
        tokens
    }

    /// Number of tokens, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Encodes `text`; special tokens written in it (`<start_of_turn>`) become their ids. With
    /// `add_special_tokens`, the tokenizer's post-processor adds what `tokenizer(text)` adds in
    /// transformers (`<bos>` for Gemma); a `tokenizer.json` without a post-processor still gets the
    /// `<bos>` that Gemma's tokenizer class adds by default.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<i64>> {
        let encoding = self
            .inner
            .encode(text, add_special_tokens)
            .map_err(|e| self.error(e))?;
        let mut ids = Vec::with_capacity(encoding.len() + 1);
        if add_special_tokens && self.inner.get_post_processor().is_none() {
            ids.push(self.bos);
        }
        ids.extend(encoding.get_ids().iter().map(|&id| i64::from(id)));
        Ok(ids)
    }

    /// Decodes `ids`; with `skip_special_tokens`, `<bos>`, `<start_of_turn>` and the like vanish.
    pub fn decode(&self, ids: &[i64], skip_special_tokens: bool) -> Result<String> {
        let ids: Vec<u32> = ids
            .iter()
            .map(|&id| u32::try_from(id).map_err(|_| self.error(format!("invalid token id {id}"))))
            .collect::<Result<_>>()?;
        self.inner
            .decode(&ids, skip_special_tokens)
            .map_err(|e| self.error(e))
    }

    /// Renders and encodes a conversation with the chat template (its `<bos>` included).
    pub fn encode_chat(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<Vec<i64>> {
        self.encode(
            &self.template.render(messages, add_generation_prompt)?,
            false,
        )
    }

    /// The tokens that end a model turn: `<end_of_turn>` and `<eos>`.
    pub fn chat_stop_tokens(&self) -> Vec<i64> {
        self.end_of_turn.into_iter().chain([self.eos]).collect()
    }

    /// Adds `token` as a special token unless the vocabulary has it; returns its id. LLaVA adds
    /// `<image>` this way when it assembles a model from a plain Gemma.
    pub fn add_special_token(&mut self, token: &str) -> i64 {
        if let Some(id) = self.token_id(token) {
            return id;
        }
        self.inner
            .add_special_tokens(&[tokenizers::AddedToken::from(token.to_string(), true)]);
        self.token_id(token).expect("a token just added has an id")
    }

    /// Writes `tokenizer.json` to `path` (atomically).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let json = self.inner.to_string(true).map_err(|e| self.error(e))?;
        foundation::write_atomic(path, json.as_bytes())?;
        Ok(())
    }

    fn error(&self, e: impl std::fmt::Display) -> Error {
        Error::Tokenizer {
            path: self.path.clone(),
            message: e.to_string(),
        }
    }
}

/// Turns a stream of token ids into a stream of text pieces, holding back bytes of a character that
/// byte-fallback tokens have not completed yet.
#[derive(Debug)]
pub struct TextStreamer<'a> {
    tokenizer: &'a GemmaTokenizer,
    ids: Vec<i64>,
    emitted: usize,
}

impl<'a> TextStreamer<'a> {
    /// A streamer that skips special tokens.
    pub fn new(tokenizer: &'a GemmaTokenizer) -> Self {
        TextStreamer {
            tokenizer,
            ids: Vec::new(),
            emitted: 0,
        }
    }

    /// Adds a token; returns the new text it completes (possibly empty).
    pub fn push(&mut self, id: i64) -> Result<String> {
        self.ids.push(id);
        let text = self.tokenizer.decode(&self.ids, true)?;
        if text.ends_with('\u{FFFD}') {
            // An incomplete UTF-8 sequence from byte-fallback tokens: wait for its other bytes.
            return Ok(String::new());
        }
        // Decoding more tokens can rewrite a replacement character before the end; never split a
        // character, and never print twice what was printed.
        let piece = text.get(self.emitted..).unwrap_or_default().to_string();
        self.emitted = self.emitted.max(text.len());
        Ok(piece)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_matches_gemma_jinja() {
        let text = apply_chat_template(
            &[
                Message::user("  Hi\n"),
                Message::model("Hello."),
                Message::user("Bye"),
            ],
            true,
        )
        .unwrap();
        assert_eq!(
            text,
            "<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\nHello.<end_of_turn>\n\
             <start_of_turn>user\nBye<end_of_turn>\n<start_of_turn>model\n"
        );
    }

    #[test]
    fn template_rejects_what_gemma_rejects() {
        assert!(apply_chat_template(&[Message::model("x")], false).is_err());
        assert!(apply_chat_template(&[Message::user("a"), Message::user("b")], false).is_err());
        let system = Message {
            role: Role::parse("system").unwrap(),
            content: "Be brief.".into(),
        };
        let err = apply_chat_template(&[system.clone(), Message::user("a")], false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("System role"), "{err}");
        assert_eq!(
            ChatTemplate::Gemma3
                .render(&[system, Message::user(" a ")], true)
                .unwrap(),
            "<bos><start_of_turn>user\nBe brief.\n\na<end_of_turn>\n<start_of_turn>model\n"
        );
        assert_eq!(Role::parse("gpt").unwrap(), Role::Model);
    }
}
