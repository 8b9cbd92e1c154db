//! A Gemma language model as a GGUF file for llama.cpp (architecture `gemma`), written as its own
//! converter (`convert_hf_to_gguf.py`'s `GemmaModel`) writes one: the same keys, tensor names and
//! types, RMSNorm weights stored as `1 + w` (llama.cpp multiplies by the stored weight), the tied
//! head left out, norms in f32 whatever the file's type. The tokenizer goes in as llama.cpp's
//! SentencePiece-style vocabulary (`tokenizer.ggml.model = "llama"`): each token's score is minus
//! the rank of the merge that makes it, so the highest-scoring pair merges first, as BPE's ranks
//! say. See `docs/dev/gguf-notes.md`.

use foundation::Checkpoint;
use foundation::gguf::{GgufWriter, TensorType, Value};

use crate::config::{GemmaConfig, Generation};
use crate::{Error, Result};

/// llama.cpp's token types.
const NORMAL: i32 = 1;
const UNKNOWN: i32 = 2;
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;
const BYTE: i32 = 6;

/// The language model of `checkpoint` (wherever in it the decoder sits) as a GGUF file with
/// matrices stored as `kind`, and the tokenizer of `tokenizer_json` (a `tokenizer.json`'s text).
/// Gemma 1 only: Gemma 2 and 3 are an error that says so.
pub fn to_gguf<'a>(
    config: &GemmaConfig,
    checkpoint: &'a Checkpoint,
    tokenizer_json: &str,
    kind: TensorType,
    name: &str,
) -> Result<GgufWriter<'a>> {
    if config.generation()? != Generation::Gemma1 {
        return Err(Error::Input(format!(
            "GGUF export writes Gemma 1 language models for now (this one is `{}`)",
            config.model_type.as_deref().unwrap_or("gemma")
        )));
    }
    if !config.tie_word_embeddings {
        return Err(Error::Input(
            "GGUF export: llama.cpp's gemma reads the head from the embedding; this model's head \
             is untied"
                .into(),
        ));
    }
    let mut w = GgufWriter::new();
    let arch = "gemma";
    let key = |k: &str| format!("{arch}.{k}");
    w.set("general.architecture", Value::Str(arch.into()));
    w.set("general.name", Value::Str(name.into()));
    w.set("general.file_type", Value::U32(kind.file_type()));
    w.set("general.quantization_version", Value::U32(2));
    let u32_of = |v: i64| Value::U32(v as u32);
    w.set(
        &key("context_length"),
        u32_of(config.max_position_embeddings),
    );
    w.set(&key("embedding_length"), u32_of(config.hidden_size));
    w.set(&key("block_count"), u32_of(config.num_hidden_layers));
    w.set(
        &key("feed_forward_length"),
        u32_of(config.intermediate_size),
    );
    w.set(
        &key("attention.head_count"),
        u32_of(config.num_attention_heads),
    );
    w.set(
        &key("attention.head_count_kv"),
        u32_of(config.num_key_value_heads),
    );
    w.set(
        &key("attention.layer_norm_rms_epsilon"),
        Value::F32(config.rms_norm_eps as f32),
    );
    w.set(&key("attention.key_length"), u32_of(config.head_dim));
    w.set(&key("attention.value_length"), u32_of(config.head_dim));
    w.set(
        &key("rope.freq_base"),
        Value::F32(config.rope_theta() as f32),
    );
    add_tokenizer(&mut w, config, tokenizer_json)?;

    let prefix = checkpoint.require_prefix("embed_tokens.weight", "model.embed_tokens.weight")?;
    // Each tensor is read, converted and encoded only when the file is written: the export
    // holds the checkpoint and one tensor, not every encoded tensor at once.
    let mut add = |gguf: &str, hf: &str, how: Stored| -> Result<()> {
        let name = format!("{prefix}{hf}");
        let kind = match how {
            Stored::Norm => TensorType::F32,
            Stored::Matrix => kind,
        };
        w.add_from_checkpoint(gguf, checkpoint, &name, kind, move |t| match how {
            Stored::Norm => t + 1.0,
            Stored::Matrix => t,
        })
        .map_err(|e| Error::Input(format!("{name}: {e}")))
    };
    add("token_embd.weight", "embed_tokens.weight", Stored::Matrix)?;
    for i in 0..config.num_hidden_layers {
        let blk = |n: &str| format!("blk.{i}.{n}.weight");
        let hf = |n: &str| format!("layers.{i}.{n}.weight");
        add(&blk("attn_norm"), &hf("input_layernorm"), Stored::Norm)?;
        add(&blk("attn_q"), &hf("self_attn.q_proj"), Stored::Matrix)?;
        add(&blk("attn_k"), &hf("self_attn.k_proj"), Stored::Matrix)?;
        add(&blk("attn_v"), &hf("self_attn.v_proj"), Stored::Matrix)?;
        add(&blk("attn_output"), &hf("self_attn.o_proj"), Stored::Matrix)?;
        add(
            &blk("ffn_norm"),
            &hf("post_attention_layernorm"),
            Stored::Norm,
        )?;
        add(&blk("ffn_gate"), &hf("mlp.gate_proj"), Stored::Matrix)?;
        add(&blk("ffn_up"), &hf("mlp.up_proj"), Stored::Matrix)?;
        add(&blk("ffn_down"), &hf("mlp.down_proj"), Stored::Matrix)?;
    }
    add("output_norm.weight", "norm.weight", Stored::Norm)?;
    Ok(w)
}

#[derive(Clone, Copy)]
enum Stored {
    /// Gemma's RMSNorm weight, stored as `1 + w`, f32.
    Norm,
    /// A matrix, in the file's type.
    Matrix,
}

/// Gemma's chat template as llama.cpp's chat tools render it: a message's content may also be a
/// list of parts (llama-cpp-python's multimodal handler hands images over as text parts holding
/// the media marker), joined by newlines, so an image then a question reads as LLaVA's
/// `<image>\n{question}` does.
const CHAT_TEMPLATE: &str = "{{ bos_token }}{% for message in messages %}\
{% if message['role'] == 'assistant' %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}\
{{ '<start_of_turn>' + role + '\\n' }}\
{% if message['content'] is string %}{{ message['content'] | trim }}\
{% else %}{% for part in message['content'] %}{% if not loop.first %}{{ '\\n' }}{% endif %}{{ part['text'] | trim }}{% endfor %}{% endif %}\
{{ '<end_of_turn>\\n' }}{% endfor %}\
{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}";

/// The vocabulary, scores, types and special ids of a `tokenizer.json` (BPE with byte fallback,
/// as Gemma's), padded with unused entries up to the model's `vocab_size`.
fn add_tokenizer(w: &mut GgufWriter, config: &GemmaConfig, json: &str) -> Result<()> {
    let bad = |m: &str| Error::Tokenizer {
        path: "tokenizer.json".into(),
        message: m.to_string(),
    };
    let tok: serde_json::Value =
        serde_json::from_str(json).map_err(|e| bad(&format!("not JSON: {e}")))?;
    let model = &tok["model"];
    if model["type"] != "BPE" {
        return Err(bad("GGUF export reads BPE tokenizers (Gemma's)"));
    }
    let vocab = model["vocab"]
        .as_object()
        .ok_or_else(|| bad("no model.vocab"))?;
    let mut tokens = vec![None; config.vocab_size as usize];
    let mut place = |piece: &str, id: u64| -> Result<()> {
        let slot = tokens
            .get_mut(id as usize)
            .ok_or_else(|| bad(&format!("token id {id} is past the model's vocabulary")))?;
        *slot = Some(piece.to_string());
        Ok(())
    };
    for (piece, id) in vocab {
        place(
            piece,
            id.as_u64()
                .ok_or_else(|| bad("a vocab id is not a number"))?,
        )?;
    }
    let added = tok["added_tokens"].as_array().cloned().unwrap_or_default();
    for a in &added {
        let (Some(piece), Some(id)) = (a["content"].as_str(), a["id"].as_u64()) else {
            return Err(bad("an added token without content or id"));
        };
        place(piece, id)?;
    }
    // Merge ranks: a token made by merge r scores -r (earlier merges first).
    let merges = model["merges"].as_array().cloned().unwrap_or_default();
    let mut score = std::collections::HashMap::new();
    for (rank, m) in merges.iter().enumerate() {
        let joined = match m {
            serde_json::Value::String(s) => s.replacen(' ', "", 1),
            serde_json::Value::Array(pair) => pair
                .iter()
                .map(|p| p.as_str().unwrap_or_default())
                .collect(),
            _ => return Err(bad("a merge is neither \"a b\" nor [a, b]")),
        };
        score.entry(joined).or_insert(-(rank as f32) - 1.0);
    }
    let added_pieces = |special: bool| -> std::collections::HashSet<&str> {
        added
            .iter()
            .filter(|a| !special || a["special"].as_bool().unwrap_or(false))
            .filter_map(|a| a["content"].as_str())
            .collect()
    };
    let (special, user_defined) = (added_pieces(true), added_pieces(false));
    let unk = model["unk_token"].as_str();
    let unk_id = unk.and_then(|u| vocab.get(u)).and_then(|id| id.as_u64());
    let (mut pieces, mut scores, mut types) = (Vec::new(), Vec::new(), Vec::new());
    for (id, piece) in tokens.into_iter().enumerate() {
        let piece = piece.unwrap_or_else(|| format!("<unused_{id}>"));
        let kind = if Some(piece.as_str()) == unk {
            UNKNOWN
        } else if special.contains(piece.as_str()) {
            CONTROL
        } else if piece.len() == 6 && piece.starts_with("<0x") && piece.ends_with('>') {
            BYTE
        } else if user_defined.contains(piece.as_str()) {
            USER_DEFINED
        } else {
            NORMAL
        };
        scores.push(score.get(&piece).copied().unwrap_or(0.0));
        types.push(kind);
        pieces.push(piece);
    }
    w.set("tokenizer.ggml.model", Value::Str("llama".into()));
    w.set("tokenizer.ggml.tokens", Value::Strs(pieces));
    w.set("tokenizer.ggml.scores", Value::F32s(scores));
    w.set("tokenizer.ggml.token_type", Value::I32s(types));
    let id = |v: Option<i64>, default: i64| Value::U32(v.unwrap_or(default) as u32);
    w.set("tokenizer.ggml.bos_token_id", id(config.bos_token_id, 2));
    let eos = config
        .eos_token_id
        .as_ref()
        .and_then(|e| e.to_vec().first().copied());
    w.set("tokenizer.ggml.eos_token_id", id(eos, 1));
    w.set(
        "tokenizer.ggml.unknown_token_id",
        Value::U32(unk_id.unwrap_or(3) as u32),
    );
    w.set(
        "tokenizer.ggml.padding_token_id",
        id(config.pad_token_id, 0),
    );
    w.set("tokenizer.ggml.add_bos_token", Value::Bool(true));
    w.set("tokenizer.ggml.add_eos_token", Value::Bool(false));
    w.set("tokenizer.ggml.add_space_prefix", Value::Bool(false));
    w.set("tokenizer.chat_template", Value::Str(CHAT_TEMPLATE.into()));
    Ok(())
}
