//! Templates token by token, truncation, the loader (order, resume, bad images), on the tiny Gemma
//! tokenizer of the parity fixtures.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use data::{
    Dataset, IGNORE, ImageSource, Loader, Record, RecordFile, SkipReason, Speaker, Template,
    Templater, Turn, modality_grouped, shuffled,
};
use gemma_lm::GemmaTokenizer;
use image_processing::{ImageProcessor, ProcessorConfig, Resize};

fn tokenizer() -> GemmaTokenizer {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/hf-parity/tokenizer/model");
    GemmaTokenizer::from_file(path).unwrap()
}

fn templater(template: Template, max_length: usize) -> Templater {
    let tokenizer = tokenizer();
    let image_token = tokenizer.token_id("<image>").unwrap();
    Templater {
        tokenizer,
        template,
        image_token,
        tokens_per_image: 4,
        max_length,
    }
}

fn record(image: Option<&str>, turns: &[&str]) -> Record {
    Record {
        id: "r".into(),
        images: image.map(String::from).into_iter().collect(),
        conversations: turns
            .iter()
            .enumerate()
            .map(|(i, v)| Turn {
                from: if i % 2 == 0 {
                    Speaker::Human
                } else {
                    Speaker::Gpt
                },
                value: v.to_string(),
            })
            .collect(),
    }
}

/// The labelled tokens decoded, and the unlabelled ones, to read a mask at a glance.
fn split(t: &Templater, ids: &[i64], labels: &[i64]) -> (String, String) {
    let learned: Vec<i64> = ids
        .iter()
        .zip(labels)
        .filter(|(_, l)| **l != IGNORE)
        .map(|(i, _)| *i)
        .collect();
    let context: Vec<i64> = ids
        .iter()
        .zip(labels)
        .filter(|(_, l)| **l == IGNORE)
        .map(|(i, _)| *i)
        .collect();
    (
        t.tokenizer.decode(&learned, false).unwrap(),
        t.tokenizer.decode(&context, false).unwrap(),
    )
}

#[test]
fn gemma_template_labels_answers_and_their_end_of_turn_only() {
    let t = templater(Template::Gemma, 2048);
    let r = record(
        Some("a.jpg"),
        &[
            "What colour is it?\n<image>",
            "Red.",
            "And the shape?",
            "A circle.",
        ],
    );
    let s = t.tokenize(&r).unwrap();
    assert_eq!(s.input_ids.len(), s.labels.len());
    // Token by token: every label is either -100 or the token itself.
    for (id, label) in s.input_ids.iter().zip(&s.labels) {
        assert!(*label == IGNORE || label == id);
    }
    let (learned, context) = split(&t, &s.input_ids, &s.labels);
    assert_eq!(learned, "Red.<end_of_turn>\nA circle.<end_of_turn>\n");
    assert_eq!(
        context,
        "<bos><start_of_turn>user\n<image><image><image><image>\nWhat colour is it?<end_of_turn>\n<start_of_turn>model\n\
         <start_of_turn>user\nAnd the shape?<end_of_turn>\n<start_of_turn>model\n"
    );
    // The image sits right after "user\n" of the first turn, expanded to 4 tokens, never labelled.
    let first = s
        .input_ids
        .iter()
        .position(|&i| i == t.image_token)
        .unwrap();
    assert_eq!(&s.input_ids[first..first + 4], &[t.image_token; 4]);
    assert!(s.labels[first..first + 4].iter().all(|&l| l == IGNORE));
    assert!(s.images == 1 && !s.truncated);
}

#[test]
fn the_full_text_equals_the_chat_template() {
    let t = templater(Template::Gemma, 2048);
    let r = record(None, &["Hi there", "Hello!"]);
    let s = t.tokenize(&r).unwrap();
    let text = t.tokenizer.decode(&s.input_ids, false).unwrap();
    let messages = [
        gemma_lm::Message::user("Hi there"),
        gemma_lm::Message::model("Hello!"),
    ];
    assert_eq!(
        text,
        gemma_lm::apply_chat_template(&messages, false).unwrap()
    );
    assert_eq!(s.images, 0);
}

#[test]
fn plain_template_is_image_then_caption() {
    let t = templater(Template::Plain, 2048);
    let r = record(
        Some("a.jpg"),
        &[
            "Provide a brief description of the given image.\n<image>",
            "a red circle .",
        ],
    );
    let s = t.tokenize(&r).unwrap();
    let (learned, context) = split(&t, &s.input_ids, &s.labels);
    assert_eq!(learned, "a red circle .\n");
    assert_eq!(context, "<bos><image><image><image><image>");
}

#[test]
fn a_sample_renders_one_line_per_token_and_one_per_run_of_image_tokens() {
    let t = templater(Template::Plain, 2048);
    let r = record(Some("a.jpg"), &["<image>", "a red circle ."]);
    let s = t.tokenize(&r).unwrap();
    let text = t.render(&s).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "  pos       id  token                    label");
    assert_eq!(
        lines[1],
        format!(
            "    0  {:>7}  \"<bos>\"                  -100",
            t.tokenizer.bos
        )
    );
    assert_eq!(
        lines[2],
        format!("    1  {:>7}  <image> x4               -100", t.image_token)
    );
    assert!(
        lines[3].starts_with("    5  ") && lines[3].ends_with(" (learn)"),
        "{text}"
    );
    let learned = s.labels.iter().filter(|&&l| l != IGNORE).count();
    assert_eq!(
        lines.last().unwrap().to_string(),
        format!("{} tokens, {learned} with loss", s.input_ids.len())
    );
    assert_eq!(lines.len(), 2 + s.input_ids.len() - 4 + 1);
}

#[test]
fn truncation_keeps_image_tokens_whole_or_skips() {
    let t = templater(Template::Gemma, 40);
    let long = "word ".repeat(50);
    let r = record(Some("a.jpg"), &["Describe.", &long]);
    let s = t.tokenize(&r).unwrap();
    assert_eq!(s.input_ids.len(), 40);
    assert!(s.truncated);
    assert!(
        s.labels.iter().any(|&l| l != IGNORE),
        "some of the answer survives"
    );

    let tiny = templater(Template::Gemma, 6);
    let err = tiny.tokenize(&r).unwrap_err();
    assert_eq!(err.0, SkipReason::TooLong, "{}", err.1);

    let just_image = templater(Template::Gemma, 40);
    let r = record(Some("a.jpg"), &[&"question ".repeat(20), "answer"]);
    assert_eq!(just_image.tokenize(&r).unwrap_err().0, SkipReason::NoLabels);
}

fn two_images(turns: &[&str]) -> Record {
    Record {
        images: vec!["a.jpg".into(), "b.jpg".into()],
        ..record(None, turns)
    }
}

#[test]
fn the_images_of_a_multi_image_record_stay_where_their_marks_are() {
    let t = templater(Template::Gemma, 2048);
    let r = two_images(&[
        "First: <image>\nSecond: <image>\nWhich is larger?",
        "The second.",
    ]);
    let s = t.tokenize(&r).unwrap();
    assert_eq!(s.images, 2);
    let (learned, context) = split(&t, &s.input_ids, &s.labels);
    assert_eq!(learned, "The second.<end_of_turn>\n");
    let four = "<image>".repeat(4);
    assert_eq!(
        context,
        format!(
            "<bos><start_of_turn>user\nFirst: {four}\nSecond: {four}\nWhich is larger?<end_of_turn>\n\
             <start_of_turn>model\n"
        )
    );

    // PaliGemma's and the plain template's images all lead.
    for (template, lead) in [(Template::PaliGemma, ""), (Template::Plain, "<bos>")] {
        let t = templater(template, 2048);
        let s = t.tokenize(&r).unwrap();
        let context = split(&t, &s.input_ids, &s.labels).1;
        assert!(
            context.starts_with(&format!("{lead}{four}{four}")),
            "{template:?}: {context}"
        );
    }
}

#[test]
fn a_multi_image_record_whose_marks_do_not_match_is_skipped_and_says_why() {
    let t = templater(Template::Gemma, 2048);
    for question in ["<image>\nWhich is larger?", "Which is larger?"] {
        let err = t
            .tokenize(&two_images(&[question, "The second."]))
            .unwrap_err();
        assert_eq!(err.0, SkipReason::Malformed);
        assert!(err.1.contains("2 images but"), "{}", err.1);
    }
    // Their tokens count against max_length together.
    let short = templater(Template::Gemma, 8);
    let err = short
        .tokenize(&two_images(&["<image><image>Same?", "No."]))
        .unwrap_err();
    assert_eq!(err.0, SkipReason::TooLong, "{}", err.1);
}

#[test]
fn a_batch_carries_every_image_of_every_sample_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("images");
    std::fs::create_dir_all(&images).unwrap();
    for (name, red) in [("a.png", 10u8), ("b.png", 200), ("c.png", 90)] {
        image::RgbImage::from_pixel(16, 16, image::Rgb([red, 0, 0]))
            .save(images.join(name))
            .unwrap();
    }
    let file = dir.path().join("data.json");
    std::fs::write(
        &file,
        serde_json::json!([
            {"id": "two", "image": ["b.png", "a.png"], "conversations": [
                {"from": "human", "value": "<image> or <image>?"}, {"from": "gpt", "value": "left"}]},
            {"id": "one", "image": "c.png", "conversations": [
                {"from": "human", "value": "<image>\nColour?"}, {"from": "gpt", "value": "red"}]},
            {"id": "missing", "image": ["a.png", "nope.png"], "conversations": [
                {"from": "human", "value": "<image><image>?"}, {"from": "gpt", "value": "x"}]}
        ])
        .to_string(),
    )
    .unwrap();
    let dataset = open(dir.path(), &file);
    let batches: Vec<_> = Loader::new(dataset.clone(), vec![0, 1, 2], 0, 3, 1).collect();
    let b = &batches[0];
    assert_eq!(b.ids, ["two", "one"]);
    assert_eq!(b.skipped[0].0, "missing");
    assert_eq!(b.skipped[0].1, SkipReason::MissingImage);
    assert_eq!(b.images, 3);
    let image_tokens = b
        .input_ids
        .iter()
        .filter(|&&t| t == dataset.templater.image_token)
        .count();
    assert_eq!(image_tokens, 3 * 4);
    // b, a, c: the red channel's first pixel, normalised as CLIP does.
    let plane = 3 * 28 * 28;
    let reds: Vec<f32> = (0..3).map(|i| b.pixel_values[i * plane]).collect();
    assert!(reds[0] > reds[2] && reds[2] > reds[1], "{reds:?}");
}

/// A dataset of `n` records on disk: images in a folder, some missing or corrupt.
fn dataset_on_disk(dir: &Path, n: usize, broken: &[usize]) -> PathBuf {
    let images = dir.join("images");
    std::fs::create_dir_all(&images).unwrap();
    let mut records = Vec::new();
    for i in 0..n {
        let name = format!("{i:03}.png");
        if broken.contains(&i) {
            if i % 2 == 0 {
                std::fs::write(images.join(&name), b"not a png").unwrap();
            } // odd: missing
        } else {
            image::RgbImage::from_pixel(20 + i as u32, 16, image::Rgb([i as u8, 0, 0]))
                .save(images.join(&name))
                .unwrap();
        }
        let image = if i % 4 == 3 {
            serde_json::Value::Null
        } else {
            name.into()
        };
        records.push(serde_json::json!({
            "id": format!("s{i}"),
            "image": image,
            "conversations": [
                {"from": "human", "value": format!("<image>\nWhat is {i}?")},
                {"from": "gpt", "value": format!("It is {}", "x ".repeat(i % 5))},
            ]
        }));
    }
    let file = dir.join("data.json");
    std::fs::write(&file, serde_json::Value::Array(records).to_string()).unwrap();
    file
}

fn open(dir: &Path, file: &Path) -> Arc<Dataset> {
    let (records, bad_records) = RecordFile::open(file).unwrap();
    let processor = ProcessorConfig {
        resize: Some(Resize::ShortestEdge(28)),
        crop: Some((28, 28)),
        ..ProcessorConfig::clip_336()
    };
    Arc::new(Dataset {
        records,
        bad_records,
        images: Some(ImageSource::open(dir.join("images")).unwrap()),
        templater: templater(Template::Gemma, 64),
        processor: ImageProcessor::new(processor.with_pad_to_square()),
    })
}

#[test]
fn loader_batches_pad_right_and_skip_bad_images_without_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let file = dataset_on_disk(dir.path(), 20, &[4, 5, 9]);
    let dataset = open(dir.path(), &file);
    let order: Vec<usize> = (0..20).collect();
    let batches: Vec<_> = Loader::new(dataset.clone(), order, 0, 4, 2).collect();
    assert_eq!(batches.len(), 5);
    let skipped: Vec<(String, SkipReason)> = batches
        .iter()
        .flat_map(|b| b.skipped.iter().map(|s| (s.0.clone(), s.1)))
        .collect();
    assert_eq!(
        skipped,
        [
            ("s4".to_string(), SkipReason::CorruptImage),
            ("s5".to_string(), SkipReason::MissingImage),
            ("s9".to_string(), SkipReason::MissingImage)
        ]
    );
    let rows: usize = batches.iter().map(|b| b.batch_size).sum();
    assert_eq!(rows, 17);
    for b in &batches {
        assert_eq!(b.input_ids.len(), b.batch_size * b.seq_len);
        assert_eq!(b.pixel_values.len(), b.images * 3 * 28 * 28);
        for row in 0..b.batch_size {
            let mask = &b.attention_mask[row * b.seq_len..][..b.seq_len];
            let real = mask.iter().filter(|&&m| m == 1).count();
            assert!(mask[..real].iter().all(|&m| m == 1), "right padding");
            let ids = &b.input_ids[row * b.seq_len..][..b.seq_len];
            assert!(
                ids[real..]
                    .iter()
                    .all(|&t| t == dataset.templater.tokenizer.pad)
            );
            let labels = &b.labels[row * b.seq_len..][..b.seq_len];
            assert!(labels[real..].iter().all(|&l| l == IGNORE));
        }
        // Image tokens and images agree.
        let image_tokens = b
            .input_ids
            .iter()
            .filter(|&&t| t == dataset.templater.image_token)
            .count();
        assert_eq!(image_tokens, b.images * 4);
    }
    assert_eq!(batches.last().unwrap().next_position, 20);
}

#[test]
fn a_resumed_loader_sees_exactly_the_remaining_batches() {
    let dir = tempfile::tempdir().unwrap();
    let file = dataset_on_disk(dir.path(), 23, &[7]);
    let dataset = open(dir.path(), &file);
    let lengths = dataset.modality_lengths();
    for order in [shuffled(23, 5, 1), modality_grouped(&lengths, 4, 5, 1)] {
        let all: Vec<_> = Loader::new(dataset.clone(), order.clone(), 0, 4, 3).collect();
        let resume_at = all[2].next_position;
        let resumed: Vec<_> =
            Loader::new(dataset.clone(), order.clone(), resume_at, 4, 1).collect();
        assert_eq!(resumed.len(), all.len() - 3);
        for (a, b) in all[3..].iter().zip(&resumed) {
            assert_eq!(
                (&a.ids, &a.input_ids, &a.labels),
                (&b.ids, &b.input_ids, &b.labels)
            );
            assert_eq!(a.pixel_values, b.pixel_values);
        }
    }
}

#[test]
fn stopping_early_does_not_hang() {
    let dir = tempfile::tempdir().unwrap();
    let file = dataset_on_disk(dir.path(), 40, &[]);
    let dataset = open(dir.path(), &file);
    let mut loader = Loader::new(dataset, (0..40).collect(), 0, 2, 1);
    assert!(loader.next().is_some());
    drop(loader);
}
