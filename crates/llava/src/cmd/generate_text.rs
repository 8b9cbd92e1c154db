//! `llava generate-text`: text generation with a Gemma checkpoint.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use llava::gemma_lm::{Gemma, GemmaTokenizer, GenerationConfig, Message, TextStreamer, generate};

use super::{Sampling, model_path};

/// Its arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Model directory: config.json, safetensors weights (one file or sharded), tokenizer.json.
    #[arg(long)]
    model: PathBuf,
    /// The user's message (wrapped in the Gemma chat template unless --raw).
    #[arg(long)]
    prompt: String,
    /// Feed the prompt as is, without the chat template.
    #[arg(long)]
    raw: bool,
    #[command(flatten)]
    sampling: Sampling,
}

/// Runs `llava generate-text`.
pub fn run(args: &Args) -> llava::Result<ExitCode> {
    let (device, kind) = args.sampling.device_and_kind()?;
    let model = model_path(&args.model)?;
    if !model.is_dir() {
        return Err(llava::Error::io(
            &args.model,
            std::io::Error::new(std::io::ErrorKind::NotFound, "no such model directory"),
        ));
    }
    let start = Instant::now();
    let tokenizer = GemmaTokenizer::from_file(&model)?;
    let (_vs, model) = Gemma::from_pretrained(&model, device, kind)?;
    let prompt = if args.raw {
        tokenizer.encode(&args.prompt, true)?
    } else {
        tokenizer.encode_chat(&[Message::user(args.prompt.as_str())], true)?
    };
    let context = model.config().max_position_embeddings as usize;
    if prompt.len() + args.sampling.max_new_tokens > context {
        return Err(llava::gemma_lm::Error::Input(format!(
            "the prompt ({} tokens) plus --max-new-tokens {} exceeds the model's context of {context}",
            prompt.len(),
            args.sampling.max_new_tokens
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
        stop_tokens,
        pad_token: tokenizer.pad,
        ..args.sampling.config()
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
