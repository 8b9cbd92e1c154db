//! AdamW (Loshchilov & Hutter) with its state in our hands, so a checkpoint can hold it and a
//! resumed run continues exactly. tch's optimizers keep their state inside libtorch, out of reach,
//! and tch exposes neither `_fused_adamw_` nor the `_foreach_` kernels, so a few lines of C++
//! (`csrc/adamw.cpp`, see [`fused`]) call them: the update is `torch.optim.AdamW(fused=True)`'s
//! and the clipping `torch.nn.utils.clip_grad_norm_`'s, kernel for kernel.

use std::collections::HashMap;

use tch::{Kind, TchError, Tensor};

/// At most this many gradient elements are made f32 at a time for the bf16 parameters' masters
/// (1 GiB), so the update never doubles the gradients' memory.
pub const GROUP_ELEMENTS: i64 = 1 << 28;

pub mod fused;

/// Splits `members` into consecutive groups of at most `budget` elements (a larger tensor gets a
/// group of its own).
fn groups_of<'a>(members: &[&'a (usize, Tensor)], budget: i64) -> Vec<Vec<&'a (usize, Tensor)>> {
    let mut groups: Vec<Vec<&(usize, Tensor)>> = Vec::new();
    let mut size = 0;
    for &member in members {
        let n = member.1.numel() as i64;
        match groups.last_mut() {
            Some(group) if size + n <= budget => group.push(member),
            _ => {
                groups.push(vec![member]);
                size = 0;
            }
        }
        size += n;
    }
    groups
}

/// AdamW hyperparameters.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct AdamWConfig {
    /// First-moment decay.
    pub beta1: f64,
    /// Second-moment decay.
    pub beta2: f64,
    /// Added to the denominator.
    pub eps: f64,
    /// Decoupled weight decay (0 in the recipe); never applied to 1-D tensors (norms, biases).
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    /// `torch.optim.AdamW`'s betas and eps, with the recipe's weight decay of 0.
    fn default() -> Self {
        AdamWConfig {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

/// AdamW over named parameters, with f32 moments and f32 master weights: a parameter kept in a
/// narrower kind (bf16 on a GPU) is updated in an f32 copy, which is then rounded into it, so small
/// updates accumulate instead of vanishing in bf16's 8-bit mantissa.
#[derive(Debug)]
pub struct AdamW {
    config: AdamWConfig,
    params: Vec<(String, Tensor)>,
    /// The f32 master of each parameter that is not itself f32.
    masters: Vec<Option<Tensor>>,
    exp_avg: Vec<Tensor>,
    exp_avg_sq: Vec<Tensor>,
    decay: Vec<bool>,
    /// Each parameter's learning rate as a multiple of the step's (1 unless set).
    lr_scale: Vec<f64>,
    steps: i64,
    /// What the next step divides the gradients by (set by clipping).
    grad_scale: Option<Tensor>,
}

impl AdamW {
    /// An optimizer for `params` (each must require gradients), with zeroed moments.
    pub fn new(params: Vec<(String, Tensor)>, config: AdamWConfig) -> Self {
        let decay = params.iter().map(|(_, p)| p.dim() > 1).collect();
        Self::with_decay(params, config, decay)
    }

    /// [`new`](Self::new), saying which parameters weight decay applies to (`new` decays every
    /// tensor of more than one dimension; a flat shard of one cannot tell by its shape).
    pub fn with_decay(
        params: Vec<(String, Tensor)>,
        config: AdamWConfig,
        decay: Vec<bool>,
    ) -> Self {
        let moments = || {
            params
                .iter()
                .map(|(_, p)| p.zeros_like().to_kind(Kind::Float))
                .collect()
        };
        let masters = params
            .iter()
            .map(|(_, p)| (p.kind() != Kind::Float).then(|| p.detach().to_kind(Kind::Float)))
            .collect();
        AdamW {
            config,
            masters,
            exp_avg: moments(),
            exp_avg_sq: moments(),
            decay,
            lr_scale: vec![1.0; params.len()],
            params,
            steps: 0,
            grad_scale: None,
        }
    }

    /// Gives the parameters that `select` picks by name a learning rate of `scale` times the
    /// step's (a parameter group with its own rate, as LLaVA's `mm_projector_lr`); the schedule
    /// applies to both. Returns how many were picked.
    pub fn set_lr_scale(&mut self, select: impl Fn(&str) -> bool, scale: f64) -> usize {
        let mut picked = 0;
        for (i, (name, _)) in self.params.iter().enumerate() {
            if select(name) {
                self.lr_scale[i] = scale;
                picked += 1;
            }
        }
        picked
    }

    /// Optimizer steps taken.
    pub fn steps(&self) -> i64 {
        self.steps
    }

    /// The parameters with their names.
    pub fn named_params(&self) -> &[(String, Tensor)] {
        &self.params
    }

    /// The weights as the optimizer holds them: the f32 master where there is one, otherwise the
    /// parameter itself. A checkpoint saves these.
    pub fn master_weights(&self) -> Vec<(String, Tensor)> {
        self.params
            .iter()
            .zip(&self.masters)
            .map(|((name, p), master)| (name.clone(), master.as_ref().unwrap_or(p).detach()))
            .collect()
    }

    /// Sets parameter `name` (and its master) to `value`; false when there is no such parameter.
    pub fn set_weight(&mut self, name: &str, value: &Tensor) -> bool {
        let Some(i) = self.params.iter().position(|(n, _)| n == name) else {
            return false;
        };
        tch::no_grad(|| {
            self.params[i].1.shallow_clone().copy_(value);
            if let Some(master) = &self.masters[i] {
                master.shallow_clone().copy_(value);
            }
        });
        true
    }

    /// The gradients the parameters have (a parameter backward did not reach has none).
    fn grads(&self) -> Vec<Tensor> {
        self.params
            .iter()
            .map(|(_, p)| p.grad())
            .filter(Tensor::defined)
            .collect()
    }

    /// Drops the gradients (`zero_grad(set_to_none=True)`): the next backward pass writes them
    /// rather than adding to zeros.
    pub fn zero_grad(&mut self) {
        let params: Vec<Tensor> = self.params.iter().map(|(_, p)| p.shallow_clone()).collect();
        fused::clear_grads(&params).expect("dropping gradients cannot fail");
    }

    /// Clips the gradients' global L2 norm at `max_norm`, as `torch.nn.utils.clip_grad_norm_`
    /// does, and returns the norm before clipping (a 0-d f32 tensor on the parameters' device, so
    /// reading it is the caller's one host synchronisation). The scaling itself happens in the
    /// next [`step`](Self::step), inside the fused kernel, which saves a pass over every gradient.
    pub fn clip_grad_norm(&mut self, max_norm: f64) -> Result<Tensor, TchError> {
        let grads = self.grads();
        if grads.is_empty() {
            return Ok(Tensor::zeros([], (Kind::Float, tch::Device::Cpu)));
        }
        let (norm, scale) = tch::no_grad(|| fused::grad_norm(&grads, max_norm))?;
        self.grad_scale = Some(scale);
        Ok(norm)
    }

    /// [`clip_grad_norm`](Self::clip_grad_norm) when each rank holds a part of the gradients:
    /// `sum_squares` replaces the local sum of squared gradients (one f32 element) with its sum
    /// over the ranks, so the norm and the clipping are the global ones.
    pub fn clip_grad_norm_across<E>(
        &mut self,
        max_norm: f64,
        sum_squares: impl FnOnce(&Tensor) -> Result<(), E>,
    ) -> Result<Result<Tensor, E>, TchError> {
        let grads = self.grads();
        let device = self
            .params
            .first()
            .map_or(tch::Device::Cpu, |(_, p)| p.device());
        let local = if grads.is_empty() {
            Tensor::zeros([], (Kind::Float, device))
        } else {
            tch::no_grad(|| fused::grad_norm(&grads, max_norm))?.0
        };
        let squares = local.square().reshape([1]);
        if let Err(e) = sum_squares(&squares) {
            return Ok(Err(e));
        }
        let norm = squares.sqrt().reshape([]);
        self.grad_scale = Some(((&norm + 1e-6) / max_norm).clamp_min(1.0).reshape([1]));
        Ok(Ok(norm))
    }

    /// Bytes of optimizer state: the f32 moments and the f32 masters kept beside narrower
    /// parameters (an f32 parameter is its own master).
    pub fn state_bytes(&self) -> u64 {
        let f32s: i64 = self
            .params
            .iter()
            .zip(&self.masters)
            .map(|((_, p), m)| p.numel() as i64 * if m.is_some() { 3 } else { 2 })
            .sum();
        f32s as u64 * 4
    }

    /// One update with learning rate `lr`, for every parameter that has a gradient: libtorch's
    /// fused AdamW kernel (`torch.optim.AdamW(fused=True)`) on the f32 masters, over groups of
    /// tensors (decayed or not, and at most [`GROUP_ELEMENTS`] elements of gradient made f32 at a
    /// time), then the masters rounded into the model's bf16 weights. Gradients are clipped here
    /// when [`clip_grad_norm`](Self::clip_grad_norm) was called since the last step.
    pub fn step(&mut self, lr: f64) -> Result<(), TchError> {
        self.steps += 1;
        let grad_scale = self.grad_scale.take();
        let mut with_grad: Vec<(usize, Tensor)> = self
            .params
            .iter()
            .enumerate()
            .map(|(i, (_, p))| (i, p.grad()))
            .filter(|(_, g)| g.defined())
            .collect();
        // On a GPU with our kernels, a weight with an f32 master takes its whole update in one
        // pass (gradient read in bf16, master and moments updated, weight rounded); the rest go
        // through libtorch's fused AdamW below.
        with_grad.retain(|(i, grad)| !self.update_in_one_pass(*i, grad, lr, grad_scale.as_ref()));
        for (decayed, scale) in self.update_groups() {
            let members: Vec<&(usize, Tensor)> = with_grad
                .iter()
                .filter(|(i, _)| self.decays(*i) == decayed)
                .filter(|(i, _)| self.lr_scale[*i] == scale)
                .collect();
            for group in groups_of(&members, GROUP_ELEMENTS) {
                self.update_fused(&group, lr * scale, decayed, grad_scale.as_ref())?;
            }
        }
        Ok(())
    }

    /// The kinds of parameters libtorch's fused kernel updates in separate calls: decayed or
    /// not, and each learning-rate scale.
    fn update_groups(&self) -> Vec<(bool, f64)> {
        let mut scales: Vec<f64> = self.lr_scale.clone();
        scales.sort_by(f64::total_cmp);
        scales.dedup();
        [false, true]
            .into_iter()
            .flat_map(|d| scales.iter().map(move |&s| (d, s)))
            .collect()
    }

    /// The hyperparameters of an update at `lr`, with weight decay when `decayed`.
    fn hyper(&self, lr: f64, decayed: bool) -> fused::Hyper {
        let AdamWConfig {
            beta1,
            beta2,
            eps,
            weight_decay,
        } = self.config;
        fused::Hyper {
            lr,
            beta1,
            beta2,
            weight_decay: if decayed { weight_decay } else { 0.0 },
            eps,
        }
    }

    /// Updates parameter `i` with `grad` in one pass of our CUDA kernel, when it can: a weight
    /// with an f32 master, on a device and in a kind our kernels serve, both contiguous. Returns
    /// whether it did.
    fn update_in_one_pass(
        &self,
        i: usize,
        grad: &Tensor,
        lr: f64,
        grad_scale: Option<&Tensor>,
    ) -> bool {
        let (param, master) = (&self.params[i].1, &self.masters[i]);
        let Some(master) = master else { return false };
        if !foundation::cuda::kernels_for(param.device(), param.kind())
            || !grad.is_contiguous()
            || !param.is_contiguous()
        {
            return false;
        }
        let fused::Hyper {
            lr,
            beta1,
            beta2,
            weight_decay,
            eps,
        } = self.hyper(lr * self.lr_scale[i], self.decays(i));
        let h = foundation::cuda::AdamW {
            lr,
            beta1,
            beta2,
            weight_decay,
            eps,
        };
        // Errors here are our bugs (the shapes are the model's own): panic as tch does.
        tch::no_grad(|| {
            foundation::cuda::adamw_cast(
                master,
                grad,
                &self.exp_avg[i],
                &self.exp_avg_sq[i],
                Some(param),
                grad_scale,
                self.steps as f64,
                h,
            )
        })
        .unwrap();
        true
    }

    /// Updates the parameters of `group` (index, gradient) at `lr` in one call of libtorch's
    /// fused AdamW on their f32 masters (their gradients made f32 meanwhile), then rounds the
    /// masters into the weights.
    fn update_fused(
        &self,
        group: &[&(usize, Tensor)],
        lr: f64,
        decayed: bool,
        grad_scale: Option<&Tensor>,
    ) -> Result<(), TchError> {
        let mut weights = Vec::with_capacity(group.len());
        let mut grads = Vec::with_capacity(group.len());
        for (i, grad) in group.iter().map(|m| (m.0, &m.1)) {
            let weight = self.masters[i].as_ref().unwrap_or(&self.params[i].1);
            weights.push(weight.shallow_clone());
            grads.push(grad.to_kind(weight.kind()));
        }
        let moments = |all: &[Tensor]| -> Vec<Tensor> {
            group.iter().map(|m| all[m.0].shallow_clone()).collect()
        };
        tch::no_grad(|| {
            fused::adamw(
                &weights,
                &grads,
                &moments(&self.exp_avg),
                &moments(&self.exp_avg_sq),
                self.steps as f64,
                self.hyper(lr, decayed),
                grad_scale,
            )
        })?;
        drop(grads);
        tch::no_grad(|| {
            for m in group {
                if let Some(master) = &self.masters[m.0] {
                    self.params[m.0].1.shallow_clone().f_copy_(master)?;
                }
            }
            Ok::<_, TchError>(())
        })
    }

    /// Whether weight decay applies to parameter `i` in a step.
    fn decays(&self, i: usize) -> bool {
        self.config.weight_decay > 0.0 && self.decay[i]
    }

    /// The moments and step count as named tensors (`exp_avg.<name>`, `exp_avg_sq.<name>`,
    /// `step`), for a checkpoint.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        let mut out = vec![("step".to_string(), Tensor::from(self.steps))];
        for (i, (name, _)) in self.params.iter().enumerate() {
            out.push((format!("exp_avg.{name}"), self.exp_avg[i].shallow_clone()));
            out.push((
                format!("exp_avg_sq.{name}"),
                self.exp_avg_sq[i].shallow_clone(),
            ));
        }
        out
    }

    /// Sets parameter `name`'s moments; false when there is no such parameter.
    pub fn set_moments(&mut self, name: &str, exp_avg: &Tensor, exp_avg_sq: &Tensor) -> bool {
        let Some(i) = self.params.iter().position(|(n, _)| n == name) else {
            return false;
        };
        let p = &self.params[i].1;
        self.exp_avg[i] = exp_avg
            .to_device(p.device())
            .to_kind(Kind::Float)
            .reshape(p.size());
        self.exp_avg_sq[i] = exp_avg_sq
            .to_device(p.device())
            .to_kind(Kind::Float)
            .reshape(p.size());
        true
    }

    /// Sets the optimizer steps taken (the bias corrections' step count).
    pub fn set_steps(&mut self, steps: i64) {
        self.steps = steps;
    }

    /// Restores what [`state`](Self::state) saved. Every parameter must have its moments, of the
    /// right shape.
    pub fn load_state(&mut self, state: &HashMap<String, Tensor>) -> Result<(), String> {
        let steps = state.get("step").ok_or("optimizer state has no `step`")?;
        for (i, (name, p)) in self.params.iter().enumerate() {
            for (key, slot) in [
                ("exp_avg", &mut self.exp_avg[i]),
                ("exp_avg_sq", &mut self.exp_avg_sq[i]),
            ] {
                let saved = state
                    .get(&format!("{key}.{name}"))
                    .ok_or(format!("optimizer state has no `{key}.{name}`"))?;
                if saved.size() != p.size() {
                    return Err(format!(
                        "`{key}.{name}` has shape {:?}, the parameter {:?}",
                        saved.size(),
                        p.size()
                    ));
                }
                *slot = saved.to_device(p.device()).to_kind(Kind::Float);
            }
        }
        self.steps = steps.int64_value(&[]);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;
    use tch::nn::{OptimizerConfig, VarStore};

    /// The same starting point every time, without libtorch's global generator (tests run in
    /// parallel and would race on it).
    fn problem(vs: &VarStore) -> (Tensor, Tensor) {
        let w = vs
            .root()
            .var_copy("w", &foundation::layers::seeded_normal(&[4, 3], 1.0, 1));
        let b = vs
            .root()
            .var_copy("b", &foundation::layers::seeded_normal(&[4], 1.0, 2));
        (w, b)
    }

    fn loss(w: &Tensor, b: &Tensor, step: i64) -> Tensor {
        let x = Tensor::arange(12, (Kind::Float, Device::Cpu)).view([4, 3]) / 7.0 + step as f64;
        (x.matmul(&w.tr()) + b).square().mean(Kind::Float)
    }

    #[test]
    fn matches_torch_adamw() {
        // Without decay, on a matrix and a bias.
        let ours_vs = VarStore::new(Device::Cpu);
        let (w, b) = problem(&ours_vs);
        let mut ours = AdamW::new(
            vec![
                ("w".into(), w.shallow_clone()),
                ("b".into(), b.shallow_clone()),
            ],
            AdamWConfig::default(),
        );
        let theirs_vs = VarStore::new(Device::Cpu);
        let (w2, b2) = problem(&theirs_vs);
        let mut theirs = tch::nn::adamw(0.9, 0.999, 0.0)
            .build(&theirs_vs, 1e-2)
            .unwrap();
        for step in 0..5 {
            ours.zero_grad();
            loss(&w, &b, step).backward();
            ours.step(1e-2).unwrap();
            theirs.zero_grad();
            loss(&w2, &b2, step).backward();
            theirs.step();
            assert!(w.allclose(&w2, 1e-6, 1e-7, false), "step {step}: w");
            assert!(b.allclose(&b2, 1e-6, 1e-7, false), "step {step}: b");
        }
    }

    #[test]
    fn weight_decay_is_decoupled_and_spares_biases_and_norms() {
        // libtorch's AdamW decays every parameter; train only a matrix there (the bias fixed).
        let fixed_b = Tensor::from_slice(&[0.1f32, -0.2, 0.3, 0.0]);
        let ours_vs = VarStore::new(Device::Cpu);
        let w = ours_vs
            .root()
            .var_copy("w", &foundation::layers::seeded_normal(&[4, 3], 1.0, 1));
        let mut ours = AdamW::new(
            vec![("w".into(), w.shallow_clone())],
            AdamWConfig {
                weight_decay: 0.1,
                ..Default::default()
            },
        );
        let theirs_vs = VarStore::new(Device::Cpu);
        let w2 = theirs_vs
            .root()
            .var_copy("w", &foundation::layers::seeded_normal(&[4, 3], 1.0, 1));
        let mut theirs = tch::nn::adamw(0.9, 0.999, 0.1)
            .build(&theirs_vs, 1e-2)
            .unwrap();
        for step in 0..5 {
            ours.zero_grad();
            loss(&w, &fixed_b, step).backward();
            ours.step(1e-2).unwrap();
            theirs.zero_grad();
            loss(&w2, &fixed_b, step).backward();
            theirs.step();
            assert!(w.allclose(&w2, 1e-6, 1e-7, false), "step {step}");
        }
        // A 1-D parameter with a zero gradient stays put under decay.
        let vs = VarStore::new(Device::Cpu);
        let norm = vs.root().ones("norm", &[3]);
        let mut opt = AdamW::new(
            vec![("norm".into(), norm.shallow_clone())],
            AdamWConfig {
                weight_decay: 0.5,
                ..Default::default()
            },
        );
        (norm.sum(Kind::Float) * 0.0).backward();
        opt.step(1.0).unwrap();
        assert!(norm.equal(&Tensor::ones([3], (Kind::Float, Device::Cpu))));
    }

    #[test]
    fn clipping_scales_to_the_max_norm_and_reports_the_norm() {
        let vs = VarStore::new(Device::Cpu);
        let (w, b) = problem(&vs);
        let mut opt = AdamW::new(
            vec![
                ("w".into(), w.shallow_clone()),
                ("b".into(), b.shallow_clone()),
            ],
            AdamWConfig::default(),
        );
        loss(&w, &b, 3).backward();
        let grads = [("w", w.grad().copy()), ("b", b.grad().copy())];
        let before = grads
            .iter()
            .map(|(_, g)| g.square().sum(Kind::Float).double_value(&[]))
            .sum::<f64>()
            .sqrt();
        assert!(before > 1.0);
        let reported = opt.clip_grad_norm(1.0).unwrap().double_value(&[]);
        assert!((reported - before).abs() < 1e-3 * before);
        opt.step(1e-2).unwrap();
        // The first moment after one step is (1 - beta1) times the clipped gradient.
        let state: HashMap<String, Tensor> = opt.state().into_iter().collect();
        for (name, g) in grads {
            let expected = g * (0.1 / (before + 1e-6));
            let m = &state[&format!("exp_avg.{name}")];
            assert!(m.allclose(&expected, 1e-5, 1e-7, false), "{name}");
        }
        // Without clipping the gradients go in whole.
        opt.zero_grad();
        loss(&w, &b, 3).backward();
        let g = w.grad().copy();
        let m_before = state["exp_avg.w"].copy();
        opt.step(1e-2).unwrap();
        let m = opt
            .state()
            .into_iter()
            .find(|(n, _)| n == "exp_avg.w")
            .unwrap()
            .1;
        assert!(m.allclose(&(m_before * 0.9 + g * 0.1), 1e-5, 1e-6, false));
    }

    #[test]
    fn a_parameter_group_with_its_own_rate_moves_as_an_optimizer_at_that_rate() {
        let run = |scaled: bool| {
            let vs = VarStore::new(Device::Cpu);
            let (w, b) = problem(&vs);
            let mut opt = AdamW::new(
                vec![
                    ("w".into(), w.shallow_clone()),
                    ("b".into(), b.shallow_clone()),
                ],
                AdamWConfig::default(),
            );
            if scaled {
                assert_eq!(opt.set_lr_scale(|n| n == "b", 0.1), 1);
            }
            for step in 0..3 {
                opt.zero_grad();
                loss(&w, &b, step).backward();
                opt.step(1e-2).unwrap();
            }
            (w, b)
        };
        let (w_plain, b_plain) = run(false);
        let (w_scaled, b_scaled) = run(true);
        // Adam's steps are about the learning rate each, whatever the gradient's size: `b` moves
        // a tenth as far, `w` (at the step's rate in both runs) about as far.
        let start_vs = VarStore::new(Device::Cpu);
        let (w0, b0) = problem(&start_vs);
        let moved = |t: &Tensor, t0: &Tensor| (t - t0).abs().max().double_value(&[]);
        let ratio = moved(&b_scaled, &b0) / moved(&b_plain, &b0);
        assert!((0.08..0.12).contains(&ratio), "{ratio}");
        let ratio = moved(&w_scaled, &w0) / moved(&w_plain, &w0);
        assert!((0.9..1.1).contains(&ratio), "{ratio}");
    }

    #[test]
    fn groups_hold_at_most_the_budget_and_a_large_tensor_alone() {
        let t = |n: i64| Tensor::zeros([n], (Kind::Float, Device::Cpu));
        let members = [(0, t(3)), (1, t(4)), (2, t(10)), (3, t(2)), (4, t(2))];
        let refs: Vec<&(usize, Tensor)> = members.iter().collect();
        let groups: Vec<Vec<usize>> = groups_of(&refs, 8)
            .iter()
            .map(|g| g.iter().map(|m| m.0).collect())
            .collect();
        assert_eq!(groups, vec![vec![0, 1], vec![2], vec![3, 4]]);
    }

    #[test]
    fn a_kernel_error_comes_back_as_an_error_not_a_crash() {
        let p = Tensor::zeros([4], (Kind::Float, Device::Cpu));
        let wrong = Tensor::zeros([5], (Kind::Float, Device::Cpu));
        let hyper = fused::Hyper {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            weight_decay: 0.0,
            eps: 1e-8,
        };
        let err = fused::adamw(
            &[p.shallow_clone()],
            &[wrong],
            &[p.zeros_like()],
            &[p.zeros_like()],
            1.0,
            hyper,
            None,
        )
        .unwrap_err();
        assert!(err.to_string().contains("AdamW tensor 0"), "{err}");
    }

    #[test]
    fn bf16_parameters_accumulate_small_updates_in_their_f32_masters() {
        let vs = VarStore::new(Device::Cpu);
        let p = vs
            .root()
            .var_copy("p", &Tensor::ones([4], (Kind::BFloat16, Device::Cpu)));
        let mut opt = AdamW::new(
            vec![("p".into(), p.shallow_clone())],
            AdamWConfig::default(),
        );
        // A constant gradient makes each Adam update exactly `lr`: 1e-4 is far below bf16's
        // spacing of 2^-8 near 1, so updating the bf16 weight directly would never move it.
        for _ in 0..100 {
            opt.zero_grad();
            p.sum(Kind::Float).backward();
            opt.step(1e-4).unwrap();
        }
        let master = opt.master_weights()[0].1.double_value(&[0]);
        assert!((master - 0.99).abs() < 1e-5, "{master}");
        assert_eq!(opt.master_weights()[0].1.kind(), Kind::Float);
        let weight = p.to_kind(Kind::Float).double_value(&[0]);
        assert!((weight - 0.99).abs() < 4e-3, "{weight}");
    }

    #[test]
    fn state_round_trips_so_a_resumed_optimizer_continues_identically() {
        let run = |resume_at: Option<usize>| {
            let vs = VarStore::new(Device::Cpu);
            let (w, b) = problem(&vs);
            let params = || {
                vec![
                    ("w".to_string(), w.shallow_clone()),
                    ("b".to_string(), b.shallow_clone()),
                ]
            };
            let mut opt = AdamW::new(params(), AdamWConfig::default());
            for step in 0..6 {
                if resume_at == Some(step) {
                    let saved: HashMap<String, Tensor> = opt
                        .state()
                        .into_iter()
                        .map(|(k, v)| (k, v.copy()))
                        .collect();
                    opt = AdamW::new(params(), AdamWConfig::default());
                    opt.load_state(&saved).unwrap();
                }
                opt.zero_grad();
                loss(&w, &b, step as i64).backward();
                opt.step(1e-2).unwrap();
            }
            (w.copy(), b.copy())
        };
        let (w1, b1) = run(None);
        let (w2, b2) = run(Some(3));
        assert!(w1.equal(&w2) && b1.equal(&b2));
    }
}
