//! A LLaVA model's vision tower and connector as llama.cpp's `mmproj` GGUF file (its `clip`
//! library, projector type `mlp`), the companion of the language model's file
//! ([`gemma_lm::gguf`]). The layout is the one llama.cpp's own converter for LLaVA-1.5 towers
//! writes (`convert_image_encoder_to_gguf.py`): `v.*` tower tensors, `mm.0`/`mm.2` for the
//! connector, `fc1` stored as `ffn_down` and `fc2` as `ffn_up` (llama.cpp swaps them back for
//! `mlp`, and only this naming survives its swap when the tower's MLP is as wide as the tower).
//!
//! What llama.cpp's `llava` graph computes, and how the file makes it compute ours
//! (`docs/dev/gguf-notes.md` has the sources):
//! * it runs the first `feature_layer` layers and keeps their output: the file holds exactly the
//!   layers LLaVA's `vision_feature_layer` reaches (`-2`: all but the last) and says so in
//!   `clip.vision.feature_layer` (without the key llama.cpp drops one layer more than asked);
//! * no `v.post_ln` (transformers' hidden states are taken before the tower's final norm);
//! * a class token (CLIP) is dropped, every patch of a tower without one (SigLIP) kept: CLIP
//!   needs `vision_feature_select_strategy = "default"`, SigLIP `"full"`;
//! * the language model multiplies every input embedding, image features included, by
//!   `sqrt(hidden_size)`: transformers 5 inserts image features unscaled, so `mm.2` is stored
//!   divided by that (not for models trained with scaled features, Intel's);
//! * the projector's biases are always added: a model without them gets zeros.
//!
//! A Gemma 3 model (`Gemma3ForConditionalGeneration`) gets projector type `gemma3` instead, the
//! layout of llama.cpp's converter (`Gemma3VisionModel`): every tower layer and `v.post_ln`
//! (transformers hands the projector the tower's last hidden state, after its final norm),
//! `clip.vision.projector.scale_factor` = the average pool's side (llama.cpp's default is 4),
//! `mm.soft_emb_norm.weight` stored as `1 + w`, `mm.input_projection.weight` as transformers holds
//! it (`[vision, text]`, f16 or f32: llama.cpp transposes it in the graph), the patch kernel in
//! f32, and no `1/sqrt(hidden)` on the output (llama.cpp's `gemma3` scales only token
//! embeddings, as transformers does). llama.cpp decodes the image's tokens non-causally, as
//! Gemma 3's mask has them; it letterboxes a non-square image where transformers stretches it.
//!
//! llama.cpp 0c1e57098 (llama-cpp-python 0.3.36) appends CLIP's class token after the patches
//! but positions and keeps rows as if it came first (ggml-org/llama.cpp#25814): a CLIP file is
//! right, and llama.cpp's answers from it differ from ours until that is fixed. SigLIP towers
//! run exactly. DINOv2 has layer scales the `llava` graph does not apply: refused.

use foundation::Checkpoint;
use foundation::gguf::{GgufWriter, TensorType, Value};
use vision_encoders::VisionConfig;
use vision_encoders::processing::ProcessorConfig;

use crate::config::{Family, FeatureLayers, LlavaConfig};
use crate::{Error, Result};

/// The `mmproj` file of the model in `checkpoint` (configured by `config`, its images prepared
/// by `processor`), 2-D weights stored as `kind` where their rows allow (else f16, as llama.cpp's
/// converter falls back), everything else f32. `features_scaled`: the model multiplies image
/// features by `sqrt(hidden_size)` itself (the original LLaVA-Gemma code), so llama.cpp's scaling
/// is left alone. LLaVA (projector `mlp`) and Gemma 3 (projector `gemma3`) models; PaliGemma's
/// prefix attention has no llama.cpp graph and is refused.
pub fn mmproj_to_gguf<'a>(
    config: &LlavaConfig,
    processor: &ProcessorConfig,
    checkpoint: &'a Checkpoint,
    kind: TensorType,
    features_scaled: bool,
    name: &str,
) -> Result<GgufWriter<'a>> {
    match config.family() {
        Family::Llava => llava_mmproj(config, processor, checkpoint, kind, features_scaled, name),
        Family::Gemma3 => gemma3_mmproj(config, processor, checkpoint, kind, name),
        other => Err(refuse(format!(
            "`{}` models have no llama.cpp projector (LLaVA's `mlp` and Gemma 3's are written)",
            other.model_type()
        ))),
    }
}

fn refuse(why: String) -> Error {
    Error::Input(format!("mmproj export: {why}"))
}

/// LLaVA's tower and two-layer MLP as projector type `mlp`.
fn llava_mmproj<'a>(
    config: &LlavaConfig,
    processor: &ProcessorConfig,
    checkpoint: &'a Checkpoint,
    kind: TensorType,
    features_scaled: bool,
    name: &str,
) -> Result<GgufWriter<'a>> {
    let tower = Tower::of(&config.vision()?)?;
    let layers = match &config.vision_feature_layer {
        FeatureLayers::One(l) if *l < 0 => tower.layers + 1 + l,
        FeatureLayers::One(l) => *l,
        FeatureLayers::Many(ls) => {
            return Err(refuse(format!(
                "features of several layers ({ls:?}) are concatenated by no llama.cpp graph"
            )));
        }
    };
    if !(1..=tower.layers).contains(&layers) {
        return Err(refuse(format!(
            "vision_feature_layer {:?} is not one of the tower's {} layers",
            config.vision_feature_layer, tower.layers
        )));
    }
    let wanted = if tower.class_token { "default" } else { "full" };
    if config.vision_feature_select_strategy != wanted {
        return Err(refuse(format!(
            "llama.cpp keeps every patch and drops a class token: this {} tower needs \
             vision_feature_select_strategy `{wanted}`, not `{}`",
            tower.name, config.vision_feature_select_strategy
        )));
    }
    if config.projector_hidden_act != "gelu" && config.projector_hidden_act != "gelu_pytorch_tanh" {
        return Err(refuse(format!(
            "llama.cpp's `mlp` projector applies GELU, not `{}`",
            config.projector_hidden_act
        )));
    }
    let text_hidden = config.text_config.hidden_size;
    let mut w = header(&tower, processor, kind, name, text_hidden)?;
    w.set("clip.has_llava_projector", Value::Bool(true));
    w.set("clip.projector_type", Value::Str("mlp".into()));
    w.set("clip.vision.block_count", Value::U32(layers as u32));
    w.set(
        "clip.vision.feature_layer",
        Value::I32s(vec![layers as i32]),
    );
    let mut out = Writer {
        w,
        checkpoint,
        kind,
        kernel: if kind == TensorType::F32 {
            TensorType::F32
        } else {
            // ggml's convolution takes f16 or f32 kernels.
            TensorType::F16
        },
    };
    out.tower(&tower, layers, false)?;

    let projector_prefix = checkpoint.require_prefix(
        "linear_1.weight",
        "the connector's multi_modal_projector.linear_1.weight",
    )?;
    // llama.cpp's gemma and gemma2 graphs multiply every input embedding by sqrt(hidden), image
    // features too; its gemma3 graph only token embeddings, as transformers does. The
    // projector's last layer makes up the difference.
    let root = (text_hidden as f64).sqrt();
    let head_scale = match (scales_every_input(&config.text_config)?, features_scaled) {
        (true, false) => 1.0 / root,
        (true, true) | (false, false) => 1.0,
        (false, true) => root,
    };
    let p = |n: &str| format!("{projector_prefix}{n}");
    let mut zero_biases = Vec::new();
    for (gguf, hf, scale) in [("mm.0", "linear_1", 1.0), ("mm.2", "linear_2", head_scale)] {
        let weight = p(&format!("{hf}.weight"));
        let bias = p(&format!("{hf}.bias"));
        if checkpoint.info(&bias).is_some() {
            out.add(&format!("{gguf}.bias"), bias, Stored::Vector(scale))?;
        } else {
            let rows = checkpoint.info(&weight).map_or(text_hidden, |i| i.shape[0]);
            zero_biases.push((format!("{gguf}.bias"), rows));
        }
        out.add(&format!("{gguf}.weight"), weight, Stored::Matrix(scale))?;
    }
    // llama.cpp adds the projector's biases unconditionally: zeros where the model has none.
    let mut w = out.w;
    for (name, rows) in zero_biases {
        w.add(&name, &[rows], &vec![0.0; rows as usize], TensorType::F32)
            .map_err(Error::Input)?;
    }
    Ok(w)
}

/// Whether llama.cpp's graph for this language model multiplies image embeddings by
/// `sqrt(hidden)` as it does token embeddings (`gemma`, `gemma2`; `gemma3` scales tokens only).
fn scales_every_input(text: &gemma_lm::config::GemmaConfig) -> Result<bool> {
    Ok(text.generation()? != gemma_lm::config::Generation::Gemma3)
}

/// Gemma 3's SigLIP tower, average pool, soft-embedding norm and input projection as projector
/// type `gemma3`.
fn gemma3_mmproj<'a>(
    config: &LlavaConfig,
    processor: &ProcessorConfig,
    checkpoint: &'a Checkpoint,
    kind: TensorType,
    name: &str,
) -> Result<GgufWriter<'a>> {
    let tower = Tower::of(&config.vision()?)?;
    if tower.class_token {
        return Err(refuse(format!(
            "llama.cpp's gemma3 projector follows a SigLIP tower, not {}",
            tower.name
        )));
    }
    if processor.pan_and_scan.is_some() {
        return Err(refuse(
            "llama.cpp shows Gemma 3 each image whole: a processor with pan-and-scan crops \
             prompts it cannot write"
                .into(),
        ));
    }
    // The pool's side: patches per side over tokens per side (config.rs has checked it divides).
    let per_side = tower.image_size / tower.patch_size;
    let tokens_side = (config.mm_tokens_per_image() as f64).sqrt().round() as i64;
    if tokens_side <= 0 || per_side % tokens_side != 0 {
        return Err(refuse(format!(
            "{} tokens per image do not pool from {per_side}x{per_side} patches",
            config.mm_tokens_per_image()
        )));
    }
    let mut w = header(
        &tower,
        processor,
        kind,
        name,
        config.text_config.hidden_size,
    )?;
    w.set("clip.projector_type", Value::Str("gemma3".into()));
    w.set("clip.vision.block_count", Value::U32(tower.layers as u32));
    w.set(
        "clip.vision.projector.scale_factor",
        Value::U32((per_side / tokens_side) as u32),
    );
    // llama.cpp's converter keeps Gemma 3's patch kernel in f32 (an f16 kernel rounds the
    // pixels to f16 too), and its input projection in f16 or f32 (transposed in the graph).
    let dense = if kind == TensorType::F32 {
        TensorType::F32
    } else {
        TensorType::F16
    };
    let mut out = Writer {
        w,
        checkpoint,
        kind,
        kernel: TensorType::F32,
    };
    out.tower(&tower, tower.layers, true)?;
    let projector = checkpoint.require_prefix(
        "mm_soft_emb_norm.weight",
        "the connector's multi_modal_projector.mm_soft_emb_norm.weight",
    )?;
    out.add(
        "mm.soft_emb_norm.weight",
        format!("{projector}mm_soft_emb_norm.weight"),
        Stored::Norm,
    )?;
    out.add(
        "mm.input_projection.weight",
        format!("{projector}mm_input_projection_weight"),
        Stored::Dense(dense),
    )?;
    Ok(out.w)
}

/// The keys every `mmproj` file has: the tower's shape and the processor's pixel statistics.
fn header<'a>(
    tower: &Tower,
    processor: &ProcessorConfig,
    kind: TensorType,
    name: &str,
    text_hidden: i64,
) -> Result<GgufWriter<'a>> {
    if processor
        .rescale
        .is_none_or(|r| (r - 1.0 / 255.0).abs() > 1e-9)
    {
        return Err(refuse(
            "llama.cpp scales pixels by 1/255; this processor does not".into(),
        ));
    }
    let (mean, std) = processor.normalize.unwrap_or(([0.0; 3], [1.0; 3]));
    let mut w = GgufWriter::new();
    w.set("general.architecture", Value::Str("clip".into()));
    w.set("general.type", Value::Str("mmproj".into()));
    w.set("general.name", Value::Str(name.into()));
    w.set("general.file_type", Value::U32(kind.file_type()));
    w.set("clip.has_text_encoder", Value::Bool(false));
    w.set("clip.has_vision_encoder", Value::Bool(true));
    let u32_of = |v: i64| Value::U32(v as u32);
    w.set("clip.vision.image_size", u32_of(tower.image_size));
    w.set("clip.vision.patch_size", u32_of(tower.patch_size));
    w.set("clip.vision.embedding_length", u32_of(tower.hidden));
    w.set(
        "clip.vision.feed_forward_length",
        u32_of(tower.intermediate),
    );
    w.set("clip.vision.projection_dim", u32_of(text_hidden));
    w.set("clip.vision.attention.head_count", u32_of(tower.heads));
    w.set(
        "clip.vision.attention.layer_norm_epsilon",
        Value::F32(tower.eps as f32),
    );
    w.set("clip.vision.image_mean", Value::F32s(mean.to_vec()));
    w.set("clip.vision.image_std", Value::F32s(std.to_vec()));
    w.set("clip.use_gelu", Value::Bool(tower.gelu));
    Ok(w)
}

/// A file being filled from a checkpoint: matrices as `kind` where their rows allow, the patch
/// kernel as `kernel`.
struct Writer<'a> {
    w: GgufWriter<'a>,
    checkpoint: &'a Checkpoint,
    kind: TensorType,
    kernel: TensorType,
}

impl<'a> Writer<'a> {
    /// Adds checkpoint tensor `hf` as `gguf`, stored as `how` says.
    fn add(&mut self, gguf: &str, hf: String, how: Stored) -> Result<()> {
        let shape = self.checkpoint.shape(&hf)?;
        let stored = match how {
            Stored::Vector(_) | Stored::Norm => TensorType::F32,
            Stored::Kernel => self.kernel,
            Stored::Dense(kind) => kind,
            Stored::Matrix(_)
                if self.kind.is_blocked() && shape.last().is_some_and(|&n| n % 32 != 0) =>
            {
                TensorType::F16
            }
            Stored::Matrix(_) => self.kind,
        };
        self.w
            .add_from_checkpoint(gguf, self.checkpoint, &hf, stored, move |t| match how {
                Stored::Matrix(scale) | Stored::Vector(scale) if scale != 1.0 => t * scale,
                Stored::Norm => t + 1.0,
                _ => t,
            })
            .map_err(|e| Error::Input(format!("{hf}: {e}")))
    }

    /// Adds checkpoint vector (or lookup table) `hf` as `gguf`, in f32 as it is.
    fn vector(&mut self, gguf: &str, hf: String) -> Result<()> {
        self.add(gguf, hf, Stored::Vector(1.0))
    }

    /// The tower's embeddings and its first `layers` layers, and its final norm when `post_norm`.
    fn tower(&mut self, tower: &Tower, layers: i64, post_norm: bool) -> Result<()> {
        let prefix = self.checkpoint.require_prefix(
            "embeddings.patch_embedding.weight",
            "the vision tower's embeddings.patch_embedding.weight",
        )?;
        let t = |n: &str| format!("{prefix}{n}");
        self.add(
            "v.patch_embd.weight",
            t("embeddings.patch_embedding.weight"),
            Stored::Kernel,
        )?;
        if self
            .checkpoint
            .info(&t("embeddings.patch_embedding.bias"))
            .is_some()
        {
            self.vector("v.patch_embd.bias", t("embeddings.patch_embedding.bias"))?;
        }
        if tower.class_token {
            self.vector("v.class_embd", t("embeddings.class_embedding"))?;
        }
        self.vector(
            "v.position_embd.weight",
            t("embeddings.position_embedding.weight"),
        )?;
        if tower.pre_norm {
            self.vector("v.pre_ln.weight", t("pre_layrnorm.weight"))?;
            self.vector("v.pre_ln.bias", t("pre_layrnorm.bias"))?;
        }
        for i in 0..layers {
            let layer = |n: &str| t(&format!("encoder.layers.{i}.{n}"));
            let pairs = [
                ("attn_q", "self_attn.q_proj"),
                ("attn_k", "self_attn.k_proj"),
                ("attn_v", "self_attn.v_proj"),
                ("attn_out", "self_attn.out_proj"),
                ("ln1", "layer_norm1"),
                ("ln2", "layer_norm2"),
                // llama.cpp's converter's names, which its `mlp` and `gemma3` loaders swap
                // back (the only naming that survives the swap when the MLP is as wide as
                // the tower).
                ("ffn_down", "mlp.fc1"),
                ("ffn_up", "mlp.fc2"),
            ];
            for (gguf, hf) in pairs {
                let how = if gguf.starts_with("ln") {
                    Stored::Vector(1.0)
                } else {
                    Stored::Matrix(1.0)
                };
                self.add(
                    &format!("v.blk.{i}.{gguf}.weight"),
                    layer(&format!("{hf}.weight")),
                    how,
                )?;
                self.vector(
                    &format!("v.blk.{i}.{gguf}.bias"),
                    layer(&format!("{hf}.bias")),
                )?;
            }
        }
        if post_norm {
            self.vector("v.post_ln.weight", t("post_layernorm.weight"))?;
            self.vector("v.post_ln.bias", t("post_layernorm.bias"))?;
        }
        Ok(())
    }
}

/// How a checkpoint tensor is stored.
#[derive(Clone, Copy, PartialEq)]
enum Stored {
    /// A 2-D weight times a factor, in the file's type where its rows allow.
    Matrix(f64),
    /// A vector (or a table llama.cpp looks rows up in) times a factor, f32.
    Vector(f64),
    /// A Gemma RMSNorm weight, stored as `1 + w` in f32.
    Norm,
    /// A matrix llama.cpp transposes in its graph, so never block-quantized: in this type.
    Dense(TensorType),
    /// The patch embedding's convolution kernel: f32 or f16.
    Kernel,
}

/// What the file needs to know of the tower.
struct Tower {
    name: &'static str,
    layers: i64,
    hidden: i64,
    intermediate: i64,
    heads: i64,
    eps: f64,
    image_size: i64,
    patch_size: i64,
    class_token: bool,
    pre_norm: bool,
    /// GELU (tanh) in the MLP rather than CLIP's quick GELU.
    gelu: bool,
}

impl Tower {
    fn of(vision: &VisionConfig) -> Result<Tower> {
        let act = |a: &str| match a {
            "quick_gelu" => Ok(false),
            "gelu" | "gelu_pytorch_tanh" | "gelu_new" => Ok(true),
            other => Err(Error::Input(format!(
                "mmproj export: llama.cpp's towers use GELU or quick GELU, not `{other}`"
            ))),
        };
        Ok(match vision {
            VisionConfig::Clip(c) => Tower {
                name: "CLIP",
                layers: c.num_hidden_layers,
                hidden: c.hidden_size,
                intermediate: c.intermediate_size,
                heads: c.num_attention_heads,
                eps: c.layer_norm_eps,
                image_size: c.image_size,
                patch_size: c.patch_size,
                class_token: true,
                pre_norm: true,
                gelu: act(&c.hidden_act)?,
            },
            VisionConfig::Siglip(c) => Tower {
                name: "SigLIP",
                layers: c.num_hidden_layers,
                hidden: c.hidden_size,
                intermediate: c.intermediate_size,
                heads: c.num_attention_heads,
                eps: c.layer_norm_eps,
                image_size: c.image_size,
                patch_size: c.patch_size,
                class_token: false,
                pre_norm: false,
                gelu: act(&c.hidden_act)?,
            },
            VisionConfig::Dinov2(_) => {
                return Err(Error::Input(
                    "mmproj export: llama.cpp's `llava` graph does not apply DINOv2's layer \
                     scales (nor its register tokens): DINOv2 towers cannot run there"
                        .into(),
                ));
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> (LlavaConfig, Checkpoint) {
        let dir = foundation::parity_fixtures().join(name).join("model");
        (
            LlavaConfig::from_file(&dir).unwrap(),
            Checkpoint::open(&dir).unwrap(),
        )
    }

    fn refusal(config: &LlavaConfig, checkpoint: &Checkpoint) -> String {
        let processor = config.image_processor(None).unwrap();
        match mmproj_to_gguf(config, &processor, checkpoint, TensorType::F16, false, "m") {
            Ok(_) => panic!("exported"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn what_llama_cpp_cannot_run_is_refused_with_the_reason() {
        let (dinov2, checkpoint) = fixture("llava-dinov2");
        assert!(refusal(&dinov2, &checkpoint).contains("layer scales"));
        let (mut clip, checkpoint) = fixture("llava-clip");
        clip.vision_feature_select_strategy = "full".into();
        assert!(refusal(&clip, &checkpoint).contains("`default`"));
        clip.vision_feature_select_strategy = "default".into();
        clip.vision_feature_layer = FeatureLayers::Many(vec![-2, -1]);
        assert!(refusal(&clip, &checkpoint).contains("several layers"));
        clip.vision_feature_layer = FeatureLayers::One(-9);
        assert!(refusal(&clip, &checkpoint).contains("not one of the tower's 3 layers"));
        let (paligemma, checkpoint) = fixture("paligemma");
        assert!(refusal(&paligemma, &checkpoint).contains("`paligemma`"));
    }

    #[test]
    fn gemma3_files_hold_every_layer_the_final_norm_and_the_pool() {
        let (gemma3, checkpoint) = fixture("gemma3");
        let processor = gemma3.image_processor(None).unwrap();
        let w = mmproj_to_gguf(
            &gemma3,
            &processor,
            &checkpoint,
            TensorType::Q8_0,
            false,
            "m",
        )
        .unwrap();
        let bytes = w.to_bytes().unwrap();
        let text = String::from_utf8_lossy(&bytes);
        assert!(text.contains("v.blk.2.ffn_down.weight"));
        assert!(text.contains("v.post_ln.weight"));
        assert!(text.contains("mm.soft_emb_norm.weight"));
        assert!(text.contains("clip.vision.projector.scale_factor"));
        assert!(!text.contains("mm.0.weight"));
        assert!(!text.contains("feature_layer"));
    }

    #[test]
    fn the_file_holds_the_layers_the_feature_layer_reaches() {
        let (clip, checkpoint) = fixture("llava-clip");
        let processor = clip.image_processor(None).unwrap();
        let w =
            mmproj_to_gguf(&clip, &processor, &checkpoint, TensorType::Q8_0, false, "m").unwrap();
        let bytes = w.to_bytes().unwrap();
        let text = String::from_utf8_lossy(&bytes);
        // Layer -2 of 3: two layers run, the third is not written.
        assert!(text.contains("v.blk.1.ffn_down.weight"));
        assert!(!text.contains("v.blk.2."));
        assert!(!text.contains("v.post_ln"));
        assert!(text.contains("v.class_embd"));
    }
}
