//! The `llava` command on tiny models, as a user would run it.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use common::{llava, run_ok};

fn fixtures() -> PathBuf {
    llava::foundation::parity_fixtures()
}

fn image() -> PathBuf {
    fixtures().join("image-processing/model/image.jpg")
}

#[test]
fn assemble_then_generate_about_an_image() {
    let tmp = tempfile::tempdir().unwrap();
    let out = llava()
        .arg("assemble")
        .arg("--lm")
        .arg(fixtures().join("gemma/model"))
        .arg("--vision")
        .arg(fixtures().join("dinov2/model"))
        .arg("--output")
        .arg(tmp.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = llava()
        .args([
            "generate",
            "--device",
            "cpu",
            "--max-new-tokens",
            "6",
            "--prompt",
            "What shape is this?",
        ])
        .arg("--model")
        .arg(tmp.path())
        .arg("--image")
        .arg(image())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("tokens/s"), "{stderr}");
}

#[test]
fn chat_answers_each_line() {
    let mut child = llava()
        .args(["chat", "--device", "cpu", "--max-new-tokens", "3"])
        .arg("--model")
        .arg(fixtures().join("llava-clip/model"))
        .arg("--image")
        .arg(fixtures().join("image-processing/model/image.png"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"What is it?\n\nAnd its colour?\n/exit\nignored\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout)
            .matches("model> ")
            .count(),
        2
    );
}

#[test]
fn clear_errors_for_bad_model_image_and_prompt() {
    let run = |args: &[&str]| {
        let out = llava().args(args).output().unwrap();
        assert!(!out.status.success(), "{args:?} should fail");
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let model = fixtures().join("llava-clip/model");
    let model = model.to_str().unwrap();
    let image = image();
    let image = image.to_str().unwrap();

    let err = run(&[
        "generate",
        "--model",
        "/no/such/llava",
        "--image",
        image,
        "--prompt",
        "x",
    ]);
    assert!(err.contains("/no/such/llava"), "{err}");

    let tmp = tempfile::tempdir().unwrap();
    let broken = tmp.path().join("broken.jpg");
    std::fs::write(&broken, b"\xff\xd8\xff\xe0 truncated").unwrap();
    let err = run(&[
        "generate",
        "--device",
        "cpu",
        "--model",
        model,
        "--image",
        broken.to_str().unwrap(),
        "--prompt",
        "x",
    ]);
    assert!(err.contains("broken.jpg"), "{err}");

    let long = "word ".repeat(300);
    let err = run(&[
        "generate", "--device", "cpu", "--model", model, "--image", image, "--prompt", &long,
    ]);
    assert!(err.contains("context"), "{err}");
}

/// A small dataset in the CC3M layout with planted faults, images in a zip.
fn planted_dataset(dir: &Path) -> (PathBuf, PathBuf) {
    let png = |color: u8| {
        let mut bytes = Vec::new();
        image::RgbImage::from_pixel(40, 30, image::Rgb([color, 0, 0]))
            .write_to(
                &mut std::io::Cursor::new(&mut bytes),
                image::ImageFormat::Png,
            )
            .unwrap();
        bytes
    };
    let zip_path = dir.join("images.zip");
    let mut zip = zip::ZipWriter::new(std::fs::File::create(&zip_path).unwrap());
    let options = zip::write::SimpleFileOptions::default();
    for (name, bytes) in [
        ("a.jpg", png(1)),
        ("b.jpg", png(2)),
        ("corrupt.jpg", b"\xff\xd8\xff junk".to_vec()),
    ] {
        zip.start_file(name, options).unwrap();
        zip.write_all(&bytes).unwrap();
    }
    zip.finish().unwrap();
    let turns = |q: &str| serde_json::json!([{"from": "human", "value": q}, {"from": "gpt", "value": "an answer ."}]);
    let records = serde_json::json!([
        {"id": "good_a", "image": "a.jpg", "conversations": turns("Describe.\n<image>")},
        {"id": "good_b", "image": "b.jpg", "conversations": turns("<image>\nWhat is it?")},
        {"id": "text_only", "conversations": turns("Say hi.")},
        {"id": "missing", "image": "gone.jpg", "conversations": turns("<image>")},
        {"id": "corrupt", "image": "corrupt.jpg", "conversations": turns("<image>")},
        {"id": "empty", "image": "a.jpg", "conversations": []},
        {"id": "order", "image": "a.jpg", "conversations": [{"from": "gpt", "value": "x"}, {"from": "human", "value": "y"}]},
        {"image": "a.jpg"},
        42
    ]);
    let data = dir.join("chat.json");
    std::fs::write(&data, records.to_string()).unwrap();
    (data, zip_path)
}

#[test]
fn data_check_reports_planted_faults_as_json() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, zip) = planted_dataset(tmp.path());
    let out = llava()
        .args(["data", "check", "--json", "--tokens-per-image", "16"])
        .arg("--data")
        .arg(&data)
        .arg("--images")
        .arg(&zip)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["records"], 9);
    assert_eq!(report["ok"], 3);
    assert_eq!(report["text_only"], 1);
    assert_eq!(report["bad"], 6);
    let ids: Vec<&str> = report["bad_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(ids, ["missing", "corrupt", "empty", "order", "#7", "#8"]);
    assert_eq!(report["reasons"]["missing_image"], 1);
    assert_eq!(report["reasons"]["corrupt_image"], 1);
    assert_eq!(report["reasons"]["malformed"], 2);

    let show = llava()
        .args(["data", "show", "--id", "good_b", "--tokens-per-image", "16"])
        .arg("--data")
        .arg(&data)
        .arg("--images")
        .arg(&zip)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&show.stdout);
    assert!(
        show.status.success() && text.contains("<image> x16") && text.contains("(learn)"),
        "{text}"
    );
}

#[test]
fn a_gpu_that_is_not_there_is_a_short_error_not_a_libtorch_backtrace() {
    let tmp = tempfile::tempdir().unwrap();
    for args in [
        vec!["generate", "--prompt", "Hi?", "--max-new-tokens", "2"],
        vec!["train", "--stage", "1", "--max-steps", "1"],
        vec!["bench-train", "--preset", "tiny"],
    ] {
        let mut command = llava();
        command.args(&args).args(["--device", "cuda:99"]);
        if args[0] == "generate" {
            command
                .arg("--model")
                .arg(fixtures().join("llava-clip/model"))
                .arg("--image")
                .arg(image());
        }
        if args[0] == "train" {
            command.arg("--output").arg(tmp.path().join("run"));
        }
        let out = command.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}: {stderr}");
        assert!(
            stderr.contains("cuda:99") && stderr.contains("not available"),
            "{args:?}: {stderr}"
        );
        assert!(
            !stderr.contains("frame #") && !stderr.contains("panicked"),
            "{args:?}: {stderr}"
        );
    }
}

#[test]
fn an_image_of_extreme_shape_is_answered_quickly() {
    // 30000 x 2: LLaVA-1.5's expand2square would make a 30000 x 30000 canvas first.
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("strip.png");
    image::RgbImage::from_pixel(30000, 2, image::Rgb([200, 30, 30]))
        .save(&path)
        .unwrap();
    let out = llava()
        .args(["generate", "--device", "cpu", "--max-new-tokens", "2"])
        .args(["--prompt", "What is this?"])
        .arg("--model")
        .arg(fixtures().join("llava-clip/model"))
        .arg("--image")
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
}

#[test]
fn a_model_by_hugging_face_id_comes_from_the_local_cache() {
    // The layout huggingface_hub writes: refs/main names the snapshot holding the files.
    let cache = tempfile::tempdir().unwrap();
    let repo = cache.path().join("models--test-org--tiny-llava");
    let commit = "0123456789abcdef0123456789abcdef01234567";
    let snapshot = repo.join("snapshots").join(commit);
    std::fs::create_dir_all(&snapshot).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), commit).unwrap();
    for entry in std::fs::read_dir(fixtures().join("llava-clip/model")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), snapshot.join(entry.file_name())).unwrap();
    }
    let generate = |model: &str| {
        llava()
            .args(["generate", "--device", "cpu", "--max-new-tokens", "4"])
            .args(["--prompt", "What is this?", "--model", model])
            .arg("--image")
            .arg(image())
            .env("HF_HUB_CACHE", cache.path())
            .env("HF_HUB_OFFLINE", "1")
            .output()
            .unwrap()
    };
    let by_id = generate("test-org/tiny-llava");
    assert!(
        by_id.status.success(),
        "{}",
        String::from_utf8_lossy(&by_id.stderr)
    );
    let by_dir = generate(fixtures().join("llava-clip/model").to_str().unwrap());
    assert_eq!(
        by_id.stdout, by_dir.stdout,
        "the same model, the same answer"
    );

    // Not in the cache, and no downloads allowed: a clear error naming the model and the cache.
    let missing = generate("test-org/not-there");
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(!missing.status.success());
    assert!(
        stderr.contains("test-org/not-there")
            && stderr.contains("HF_HUB_OFFLINE")
            && stderr.contains(&cache.path().display().to_string()),
        "{stderr}"
    );
}

#[test]
fn explain_writes_maps_words_and_overlays() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("explained");
    let model = fixtures().join("llava-clip/model");
    let printed = run_ok(
        llava()
            .args(["explain", "--device", "cpu", "--max-new-tokens", "6"])
            .arg("--model")
            .arg(&model)
            .arg("--image")
            .arg(image())
            .args(["--prompt", "What is in the image?", "--output"])
            .arg(&out),
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("explanation.json")).unwrap())
            .unwrap();
    // The random tiny model: 16 image tokens (a 4 x 4 grid), 2 layers of 4 heads.
    assert_eq!(report["grids"], serde_json::json!([[4, 4]]));
    assert_eq!(report["layers"], 2);
    let tokens = report["tokens"].as_array().unwrap();
    assert!(!tokens.is_empty() && tokens.len() <= 6);
    for token in tokens {
        let share = token["image_share"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&share));
        assert_eq!(token["relevancy"][0].as_array().unwrap().len(), 4);
        assert_eq!(token["attention"][0].as_array().unwrap().len(), 4);
        assert!(!token["prompt_relevancy"].as_array().unwrap().is_empty());
    }
    // What the command printed is the answer it explained.
    assert_eq!(report["answer"].as_str().unwrap(), printed.trim());
    for word in report["words"].as_array().unwrap() {
        let png = out.join(word["png"].as_str().unwrap());
        let overlay = image::open(&png).unwrap();
        assert!(overlay.width() >= 224, "{}", png.display());
    }
    assert!(out.join("maps.safetensors").exists());
    if !report["words"].as_array().unwrap().is_empty() {
        assert!(out.join("sheet.png").exists());
    }
}

#[test]
fn explain_synthetic_reports_relevancy_inside_the_shapes_boxes() {
    let tmp = tempfile::tempdir().unwrap();
    let run_dir = tmp.path().join("run");
    run_ok(
        llava()
            .args([
                "train",
                "--stage",
                "2",
                "--skip-pretraining",
                "--synthetic-images",
                "24",
                "--max-steps",
                "10",
                "--output",
            ])
            .arg(&run_dir),
    );
    let report = tmp.path().join("explain.json");
    run_ok(
        llava()
            .args(["explain-synthetic", "--limit", "6", "--model"])
            .arg(run_dir.join("model"))
            .arg("--data")
            .arg(run_dir.join("data"))
            .arg("--report")
            .arg(&report),
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(report["questions"], 6);
    // A shape's box is about a ninth of the 48 px image (radius 0.15 of the side).
    let area = report["box_share_of_image"].as_f64().unwrap();
    assert!((0.08..0.1).contains(&area), "{area}");
    for what in ["relevancy", "attention"] {
        let inside = report[what]["share_inside_box"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&inside), "{what}: {inside}");
    }
}

#[test]
fn a_model_quantized_once_answers_as_quantizing_at_every_load() {
    let tmp = tempfile::tempdir().unwrap();
    let model = fixtures().join("llava-clip/model");
    let saved = tmp.path().join("int4");
    let said = run_ok(
        llava()
            .args(["quantize", "--quantize", "int4"])
            .arg("--model")
            .arg(&model)
            .arg("--output")
            .arg(&saved),
    );
    assert!(said.contains("int4:32"), "{said}");
    let generate = |dir: &Path, extra: &[&str]| {
        run_ok(
            llava()
                .args(["generate", "--device", "cpu", "--max-new-tokens", "8"])
                .args(["--prompt", "What shape is this?"])
                .args(extra)
                .arg("--model")
                .arg(dir)
                .arg("--image")
                .arg(image()),
        )
    };
    let at_load = generate(&model, &["--quantize", "int4"]);
    assert_eq!(generate(&saved, &[]), at_load);
    assert_eq!(generate(&saved, &["--quantize", "int4"]), at_load);

    // What cannot work with codes says so.
    let image = image().display().to_string();
    let out = tmp.path().join("out").display().to_string();
    for (args, expected) in [
        (
            vec![
                "generate",
                "--quantize",
                "int8",
                "--prompt",
                "What?",
                "--image",
                &image,
            ],
            "holds int4:32",
        ),
        (
            vec![
                "explain", "--prompt", "What?", "--image", &image, "--output", &out,
            ],
            "dense weights",
        ),
        (
            vec!["quantize", "--quantize", "int8", "--output", &out],
            "already holds int4:32",
        ),
        (
            vec!["export-gguf", "--type", "f16", "--output", &out],
            "export the dense model",
        ),
    ] {
        fails_saying(llava().args(&args).arg("--model").arg(&saved), expected);
    }

    // Quantizing into a directory that holds a dense model would lose it: refused.
    let dense = tmp.path().join("dense");
    std::fs::create_dir(&dense).unwrap();
    for file in ["config.json", "model.safetensors"] {
        std::fs::copy(model.join(file), dense.join(file)).unwrap();
    }
    fails_saying(
        llava()
            .args(["quantize", "--quantize", "int8", "--model"])
            .arg(fixtures().join("gemma/model"))
            .arg("--output")
            .arg(&dense),
        "holds a dense model",
    );
    assert!(dense.join("model.safetensors").exists());

    // transformers refuses the directory instead of loading it with random linear layers.
    match common::python_with("import transformers", &["transformers==5.17.0"]) {
        Err(why) => eprintln!("SKIPPED the transformers check: {why}"),
        Ok(python) => fails_saying(
            std::process::Command::new(python)
                .arg("-c")
                .arg(
                    "import sys; from transformers import AutoModelForImageTextToText; \
                     AutoModelForImageTextToText.from_pretrained(sys.argv[1])",
                )
                .arg(&saved),
            "no file named model.safetensors",
        ),
    }

    // A Gemma directory too: bench-text reads the saved int8 codes.
    let gemma = tmp.path().join("gemma-int8");
    run_ok(
        llava()
            .args(["quantize", "--quantize", "int8"])
            .arg("--model")
            .arg(fixtures().join("gemma/model"))
            .arg("--output")
            .arg(&gemma),
    );
    assert!(gemma.join("tokenizer.json").exists());
    let report = run_ok(
        llava()
            .args([
                "bench-text",
                "--device",
                "cpu",
                "--prompt-len",
                "4",
                "--new-tokens",
                "3",
            ])
            .arg("--model")
            .arg(&gemma),
    );
    assert!(report.contains("int8 (saved)"), "{report}");
}

/// Runs `command`, which must fail with `expected` in its standard error.
fn fails_saying(command: &mut std::process::Command, expected: &str) {
    let out = command.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains(expected),
        "{command:?}: {stderr}"
    );
}
