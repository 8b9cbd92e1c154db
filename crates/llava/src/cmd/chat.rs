//! `llava chat`: a multi-turn conversation about one image.

use std::io::Write;
use std::process::ExitCode;

use llava::gemma_lm::Message;

use super::ImageModel;

/// Its arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    source: ImageModel,
}

/// Runs `llava chat`.
pub fn run(args: &Args) -> llava::Result<ExitCode> {
    let chat = args.source.open()?;
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
        let (answer, _) = chat.answer(&conversation, &args.source.sampling.config(), |piece| {
            let _ = write!(stdout, "{piece}");
            let _ = stdout.flush();
        })?;
        let _ = writeln!(stdout);
        conversation.push(Message::model(answer));
    }
    Ok(ExitCode::SUCCESS)
}
