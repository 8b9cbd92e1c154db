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
use image_processing::{ImageProcessor, ProcessorConfig};
use llava_model::config::Family;
use llava_model::{LlavaModel, presets};
use serde::Serialize;
use tch::{Device, Kind};

use crate::AdamWConfig;
use crate::stage::{Stage, StageConfig, StageError, Summary, train_parallel};

/// Everything a stage run needs; every field is a command-line flag, and a run writes the whole
/// resolved set to `config.json` in its output.
#[derive(Debug, Clone, Serialize)]
pub struct RunConfig {
    /// `tiny` (the embedded default) or a paper preset (see [`PRESETS`]).
    pub preset: String,
    /// 1 (connector pretraining) or 2 (instruction finetuning).
    pub stage: u8,
    /// Paper presets: the Gemma checkpoint directory.
    pub lm: Option<PathBuf>,
    /// Paper presets: the CLIP or DINOv2 checkpoint directory.
    pub vision: Option<PathBuf>,
    /// The records; the synthetic dataset when `None` (tiny preset only).
    pub data: Option<PathBuf>,
    /// The image folder or zip (with `data`).
    pub images: Option<PathBuf>,
    /// Where the run writes.
    pub output: PathBuf,
    /// Stage 2: the connector to start from (stage 1's output); seeded random when `None`.
    pub connector: Option<PathBuf>,
    /// `cpu`, `cuda`, `cuda:N` or `auto`.
    pub device: String,
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
    /// Longest sample in tokens (image tokens included); longer ones are truncated.
    pub max_length: usize,
    /// The connector architecture.
    pub projector_type: String,
    /// The tower's input side in pixels (its own `image_size` when `None`).
    pub image_size: Option<i64>,
    /// Synthetic training images (when `data` is `None`).
    pub synthetic_images: usize,
    /// Stage 2: start from this whole LLaVA directory (a released LLaVA-Gemma, or a finished run's
    /// `model/`) instead of the preset's parts.
    pub model: Option<PathBuf>,
    /// Stage 2: train LoRA adapters on the language model (and the connector fully) instead of the
    /// whole language model; the run then writes a PEFT adapter directory, `adapter/`.
    pub lora: Option<gemma_lm::LoraSpec>,
    /// The connector's peak learning rate when it differs from `lr` (LLaVA's `mm_projector_lr`).
    pub connector_lr: Option<f64>,
    /// Recompute each decoder layer in backward instead of keeping its activations.
    pub activation_checkpointing: bool,
    /// Pack several samples into each row, up to `max_length` tokens (the same loss, less padding).
    pub pack: bool,
    /// With several ranks (torchrun, Slurm or `--nproc-per-node`), split the optimizer state
    /// across them (ZeRO-2) rather than replicate it.
    pub shard_optimizer: bool,
    /// With several ranks, how long a collective may wait for the others, in seconds, before the
    /// run stops with an error (a rank that died is noticed at once; this bounds a hung one).
    pub dist_timeout_s: u64,
}

/// The presets [`RunConfig::preset`] knows.
pub const PRESETS: [&str; 7] = [
    "tiny",
    "tiny-gemma2",
    "tiny-gemma3",
    "paper-2b-clip",
    "paper-2b-dinov2",
    "paper-7b-clip",
    "paper-7b-dinov2",
];

impl RunConfig {
    /// The `tiny` preset's settings for `stage`, writing into `output`: the built-in synthetic
    /// data and a random-initialised model on the CPU.
    pub fn tiny(stage: u8, output: PathBuf) -> Self {
        RunConfig {
            preset: "tiny".into(),
            stage,
            lm: None,
            vision: None,
            data: None,
            images: None,
            output,
            connector: None,
            device: "cpu".into(),
            // Stage 1 at the paper's 1e-3: against a frozen *random* LM its gradients carry
            // little, and AdamW's normalised steps at 1e-2 drift the connector far from its
            // start (demo: 0.69 held-out after a stage 1 at 1e-2, 0.86 at 1e-3).
            lr: if stage == 1 { 1e-3 } else { 3e-3 },
            micro_batch: 32,
            global_batch: 32,
            epochs: if stage == 1 { 1 } else { 12 },
            max_steps: None,
            save_every: None,
            resume: None,
            seed: 0,
            max_length: 512,
            projector_type: "mlp2x_gelu".into(),
            image_size: None,
            synthetic_images: 3600,
            model: None,
            lora: None,
            connector_lr: None,
            activation_checkpointing: false,
            pack: false,
            shard_optimizer: true,
            dist_timeout_s: 600,
        }
    }

    /// The settings of preset `name` for `stage`. The paper presets follow the LLaVA-1.5 recipe
    /// (docs/training.md): stage 1 at lr 1e-3 and global batch 256, stage 2 at lr 2e-5
    /// and global batch 128, one epoch, 2048 tokens, `mlp2x_gelu`, CLIP at 336 px or DINOv2 at
    /// 224 px; their checkpoint directories (`lm`, `vision`) and data must still be given.
    pub fn preset(name: &str, stage: u8, output: PathBuf) -> Result<Self, RunError> {
        if is_tiny(name) {
            return Ok(RunConfig {
                preset: name.into(),
                ..Self::tiny(stage, output)
            });
        }
        let Some(tower) = name
            .strip_prefix("paper-2b-")
            .or_else(|| name.strip_prefix("paper-7b-"))
        else {
            return Err(RunError::Config(format!(
                "unknown preset `{name}` (one of {})",
                PRESETS.join(", ")
            )));
        };
        if tower != "clip" && tower != "dinov2" {
            return Err(RunError::Config(format!(
                "unknown preset `{name}` (one of {})",
                PRESETS.join(", ")
            )));
        }
        Ok(RunConfig {
            preset: name.into(),
            device: "auto".into(),
            lr: if stage == 1 { 1e-3 } else { 2e-5 },
            micro_batch: if stage == 1 { 32 } else { 16 },
            global_batch: if stage == 1 { 256 } else { 128 },
            epochs: 1,
            save_every: Some(500),
            max_length: 2048,
            image_size: (tower == "dinov2").then_some(224),
            synthetic_images: 0,
            ..Self::tiny(stage, output)
        })
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
    /// Joining the other ranks failed.
    #[error("data parallel: {0}")]
    Dist(#[from] crate::dist::DistError),
}

/// Whether preset `name` is a tiny model on the built-in synthetic data: `tiny`, the same with a
/// Gemma 2 or Gemma 3 language model (`tiny-gemma2`, `tiny-gemma3`), with a SigLIP tower too
/// (`tiny-siglip-gemma3`), or a whole Gemma 3 or PaliGemma (`tiny-gemma3-vlm`,
/// `tiny-paligemma`).
pub fn is_tiny(name: &str) -> bool {
    matches!(
        name,
        "tiny"
            | "tiny-gemma2"
            | "tiny-gemma3"
            | "tiny-siglip-gemma3"
            | "tiny-gemma3-vlm"
            | "tiny-paligemma"
    )
}

/// The `tiny` model with a start that depends on `seed` alone (not on libtorch's global generator).
pub fn seeded_tiny(seed: u64) -> Result<LlavaModel, RunError> {
    seeded_preset("tiny", seed)
}

/// A tiny preset's model (see [`is_tiny`]) with a start that depends on `seed` alone.
pub fn seeded_preset(name: &str, seed: u64) -> Result<LlavaModel, RunError> {
    let config = tiny_config(name)?;
    let model = LlavaModel::new(&config, Device::Cpu, Kind::Float)?;
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
    // The connector starts as LLaVA's does (torch.nn.Linear's initialisation), not from the
    // language model's N(0, 0.02): with 0.02 its outputs are too small for a random LM to notice.
    model.connector.reset_parameters(seed);
    Ok(model)
}

/// The model a run starts from, and its tokenizer: the seeded tiny model, or the paper preset's
/// Gemma and tower from their directories with stage 1's connector (or a seeded random one). On
/// CUDA the weights are bf16 (the optimizer keeps f32 masters of what trains), on the CPU f32.
fn build_model(
    config: &RunConfig,
    stage: Stage,
    device: Device,
) -> Result<(LlavaModel, gemma_lm::GemmaTokenizer), RunError> {
    let connector = config
        .connector
        .as_deref()
        .filter(|_| stage == Stage::Finetune);
    if let Some(dir) = &config.model {
        return llava_from_dir(dir, stage, connector, device);
    }
    if is_tiny(&config.preset) {
        let model = tiny_on(&config.preset, device, config.seed, connector)?;
        let mut tokenizer = data::builtin_tokenizer();
        llava_model::prompt::add_image_delimiters(&model, &mut tokenizer)?;
        return Ok((model, tokenizer));
    }
    let (Some(lm), Some(vision)) = (&config.lm, &config.vision) else {
        return Err(RunError::Config(format!(
            "preset `{}` trains from real checkpoints: give --lm DIR (Gemma) and --vision DIR ({})",
            config.preset,
            if config.preset.ends_with("dinov2") {
                "DINOv2"
            } else if config.preset.contains("gemma") {
                "SigLIP"
            } else {
                "CLIP"
            }
        )));
    };
    // The preset's family (a whole Gemma 3 or PaliGemma is assembled as one) and pooled size.
    let preset = llava_model::presets::by_name(&config.preset);
    let family = preset
        .as_ref()
        .map_or(llava_model::config::Family::Llava, |p| p.family());
    let image_tokens = preset
        .as_ref()
        .filter(|p| p.family() == llava_model::config::Family::Gemma3)
        .map(|p| p.mm_tokens_per_image());
    let parts = llava_model::Parts {
        lm: lm.clone(),
        vision: vision.clone(),
        connector: connector.map(Path::to_path_buf),
        seed: config.seed,
        projector_type: config.projector_type.clone(),
        image_size: config.image_size,
        family,
        image_tokens,
    };
    let kind = foundation::device::default_kind(device);
    Ok(LlavaModel::from_parts(&parts, device, kind)?)
}

/// Stage 2's start from the whole LLaVA directory `dir` (`--model`), with `connector` in place of
/// its own when given, and its tokenizer.
fn llava_from_dir(
    dir: &Path,
    stage: Stage,
    connector: Option<&Path>,
    device: Device,
) -> Result<(LlavaModel, gemma_lm::GemmaTokenizer), RunError> {
    if stage != Stage::Finetune {
        return Err(RunError::Config(
            "--model starts stage 2 from a whole LLaVA directory; stage 1 assembles its model \
             from --lm and --vision"
                .into(),
        ));
    }
    let kind = foundation::device::default_kind(device);
    let model = LlavaModel::from_pretrained(dir, device, kind)?;
    if let Some(how) = model.quantization() {
        return Err(RunError::Config(format!(
            "{} holds {how} weights (from `llava quantize`): training needs the dense model",
            dir.display()
        )));
    }
    load_connector(&model, connector)?;
    let tokenizer = gemma_lm::GemmaTokenizer::from_file(dir).map_err(llava_model::Error::from)?;
    Ok((model, tokenizer))
}

/// The configuration of tiny preset `name`.
fn tiny_config(name: &str) -> Result<llava_model::LlavaConfig, RunError> {
    presets::by_name(name)
        .filter(|_| is_tiny(name))
        .ok_or_else(|| RunError::Config(format!("`{name}` is not a tiny preset")))
}

/// The seeded tiny model of preset `name`, with `connector` when given, on `device`.
fn tiny_on(
    name: &str,
    device: Device,
    seed: u64,
    connector: Option<&Path>,
) -> Result<LlavaModel, RunError> {
    let model = seeded_preset(name, seed)?;
    load_connector(&model, connector)?;
    if device == Device::Cpu {
        return Ok(model);
    }
    // A new model on the device, given the seeded weights: moving the variable stores
    // alone would leave the modules' other tensors (position ids, rotary tables) behind.
    let kind = foundation::device::default_kind(device);
    let mut on_device = LlavaModel::new(&tiny_config(name)?, device, kind)?;
    for (to, from) in [
        (&mut on_device.vision_vs, &model.vision_vs),
        (&mut on_device.connector_vs, &model.connector_vs),
        (&mut on_device.lm_vs, &model.lm_vs),
    ] {
        to.copy(from)
            .map_err(|e| RunError::Config(format!("moving the tiny model: {e}")))?;
    }
    Ok(on_device)
}

/// Loads the connector file `file`, when there is one, into `model`'s connector.
fn load_connector(model: &LlavaModel, file: Option<&Path>) -> Result<(), RunError> {
    if let Some(file) = file {
        model
            .connector
            .load(&model.connector_vs, &Checkpoint::open(file)?)?;
    }
    Ok(())
}

/// This process's part of a run: alone, or one rank of several.
struct Job {
    /// Whether this process writes what the run leaves (rank 0, or the only process).
    leader: bool,
    /// The ranks, when there are several.
    parallel: Option<crate::Parallel>,
}

impl Job {
    /// Waits for every rank.
    fn barrier(&self) -> Result<(), RunError> {
        match &self.parallel {
            Some(p) => p.group.barrier().map_err(RunError::Dist),
            None => Ok(()),
        }
    }
}

/// Runs one stage as `config` says and returns its summary.
pub fn run(
    config: &RunConfig,
    mut on_step: impl FnMut(&crate::StepMetrics),
) -> Result<Summary, RunError> {
    let stage = stage_of(config.stage)?;
    std::fs::create_dir_all(&config.output)
        .map_err(|e| foundation::Error::io(&config.output, e))?;
    let launch = crate::dist::Launch::from_env()?.filter(|l| l.world > 1);
    let leader = launch.as_ref().is_none_or(|l| l.rank == 0);
    if leader {
        write_json(&config.output.join("config.json"), config)?;
    }
    let device = foundation::device::parse_device(&config.device)?;
    let device = launch.as_ref().map_or(device, |l| rank_device(device, l));
    let parallel = launch
        .as_ref()
        .map(|l| join(l, config, device))
        .transpose()?;
    let job = Job { leader, parallel };
    let (mut model, tokenizer) = build_model(config, stage, device)?;
    add_lora(config, stage, &mut model)?;
    let dataset = Arc::new(dataset(config, stage, &model, tokenizer, &job)?);
    let summary = train_parallel(
        &mut model,
        dataset.clone(),
        &stage_config(config, stage),
        &config.output,
        epoch_order(stage, &dataset, config.seed, config.global_batch),
        &mut on_step,
        job.parallel.as_ref(),
    )?;
    // Rank 0 alone writes what the run leaves; the others wait for it, so that the job ends
    // only once the model is on disk.
    if job.leader {
        write_outputs(config, stage, &model, &dataset, &summary)?;
    }
    job.barrier()?;
    Ok(summary)
}

/// The stage `number` names (1 or 2).
fn stage_of(number: u8) -> Result<Stage, RunError> {
    match number {
        1 => Ok(Stage::Pretrain),
        2 => Ok(Stage::Finetune),
        other => Err(RunError::Config(format!(
            "stage {other} does not exist (1 or 2)"
        ))),
    }
}

/// Writes `value` as pretty JSON to `path` (atomically).
fn write_json(path: &Path, value: &impl Serialize) -> Result<(), RunError> {
    let json = serde_json::to_string_pretty(value).expect("serialises");
    Ok(write_atomic(path, json.as_bytes())?)
}

/// The device of a rank of `launch`: rank r of a node drives its CUDA device r; CPU ranks of a
/// node share its cores (libtorch's and rayon's threads are set to their share).
fn rank_device(device: Device, launch: &crate::dist::Launch) -> Device {
    if let Device::Cuda(_) = device {
        return Device::Cuda(launch.local_rank);
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = (cores / launch.local_world.max(1)).max(1);
    tch::set_num_threads(threads as i32);
    let _ = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global();
    device
}

/// Joins the other ranks of `launch`, computing on `device`.
fn join(
    launch: &crate::dist::Launch,
    config: &RunConfig,
    device: Device,
) -> Result<crate::Parallel, RunError> {
    let timeout = std::time::Duration::from_secs(config.dist_timeout_s.max(1));
    let backend = crate::dist::Backend::for_device(device)?;
    Ok(crate::Parallel {
        group: std::rc::Rc::new(crate::dist::ProcessGroup::from_launch(
            launch, timeout, backend,
        )?),
        shard_optimizer: config.shard_optimizer,
    })
}

/// Adds the LoRA adapters `config` asks for to `model` (stage 2 only).
fn add_lora(config: &RunConfig, stage: Stage, model: &mut LlavaModel) -> Result<(), RunError> {
    let Some(spec) = &config.lora else {
        return Ok(());
    };
    if stage != Stage::Finetune {
        return Err(RunError::Config(
            "LoRA adapts the language model, which trains in stage 2 only".into(),
        ));
    }
    spec.validate().map_err(llava_model::Error::from)?;
    model.add_lora(spec, config.seed)?;
    Ok(())
}

/// The stage's data: its records, images, template (plain for stage 1, Gemma's chat for stage 2;
/// Gemma 3's image delimiters, PaliGemma's prefix and suffix) and image processing (LLaVA's padded
/// to square in stage 2) for `model`.
fn dataset(
    config: &RunConfig,
    stage: Stage,
    model: &LlavaModel,
    tokenizer: gemma_lm::GemmaTokenizer,
    job: &Job,
) -> Result<Dataset, RunError> {
    let side = model.config.image_side()?;
    let tokens_per_image = model.tokens_per_image(side, side);
    let (records_file, images) = data_files(config, stage, side, job)?;
    let (records, bad_records) = data::RecordFile::open(&records_file)?;
    let family = model.family();
    let processor = ProcessorConfig {
        // LLaVA-1.5 pads to squares in stage 2; Gemma 3's and PaliGemma's processors never do.
        pad_to_square: stage == Stage::Finetune && family == Family::Llava,
        ..model.image_processor(config.model.as_deref().or(config.vision.as_deref()))?
    };
    // Each family's prompts as its processor writes them (see `llava_model::prompt`).
    let gemma3 = model
        .prompt_format(&tokenizer, tokens_per_image)
        .expands_in_text();
    let template = match (stage, family) {
        (_, Family::PaliGemma) => Template::PaliGemma,
        (Stage::Pretrain, _) => Template::Plain,
        (_, Family::Gemma3) if gemma3 => Template::Gemma3,
        _ => Template::Gemma,
    };
    Ok(Dataset {
        records,
        bad_records,
        images: images.as_deref().map(ImageSource::open).transpose()?,
        templater: Templater {
            tokenizer,
            template,
            image_token: model.image_token(),
            tokens_per_image: tokens_per_image as usize,
            max_length: config.max_length,
        },
        processor: ImageProcessor::new(processor),
    })
}

/// The records file and the images of the run: `--data` and `--images`, or for the tiny preset
/// the synthetic data of images of `side` pixels, which rank 0 writes under the output while the
/// others wait.
fn data_files(
    config: &RunConfig,
    stage: Stage,
    side: i64,
    job: &Job,
) -> Result<(PathBuf, Option<PathBuf>), RunError> {
    if let Some(data) = &config.data {
        return Ok((data.clone(), config.images.clone()));
    }
    if !is_tiny(&config.preset) {
        return Err(RunError::Config(format!(
            "preset `{}` needs --data (and --images): the synthetic data is the tiny preset's",
            config.preset
        )));
    }
    let dir = config.output.join("data");
    let synthetic = data::synthetic::SyntheticConfig {
        seed: config.seed,
        image_size: side as u32,
        train_images: config.synthetic_images,
        eval_images: 200,
        questions_per_image: 3,
    };
    let files = if job.leader {
        data::synthetic::write(&dir, &synthetic)?
    } else {
        data::synthetic::SyntheticFiles::in_dir(&dir)
    };
    job.barrier()?;
    let records = match stage {
        Stage::Pretrain => files.stage1,
        Stage::Finetune => files.stage2,
    };
    Ok((records, Some(files.images)))
}

/// The stage loop's settings from the run's: the recipe's warmup, AdamW and clipping, the rest
/// as given.
fn stage_config(config: &RunConfig, stage: Stage) -> StageConfig {
    StageConfig {
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
        connector_lr: config.connector_lr,
        activation_checkpointing: config.activation_checkpointing,
        pack: config.pack,
    }
}

/// The sample order of each epoch: shuffled in stage 1, grouped by modality into global batches
/// in stage 2 (as LLaVA's `group_by_modality_length`).
fn epoch_order(
    stage: Stage,
    dataset: &Dataset,
    seed: u64,
    global_batch: usize,
) -> impl Fn(u64) -> Vec<usize> + use<> {
    let n = dataset.records.len();
    let lengths = dataset.modality_lengths();
    move |epoch| match stage {
        Stage::Pretrain => data::shuffled(n, seed, epoch),
        Stage::Finetune => data::modality_grouped(&lengths, global_batch, seed, epoch),
    }
}

/// Rank 0's part of the end of a run: the loss curve, `summary.json`, and the connector, the
/// model or the adapter.
fn write_outputs(
    config: &RunConfig,
    stage: Stage,
    model: &LlavaModel,
    dataset: &Dataset,
    summary: &Summary,
) -> Result<(), RunError> {
    crate::plot::write_loss_curve(
        &config.output.join("metrics.jsonl"),
        &config.output.join("loss.png"),
    )
    .map_err(RunError::Config)?;
    write_json(&config.output.join("summary.json"), summary)?;
    match (stage, &config.lora) {
        (Stage::Pretrain, _) => model
            .connector
            .save(config.output.join("connector.safetensors"))?,
        (Stage::Finetune, Some(spec)) => {
            // The adapter applies to the model the run started from: the `--model` directory, or
            // else the assembled model (frozen, so as it was at the start), written beside it.
            let base = match &config.model {
                Some(dir) => dir.clone(),
                None => {
                    let dir = base_dir(&config.output);
                    model.save_pretrained(&dir, Some(&dataset.templater.tokenizer))?;
                    dir
                }
            };
            let base = std::path::absolute(&base).unwrap_or(base);
            model.save_adapter(
                adapter_dir(&config.output),
                spec,
                true,
                Some(&base.display().to_string()),
            )?
        }
        (Stage::Finetune, None) => model.save_pretrained(
            config.output.join("model"),
            Some(&dataset.templater.tokenizer),
        )?,
    }
    Ok(())
}

/// The model directory a finished stage-2 run wrote.
pub fn model_dir(output: &Path) -> PathBuf {
    output.join("model")
}

/// The PEFT adapter directory a finished stage-2 LoRA run wrote.
pub fn adapter_dir(output: &Path) -> PathBuf {
    output.join("adapter")
}

/// The base model a finished stage-2 LoRA run wrote beside its adapter (when it did not start
/// from `--model`): the adapter's `base_model_name_or_path`.
pub fn base_dir(output: &Path) -> PathBuf {
    output.join("base")
}
