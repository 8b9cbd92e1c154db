//! The HF parity fixtures copied into the project, through the library and the `llava` command.

use std::path::PathBuf;
use std::process::Command;

use llava::foundation::{checkpoint::read_all, save_safetensors};
use llava::parity;

fn fixtures() -> PathBuf {
    llava::foundation::parity_fixtures()
}

fn llava() -> Command {
    Command::new(env!("CARGO_BIN_EXE_llava"))
}

#[test]
fn tokenizer_fixture_passes() {
    let report = parity::run(&fixtures().join("tokenizer")).unwrap();
    assert!(report.passed(), "{report}");
    assert!(
        report.checks.len() >= 8,
        "every case and special token is checked: {report}"
    );
}

#[test]
fn gemma_fixture_passes_every_output() {
    let report = parity::run(&fixtures().join("gemma")).unwrap();
    assert!(report.passed(), "{report}");
    let outputs: Vec<&str> = report.checks.iter().map(|c| c.output.as_str()).collect();
    for name in [
        "logits",
        "hidden_states[0]",
        "hidden_states[2]",
        "loss",
        "generated_ids",
    ] {
        assert!(outputs.contains(&name), "{name} missing from {outputs:?}");
    }
}

/// A copy of the gemma fixture whose expected logits are off by `delta`.
fn tampered_gemma(delta: f64) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    let src = fixtures().join("gemma");
    std::fs::copy(src.join("meta.json"), tmp.path().join("meta.json")).unwrap();
    std::fs::copy(
        src.join("inputs.safetensors"),
        tmp.path().join("inputs.safetensors"),
    )
    .unwrap();
    std::fs::create_dir(tmp.path().join("model")).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(src.join("model").join(f), tmp.path().join("model").join(f)).unwrap();
    }
    let mut expected: Vec<_> = read_all(src.join("expected.safetensors"))
        .unwrap()
        .into_iter()
        .collect();
    for (name, t) in &mut expected {
        if name == "logits" {
            *t = &*t + delta;
        }
    }
    save_safetensors(tmp.path().join("expected.safetensors"), &expected, None).unwrap();
    tmp
}

#[test]
fn a_wrong_expectation_fails_the_check() {
    let tmp = tampered_gemma(1e-2);
    let report = parity::run(tmp.path()).unwrap();
    assert!(!report.passed());
    let logits = report.checks.iter().find(|c| c.output == "logits").unwrap();
    assert!(
        !logits.passed && (logits.max_abs_diff - 1e-2).abs() < 1e-4,
        "{report}"
    );
}

#[test]
fn command_exit_code_reflects_the_result() {
    let ok = llava()
        .arg("parity")
        .arg(fixtures().join("tokenizer"))
        .arg(fixtures().join("gemma"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&ok.stdout);
    assert!(ok.status.success(), "{stdout}");
    assert!(stdout.contains("parity: 2 passed, 0 failed"), "{stdout}");

    let tmp = tampered_gemma(1.0);
    let bad = llava().arg("parity").arg(tmp.path()).output().unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stdout).contains("FAIL"));
}

#[test]
fn unsupported_kinds_and_broken_fixtures_fail_loudly() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("meta.json"), r#"{"kind": "no-such-kind"}"#).unwrap();
    let out = llava().arg("parity").arg(tmp.path()).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("not supported yet"));

    let empty = tempfile::tempdir().unwrap();
    let err = parity::run(empty.path()).unwrap_err().to_string();
    assert!(err.contains("meta.json"), "{err}");
}

#[test]
fn generate_text_streams_from_a_checkpoint_and_rejects_a_missing_one() {
    let out = llava()
        .args([
            "generate-text",
            "--device",
            "cpu",
            "--max-new-tokens",
            "5",
            "--prompt",
            "Hello",
        ])
        .arg("--model")
        .arg(fixtures().join("gemma/model"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("tokens/s"), "{stderr}");

    let out = llava()
        .args([
            "generate-text",
            "--model",
            "/no/such/model",
            "--prompt",
            "Hi",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/no/such/model"));
}

#[test]
fn vision_and_image_processing_fixtures_pass() {
    for name in ["clip-vision", "dinov2", "image-processing"] {
        let report = parity::run(&fixtures().join(name)).unwrap();
        assert!(report.passed(), "{report}");
    }
    let dinov2 = parity::run(&fixtures().join("dinov2")).unwrap();
    assert!(
        dinov2
            .checks
            .iter()
            .any(|c| c.output == "last_hidden_state_interp"),
        "the interpolated-position case is checked"
    );
}

#[test]
fn image_processing_output_names_map_to_processors() {
    use llava::vision_encoders::processing::Resize;
    let clip = parity::processor_for_output("clip_224_pad").unwrap();
    assert_eq!(clip.resize, Some(Resize::ShortestEdge(224)));
    assert!(clip.pad_to_square);
    let dino = parity::processor_for_output("dinov2_224").unwrap();
    assert_eq!(
        (dino.resize, dino.crop),
        (Some(Resize::ShortestEdge(256)), Some((224, 224)))
    );
    let siglip = parity::processor_for_output("siglip_384").unwrap();
    assert_eq!(
        (siglip.resize, siglip.crop),
        (
            Some(Resize::Exact {
                height: 384,
                width: 384
            }),
            None
        )
    );
    assert!(parity::processor_for_output("paligemma_224").is_none());
}
