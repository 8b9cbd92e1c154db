//! `llava eval`: answer and score benchmarks; the Table 1 row.

use std::path::PathBuf;
use std::process::ExitCode;

use super::model_path;

/// Its arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// LLaVA model directory or Hugging Face id.
    #[arg(long, required_unless_present = "compare")]
    model: Option<PathBuf>,
    /// gqa, mme, pope, vqav2, sqa, mmvp, mmvet (the paper's seven: `paper`), mmstar, mmmu,
    /// ocrbench, ai2d, textvqa, textvqa-ocr, hallusionbench (`recent`), synthetic, or all (paper
    /// and recent; those without data files are skipped).
    #[arg(long, default_value = "all")]
    bench: String,
    /// The data root: LLaVA's playground/data/eval for the paper's seven, with VLMEvalKit's TSV
    /// files (MMStar.tsv, MMMU_DEV_VAL.tsv, OCRBench.tsv, AI2D_TEST.tsv, TextVQA_VAL.tsv,
    /// HallusionBench.tsv) or lmms-eval rows (<bench>.jsonl) for the recent six; for synthetic,
    /// the synthetic data folder.
    #[arg(long, required_unless_present = "compare")]
    data: Option<PathBuf>,
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
    /// Compare two runs instead: their `<bench>.manifest.json` files. Says, per metric, whether
    /// the runs differ beyond a paired bootstrap's 95 % interval over the questions both answered.
    #[arg(long, num_args = 2, value_names = ["A", "B"], conflicts_with_all = ["model", "data"])]
    compare: Option<Vec<PathBuf>>,
    /// Print only the JSON object.
    #[arg(long)]
    json: bool,
}

/// `llava eval --compare A B`.
fn compare(a: &std::path::Path, b: &std::path::Path, json: bool) -> llava::Result<ExitCode> {
    use llava::eval::manifest::{Manifest, compare};
    let c = compare(&Manifest::read(a)?, &Manifest::read(b)?)?;
    if json {
        println!("{}", serde_json::to_string(&c).expect("serialises"));
        return Ok(ExitCode::SUCCESS);
    }
    println!("{}: A = {}, B = {}", c.bench, a.display(), b.display());
    for m in &c.metrics {
        println!(
            "  {:<28} A {:>9.4}  B {:>9.4}  A-B {:>+9.4}  95% [{:+.4}, {:+.4}]  {}  ({} shared, {} only A, {} only B)",
            m.metric,
            m.a,
            m.b,
            m.difference,
            m.interval[0],
            m.interval[1],
            if m.differs {
                "DIFFERENT"
            } else {
                "same within noise"
            },
            m.shared,
            m.only_a,
            m.only_b
        );
    }
    if c.data_differs {
        println!("  note: the runs read different data files");
    }
    for (k, [va, vb]) in &c.settings_differ {
        println!("  setting {k}: A {va} / B {vb}");
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs `llava eval`.
pub fn run(args: &Args) -> llava::Result<ExitCode> {
    use llava::eval::runner::Bench;
    if let Some([a, b]) = args.compare.as_deref() {
        return compare(a, b, args.json);
    }
    let (Some(model_arg), Some(data)) = (&args.model, &args.data) else {
        unreachable!("clap requires --model and --data without --compare");
    };
    let mut benches = Vec::new();
    for name in args.bench.split(',').map(str::trim) {
        match name {
            "all" => benches.extend(Bench::PAPER.iter().chain(&Bench::RECENT)),
            "paper" => benches.extend(Bench::PAPER),
            "recent" => benches.extend(Bench::RECENT),
            other => benches.push(Bench::parse(other)?),
        }
    }
    let model = model_path(model_arg)?;
    // A local model keeps its answers beside it; a model from the Hugging Face cache in out/eval/.
    let default_output = if &model == model_arg {
        model.join("eval")
    } else {
        PathBuf::from("out/eval").join(model_arg.to_string_lossy().replace('/', "--"))
    };
    let eval_args = llava::benchmarks::EvalArgs {
        model,
        benches,
        data: data.clone(),
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
            "{text}\n\n{}\n\n{}",
            llava::eval::table::markdown_row(&result["row"]),
            llava::eval::table::markdown_recent_row(&result["recent_row"])
        );
    }
    Ok(ExitCode::SUCCESS)
}
