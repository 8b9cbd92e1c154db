//! The towers beyond the parity fixtures: checkpoint layouts, feature selection, dtypes, errors.

use std::path::{Path, PathBuf};

use foundation::{Checkpoint, save_safetensors};
use tch::{Device, Kind, Tensor};
use vision_encoders::{
    ClipVisionConfig, Dinov2Config, FeatureSelect, SelectStrategy, VisionConfig, VisionTower,
};

fn fixture(name: &str) -> PathBuf {
    foundation::parity_fixtures().join(name)
}

fn pixels(name: &str) -> Tensor {
    let inputs =
        foundation::checkpoint::read_all(fixture(name).join("inputs.safetensors")).unwrap();
    inputs["pixel_values"].shallow_clone()
}

fn load(dir: &Path) -> VisionTower {
    VisionTower::from_pretrained(dir, Device::Cpu, Kind::Float)
        .unwrap()
        .1
}

/// Rewrites a fixture's model under new tensor names and a new config.
fn relayout(
    name: &str,
    dir: &Path,
    config: &serde_json::Value,
    rename: impl Fn(&str) -> Option<String>,
) {
    let ckpt = Checkpoint::open(fixture(name).join("model")).unwrap();
    let mut tensors: Vec<(String, Tensor)> = ckpt
        .names()
        .filter_map(|n| rename(n).map(|new| (new, ckpt.tensor(n).unwrap())))
        .collect();
    // Something else in the same file, as in a full CLIP or LLaVA checkpoint.
    tensors.push((
        "text_model.embeddings.token_embedding.weight".into(),
        Tensor::zeros([4, 2], (Kind::Float, Device::Cpu)),
    ));
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    save_safetensors(dir.join("model.safetensors"), &tensors, None).unwrap();
}

fn fixture_config(name: &str) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixture(name).join("model/config.json")).unwrap())
        .unwrap()
}

fn last_hidden(tower: &VisionTower, px: &Tensor) -> Tensor {
    tch::no_grad(|| tower.forward(px).unwrap().last_hidden_state)
}

#[test]
fn clip_loads_from_full_clip_and_llava_layouts() {
    let px = pixels("clip-vision");
    let reference = last_hidden(&load(&fixture("clip-vision/model")), &px);
    let full_clip = serde_json::json!({
        "model_type": "clip",
        "text_config": {"hidden_size": 2},
        "vision_config": fixture_config("clip-vision"),
    });
    for prefix in [
        "vision_model.",
        "vision_tower.vision_model.",
        "model.vision_tower.vision_model.",
    ] {
        let tmp = tempfile::tempdir().unwrap();
        relayout("clip-vision", tmp.path(), &full_clip, |n| {
            Some(format!("{prefix}{n}"))
        });
        let got = last_hidden(&load(tmp.path()), &px);
        assert!(got.equal(&reference), "{prefix}");
    }
}

#[test]
fn siglip_loads_from_every_layout_the_hub_has() {
    let px = pixels("siglip-vision");
    let reference = last_hidden(&load(&fixture("siglip-vision/model")), &px);
    let full_siglip = serde_json::json!({
        "model_type": "siglip",
        "text_config": {"hidden_size": 2},
        "vision_config": fixture_config("siglip-vision"),
    });
    // A full SigLIP (its text tower beside), a Gemma 3 or PaliGemma checkpoint as the hub has
    // them, and transformers 5's in-memory names.
    for prefix in [
        "vision_model.",
        "vision_tower.vision_model.",
        "model.vision_tower.",
    ] {
        let tmp = tempfile::tempdir().unwrap();
        relayout("siglip-vision", tmp.path(), &full_siglip, |n| {
            Some(format!("{prefix}{n}"))
        });
        let got = last_hidden(&load(tmp.path()), &px);
        assert!(got.equal(&reference), "{prefix}");
    }
}

#[test]
fn a_tensor_no_module_takes_is_named() {
    for name in ["siglip-vision", "clip-vision", "dinov2"] {
        let tmp = tempfile::tempdir().unwrap();
        let ckpt = Checkpoint::open(fixture(name).join("model")).unwrap();
        let mut tensors: Vec<(String, Tensor)> = ckpt
            .names()
            .map(|n| (n.to_string(), ckpt.tensor(n).unwrap()))
            .collect();
        let prefix = ckpt
            .prefix_of("embeddings.patch_embedding.weight")
            .or_else(|| ckpt.prefix_of("embeddings.patch_embeddings.projection.weight"))
            .unwrap();
        tensors.push((
            format!("{prefix}encoder.extra_norm.weight"),
            Tensor::zeros([2], (Kind::Float, Device::Cpu)),
        ));
        std::fs::write(
            tmp.path().join("config.json"),
            fixture_config(name).to_string(),
        )
        .unwrap();
        save_safetensors(tmp.path().join("model.safetensors"), &tensors, None).unwrap();
        let err = VisionTower::from_pretrained(tmp.path(), Device::Cpu, Kind::Float)
            .unwrap_err()
            .to_string();
        assert!(err.contains("encoder.extra_norm.weight"), "{name}: {err}");
    }
}

#[test]
fn dinov2_loads_inside_llava_and_without_its_mask_token() {
    let px = pixels("dinov2");
    let reference = last_hidden(&load(&fixture("dinov2/model")), &px);
    let tmp = tempfile::tempdir().unwrap();
    relayout("dinov2", tmp.path(), &fixture_config("dinov2"), |n| {
        (n != "embeddings.mask_token").then(|| format!("model.vision_tower.{n}"))
    });
    assert!(last_hidden(&load(tmp.path()), &px).equal(&reference));
}

#[test]
fn a_missing_tensor_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    relayout(
        "clip-vision",
        tmp.path(),
        &fixture_config("clip-vision"),
        |n| (!n.contains("layers.2.mlp.fc1.bias")).then(|| n.to_string()),
    );
    let err = VisionTower::from_pretrained(tmp.path(), Device::Cpu, Kind::Float)
        .unwrap_err()
        .to_string();
    assert!(err.contains("layers.2.mlp.fc1.bias"), "{err}");
}

#[test]
fn llava_features_are_the_second_to_last_layer_without_cls() {
    let px = pixels("clip-vision");
    let tower = load(&fixture("clip-vision/model"));
    let out = tch::no_grad(|| tower.forward(&px).unwrap());
    let features = tower.features(&px, FeatureSelect::default()).unwrap();
    assert_eq!(features.size(), [2, 16, 48]);
    assert!(features.equal(&out.hidden_states[2].narrow(1, 1, 16)));
    assert!(!features.requires_grad());
    let full = tower
        .features(
            &px,
            FeatureSelect {
                layer: 1,
                strategy: SelectStrategy::ClsPatch,
            },
        )
        .unwrap();
    assert!(full.equal(&out.hidden_states[1]));
    let err = tower
        .features(
            &px,
            FeatureSelect {
                layer: -9,
                ..Default::default()
            },
        )
        .unwrap_err();
    assert!(err.to_string().contains("-9"), "{err}");
    assert_eq!(
        SelectStrategy::parse("default").unwrap(),
        SelectStrategy::Patch
    );
    assert_eq!(
        SelectStrategy::parse("full").unwrap(),
        SelectStrategy::ClsPatch
    );
}

#[test]
fn bf16_towers_stay_close_to_f32() {
    for name in ["clip-vision", "dinov2"] {
        let px = pixels(name);
        let reference = last_hidden(&load(&fixture(name).join("model")), &px);
        let mut devices = vec![Device::Cpu];
        if tch::Cuda::is_available() {
            devices.push(Device::Cuda(0));
        }
        for device in devices {
            let (_vs, tower) =
                VisionTower::from_pretrained(fixture(name).join("model"), device, Kind::BFloat16)
                    .unwrap();
            let got = last_hidden(&tower, &px)
                .to_device(Device::Cpu)
                .to_kind(Kind::Float);
            let scale = reference.abs().max().double_value(&[]);
            let err = (&got - &reference).abs().max().double_value(&[]);
            assert!(err < 0.05 * scale, "{name} {device:?}: {err} vs {scale}");
        }
    }
}

#[test]
fn wrong_input_sizes_are_errors() {
    let tower = load(&fixture("clip-vision/model"));
    let err = tower
        .forward(&Tensor::zeros([1, 3, 30, 30], (Kind::Float, Device::Cpu)))
        .unwrap_err();
    assert!(err.to_string().contains("[1, 3, 30, 30]"), "{err}");
    let dino = load(&fixture("dinov2/model"));
    assert!(
        dino.forward(&Tensor::zeros([1, 1, 28, 28], (Kind::Float, Device::Cpu)))
            .is_err()
    );
}

#[test]
fn named_configs_have_the_published_shapes() {
    let clip = ClipVisionConfig::clip_vit_large_patch14_336();
    assert_eq!(
        (
            clip.hidden_size,
            clip.num_hidden_layers,
            clip.grid() * clip.grid()
        ),
        (1024, 24, 576)
    );
    let large = Dinov2Config::dinov2_large();
    assert_eq!(
        (large.hidden_size, large.num_hidden_layers, large.grid()),
        (1024, 24, 37)
    );
    assert!(Dinov2Config::dinov2_giant().use_swiglu_ffn);
    let llava = serde_json::json!({"vision_config": {"model_type": "dinov2", "hidden_size": 96, "num_attention_heads": 4}});
    assert!(
        matches!(VisionConfig::from_value(llava).unwrap(), VisionConfig::Dinov2(c) if c.hidden_size == 96)
    );
    // A full CLIP config whose vision_config does not repeat the model type.
    let full = serde_json::json!({"model_type": "clip", "vision_config": {"hidden_size": 64, "num_attention_heads": 4}});
    assert!(
        matches!(VisionConfig::from_value(full).unwrap(), VisionConfig::Clip(c) if c.hidden_size == 64)
    );
    let unlabelled =
        serde_json::json!({"hidden_size": 64, "num_attention_heads": 4, "layerscale_value": 1.0});
    assert!(matches!(
        VisionConfig::from_value(unlabelled).unwrap(),
        VisionConfig::Dinov2(_)
    ));
    let siglip = serde_json::json!({"model_type": "siglip", "vision_config": {"hidden_size": 64, "num_attention_heads": 4}});
    assert!(
        matches!(VisionConfig::from_value(siglip).unwrap(), VisionConfig::Siglip(c) if c.hidden_size == 64 && c.has_head())
    );
    let so400m = vision_encoders::SiglipVisionConfig::so400m_patch14_384();
    assert_eq!((so400m.hidden_size, so400m.grid()), (1152, 27));
    let naflex = serde_json::json!({"model_type": "siglip2_vision_model"});
    let err = VisionConfig::from_value(naflex).unwrap_err().to_string();
    assert!(err.contains("NaFlex"), "{err}");
    let unknown = serde_json::json!({"model_type": "eva_clip"});
    assert!(
        VisionConfig::from_value(unknown)
            .unwrap_err()
            .to_string()
            .contains("eva_clip")
    );
}

#[test]
fn a_small_giant_style_dinov2_runs() {
    let config = Dinov2Config {
        hidden_size: 48,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        image_size: 28,
        patch_size: 7,
        ..Dinov2Config::dinov2_giant()
    };
    let vs = tch::nn::VarStore::new(Device::Cpu);
    let tower = VisionTower::new(&vs.root(), &VisionConfig::Dinov2(config)).unwrap();
    let names: Vec<String> = vs.variables().into_keys().collect();
    assert!(
        names
            .iter()
            .any(|n| n == "encoder.layer.1.mlp.weights_in.weight")
    );
    let out = tower
        .forward(&Tensor::zeros([1, 3, 28, 28], (Kind::Float, Device::Cpu)))
        .unwrap();
    assert_eq!(out.last_hidden_state.size(), [1, 17, 48]);
}
