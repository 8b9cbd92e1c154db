//! `llava train`: one stage of the recipe.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use llava::gemma_lm::LoraSpec;
use llava::trainer::{RunConfig, Summary};

use super::{launch, model_path};

/// Its arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// 1 (connector pretraining) or 2 (instruction finetuning).
    #[arg(long)]
    stage: u8,
    /// Model preset: tiny (a small random-initialised model on the built-in synthetic data, CPU;
    /// tiny-gemma2 and tiny-gemma3 the same with a Gemma 2 or Gemma 3 language model),
    /// paper-2b-clip, paper-2b-dinov2, paper-7b-clip or paper-7b-dinov2 (real checkpoints: give
    /// --lm and --vision, and --data).
    #[arg(long, default_value = "tiny")]
    preset: String,
    /// Gemma checkpoint directory or Hugging Face id such as google/gemma-2b-it (paper presets).
    #[arg(long)]
    lm: Option<PathBuf>,
    /// CLIP or DINOv2 checkpoint directory or Hugging Face id (paper presets).
    #[arg(long)]
    vision: Option<PathBuf>,
    /// cpu, cuda, cuda:N or auto (default: cpu for tiny, auto for the paper presets).
    #[arg(long)]
    device: Option<String>,
    /// Longest sample in tokens, image tokens included (default: 2048; 512 for tiny).
    #[arg(long)]
    max_length: Option<usize>,
    /// Records (a LLaVA JSON list); the built-in synthetic dataset when absent.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Image folder or zip.
    #[arg(long)]
    images: Option<PathBuf>,
    /// Output directory (default: out/pretrain or out/finetune).
    #[arg(long)]
    output: Option<PathBuf>,
    /// Stage 2: the connector file stage 1 wrote (default: out/pretrain/connector.safetensors if it
    /// exists; a seeded random connector otherwise, the paper's skip-pretraining ablation).
    #[arg(long)]
    connector: Option<PathBuf>,
    /// Start stage 2 from a random connector even when stage 1's exists.
    #[arg(long)]
    skip_pretraining: bool,
    /// Peak learning rate.
    #[arg(long)]
    lr: Option<f64>,
    /// Samples per forward pass.
    #[arg(long)]
    micro_batch: Option<usize>,
    /// Samples per optimizer step.
    #[arg(long)]
    global_batch: Option<usize>,
    /// Passes over the data.
    #[arg(long)]
    epochs: Option<usize>,
    /// Stop after this many optimizer steps.
    #[arg(long)]
    max_steps: Option<usize>,
    /// Checkpoint every this many optimizer steps.
    #[arg(long)]
    save_every: Option<usize>,
    /// Continue from this checkpoint directory.
    #[arg(long)]
    resume: Option<PathBuf>,
    /// Seed of the model's start, the data and its order.
    #[arg(long)]
    seed: Option<u64>,
    /// Tiny preset: training images of the built-in synthetic dataset.
    #[arg(long)]
    synthetic_images: Option<usize>,
    /// Stage 2: start from this whole LLaVA directory or Hugging Face id (a released LLaVA-Gemma,
    /// or an earlier run's model/) instead of --lm, --vision and --connector.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Stage 2: train LoRA adapters on the language model instead of all of it (LLaVA's
    /// finetune_lora.sh: r 128, alpha 256, dropout 0.05, every projection; lr 2e-4 and connector
    /// lr 2e-5 on the paper presets). Writes a PEFT adapter directory, adapter/.
    #[arg(long)]
    lora: bool,
    /// LoRA rank (implies --lora).
    #[arg(long)]
    lora_r: Option<i64>,
    /// LoRA alpha: updates are scaled by alpha / r (implies --lora).
    #[arg(long)]
    lora_alpha: Option<f64>,
    /// Dropout on the adapters' input (implies --lora).
    #[arg(long)]
    lora_dropout: Option<f64>,
    /// The projections that get adapters, comma-separated, from q_proj, k_proj, v_proj, o_proj,
    /// gate_proj, up_proj, down_proj (implies --lora; default: all).
    #[arg(long, value_delimiter = ',')]
    lora_targets: Option<Vec<String>>,
    /// Scale LoRA updates by alpha / sqrt(r) (rsLoRA; implies --lora).
    #[arg(long)]
    lora_rslora: bool,
    /// The connector's peak learning rate, when it differs from --lr (LLaVA's mm_projector_lr).
    #[arg(long)]
    connector_lr: Option<f64>,
    /// Keep only each decoder layer's input and recompute the layer in backward: less memory for
    /// activations, about one more forward pass of compute.
    #[arg(long)]
    activation_checkpointing: bool,
    /// Pack each micro-batch's samples into rows of up to --max-length tokens, each sample
    /// attending only to itself (positions restart per sample): the same loss with less padding.
    /// metrics.jsonl's `padding_fraction` says what is left.
    #[arg(long)]
    pack: bool,
    /// Train on N local processes (data parallel on c10d's Gloo), as `torchrun --nproc-per-node
    /// N` would start them; the global batch and sample order stay those of one process. Under
    /// torchrun or Slurm, leave it out: their environment says where this rank sits.
    #[arg(long, default_value_t = 1)]
    nproc_per_node: usize,
    /// With several ranks, keep the whole optimizer state on each (by default each keeps 1/N of
    /// it, as ZeRO-2).
    #[arg(long)]
    no_shard_optimizer: bool,
    /// With several ranks, how long a collective waits for the others before the run stops, in
    /// seconds (a rank that dies is noticed at once; this bounds a hung one).
    #[arg(long, default_value_t = 600)]
    dist_timeout: u64,
}

/// Runs `llava train`.
pub fn run(args: &Args) -> llava::Result<ExitCode> {
    if args.nproc_per_node > 1 && !launch::launched() {
        launch::run_local(args.nproc_per_node)?;
        return Ok(ExitCode::SUCCESS);
    }
    let leader = launch::leader();
    let config = args.config()?;
    if leader {
        announce(&config);
    }
    let start = Instant::now();
    let summary = train(&config, leader)?;
    if leader {
        report(&summary, start, &config);
    }
    Ok(ExitCode::SUCCESS)
}

impl Args {
    /// The run's configuration: the preset's, with what the flags say.
    fn config(&self) -> llava::Result<RunConfig> {
        let default_output = PathBuf::from(if self.stage == 1 {
            "out/pretrain"
        } else {
            "out/finetune"
        });
        let output = self.output.clone().unwrap_or(default_output);
        let mut config = RunConfig::preset(&self.preset, self.stage, output)
            .map_err(|e| llava::Error::Unsupported(e.to_string()))?;
        config.lm = self.lm.as_deref().map(model_path).transpose()?;
        config.vision = self.vision.as_deref().map(model_path).transpose()?;
        if let Some(v) = &self.device {
            config.device = v.clone();
        }
        if let Some(v) = self.max_length {
            config.max_length = v;
        }
        config.data = self.data.clone();
        config.images = self.images.clone();
        config.connector = self.connector();
        self.schedule(&mut config);
        config.resume = self.resume.clone();
        config.model = self.model.as_deref().map(model_path).transpose()?;
        self.lora(&mut config);
        if self.connector_lr.is_some() {
            config.connector_lr = self.connector_lr;
        }
        config.activation_checkpointing = self.activation_checkpointing;
        config.shard_optimizer = !self.no_shard_optimizer;
        config.pack = self.pack;
        config.dist_timeout_s = self.dist_timeout;
        Ok(config)
    }

    /// The connector file to start from: `--connector`, else stage 1's output for stage 2 (unless
    /// `--skip-pretraining` or a whole `--model`, which brings its own).
    fn connector(&self) -> Option<PathBuf> {
        match (&self.connector, self.stage, self.skip_pretraining) {
            (Some(file), _, _) => Some(file.clone()),
            // A whole model brings its own connector.
            (None, _, _) if self.model.is_some() => None,
            (None, 2, false) => {
                Some(PathBuf::from("out/pretrain/connector.safetensors")).filter(|p| p.exists())
            }
            _ => None,
        }
    }

    /// The learning rate, batches, epochs, seed, data size, steps and checkpoints the flags set.
    fn schedule(&self, config: &mut RunConfig) {
        if let Some(v) = self.lr {
            config.lr = v;
        }
        if let Some(v) = self.micro_batch {
            config.micro_batch = v;
        }
        if let Some(v) = self.global_batch {
            config.global_batch = v;
        }
        if let Some(v) = self.epochs {
            config.epochs = v;
        }
        if let Some(v) = self.seed {
            config.seed = v;
        }
        if let Some(v) = self.synthetic_images {
            config.synthetic_images = v;
        }
        config.max_steps = self.max_steps;
        if self.save_every.is_some() {
            config.save_every = self.save_every;
        }
    }

    /// LoRA adapters when any LoRA flag is given, with finetune_lora.sh's learning rates for real
    /// models where the flags do not set them.
    fn lora(&self, config: &mut RunConfig) {
        let lora = self.lora
            || self.lora_r.is_some()
            || self.lora_alpha.is_some()
            || self.lora_dropout.is_some()
            || self.lora_targets.is_some()
            || self.lora_rslora;
        if !lora {
            return;
        }
        let defaults = LoraSpec::llava();
        config.lora = Some(LoraSpec {
            r: self.lora_r.unwrap_or(defaults.r),
            alpha: self.lora_alpha.unwrap_or(defaults.alpha),
            dropout: self.lora_dropout.unwrap_or(defaults.dropout),
            rslora: self.lora_rslora,
            targets: self.lora_targets.clone().unwrap_or(defaults.targets),
        });
        // finetune_lora.sh's rates for real models; the tiny preset keeps its own.
        if !llava::trainer::run::is_tiny(&config.preset) && self.lr.is_none() {
            config.lr = 2e-4;
        }
        if !llava::trainer::run::is_tiny(&config.preset) && self.connector_lr.is_none() {
            config.connector_lr = Some(2e-5);
        }
    }
}

/// Says what is about to train, and from where.
fn announce(config: &RunConfig) {
    eprintln!(
        "stage {} ({}), output {}, connector {}",
        config.stage,
        config.preset,
        config.output.display(),
        match (&config.connector, &config.model) {
            (Some(c), _) => c.display().to_string(),
            (None, Some(m)) => format!("from {}", m.display()),
            (None, None) => "random".into(),
        }
    );
}

/// Trains as `config` says. The leader shows progress: a bar on a terminal; one plain line per
/// step (every tenth on long runs) otherwise.
fn train(config: &RunConfig, leader: bool) -> llava::Result<Summary> {
    let bar = (leader && std::io::IsTerminal::is_terminal(&std::io::stderr())).then(|| {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:30} {pos}/{len} steps  {msg}  {elapsed} elapsed, {eta} left",
            )
            .expect("a valid template"),
        );
        bar
    });
    let summary = llava::trainer::run(config, |m| match &bar {
        Some(bar) => {
            bar.set_length(m.total_steps as u64);
            bar.set_position(m.step as u64);
            bar.set_message(format!(
                "loss {:.4}  {:.0} samples/s  {:.0} tokens/s",
                m.loss, m.samples_per_s, m.tokens_per_s
            ));
        }
        None if m.total_steps <= 1000 || m.step % 10 == 0 || m.step == m.total_steps => {
            eprintln!(
                "step {:>5}/{}  loss {:.4}  lr {:.2e}  grad_norm {:.3}  {:.0} samples/s  {:.0} tokens/s",
                m.step, m.total_steps, m.loss, m.lr, m.grad_norm, m.samples_per_s, m.tokens_per_s
            );
        }
        None => {}
    })
    .map_err(|e| llava::Error::Unsupported(e.to_string()))?;
    if let Some(bar) = bar {
        bar.finish();
    }
    Ok(summary)
}

/// What the run did, since `start`, and where it wrote.
fn report(summary: &Summary, start: Instant, config: &RunConfig) {
    eprintln!(
        "done in {:.1}s: {} steps, {} samples, {} skipped, loss {:.4} -> {:.4}",
        start.elapsed().as_secs_f64(),
        summary.steps,
        summary.samples_seen,
        summary.samples_skipped,
        summary.first_loss,
        summary.final_loss
    );
    if let Some(bytes) = summary.peak_memory_bytes {
        eprintln!("peak memory {:.2} GiB", bytes as f64 / (1u64 << 30) as f64);
    }
    if summary.world_size > 1 {
        eprintln!(
            "{} ranks, {:.1} MiB of optimizer state each",
            summary.world_size,
            summary.optimizer_state_bytes as f64 / (1u64 << 20) as f64
        );
    }
    eprintln!("wrote {}", config.output.display());
}
