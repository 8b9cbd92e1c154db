//! `llava generate`: answer a question about an image.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use llava::gemma_lm::Message;

use super::{Sampling, open_chat};

/// Its arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// LLaVA model directory (config.json, safetensors weights, tokenizer.json) or Hugging Face id
    /// (`Intel/llava-gemma-2b`, through the local Hugging Face cache).
    #[arg(long)]
    model: PathBuf,
    /// The image (JPEG, PNG, WebP or GIF).
    #[arg(long)]
    image: PathBuf,
    /// The question.
    #[arg(long)]
    prompt: String,
    /// Scale image features by sqrt(hidden) as the original LLaVA-Gemma code did (Intel's checkpoints).
    #[arg(long)]
    scale_image_features: bool,
    #[command(flatten)]
    sampling: Sampling,
}

/// Runs `llava generate`.
pub fn run(args: &Args) -> llava::Result<ExitCode> {
    let chat = open_chat(
        &args.model,
        &args.image,
        args.scale_image_features,
        &args.sampling,
    )?;
    let mut stdout = std::io::stdout().lock();
    let start = Instant::now();
    let (_, tokens) = chat.answer(
        &[Message::user(args.prompt.as_str())],
        &args.sampling.config(),
        |piece| {
            let _ = write!(stdout, "{piece}");
            let _ = stdout.flush();
        },
    )?;
    let _ = writeln!(stdout);
    let seconds = start.elapsed().as_secs_f64();
    eprintln!(
        "{tokens} tokens in {seconds:.2}s ({:.1} tokens/s)",
        tokens as f64 / seconds
    );
    Ok(ExitCode::SUCCESS)
}
