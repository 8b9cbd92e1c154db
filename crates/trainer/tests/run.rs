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
        "connector.safetensors",
    ] {
        assert!(stage1.output.join(file).exists(), "{file}");
    }
    let written: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(stage1.output.join("config.json")).unwrap())
            .unwrap();
    assert_eq!(
        written["lr"], 1e-2,
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

    let mut bad = RunConfig::tiny(3, tmp.path().join("x"));
    bad.synthetic_images = 4;
    assert!(
        run(&bad, |_| {})
            .unwrap_err()
            .to_string()
            .contains("stage 3")
    );
}
