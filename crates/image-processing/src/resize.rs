//! Resampling as Pillow's `Image.resize` does it for 8-bit images (`libImaging/Resample.c`).
//!
//! A separable convolution, horizontal pass then vertical pass, whose kernel is stretched by the
//! downscaling factor (so downscaling is antialiased), with coefficients normalised per output pixel
//! and applied in 22-bit fixed point, and the intermediate image rounded and clipped to 8 bits. Doing
//! the same arithmetic gives the same bytes as Pillow.
//!
//! Only the output pixels inside `region` are computed; each is computed exactly as in the full
//! resize, so resizing and cropping in one call equals Pillow's resize followed by a crop.

use std::f64::consts::PI;

/// Pillow's resampling filters (the numbers are Pillow's `Image.Resampling` values).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    /// Box (`4`).
    Box,
    /// Bilinear / triangle (`2`).
    Bilinear,
    /// Hamming (`5`).
    Hamming,
    /// Bicubic with `a = -0.5` (`3`): what CLIP and DINOv2 processors use.
    Bicubic,
    /// Lanczos-3 (`1`).
    Lanczos,
}

impl Filter {
    /// The filter for Pillow's resample number; `None` for nearest (`0`) and unknown numbers.
    pub fn from_pil(resample: u32) -> Option<Self> {
        match resample {
            1 => Some(Filter::Lanczos),
            2 => Some(Filter::Bilinear),
            3 => Some(Filter::Bicubic),
            4 => Some(Filter::Box),
            5 => Some(Filter::Hamming),
            _ => None,
        }
    }

    fn support(self) -> f64 {
        match self {
            Filter::Box => 0.5,
            Filter::Bilinear | Filter::Hamming => 1.0,
            Filter::Bicubic => 2.0,
            Filter::Lanczos => 3.0,
        }
    }

    fn weight(self, x: f64) -> f64 {
        match self {
            Filter::Box => {
                if x > -0.5 && x <= 0.5 {
                    1.0
                } else {
                    0.0
                }
            }
            Filter::Bilinear => {
                let x = x.abs();
                if x < 1.0 { 1.0 - x } else { 0.0 }
            }
            Filter::Hamming => {
                let x = x.abs();
                if x == 0.0 {
                    1.0
                } else if x >= 1.0 {
                    0.0
                } else {
                    let x = x * PI;
                    x.sin() / x * (0.54 + 0.46 * x.cos())
                }
            }
            Filter::Bicubic => {
                const A: f64 = -0.5;
                let x = x.abs();
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
            Filter::Lanczos => {
                if -3.0 < x && x < 3.0 {
                    sinc(x) * sinc(x / 3.0)
                } else {
                    0.0
                }
            }
        }
    }
}

fn sinc(x: f64) -> f64 {
    if x == 0.0 {
        1.0
    } else {
        let x = x * PI;
        x.sin() / x
    }
}

const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Fixed-point kernels of one pass: for each output index, the first input index and its weights.
struct Kernels {
    starts: Vec<usize>,
    weights: Vec<Vec<i32>>,
}

/// Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc` for output indices `first..first + count`
/// of a resize from `in_size` to `out_size`.
fn kernels(in_size: usize, out_size: usize, first: usize, count: usize, filter: Filter) -> Kernels {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filter.support() * filterscale;
    let mut starts = Vec::with_capacity(count);
    let mut weights = Vec::with_capacity(count);
    for xx in first..first + count {
        let center = (xx as f64 + 0.5) * scale;
        let ss = 1.0 / filterscale;
        // Pillow truncates towards zero with a C cast.
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
        let raw: Vec<f64> = (xmin..xmax)
            .map(|x| filter.weight((x as f64 - center + 0.5) * ss))
            .collect();
        let total: f64 = raw.iter().sum();
        let fixed = raw
            .iter()
            .map(|&w| {
                let w = if total != 0.0 { w / total } else { w };
                let scaled = w * (1u32 << PRECISION_BITS) as f64;
                if w < 0.0 {
                    (scaled - 0.5) as i32
                } else {
                    (scaled + 0.5) as i32
                }
            })
            .collect();
        starts.push(xmin);
        weights.push(fixed);
    }
    Kernels { starts, weights }
}

/// The rounding offset every accumulator starts from.
const HALF: i32 = 1 << (PRECISION_BITS - 1);

#[inline]
fn clip8(acc: i32) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// A rectangle of output pixels: `left`, `top`, `width`, `height`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    /// First output column.
    pub left: usize,
    /// First output row.
    pub top: usize,
    /// Number of columns.
    pub width: usize,
    /// Number of rows.
    pub height: usize,
}

/// Resizes the interleaved RGB image `src` (`width` x `height`) to `out_width` x `out_height` as
/// Pillow does, returning only the pixels of `region` (interleaved RGB, `region.width` x
/// `region.height`). The region must lie inside the output.
pub fn resize_rgb(
    src: &[u8],
    (width, height): (usize, usize),
    (out_width, out_height): (usize, usize),
    region: Region,
    filter: Filter,
) -> Vec<u8> {
    assert_eq!(src.len(), width * height * 3, "RGB buffer size");
    assert!(
        region.left + region.width <= out_width && region.top + region.height <= out_height,
        "region inside the output"
    );
    // Vertical kernels decide which input rows the horizontal pass must produce.
    let vertical = (out_height != height)
        .then(|| kernels(height, out_height, region.top, region.height, filter));
    let (row_first, row_count) = match &vertical {
        Some(k) => {
            let first = k.starts.first().copied().unwrap_or(0);
            let last = k
                .starts
                .iter()
                .zip(&k.weights)
                .map(|(s, w)| s + w.len())
                .max()
                .unwrap_or(first);
            (first, last - first)
        }
        None => (region.top, region.height),
    };

    // Horizontal pass over the rows needed, producing the region's columns.
    let cols = region.width;
    let mut mid = vec![0u8; row_count * cols * 3];
    if out_width != width {
        let k = kernels(width, out_width, region.left, cols, filter);
        for r in 0..row_count {
            let line = &src[(row_first + r) * width * 3..][..width * 3];
            let out = &mut mid[r * cols * 3..][..cols * 3];
            for (c, (start, weights)) in k.starts.iter().zip(&k.weights).enumerate() {
                // Pillow accumulates in 32-bit integers; so do we (the sums cannot overflow).
                let (mut r0, mut g0, mut b0) = (HALF, HALF, HALF);
                let pixels = &line[start * 3..][..weights.len() * 3];
                for (px, &w) in pixels.chunks_exact(3).zip(weights) {
                    r0 += px[0] as i32 * w;
                    g0 += px[1] as i32 * w;
                    b0 += px[2] as i32 * w;
                }
                out[c * 3] = clip8(r0);
                out[c * 3 + 1] = clip8(g0);
                out[c * 3 + 2] = clip8(b0);
            }
        }
    } else {
        for r in 0..row_count {
            let line = &src[((row_first + r) * width + region.left) * 3..][..cols * 3];
            mid[r * cols * 3..][..cols * 3].copy_from_slice(line);
        }
    }

    // Vertical pass.
    let Some(k) = vertical else {
        return mid;
    };
    let row_len = cols * 3;
    let mut out = vec![0u8; region.height * row_len];
    let mut acc = vec![0i32; row_len];
    for (r, (start, weights)) in k.starts.iter().zip(&k.weights).enumerate() {
        // Row by row, so that the inner loop runs over contiguous bytes and vectorises.
        acc.fill(HALF);
        for (i, &w) in weights.iter().enumerate() {
            let src_row = &mid[(start - row_first + i) * row_len..][..row_len];
            for (a, &v) in acc.iter_mut().zip(src_row) {
                *a += v as i32 * w;
            }
        }
        for (d, &a) in out[r * row_len..][..row_len].iter_mut().zip(&acc) {
            *d = clip8(a);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full(w: usize, h: usize) -> Region {
        Region {
            left: 0,
            top: 0,
            width: w,
            height: h,
        }
    }

    #[test]
    fn identity_size_is_a_copy() {
        let src: Vec<u8> = (0..4 * 3 * 3).map(|i| i as u8).collect();
        assert_eq!(
            resize_rgb(&src, (4, 3), (4, 3), full(4, 3), Filter::Bicubic),
            src
        );
    }

    #[test]
    fn flat_images_stay_flat_at_any_scale() {
        let src = vec![77u8; 7 * 5 * 3];
        for (w, h) in [(3, 2), (20, 13), (7, 9)] {
            for f in [
                Filter::Bicubic,
                Filter::Bilinear,
                Filter::Lanczos,
                Filter::Box,
                Filter::Hamming,
            ] {
                let out = resize_rgb(&src, (7, 5), (w, h), full(w, h), f);
                assert!(out.iter().all(|&v| v == 77), "{f:?} {w}x{h}");
            }
        }
    }

    #[test]
    fn a_region_equals_the_same_pixels_of_the_full_resize() {
        let src: Vec<u8> = (0..31 * 17 * 3).map(|i| ((i * 7919) % 256) as u8).collect();
        let whole = resize_rgb(&src, (31, 17), (45, 24), full(45, 24), Filter::Bicubic);
        let region = Region {
            left: 5,
            top: 3,
            width: 24,
            height: 18,
        };
        let part = resize_rgb(&src, (31, 17), (45, 24), region, Filter::Bicubic);
        for y in 0..18 {
            let a = &whole[((y + 3) * 45 + 5) * 3..][..24 * 3];
            assert_eq!(a, &part[y * 24 * 3..][..24 * 3], "row {y}");
        }
    }

    #[test]
    fn bicubic_kernel_is_pillows() {
        assert_eq!(Filter::Bicubic.weight(0.0), 1.0);
        assert_eq!(Filter::Bicubic.weight(1.0), 0.0);
        assert!((Filter::Bicubic.weight(0.5) - 0.5625).abs() < 1e-12);
        assert!((Filter::Bicubic.weight(1.5) + 0.0625).abs() < 1e-12);
        assert_eq!(Filter::from_pil(3), Some(Filter::Bicubic));
        assert_eq!(Filter::from_pil(0), None);
    }
}
