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
