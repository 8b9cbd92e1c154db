//! A Gemma language model as a GGUF file for llama.cpp (architectures `gemma`, `gemma2`,
//! `gemma3`), written as its own converter (`convert_hf_to_gguf.py`'s `GemmaModel`,
//! `Gemma2Model`, `Gemma3Model`) writes one: the same keys, tensor names and
//! types, RMSNorm weights stored as `1 + w` (llama.cpp multiplies by the stored weight), the tied
//! head left out, norms in f32 whatever the file's type. The tokenizer goes in as llama.cpp's
//! SentencePiece-style vocabulary (`tokenizer.ggml.model = "llama"`): each token's score is minus
//! the rank of the merge that makes it, so the highest-scoring pair merges first, as BPE's ranks
//! say. See `docs/dev/gguf-notes.md`.

use foundation::Checkpoint;
use foundation::gguf::{GgufWriter, TensorType, Value};

use crate::config::{GemmaConfig, Generation, LayerType};
use crate::{Error, Result};

/// llama.cpp's token types.
const NORMAL: i32 = 1;
const UNKNOWN: i32 = 2;
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;
const BYTE: i32 = 6;

/// The language model of `checkpoint` (wherever in it the decoder sits) as a GGUF file with
/// matrices stored as `kind`, and the tokenizer of `tokenizer_json` (a `tokenizer.json`'s text).
/// Gemma 1, 2 and 3 (architectures `gemma`, `gemma2`, `gemma3`); what llama.cpp cannot compute
/// for a config (an untied head, a Gemma 2 without soft-caps, a Gemma 3 with a final soft-cap)
/// is an error that says so.
pub fn to_gguf<'a>(
    config: &GemmaConfig,
    checkpoint: &'a Checkpoint,
    tokenizer_json: &str,
    kind: TensorType,
    name: &str,
) -> Result<GgufWriter<'a>> {
    let generation = config.generation()?;
    let refuse = |why: &str| Error::Input(format!("GGUF export: {why}"));
    if !config.tie_word_embeddings {
        return Err(refuse(
            "llama.cpp's gemma reads the head from the embedding; this model's head is untied",
        ));
    }
    let arch = arch_name(generation);
    let mut w = GgufWriter::new();
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
    if generation != Generation::Gemma1 {
        sliding_keys(&mut w, config, generation, &key)?;
    }
    add_tokenizer(&mut w, config, tokenizer_json)?;

    // llama.cpp scales queries by its own rule (below); a config whose scale differs has the
    // ratio folded into the queries: Gemma 2's q_proj, Gemma 3's query norm (its queries are
    // normalised after q_proj, and the rotation is linear).
    let query_factor = config.attention_scale() / llama_cpp_attention_scale(config, generation);
    let fold = (query_factor - 1.0).abs() > 1e-6;
    let prefix = checkpoint.require_prefix("embed_tokens.weight", "model.embed_tokens.weight")?;
    // Each tensor is read, converted and encoded only when the file is written: the export
    // holds the checkpoint and one tensor, not every encoded tensor at once.
    let mut add = |gguf: &str, hf: &str, how: Stored| -> Result<()> {
        let name = format!("{prefix}{hf}");
        let kind = match how {
            Stored::Norm | Stored::ScaledNorm(_) => TensorType::F32,
            Stored::Matrix | Stored::ScaledMatrix(_) => kind,
        };
        w.add_from_checkpoint(gguf, checkpoint, &name, kind, move |t| match how {
            Stored::Norm => t + 1.0,
            Stored::ScaledNorm(f) => (t + 1.0) * f,
            Stored::Matrix => t,
            Stored::ScaledMatrix(f) => t * f,
        })
        .map_err(|e| Error::Input(format!("{name}: {e}")))
    };
    let (q_proj, q_norm) = match (fold, config.qk_norm()) {
        (false, _) => (Stored::Matrix, Stored::Norm),
        (true, false) => (Stored::ScaledMatrix(query_factor), Stored::Norm),
        (true, true) => (Stored::Matrix, Stored::ScaledNorm(query_factor)),
    };
    add("token_embd.weight", "embed_tokens.weight", Stored::Matrix)?;
    for i in 0..config.num_hidden_layers {
        let blk = |n: &str| format!("blk.{i}.{n}.weight");
        let hf = |n: &str| format!("layers.{i}.{n}.weight");
        add(&blk("attn_norm"), &hf("input_layernorm"), Stored::Norm)?;
        add(&blk("attn_q"), &hf("self_attn.q_proj"), q_proj)?;
        add(&blk("attn_k"), &hf("self_attn.k_proj"), Stored::Matrix)?;
        add(&blk("attn_v"), &hf("self_attn.v_proj"), Stored::Matrix)?;
        if config.qk_norm() {
            add(&blk("attn_q_norm"), &hf("self_attn.q_norm"), q_norm)?;
            add(&blk("attn_k_norm"), &hf("self_attn.k_norm"), Stored::Norm)?;
        }
        add(&blk("attn_output"), &hf("self_attn.o_proj"), Stored::Matrix)?;
        if config.sandwich_norms() {
            add(
                &blk("post_attention_norm"),
                &hf("post_attention_layernorm"),
                Stored::Norm,
            )?;
            add(
                &blk("ffn_norm"),
                &hf("pre_feedforward_layernorm"),
                Stored::Norm,
            )?;
            add(
                &blk("post_ffw_norm"),
                &hf("post_feedforward_layernorm"),
                Stored::Norm,
            )?;
        } else {
            add(
                &blk("ffn_norm"),
                &hf("post_attention_layernorm"),
                Stored::Norm,
            )?;
        }
        add(&blk("ffn_gate"), &hf("mlp.gate_proj"), Stored::Matrix)?;
        add(&blk("ffn_up"), &hf("mlp.up_proj"), Stored::Matrix)?;
        add(&blk("ffn_down"), &hf("mlp.down_proj"), Stored::Matrix)?;
    }
    add("output_norm.weight", "norm.weight", Stored::Norm)?;
    Ok(w)
}

/// llama.cpp's architecture for a generation.
fn arch_name(generation: Generation) -> &'static str {
    match generation {
        Generation::Gemma1 => "gemma",
        Generation::Gemma2 => "gemma2",
        Generation::Gemma3 => "gemma3",
    }
}

/// The scale llama.cpp gives queries of a Gemma 2 or 3 model: `1/sqrt(head_dim)`, except for
/// the layer counts it takes for the 27B models (46 for Gemma 2, 62 for Gemma 3), where it is
/// `1/sqrt(hidden / heads)`, as `gemma_pytorch`'s configs say. Gemma 1 scales by
/// `1/sqrt(head_dim)`.
fn llama_cpp_attention_scale(config: &GemmaConfig, generation: Generation) -> f64 {
    let big = match generation {
        Generation::Gemma1 => false,
        Generation::Gemma2 => config.num_hidden_layers == 46,
        Generation::Gemma3 => config.num_hidden_layers == 62,
    };
    let per_head = if big {
        config.hidden_size / config.num_attention_heads
    } else {
        config.head_dim
    };
    (per_head as f64).powf(-0.5)
}

/// Gemma 2's and 3's keys: the window, which layers slide (as a per-layer list, which llama.cpp
/// prefers to its built-in pattern), the soft-caps (Gemma 2) and the rotary embeddings of each
/// layer type (Gemma 3).
fn sliding_keys(
    w: &mut GgufWriter,
    config: &GemmaConfig,
    generation: Generation,
    key: &dyn Fn(&str) -> String,
) -> Result<()> {
    let refuse = |why: String| Error::Input(format!("GGUF export: {why}"));
    let types = config.layer_types()?;
    let window = config.window().unwrap_or(4096);
    w.set(&key("attention.sliding_window"), Value::U32(window as u32));
    w.set(
        &key("attention.sliding_window_pattern"),
        Value::Bools(
            types
                .iter()
                .map(|t| *t == LayerType::SlidingAttention)
                .collect(),
        ),
    );
    match generation {
        Generation::Gemma2 => {
            let (Some(attn), Some(last)) = (config.attn_softcap(), config.final_softcap()) else {
                return Err(refuse(
                    "llama.cpp's gemma2 soft-caps attention and final logits; this model \
                     leaves one of them uncapped"
                        .into(),
                ));
            };
            w.set(&key("attn_logit_softcapping"), Value::F32(attn as f32));
            w.set(&key("final_logit_softcapping"), Value::F32(last as f32));
        }
        Generation::Gemma3 => {
            if let Some(cap) = config.final_softcap() {
                return Err(refuse(format!(
                    "llama.cpp's gemma3 applies no final soft-cap; this model caps at {cap}"
                )));
            }
        }
        Generation::Gemma1 => {}
    }
    // Rotary embeddings: the global layers' base and linear scaling, the sliding layers' base.
    // llama.cpp scales the sliding layers' positions as the global ones' in gemma2, not at all
    // in gemma3.
    let global = config.rope(LayerType::FullAttention)?;
    let local = config.rope(LayerType::SlidingAttention)?;
    let local_scale = match generation {
        Generation::Gemma3 => 1.0,
        _ => global.linear_factor,
    };
    if local.linear_factor != local_scale {
        return Err(refuse(format!(
            "llama.cpp's {} scales the sliding layers' rotary embedding by {local_scale}; this \
             model's by {}",
            arch_name(generation),
            local.linear_factor
        )));
    }
    w.set(&key("rope.freq_base_swa"), Value::F32(local.theta as f32));
    if global.linear_factor != 1.0 {
        w.set(&key("rope.scaling.type"), Value::Str("linear".into()));
        w.set(
            &key("rope.scaling.factor"),
            Value::F32(global.linear_factor as f32),
        );
    }
    Ok(())
}

#[derive(Clone, Copy)]
enum Stored {
    /// Gemma's RMSNorm weight, stored as `1 + w`, f32.
    Norm,
    /// A norm stored as `(1 + w) * f`.
    ScaledNorm(f64),
    /// A matrix, in the file's type.
    Matrix,
    /// A matrix stored as `w * f`.
    ScaledMatrix(f64),
}

/// Gemma's chat template as llama.cpp's chat tools render it (a LLaVA model's, whatever its Gemma): a message's content may also be a
/// list of parts (llama-cpp-python's multimodal handler hands images over as text parts holding
/// the media marker), joined by newlines, so an image then a question reads as LLaVA's
/// `<image>\n{question}` does.
pub const CHAT_TEMPLATE: &str = "{{ bos_token }}{% for message in messages %}\
{% if message['role'] == 'assistant' %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}\
{{ '<start_of_turn>' + role + '\\n' }}\
{% if message['content'] is string %}{{ message['content'] | trim }}\
{% else %}{% for part in message['content'] %}{% if not loop.first %}{{ '\\n' }}{% endif %}{{ part['text'] | trim }}{% endfor %}{% endif %}\
{{ '<end_of_turn>\\n' }}{% endfor %}\
{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}";

/// Gemma 3's: parts follow each other as its own template writes them, and an image (the media
/// marker, which llama.cpp's multimodal library replaces by `<start_of_image>`, the image and
/// `<end_of_image>`) gets the blank lines Gemma 3's processor puts around it.
pub const GEMMA3_CHAT_TEMPLATE: &str = "{{ bos_token }}{% for message in messages %}\
{% if message['role'] == 'assistant' %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}\
{{ '<start_of_turn>' + role + '\\n' }}\
{% if message['content'] is string %}{{ message['content'] | trim }}\
{% else %}{% for part in message['content'] %}{% if part['type'] == 'image' or part['text'] == '<__media__>' %}{{ '\\n\\n<__media__>\\n\\n' }}{% else %}{{ part['text'] | trim }}{% endif %}{% endfor %}{% endif %}\
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
    let template = match config.generation()? {
        Generation::Gemma3 => GEMMA3_CHAT_TEMPLATE,
        _ => CHAT_TEMPLATE,
    };
    w.set("tokenizer.chat_template", Value::Str(template.into()));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> (GemmaConfig, Checkpoint) {
        let dir = foundation::parity_fixtures().join(name).join("model");
        (
            GemmaConfig::from_file(dir.join("config.json")).unwrap(),
            Checkpoint::open(&dir).unwrap(),
        )
    }

    fn tokenizer() -> String {
        let path = foundation::parity_fixtures().join("gemma/model/tokenizer.json");
        std::fs::read_to_string(path).unwrap()
    }

    fn export(config: &GemmaConfig, checkpoint: &Checkpoint) -> Result<Vec<u8>> {
        let w = to_gguf(config, checkpoint, &tokenizer(), TensorType::F16, "m")?;
        Ok(w.to_bytes().unwrap())
    }

    fn refusal(config: &GemmaConfig, checkpoint: &Checkpoint) -> String {
        match export(config, checkpoint) {
            Ok(_) => panic!("exported"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn each_generation_writes_its_architecture_and_tensors() {
        for (name, arch, extra) in [
            ("gemma", "gemma", None),
            ("gemma2", "gemma2", Some("blk.3.post_ffw_norm.weight")),
            ("gemma3-text", "gemma3", Some("blk.3.attn_q_norm.weight")),
        ] {
            let (config, checkpoint) = fixture(name);
            let bytes = export(&config, &checkpoint).unwrap();
            let text = String::from_utf8_lossy(&bytes);
            assert!(text.contains(&format!("{arch}.block_count")), "{name}");
            if let Some(tensor) = extra {
                assert!(text.contains(tensor), "{name}: {tensor}");
                assert!(text.contains(&format!("{arch}.attention.sliding_window_pattern")));
            } else {
                assert!(!text.contains("sliding_window"), "{name}");
            }
        }
    }

    #[test]
    fn what_llama_cpp_cannot_compute_is_refused_with_the_reason() {
        let (mut gemma2, checkpoint) = fixture("gemma2");
        gemma2.tie_word_embeddings = false;
        assert!(refusal(&gemma2, &checkpoint).contains("untied"));
        gemma2.tie_word_embeddings = true;
        gemma2.attn_logit_softcapping = Some(None);
        assert!(refusal(&gemma2, &checkpoint).contains("uncapped"));
        let (mut gemma3, checkpoint) = fixture("gemma3-text");
        gemma3.final_logit_softcapping = Some(Some(30.0));
        assert!(refusal(&gemma3, &checkpoint).contains("no final soft-cap"));
        gemma3.final_logit_softcapping = None;
        let Some(crate::config::RopeSpec::ByLayerType(ropes)) = &mut gemma3.rope_parameters else {
            panic!("the Gemma 3 fixture has a rotary embedding per layer type");
        };
        let sliding = ropes.get_mut("sliding_attention").unwrap();
        sliding.rope_type = "linear".into();
        sliding.factor = Some(2.0);
        assert!(refusal(&gemma3, &checkpoint).contains("sliding layers' rotary embedding by 1"));
    }

    #[test]
    fn a_query_scale_llama_cpp_does_not_compute_is_folded_into_the_queries() {
        // The fixtures scale by 24^-0.5 where llama.cpp takes head_dim 32: the ratio goes in.
        let (gemma2, _) = fixture("gemma2");
        let ratio =
            gemma2.attention_scale() / llama_cpp_attention_scale(&gemma2, Generation::Gemma2);
        assert!((ratio - (32.0f64 / 24.0).sqrt()).abs() < 1e-9);
        // Released models need nothing folded: Gemma 2 27B's 144 = 4608 / 32 heads.
        let mut big = GemmaConfig::gemma2_9b();
        big.num_hidden_layers = 46;
        big.hidden_size = 4608;
        big.num_attention_heads = 32;
        big.head_dim = 128;
        big.query_pre_attn_scalar = Some(144);
        let ratio = big.attention_scale() / llama_cpp_attention_scale(&big, Generation::Gemma2);
        assert!((ratio - 1.0).abs() < 1e-9);
    }
}
