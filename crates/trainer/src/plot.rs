//! The loss curve a run leaves next to its metrics (`loss.png`): loss per optimizer step on a
//! labelled grid, drawn with the `image` crate and a 3 x 5 pixel font for the tick labels, so that
//! no font files or plotting stack are needed.

use std::path::Path;

use image::{Rgb, RgbImage};

const WIDTH: u32 = 720;
const HEIGHT: u32 = 420;
const LEFT: u32 = 70;
const RIGHT: u32 = 20;
const TOP: u32 = 30;
const BOTTOM: u32 = 50;
const SCALE: u32 = 2;

const WHITE: Rgb<u8> = Rgb([255, 255, 255]);
const GRID: Rgb<u8> = Rgb([225, 225, 225]);
const AXIS: Rgb<u8> = Rgb([60, 60, 60]);
const LINE: Rgb<u8> = Rgb([31, 119, 180]);

/// Glyphs of a 3 x 5 font, one row per string, `#` lit.
fn glyph(c: char) -> Option<[&'static str; 5]> {
    Some(match c {
        '0' => ["###", "#.#", "#.#", "#.#", "###"],
        '1' => [".#.", "##.", ".#.", ".#.", "###"],
        '2' => ["###", "..#", "###", "#..", "###"],
        '3' => ["###", "..#", "###", "..#", "###"],
        '4' => ["#.#", "#.#", "###", "..#", "..#"],
        '5' => ["###", "#..", "###", "..#", "###"],
        '6' => ["###", "#..", "###", "#.#", "###"],
        '7' => ["###", "..#", "..#", "..#", "..#"],
        '8' => ["###", "#.#", "###", "#.#", "###"],
        '9' => ["###", "#.#", "###", "..#", "###"],
        '.' => ["...", "...", "...", "...", ".#."],
        '-' => ["...", "...", "###", "...", "..."],
        'e' => ["...", "###", "#.#", "##.", "###"],
        'l' => ["#..", "#..", "#..", "#..", "###"],
        'o' => ["...", "###", "#.#", "#.#", "###"],
        's' => ["...", "###", "##.", "..#", "###"],
        't' => [".#.", "###", ".#.", ".#.", ".##"],
        'p' => ["...", "###", "#.#", "###", "#.."],
        ' ' => ["...", "...", "...", "...", "..."],
        _ => return None,
    })
}

fn text(image: &mut RgbImage, x: u32, y: u32, s: &str) {
    for (i, c) in s.chars().enumerate() {
        let Some(rows) = glyph(c) else { continue };
        for (dy, row) in rows.iter().enumerate() {
            for (dx, bit) in row.chars().enumerate() {
                if bit != '#' {
                    continue;
                }
                for sy in 0..SCALE {
                    for sx in 0..SCALE {
                        let px = x + (i as u32 * 4 + dx as u32) * SCALE + sx;
                        let py = y + dy as u32 * SCALE + sy;
                        if px < image.width() && py < image.height() {
                            image.put_pixel(px, py, AXIS);
                        }
                    }
                }
            }
        }
    }
}

fn text_width(s: &str) -> u32 {
    s.chars().count() as u32 * 4 * SCALE
}

/// About `n` round tick values covering `lo..=hi`.
fn ticks(lo: f64, hi: f64, n: usize) -> Vec<f64> {
    let span = (hi - lo).max(1e-12);
    let raw = span / n as f64;
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * magnitude)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * magnitude);
    let first = (lo / step).ceil() * step;
    (0..)
        .map(|i| first + i as f64 * step)
        .take_while(|v| *v <= hi + step * 1e-9)
        .collect()
}

fn label(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v.fract().abs() < 1e-9 && v.abs() < 1e7 {
        format!("{v:.0}")
    } else if v.abs() >= 1e7 || v.abs() < 0.01 {
        format!("{v:.0e}")
    } else {
        format!("{v:.2}")
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_string()
    }
}

fn line(image: &mut RgbImage, (x0, y0): (f64, f64), (x1, y1): (f64, f64), color: Rgb<u8>) {
    let steps = ((x1 - x0).abs().max((y1 - y0).abs()).ceil() as usize).max(1);
    for i in 0..=steps {
        let t = i as f64 / steps as f64;
        let (x, y) = (x0 + (x1 - x0) * t, y0 + (y1 - y0) * t);
        for (dx, dy) in [(0.0, 0.0), (0.0, 1.0)] {
            let (px, py) = ((x + dx).round() as i64, (y + dy).round() as i64);
            if px >= 0 && py >= 0 && (px as u32) < image.width() && (py as u32) < image.height() {
                image.put_pixel(px as u32, py as u32, color);
            }
        }
    }
}

/// Draws the loss of each `(step, loss)` point. Non-finite losses are left out.
pub fn loss_curve(points: &[(usize, f64)]) -> RgbImage {
    let mut image = RgbImage::from_pixel(WIDTH, HEIGHT, WHITE);
    let points: Vec<(f64, f64)> = points
        .iter()
        .filter(|(_, l)| l.is_finite())
        .map(|&(s, l)| (s as f64, l))
        .collect();
    let frame = Frame::of(&points);
    draw_grid(&mut image, &frame);
    draw_axes(&mut image);
    draw_curve(&mut image, &frame, &points);
    image
}

/// The ranges of steps and losses the plot area spans.
struct Frame {
    x_lo: f64,
    x_hi: f64,
    y_lo: f64,
    y_hi: f64,
}

impl Frame {
    /// The ranges that hold `points` (sorted by step): steps from the first (or 1) to the last
    /// (or 2), losses from zero to the highest.
    fn of(points: &[(f64, f64)]) -> Self {
        let (x_lo, x_hi) = (
            points.first().map_or(0.0, |p| p.0.min(1.0)),
            points.last().map_or(1.0, |p| p.0.max(2.0)),
        );
        let y_hi = points
            .iter()
            .map(|p| p.1)
            .fold(f64::MIN, f64::max)
            .max(1e-6);
        // Cross-entropy is never negative: the axis starts at zero so falls read true to scale.
        Frame {
            x_lo,
            x_hi,
            y_lo: 0.0,
            y_hi,
        }
    }

    /// The pixel of step `x` and loss `y`.
    fn to_px(&self, x: f64, y: f64) -> (f64, f64) {
        let (pw, ph) = (
            (WIDTH - LEFT - RIGHT) as f64,
            (HEIGHT - TOP - BOTTOM) as f64,
        );
        (
            LEFT as f64 + (x - self.x_lo) / (self.x_hi - self.x_lo) * pw,
            TOP as f64 + (1.0 - (y - self.y_lo) / (self.y_hi - self.y_lo)) * ph,
        )
    }
}

/// The grid lines at round losses and steps, with their labels.
fn draw_grid(image: &mut RgbImage, frame: &Frame) {
    for v in ticks(frame.y_lo, frame.y_hi, 6) {
        let (_, y) = frame.to_px(frame.x_lo, v);
        line(image, (LEFT as f64, y), ((WIDTH - RIGHT) as f64, y), GRID);
        let s = label(v);
        text(
            image,
            LEFT.saturating_sub(text_width(&s) + 6),
            (y as u32).saturating_sub(5),
            &s,
        );
    }
    for v in ticks(frame.x_lo, frame.x_hi, 8) {
        let (x, _) = frame.to_px(v, frame.y_lo);
        line(image, (x, TOP as f64), (x, (HEIGHT - BOTTOM) as f64), GRID);
        let s = label(v);
        text(
            image,
            (x as u32).saturating_sub(text_width(&s) / 2),
            HEIGHT - BOTTOM + 8,
            &s,
        );
    }
}

/// The two axes and their names.
fn draw_axes(image: &mut RgbImage) {
    let (x0, y0) = (LEFT as f64, (HEIGHT - BOTTOM) as f64);
    line(image, (x0, TOP as f64), (x0, y0), AXIS);
    line(image, (x0, y0), ((WIDTH - RIGHT) as f64, y0), AXIS);
    text(image, LEFT, 10, "loss");
    text(
        image,
        WIDTH - RIGHT - text_width("step"),
        HEIGHT - 16,
        "step",
    );
}

/// The loss curve through `points`; a single point as a short dash.
fn draw_curve(image: &mut RgbImage, frame: &Frame, points: &[(f64, f64)]) {
    for pair in points.windows(2) {
        line(
            image,
            frame.to_px(pair[0].0, pair[0].1),
            frame.to_px(pair[1].0, pair[1].1),
            LINE,
        );
    }
    if let [only] = points {
        let (x, y) = frame.to_px(only.0, only.1);
        line(image, (x - 2.0, y), (x + 2.0, y), LINE);
    }
}

/// Reads `metrics.jsonl` and writes its loss curve to `png` (atomically).
pub fn write_loss_curve(metrics: &Path, png: &Path) -> Result<(), String> {
    let text =
        std::fs::read_to_string(metrics).map_err(|e| format!("{}: {e}", metrics.display()))?;
    let points: Vec<(usize, f64)> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| Some((v.get("step")?.as_u64()? as usize, v.get("loss")?.as_f64()?)))
        .collect();
    let image = loss_curve(&points);
    let mut bytes = Vec::new();
    image
        .write_to(
            &mut std::io::Cursor::new(&mut bytes),
            image::ImageFormat::Png,
        )
        .map_err(|e| format!("{}: {e}", png.display()))?;
    foundation::write_atomic(png, &bytes).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_cover_the_range() {
        assert_eq!(ticks(0.0, 6.5, 6), [0.0, 2.0, 4.0, 6.0]);
        assert_eq!(ticks(1.0, 100.0, 4), [50.0, 100.0]);
        assert_eq!(label(0.25), "0.25");
        assert_eq!(label(2.0), "2");
        assert_eq!(label(0.5), "0.5");
        assert_eq!(label(1200.0), "1200");
        assert_eq!(label(0.001), "1e-3");
    }

    #[test]
    fn the_curve_is_drawn_inside_the_plot_and_falls() {
        let points: Vec<(usize, f64)> = (1..=50).map(|s| (s, 6.0 / s as f64)).collect();
        let image = loss_curve(&points);
        assert_eq!(image.dimensions(), (WIDTH, HEIGHT));
        let blue: Vec<(u32, u32)> = image
            .enumerate_pixels()
            .filter(|(_, _, p)| **p == LINE)
            .map(|(x, y, _)| (x, y))
            .collect();
        assert!(blue.len() > 300, "{}", blue.len());
        assert!(
            blue.iter()
                .all(|&(x, y)| x >= LEFT && (TOP - 1..=HEIGHT - BOTTOM + 1).contains(&y))
        );
        // The left end of the line is high (small y), the right end low.
        let leftmost = blue.iter().min_by_key(|p| p.0).unwrap();
        let rightmost = blue.iter().max_by_key(|p| p.0).unwrap();
        assert!(leftmost.1 < rightmost.1);
    }

    #[test]
    fn empty_and_single_point_runs_still_draw() {
        assert_eq!(loss_curve(&[]).dimensions(), (WIDTH, HEIGHT));
        let one = loss_curve(&[(1, 2.0)]);
        assert!(one.pixels().any(|p| *p == LINE));
    }
}
