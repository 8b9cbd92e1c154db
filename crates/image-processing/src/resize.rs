//! Resampling as Pillow's `Image.resize` does it for 8-bit images (`libImaging/Resample.c`).
//!
//! A separable convolution, horizontal pass then vertical pass, whose kernel is stretched by the
//! downscaling factor (so downscaling is antialiased), with coefficients normalised per output pixel
//! and applied in 22-bit fixed point, and the intermediate image rounded and clipped to 8 bits. Doing
//! the same arithmetic gives the same bytes as Pillow.
//!
//! Only the output pixels inside `region` are computed; each is computed exactly as in the full
//! resize, so resizing and cropping in one call equals Pillow's resize followed by a crop. The
//! source may be a [`Canvas`]: an image on a larger field of one colour, as `expand2square` pads
//! it, resized as Pillow resizes the padded image without the padding ever being built. Kernel
//! tables and buffers are sized by the region and the image, never by the canvas or the whole
//! output.

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

/// Above this many weights on the image in one pass, weights are computed when used instead of
/// tabulated (a huge downscale, as of a padded extreme image, has kernels of many thousand taps).
const TABLE_LIMIT: usize = 1 << 22;

/// One output pixel's kernel along an axis (Pillow's `precompute_coeffs`): the first input index,
/// the number of taps, the centre and the sum of the unnormalised weights.
struct Kernel {
    start: usize,
    len: usize,
    center: f64,
    total: f64,
}

/// The kernels of one pass, for output indices `first..first + count`, each split into the taps
/// that fall on the image (`image[i]`, a range of tap indices) and the sum of the fixed-point
/// weights of those that fall on the background canvas.
struct Axis {
    filter: Filter,
    /// `1 / filterscale`.
    ss: f64,
    /// The sizes are equal: Pillow skips the pass; one tap of weight one gives the same bytes.
    unit: bool,
    kernels: Vec<Kernel>,
    /// The fixed-point weights of every kernel's taps on the image, one kernel after the other,
    /// with each kernel's offset, when not too many.
    table: Option<(Vec<i32>, Vec<usize>)>,
    image: Vec<std::ops::Range<usize>>,
    background: Vec<i32>,
    total: Vec<i32>,
}

impl Axis {
    /// Kernels from `in_size` to `out_size` for output indices `first..first + count`; the image
    /// spans `(offset, length)` of the input axis. Weights are tabulated up to `table_limit`.
    fn new(
        (in_size, out_size): (usize, usize),
        (first, count): (usize, usize),
        (offset, length): (usize, usize),
        filter: Filter,
        table_limit: usize,
    ) -> Self {
        let unit = in_size == out_size;
        let scale = in_size as f64 / out_size as f64;
        let filterscale = scale.max(1.0);
        let support = filter.support() * filterscale;
        let ss = 1.0 / filterscale;
        let kernels: Vec<Kernel> = (first..first + count)
            .map(|xx| {
                if unit {
                    return Kernel {
                        start: xx,
                        len: 1,
                        center: 0.0,
                        total: 0.0,
                    };
                }
                let center = (xx as f64 + 0.5) * scale;
                // Pillow truncates towards zero with a C cast.
                let xmin = ((center - support + 0.5) as i64).clamp(0, in_size as i64) as usize;
                let xmax =
                    ((center + support + 0.5) as i64).clamp(xmin as i64, in_size as i64) as usize;
                let mut total = 0.0;
                for x in xmin..xmax {
                    total += filter.weight((x as f64 - center + 0.5) * ss);
                }
                Kernel {
                    start: xmin,
                    len: xmax - xmin,
                    center,
                    total,
                }
            })
            .collect();
        let mut axis = Axis {
            filter,
            ss,
            unit,
            kernels,
            table: None,
            image: Vec::with_capacity(count),
            background: Vec::with_capacity(count),
            total: Vec::with_capacity(count),
        };
        for k in &axis.kernels {
            let lo = offset.saturating_sub(k.start).min(k.len);
            let hi = (offset + length).saturating_sub(k.start).clamp(lo, k.len);
            axis.image.push(lo..hi);
        }
        let taps: usize = axis.image.iter().map(|r| r.len()).sum();
        let tabulate = taps <= table_limit;
        let mut table = Vec::with_capacity(if tabulate { taps } else { 0 });
        let mut offsets = Vec::with_capacity(if tabulate { count } else { 0 });
        for i in 0..count {
            let inside = axis.image[i].clone();
            if tabulate {
                offsets.push(table.len());
            }
            let (mut all, mut on_image) = (0i32, 0i32);
            for t in 0..axis.kernels[i].len {
                let w = axis.compute(i, t);
                all += w;
                if inside.contains(&t) {
                    on_image += w;
                    if tabulate {
                        table.push(w);
                    }
                }
            }
            axis.background.push(all - on_image);
            axis.total.push(all);
        }
        if tabulate {
            axis.table = Some((table, offsets));
        }
        axis
    }

    /// Pillow's `normalize_coeffs_8bpc` of tap `t` of kernel `i`.
    fn compute(&self, i: usize, t: usize) -> i32 {
        if self.unit {
            return 1 << PRECISION_BITS;
        }
        let k = &self.kernels[i];
        let x = k.start + t;
        let w = self.filter.weight((x as f64 - k.center + 0.5) * self.ss);
        let w = if k.total != 0.0 { w / k.total } else { w };
        let scaled = w * (1u32 << PRECISION_BITS) as f64;
        if w < 0.0 {
            (scaled - 0.5) as i32
        } else {
            (scaled + 0.5) as i32
        }
    }

    /// Weight `t` of kernel `i`, a tap on the image.
    #[inline]
    fn weight(&self, i: usize, t: usize) -> i32 {
        match &self.table {
            Some((table, offsets)) => table[offsets[i] + t - self.image[i].start],
            None => self.compute(i, t),
        }
    }

    /// The weights of kernel `i`'s taps on the image, from the table or computed into `scratch`.
    fn image_weights<'a>(&'a self, i: usize, scratch: &'a mut Vec<i32>) -> &'a [i32] {
        let taps = self.image[i].clone();
        match &self.table {
            Some((table, offsets)) => &table[offsets[i]..offsets[i] + taps.len()],
            None => {
                scratch.clear();
                scratch.extend(taps.map(|t| self.compute(i, t)));
                scratch
            }
        }
    }

    /// The output indices whose kernels touch the image: a contiguous range (kernels move
    /// monotonically), empty when none does.
    fn touching(&self) -> std::ops::Range<usize> {
        let first = self.image.iter().position(|r| !r.is_empty());
        let last = self.image.iter().rposition(|r| !r.is_empty());
        match (first, last) {
            (Some(a), Some(b)) => a..b + 1,
            _ => 0..0,
        }
    }
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

/// An RGB image placed on a larger canvas of one colour, as LLaVA's `expand2square` builds it,
/// without building it: the canvas's pixels are the image's where it lies and `background`
/// elsewhere.
#[derive(Debug, Clone, Copy)]
pub struct Canvas<'a> {
    /// The image's interleaved RGB pixels, `width * height * 3` bytes.
    pub pixels: &'a [u8],
    /// The image's `(width, height)`.
    pub image_size: (usize, usize),
    /// The canvas's `(width, height)`.
    pub size: (usize, usize),
    /// The canvas position of the image's top-left pixel.
    pub offset: (usize, usize),
    /// The canvas colour around the image.
    pub background: [u8; 3],
}

impl<'a> Canvas<'a> {
    /// The image alone: a canvas of the image's own size.
    pub fn plain(pixels: &'a [u8], (width, height): (usize, usize)) -> Self {
        Canvas {
            pixels,
            image_size: (width, height),
            size: (width, height),
            offset: (0, 0),
            background: [0; 3],
        }
    }
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
    resize_canvas(
        &Canvas::plain(src, (width, height)),
        (out_width, out_height),
        region,
        filter,
    )
}

/// Resizes a [`Canvas`] to `out_width` x `out_height` as Pillow resizes the materialised canvas,
/// returning only the pixels of `region`: the same bytes, at a cost set by the image and the region
/// rather than by the canvas or the whole output.
///
/// A sizes-equal axis is copied, as Pillow skips that pass. The work is done in Pillow's order
/// (horizontal pass rounded to 8 bits, then vertical) with the same 32-bit integer sums; a
/// background tap adds `background * weight`, so taps off the image are summed per kernel once. A
/// column whose kernel misses the image is the background's value on every row; only the columns
/// that touch the image are computed row by row, each image row once, kept in a ring as deep as
/// the longest vertical kernel's stretch of image rows.
///
/// Panics if the region is not inside the output or `pixels` does not match `image_size`.
pub fn resize_canvas(
    canvas: &Canvas<'_>,
    out_size: (usize, usize),
    region: Region,
    filter: Filter,
) -> Vec<u8> {
    resize_canvas_tabulating(canvas, out_size, region, filter, TABLE_LIMIT)
}

/// [`resize_canvas`] tabulating at most `table_limit` weights per pass.
fn resize_canvas_tabulating(
    canvas: &Canvas<'_>,
    (out_width, out_height): (usize, usize),
    region: Region,
    filter: Filter,
    table_limit: usize,
) -> Vec<u8> {
    let (iw, ih) = canvas.image_size;
    let (cw, ch) = canvas.size;
    let (ox, oy) = canvas.offset;
    assert_eq!(canvas.pixels.len(), iw * ih * 3, "RGB buffer size");
    assert!(
        ox + iw <= cw && oy + ih <= ch,
        "the image lies inside the canvas"
    );
    assert!(
        region.left + region.width <= out_width && region.top + region.height <= out_height,
        "region inside the output"
    );
    let bg = canvas.background.map(i32::from);
    let horizontal = Axis::new(
        (cw, out_width),
        (region.left, region.width),
        (ox, iw),
        filter,
        table_limit,
    );
    let vertical = Axis::new(
        (ch, out_height),
        (region.top, region.height),
        (oy, ih),
        filter,
        table_limit,
    );

    // The horizontal pass of a background row, per region column; also the value of every row in
    // a column whose kernel misses the image.
    let bg_row: Vec<u8> = horizontal
        .total
        .iter()
        .flat_map(|&t| bg.map(|b| clip8(HALF + b * t)))
        .collect();
    // Columns computed row by row: those whose kernels touch the image.
    let active = horizontal.touching();
    let active_len = active.len() * 3;
    // The horizontal pass of image row `y` (image coordinates), active columns only.
    // Per active column: the first image pixel of its taps, their background weight, and their
    // weights (a range of the table, or computed per row when the table was too large).
    let columns: Vec<(usize, [i32; 3], std::ops::Range<usize>)> = active
        .clone()
        .map(|c| {
            let first = horizontal.kernels[c].start + horizontal.image[c].start - ox;
            let b = horizontal.background[c];
            let weights = match &horizontal.table {
                Some((_, offsets)) => offsets[c]..offsets[c] + horizontal.image[c].len(),
                None => 0..0,
            };
            (first, bg.map(|v| HALF + v * b), weights)
        })
        .collect();
    let mut scratch = Vec::new();
    let mut horizontal_row = |y: usize, out: &mut [u8]| {
        let line = &canvas.pixels[y * iw * 3..][..iw * 3];
        for ((c, (first, init, range)), px) in
            active.clone().zip(&columns).zip(out.chunks_exact_mut(3))
        {
            let weights = match &horizontal.table {
                Some((table, _)) => &table[range.clone()],
                None => horizontal.image_weights(c, &mut scratch),
            };
            // Pillow accumulates in 32-bit integers; so do we (the sums cannot overflow).
            let [mut r0, mut g0, mut b0] = *init;
            let pixels = &line[first * 3..][..weights.len() * 3];
            for (p, &w) in pixels.chunks_exact(3).zip(weights) {
                r0 += p[0] as i32 * w;
                g0 += p[1] as i32 * w;
                b0 += p[2] as i32 * w;
            }
            px[0] = clip8(r0);
            px[1] = clip8(g0);
            px[2] = clip8(b0);
        }
    };

    // Vertical pass, output row by output row. The image rows a kernel uses are a range whose ends
    // only move forward, so each is computed once, into a ring as deep as the longest range.
    let span = |r: usize| {
        let k = &vertical.kernels[r];
        let taps = &vertical.image[r];
        k.start + taps.start..k.start + taps.end
    };
    let depth = (0..region.height).map(|r| span(r).len()).max().unwrap_or(0);
    let mut ring = vec![0u8; depth * active_len];
    let mut next = 0; // the next canvas row the ring has not seen
    let mut acc = vec![0i32; active_len];
    let row_len = region.width * 3;
    let mut out = vec![0u8; region.height * row_len];
    for (r, dst) in out
        .chunks_exact_mut(row_len.max(1))
        .enumerate()
        .take(region.height)
    {
        // Columns that miss the image: the background row's horizontal pass times all weights.
        let t = vertical.total[r];
        let (before, rest) = dst.split_at_mut(active.start * 3);
        let after = &mut rest[active_len..];
        let bg_after = &bg_row[active.end * 3..];
        for (d, &b) in before
            .iter_mut()
            .zip(&bg_row)
            .chain(after.iter_mut().zip(bg_after))
        {
            *d = clip8(HALF + b as i32 * t);
        }
        if active.is_empty() {
            continue;
        }
        // Active columns: the background rows' share, then the image rows'.
        let b = vertical.background[r];
        if b == 0 {
            acc.fill(HALF);
        } else {
            for (a, &v) in acc.iter_mut().zip(&bg_row[active.start * 3..]) {
                *a = HALF + v as i32 * b;
            }
        }
        let rows = span(r);
        next = next.max(rows.start);
        while next < rows.end {
            horizontal_row(
                next - oy,
                &mut ring[next % depth * active_len..][..active_len],
            );
            next += 1;
        }
        let start = vertical.kernels[r].start;
        for y in rows {
            let w = vertical.weight(r, y - start);
            // Row by row, so that the inner loop runs over contiguous bytes and vectorises.
            let line = &ring[y % depth * active_len..][..active_len];
            for (a, &v) in acc.iter_mut().zip(line) {
                *a += v as i32 * w;
            }
        }
        for (d, &a) in dst[active.start * 3..][..active_len].iter_mut().zip(&acc) {
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
    fn computed_weights_equal_tabulated_ones() {
        let src: Vec<u8> = (0..9 * 40 * 3).map(|i| ((i * 7919) % 256) as u8).collect();
        for filter in [Filter::Bicubic, Filter::Lanczos, Filter::Hamming] {
            for (size, offset, out) in [
                ((9, 40), (0, 0), (5, 17)),
                ((40, 40), (15, 0), (13, 13)),
                ((60, 41), (3, 1), (70, 9)),
            ] {
                let canvas = Canvas {
                    pixels: &src,
                    image_size: (9, 40),
                    size,
                    offset,
                    background: [200, 10, 99],
                };
                let region = full(out.0, out.1);
                assert_eq!(
                    resize_canvas_tabulating(&canvas, out, region, filter, 0),
                    resize_canvas(&canvas, out, region, filter),
                    "{filter:?} {size:?} {offset:?} {out:?}"
                );
            }
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
