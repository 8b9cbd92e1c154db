//! Throughput measurements on random weights, for any device: `llava bench-generate` and
//! `llava bench-vision`. They print one JSON object, so a GPU run and the Python reference
//! (`bench/hf_llava_baseline.py` of the shared notes) can be compared side by side.

use std::time::Instant;

use gemma_lm::GenerationConfig;
use llava_model::{LlavaModel, presets};
use serde::Serialize;
use tch::{Device, Kind, Tensor};
use vision_encoders::{FeatureSelect, VisionTower};

use crate::{Error, Result};

/// What `bench-generate` reports.
#[derive(Debug, Clone, Serialize)]
pub struct GenerateReport {
    /// The model preset.
    pub preset: String,
    /// Device and dtype.
    pub device: String,
    /// `bf16`, `f32`, …
    pub dtype: String,
    /// Prompts per batch.
    pub batch: usize,
    /// Prompt length in tokens, image tokens included.
    pub prompt_len: usize,
    /// New tokens per prompt (no early stop).
    pub new_tokens: usize,
    /// Seconds for the image features and the prompt's forward pass (time to first token).
    pub prefill_s: f64,
    /// Seconds for the whole generation, prefill included (as the reference measures it).
    pub gen_s: f64,
    /// New tokens per second over all rows: `batch * new_tokens / gen_s`.
    pub tokens_per_s: f64,
    /// How the decoding steps ran: `Graph` (CUDA graphs), `Eager`, `Static`; `Auto` is resolved.
    pub decode: String,
}

/// Waits until `device` has finished the work queued on it.
fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

/// Seconds `work` takes on `device`, the device's queue drained before and after.
fn timed(device: Device, work: impl FnOnce() -> Result<()>) -> Result<f64> {
    sync(device);
    let start = Instant::now();
    work()?;
    sync(device);
    Ok(start.elapsed().as_secs_f64())
}

fn preset(name: &str) -> Result<llava_model::LlavaConfig> {
    presets::by_name(name).ok_or_else(|| {
        Error::Unsupported(format!(
            "unknown preset `{name}` (bench-small, paper-2b-clip, paper-2b-dinov2)"
        ))
    })
}

/// Greedy generation with a random-weight model of `preset`: `batch` prompts of `prompt_len`
/// tokens (one image each, the rest random text), `new_tokens` new tokens each, decoding as
/// `decode` says; one warm-up, then the best of `runs`. A CUDA graph is recorded per generation
/// call, inside the timed part.
#[allow(clippy::too_many_arguments)]
pub fn generate(
    preset_name: &str,
    device: Device,
    kind: Kind,
    batch: usize,
    prompt_len: usize,
    new_tokens: usize,
    runs: usize,
    decode: gemma_lm::Decode,
) -> Result<GenerateReport> {
    let config = preset(preset_name)?;
    tch::manual_seed(0);
    let model = LlavaModel::new(&config, device, kind)?;
    let image_token = model.image_token();
    let per_image = config.image_seq_length.unwrap_or(576) as usize;
    if prompt_len < per_image + 2 {
        return Err(Error::Unsupported(format!(
            "--prompt-len must be at least {} (an image and two tokens)",
            per_image + 2
        )));
    }
    let vocab = config.text_config.vocab_size.min(image_token);
    let text = Tensor::randint(
        vocab,
        [batch as i64, (prompt_len - per_image - 1) as i64],
        (Kind::Int64, Device::Cpu),
    );
    let text = Vec::<Vec<i64>>::try_from(&text).map_err(gemma_lm::Error::from)?;
    let prompts: Vec<Vec<i64>> = text
        .into_iter()
        .map(|t| {
            std::iter::once(2)
                .chain(std::iter::repeat_n(image_token, per_image))
                .chain(t)
                .collect()
        })
        .collect();
    let size = model.config.image_side()?;
    let pixels = Tensor::randn([batch as i64, 3, size, size], (kind, device));
    let config = GenerationConfig {
        max_new_tokens: new_tokens,
        decode,
        ..GenerationConfig::default()
    };
    let warm = GenerationConfig {
        max_new_tokens: new_tokens.min(8),
        ..config.clone()
    };
    model.generate(&prompts, Some(&pixels), &warm, |_, _| {})?;
    let (ids, _) = gemma_lm::left_pad(&prompts, 0);
    let (mut best_prefill, mut best_gen) = (f64::INFINITY, f64::INFINITY);
    for _ in 0..runs.max(1) {
        let prefill = timed(device, || {
            let hidden = tch::no_grad(|| model.forward(&ids, Some(&pixels), None))?;
            let last = hidden.narrow(1, hidden.size()[1] - 1, 1);
            let _ = model.logits(&last).argmax(-1, false);
            Ok(())
        })?;
        let generation = timed(device, || {
            model.generate(&prompts, Some(&pixels), &config, |_, _| {})?;
            Ok(())
        })?;
        best_prefill = best_prefill.min(prefill);
        best_gen = best_gen.min(generation);
    }
    Ok(GenerateReport {
        preset: preset_name.into(),
        device: format!("{device:?}"),
        dtype: format!("{kind:?}"),
        batch,
        prompt_len,
        new_tokens,
        prefill_s: best_prefill,
        gen_s: best_gen,
        tokens_per_s: (batch * new_tokens) as f64 / best_gen,
        decode: format!("{:?}", decode.resolve(device)),
    })
}

/// What `bench-vision` reports.
#[derive(Debug, Clone, Serialize)]
pub struct VisionReport {
    /// The model preset whose tower was measured.
    pub preset: String,
    /// Device.
    pub device: String,
    /// dtype.
    pub dtype: String,
    /// Images per batch.
    pub batch: usize,
    /// Seconds per batch (best of the runs).
    pub batch_s: f64,
    /// Images per second.
    pub images_per_s: f64,
}

/// The tower of `preset` on `batch` random images (LLaVA's features: layer -2, no CLS), without
/// autograd; one warm-up, then the best of `runs`.
pub fn vision(
    preset_name: &str,
    device: Device,
    kind: Kind,
    batch: usize,
    runs: usize,
) -> Result<VisionReport> {
    let config = preset(preset_name)?;
    let vision = config.vision()?;
    tch::manual_seed(0);
    let (_vs, tower) = foundation::build(device, kind, |root| VisionTower::new(root, &vision))?;
    let size = config.image_side()?;
    let pixels = Tensor::randn([batch as i64, 3, size, size], (kind, device));
    let _ = tower.features(&pixels, FeatureSelect::default())?;
    let mut best = f64::INFINITY;
    for _ in 0..runs.max(1) {
        let seconds = timed(device, || {
            let _ = tower.features(&pixels, FeatureSelect::default())?;
            Ok(())
        })?;
        best = best.min(seconds);
    }
    Ok(VisionReport {
        preset: preset_name.into(),
        device: format!("{device:?}"),
        dtype: format!("{kind:?}"),
        batch,
        batch_s: best,
        images_per_s: batch as f64 / best,
    })
}

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
const PHASE_STEPS: usize = 2;

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
    pub lora: Option<gemma_lm::LoraSpec>,
    /// Recompute each decoder layer in backward.
    pub activation_checkpointing: bool,
    /// Give each sample a length drawn as the 665K mix's lengths spread (at most `seq`; text-only
    /// samples among them), micro-batches taken in the recipe's modality- and length-grouped
    /// order, so the step sees real-world padding.
    pub length_mix: bool,
    /// With `length_mix`: pack each micro-batch into rows of at most `seq` tokens.
    pub pack: bool,
}

/// One step's inputs on the device.
struct StepInputs {
    ids: Tensor,
    labels: Tensor,
    pixels: Option<Tensor>,
    packing: Option<gemma_lm::Packing>,
    /// Tokens that are not padding.
    real: usize,
    /// Token slots, padding included.
    slots: usize,
}

/// A micro-batch of samples `(length, has image)`: `<bos>`, the image's tokens when it has one,
/// random text labelled throughout; right-padded, or packed into rows of at most `budget`.
#[allow(clippy::too_many_arguments)]
fn mixed_inputs(
    samples: &[(usize, bool)],
    per_image: usize,
    image_token: i64,
    vocab: i64,
    budget: Option<usize>,
    side: i64,
    kind: Kind,
    device: Device,
) -> StepInputs {
    let rows: Vec<Vec<usize>> = match budget {
        Some(budget) => {
            let lengths: Vec<usize> = samples.iter().map(|s| s.0).collect();
            data::batch::balanced_rows(&lengths, budget)
        }
        None => (0..samples.len()).map(|i| vec![i]).collect(),
    };
    let width = |row: &Vec<usize>| -> usize { row.iter().map(|&i| samples[i].0).sum() };
    let len = rows.iter().map(width).max().unwrap_or(1);
    let (mut ids, mut labels, mut positions, mut segments) = (vec![], vec![], vec![], vec![]);
    let mut images = 0;
    for row in &rows {
        for (segment, &i) in row.iter().enumerate() {
            let (n, image) = samples[i];
            let image_len = if image { per_image } else { 0 };
            let text = Tensor::randint(vocab, [n as i64], (Kind::Int64, Device::Cpu));
            let mut text = Vec::<i64>::try_from(&text).expect("ids");
            text[0] = 2;
            for t in text.iter_mut().skip(1).take(image_len) {
                *t = image_token;
            }
            labels.extend(
                text.iter()
                    .enumerate()
                    .map(|(p, &t)| if p <= image_len { -100 } else { t }),
            );
            ids.extend(text);
            positions.extend(0..n as i64);
            segments.extend(std::iter::repeat_n(segment as i64, n));
            images += usize::from(image);
        }
        let pad = len - width(row);
        ids.extend(std::iter::repeat_n(0, pad));
        labels.extend(std::iter::repeat_n(-100, pad));
        positions.extend(std::iter::repeat_n(0, pad));
        segments.extend(std::iter::repeat_n(-1, pad));
    }
    let shape = [rows.len() as i64, len as i64];
    let tensor = |v: &[i64]| Tensor::from_slice(v).view(shape).to_device(device);
    StepInputs {
        ids: tensor(&ids),
        labels: tensor(&labels),
        pixels: (images > 0).then(|| Tensor::randn([images as i64, 3, side, side], (kind, device))),
        packing: budget.map(|_| gemma_lm::Packing {
            positions: tensor(&positions),
            segments: tensor(&segments),
        }),
        real: samples.iter().map(|s| s.0).sum(),
        slots: rows.len() * len,
    }
}

/// Training steps on a random-weight model of `preset` with random data shaped as the Python
/// reference shapes it: `<bos>`, one image's tokens, random text; the loss on the last
/// `loss_tokens` tokens of each sample (every text token when `None`). On CUDA the weights are
/// bf16 and the optimizer keeps f32 masters; on the CPU everything is f32. `warmup` steps are
/// not timed.
pub fn train(preset_name: &str, device: Device, shape: &TrainShape) -> Result<TrainReport> {
    train_on(preset_name, device, shape, None)
}

/// [`train`] as one rank of `group` (data parallel, each rank a micro-batch of its own, the
/// gradients reduced through the sharded optimizer): the report's throughput counts every rank.
pub fn train_on(
    preset_name: &str,
    device: Device,
    shape: &TrainShape,
    group: Option<std::rc::Rc<trainer::dist::ProcessGroup>>,
) -> Result<TrainReport> {
    let world = group.as_ref().map_or(1, |g| g.world());
    let dist_backend = group.as_ref().map(|g| format!("{:?}", g.backend()));
    let &TrainShape {
        stage,
        micro_batch,
        seq,
        loss_tokens,
        steps,
        warmup,
        ..
    } = shape;
    let config = preset(preset_name)?;
    let kind = foundation::device::default_kind(device);
    tch::manual_seed(0);
    let mut model = LlavaModel::new(&config, device, kind)?;
    model.vision_vs.freeze();
    match (stage, &shape.lora) {
        (1, _) | (2, Some(_)) => model.lm_vs.freeze(),
        (2, None) => model.lm_vs.unfreeze(),
        (other, _) => return Err(Error::Unsupported(format!("stage {other} (1 or 2)"))),
    }
    model.connector_vs.unfreeze();
    let mut params: Vec<(String, Tensor)> = model.connector_vs.variables().into_iter().collect();
    match &shape.lora {
        Some(_) if stage != 2 => {
            return Err(Error::Unsupported("LoRA trains in stage 2 only".into()));
        }
        Some(spec) => {
            model.add_lora(spec, 0)?;
            model.set_training(true);
            params.extend(model.lora_vs.as_ref().expect("just added").variables());
        }
        None if stage == 2 => params.extend(model.lm_vs.variables()),
        None => {}
    }
    params.sort_by(|a, b| a.0.cmp(&b.0));
    let mut optimizer =
        trainer::parallel::Optimizer::new(params, trainer::AdamWConfig::default(), group, true)
            .map_err(|e| Error::Unsupported(e.to_string()))?;

    let image_token = model.image_token();
    let per_image = config.image_seq_length.unwrap_or(576) as usize;
    if seq < per_image + 2 {
        return Err(Error::Unsupported(format!(
            "--seq must be at least {} (an image and two tokens)",
            per_image + 2
        )));
    }
    let (b, l) = (micro_batch as i64, seq as i64);
    let vocab = config.text_config.vocab_size.min(image_token);
    let labelled = loss_tokens
        .unwrap_or(seq - per_image - 1)
        .min(seq - per_image - 1);
    let size = model.config.image_side()?;
    let inputs: Vec<StepInputs> = if shape.length_mix {
        // Lengths as the 665K mix's spread, capped at `seq`, in the recipe's grouped order.
        let pool = data::mix::mix_like_shapes(4096, 0);
        let lengths: Vec<(usize, bool)> = pool
            .iter()
            .map(|s| (s.tokens(per_image).min(seq), s.image))
            .collect();
        let signed: Vec<i64> = lengths
            .iter()
            .map(|&(n, image)| if image { n as i64 } else { -(n as i64) })
            .collect();
        let order = data::modality_grouped(&signed, micro_batch * 8, 0, 0);
        let needed = warmup + steps.max(1) + 2 * PHASE_STEPS;
        order
            .chunks_exact(micro_batch)
            .take(needed)
            .map(|chunk| {
                let samples: Vec<(usize, bool)> = chunk.iter().map(|&i| lengths[i]).collect();
                mixed_inputs(
                    &samples,
                    per_image,
                    image_token,
                    vocab,
                    shape.pack.then_some(seq),
                    size,
                    kind,
                    device,
                )
            })
            .collect()
    } else {
        let ids = Tensor::randint(vocab, [b, l], (Kind::Int64, Device::Cpu));
        let _ = ids.narrow(1, 0, 1).fill_(2);
        let _ = ids.narrow(1, 1, per_image as i64).fill_(image_token);
        let labels = ids.copy();
        let _ = labels.narrow(1, 0, l - labelled as i64).fill_(-100);
        vec![StepInputs {
            ids: ids.to_device(device),
            labels: labels.to_device(device),
            pixels: Some(Tensor::randn([b, 3, size, size], (kind, device))),
            packing: None,
            real: (b * l) as usize,
            slots: (b * l) as usize,
        }]
    };
    // Which inputs the next step takes, and the real and padded tokens of the steps so far.
    let next = std::cell::Cell::new(0usize);
    let counted = std::cell::Cell::new((0usize, 0usize));

    let mut loss_value = Tensor::zeros([], (Kind::Float, device));
    // One optimizer step; with `phases`, the device is drained after each part and its seconds
    // added there (forward with the loss, backward, clipping, AdamW).
    let mut step =
        |optimizer: &mut trainer::parallel::Optimizer, phases: Option<&mut Phases>| -> Result<()> {
            let mut clock = phases.map(|p| (p, Instant::now()));
            let mut lap = |slot: fn(&mut Phases) -> &mut f64| {
                if let Some((phases, start)) = clock.as_mut() {
                    sync(device);
                    *slot(phases) += start.elapsed().as_secs_f64();
                    *start = Instant::now();
                }
            };
            let input = &inputs[next.get() % inputs.len()];
            next.set(next.get() + 1);
            let (real, slots) = counted.get();
            counted.set((real + input.real, slots + input.slots));
            let (ids, labels, pixels) = (&input.ids, &input.labels, input.pixels.as_ref());
            let loss = if shape.activation_checkpointing {
                // Forward and backward are one call here: their time goes to `backward_s`.
                lap(|p| &mut p.forward_s);
                model
                    .loss_backward_checkpointed_packed(
                        ids,
                        pixels,
                        labels,
                        1.0,
                        input.packing.as_ref(),
                    )?
                    .0
            } else {
                let hidden = model.forward_train(ids, pixels, input.packing.as_ref())?;
                let (loss, _) = model.loss(&hidden, labels)?;
                lap(|p| &mut p.forward_s);
                loss.backward();
                loss
            };
            let failed = |e: trainer::parallel::OptimizerError| Error::Unsupported(e.to_string());
            optimizer.reduce_gradients().map_err(failed)?;
            lap(|p| &mut p.backward_s);
            let _ = optimizer.clip_grad_norm(1.0).map_err(failed)?;
            lap(|p| &mut p.clip_s);
            optimizer.step(1e-5).map_err(failed)?;
            optimizer.zero_grad();
            lap(|p| &mut p.optimizer_s);
            loss_value = loss.detach();
            Ok(())
        };
    for _ in 0..warmup {
        step(&mut optimizer, None)?;
    }
    counted.set((0, 0));
    let seconds = timed(device, || {
        for _ in 0..steps.max(1) {
            step(&mut optimizer, None)?;
        }
        Ok(())
    })?;
    let (real, slots) = counted.get();
    // Untimed: the same steps again, drained between their parts, for where the time goes.
    let mut phases = Phases::default();
    for _ in 0..PHASE_STEPS {
        step(&mut optimizer, Some(&mut phases))?;
    }
    for slot in [
        &mut phases.forward_s,
        &mut phases.backward_s,
        &mut phases.clip_s,
        &mut phases.optimizer_s,
    ] {
        *slot /= PHASE_STEPS as f64;
    }
    if let Some(path) = &shape.profile {
        let profile = foundation::profiler::Profile::start(device.is_cuda())?;
        for _ in 0..PHASE_STEPS {
            step(&mut optimizer, None)?;
        }
        sync(device);
        profile.finish(path)?;
    }
    let step_s = seconds / steps.max(1) as f64;
    // libtorch's caching allocator keeps what it once reserved (nothing here empties it), so the
    // device memory in use now bounds every step's peak from above; no sampling inside the loop.
    let peak_device = if device.is_cuda() {
        sync(device);
        foundation::device::cuda_memory_in_use()
    } else {
        None
    };
    let count =
        |vs: &tch::nn::VarStore| -> f64 { vs.variables().values().map(|t| t.numel() as f64).sum() };
    let (n_vis, n_lm) = (
        count(&model.vision_vs),
        count(&model.lm_vs) + count(&model.connector_vs),
    );
    // Real (non-padding) tokens per timed step.
    let tokens = real as f64 / steps.max(1) as f64;
    let flops = if stage == 2 { 6.0 } else { 4.0 } * n_lm * tokens
        + 2.0 * n_vis * (per_image as f64 + 1.0) * b as f64;
    Ok(TrainReport {
        preset: preset_name.into(),
        stage,
        device: format!("{device:?}"),
        dtype: format!("{kind:?}"),
        micro_batch,
        seq,
        loss_tokens: labelled,
        lora_rank: shape.lora.as_ref().map(|l| l.r),
        activation_checkpointing: shape.activation_checkpointing,
        length_mix: shape.length_mix,
        packed: shape.pack && shape.length_mix,
        padding_fraction: 1.0 - real as f64 / slots.max(1) as f64,
        steps: steps.max(1),
        step_s,
        world_size: world,
        dist_backend,
        tokens_per_s: world as f64 * tokens / step_s,
        samples_per_s: world as f64 * b as f64 / step_s,
        peak_memory_bytes: if device.is_cuda() {
            peak_device
        } else {
            foundation::device::peak_host_memory()
        },
        mfu: device.is_cuda().then(|| flops / step_s / 989.4e12),
        loss: loss_value.double_value(&[]),
        phases,
    })
}
