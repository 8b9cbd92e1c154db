//! `llava plan`: the memory a training step needs per device, by arithmetic on a preset's shapes
//! (see `trainer::plan` for the model and its assumptions).

use std::process::ExitCode;

use trainer::plan::{self, GIB, Plan, PlanConfig, PlanDevice};

use super::print_json;

/// Its arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// tiny, bench-small, paper-2b-clip, paper-2b-dinov2, paper-7b-clip or paper-7b-dinov2.
    #[arg(long)]
    preset: String,
    /// Samples per micro-batch on each device.
    #[arg(long)]
    micro_batch: u64,
    /// Tokens per sample, image tokens included.
    #[arg(long)]
    seq: u64,
    /// Labelled tokens per sample (default: every text token).
    #[arg(long)]
    loss_tokens: Option<u64>,
    /// 1 (connector) or 2 (connector and LM).
    #[arg(long, default_value_t = 2)]
    stage: u8,
    /// Devices the optimizer state and gradients are sharded over (ZeRO-2).
    #[arg(long, default_value_t = 1)]
    gpus: u64,
    /// Memory of one device in GB (10^9 bytes).
    #[arg(long, default_value_t = 80.0)]
    gpu_memory: f64,
    /// Stage 2 with LoRA adapters (f32) on q, k, v, o, gate, up, down; the connector trains fully.
    #[arg(long)]
    lora: bool,
    /// LoRA rank.
    #[arg(long, default_value_t = 128)]
    lora_r: u64,
    /// Keep only each layer's input; recompute the layer in the backward pass.
    #[arg(long)]
    activation_checkpointing: bool,
    /// LoRA dropout (0 for none): dropout keeps a copy of each adapted input and its mask.
    #[arg(long, default_value_t = 0.05)]
    lora_dropout: f64,
    /// cuda (bf16 weights, f32 masters) or cpu (everything f32).
    #[arg(long, default_value = "cuda")]
    device: String,
    /// Print only the JSON object.
    #[arg(long)]
    json: bool,
}

/// Runs `llava plan`.
pub fn run(a: &Args) -> llava::Result<ExitCode> {
    let unsupported = |m: String| llava::Error::Unsupported(m);
    let config = plan::preset(&a.preset).ok_or_else(|| {
        unsupported(format!(
            "unknown preset `{}` (one of {})",
            a.preset,
            plan::PRESETS.join(", ")
        ))
    })?;
    let shape = plan::ModelShape::of(&config).map_err(unsupported)?;
    let device = match a.device.as_str() {
        "cuda" => PlanDevice::Cuda,
        "cpu" => PlanDevice::Cpu,
        other => return Err(unsupported(format!("--device {other} (cuda or cpu)"))),
    };
    if !(1..=2).contains(&a.stage) {
        return Err(unsupported(format!("stage {} (1 or 2)", a.stage)));
    }
    let p = plan::plan(
        &shape,
        &PlanConfig {
            stage: a.stage,
            micro_batch: a.micro_batch,
            seq: a.seq,
            loss_tokens: a.loss_tokens,
            gpus: a.gpus.max(1),
            lora_rank: a.lora.then_some(a.lora_r),
            lora_dropout: a.lora && a.lora_dropout > 0.0,
            activation_checkpointing: a.activation_checkpointing,
            device,
            memory_bytes: (a.gpu_memory * 1e9) as u64,
        },
    );
    if a.json {
        print_json(&p, true);
    } else {
        print_table(&a.preset, &p);
    }
    Ok(ExitCode::SUCCESS)
}

fn print_table(preset: &str, p: &Plan) {
    let c = &p.config;
    let gib = |b: u64| b as f64 / GIB;
    println!(
        "{preset}, stage {}, {} x {} tokens, {:?}{}{}{}",
        c.stage,
        c.micro_batch,
        c.seq,
        c.device,
        if c.gpus > 1 {
            format!(", {} devices (optimizer state sharded)", c.gpus)
        } else {
            String::new()
        },
        c.lora_rank
            .map_or(String::new(), |r| format!(", LoRA r={r}")),
        if c.activation_checkpointing {
            ", activation checkpointing"
        } else {
            ""
        },
    );
    println!(
        "parameters: vision {:.1}M, connector {:.1}M, LM {:.1}M, LoRA {:.1}M; trainable {:.1}M",
        p.params.vision as f64 / 1e6,
        p.params.connector as f64 / 1e6,
        p.params.lm as f64 / 1e6,
        p.params.lora as f64 / 1e6,
        p.params.trainable as f64 / 1e6,
    );
    for (name, bytes) in [
        ("weights", p.weights),
        ("gradients", p.gradients),
        ("f32 master weights", p.master_weights),
        ("AdamW moments (f32)", p.moments),
        ("activations", p.activations),
        ("  of which logits", p.logits),
        ("optimizer-step transient", p.optimizer_transient),
        ("context/workspace", p.context),
    ] {
        println!("{name:<26} {:>9.2} GiB", gib(bytes));
    }
    println!(
        "{:<26} {:>9.2} GiB  ({} the {:.0} GB device)",
        "peak per device",
        gib(p.total),
        if p.fits { "fits" } else { "does NOT fit" },
        c.memory_bytes as f64 / 1e9
    );
}
