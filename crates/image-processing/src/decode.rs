//! Decoding image bytes to 8-bit RGB as LLaVA loads images, `Image.open(path).convert("RGB")`,
//! within a bound on size: the conversion rules are in the crate documentation.

use std::io::Cursor;
use std::path::Path;

use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits, RgbImage};

use crate::{Error, Result};

/// The most pixels an image may have: Pillow's `Image.MAX_IMAGE_PIXELS` (89,478,485) doubled,
/// the size above which Pillow refuses an image with `DecompressionBombError`. [`decode`] and
/// [`open`] use it; [`decode_with_limit`] and [`open_with_limit`] take another.
pub const MAX_IMAGE_PIXELS: u64 = 2 * 89_478_485;

/// What a decoder may allocate besides the image itself: four times the file (compressed strips,
/// metadata), at least 16 MiB and at most the `image` crate's default budget of 512 MiB. A small
/// file cannot make a decoder allocate much more than its image, whatever its headers claim.
fn decoder_budget(input_len: usize) -> u64 {
    (input_len as u64)
        .saturating_mul(4)
        .clamp(16 << 20, 512 << 20)
}

/// Decodes image bytes to RGB as Pillow's `Image.open(...).convert("RGB")` does (the rules are in
/// the crate documentation): JPEG (CMYK included), PNG, WebP, GIF (first frame), BMP and TIFF.
/// `name` labels errors.
///
/// An image of more than [`MAX_IMAGE_PIXELS`] pixels is refused from its header, before anything is
/// allocated ([`Error::TooLarge`]). A truncated JPEG is an error as in Pillow ("image file is
/// truncated"), and a decoder panic on hostile input is caught and reported as an error.
pub fn decode(bytes: &[u8], name: &str) -> Result<RgbImage> {
    decode_with_limit(bytes, name, MAX_IMAGE_PIXELS)
}

/// [`decode`] with another pixel limit (`u64::MAX` for none, as Pillow's `MAX_IMAGE_PIXELS = None`).
pub fn decode_with_limit(bytes: &[u8], name: &str, max_pixels: u64) -> Result<RgbImage> {
    let fail = |message: String| Error::Decode {
        name: name.to_string(),
        message,
    };
    let format = image::guess_format(bytes).map_err(|e| fail(e.to_string()))?;
    if format == ImageFormat::Jpeg && jpeg_is_truncated(bytes) {
        return Err(fail("image file is truncated".into()));
    }
    if format == ImageFormat::Tiff {
        tiff_values_fit(bytes).map_err(fail)?;
    }
    let decoded = std::panic::catch_unwind(|| {
        if format == ImageFormat::Tiff
            && let Some(rgb) = decode_cmyk_tiff(bytes, max_pixels)?
        {
            return Ok(rgb);
        }
        let image = decode_bounded(bytes, format, max_pixels)?;
        Ok(to_rgb_as_pillow(image, Layout::read(bytes, format)))
    });
    match decoded {
        Ok(Ok(rgb)) => Ok(rgb),
        Ok(Err(Failure::TooLarge(width, height))) => Err(Error::TooLarge {
            name: name.to_string(),
            width,
            height,
            limit: max_pixels,
        }),
        Ok(Err(Failure::Decode(message))) => Err(fail(message)),
        Err(_) => Err(fail("the decoder failed on malformed data".into())),
    }
}

/// Reads and decodes the image file at `path` (see [`decode`]).
pub fn open(path: impl AsRef<Path>) -> Result<RgbImage> {
    open_with_limit(path, MAX_IMAGE_PIXELS)
}

/// [`open`] with another pixel limit (see [`decode_with_limit`]).
pub fn open_with_limit(path: impl AsRef<Path>, max_pixels: u64) -> Result<RgbImage> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    decode_with_limit(&bytes, &path.display().to_string(), max_pixels)
}

enum Failure {
    TooLarge(u32, u32),
    Decode(String),
}

impl From<image::ImageError> for Failure {
    fn from(e: image::ImageError) -> Self {
        Failure::Decode(e.to_string())
    }
}

/// Reads the header, refuses images above `max_pixels` (counted as Pillow does, a zero side as
/// one), then decodes with an allocation budget of the image's own buffer plus
/// [`decoder_budget`] (the header is read within that budget alone).
fn decode_bounded(
    bytes: &[u8],
    format: ImageFormat,
    max_pixels: u64,
) -> Result<DynamicImage, Failure> {
    let too_large = |(width, height): (u32, u32)| {
        (u64::from(width.max(1)) * u64::from(height.max(1)) > max_pixels)
            .then_some(Failure::TooLarge(width, height))
    };
    // PNG and GIF say their size in the first bytes, before anything a decoder would read first.
    if let Some(failure) = header_size(bytes, format).and_then(too_large) {
        return Err(failure);
    }
    let budget = decoder_budget(bytes.len());
    let mut limits = Limits::default();
    limits.max_alloc = Some(budget);
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    reader.limits(limits);
    let mut decoder = reader.into_decoder()?;
    if let Some(failure) = too_large(decoder.dimensions()) {
        return Err(failure);
    }
    let mut limits = Limits::default();
    limits.max_alloc = Some(decoder.total_bytes().saturating_add(budget));
    limits.reserve(decoder.total_bytes())?;
    decoder.set_limits(limits)?;
    Ok(DynamicImage::from_decoder(decoder)?)
}

/// The size a PNG's `IHDR` or a GIF's logical screen descriptor gives.
fn header_size(bytes: &[u8], format: ImageFormat) -> Option<(u32, u32)> {
    let be = |at: usize| {
        bytes
            .get(at..at + 4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    };
    let le16 = |at: usize| {
        bytes
            .get(at..at + 2)
            .map(|b| u32::from(u16::from_le_bytes([b[0], b[1]])))
    };
    match format {
        ImageFormat::Png if bytes.get(12..16) == Some(b"IHDR") => Some((be(16)?, be(20)?)),
        ImageFormat::Gif => Some((le16(6)?, le16(8)?)),
        _ => None,
    }
}

/// A CMYK TIFF (8 or 16 bits, chunky), decoded with the `tiff` crate and converted as Pillow's
/// `cmyk2rgb`; `None` for any other TIFF.
fn decode_cmyk_tiff(bytes: &[u8], max_pixels: u64) -> Result<Option<RgbImage>, Failure> {
    use tiff::decoder::{Decoder, DecodingResult, Limits};
    use tiff::tags::Tag;
    let error = |e: tiff::TiffError| Failure::Decode(format!("Format error decoding Tiff: {e}"));
    let mut decoder = Decoder::new(Cursor::new(bytes)).map_err(error)?;
    let depth = match decoder.colortype().map_err(error)? {
        tiff::ColorType::CMYK(depth @ (8 | 16)) => u64::from(depth / 8),
        _ => return Ok(None),
    };
    let planar = decoder
        .find_tag(Tag::PlanarConfiguration)
        .ok()
        .flatten()
        .and_then(|v| v.into_u16().ok());
    if planar.is_some_and(|p| p > 1) {
        return Ok(None); // the `image` crate reports it unsupported
    }
    let (width, height) = decoder.dimensions().map_err(error)?;
    let pixels = u64::from(width.max(1)) * u64::from(height.max(1));
    if pixels > max_pixels {
        return Err(Failure::TooLarge(width, height));
    }
    let mut limits = Limits::default();
    limits.decoding_buffer_size =
        usize::try_from(pixels.saturating_mul(4 * depth)).unwrap_or(usize::MAX);
    limits.intermediate_buffer_size = decoder_budget(bytes.len()) as usize;
    let mut decoder = decoder.with_limits(limits);
    // Pillow unpacks 16-bit samples to their high byte (`CMYK;16L`, `CMYK;16B`).
    let samples: Vec<u8> = match decoder.read_image().map_err(error)? {
        DecodingResult::U8(v) => v,
        DecodingResult::U16(v) => v.iter().map(|&s| high_byte(s)).collect(),
        _ => return Err(Failure::Decode("unsupported CMYK sample format".into())),
    };
    if samples.len() as u64 != u64::from(width) * u64::from(height) * 4 {
        return Err(Failure::Decode(
            "CMYK data does not match the image size".into(),
        ));
    }
    let raw = samples
        .chunks_exact(4)
        .flat_map(|p| {
            let nk = 255 - u32::from(p[3]);
            [p[0], p[1], p[2]].map(|c| (nk - muldiv255(u32::from(c), nk)) as u8)
        })
        .collect();
    Ok(RgbImage::from_raw(width, height, raw))
}

/// Pillow's `MULDIV255`: `a * b / 255`, rounded.
fn muldiv255(a: u32, b: u32) -> u32 {
    let t = a * b + 128;
    ((t >> 8) + t) >> 8
}

/// Checks that every value of a TIFF's first directory lies inside the file. The `tiff` crate
/// reserves a tag's claimed values before reading them, so a few corrupt bytes could otherwise
/// make it allocate hundreds of megabytes. (A directory that cannot be read is left to the
/// decoder to report.)
fn tiff_values_fit(bytes: &[u8]) -> Result<(), String> {
    let little = bytes.starts_with(b"II");
    let uint = |at: usize, n: usize| -> Option<u64> {
        let b = bytes.get(at..at.checked_add(n)?)?;
        Some(if little {
            b.iter().rev().fold(0, |v, &x| v << 8 | u64::from(x))
        } else {
            b.iter().fold(0, |v, &x| v << 8 | u64::from(x))
        })
    };
    // Classic TIFF: 2-byte entry count, 12-byte entries, 4-byte counts and offsets; BigTIFF: 8.
    let big = uint(2, 2) == Some(43);
    let (word, first) = if big { (8, 8) } else { (4, 4) };
    let Some(ifd) = uint(first, word).and_then(|v| usize::try_from(v).ok()) else {
        return Ok(());
    };
    let Some(entries) = uint(ifd, if big { 8 } else { 2 }) else {
        return Ok(());
    };
    let entry_len = if big { 20 } else { 12 };
    let start = ifd + if big { 8 } else { 2 };
    for e in 0..entries.min(bytes.len() as u64 / entry_len as u64) as usize {
        let at = start + e * entry_len;
        let (Some(tag), Some(kind), Some(count)) =
            (uint(at, 2), uint(at + 2, 2), uint(at + 4, word))
        else {
            break;
        };
        let size: u64 = match kind {
            3 | 8 => 2,
            4 | 9 | 11 | 13 => 4,
            5 | 10 | 12 | 16..=18 => 8,
            _ => 1,
        };
        let total = count.saturating_mul(size);
        if total <= word as u64 {
            continue; // the values are in the entry itself
        }
        let offset = uint(at + 4 + word, word).unwrap_or(u64::MAX);
        if offset.saturating_add(total) > bytes.len() as u64 {
            return Err(format!(
                "TIFF tag {tag} claims {count} values beyond the end of the file"
            ));
        }
    }
    Ok(())
}

/// Whether a JPEG stream ends before its end-of-image marker. libjpeg then suspends waiting for
/// more data, and Pillow raises "image file is truncated"; zune-jpeg fills the rest in silently.
///
/// Walks the markers: segments are skipped by their lengths, entropy-coded data up to the next
/// marker (`FF` followed by anything but a stuffed `00`, a restart marker or fill `FF`s).
fn jpeg_is_truncated(bytes: &[u8]) -> bool {
    let mut i = 2; // after SOI
    while i < bytes.len() {
        if bytes[i] != 0xFF {
            i += 1;
            continue;
        }
        let Some(&marker) = bytes.get(i + 1) else {
            break;
        };
        match marker {
            0xD9 => return false,
            // Fill bytes, stuffed zeros and standalone markers (TEM, SOI, RSTn).
            0xFF => i += 1,
            0x00 | 0x01 | 0xD0..=0xD8 => i += 2,
            _ => {
                let Some(len) = bytes.get(i + 2..i + 4) else {
                    break;
                };
                i += 2 + usize::from(u16::from_be_bytes([len[0], len[1]]));
            }
        }
    }
    true
}

/// What the `image` crate's decoded form does not tell but Pillow's conversion depends on.
#[derive(Debug, Default, Clone, Copy)]
struct Layout {
    /// A 16-bit grey PNG (colour type 0): Pillow's `I;16`, even when `tRNS` made the `image`
    /// crate add an alpha channel.
    png_grey16: bool,
    /// A 16-bit BMP's bits per channel `(r, g, b)`, for Pillow's truncating scale.
    bmp16: Option<[u32; 3]>,
}

impl Layout {
    fn read(bytes: &[u8], format: ImageFormat) -> Self {
        let mut layout = Layout::default();
        match format {
            ImageFormat::Png => {
                // IHDR is the first chunk: bit depth at 24, colour type at 25.
                layout.png_grey16 =
                    bytes.get(12..16) == Some(b"IHDR") && bytes.get(24..26) == Some(&[16, 0]);
            }
            ImageFormat::Bmp => {
                let u16_at = |at: usize| {
                    bytes
                        .get(at..at + 2)
                        .map(|b| u16::from_le_bytes([b[0], b[1]]))
                };
                let u32_at = |at: usize| {
                    bytes
                        .get(at..at + 4)
                        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                };
                // BITMAPINFOHEADER: bits per pixel at 28, compression at 30; the masks of
                // BI_BITFIELDS follow the 40-byte header (or are its continuation in V4/V5).
                if u32_at(14).is_some_and(|size| size >= 40) && u16_at(28) == Some(16) {
                    let masks = [u32_at(54), u32_at(58), u32_at(62)];
                    layout.bmp16 = match (u32_at(30), masks) {
                        (Some(0), _) => Some([5, 5, 5]),
                        (Some(3), [Some(0x7C00), Some(0x03E0), Some(0x001F)]) => Some([5, 5, 5]),
                        (Some(3), [Some(0xF800), Some(0x07E0), Some(0x001F)]) => Some([5, 6, 5]),
                        _ => None,
                    };
                }
            }
            _ => {}
        }
        layout
    }
}

/// Converts a decoded image to RGB as Pillow converts the mode it opens the file in.
fn to_rgb_as_pillow(image: DynamicImage, layout: Layout) -> RgbImage {
    let (width, height) = (image.width(), image.height());
    let grey = |samples: &[u16], stride: usize, f: &dyn Fn(u16) -> u8| {
        let raw = samples
            .chunks_exact(stride)
            .flat_map(|p| [f(p[0]); 3])
            .collect();
        RgbImage::from_raw(width, height, raw).expect("one pixel per sample group")
    };
    let colour = |samples: &[u16], stride: usize| {
        let raw = samples
            .chunks_exact(stride)
            .flat_map(|p| [p[0], p[1], p[2]].map(high_byte))
            .collect();
        RgbImage::from_raw(width, height, raw).expect("one pixel per sample group")
    };
    let drop_alpha = |samples: &[u8], stride: usize, grey: bool| {
        let raw = samples
            .chunks_exact(stride)
            .flat_map(|p| if grey { [p[0]; 3] } else { [p[0], p[1], p[2]] })
            .collect();
        RgbImage::from_raw(width, height, raw).expect("one pixel per sample group")
    };
    let mut rgb = match image {
        DynamicImage::ImageRgb8(rgb) => rgb,
        DynamicImage::ImageLuma8(g) => drop_alpha(g.as_raw(), 1, true),
        DynamicImage::ImageLumaA8(g) => drop_alpha(g.as_raw(), 2, true),
        DynamicImage::ImageRgba8(c) => drop_alpha(c.as_raw(), 4, false),
        // Pillow's `I;16` -> RGB (`I16_RGB`): values above 255 become 255.
        DynamicImage::ImageLuma16(g) => grey(g.as_raw(), 1, &clip16),
        DynamicImage::ImageLumaA16(g) if layout.png_grey16 => grey(g.as_raw(), 2, &clip16),
        // Pillow unpacks 16-bit grey+alpha PNG as RGBA from each sample's high byte (`LA;16B`).
        DynamicImage::ImageLumaA16(g) => grey(g.as_raw(), 2, &high_byte),
        DynamicImage::ImageRgb16(c) => colour(c.as_raw(), 3),
        DynamicImage::ImageRgba16(c) => colour(c.as_raw(), 4),
        // Float images (TIFF) are no Pillow mode that converts to RGB; the `image` crate's scale.
        other => other.to_rgb8(),
    };
    if let Some(bits) = layout.bmp16 {
        bmp16_as_pillow(&mut rgb, bits);
    }
    rgb
}

fn clip16(v: u16) -> u8 {
    v.min(255) as u8
}

fn high_byte(v: u16) -> u8 {
    (v >> 8) as u8
}

/// The `image` crate scales a 16-bit BMP's 5- and 6-bit channels with rounding, Pillow
/// (`ImagingUnpackBGR15` / `BGR16`) with truncation, `v * 255 / max`: maps one onto the other.
fn bmp16_as_pillow(rgb: &mut RgbImage, bits: [u32; 3]) {
    let table = |bits: u32| {
        let max = (1u32 << bits) - 1;
        let mut t: [u8; 256] = std::array::from_fn(|i| i as u8);
        for v in 0..=max {
            let rounded = (v * 255 * 2 + max) / (2 * max);
            t[rounded as usize] = (v * 255 / max) as u8;
        }
        t
    };
    let tables = bits.map(table);
    for px in rgb.pixels_mut() {
        for (c, t) in px.0.iter_mut().zip(&tables) {
            *c = t[usize::from(*c)];
        }
    }
}
