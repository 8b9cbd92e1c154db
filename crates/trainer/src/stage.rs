//! One stage of the recipe as a plain loop: batches from the loader, forward, loss at labelled
//! positions, backward, gradient accumulation to the global batch, clipping, AdamW on the warmup-
//! cosine schedule, one metrics line per optimizer step.
//!
//! Stage 1 trains the connector alone; stage 2 the connector and the language model; the vision
//! tower is frozen in both (its features are computed without autograd).

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use data::{Batch, Dataset, Loader, SkipCounter, SkipReason};
use foundation::device::upload;
use llava_model::LlavaModel;
use serde::Serialize;
use tch::{Device, Kind, Tensor};

use crate::dist::{DistError, ProcessGroup, Reduce};
use crate::optim::AdamWConfig;
use crate::parallel::{self, Optimizer, OptimizerError};
use crate::schedule::WarmupCosine;

/// Which stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Stage {
    /// Connector pretraining.
    Pretrain,
    /// Instruction finetuning.
    Finetune,
}

/// The settings of one stage.
#[derive(Debug, Clone, Serialize)]
pub struct StageConfig {
    /// Which stage.
    pub stage: Stage,
    /// Peak learning rate (1e-3 for stage 1, 2e-5 for stage 2 in the recipe).
    pub lr: f64,
    /// Samples per forward pass.
    pub micro_batch: usize,
    /// Samples per optimizer step (256 / 128 in the recipe).
    pub global_batch: usize,
    /// Passes over the data.
    pub epochs: usize,
    /// Stop after this many optimizer steps.
    pub max_steps: Option<usize>,
    /// Fraction of the steps spent warming up.
    pub warmup_ratio: f64,
    /// AdamW settings.
    pub adamw: AdamWConfig,
    /// Global gradient-norm clipping.
    pub max_grad_norm: f64,
    /// Seed of the data order.
    pub seed: u64,
    /// Write a checkpoint every this many optimizer steps (`checkpoint-<step>/` in the output).
    pub save_every: Option<usize>,
    /// Continue from this checkpoint directory.
    pub resume: Option<std::path::PathBuf>,
    /// The connector's peak learning rate when it differs from `lr` (LLaVA's `mm_projector_lr`);
    /// it follows the same schedule.
    pub connector_lr: Option<f64>,
    /// Keep only each decoder layer's input and recompute the layer in backward.
    pub activation_checkpointing: bool,
    /// Pack each micro-batch's samples into rows of up to the templater's `max_length` tokens,
    /// each sample attending only to itself: less padding, the same loss.
    pub pack: bool,
}

/// Where a checkpoint says the run was (`trainer_state.json`).
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct TrainerState {
    /// Optimizer steps taken.
    pub step: usize,
    /// The epoch in progress.
    pub epoch: u64,
    /// Where the next batch starts in that epoch's order.
    pub position: usize,
    /// Samples trained on.
    pub samples_seen: usize,
    /// Skips so far, by reason.
    pub skipped: std::collections::BTreeMap<String, usize>,
    /// Loss of the first step.
    pub first_loss: f64,
    /// Ranks that wrote it (a resume may use another number).
    #[serde(default = "one")]
    pub world_size: usize,
}

fn one() -> usize {
    1
}

/// Writes a checkpoint atomically: into `checkpoint-<step>.tmp`, then renamed. A run killed at any
/// moment leaves either no checkpoint of that step or a whole one. With several ranks, each
/// writes its shard of the optimizer state, and rank 0 commits the checkpoint (its
/// `trainer_state.json` and the rename) only once every rank has written.
fn save_checkpoint(
    output: &Path,
    optimizer: &Optimizer,
    state: &TrainerState,
    group: Option<&ProcessGroup>,
) -> Result<(), StageError> {
    let dir = output.join(format!("checkpoint-{}", state.step));
    let tmp = output.join(format!("checkpoint-{}.tmp", state.step));
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| StageError::Io { path, source }
    };
    let leader = group.is_none_or(|g| g.rank() == 0);
    let barrier = || match group {
        Some(g) => g.barrier().map_err(StageError::Dist),
        None => Ok(()),
    };
    if leader {
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
    }
    barrier()?;
    if let Some(file) = optimizer.checkpoint_file() {
        foundation::save_safetensors(tmp.join(file), &optimizer.checkpoint_tensors(), None)
            .map_err(StageError::Checkpoint)?;
    }
    barrier()?;
    if leader {
        let json = serde_json::to_string_pretty(state).expect("state serialises");
        foundation::write_atomic(tmp.join("trainer_state.json"), json.as_bytes())
            .map_err(StageError::Checkpoint)?;
        // A checkpoint of this step from an earlier attempt is set aside, not deleted, until
        // the new one is in place: a kill at any moment leaves one of them whole.
        let old = output.join(format!("checkpoint-{}.old", state.step));
        let _ = std::fs::remove_dir_all(&old);
        if dir.exists() {
            std::fs::rename(&dir, &old).map_err(io(&old))?;
        }
        std::fs::rename(&tmp, &dir).map_err(io(&dir))?;
        let _ = std::fs::remove_dir_all(&old);
    }
    barrier()
}

/// The checkpoint to resume from: `dir` itself when it is one, else the latest complete
/// `checkpoint-<step>` inside it (a run's output directory; `.tmp` leftovers of a killed write
/// are ignored).
pub fn resolve_checkpoint(dir: &Path) -> Result<std::path::PathBuf, StageError> {
    if dir.join("trainer_state.json").exists() {
        return Ok(dir.to_path_buf());
    }
    let entries = std::fs::read_dir(dir).map_err(|source| StageError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("trainer_state.json").exists())
        .filter_map(|p| {
            let name = p.file_name()?.to_str()?.strip_prefix("checkpoint-")?;
            // `checkpoint-<step>.old` is a whole checkpoint set aside while its step was being
            // written again; it counts when the new one did not make it.
            let (step, current) = match name.strip_suffix(".old") {
                Some(step) => (step, false),
                None => (name, true),
            };
            Some(((step.parse::<usize>().ok()?, current), p))
        })
        .max_by_key(|(key, _)| *key)
        .map(|(_, p)| p)
        .ok_or_else(|| {
            StageError::Resume(format!(
                "{}: neither a checkpoint nor a run directory with checkpoint-<step> folders",
                dir.display()
            ))
        })
}

/// Restores weights and optimizer state from `dir` (written at any world size); returns where
/// the run was.
fn load_checkpoint(dir: &Path, optimizer: &mut Optimizer) -> Result<TrainerState, StageError> {
    let state_file = dir.join("trainer_state.json");
    let text = std::fs::read_to_string(&state_file).map_err(|source| StageError::Io {
        path: state_file.clone(),
        source,
    })?;
    let state: TrainerState = serde_json::from_str(&text)
        .map_err(|e| StageError::Resume(format!("{}: {e}", state_file.display())))?;
    optimizer.restore(dir).map_err(StageError::Resume)?;
    Ok(state)
}

/// What one optimizer step reports (one line of `metrics.jsonl`).
#[derive(Debug, Clone, Serialize)]
pub struct StepMetrics {
    /// Optimizer step, from 1.
    pub step: usize,
    /// Optimizer steps the run will take.
    pub total_steps: usize,
    /// Mean loss over the step's micro-batches.
    pub loss: f64,
    /// Learning rate used.
    pub lr: f64,
    /// Gradient norm before clipping.
    pub grad_norm: f64,
    /// Samples per second of this step.
    pub samples_per_s: f64,
    /// Tokens (padding excluded) per second of this step.
    pub tokens_per_s: f64,
    /// Samples skipped so far.
    pub samples_skipped: usize,
    /// The fraction of the step's token slots that were padding.
    pub padding_fraction: f64,
}

/// What a finished stage reports (`summary.json`).
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Optimizer steps taken.
    pub steps: usize,
    /// Samples trained on.
    pub samples_seen: usize,
    /// Samples skipped, by reason.
    pub samples_skipped: usize,
    /// Counts per skip reason.
    pub skipped_by_reason: std::collections::BTreeMap<String, usize>,
    /// Loss of the last step.
    pub final_loss: f64,
    /// Loss of the first step.
    pub first_loss: f64,
    /// Wall-clock seconds of this invocation (a resumed run counts from its resume).
    pub seconds: f64,
    /// The process's peak resident set (Linux `VmHWM`): host memory only; tch does not expose the
    /// CUDA allocator's statistics, so GPU memory is measured by `bench-train`'s driver query.
    pub peak_memory_bytes: Option<u64>,
    /// Ranks that trained.
    pub world_size: usize,
    /// Bytes of optimizer state (f32 masters and moments) each rank holds: 1/N of the whole
    /// with a sharded optimizer.
    pub optimizer_state_bytes: u64,
}

pub use foundation::device::peak_host_memory;

/// Errors that stop a stage.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    /// The loss became NaN or infinite.
    #[error("step {step}: the loss is {loss}; stopping rather than corrupting the weights")]
    NonFinite {
        /// The optimizer step.
        step: usize,
        /// The value.
        loss: f64,
    },
    /// From the model.
    #[error(transparent)]
    Model(#[from] llava_model::Error),
    /// The optimizer's kernels failed (out of device memory, say).
    #[error("optimizer: {0}")]
    Optimizer(#[from] tch::TchError),
    /// Writing a checkpoint failed.
    #[error(transparent)]
    Checkpoint(foundation::Error),
    /// A checkpoint cannot be resumed from.
    #[error("cannot resume: {0}")]
    Resume(String),
    /// The device ran out of memory during a step.
    #[error(
        "out of memory at step {step}{shape}: {message}\n  lower --micro-batch (the global batch stays, through more accumulation) or --max-length\n  {checkpoint}"
    )]
    OutOfMemory {
        /// The optimizer step being taken.
        step: usize,
        /// `, micro-batch B x L tokens` when a forward pass ran out.
        shape: String,
        /// libtorch's message.
        message: String,
        /// Where the last checkpoint is, and how to resume.
        checkpoint: String,
    },
    /// libtorch failed during a step.
    #[error("step {step}: libtorch: {message}")]
    Torch {
        /// The optimizer step being taken.
        step: usize,
        /// libtorch's message.
        message: String,
    },
    /// A collective failed: a rank died or stopped answering.
    #[error("data parallel: {0}")]
    Dist(DistError),
    /// Writing metrics failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
}

impl StageError {
    /// The error for a libtorch failure during `step` on `batch`: an out-of-memory error names the
    /// batch's shape, what to lower and the checkpoint to resume from.
    fn torch(
        message: String,
        step: usize,
        batch: &Batch,
        output: &Path,
        save_every: Option<usize>,
    ) -> StageError {
        if !foundation::torch_panic::is_out_of_memory(&message) {
            return StageError::Torch { step, message };
        }
        let message = message.lines().next().unwrap_or_default().to_string();
        let shape = if batch.batch_size > 0 {
            format!(
                " (micro-batch of {} x {} tokens, {} images)",
                batch.batch_size, batch.seq_len, batch.images
            )
        } else {
            " (in the optimizer step)".into()
        };
        let checkpoint = match resolve_checkpoint(output) {
            Ok(dir) => format!(
                "the last checkpoint is {}; continue with --resume {}",
                dir.display(),
                output.display()
            ),
            Err(_) if save_every.is_none() => {
                "no checkpoint was written (add --save-every N to keep one)".into()
            }
            Err(_) => "no checkpoint was written yet".into(),
        };
        StageError::OutOfMemory {
            step,
            shape,
            message,
            checkpoint,
        }
    }
}

/// Runs one part of a step, turning libtorch's failures (panics included) into errors; running out
/// of memory becomes [`StageError::OutOfMemory`], which says what to lower and where to resume.
fn guarded<T>(
    step: usize,
    batch: &Batch,
    output: &Path,
    save_every: Option<usize>,
    f: impl FnOnce() -> Result<T, StageError>,
) -> Result<T, StageError> {
    match foundation::torch_panic::catch(f) {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) if foundation::torch_panic::is_out_of_memory(&e.to_string()) => Err(
            StageError::torch(e.to_string(), step, batch, output, save_every),
        ),
        Ok(Err(e)) => Err(e),
        Err(panic) => Err(StageError::torch(
            panic.message,
            step,
            batch,
            output,
            save_every,
        )),
    }
}

/// What a stage trains, by name, with everything else frozen: the connector always; in stage 2
/// the language model too, or only its LoRA adapters when it carries them (the base weights then
/// stay bit-identical). The vision tower never trains.
fn trainable(model: &mut LlavaModel, stage: Stage) -> Vec<(String, Tensor)> {
    model.vision_vs.freeze();
    model.connector_vs.unfreeze();
    let mut params: Vec<(String, Tensor)> = model.connector_vs.variables().into_iter().collect();
    match (stage, &mut model.lora_vs) {
        (Stage::Pretrain, _) => model.lm_vs.freeze(),
        (Stage::Finetune, Some(adapters)) => {
            model.lm_vs.freeze();
            adapters.unfreeze();
            params.extend(adapters.variables());
        }
        (Stage::Finetune, None) => {
            model.lm_vs.unfreeze();
            params.extend(model.lm_vs.variables());
        }
    }
    params.sort_by(|a, b| a.0.cmp(&b.0));
    params
}

/// The batch's packing, when it is packed: positions on `device`, segments on the host (the
/// attention plan reads their boundaries there).
fn packing(batch: &Batch, device: Device) -> Option<gemma_lm::Packing> {
    if batch.segment_ids.is_empty() {
        return None;
    }
    let shape = [batch.batch_size as i64, batch.seq_len as i64];
    let tensor = |v: &[i64]| Tensor::from_slice(v).view(shape);
    Some(gemma_lm::Packing {
        positions: upload(&tensor(&batch.position_ids), device),
        segments: tensor(&batch.segment_ids),
    })
}

/// The batch as tensors: token ids and labels on the host (the model counts image tokens and
/// finds labelled positions there, then uploads them, so the host never waits for the device in
/// the middle of a step), images uploaded to `device` without waiting.
fn tensors(batch: &Batch, device: Device) -> (Tensor, Tensor, Option<Tensor>) {
    let shape = [batch.batch_size as i64, batch.seq_len as i64];
    let ids = Tensor::from_slice(&batch.input_ids).view(shape);
    let labels = Tensor::from_slice(&batch.labels).view(shape);
    let pixels = (batch.images > 0).then(|| {
        let (h, w) = batch.image_size;
        let pixels = Tensor::from_slice(&batch.pixel_values).view([
            batch.images as i64,
            3,
            h as i64,
            w as i64,
        ]);
        upload(&pixels, device)
    });
    (ids, labels, pixels)
}

/// The ranks a stage trains on, when more than one process does.
#[derive(Debug, Clone)]
pub struct Parallel {
    /// The process group of every rank of the job.
    pub group: std::rc::Rc<ProcessGroup>,
    /// Split the optimizer state across the ranks (ZeRO-2) instead of replicating it.
    pub shard_optimizer: bool,
}

/// What the ranks add up about a step before its backward passes: each micro-batch's labelled
/// tokens (the denominators of its loss, which a micro-batch cut among ranks needs whole), and
/// the step's samples, tokens and skips by reason, for the metrics.
struct StepTotals {
    labels: Vec<f64>,
    samples: usize,
    tokens: usize,
    /// Token slots of the batches' tensors, padding included.
    slots: usize,
    skipped: Vec<usize>,
}

impl StepTotals {
    /// The totals over every rank of the step of `micro_batches` micro-batches of which this rank
    /// loaded `batches` (micro-batch index, batch).
    fn reduce(
        batches: &[(usize, Batch)],
        micro_batches: usize,
        group: Option<&ProcessGroup>,
    ) -> Result<Self, DistError> {
        let reasons = SkipReason::ALL.len();
        let mut local = vec![0f64; micro_batches + 3 + reasons];
        for (micro, batch) in batches {
            local[*micro] += batch.label_tokens as f64;
            local[micro_batches] += batch.ids.len() as f64;
            local[micro_batches + 2] += (batch.batch_size * batch.seq_len) as f64;
            local[micro_batches + 1] +=
                batch.attention_mask.iter().filter(|&&m| m == 1).count() as f64;
            for (_, reason, _) in &batch.skipped {
                let r = SkipReason::ALL
                    .iter()
                    .position(|x| x == reason)
                    .expect("listed");
                local[micro_batches + 3 + r] += 1.0;
            }
        }
        if let Some(group) = group {
            let t = Tensor::from_slice(&local);
            group.all_reduce(&t, Reduce::Sum)?;
            local = Vec::<f64>::try_from(&t).expect("f64 values");
        }
        Ok(StepTotals {
            labels: local[..micro_batches].to_vec(),
            samples: local[micro_batches] as usize,
            tokens: local[micro_batches + 1] as usize,
            slots: local[micro_batches + 2] as usize,
            skipped: local[micro_batches + 3..]
                .iter()
                .map(|&n| n as usize)
                .collect(),
        })
    }
}

/// The sum of `value` over the ranks.
fn sum_over(group: Option<&ProcessGroup>, value: f64) -> Result<f64, DistError> {
    let Some(group) = group else {
        return Ok(value);
    };
    let t = Tensor::from_slice(&[value]);
    group.all_reduce(&t, Reduce::Sum)?;
    Ok(t.double_value(&[0]))
}

/// Trains `model` for one stage on `dataset`, writing `metrics.jsonl` into `output`. `order_for`
/// gives the sample order of an epoch.
pub fn train(
    model: &mut LlavaModel,
    dataset: Arc<Dataset>,
    config: &StageConfig,
    output: &Path,
    order_for: impl Fn(u64) -> Vec<usize>,
    on_step: impl FnMut(&StepMetrics),
) -> Result<Summary, StageError> {
    train_parallel(model, dataset, config, output, order_for, on_step, None)
}

/// [`train`] as one rank of `parallel`: every rank takes its share of each step the one-process
/// run takes ([`parallel::share`]), the gradients are summed across the ranks before the update,
/// and rank 0 alone writes the metrics and calls `on_step`. Checkpoints are written by all.
pub fn train_parallel(
    model: &mut LlavaModel,
    dataset: Arc<Dataset>,
    config: &StageConfig,
    output: &Path,
    order_for: impl Fn(u64) -> Vec<usize>,
    mut on_step: impl FnMut(&StepMetrics),
    parallel: Option<&Parallel>,
) -> Result<Summary, StageError> {
    let group = parallel.map(|p| p.group.as_ref());
    let (rank, world) = group.map_or((0, 1), |g| (g.rank(), g.world()));
    let leader = rank == 0;
    let optimizer_error = |e: OptimizerError| match e {
        OptimizerError::Torch(e) => StageError::Optimizer(e),
        OptimizerError::Dist(e) => StageError::Dist(e),
    };
    let mut optimizer = Optimizer::new(
        trainable(model, config.stage),
        config.adamw,
        parallel.map(|p| p.group.clone()),
        parallel.is_some_and(|p| p.shard_optimizer),
    )
    .map_err(optimizer_error)?;
    if let Some(connector_lr) = config.connector_lr {
        let connector: std::collections::HashSet<String> =
            model.connector_vs.variables().into_keys().collect();
        optimizer.set_lr_scale(|name| connector.contains(name), connector_lr / config.lr);
    }
    model.set_training(true);

    let samples = dataset.records.len();
    let accumulation = config
        .global_batch
        .div_ceil(config.micro_batch.max(1))
        .max(1);
    let steps_per_epoch = samples.div_ceil(config.global_batch.max(1));
    let total = config
        .max_steps
        .unwrap_or(usize::MAX)
        .min(steps_per_epoch * config.epochs.max(1))
        .max(1);
    let schedule = WarmupCosine::with_ratio(config.lr, config.warmup_ratio, total);
    let resumed = match &config.resume {
        Some(dir) => match resolve_checkpoint(dir) {
            Ok(checkpoint) => Some(load_checkpoint(&checkpoint, &mut optimizer)?),
            // A job restarted with `--resume` on its own output (torchrun's --max-restarts)
            // before its first checkpoint starts over.
            Err(_) if same_dir(dir, output) => {
                if leader {
                    eprintln!(
                        "no checkpoint in {} yet: starting from the beginning",
                        dir.display()
                    );
                }
                None
            }
            Err(e) => return Err(e),
        },
        None => None,
    };
    let metrics_path = output.join("metrics.jsonl");
    let mut metrics = if leader {
        Some(open_metrics(&metrics_path, resumed.as_ref())?)
    } else {
        None
    };

    let run_started = Instant::now();
    let device = model.device();
    // This rank's skips, for the log; `skipped` counts every rank's.
    let mut logged = SkipCounter::default();
    let mut skipped: std::collections::BTreeMap<SkipReason, usize> = Default::default();
    let (mut step, mut seen) = (0, 0);
    let (mut first_loss, mut last_loss) = (f64::NAN, f64::NAN);
    let (mut start_epoch, mut start_position) = (0, 0);
    if let Some(state) = &resumed {
        (step, seen, first_loss) = (state.step, state.samples_seen, state.first_loss);
        (start_epoch, start_position) = (state.epoch, state.position);
        for (reason, n) in &state.skipped {
            if let Some(r) = SkipReason::ALL.iter().find(|r| r.name() == reason) {
                skipped.insert(*r, *n);
            }
        }
    }
    'epochs: for epoch in start_epoch..config.epochs.max(1) as u64 {
        let position = if epoch == start_epoch {
            start_position
        } else {
            0
        };
        let order = order_for(epoch);
        let epoch_len = order.len();
        let plan = parallel::plan_epoch(&order, position, config.micro_batch, accumulation);
        let shares: Vec<Vec<parallel::Piece>> = plan
            .iter()
            .map(|planned| parallel::share(planned, rank, world))
            .collect();
        let slices = shares
            .iter()
            .flatten()
            .map(|piece| (piece.samples.clone(), 0))
            .collect();
        let pack = config.pack.then_some(dataset.templater.max_length);
        let mut loader = Loader::from_slices_packed(dataset.clone(), slices, 2, pack);
        for (planned, pieces) in plan.iter().zip(&shares) {
            let started = Instant::now();
            let batches: Vec<(usize, Batch)> = pieces
                .iter()
                .map(|piece| (piece.micro, loader.next().expect("a batch per piece")))
                .collect();
            for (_, batch) in &batches {
                for (id, reason, detail) in &batch.skipped {
                    if logged.add(id, *reason, detail) {
                        eprintln!("skipped sample {id}: {reason}: {detail}");
                    }
                }
            }
            let micro_batches = planned.micro_batches.len();
            let totals =
                StepTotals::reduce(&batches, micro_batches, group).map_err(StageError::Dist)?;
            for (reason, n) in SkipReason::ALL.iter().zip(&totals.skipped) {
                if *n > 0 {
                    *skipped.entry(*reason).or_default() += n;
                }
            }
            let mut step_loss = Tensor::zeros([], (Kind::Float, device));
            for (micro, batch) in &batches {
                if batch.batch_size == 0 || batch.label_tokens == 0 {
                    continue;
                }
                // Adapter dropout draws from libtorch's generator: seeding it per micro-batch
                // makes a resumed run, and a rank taking this micro-batch, draw what the
                // uninterrupted one-process run drew.
                tch::manual_seed(
                    (config.seed.wrapping_mul(1_000_003) as i64)
                        ^ (step as i64)
                        ^ ((*micro as i64) << 40),
                );
                // The micro-batch's loss is the mean over its labelled tokens; a rank holding a
                // slice of it contributes its tokens' share.
                let share = batch.label_tokens as f64 / totals.labels[*micro];
                let loss = guarded(step + 1, batch, output, config.save_every, || {
                    let (ids, labels, pixels) = tensors(batch, device);
                    let packing = packing(batch, device);
                    let divisor = accumulation as f64 / share;
                    if config.activation_checkpointing {
                        let (loss, _) = model.loss_backward_checkpointed_packed(
                            &ids,
                            pixels.as_ref(),
                            &labels,
                            divisor,
                            packing.as_ref(),
                        )?;
                        return Ok(loss);
                    }
                    let hidden = model.forward_train(&ids, pixels.as_ref(), packing.as_ref())?;
                    let (loss, _) = model.loss(&hidden, &labels)?;
                    (&loss / divisor).backward();
                    Ok(loss.detach())
                })?;
                step_loss += loss * share;
            }
            let loss = sum_over(group, step_loss.double_value(&[])).map_err(StageError::Dist)?
                / micro_batches.max(1) as f64;
            step += 1;
            if !loss.is_finite() {
                return Err(StageError::NonFinite { step, loss });
            }
            let lr = schedule.lr(step - 1);
            let grad_norm = guarded(step, &Batch::default(), output, config.save_every, || {
                optimizer.reduce_gradients().map_err(optimizer_error)?;
                let norm = optimizer
                    .clip_grad_norm(config.max_grad_norm)
                    .map_err(optimizer_error)?;
                optimizer.step(lr).map_err(optimizer_error)?;
                Ok(norm)
            })?;
            optimizer.zero_grad();
            let seconds = started.elapsed().as_secs_f64().max(1e-9);
            let m = StepMetrics {
                step,
                total_steps: total,
                loss,
                lr,
                grad_norm,
                samples_per_s: totals.samples as f64 / seconds,
                tokens_per_s: totals.tokens as f64 / seconds,
                samples_skipped: skipped.values().sum(),
                padding_fraction: 1.0 - totals.tokens as f64 / totals.slots.max(1) as f64,
            };
            if let Some(metrics) = &mut metrics {
                let line = serde_json::to_string(&m).expect("metrics serialise");
                writeln!(metrics, "{line}").map_err(|source| StageError::Io {
                    path: metrics_path.clone(),
                    source,
                })?;
                on_step(&m);
            }
            if step == 1 {
                first_loss = loss;
            }
            last_loss = loss;
            seen += totals.samples;
            if config.save_every.is_some_and(|every| step % every == 0) {
                let (epoch, position) = if planned.end >= epoch_len {
                    (epoch + 1, 0)
                } else {
                    (epoch, planned.end)
                };
                let state = TrainerState {
                    step,
                    epoch,
                    position,
                    samples_seen: seen,
                    skipped: by_name(&skipped),
                    first_loss,
                    world_size: world,
                };
                save_checkpoint(output, &optimizer, &state, group)?;
            }
            if step >= total {
                break 'epochs;
            }
        }
    }
    model.set_training(false);
    Ok(Summary {
        steps: step,
        samples_seen: seen,
        samples_skipped: skipped.values().sum(),
        skipped_by_reason: by_name(&skipped),
        final_loss: last_loss,
        first_loss,
        seconds: run_started.elapsed().as_secs_f64(),
        peak_memory_bytes: peak_host_memory(),
        world_size: world,
        optimizer_state_bytes: optimizer.state_bytes(),
    })
}

/// Skip counts keyed by the reasons' names (as `summary.json` and checkpoints hold them).
fn by_name(
    counts: &std::collections::BTreeMap<SkipReason, usize>,
) -> std::collections::BTreeMap<String, usize> {
    counts
        .iter()
        .map(|(r, n)| (r.name().to_string(), *n))
        .collect()
}

/// Whether `a` and `b` name the same directory.
fn same_dir(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

/// `metrics.jsonl`, new, or for a resumed run kept up to its checkpoint (a run killed later had
/// written lines for steps it now takes again) and appended to.
fn open_metrics(path: &Path, resumed: Option<&TrainerState>) -> Result<std::fs::File, StageError> {
    if let Some(state) = resumed
        && let Ok(text) = std::fs::read_to_string(path)
    {
        let kept: String = text
            .lines()
            .filter(|l| {
                serde_json::from_str::<serde_json::Value>(l)
                    .ok()
                    .and_then(|v| v.get("step")?.as_u64())
                    .is_some_and(|s| s as usize <= state.step)
            })
            .map(|l| format!("{l}\n"))
            .collect();
        foundation::write_atomic(path, kept.as_bytes()).map_err(StageError::Checkpoint)?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(resumed.is_some())
        .write(true)
        .truncate(resumed.is_none())
        .open(path)
        .map_err(|source| StageError::Io {
            path: path.to_path_buf(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_memory_says_what_ran_out_what_to_lower_and_where_to_resume() {
        let dir = tempfile::tempdir().unwrap();
        let batch = Batch {
            batch_size: 4,
            seq_len: 1024,
            images: 4,
            ..Batch::default()
        };
        let oom = "CUDA out of memory. Tried to allocate 2.00 GiB.".to_string();
        let text = StageError::torch(oom.clone(), 7, &batch, dir.path(), None).to_string();
        for part in [
            "step 7",
            "4 x 1024",
            "--micro-batch",
            "--max-length",
            "--save-every",
        ] {
            assert!(text.contains(part), "{part}: {text}");
        }
        let checkpoint = dir.path().join("checkpoint-5");
        std::fs::create_dir_all(&checkpoint).unwrap();
        std::fs::write(checkpoint.join("trainer_state.json"), "{}").unwrap();
        let text = StageError::torch(oom, 7, &batch, dir.path(), Some(5)).to_string();
        assert!(
            text.contains("checkpoint-5") && text.contains("--resume"),
            "{text}"
        );
        let other = StageError::torch("shape mismatch".into(), 3, &batch, dir.path(), None);
        assert!(matches!(other, StageError::Torch { step: 3, .. }));
    }
}
