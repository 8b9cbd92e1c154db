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

use serde_json::{Value, json};
use vision_encoders::VisionConfig;
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

/// `preprocessor_config.json` for `processor` in front of `vision`.
pub fn preprocessor_config(processor: &ProcessorConfig, vision: &VisionConfig) -> Value {
    let class = match vision {
        VisionConfig::Clip(_) => "CLIPImageProcessor",
        VisionConfig::Dinov2(_) => "BitImageProcessor",
        VisionConfig::Siglip(_) => "SiglipImageProcessor",
    };
    let (mean, std) = processor.normalize.unwrap_or(([0.0; 3], [1.0; 3]));
    // Each f32 as its shortest decimal (0.48145467, not 0.48145467042922974).
    let decimal = |v: [f32; 3]| v.map(|x| x.to_string().parse::<f64>().expect("a number"));
    let (mean, std) = (decimal(mean), decimal(std));
    let mut config = json!({
        "image_processor_type": class,
        "processor_class": "LlavaProcessor",
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

/// `tokenizer_config.json`: Gemma's tokenizer class and special tokens, `<image>` among the added
/// special tokens, and the chat template.
pub fn tokenizer_config(image_token: &str, image_token_id: i64) -> Value {
    let special = |content: &str| {
        json!({
            "content": content, "lstrip": false, "normalized": false, "rstrip": false,
            "single_word": false, "special": true
        })
    };
    json!({
        "add_bos_token": true,
        "add_eos_token": false,
        "added_tokens_decoder": { image_token_id.to_string(): special(image_token) },
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
        let config = preprocessor_config(&ProcessorConfig::clip_336(), &vision);
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
        let config = tokenizer_config("<image>", 639);
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
