//! Gemma 3's pan-and-scan: a long image is also shown as 2 to `max_num_crops` crops along its
//! long side, each resized as the whole image is (`Gemma3ImageProcessor.pan_and_scan`).

use image::RgbImage;

/// When and how finely to crop (`pan_and_scan_*` of `preprocessor_config.json`; transformers'
/// defaults are 256, 4 and 1.2).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PanAndScan {
    /// The smallest crop side, in pixels of the original image.
    pub min_crop_size: u32,
    /// The most crops per image.
    pub max_num_crops: u32,
    /// The aspect ratio (long side over short side) from which an image is cropped.
    pub min_ratio_to_activate: f64,
}

impl Default for PanAndScan {
    fn default() -> Self {
        PanAndScan {
            min_crop_size: 256,
            max_num_crops: 4,
            min_ratio_to_activate: 1.2,
        }
    }
}

impl PanAndScan {
    /// The crops' `(x, y, width, height)` in `image`'s pixels, left to right or top to bottom;
    /// none when the image is not long enough or the crops would be too small. The last crop is
    /// narrower when the side does not divide (numpy's slice stops at the edge).
    pub fn crop_boxes(&self, (width, height): (u32, u32)) -> Vec<(u32, u32, u32, u32)> {
        if width == 0 || height == 0 {
            return Vec::new();
        }
        let (long, short) = (width.max(height), width.min(height));
        if (long as f64 / short as f64) < self.min_ratio_to_activate {
            return Vec::new();
        }
        // Python's `int(math.floor(long / short + 0.5))`: the aspect ratio rounded half up.
        let by_ratio = (long as f64 / short as f64 + 0.5).floor() as u32;
        let by_size = long / self.min_crop_size.max(1);
        let crops = by_ratio.min(by_size).max(2).min(self.max_num_crops);
        if crops == 0 {
            return Vec::new();
        }
        let (across, down) = if width >= height {
            (crops, 1)
        } else {
            (1, crops)
        };
        let crop_w = width.div_ceil(across);
        let crop_h = height.div_ceil(down);
        if crop_w.min(crop_h) < self.min_crop_size {
            return Vec::new();
        }
        let mut boxes = Vec::with_capacity(crops as usize);
        for row in 0..down {
            for col in 0..across {
                let (x, y) = (col * crop_w, row * crop_h);
                if x >= width || y >= height {
                    continue;
                }
                boxes.push((x, y, crop_w.min(width - x), crop_h.min(height - y)));
            }
        }
        boxes
    }

    /// The crops of `image` (see [`crop_boxes`](Self::crop_boxes)).
    pub fn crops(&self, image: &RgbImage) -> Vec<RgbImage> {
        self.crop_boxes(image.dimensions())
            .into_iter()
            .map(|(x, y, w, h)| image::imageops::crop_imm(image, x, y, w, h).to_image())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn square_and_mildly_long_images_are_not_cropped() {
        let p = PanAndScan::default();
        assert!(p.crop_boxes((896, 896)).is_empty());
        assert!(p.crop_boxes((1000, 900)).is_empty());
        assert!(p.crop_boxes((0, 10)).is_empty());
    }

    #[test]
    fn crops_follow_the_aspect_ratio_within_their_bounds() {
        let p = PanAndScan::default();
        // 3:1 landscape: three crops of 400 x 400.
        assert_eq!(
            p.crop_boxes((1200, 400)),
            vec![(0, 0, 400, 400), (400, 0, 400, 400), (800, 0, 400, 400)]
        );
        // 1.3:1 rounds to 1, raised to the minimum of 2; 1300 / 2 = 650 each.
        assert_eq!(
            p.crop_boxes((1300, 1000)),
            vec![(0, 0, 650, 1000), (650, 0, 650, 1000)]
        );
        // A 10:1 portrait 100 px wide: its crops would be narrower than 256 px, so none.
        assert!(p.crop_boxes((100, 1001)).is_empty());
        // A portrait whose side does not divide: ceil(2050 / 4) = 513, the last crop 511 high.
        assert_eq!(
            p.crop_boxes((300, 2050)),
            vec![
                (0, 0, 300, 513),
                (0, 513, 300, 513),
                (0, 1026, 300, 513),
                (0, 1539, 300, 511)
            ]
        );
    }
}
