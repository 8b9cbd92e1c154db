//! The `llava` command: `main` parses the command line and dispatches; each subcommand (its
//! arguments and its handler) is a file of its own under `cmd/`.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cmd;

/// LLaVA-Gemma: build, train and evaluate vision-language assistants on Gemma.
#[derive(Debug, Parser)]
#[command(name = "llava", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Compare our models with Hugging Face reference outputs stored in parity fixtures.
    Parity(cmd::parity::Args),
    /// Answer a question about an image with a LLaVA model (a Hugging Face model directory).
    Generate(cmd::generate::Args),
    /// Answer a question about an image and show what the answer looked at: relevancy and
    /// attention maps per word (JSON, safetensors, PNG overlays).
    Explain(cmd::explain::Args),
    /// Where a demo model's explanations look: the relevancy inside each held-out synthetic
    /// question's shape box against the box's share of the image.
    ExplainSynthetic(cmd::explain_synthetic::Args),
    /// A multi-turn conversation about one image (one user turn per line; /exit or EOF ends it).
    Chat(cmd::chat::Args),
    /// Generate text with a Gemma checkpoint (a Hugging Face model directory).
    GenerateText(cmd::generate_text::Args),
    /// Train one stage of the recipe (stage 1: connector; stage 2: connector + language model).
    Train(Box<cmd::train::Args>),
    /// Answer the held-out synthetic questions with a trained model; prints accuracy per question
    /// kind, and for the same questions about the wrong images.
    EvalSynthetic(cmd::eval_synthetic::Args),
    /// Answer benchmark questions with a model and score them (files in the layout of LLaVA's
    /// playground/data/eval under --data); prints the paper's Table 1 row.
    Eval(cmd::eval::Args),
    /// Grade MM-Vet or MMVP answers with an LLM judge behind an OpenAI-compatible endpoint (or
    /// only write the grading requests with --requests-only).
    Grade(cmd::grade::Args),
    /// Score a benchmark by its official rules (gqa, mme, pope, vqav2, sqa, mmvp, mmvet).
    Score(cmd::score::Args),
    /// Measure greedy generation on a random-weight model of a preset (one JSON object).
    BenchGenerate(cmd::bench::generate::Args),
    /// Measure training steps on a random-weight model of a preset (one JSON object).
    BenchTrain(cmd::bench::train::Args),
    /// Measure a preset's vision tower on random images (one JSON object).
    BenchVision(cmd::bench::vision::Args),
    /// Measure loading, prefill and decoding of a Gemma checkpoint on a random prompt (one JSON
    /// object; `cargo xtask bench-cpu` sets it beside llama.cpp).
    BenchText(cmd::bench::text::Args),
    /// Validate a dataset, or show one sample with its loss mask.
    #[command(subcommand)]
    Data(cmd::data::Args),
    /// Serve a LLaVA model over an OpenAI-compatible HTTP API with continuous batching.
    Serve(cmd::serve::ServeArgs),
    /// Assemble a LLaVA model from a Gemma, a CLIP or DINOv2 tower and an optional connector file,
    /// and save it as an HF LLaVA directory.
    Assemble(cmd::assemble::Args),
    /// Plan the memory a training step needs per device, from a preset's shapes.
    Plan(cmd::plan::Args),
    /// Merge a PEFT LoRA adapter into its base model and save the result as a full model.
    MergeLora(cmd::merge_lora::Args),
    /// Write the language model as a GGUF file for llama.cpp (f32, f16, q8_0 or q4_0).
    ExportGguf(cmd::export_gguf::Args),
    /// Save a model with its language model quantized (int8, int4), so that it loads as codes.
    Quantize(cmd::quantize::Args),
}

fn main() -> ExitCode {
    llava::foundation::torch_panic::install_hook();
    let result = match Cli::parse().command {
        Command::Parity(args) => cmd::parity::run(&args),
        Command::Generate(args) => cmd::generate::run(&args),
        Command::Explain(args) => cmd::explain::run(&args),
        Command::ExplainSynthetic(args) => cmd::explain_synthetic::run(&args),
        Command::Chat(args) => cmd::chat::run(&args),
        Command::GenerateText(args) => cmd::generate_text::run(&args),
        Command::Assemble(args) => cmd::assemble::run(&args),
        Command::Serve(args) => cmd::serve::run(&args),
        Command::Data(command) => cmd::data::run(&command),
        Command::Train(args) => cmd::train::run(&args),
        Command::Score(args) => cmd::score::run(&args),
        Command::Eval(args) => cmd::eval::run(&args),
        Command::Grade(args) => cmd::grade::run(&args),
        Command::EvalSynthetic(args) => cmd::eval_synthetic::run(&args),
        Command::BenchGenerate(args) => cmd::bench::generate::run(&args),
        Command::BenchTrain(args) => cmd::bench::train::run(&args),
        Command::BenchVision(args) => cmd::bench::vision::run(&args),
        Command::BenchText(args) => cmd::bench::text::run(&args),
        Command::Plan(args) => cmd::plan::run(&args),
        Command::MergeLora(args) => cmd::merge_lora::run(&args),
        Command::ExportGguf(args) => cmd::export_gguf::run(&args),
        Command::Quantize(args) => cmd::quantize::run(&args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
