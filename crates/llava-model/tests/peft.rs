//! LoRA adapters in PEFT's format against PEFT itself (`fixtures/peft-lora`, made by
//! `fixtures/peft-lora/make.py` with peft 0.21.2 and transformers 5.17): we reproduce the logits
//! PEFT computes with its adapters, merged weights give the same logits, what we save has PEFT's
//! tensor names and configuration keys, and what we cannot apply is refused by name.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use foundation::Checkpoint;
use gemma_lm::LoraSpec;
use llava_model::LlavaModel;
use tch::{Device, Kind, Tensor};

fn fixture() -> PathBuf {
    foundation::parity_fixtures().join("../peft-lora")
}

fn base_dir() -> PathBuf {
    foundation::parity_fixtures().join("llava-clip/model")
}

fn inputs() -> HashMap<String, Tensor> {
    foundation::checkpoint::read_all(
        foundation::parity_fixtures().join("llava-clip/inputs.safetensors"),
    )
    .unwrap()
}

fn expected(key: &str) -> Tensor {
    foundation::checkpoint::read_all(fixture().join("expected.safetensors")).unwrap()[key]
        .shallow_clone()
}

fn base() -> LlavaModel {
    LlavaModel::from_pretrained(base_dir(), Device::Cpu, Kind::Float).unwrap()
}

fn logits(model: &LlavaModel) -> Tensor {
    let i = inputs();
    tch::no_grad(|| {
        model.logits(
            &model
                .forward(&i["input_ids"], Some(&i["pixel_values"]), None)
                .unwrap(),
        )
    })
}

/// The largest difference where `attention_mask == 1`, and whether all are within the fixture's
/// tolerance (atol 2e-4, rtol 1e-4).
fn compare(ours: &Tensor, theirs: &Tensor) -> (f64, bool) {
    let mask = inputs()["attention_mask"]
        .ne(0)
        .unsqueeze(-1)
        .expand_as(theirs);
    let (a, b) = (ours.masked_select(&mask), theirs.masked_select(&mask));
    let diff = (&a - &b).abs();
    let within = diff
        .le_tensor(&(b.abs() * 1e-4 + 2e-4))
        .all()
        .int64_value(&[])
        == 1;
    (diff.max().double_value(&[]), within)
}

#[test]
fn pefts_adapters_give_pefts_logits() {
    for (dir, key) in [
        ("adapter", "logits"),
        ("adapter-qv-rslora", "logits_qv_rslora"),
    ] {
        let mut model = base();
        let before = compare(&logits(&model), &expected(key)).0;
        model.load_adapter(fixture().join(dir)).unwrap();
        let (diff, ok) = compare(&logits(&model), &expected(key));
        assert!(ok, "{dir}: max difference {diff}");
        assert!(before > 1.0, "{dir}: the adapter must matter ({before})");
    }
}

#[test]
fn merged_weights_give_the_adapters_logits() {
    let mut model = base();
    model.load_adapter(fixture().join("adapter")).unwrap();
    assert_eq!(model.merge_lora(), 14);
    assert!(!model.lm.has_lora() && model.lora_vs.is_none());
    for key in ["logits", "logits_merged"] {
        let (diff, ok) = compare(&logits(&model), &expected(key));
        assert!(ok, "{key}: max difference {diff}");
    }
    // Merged and saved as a plain model, it loads as one and keeps the logits.
    let tmp = tempfile::tempdir().unwrap();
    model.save_pretrained(tmp.path(), None).unwrap();
    let reloaded = LlavaModel::from_pretrained(tmp.path(), Device::Cpu, Kind::Float).unwrap();
    assert!(logits(&reloaded).allclose(&logits(&model), 1e-6, 1e-6, false));
}

fn keys(file: &Path) -> BTreeSet<String> {
    Checkpoint::open(file)
        .unwrap()
        .names()
        .map(str::to_string)
        .collect()
}

#[test]
fn what_we_save_has_pefts_names_config_keys_and_values() {
    let mut model = base();
    model.load_adapter(fixture().join("adapter")).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let spec = LoraSpec {
        r: 8,
        alpha: 16.0,
        dropout: 0.05,
        rslora: false,
        targets: gemma_lm::lora::ALL_TARGETS
            .iter()
            .map(|t| t.to_string())
            .collect(),
    };
    model
        .save_adapter(tmp.path(), &spec, true, Some("base"))
        .unwrap();
    let (ours, theirs) = (
        tmp.path().join("adapter_model.safetensors"),
        fixture().join("adapter/adapter_model.safetensors"),
    );
    assert_eq!(keys(&ours), keys(&theirs));
    let (a, b) = (
        foundation::checkpoint::read_all(&ours).unwrap(),
        foundation::checkpoint::read_all(&theirs).unwrap(),
    );
    for (name, t) in &b {
        assert!(a[name].equal(t), "{name}");
    }
    let config = |dir: &Path| -> serde_json::Map<String, serde_json::Value> {
        let text = std::fs::read_to_string(dir.join("adapter_config.json")).unwrap();
        serde_json::from_str(&text).unwrap()
    };
    let (ours, theirs) = (config(tmp.path()), config(&fixture().join("adapter")));
    let ours_keys: BTreeSet<&String> = ours.keys().collect();
    let theirs_keys: BTreeSet<&String> = theirs.keys().collect();
    assert_eq!(ours_keys, theirs_keys);
    for key in [
        "peft_type",
        "r",
        "lora_alpha",
        "lora_dropout",
        "target_modules",
        "modules_to_save",
        "use_rslora",
        "use_dora",
        "bias",
        "auto_mapping",
    ] {
        assert_eq!(ours[key], theirs[key], "{key}");
    }
    // And it loads back to the same logits.
    let mut again = base();
    again.load_adapter(tmp.path()).unwrap();
    let (diff, ok) = compare(&logits(&again), &expected("logits"));
    assert!(ok, "{diff}");
}

#[test]
fn a_new_adapter_changes_nothing_until_it_trains() {
    let mut model = base();
    let plain = logits(&model);
    assert_eq!(model.add_lora(&LoraSpec::llava(), 0).unwrap(), 14);
    assert!(logits(&model).equal(&plain));
    let names: BTreeSet<String> = model
        .lora_vs
        .as_ref()
        .unwrap()
        .variables()
        .into_keys()
        .collect();
    assert!(names.contains("model.layers.1.mlp.down_proj.lora_B.weight"));
    assert_eq!(names.len(), 28);
}

/// Copies the fixture's adapter with its tensors or config changed.
fn altered(
    dir: &Path,
    rename: impl Fn(&str) -> Option<String>,
    config: impl Fn(&mut serde_json::Value),
) {
    let src = fixture().join("adapter");
    let ckpt = Checkpoint::open(src.join("adapter_model.safetensors")).unwrap();
    let tensors: Vec<(String, Tensor)> = ckpt
        .names()
        .filter_map(|n| Some((rename(n)?, ckpt.tensor(n).unwrap())))
        .collect();
    foundation::save_safetensors(dir.join("adapter_model.safetensors"), &tensors, None).unwrap();
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("adapter_config.json")).unwrap())
            .unwrap();
    config(&mut json);
    std::fs::write(dir.join("adapter_config.json"), json.to_string()).unwrap();
}

#[test]
fn adapters_we_cannot_apply_are_refused_by_name() {
    type Make = Box<dyn Fn(&Path)>;
    let cases: Vec<(&str, Make)> = vec![
        (
            "vision tower",
            Box::new(|d| {
                altered(
                    d,
                    |n| {
                        Some(n.replace(
                            "model.language_model.layers.0",
                            "model.vision_tower.vision_model.encoder.layers.0",
                        ))
                    },
                    |_| {},
                )
            }),
        ),
        (
            "use_dora",
            Box::new(|d| altered(d, |n| Some(n.into()), |c| c["use_dora"] = true.into())),
        ),
        (
            "only one of lora_A and lora_B",
            Box::new(|d| {
                altered(
                    d,
                    |n| (!n.ends_with("layers.1.mlp.up_proj.lora_B.weight")).then(|| n.into()),
                    |_| {},
                )
            }),
        ),
        (
            "peft_type",
            Box::new(|d| altered(d, |n| Some(n.into()), |c| c["peft_type"] = "IA3".into())),
        ),
    ];
    for (what, make) in cases {
        let tmp = tempfile::tempdir().unwrap();
        make(tmp.path());
        let err = base().load_adapter(tmp.path()).unwrap_err().to_string();
        assert!(err.contains(what), "{what}: {err}");
        assert!(
            err.contains(&tmp.path().display().to_string()),
            "{what}: names the file: {err}"
        );
    }
    // A module the model lacks (layer 7 of a 2-layer model) is named.
    let tmp = tempfile::tempdir().unwrap();
    altered(
        tmp.path(),
        |n| Some(n.replace("layers.1.", "layers.7.")),
        |_| {},
    );
    let err = base().load_adapter(tmp.path()).unwrap_err().to_string();
    assert!(err.contains("model.layers.7"), "{err}");
}
