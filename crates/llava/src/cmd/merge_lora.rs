//! `llava merge-lora`: a full model from a base model and a PEFT LoRA adapter.

use std::path::PathBuf;
use std::process::ExitCode;

use llava::foundation::device::parse_kind;
use llava::gemma_lm::GemmaTokenizer;
use llava::llava_model::LlavaModel;

use super::model_path;

/// Its arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The base LLaVA directory the adapter was trained on, or its Hugging Face id.
    #[arg(long)]
    model: PathBuf,
    /// The PEFT adapter directory (adapter_config.json, adapter_model.safetensors).
    #[arg(long)]
    adapter: PathBuf,
    /// Where to write the merged model (a transformers LLaVA directory).
    #[arg(long)]
    output: PathBuf,
    /// Weights dtype of the merged model: f32, bf16 or f16 (the merge itself is computed in f32).
    #[arg(long, default_value = "f32")]
    dtype: String,
}

/// Runs `llava merge-lora`.
pub fn run(args: &Args) -> llava::Result<ExitCode> {
    let base = model_path(&args.model)?;
    let kind = parse_kind(&args.dtype)?;
    let mut model = LlavaModel::from_pretrained(&base, tch::Device::Cpu, tch::Kind::Float)?;
    let config = model.load_adapter(&args.adapter)?;
    let merged = model.merge_lora();
    if kind != tch::Kind::Float {
        for vs in [
            &mut model.vision_vs,
            &mut model.connector_vs,
            &mut model.lm_vs,
        ] {
            vs.set_kind(kind);
        }
    }
    let tokenizer = GemmaTokenizer::from_file(&base)?;
    model.save_pretrained(&args.output, Some(&tokenizer))?;
    // The base's own image-processor settings, when it has them, rather than ones derived anew.
    let preprocessor = base.join("preprocessor_config.json");
    if preprocessor.exists() {
        let bytes = std::fs::read(&preprocessor).map_err(|source| llava::Error::Io {
            path: preprocessor.clone(),
            source,
        })?;
        llava::foundation::write_atomic(args.output.join("preprocessor_config.json"), &bytes)?;
    }
    println!(
        "merged {merged} adapters (r {}, alpha {}) {}into {}",
        config.r,
        config.lora_alpha,
        if config.modules_to_save.is_some() {
            "and the saved connector "
        } else {
            ""
        },
        args.output.display()
    );
    Ok(ExitCode::SUCCESS)
}
