//! LoRA training: only the adapters and the connector move (every base weight stays
//! bit-identical), the run writes a PEFT adapter and the base it applies to, and a resumed LoRA run
//! (adapter dropout included) has the losses of the uninterrupted one.

use std::collections::HashMap;

use gemma_lm::LoraSpec;
use llava_model::LlavaModel;
use tch::{Device, Kind, Tensor};
use trainer::{RunConfig, run};

fn lora_run(output: std::path::PathBuf) -> RunConfig {
    let mut config = RunConfig::tiny(2, output);
    config.synthetic_images = 24;
    config.micro_batch = 4;
    config.global_batch = 8;
    config.lora = Some(LoraSpec {
        r: 4,
        alpha: 8.0,
        dropout: 0.05,
        ..LoraSpec::llava()
    });
    config.connector_lr = Some(1e-3);
    config
}

/// LoRA dropout draws from libtorch's process-wide generator, which a run seeds at every step:
/// runs in parallel threads of one test process would draw from each other's sequence.
static ONE_RUN_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn variables(vs: &tch::nn::VarStore) -> HashMap<String, Tensor> {
    vs.variables()
}

#[test]
fn lora_moves_only_adapters_and_connector_and_writes_a_peft_adapter() {
    let _one = ONE_RUN_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let mut config = lora_run(tmp.path().join("lora"));
    config.max_steps = Some(3);
    let summary = run(&config, |_| {}).unwrap();
    assert_eq!(summary.steps, 3);

    let start = trainer::run::seeded_tiny(0).unwrap();
    let base = LlavaModel::from_pretrained(
        trainer::run::base_dir(&config.output),
        Device::Cpu,
        Kind::Float,
    )
    .unwrap();
    for (part, ours, theirs) in [
        ("language model", &base.lm_vs, &start.lm_vs),
        ("vision tower", &base.vision_vs, &start.vision_vs),
    ] {
        let (ours, theirs) = (variables(ours), variables(theirs));
        assert_eq!(ours.len(), theirs.len(), "{part}");
        for (name, t) in &theirs {
            let saved = &ours[name];
            // The start's vocabulary is the base's: nothing grew.
            assert!(saved.equal(t), "{part}: `{name}` changed");
        }
    }

    let adapter = trainer::run::adapter_dir(&config.output);
    let tensors =
        foundation::checkpoint::read_all(adapter.join("adapter_model.safetensors")).unwrap();
    let layers = start.config.text_config.num_hidden_layers as usize;
    assert_eq!(tensors.len(), layers * 7 * 2 + 4);
    let b = &tensors["base_model.model.model.language_model.layers.0.mlp.down_proj.lora_B.weight"];
    assert_eq!(b.size(), [start.config.text_config.hidden_size, 4]);
    assert!(
        b.abs().max().double_value(&[]) > 0.0,
        "B started at zero and trained"
    );
    let connector = &tensors["base_model.model.model.multi_modal_projector.linear_1.weight"];
    let started = &variables(&start.connector_vs)["multi_modal_projector.linear_1.weight"];
    assert!(!connector.equal(started), "the connector trained");
    let config_json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(adapter.join("adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(config_json["r"], 4);
    assert_eq!(config_json["modules_to_save"][0], "multi_modal_projector");
    assert!(
        config_json["base_model_name_or_path"]
            .as_str()
            .unwrap()
            .ends_with("base")
    );

    // The base with the adapter: the model that trained (its connector included).
    let mut trained = LlavaModel::from_pretrained(
        trainer::run::base_dir(&config.output),
        Device::Cpu,
        Kind::Float,
    )
    .unwrap();
    trained.load_adapter(&adapter).unwrap();
    assert_eq!(trained.merge_lora(), layers * 7);
    let merged = variables(&trained.lm_vs);
    let q = "model.layers.0.self_attn.q_proj.weight";
    assert!(!merged[q].equal(&variables(&start.lm_vs)[q]));
}

#[test]
fn a_resumed_lora_run_has_the_losses_of_the_uninterrupted_one() {
    let _one = ONE_RUN_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let mut full = lora_run(tmp.path().join("full"));
    full.max_steps = Some(4);
    full.save_every = Some(2);
    let mut losses = Vec::new();
    run(&full, |m| losses.push(m.loss)).unwrap();
    assert_eq!(losses.len(), 4);

    let mut resumed = lora_run(tmp.path().join("resumed"));
    resumed.max_steps = Some(4);
    resumed.resume = Some(full.output.join("checkpoint-2"));
    let mut rest = Vec::new();
    run(&resumed, |m| rest.push(m.loss)).unwrap();
    assert_eq!(rest.len(), 2);
    for (a, b) in losses[2..].iter().zip(&rest) {
        assert!(
            (a - b).abs() <= 1e-5 * a.abs().max(1.0),
            "{losses:?} vs {rest:?}"
        );
    }
}

#[test]
fn lora_in_stage_one_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let mut config = lora_run(tmp.path().join("x"));
    config.stage = 1;
    let err = run(&config, |_| {}).unwrap_err().to_string();
    assert!(err.contains("stage 2"), "{err}");
}
