//! A whole stage run as the commands start it: the model, the data, the stage loop, and what the
//! run leaves in its output directory (`config.json` with every resolved setting, `metrics.jsonl`,
//! `summary.json`, checkpoints, and the connector file or the LLaVA model directory).
//!
//! The `tiny` preset is the embedded default: a small random-initialised model (its start depends on
//! the seed alone) on the built-in synthetic dataset, which the run writes under its output.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use data::{Dataset, ImageSource, Template, Templater};
use foundation::{Checkpoint, write_atomic};
use image_processing::{ImageProcessor, ProcessorConfig, Resize};
use llava_model::{LlavaModel, presets};
use serde::Serialize;
use tch::{Device, Kind};

use crate::AdamWConfig;
use crate::stage::{Stage, StageConfig, StageError, Summary, train};

/// Everything a stage run needs; every field is a command-line flag.
#[derive(Debug, Clone, Serialize)]
pub struct RunConfig {
    /// `tiny` (the embedded default).
    pub preset: String,
    /// 1 (connector pretraining) or 2 (instruction finetuning).
    pub stage: u8,
    /// The records; the synthetic dataset when `None`.
    pub data: Option<PathBuf>,
    /// The image folder or zip (with `data`).
    pub images: Option<PathBuf>,
    /// Where the run writes.
    pub output: PathBuf,
    /// Stage 2: the connector to start from (stage 1's output); seeded random when `None`.
    pub connector: Option<PathBuf>,
    /// Peak learning rate.
    pub lr: f64,
    /// Samples per forward pass.
    pub micro_batch: usize,
    /// Samples per optimizer step.
    pub global_batch: usize,
    /// Passes over the data.
    pub epochs: usize,
    /// Stop after this many optimizer steps.
    pub max_steps: Option<usize>,
    /// Checkpoint every this many steps.
    pub save_every: Option<usize>,
    /// Continue from this checkpoint.
    pub resume: Option<PathBuf>,
    /// Seed of the model's start, the data and its order.
    pub seed: u64,
    /// Synthetic training images (when `data` is `None`).
    pub synthetic_images: usize,
}

impl RunConfig {
    /// The `tiny` preset's settings for `stage`, writing into `output`.
    pub fn tiny(stage: u8, output: PathBuf) -> Self {
        RunConfig {
            preset: "tiny".into(),
            stage,
            data: None,
            images: None,
            output,
            connector: None,
            lr: if stage == 1 { 1e-2 } else { 2e-3 },
            micro_batch: 16,
            global_batch: 32,
            epochs: if stage == 1 { 2 } else { 4 },
            max_steps: None,
            save_every: None,
            resume: None,
            seed: 0,
            synthetic_images: 1200,
        }
    }
}

/// Errors of a run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// From the stage loop.
    #[error(transparent)]
    Stage(#[from] StageError),
    /// From the model.
    #[error(transparent)]
    Model(#[from] llava_model::Error),
    /// From the data.
    #[error(transparent)]
    Data(#[from] data::Error),
    /// From checkpoint files.
    #[error(transparent)]
    Files(#[from] foundation::Error),
    /// From the connector.
    #[error(transparent)]
    Connector(#[from] connector::Error),
    /// A setting that cannot work.
    #[error("{0}")]
    Config(String),
}

/// The `tiny` model with a start that depends on `seed` alone (not on libtorch's global generator).
pub fn seeded_tiny(seed: u64) -> Result<LlavaModel, RunError> {
    let model = LlavaModel::new(&presets::tiny(), Device::Cpu, Kind::Float)?;
    for (part, vs) in [&model.vision_vs, &model.connector_vs, &model.lm_vs]
        .into_iter()
        .enumerate()
    {
        let mut vars: Vec<_> = vs.variables().into_iter().collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        tch::no_grad(|| {
            for (i, (name, mut t)) in vars.into_iter().enumerate() {
                // Norm weights of Gemma start at zero (scale 1 + w), layer norms at one, biases at zero.
                let value = if name.ends_with("norm.weight") && part == 2 {
                    t.zeros_like()
                } else if t.dim() == 1 && (name.contains("norm") || name.contains("layer_norm")) {
                    t.ones_like()
                } else if t.dim() == 1 && name.ends_with("bias") {
                    t.zeros_like()
                } else {
                    foundation::layers::seeded_normal(
                        &t.size(),
                        0.02,
                        seed.wrapping_mul(1_000_003) + (part * 10_000 + i) as u64,
                    )
                };
                t.copy_(&value);
            }
        });
    }
    Ok(model)
}

/// Runs one stage as `config` says and returns its summary.
pub fn run(
    config: &RunConfig,
    mut on_step: impl FnMut(&crate::StepMetrics),
) -> Result<Summary, RunError> {
    if config.preset != "tiny" {
        return Err(RunError::Config(format!(
            "preset `{}` is not available yet (tiny); the paper presets come with checkpoint directories",
            config.preset
        )));
    }
    let stage = match config.stage {
        1 => Stage::Pretrain,
        2 => Stage::Finetune,
        other => {
            return Err(RunError::Config(format!(
                "stage {other} does not exist (1 or 2)"
            )));
        }
    };
    std::fs::create_dir_all(&config.output)
        .map_err(|e| foundation::Error::io(&config.output, e))?;
    write_atomic(
        config.output.join("config.json"),
        serde_json::to_string_pretty(config)
            .expect("serialises")
            .as_bytes(),
    )?;

    let mut model = seeded_tiny(config.seed)?;
    if stage == Stage::Finetune
        && let Some(file) = &config.connector
    {
        model
            .connector
            .load(&model.connector_vs, &Checkpoint::open(file)?)?;
    }
    let (records_file, images) = match (&config.data, &config.images) {
        (Some(data), images) => (data.clone(), images.clone()),
        (None, _) => {
            let dir = config.output.join("data");
            let synthetic = data::synthetic::SyntheticConfig {
                seed: config.seed,
                image_size: 32,
                train_images: config.synthetic_images,
                eval_images: 200,
                questions_per_image: 3,
            };
            let files = data::synthetic::write(&dir, &synthetic)?;
            (
                if stage == Stage::Pretrain {
                    files.stage1
                } else {
                    files.stage2
                },
                Some(files.images),
            )
        }
    };
    let read = data::read_records(&records_file)?;
    let processor = ProcessorConfig {
        resize: Some(Resize::ShortestEdge(32)),
        crop: Some((32, 32)),
        pad_to_square: stage == Stage::Finetune,
        ..ProcessorConfig::clip_336()
    };
    let dataset = Arc::new(Dataset {
        records: read.records,
        bad_records: read.bad,
        images: images.as_deref().map(ImageSource::open).transpose()?,
        templater: Templater {
            tokenizer: data::builtin_tokenizer(),
            template: if stage == Stage::Pretrain {
                Template::Plain
            } else {
                Template::Gemma
            },
            image_token: model.image_token(),
            tokens_per_image: 16,
            max_length: 512,
        },
        processor: ImageProcessor::new(processor),
    });
    let stage_config = StageConfig {
        stage,
        lr: config.lr,
        micro_batch: config.micro_batch,
        global_batch: config.global_batch,
        epochs: config.epochs,
        max_steps: config.max_steps,
        warmup_ratio: 0.03,
        adamw: AdamWConfig::default(),
        max_grad_norm: 1.0,
        seed: config.seed,
        save_every: config.save_every,
        resume: config.resume.clone(),
    };
    let n = dataset.records.len();
    let lengths = dataset.modality_lengths();
    let (seed, global) = (config.seed, config.global_batch);
    let summary = train(
        &mut model,
        dataset.clone(),
        &stage_config,
        &config.output,
        |epoch| match stage {
            Stage::Pretrain => data::shuffled(n, seed, epoch),
            Stage::Finetune => data::modality_grouped(&lengths, global, seed, epoch),
        },
        &mut on_step,
    )?;
    write_atomic(
        config.output.join("summary.json"),
        serde_json::to_string_pretty(&summary)
            .expect("serialises")
            .as_bytes(),
    )?;
    match stage {
        Stage::Pretrain => model
            .connector
            .save(config.output.join("connector.safetensors"))?,
        Stage::Finetune => model.save_pretrained(
            config.output.join("model"),
            Some(&dataset.templater.tokenizer),
        )?,
    }
    Ok(summary)
}

/// The model directory a finished stage-2 run wrote.
pub fn model_dir(output: &Path) -> PathBuf {
    output.join("model")
}
