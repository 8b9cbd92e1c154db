//! Our decode against Pillow's `Image.open(path).convert("RGB")` for awkward modes: 16-bit grey
//! (with and without `tRNS`), 16-bit RGB/RGBA, grey+alpha, palettes with `tRNS`, 1/2/4-bit grey,
//! BMP (1, 8, 16 5-5-5 and 5-6-5, 24 and 32 bits), TIFF (grey, 16-bit grey, RGB, RGBA, CMYK), GIF,
//! lossless WebP, and JPEG (RGB, grey, Adobe CMYK) within a bound. The fixture, made by
//! `tests/fixtures/pillow-modes/make.py` with Pillow, holds Pillow's bytes for each file.

use std::path::{Path, PathBuf};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pillow-modes")
}

#[test]
fn decode_matches_pillow_convert_rgb() {
    let dir = fixture();
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap();
    let images = manifest["images"].as_array().unwrap();
    assert!(images.len() >= 30, "{} images", images.len());
    let mut failures = Vec::new();
    for entry in images {
        let file = entry["file"].as_str().unwrap();
        let want = std::fs::read(dir.join(entry["rgb"].as_str().unwrap())).unwrap();
        let bound = entry["max_abs_diff"].as_u64().unwrap() as i32;
        let mode = entry["pillow_mode"].as_str().unwrap();
        let got = match image_processing::open(dir.join(file)) {
            Ok(image) => image,
            Err(e) => {
                failures.push(format!("{file} ({mode}): {e}"));
                continue;
            }
        };
        let size = (
            entry["width"].as_u64().unwrap() as u32,
            entry["height"].as_u64().unwrap() as u32,
        );
        if got.dimensions() != size {
            failures.push(format!(
                "{file}: size {:?}, Pillow {size:?}",
                got.dimensions()
            ));
            continue;
        }
        let worst = got
            .as_raw()
            .iter()
            .zip(&want)
            .map(|(&a, &b)| (a as i32 - b as i32).abs())
            .max()
            .unwrap_or(0);
        if worst > bound {
            let first = got
                .as_raw()
                .iter()
                .zip(&want)
                .position(|(a, b)| a != b)
                .unwrap();
            failures.push(format!(
                "{file} ({mode}): max diff {worst} > {bound}; byte {first}: ours {:?}, Pillow {:?}",
                &got.as_raw()[first..(first + 6).min(want.len())],
                &want[first..(first + 6).min(want.len())]
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
