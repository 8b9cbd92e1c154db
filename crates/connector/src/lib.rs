//! Connectors: the trainable bridge from vision features to the language model's embeddings.
//!
//! LLaVA-1.5 (and LLaVA-Gemma) use `mlp2x_gelu`: `Linear(d_vision, d_lm) -> GELU -> Linear(d_lm, d_lm)`.
//! [`ProjectorType::parse`] reads the `projector_type` strings of the LLaVA code base: `linear`,
//! `identity` and `mlp{N}x_gelu`.
//!
//! Variables are named as Hugging Face names them (`multi_modal_projector.linear_1.weight`, …;
//! further layers continue as `linear_3`, …); [`Connector::load`] also reads the original LLaVA
//! names (`model.mm_projector.0.weight`, …) and stand-alone connector files, which is what stage 1
//! of the recipe produces and stage 2 loads.

use std::path::Path;

use foundation::layers::Linear;
use foundation::{Checkpoint, save_safetensors};
use tch::Tensor;
use tch::nn::{Path as VarPath, VarStore};

/// Errors of the connector crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A checkpoint could not be read or lacks the connector's tensors.
    #[error(transparent)]
    Checkpoint(#[from] foundation::Error),
    /// A `projector_type` we do not know.
    #[error("unknown projector type `{0}` (linear, identity, mlp<N>x_gelu)")]
    UnknownType(String),
    /// An identity connector between different widths.
    #[error(
        "an identity connector needs equal widths, got vision {vision} and language {language}"
    )]
    Widths {
        /// Width of the vision features.
        vision: i64,
        /// Width of the language model.
        language: i64,
    },
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The connector architectures of LLaVA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProjectorType {
    /// One linear layer.
    Linear,
    /// No parameters; features pass unchanged.
    Identity,
    /// `depth` linear layers with GELU between them (`mlp2x_gelu` has depth 2).
    MlpGelu {
        /// Number of linear layers.
        depth: usize,
    },
}

impl ProjectorType {
    /// Parses LLaVA's `projector_type` strings.
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "linear" => Ok(ProjectorType::Linear),
            "identity" => Ok(ProjectorType::Identity),
            _ => name
                .strip_prefix("mlp")
                .and_then(|rest| rest.strip_suffix("x_gelu"))
                .and_then(|depth| depth.parse().ok())
                .filter(|&depth| depth >= 1)
                .map(|depth| ProjectorType::MlpGelu { depth })
                .ok_or_else(|| Error::UnknownType(name.into())),
        }
    }

    /// The name LLaVA gives it.
    pub fn name(self) -> String {
        match self {
            ProjectorType::Linear => "linear".into(),
            ProjectorType::Identity => "identity".into(),
            ProjectorType::MlpGelu { depth } => format!("mlp{depth}x_gelu"),
        }
    }

    fn depth(self) -> usize {
        match self {
            ProjectorType::Linear => 1,
            ProjectorType::Identity => 0,
            ProjectorType::MlpGelu { depth } => depth,
        }
    }
}

/// The prefix of the connector's variables in a var store and in HF LLaVA checkpoints.
pub const HF_PREFIX: &str = "multi_modal_projector";

/// A connector with its weights.
#[derive(Debug)]
pub struct Connector {
    kind: ProjectorType,
    layers: Vec<Linear>,
}

impl Connector {
    /// A connector from `vision` to `language` width under `root` (variables
    /// `multi_modal_projector.linear_<i>.{weight,bias}`), initialised as HF initialises LLaVA's
    /// projector: weights from N(0, `std`), biases zero.
    pub fn new(
        root: &VarPath,
        kind: ProjectorType,
        vision: i64,
        language: i64,
        bias: bool,
        std: f64,
    ) -> Result<Self> {
        if kind == ProjectorType::Identity && vision != language {
            return Err(Error::Widths { vision, language });
        }
        let p = root.sub(HF_PREFIX);
        let layers = (0..kind.depth())
            .map(|i| {
                let input = if i == 0 { vision } else { language };
                Linear::new(
                    &p.sub(format!("linear_{}", i + 1)),
                    input,
                    language,
                    bias,
                    std,
                )
            })
            .collect();
        Ok(Connector { kind, layers })
    }

    /// Re-initialises every layer as `torch.nn.Linear` does, which is how LLaVA's
    /// `build_vision_projector` starts the projector: weight and bias from U(-1/sqrt(fan_in),
    /// 1/sqrt(fan_in)) (Kaiming-uniform with a = sqrt(5)), drawn by a generator seeded with `seed`,
    /// so a random connector (stage 1's start, or stage 2 without stage 1) is the same everywhere.
    pub fn reset_parameters(&self, seed: u64) {
        tch::no_grad(|| {
            for (i, layer) in self.layers.iter().enumerate() {
                let mut weight = layer.weight.shallow_clone();
                let size = weight.size();
                let bound = 1.0 / (size[1] as f64).sqrt();
                let seed = seed.wrapping_mul(31).wrapping_add(2 * i as u64);
                weight.copy_(&foundation::layers::seeded_uniform(&size, bound, seed));
                if let Some(bias) = &layer.bias {
                    let values = foundation::layers::seeded_uniform(&bias.size(), bound, seed + 1);
                    bias.shallow_clone().copy_(&values);
                }
            }
        });
    }

    /// The architecture.
    pub fn kind(&self) -> ProjectorType {
        self.kind
    }

    /// Projects features `[..., d_vision]` to `[..., d_lm]`.
    pub fn forward(&self, features: &Tensor) -> Tensor {
        let mut x = features.shallow_clone();
        for (i, layer) in self.layers.iter().enumerate() {
            if i > 0 {
                x = x.gelu("none");
            }
            x = layer.forward(&x);
        }
        x
    }

    /// Fills the connector's variables in `vs` from `checkpoint`: HF names (`multi_modal_projector.*`
    /// under any prefix, such as `model.`) or original LLaVA names (`model.mm_projector.<2i>.*`, or
    /// `model.mm_projector.*` for a linear connector).
    pub fn load(&self, vs: &VarStore, checkpoint: &Checkpoint) -> Result<()> {
        if self.layers.is_empty() {
            return Ok(());
        }
        let hf = checkpoint.prefix_of(&format!("{HF_PREFIX}.linear_1.weight"));
        let original = checkpoint
            .prefix_of("mm_projector.0.weight")
            .or_else(|| checkpoint.prefix_of("mm_projector.weight"));
        let linear_is_bare = checkpoint
            .names()
            .any(|n| n.ends_with("mm_projector.weight"));
        checkpoint.load_into(vs, |name| {
            let Some(rest) = name.strip_prefix(&format!("{HF_PREFIX}.linear_")) else {
                return vec![name.to_string()];
            };
            let (index, param) = rest.split_once('.').expect("linear_<i>.<param>");
            let i: usize = index.parse().expect("numbered by Connector::new");
            let mut names = Vec::new();
            if let Some(p) = &hf {
                names.push(format!("{p}{name}"));
            }
            if let Some(p) = &original {
                if linear_is_bare && self.kind == ProjectorType::Linear {
                    names.push(format!("{p}mm_projector.{param}"));
                } else {
                    names.push(format!("{p}mm_projector.{}.{param}", 2 * (i - 1)));
                }
            }
            if names.is_empty() {
                names.push(name.to_string());
            }
            names
        })?;
        Ok(())
    }

    /// Saves the connector alone as a safetensors file with HF names: stage 1's output.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let mut tensors = Vec::new();
        for (i, layer) in self.layers.iter().enumerate() {
            let base = format!("{HF_PREFIX}.linear_{}", i + 1);
            tensors.push((format!("{base}.weight"), layer.weight.detach()));
            if let Some(b) = &layer.bias {
                tensors.push((format!("{base}.bias"), b.detach()));
            }
        }
        let metadata = [("projector_type".to_string(), self.kind.name())]
            .into_iter()
            .collect();
        save_safetensors(path, &tensors, Some(metadata))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn projector_types_parse_as_llava_spells_them() {
        assert_eq!(
            ProjectorType::parse("mlp2x_gelu").unwrap(),
            ProjectorType::MlpGelu { depth: 2 }
        );
        assert_eq!(
            ProjectorType::parse("mlp3x_gelu").unwrap(),
            ProjectorType::MlpGelu { depth: 3 }
        );
        assert_eq!(
            ProjectorType::parse("linear").unwrap(),
            ProjectorType::Linear
        );
        assert_eq!(
            ProjectorType::parse("identity").unwrap(),
            ProjectorType::Identity
        );
        assert!(ProjectorType::parse("mlp0x_gelu").is_err());
        assert!(
            ProjectorType::parse("qformer")
                .unwrap_err()
                .to_string()
                .contains("qformer")
        );
        assert_eq!(ProjectorType::MlpGelu { depth: 2 }.name(), "mlp2x_gelu");
    }

    #[test]
    fn mlp2x_gelu_is_linear_gelu_linear() {
        let vs = VarStore::new(Device::Cpu);
        let c = Connector::new(
            &vs.root(),
            ProjectorType::MlpGelu { depth: 2 },
            3,
            4,
            true,
            0.5,
        )
        .unwrap();
        let mut names: Vec<_> = vs.variables().into_keys().collect();
        names.sort();
        assert_eq!(
            names,
            [
                "multi_modal_projector.linear_1.bias",
                "multi_modal_projector.linear_1.weight",
                "multi_modal_projector.linear_2.bias",
                "multi_modal_projector.linear_2.weight"
            ]
        );
        let x = Tensor::randn([2, 5, 3], (Kind::Float, Device::Cpu));
        let v = vs.variables();
        let h = x.linear(
            &v["multi_modal_projector.linear_1.weight"],
            Some(&v["multi_modal_projector.linear_1.bias"]),
        );
        let want = h.gelu("none").linear(
            &v["multi_modal_projector.linear_2.weight"],
            Some(&v["multi_modal_projector.linear_2.bias"]),
        );
        assert!(c.forward(&x).allclose(&want, 1e-6, 1e-6, false));
    }

    #[test]
    fn stand_alone_file_and_original_llava_names_load() {
        let dir = tempfile::tempdir().unwrap();
        let kind = ProjectorType::MlpGelu { depth: 2 };
        let vs = VarStore::new(Device::Cpu);
        let trained = Connector::new(&vs.root(), kind, 3, 4, true, 0.5).unwrap();
        let file = dir.path().join("connector.safetensors");
        trained.save(&file).unwrap();
        let x = Tensor::randn([1, 3], (Kind::Float, Device::Cpu));

        let fresh_vs = VarStore::new(Device::Cpu);
        let fresh = Connector::new(&fresh_vs.root(), kind, 3, 4, true, 0.5).unwrap();
        fresh
            .load(&fresh_vs, &Checkpoint::open(&file).unwrap())
            .unwrap();
        assert!(fresh.forward(&x).equal(&trained.forward(&x)));

        // The same weights as original LLaVA's mm_projector.bin names them.
        let v = vs.variables();
        let original: Vec<(String, Tensor)> = [("0", "linear_1"), ("2", "linear_2")]
            .iter()
            .flat_map(|(o, h)| {
                ["weight", "bias"].map(|p| {
                    (
                        format!("model.mm_projector.{o}.{p}"),
                        v[&format!("multi_modal_projector.{h}.{p}")].detach(),
                    )
                })
            })
            .collect();
        let orig_file = dir.path().join("mm_projector.safetensors");
        save_safetensors(&orig_file, &original, None).unwrap();
        let again_vs = VarStore::new(Device::Cpu);
        let again = Connector::new(&again_vs.root(), kind, 3, 4, true, 0.5).unwrap();
        again
            .load(&again_vs, &Checkpoint::open(&orig_file).unwrap())
            .unwrap();
        assert!(again.forward(&x).equal(&trained.forward(&x)));

        // A connector of the wrong width is refused with both shapes.
        let wide_vs = VarStore::new(Device::Cpu);
        let wide = Connector::new(&wide_vs.root(), kind, 5, 4, true, 0.5).unwrap();
        let err = wide
            .load(&wide_vs, &Checkpoint::open(&file).unwrap())
            .unwrap_err()
            .to_string();
        assert!(err.contains("[4, 3]") && err.contains("[4, 5]"), "{err}");
    }

    #[test]
    fn identity_needs_equal_widths() {
        let vs = VarStore::new(Device::Cpu);
        assert!(Connector::new(&vs.root(), ProjectorType::Identity, 3, 4, true, 0.02).is_err());
        let c = Connector::new(&vs.root(), ProjectorType::Identity, 4, 4, true, 0.02).unwrap();
        let x = Tensor::randn([2, 4], (Kind::Float, Device::Cpu));
        assert!(c.forward(&x).equal(&x));
    }
}
