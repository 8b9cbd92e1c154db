//! `llava chat`: a multi-turn conversation about one image.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use llava::gemma_lm::Message;

use super::{Sampling, open_chat};

/// Its arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// LLaVA model directory (config.json, safetensors weights, tokenizer.json) or Hugging Face id
    /// (`Intel/llava-gemma-2b`, through the local Hugging Face cache).
    #[arg(long)]
    model: PathBuf,
    /// The image to talk about.
    #[arg(long)]
    image: PathBuf,
    /// Scale image features by sqrt(hidden) as the original LLaVA-Gemma code did (Intel's checkpoints).
    #[arg(long)]
    scale_image_features: bool,
    #[command(flatten)]
    sampling: Sampling,
}

/// Runs `llava chat`.
pub fn run(args: &Args) -> llava::Result<ExitCode> {
    let chat = open_chat(
        &args.model,
        &args.image,
        args.scale_image_features,
        &args.sampling,
    )?;
    let mut conversation: Vec<Message> = Vec::new();
    let stdin = std::io::stdin();
    let mut stdout = std::io::stdout();
    let interactive = std::io::IsTerminal::is_terminal(&stdin);
    loop {
        if interactive {
            let _ = write!(stdout, "you> ");
            let _ = stdout.flush();
        }
        let mut line = String::new();
        if stdin
            .read_line(&mut line)
            .map_err(|e| llava::Error::io("<stdin>", e))?
            == 0
        {
            break;
        }
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if line == "/exit" || line == "/quit" {
            break;
        }
        conversation.push(Message::user(line));
        let _ = write!(stdout, "model> ");
        let (answer, _) = chat.answer(&conversation, &args.sampling.config(), |piece| {
            let _ = write!(stdout, "{piece}");
            let _ = stdout.flush();
        })?;
        let _ = writeln!(stdout);
        conversation.push(Message::model(answer));
    }
    Ok(ExitCode::SUCCESS)
}
