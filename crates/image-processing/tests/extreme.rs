//! Images of extreme shape cost what the output needs: `expand2square` is never materialised and
//! the resize computes only the cropped pixels, with the same bytes as the naive path.

use std::time::{Duration, Instant};

use image::RgbImage;
use image_processing::resize::{Canvas, Filter, Region, resize_canvas};
use image_processing::{ImageProcessor, ProcessorConfig, Resize, expand_to_square};

mod heap;
use heap::{Peak, SERIAL};

/// Runs `f`, returning its result, its time and the most heap it held beyond what was live before.
fn measure<T>(f: impl FnOnce() -> T) -> (T, Duration, usize) {
    let heap = Peak::start();
    let start = Instant::now();
    let out = f();
    let elapsed = start.elapsed();
    (out, elapsed, heap.held())
}

fn pattern(w: u32, h: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([
            (x.wrapping_mul(37) ^ y.wrapping_mul(11)) as u8,
            (x / 7 + y * 3) as u8,
            ((x ^ y).wrapping_mul(2_654_435_761) >> 24) as u8,
        ])
    })
}

fn png(image: &RgbImage) -> Vec<u8> {
    let mut bytes = Vec::new();
    image
        .write_to(
            &mut std::io::Cursor::new(&mut bytes),
            image::ImageFormat::Png,
        )
        .unwrap();
    bytes
}

#[test]
fn a_30000_by_2_png_finishes_fast_in_bounded_memory() {
    let _serial = SERIAL.lock().unwrap();
    for (w, h) in [(30_000, 2), (2, 30_000)] {
        let bytes = png(&pattern(w, h));
        let (image, _, decode_peak) = measure(|| image_processing::decode(&bytes, "long.png"));
        let image = image.unwrap();
        assert_eq!(image.dimensions(), (w, h));
        assert!(
            decode_peak < 16 << 20,
            "{w}x{h}: decoding held {decode_peak} bytes"
        );
        for (name, config) in [
            (
                "clip_336_pad",
                ProcessorConfig::clip_336().with_pad_to_square(),
            ),
            ("clip_336", ProcessorConfig::clip_336()),
            (
                "dinov2_224_pad",
                ProcessorConfig::dinov2_224().with_pad_to_square(),
            ),
        ] {
            let processor = ImageProcessor::new(config);
            let ((pixels, oh, ow), elapsed, peak) = measure(|| processor.preprocess(&image));
            assert_eq!(pixels.len(), 3 * oh * ow);
            // The padded square alone would be 30000 x 30000 x 3 bytes (2.7 GB); the output is
            // 1.35 MB of f32 at 336 x 336.
            assert!(peak < 16 << 20, "{w}x{h} {name}: held {peak} bytes");
            assert!(
                elapsed < Duration::from_secs(5),
                "{w}x{h} {name}: took {elapsed:?}"
            );
            eprintln!("{w}x{h} {name}: {elapsed:?}, peak {} KiB", peak >> 10);
        }
    }
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn virtual_padding_equals_materialised_padding() {
    let _serial = SERIAL.lock().unwrap();
    let filters = [
        Filter::Bicubic,
        Filter::Bilinear,
        Filter::Lanczos,
        Filter::Box,
        Filter::Hamming,
    ];
    let shapes = [
        (600, 3),
        (3, 600),
        (601, 2),
        (1, 50),
        (7, 5),
        (5, 8),
        (160, 96),
        (333, 334),
        (1, 1),
    ];
    for (i, &(w, h)) in shapes.iter().enumerate() {
        let image = pattern(w, h);
        for (j, &filter) in filters.iter().enumerate() {
            let base = if (i + j) % 2 == 0 {
                ProcessorConfig::clip_336()
            } else {
                ProcessorConfig::dinov2_224()
            };
            for (resize, crop) in [
                (base.resize, base.crop),
                (
                    Some(Resize::Exact {
                        height: 50,
                        width: 70,
                    }),
                    None,
                ),
                (None, Some((64, 48))),
                (Some(Resize::ShortestEdge(9)), Some((4, 4))),
            ] {
                let plain = ProcessorConfig {
                    filter,
                    resize,
                    crop,
                    ..base.clone()
                };
                let virtual_pad = ImageProcessor::new(plain.clone().with_pad_to_square());
                let naive = ImageProcessor::new(plain);
                let square = expand_to_square(&image, virtual_pad.background());
                let (a, ah, aw) = virtual_pad.preprocess(&image);
                let (b, bh, bw) = naive.preprocess(&square);
                assert_eq!((ah, aw), (bh, bw), "{w}x{h} {filter:?} {resize:?} {crop:?}");
                assert!(
                    bits(&a) == bits(&b),
                    "{w}x{h} {filter:?} {resize:?} {crop:?}: virtual and materialised padding differ"
                );
            }
        }
    }
}

/// Pillow's bicubic resize written the plain way (`libImaging/Resample.c`: a table of kernels per
/// pass, the horizontal pass over every row, then the vertical), as an independent reference.
fn naive_bicubic(src: &[u8], (w, h): (usize, usize), (ow, oh): (usize, usize)) -> Vec<u8> {
    fn cubic(x: f64) -> f64 {
        let a = -0.5;
        let x = x.abs();
        if x < 1.0 {
            ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
        } else if x < 2.0 {
            (((x - 5.0) * x + 8.0) * x - 4.0) * a
        } else {
            0.0
        }
    }
    fn coeffs(in_size: usize, out_size: usize) -> Vec<(usize, Vec<i32>)> {
        let scale = in_size as f64 / out_size as f64;
        let filterscale = scale.max(1.0);
        let support = 2.0 * filterscale;
        (0..out_size)
            .map(|xx| {
                let center = (xx as f64 + 0.5) * scale;
                let xmin = ((center - support + 0.5) as i64).max(0) as usize;
                let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
                let k: Vec<f64> = (xmin..xmax)
                    .map(|x| cubic((x as f64 - center + 0.5) / filterscale))
                    .collect();
                let total: f64 = k.iter().sum();
                let fixed = k
                    .iter()
                    .map(|&v| {
                        let v = v / total * (1 << 22) as f64;
                        if v < 0.0 {
                            (v - 0.5) as i32
                        } else {
                            (v + 0.5) as i32
                        }
                    })
                    .collect();
                (xmin, fixed)
            })
            .collect()
    }
    let clip = |acc: i32| (acc >> 22).clamp(0, 255) as u8;
    let mut mid = src.to_vec();
    let mut mw = w;
    if ow != w {
        let k = coeffs(w, ow);
        mid = vec![0; h * ow * 3];
        for y in 0..h {
            for (x, (start, ws)) in k.iter().enumerate() {
                for c in 0..3 {
                    let mut acc = 1 << 21;
                    for (i, &wt) in ws.iter().enumerate() {
                        acc += src[(y * w + start + i) * 3 + c] as i32 * wt;
                    }
                    mid[(y * ow + x) * 3 + c] = clip(acc);
                }
            }
        }
        mw = ow;
    }
    if oh == h {
        return mid;
    }
    let k = coeffs(h, oh);
    let mut out = vec![0; oh * mw * 3];
    for (y, (start, ws)) in k.iter().enumerate() {
        for x in 0..mw * 3 {
            let mut acc = 1 << 21;
            for (i, &wt) in ws.iter().enumerate() {
                acc += mid[(start + i) * mw * 3 + x] as i32 * wt;
            }
            out[y * mw * 3 + x] = clip(acc);
        }
    }
    out
}

#[test]
fn canvas_resize_equals_a_naive_pillow_port_of_the_materialised_canvas() {
    let _serial = SERIAL.lock().unwrap();
    let image = pattern(23, 9);
    let background = [122, 116, 104];
    for (size, offset, out) in [
        ((23, 9), (0, 0), (40, 17)),
        ((23, 23), (0, 7), (11, 11)),
        ((30, 12), (4, 2), (7, 50)),
        ((23, 40), (0, 31), (23, 6)),
    ] {
        let mut square = RgbImage::from_pixel(size.0 as u32, size.1 as u32, image::Rgb(background));
        image::imageops::replace(&mut square, &image, offset.0 as i64, offset.1 as i64);
        let whole = naive_bicubic(square.as_raw(), size, out);
        let canvas = Canvas {
            pixels: image.as_raw(),
            image_size: (23, 9),
            size,
            offset,
            background,
        };
        for region in [
            Region {
                left: 0,
                top: 0,
                width: out.0,
                height: out.1,
            },
            Region {
                left: 1,
                top: out.1 / 3,
                width: out.0 - 2,
                height: out.1 / 2,
            },
        ] {
            let got = resize_canvas(&canvas, out, region, Filter::Bicubic);
            for y in 0..region.height {
                let want =
                    &whole[((region.top + y) * out.0 + region.left) * 3..][..region.width * 3];
                assert_eq!(
                    &got[y * region.width * 3..][..region.width * 3],
                    want,
                    "canvas {size:?} at {offset:?} to {out:?}, region {region:?}, row {y}"
                );
            }
        }
    }
}
