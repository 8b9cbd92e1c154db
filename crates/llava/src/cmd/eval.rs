//! `llava eval`: answer and score benchmarks; the Table 1 row.

use std::path::PathBuf;
use std::process::ExitCode;

use super::model_path;

/// Its arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// LLaVA model directory or Hugging Face id.
    #[arg(long)]
    model: PathBuf,
    /// gqa, mme, pope, vqav2, sqa, mmvp, mmvet, synthetic, or all (the paper's seven).
    #[arg(long, default_value = "all")]
    bench: String,
    /// The data root (LLaVA's playground/data/eval; for synthetic, the synthetic data folder).
    #[arg(long)]
    data: PathBuf,
    /// Where answers and scores go (default: <model>/eval).
    #[arg(long)]
    output: Option<PathBuf>,
    /// Questions per generation batch.
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// New tokens per answer (default: 128; 1024 for MM-Vet).
    #[arg(long)]
    max_new_tokens: Option<usize>,
    /// Answer at most this many questions per benchmark.
    #[arg(long)]
    limit: Option<usize>,
    /// cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "auto")]
    device: String,
    /// `int8`, `int4` or `int4:G`: the language model's linear layers quantized as it loads
    /// (CPU; see `llava generate --quantize`). Answers go to `<output>` as usual: give a separate
    /// --output to keep the plain model's.
    #[arg(long)]
    quantize: Option<String>,
    /// Print only the JSON object.
    #[arg(long)]
    json: bool,
}

/// Runs `llava eval`.
pub fn run(args: &Args) -> llava::Result<ExitCode> {
    use llava::eval::runner::Bench;
    let benches = if args.bench == "all" {
        Bench::PAPER.to_vec()
    } else {
        args.bench
            .split(',')
            .map(|b| Bench::parse(b.trim()))
            .collect::<Result<_, _>>()?
    };
    let model = model_path(&args.model)?;
    // A local model keeps its answers beside it; a model from the Hugging Face cache in out/eval/.
    let default_output = if model == args.model {
        model.join("eval")
    } else {
        PathBuf::from("out/eval").join(args.model.to_string_lossy().replace('/', "--"))
    };
    let eval_args = llava::benchmarks::EvalArgs {
        model,
        benches,
        data: args.data.clone(),
        output: args.output.clone().unwrap_or(default_output),
        batch: args.batch,
        max_new_tokens: args.max_new_tokens,
        limit: args.limit,
        device: args.device.clone(),
        quantize: args.quantize.clone(),
    };
    std::fs::create_dir_all(&eval_args.output)
        .map_err(|e| llava::Error::io(&eval_args.output, e))?;
    let result = llava::benchmarks::run(&eval_args, |line| eprintln!("{line}"))?;
    let text = serde_json::to_string_pretty(&result).expect("serialises");
    llava::foundation::write_atomic(eval_args.output.join("scores.json"), text.as_bytes())?;
    if args.json {
        println!("{result}");
    } else {
        println!(
            "{text}\n\n{}",
            llava::eval::table::markdown_row(&result["row"])
        );
    }
    Ok(ExitCode::SUCCESS)
}
