//! Random training inputs shaped as the Python reference shapes them: `<bos>`, one image's tokens,
//! random text; either one fixed batch, or micro-batches whose lengths spread as the 665K mix's.

use tch::{Device, Kind, Tensor};

use super::steps::{PHASE_STEPS, TrainShape};

/// One step's inputs on the device.
pub struct StepInputs {
    /// Token ids, `[rows, len]`.
    pub ids: Tensor,
    /// Labels (`-100` where there is no loss), as `ids`.
    pub labels: Tensor,
    /// One image per sample that has one.
    pub pixels: Option<Tensor>,
    /// Positions and segments of packed rows.
    pub packing: Option<llava::gemma_lm::Packing>,
    /// Tokens that are not padding.
    pub real: usize,
    /// Token slots, padding included.
    pub slots: usize,
}

/// What random inputs for a model are drawn with.
pub struct Draw {
    /// Tokens one image becomes.
    pub per_image: usize,
    /// The id of the image token.
    pub image_token: i64,
    /// Text ids are drawn below this.
    pub vocab: i64,
    /// The image side in pixels.
    pub side: i64,
    /// The dtype of the pixels.
    pub kind: Kind,
    /// Where the inputs go.
    pub device: Device,
}

impl Draw {
    /// The inputs the steps of `shape` cycle through: with `length_mix`, one micro-batch per
    /// step (the warm-up, timed and phase steps); else one batch of `micro_batch` samples of
    /// `seq` tokens, the last `labelled` of each labelled.
    pub fn inputs(&self, shape: &TrainShape, labelled: usize) -> Vec<StepInputs> {
        if shape.length_mix {
            self.length_mix(shape)
        } else {
            vec![self.fixed(shape.micro_batch, shape.seq, labelled)]
        }
    }

    /// `batch` samples of `seq` tokens, each an image and random text, the last `labelled` tokens
    /// labelled.
    fn fixed(&self, batch: usize, seq: usize, labelled: usize) -> StepInputs {
        let (b, l) = (batch as i64, seq as i64);
        let ids = Tensor::randint(self.vocab, [b, l], (Kind::Int64, Device::Cpu));
        let _ = ids.narrow(1, 0, 1).fill_(2);
        let _ = ids
            .narrow(1, 1, self.per_image as i64)
            .fill_(self.image_token);
        let labels = ids.copy();
        let _ = labels.narrow(1, 0, l - labelled as i64).fill_(-100);
        StepInputs {
            ids: ids.to_device(self.device),
            labels: labels.to_device(self.device),
            pixels: Some(Tensor::randn(
                [b, 3, self.side, self.side],
                (self.kind, self.device),
            )),
            packing: None,
            real: (b * l) as usize,
            slots: (b * l) as usize,
        }
    }

    /// Micro-batches of samples whose lengths spread as the 665K mix's (capped at `seq`, some
    /// text-only), in the recipe's modality- and length-grouped order; packed into rows of at
    /// most `seq` tokens with `pack`.
    fn length_mix(&self, shape: &TrainShape) -> Vec<StepInputs> {
        let pool = llava::data::mix::mix_like_shapes(4096, 0);
        let lengths: Vec<(usize, bool)> = pool
            .iter()
            .map(|s| (s.tokens(self.per_image).min(shape.seq), s.image))
            .collect();
        let signed: Vec<i64> = lengths
            .iter()
            .map(|&(n, image)| if image { n as i64 } else { -(n as i64) })
            .collect();
        let order = llava::data::modality_grouped(&signed, shape.micro_batch * 8, 0, 0);
        let needed = shape.warmup + shape.steps.max(1) + 2 * PHASE_STEPS;
        order
            .chunks_exact(shape.micro_batch)
            .take(needed)
            .map(|chunk| {
                let samples: Vec<(usize, bool)> = chunk.iter().map(|&i| lengths[i]).collect();
                self.mixed(&samples, shape.pack.then_some(shape.seq))
            })
            .collect()
    }

    /// A micro-batch of samples `(length, has image)`: `<bos>`, the image's tokens when it has
    /// one, random text labelled throughout; right-padded, or packed into rows of at most
    /// `budget`.
    fn mixed(&self, samples: &[(usize, bool)], budget: Option<usize>) -> StepInputs {
        let rows: Vec<Vec<usize>> = match budget {
            Some(budget) => {
                let lengths: Vec<usize> = samples.iter().map(|s| s.0).collect();
                llava::data::batch::balanced_rows(&lengths, budget)
            }
            None => (0..samples.len()).map(|i| vec![i]).collect(),
        };
        let width = |row: &Vec<usize>| -> usize { row.iter().map(|&i| samples[i].0).sum() };
        let len = rows.iter().map(width).max().unwrap_or(1);
        let mut columns = Columns::default();
        for row in &rows {
            for (segment, &i) in row.iter().enumerate() {
                let (n, image) = samples[i];
                columns.push_sample(self.sample(n, image), segment as i64);
                columns.images += usize::from(image);
            }
            columns.pad(len - width(row));
        }
        let shape = [rows.len() as i64, len as i64];
        let tensor = |v: &[i64]| Tensor::from_slice(v).view(shape).to_device(self.device);
        let (side, images) = (self.side, columns.images as i64);
        StepInputs {
            ids: tensor(&columns.ids),
            labels: tensor(&columns.labels),
            pixels: (images > 0)
                .then(|| Tensor::randn([images, 3, side, side], (self.kind, self.device))),
            packing: budget.map(|_| llava::gemma_lm::Packing {
                positions: tensor(&columns.positions),
                segments: tensor(&columns.segments),
            }),
            real: samples.iter().map(|s| s.0).sum(),
            slots: rows.len() * len,
        }
    }

    /// One sample of `n` tokens: `<bos>`, the image's tokens when it has one, random text; with
    /// its labels (every text token).
    fn sample(&self, n: usize, image: bool) -> (Vec<i64>, Vec<i64>) {
        let image_len = if image { self.per_image } else { 0 };
        let text = Tensor::randint(self.vocab, [n as i64], (Kind::Int64, Device::Cpu));
        let mut text = Vec::<i64>::try_from(&text).expect("ids");
        text[0] = 2;
        for t in text.iter_mut().skip(1).take(image_len) {
            *t = self.image_token;
        }
        let labels = text
            .iter()
            .enumerate()
            .map(|(p, &t)| if p <= image_len { -100 } else { t })
            .collect();
        (text, labels)
    }
}

/// The rows of a micro-batch being built, flattened.
#[derive(Default)]
struct Columns {
    ids: Vec<i64>,
    labels: Vec<i64>,
    positions: Vec<i64>,
    segments: Vec<i64>,
    images: usize,
}

impl Columns {
    /// Appends a sample's ids and labels as segment `segment` of the current row.
    fn push_sample(&mut self, (ids, labels): (Vec<i64>, Vec<i64>), segment: i64) {
        let n = ids.len();
        self.ids.extend(ids);
        self.labels.extend(labels);
        self.positions.extend(0..n as i64);
        self.segments.extend(std::iter::repeat_n(segment, n));
    }

    /// Ends the current row with `pad` slots of padding.
    fn pad(&mut self, pad: usize) {
        self.ids.extend(std::iter::repeat_n(0, pad));
        self.labels.extend(std::iter::repeat_n(-100, pad));
        self.positions.extend(std::iter::repeat_n(0, pad));
        self.segments.extend(std::iter::repeat_n(-1, pad));
    }
}
