//! Named model shapes: the paper's, and small ones for benchmarks and CPU runs.

use gemma_lm::GemmaConfig;
use vision_encoders::{ClipVisionConfig, Dinov2Config, SiglipVisionConfig, VisionConfig};

use crate::config::LlavaConfig;

/// The `bench-small` language model: Gemma-shaped, hidden 512, 4 layers, 8 query heads and 1 KV
/// head of width 64, MLP 2048, a 32000-token vocabulary, tied embeddings.
pub fn bench_small_lm() -> GemmaConfig {
    GemmaConfig {
        vocab_size: 32000,
        hidden_size: 512,
        intermediate_size: 2048,
        num_hidden_layers: 4,
        num_attention_heads: 8,
        num_key_value_heads: 1,
        head_dim: 64,
        max_position_embeddings: 4096,
        hidden_activation: Some("gelu_pytorch_tanh".into()),
        rope_theta: Some(10000.0),
        ..GemmaConfig::default()
    }
}

/// The `bench-small` vision tower: CLIP-shaped, hidden 256, 4 layers, 4 heads, MLP 1024, 112 px
/// images in 14 px patches (64 patch tokens).
pub fn bench_small_clip() -> ClipVisionConfig {
    ClipVisionConfig {
        hidden_size: 256,
        intermediate_size: 1024,
        num_hidden_layers: 4,
        num_attention_heads: 4,
        image_size: 112,
        patch_size: 14,
        ..ClipVisionConfig::default()
    }
}

/// The id `<image>` has in the `bench-small` model (the last of its vocabulary).
pub const BENCH_SMALL_IMAGE_TOKEN: i64 = 31999;

/// The `bench-small` LLaVA: [`bench_small_clip`] + `mlp2x_gelu` + [`bench_small_lm`], 64 tokens per
/// image (layer -2, CLS dropped).
pub fn bench_small() -> LlavaConfig {
    LlavaConfig::new(
        &VisionConfig::Clip(bench_small_clip()),
        bench_small_lm(),
        BENCH_SMALL_IMAGE_TOKEN,
        64,
    )
}

/// LLaVA-Gemma-2B with CLIP ViT-L/14-336 as the paper (and the Python reference benchmark) builds
/// it: Gemma-2B with a 256128-token vocabulary, `<image>` = 256000, 576 tokens per image.
pub fn paper_2b_clip() -> LlavaConfig {
    let text = GemmaConfig {
        vocab_size: 256128,
        hidden_activation: Some("gelu_pytorch_tanh".into()),
        ..GemmaConfig::gemma_2b()
    };
    LlavaConfig::new(
        &VisionConfig::Clip(ClipVisionConfig::clip_vit_large_patch14_336()),
        text,
        256000,
        576,
    )
}

/// LLaVA-Gemma-2B with DINOv2 ViT-L/14 at 224 px (256 tokens per image).
pub fn paper_2b_dinov2() -> LlavaConfig {
    let mut config = paper_2b_clip();
    let vision = VisionConfig::Dinov2(Dinov2Config::dinov2_large());
    let dinov2 = LlavaConfig::new(&vision, config.text_config.clone(), 256000, 256);
    config.vision_config = dinov2.vision_config;
    config.image_seq_length = Some(256);
    config
}

/// The `tiny` model of the embedded default: a 2-layer Gemma (hidden 64, the built-in 640-token
/// tokenizer, `<image>` = 639) and a 2-layer CLIP-shaped tower on 48 px images in 16 px patches
/// (a 3 x 3 grid, 9 tokens per image, one per cell of the synthetic scenes, each large enough to
/// tell a circle from a square). Trains on a CPU in
/// minutes.
pub fn tiny() -> LlavaConfig {
    let vision = ClipVisionConfig {
        hidden_size: 64,
        intermediate_size: 128,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        image_size: 48,
        patch_size: 16,
        ..ClipVisionConfig::default()
    };
    let text = GemmaConfig {
        initializer_range: 0.02,
        ..GemmaConfig::tiny(640)
    };
    LlavaConfig::new(&VisionConfig::Clip(vision), text, 639, 9)
}

/// The tiny presets' SigLIP tower: as [`tiny`]'s CLIP tower (2 layers of width 64, 48 px images
/// in 16 px patches), without a class token, so its 9 tokens are the 9 patches.
pub fn tiny_siglip() -> SiglipVisionConfig {
    SiglipVisionConfig {
        hidden_size: 64,
        intermediate_size: 128,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        image_size: 48,
        patch_size: 16,
        vision_use_head: Some(false),
        ..SiglipVisionConfig::default()
    }
}

/// `tiny-siglip-gemma3`: the modern parts at the tiny size: [`tiny_siglip`], `mlp2x_gelu` and a
/// Gemma 3 language model (window 16), LLaVA's two stages on the built-in data.
pub fn tiny_siglip_gemma3() -> LlavaConfig {
    let text = as_gemma3(tiny().text_config, 16);
    LlavaConfig::new(&VisionConfig::Siglip(tiny_siglip()), text, 639, 9)
}

/// `tiny-gemma3-vlm`: a whole `Gemma3ForConditionalGeneration` at the tiny size: [`tiny_siglip`],
/// Gemma 3's projector (a 3 x 3 grid pooled with a kernel of 1: 9 tokens), the tiny Gemma 3; each
/// image's tokens attend to each other both ways. `<image>` is 639 as in [`tiny`]; the built-in
/// tokenizer gains `<start_of_image>` (640) and `<end_of_image>` (641) for it.
pub fn tiny_gemma3_vlm() -> LlavaConfig {
    let text = GemmaConfig {
        vocab_size: 642,
        ..as_gemma3(tiny().text_config, 16)
    };
    LlavaConfig::gemma3(
        &VisionConfig::Siglip(tiny_siglip()),
        text,
        639,
        (640, 641),
        9,
    )
}

/// `tiny-paligemma`: a whole `PaliGemmaForConditionalGeneration` at the tiny size:
/// [`tiny_siglip`], PaliGemma's linear projector and [`tiny`]'s Gemma (`<image>` = 639); the image
/// and the question form one bidirectional prefix.
pub fn tiny_paligemma() -> LlavaConfig {
    LlavaConfig::paligemma(
        &VisionConfig::Siglip(tiny_siglip()),
        tiny().text_config,
        639,
    )
}

/// The LLaVA vocabulary of a Gemma whose `<image>` is appended at `image_token`: rounded up to a
/// multiple of 64, as LLaVA-Gemma's 256128 is.
fn llava_vocab(image_token: i64) -> i64 {
    (image_token + 64) / 64 * 64
}

/// LLaVA with SigLIP so400m-patch14-384 (729 tokens per image, every patch) and `text`, whose
/// vocabulary grows by `<image>`.
fn siglip_llava(text: GemmaConfig) -> LlavaConfig {
    let image_token = text.vocab_size;
    let text = GemmaConfig {
        vocab_size: llava_vocab(image_token),
        ..text
    };
    let vision = VisionConfig::Siglip(SiglipVisionConfig::so400m_patch14_384());
    LlavaConfig::new(&vision, text, image_token, 729)
}

/// `gemma3-4b`: `google/gemma-3-4b-it`'s shapes: SigLIP so400m at 896 px (4096 patches) pooled
/// to 256 tokens, Gemma 3 4B; `<image_soft_token>` = 262144 between 255999 and 256000.
pub fn gemma3_4b() -> LlavaConfig {
    let vision = SiglipVisionConfig {
        image_size: 896,
        vision_use_head: Some(false),
        ..SiglipVisionConfig::so400m_patch14_384()
    };
    LlavaConfig::gemma3(
        &VisionConfig::Siglip(vision),
        GemmaConfig::gemma3_4b(),
        262144,
        (255999, 256000),
        256,
    )
}

/// `paligemma-3b-224` (`text` Gemma 2B) and `paligemma2-3b-224` (Gemma 2 2B): SigLIP so400m at
/// 224 px (256 tokens), the 257216-token vocabulary with `<image>` = 257152.
fn paligemma_224(text: GemmaConfig) -> LlavaConfig {
    let vision = SiglipVisionConfig {
        image_size: 224,
        vision_use_head: Some(false),
        ..SiglipVisionConfig::so400m_patch14_384()
    };
    let text = GemmaConfig {
        vocab_size: 257216,
        ..text
    };
    LlavaConfig::paligemma(&VisionConfig::Siglip(vision), text, 257152)
}

/// `lm` as a Gemma 2: four norms per layer, attention scaled by `head_dim^-0.5` through
/// `query_pre_attn_scalar`, soft-caps 50 and 30 as the released models have them, layers
/// alternating sliding (`window`) and global, starting with a sliding one.
pub fn as_gemma2(lm: GemmaConfig, window: i64) -> GemmaConfig {
    GemmaConfig {
        query_pre_attn_scalar: Some(lm.head_dim),
        sliding_window: Some(Some(window)),
        attn_logit_softcapping: Some(Some(50.0)),
        final_logit_softcapping: Some(Some(30.0)),
        hidden_act: None,
        hidden_activation: Some("gelu_pytorch_tanh".into()),
        architectures: Some(vec!["Gemma2ForCausalLM".into()]),
        model_type: Some("gemma2".into()),
        ..lm
    }
}

/// `lm` as a Gemma 3: Gemma 2's layers with q/k norms and no soft-caps, one global layer after
/// every sliding one here (Gemma 3's own pattern is 5 to 1, which layers this few would not
/// show), rotary bases 10000 (sliding) and 1e6 with linear scaling by 8 (global).
pub fn as_gemma3(lm: GemmaConfig, window: i64) -> GemmaConfig {
    GemmaConfig {
        query_pre_attn_scalar: Some(lm.head_dim),
        sliding_window: Some(Some(window)),
        sliding_window_pattern: Some(2),
        rope_theta: Some(1e6),
        rope_local_base_freq: Some(1e4),
        rope_scaling: Some(gemma_lm::config::RopeParameters {
            rope_theta: None,
            rope_type: "linear".into(),
            factor: Some(8.0),
        }),
        attn_logit_softcapping: Some(None),
        final_logit_softcapping: Some(None),
        hidden_act: None,
        hidden_activation: Some("gelu_pytorch_tanh".into()),
        architectures: Some(vec!["Gemma3ForCausalLM".into()]),
        model_type: Some("gemma3_text".into()),
        ..lm
    }
}

/// The preset called `name` (see [`NAMES`]): `tiny`, `bench-small`, `paper-2b-clip` or
/// `paper-2b-dinov2`; `tiny` and `bench-small` with a Gemma 2 or Gemma 3 language model
/// (`tiny-gemma2`, `bench-small-gemma3`, …; windows of 16 and 128 tokens, shorter than their
/// sequences); the tiny modern parts (`tiny-siglip-gemma3`, `tiny-gemma3-vlm`, `tiny-paligemma`); LLaVA with SigLIP
/// so400m and a Gemma 2 2B, Gemma 3 1B or 4B (`siglip-gemma2-2b`, `siglip-gemma3-1b`,
/// `siglip-gemma3-4b`); and the whole Gemma VLMs (`gemma3-4b`, `paligemma-3b-224`,
/// `paligemma2-3b-224`).
pub fn by_name(name: &str) -> Option<LlavaConfig> {
    let with_lm = |mut config: LlavaConfig, lm: fn(GemmaConfig, i64) -> GemmaConfig, window| {
        config.text_config = lm(config.text_config, window);
        config
    };
    match name {
        "tiny" => Some(tiny()),
        "tiny-gemma2" => Some(with_lm(tiny(), as_gemma2, 16)),
        "tiny-gemma3" => Some(with_lm(tiny(), as_gemma3, 16)),
        "bench-small" => Some(bench_small()),
        "bench-small-gemma2" => Some(with_lm(bench_small(), as_gemma2, 128)),
        "bench-small-gemma3" => Some(with_lm(bench_small(), as_gemma3, 128)),
        "paper-2b-clip" => Some(paper_2b_clip()),
        "paper-2b-dinov2" => Some(paper_2b_dinov2()),
        "tiny-siglip-gemma3" => Some(tiny_siglip_gemma3()),
        "tiny-gemma3-vlm" => Some(tiny_gemma3_vlm()),
        "tiny-paligemma" => Some(tiny_paligemma()),
        "siglip-gemma2-2b" => Some(siglip_llava(GemmaConfig::gemma2_2b())),
        "siglip-gemma3-1b" => Some(siglip_llava(GemmaConfig::gemma3_1b())),
        "siglip-gemma3-4b" => {
            // Gemma 3 4B's vocabulary already holds `<image_soft_token>` (262144).
            let vision = VisionConfig::Siglip(SiglipVisionConfig::so400m_patch14_384());
            Some(LlavaConfig::new(
                &vision,
                GemmaConfig::gemma3_4b(),
                262144,
                729,
            ))
        }
        "gemma3-4b" => Some(gemma3_4b()),
        "paligemma-3b-224" => Some(paligemma_224(GemmaConfig {
            hidden_activation: Some("gelu_pytorch_tanh".into()),
            ..GemmaConfig::gemma_2b()
        })),
        "paligemma2-3b-224" => Some(paligemma_224(GemmaConfig::gemma2_2b())),
        _ => None,
    }
}

/// The names [`by_name`] knows.
pub const NAMES: [&str; 17] = [
    "tiny",
    "tiny-gemma2",
    "tiny-gemma3",
    "tiny-siglip-gemma3",
    "tiny-gemma3-vlm",
    "tiny-paligemma",
    "bench-small",
    "bench-small-gemma2",
    "bench-small-gemma3",
    "paper-2b-clip",
    "paper-2b-dinov2",
    "siglip-gemma2-2b",
    "siglip-gemma3-1b",
    "siglip-gemma3-4b",
    "gemma3-4b",
    "paligemma-3b-224",
    "paligemma2-3b-224",
];
