//! Training steps on a random-weight model of a preset, timed: the warm-up, the timed steps, the
//! steps measured part by part, an optional profile, and the report.

use std::path::Path;
use std::rc::Rc;
use std::time::Instant;

use llava::foundation;
use llava::gemma_lm::LoraSpec;
use llava::llava_model::{LlavaConfig, LlavaModel};
use llava::trainer::dist::ProcessGroup;
use llava::trainer::parallel::{Optimizer, OptimizerError};
use serde::Serialize;
use tch::{Device, Kind, Tensor};

use super::inputs::{Draw, StepInputs};
use crate::cmd::bench::{preset, sync, timed};

/// What `bench-train` reports.
#[derive(Debug, Clone, Serialize)]
pub struct TrainReport {
    /// The model preset.
    pub preset: String,
    /// 1 (connector trains; gradients flow through the frozen LM) or 2 (LM + connector train).
    pub stage: u8,
    /// Device.
    pub device: String,
    /// Compute dtype (trainable weights keep f32 masters in the optimizer).
    pub dtype: String,
    /// Samples per step.
    pub micro_batch: usize,
    /// Tokens per sample, image tokens included.
    pub seq: usize,
    /// Labelled tokens per sample.
    pub loss_tokens: usize,
    /// The LoRA rank when adapters train instead of the language model.
    pub lora_rank: Option<i64>,
    /// Whether decoder layers were recomputed in backward.
    pub activation_checkpointing: bool,
    /// Timed steps (after the warm-up).
    pub steps: usize,
    /// Whether sample lengths were drawn as the 665K mix's spread (`--length-mix`).
    pub length_mix: bool,
    /// Whether each micro-batch was packed into rows (`--pack`).
    pub packed: bool,
    /// The fraction of the timed steps' token slots that were padding.
    pub padding_fraction: f64,
    /// Ranks, each training on a micro-batch of its own (`--nproc-per-node`).
    pub world_size: usize,
    /// The process group's backend (`Gloo`, `Nccl(n)`), when there was one (a group of one
    /// included: `--dist-backend`).
    pub dist_backend: Option<String>,
    /// Seconds per optimizer step (forward, backward, the ranks' gradient reduction, clipping,
    /// AdamW).
    pub step_s: f64,
    /// Real (non-padding) tokens per second over all ranks: `world_size * micro_batch * seq /
    /// step_s` for fixed lengths.
    pub tokens_per_s: f64,
    /// `world_size * micro_batch / step_s`.
    pub samples_per_s: f64,
    /// Peak memory: on CUDA the device memory in use after the timed steps (libtorch's caching
    /// allocator keeps what it reserved, so this bounds the peak from above, the CUDA context
    /// included); on the CPU the process's peak resident set.
    pub peak_memory_bytes: Option<u64>,
    /// Model FLOPs utilisation against the H100's 989.4 TFLOP/s dense bf16, counted as the Python
    /// reference counts it (GPU only).
    pub mfu: Option<f64>,
    /// The last step's loss (a sanity check: finite).
    pub loss: f64,
    /// Seconds per step in each part, from extra steps drained between their parts.
    pub phases: Phases,
}

/// Steps measured part by part after the timed ones.
pub const PHASE_STEPS: usize = 2;

/// Where a training step's time goes (seconds per step).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Phases {
    /// The tower, the connector, the language model and the loss.
    pub forward_s: f64,
    /// Autograd's backward pass.
    pub backward_s: f64,
    /// The global gradient norm (the clipping scale itself is applied inside the AdamW step).
    pub clip_s: f64,
    /// AdamW (and zeroing the gradients).
    pub optimizer_s: f64,
}

/// What `bench-train` measures.
#[derive(Debug, Clone)]
pub struct TrainShape {
    /// 1 or 2.
    pub stage: u8,
    /// Samples per step.
    pub micro_batch: usize,
    /// Tokens per sample, image tokens included.
    pub seq: usize,
    /// Labelled tokens at the end of each sample (every text token when `None`).
    pub loss_tokens: Option<usize>,
    /// Timed steps.
    pub steps: usize,
    /// Untimed steps first.
    pub warmup: usize,
    /// Where to write a kernel-by-kernel profile of two more steps (tab-separated).
    pub profile: Option<std::path::PathBuf>,
    /// Stage 2: train LoRA adapters (and the connector) instead of the whole language model.
    pub lora: Option<LoraSpec>,
    /// Recompute each decoder layer in backward.
    pub activation_checkpointing: bool,
    /// Give each sample a length drawn as the 665K mix's lengths spread (at most `seq`; text-only
    /// samples among them), micro-batches taken in the recipe's modality- and length-grouped
    /// order, so the step sees real-world padding.
    pub length_mix: bool,
    /// With `length_mix`: pack each micro-batch into rows of at most `seq`.
    pub pack: bool,
}

/// Training steps on a random-weight model of `preset_name` with random data shaped as the
/// Python reference shapes it: `<bos>`, one image's tokens, random text; the loss on the last
/// `loss_tokens` tokens of each sample (every text token when `None`). On CUDA the weights are
/// bf16 and the optimizer keeps f32 masters; on the CPU everything is f32. `warmup` steps are not
/// timed. With `group`, as one of its ranks (data parallel, each rank a micro-batch of its own,
/// the gradients reduced through the sharded optimizer): the report's throughput counts every
/// rank.
pub fn measure(
    preset_name: &str,
    device: Device,
    shape: &TrainShape,
    group: Option<Rc<ProcessGroup>>,
) -> llava::Result<TrainReport> {
    let world = group.as_ref().map_or(1, |g| g.world());
    let dist_backend = group.as_ref().map(|g| format!("{:?}", g.backend()));
    let config = preset(preset_name)?;
    let kind = foundation::device::default_kind(device);
    tch::manual_seed(0);
    let (model, params) = trainable(&config, shape, device, kind)?;
    let optimizer = Optimizer::new(params, llava::trainer::AdamWConfig::default(), group, true)
        .map_err(optimizer_error)?;
    let draw = draw(&config, &model, shape.seq, kind, device)?;
    let labelled = labelled(shape, draw.per_image);
    let mut steps = Steps {
        inputs: draw.inputs(shape, labelled),
        model,
        optimizer,
        checkpointing: shape.activation_checkpointing,
        device,
        next: 0,
        counted: (0, 0),
        loss: Tensor::zeros([], (Kind::Float, device)),
    };
    let timing = steps.run(shape)?;
    let report = Report {
        preset_name,
        shape,
        kind,
        per_image: draw.per_image,
        labelled,
        world,
        dist_backend,
    };
    Ok(report.finish(&steps, &timing))
}

/// A random-weight model of `config` with the parts `shape`'s stage trains unfrozen (LoRA
/// adapters added when it says), and those parameters by name.
fn trainable(
    config: &LlavaConfig,
    shape: &TrainShape,
    device: Device,
    kind: Kind,
) -> llava::Result<(LlavaModel, Vec<(String, Tensor)>)> {
    let unsupported = llava::Error::Unsupported;
    let mut model = LlavaModel::new(config, device, kind)?;
    model.vision_vs.freeze();
    match (shape.stage, &shape.lora) {
        (1, _) | (2, Some(_)) => model.lm_vs.freeze(),
        (2, None) => model.lm_vs.unfreeze(),
        (other, _) => return Err(unsupported(format!("stage {other} (1 or 2)"))),
    }
    model.connector_vs.unfreeze();
    let mut params: Vec<(String, Tensor)> = model.connector_vs.variables().into_iter().collect();
    match &shape.lora {
        Some(_) if shape.stage != 2 => {
            return Err(unsupported("LoRA trains in stage 2 only".into()));
        }
        Some(spec) => {
            model.add_lora(spec, 0)?;
            model.set_training(true);
            params.extend(model.lora_vs.as_ref().expect("just added").variables());
        }
        None if shape.stage == 2 => params.extend(model.lm_vs.variables()),
        None => {}
    }
    params.sort_by(|a, b| a.0.cmp(&b.0));
    Ok((model, params))
}

/// What the inputs of `model` (of `config`) are drawn with; samples of `seq` tokens must hold an
/// image and two tokens.
fn draw(
    config: &LlavaConfig,
    model: &LlavaModel,
    seq: usize,
    kind: Kind,
    device: Device,
) -> llava::Result<Draw> {
    let image_token = model.image_token();
    let per_image = config.image_seq_length.unwrap_or(576) as usize;
    if seq < per_image + 2 {
        return Err(llava::Error::Unsupported(format!(
            "--seq must be at least {} (an image and two tokens)",
            per_image + 2
        )));
    }
    Ok(Draw {
        per_image,
        image_token,
        vocab: config.text_config.vocab_size.min(image_token),
        side: model.config.image_side()?,
        kind,
        device,
    })
}

/// Labelled tokens per sample: `loss_tokens`, at most every text token (and all of them when not
/// given).
fn labelled(shape: &TrainShape, per_image: usize) -> usize {
    let text = shape.seq - per_image - 1;
    shape.loss_tokens.unwrap_or(text).min(text)
}

fn optimizer_error(e: OptimizerError) -> llava::Error {
    llava::Error::Unsupported(e.to_string())
}

/// The model, its optimizer and the inputs its steps cycle through.
struct Steps {
    model: LlavaModel,
    optimizer: Optimizer,
    inputs: Vec<StepInputs>,
    checkpointing: bool,
    device: Device,
    /// Which inputs the next step takes.
    next: usize,
    /// The real and padded tokens of the steps so far.
    counted: (usize, usize),
    /// The last step's loss.
    loss: Tensor,
}

/// What the measured steps found.
struct Timing {
    /// Seconds of all timed steps.
    seconds: f64,
    /// Real tokens of the timed steps.
    real: usize,
    /// Token slots of the timed steps, padding included.
    slots: usize,
    /// Seconds per step in each part.
    phases: Phases,
}

impl Steps {
    /// The warm-up, the timed steps, the steps measured part by part, and the profile's steps
    /// when `shape` asks for one.
    fn run(&mut self, shape: &TrainShape) -> llava::Result<Timing> {
        for _ in 0..shape.warmup {
            self.step(None)?;
        }
        self.counted = (0, 0);
        let seconds = timed(self.device, || {
            for _ in 0..shape.steps.max(1) {
                self.step(None)?;
            }
            Ok(())
        })?;
        let (real, slots) = self.counted;
        let phases = self.phases()?;
        if let Some(path) = &shape.profile {
            self.profile(path)?;
        }
        Ok(Timing {
            seconds,
            real,
            slots,
            phases,
        })
    }

    /// Untimed: [`PHASE_STEPS`] more steps, drained between their parts, for where the time goes.
    fn phases(&mut self) -> llava::Result<Phases> {
        let mut phases = Phases::default();
        for _ in 0..PHASE_STEPS {
            self.step(Some(&mut phases))?;
        }
        for slot in [
            &mut phases.forward_s,
            &mut phases.backward_s,
            &mut phases.clip_s,
            &mut phases.optimizer_s,
        ] {
            *slot /= PHASE_STEPS as f64;
        }
        Ok(phases)
    }

    /// A kernel-by-kernel profile of [`PHASE_STEPS`] more steps, written to `path`.
    fn profile(&mut self, path: &Path) -> llava::Result<()> {
        let profile = foundation::profiler::Profile::start(self.device.is_cuda())?;
        for _ in 0..PHASE_STEPS {
            self.step(None)?;
        }
        sync(self.device);
        profile.finish(path)?;
        Ok(())
    }

    /// One optimizer step; with `phases`, the device is drained after each part and its seconds
    /// added there (forward with the loss, backward, clipping, AdamW).
    fn step(&mut self, phases: Option<&mut Phases>) -> llava::Result<()> {
        let mut laps = Laps {
            device: self.device,
            clock: phases.map(|p| (p, Instant::now())),
        };
        let input = &self.inputs[self.next % self.inputs.len()];
        self.next += 1;
        self.counted = (self.counted.0 + input.real, self.counted.1 + input.slots);
        let (ids, labels, pixels) = (&input.ids, &input.labels, input.pixels.as_ref());
        let packing = input.packing.as_ref();
        let loss = if self.checkpointing {
            // Forward and backward are one call here: their time goes to `backward_s`.
            laps.lap(|p| &mut p.forward_s);
            self.model
                .loss_backward_checkpointed_packed(ids, pixels, labels, 1.0, packing)?
                .0
        } else {
            let hidden = self.model.forward_train(ids, pixels, labels, packing)?;
            let (loss, _) = self.model.loss(&hidden, labels)?;
            laps.lap(|p| &mut p.forward_s);
            loss.backward();
            loss
        };
        let optimizer = &mut self.optimizer;
        optimizer.reduce_gradients().map_err(optimizer_error)?;
        laps.lap(|p| &mut p.backward_s);
        let _ = optimizer.clip_grad_norm(1.0).map_err(optimizer_error)?;
        laps.lap(|p| &mut p.clip_s);
        optimizer.step(1e-5).map_err(optimizer_error)?;
        optimizer.zero_grad();
        laps.lap(|p| &mut p.optimizer_s);
        self.loss = loss.detach();
        Ok(())
    }
}

/// The clock of a step measured part by part: at each lap the device is drained and the seconds
/// since the last lap go to a part.
struct Laps<'a> {
    device: Device,
    clock: Option<(&'a mut Phases, Instant)>,
}

impl Laps<'_> {
    /// Ends the part `slot` names (nothing when the step is not measured part by part).
    fn lap(&mut self, slot: fn(&mut Phases) -> &mut f64) {
        if let Some((phases, start)) = self.clock.as_mut() {
            sync(self.device);
            *slot(phases) += start.elapsed().as_secs_f64();
            *start = Instant::now();
        }
    }
}

/// What the report says besides the timing.
struct Report<'a> {
    preset_name: &'a str,
    shape: &'a TrainShape,
    kind: Kind,
    per_image: usize,
    labelled: usize,
    world: usize,
    dist_backend: Option<String>,
}

impl Report<'_> {
    /// The report of `steps`, timed as `timing` says: throughput, memory and MFU.
    fn finish(self, steps: &Steps, timing: &Timing) -> TrainReport {
        let (device, shape) = (steps.device, self.shape);
        let step_s = timing.seconds / shape.steps.max(1) as f64;
        // libtorch's caching allocator keeps what it once reserved (nothing here empties it), so
        // the device memory in use now bounds every step's peak from above; no sampling inside
        // the loop.
        let peak_memory_bytes = if device.is_cuda() {
            sync(device);
            foundation::device::cuda_memory_in_use()
        } else {
            foundation::device::peak_host_memory()
        };
        // Real (non-padding) tokens per timed step.
        let tokens = timing.real as f64 / shape.steps.max(1) as f64;
        let flops = self.flops(&steps.model, tokens);
        let (world, b) = (self.world as f64, shape.micro_batch as f64);
        TrainReport {
            preset: self.preset_name.into(),
            stage: shape.stage,
            device: format!("{device:?}"),
            dtype: format!("{:?}", self.kind),
            micro_batch: shape.micro_batch,
            seq: shape.seq,
            loss_tokens: self.labelled,
            lora_rank: shape.lora.as_ref().map(|l| l.r),
            activation_checkpointing: shape.activation_checkpointing,
            length_mix: shape.length_mix,
            packed: shape.pack && shape.length_mix,
            padding_fraction: 1.0 - timing.real as f64 / timing.slots.max(1) as f64,
            steps: shape.steps.max(1),
            step_s,
            world_size: self.world,
            dist_backend: self.dist_backend,
            tokens_per_s: world * tokens / step_s,
            samples_per_s: world * b / step_s,
            peak_memory_bytes,
            mfu: device.is_cuda().then(|| flops / step_s / 989.4e12),
            loss: steps.loss.double_value(&[]),
            phases: timing.phases,
        }
    }

    /// A step's floating-point operations as the Python reference counts them: 6 (stage 2) or 4
    /// (stage 1) per language-model and connector parameter and real token, 2 per tower
    /// parameter and image token.
    fn flops(&self, model: &LlavaModel, tokens: f64) -> f64 {
        let count = |vs: &tch::nn::VarStore| -> f64 {
            vs.variables().values().map(|t| t.numel() as f64).sum()
        };
        let n_vis = count(&model.vision_vs);
        let n_lm = count(&model.lm_vs) + count(&model.connector_vs);
        let per_token = if self.shape.stage == 2 { 6.0 } else { 4.0 };
        per_token * n_lm * tokens
            + 2.0 * n_vis * (self.per_image as f64 + 1.0) * self.shape.micro_batch as f64
    }
}
