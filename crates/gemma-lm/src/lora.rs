//! LoRA adapters on Gemma's linear layers, as LLaVA's `finetune_lora.sh` places them through PEFT:
//! every projection of every decoder layer (`q_proj k_proj v_proj o_proj gate_proj up_proj
//! down_proj`), `A` from PEFT's Kaiming-uniform start, `B` from zero, so a new adapter changes
//! nothing until it trains.
//!
//! Adapter variables live in a variable store of their own, named as the layer they adapt plus
//! `lora_A.weight` / `lora_B.weight` (`model.layers.3.self_attn.q_proj.lora_A.weight`): the base
//! weights stay in theirs, frozen and bit-identical.

use foundation::layers::{Linear, Lora};
use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::model::Gemma;
use crate::{Error, Result};

/// The projections a decoder layer has, in module order.
pub const ALL_TARGETS: [&str; 7] = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];

/// How to adapt the language model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraSpec {
    /// Rank `r` (128 in LLaVA's `finetune_lora.sh`).
    pub r: i64,
    /// `lora_alpha` (256 there): the update is scaled by `alpha / r`.
    pub alpha: f64,
    /// Dropout on the adapters' input while training (0.05 there).
    pub dropout: f64,
    /// Scale by `alpha / sqrt(r)` instead (rsLoRA, PEFT's `use_rslora`).
    pub rslora: bool,
    /// Which projections get adapters (names from [`ALL_TARGETS`]).
    pub targets: Vec<String>,
}

impl LoraSpec {
    /// LLaVA's `finetune_lora.sh`: r 128, alpha 256, dropout 0.05, every projection.
    pub fn llava() -> Self {
        LoraSpec {
            r: 128,
            alpha: 256.0,
            dropout: 0.05,
            rslora: false,
            targets: ALL_TARGETS.iter().map(|t| t.to_string()).collect(),
        }
    }

    /// The factor the update `B A x` is multiplied by.
    pub fn scale(&self) -> f64 {
        if self.rslora {
            self.alpha / (self.r as f64).sqrt()
        } else {
            self.alpha / self.r as f64
        }
    }

    /// Checks the rank, dropout and target names.
    pub fn validate(&self) -> Result<()> {
        if self.r < 1 {
            return Err(Error::Input(format!(
                "LoRA rank must be at least 1, got {}",
                self.r
            )));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(Error::Input(format!(
                "LoRA dropout must be in [0, 1), got {}",
                self.dropout
            )));
        }
        if self.targets.is_empty() {
            return Err(Error::Input(
                "LoRA needs at least one target projection".into(),
            ));
        }
        for t in &self.targets {
            if !ALL_TARGETS.contains(&t.as_str()) {
                return Err(Error::Input(format!(
                    "unknown LoRA target `{t}` (the language model's projections are {})",
                    ALL_TARGETS.join(", ")
                )));
            }
        }
        Ok(())
    }

    /// Whether module `name` (`model.layers.3.mlp.up_proj`) is one of the targets.
    pub fn targets_module(&self, name: &str) -> bool {
        let last = name.rsplit('.').next().unwrap_or(name);
        self.targets.iter().any(|t| t == last)
    }
}

impl Gemma {
    /// The decoder's linear layers by module name (`model.layers.{i}.self_attn.q_proj`, …,
    /// `model.layers.{i}.mlp.down_proj`), in module order; the head is not among them.
    pub fn linears(&self) -> Vec<(String, &Linear)> {
        let mut out = Vec::new();
        for (i, layer) in self.layers.iter().enumerate() {
            for (name, linear) in layer.linears() {
                out.push((format!("model.layers.{i}.{name}"), linear));
            }
        }
        out
    }

    /// [`linears`](Self::linears), mutably.
    pub fn linears_mut(&mut self) -> Vec<(String, &mut Linear)> {
        let mut out = Vec::new();
        for (i, layer) in self.layers.iter_mut().enumerate() {
            for (name, linear) in layer.linears_mut() {
                out.push((format!("model.layers.{i}.{name}"), linear));
            }
        }
        out
    }

    /// Attaches fresh adapters as `spec` says, their variables created in `root` (f32, on
    /// `root`'s device): `A` uniform in ±1/sqrt(in) (PEFT's `kaiming_uniform_(a=sqrt(5))`) from a
    /// generator seeded with `seed`, `B` zero. Returns how many layers got one.
    pub fn attach_lora(
        &mut self,
        root: &tch::nn::Path,
        spec: &LoraSpec,
        seed: u64,
    ) -> Result<usize> {
        spec.validate()?;
        let training = self.training.clone();
        let mut count = 0;
        for (index, (name, linear)) in self.linears_mut().into_iter().enumerate() {
            if !spec.targets_module(&name) {
                continue;
            }
            if linear.lora.is_some() {
                return Err(Error::Input(format!("`{name}` already has an adapter")));
            }
            let (out_dim, in_dim) = (linear.weight.size()[0], linear.weight.size()[1]);
            let bound = 1.0 / (in_dim as f64).sqrt();
            let a = foundation::layers::seeded_uniform(
                &[spec.r, in_dim],
                bound,
                seed.wrapping_mul(7_919).wrapping_add(index as u64),
            );
            let b = Tensor::zeros([out_dim, spec.r], (tch::Kind::Float, tch::Device::Cpu));
            let path = sub_path(root, &name);
            linear.lora = Some(Lora {
                a: path.sub("lora_A").var_copy("weight", &a),
                b: path.sub("lora_B").var_copy("weight", &b),
                scale: spec.scale(),
                dropout: spec.dropout,
                training: training.clone(),
            });
            count += 1;
        }
        Ok(count)
    }

    /// Attaches adapters with the given weights: `adapters` maps a module name (as
    /// [`linears`](Self::linears) names them) to `(A, B)`, variables created in `root` with those
    /// values in f32. Shapes are checked against the layers.
    pub fn attach_lora_weights(
        &mut self,
        root: &tch::nn::Path,
        adapters: &std::collections::BTreeMap<String, (Tensor, Tensor)>,
        scale: f64,
        dropout: f64,
    ) -> Result<()> {
        let training = self.training.clone();
        let mut linears: std::collections::BTreeMap<String, &mut Linear> =
            self.linears_mut().into_iter().collect();
        for (name, (a, b)) in adapters {
            let Some(linear) = linears.get_mut(name) else {
                return Err(Error::Input(format!(
                    "the adapter adapts `{name}`, which the language model does not have"
                )));
            };
            let (out_dim, in_dim) = (linear.weight.size()[0], linear.weight.size()[1]);
            let (sa, sb) = (a.size(), b.size());
            if sa.len() != 2
                || sb.len() != 2
                || sa[1] != in_dim
                || sb[0] != out_dim
                || sa[0] != sb[1]
            {
                return Err(Error::Input(format!(
                    "the adapter of `{name}` has lora_A {sa:?} and lora_B {sb:?}; the layer is \
                     [{out_dim}, {in_dim}], so they must be [r, {in_dim}] and [{out_dim}, r]"
                )));
            }
            let path = sub_path(root, name);
            let kind = tch::Kind::Float;
            linear.lora = Some(Lora {
                a: path.sub("lora_A").var_copy("weight", &a.to_kind(kind)),
                b: path.sub("lora_B").var_copy("weight", &b.to_kind(kind)),
                scale,
                dropout,
                training: training.clone(),
            });
        }
        Ok(())
    }

    /// Folds every adapter into its layer's weight and removes them (see
    /// [`Linear::merge_lora`]). Returns how many were merged.
    pub fn merge_lora(&mut self) -> usize {
        let mut merged = 0;
        for (_, linear) in self.linears_mut() {
            if linear.lora.is_some() {
                linear.merge_lora();
                merged += 1;
            }
        }
        merged
    }

    /// Whether any layer carries an adapter.
    pub fn has_lora(&self) -> bool {
        self.linears().iter().any(|(_, l)| l.lora.is_some())
    }

    /// Switches training behaviour (the adapters' dropout) on or off.
    pub fn set_training(&self, on: bool) {
        self.training
            .store(on, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The `tch` path of dotted module `name` under `root`.
fn sub_path<'a>(root: &tch::nn::Path<'a>, name: &str) -> tch::nn::Path<'a> {
    let mut parts = name.split('.');
    let first = root.sub(parts.next().expect("split yields at least one part"));
    parts.fold(first, |p, part| p.sub(part))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attention::AttentionPlan;
    use crate::config::GemmaConfig;
    use tch::{Device, Kind};

    fn model_with_adapters(dropout: f64) -> (tch::nn::VarStore, tch::nn::VarStore, Gemma) {
        let config = GemmaConfig::tiny(64);
        let (vs, mut model) =
            foundation::build(Device::Cpu, Kind::Float, |root| Gemma::new(root, &config)).unwrap();
        // Seeded weights, not libtorch's global generator (which parallel tests reseed).
        tch::no_grad(|| {
            let mut vars: Vec<_> = vs.variables().into_iter().collect();
            vars.sort_by(|a, b| a.0.cmp(&b.0));
            for (i, (_, mut t)) in vars.into_iter().enumerate() {
                t.copy_(&foundation::layers::seeded_normal(
                    &t.size(),
                    0.1,
                    100 + i as u64,
                ));
            }
        });
        let lora_vs = tch::nn::VarStore::new(Device::Cpu);
        let spec = LoraSpec {
            r: 4,
            alpha: 8.0,
            dropout,
            ..LoraSpec::llava()
        };
        model.attach_lora(&lora_vs.root(), &spec, 3).unwrap();
        // Non-zero B, so the adapters (and their dropout) change the output.
        tch::no_grad(|| {
            for (i, (name, mut t)) in lora_vs.variables().into_iter().enumerate() {
                if name.contains("lora_B") {
                    t.copy_(&foundation::layers::seeded_normal(&t.size(), 0.5, i as u64));
                }
            }
        });
        (vs, lora_vs, model)
    }

    fn grads(vs: &tch::nn::VarStore) -> Vec<(String, Tensor)> {
        let mut out: Vec<(String, Tensor)> = vs
            .variables()
            .into_iter()
            .map(|(n, t)| {
                let g = t.grad().copy();
                let _ = t.grad().zero_();
                (n, g)
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    #[test]
    fn a_new_adapter_is_an_identity_and_merging_keeps_the_output() {
        let _rng = crate::global_rng();
        let (_vs, lora_vs, mut model) = model_with_adapters(0.0);
        let ids = Tensor::arange(12, (Kind::Int64, Device::Cpu)).view([2, 6]);
        let with = tch::no_grad(|| {
            model
                .forward(&ids, None, None, false)
                .unwrap()
                .last_hidden_state
        });
        assert_eq!(
            model.merge_lora(),
            7 * model.config().num_hidden_layers as usize
        );
        let merged = tch::no_grad(|| {
            model
                .forward(&ids, None, None, false)
                .unwrap()
                .last_hidden_state
        });
        let diff = (&with - &merged).abs().max().double_value(&[]);
        assert!(diff < 1e-4, "merged output differs by {diff}");
        drop(lora_vs);
    }

    #[test]
    fn checkpointing_recomputes_each_layer_with_the_dropout_masks_of_its_first_pass() {
        // The plain path under the same masks: the seeds `backward_checkpointed` draws from
        // libtorch's generator after `manual_seed(11)`, each set before its layer runs.
        let _rng = crate::global_rng();
        let (_vs, lora_vs, model) = model_with_adapters(0.3);
        model.set_training(true);
        let ids = Tensor::arange(12, (Kind::Int64, Device::Cpu)).view([2, 6]) * 5 + 1;
        let labels = ids.shallow_clone();
        let layers = model.layers.len();

        tch::manual_seed(11);
        let seeds: Vec<i64> = (0..layers)
            .map(|_| Tensor::randint(i64::MAX, [1], (Kind::Int64, Device::Cpu)).int64_value(&[0]))
            .collect();
        let embeds = model.embed(&ids);
        let plan = AttentionPlan::new(None, 2, 6, 0, Device::Cpu, Kind::Float);
        let inputs = model.layer_inputs(&plan);
        let mut x = embeds.shallow_clone();
        for (i, seed) in seeds.iter().enumerate() {
            tch::manual_seed(*seed);
            x = model.run_layer(i, &x, &inputs, None);
        }
        let (plain_loss, _) = model.loss(&model.norm.forward(&x), &labels).unwrap();
        plain_loss.backward();
        let plain = grads(&lora_vs);

        tch::manual_seed(11);
        let loss = model
            .backward_checkpointed(&model.embed(&ids), |hidden| {
                let (loss, _) = model.loss(hidden, &labels)?;
                Ok((loss.shallow_clone(), loss.detach()))
            })
            .unwrap();
        let checkpointed = grads(&lora_vs);
        assert!(loss.allclose(&plain_loss, 1e-6, 1e-6, false));
        for ((name, a), (_, b)) in plain.iter().zip(&checkpointed) {
            assert!(
                a.abs().max().double_value(&[]) > 0.0,
                "{name} has a gradient"
            );
            assert!(a.allclose(b, 1e-5, 1e-6, false), "{name}");
        }

        // And without the same masks the gradients differ: the test can tell.
        tch::manual_seed(12);
        model
            .backward_checkpointed(&model.embed(&ids), |hidden| {
                let (loss, _) = model.loss(hidden, &labels)?;
                Ok((loss, ()))
            })
            .unwrap();
        let other = grads(&lora_vs);
        assert!(
            plain
                .iter()
                .zip(&other)
                .any(|((_, a), (_, b))| !a.allclose(b, 1e-5, 1e-6, false))
        );
    }
}
