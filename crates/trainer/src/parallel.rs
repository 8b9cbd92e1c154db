//! Data parallelism on c10d: how the ranks share each optimizer step's micro-batches, and how
//! their gradients become one update.
//!
//! - [`plan_epoch`] cuts an epoch into steps exactly as a one-process run takes them; [`share`]
//!   gives each rank its part of a step, so N ranks train on exactly the samples of one process.
//! - [`Optimizer`] is AdamW on one process, or across ranks either **replicated** (gradients
//!   all-reduced in buckets, every rank updating everything) or **sharded** with ZeRO-2's
//!   semantics (gradients reduce-scattered, each rank keeping the f32 masters and moments of
//!   1/N of every bucket and updating them, then the weights all-gathered).
//!
//! One process is the case of one rank: the same plan, with nothing to reduce.

use std::collections::HashMap;
use std::rc::Rc;

use foundation::Checkpoint;
use tch::{Device, Kind, Tensor};

use crate::dist::{DistError, ProcessGroup, Reduce};
use crate::optim::{AdamW, AdamWConfig, fused};

/// At most this many gradient elements go into one collective (PyTorch DDP's buckets are 25 MB).
pub const BUCKET_ELEMENTS: i64 = 1 << 23;

/// One optimizer step as a one-process run takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedStep {
    /// Its micro-batches: record indices, in the epoch's order.
    pub micro_batches: Vec<Vec<usize>>,
    /// Where the epoch's order stands after it (the resumable position).
    pub end: usize,
}

/// The steps of an epoch from `position` in `order`: `accumulation` micro-batches of
/// `micro_batch` samples each, the last step of the epoch taking what is left.
pub fn plan_epoch(
    order: &[usize],
    position: usize,
    micro_batch: usize,
    accumulation: usize,
) -> Vec<PlannedStep> {
    let micro_batch = micro_batch.max(1);
    let mut steps = Vec::new();
    let mut position = position.min(order.len());
    while position < order.len() {
        let mut micro_batches = Vec::new();
        while micro_batches.len() < accumulation.max(1) && position < order.len() {
            let end = (position + micro_batch).min(order.len());
            micro_batches.push(order[position..end].to_vec());
            position = end;
        }
        steps.push(PlannedStep {
            micro_batches,
            end: position,
        });
    }
    steps
}

/// A rank's part of a step: samples of one of its micro-batches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Piece {
    /// Which micro-batch of the step.
    pub micro: usize,
    /// Its samples this rank takes: all of them, or a slice when the step has fewer micro-batches
    /// than there are ranks.
    pub samples: Vec<usize>,
}

/// Rank `rank`'s pieces of `step` among `world` ranks: whole micro-batches in turn when there are
/// at least as many as ranks (each rank's forward pass is the micro-batch, as LLaVA's
/// per-device batch), else every micro-batch cut into equal slices. Every sample goes to exactly
/// one rank; a rank may get nothing (it still takes part in the step's collectives).
pub fn share(step: &PlannedStep, rank: usize, world: usize) -> Vec<Piece> {
    let count = step.micro_batches.len().max(1);
    let parts = if count >= world {
        1
    } else {
        world.div_ceil(count)
    };
    let mut mine = Vec::new();
    for (micro, samples) in step.micro_batches.iter().enumerate() {
        for part in 0..parts {
            if (micro * parts + part) % world == rank {
                let (lo, hi) = (
                    samples.len() * part / parts,
                    samples.len() * (part + 1) / parts,
                );
                mine.push(Piece {
                    micro,
                    samples: samples[lo..hi].to_vec(),
                });
            }
        }
    }
    mine
}

/// Consecutive parameters whose gradients travel in one collective.
#[derive(Debug)]
struct Bucket {
    /// Indices into the parameters.
    members: Vec<usize>,
    /// Each member's offset in the bucket's flat buffer.
    offsets: Vec<i64>,
    /// Elements of the members.
    numel: i64,
    /// `numel` rounded up to a multiple of the world size (a shard per rank).
    padded: i64,
}

fn buckets(params: &[(String, Tensor)], world: usize) -> Vec<Bucket> {
    let mut out: Vec<Bucket> = Vec::new();
    for (i, (_, p)) in params.iter().enumerate() {
        let n = p.numel() as i64;
        let fits = out.last().is_some_and(|b| {
            b.numel + n <= BUCKET_ELEMENTS && p.kind() == params[b.members[0]].1.kind()
        });
        if !fits {
            out.push(Bucket {
                members: Vec::new(),
                offsets: Vec::new(),
                numel: 0,
                padded: 0,
            });
        }
        let b = out.last_mut().expect("pushed");
        b.members.push(i);
        b.offsets.push(b.numel);
        b.numel += n;
    }
    let world = world as i64;
    for b in &mut out {
        b.padded = (b.numel + world - 1) / world * world;
    }
    out
}

impl Bucket {
    /// The slices of its members that elements `lo..hi` of the bucket (a rank's shard) hold;
    /// `index` is the bucket's.
    fn segments(
        &self,
        params: &[(String, Tensor)],
        index: usize,
        lo: i64,
        hi: i64,
    ) -> Vec<Segment> {
        let mut segments = Vec::new();
        for (&param, &offset) in self.members.iter().zip(&self.offsets) {
            let end = offset + params[param].1.numel() as i64;
            let (from, to) = (offset.max(lo), end.min(hi));
            if from >= to {
                continue;
            }
            segments.push(Segment {
                param,
                bucket: index,
                start: from - offset,
                offset: from - lo,
                len: to - from,
            });
        }
        segments
    }
}

/// A rank's slice of one parameter, held by the sharded optimizer.
#[derive(Debug)]
struct Segment {
    /// Index into the parameters.
    param: usize,
    bucket: usize,
    /// First element within the parameter.
    start: i64,
    /// First element within the rank's shard of the bucket.
    offset: i64,
    len: i64,
}

enum Mode {
    /// One process.
    Local,
    /// Every rank holds the whole optimizer state.
    Replicated(Rc<ProcessGroup>),
    /// Each rank holds the state of its shard of every bucket.
    Sharded {
        group: Rc<ProcessGroup>,
        /// The rank's f32 masters per bucket (`padded / world` elements).
        shards: Vec<Tensor>,
        segments: Vec<Segment>,
    },
}

/// A failure of the optimizer: libtorch's, or a collective's.
#[derive(Debug, thiserror::Error)]
pub enum OptimizerError {
    /// libtorch failed.
    #[error("optimizer: {0}")]
    Torch(#[from] tch::TchError),
    /// A collective failed (a rank died, say).
    #[error(transparent)]
    Dist(#[from] DistError),
}

/// AdamW on one process, or across the ranks of a group (see the module's documentation).
pub struct Optimizer {
    params: Vec<(String, Tensor)>,
    buckets: Vec<Bucket>,
    mode: Mode,
    adamw: AdamW,
}

impl std::fmt::Debug for Optimizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Optimizer")
            .field("params", &self.params.len())
            .field("buckets", &self.buckets.len())
            .field("sharded", &matches!(self.mode, Mode::Sharded { .. }))
            .finish()
    }
}

/// A sharded parameter's name in the optimizer and its checkpoint: `<name>:<first element>`.
fn segment_name(name: &str, start: i64) -> String {
    format!("{name}:{start}")
}

/// The parameter and first element a (possibly sharded) name stands for.
fn split_name(name: &str) -> (&str, i64) {
    match name.rsplit_once(':') {
        Some((base, start)) if start.parse::<i64>().is_ok() => {
            (base, start.parse().expect("checked"))
        }
        _ => (name, 0),
    }
}

impl Optimizer {
    /// AdamW over `params` (named, sorted the same on every rank). With a group, rank 0's
    /// weights are broadcast first, so every rank starts from the same model; `shard` then
    /// splits the optimizer state across the ranks. A group of one rank runs the same
    /// collectives (that is how their cost is measured on one GPU).
    pub fn new(
        params: Vec<(String, Tensor)>,
        config: AdamWConfig,
        group: Option<Rc<ProcessGroup>>,
        shard: bool,
    ) -> Result<Self, OptimizerError> {
        let world = group.as_ref().map_or(1, |g| g.world());
        let buckets = buckets(&params, world);
        if let Some(group) = &group {
            broadcast_weights(&params, &buckets, group)?;
        }
        let group = match group {
            Some(group) if shard => group,
            // Unsharded: AdamW over the parameters themselves, on one rank or replicated.
            group => {
                let adamw = AdamW::new(
                    params
                        .iter()
                        .map(|(n, p)| (n.clone(), p.shallow_clone()))
                        .collect(),
                    config,
                );
                return Ok(Optimizer {
                    params,
                    buckets,
                    mode: group.map_or(Mode::Local, Mode::Replicated),
                    adamw,
                });
            }
        };
        Ok(Self::sharded(params, buckets, group, config))
    }

    /// The sharded optimizer of this rank of `group`: the f32 masters of its shard of each
    /// bucket, and AdamW over the segments of parameters they hold.
    fn sharded(
        params: Vec<(String, Tensor)>,
        buckets: Vec<Bucket>,
        group: Rc<ProcessGroup>,
        config: AdamWConfig,
    ) -> Self {
        let (rank, world) = (group.rank() as i64, group.world() as i64);
        let (mut shards, mut segments) = (Vec::new(), Vec::new());
        let (mut named, mut decay) = (Vec::new(), Vec::new());
        for (b, bucket) in buckets.iter().enumerate() {
            let size = bucket.padded / world;
            let (lo, hi) = (rank * size, (rank + 1) * size);
            let flat = flatten(
                &params,
                bucket,
                |p| p.detach().to_kind(Kind::Float),
                bucket.padded - bucket.numel,
            );
            let shard = flat.narrow(0, lo, size).copy();
            for segment in bucket.segments(&params, b, lo, hi) {
                let (name, param) = &params[segment.param];
                named.push((
                    segment_name(name, segment.start),
                    shard.narrow(0, segment.offset, segment.len),
                ));
                decay.push(param.dim() > 1);
                segments.push(segment);
            }
            shards.push(shard);
        }
        Optimizer {
            adamw: AdamW::with_decay(named, config, decay),
            params,
            buckets,
            mode: Mode::Sharded {
                group,
                shards,
                segments,
            },
        }
    }

    /// Ranks the optimizer spans.
    pub fn world(&self) -> usize {
        match &self.mode {
            Mode::Local => 1,
            Mode::Replicated(g) | Mode::Sharded { group: g, .. } => g.world(),
        }
    }

    /// Whether the state is split across ranks.
    pub fn is_sharded(&self) -> bool {
        matches!(self.mode, Mode::Sharded { .. })
    }

    /// Gives the parameters `select` picks by name a learning rate of `scale` times the step's.
    pub fn set_lr_scale(&mut self, select: impl Fn(&str) -> bool, scale: f64) -> usize {
        self.adamw
            .set_lr_scale(|name| select(split_name(name).0), scale)
    }

    /// Bytes of optimizer state this rank holds (f32 masters and moments).
    pub fn state_bytes(&self) -> u64 {
        match &self.mode {
            // The shard is its own f32 master, beside the model's weights.
            Mode::Sharded { shards, .. } => {
                shards.iter().map(|s| s.numel() as u64).sum::<u64>() * 12
            }
            _ => self.adamw.state_bytes(),
        }
    }

    /// Turns each rank's gradients (the sums of its micro-batches' backward passes) into their
    /// sum over the ranks: all-reduced into every rank's parameters, or reduce-scattered into
    /// the rank's shard (the full gradients are then dropped).
    pub fn reduce_gradients(&mut self) -> Result<(), OptimizerError> {
        match &self.mode {
            Mode::Local => Ok(()),
            Mode::Replicated(group) => {
                for bucket in &self.buckets {
                    let flat = flatten(&self.params, bucket, gradient, 0);
                    group.all_reduce(&flat, Reduce::Sum)?;
                    for (&i, &offset) in bucket.members.iter().zip(&bucket.offsets) {
                        let p = &self.params[i].1;
                        let view = flat
                            .narrow(0, offset, p.numel() as i64)
                            .view(p.size().as_slice());
                        fused::set_grad(p, &view)?;
                    }
                }
                Ok(())
            }
            Mode::Sharded {
                group, segments, ..
            } => {
                let world = group.world() as i64;
                let mut reduced = Vec::with_capacity(self.buckets.len());
                for bucket in &self.buckets {
                    let flat =
                        flatten(&self.params, bucket, gradient, bucket.padded - bucket.numel);
                    let shard =
                        flat.new_zeros([bucket.padded / world], (flat.kind(), flat.device()));
                    group.reduce_scatter(&shard, &flat, Reduce::Sum)?;
                    reduced.push(shard);
                }
                let model: Vec<Tensor> =
                    self.params.iter().map(|(_, p)| p.shallow_clone()).collect();
                fused::clear_grads(&model)?;
                for (s, (_, tensor)) in segments.iter().zip(self.adamw.named_params()) {
                    fused::set_grad(tensor, &reduced[s.bucket].narrow(0, s.offset, s.len))?;
                }
                Ok(())
            }
        }
    }

    /// Clips the gradients' global norm at `max_norm` (in the next [`step`](Self::step)) and
    /// returns the norm before clipping.
    pub fn clip_grad_norm(&mut self, max_norm: f64) -> Result<f64, OptimizerError> {
        let norm = match &self.mode {
            Mode::Sharded { group, .. } => {
                self.adamw.clip_grad_norm_across(max_norm, |squares| {
                    group.all_reduce(squares, Reduce::Sum)
                })??
            }
            _ => self.adamw.clip_grad_norm(max_norm)?,
        };
        Ok(norm.double_value(&[]))
    }

    /// One AdamW update at `lr`; sharded, every rank then has the whole updated model again.
    pub fn step(&mut self, lr: f64) -> Result<(), OptimizerError> {
        self.adamw.step(lr)?;
        self.gather_weights()
    }

    /// Sharded: all-gathers every rank's masters into the model's weights.
    fn gather_weights(&self) -> Result<(), OptimizerError> {
        let Mode::Sharded { group, shards, .. } = &self.mode else {
            return Ok(());
        };
        for (bucket, shard) in self.buckets.iter().zip(shards) {
            let kind = self.params[bucket.members[0]].1.kind();
            let full = Tensor::empty([bucket.padded], (kind, shard.device()));
            group.all_gather(&full, &shard.to_kind(kind))?;
            unflatten_into(&self.params, bucket, &full)?;
        }
        Ok(())
    }

    /// Drops every gradient, the model's and the shard's.
    pub fn zero_grad(&mut self) {
        self.adamw.zero_grad();
        let model: Vec<Tensor> = self.params.iter().map(|(_, p)| p.shallow_clone()).collect();
        fused::clear_grads(&model).expect("dropping gradients cannot fail");
    }

    /// What this rank's part of a checkpoint holds: `param.<name>` (the f32 masters),
    /// `optim.exp_avg.<name>`, `optim.exp_avg_sq.<name>` and `optim.step`, where a sharded
    /// rank's names read `<parameter>:<first element>` and its tensors are flat slices.
    pub fn checkpoint_tensors(&self) -> Vec<(String, Tensor)> {
        let mut tensors: Vec<(String, Tensor)> = self
            .adamw
            .master_weights()
            .into_iter()
            .map(|(n, t)| (format!("param.{n}"), t))
            .collect();
        tensors.extend(
            self.adamw
                .state()
                .into_iter()
                .map(|(n, t)| (format!("optim.{n}"), t)),
        );
        tensors
    }

    /// Restores weights and state from a checkpoint directory written at any world size, sharded
    /// or not: each tensor this rank holds is assembled from the slices of it in whichever files
    /// hold them.
    pub fn restore(&mut self, dir: &std::path::Path) -> Result<(), String> {
        let checkpoint = Checkpoint::open(dir).map_err(|e| e.to_string())?;
        let saved = Saved::index(&checkpoint, dir, &self.params);
        let names: Vec<(String, Vec<i64>)> = self
            .adamw
            .named_params()
            .iter()
            .map(|(n, t)| (n.clone(), t.size()))
            .collect();
        for (name, shape) in names {
            let (base, start) = split_name(&name);
            let len = shape.iter().product::<i64>();
            let weight = saved
                .read("param", base, start, len)?
                .reshape(shape.as_slice());
            let exp_avg = saved.read("exp_avg", base, start, len)?;
            let exp_avg_sq = saved.read("exp_avg_sq", base, start, len)?;
            self.adamw.set_weight(&name, &weight);
            self.adamw.set_moments(&name, &exp_avg, &exp_avg_sq);
        }
        let step = checkpoint
            .tensor("optim.step")
            .map_err(|_| format!("{}: the optimizer state has no `step`", dir.display()))?;
        self.adamw.set_steps(step.int64_value(&[]));
        self.gather_weights().map_err(|e| e.to_string())
    }

    /// The file this rank writes into a checkpoint, or `None` when rank 0's holds everything
    /// (one process, or replicated state).
    pub fn checkpoint_file(&self) -> Option<String> {
        match &self.mode {
            Mode::Sharded { group, .. } => Some(format!(
                "state-{:05}-of-{:05}.safetensors",
                group.rank(),
                group.world()
            )),
            Mode::Replicated(group) if group.rank() != 0 => None,
            _ => Some("state.safetensors".into()),
        }
    }
}

/// Gives every rank rank 0's weights.
fn broadcast_weights(
    params: &[(String, Tensor)],
    buckets: &[Bucket],
    group: &ProcessGroup,
) -> Result<(), OptimizerError> {
    for bucket in buckets {
        let flat = flatten(params, bucket, |p| p.detach(), 0);
        group.broadcast(&flat, 0)?;
        unflatten_into(params, bucket, &flat)?;
    }
    Ok(())
}

/// Where a checkpoint holds part of a tensor: its first element, its length, the stored name.
type Slice<'a> = (i64, i64, &'a str);

/// A checkpoint's tensors as slices of the model's: which stored tensors hold which elements of
/// each parameter's weights (`param`) and moments (`exp_avg`, `exp_avg_sq`).
struct Saved<'a> {
    checkpoint: &'a Checkpoint,
    dir: &'a std::path::Path,
    /// The slices of each (kind, parameter).
    pieces: HashMap<(&'a str, &'a str), Vec<Slice<'a>>>,
    /// Elements of each of the model's parameters, to refuse a checkpoint of another shape
    /// (another LoRA rank, another model) rather than read its elements into the wrong places.
    sizes: HashMap<&'a str, i64>,
}

impl<'a> Saved<'a> {
    /// The slices `checkpoint` (read from `dir`) holds of `params`.
    fn index(
        checkpoint: &'a Checkpoint,
        dir: &'a std::path::Path,
        params: &'a [(String, Tensor)],
    ) -> Self {
        let mut pieces: HashMap<(&str, &str), Vec<Slice>> = HashMap::new();
        for name in checkpoint.names() {
            let Some((kind, rest)) = stored_kind(name) else {
                continue;
            };
            let (base, start) = split_name(rest);
            let numel: i64 = checkpoint
                .info(name)
                .map_or(0, |i| i.shape.iter().product());
            pieces
                .entry((kind, base))
                .or_default()
                .push((start, numel, name));
        }
        let sizes = params
            .iter()
            .map(|(n, p)| (n.as_str(), p.numel() as i64))
            .collect();
        Saved {
            checkpoint,
            dir,
            pieces,
            sizes,
        }
    }

    /// The slices of `kind` of parameter `base`.
    fn slices<'k>(&'k self, kind: &'k str, base: &'k str) -> &'k [Slice<'k>] {
        self.pieces.get(&(kind, base)).map_or(&[], Vec::as_slice)
    }

    /// Elements `start..start + len` of `kind` of parameter `base`, as f32 on the host, assembled
    /// from the slices that hold them; an error when the checkpoint's tensor has another size
    /// than the model's or the slices do not cover them.
    fn read(&self, kind: &str, base: &str, start: i64, len: i64) -> Result<Tensor, String> {
        self.check_size(kind, base, start + len)?;
        let out = Tensor::zeros([len], (Kind::Float, Device::Cpu));
        let mut covered = 0;
        for &(from, numel, name) in self.slices(kind, base).iter() {
            let (lo, hi) = (start.max(from), (start + len).min(from + numel));
            if lo >= hi {
                continue;
            }
            let saved = self.checkpoint.tensor(name).map_err(|e| e.to_string())?;
            let saved = saved.reshape([-1]).to_kind(Kind::Float);
            out.narrow(0, lo - start, hi - lo)
                .copy_(&saved.narrow(0, lo - from, hi - lo));
            covered += hi - lo;
        }
        if covered != len {
            let what = if kind == "param" { "weights" } else { kind };
            return Err(format!(
                "{}: {what} of `{base}` cover {covered} of the {len} elements from {start}",
                self.dir.display()
            ));
        }
        Ok(out)
    }

    /// Refuses `kind` of parameter `base` when the checkpoint holds it with another number of
    /// elements than the model (`end` when the model has no such parameter).
    fn check_size(&self, kind: &str, base: &str, end: i64) -> Result<(), String> {
        let saved: i64 = self
            .slices(kind, base)
            .iter()
            .map(|&(from, numel, _)| from + numel)
            .max()
            .unwrap_or(0);
        let expected = self.sizes.get(base).copied().unwrap_or(end);
        if saved != 0 && saved != expected {
            return Err(format!(
                "{}: `{base}` has {saved} elements there and {expected} in this model \
                 (another model, or another LoRA rank or targets?)",
                self.dir.display()
            ));
        }
        Ok(())
    }
}

/// What a stored tensor's name says it holds: the kind (`param`, `exp_avg` or `exp_avg_sq`) and
/// the rest of the name; `None` for anything else (`optim.step`).
fn stored_kind(name: &str) -> Option<(&'static str, &str)> {
    if let Some(rest) = name.strip_prefix("param.") {
        return Some(("param", rest));
    }
    if let Some(rest) = name.strip_prefix("optim.exp_avg_sq.") {
        return Some(("exp_avg_sq", rest));
    }
    name.strip_prefix("optim.exp_avg.")
        .map(|rest| ("exp_avg", rest))
}

/// The gradient of `p`, zeros where backward left none (a rank without samples in a step).
fn gradient(p: &Tensor) -> Tensor {
    let g = p.grad();
    if g.defined() { g } else { p.zeros_like() }
}

/// The bucket's members through `f`, flattened into one buffer, with `pad` zeros after them.
fn flatten(
    params: &[(String, Tensor)],
    bucket: &Bucket,
    f: impl Fn(&Tensor) -> Tensor,
    pad: i64,
) -> Tensor {
    let mut parts: Vec<Tensor> = bucket
        .members
        .iter()
        .map(|&i| f(&params[i].1).reshape([-1]))
        .collect();
    if pad > 0 {
        let first = &parts[0];
        parts.push(first.new_zeros([pad], (first.kind(), first.device())));
    }
    Tensor::cat(&parts, 0)
}

/// Copies `flat` (laid out as [`flatten`] does) into the bucket's parameters.
fn unflatten_into(
    params: &[(String, Tensor)],
    bucket: &Bucket,
    flat: &Tensor,
) -> Result<(), tch::TchError> {
    tch::no_grad(|| {
        for (&i, &offset) in bucket.members.iter().zip(&bucket.offsets) {
            let p = &params[i].1;
            let part = flat
                .narrow(0, offset, p.numel() as i64)
                .view(p.size().as_slice());
            p.shallow_clone().f_copy_(&part)?;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_are_cut_as_one_process_cuts_them() {
        let order: Vec<usize> = (100..111).collect();
        let plan = plan_epoch(&order, 0, 2, 3);
        assert_eq!(plan.len(), 2);
        assert_eq!(
            plan[0].micro_batches,
            vec![vec![100, 101], vec![102, 103], vec![104, 105]]
        );
        assert_eq!(plan[0].end, 6);
        assert_eq!(
            plan[1].micro_batches,
            vec![vec![106, 107], vec![108, 109], vec![110]]
        );
        assert_eq!(plan_epoch(&order, 6, 2, 3), plan[1..]);
    }

    #[test]
    fn every_sample_goes_to_exactly_one_rank() {
        let order: Vec<usize> = (0..37).collect();
        for (micro, accumulation) in [(4, 4), (8, 1), (3, 2), (5, 3)] {
            for world in 1..=5 {
                for step in plan_epoch(&order, 0, micro, accumulation) {
                    let mut all: Vec<usize> = (0..world)
                        .flat_map(|r| share(&step, r, world))
                        .flat_map(|p| p.samples)
                        .collect();
                    all.sort_unstable();
                    let mut expected: Vec<usize> =
                        step.micro_batches.iter().flatten().copied().collect();
                    expected.sort_unstable();
                    assert_eq!(
                        all, expected,
                        "micro {micro} x {accumulation}, {world} ranks"
                    );
                }
            }
        }
        // Whole micro-batches when there are enough; halves when there are not.
        let step = &plan_epoch(&order, 0, 4, 4)[0];
        assert_eq!(
            share(step, 1, 2)
                .iter()
                .map(|p| p.micro)
                .collect::<Vec<_>>(),
            [1, 3]
        );
        let step = &plan_epoch(&order, 0, 8, 1)[0];
        assert_eq!(share(step, 1, 2)[0].samples, [4, 5, 6, 7]);
    }

    #[test]
    fn a_checkpoint_of_another_shape_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let param = |cols: i64| {
            vec![(
                "lm.lora_B".to_string(),
                Tensor::ones([4, cols], (Kind::Float, Device::Cpu)).set_requires_grad(true),
            )]
        };
        let saved = Optimizer::new(param(2), AdamWConfig::default(), None, false).unwrap();
        foundation::save_safetensors(
            dir.path().join("state.safetensors"),
            &saved.checkpoint_tensors(),
            None,
        )
        .unwrap();
        let mut same = Optimizer::new(param(2), AdamWConfig::default(), None, false).unwrap();
        same.restore(dir.path()).unwrap();
        let mut wider = Optimizer::new(param(3), AdamWConfig::default(), None, false).unwrap();
        let err = wider.restore(dir.path()).unwrap_err();
        assert!(
            err.contains("lm.lora_B") && err.contains("8 elements"),
            "{err}"
        );
    }

    #[test]
    fn sharded_names_say_where_the_slice_starts() {
        assert_eq!(
            split_name(&segment_name("lm.layers.0.w", 42)),
            ("lm.layers.0.w", 42)
        );
        assert_eq!(split_name("lm.layers.0.w"), ("lm.layers.0.w", 0));
    }
}
