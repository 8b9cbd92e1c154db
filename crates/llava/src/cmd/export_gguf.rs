//! `llava export-gguf`: the language model as a GGUF file for llama.cpp.

use std::path::PathBuf;
use std::process::ExitCode;

use llava::foundation::gguf::TensorType;
use llava::gemma_lm::config::GemmaConfig;

use super::model_path;

/// Its arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// A LLaVA directory or a Gemma one (config.json, safetensors weights, tokenizer.json), or a
    /// Hugging Face id.
    #[arg(long)]
    model: PathBuf,
    /// Where to write `<name>-<type>.gguf`.
    #[arg(long)]
    output: PathBuf,
    /// The matrices' type: f32, f16, q8_0 or q4_0 (norms stay f32).
    #[arg(long = "type", default_value = "f16")]
    kind: String,
}

/// Runs `llava export-gguf`.
pub fn run(args: &Args) -> llava::Result<ExitCode> {
    let kind = match args.kind.as_str() {
        "f32" => TensorType::F32,
        "f16" => TensorType::F16,
        "q8_0" => TensorType::Q8_0,
        "q4_0" => TensorType::Q4_0,
        other => {
            return Err(llava::Error::Unsupported(format!(
                "--type {other}: the choices are f32, f16, q8_0 and q4_0"
            )));
        }
    };
    let dir = model_path(&args.model)?;
    // A LLaVA directory's language model is its text_config; a Gemma directory's is the config.
    let config = match llava::llava_model::config::LlavaConfig::from_file(&dir) {
        Ok(llava) => llava.text_config,
        Err(_) => GemmaConfig::from_file(&dir)?,
    };
    let checkpoint = llava::foundation::Checkpoint::open(&dir)?;
    let tokenizer_path = dir.join("tokenizer.json");
    let tokenizer = std::fs::read_to_string(&tokenizer_path)
        .map_err(|e| llava::Error::io(&tokenizer_path, e))?;
    let name = dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("model")
        .to_string();
    let gguf = llava::gemma_lm::gguf::to_gguf(&config, &checkpoint, &tokenizer, kind, &name)?;
    std::fs::create_dir_all(&args.output).map_err(|e| llava::Error::io(&args.output, e))?;
    let file = args.output.join(format!("{name}-{}.gguf", args.kind));
    gguf.write(&file)?;
    eprintln!(
        "wrote {} (the language model; the vision tower's mmproj file is not written yet)",
        file.display()
    );
    Ok(ExitCode::SUCCESS)
}
