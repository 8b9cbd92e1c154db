//! A data file shaped like `llava_v1_5_mix665k.json`, for scale tests and benchmarks.
//!
//! The real mix (LLaVA-1.5, Table 7 of its paper) is 665K records from ten sources: LLaVA-Instruct
//! (158K long conversations about COCO images), ShareGPT (40K text-only, long), VQAv2, GQA and
//! OKVQA (many short question/answer turns per image, with the short-answer suffix), OCR-VQA,
//! A-OKVQA (multiple choice), TextCaps, RefCOCO and Visual Genome (region descriptions with box
//! coordinates). [`write_mix_like`] draws records of those kinds in those proportions, with turn
//! counts and lengths in the same ranges, so a file of 665,000 records is about 0.9 GB, and its
//! token lengths spread as the real mix's do (what padding and packing see). Seeded, streamed
//! straight to disk.

use std::io::{BufWriter, Write};
use std::path::Path;

use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};

use crate::{Error, Result};

/// The kinds of record in the mix, with their share of the 665K records (thousands).
const SOURCES: [(Source, u32); 7] = [
    (Source::Instruct, 158),
    (Source::ShareGpt, 40),
    (Source::ShortVqa, 164),
    (Source::OcrVqa, 80),
    (Source::Choice, 66),
    (Source::Caption, 22),
    (Source::Region, 135),
];

#[derive(Debug, Clone, Copy)]
enum Source {
    Instruct,
    ShareGpt,
    ShortVqa,
    OcrVqa,
    Choice,
    Caption,
    Region,
}

const WORDS: [&str; 48] = [
    "the",
    "a",
    "image",
    "shows",
    "person",
    "table",
    "with",
    "and",
    "of",
    "on",
    "in",
    "is",
    "there",
    "two",
    "red",
    "blue",
    "street",
    "car",
    "dog",
    "sitting",
    "next",
    "to",
    "large",
    "small",
    "white",
    "black",
    "building",
    "people",
    "food",
    "plate",
    "standing",
    "near",
    "water",
    "tree",
    "sign",
    "road",
    "window",
    "man",
    "woman",
    "holding",
    "green",
    "wooden",
    "several",
    "background",
    "front",
    "field",
    "sky",
    "it",
];

/// Writes `records` records shaped like the 665K mix to `path` (seeded). Returns the bytes written.
pub fn write_mix_like(path: &Path, records: usize, seed: u64) -> Result<u64> {
    let file = std::fs::File::create(path).map_err(|e| Error::io(path, e))?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    let mut rng = StdRng::seed_from_u64(seed);
    let total: u32 = SOURCES.iter().map(|s| s.1).sum();
    let io = |e| Error::io(path, e);
    out.write_all(b"[\n").map_err(io)?;
    let mut written = 2u64;
    for i in 0..records {
        let source = pick_source(&mut rng, total);
        let record = record(&mut rng, source, i);
        let text = serde_json::to_string(&record).expect("records serialise");
        out.write_all(text.as_bytes()).map_err(io)?;
        let sep: &[u8] = if i + 1 < records { b",\n" } else { b"\n" };
        out.write_all(sep).map_err(io)?;
        written += (text.len() + sep.len()) as u64;
    }
    out.write_all(b"]\n").map_err(io)?;
    out.flush().map_err(io)?;
    Ok(written + 2)
}

/// The shape of one record drawn as [`write_mix_like`] draws them: whether it has an image, its
/// turns and its words (what its token length follows).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordShape {
    /// Whether the record has an image.
    pub image: bool,
    /// Turns of the conversation.
    pub turns: usize,
    /// Whitespace-separated words over all turns.
    pub words: usize,
}

impl RecordShape {
    /// Approximate tokens after Gemma's chat template: `<bos>`, the image's tokens, about 1.3
    /// tokens per English word (SentencePiece with Gemma's 256K vocabulary) and 5 tokens of
    /// template per turn (`<start_of_turn>user\n … <end_of_turn>\n`).
    pub fn tokens(&self, image_tokens: usize) -> usize {
        1 + if self.image { image_tokens } else { 0 }
            + (self.words * 13).div_ceil(10)
            + 5 * self.turns
    }
}

/// The shapes of `records` records drawn as [`write_mix_like`] draws them (same seed, same
/// records), without writing them: the length distribution of the 665K mix, for benchmarks.
pub fn mix_like_shapes(records: usize, seed: u64) -> Vec<RecordShape> {
    let mut rng = StdRng::seed_from_u64(seed);
    let total: u32 = SOURCES.iter().map(|s| s.1).sum();
    (0..records)
        .map(|i| {
            let source = pick_source(&mut rng, total);
            let record = record(&mut rng, source, i);
            let turns = record["conversations"].as_array().map_or(&[][..], |v| v);
            RecordShape {
                image: record.get("image").is_some(),
                turns: turns.len(),
                words: turns
                    .iter()
                    .filter_map(|t| t["value"].as_str())
                    .map(|v| v.split_whitespace().count())
                    .sum(),
            }
        })
        .collect()
}

fn pick_source(rng: &mut StdRng, total: u32) -> Source {
    let mut pick = rng.random_range(0..total);
    SOURCES
        .iter()
        .find(|(_, n)| {
            if pick < *n {
                true
            } else {
                pick -= n;
                false
            }
        })
        .map(|s| s.0)
        .expect("a source is picked")
}

fn words(rng: &mut StdRng, range: std::ops::Range<usize>) -> String {
    let n = rng.random_range(range);
    let mut s = String::with_capacity(n * 6);
    for i in 0..n {
        if i > 0 {
            s.push(' ');
        }
        s.push_str(WORDS.choose(rng).expect("words"));
    }
    s
}

fn record(rng: &mut StdRng, source: Source, i: usize) -> serde_json::Value {
    use serde_json::json;
    let mut turns = Vec::new();
    let pair = |turns: &mut Vec<serde_json::Value>, q: String, a: String| {
        turns.push(json!({"from": "human", "value": q}));
        turns.push(json!({"from": "gpt", "value": a}));
    };
    let (id, image) = match source {
        Source::Instruct => {
            let n = rng.random_range(1..=6);
            for _ in 0..n {
                let q = format!("What {}?", words(rng, 5..15));
                let a = format!("{}.", words(rng, 15..160));
                pair(&mut turns, q, a);
            }
            (
                format!("{i:012}"),
                Some(format!("coco/train2017/{i:012}.jpg")),
            )
        }
        Source::ShareGpt => {
            let n = rng.random_range(1..=5);
            for _ in 0..n {
                let q = words(rng, 10..120);
                let a = words(rng, 60..420);
                pair(&mut turns, q, a);
            }
            (format!("sharegpt_{i}"), None)
        }
        Source::ShortVqa => {
            let n = rng.random_range(2..=12);
            for _ in 0..n {
                let q = format!(
                    "What is {}?\nAnswer the question using a single word or phrase.",
                    words(rng, 3..9)
                );
                let a = words(rng, 1..3);
                pair(&mut turns, q, a);
            }
            (
                format!("{}", 100_000 + i),
                Some(format!("gqa/images/{i}.jpg")),
            )
        }
        Source::OcrVqa => {
            let n = rng.random_range(3..=6);
            for _ in 0..n {
                let q = format!("Who wrote this book? {}", words(rng, 0..4));
                let a = words(rng, 1..5);
                pair(&mut turns, q, a);
            }
            (
                format!("{i:010}"),
                Some(format!("ocr_vqa/images/{i:010}.jpg")),
            )
        }
        Source::Choice => {
            let options: Vec<String> = (0..4)
                .map(|k| format!("{}. {}", (b'A' + k) as char, words(rng, 2..3)))
                .collect();
            let q = format!(
                "{}?\n{}\nAnswer with the option's letter from the given choices directly.",
                words(rng, 6..14),
                options.join("\n")
            );
            let a = ((b'A' + rng.random_range(0..4u8)) as char).to_string();
            pair(&mut turns, q, a);
            (
                format!("aokvqa_{i}"),
                Some(format!("coco/train2017/{i:012}.jpg")),
            )
        }
        Source::Caption => {
            let q = "Provide a one-sentence caption for the provided image.".to_string();
            let a = format!("{}.", words(rng, 8..20));
            pair(&mut turns, q, a);
            (
                format!("textcaps_{i}"),
                Some(format!("textvqa/train_images/{i}.jpg")),
            )
        }
        Source::Region => {
            let n = rng.random_range(4..=16);
            for _ in 0..n {
                let b: Vec<f64> = (0..4)
                    .map(|_| (rng.random_range(0..100) as f64) / 100.0)
                    .collect();
                let q = format!(
                    "Please provide a short description for this region: [{:.2}, {:.2}, {:.2}, {:.2}]",
                    b[0], b[1], b[2], b[3]
                );
                let a = words(rng, 2..8);
                pair(&mut turns, q, a);
            }
            (format!("vg_{i}"), Some(format!("vg/VG_100K/{i}.jpg")))
        }
    };
    if let (Some(first), true) = (turns.first_mut(), image.is_some()) {
        let q = first["value"].as_str().unwrap_or_default().to_string();
        first["value"] = json!(format!("<image>\n{q}"));
    }
    match image {
        Some(image) => json!({"id": id, "image": image, "conversations": turns}),
        None => json!({"id": id, "model": "", "conversations": turns}),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shapes_are_the_written_records() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mix.json");
        write_mix_like(&path, 300, 5).unwrap();
        let records: Vec<serde_json::Value> =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let shapes = mix_like_shapes(300, 5);
        for (r, s) in records.iter().zip(&shapes) {
            assert_eq!(r.get("image").is_some(), s.image);
            assert_eq!(r["conversations"].as_array().unwrap().len(), s.turns);
        }
        let text_only = shapes.iter().filter(|s| !s.image).count();
        assert!(text_only > 0 && text_only < 60, "{text_only}");
    }

    #[test]
    fn a_mix_like_file_reads_whole_and_is_seeded() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.json"), dir.path().join("b.json"));
        let bytes = write_mix_like(&a, 2000, 7).unwrap();
        write_mix_like(&b, 2000, 7).unwrap();
        assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
        assert_eq!(std::fs::metadata(&a).unwrap().len(), bytes);
        let records = crate::read_records(&a).unwrap();
        assert_eq!(records.records.len(), 2000);
        assert!(records.bad.is_empty());
        let text_only = records
            .records
            .iter()
            .filter(|r| r.images.is_empty())
            .count();
        assert!((60..240).contains(&text_only), "{text_only} text-only");
        // About 1.3 KB a record, as the real file's 871 MB / 665K.
        let per = bytes as f64 / 2000.0;
        assert!((900.0..1800.0).contains(&per), "{per} bytes per record");
    }
}
