//! A built-in synthetic dataset: coloured shapes on a plain background, drawn at any resolution.
//!
//! Each image holds one to three shapes (circle, square, triangle) of distinct colours in distinct
//! slots (left, centre, right): the middle row of a 3 x 3 grid. Stage 1 gets captions; stage 2 gets questions of the kinds the
//! benchmarks ask: colour, shape, count, existence (yes/no as in POPE), left/right position and
//! multiple choice (letters as in ScienceQA). Answers are balanced within each kind, so they cannot
//! be guessed from the question alone, and the held-out split is written in LLaVA's question-file
//! format with a separate answer key. Everything is a function of the seed.

use std::path::{Path, PathBuf};

use image::{Rgb, RgbImage};
use rand::rngs::StdRng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::{Error, Result};

/// The shapes drawn.
pub const SHAPES: [&str; 3] = ["circle", "square", "triangle"];
/// The colours used, with their RGB values.
pub const COLORS: [(&str, [u8; 3]); 4] = [
    ("red", [220, 40, 40]),
    ("green", [40, 170, 60]),
    ("blue", [40, 70, 220]),
    ("yellow", [230, 200, 30]),
];
/// Slot names by horizontal position.
pub const SLOTS: [&str; 3] = ["left", "center", "right"];

/// The short-answer prompt suffix of LLaVA's evaluation.
pub const SHORT_ANSWER: &str = "Answer the question using a single word or phrase.";
/// The request for a short description in stage-2 conversations.
pub const DESCRIBE: &str = "Describe the image briefly.";
/// The multiple-choice prompt suffix of LLaVA's evaluation.
pub const MULTIPLE_CHOICE: &str =
    "Answer with the option's letter from the given choices directly.";

/// One shape in a scene.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Shape {
    /// Index into [`SHAPES`].
    pub kind: usize,
    /// Index into [`COLORS`].
    pub color: usize,
    /// Index into [`SLOTS`].
    pub slot: usize,
    /// Vertical centre, 0..1.
    pub y: f32,
    /// Half-size relative to the image side.
    pub radius: f32,
}

impl Shape {
    /// Horizontal centre, 0..1: the middle of the slot's third of the image, so that each shape
    /// sits in one cell of a 3 x 3 grid (and in one patch of a tower whose grid is 3 x 3).
    pub fn center_x(&self) -> f32 {
        (self.slot as f32 + 0.5) / 3.0
    }
}

/// A scene: what an image shows.
#[derive(Debug, Clone, PartialEq)]
pub struct Scene {
    /// The shapes, left to right.
    pub shapes: Vec<Shape>,
}

impl Scene {
    /// A random scene: 1-3 shapes of distinct colours and kinds in distinct slots.
    pub fn random(rng: &mut StdRng) -> Self {
        let n = rng.random_range(1..=3);
        let mut slots = [0, 1, 2];
        slots.shuffle(rng);
        let mut slots = slots[..n].to_vec();
        slots.sort_unstable();
        let mut colors = [0, 1, 2, 3];
        colors.shuffle(rng);
        let mut kinds = [0, 1, 2];
        kinds.shuffle(rng);
        let shapes = slots
            .iter()
            .enumerate()
            .map(|(i, &slot)| Shape {
                kind: kinds[i],
                color: colors[i],
                slot,
                // Little jitter: each shape fills its grid cell the same way, so a small random
                // tower's features tell shapes apart as clearly as colours.
                y: rng.random_range(0.49..0.51),
                radius: rng.random_range(0.145..0.155),
            })
            .collect();
        Scene { shapes }
    }

    /// Draws the scene at `size` x `size` pixels.
    pub fn render(&self, size: u32) -> RgbImage {
        let mut image = RgbImage::from_pixel(size, size, Rgb([235, 235, 235]));
        let s = size as f32;
        for shape in &self.shapes {
            let cx = shape.center_x() * s;
            let cy = shape.y * s;
            let r = (shape.radius * s).max(1.5);
            let color = Rgb(COLORS[shape.color].1);
            for py in 0..size {
                for px in 0..size {
                    let (x, y) = (px as f32 + 0.5 - cx, py as f32 + 0.5 - cy);
                    let inside = match shape.kind {
                        0 => x * x + y * y <= r * r,
                        1 => x.abs() <= r * 0.85 && y.abs() <= r * 0.85,
                        // Apex up: below the two slanted edges and above the base.
                        _ => y <= r * 0.8 && y >= -r && 2.0 * x.abs() <= (y + r) * 1.1,
                    };
                    if inside {
                        image.put_pixel(px, py, color);
                    }
                }
            }
        }
        image
    }

    /// A caption: "a red circle on the left and a blue square on the right."
    pub fn caption(&self) -> String {
        let parts: Vec<String> = self
            .shapes
            .iter()
            .map(|s| {
                let place = if s.slot == 1 {
                    "in the center".to_string()
                } else {
                    format!("on the {}", SLOTS[s.slot])
                };
                format!("a {} {} {place}", COLORS[s.color].0, SHAPES[s.kind])
            })
            .collect();
        let text = match parts.len() {
            1 => parts[0].clone(),
            2 => format!("{} and {}", parts[0], parts[1]),
            _ => format!("{}, {} and {}", parts[0], parts[1], parts[2]),
        };
        format!("{text}.")
    }
}

/// A question about a scene with its answer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Question {
    /// `color`, `shape`, `count`, `exist`, `position` or `choice`.
    pub kind: String,
    /// The question, including its answer-format suffix.
    pub text: String,
    /// The short answer.
    pub answer: String,
    /// The box `[x0, y0, x1, y1]` (fractions of the image side) of the shape the question is
    /// about, when it is about one that is there: where an explanation of the answer should look.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<[f32; 4]>,
}

impl Shape {
    /// The square around the shape, `[x0, y0, x1, y1]` as fractions of the image side.
    pub fn bounds(&self) -> [f32; 4] {
        let (x, y, r) = (self.center_x(), self.y, self.radius);
        [x - r, y - r, x + r, y + r]
    }
}

/// The question kinds, in the order [`Scene::question`] cycles through them.
pub const QUESTION_KINDS: [&str; 6] = ["color", "shape", "count", "exist", "position", "choice"];

impl Scene {
    /// A question of `kind` (an index into [`QUESTION_KINDS`]), or `None` when the scene cannot
    /// pose one (a left/right question needs a shape on a side).
    pub fn question(&self, kind: usize, rng: &mut StdRng) -> Option<Question> {
        let pick = *self.shapes.choose(rng)?;
        let short = |q: String, a: &str, subject: Option<&Shape>| Question {
            kind: QUESTION_KINDS[kind].into(),
            text: format!("{q}\n{SHORT_ANSWER}"),
            answer: a.into(),
            subject: subject.map(Shape::bounds),
        };
        match QUESTION_KINDS[kind] {
            "color" => Some(short(
                format!("What color is the {}?", SHAPES[pick.kind]),
                COLORS[pick.color].0,
                Some(&pick),
            )),
            "shape" => Some(short(
                format!("What shape is the {} object?", COLORS[pick.color].0),
                SHAPES[pick.kind],
                Some(&pick),
            )),
            "count" => Some(short(
                "How many shapes are in the image?".into(),
                &self.shapes.len().to_string(),
                None,
            )),
            "exist" => {
                // Half the questions ask about a shape that is there, half about one that is not.
                let (kind, color, answer, subject) = if rng.random_bool(0.5) {
                    (pick.kind, pick.color, "yes", Some(&pick))
                } else {
                    loop {
                        let (k, c) = (
                            rng.random_range(0..SHAPES.len()),
                            rng.random_range(0..COLORS.len()),
                        );
                        if !self.shapes.iter().any(|s| s.kind == k && s.color == c) {
                            break (k, c, "no", None);
                        }
                    }
                };
                Some(short(
                    format!(
                        "Is there a {} {} in the image?",
                        COLORS[color].0, SHAPES[kind]
                    ),
                    answer,
                    subject,
                ))
            }
            "position" => {
                let sided: Vec<&Shape> = self.shapes.iter().filter(|s| s.slot != 1).collect();
                let s = sided.choose(rng)?;
                Some(short(
                    format!("Is the {} on the left or on the right?", SHAPES[s.kind]),
                    SLOTS[s.slot],
                    Some(s),
                ))
            }
            _ => {
                let mut options: Vec<usize> = (0..COLORS.len()).collect();
                options.shuffle(rng);
                options.truncate(3);
                if !options.contains(&pick.color) {
                    let at = rng.random_range(0..3);
                    options[at] = pick.color;
                }
                let letters = ["A", "B", "C"];
                let listed: Vec<String> = options
                    .iter()
                    .enumerate()
                    .map(|(i, &c)| format!("{}. {}", letters[i], COLORS[c].0))
                    .collect();
                let answer = letters[options
                    .iter()
                    .position(|&c| c == pick.color)
                    .expect("inserted")];
                Some(Question {
                    kind: "choice".into(),
                    text: format!(
                        "What color is the {}?\n{}\n{MULTIPLE_CHOICE}",
                        SHAPES[pick.kind],
                        listed.join("\n")
                    ),
                    answer: answer.into(),
                    subject: Some(pick.bounds()),
                })
            }
        }
    }
}

/// Sizes of a synthetic dataset.
#[derive(Debug, Clone, PartialEq)]
pub struct SyntheticConfig {
    /// Seed of everything.
    pub seed: u64,
    /// Side of the images in pixels.
    pub image_size: u32,
    /// Training images (each gets a caption and `questions_per_image` questions).
    pub train_images: usize,
    /// Held-out images.
    pub eval_images: usize,
    /// Questions per image.
    pub questions_per_image: usize,
}

impl Default for SyntheticConfig {
    fn default() -> Self {
        SyntheticConfig {
            seed: 0,
            image_size: 64,
            train_images: 600,
            eval_images: 60,
            questions_per_image: 3,
        }
    }
}

/// Where the files of a written synthetic dataset are.
#[derive(Debug, Clone)]
pub struct SyntheticFiles {
    /// The image folder.
    pub images: PathBuf,
    /// Stage 1 records (captions).
    pub stage1: PathBuf,
    /// Stage 2 records (one question, or a description, per record).
    pub stage2: PathBuf,
    /// Held-out questions, LLaVA's question-file format (JSON lines).
    pub eval_questions: PathBuf,
    /// Held-out answers: `{"question_id", "answer", "category"}` per line.
    pub eval_answers: PathBuf,
}

impl SyntheticFiles {
    /// Where [`write`] puts a dataset under `dir` (for a reader of one another process wrote).
    pub fn in_dir(dir: &Path) -> Self {
        SyntheticFiles {
            images: dir.join("images"),
            stage1: dir.join("stage1.json"),
            stage2: dir.join("stage2.json"),
            eval_questions: dir.join("eval_questions.jsonl"),
            eval_answers: dir.join("eval_answers.jsonl"),
        }
    }
}

/// Writes a synthetic dataset under `dir`: `images/`, `stage1.json`, `stage2.json`,
/// `eval_questions.jsonl`, `eval_answers.jsonl`.
pub fn write(dir: &Path, config: &SyntheticConfig) -> Result<SyntheticFiles> {
    let images = dir.join("images");
    std::fs::create_dir_all(&images).map_err(|e| Error::io(&images, e))?;
    let mut rng = StdRng::seed_from_u64(config.seed);
    let mut stage1 = Vec::new();
    let mut stage2 = Vec::new();
    let mut questions = String::new();
    let mut answers = String::new();
    let mut kind_cursor = 0;
    let total = config.train_images + config.eval_images;
    for i in 0..total {
        let scene = Scene::random(&mut rng);
        let held_out = i >= config.train_images;
        let name = format!("{}_{i:06}.png", if held_out { "eval" } else { "train" });
        let path = images.join(&name);
        scene
            .render(config.image_size)
            .save(&path)
            .map_err(|e| Error::Format {
                path: path.clone(),
                message: e.to_string(),
            })?;
        let mut asked = Vec::new();
        while asked.len() < config.questions_per_image {
            if let Some(q) = scene.question(kind_cursor % QUESTION_KINDS.len(), &mut rng) {
                asked.push(q);
            }
            kind_cursor += 1;
        }
        if held_out {
            for (k, q) in asked.iter().enumerate() {
                let id = (i - config.train_images) * config.questions_per_image + k;
                questions.push_str(
                    &serde_json::json!({"question_id": id, "image": name, "text": q.text, "category": q.kind, "box": q.subject})
                        .to_string(),
                );
                questions.push('\n');
                answers.push_str(
                    &serde_json::json!({"question_id": id, "answer": q.answer, "category": q.kind})
                        .to_string(),
                );
                answers.push('\n');
            }
            continue;
        }
        stage1.push(serde_json::json!({
            "id": format!("synthetic_{i:06}"),
            "image": name,
            "conversations": [
                {"from": "human", "value": "Provide a brief description of the given image.\n<image>"},
                {"from": "gpt", "value": scene.caption()},
            ]
        }));
        // Stage 2 asks one thing per record, as the held-out questions are asked: in a
        // multi-turn conversation a two-layer model has to find the current question's object
        // among the earlier turns' words too, and it never learnt to (held-out 0.57 with three
        // questions per conversation, 0.93 with one each). Every other image also gets a short
        // description, whose words are each grounded in one image token, as LLaVA's mix holds
        // captioning turns.
        let mut record = |suffix: &str, prompt: &str, reply: &str| {
            stage2.push(serde_json::json!({
                "id": format!("synthetic_{i:06}_{suffix}"),
                "image": name,
                "conversations": [
                    {"from": "human", "value": format!("<image>\n{prompt}")},
                    {"from": "gpt", "value": reply},
                ]
            }));
        };
        if i % 2 == 0 {
            record("caption", DESCRIBE, &scene.caption());
        }
        for (k, q) in asked.iter().enumerate() {
            record(&format!("q{k}"), &q.text, &q.answer);
        }
    }
    let files = SyntheticFiles::in_dir(dir);
    let write =
        |path: &Path, text: String| std::fs::write(path, text).map_err(|e| Error::io(path, e));
    write(&files.stage1, serde_json::Value::Array(stage1).to_string())?;
    write(&files.stage2, serde_json::Value::Array(stage2).to_string())?;
    write(&files.eval_questions, questions)?;
    write(&files.eval_answers, answers)?;
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scenes_are_seeded_and_drawn_where_they_say() {
        let mut a = StdRng::seed_from_u64(9);
        let mut b = StdRng::seed_from_u64(9);
        let scene = Scene::random(&mut a);
        assert_eq!(scene, Scene::random(&mut b));
        let image = scene.render(96);
        for s in &scene.shapes {
            let (cx, cy) = ((s.center_x() * 96.0) as u32, (s.y * 96.0) as u32);
            assert_eq!(image.get_pixel(cx, cy).0, COLORS[s.color].1, "{s:?}");
        }
        assert_eq!(image.get_pixel(0, 0).0, [235, 235, 235]);
    }

    #[test]
    fn a_question_about_a_shape_carries_the_box_that_holds_it() {
        let mut rng = StdRng::seed_from_u64(3);
        for _ in 0..20 {
            let scene = Scene::random(&mut rng);
            let image = scene.render(96);
            for kind in 0..QUESTION_KINDS.len() {
                let Some(q) = scene.question(kind, &mut rng) else {
                    continue;
                };
                let Some([x0, y0, x1, y1]) = q.subject else {
                    assert!(q.kind == "count" || q.answer == "no", "{q:?}");
                    continue;
                };
                // Every pixel of the subject's colour lies in its box (shapes' colours differ).
                let shape = scene
                    .shapes
                    .iter()
                    .find(|s| s.bounds() == [x0, y0, x1, y1])
                    .expect("the box is a shape's");
                for (x, y, p) in image.enumerate_pixels() {
                    if p.0 == COLORS[shape.color].1 {
                        let (fx, fy) = ((x as f32 + 0.5) / 96.0, (y as f32 + 0.5) / 96.0);
                        assert!(fx >= x0 && fx <= x1 && fy >= y0 && fy <= y1, "{q:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn captions_read_naturally() {
        let scene = Scene {
            shapes: vec![
                Shape {
                    kind: 0,
                    color: 0,
                    slot: 0,
                    y: 0.5,
                    radius: 0.1,
                },
                Shape {
                    kind: 1,
                    color: 2,
                    slot: 2,
                    y: 0.5,
                    radius: 0.1,
                },
            ],
        };
        assert_eq!(
            scene.caption(),
            "a red circle on the left and a blue square on the right."
        );
    }

    #[test]
    fn answers_are_balanced_so_the_question_alone_cannot_tell() {
        let mut rng = StdRng::seed_from_u64(1);
        let mut yes = 0;
        let mut colors = [0usize; 4];
        let mut letters = std::collections::HashMap::new();
        for _ in 0..2000 {
            let scene = Scene::random(&mut rng);
            let q = scene.question(3, &mut rng).unwrap();
            yes += usize::from(q.answer == "yes");
            let c = scene.question(0, &mut rng).unwrap();
            colors[COLORS.iter().position(|x| x.0 == c.answer).unwrap()] += 1;
            *letters
                .entry(scene.question(5, &mut rng).unwrap().answer)
                .or_insert(0usize) += 1;
        }
        assert!((900..1100).contains(&yes), "yes/no balanced: {yes}");
        assert!(
            colors.iter().all(|&n| (400..600).contains(&n)),
            "colours balanced: {colors:?}"
        );
        assert!(
            letters.values().all(|&n| n > 500),
            "letters spread: {letters:?}"
        );
    }

    #[test]
    fn the_dataset_files_are_in_llava_formats() {
        let dir = tempfile::tempdir().unwrap();
        let config = SyntheticConfig {
            train_images: 12,
            eval_images: 4,
            questions_per_image: 2,
            ..Default::default()
        };
        let files = write(dir.path(), &config).unwrap();
        let stage1 = crate::read_records(&files.stage1).unwrap();
        let stage2 = crate::read_records(&files.stage2).unwrap();
        // One record per question (two per image), and a description for every other image.
        assert_eq!(
            (stage1.records.len(), stage2.records.len()),
            (12, 12 * 2 + 6)
        );
        assert!(stage1.bad.is_empty() && stage2.bad.is_empty());
        let turns: Vec<_> = stage2.records.iter().map(|r| &r.conversations).collect();
        assert!(
            turns
                .iter()
                .all(|t| t.len() == 2 && t[0].value.starts_with("<image>\n"))
        );
        assert_eq!(turns[0][0].value, format!("<image>\n{DESCRIBE}"));
        assert!(
            turns[1][0].value.ends_with(SHORT_ANSWER)
                || turns[1][0].value.ends_with(MULTIPLE_CHOICE)
        );
        assert_eq!(stage2.records[1].images, stage2.records[0].images);
        assert_ne!(stage2.records[3].images, stage2.records[0].images);
        let questions = std::fs::read_to_string(&files.eval_questions).unwrap();
        assert_eq!(questions.lines().count(), 8);
        let first: serde_json::Value =
            serde_json::from_str(questions.lines().next().unwrap()).unwrap();
        assert!(first["image"].as_str().unwrap().starts_with("eval_"));
        assert!(files.images.join(first["image"].as_str().unwrap()).exists());
        // Same seed, same bytes.
        let again = tempfile::tempdir().unwrap();
        let files2 = write(again.path(), &config).unwrap();
        assert_eq!(
            std::fs::read(&files.stage2).unwrap(),
            std::fs::read(&files2.stage2).unwrap()
        );
    }
}
