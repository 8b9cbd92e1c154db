//! The Gemma decoder (Gemma Team, 2024), module for module as `transformers.GemmaForCausalLM`.
//!
//! ```text
//! x = embed_tokens(ids) * sqrt(hidden_size)
//! for each layer:
//!     x = x + o_proj(attention(rope(q_proj(norm(x))), rope(k_proj(norm(x))), v_proj(norm(x))))
//!     x = x + down_proj(gelu_tanh(gate_proj(norm(x))) * up_proj(norm(x)))
//! logits = norm(x) @ embed_tokens^T
//! ```
//! with `norm(x) = x / rms(x) * (1 + w)` computed in f32. Variable names are built from the module
//! tree (`model.layers.3.self_attn.q_proj.weight`), so they are the Hugging Face names.

use std::path::Path;

use foundation::Checkpoint;
use foundation::layers::{Embedding, Linear};
use foundation::quant::{Loading, Quantization, QuantizedWeight};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

use crate::attention::{AttentionPlan, AttentionRecord, Blocks, Packing};
use crate::cache::{KvCache, LayerCache};
use crate::config::GemmaConfig;
use crate::config::LayerType;
use crate::layer::DecoderLayer;
pub use crate::norm::RmsNorm;
use crate::rotary::{CosSin, Rotaries};
use crate::{Error, Result};

/// Whether variable `name` is a decoder layer's linear weight (`model.layers.3.mlp.up_proj.weight`):
/// what quantizing takes besides the head.
fn is_decoder_linear(name: &str) -> bool {
    name.starts_with("model.layers.") && name.ends_with("_proj.weight")
}

/// Label value that carries no loss, as in PyTorch's `CrossEntropyLoss`.
pub const IGNORE_INDEX: i64 = -100;

/// What one forward's layers share: the plan (and the sliding layers' windowed plan) and the
/// rotary tables.
pub(crate) struct LayerInputs<'a> {
    full: &'a AttentionPlan,
    sliding: Option<AttentionPlan>,
    cos_sin: CosSin,
}

/// What a forward pass returns.
#[derive(Debug)]
pub struct ModelOutput {
    /// `[batch, len, hidden]` after the final norm.
    pub last_hidden_state: Tensor,
    /// When asked for: the embeddings, the output of each layer but the last, and the final
    /// normed output, as transformers' `hidden_states` (`num_hidden_layers + 1` tensors).
    pub hidden_states: Vec<Tensor>,
}

/// The Gemma decoder with its language-model head (`GemmaForCausalLM`).
#[derive(Debug)]
pub struct Gemma {
    config: GemmaConfig,
    embed_tokens: Embedding,
    pub(crate) layers: Vec<DecoderLayer>,
    pub(crate) norm: RmsNorm,
    /// `[vocab, hidden]` when the head is not tied to the embedding.
    lm_head: Option<Linear>,
    /// The tied head quantized for inference ([`quantize`](Self::quantize)): the embedding's
    /// own codes, which its lookups read too.
    tied_head_quantized: Option<QuantizedWeight>,
    rotaries: Rotaries,
    /// The causal LM's final soft-cap (Gemma 2); composite heads switch it off.
    final_logit_softcap: Option<f64>,
    /// Added to every rotary position: PaliGemma counts positions from 1.
    position_offset: i64,
    device: Device,
    /// Whether the model is training: switches the adapters' dropout (see [`crate::lora`]).
    pub(crate) training: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Gemma {
    /// Builds a randomly initialised model under `root` (variables `model.*` and, when untied,
    /// `lm_head.weight`), initialised as transformers initialises Gemma.
    pub fn new(root: &tch::nn::Path, config: &GemmaConfig) -> Result<Self> {
        config.validate()?;
        let activation = config.activation()?;
        let model = root.sub("model");
        let embed_tokens = Embedding::new(
            &model.sub("embed_tokens"),
            config.vocab_size,
            config.hidden_size,
            config.initializer_range,
        );
        if let Some(pad) = config
            .pad_token_id
            .filter(|&p| (0..config.vocab_size).contains(&p))
        {
            tch::no_grad(|| {
                let _ = embed_tokens.weight.get(pad).zero_();
            });
        }
        let layers = config
            .layer_types()?
            .into_iter()
            .enumerate()
            .map(|(i, kind)| {
                DecoderLayer::new(&model.sub("layers").sub(i), config, activation, kind)
            })
            .collect();
        let norm = RmsNorm::new(&model.sub("norm"), config.hidden_size, config.rms_norm_eps);
        let lm_head = (!config.tie_word_embeddings).then(|| {
            Linear::new(
                &root.sub("lm_head"),
                config.hidden_size,
                config.vocab_size,
                false,
                config.initializer_range,
            )
        });
        Ok(Gemma {
            config: config.clone(),
            embed_tokens,
            layers,
            norm,
            lm_head,
            tied_head_quantized: None,
            rotaries: Rotaries::new(config, root.device())?,
            final_logit_softcap: config.final_softcap(),
            position_offset: 0,
            device: root.device(),
            training: Default::default(),
        })
    }

    /// Loads a Hugging Face Gemma directory (`config.json` plus one or sharded safetensors files)
    /// onto `device`, with weights converted to `kind`.
    pub fn from_pretrained(
        dir: impl AsRef<Path>,
        device: Device,
        kind: Kind,
    ) -> Result<(VarStore, Self)> {
        let dir = dir.as_ref();
        let config = GemmaConfig::from_file(dir)?;
        let checkpoint = Checkpoint::open(dir)?;
        let loading = Quantization::of_directory(dir)?.map_or(Loading::Dense, Loading::Saved);
        Self::from_checkpoint_as(&config, &checkpoint, device, kind, loading)
    }

    /// [`from_checkpoint`](Self::from_checkpoint) with the linear layers and head loaded as
    /// `loading` says ([`load_as`](Self::load_as)).
    pub fn from_checkpoint_as(
        config: &GemmaConfig,
        checkpoint: &Checkpoint,
        device: Device,
        kind: Kind,
        loading: Loading,
    ) -> Result<(VarStore, Self)> {
        let (vs, mut model) =
            foundation::build_to_load(device, kind, |root| Self::new(root, config))?;
        model.load_as(&vs, checkpoint, loading)?;
        Ok((vs, model))
    }

    /// Builds a model for `config` from `checkpoint`, wherever in it the language model sits.
    pub fn from_checkpoint(
        config: &GemmaConfig,
        checkpoint: &Checkpoint,
        device: Device,
        kind: Kind,
    ) -> Result<(VarStore, Self)> {
        Self::from_checkpoint_as(config, checkpoint, device, kind, Loading::Dense)
    }

    /// Fills this model's variables in `vs` from `checkpoint` as `loading` says: [`load`]
    /// (Self::load), [`load_quantized`](Self::load_quantized) or
    /// [`load_prequantized`](Self::load_prequantized).
    pub fn load_as(
        &mut self,
        vs: &VarStore,
        checkpoint: &Checkpoint,
        loading: Loading,
    ) -> Result<()> {
        match loading {
            Loading::Dense => self.load(vs, checkpoint),
            Loading::Quantize(how) => self.load_quantized(vs, checkpoint, how),
            Loading::Saved(how) => self.load_prequantized(vs, checkpoint, how),
        }
    }

    /// Fills this model's variables in `vs` from `checkpoint`. The language model may sit under any
    /// prefix: `model.` (GemmaForCausalLM), none (GemmaModel), `language_model.model.` or
    /// `model.language_model.` (LLaVA checkpoints).
    pub fn load(&self, vs: &VarStore, checkpoint: &Checkpoint) -> Result<()> {
        let used = self.load_where(vs, checkpoint, |_| true)?;
        Self::reject_unused(checkpoint, &used)
    }

    /// [`load`](Self::load) with the decoder's linear layers quantized as they load (`how`, as
    /// [`quantize`](Self::quantize) does it): one layer's dense weights at a time, so with
    /// variables built by `foundation::build_to_load` (left unwritten until loaded) the process
    /// never holds the whole dense model. CPU only.
    pub fn load_quantized(
        &mut self,
        vs: &VarStore,
        checkpoint: &Checkpoint,
        how: Quantization,
    ) -> Result<()> {
        let mut used = self.load_where(vs, checkpoint, |name| !is_decoder_linear(name))?;
        // The head (and the embedding it may share) first, so its dense table is gone before
        // the layers' codes pile up.
        self.quantize_head(how)?;
        foundation::device::return_freed_host_memory();
        for i in 0..self.layers.len() {
            let layer = format!("model.layers.{i}.");
            used.extend(self.load_where(vs, checkpoint, |name| {
                is_decoder_linear(name) && name.starts_with(&layer)
            })?);
            for (name, linear) in self.layers[i].linears_mut() {
                linear
                    .quantize(how)
                    .map_err(|e| Error::Input(format!("layers.{i}.{name}: {e}")))?;
            }
        }
        Self::reject_unused(checkpoint, &used)?;
        foundation::device::return_freed_host_memory();
        Ok(())
    }

    /// [`load`](Self::load) for a checkpoint whose decoder linear layers and head (a tied
    /// head: the embedding) were saved quantized in form `how` ([`tensors`](Self::tensors)): the
    /// codes and scales are read as they are, the dense variables of those weights (built by
    /// `foundation::build_to_load`, never written) freed. The rest loads as `load` loads it.
    pub fn load_prequantized(
        &mut self,
        vs: &VarStore,
        checkpoint: &Checkpoint,
        how: Quantization,
    ) -> Result<()> {
        let tied = self.lm_head.is_none();
        let quantized = |name: &str| {
            is_decoder_linear(name)
                || name == "lm_head.weight"
                || (tied && name == "model.embed_tokens.weight")
        };
        let mut used = self.load_where(vs, checkpoint, |name| !quantized(name))?;
        let names = Self::checkpoint_names(checkpoint)?;
        let mut read = |var: &str, dense: &mut Tensor| -> Result<QuantizedWeight> {
            let candidates = names(var);
            let Some(found) = candidates
                .iter()
                .find(|c| QuantizedWeight::is_saved(checkpoint, c))
            else {
                return Err(foundation::Error::MissingTensor {
                    name: format!("{var}_codes"),
                    location: checkpoint.location().into(),
                    tried: candidates.iter().map(|c| format!("{c}_codes, ")).collect(),
                }
                .into());
            };
            let size = dense.size();
            let (weight, taken) =
                QuantizedWeight::read(checkpoint, found, how, [size[0], size[1]])?;
            used.extend(taken);
            tch::no_grad(|| {
                let _ = dense.set_();
            });
            Ok(weight)
        };
        for (name, linear) in self.linears_mut() {
            linear.quantized = Some(read(&format!("{name}.weight"), &mut linear.weight)?);
        }
        match &mut self.lm_head {
            Some(head) => head.quantized = Some(read("lm_head.weight", &mut head.weight)?),
            None => {
                let codes = read("model.embed_tokens.weight", &mut self.embed_tokens.weight)?;
                self.tied_head_quantized = Some(codes.share());
                self.embed_tokens.quantized = Some(codes);
            }
        }
        Self::reject_unused(checkpoint, &used)
    }

    /// Which form the quantized weights are in (`None`: the model is dense).
    pub fn quantization(&self) -> Option<Quantization> {
        self.quantized_weights().first().map(|(_, q)| q.how())
    }

    /// The quantized weights under their variables' names (a tied head's are the embedding's).
    fn quantized_weights(&self) -> Vec<(String, &QuantizedWeight)> {
        let mut out: Vec<(String, &QuantizedWeight)> = self
            .linears()
            .into_iter()
            .filter_map(|(name, linear)| {
                Some((format!("{name}.weight"), linear.quantized.as_ref()?))
            })
            .collect();
        if let Some(q) = self.lm_head.as_ref().and_then(|h| h.quantized.as_ref()) {
            out.push(("lm_head.weight".to_string(), q));
        }
        if let Some(q) = &self.embed_tokens.quantized {
            out.push(("model.embed_tokens.weight".to_string(), q));
        }
        out
    }

    /// The model's tensors as a checkpoint holds them, under `vs`'s names (HF's): the dense
    /// variables as they are, each quantized weight as [`QuantizedWeight::tensors`] saves it in
    /// place of its emptied variable; sorted by name. [`load`](Self::load) or, quantized,
    /// [`load_prequantized`](Self::load_prequantized) reads them back.
    pub fn tensors(&self, vs: &VarStore) -> Vec<(String, Tensor)> {
        let quantized = self.quantized_weights();
        let mut out: Vec<(String, Tensor)> = vs
            .variables()
            .into_iter()
            .filter(|(name, _)| !quantized.iter().any(|(q, _)| q == name))
            .map(|(name, t)| (name, t.detach()))
            .collect();
        for (name, q) in &quantized {
            out.extend(q.tensors(name));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Fills the variables whose names `wanted` accepts; the checkpoint names used.
    fn load_where(
        &self,
        vs: &VarStore,
        checkpoint: &Checkpoint,
        wanted: impl Fn(&str) -> bool,
    ) -> Result<Vec<String>> {
        let names = Self::checkpoint_names(checkpoint)?;
        Ok(checkpoint.load_into(vs, |name| {
            if wanted(name) {
                names(name)
            } else {
                Vec::new()
            }
        })?)
    }

    /// Where the decoder sits in `checkpoint` (`model.`, `language_model.model.`, …), found by
    /// its embedding, dense or saved quantized.
    fn prefix(checkpoint: &Checkpoint) -> Result<String> {
        match checkpoint.prefix_of("embed_tokens.weight_codes") {
            Some(prefix) => Ok(prefix),
            None => Ok(
                checkpoint.require_prefix("embed_tokens.weight", "model.embed_tokens.weight")?
            ),
        }
    }

    /// The checkpoint names to try for a variable, wherever in `checkpoint` the language model
    /// sits.
    fn checkpoint_names(checkpoint: &Checkpoint) -> Result<impl Fn(&str) -> Vec<String>> {
        let prefix = Self::prefix(checkpoint)?;
        // Where an untied head sits next to the decoder: `lm_head.weight` beside `model.`, or
        // `language_model.lm_head.weight` beside `language_model.model.`.
        let outer = prefix.strip_suffix("model.").unwrap_or("").to_string();
        Ok(move |name: &str| match name.strip_prefix("model.") {
            Some(rest) => vec![format!("{prefix}{rest}")],
            None => vec![format!("{outer}{name}"), name.to_string()],
        })
    }

    /// Every tensor of the decoder must be taken (old files keep rotary buffers, which are
    /// recomputed): a Gemma 2 checkpoint read as Gemma 1 leaves its extra norms behind.
    fn reject_unused(checkpoint: &Checkpoint, used: &[String]) -> Result<()> {
        let prefix = Self::prefix(checkpoint)?;
        checkpoint.reject_unused(&prefix, used, |name| name.ends_with("rotary_emb.inv_freq"))?;
        Ok(())
    }

    /// Grows the vocabulary to `size` tokens (for added tokens such as LLaVA's `<image>`): new
    /// embedding rows (and head rows, when untied) start at the mean of the existing ones, as
    /// transformers' `resize_token_embeddings` centres them.
    pub fn resize_vocab(&mut self, size: i64) -> Result<()> {
        let old = self.config.vocab_size;
        if size < old {
            return Err(Error::Input(format!(
                "cannot shrink the vocabulary from {old} to {size}"
            )));
        }
        if size == old {
            return Ok(());
        }
        let grow = |weight: &mut Tensor| {
            tch::no_grad(|| {
                let mean = weight.mean_dim(0, true, weight.kind());
                let extra = mean.expand([size - old, weight.size()[1]], false);
                let grown = Tensor::cat(&[&*weight, &extra], 0);
                weight.set_data(&grown);
            })
        };
        grow(&mut self.embed_tokens.weight);
        if let Some(head) = &mut self.lm_head {
            grow(&mut head.weight);
        }
        self.config.vocab_size = size;
        Ok(())
    }

    /// The configuration.
    pub fn config(&self) -> &GemmaConfig {
        &self.config
    }

    /// The device the weights live on.
    pub fn device(&self) -> Device {
        self.device
    }

    /// The dtype of the weights (and of the computation).
    pub fn kind(&self) -> Kind {
        self.embed_tokens.weight.kind()
    }

    /// Token embeddings scaled by `sqrt(hidden_size)` (the scale rounded to the weights' dtype, as
    /// transformers does). This is where LLaVA inserts image features.
    ///
    /// The scale stays a host scalar, an argument of the multiplication's kernel: copying it to
    /// the device would wait for the device, and could not be recorded in a CUDA graph.
    pub fn embed(&self, input_ids: &Tensor) -> Tensor {
        let scale = Tensor::from((self.config.hidden_size as f64).sqrt()).to_kind(self.kind());
        self.embed_tokens.forward(&input_ids.to_device(self.device)) * scale
    }

    /// Runs the decoder on input embeddings `[batch, len, hidden]` (already scaled, see
    /// [`embed`](Self::embed)). With a cache, the new tokens follow the cached ones and the cache
    /// grows by `len`. See [`AttentionPlan::new`] for `padding`.
    pub fn forward_embeds(
        &self,
        embeds: &Tensor,
        padding: Option<&Tensor>,
        cache: Option<&mut KvCache>,
        output_hidden_states: bool,
    ) -> Result<ModelOutput> {
        self.forward_embeds_with(embeds, padding, None, cache, output_hidden_states)
    }

    /// [`forward_embeds`](Self::forward_embeds) with `blocks` of the new tokens that attend to
    /// each other both ways (Gemma 3's images, PaliGemma's prefix; see [`Blocks`]).
    pub fn forward_embeds_with(
        &self,
        embeds: &Tensor,
        padding: Option<&Tensor>,
        blocks: Option<&Blocks>,
        cache: Option<&mut KvCache>,
        output_hidden_states: bool,
    ) -> Result<ModelOutput> {
        self.forward_recording(embeds, padding, blocks, cache, output_hidden_states, None)
    }

    /// Runs the decoder on `embeds` (no cache) as [`forward_embeds_with`](Self::forward_embeds_with)
    /// does, with every layer's attention computed eagerly and its probabilities
    /// `[batch, heads, len, len]` returned in layer order, in the autograd graph when `embeds`
    /// requires grad (transformers' `output_attentions` with eager attention).
    pub fn forward_with_attentions(
        &self,
        embeds: &Tensor,
        padding: Option<&Tensor>,
        blocks: Option<&Blocks>,
    ) -> Result<(ModelOutput, Vec<Tensor>)> {
        let record = AttentionRecord::default();
        let out = self.forward_recording(embeds, padding, blocks, None, false, Some(&record))?;
        Ok((out, record.take()))
    }

    fn forward_recording(
        &self,
        embeds: &Tensor,
        padding: Option<&Tensor>,
        blocks: Option<&Blocks>,
        mut cache: Option<&mut KvCache>,
        output_hidden_states: bool,
        record: Option<&AttentionRecord>,
    ) -> Result<ModelOutput> {
        let (b, l) = self.check_embeds(embeds)?;
        self.check_blocks(blocks, b, l)?;
        let past = cache.as_ref().map_or(0, |c| c.len());
        if let Some(c) = &cache
            && past + l > c.capacity()
        {
            return Err(Error::Input(format!(
                "{} cached + {l} new tokens exceed the cache's {} positions",
                past,
                c.capacity()
            )));
        }
        if let Some(p) = padding
            && p.size() != [b, past + l]
        {
            return Err(Error::Input(format!(
                "padding mask must be [{b}, {}], got {:?}",
                past + l,
                p.size()
            )));
        }
        let mut plan = AttentionPlan::new(padding, b, l, past, self.device, self.kind());
        if let Some(blocks) = blocks {
            plan = plan.with_blocks(blocks, self.kind());
        }
        if let Some(record) = record {
            plan = plan.recording(record);
        }
        let inputs = self.layer_inputs(&plan);
        let mut hidden_states = Vec::new();
        let mut x = embeds.to_device(self.device).to_kind(self.kind());
        for i in 0..self.layers.len() {
            if output_hidden_states {
                hidden_states.push(x.shallow_clone());
            }
            let cache = cache.as_deref_mut().map(|c| (c as &mut dyn LayerCache, i));
            x = self.run_layer(i, &x, &inputs, cache);
        }
        let last_hidden_state = self.norm.forward(&x);
        if output_hidden_states {
            hidden_states.push(last_hidden_state.shallow_clone());
        }
        if let Some(c) = cache {
            c.advance(l);
        }
        Ok(ModelOutput {
            last_hidden_state,
            hidden_states,
        })
    }

    /// Runs the decoder on input embeddings `[batch, len, hidden]` with an explicit attention
    /// plan and a cache of any layout (the slot cache of [`crate::batch`]); returns the last hidden
    /// state after the final norm. The caller checks shapes and advances its cache.
    pub fn forward_planned(
        &self,
        embeds: &Tensor,
        plan: &AttentionPlan,
        cache: &mut dyn LayerCache,
    ) -> Tensor {
        let inputs = self.layer_inputs(plan);
        let mut x = embeds.to_device(self.device).to_kind(self.kind());
        for i in 0..self.layers.len() {
            x = self.run_layer(i, &x, &inputs, Some((&mut *cache, i)));
        }
        self.norm.forward(&x)
    }

    /// Trains through the decoder with activation checkpointing: runs the layers on `embeds`
    /// `[batch, len, hidden]` (a training batch: causal attention, right padding) keeping only each
    /// layer's input, applies `head` to the final normed hidden states (it returns the loss to
    /// backpropagate and whatever the caller wants back), backpropagates, and then recomputes the
    /// layers one at a time from the last, each with autograd, to carry the gradient down to
    /// `embeds` (and through it to whatever made them). Gradients are those of the plain path;
    /// the memory of the activations is one layer's plus each layer's input.
    ///
    /// Adapter dropout draws the same masks in the recomputation as in the first pass: each layer
    /// runs from a seed drawn for it (libtorch's generator is reseeded).
    pub fn backward_checkpointed<R>(
        &self,
        embeds: &Tensor,
        head: impl FnOnce(&Tensor) -> Result<(Tensor, R)>,
    ) -> Result<R> {
        self.backward_checkpointed_packed(embeds, None, head)
    }

    /// [`backward_checkpointed`](Self::backward_checkpointed) for a batch that may be packed.
    pub fn backward_checkpointed_packed<R>(
        &self,
        embeds: &Tensor,
        packing: Option<&Packing>,
        head: impl FnOnce(&Tensor) -> Result<(Tensor, R)>,
    ) -> Result<R> {
        self.backward_checkpointed_with(embeds, packing, None, head)
    }

    /// [`backward_checkpointed`](Self::backward_checkpointed) for a batch that may be packed and
    /// may have bidirectional [`Blocks`].
    pub fn backward_checkpointed_with<R>(
        &self,
        embeds: &Tensor,
        packing: Option<&Packing>,
        blocks: Option<&Blocks>,
        head: impl FnOnce(&Tensor) -> Result<(Tensor, R)>,
    ) -> Result<R> {
        let plan = self.train_plan(embeds, packing, blocks)?;
        let inputs = self.layer_inputs(&plan);
        let dropout = self.training.load(std::sync::atomic::Ordering::Relaxed)
            && self
                .layers
                .iter()
                .flat_map(|l| l.linears())
                .any(|(_, l)| l.lora.as_ref().is_some_and(|a| a.dropout > 0.0));
        let seeds: Vec<Option<i64>> = self
            .layers
            .iter()
            .map(|_| {
                dropout.then(|| {
                    Tensor::randint(i64::MAX, [1], (Kind::Int64, Device::Cpu)).int64_value(&[0])
                })
            })
            .collect();
        let run = |i: usize, x: &Tensor| {
            if let Some(seed) = seeds[i] {
                tch::manual_seed(seed);
            }
            self.run_layer(i, x, &inputs, None)
        };
        let first = embeds.to_device(self.device).to_kind(self.kind());
        let mut inputs = Vec::with_capacity(self.layers.len());
        let mut x = first.detach();
        tch::no_grad(|| {
            for i in 0..self.layers.len() {
                let next = run(i, &x);
                inputs.push(std::mem::replace(&mut x, next));
            }
        });
        let last = x.set_requires_grad(true);
        let (loss, out) = head(&self.norm.forward(&last))?;
        loss.backward();
        let mut grad = last.grad();
        for i in (0..self.layers.len()).rev() {
            let input = inputs
                .pop()
                .expect("one input per layer")
                .set_requires_grad(true);
            if grad.defined() {
                (run(i, &input) * &grad).sum(Kind::Float).backward();
            }
            grad = input.grad();
        }
        if grad.defined() && first.requires_grad() {
            (first * grad).sum(Kind::Float).backward();
        }
        Ok(out)
    }

    /// Runs the decoder on a packed training batch's input embeddings `[batch, len, hidden]`
    /// (see [`Packing`]); returns the last hidden state after the final norm.
    pub fn forward_packed(&self, embeds: &Tensor, packing: &Packing) -> Result<Tensor> {
        self.forward_train(embeds, Some(packing), None)
    }

    /// Runs the decoder on a training batch's input embeddings `[batch, len, hidden]`: causal
    /// attention over right padding, or `packing`'s samples, with `blocks` opened both ways.
    /// Returns the last hidden state after the final norm.
    pub fn forward_train(
        &self,
        embeds: &Tensor,
        packing: Option<&Packing>,
        blocks: Option<&Blocks>,
    ) -> Result<Tensor> {
        let plan = self.train_plan(embeds, packing, blocks)?;
        let inputs = self.layer_inputs(&plan);
        let mut x = embeds.to_device(self.device).to_kind(self.kind());
        for i in 0..self.layers.len() {
            x = self.run_layer(i, &x, &inputs, None);
        }
        Ok(self.norm.forward(&x))
    }

    /// The attention plan of a training batch (see [`forward_train`](Self::forward_train)).
    fn train_plan(
        &self,
        embeds: &Tensor,
        packing: Option<&Packing>,
        blocks: Option<&Blocks>,
    ) -> Result<AttentionPlan> {
        let (b, l) = self.check_embeds(embeds)?;
        self.check_blocks(blocks, b, l)?;
        let plan = match (packing, blocks) {
            (Some(packing), None) => {
                self.check_packing(packing, b, l)?;
                AttentionPlan::packed(packing, self.device, self.kind())
            }
            (Some(packing), Some(_)) => {
                self.check_packing(packing, b, l)?;
                AttentionPlan::packed_masked(packing, self.device, self.kind())
            }
            (None, _) => AttentionPlan::new(None, b, l, 0, self.device, self.kind()),
        };
        Ok(match blocks {
            Some(blocks) => plan.with_blocks(blocks, self.kind()),
            None => plan,
        })
    }

    fn check_blocks(&self, blocks: Option<&Blocks>, b: i64, l: i64) -> Result<()> {
        match blocks {
            Some(blocks) if blocks.ids.size() != [b, l] => Err(Error::Input(format!(
                "attention blocks {:?} do not match the batch's [{b}, {l}]",
                blocks.ids.size()
            ))),
            _ => Ok(()),
        }
    }

    fn check_packing(&self, packing: &Packing, b: i64, l: i64) -> Result<()> {
        for (name, t) in [
            ("positions", &packing.positions),
            ("segments", &packing.segments),
        ] {
            if t.size() != [b, l] {
                return Err(Error::Input(format!(
                    "packing {name} {:?} do not match the batch's [{b}, {l}]",
                    t.size()
                )));
            }
        }
        Ok(())
    }

    /// Runs the model on token ids `[batch, len]`.
    pub fn forward(
        &self,
        input_ids: &Tensor,
        padding: Option<&Tensor>,
        cache: Option<&mut KvCache>,
        output_hidden_states: bool,
    ) -> Result<ModelOutput> {
        self.check_ids(input_ids)?;
        self.forward_embeds(&self.embed(input_ids), padding, cache, output_hidden_states)
    }

    /// Counts rotary positions from `offset` instead of 0 (PaliGemma's are 1-based).
    pub fn set_position_offset(&mut self, offset: i64) {
        self.position_offset = offset;
    }

    /// The language-model head: logits over the vocabulary for hidden states `[..., hidden]`,
    /// soft-capped as the causal LM caps them (Gemma 2: `c * tanh(logits / c)`), unless
    /// [`set_final_logit_softcap`](Self::set_final_logit_softcap) switched that off.
    pub fn logits(&self, hidden: &Tensor) -> Tensor {
        let logits = match (&self.lm_head, &self.tied_head_quantized) {
            (Some(head), _) => head.forward(hidden),
            (None, Some(head)) => head.matmul(hidden),
            (None, None) => foundation::cpu_gemv::linear(hidden, &self.embed_tokens.weight)
                .unwrap_or_else(|| hidden.matmul(&self.embed_tokens.weight.tr())),
        };
        match self.final_logit_softcap {
            Some(cap) => (logits / cap).tanh() * cap,
            None => logits,
        }
    }

    /// Quantizes the model for inference as `how` says (`foundation::quant`: int8 per row or
    /// int4 per group; adapters merged first, dense weights freed): every decoder layer's linear
    /// layer and the head; a tied head and its embedding share one set of codes, which lookups
    /// dequantize. Returns how many decoder linear layers. The CPU only. An error names the layer
    /// whose shape the form cannot take.
    /// A model already quantized (loaded from a quantized save) stays as it is in the same
    /// form; another form is an error.
    pub fn quantize(&mut self, how: Quantization) -> Result<usize> {
        if let Some(current) = self.quantization() {
            if current != how {
                return Err(Error::Input(format!(
                    "the model is quantized as {current} already; it cannot become {how}"
                )));
            }
            return Ok(self.linears().len());
        }
        let linears = self.linears_mut();
        let n = linears.len();
        for (name, linear) in linears {
            linear
                .quantize(how)
                .map_err(|e| Error::Input(format!("{name}: {e}")))?;
        }
        self.quantize_head(how)?;
        foundation::device::return_freed_host_memory();
        Ok(n)
    }

    /// The head's part of [`quantize`](Self::quantize) (and a tied head's embedding).
    fn quantize_head(&mut self, how: Quantization) -> Result<()> {
        match &mut self.lm_head {
            Some(head) => head
                .quantize(how)
                .map_err(|e| Error::Input(format!("lm_head: {e}")))?,
            // The tied head multiplies with the embedding's own codes.
            None => {
                self.embed_tokens
                    .quantize(how)
                    .map_err(|e| Error::Input(format!("the tied embedding and head: {e}")))?;
                self.tied_head_quantized = self
                    .embed_tokens
                    .quantized
                    .as_ref()
                    .map(QuantizedWeight::share);
            }
        }
        Ok(())
    }

    /// The final soft-cap [`logits`](Self::logits) applies.
    pub fn final_logit_softcap(&self) -> Option<f64> {
        self.final_logit_softcap
    }

    /// Sets the final soft-cap. A vision-language model's head calls the LM head without it, as
    /// transformers' `LlavaForConditionalGeneration`, `PaliGemma…` and `Gemma3ForConditional…` do
    /// (their logits and loss differ from the causal LM's; the argmax does not).
    pub fn set_final_logit_softcap(&mut self, cap: Option<f64>) {
        self.final_logit_softcap = cap;
    }

    /// The plans and rotary tables one forward's layers share, per layer type.
    pub(crate) fn layer_inputs<'a>(&self, plan: &'a AttentionPlan) -> LayerInputs<'a> {
        let sliding = self
            .layers
            .iter()
            .any(|l| l.layer_type == LayerType::SlidingAttention);
        let window = self.config.window().filter(|_| sliding);
        LayerInputs {
            full: plan,
            sliding: window.map(|w| plan.windowed(w, self.kind())),
            cos_sin: match self.position_offset {
                0 => self.rotaries.cos_sin(&plan.positions, self.kind()),
                offset => self
                    .rotaries
                    .cos_sin(&(&plan.positions + offset), self.kind()),
            },
        }
    }

    /// Layer `i` on `x` with its type's plan and rotary table.
    pub(crate) fn run_layer(
        &self,
        i: usize,
        x: &Tensor,
        inputs: &LayerInputs<'_>,
        cache: Option<(&mut dyn LayerCache, usize)>,
    ) -> Tensor {
        let layer = &self.layers[i];
        let plan = match (&inputs.sliding, layer.layer_type) {
            (Some(sliding), LayerType::SlidingAttention) => sliding,
            _ => inputs.full,
        };
        layer.forward(x, inputs.cos_sin.of(layer.layer_type), plan, cache)
    }

    /// The causal-LM loss for `hidden` `[batch, len, hidden]` and `labels` `[batch, len]` aligned
    /// with the inputs: position `t` predicts `labels[t + 1]`; [`IGNORE_INDEX`] carries no loss; the
    /// mean is over the labelled positions. Logits are computed only at those positions (in f32):
    /// with a 256k vocabulary the full logits would be the largest tensor of a training step.
    ///
    /// Returns the loss and the number of labelled positions. With none, the loss is a zero that
    /// still carries a gradient path, so a step over it is a no-op rather than NaN.
    pub fn loss(&self, hidden: &Tensor, labels: &Tensor) -> Result<(Tensor, i64)> {
        let (hs, ls) = (hidden.size(), labels.size());
        if hs.len() != 3 || ls.len() != 2 || hs[..2] != ls[..] {
            return Err(Error::Input(format!(
                "labels {ls:?} do not match hidden states {hs:?}"
            )));
        }
        let (b, l, h) = (hs[0], hs[1], hs[2]);
        if l < 2 {
            return Ok((hidden.sum(Kind::Float) * 0.0, 0));
        }
        // Labels on the host are searched there and uploaded without waiting for the device
        // (finding the labelled positions on it would wait for everything queued before).
        let targets = labels.narrow(1, 1, l - 1).reshape([-1]);
        let keep = targets.ne(IGNORE_INDEX).nonzero().squeeze_dim(1);
        let (targets, keep) = (
            foundation::device::upload(&targets, self.device),
            foundation::device::upload(&keep, self.device),
        );
        let count = keep.size()[0];
        if count == 0 {
            return Ok((hidden.sum(Kind::Float) * 0.0, 0));
        }
        let selected = hidden
            .narrow(1, 0, l - 1)
            .reshape([b * (l - 1), h])
            .index_select(0, &keep);
        let logits = self.logits(&selected).to_kind(Kind::Float);
        let loss = logits.cross_entropy_loss::<Tensor>(
            &targets.index_select(0, &keep),
            None,
            tch::Reduction::Mean,
            IGNORE_INDEX,
            0.0,
        );
        Ok((loss, count))
    }

    /// `(batch, len)` of input embeddings, which must be `[batch, len, hidden]`.
    fn check_embeds(&self, embeds: &Tensor) -> Result<(i64, i64)> {
        let size = embeds.size();
        if size.len() != 3 || size[2] != self.config.hidden_size {
            return Err(Error::Input(format!(
                "embeddings must be [batch, len, {}], got {size:?}",
                self.config.hidden_size
            )));
        }
        Ok((size[0], size[1]))
    }

    fn check_ids(&self, ids: &Tensor) -> Result<()> {
        if ids.dim() != 2 || ids.kind() != Kind::Int64 {
            return Err(Error::Input(format!(
                "input ids must be an int64 [batch, len] tensor, got {:?} {:?}",
                ids.kind(),
                ids.size()
            )));
        }
        if ids.numel() > 0 {
            let (min, max) = (ids.min().int64_value(&[]), ids.max().int64_value(&[]));
            if min < 0 || max >= self.config.vocab_size {
                return Err(Error::Input(format!(
                    "token id {} is outside the vocabulary of {}",
                    if min < 0 { min } else { max },
                    self.config.vocab_size
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segments(rows: &[&[i64]]) -> Tensor {
        let flat: Vec<i64> = rows.iter().flat_map(|r| r.iter().copied()).collect();
        Tensor::from_slice(&flat).view([rows.len() as i64, rows[0].len() as i64])
    }

    #[test]
    fn sequences_laid_end_to_end_attend_as_the_block_diagonal_mask() {
        let _rng = crate::global_rng();
        tch::manual_seed(3);
        let vs = VarStore::new(Device::Cpu);
        let config = GemmaConfig::tiny(64); // one key/value head for four query heads
        let model = Gemma::new(&vs.root(), &config).unwrap();
        let packing = Packing {
            positions: Tensor::from_slice(&[0i64, 1, 2, 0, 1, 0, 0, 1, 2, 3, 0, 1]).view([2, 6]),
            segments: segments(&[&[0, 0, 0, 1, 1, -1], &[0, 0, 0, 0, 1, 1]]),
        };
        let embeds = Tensor::randn([2, 6, config.hidden_size], (Kind::Float, Device::Cpu));
        let run = |plan: &AttentionPlan| {
            let inputs = model.layer_inputs(plan);
            let mut x = embeds.shallow_clone();
            for i in 0..model.layers.len() {
                x = model.run_layer(i, &x, &inputs, None);
            }
            x
        };
        let varlen = AttentionPlan::packed(&packing, Device::Cpu, Kind::Float);
        assert!(varlen.is_varlen());
        let masked = AttentionPlan::packed_masked(&packing, Device::Cpu, Kind::Float);
        let keep = packing.segments.ge(0).unsqueeze(-1);
        let (a, b) = (run(&varlen) * &keep, run(&masked) * &keep);
        assert!(a.allclose(&b, 1e-5, 1e-5, false), "{}", (a - b).abs().max());
    }
}
