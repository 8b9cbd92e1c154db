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
        pack: false,
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

/// Every trainable gradient of `model`, by name.
fn gradients(model: &LlavaModel) -> Vec<(String, Tensor)> {
    let mut out: Vec<(String, Tensor)> = [&model.connector_vs, &model.lm_vs]
        .into_iter()
        .flat_map(|vs| vs.variables())
        .map(|(n, t)| (n, t.grad().copy()))
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

#[test]
fn a_packed_batch_has_the_unpacked_loss_and_gradients() {
    let tmp = tempfile::tempdir().unwrap();
    let synthetic = data::synthetic::SyntheticConfig {
        image_size: side(),
        train_images: 12,
        eval_images: 0,
        ..Default::default()
    };
    let files = data::synthetic::write(tmp.path(), &synthetic).unwrap();
    let set = dataset(tmp.path(), &files.stage2, Template::Gemma);
    let samples = || (0..10).map(|i| set.sample(i).unwrap()).collect::<Vec<_>>();
    let pad = set.templater.tokenizer.pad;
    let plain = data::collate(samples(), pad, &set.processor);
    // A budget that puts several samples of different lengths in a row.
    let longest = plain.seq_len;
    let packed = data::collate_packed(samples(), pad, &set.processor, 3 * longest);
    assert!(
        packed.batch_size < plain.batch_size / 2,
        "{} rows",
        packed.batch_size
    );
    assert_eq!(packed.label_tokens, plain.label_tokens);
    let sorted = |ids: &[String]| {
        let mut ids = ids.to_vec();
        ids.sort();
        ids
    };
    assert_eq!(sorted(&packed.ids), sorted(&plain.ids));
    assert!(packed.segment_ids.iter().any(|&s| s >= 2));

    let run = |batch: &data::Batch| {
        let mut model = trainer::run::seeded_tiny(3).unwrap();
        model.lm_vs.unfreeze();
        let shape = [batch.batch_size as i64, batch.seq_len as i64];
        let tensor = |v: &[i64]| Tensor::from_slice(v).view(shape);
        let (h, w) = batch.image_size;
        let pixels = Tensor::from_slice(&batch.pixel_values).view([
            batch.images as i64,
            3,
            h as i64,
            w as i64,
        ]);
        let packing = (!batch.segment_ids.is_empty()).then(|| gemma_lm::Packing {
            positions: tensor(&batch.position_ids),
            segments: tensor(&batch.segment_ids),
        });
        let labels = tensor(&batch.labels);
        let hidden = model
            .forward_train(
                &tensor(&batch.input_ids),
                Some(&pixels),
                &labels,
                packing.as_ref(),
            )
            .unwrap();
        let (loss, count) = model.loss(&hidden, &labels).unwrap();
        loss.backward();
        (loss.double_value(&[]), count, gradients(&model))
    };
    let (plain_loss, plain_count, plain_grads) = run(&plain);
    let (packed_loss, packed_count, packed_grads) = run(&packed);
    assert_eq!(plain_count, packed_count);
    assert!(
        (plain_loss - packed_loss).abs() <= 1e-5 * plain_loss.abs(),
        "{plain_loss} against {packed_loss}"
    );
    for ((name, a), (_, b)) in plain_grads.iter().zip(&packed_grads) {
        let diff = (a - b).abs().max().double_value(&[]);
        let scale = a.abs().max().double_value(&[]).max(1e-6);
        assert!(diff <= 1e-4 * scale, "{name}: {diff} of {scale}");
    }
}

#[test]
fn packed_training_follows_the_unpacked_losses() {
    let tmp = tempfile::tempdir().unwrap();
    let synthetic = data::synthetic::SyntheticConfig {
        image_size: side(),
        train_images: 16,
        eval_images: 0,
        ..Default::default()
    };
    let files = data::synthetic::write(tmp.path(), &synthetic).unwrap();
    let set = dataset(tmp.path(), &files.stage2, Template::Gemma);
    let losses = |pack: bool| {
        let out = tmp.path().join(format!("pack-{pack}"));
        std::fs::create_dir_all(&out).unwrap();
        let cfg = StageConfig {
            pack,
            max_steps: Some(6),
            activation_checkpointing: pack,
            ..config(Stage::Finetune, 2e-3, 2)
        };
        let mut losses = Vec::new();
        let mut padding = Vec::new();
        train(
            &mut trainer::run::seeded_tiny(1).unwrap(),
            set.clone(),
            &cfg,
            &out,
            |e| shuffled(set.records.len(), 5, e),
            |m| {
                losses.push(m.loss);
                padding.push(m.padding_fraction);
            },
        )
        .unwrap();
        (losses, padding)
    };
    let (plain, plain_padding) = losses(false);
    // Packed, and through the checkpointed path too.
    let (packed, packed_padding) = losses(true);
    assert_eq!(plain.len(), 6);
    for (a, b) in plain.iter().zip(&packed) {
        assert!((a - b).abs() <= 1e-4 * a.abs(), "{plain:?} vs {packed:?}");
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    assert!(
        mean(&packed_padding) < mean(&plain_padding),
        "{packed_padding:?} vs {plain_padding:?}"
    );
}
