//! `llava quantize`: a model directory saved with its language model's weights quantized, which
//! `llava generate`, `chat`, `serve`, `eval` and `bench-text` then load as they are: reading
//! the codes, not quantizing the dense weights at every start.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use llava::foundation::quant::{Loading, Quantization};
use llava::foundation::{Checkpoint, write_atomic};
use llava::gemma_lm::{Gemma, GemmaConfig, GemmaTokenizer};
use llava::llava_model::LlavaModel;

use super::model_path;

/// Its arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The dense model: a LLaVA directory (a `text_config` in its config.json), a Gemma
    /// directory, or a Hugging Face id.
    #[arg(long)]
    model: PathBuf,
    /// Where to write the quantized model (a new directory, or one this command wrote).
    #[arg(long)]
    output: PathBuf,
    /// `int8` (per output row), `int4` (groups of 32 inputs) or `int4:G` (G = 32, 64, 128, 256).
    #[arg(long)]
    quantize: String,
    /// The dtype of the weights left dense (norms, vision tower, connector): f32 (the CPU's
    /// dtype: the model then answers as `--quantize` at load makes it answer), bf16 or f16.
    /// The codes are made from the weights in f32 whatever this says.
    #[arg(long, default_value = "f32")]
    dtype: String,
}

/// Runs `llava quantize`.
pub fn run(args: &Args) -> llava::Result<ExitCode> {
    let source = model_path(&args.model)?;
    let how: Quantization = args.quantize.parse().map_err(llava::Error::Unsupported)?;
    let kind = llava::foundation::device::parse_kind(&args.dtype)?;
    if source.canonicalize().ok() == args.output.canonicalize().ok() {
        return Err(llava::Error::Unsupported(format!(
            "--output {} is the model directory itself: write the quantized model elsewhere",
            args.output.display()
        )));
    }
    // The save replaces a `model.safetensors` left by an earlier quantized save (our loaders
    // would read it first); a dense model's is never overwritten or removed.
    let dense_there = ["model.safetensors", "model.safetensors.index.json"]
        .iter()
        .any(|f| args.output.join(f).exists());
    if dense_there && Quantization::of_directory(&args.output)?.is_none() {
        return Err(llava::Error::Unsupported(format!(
            "--output {} holds a dense model: write the quantized model to a new directory",
            args.output.display()
        )));
    }
    if let Some(stored) = Quantization::of_directory(&source)? {
        return Err(llava::Error::Unsupported(format!(
            "{} already holds {stored} weights: quantize the dense model",
            source.display()
        )));
    }
    let start = Instant::now();
    std::fs::create_dir_all(&args.output).map_err(|e| llava::Error::io(&args.output, e))?;
    let layers = if is_vision_language(&source)? {
        let mut model = LlavaModel::from_pretrained_quantized(
            &source,
            tch::Device::Cpu,
            tch::Kind::Float,
            Some(how),
        )?;
        for vs in [
            &mut model.vision_vs,
            &mut model.connector_vs,
            &mut model.lm_vs,
        ] {
            vs.set_kind(kind);
        }
        let layers = model.lm.linears().len();
        let tokenizer = GemmaTokenizer::from_file(&source)?;
        model.save_pretrained(&args.output, Some(&tokenizer))?;
        // The source's own processor and generation settings, where it has them, rather than
        // ones derived anew.
        copy_files(&source, &args.output, |name| {
            name == "preprocessor_config.json" || name == "generation_config.json"
        })?;
        layers
    } else {
        let config = GemmaConfig::from_file(&source)?;
        let checkpoint = Checkpoint::open(&source)?;
        let (mut vs, model) = Gemma::from_checkpoint_as(
            &config,
            &checkpoint,
            tch::Device::Cpu,
            tch::Kind::Float,
            Loading::Quantize(how),
        )?;
        drop(checkpoint);
        vs.set_kind(kind);
        llava::foundation::quant::save_quantized_weights(
            &args.output,
            &model.tensors(&vs),
            Some([("format".to_string(), "pt".to_string())].into()),
        )?;
        write_config(&source, &args.output, how)?;
        // The tokenizer and generation settings as they are.
        copy_files(&source, &args.output, |name| {
            name != "config.json" && !name.contains(".safetensors") && !name.ends_with(".bin")
        })?;
        model.linears().len()
    };
    println!(
        "quantized {layers} linear layers and the head as {how} into {} in {:.1} s",
        args.output.display(),
        start.elapsed().as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}

/// Whether `dir` holds a vision-language model (its config.json has a `text_config`) rather
/// than a Gemma alone.
fn is_vision_language(dir: &Path) -> llava::Result<bool> {
    Ok(read_config(dir)?.get("text_config").is_some())
}

fn read_config(dir: &Path) -> llava::Result<serde_json::Value> {
    Ok(llava::foundation::read_json(dir.join("config.json"))?)
}

/// `source`'s config.json with the `quantization_config` of `how`, into `output`.
fn write_config(source: &Path, output: &Path, how: Quantization) -> llava::Result<()> {
    let mut config = read_config(source)?;
    if let Some(object) = config.as_object_mut() {
        object.insert("quantization_config".into(), how.to_config());
    }
    let text = serde_json::to_string_pretty(&config).expect("a JSON value serialises");
    write_atomic(output.join("config.json"), text.as_bytes())?;
    Ok(())
}

/// Copies the plain files of `source` whose names `wanted` accepts into `output`.
fn copy_files(source: &Path, output: &Path, wanted: impl Fn(&str) -> bool) -> llava::Result<()> {
    let entries = std::fs::read_dir(source).map_err(|e| llava::Error::io(source, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| llava::Error::io(source, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !entry.path().is_file() || !wanted(&name) {
            continue;
        }
        let bytes = std::fs::read(entry.path()).map_err(|e| llava::Error::io(entry.path(), e))?;
        write_atomic(output.join(&name), &bytes)?;
    }
    Ok(())
}
