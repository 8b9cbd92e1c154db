//! The `llava` command on tiny models, as a user would run it.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/hf-parity")
}

fn llava() -> Command {
    Command::new(env!("CARGO_BIN_EXE_llava"))
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
