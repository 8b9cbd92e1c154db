//! Preprocesses one image and writes the CHW f32 pixels (little endian) to a file, to compare with
//! other implementations: `cargo run -p image-processing --example preprocess -- IMAGE OUT clip|clip_pad|dinov2`.
use image_processing::{ImageProcessor, ProcessorConfig};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, image, out, which] = args.as_slice() else {
        eprintln!("usage: preprocess IMAGE OUT clip|clip_pad|dinov2");
        std::process::exit(2);
    };
    let config = match which.as_str() {
        "clip" => ProcessorConfig::clip_336(),
        "clip_pad" => ProcessorConfig::clip_336().with_pad_to_square(),
        _ => ProcessorConfig::dinov2_224(),
    };
    let result =
        image_processing::open(image).map(|img| ImageProcessor::new(config).preprocess(&img));
    match result {
        Ok((pixels, h, w)) => {
            let bytes: Vec<u8> = pixels.iter().flat_map(|v| v.to_le_bytes()).collect();
            std::fs::write(out, bytes).expect("writable output");
            println!("{h}x{w}");
        }
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}
