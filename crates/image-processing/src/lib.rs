//! LLaVA's image preprocessing in pure Rust, as Hugging Face's PIL-based `CLIPImageProcessor` and
//! `BitImageProcessor` (DINOv2) compute it, with no libtorch:
//!
//! decode → RGB as Pillow's `convert("RGB")` → optional `expand2square` with the mean colour
//! (LLaVA-1.5's `pad` aspect ratio) → shortest-edge resize with Pillow's bicubic → center crop →
//! `/255` → normalise → a CHW `f32` buffer.
//!
//! # Decoding as Pillow does
//!
//! LLaVA loads images with `Image.open(path).convert("RGB")`, and the models were trained on those
//! pixels. [`decode`] reads JPEG (CMYK and YCCK included), PNG, WebP, GIF (first frame), BMP and
//! TIFF at the file's own bit depth and converts to 8-bit RGB as Pillow converts the mode it
//! opens the file in (`PngImagePlugin`, `BmpImagePlugin`, `TiffImagePlugin`, `libImaging/Unpack.c`
//! and `Convert.c`):
//!
//! | file | Pillow's mode | to RGB |
//! | --- | --- | --- |
//! | 16-bit grey PNG (with or without `tRNS`), 16-bit grey TIFF | `I;16` | values clipped to 0..255, not scaled |
//! | 16-bit RGB, RGBA or grey+alpha PNG; 16-bit RGB(A) or CMYK TIFF | `RGB`, `RGBA`, `CMYK` | the high byte of each sample |
//! | grey+alpha, RGBA (any depth) | `LA`, `RGBA` | alpha dropped, no compositing |
//! | palette (with `tRNS`), GIF | `P` | the palette colour, transparency ignored |
//! | 1-, 2-, 4-bit grey | `1`, `L` | scaled to 0..255 (`x 255`, `x 85`, `x 17`) |
//! | 16-bit BMP (5-5-5, 5-6-5) | `RGB` | `v * 255 / max`, truncated |
//! | CMYK JPEG | `CMYK`, Adobe-inverted | `k - k * (255 - c) / 255`, rounded |
//! | CMYK TIFF | `CMYK` | `(255 - k) - (255 - k) * c / 255`, rounded |
//!
//! Every lossless format gives Pillow's bytes exactly (`tests/fixtures/pillow-modes` holds
//! Pillow's own output for each layout); JPEG differs from libjpeg-turbo's by the IDCT's rounding
//! (a level or so). As in Pillow, a JPEG cut short of its end marker is an error ("image file is
//! truncated"), and an image of more than [`MAX_IMAGE_PIXELS`] pixels (Pillow's
//! `DecompressionBombError` bound; settable with [`decode_with_limit`]) is refused from its header
//! ([`Error::TooLarge`]) before anything is allocated. Decoders allocate within the image's size
//! plus a budget set by the file's length. Differences left: a PNG missing only its `IEND` chunk,
//! which Pillow reads, is an error here; palette TIFFs, which Pillow reads, are not supported.
//!
//! # Bounded cost
//!
//! [`ImageProcessor::preprocess`] never materialises `expand2square`'s square and computes only the
//! pixels the crop keeps ([`resize::resize_canvas`]), with the same bytes as padding, resizing
//! and cropping in turn: a 30000 x 2 image costs milliseconds, not a 30000 x 30000 canvas.
//!
//! [`ImageProcessor::process_batch`] runs a batch on rayon's threads and writes one contiguous
//! `[batch, 3, H, W]` buffer, ready to become one tensor. A corrupt or truncated image is an error
//! naming its file, never a panic.

mod decode;
mod pan_and_scan;
pub mod parity;
pub mod resize;

use std::path::{Path, PathBuf};

pub use image::RgbImage;
use rayon::prelude::*;
use serde::Deserialize;

pub use decode::{MAX_IMAGE_PIXELS, decode, decode_with_limit, open, open_with_limit};
pub use pan_and_scan::PanAndScan;
pub use resize::{Canvas, Filter, Region};

/// Errors of image processing; each names the image or file at fault.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The image could not be read from disk.
    #[error("{path}: {source}")]
    Io {
        /// The image file.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// The bytes are not an image we can decode (corrupt, truncated, unknown format).
    #[error("{name}: cannot decode image: {message}")]
    Decode {
        /// The file name or another label for the bytes.
        name: String,
        /// What the decoder said.
        message: String,
    },
    /// The image has more pixels than the limit ([`MAX_IMAGE_PIXELS`] unless set otherwise), read
    /// from its header before anything is decoded, as Pillow's `DecompressionBombError`.
    #[error(
        "{name}: image of {width} x {height} pixels is larger than the limit of {limit} pixels"
    )]
    TooLarge {
        /// The file name or another label for the bytes.
        name: String,
        /// Width in the header.
        width: u32,
        /// Height in the header.
        height: u32,
        /// The pixel limit.
        limit: u64,
    },
    /// `preprocessor_config.json` is malformed or asks for something unsupported.
    #[error("{path}: {message}")]
    Config {
        /// The configuration file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The mean and standard deviation CLIP was trained with.
pub const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
/// See [`CLIP_MEAN`]. (The published digits, kept even where f32 cannot hold them all.)
#[allow(clippy::excessive_precision)]
pub const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_58, 0.275_777_11];
/// ImageNet's mean, used by DINOv2.
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet's standard deviation, used by DINOv2.
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// How to resize before cropping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resize {
    /// Scale so the shorter side has this length (the longer side truncated, as transformers does).
    ShortestEdge(u32),
    /// Scale to exactly `height` x `width`.
    Exact {
        /// Output height.
        height: u32,
        /// Output width.
        width: u32,
    },
}

/// An image processor's settings: the fields of `preprocessor_config.json` that matter, plus
/// LLaVA's `pad` aspect-ratio mode.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessorConfig {
    /// Resize, or leave the size as it is.
    pub resize: Option<Resize>,
    /// The resampling filter.
    pub filter: Filter,
    /// Center crop to `(height, width)`, or none.
    pub crop: Option<(u32, u32)>,
    /// Multiply pixel values by this (1/255), or leave them as 0..255.
    pub rescale: Option<f64>,
    /// Normalise with `(mean, std)`, or not.
    pub normalize: Option<([f32; 3], [f32; 3])>,
    /// Pad to a square with the mean colour before resizing (LLaVA-1.5 finetuning's `expand2square`).
    pub pad_to_square: bool,
    /// Gemma 3's pan-and-scan: long images are also shown as crops ([`ImageProcessor::views`]).
    pub pan_and_scan: Option<PanAndScan>,
}

impl ProcessorConfig {
    /// `openai/clip-vit-large-patch14-336`'s processor: shortest edge 336, bicubic, crop 336.
    pub fn clip_336() -> Self {
        ProcessorConfig {
            resize: Some(Resize::ShortestEdge(336)),
            filter: Filter::Bicubic,
            crop: Some((336, 336)),
            rescale: Some(1.0 / 255.0),
            normalize: Some((CLIP_MEAN, CLIP_STD)),
            pad_to_square: false,
            pan_and_scan: None,
        }
    }

    /// `facebook/dinov2-*`'s processor: shortest edge 256, bicubic, crop 224, ImageNet statistics.
    pub fn dinov2_224() -> Self {
        ProcessorConfig {
            resize: Some(Resize::ShortestEdge(256)),
            crop: Some((224, 224)),
            normalize: Some((IMAGENET_MEAN, IMAGENET_STD)),
            ..Self::clip_336()
        }
    }

    /// SigLIP's processor (`SiglipImageProcessor`): a direct bicubic resize to `side` x `side`
    /// (no aspect kept, no crop), mean = std = 0.5.
    pub fn siglip(side: u32) -> Self {
        ProcessorConfig {
            resize: Some(Resize::Exact {
                height: side,
                width: side,
            }),
            filter: Filter::Bicubic,
            crop: None,
            rescale: Some(1.0 / 255.0),
            normalize: Some(([0.5; 3], [0.5; 3])),
            pad_to_square: false,
            pan_and_scan: None,
        }
    }

    /// Gemma 3's processor (`Gemma3ImageProcessor`, without pan-and-scan): a direct bilinear
    /// resize to `side` x `side` (896 for the released models), mean = std = 0.5.
    pub fn gemma3(side: u32) -> Self {
        ProcessorConfig {
            filter: Filter::Bilinear,
            ..Self::siglip(side)
        }
    }

    /// The same processor, padding images to squares first (LLaVA-1.5's stage 2).
    pub fn with_pad_to_square(self) -> Self {
        ProcessorConfig {
            pad_to_square: true,
            ..self
        }
    }

    /// Reads `preprocessor_config.json` (or a model directory holding one).
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let mut path = path.as_ref().to_path_buf();
        if path.is_dir() {
            path = path.join("preprocessor_config.json");
        }
        let text = std::fs::read_to_string(&path).map_err(|source| Error::Io {
            path: path.clone(),
            source,
        })?;
        Self::from_json(&text).map_err(|message| Error::Config { path, message })
    }

    /// Parses the text of a `preprocessor_config.json`. A key the file leaves out (or sets to
    /// `null`) takes its class's default, as transformers' processor classes set them: SigLIP's
    /// and Gemma 3's resize to a square without cropping, with mean = std = 0.5, bicubic and
    /// bilinear respectively; CLIP's and the others' crop, bicubic, with CLIP's statistics.
    pub fn from_json(text: &str) -> Result<Self, String> {
        let raw: RawConfig = serde_json::from_str(text).map_err(|e| e.to_string())?;
        let class = raw.image_processor_type.as_deref().unwrap_or_default();
        let square = class.starts_with("Siglip") || class.starts_with("Gemma3");
        let gemma3 = class.starts_with("Gemma3");
        let resize = if raw.do_resize.unwrap_or(true) {
            Some(match raw.size {
                Some(SizeSpec::Int(n)) => Resize::ShortestEdge(n),
                Some(SizeSpec::Map {
                    shortest_edge: Some(n),
                    ..
                }) => Resize::ShortestEdge(n),
                Some(SizeSpec::Map {
                    height: Some(h),
                    width: Some(w),
                    ..
                }) => Resize::Exact {
                    height: h,
                    width: w,
                },
                Some(SizeSpec::Map { .. }) => {
                    return Err("`size` needs `shortest_edge` or `height` and `width`".into());
                }
                None => Resize::ShortestEdge(224),
            })
        } else {
            None
        };
        let resample = raw.resample.unwrap_or(if gemma3 { 2 } else { 3 });
        let filter = Filter::from_pil(resample)
            .ok_or_else(|| format!("resample {resample} is not supported (1-5: lanczos, bilinear, bicubic, box, hamming)"))?;
        let crop = if raw.do_center_crop.unwrap_or(!square) {
            Some(match raw.crop_size {
                Some(SizeSpec::Int(n)) => (n, n),
                Some(SizeSpec::Map {
                    height: Some(h),
                    width: Some(w),
                    ..
                }) => (h, w),
                Some(SizeSpec::Map { .. }) => {
                    return Err("`crop_size` needs `height` and `width`".into());
                }
                None => (224, 224),
            })
        } else {
            None
        };
        let rescale = raw
            .do_rescale
            .unwrap_or(true)
            .then(|| raw.rescale_factor.unwrap_or(1.0 / 255.0));
        let normalize = if raw.do_normalize.unwrap_or(true) {
            let triple =
                |v: Option<Vec<f32>>, default: [f32; 3], name: &str| -> Result<[f32; 3], String> {
                    match v {
                        None => Ok(default),
                        Some(v) => <[f32; 3]>::try_from(v.as_slice())
                            .map_err(|_| format!("`{name}` needs 3 values")),
                    }
                };
            let (mean, std) = if square {
                ([0.5; 3], [0.5; 3])
            } else {
                (CLIP_MEAN, CLIP_STD)
            };
            Some((
                triple(raw.image_mean, mean, "image_mean")?,
                triple(raw.image_std, std, "image_std")?,
            ))
        } else {
            None
        };
        Ok(ProcessorConfig {
            resize,
            filter,
            crop,
            rescale,
            normalize,
            pad_to_square: raw.image_aspect_ratio.as_deref() == Some("pad"),
            pan_and_scan: raw.do_pan_and_scan.unwrap_or(false).then(|| {
                let default = PanAndScan::default();
                PanAndScan {
                    min_crop_size: raw
                        .pan_and_scan_min_crop_size
                        .unwrap_or(default.min_crop_size),
                    max_num_crops: raw
                        .pan_and_scan_max_num_crops
                        .unwrap_or(default.max_num_crops),
                    min_ratio_to_activate: raw
                        .pan_and_scan_min_ratio_to_activate
                        .unwrap_or(default.min_ratio_to_activate),
                }
            }),
        })
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum SizeSpec {
    Int(u32),
    Map {
        shortest_edge: Option<u32>,
        height: Option<u32>,
        width: Option<u32>,
    },
}

#[derive(Deserialize)]
struct RawConfig {
    image_processor_type: Option<String>,
    do_resize: Option<bool>,
    size: Option<SizeSpec>,
    resample: Option<u32>,
    do_center_crop: Option<bool>,
    crop_size: Option<SizeSpec>,
    do_rescale: Option<bool>,
    rescale_factor: Option<f64>,
    do_normalize: Option<bool>,
    image_mean: Option<Vec<f32>>,
    image_std: Option<Vec<f32>>,
    image_aspect_ratio: Option<String>,
    do_pan_and_scan: Option<bool>,
    pan_and_scan_min_crop_size: Option<u32>,
    pan_and_scan_max_num_crops: Option<u32>,
    pan_and_scan_min_ratio_to_activate: Option<f64>,
}

/// LLaVA's `expand2square`: pads the shorter side on both ends (the extra pixel after) with
/// `background`, centring the image. [`ImageProcessor::preprocess`] gives the same result without
/// building the square; this is the materialised form.
pub fn expand_to_square(image: &RgbImage, background: [u8; 3]) -> RgbImage {
    let (w, h) = image.dimensions();
    if w == h {
        return image.clone();
    }
    let side = w.max(h);
    let mut out = RgbImage::from_pixel(side, side, image::Rgb(background));
    let (x0, y0) = if w > h {
        (0, (w - h) / 2)
    } else {
        ((h - w) / 2, 0)
    };
    image::imageops::replace(&mut out, image, x0 as i64, y0 as i64);
    out
}

/// Turns images into normalised CHW `f32` pixels.
#[derive(Debug, Clone)]
pub struct ImageProcessor {
    config: ProcessorConfig,
}

impl ImageProcessor {
    /// A processor with `config`.
    pub fn new(config: ProcessorConfig) -> Self {
        ImageProcessor { config }
    }

    /// The settings.
    pub fn config(&self) -> &ProcessorConfig {
        &self.config
    }

    /// `(height, width)` of the output when it does not depend on the input (a crop or an exact
    /// resize is configured).
    pub fn output_size(&self) -> Option<(u32, u32)> {
        match (self.config.crop, self.config.resize) {
            (Some(crop), _) => Some(crop),
            (None, Some(Resize::Exact { height, width })) => Some((height, width)),
            _ => None,
        }
    }

    /// The padding colour of `expand2square`: the mean as bytes, `int(m * 255)` as LLaVA computes it.
    pub fn background(&self) -> [u8; 3] {
        let mean = self.config.normalize.map_or([0.0; 3], |(m, _)| m);
        mean.map(|m| (m as f64 * 255.0) as u8)
    }

    /// Preprocesses one RGB image; returns `(pixels, height, width)` with pixels in CHW order.
    ///
    /// `expand2square` is not materialised: the resize reads the square as the image on a
    /// background canvas ([`Canvas`]) and computes only the pixels the crop keeps, giving the same
    /// bytes as padding, resizing and cropping in turn at a cost set by the image and the output.
    /// (With no crop configured, the output is the whole resized image, however large.)
    pub fn preprocess(&self, image: &RgbImage) -> (Vec<f32>, usize, usize) {
        let (iw, ih) = (image.width() as usize, image.height() as usize);
        // The canvas: the padded square, or the image itself.
        let (side, offset) = if self.config.pad_to_square && iw != ih {
            let side = iw.max(ih);
            (side, ((side - iw) / 2, (side - ih) / 2))
        } else {
            (0, (0, 0))
        };
        let (w, h) = if side > 0 { (side, side) } else { (iw, ih) };
        let canvas = Canvas {
            pixels: image.as_raw(),
            image_size: (iw, ih),
            size: (w, h),
            offset,
            background: self.background(),
        };
        let (rh, rw) = match self.config.resize {
            None => (h, w),
            Some(Resize::Exact { height, width }) => (height as usize, width as usize),
            Some(Resize::ShortestEdge(short)) => {
                let short = short as usize;
                if w <= h {
                    (
                        ((short as u64 * h as u64) / w.max(1) as u64) as usize,
                        short,
                    )
                } else {
                    (
                        short,
                        ((short as u64 * w as u64) / h.max(1) as u64) as usize,
                    )
                }
            }
        };
        let (region, pad, (oh, ow)) = crop_region((rw, rh), self.config.crop);
        let rgb = resize::resize_canvas(&canvas, (rw, rh), region, self.config.filter);
        let mut out = vec![0f32; 3 * oh * ow];
        let (scale, norm) = (self.config.rescale, self.config.normalize);
        for c in 0..3 {
            let plane = &mut out[c * oh * ow..][..oh * ow];
            // Pixels outside the image (a crop larger than the image) are zero before rescaling.
            let value = |byte: u8| {
                let mut v = match scale {
                    Some(s) => (byte as f64 * s) as f32,
                    None => byte as f32,
                };
                if let Some((mean, std)) = norm {
                    v = (v - mean[c]) / std[c];
                }
                v
            };
            let zero = value(0);
            plane.fill(zero);
            for y in 0..region.height {
                let row = &rgb[y * region.width * 3..][..region.width * 3];
                let dst = &mut plane[(y + pad.1) * ow + pad.0..][..region.width];
                for (x, d) in dst.iter_mut().enumerate() {
                    *d = value(row[x * 3 + c]);
                }
            }
        }
        (out, oh, ow)
    }

    /// What the model sees of `image`: the image, then (with [`PanAndScan`] configured and a long
    /// enough image) its crops, each preprocessed as a whole image is, as Gemma 3's processor
    /// flattens them. Returns each view's `(pixels, height, width)`.
    pub fn views(&self, image: &RgbImage) -> Vec<(Vec<f32>, usize, usize)> {
        let crops = self
            .config
            .pan_and_scan
            .map(|p| p.crops(image))
            .unwrap_or_default();
        std::iter::once(self.preprocess(image))
            .chain(crops.iter().map(|crop| self.preprocess(crop)))
            .collect()
    }

    /// Reads, decodes and preprocesses one file.
    pub fn process_file(&self, path: impl AsRef<Path>) -> Result<(Vec<f32>, usize, usize)> {
        Ok(self.preprocess(&open(path)?))
    }

    /// Preprocesses many images in parallel into one contiguous `[n, 3, H, W]` buffer. `load(i)`
    /// provides image `i` (from a file, a zip, memory). Each entry of the returned statuses is
    /// `Ok(())` or the error of that image, whose slot is left as zeros; one bad image never stops
    /// the batch. Needs a fixed output size (a crop or an exact resize).
    pub fn process_batch<F>(&self, n: usize, load: F) -> Result<(Vec<f32>, Vec<Result<()>>), Error>
    where
        F: Fn(usize) -> Result<RgbImage> + Sync,
    {
        let (h, w) = self.output_size().ok_or_else(|| Error::Config {
            path: PathBuf::from("<processor>"),
            message: "batching needs a fixed output size (center crop or exact resize)".into(),
        })?;
        let per = 3 * h as usize * w as usize;
        let mut pixels = vec![0f32; n * per];
        let statuses = pixels
            .par_chunks_mut(per.max(1))
            .enumerate()
            .map(|(i, slot)| {
                let (data, _, _) = self.preprocess(&load(i)?);
                slot.copy_from_slice(&data);
                Ok(())
            })
            .collect();
        Ok((pixels, statuses))
    }
}

/// transformers' `center_crop` of a `w` x `h` image: the region to keep, where it lands in the
/// output (zero padding before it when the crop is larger than the image, `ceil` of half the
/// difference as transformers pads), and the output's `(height, width)`.
fn crop_region(
    (w, h): (usize, usize),
    crop: Option<(u32, u32)>,
) -> (Region, (usize, usize), (usize, usize)) {
    let Some((ch, cw)) = crop.map(|(a, b)| (a as usize, b as usize)) else {
        return (
            Region {
                left: 0,
                top: 0,
                width: w,
                height: h,
            },
            (0, 0),
            (h, w),
        );
    };
    // Per axis: (first kept pixel, pixels kept, padding before them).
    let axis = |size: usize, crop: usize| -> (usize, usize, usize) {
        if size >= crop {
            ((size - crop) / 2, crop, 0)
        } else {
            (0, size, (crop - size).div_ceil(2))
        }
    };
    let (left, width, pad_left) = axis(w, cw);
    let (top, height, pad_top) = axis(h, ch);
    (
        Region {
            left,
            top,
            width,
            height,
        },
        (pad_left, pad_top),
        (ch, cw),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expand_to_square_centres_like_llava() {
        let img = RgbImage::from_pixel(4, 2, image::Rgb([9, 9, 9]));
        let sq = expand_to_square(&img, [1, 2, 3]);
        assert_eq!(sq.dimensions(), (4, 4));
        assert_eq!(sq.get_pixel(0, 0).0, [1, 2, 3]);
        assert_eq!(sq.get_pixel(0, 1).0, [9, 9, 9], "(4 - 2) / 2 = 1 row above");
        assert_eq!(sq.get_pixel(3, 3).0, [1, 2, 3]);
        let tall = RgbImage::from_pixel(1, 4, image::Rgb([9, 9, 9]));
        let sq = expand_to_square(&tall, [0, 0, 0]);
        assert_eq!(
            sq.get_pixel(1, 0).0,
            [9, 9, 9],
            "(4 - 1) / 2 = 1 column left"
        );
        assert_eq!(
            ImageProcessor::new(ProcessorConfig::clip_336()).background(),
            [122, 116, 104]
        );
    }

    #[test]
    fn shortest_edge_truncates_the_long_side_and_crops_the_centre() {
        let p = ImageProcessor::new(ProcessorConfig::clip_336());
        let (px, h, w) = p.preprocess(&RgbImage::from_pixel(640, 480, image::Rgb([255, 0, 128])));
        assert_eq!((h, w, px.len()), (336, 336, 3 * 336 * 336));
        let red = (1.0 - CLIP_MEAN[0]) / CLIP_STD[0];
        assert!((px[0] - red).abs() < 1e-5);
    }

    #[test]
    fn small_images_are_padded_with_zero_by_the_crop() {
        let config = ProcessorConfig {
            resize: None,
            ..ProcessorConfig::clip_336()
        };
        let p = ImageProcessor::new(ProcessorConfig {
            crop: Some((4, 4)),
            ..config
        });
        let (px, h, w) = p.preprocess(&RgbImage::from_pixel(1, 2, image::Rgb([255, 255, 255])));
        assert_eq!((h, w), (4, 4));
        let zero = (0.0 - CLIP_MEAN[0]) / CLIP_STD[0];
        let one = (1.0 - CLIP_MEAN[0]) / CLIP_STD[0];
        // Rows: ceil(2 / 2) = 1 padded above; columns: ceil(3 / 2) = 2 padded left.
        let plane: Vec<bool> = px[..16].iter().map(|&v| (v - one).abs() < 1e-5).collect();
        let expected: Vec<bool> = (0..16).map(|i| i == 6 || i == 10).collect();
        assert_eq!(plane, expected);
        assert!((px[0] - zero).abs() < 1e-6);
    }

    #[test]
    fn preprocessor_config_json_is_read() {
        let clip = r#"{"crop_size": {"height": 336, "width": 336}, "do_center_crop": true,
            "do_normalize": true, "do_resize": true, "image_mean": [0.48145466, 0.4578275, 0.40821073],
            "image_std": [0.26862954, 0.26130258, 0.27577711], "resample": 3, "rescale_factor": 0.00392156862745098,
            "size": {"shortest_edge": 336}, "image_processor_type": "CLIPImageProcessor"}"#;
        assert_eq!(
            ProcessorConfig::from_json(clip).unwrap(),
            ProcessorConfig::clip_336()
        );
        let dino = r#"{"crop_size": {"height": 224, "width": 224}, "image_mean": [0.485, 0.456, 0.406],
            "image_std": [0.229, 0.224, 0.225], "resample": 3, "size": {"shortest_edge": 256}}"#;
        let parsed = ProcessorConfig::from_json(dino).unwrap();
        assert_eq!(parsed.crop, Some((224, 224)));
        assert_eq!(parsed.resize, Some(Resize::ShortestEdge(256)));
        assert!(
            ProcessorConfig::from_json(r#"{"resample": 0}"#)
                .unwrap_err()
                .contains("resample 0")
        );
    }

    #[test]
    fn the_hubs_siglip_and_gemma3_files_read_as_their_processors_run() {
        // google/siglip-so400m-patch14-384 and google/paligemma-3b-pt-224 (no crop keys).
        let siglip = r#"{"do_normalize": true, "do_rescale": true, "do_resize": true,
            "image_mean": [0.5, 0.5, 0.5], "image_processor_type": "SiglipImageProcessor",
            "image_std": [0.5, 0.5, 0.5], "processor_class": "SiglipProcessor", "resample": 3,
            "rescale_factor": 0.00392156862745098, "size": {"height": 384, "width": 384}}"#;
        assert_eq!(
            ProcessorConfig::from_json(siglip).unwrap(),
            ProcessorConfig::siglip(384)
        );
        // google/gemma-3-4b-it: pan-and-scan and the convert flag null.
        let gemma3 = r#"{"do_convert_rgb": null, "do_normalize": true, "do_pan_and_scan": null,
            "do_rescale": true, "do_resize": true, "image_mean": [0.5, 0.5, 0.5],
            "image_processor_type": "Gemma3ImageProcessor", "image_seq_length": 256,
            "image_std": [0.5, 0.5, 0.5], "pan_and_scan_max_num_crops": null,
            "pan_and_scan_min_crop_size": null, "pan_and_scan_min_ratio_to_activate": null,
            "processor_class": "Gemma3Processor", "resample": 2,
            "rescale_factor": 0.00392156862745098, "size": {"height": 896, "width": 896}}"#;
        assert_eq!(
            ProcessorConfig::from_json(gemma3).unwrap(),
            ProcessorConfig::gemma3(896)
        );
        let scanned = gemma3
            .replace(r#""do_pan_and_scan": null"#, r#""do_pan_and_scan": true"#)
            .replace(
                r#""pan_and_scan_max_num_crops": null"#,
                r#""pan_and_scan_max_num_crops": 3"#,
            );
        assert_eq!(
            ProcessorConfig::from_json(&scanned).unwrap().pan_and_scan,
            Some(PanAndScan {
                max_num_crops: 3,
                ..PanAndScan::default()
            })
        );
        // The class defaults when a key is left out.
        let bare = ProcessorConfig::from_json(
            r#"{"image_processor_type": "Gemma3ImageProcessor", "size": {"height": 32, "width": 32}}"#,
        )
        .unwrap();
        assert_eq!(bare, ProcessorConfig::gemma3(32));
    }

    #[test]
    fn views_are_the_image_then_its_crops() {
        let processor = ImageProcessor::new(ProcessorConfig {
            pan_and_scan: Some(PanAndScan {
                min_crop_size: 4,
                ..PanAndScan::default()
            }),
            ..ProcessorConfig::gemma3(8)
        });
        // 24 x 8: three 8 x 8 crops, red, green and blue.
        let image = RgbImage::from_fn(24, 8, |x, _| {
            let mut rgb = [0u8; 3];
            rgb[(x / 8) as usize] = 255;
            image::Rgb(rgb)
        });
        let views = processor.views(&image);
        assert_eq!(views.len(), 4);
        for (i, (pixels, h, w)) in views[1..].iter().enumerate() {
            assert_eq!((*h, *w), (8, 8));
            // Channel i is 1.0 everywhere ((255 / 255 - 0.5) / 0.5), the others -1.0.
            for c in 0..3 {
                let want = if c == i { 1.0 } else { -1.0 };
                assert!(
                    pixels[c * 64..][..64]
                        .iter()
                        .all(|&v| (v - want).abs() < 1e-6)
                );
            }
        }
        assert_eq!(views[0], processor.preprocess(&image));
        let square = RgbImage::new(8, 8);
        assert_eq!(processor.views(&square).len(), 1);
    }

    #[test]
    fn corrupt_and_truncated_images_are_errors_naming_the_file() {
        let err = decode(b"not an image", "bad.jpg").unwrap_err().to_string();
        assert!(err.contains("bad.jpg"), "{err}");
        let mut png = Vec::new();
        RgbImage::from_pixel(8, 8, image::Rgb([1, 2, 3]))
            .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .unwrap();
        let err = decode(&png[..png.len() / 2], "half.png")
            .unwrap_err()
            .to_string();
        assert!(err.contains("half.png"), "{err}");
        let err = open("/no/such/image.png").unwrap_err().to_string();
        assert!(err.contains("/no/such/image.png"), "{err}");
    }

    #[test]
    fn a_bad_image_in_a_batch_is_reported_and_the_rest_processed() {
        let p = ImageProcessor::new(ProcessorConfig::dinov2_224());
        let (pixels, statuses) = p
            .process_batch(3, |i| {
                if i == 1 {
                    decode(b"junk", "junk.jpg")
                } else {
                    Ok(RgbImage::from_pixel(300, 260, image::Rgb([10, 20, 30])))
                }
            })
            .unwrap();
        assert_eq!(pixels.len(), 3 * 3 * 224 * 224);
        assert!(statuses[0].is_ok() && statuses[2].is_ok());
        assert!(
            statuses[1]
                .as_ref()
                .unwrap_err()
                .to_string()
                .contains("junk.jpg")
        );
        let per = 3 * 224 * 224;
        assert!(pixels[per..2 * per].iter().all(|&v| v == 0.0));
        assert_eq!(pixels[..per], pixels[2 * per..]);
    }
}
