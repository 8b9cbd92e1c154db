//! Times decoding and preprocessing a synthetic image of any shape, to see what an extreme aspect
//! ratio costs: `cargo run --release -p image-processing --example extreme -- 30000 2 pad`
//! (`pad` for CLIP-336 with `expand2square`, `plain` for CLIP-336 alone). Run under
//! `/usr/bin/time -v` for the peak memory.
use std::time::Instant;

use image_processing::{ImageProcessor, ProcessorConfig};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let parsed = match args.as_slice() {
        [_, w, h, mode] => w
            .parse::<u32>()
            .ok()
            .zip(h.parse::<u32>().ok())
            .map(|s| (s, mode)),
        _ => None,
    };
    let Some(((w, h), mode)) = parsed else {
        eprintln!("usage: extreme WIDTH HEIGHT pad|plain");
        std::process::exit(2);
    };
    let config = match mode.as_str() {
        "pad" => ProcessorConfig::clip_336().with_pad_to_square(),
        _ => ProcessorConfig::clip_336(),
    };
    let mut png = Vec::new();
    image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([(x % 251) as u8, (y % 13) as u8, 7])
    })
    .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
    .expect("encoding a PNG in memory");
    let start = Instant::now();
    let image = match image_processing::decode(&png, "synthetic.png") {
        Ok(image) => image,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    };
    let decoded = start.elapsed();
    let (pixels, oh, ow) = ImageProcessor::new(config).preprocess(&image);
    println!(
        "{w}x{h} {mode}: decoded in {decoded:?}, preprocessed to 3x{oh}x{ow} ({} values) in {:?}",
        pixels.len(),
        start.elapsed() - decoded
    );
}
