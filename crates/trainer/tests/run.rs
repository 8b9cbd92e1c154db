//! A stage run leaves what it promises in its output directory, and stage 2 picks up stage 1's
//! connector.

use trainer::{RunConfig, run};

#[test]
fn both_stages_write_their_outputs() {
    let tmp = tempfile::tempdir().unwrap();
    let mut stage1 = RunConfig::tiny(1, tmp.path().join("pretrain"));
    stage1.synthetic_images = 48;
    stage1.max_steps = Some(2);
    let summary = run(&stage1, |_| {}).unwrap();
    assert_eq!(summary.steps, 2);
    for file in [
        "config.json",
        "metrics.jsonl",
        "summary.json",
        "loss.png",
        "connector.safetensors",
    ] {
        assert!(stage1.output.join(file).exists(), "{file}");
    }
    let written: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(stage1.output.join("config.json")).unwrap())
            .unwrap();
    assert_eq!(
        written["lr"], 1e-3,
        "the resolved config is written next to the outputs"
    );

    let mut stage2 = RunConfig::tiny(2, tmp.path().join("finetune"));
    stage2.synthetic_images = 48;
    stage2.max_steps = Some(2);
    stage2.connector = Some(stage1.output.join("connector.safetensors"));
    run(&stage2, |_| {}).unwrap();
    for file in ["config.json", "tokenizer.json", "model.safetensors"] {
        assert!(stage2.output.join("model").join(file).exists(), "{file}");
    }
    let model = llava_model::LlavaModel::from_pretrained(
        stage2.output.join("model"),
        tch::Device::Cpu,
        tch::Kind::Float,
    );
    assert!(model.is_ok(), "the saved model loads back");

    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(stage2.output.join("summary.json")).unwrap())
            .unwrap();
    for key in ["steps", "samples_seen", "samples_skipped", "final_loss"] {
        assert!(summary.get(key).is_some(), "{key}");
    }

    let mut bad = RunConfig::tiny(3, tmp.path().join("x"));
    bad.synthetic_images = 4;
    assert!(
        run(&bad, |_| {})
            .unwrap_err()
            .to_string()
            .contains("stage 3")
    );
}

#[test]
fn paper_presets_ask_for_their_checkpoints_and_unknown_presets_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let config = RunConfig::preset("paper-2b-clip", 2, tmp.path().join("p")).unwrap();
    assert_eq!(
        (config.lr, config.global_batch, config.max_length),
        (2e-5, 128, 2048)
    );
    let stage1 = RunConfig::preset("paper-7b-dinov2", 1, tmp.path().join("p")).unwrap();
    assert_eq!(
        (stage1.lr, stage1.global_batch, stage1.image_size),
        (1e-3, 256, Some(224))
    );
    let err = run(&config, |_| {}).unwrap_err().to_string();
    assert!(err.contains("--lm") && err.contains("--vision"), "{err}");
    let err = RunConfig::preset("paper-3b-clip", 1, tmp.path().join("p"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("paper-3b-clip") && err.contains("tiny"),
        "{err}"
    );
}

#[test]
fn the_tiny_model_has_a_row_for_every_token_of_the_builtin_tokenizer() {
    let tokenizer = data::builtin_tokenizer();
    let config = llava_model::presets::tiny();
    assert!(tokenizer.vocab_size() as i64 <= config.text_config.vocab_size);
    assert_eq!(tokenizer.token_id("<image>"), config.image_token_index);
}

/// A data file of records with two images each (and one with one), on 48 px images.
fn multi_image_data(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let images = dir.join("images");
    std::fs::create_dir_all(&images).unwrap();
    let mut records = Vec::new();
    for i in 0..12u8 {
        for side in ["l", "r"] {
            let shade = if side == "l" { i * 20 } else { 255 - i * 20 };
            image::RgbImage::from_pixel(48, 48, image::Rgb([shade, 40, 200 - i * 10]))
                .save(images.join(format!("{i}{side}.png")))
                .unwrap();
        }
        let answer = if i % 2 == 0 {
            "the first"
        } else {
            "the second"
        };
        records.push(serde_json::json!({
            "id": format!("pair{i}"),
            "image": [format!("{i}l.png"), format!("{i}r.png")],
            "conversations": [
                {"from": "human", "value": "First <image>, then <image>. Which is redder?"},
                {"from": "gpt", "value": answer},
            ]
        }));
    }
    records.push(serde_json::json!({
        "id": "single", "image": "0l.png",
        "conversations": [{"from": "human", "value": "<image>\nColour?"}, {"from": "gpt", "value": "blue"}]
    }));
    let file = dir.join("pairs.json");
    std::fs::write(&file, serde_json::Value::Array(records).to_string()).unwrap();
    (file, images)
}

#[test]
fn whole_gemma_vlms_train_on_multi_image_records_packed_or_not() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, images) = multi_image_data(tmp.path());
    for preset in ["tiny-gemma3-vlm", "tiny-paligemma", "tiny-siglip-gemma3"] {
        for pack in [false, true] {
            let mut config = RunConfig::tiny(2, tmp.path().join(format!("{preset}-{pack}")));
            config.preset = preset.into();
            config.data = Some(data.clone());
            config.images = Some(images.clone());
            config.micro_batch = 4;
            config.global_batch = 4;
            config.max_steps = Some(3);
            config.pack = pack;
            let summary = run(&config, |_| {}).unwrap();
            assert_eq!((summary.steps, summary.samples_seen), (3, 12), "{preset}");
            assert_eq!(
                summary.samples_skipped, 0,
                "{preset}: {:?}",
                summary.skipped_by_reason
            );
            assert!(summary.final_loss.is_finite() && summary.final_loss > 0.0);
        }
    }
}
