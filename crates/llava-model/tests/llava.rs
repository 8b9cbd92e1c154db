//! LLaVA beyond the parity fixtures: checkpoint layouts, save and reload, assembly from parts, the
//! image-token merge and its errors.

use std::path::{Path, PathBuf};

use foundation::{Checkpoint, save_safetensors};
use gemma_lm::GenerationConfig;
use llava_model::config::Family;
use llava_model::{LlavaModel, Parts};
use tch::{Device, Kind, Tensor};

fn fixtures() -> PathBuf {
    foundation::parity_fixtures()
}

fn inputs(name: &str) -> std::collections::HashMap<String, Tensor> {
    foundation::checkpoint::read_all(fixtures().join(name).join("inputs.safetensors")).unwrap()
}

fn load(dir: &Path) -> LlavaModel {
    LlavaModel::from_pretrained(dir, Device::Cpu, Kind::Float).unwrap()
}

fn logits(model: &LlavaModel, name: &str) -> Tensor {
    let i = inputs(name);
    tch::no_grad(|| {
        model.logits(
            &model
                .forward(&i["input_ids"], Some(&i["pixel_values"]), None)
                .unwrap(),
        )
    })
}

/// Copies a fixture model under new tensor names.
fn relayout(name: &str, dir: &Path, rename: impl Fn(&str) -> String) {
    let src = fixtures().join(name).join("model");
    let ckpt = Checkpoint::open(&src).unwrap();
    let tensors: Vec<(String, Tensor)> = ckpt
        .names()
        .map(|n| (rename(n), ckpt.tensor(n).unwrap()))
        .collect();
    save_safetensors(dir.join("model.safetensors"), &tensors, None).unwrap();
    std::fs::copy(src.join("config.json"), dir.join("config.json")).unwrap();
}

#[test]
fn every_hf_prefix_layout_loads_to_the_same_logits() {
    let reference = logits(&load(&fixtures().join("llava-clip/model")), "llava-clip");
    type Rename = fn(&str) -> String;
    let layouts: [(&str, Rename); 2] = [
        // transformers 5 in memory: model.language_model.*, model.vision_tower.*, lm_head.
        ("model.*", |n: &str| {
            if let Some(rest) = n.strip_prefix("language_model.model.") {
                format!("model.language_model.{rest}")
            } else {
                format!("model.{n}")
            }
        }),
        // llava-hf with a CLIP tower: vision_tower.vision_model.*.
        ("vision_model", |n: &str| {
            match n.strip_prefix("vision_tower.") {
                Some(rest) => format!("vision_tower.vision_model.{rest}"),
                None => n.to_string(),
            }
        }),
    ];
    for (label, rename) in layouts {
        let tmp = tempfile::tempdir().unwrap();
        relayout("llava-clip", tmp.path(), rename);
        assert!(
            logits(&load(tmp.path()), "llava-clip").equal(&reference),
            "{label}"
        );
    }
}

#[test]
fn save_then_reload_gives_the_same_logits_and_files() {
    for name in ["llava-clip", "llava-dinov2"] {
        let model = load(&fixtures().join(name).join("model"));
        let tokenizer =
            gemma_lm::GemmaTokenizer::from_file(fixtures().join(name).join("model")).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        model.save_pretrained(tmp.path(), Some(&tokenizer)).unwrap();
        for file in [
            "config.json",
            "model.safetensors",
            "tokenizer.json",
            "generation_config.json",
        ] {
            assert!(tmp.path().join(file).exists(), "{file}");
        }
        // The names are the ones transformers 5.17 wrote in the fixture, but for a CLIP tower's
        // `vision_model.` level, which we keep so that transformers 4 loads the tower too.
        let mut ours: Vec<String> = Checkpoint::open(tmp.path())
            .unwrap()
            .names()
            .map(String::from)
            .collect();
        let mut theirs: Vec<String> = Checkpoint::open(fixtures().join(name).join("model"))
            .unwrap()
            .names()
            .map(|n| match n.strip_prefix("vision_tower.") {
                Some(rest) if name == "llava-clip" => format!("vision_tower.vision_model.{rest}"),
                _ => n.to_string(),
            })
            .collect();
        ours.sort();
        theirs.sort();
        assert_eq!(ours, theirs, "{name}");
        assert!(
            logits(&load(tmp.path()), name).equal(&logits(&model, name)),
            "{name}"
        );
    }
}

#[test]
fn a_model_assembles_from_parts_with_an_image_token_added() {
    let tmp = tempfile::tempdir().unwrap();
    // A Gemma whose tokenizer lacks <image>, as google/gemma-2b's does.
    let gemma = tmp.path().join("gemma");
    std::fs::create_dir(&gemma).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixtures().join("gemma/model").join(f), gemma.join(f)).unwrap();
    }
    let mut tok: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("gemma/model/tokenizer.json")).unwrap(),
    )
    .unwrap();
    tok["added_tokens"]
        .as_array_mut()
        .unwrap()
        .retain(|t| t["content"] != "<image>");
    std::fs::write(gemma.join("tokenizer.json"), tok.to_string()).unwrap();

    let parts = Parts {
        lm: gemma.clone(),
        vision: fixtures().join("clip-vision/model"),
        connector: None,
        seed: 7,
        projector_type: "mlp2x_gelu".into(),
        image_size: None,
        family: Family::Llava,
        image_tokens: None,
    };
    let (model, tokenizer) = LlavaModel::from_parts(&parts, Device::Cpu, Kind::Float).unwrap();
    assert_eq!(
        tokenizer.token_id("<image>"),
        Some(639),
        "appended after the last id"
    );
    assert_eq!(model.image_token(), 639);
    assert_eq!(model.config.text_config.vocab_size, 640);
    assert_eq!(model.config.image_seq_length, Some(16));

    // The seed decides the random connector; a connector file replaces it.
    let (again, _) = LlavaModel::from_parts(&parts, Device::Cpu, Kind::Float).unwrap();
    let px = &inputs("llava-clip")["pixel_values"];
    let features = tch::no_grad(|| model.image_features(px).unwrap());
    assert!(features.equal(&tch::no_grad(|| again.image_features(px).unwrap())));
    let file = tmp.path().join("connector.safetensors");
    model.connector.save(&file).unwrap();
    let with_file = Parts {
        connector: Some(file),
        seed: 8,
        ..parts.clone()
    };
    let (loaded, _) = LlavaModel::from_parts(&with_file, Device::Cpu, Kind::Float).unwrap();
    assert!(features.equal(&tch::no_grad(|| loaded.image_features(px).unwrap())));

    // The assembled model saves, reloads and generates about an image.
    let out = tmp.path().join("llava");
    model.save_pretrained(&out, Some(&tokenizer)).unwrap();
    let reloaded = load(&out);
    let prompt = model.expand_image_tokens(&[2, 639, 10, 11], 16);
    let config = GenerationConfig {
        max_new_tokens: 4,
        ..Default::default()
    };
    let a = model
        .generate(
            std::slice::from_ref(&prompt),
            Some(&px.narrow(0, 0, 1)),
            &config,
            |_, _| {},
        )
        .unwrap();
    let b = reloaded
        .generate(&[prompt], Some(&px.narrow(0, 0, 1)), &config, |_, _| {})
        .unwrap();
    assert_eq!(a, b);
}

#[test]
fn gemma3_and_paligemma_assemble_from_a_gemma_and_a_siglip_tower() {
    let tmp = tempfile::tempdir().unwrap();
    // A Gemma 3 language model with a tokenizer (the Gemma fixture's).
    let gemma3 = tmp.path().join("gemma3-text");
    std::fs::create_dir_all(&gemma3).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixtures().join("gemma3-text/model").join(f), gemma3.join(f)).unwrap();
    }
    std::fs::copy(
        fixtures().join("gemma/model/tokenizer.json"),
        gemma3.join("tokenizer.json"),
    )
    .unwrap();
    let parts = Parts {
        lm: gemma3.clone(),
        vision: fixtures().join("siglip-vision/model"),
        connector: None,
        seed: 3,
        projector_type: String::new(),
        image_size: None,
        family: Family::Gemma3,
        image_tokens: None,
    };
    let vision = vision_encoders::VisionConfig::from_file(&parts.vision).unwrap();
    let side = vision.image_size() / vision.patch_size();
    let px = Tensor::randn(
        [1, 3, vision.image_size(), vision.image_size()],
        (Kind::Float, Device::Cpu),
    );
    for (family, lm) in [
        (Family::Gemma3, gemma3.clone()),
        (Family::PaliGemma, fixtures().join("gemma/model")),
    ] {
        let parts = Parts {
            family,
            lm,
            ..parts.clone()
        };
        let (model, tokenizer) = LlavaModel::from_parts(&parts, Device::Cpu, Kind::Float).unwrap();
        assert_eq!(model.family(), family);
        let per_image = model.tokens_per_image(vision.image_size(), vision.image_size());
        let image = tokenizer.decode(&[model.image_token()], false).unwrap();
        match family {
            Family::Gemma3 => {
                // The largest square of at most 256 tokens whose side divides the patch grid.
                let t = (1..=side.min(16)).rev().find(|t| side % t == 0).unwrap();
                assert_eq!(per_image, t * t);
                assert_eq!(image, "<image_soft_token>");
                let (boi, eoi) = model.config.image_delimiters().unwrap();
                assert_eq!(tokenizer.token_id("<start_of_image>"), Some(boi));
                assert_eq!(tokenizer.token_id("<end_of_image>"), Some(eoi));
            }
            _ => {
                assert_eq!(per_image, side * side);
                assert_eq!(image, "<image>");
            }
        }
        assert!(model.config.text_config.vocab_size > model.image_token());

        // It saves as its family, reloads, and answers the same.
        let out = tmp.path().join(family.model_type());
        model.save_pretrained(&out, Some(&tokenizer)).unwrap();
        let reloaded = load(&out);
        assert_eq!(reloaded.family(), family);
        let format = model.prompt_format(&tokenizer, per_image);
        let mut content = format.mark_images("What is it?", 1);
        if family == Family::Gemma3 {
            assert!(content.starts_with("<start_of_image>"));
        }
        content = content.trim().to_string();
        let ids = format
            .encode(&tokenizer, &[gemma_lm::Message::user(content)])
            .unwrap();
        let prompt = model.expand_image_tokens(&ids, per_image);
        let config = GenerationConfig {
            max_new_tokens: 3,
            ..Default::default()
        };
        let answer = |m: &LlavaModel| {
            m.generate(std::slice::from_ref(&prompt), Some(&px), &config, |_, _| {})
                .unwrap()
        };
        assert_eq!(answer(&model), answer(&reloaded));
    }

    // Each family takes its own generation of language model, as transformers reads it.
    let gemma1 = Parts {
        lm: fixtures().join("gemma/model"),
        ..parts.clone()
    };
    let err = LlavaModel::from_parts(&gemma1, Device::Cpu, Kind::Float)
        .unwrap_err()
        .to_string();
    assert!(err.contains("Gemma 3"), "{err}");
    let paligemma3 = Parts {
        family: Family::PaliGemma,
        ..parts.clone()
    };
    assert!(LlavaModel::from_parts(&paligemma3, Device::Cpu, Kind::Float).is_err());

    // Gemma 3's pooled size must be a square dividing the grid; other towers are refused.
    let bad = Parts {
        image_tokens: Some(2),
        ..parts.clone()
    };
    assert!(LlavaModel::from_parts(&bad, Device::Cpu, Kind::Float).is_err());
    let clip = Parts {
        vision: fixtures().join("clip-vision/model"),
        ..parts
    };
    let err = LlavaModel::from_parts(&clip, Device::Cpu, Kind::Float)
        .unwrap_err()
        .to_string();
    assert!(err.contains("SigLIP"), "{err}");
}

#[test]
fn image_tokens_must_match_the_images() {
    let model = load(&fixtures().join("llava-clip/model"));
    let i = inputs("llava-clip");
    let one_image = i["pixel_values"].narrow(0, 0, 1);
    let err = model
        .forward(&i["input_ids"], Some(&one_image), None)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("32 <image> tokens") && err.contains("16"),
        "{err}"
    );
    let err = model
        .forward(&i["input_ids"], None, None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("no images"), "{err}");
    // Text-only rows need no images.
    let text = Tensor::from_slice(&[2i64, 10, 11, 12]).view([1, 4]);
    assert!(model.forward(&text, None, None).is_ok());
}

#[test]
fn batched_generation_with_images_matches_one_at_a_time() {
    let model = load(&fixtures().join("llava-dinov2/model"));
    let px = inputs("llava-dinov2")["pixel_values"].shallow_clone();
    let prompts = vec![
        model.expand_image_tokens(&[2, 639, 10, 11, 12, 13], 16),
        model.expand_image_tokens(&[2, 639, 20], 16),
    ];
    let config = GenerationConfig {
        max_new_tokens: 6,
        ..Default::default()
    };
    let batched = model
        .generate(&prompts, Some(&px), &config, |_, _| {})
        .unwrap();
    for (i, prompt) in prompts.iter().enumerate() {
        let alone = model
            .generate(
                std::slice::from_ref(prompt),
                Some(&px.narrow(0, i as i64, 1)),
                &config,
                |_, _| {},
            )
            .unwrap();
        assert_eq!(batched[i], alone[0], "row {i}");
    }
}

#[test]
fn the_original_llava_gemma_scaling_multiplies_features_by_sqrt_hidden() {
    let mut model = load(&fixtures().join("llava-clip/model"));
    let px = inputs("llava-clip")["pixel_values"].shallow_clone();
    let plain = tch::no_grad(|| model.image_features(&px).unwrap());
    model.config.image_features_scaled = Some(true);
    let scaled = tch::no_grad(|| model.image_features(&px).unwrap());
    assert!(
        scaled.allclose(&(plain * 8.0), 1e-6, 1e-6, false),
        "hidden 64: sqrt = 8"
    );
}

#[test]
fn stage_one_gradients_reach_only_the_connector() {
    let mut model = load(&fixtures().join("llava-clip/model"));
    model.lm_vs.freeze();
    model.vision_vs.freeze();
    let i = inputs("llava-clip");
    let hidden = model
        .forward(&i["input_ids"], Some(&i["pixel_values"]), None)
        .unwrap();
    let (loss, _) = model.loss(&hidden, &i["labels"]).unwrap();
    loss.backward();
    for t in model.connector_vs.trainable_variables() {
        assert!(t.grad().defined() && t.grad().abs().sum(Kind::Float).double_value(&[]) > 0.0);
    }
    assert!(model.lm_vs.variables().values().all(|t| !t.requires_grad()));
    assert!(
        model
            .vision_vs
            .variables()
            .values()
            .all(|t| !t.grad().defined())
    );
}

/// Gemma 3 and PaliGemma as the hub names them (`vision_tower.vision_model.*`), as transformers
/// 5.17 holds them in memory (`model.language_model.*`, `model.vision_tower.*`,
/// `model.multi_modal_projector.*`), and as we save them: the same logits every time, and the
/// family's `config.json` back without LLaVA's own keys.
#[test]
fn gemma_vlms_load_every_layout_and_save_as_their_family() {
    for name in ["gemma3", "paligemma"] {
        let reference = logits(&load(&fixtures().join(name).join("model")), name);
        type Rename = fn(&str) -> String;
        let layouts: [(&str, Rename); 2] = [
            ("hub", |n: &str| match n.strip_prefix("vision_tower.") {
                Some(rest) => format!("vision_tower.vision_model.{rest}"),
                None => n.to_string(),
            }),
            ("in memory", |n: &str| {
                match n.strip_prefix("language_model.model.") {
                    Some(rest) => format!("model.language_model.{rest}"),
                    None => format!("model.{n}"),
                }
            }),
        ];
        for (label, rename) in layouts {
            let tmp = tempfile::tempdir().unwrap();
            relayout(name, tmp.path(), rename);
            let diff = (logits(&load(tmp.path()), name) - &reference)
                .abs()
                .max()
                .double_value(&[]);
            assert_eq!(diff, 0.0, "{name}, {label}");
        }
        let model = load(&fixtures().join(name).join("model"));
        let tmp = tempfile::tempdir().unwrap();
        model.save_pretrained(tmp.path(), None).unwrap();
        let again = load(tmp.path());
        assert_eq!(again.family(), model.family());
        assert!(logits(&again, name).equal(&reference), "{name} saved");
        let config: serde_json::Value =
            serde_json::from_slice(&std::fs::read(tmp.path().join("config.json")).unwrap())
                .unwrap();
        assert_eq!(config["model_type"], name);
        for key in ["vision_feature_layer", "projector_hidden_act"] {
            assert!(config.get(key).is_none(), "{name} config has {key}");
        }
    }
}

/// PaliGemma's prefix and Gemma 3's images attend both ways; without that the logits move (the
/// fixtures' descriptions give how far transformers' own move), so the parity checks see it.
#[test]
fn the_gemma_vlms_attention_blocks_change_their_logits() {
    for name in ["gemma3", "paligemma"] {
        let model = load(&fixtures().join(name).join("model"));
        let i = inputs(name);
        let ids = &i["input_ids"];
        let hidden = |types: Option<&Tensor>| {
            tch::no_grad(|| {
                model.logits(
                    &model
                        .forward_typed(ids, Some(&i["pixel_values"]), None, types)
                        .unwrap(),
                )
            })
        };
        let with = hidden(Some(&i["token_type_ids"]));
        // All suffix (PaliGemma) or no image tokens (Gemma 3): causal everywhere.
        let causal_types = match name {
            "paligemma" => ids.ones_like(),
            _ => ids.zeros_like(),
        };
        let without = hidden(Some(&causal_types));
        let moved = (with - without).abs().max().double_value(&[]);
        assert!(
            moved > 0.1,
            "{name}: the blocks moved the logits by {moved} only"
        );
    }
}

/// PaliGemma's training batches: the prefix ends where a sample's labels start, per sample when
/// several are packed in a row.
#[test]
fn paligemma_token_types_come_from_the_labels() {
    let labels = Tensor::from_slice(&[-100i64, -100, 5, 6, -100, -100, 7, -100]).view([1, 8]);
    let types = LlavaModel::token_types_from_labels(&labels, None);
    assert_eq!(
        Vec::<i64>::try_from(types.view([-1])).unwrap(),
        [0, 0, 1, 1, 1, 1, 1, 1]
    );
    let segments = Tensor::from_slice(&[0i64, 0, 0, 0, 1, 1, 1, -1]).view([1, 8]);
    let types = LlavaModel::token_types_from_labels(&labels, Some(&segments));
    assert_eq!(
        Vec::<i64>::try_from(types.view([-1])).unwrap(),
        [0, 0, 1, 1, 0, 0, 1, 0],
        "padding (segment -1) starts a run of its own; the padding mask keeps it out of blocks"
    );
}

#[test]
fn a_quantized_model_saves_its_codes_and_loads_them_back() {
    use foundation::quant::Quantization;
    for (name, how) in [
        ("llava-clip", Quantization::Int4 { group: 32 }),
        ("gemma3", Quantization::Int8),
        ("paligemma", Quantization::Int4 { group: 32 }),
    ] {
        let source = fixtures().join(name).join("model");
        let quantized =
            LlavaModel::from_pretrained_quantized(&source, Device::Cpu, Kind::Float, Some(how))
                .unwrap();
        let tmp = tempfile::tempdir().unwrap();
        quantized.save_pretrained(tmp.path(), None).unwrap();
        let config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(tmp.path().join("config.json")).unwrap())
                .unwrap();
        assert_eq!(config["quantization_config"], how.to_config(), "{name}");

        // It loads as its codes, in its own form, and answers as the model it was saved from.
        let loaded = load(tmp.path());
        assert_eq!(loaded.quantization(), Some(how), "{name}");
        assert!(
            logits(&loaded, name).equal(&logits(&quantized, name)),
            "{name}: logits differ"
        );
        let again =
            LlavaModel::from_pretrained_quantized(tmp.path(), Device::Cpu, Kind::Float, Some(how))
                .unwrap();
        assert!(logits(&again, name).equal(&logits(&quantized, name)));

        // Another form, an adapter or saving it dense again are not silently done.
        let other = match how {
            Quantization::Int8 => Quantization::Int4 { group: 32 },
            _ => Quantization::Int8,
        };
        let err = LlavaModel::from_pretrained_quantized(
            tmp.path(),
            Device::Cpu,
            Kind::Float,
            Some(other),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains(&format!("holds {how}")), "{err}");
        let mut loaded = loaded;
        let err = loaded.load_adapter(tmp.path()).unwrap_err().to_string();
        assert!(err.contains("dense"), "{err}");
    }
}
