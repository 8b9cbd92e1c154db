//! The repository's `image-processing` parity fixture (`fixtures/hf-parity/image-processing`:
//! Hugging Face's PIL-based processors applied to `model/image.png`), checked here without
//! libtorch: our CLIP-336, CLIP-336 with `expand2square`, and DINOv2-224 outputs against the
//! fixture's tensors.

use std::path::{Path, PathBuf};

use image_processing::{ImageProcessor, ProcessorConfig};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/hf-parity/image-processing")
}

#[test]
fn processors_match_the_hf_parity_fixture() {
    let dir = fixture();
    let bytes = std::fs::read(dir.join("expected.safetensors")).unwrap();
    let tensors = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let image = image_processing::open(dir.join("model/image.png")).unwrap();
    for (name, config) in [
        ("clip_336", ProcessorConfig::clip_336()),
        (
            "clip_336_pad",
            ProcessorConfig::clip_336().with_pad_to_square(),
        ),
        ("dinov2_224", ProcessorConfig::dinov2_224()),
    ] {
        let want = tensors.tensor(name).unwrap();
        let want: Vec<f32> = want
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let (got, h, w) = ImageProcessor::new(config).preprocess(&image);
        assert_eq!(
            tensors.tensor(name).unwrap().shape(),
            [1, 3, h, w],
            "{name}"
        );
        let worst = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        // Pillow's bytes exactly (a byte off would be a difference of 1 / 255 / std > 0.014), and
        // the same float arithmetic as transformers' rescale and normalise.
        assert_eq!(worst, 0.0, "{name}: max abs diff {worst}");
    }
}
