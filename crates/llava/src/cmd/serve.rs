//! `llava serve`: the OpenAI-compatible server of the `serve` crate, from the command line.

use std::path::PathBuf;
use std::process::ExitCode;

/// Flags of `llava serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// LLaVA model directory (config.json, safetensors weights, tokenizer.json) or Hugging Face id
    /// (`Intel/llava-gemma-2b`, through the local Hugging Face cache).
    #[arg(long)]
    model: PathBuf,
    /// A PEFT LoRA adapter directory to apply to the model (merged when it loads).
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port to listen on (0: any free port).
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "auto")]
    device: String,
    /// Weights and compute dtype: f32, bf16 or f16 (default: bf16 on CUDA, f32 on CPU).
    #[arg(long)]
    dtype: Option<String>,
    /// Most requests decoded together (KV-cache slots).
    #[arg(long, default_value_t = 16)]
    max_batch: usize,
    /// Most requests waiting for a slot; more are answered 429.
    #[arg(long, default_value_t = 256)]
    max_queue: usize,
    /// Positions per slot, prompt plus answer (default: the model's context).
    #[arg(long)]
    max_context: Option<i64>,
    /// Require `Authorization: Bearer KEY` on every endpoint but /health.
    #[arg(long)]
    api_key: Option<String>,
    /// Allow images as file:// URLs or paths under this directory.
    #[arg(long)]
    allow_local_files: Option<PathBuf>,
    /// Largest request body in bytes.
    #[arg(long, default_value_t = 20 << 20)]
    max_body_bytes: usize,
    /// Largest image in pixels (refused from its header).
    #[arg(long, default_value_t = 64 << 20)]
    max_image_pixels: u64,
    /// The model name /v1/models lists (default: the directory's name).
    #[arg(long)]
    model_id: Option<String>,
    /// Scale image features by sqrt(hidden) as the original LLaVA-Gemma code did (Intel's checkpoints).
    #[arg(long)]
    scale_image_features: bool,
    /// `int8`, `int4` or `int4:G`: the language model's linear layers quantized as it loads
    /// (CPU; see `llava generate --quantize`).
    #[arg(long)]
    quantize: Option<String>,
}

/// Serves until SIGTERM or ctrl-c, then finishes the requests in flight and exits 0.
pub fn run(args: &ServeArgs) -> llava::Result<ExitCode> {
    let config = serve::ServerConfig {
        model: llava::foundation::hub::resolve_model(&args.model)?,
        adapter: args.adapter.clone(),
        // A model named by its Hugging Face id is listed under that id.
        model_id: args
            .model_id
            .clone()
            .or_else(|| (!args.model.exists()).then(|| args.model.to_string_lossy().into_owned())),
        host: args.host.clone(),
        port: args.port,
        device: args.device.clone(),
        dtype: args.dtype.clone(),
        max_batch: args.max_batch,
        max_queue: args.max_queue,
        max_context: args.max_context,
        api_key: args.api_key.clone(),
        allow_local_files: args.allow_local_files.clone(),
        max_body_bytes: args.max_body_bytes,
        max_image_pixels: args.max_image_pixels,
        scale_image_features: args.scale_image_features,
        quantize: args.quantize.clone(),
        ..serve::ServerConfig::default()
    };
    let runtime = tokio::runtime::Runtime::new().map_err(|e| llava::Error::io("<runtime>", e))?;
    let model = args.model.display().to_string();
    let result = runtime.block_on(serve::run(config, serve::shutdown_signal(), |addr| {
        eprintln!("serving {model} on http://{addr} (OpenAI API under /v1)");
    }));
    match result {
        Ok(()) => {
            eprintln!("stopped");
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("error: {e}");
            Ok(ExitCode::FAILURE)
        }
    }
}
