//! Each family's saved model opens in transformers as a user opens it: `AutoProcessor` and
//! `AutoModelForImageTextToText` (scripts/hf_processor_check.py) on a directory `llava train`
//! wrote. The processor's prompt (its chat template and image expansion: Gemma 3's
//! `<start_of_image>` run, PaliGemma's prefix) is token for token ours, and its greedy answer is
//! ours.
//!
//! Uses the Python of the cached torch environment, installing transformers 5.17 and Pillow there
//! when missing; says SKIPPED only when they cannot be installed (no network).

use std::path::{Path, PathBuf};
use std::process::Command;

use llava::chat::ImageChat;
use llava::gemma_lm::Message;
use tch::{Device, Kind};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn llava() -> Command {
    Command::new(env!("CARGO_BIN_EXE_llava"))
}

fn run_ok(command: &mut Command) -> String {
    let out = command.output().unwrap();
    assert!(
        out.status.success(),
        "{command:?}\nstdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The cached torch environment's python with transformers and Pillow (installed on first use),
/// or `None` when there is none or nothing can be installed (no network).
fn python_with_transformers() -> Option<PathBuf> {
    let python = llava::foundation::torch_env_bin("python")?;
    let ready = || {
        Command::new(&python)
            .args(["-c", "import transformers, PIL"])
            .status()
            .is_ok_and(|s| s.success())
    };
    if !ready() {
        let _ = Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "transformers==5.17.0",
                "pillow",
            ])
            .status();
    }
    ready().then_some(python)
}

/// Trains `preset` a few steps (stage 2, from a random connector) and compares transformers'
/// prompt and greedy answer with ours on one of its images.
fn transformers_answers_as_we_do(preset: &str, family: &str, processor: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
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
                "4",
                "--output",
            ])
            .arg(&out),
    );
    let model = out.join("model");
    let image = std::fs::read_dir(out.join("data/images"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "png"))
        .expect("the synthetic data has images");
    let question = "What shape is on the left?";

    let chat = ImageChat::open(&model, None, &image, Device::Cpu, Kind::Float, None).unwrap();
    let ours_prompt = chat.prompt(&[Message::user(question)]).unwrap();
    let ours = run_ok(
        llava()
            .args(["generate", "--device", "cpu", "--max-new-tokens", "8"])
            .arg("--model")
            .arg(&model)
            .arg("--image")
            .arg(&image)
            .args(["--prompt", question]),
    );

    let Some(python) = python_with_transformers() else {
        eprintln!("SKIPPED the transformers check: no python with transformers beside libtorch");
        return;
    };
    let report = run_ok(
        Command::new(python)
            .arg(root().join("scripts/hf_processor_check.py"))
            .arg(&model)
            .arg(&image)
            .arg(question)
            .arg("8"),
    );
    let theirs: serde_json::Value =
        serde_json::from_str(report.lines().last().unwrap_or_default()).unwrap();
    eprintln!("{preset}: transformers {theirs}");
    assert_eq!(theirs["family"], family);
    assert_eq!(theirs["processor"], processor);
    let their_prompt: Vec<i64> = serde_json::from_value(theirs["prompt_ids"].clone()).unwrap();
    assert_eq!(their_prompt, ours_prompt, "{preset}: the prompts differ");
    let answer = theirs["answer"].as_str().unwrap();
    assert_eq!(ours.trim(), answer.trim(), "{preset}: the answers differ");
}

#[test]
fn a_gemma3_vlm_we_train_opens_in_transformers_and_answers_as_ours() {
    transformers_answers_as_we_do("tiny-gemma3-vlm", "gemma3", "Gemma3Processor");
}

#[test]
fn a_paligemma_we_train_opens_in_transformers_and_answers_as_ours() {
    transformers_answers_as_we_do("tiny-paligemma", "paligemma", "PaliGemmaProcessor");
}
