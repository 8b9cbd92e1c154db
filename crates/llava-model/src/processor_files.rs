//! The processor files of a saved model: what `LlavaProcessor.save_pretrained` writes, so that
//! transformers' `AutoProcessor` (and so vLLM) opens our models as it opens `Intel/llava-gemma-2b`.
//!
//! * `preprocessor_config.json`: the image processor (`CLIPImageProcessor` for CLIP towers,
//!   `BitImageProcessor` for DINOv2), with the sizes, filter and statistics we preprocess with;
//! * `processor_config.json`: `LlavaProcessor`'s own settings (the `<image>` token, the patch size,
//!   the feature-selection strategy and the one class token the tower adds), from which it expands
//!   each `<image>` into the image's tokens;
//! * `tokenizer_config.json` and `special_tokens_map.json`: Gemma's special tokens, the `<image>`
//!   token and the chat template;
//! * `chat_template.jinja`: the same template for the processor (what transformers 5 writes).
//!
//! This is the layout transformers 4 writes and transformers 5 reads; the chat template renders
//! exactly the prompt that our template (`data::template`, `llava generate`) builds:
//! `<bos><start_of_turn>user\n<image>\n{question}<end_of_turn>\n<start_of_turn>model\n`.
//!
//! Gemma 3 and PaliGemma get their own processors' files: `Gemma3Processor` (its image processor,
//! `image_seq_length`, the tokenizer's `boi_token`, `eoi_token` and `image_token`, Gemma 3's chat
//! template) and `PaliGemmaProcessor` (SigLIP's image processor with `image_seq_length`, the
//! `<image>` token, no chat template).

use serde_json::{Value, json};
use vision_encoders::VisionConfig;

use gemma_lm::tokenizer::AddedToken;

use crate::config::Family;
use vision_encoders::processing::{Filter, ProcessorConfig, Resize};

/// Gemma's chat template, extended to messages whose content is a list of `{"type": "image"}` and
/// `{"type": "text", "text": …}` parts (an image part renders as `<image>` and a newline).
pub const CHAT_TEMPLATE: &str = "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if message['role'] == 'assistant' %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}{{ '<start_of_turn>' + role + '\\n' }}{% if message['content'] is string %}{{ message['content'] | trim }}{% else %}{% for part in message['content'] %}{% if part['type'] == 'image' %}{{ '<image>\\n' }}{% elif part['type'] == 'text' %}{{ part['text'] | trim }}{% endif %}{% endfor %}{% endif %}{{ '<end_of_turn>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}";

/// Pillow's resample number of a filter.
fn pil_resample(filter: Filter) -> u32 {
    match filter {
        Filter::Lanczos => 1,
        Filter::Bilinear => 2,
        Filter::Bicubic => 3,
        Filter::Box => 4,
        Filter::Hamming => 5,
    }
}

/// The processor class of `family`.
pub fn processor_class(family: Family) -> &'static str {
    match family {
        Family::Llava => "LlavaProcessor",
        Family::Gemma3 => "Gemma3Processor",
        Family::PaliGemma => "PaliGemmaProcessor",
    }
}

/// `preprocessor_config.json` for `processor` in front of `vision` in a `family` model whose
/// images are `image_seq_length` tokens.
pub fn preprocessor_config(
    processor: &ProcessorConfig,
    vision: &VisionConfig,
    family: Family,
    image_seq_length: i64,
) -> Value {
    let class = match (family, vision) {
        (Family::Gemma3, _) => "Gemma3ImageProcessor",
        (_, VisionConfig::Clip(_)) => "CLIPImageProcessor",
        (_, VisionConfig::Dinov2(_)) => "BitImageProcessor",
        (_, VisionConfig::Siglip(_)) => "SiglipImageProcessor",
    };
    let (mean, std) = processor.normalize.unwrap_or(([0.0; 3], [1.0; 3]));
    // Each f32 as its shortest decimal (0.48145467, not 0.48145467042922974).
    let decimal = |v: [f32; 3]| v.map(|x| x.to_string().parse::<f64>().expect("a number"));
    let (mean, std) = (decimal(mean), decimal(std));
    let mut config = json!({
        "image_processor_type": class,
        "processor_class": processor_class(family),
        "do_convert_rgb": true,
        "do_resize": processor.resize.is_some(),
        "resample": pil_resample(processor.filter),
        "do_center_crop": processor.crop.is_some(),
        "do_rescale": processor.rescale.is_some(),
        "rescale_factor": processor.rescale.unwrap_or(1.0 / 255.0),
        "do_normalize": processor.normalize.is_some(),
        "image_mean": mean,
        "image_std": std,
    });
    match processor.resize {
        Some(Resize::ShortestEdge(side)) => config["size"] = json!({"shortest_edge": side}),
        Some(Resize::Exact { height, width }) => {
            config["size"] = json!({"height": height, "width": width})
        }
        None => {}
    }
    if let Some((height, width)) = processor.crop {
        config["crop_size"] = json!({"height": height, "width": width});
    }
    match family {
        Family::Gemma3 => {
            config["do_pan_and_scan"] = json!(processor.pan_and_scan.is_some());
            if let Some(p) = processor.pan_and_scan {
                config["pan_and_scan_min_crop_size"] = json!(p.min_crop_size);
                config["pan_and_scan_max_num_crops"] = json!(p.max_num_crops);
                config["pan_and_scan_min_ratio_to_activate"] = json!(p.min_ratio_to_activate);
            }
        }
        Family::PaliGemma => config["image_seq_length"] = json!(image_seq_length),
        Family::Llava => {}
    }
    config
}

/// `processor_config.json` of Gemma 3 (`image_seq_length`) and PaliGemma (the class alone).
pub fn family_processor_config(family: Family, image_seq_length: i64) -> Value {
    match family {
        Family::Gemma3 => json!({
            "image_seq_length": image_seq_length,
            "processor_class": processor_class(family),
        }),
        _ => json!({ "processor_class": processor_class(family) }),
    }
}

/// `tokenizer_config.json` of a Gemma 3 or PaliGemma model: [`tokenizer_config`] with the
/// family's processor class, and for Gemma 3 the image delimiters (the texts of
/// `<start_of_image>` and `<end_of_image>`) and its chat template.
pub fn family_tokenizer_config(
    family: Family,
    image_token: &str,
    added: &[AddedToken],
    delimiters: Option<(&str, &str)>,
) -> Value {
    let mut config = tokenizer_config(image_token, added);
    config["processor_class"] = json!(processor_class(family));
    match (family, delimiters) {
        (Family::Gemma3, Some((boi, eoi))) => {
            config["chat_template"] = json!(gemma_lm::tokenizer::GEMMA3_JINJA);
            let extra = json!({"boi_token": boi, "eoi_token": eoi, "image_token": image_token});
            for (key, value) in extra.as_object().expect("an object") {
                config[key] = value.clone();
            }
            config["extra_special_tokens"] = extra;
            config["additional_special_tokens"] = json!([boi, eoi, image_token]);
        }
        (Family::PaliGemma, _) => {
            config
                .as_object_mut()
                .expect("an object")
                .remove("chat_template");
            config["add_bos_token"] = json!(false);
        }
        _ => {}
    }
    config
}

/// `processor_config.json`: what `LlavaProcessor` needs to expand `<image>`.
pub fn processor_config(vision: &VisionConfig, select_strategy: &str, image_token: &str) -> Value {
    json!({
        "image_token": image_token,
        // The class token CLIP and DINOv2 put before the patches (SigLIP has none).
        "num_additional_image_tokens": i64::from(vision.has_class_token()),
        "patch_size": vision.patch_size(),
        "processor_class": "LlavaProcessor",
        "vision_feature_select_strategy": select_strategy,
    })
}

/// `tokenizer_config.json`: Gemma's tokenizer class and special tokens, every added token of the
/// tokenizer (`added`: transformers' `GemmaTokenizer` reads the ones not listed as plain text),
/// `<image>` among the additional special tokens, and the chat template.
pub fn tokenizer_config(image_token: &str, added: &[AddedToken]) -> Value {
    let decoder: serde_json::Map<String, Value> = added
        .iter()
        .map(|t| {
            let special = t.special || t.content == image_token;
            (
                t.id.to_string(),
                json!({
                    "content": t.content, "lstrip": t.lstrip, "normalized": t.normalized,
                    "rstrip": t.rstrip, "single_word": t.single_word, "special": special
                }),
            )
        })
        .collect();
    json!({
        "add_bos_token": true,
        "add_eos_token": false,
        "added_tokens_decoder": decoder,
        "additional_special_tokens": [image_token],
        "bos_token": "<bos>",
        "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": false,
        "eos_token": "<eos>",
        // transformers' VERY_LARGE_INTEGER, int(1e30): no limit of the tokenizer's own.
        "model_max_length": 1e30,
        "pad_token": "<pad>",
        "padding_side": "left",
        "processor_class": "LlavaProcessor",
        "tokenizer_class": "GemmaTokenizer",
        "unk_token": "<unk>",
    })
}

/// `special_tokens_map.json`.
pub fn special_tokens_map(image_token: &str) -> Value {
    json!({
        "additional_special_tokens": [image_token],
        "bos_token": "<bos>",
        "eos_token": "<eos>",
        "pad_token": "<pad>",
        "unk_token": "<unk>",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_336_preprocessor_matches_what_transformers_writes() {
        let vision =
            VisionConfig::Clip(vision_encoders::ClipVisionConfig::clip_vit_large_patch14_336());
        let config = preprocessor_config(&ProcessorConfig::clip_336(), &vision, Family::Llava, 576);
        // The values of openai/clip-vit-large-patch14-336's preprocessor_config.json.
        assert_eq!(config["image_processor_type"], "CLIPImageProcessor");
        assert_eq!(config["size"], json!({"shortest_edge": 336}));
        assert_eq!(config["crop_size"], json!({"height": 336, "width": 336}));
        assert_eq!(config["resample"], 3);
        assert!((config["image_mean"][0].as_f64().unwrap() - 0.481_454_66).abs() < 1e-7);
        assert!((config["rescale_factor"].as_f64().unwrap() - 1.0 / 255.0).abs() < 1e-12);
        // And it reads back as the processor it came from.
        let back = ProcessorConfig::from_json(&config.to_string()).unwrap();
        assert_eq!(back, ProcessorConfig::clip_336());
    }

    #[test]
    fn tokenizer_files_carry_the_keys_transformers_writes() {
        let added =
            [("<pad>", 0), ("<start_of_turn>", 4), ("<image>", 639)].map(|(content, id)| {
                AddedToken {
                    id,
                    content: content.into(),
                    special: content != "<image>",
                    lstrip: false,
                    rstrip: false,
                    normalized: false,
                    single_word: false,
                }
            });
        let config = tokenizer_config("<image>", &added);
        for key in [
            "bos_token",
            "eos_token",
            "pad_token",
            "unk_token",
            "chat_template",
            "tokenizer_class",
            "added_tokens_decoder",
            "model_max_length",
            "processor_class",
        ] {
            assert!(
                config.get(key).is_some(),
                "tokenizer_config.json lacks {key}"
            );
        }
        assert_eq!(config["added_tokens_decoder"]["639"]["content"], "<image>");
        assert_eq!(config["added_tokens_decoder"]["639"]["special"], true);
        assert_eq!(
            config["added_tokens_decoder"]["4"]["content"],
            "<start_of_turn>"
        );
        assert!(serde_json::to_string(&config).is_ok());
        let map = special_tokens_map("<image>");
        assert_eq!(map["additional_special_tokens"], json!(["<image>"]));
        let vision =
            VisionConfig::Clip(vision_encoders::ClipVisionConfig::clip_vit_large_patch14_336());
        let processor = processor_config(&vision, "default", "<image>");
        for key in [
            "image_token",
            "num_additional_image_tokens",
            "patch_size",
            "processor_class",
            "vision_feature_select_strategy",
        ] {
            assert!(
                processor.get(key).is_some(),
                "processor_config.json lacks {key}"
            );
        }
        assert_eq!(processor["patch_size"], 14);
    }
}
