//! `llava assemble`: a LLaVA, Gemma 3 or PaliGemma directory from a Gemma, a tower and a
//! connector.

use std::path::PathBuf;
use std::process::ExitCode;

use llava::foundation::device::parse_kind;

use super::model_path;

/// Its arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Gemma directory (config.json, safetensors, tokenizer.json) or Hugging Face id.
    #[arg(long)]
    lm: PathBuf,
    /// CLIP, DINOv2 or SigLIP directory or Hugging Face id.
    #[arg(long)]
    vision: PathBuf,
    /// What to assemble: `llava` (LLaVA's projector, `--projector-type`), `gemma3` (a
    /// Gemma3ForConditionalGeneration: Gemma 3's pooling projector, `<start_of_image>` and
    /// `<end_of_image>` added to the tokenizer when missing) or `paligemma` (a linear projector);
    /// the latter two need a SigLIP tower.
    #[arg(long, default_value = "llava", value_parser = ["llava", "gemma3", "paligemma"])]
    family: String,
    /// Gemma 3: tokens per image after pooling (a square whose side divides the patch grid;
    /// by default the largest of at most 256).
    #[arg(long)]
    image_tokens: Option<i64>,
    /// Connector file (stage 1's output); a seeded random connector when absent.
    #[arg(long)]
    connector: Option<PathBuf>,
    /// Seed of the random connector.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Connector architecture.
    #[arg(long, default_value = "mlp2x_gelu")]
    projector_type: String,
    /// Tower input resolution (default: the tower's image_size; DINOv2 is usually run at 224).
    #[arg(long)]
    image_size: Option<i64>,
    /// Where to write the LLaVA directory.
    #[arg(long)]
    output: PathBuf,
    /// Weights dtype of the saved model: f32, bf16 or f16.
    #[arg(long, default_value = "f32")]
    dtype: String,
}

/// Runs `llava assemble`.
pub fn run(args: &Args) -> llava::Result<ExitCode> {
    let parts = llava::llava_model::Parts {
        lm: model_path(&args.lm)?,
        vision: model_path(&args.vision)?,
        connector: args.connector.clone(),
        seed: args.seed,
        projector_type: args.projector_type.clone(),
        image_size: args.image_size,
        family: llava::llava_model::config::Family::of(Some(&args.family))
            .map_err(llava::Error::Unsupported)?,
        image_tokens: args.image_tokens,
    };
    let kind = parse_kind(&args.dtype)?;
    let (model, tokenizer) =
        llava::llava_model::LlavaModel::from_parts(&parts, tch::Device::Cpu, kind)?;
    model.save_pretrained(&args.output, Some(&tokenizer))?;
    println!(
        "wrote {} ({}: image token {}, {} tokens per image, connector {})",
        args.output.display(),
        model.family().architecture(),
        model.image_token(),
        model.config.image_seq_length.unwrap_or_default(),
        if args.connector.is_some() {
            "from file"
        } else {
            "random"
        }
    );
    Ok(ExitCode::SUCCESS)
}
