//! Property tests: any bytes (valid small images of every format, flipped, truncated, extended,
//! with random header sizes) give an image or an error, never a panic, a hang or a runaway
//! allocation; and any image decoded preprocesses without panicking.

use std::io::Cursor;
use std::path::Path;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use image::{DynamicImage, ImageFormat};
use image_processing::{Error, ImageProcessor, ProcessorConfig, decode_with_limit};
use proptest::prelude::*;
use proptest::sample::Index;

mod heap;
use heap::{Peak, SERIAL};

/// The pixel limit of these tests: small, so that a mutated header cannot make a case slow.
const LIMIT: u64 = 1 << 20;
/// The most heap a case may hold: the limit's pixels at 8 bytes (16-bit RGBA) with room for the
/// decoders' own buffers and the RGB copy.
const MAX_HEAP: usize = 64 << 20;

fn encode(image: DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut bytes = Vec::new();
    image
        .write_to(&mut Cursor::new(&mut bytes), format)
        .unwrap();
    bytes
}

/// Small valid files of every format and awkward layout.
fn seeds() -> &'static [(&'static str, Vec<u8>)] {
    static SEEDS: OnceLock<Vec<(&'static str, Vec<u8>)>> = OnceLock::new();
    SEEDS.get_or_init(|| {
        let rgb = image::RgbImage::from_fn(24, 16, |x, y| {
            image::Rgb([(x * 10) as u8, (y * 15) as u8, ((x * y) % 256) as u8])
        });
        let image = DynamicImage::ImageRgb8(rgb);
        let mut seeds = vec![
            ("rgb.png", encode(image.clone(), ImageFormat::Png)),
            (
                "rgba16.png",
                encode(
                    DynamicImage::ImageRgba16(image.to_rgba16()),
                    ImageFormat::Png,
                ),
            ),
            (
                "grey16.png",
                encode(
                    DynamicImage::ImageLuma16(image.to_luma16()),
                    ImageFormat::Png,
                ),
            ),
            ("rgb.jpg", encode(image.clone(), ImageFormat::Jpeg)),
            (
                "grey.jpg",
                encode(
                    DynamicImage::ImageLuma8(image.to_luma8()),
                    ImageFormat::Jpeg,
                ),
            ),
            (
                "rgba.gif",
                encode(DynamicImage::ImageRgba8(image.to_rgba8()), ImageFormat::Gif),
            ),
            (
                "rgba.webp",
                encode(
                    DynamicImage::ImageRgba8(image.to_rgba8()),
                    ImageFormat::WebP,
                ),
            ),
            ("rgb.bmp", encode(image.clone(), ImageFormat::Bmp)),
            ("rgb.tif", encode(image.clone(), ImageFormat::Tiff)),
            (
                "grey16.tif",
                encode(
                    DynamicImage::ImageLuma16(image.to_luma16()),
                    ImageFormat::Tiff,
                ),
            ),
        ];
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pillow-modes");
        for name in [
            "palette4_trns.png",
            "grey1.png",
            "la16.png",
            "cmyk.jpg",
            "cmyk8.tif",
            "rgb565.bmp",
            "bits1.bmp",
            "palette.gif",
            "lossless.webp",
        ] {
            seeds.push((name, std::fs::read(fixtures.join(name)).unwrap()));
        }
        seeds
    })
}

#[derive(Debug, Clone)]
enum Mutation {
    /// XOR one byte.
    Flip(Index, u8),
    /// Cut the file here.
    Truncate(Index),
    /// Insert bytes here.
    Insert(Index, Vec<u8>),
    /// Overwrite four bytes here (a length, a size, an offset) with a 32-bit value.
    Overwrite(Index, u32),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let value = prop_oneof![
        any::<u32>(),
        Just(0u32),
        Just(u32::MAX),
        Just(0x7FFF_FFFF),
        0u32..70_000,
    ];
    prop_oneof![
        (any::<Index>(), 1u8..=255).prop_map(|(i, x)| Mutation::Flip(i, x)),
        any::<Index>().prop_map(Mutation::Truncate),
        (any::<Index>(), prop::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(i, b)| Mutation::Insert(i, b)),
        (any::<Index>(), value).prop_map(|(i, v)| Mutation::Overwrite(i, v)),
    ]
}

fn apply(bytes: &mut Vec<u8>, m: &Mutation) {
    if bytes.is_empty() {
        return;
    }
    match m {
        Mutation::Flip(i, x) => {
            let at = i.index(bytes.len());
            bytes[at] ^= x;
        }
        Mutation::Truncate(i) => bytes.truncate(i.index(bytes.len())),
        Mutation::Insert(i, b) => {
            let at = i.index(bytes.len() + 1);
            bytes.splice(at..at, b.iter().copied());
        }
        Mutation::Overwrite(i, v) => {
            let at = i.index(bytes.len());
            let v = if i.index(2) == 0 {
                v.to_le_bytes()
            } else {
                v.to_be_bytes()
            };
            for (k, b) in v.iter().enumerate() {
                if let Some(slot) = bytes.get_mut(at + k) {
                    *slot = *b;
                }
            }
        }
    }
}

/// Decodes and, when that works, preprocesses with `expand2square` (the path where a thin image
/// is most expensive); checks time, heap and the pixel limit.
fn check(bytes: &[u8]) -> Result<(), TestCaseError> {
    let heap = Peak::start();
    let start = Instant::now();
    let result = decode_with_limit(bytes, "fuzz", LIMIT);
    if let Ok(image) = &result {
        let pixels = u64::from(image.width()) * u64::from(image.height());
        prop_assert!(pixels <= LIMIT, "{:?} above the limit", image.dimensions());
        let processor = ImageProcessor::new(ProcessorConfig::dinov2_224().with_pad_to_square());
        let (out, h, w) = processor.preprocess(image);
        prop_assert_eq!(out.len(), 3 * h * w);
    }
    let elapsed = start.elapsed();
    let peak = heap.held();
    prop_assert!(elapsed < Duration::from_secs(3), "took {:?}", elapsed);
    prop_assert!(
        peak < MAX_HEAP,
        "held {} bytes; {:?}: {:?}",
        peak,
        image::guess_format(bytes),
        result.as_ref().map(|i| i.dimensions())
    );
    if let Err(e) = &result {
        prop_assert!(e.to_string().contains("fuzz"), "{}", e);
    }
    Ok(())
}

/// `cases` cases, or `PROPTEST_CASES` for a longer run.
fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(cases),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config(600))]

    #[test]
    fn mutated_images_decode_or_fail_cleanly(
        seed in any::<Index>(),
        mutations in prop::collection::vec(mutation(), 1..5),
    ) {
        let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let seeds = seeds();
        let (name, seed) = &seeds[seed.index(seeds.len())];
        let mut bytes = seed.clone();
        for m in &mutations {
            apply(&mut bytes, m);
        }
        check(&bytes).map_err(|e| TestCaseError::fail(format!("{name} {mutations:?}: {e}")))?;
    }
}

/// Random bytes behind each format's magic number.
fn magic() -> impl Strategy<Value = &'static [u8]> {
    prop::sample::select(vec![
        &b"\x89PNG\r\n\x1a\n"[..],
        &b"\xFF\xD8\xFF"[..],
        &b"GIF89a"[..],
        &b"RIFF\x10\0\0\0WEBPVP8L"[..],
        &b"BM"[..],
        &b"II*\0"[..],
        &b"MM\0*"[..],
        &b""[..],
    ])
}

proptest! {
    #![proptest_config(config(300))]

    #[test]
    fn random_bytes_decode_or_fail_cleanly(
        head in magic(),
        tail in prop::collection::vec(any::<u8>(), 0..256),
    ) {
        let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let mut bytes = head.to_vec();
        bytes.extend_from_slice(&tail);
        check(&bytes)?;
    }
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

fn dimension() -> impl Strategy<Value = u32> {
    prop_oneof![
        0u32..4,
        1u32..3000,
        Just(65_535),
        60_000u32..70_000,
        any::<u32>()
    ]
}

proptest! {
    #![proptest_config(config(300))]

    /// Valid files whose headers claim another size: refused above the limit (from the header,
    /// for PNG and GIF, whatever follows), else an image or an error.
    #[test]
    fn random_header_sizes_are_bounded(
        which in 0usize..4,
        width in dimension(),
        height in dimension(),
    ) {
        let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let seeds = seeds();
        let find = |name: &str| seeds.iter().find(|(n, _)| *n == name).unwrap().1.clone();
        let mut bytes;
        let checked_early;
        match which {
            0 => {
                bytes = find("rgb.png");
                bytes[16..20].copy_from_slice(&width.to_be_bytes());
                bytes[20..24].copy_from_slice(&height.to_be_bytes());
                let crc = crc32(&bytes[12..29]);
                bytes[29..33].copy_from_slice(&crc.to_be_bytes());
                checked_early = true;
            }
            1 => {
                bytes = find("rgba.gif");
                bytes[6..8].copy_from_slice(&(width as u16).to_le_bytes());
                bytes[8..10].copy_from_slice(&(height as u16).to_le_bytes());
                checked_early = false; // the frame, not the screen, may be what fails
            }
            2 => {
                bytes = find("rgb.bmp");
                bytes[18..22].copy_from_slice(&width.to_le_bytes());
                bytes[22..26].copy_from_slice(&height.to_le_bytes());
                checked_early = false;
            }
            _ => {
                bytes = find("rgb.jpg");
                let sof = bytes.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
                bytes[sof + 5..sof + 7].copy_from_slice(&(height as u16).to_be_bytes());
                bytes[sof + 7..sof + 9].copy_from_slice(&(width as u16).to_be_bytes());
                checked_early = false;
            }
        }
        let claimed = u64::from(width.max(1)) * u64::from(height.max(1));
        if checked_early && claimed > LIMIT {
            let refused = matches!(
                decode_with_limit(&bytes, "fuzz", LIMIT),
                Err(Error::TooLarge { .. })
            );
            prop_assert!(refused, "{}x{} not refused", width, height);
        }
        check(&bytes)?;
    }
}
