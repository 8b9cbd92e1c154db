//! Shapes and inputs shared by the benchmarks, so that every figure names what it was measured on.
//! The model shapes are `llava_model::presets`.

pub use llava_model::presets::{
    BENCH_SMALL_IMAGE_TOKEN, bench_small as bench_small_llava, bench_small_clip, bench_small_lm,
};

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
