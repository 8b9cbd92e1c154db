//! `llava bench-train`: training steps on a random-weight preset, on one rank or on several
//! (`--nproc-per-node`, against one rank measured in the same run).

mod inputs;
mod steps;

use std::path::PathBuf;
use std::process::ExitCode;
use std::rc::Rc;

use llava::trainer::dist::{Backend, DistError, Launch, ProcessGroup};
use tch::Device;

use crate::cmd::{launch, print_json};
use steps::TrainShape;

/// Its arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// bench-small, paper-2b-clip, paper-2b-dinov2; bench-small-gemma2 / -gemma3 and
    /// tiny(-gemma2/-gemma3) for the other Gemma generations.
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
    /// Also train on N local ranks (data parallel, each rank a micro-batch of its own, the
    /// optimizer sharded) and report their throughput over all ranks and the scaling efficiency
    /// against one rank measured in the same run.
    #[arg(long, default_value_t = 1)]
    nproc_per_node: usize,
    /// Give each sample a length drawn as the 665K mix's lengths spread (at most --seq, some
    /// text-only), micro-batches in the recipe's grouped order: the report's padding_fraction and
    /// tokens_per_s (padding excluded) are then what real data sees.
    #[arg(long)]
    length_mix: bool,
    /// With --length-mix: pack each micro-batch into rows of at most --seq tokens.
    #[arg(long)]
    pack: bool,
    /// The process group's backend, gloo or nccl (default: NCCL for CUDA ranks where it is
    /// built in, else Gloo). Given for a single process, a group of one rank is opened on it, so
    /// that its step runs data parallel's collectives (the sharded optimizer's reduce-scatter
    /// and all-gather): their cost against a run without it, same device.
    #[arg(long)]
    dist_backend: Option<String>,
    /// libtorch's CPU threads per rank (default: libtorch's choice; with --nproc-per-node N, the
    /// cores divided by N, for the single rank too).
    #[arg(long)]
    threads: Option<usize>,
}

/// Runs `llava bench-train`.
pub fn run(a: &Args) -> llava::Result<ExitCode> {
    if a.pack && !a.length_mix {
        return Err(llava::Error::Unsupported(
            "--pack packs samples of different lengths: add --length-mix".into(),
        ));
    }
    if a.nproc_per_node > 1 && !launch::launched() {
        return scaling(a);
    }
    if let Some(threads) = a.threads {
        tch::set_num_threads(threads as i32);
    }
    let launch = how_launched(a)?;
    let mut device = llava::foundation::device::parse_device(&a.device)?;
    let group = match &launch {
        Some(launch) => Some(process_group(a, launch, &mut device)?),
        None => None,
    };
    let report = steps::measure(&a.preset, device, &a.shape(), group)?;
    if launch::leader() {
        print_json(&report, a.json);
    }
    Ok(ExitCode::SUCCESS)
}

impl Args {
    /// What to measure: the flags, with the preset's defaults where they are not given.
    fn shape(&self) -> TrainShape {
        let small = self.preset.starts_with("bench-small");
        TrainShape {
            stage: self.stage,
            micro_batch: self
                .micro_batch
                .unwrap_or(if small || self.stage == 2 { 4 } else { 8 }),
            seq: self.seq.unwrap_or(if small {
                256
            } else if self.stage == 1 {
                640
            } else {
                1024
            }),
            loss_tokens: self.loss_tokens.or(small.then_some(96)),
            steps: self.steps,
            warmup: self.warmup,
            // One profile per job: rank 0's.
            profile: self.profile.clone().filter(|_| launch::leader()),
            lora: self.lora_r.map(|r| llava::gemma_lm::LoraSpec {
                r,
                alpha: 2.0 * r as f64,
                dropout: self.lora_dropout,
                ..llava::gemma_lm::LoraSpec::llava()
            }),
            activation_checkpointing: self.activation_checkpointing,
            length_mix: self.length_mix,
            pack: self.pack,
        }
    }
}

/// How this rank was launched: by a launcher that started several, or alone when
/// `--dist-backend` asks for a group of one; `None` without a process group.
fn how_launched(a: &Args) -> llava::Result<Option<Launch>> {
    Ok(match Launch::from_env().map_err(dist_error)? {
        Some(launch) if launch.world > 1 => Some(launch),
        _ if a.dist_backend.is_some() => Some(Launch::alone(launch::free_port()?)),
        _ => None,
    })
}

/// The process group of `launch`, on the backend `--dist-backend` names (or the device's). A CUDA
/// rank moves to its local GPU.
fn process_group(
    a: &Args,
    launch: &Launch,
    device: &mut Device,
) -> llava::Result<Rc<ProcessGroup>> {
    if device.is_cuda() {
        *device = Device::Cuda(launch.local_rank);
    }
    let backend = match &a.dist_backend {
        Some(name) => Backend::named(*device, name),
        None => Backend::for_device(*device),
    }
    .map_err(dist_error)?;
    let timeout = std::time::Duration::from_secs(600);
    let group = ProcessGroup::from_launch(launch, timeout, backend).map_err(dist_error)?;
    Ok(Rc::new(group))
}

fn dist_error(e: DistError) -> llava::Error {
    llava::Error::Unsupported(e.to_string())
}

/// One rank, then N ranks, each with the same threads, and what N ranks make of one.
fn scaling(a: &Args) -> llava::Result<ExitCode> {
    let n = a.nproc_per_node;
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    let threads = a.threads.unwrap_or((cores / n).max(1));
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    args.retain(|arg| arg != "--json");
    if a.threads.is_none() {
        args.extend(["--threads".into(), threads.to_string()]);
    }
    args.push("--json".into());
    let parse = |text: &str, what: &str| -> llava::Result<serde_json::Value> {
        serde_json::from_str(text.trim()).map_err(|e| {
            llava::Error::Unsupported(format!("{what} printed no report ({e}): {text}"))
        })
    };
    let program = std::env::current_exe()
        .map_err(|e| llava::Error::Unsupported(format!("finding this program: {e}")))?;
    let without = launch::without_nproc(&args);
    let one = std::process::Command::new(&program)
        .args(&without)
        .output()
        .map_err(|e| llava::Error::Unsupported(format!("starting the one-rank run: {e}")))?;
    if !one.status.success() {
        return Err(llava::Error::Unsupported(format!(
            "the one-rank run failed: {}",
            String::from_utf8_lossy(&one.stderr)
        )));
    }
    let one = parse(&String::from_utf8_lossy(&one.stdout), "the one-rank run")?;
    let many = parse(
        &launch::run_local_output(n, &args)?,
        &format!("rank 0 of {n}"),
    )?;
    let rate = |r: &serde_json::Value| r["tokens_per_s"].as_f64().unwrap_or(f64::NAN);
    let report = serde_json::json!({
        "threads_per_rank": threads,
        "one_rank": one,
        "ranks": many,
        "world_size": n,
        "speedup": rate(&many) / rate(&one),
        "scaling_efficiency": rate(&many) / (n as f64 * rate(&one)),
    });
    if a.json {
        println!("{report}");
    } else {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).expect("serialises")
        );
        eprintln!(
            "{n} ranks of {threads} thread(s): {:.0} tokens/s against {:.0} on one rank, {:.2}x, \
             scaling efficiency {:.0} %",
            rate(&many),
            rate(&one),
            rate(&many) / rate(&one),
            100.0 * rate(&many) / (n as f64 * rate(&one))
        );
    }
    Ok(ExitCode::SUCCESS)
}
