//! Each family's saved model opens in transformers as a user opens it: `AutoProcessor` and
//! `AutoModelForImageTextToText` (scripts/hf_processor_check.py) on a directory `llava train`
//! wrote. The processor's prompt (its chat template and image expansion: Gemma 3's
//! `<start_of_image>` run, with pan-and-scan crops, PaliGemma's prefix), for one image and for
//! several, is token for token ours, its pixel values are ours, and its greedy answer is ours.
//!
//! Uses the Python of the cached torch environment, installing transformers 5.17 and Pillow there
//! when missing; says SKIPPED only when they cannot be installed (no network).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{llava, python_with, root, run_ok};

use llava::chat::ImageChat;
use llava::gemma_lm::Message;
use tch::{Device, Kind};

/// Trains `preset` up to 150 steps (stage 2, from a random connector: enough to answer in words): its directory (in `tmp`) and
/// a held-out question with its image.
fn trained(preset: &str, tmp: &Path) -> (PathBuf, PathBuf, String) {
    let out = tmp.join("run");
    run_ok(
        llava()
            .args([
                "train",
                "--preset",
                preset,
                "--stage",
                "2",
                "--skip-pretraining",
                "--synthetic-images",
                "24",
                "--micro-batch",
                "4",
                "--global-batch",
                "8",
                "--max-steps",
                "150",
                "--lr",
                "3e-3",
                "--output",
            ])
            .arg(&out),
    );
    // A held-out question of the synthetic data, about its image.
    let first = std::fs::read_to_string(out.join("data/eval_questions.jsonl")).unwrap();
    let question: serde_json::Value = serde_json::from_str(first.lines().next().unwrap()).unwrap();
    let image = out
        .join("data/images")
        .join(question["image"].as_str().unwrap());
    let text = question["text"].as_str().unwrap().to_string();
    (out.join("model"), image, text)
}

/// Compares transformers' prompt, pixel values (with pan-and-scan) and greedy answer about
/// `images` with ours.
fn transformers_answers_as_we_do(
    model: &Path,
    (images, question): (&[PathBuf], &str),
    pan_and_scan: bool,
    (family, processor): (&str, &str),
) {
    let options = llava::chat::ChatOptions {
        pan_and_scan: pan_and_scan.then_some(true),
        ..Default::default()
    };
    let chat = ImageChat::open(model, images, Device::Cpu, Kind::Float, &options).unwrap();
    let ours_prompt = chat.prompt(&[Message::user(question)]).unwrap();
    let mut generate = llava();
    generate
        .args(["generate", "--device", "cpu", "--max-new-tokens", "8"])
        .arg("--model")
        .arg(model)
        .args(["--prompt", question]);
    for image in images {
        generate.arg("--image").arg(image);
    }
    if pan_and_scan {
        generate.arg("--pan-and-scan");
    }
    let ours = run_ok(&mut generate);

    let Ok(python) = python_with(
        "import transformers, PIL",
        &["transformers==5.17.0", "pillow"],
    ) else {
        eprintln!("SKIPPED the transformers check: no python with transformers beside libtorch");
        return;
    };
    let list: Vec<String> = images.iter().map(|p| p.display().to_string()).collect();
    let mut check = Command::new(python);
    check
        .arg(root().join("scripts/hf_processor_check.py"))
        .arg(model)
        .arg(list.join(","))
        .arg(question)
        .arg("8");
    if pan_and_scan {
        check.arg("pan-and-scan");
    }
    let report = run_ok(&mut check);
    let theirs: serde_json::Value =
        serde_json::from_str(report.lines().last().unwrap_or_default()).unwrap();
    assert_eq!(theirs["family"], family);
    assert_eq!(theirs["processor"], processor);
    let shape: Vec<i64> = serde_json::from_value(theirs["pixel_values_shape"].clone()).unwrap();
    assert_eq!(shape, chat.pixels().size(), "the views differ");
    if let Some(pixels) = theirs["pixel_values"].as_array() {
        let theirs: Vec<f32> = pixels.iter().map(|v| v.as_f64().unwrap() as f32).collect();
        let diff = (chat.pixels().flatten(0, -1) - tch::Tensor::from_slice(&theirs))
            .abs()
            .max()
            .double_value(&[]);
        assert!(diff < 1e-5, "pixel values differ by {diff}");
    }
    let their_prompt: Vec<i64> = serde_json::from_value(theirs["prompt_ids"].clone()).unwrap();
    assert_eq!(their_prompt, ours_prompt, "{family}: the prompts differ");
    let answer = theirs["answer"].as_str().unwrap();
    eprintln!(
        "{family}: transformers answers {answer:?}, we answer {:?}",
        ours.trim()
    );
    assert_eq!(ours.trim(), answer.trim(), "{family}: the answers differ");
}

#[test]
fn a_gemma3_vlm_we_train_opens_in_transformers_and_answers_as_ours() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, image, question) = trained("tiny-gemma3-vlm", tmp.path());
    let names = ("gemma3", "Gemma3Processor");
    let one = std::slice::from_ref(&image);
    transformers_answers_as_we_do(&model, (one, &question), false, names);

    // Two images, the first long enough for three pan-and-scan crops (800 x 260: crops of
    // 267 x 260, at least 256 px each): seven views, each its own block of image tokens.
    let wide = tmp.path().join("wide.png");
    image::RgbImage::from_fn(800, 260, |x, y| {
        image::Rgb([(x % 256) as u8, (y % 256) as u8, ((x / 3 + y) % 256) as u8])
    })
    .save(&wide)
    .unwrap();
    transformers_answers_as_we_do(&model, (&[wide, image], &question), true, names);
}

#[test]
fn a_paligemma_we_train_opens_in_transformers_and_answers_as_ours() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, image, question) = trained("tiny-paligemma", tmp.path());
    let names = ("paligemma", "PaliGemmaProcessor");
    let one = std::slice::from_ref(&image);
    transformers_answers_as_we_do(&model, (one, &question), false, names);
    let two = [image.clone(), image];
    transformers_answers_as_we_do(&model, (&two, &question), false, names);
}

/// `llava assemble --family gemma3|paligemma` writes directories transformers opens and answers
/// from as we do (random connectors, so the answers are arbitrary tokens, but the same ones).
#[test]
fn assembled_gemma_vlms_open_in_transformers_and_answer_as_ours() {
    let tmp = tempfile::tempdir().unwrap();
    let fixtures = root().join("fixtures/hf-parity");
    // A Gemma 3 language model with a tokenizer (the Gemma fixture's).
    let gemma3 = tmp.path().join("gemma3-text");
    std::fs::create_dir_all(&gemma3).unwrap();
    for (from, name) in [
        ("gemma3-text/model", "config.json"),
        ("gemma3-text/model", "model.safetensors"),
        ("gemma/model", "tokenizer.json"),
    ] {
        std::fs::copy(fixtures.join(from).join(name), gemma3.join(name)).unwrap();
    }
    let image = tmp.path().join("image.png");
    image::RgbImage::from_fn(40, 30, |x, y| {
        image::Rgb([(x * 6) as u8, (y * 8) as u8, 90])
    })
    .save(&image)
    .unwrap();
    for (family, lm, processor) in [
        ("gemma3", gemma3.clone(), "Gemma3Processor"),
        (
            "paligemma",
            fixtures.join("gemma/model"),
            "PaliGemmaProcessor",
        ),
    ] {
        let out = tmp.path().join(family);
        run_ok(
            llava()
                .args(["assemble", "--family", family, "--lm"])
                .arg(&lm)
                .arg("--vision")
                .arg(fixtures.join("siglip-vision/model"))
                .arg("--output")
                .arg(&out),
        );
        let one = std::slice::from_ref(&image);
        transformers_answers_as_we_do(&out, (one, "What is it?"), false, (family, processor));
    }
}
