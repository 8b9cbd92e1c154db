//! The LoRA workflow as a user runs it, checked against Hugging Face PEFT itself:
//! `llava train --lora` writes an adapter and its base; PEFT (`PeftModel.from_pretrained` on
//! transformers' `LlavaForConditionalGeneration`, scripts/peft_check.py) loads it and computes our
//! logits; `llava merge-lora` writes a full model with those logits; `llava generate --adapter`
//! answers as the merged model does.
//!
//! The PEFT check uses the Python of the cached torch environment, installing transformers 5.17 and
//! peft 0.21.2 there when missing; it says SKIPPED only when they cannot be installed (no network).

mod common;

use std::path::Path;
use std::process::Command;

use common::{llava, python_with, root, run_ok};

use llava::llava_model::LlavaModel;
use tch::{Device, Kind, Tensor};

/// Logits of `model` on `inputs`' input_ids and pixel_values.
fn logits(model: &LlavaModel, inputs: &[(String, Tensor)]) -> Tensor {
    let get = |k: &str| &inputs.iter().find(|(n, _)| n == k).unwrap().1;
    tch::no_grad(|| {
        model.logits(
            &model
                .forward(get("input_ids"), Some(get("pixel_values")), None)
                .unwrap(),
        )
    })
}

#[test]
fn an_adapter_trained_here_loads_in_peft_and_merges_to_the_same_model() {
    adapter_workflow("tiny");
}

/// The same on a Gemma 2 language model: PEFT's transformers model (eager attention) applies the
/// soft-caps and sliding windows our adapter was trained through, and the LLaVA head has no final
/// cap there either.
#[test]
fn a_gemma2_adapter_loads_in_peft_with_our_logits() {
    adapter_workflow("tiny-gemma2");
}

/// And on a whole `Gemma3ForConditionalGeneration` (SigLIP, Gemma 3's projector, a Gemma 3 LM):
/// PEFT's transformers model is given `token_type_ids`, so its image tokens attend to each other
/// both ways as ours do.
#[test]
fn a_gemma3_vlm_adapter_loads_in_peft_with_our_logits() {
    adapter_workflow("tiny-gemma3-vlm");
}

fn adapter_workflow(preset: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("lora");
    run_ok(
        llava()
            .args([
                "train",
                "--preset",
                preset,
                "--stage",
                "2",
                "--lora",
                "--lora-r",
                "8",
                "--lora-alpha",
                "16",
                "--connector-lr",
                "1e-3",
                "--skip-pretraining",
                "--synthetic-images",
                "24",
                "--micro-batch",
                "4",
                "--global-batch",
                "8",
                "--max-steps",
                "3",
                "--activation-checkpointing",
                "--output",
            ])
            .arg(&out),
    );
    let (base, adapter) = (out.join("base"), out.join("adapter"));

    // Our logits with the adapter, on a prompt with an image.
    let mut model = LlavaModel::from_pretrained(&base, Device::Cpu, Kind::Float).unwrap();
    model.load_adapter(&adapter).unwrap();
    let side = model.config.image_side().unwrap();
    let per_image = model.tokens_per_image(side, side);
    let mut ids = vec![2i64];
    ids.extend(std::iter::repeat_n(model.image_token(), per_image as usize));
    ids.extend((0..12).map(|i| 10 + 7 * i));
    let n = ids.len() as i64;
    let inputs = vec![
        (
            "input_ids".to_string(),
            Tensor::from_slice(&ids).view([1, n]),
        ),
        (
            "attention_mask".to_string(),
            Tensor::ones([1, n], (Kind::Int64, Device::Cpu)),
        ),
        (
            "pixel_values".to_string(),
            foundation::layers::seeded_normal(&[1, 3, side, side], 1.0, 5),
        ),
    ];
    let mut inputs = inputs;
    if model.family() != llava::llava_model::config::Family::Llava {
        // The processor's token types: 1 at image tokens (Gemma 3's blocks).
        let ids = Tensor::from_slice(&ids).view([1, n]);
        let types = ids.eq(model.image_token()).to_kind(Kind::Int64);
        inputs.push(("token_type_ids".to_string(), types));
    }
    let ours = logits(&model, &inputs);
    let inputs_file = tmp.path().join("inputs.safetensors");
    let ours_file = tmp.path().join("ours.safetensors");
    foundation::save_safetensors(&inputs_file, &inputs, None).unwrap();
    foundation::save_safetensors(
        &ours_file,
        &[("logits".to_string(), ours.shallow_clone())],
        None,
    )
    .unwrap();

    // `llava merge-lora` gives a plain model with the same logits.
    let merged = tmp.path().join("merged");
    let said = run_ok(
        llava()
            .arg("merge-lora")
            .arg("--model")
            .arg(&base)
            .arg("--adapter")
            .arg(&adapter)
            .arg("--output")
            .arg(&merged),
    );
    assert!(said.contains("merged 14 adapters"), "{said}");
    let plain = LlavaModel::from_pretrained(&merged, Device::Cpu, Kind::Float).unwrap();
    assert!(plain.lora_vs.is_none());
    let diff = (logits(&plain, &inputs) - &ours)
        .abs()
        .max()
        .double_value(&[]);
    assert!(diff < 1e-4, "merged logits differ by {diff}");

    // `generate --adapter` answers as the merged model does.
    let image = root().join("fixtures/hf-parity/image-processing/model/image.jpg");
    let answer = |model: &Path, adapter: Option<&Path>| {
        let mut command = llava();
        command
            .args([
                "generate",
                "--device",
                "cpu",
                "--max-new-tokens",
                "8",
                "--prompt",
                "What color is the shape?",
            ])
            .arg("--model")
            .arg(model)
            .arg("--image")
            .arg(&image);
        if let Some(adapter) = adapter {
            command.arg("--adapter").arg(adapter);
        }
        run_ok(&mut command)
    };
    assert_eq!(answer(&base, Some(&adapter)), answer(&merged, None));

    // PEFT loads what we wrote and computes our logits.
    let python = match python_with(
        "import peft, transformers; assert transformers.__version__.startswith('5.17'); \
         assert peft.__version__ == '0.21.2'",
        &["transformers==5.17.0", "peft==0.21.2"],
    ) {
        Ok(python) => python,
        Err(why) => {
            eprintln!("SKIPPED the PEFT check: {why}");
            return;
        }
    };
    let report = run_ok(
        Command::new(python)
            .arg(root().join("scripts/peft_check.py"))
            .arg("--base")
            .arg(&base)
            .arg("--adapter")
            .arg(&adapter)
            .arg("--inputs")
            .arg(&inputs_file)
            .arg("--expected")
            .arg(&ours_file),
    );
    let last: serde_json::Value =
        serde_json::from_str(report.lines().last().unwrap_or_default()).unwrap();
    eprintln!("peft_check: {last}");
    assert_eq!(last["ok"], true, "{report}");
    // The adapter changed PEFT's logits (a check against an adapter PEFT ignored is no check).
    let effect = last["adapter_effect"].as_f64().unwrap_or(0.0);
    assert!(effect > 1e-3, "PEFT's logits moved by {effect} only");
}
