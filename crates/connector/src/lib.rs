//! Connectors: the trainable bridge from vision features to the language model's embeddings.
//!
//! LLaVA-1.5 (and LLaVA-Gemma) use `mlp2x_gelu`: `Linear(d_vision, d_lm) -> GELU -> Linear(d_lm, d_lm)`.
//! [`ProjectorType::parse`] reads the `projector_type` strings of the LLaVA code base: `linear`,
//! `identity` and `mlp{N}x_gelu`.
//!
//! The projectors of the Gemma VLMs are here too: PaliGemma's single linear layer
//! (`multi_modal_projector.linear.*`) and Gemma 3's pool, norm and projection ([`gemma3`]).
//!
//! Variables are named as Hugging Face names them (`multi_modal_projector.linear_1.weight`, …;
//! further layers continue as `linear_3`, …); [`Connector::load`] also reads the original LLaVA
//! names (`model.mm_projector.0.weight`, …) and stand-alone connector files, which is what stage 1
//! of the recipe produces and stage 2 loads.

pub mod gemma3;

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
    #[error(
        "unknown projector type `{0}` (linear, identity, mlp<N>x_gelu, paligemma, gemma3_<T>x<T>)"
    )]
    UnknownType(String),
    /// Gemma 3's pool cannot make its tokens from the tower's patches.
    #[error(
        "Gemma 3's projector pools a square grid of patches to {tokens_per_side}x{tokens_per_side} \
         tokens, which {patches} patches per image are not"
    )]
    Grid {
        /// Patches per image (-1: the features are not `[images, patches, width]`).
        patches: i64,
        /// Tokens along a side of the pooled grid.
        tokens_per_side: i64,
    },
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
    /// PaliGemma's: one linear layer with bias, `multi_modal_projector.linear.*`.
    PaliGemma,
    /// Gemma 3's: average pool to `tokens_per_side`², RMS norm, `x @ W` (see [`gemma3`]).
    Gemma3 {
        /// Tokens along each side of the pooled grid (`sqrt(mm_tokens_per_image)`).
        tokens_per_side: i64,
    },
}

impl ProjectorType {
    /// Parses LLaVA's `projector_type` strings.
    pub fn parse(name: &str) -> Result<Self> {
        let gemma3 = name
            .strip_prefix("gemma3_")
            .and_then(|rest| rest.split_once('x'))
            .and_then(|(a, b)| Some((a.parse::<i64>().ok()?, b.parse::<i64>().ok()?)))
            .filter(|(a, b)| a == b && *a > 0);
        if let Some((tokens_per_side, _)) = gemma3 {
            return Ok(ProjectorType::Gemma3 { tokens_per_side });
        }
        match name {
            "linear" => Ok(ProjectorType::Linear),
            "identity" => Ok(ProjectorType::Identity),
            "paligemma" => Ok(ProjectorType::PaliGemma),
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
            ProjectorType::PaliGemma => "paligemma".into(),
            ProjectorType::Gemma3 { tokens_per_side: t } => format!("gemma3_{t}x{t}"),
        }
    }

    /// The number of linear layers (Gemma 3's projection is not one).
    fn depth(self) -> usize {
        match self {
            ProjectorType::Linear | ProjectorType::PaliGemma => 1,
            ProjectorType::Identity | ProjectorType::Gemma3 { .. } => 0,
            ProjectorType::MlpGelu { depth } => depth,
        }
    }

    /// The name of linear layer `i` (from 0) under `multi_modal_projector.`.
    fn layer_name(self, i: usize) -> String {
        match self {
            ProjectorType::PaliGemma => "linear".into(),
            _ => format!("linear_{}", i + 1),
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
    gemma3: Option<gemma3::Gemma3Projector>,
}

impl Connector {
    /// A connector from `vision` to `language` width under `root` (variables
    /// `multi_modal_projector.linear_<i>.{weight,bias}`, PaliGemma's `multi_modal_projector.linear.*`,
    /// Gemma 3's `multi_modal_projector.mm_*`), initialised as HF initialises LLaVA's projector:
    /// weights from N(0, `std`), biases zero (Gemma 3's: zeros, its norm's epsilon 1e-6; see
    /// [`Connector::gemma3`]).
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
        if let ProjectorType::Gemma3 { tokens_per_side } = kind {
            return Ok(Self::gemma3(root, tokens_per_side, vision, language, 1e-6));
        }
        let p = root.sub(HF_PREFIX);
        let layers = (0..kind.depth())
            .map(|i| {
                let input = if i == 0 { vision } else { language };
                let bias = bias || kind == ProjectorType::PaliGemma;
                Linear::new(&p.sub(kind.layer_name(i)), input, language, bias, std)
            })
            .collect();
        Ok(Connector {
            kind,
            layers,
            gemma3: None,
        })
    }

    /// Gemma 3's projector from `vision` to `language` width under `root`, its norm's epsilon
    /// `eps` (the tower's `layer_norm_eps`).
    pub fn gemma3(
        root: &VarPath,
        tokens_per_side: i64,
        vision: i64,
        language: i64,
        eps: f64,
    ) -> Self {
        let p = root.sub(HF_PREFIX);
        Connector {
            kind: ProjectorType::Gemma3 { tokens_per_side },
            layers: Vec::new(),
            gemma3: Some(gemma3::Gemma3Projector::new(
                &p,
                tokens_per_side,
                vision,
                language,
                eps,
            )),
        }
    }

    /// Re-initialises every layer as `torch.nn.Linear` does, which is how LLaVA's
    /// `build_vision_projector` starts the projector: weight and bias from U(-1/sqrt(fan_in),
    /// 1/sqrt(fan_in)) (Kaiming-uniform with a = sqrt(5)), drawn by a generator seeded with `seed`,
    /// so a random connector (stage 1's start, or stage 2 without stage 1) is the same everywhere.
    pub fn reset_parameters(&self, seed: u64) {
        tch::no_grad(|| {
            if let Some(g) = &self.gemma3 {
                // Like a linear layer from the vision width; the norm starts at unit scale.
                let size = g.projection.size();
                let bound = 1.0 / (size[0] as f64).sqrt();
                let values = foundation::layers::seeded_uniform(&size, bound, seed);
                g.projection.shallow_clone().copy_(&values);
                let _ = g.norm_weight.shallow_clone().zero_();
            }
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

    /// How many tokens an image of `patches` patches becomes (Gemma 3 pools them).
    pub fn tokens_for(&self, patches: i64) -> i64 {
        match self.kind {
            ProjectorType::Gemma3 { tokens_per_side } => tokens_per_side * tokens_per_side,
            _ => patches,
        }
    }

    /// Projects features `[..., d_vision]` to `[..., d_lm]` (Gemma 3: `[images, patches,
    /// d_vision]` to `[images, tokens, d_lm]`).
    pub fn forward(&self, features: &Tensor) -> Result<Tensor> {
        if let Some(g) = &self.gemma3 {
            return g.forward(features);
        }
        let mut x = features.shallow_clone();
        for (i, layer) in self.layers.iter().enumerate() {
            if i > 0 {
                x = x.gelu("none");
            }
            x = layer.forward(&x);
        }
        Ok(x)
    }

    /// Fills the connector's variables in `vs` from `checkpoint`: HF names (`multi_modal_projector.*`
    /// under any prefix, such as `model.`) or original LLaVA names (`model.mm_projector.<2i>.*`, or
    /// `model.mm_projector.*` for a linear connector).
    pub fn load(&self, vs: &VarStore, checkpoint: &Checkpoint) -> Result<()> {
        if matches!(
            self.kind,
            ProjectorType::PaliGemma | ProjectorType::Gemma3 { .. }
        ) {
            return self.load_hf(vs, checkpoint);
        }
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

    /// Loads the Gemma VLMs' projectors: their HF names under whatever prefix the checkpoint puts
    /// before `multi_modal_projector.`.
    fn load_hf(&self, vs: &VarStore, checkpoint: &Checkpoint) -> Result<()> {
        let mut names: Vec<String> = vs.variables().into_keys().collect();
        names.sort();
        let first = names.first().expect("a Gemma VLM projector has weights");
        let prefix = checkpoint.require_prefix(first, first)?;
        checkpoint.load_into(vs, |name| vec![format!("{prefix}{name}")])?;
        Ok(())
    }

    /// The connector's tensors under their HF names.
    pub fn tensors(&self) -> Vec<(String, Tensor)> {
        let mut tensors = Vec::new();
        if let Some(g) = &self.gemma3 {
            tensors.push((
                format!("{HF_PREFIX}.mm_input_projection_weight"),
                g.projection.detach(),
            ));
            tensors.push((
                format!("{HF_PREFIX}.mm_soft_emb_norm.weight"),
                g.norm_weight.detach(),
            ));
        }
        for (i, layer) in self.layers.iter().enumerate() {
            let base = format!("{HF_PREFIX}.{}", self.kind.layer_name(i));
            tensors.push((format!("{base}.weight"), layer.weight.detach()));
            if let Some(b) = &layer.bias {
                tensors.push((format!("{base}.bias"), b.detach()));
            }
        }
        tensors
    }

    /// Saves the connector alone as a safetensors file with HF names: stage 1's output.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let tensors = self.tensors();
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
        for kind in [
            ProjectorType::PaliGemma,
            ProjectorType::Gemma3 {
                tokens_per_side: 16,
            },
        ] {
            assert_eq!(ProjectorType::parse(&kind.name()).unwrap(), kind);
        }
        assert!(ProjectorType::parse("gemma3_4x2").is_err());
    }

    #[test]
    fn gemma_vlm_projectors_are_named_as_transformers_names_them_and_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        for (kind, names) in [
            (
                ProjectorType::PaliGemma,
                vec![
                    "multi_modal_projector.linear.bias",
                    "multi_modal_projector.linear.weight",
                ],
            ),
            (
                ProjectorType::Gemma3 { tokens_per_side: 2 },
                vec![
                    "multi_modal_projector.mm_input_projection_weight",
                    "multi_modal_projector.mm_soft_emb_norm.weight",
                ],
            ),
        ] {
            let vs = VarStore::new(Device::Cpu);
            let c = Connector::new(&vs.root(), kind, 6, 4, false, 0.5).unwrap();
            c.reset_parameters(3);
            let mut got: Vec<_> = vs.variables().into_keys().collect();
            got.sort();
            assert_eq!(got, names);
            assert_eq!(
                c.tokens_for(16),
                if names[0].contains("mm_") { 4 } else { 16 }
            );
            // Saved alone, then read from a whole model's file under `model.`.
            let file = dir.path().join(format!("{}.safetensors", kind.name()));
            let prefixed: Vec<_> = c
                .tensors()
                .into_iter()
                .map(|(n, t)| (format!("model.{n}"), t))
                .collect();
            save_safetensors(&file, &prefixed, None).unwrap();
            let fresh_vs = VarStore::new(Device::Cpu);
            let fresh = Connector::new(&fresh_vs.root(), kind, 6, 4, false, 0.5).unwrap();
            fresh
                .load(&fresh_vs, &Checkpoint::open(&file).unwrap())
                .unwrap();
            let x = Tensor::randn([1, 16, 6], (Kind::Float, Device::Cpu));
            let (a, b) = (c.forward(&x).unwrap(), fresh.forward(&x).unwrap());
            assert!(a.abs().sum(Kind::Float).double_value(&[]) > 0.0);
            assert!(a.equal(&b), "{kind:?}");
        }
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
        assert!(c.forward(&x).unwrap().allclose(&want, 1e-6, 1e-6, false));
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
        assert!(
            fresh
                .forward(&x)
                .unwrap()
                .equal(&trained.forward(&x).unwrap())
        );

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
        assert!(
            again
                .forward(&x)
                .unwrap()
                .equal(&trained.forward(&x).unwrap())
        );

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
        assert!(c.forward(&x).unwrap().equal(&x));
    }
}
