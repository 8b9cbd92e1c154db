//! `llava bench-train`: training steps on a random-weight preset.

use std::path::PathBuf;
use std::process::ExitCode;

use super::print_json;

/// Its arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// bench-small, paper-2b-clip or paper-2b-dinov2.
    #[arg(long, default_value = "bench-small")]
    preset: String,
    /// 1 (connector) or 2 (LM + connector).
    #[arg(long, default_value_t = 2)]
    stage: u8,
    /// Samples per step (default: 4 for bench-small; 8 for stage 1 and 4 for stage 2 otherwise).
    #[arg(long)]
    micro_batch: Option<usize>,
    /// Tokens per sample, image included (default: 256 for bench-small; 640 / 1024 otherwise).
    #[arg(long)]
    seq: Option<usize>,
    /// Labelled tokens per sample (default: 96 for bench-small; every text token otherwise).
    #[arg(long)]
    loss_tokens: Option<usize>,
    /// Timed steps.
    #[arg(long, default_value_t = 10)]
    steps: usize,
    /// Untimed warm-up steps.
    #[arg(long, default_value_t = 3)]
    warmup: usize,
    /// cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "auto")]
    device: String,
    /// Print only the JSON object.
    #[arg(long)]
    json: bool,
    /// Also write a kernel-by-kernel profile of two more steps to this file (tab-separated:
    /// total milliseconds, calls, kernel).
    #[arg(long)]
    profile: Option<PathBuf>,
    /// Stage 2: train LoRA adapters of this rank (alpha = 2 r, every projection)
    /// and the connector instead of the whole language model.
    #[arg(long)]
    lora_r: Option<i64>,
    /// Dropout on the adapters' input (with --lora-r).
    #[arg(long, default_value_t = 0.05)]
    lora_dropout: f64,
    /// Recompute each decoder layer in backward.
    #[arg(long)]
    activation_checkpointing: bool,
}

/// Runs `llava bench-train`.
pub fn run(a: &Args) -> llava::Result<ExitCode> {
    let device = llava::foundation::device::parse_device(&a.device)?;
    let small = a.preset == "bench-small";
    let shape = llava::bench::TrainShape {
        stage: a.stage,
        micro_batch: a
            .micro_batch
            .unwrap_or(if small || a.stage == 2 { 4 } else { 8 }),
        seq: a.seq.unwrap_or(if small {
            256
        } else if a.stage == 1 {
            640
        } else {
            1024
        }),
        loss_tokens: a.loss_tokens.or(small.then_some(96)),
        steps: a.steps,
        warmup: a.warmup,
        profile: a.profile.clone(),
        lora: a.lora_r.map(|r| llava::gemma_lm::LoraSpec {
            r,
            alpha: 2.0 * r as f64,
            dropout: a.lora_dropout,
            ..llava::gemma_lm::LoraSpec::llava()
        }),
        activation_checkpointing: a.activation_checkpointing,
    };
    let report = llava::bench::train(&a.preset, device, &shape)?;
    print_json(&report, a.json);
    Ok(ExitCode::SUCCESS)
}
