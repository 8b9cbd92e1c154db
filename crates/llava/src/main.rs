//! The `llava` command.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, Subcommand};
use llava::foundation::device::{parse_device, parse_kind};
use llava::gemma_lm::{Gemma, GemmaTokenizer, GenerationConfig, Message, TextStreamer, generate};
use llava::parity;

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
    Parity {
        /// Fixture directories (each with a meta.json).
        #[arg(required = true)]
        fixtures: Vec<PathBuf>,
    },
    /// Generate text with a Gemma checkpoint (a Hugging Face model directory).
    GenerateText(GenerateText),
}

#[derive(Debug, clap::Args)]
struct GenerateText {
    /// Model directory: config.json, safetensors weights (one file or sharded), tokenizer.json.
    #[arg(long)]
    model: PathBuf,
    /// The user's message (wrapped in the Gemma chat template unless --raw).
    #[arg(long)]
    prompt: String,
    /// Feed the prompt as is, without the chat template.
    #[arg(long)]
    raw: bool,
    /// Most tokens to generate.
    #[arg(long, default_value_t = 128)]
    max_new_tokens: usize,
    /// Sampling temperature; 0 (the default) decodes greedily.
    #[arg(long, default_value_t = 0.0)]
    temperature: f64,
    /// Sample among the k most likely tokens.
    #[arg(long)]
    top_k: Option<usize>,
    /// Sample among the most likely tokens with cumulative probability p.
    #[arg(long)]
    top_p: Option<f64>,
    /// Sampling seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "auto")]
    device: String,
    /// Weights and compute dtype: f32, bf16 or f16 (default: bf16 on CUDA, f32 on CPU).
    #[arg(long)]
    dtype: Option<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Parity { fixtures } => run_parity(&fixtures),
        Command::GenerateText(args) => generate_text(&args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run_parity(fixtures: &[PathBuf]) -> llava::Result<ExitCode> {
    let (mut passed, mut failed) = (0, 0);
    for dir in fixtures {
        match parity::run(dir) {
            Ok(report) => {
                print!("{report}");
                if report.passed() {
                    passed += 1;
                } else {
                    failed += 1;
                }
            }
            Err(e) => {
                println!("{}: ERROR {e}", dir.display());
                failed += 1;
            }
        }
    }
    println!("parity: {passed} passed, {failed} failed");
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn generate_text(args: &GenerateText) -> llava::Result<ExitCode> {
    let device = parse_device(&args.device)?;
    let kind = match &args.dtype {
        Some(name) => parse_kind(name)?,
        None => llava::foundation::device::default_kind(device),
    };
    if !args.model.is_dir() {
        return Err(llava::Error::io(
            &args.model,
            std::io::Error::new(std::io::ErrorKind::NotFound, "no such model directory"),
        ));
    }
    let start = Instant::now();
    let tokenizer = GemmaTokenizer::from_file(&args.model)?;
    let (_vs, model) = Gemma::from_pretrained(&args.model, device, kind)?;
    let prompt = if args.raw {
        tokenizer.encode(&args.prompt, true)?
    } else {
        tokenizer.encode_chat(&[Message::user(args.prompt.as_str())], true)?
    };
    let context = model.config().max_position_embeddings as usize;
    if prompt.len() + args.max_new_tokens > context {
        return Err(llava::gemma_lm::Error::Input(format!(
            "the prompt ({} tokens) plus --max-new-tokens {} exceeds the model's context of {context}",
            prompt.len(),
            args.max_new_tokens
        ))
        .into());
    }
    eprintln!(
        "loaded {} on {device:?} as {kind:?} in {:.2}s; prompt: {} tokens",
        args.model.display(),
        start.elapsed().as_secs_f64(),
        prompt.len()
    );
    let mut stop_tokens = tokenizer.chat_stop_tokens();
    stop_tokens.extend(model.config().eos_token_ids());
    let config = GenerationConfig {
        max_new_tokens: args.max_new_tokens,
        temperature: Some(args.temperature),
        top_k: args.top_k,
        top_p: args.top_p,
        stop_tokens,
        pad_token: tokenizer.pad,
        seed: args.seed,
    };
    let mut streamer = TextStreamer::new(&tokenizer);
    let mut stdout = std::io::stdout().lock();
    let mut stream_error = None;
    let start = Instant::now();
    let output = generate(&model, &[prompt], &config, |_, token| {
        match streamer.push(token) {
            Ok(piece) => {
                let _ = write!(stdout, "{piece}");
                let _ = stdout.flush();
            }
            Err(e) => stream_error = Some(e),
        }
    })?;
    let _ = writeln!(stdout);
    if let Some(e) = stream_error {
        return Err(e.into());
    }
    let n = output[0].len();
    let seconds = start.elapsed().as_secs_f64();
    eprintln!(
        "{n} tokens in {seconds:.2}s ({:.1} tokens/s)",
        n as f64 / seconds
    );
    Ok(ExitCode::SUCCESS)
}
