//! AdamW (Loshchilov & Hutter) with its state in our hands, so a checkpoint can hold it and a
//! resumed run continues exactly. tch's optimizers keep their state inside libtorch, out of reach,
//! and tch exposes neither `_fused_adamw_` nor the `_foreach_` kernels; this is the per-tensor
//! update of `torch.optim.AdamW`.

use std::collections::HashMap;

use tch::{Kind, Tensor};

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
    steps: i64,
}

impl AdamW {
    /// An optimizer for `params` (each must require gradients), with zeroed moments.
    pub fn new(params: Vec<(String, Tensor)>, config: AdamWConfig) -> Self {
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
            decay: params.iter().map(|(_, p)| p.dim() > 1).collect(),
            params,
            steps: 0,
        }
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

    /// Clears the gradients.
    pub fn zero_grad(&mut self) {
        for (_, p) in &mut self.params {
            p.zero_grad();
        }
    }

    /// Scales gradients so their global L2 norm is at most `max_norm`, as
    /// `torch.nn.utils.clip_grad_norm_` does; returns the norm before clipping (a 0-d f32 tensor on
    /// the parameters' device, so reading it is the caller's one host synchronisation).
    pub fn clip_grad_norm(&mut self, max_norm: f64) -> Tensor {
        let grads: Vec<Tensor> = self
            .params
            .iter()
            .map(|(_, p)| p.grad())
            .filter(Tensor::defined)
            .collect();
        let Some(first) = grads.first() else {
            return Tensor::zeros([], (Kind::Float, tch::Device::Cpu));
        };
        let squares: Vec<Tensor> = grads
            .iter()
            .map(|g| g.to_kind(Kind::Float).square().sum(Kind::Float))
            .collect();
        let total = Tensor::stack(&squares, 0)
            .sum(Kind::Float)
            .sqrt()
            .to_device(first.device());
        let coef = (Tensor::from(max_norm as f32).to_device(total.device()) / (&total + 1e-6))
            .clamp_max(1.0);
        tch::no_grad(|| {
            for mut g in grads {
                let _ = g.g_mul_(&coef.to_kind(g.kind()));
            }
        });
        total
    }

    /// One update with learning rate `lr`, for every parameter that has a gradient.
    pub fn step(&mut self, lr: f64) {
        self.steps += 1;
        let AdamWConfig {
            beta1,
            beta2,
            eps,
            weight_decay,
        } = self.config;
        let bias1 = 1.0 - beta1.powi(self.steps as i32);
        let bias2_sqrt = (1.0 - beta2.powi(self.steps as i32)).sqrt();
        tch::no_grad(|| {
            for (i, (_, p)) in self.params.iter_mut().enumerate() {
                let grad = p.grad();
                if !grad.defined() {
                    continue;
                }
                let g = grad.to_kind(Kind::Float);
                let mut m = self.exp_avg[i].shallow_clone();
                let mut v = self.exp_avg_sq[i].shallow_clone();
                let _ = m.lerp_(&g, 1.0 - beta1);
                let _ = v
                    .g_mul_scalar_(beta2)
                    .addcmul_(&g, &g.g_mul_scalar(1.0 - beta2));
                let mut master = match &self.masters[i] {
                    Some(master) => master.shallow_clone(),
                    None => p.shallow_clone(),
                };
                if weight_decay > 0.0 && self.decay[i] {
                    let _ = master.g_mul_scalar_(1.0 - lr * weight_decay);
                }
                if lr > 0.0 {
                    // master -= lr / bias1 * m / (sqrt(v) / bias2_sqrt + eps), in place: the
                    // step size is folded into the denominator so one addcdiv applies it.
                    let mut denom = v.sqrt();
                    let _ = denom
                        .g_div_scalar_(bias2_sqrt)
                        .g_add_scalar_(eps)
                        .g_mul_scalar_(-bias1 / lr);
                    let _ = master.addcdiv_(&m, &denom);
                }
                if self.masters[i].is_some() {
                    p.copy_(&master);
                }
            }
        });
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
            ours.step(1e-2);
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
            ours.step(1e-2);
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
        opt.step(1.0);
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
        let norm = |t: &[Tensor]| {
            t.iter()
                .map(|t| t.grad().square().sum(Kind::Float).double_value(&[]))
                .sum::<f64>()
                .sqrt()
        };
        let before = norm(&[w.shallow_clone(), b.shallow_clone()]);
        let reported = opt.clip_grad_norm(1.0).double_value(&[]);
        assert!((reported - before).abs() < 1e-3 * before);
        assert!(before > 1.0);
        assert!((norm(&[w.shallow_clone(), b.shallow_clone()]) - 1.0).abs() < 1e-4);
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
            opt.step(1e-4);
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
                opt.step(1e-2);
            }
            (w.copy(), b.copy())
        };
        let (w1, b1) = run(None);
        let (w2, b2) = run(Some(3));
        assert!(w1.equal(&w2) && b1.equal(&b2));
    }
}
