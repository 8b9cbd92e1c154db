//! GGUF files from `foundation::gguf` and `llava export-gguf`, read by ggml-org's own `gguf`
//! package (PyPI, installed into the cached torch environment on first use): metadata values,
//! shapes, types, each tensor's bytes equal to `gguf.quants.quantize` (ggml's reference
//! quantizers) of the same values, and an exported language model equal to its checkpoint and
//! tokenizer (read with safetensors and tokenizers); and llama.cpp itself (llama-cpp-python 0.3.36
//! from PyPI, built from source into the cached torch environment on first use: about 8 minutes
//! on 2 cores) answering from an exported file with transformers' greedy tokens. SKIPPED only
//! when the packages cannot be installed (no network).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{llava, python_with, root, run_ok};
use llava::foundation::gguf::{GgufWriter, TensorType, Value};
use serde_json::json;

/// The torch environment's python with `packages`, one installation at a time (the tests of this
/// file run side by side, and two pip installs into one environment race); `None`, having said
/// SKIPPED for `what`, when they cannot be installed.
fn python_having(check: &str, packages: &[&str], what: &str) -> Option<std::path::PathBuf> {
    static INSTALLING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = INSTALLING.lock().unwrap_or_else(|e| e.into_inner());
    python_with(check, packages)
        .map_err(|why| eprintln!("SKIPPED the {what} check: {why}"))
        .ok()
}

/// `llava export-gguf --type kind` of `model` into `dir`: the file's path.
fn export(model: &Path, kind: &str, dir: &Path) -> PathBuf {
    run_ok(
        llava()
            .args(["export-gguf", "--type", kind, "--model"])
            .arg(model)
            .arg("--output")
            .arg(dir),
    );
    let name = model.file_name().unwrap().to_string_lossy();
    dir.join(format!("{name}-{kind}.gguf"))
}

/// Deterministic values with a spread of magnitudes, signs and a few zeros.
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|i| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let u = (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
            if i % 29 == 0 {
                0.0
            } else {
                u * (1.0 + (i % 7) as f32)
            }
        })
        .collect()
}

#[test]
fn gguf_package_reads_our_files_and_quantizes_as_we_do() {
    let Some(python) = python_having("import gguf", &["gguf==0.19.0"], "gguf") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut writer = GgufWriter::new();
    writer.set("general.architecture", Value::Str("gemma".into()));
    writer.set("gemma.block_count", Value::U32(18));
    writer.set("gemma.attention.layer_norm_rms_epsilon", Value::F32(1e-6));
    writer.set("tokenizer.ggml.add_space_prefix", Value::Bool(false));
    writer.set("clip.vision.feature_layer", Value::I32s(vec![22]));
    writer.set(
        "clip.vision.image_mean",
        Value::F32s(vec![0.5, 0.25, 0.125]),
    );
    writer.set(
        "tokenizer.ggml.tokens",
        Value::Strs(vec!["<pad>".into(), "▁the".into(), "<0x0A>".into()]),
    );
    let tensors = [
        ("output_norm.weight", vec![48], TensorType::F32),
        ("blk.0.attn_q.weight", vec![8, 64], TensorType::F16),
        ("blk.0.attn_k.weight", vec![3, 40], TensorType::BF16),
        ("blk.0.ffn_up.weight", vec![5, 96], TensorType::Q8_0),
        ("token_embd.weight", vec![7, 128], TensorType::Q4_0),
    ];
    let values_dir = dir.path().join("values");
    std::fs::create_dir(&values_dir).unwrap();
    for (i, (name, shape, kind)) in tensors.iter().enumerate() {
        let n = shape.iter().product::<i64>() as usize;
        let v = values(n, i as u64);
        writer.add(name, shape, &v, *kind).unwrap();
        let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        std::fs::write(values_dir.join(format!("{name}.f32")), bytes).unwrap();
    }
    let file = dir.path().join("model.gguf");
    writer.write(&file).unwrap();
    let expected = json!({
        "metadata": {
            "general.architecture": "gemma",
            "gemma.block_count": 18,
            "gemma.attention.layer_norm_rms_epsilon": 1e-6,
            "tokenizer.ggml.add_space_prefix": false,
            "clip.vision.feature_layer": [22],
            "clip.vision.image_mean": [0.5, 0.25, 0.125],
            "tokenizer.ggml.tokens": ["<pad>", "▁the", "<0x0A>"],
        },
        "tensors": tensors.iter().map(|(name, shape, kind)| json!({
            "name": name,
            "shape": shape,
            "type": format!("{kind:?}"),
        })).collect::<Vec<_>>(),
    });
    let expected_path = dir.path().join("expected.json");
    std::fs::write(&expected_path, expected.to_string()).unwrap();
    let report = run_ok(
        Command::new(python)
            .arg(root().join("scripts/gguf_check.py"))
            .arg(&file)
            .arg(&expected_path)
            .arg(&values_dir),
    );
    assert!(report.contains("\"problems\": []"), "{report}");
    eprintln!("{report}");
}

/// A copy of parity fixture `name` (inputs, expected outputs, model) under `dir`, its model given
/// the Gemma fixture's tokenizer.json when it has none (the Gemma 2 and 3 fixtures share its
/// 640-token vocabulary): `llava export-gguf` needs a tokenizer, the checks read the copy.
fn fixture_with_tokenizer(name: &str, dir: &Path) -> PathBuf {
    let fixture = root().join("fixtures/hf-parity").join(name);
    let copy = dir.join(name);
    std::fs::create_dir_all(copy.join("model")).unwrap();
    for file in ["inputs.safetensors", "expected.safetensors"] {
        std::fs::copy(fixture.join(file), copy.join(file)).unwrap();
    }
    for entry in std::fs::read_dir(fixture.join("model")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), copy.join("model").join(entry.file_name())).unwrap();
    }
    let tokenizer = copy.join("model/tokenizer.json");
    if !tokenizer.exists() {
        let gemma = root().join("fixtures/hf-parity/gemma/model/tokenizer.json");
        std::fs::copy(gemma, tokenizer).unwrap();
    }
    copy
}

/// `llava export-gguf` of the language models of the LLaVA fixture (Gemma 1), the Gemma 2 and the
/// Gemma 3 fixtures in each type: the file holds the checkpoint's tensors (norms as 1 + w) within
/// each type's error, config.json's shapes, windows, soft-caps and rotary embeddings, and the
/// tokenizer's vocabulary, id by id (scripts/gguf_lm_check.py).
#[test]
fn exported_language_model_is_its_checkpoint() {
    let Some(python) = python_having("import gguf", &["gguf==0.19.0"], "gguf") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let models = [
        root().join("fixtures/hf-parity/llava-clip/model"),
        fixture_with_tokenizer("gemma2", dir.path()).join("model"),
        fixture_with_tokenizer("gemma3-text", dir.path()).join("model"),
    ];
    for model in &models {
        let out = dir
            .path()
            .join("out")
            .join(model.parent().unwrap().file_name().unwrap());
        for kind in ["f32", "f16", "bf16", "q8_0", "q4_0"] {
            let file = export(model, kind, &out);
            let report = run_ok(
                Command::new(&python)
                    .arg(root().join("scripts/gguf_lm_check.py"))
                    .arg(&file)
                    .arg(model),
            );
            assert!(
                report.contains("\"problems\": []"),
                "{} {kind}: {report}",
                model.display()
            );
        }
    }
    let out = llava()
        .args(["export-gguf", "--type", "q5_k", "--model"])
        .arg(&models[0])
        .arg("--output")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("q4_0"));
}

/// llama.cpp (llama-cpp-python) runs `llava export-gguf`'s files of the Gemma, Gemma 2 and Gemma 3
/// fixtures (architectures gemma, gemma2, gemma3): in f32 and f16 its logits are transformers'
/// (eager attention) within llama.cpp's arithmetic and its greedy continuation is transformers'
/// token for token, past Gemma 2's and 3's sliding windows (4 tokens) with their soft-caps, query
/// scales and per-type rotary embeddings; it tokenizes text, chat marks included, as the
/// fixture's tokenizer.json does. The Q8_0 and Q4_0 files load and decode (on these random
/// 64-wide models their tokens drift, as our own int4 weights' do).
#[test]
fn llama_cpp_answers_from_exported_files_as_transformers_does() {
    let Some(python) = python_having(
        "import gguf, llama_cpp; assert llama_cpp.__version__ == '0.3.36'",
        &["gguf==0.19.0", "llama-cpp-python==0.3.36"],
        "llama.cpp",
    ) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    for name in ["gemma", "gemma2", "gemma3-text"] {
        let fixture = fixture_with_tokenizer(name, dir.path());
        let out = dir.path().join("out").join(name);
        for kind in ["f32", "f16", "q8_0", "q4_0"] {
            let file = export(&fixture.join("model"), kind, &out);
            let report = run_ok(
                Command::new(&python)
                    .arg(root().join("scripts/llama_cpp_check.py"))
                    .arg(&file)
                    .arg(&fixture)
                    .arg("Hello world, the cat sat on the mat.")
                    .arg("<start_of_turn>user\nWhat is in the image?<end_of_turn>\n<start_of_turn>model\n"),
            );
            let report: serde_json::Value = serde_json::from_str(report.trim()).unwrap();
            eprintln!("{name} {kind}: {report}");
            let diff = report["logits_max_diff"].as_f64().unwrap();
            let generated = report["generated"].as_array().unwrap();
            assert_eq!(
                generated.len(),
                report["reference"].as_array().unwrap().len()
            );
            for t in report["tokenized"].as_array().unwrap() {
                assert_eq!(t["same"], true, "{name} {kind}: {t}");
            }
            if kind == "f32" || kind == "f16" {
                assert_eq!(report["same_tokens"], true, "{name} {kind}: {report}");
                assert!(diff < 0.05, "{name} {kind}: logits differ by {diff}");
            } else {
                assert!(
                    diff.is_finite() && diff < 10.0,
                    "{name} {kind}: logits differ by {diff}"
                );
            }
        }
    }
}

/// llama.cpp's multimodal library (mtmd, llama-cpp-python 0.3.36) runs `llava export-gguf`'s
/// language-model and mmproj files of two tiny LLaVA-Gemma models on one image
/// (fixtures/gguf-vlm, made by scripts/make_gguf_vlm_fixture.py with transformers): it splits the
/// prompt around the image as `llava generate` does, and
/// * SigLIP tower: in f32 and f16 its image embeddings are transformers' within ggml's arithmetic
///   (its convolution is f16, its GELU the tanh form) and its greedy answer is transformers' and
///   `llava generate`'s token for token, also through llama-cpp-python's chat API (the file's
///   chat template);
/// * SigLIP tower and LLaVA's projector before a Gemma 3 language model: the same, and its logits
///   after the prompt are transformers' (llama.cpp's gemma3 leaves image embeddings unscaled, as
///   transformers does, where its gemma and gemma2 scale them: the mmproj's last layer follows);
/// * CLIP tower: its image embeddings and greedy answer are transformers' run as llama.cpp
///   0c1e57098 runs a class token (ggml-org/llama.cpp#25814: appended last, positioned and kept
///   as if first), so the file is right and the difference from our answer is that bug's;
/// * Gemma 3 (projector `gemma3`: SigLIP, average pool to 4 tokens, soft-embedding norm; a Gemma 3
///   language model with sliding layers): in f32 and f16 its image embeddings are transformers'
///   within ggml's arithmetic, its logits after the prompt are transformers' (which shows the
///   image's tokens attending to each other both ways, as Gemma 3's mask has them: causal
///   attention there moves these logits by 0.15), and its greedy answer is transformers' and
///   `llava generate`'s, also through the chat API (the file's Gemma 3 chat template);
/// * Q8_0 and Q4_0 files load and answer (weights too narrow for blocks stay f16, as llama.cpp's
///   converter keeps them).
#[test]
fn llama_cpp_answers_about_an_image_from_exported_files() {
    // The check script reads the image with Pillow and the expected tokens with safetensors.
    let Some(python) = python_having(
        "import gguf, llama_cpp, PIL, safetensors; assert llama_cpp.__version__ == '0.3.36'",
        &[
            "gguf==0.19.0",
            "llama-cpp-python==0.3.36",
            "pillow",
            "safetensors",
        ],
        "llama.cpp",
    ) else {
        return;
    };
    let fixture = root().join("fixtures/gguf-vlm");
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture.join("meta.json")).unwrap()).unwrap();
    let question = meta["question"].as_str().unwrap();
    let image = fixture.join("image.png");
    let models = [
        ("siglip", fixture.join("siglip/model"), 16),
        ("siglip-gemma3", fixture.join("siglip-gemma3/model"), 16),
        (
            "clip",
            root().join("fixtures/hf-parity/llava-clip/model"),
            16,
        ),
        ("gemma3", fixture.join("gemma3/model"), 4),
    ];
    let dirs = tempfile::tempdir().unwrap();
    for (tower, model, image_tokens) in &models {
        let dir = dirs.path().join(tower);
        // Our own answer, which the parity fixtures hold to transformers'.
        let ours = run_ok(
            llava()
                .args(["generate", "--device", "cpu", "--max-new-tokens"])
                .arg(meta["new_tokens"].to_string())
                .arg("--prompt")
                .arg(question)
                .arg("--model")
                .arg(model)
                .arg("--image")
                .arg(&image),
        );
        for kind in ["f32", "f16", "q8_0", "q4_0"] {
            let lm = export(model, kind, &dir);
            let name = model.file_name().unwrap().to_string_lossy();
            let mmproj = dir.join(format!("mmproj-{name}-{kind}.gguf"));
            let report = run_ok(
                Command::new(&python)
                    .arg(root().join("scripts/llama_cpp_vlm_check.py"))
                    .arg(&lm)
                    .arg(&mmproj)
                    .arg(&image)
                    .arg(fixture.join(tower).join("expected.safetensors"))
                    .arg(question),
            );
            let report: serde_json::Value = serde_json::from_str(report.trim()).unwrap();
            eprintln!("{tower} {kind}: {report}");
            assert_eq!(report["prompt_same"], true, "{tower} {kind}: {report}");
            assert_eq!(
                report["image_tokens"], *image_tokens,
                "{tower} {kind}: {report}"
            );
            let diff = report["features_max_diff"].as_f64().unwrap();
            let scale = report["features_max_abs"].as_f64().unwrap();
            let generated = report["generated"].as_array().unwrap();
            assert_eq!(
                generated.len(),
                meta["new_tokens"].as_u64().unwrap() as usize
            );
            if kind == "f32" || kind == "f16" {
                assert!(
                    diff < 0.01 * scale,
                    "{tower} {kind}: features differ by {diff}"
                );
                assert_eq!(report["same_tokens"], true, "{tower} {kind}: {report}");
                if let Some(logits) = report["prompt_logits_max_diff"].as_f64() {
                    assert!(logits < 0.05, "{tower} {kind}: logits differ by {logits}");
                }
                if *tower != "clip" {
                    let text = decode(&model.join("tokenizer.json"), generated, &python);
                    assert_eq!(text.trim(), ours.trim(), "{tower} {kind}: llava generate");
                    // llama-cpp-python's chat API, through the file's chat template.
                    let chat = report["chat_answer"].as_str().unwrap();
                    assert_eq!(chat.trim(), ours.trim(), "{tower} {kind}: chat answer");
                }
            } else {
                assert!(
                    diff < 0.2 * scale,
                    "{tower} {kind}: features differ by {diff}"
                );
            }
        }
    }
}

/// `ids` decoded by `tokenizer` (the tokenizers package).
fn decode(tokenizer: &Path, ids: &[serde_json::Value], python: &Path) -> String {
    let ids: Vec<String> = ids.iter().map(|i| i.to_string()).collect();
    run_ok(Command::new(python).arg("-c").arg(format!(
        "import sys; from tokenizers import Tokenizer; \
         sys.stdout.write(Tokenizer.from_file({:?}).decode([{}]))",
        tokenizer.display().to_string(),
        ids.join(",")
    )))
}
