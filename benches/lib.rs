//! Shapes shared by the benchmarks, so that every figure names the model it was measured on.

use gemma_lm::GemmaConfig;
use llava_model::LlavaConfig;
use vision_encoders::{ClipVisionConfig, VisionConfig};

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

/// A deterministic 640 x 480 photo-like JPEG (smooth gradients and edges, quality 90), the size of a
/// typical CC3M or COCO image.
pub fn sample_jpeg() -> Vec<u8> {
    let image = image::RgbImage::from_fn(640, 480, |x, y| {
        let ring = (((x as i32 - 320).pow(2) + (y as i32 - 240).pow(2)) as f32).sqrt() as u32;
        image::Rgb([(x / 3) as u8, (y / 2) as u8, ((ring * 3) % 256) as u8])
    });
    let mut bytes = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, 90)
        .encode_image(&image)
        .expect("encoding to memory");
    bytes
}

/// The id `<image>` has in the `bench-small` model (the last of its vocabulary).
pub const BENCH_SMALL_IMAGE_TOKEN: i64 = 31999;

/// The `bench-small` LLaVA: [`bench_small_clip`] + `mlp2x_gelu` + [`bench_small_lm`], 64 tokens per
/// image (layer -2, CLS dropped).
pub fn bench_small_llava() -> LlavaConfig {
    LlavaConfig::new(
        &VisionConfig::Clip(bench_small_clip()),
        bench_small_lm(),
        BENCH_SMALL_IMAGE_TOKEN,
        64,
    )
}
