//! The stage loop on the synthetic data with the tiny model: the loss falls, only the intended
//! parts change, and bad samples are counted without stopping the run.

use std::path::Path;
use std::sync::Arc;

use data::{Dataset, ImageSource, RecordFile, Template, Templater, shuffled};
use image_processing::{ImageProcessor, ProcessorConfig, Resize};
use llava_model::{LlavaModel, presets};
use tch::{Device, Kind, Tensor};
use trainer::{AdamWConfig, Stage, StageConfig, train};

/// The tiny preset's image side.
fn side() -> u32 {
    presets::tiny().image_side().unwrap() as u32
}

fn dataset(dir: &Path, file: &Path, template: Template) -> Arc<Dataset> {
    let (records, bad_records) = RecordFile::open(file).unwrap();
    let tokenizer = data::builtin_tokenizer();
    let processor = ProcessorConfig {
        resize: Some(Resize::ShortestEdge(side())),
        crop: Some((side(), side())),
        ..ProcessorConfig::clip_336()
    };
    Arc::new(Dataset {
        records,
        bad_records,
        images: Some(ImageSource::open(dir.join("images")).unwrap()),
        templater: Templater {
            tokenizer,
            template,
            image_token: 639,
            tokens_per_image: 9,
            max_length: 512,
        },
        processor: ImageProcessor::new(processor),
    })
}

fn snapshot(vs: &tch::nn::VarStore) -> Vec<(String, Tensor)> {
    let mut v: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .map(|(k, t)| (k, t.copy()))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

fn same(a: &[(String, Tensor)], b: &[(String, Tensor)]) -> bool {
    a.iter().zip(b).all(|(x, y)| x.0 == y.0 && x.1.equal(&y.1))
}

fn config(stage: Stage, lr: f64, epochs: usize) -> StageConfig {
    StageConfig {
        stage,
        lr,
        micro_batch: 8,
        global_batch: 16,
        epochs,
        max_steps: None,
        warmup_ratio: 0.03,
        adamw: AdamWConfig::default(),
        max_grad_norm: 1.0,
        seed: 0,
        save_every: None,
        resume: None,
        connector_lr: None,
        activation_checkpointing: false,
    }
}

#[test]
fn both_stages_lower_the_loss_and_train_only_their_parts() {
    let tmp = tempfile::tempdir().unwrap();
    let synthetic = data::synthetic::SyntheticConfig {
        image_size: side(),
        train_images: 48,
        eval_images: 0,
        ..Default::default()
    };
    let files = data::synthetic::write(tmp.path(), &synthetic).unwrap();
    tch::manual_seed(0);
    let mut model = LlavaModel::new(&presets::tiny(), Device::Cpu, Kind::Float).unwrap();
    let (vision0, lm0, connector0) = (
        snapshot(&model.vision_vs),
        snapshot(&model.lm_vs),
        snapshot(&model.connector_vs),
    );

    let stage1 = dataset(tmp.path(), &files.stage1, Template::Plain);
    let out = tmp.path().join("stage1");
    std::fs::create_dir_all(&out).unwrap();
    let mut steps = Vec::new();
    let summary = train(
        &mut model,
        stage1,
        &config(Stage::Pretrain, 1e-2, 3),
        &out,
        |e| shuffled(48, 0, e),
        |m| steps.push(m.loss),
    )
    .unwrap();
    assert_eq!(summary.steps, 9, "48 samples / 16 per step x 3 epochs");
    assert!(summary.final_loss < summary.first_loss, "{steps:?}");
    assert!(
        same(&vision0, &snapshot(&model.vision_vs)),
        "the tower is frozen"
    );
    assert!(
        same(&lm0, &snapshot(&model.lm_vs)),
        "stage 1 leaves the language model alone"
    );
    assert!(
        !same(&connector0, &snapshot(&model.connector_vs)),
        "the connector trains"
    );
    let lines = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    let first: serde_json::Value = serde_json::from_str(lines.lines().next().unwrap()).unwrap();
    for key in [
        "step",
        "loss",
        "lr",
        "grad_norm",
        "samples_per_s",
        "tokens_per_s",
    ] {
        assert!(first.get(key).is_some(), "{key}");
    }

    let stage2 = dataset(tmp.path(), &files.stage2, Template::Gemma);
    let out = tmp.path().join("stage2");
    std::fs::create_dir_all(&out).unwrap();
    let lm1 = snapshot(&model.lm_vs);
    let summary = train(
        &mut model,
        stage2,
        &config(Stage::Finetune, 2e-3, 2),
        &out,
        |e| shuffled(48, 0, e),
        |_| {},
    )
    .unwrap();
    assert!(summary.final_loss < summary.first_loss);
    assert!(
        same(&vision0, &snapshot(&model.vision_vs)),
        "the tower is still frozen"
    );
    assert!(
        !same(&lm1, &snapshot(&model.lm_vs)),
        "stage 2 trains the language model"
    );
}

#[test]
fn broken_images_are_skipped_and_counted_and_the_run_finishes() {
    let tmp = tempfile::tempdir().unwrap();
    let synthetic = data::synthetic::SyntheticConfig {
        image_size: side(),
        train_images: 24,
        eval_images: 0,
        ..Default::default()
    };
    let files = data::synthetic::write(tmp.path(), &synthetic).unwrap();
    std::fs::write(files.images.join("train_000003.png"), b"broken").unwrap();
    std::fs::remove_file(files.images.join("train_000010.png")).unwrap();
    tch::manual_seed(0);
    let mut model = LlavaModel::new(&presets::tiny(), Device::Cpu, Kind::Float).unwrap();
    let set = dataset(tmp.path(), &files.stage1, Template::Plain);
    let summary = train(
        &mut model,
        set,
        &config(Stage::Pretrain, 1e-3, 1),
        tmp.path(),
        |e| shuffled(24, 0, e),
        |_| {},
    )
    .unwrap();
    assert_eq!(summary.samples_skipped, 2);
    assert_eq!(summary.skipped_by_reason["corrupt_image"], 1);
    assert_eq!(summary.skipped_by_reason["missing_image"], 1);
    assert_eq!(summary.samples_seen, 22);
}

#[test]
fn a_run_resumed_from_a_checkpoint_has_the_losses_of_the_uninterrupted_run() {
    let tmp = tempfile::tempdir().unwrap();
    let synthetic = data::synthetic::SyntheticConfig {
        image_size: side(),
        train_images: 40,
        eval_images: 0,
        ..Default::default()
    };
    let files = data::synthetic::write(tmp.path(), &synthetic).unwrap();
    let set = dataset(tmp.path(), &files.stage2, Template::Gemma);
    // The same start without libtorch's global generator, which parallel tests share.
    let fresh_model = || trainer::run::seeded_tiny(0).unwrap();
    // 40 samples, 8 per step, 2 epochs: 10 steps; the checkpoint after step 3 sits mid-epoch, the
    // one after step 5 at the epoch's end.
    let cfg = StageConfig {
        global_batch: 8,
        micro_batch: 4,
        save_every: Some(1),
        ..config(Stage::Finetune, 2e-3, 2)
    };
    let order = |e| shuffled(40, 7, e);
    let full_out = tmp.path().join("full");
    std::fs::create_dir_all(&full_out).unwrap();
    let mut full = Vec::new();
    train(
        &mut fresh_model(),
        set.clone(),
        &cfg,
        &full_out,
        order,
        |m| full.push(m.loss),
    )
    .unwrap();
    assert_eq!(full.len(), 10);
    for at in [3, 5] {
        let out = tmp.path().join(format!("resumed-{at}"));
        std::fs::create_dir_all(&out).unwrap();
        let resume = StageConfig {
            resume: Some(full_out.join(format!("checkpoint-{at}"))),
            ..cfg.clone()
        };
        let mut rest = Vec::new();
        train(&mut fresh_model(), set.clone(), &resume, &out, order, |m| {
            rest.push(m.loss)
        })
        .unwrap();
        assert_eq!(rest.len(), 10 - at, "resumed at {at}");
        for (a, b) in full[at..].iter().zip(&rest) {
            assert!(
                (a - b).abs() <= 1e-5 * a.abs().max(1.0),
                "resumed at {at}: {full:?} vs {rest:?}"
            );
        }
    }
    // A run killed while writing checkpoint 6: the whole checkpoints 1..5, a half-written
    // `checkpoint-6.tmp`, and metrics for steps it took after checkpoint 5. Resuming from the run
    // directory picks checkpoint 5 and rewrites the metrics without repeats.
    let killed = tmp.path().join("killed");
    std::fs::create_dir_all(&killed).unwrap();
    for step in 1..=5 {
        let (from, to) = (
            full_out.join(format!("checkpoint-{step}")),
            killed.join(format!("checkpoint-{step}")),
        );
        std::fs::create_dir_all(&to).unwrap();
        for file in ["state.safetensors", "trainer_state.json"] {
            std::fs::copy(from.join(file), to.join(file)).unwrap();
        }
    }
    let partial = killed.join("checkpoint-6.tmp");
    std::fs::create_dir_all(&partial).unwrap();
    std::fs::write(partial.join("state.safetensors"), b"\x10\x00").unwrap();
    let metrics = std::fs::read_to_string(full_out.join("metrics.jsonl")).unwrap();
    let seven: Vec<&str> = metrics.lines().take(7).collect();
    std::fs::write(killed.join("metrics.jsonl"), seven.join("\n") + "\n").unwrap();
    let resume = StageConfig {
        resume: Some(killed.clone()),
        ..cfg.clone()
    };
    let mut rest = Vec::new();
    train(
        &mut fresh_model(),
        set.clone(),
        &resume,
        &killed,
        order,
        |m| rest.push(m.loss),
    )
    .unwrap();
    assert_eq!(rest.len(), 5);
    for (a, b) in full[5..].iter().zip(&rest) {
        assert!(
            (a - b).abs() <= 1e-5 * a.abs().max(1.0),
            "{full:?} vs {rest:?}"
        );
    }
    let steps: Vec<u64> = std::fs::read_to_string(killed.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["step"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(steps, (1..=10).collect::<Vec<u64>>());

    // No temporary checkpoint is left behind.
    assert!(
        std::fs::read_dir(&full_out).unwrap().all(|e| !e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .ends_with(".tmp"))
    );
}
