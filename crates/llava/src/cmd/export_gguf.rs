//! `llava export-gguf`: a model as llama.cpp's GGUF files: the language model, and for a LLaVA
//! or Gemma 3 model the `mmproj` file of its vision tower and connector.

use std::path::PathBuf;
use std::process::ExitCode;

use llava::foundation::gguf::TensorType;
use llava::gemma_lm::config::GemmaConfig;
use llava::llava_model::config::LlavaConfig;

use super::model_path;

/// Its arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// A LLaVA or Gemma 3 directory or a Gemma (1, 2, 3) one (config.json, safetensors weights,
    /// tokenizer.json), or a Hugging Face id.
    #[arg(long)]
    model: PathBuf,
    /// Where to write `<name>-<type>.gguf` (and, for a LLaVA or Gemma 3 model,
    /// `mmproj-<name>-<type>.gguf`).
    #[arg(long)]
    output: PathBuf,
    /// The matrices' type: f32, f16, bf16, q8_0 or q4_0 (norms stay f32; matrices whose rows are not
    /// whole blocks of 32 stay f16).
    #[arg(long = "type", default_value = "f16")]
    kind: String,
    /// The model scales image features by sqrt(hidden) itself, as the original LLaVA-Gemma code
    /// did (Intel's checkpoints; `llava generate --scale-image-features`).
    #[arg(long)]
    scale_image_features: bool,
}

/// Runs `llava export-gguf`.
pub fn run(args: &Args) -> llava::Result<ExitCode> {
    let kind = match args.kind.as_str() {
        "f32" => TensorType::F32,
        "f16" => TensorType::F16,
        "bf16" => TensorType::BF16,
        "q8_0" => TensorType::Q8_0,
        "q4_0" => TensorType::Q4_0,
        other => {
            return Err(llava::Error::Unsupported(format!(
                "--type {other}: the choices are f32, f16, bf16, q8_0 and q4_0"
            )));
        }
    };
    let dir = model_path(&args.model)?;
    if let Some(how) = llava::foundation::quant::Quantization::of_directory(&dir)? {
        return Err(llava::Error::Unsupported(format!(
            "{} holds {how} codes of our own form (from `llava quantize`): export the dense \
             model, with --type q8_0 or q4_0 for llama.cpp's quantized forms",
            dir.display()
        )));
    }
    // A LLaVA directory's language model is its text_config; a Gemma directory's is the config.
    let llava_config = LlavaConfig::from_file(&dir).ok();
    let config = match &llava_config {
        Some(llava) => llava.text_config.clone(),
        None => GemmaConfig::from_file(&dir)?,
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
    let mut lm = llava::gemma_lm::gguf::to_gguf(&config, &checkpoint, &tokenizer, kind, &name)?;
    // A LLaVA model asks `<image>\n{question}` whatever its Gemma (the Gemma 3 template is for
    // Gemma 3's own images).
    if llava_config
        .as_ref()
        .is_some_and(|c| c.family() == llava::llava_model::config::Family::Llava)
    {
        lm.set(
            "tokenizer.chat_template",
            llava::foundation::gguf::Value::Str(llava::gemma_lm::gguf::CHAT_TEMPLATE.into()),
        );
    }
    // Both files are assembled (and refused) before either is written.
    let mmproj = match &llava_config {
        Some(llava) => {
            let scaled = args.scale_image_features || llava.image_features_scaled.unwrap_or(false);
            let processor = llava.image_processor(Some(&dir))?;
            Some(llava::llava_model::gguf::mmproj_to_gguf(
                llava,
                &processor,
                &checkpoint,
                kind,
                scaled,
                &name,
            )?)
        }
        None => None,
    };
    std::fs::create_dir_all(&args.output).map_err(|e| llava::Error::io(&args.output, e))?;
    let file = args.output.join(format!("{name}-{}.gguf", args.kind));
    lm.write(&file)?;
    eprintln!("wrote {} (the language model)", file.display());
    if let (Some(mmproj), Some(llava)) = (mmproj, &llava_config) {
        let file = args
            .output
            .join(format!("mmproj-{name}-{}.gguf", args.kind));
        mmproj.write(&file)?;
        eprintln!("wrote {} (the vision tower and connector)", file.display());
        if llava.vision()?.has_class_token() {
            eprintln!(
                "note: llama.cpp up to at least 0c1e57098 (llama-cpp-python 0.3.36) misplaces a \
                 CLIP tower's class token (ggml-org/llama.cpp#25814): its image features, and so \
                 its answers, differ from this model's until that is fixed"
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
