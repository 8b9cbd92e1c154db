//! `llava generate`: answer a question about an image.

use std::io::Write;
use std::process::ExitCode;
use std::time::Instant;

use llava::gemma_lm::Message;

use super::ImageModel;

/// Its arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    source: ImageModel,
    /// The question.
    #[arg(long)]
    prompt: String,
}

/// Runs `llava generate`.
pub fn run(args: &Args) -> llava::Result<ExitCode> {
    let chat = args.source.open()?;
    let mut stdout = std::io::stdout().lock();
    let start = Instant::now();
    let (_, tokens) = chat.answer(
        &[Message::user(args.prompt.as_str())],
        &args.source.sampling.config(),
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
