//! The processors of the `image-processing` parity fixture (`fixtures/hf-parity/image-processing`),
//! named by its outputs. The fixture's check itself, which compares tensors on libtorch, is
//! `vision_encoders::parity::image_processing`; this crate stays free of libtorch.

use crate::{ProcessorConfig, Resize};

/// The processor an image-processing output is named after: `clip_<N>` (shortest edge N, crop N,
/// CLIP statistics), `dinov2_<N>` (shortest edge N * 256 / 224, crop N, ImageNet statistics, as
/// `facebook/dinov2-*` ships), `siglip_<N>` and `gemma3_<N>` (a direct N x N resize, bicubic or
/// bilinear, mean = std = 0.5), with `_pad` for LLaVA's `expand2square` first.
pub fn processor_for_output(name: &str) -> Option<ProcessorConfig> {
    let (base, pad) = match name.strip_suffix("_pad") {
        Some(base) => (base, true),
        None => (name, false),
    };
    let (family, size) = base.rsplit_once('_')?;
    let size: u32 = size.parse().ok()?;
    let config = match family {
        "clip" => ProcessorConfig {
            resize: Some(Resize::ShortestEdge(size)),
            crop: Some((size, size)),
            ..ProcessorConfig::clip_336()
        },
        "dinov2" => ProcessorConfig {
            resize: Some(Resize::ShortestEdge(size * 256 / 224)),
            crop: Some((size, size)),
            ..ProcessorConfig::dinov2_224()
        },
        "siglip" => ProcessorConfig::siglip(size),
        "gemma3" => ProcessorConfig::gemma3(size),
        _ => return None,
    };
    Some(if pad {
        config.with_pad_to_square()
    } else {
        config
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_names_map_to_processors() {
        let clip = processor_for_output("clip_336_pad").unwrap();
        assert_eq!(clip, ProcessorConfig::clip_336().with_pad_to_square());
        let dino = processor_for_output("dinov2_224").unwrap();
        assert_eq!(dino, ProcessorConfig::dinov2_224());
        assert_eq!(
            processor_for_output("siglip_384").unwrap(),
            ProcessorConfig::siglip(384)
        );
        assert_eq!(
            processor_for_output("gemma3_896").unwrap().filter,
            crate::Filter::Bilinear
        );
        for unknown in ["paligemma_224", "clip", "clip_x", "dinov2_224_crop"] {
            assert!(processor_for_output(unknown).is_none(), "{unknown}");
        }
    }
}
