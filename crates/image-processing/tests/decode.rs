//! Decoding as Pillow opens files: truncated files are errors, BMP and TIFF decode, 16-bit
//! samples convert as Pillow converts them, and an image above the pixel limit is refused from
//! its header.

use std::io::Cursor;
use std::path::{Path, PathBuf};

use image::{DynamicImage, ImageFormat, RgbImage};
use image_processing::{Error, MAX_IMAGE_PIXELS, decode, decode_with_limit, open};

fn fixture_jpeg() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/hf-parity/image-processing/model/image.jpg")
}

fn encode(image: &DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut bytes = Vec::new();
    image
        .write_to(&mut Cursor::new(&mut bytes), format)
        .unwrap();
    bytes
}

fn pattern(w: u32, h: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([(x * 23 + y) as u8, (y * 41) as u8, ((x ^ y) * 7) as u8])
    })
}

fn assert_truncated(result: image_processing::Result<RgbImage>, name: &str) {
    let err = result
        .expect_err("a truncated file is an error")
        .to_string();
    assert!(err.contains(name) && err.contains("truncated"), "{err}");
}

#[test]
fn a_truncated_jpeg_is_an_error_as_in_pillow() {
    let bytes = std::fs::read(fixture_jpeg()).unwrap();
    assert!(decode(&bytes, "image.jpg").is_ok());
    // Cut in half, and cut anywhere up to just the end-of-image marker: Pillow says "image file is
    // truncated" for each.
    assert_truncated(decode(&bytes[..bytes.len() / 2], "half.jpg"), "half.jpg");
    for cut in [1, 2, 3, 100, bytes.len() - 4] {
        assert_truncated(decode(&bytes[..bytes.len() - cut], "cut.jpg"), "cut.jpg");
    }
    // Bytes after the end-of-image marker are ignored, as libjpeg does.
    let mut trailing = bytes.clone();
    trailing.extend_from_slice(b"\0\0trailing garbage\xff");
    assert!(decode(&trailing, "trailing.jpg").is_ok());
    // A JPEG of our own, progressive-free but with restart-free entropy data of any content.
    let own = encode(&DynamicImage::ImageRgb8(pattern(64, 48)), ImageFormat::Jpeg);
    assert!(decode(&own, "own.jpg").is_ok());
    assert_truncated(decode(&own[..own.len() / 2], "own.jpg"), "own.jpg");
}

#[test]
fn a_truncated_png_is_an_error() {
    let png = encode(&DynamicImage::ImageRgb8(pattern(40, 30)), ImageFormat::Png);
    for keep in [png.len() / 2, png.len() - 30, 40, 20] {
        let err = decode(&png[..keep], "half.png").unwrap_err().to_string();
        assert!(err.contains("half.png"), "{err}");
    }
}

#[test]
fn bmp_and_tiff_decode() {
    let rgb = pattern(13, 7);
    let grey = DynamicImage::ImageRgb8(rgb.clone()).to_luma8();
    let rgba = DynamicImage::ImageRgb8(rgb.clone()).to_rgba8();
    let grey_as_rgb = DynamicImage::ImageLuma8(grey.clone()).to_rgb8();
    for format in [ImageFormat::Bmp, ImageFormat::Tiff] {
        for (image, want) in [
            (DynamicImage::ImageRgb8(rgb.clone()), &rgb),
            (DynamicImage::ImageRgba8(rgba.clone()), &rgb),
            (DynamicImage::ImageLuma8(grey.clone()), &grey_as_rgb),
        ] {
            let bytes = encode(&image, format);
            let got = decode(&bytes, "image").unwrap_or_else(|e| panic!("{format:?}: {e}"));
            assert_eq!(&got, want, "{format:?} {:?}", image.color());
        }
    }
}

#[test]
fn sixteen_bit_samples_convert_as_pillow_does() {
    // Grey: Pillow's I;16 -> RGB clips at 255.
    let grey =
        image::ImageBuffer::<image::Luma<u16>, _>::from_raw(4, 1, vec![0, 200, 255, 300]).unwrap();
    for format in [ImageFormat::Png, ImageFormat::Tiff] {
        let bytes = encode(&DynamicImage::ImageLuma16(grey.clone()), format);
        let got = decode(&bytes, "grey16").unwrap();
        let want: Vec<u8> = [0u8, 200, 255, 255].iter().flat_map(|&v| [v; 3]).collect();
        assert_eq!(got.as_raw(), &want, "{format:?}");
    }
    // Colour: the high byte of each sample.
    let rgb16 = image::ImageBuffer::<image::Rgb<u16>, _>::from_raw(
        2,
        1,
        vec![0x1234, 0xFFFF, 0x00FF, 0x8000, 0x0100, 0x7FFF],
    )
    .unwrap();
    for format in [ImageFormat::Png, ImageFormat::Tiff] {
        let bytes = encode(&DynamicImage::ImageRgb16(rgb16.clone()), format);
        let got = decode(&bytes, "rgb16").unwrap();
        assert_eq!(
            got.as_raw(),
            &[0x12, 0xFF, 0x00, 0x80, 0x01, 0x7F],
            "{format:?}"
        );
    }
}

/// A PNG whose header says `width` x `height` (no image data follows).
fn png_header(width: u32, height: u32) -> Vec<u8> {
    let mut ihdr = b"IHDR".to_vec();
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    let mut bytes = b"\x89PNG\r\n\x1a\n".to_vec();
    bytes.extend_from_slice(&13u32.to_be_bytes());
    bytes.extend_from_slice(&ihdr);
    bytes.extend_from_slice(&crc32(&ihdr).to_be_bytes());
    bytes
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn assert_too_large(result: image_processing::Result<RgbImage>, size: (u32, u32), limit: u64) {
    match result {
        Err(Error::TooLarge {
            name,
            width,
            height,
            limit: l,
        }) => {
            assert_eq!((width, height, l), (size.0, size.1, limit));
            assert_eq!(name, "huge");
        }
        other => panic!("{size:?}: expected TooLarge, got {other:?}"),
    }
}

#[test]
fn images_above_the_pixel_limit_are_refused_from_the_header() {
    assert_eq!(MAX_IMAGE_PIXELS, 178_956_970);
    // PNG: 20000 x 20000 is 400 M pixels; refused before any data is read.
    let err = decode(&png_header(20_000, 20_000), "huge");
    assert_too_large(err, (20_000, 20_000), MAX_IMAGE_PIXELS);
    let message = decode(&png_header(20_000, 20_000), "huge")
        .unwrap_err()
        .to_string();
    assert!(
        message.contains("huge") && message.contains("20000 x 20000"),
        "{message}"
    );
    // GIF: a 65535 x 65535 logical screen.
    let mut gif = encode(&DynamicImage::ImageRgb8(pattern(4, 4)), ImageFormat::Gif);
    gif[6..10].copy_from_slice(&[0xFF, 0xFF, 0xFF, 0xFF]);
    assert_too_large(decode(&gif, "huge"), (65_535, 65_535), MAX_IMAGE_PIXELS);
    // BMP: width and height at 18 and 22.
    let mut bmp = encode(&DynamicImage::ImageRgb8(pattern(4, 4)), ImageFormat::Bmp);
    bmp[18..22].copy_from_slice(&30_000i32.to_le_bytes());
    bmp[22..26].copy_from_slice(&30_000i32.to_le_bytes());
    assert_too_large(decode(&bmp, "huge"), (30_000, 30_000), MAX_IMAGE_PIXELS);
    // JPEG: the frame header's height and width.
    let mut jpeg = std::fs::read(fixture_jpeg()).unwrap();
    let sof = jpeg.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
    jpeg[sof + 5..sof + 9].copy_from_slice(&[0xFF, 0xF0, 0xFF, 0xF0]);
    assert_too_large(decode(&jpeg, "huge"), (0xFFF0, 0xFFF0), MAX_IMAGE_PIXELS);

    // The limit is settable: a small image above a small limit, and no limit at all.
    let png = encode(&DynamicImage::ImageRgb8(pattern(20, 10)), ImageFormat::Png);
    assert_too_large(decode_with_limit(&png, "huge", 199), (20, 10), 199);
    assert!(decode_with_limit(&png, "small", 200).is_ok());
    assert!(decode_with_limit(&png, "small", u64::MAX).is_ok());
}

#[test]
fn errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.png");
    std::fs::write(&path, b"\x89PNG\r\n\x1a\nnot really").unwrap();
    let err = open(&path).unwrap_err().to_string();
    assert!(err.contains("broken.png"), "{err}");
    let err = decode(b"", "empty.jpg").unwrap_err().to_string();
    assert!(err.contains("empty.jpg"), "{err}");
}
