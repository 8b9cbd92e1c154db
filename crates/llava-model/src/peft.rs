//! LoRA adapters in PEFT's format, the one transformers, vLLM and TGI load: a directory with
//! `adapter_config.json` and `adapter_model.safetensors`.
//!
//! Tensor names are those `PeftModel.save_pretrained` writes for `LlavaForConditionalGeneration`:
//!
//! ```text
//! base_model.model.model.language_model.layers.{i}.self_attn.q_proj.lora_A.weight   [r, in]
//! base_model.model.model.language_model.layers.{i}.self_attn.q_proj.lora_B.weight   [out, r]
//! …  k_proj v_proj o_proj, mlp.gate_proj up_proj down_proj
//! base_model.model.model.multi_modal_projector.linear_{1,2}.{weight,bias}          (modules_to_save)
//! ```
//!
//! Reading also takes the older transformers layout (`base_model.model.language_model.model.layers…`)
//! and adapters of a bare Gemma (`base_model.model.model.layers…`). What we cannot apply (DoRA,
//! adapters on the vision tower or the embeddings, trained biases, per-module alpha patterns) is an
//! error naming the file and the tensor or key, never silently dropped.

use std::collections::BTreeMap;
use std::path::Path;

use foundation::{Checkpoint, save_safetensors, write_atomic};
use gemma_lm::LoraSpec;
use serde::{Deserialize, Serialize};
use tch::Tensor;
use tch::nn::VarStore;

use crate::model::LlavaModel;
use crate::{Error, Result};

/// The adapter's settings file.
pub const CONFIG_FILE: &str = "adapter_config.json";
/// The adapter's tensors.
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";

/// Where PEFT puts the wrapped model's modules.
const PEFT_PREFIX: &str = "base_model.model.";
/// The connector's module name in `LlavaForConditionalGeneration`.
const CONNECTOR: &str = "multi_modal_projector";

/// `adapter_config.json`: the keys we read, and every other key kept as it was.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AdapterConfig {
    /// `"LORA"`.
    pub peft_type: String,
    /// The rank.
    pub r: i64,
    /// The update is scaled by `lora_alpha / r` (written as an integer when it is one, as
    /// PEFT writes it).
    #[serde(serialize_with = "integer_when_whole")]
    pub lora_alpha: f64,
    /// Dropout on the adapters' input (training only).
    #[serde(default)]
    pub lora_dropout: f64,
    /// A list of module names, or a regex over full module names.
    #[serde(default)]
    pub target_modules: serde_json::Value,
    /// Modules saved whole (the connector).
    #[serde(default)]
    pub modules_to_save: Option<Vec<String>>,
    /// Scale by `lora_alpha / sqrt(r)`.
    #[serde(default)]
    pub use_rslora: bool,
    /// Weight-decomposed LoRA (not supported).
    #[serde(default)]
    pub use_dora: bool,
    /// Which biases train (`"none"` is supported).
    #[serde(default = "none")]
    pub bias: String,
    /// Conv1D-style transposed weights (not supported).
    #[serde(default)]
    pub fan_in_fan_out: bool,
    /// Per-module ranks (the tensors' shapes carry them).
    #[serde(default)]
    pub rank_pattern: BTreeMap<String, serde_json::Value>,
    /// Per-module alphas (not supported).
    #[serde(default)]
    pub alpha_pattern: BTreeMap<String, serde_json::Value>,
    /// The base model the adapter was trained on.
    #[serde(default)]
    pub base_model_name_or_path: Option<String>,
    /// Every other key, written back unchanged.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

fn integer_when_whole<S: serde::Serializer>(value: &f64, s: S) -> Result<S::Ok, S::Error> {
    if value.fract() == 0.0 && value.abs() < 1e15 {
        s.serialize_i64(*value as i64)
    } else {
        s.serialize_f64(*value)
    }
}

fn none() -> String {
    "none".into()
}

impl AdapterConfig {
    /// The configuration PEFT writes for `spec` on a LLaVA model, with `modules_to_save` the
    /// connector when it trained: the keys and defaults of PEFT 0.21.2's `LoraConfig`, and
    /// `target_modules` a regex that picks the language model's projections only (a bare list of
    /// names would also adapt the vision tower's `q_proj`, `k_proj`, `v_proj`).
    pub fn for_llava(spec: &LoraSpec, connector: bool, base: Option<&str>) -> Self {
        let targets = spec.targets.join("|");
        let extra = serde_json::json!({
            "alora_invocation_tokens": null,
            "arrow_config": null,
            "auto_mapping": {
                "base_model_class": "LlavaForConditionalGeneration",
                "parent_library": "transformers.models.llava.modeling_llava"
            },
            "corda_config": null,
            "ensure_weight_tying": false,
            "eva_config": null,
            "exclude_modules": null,
            "inference_mode": true,
            "init_lora_weights": true,
            "kasa_config": null,
            "layer_replication": null,
            "layers_pattern": null,
            "layers_to_transform": null,
            "loftq_config": {},
            "lora_bias": false,
            "lora_ga_config": null,
            "megatron_config": null,
            "megatron_core": "megatron.core",
            "monteclora_config": null,
            "peft_version": "0.21.2",
            "qalora_group_size": 16,
            "revision": null,
            "target_parameters": null,
            "task_type": null,
            "trainable_token_indices": null,
            "use_bdlora": null,
            "use_qalora": false,
            "velora_config": null,
        });
        AdapterConfig {
            peft_type: "LORA".into(),
            r: spec.r,
            lora_alpha: spec.alpha,
            lora_dropout: spec.dropout,
            target_modules: format!("(.*\\.)?language_model\\..*\\.({targets})").into(),
            modules_to_save: connector.then(|| vec![CONNECTOR.to_string()]),
            use_rslora: spec.rslora,
            use_dora: false,
            bias: "none".into(),
            fan_in_fan_out: false,
            rank_pattern: BTreeMap::new(),
            alpha_pattern: BTreeMap::new(),
            base_model_name_or_path: base.map(str::to_string),
            extra: match extra {
                serde_json::Value::Object(map) => map,
                _ => unreachable!("a JSON object literal"),
            },
        }
    }

    /// Reads `dir/adapter_config.json` and refuses what we cannot apply.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let file = dir.join(CONFIG_FILE);
        let text = std::fs::read_to_string(&file).map_err(|e| Error::io(&file, e))?;
        let config: AdapterConfig = serde_json::from_str(&text).map_err(|e| Error::Adapter {
            path: file.clone(),
            message: format!("not a PEFT adapter configuration: {e}"),
        })?;
        let refuse = |message: String| {
            Err(Error::Adapter {
                path: file.clone(),
                message,
            })
        };
        if config.peft_type != "LORA" {
            return refuse(format!(
                "peft_type is `{}`; only LoRA adapters can be applied",
                config.peft_type
            ));
        }
        if config.use_dora {
            return refuse("use_dora is true: DoRA adapters are not supported".into());
        }
        if config.fan_in_fan_out {
            return refuse(
                "fan_in_fan_out is true: Conv1D-style adapters are not supported".into(),
            );
        }
        if config.bias != "none" {
            return refuse(format!(
                "bias is `{}`: adapters that train biases are not supported",
                config.bias
            ));
        }
        if !config.alpha_pattern.is_empty() {
            return refuse("alpha_pattern is set: per-module alphas are not supported".into());
        }
        if config.r < 1 || !config.lora_alpha.is_finite() {
            return refuse(format!(
                "r = {} and lora_alpha = {} do not make an adapter",
                config.r, config.lora_alpha
            ));
        }
        Ok(config)
    }

    /// The update's scale for an adapter of rank `r`.
    pub fn scale(&self, r: i64) -> f64 {
        if self.use_rslora {
            self.lora_alpha / (r as f64).sqrt()
        } else {
            self.lora_alpha / r as f64
        }
    }
}

/// What a PEFT tensor name is to us.
#[derive(Debug, PartialEq)]
enum Slot {
    /// `(module, is_b)`: the language model's module (`model.layers.0.self_attn.q_proj`).
    Lora(String, bool),
    /// A connector variable (`multi_modal_projector.linear_1.weight`).
    Connector(String),
}

/// Maps a tensor name of a PEFT adapter to what it adapts, or says why it cannot be applied.
fn slot_of(key: &str) -> std::result::Result<Slot, String> {
    let rest = key.strip_prefix(PEFT_PREFIX).unwrap_or(key);
    if let Some(at) = rest.find(&format!("{CONNECTOR}.")) {
        let name = rest[at..].replace(".modules_to_save.default.", ".");
        return Ok(Slot::Connector(name));
    }
    if rest.contains("vision_tower") || rest.contains("vision_model") {
        return Err("adapters on the vision tower are not supported".into());
    }
    let (module, is_b) = if let Some(m) = rest.strip_suffix(".lora_A.weight") {
        (m, false)
    } else if let Some(m) = rest.strip_suffix(".lora_B.weight") {
        (m, true)
    } else {
        return Err(
            "only lora_A / lora_B weights of the language model's linear layers and the \
             connector can be applied"
                .into(),
        );
    };
    let Some(at) = module.find("layers.") else {
        return Err("not a decoder layer's module".into());
    };
    Ok(Slot::Lora(format!("model.{}", &module[at..]), is_b))
}

impl LlavaModel {
    /// Attaches fresh LoRA adapters to the language model as `spec` says (see
    /// [`gemma_lm::lora`]), their f32 variables in [`lora_vs`](Self::lora_vs). Returns how many.
    pub fn add_lora(&mut self, spec: &LoraSpec, seed: u64) -> Result<usize> {
        let vs = VarStore::new(self.device());
        let count = self.lm.attach_lora(&vs.root(), spec, seed)?;
        self.lora_vs = Some(vs);
        Ok(count)
    }

    /// Applies the PEFT adapter in `dir`: its LoRA pairs attached to the language model's layers
    /// (unmerged, so the forward is PEFT's own; see [`merge_lora`](Self::merge_lora)) and its
    /// `modules_to_save` connector loaded over ours. Returns the adapter's configuration.
    pub fn load_adapter(&mut self, dir: impl AsRef<Path>) -> Result<AdapterConfig> {
        let dir = dir.as_ref();
        if let Some(how) = self.quantization() {
            return Err(Error::Adapter {
                path: dir.to_path_buf(),
                message: format!(
                    "the model's language model holds {how} codes; an adapter applies to dense \
                     weights (load the dense model, merge the adapter, then quantize)"
                ),
            });
        }
        let config = AdapterConfig::from_dir(dir)?;
        let file = dir.join(WEIGHTS_FILE);
        if !file.exists() {
            return Err(Error::Adapter {
                path: file,
                message: "no adapter weights (adapter_model.bin is not read: save with \
                          safe_serialization=True)"
                    .into(),
            });
        }
        let checkpoint = Checkpoint::open(&file)?;
        let mut pairs: BTreeMap<String, (Option<Tensor>, Option<Tensor>)> = BTreeMap::new();
        let mut connector: BTreeMap<String, Tensor> = BTreeMap::new();
        let names: Vec<String> = checkpoint.names().map(str::to_string).collect();
        for key in names {
            let slot = slot_of(&key).map_err(|message| Error::Adapter {
                path: file.clone(),
                message: format!("tensor `{key}`: {message}"),
            })?;
            let tensor = checkpoint.tensor(&key)?;
            match slot {
                Slot::Lora(module, false) => pairs.entry(module).or_default().0 = Some(tensor),
                Slot::Lora(module, true) => pairs.entry(module).or_default().1 = Some(tensor),
                Slot::Connector(name) => {
                    connector.insert(name, tensor);
                }
            }
        }
        let mut adapters = BTreeMap::new();
        let mut ranks = std::collections::BTreeSet::new();
        for (module, pair) in pairs {
            let (Some(a), Some(b)) = pair else {
                return Err(Error::Adapter {
                    path: file.clone(),
                    message: format!("`{module}` has only one of lora_A and lora_B"),
                });
            };
            ranks.insert(a.size()[0]);
            adapters.insert(module, (a, b));
        }
        if adapters.is_empty() && connector.is_empty() {
            return Err(Error::Adapter {
                path: file,
                message: "the adapter holds no tensors we can apply".into(),
            });
        }
        let vs = self
            .lora_vs
            .take()
            .unwrap_or_else(|| VarStore::new(self.device()));
        // Every module's rank is its tensors'; one scale per rank (rank_pattern gives several).
        for r in ranks {
            let of_rank: BTreeMap<String, (Tensor, Tensor)> = adapters
                .iter()
                .filter(|(_, (a, _))| a.size()[0] == r)
                .map(|(m, (a, b))| (m.clone(), (a.shallow_clone(), b.shallow_clone())))
                .collect();
            self.lm
                .attach_lora_weights(&vs.root(), &of_rank, config.scale(r), config.lora_dropout)
                .map_err(|e| Error::Adapter {
                    path: file.clone(),
                    message: e.to_string(),
                })?;
        }
        self.lora_vs = Some(vs);
        if !connector.is_empty() {
            let mut ours = self.connector_vs.variables();
            for (name, tensor) in &connector {
                let Some(var) = ours.get_mut(name) else {
                    return Err(Error::Adapter {
                        path: file.clone(),
                        message: format!(
                            "the adapter saves connector tensor `{name}`, which this model's \
                             connector does not have"
                        ),
                    });
                };
                if var.size() != tensor.size() {
                    return Err(Error::Adapter {
                        path: file.clone(),
                        message: format!(
                            "connector tensor `{name}` is {:?} in the adapter, {:?} in the model",
                            tensor.size(),
                            var.size()
                        ),
                    });
                }
                tch::no_grad(|| var.copy_(tensor));
            }
        }
        Ok(config)
    }

    /// Writes the model's adapters (and, with `connector`, the connector as PEFT's
    /// `modules_to_save`) as a PEFT adapter directory that `PeftModel.from_pretrained` loads on
    /// `LlavaForConditionalGeneration`. `spec` fills `adapter_config.json`.
    pub fn save_adapter(
        &self,
        dir: impl AsRef<Path>,
        spec: &LoraSpec,
        connector: bool,
        base: Option<&str>,
    ) -> Result<()> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let mut tensors = Vec::new();
        for (module, linear) in self.lm.linears() {
            let Some(lora) = &linear.lora else { continue };
            let module = module.strip_prefix("model.").unwrap_or(&module);
            let name = format!("{PEFT_PREFIX}model.language_model.{module}");
            tensors.push((format!("{name}.lora_A.weight"), lora.a.detach()));
            tensors.push((format!("{name}.lora_B.weight"), lora.b.detach()));
        }
        if tensors.is_empty() {
            return Err(Error::Input("the model has no adapters to save".into()));
        }
        if connector {
            let mut vars: Vec<(String, Tensor)> =
                self.connector_vs.variables().into_iter().collect();
            vars.sort_by(|a, b| a.0.cmp(&b.0));
            for (name, t) in vars {
                tensors.push((format!("{PEFT_PREFIX}model.{name}"), t.detach()));
            }
        }
        let metadata = [("format".to_string(), "pt".to_string())]
            .into_iter()
            .collect();
        save_safetensors(dir.join(WEIGHTS_FILE), &tensors, Some(metadata))?;
        let config = AdapterConfig::for_llava(spec, connector, base);
        let json = serde_json::to_string_pretty(&config).expect("config serialises");
        write_atomic(dir.join(CONFIG_FILE), json.as_bytes())?;
        Ok(())
    }

    /// Folds every adapter into the language model's weights and drops the adapters' variables:
    /// the model then computes what it computed with them, at the plain model's speed, and saves
    /// as a plain model. Returns how many layers were merged.
    pub fn merge_lora(&mut self) -> usize {
        let merged = self.lm.merge_lora();
        self.lora_vs = None;
        merged
    }

    /// Loads the LLaVA directory `dir` (see [`LlavaModel::from_pretrained`]) and, when given,
    /// applies the PEFT adapter in `adapter` and merges it, so inference runs at the plain
    /// model's speed.
    pub fn from_pretrained_with_adapter(
        dir: impl AsRef<Path>,
        adapter: Option<&Path>,
        device: tch::Device,
        kind: tch::Kind,
    ) -> Result<Self> {
        let mut model = LlavaModel::from_pretrained(dir, device, kind)?;
        if let Some(adapter) = adapter {
            model.load_adapter(adapter)?;
            model.merge_lora();
        }
        Ok(model)
    }

    /// Switches training behaviour (adapter dropout) on or off.
    pub fn set_training(&self, on: bool) {
        self.lm.set_training(on);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peft_names_map_to_modules_in_every_layout() {
        for key in [
            "base_model.model.model.language_model.layers.3.self_attn.q_proj.lora_A.weight",
            "base_model.model.language_model.model.layers.3.self_attn.q_proj.lora_A.weight",
            "base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight",
        ] {
            assert_eq!(
                slot_of(key).unwrap(),
                Slot::Lora("model.layers.3.self_attn.q_proj".into(), false),
                "{key}"
            );
        }
        assert_eq!(
            slot_of("base_model.model.model.language_model.layers.0.mlp.down_proj.lora_B.weight")
                .unwrap(),
            Slot::Lora("model.layers.0.mlp.down_proj".into(), true)
        );
        for key in [
            "base_model.model.model.multi_modal_projector.linear_1.weight",
            "base_model.model.multi_modal_projector.modules_to_save.default.linear_1.weight",
        ] {
            assert_eq!(
                slot_of(key).unwrap(),
                Slot::Connector("multi_modal_projector.linear_1.weight".into()),
                "{key}"
            );
        }
        for key in [
            "base_model.model.model.vision_tower.vision_model.encoder.layers.0.self_attn.q_proj.lora_A.weight",
            "base_model.model.model.language_model.layers.0.self_attn.q_proj.lora_magnitude_vector",
            "base_model.model.model.language_model.embed_tokens.lora_embedding_A",
        ] {
            assert!(slot_of(key).is_err(), "{key}");
        }
    }

    #[test]
    fn our_config_has_pefts_keys_and_a_target_regex_that_spares_the_tower() {
        let config = AdapterConfig::for_llava(&LoraSpec::llava(), true, Some("base"));
        let json = serde_json::to_value(&config).unwrap();
        for key in [
            "peft_type",
            "r",
            "lora_alpha",
            "lora_dropout",
            "target_modules",
            "modules_to_save",
            "use_rslora",
            "use_dora",
            "bias",
            "fan_in_fan_out",
            "init_lora_weights",
            "task_type",
            "base_model_name_or_path",
        ] {
            assert!(json.get(key).is_some(), "{key}");
        }
        let targets = json["target_modules"].as_str().unwrap();
        assert!(targets.contains("language_model") && targets.contains("down_proj"));
    }
}
