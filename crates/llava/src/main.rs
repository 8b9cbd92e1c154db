//! The `llava` command.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, Subcommand};
use llava::chat::ImageChat;
use llava::foundation::device::{parse_device, parse_kind};
use llava::gemma_lm::{Gemma, GemmaTokenizer, GenerationConfig, Message, TextStreamer, generate};
use llava::parity;

mod serve_cmd;

/// LLaVA-Gemma: build, train and evaluate vision-language assistants on Gemma.
#[derive(Debug, Parser)]
#[command(name = "llava", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Compare our models with Hugging Face reference outputs stored in parity fixtures.
    Parity {
        /// Fixture directories (each with a meta.json).
        #[arg(required = true)]
        fixtures: Vec<PathBuf>,
    },
    /// Answer a question about an image with a LLaVA model (a Hugging Face model directory).
    Generate(Generate),
    /// A multi-turn conversation about one image (one user turn per line; /exit or EOF ends it).
    Chat(Chat),
    /// Generate text with a Gemma checkpoint (a Hugging Face model directory).
    GenerateText(GenerateText),
    /// Train one stage of the recipe (stage 1: connector; stage 2: connector + language model).
    Train(Train),
    /// Answer the held-out synthetic questions with a trained model; prints accuracy per question
    /// kind, and for the same questions about the wrong images.
    EvalSynthetic {
        /// LLaVA model directory (stage 2's `model/`).
        #[arg(long)]
        model: PathBuf,
        /// The synthetic dataset folder (eval_questions.jsonl, eval_answers.jsonl, images/).
        #[arg(long)]
        data: PathBuf,
        /// Where to write report.json (prints it either way).
        #[arg(long)]
        report: Option<PathBuf>,
    },
    /// Answer benchmark questions with a model and score them (files in the layout of LLaVA's
    /// playground/data/eval under --data); prints the paper's Table 1 row.
    Eval(EvalCmd),
    /// Grade MM-Vet or MMVP answers with an LLM judge behind an OpenAI-compatible endpoint (or
    /// only write the grading requests with --requests-only).
    Grade(Grade),
    /// Score a benchmark by its official rules (gqa, mme, pope, vqav2, sqa, mmvp, mmvet).
    Score(Score),
    /// Measure greedy generation on a random-weight model of a preset (one JSON object).
    BenchGenerate(BenchGenerate),
    /// Measure training steps on a random-weight model of a preset (one JSON object).
    BenchTrain(BenchTrain),
    /// Measure a preset's vision tower on random images (one JSON object).
    BenchVision(BenchVision),
    /// Validate a dataset, or show one sample with its loss mask.
    #[command(subcommand)]
    Data(DataCommand),
    /// Serve a LLaVA model over an OpenAI-compatible HTTP API with continuous batching.
    Serve(serve_cmd::ServeArgs),
    /// Assemble a LLaVA model from a Gemma, a CLIP or DINOv2 tower and an optional connector file,
    /// and save it as an HF LLaVA directory.
    Assemble(Assemble),
}

#[derive(Debug, clap::Args)]
struct Train {
    /// 1 (connector pretraining) or 2 (instruction finetuning).
    #[arg(long)]
    stage: u8,
    /// Model preset: tiny (a small random-initialised model on the built-in synthetic data, CPU),
    /// paper-2b-clip, paper-2b-dinov2, paper-7b-clip or paper-7b-dinov2 (real checkpoints: give
    /// --lm and --vision, and --data).
    #[arg(long, default_value = "tiny")]
    preset: String,
    /// Gemma checkpoint directory (paper presets).
    #[arg(long)]
    lm: Option<PathBuf>,
    /// CLIP or DINOv2 checkpoint directory (paper presets).
    #[arg(long)]
    vision: Option<PathBuf>,
    /// cpu, cuda, cuda:N or auto (default: cpu for tiny, auto for the paper presets).
    #[arg(long)]
    device: Option<String>,
    /// Longest sample in tokens, image tokens included (default: 2048; 512 for tiny).
    #[arg(long)]
    max_length: Option<usize>,
    /// Records (a LLaVA JSON list); the built-in synthetic dataset when absent.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Image folder or zip.
    #[arg(long)]
    images: Option<PathBuf>,
    /// Output directory (default: out/pretrain or out/finetune).
    #[arg(long)]
    output: Option<PathBuf>,
    /// Stage 2: the connector file stage 1 wrote (default: out/pretrain/connector.safetensors if it
    /// exists; a seeded random connector otherwise, the paper's skip-pretraining ablation).
    #[arg(long)]
    connector: Option<PathBuf>,
    /// Start stage 2 from a random connector even when stage 1's exists.
    #[arg(long)]
    skip_pretraining: bool,
    /// Peak learning rate.
    #[arg(long)]
    lr: Option<f64>,
    /// Samples per forward pass.
    #[arg(long)]
    micro_batch: Option<usize>,
    /// Samples per optimizer step.
    #[arg(long)]
    global_batch: Option<usize>,
    /// Passes over the data.
    #[arg(long)]
    epochs: Option<usize>,
    /// Stop after this many optimizer steps.
    #[arg(long)]
    max_steps: Option<usize>,
    /// Checkpoint every this many optimizer steps.
    #[arg(long)]
    save_every: Option<usize>,
    /// Continue from this checkpoint directory.
    #[arg(long)]
    resume: Option<PathBuf>,
    /// Seed of the model's start, the data and its order.
    #[arg(long)]
    seed: Option<u64>,
    /// Tiny preset: training images of the built-in synthetic dataset.
    #[arg(long)]
    synthetic_images: Option<usize>,
}

#[derive(Debug, clap::Args)]
struct EvalCmd {
    /// LLaVA model directory.
    #[arg(long)]
    model: PathBuf,
    /// gqa, mme, pope, vqav2, sqa, mmvp, mmvet, synthetic, or all (the paper's seven).
    #[arg(long, default_value = "all")]
    bench: String,
    /// The data root (LLaVA's playground/data/eval; for synthetic, the synthetic data folder).
    #[arg(long)]
    data: PathBuf,
    /// Where answers and scores go (default: <model>/eval).
    #[arg(long)]
    output: Option<PathBuf>,
    /// Questions per generation batch.
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// New tokens per answer (default: 128; 1024 for MM-Vet).
    #[arg(long)]
    max_new_tokens: Option<usize>,
    /// Answer at most this many questions per benchmark.
    #[arg(long)]
    limit: Option<usize>,
    /// cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "auto")]
    device: String,
    /// Print only the JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
struct Grade {
    /// mmvet or mmvp.
    #[arg(long)]
    bench: String,
    /// The model's answer file.
    #[arg(long)]
    answers: PathBuf,
    /// MM-Vet: mm-vet.json; MMVP: Questions.csv.
    #[arg(long)]
    reference: PathBuf,
    /// The grades file to write (appended to; graded ids are not asked again).
    #[arg(long)]
    grades: PathBuf,
    /// The API base, e.g. https://api.openai.com/v1.
    #[arg(long, default_value = "https://api.openai.com/v1")]
    url: String,
    /// The judge model (MM-Vet's paper used gpt-4-0613, MMVP's gpt-4).
    #[arg(long, default_value = "gpt-4-0613")]
    judge_model: String,
    /// Environment variable that holds the API key.
    #[arg(long, default_value = "OPENAI_API_KEY")]
    api_key_env: String,
    /// At most this many requests per minute.
    #[arg(long)]
    rpm: Option<f64>,
    /// Tries per request.
    #[arg(long, default_value_t = 6)]
    max_tries: u32,
    /// Write the grading requests (JSON lines) here and stop.
    #[arg(long)]
    requests_only: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
struct Score {
    /// gqa, mme, pope, vqav2, sqa, mmvp or mmvet.
    #[arg(long)]
    bench: String,
    /// The answer file in LLaVA's format (a folder: MME's <subtask>.txt results, or .jsonl chunks).
    #[arg(long)]
    answers: Option<PathBuf>,
    /// The question file (POPE: llava_pope_test.jsonl; VQAv2: the questions to score; MMVP:
    /// Questions.csv).
    #[arg(long)]
    questions: Option<PathBuf>,
    /// Reference answers: GQA questions JSON, POPE label folder, VQAv2 annotations JSON, the
    /// ScienceQA folder (problems.json, pid_splits.json), or mm-vet.json.
    #[arg(long)]
    annotations: Option<PathBuf>,
    /// The judge's grades (MMVP, MM-Vet), JSON lines.
    #[arg(long)]
    grades: Option<PathBuf>,
    /// VQAv2: write the test-dev submission file here.
    #[arg(long)]
    submission: Option<PathBuf>,
    /// POPE: pair answers with labels by `position` (LLaVA's eval_pope.py) or by `image-question`
    /// (for label files whose order does not follow LLaVA's question file).
    #[arg(long, default_value = "position")]
    pair_by: llava::score_cmd::Pairing,
    /// Print one JSON object on one line (the default prints it indented).
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
struct BenchGenerate {
    /// bench-small, paper-2b-clip or paper-2b-dinov2.
    #[arg(long, default_value = "paper-2b-clip")]
    preset: String,
    /// Prompts per batch.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Prompt length in tokens, image tokens included.
    #[arg(long, default_value_t = 608)]
    prompt_len: usize,
    /// New tokens per prompt.
    #[arg(long, default_value_t = 128)]
    new_tokens: usize,
    /// Timed runs (the best is reported).
    #[arg(long, default_value_t = 2)]
    runs: usize,
    /// cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "auto")]
    device: String,
    /// f32, bf16 or f16 (default: bf16 on CUDA, f32 on CPU).
    #[arg(long)]
    dtype: Option<String>,
}

#[derive(Debug, clap::Args)]
struct BenchTrain {
    /// bench-small, paper-2b-clip or paper-2b-dinov2.
    #[arg(long, default_value = "bench-small")]
    preset: String,
    /// 1 (connector) or 2 (LM + connector).
    #[arg(long, default_value_t = 2)]
    stage: u8,
    /// Samples per step (default: 4 for bench-small; 8 for stage 1 and 4 for stage 2 otherwise).
    #[arg(long)]
    micro_batch: Option<usize>,
    /// Tokens per sample, image included (default: 256 for bench-small; 640 / 1024 otherwise).
    #[arg(long)]
    seq: Option<usize>,
    /// Labelled tokens per sample (default: 96 for bench-small; every text token otherwise).
    #[arg(long)]
    loss_tokens: Option<usize>,
    /// Timed steps.
    #[arg(long, default_value_t = 10)]
    steps: usize,
    /// Untimed warm-up steps.
    #[arg(long, default_value_t = 3)]
    warmup: usize,
    /// cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "auto")]
    device: String,
    /// Print only the JSON object.
    #[arg(long)]
    json: bool,
    /// Also write a kernel-by-kernel profile of two more steps to this file (tab-separated:
    /// total milliseconds, calls, kernel).
    #[arg(long)]
    profile: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
struct BenchVision {
    /// bench-small, paper-2b-clip or paper-2b-dinov2.
    #[arg(long, default_value = "paper-2b-clip")]
    preset: String,
    /// Images per batch.
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Timed runs (the best is reported).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "auto")]
    device: String,
    /// f32, bf16 or f16 (default: bf16 on CUDA, f32 on CPU).
    #[arg(long)]
    dtype: Option<String>,
}

fn device_and_kind(
    device: &str,
    dtype: &Option<String>,
) -> llava::Result<(tch::Device, tch::Kind)> {
    let device = parse_device(device)?;
    let kind = match dtype {
        Some(name) => parse_kind(name)?,
        None => llava::foundation::device::default_kind(device),
    };
    Ok((device, kind))
}

#[derive(Debug, Subcommand)]
enum DataCommand {
    /// Check every record, image and sample length; report what is unusable and why.
    Check {
        #[command(flatten)]
        data: DataArgs,
        /// Print one JSON object (records, ok, bad, text_only, bad_ids, reasons, bad_samples, tokens).
        #[arg(long)]
        json: bool,
        /// Only look images up; do not decode them.
        #[arg(long)]
        no_decode: bool,
    },
    /// Print one sample as the model sees it: each token with its label.
    Show {
        #[command(flatten)]
        data: DataArgs,
        /// Which usable record (0-based).
        #[arg(long, default_value_t = 0)]
        index: usize,
        /// Which record, by id (instead of --index).
        #[arg(long)]
        id: Option<String>,
    },
    /// Write a file shaped like llava_v1_5_mix665k.json (its sources, turn counts and lengths),
    /// for scale tests and benchmarks: 665,000 records are about 0.9 GB.
    MixLike {
        /// Where to write the JSON list.
        #[arg(long)]
        output: PathBuf,
        /// How many records.
        #[arg(long, default_value_t = 665_000)]
        records: usize,
        /// Seed of the draw.
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
}

#[derive(Debug, clap::Args)]
struct DataArgs {
    /// The JSON list of records (chat.json, blip_laion_cc_sbu_558k.json, llava_v1_5_mix665k.json).
    #[arg(long)]
    data: PathBuf,
    /// Image folder or zip (images.zip is read in place).
    #[arg(long)]
    images: Option<PathBuf>,
    /// Conversation template: gemma or plain.
    #[arg(long, default_value = "gemma")]
    template: String,
    /// Gemma directory or tokenizer.json (default: the built-in tiny tokenizer).
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Tokens one image becomes (576 for CLIP ViT-L/14-336).
    #[arg(long, default_value_t = 576)]
    tokens_per_image: usize,
    /// Longest sample in tokens.
    #[arg(long, default_value_t = 2048)]
    max_length: usize,
}

impl DataArgs {
    fn options(&self) -> llava::data_cmd::DataOptions {
        llava::data_cmd::DataOptions {
            data: self.data.clone(),
            images: self.images.clone(),
            template: self.template.clone(),
            tokenizer: self.tokenizer.clone(),
            tokens_per_image: self.tokens_per_image,
            max_length: self.max_length,
        }
    }
}

#[derive(Debug, clap::Args)]
struct Assemble {
    /// Gemma directory (config.json, safetensors, tokenizer.json).
    #[arg(long)]
    lm: PathBuf,
    /// CLIP or DINOv2 directory.
    #[arg(long)]
    vision: PathBuf,
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

/// Sampling and device flags shared by the generating commands.
#[derive(Debug, clap::Args)]
struct Sampling {
    /// Most tokens to generate.
    #[arg(long, default_value_t = 256)]
    max_new_tokens: usize,
    /// Sampling temperature; 0 (the default) decodes greedily.
    #[arg(long, default_value_t = 0.0)]
    temperature: f64,
    /// Sample among the k most likely tokens.
    #[arg(long)]
    top_k: Option<usize>,
    /// Sample among the most likely tokens with cumulative probability p.
    #[arg(long)]
    top_p: Option<f64>,
    /// Sampling seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "auto")]
    device: String,
    /// Weights and compute dtype: f32, bf16 or f16 (default: bf16 on CUDA, f32 on CPU).
    #[arg(long)]
    dtype: Option<String>,
}

impl Sampling {
    fn device_and_kind(&self) -> llava::Result<(tch::Device, tch::Kind)> {
        device_and_kind(&self.device, &self.dtype)
    }

    fn config(&self) -> GenerationConfig {
        GenerationConfig {
            max_new_tokens: self.max_new_tokens,
            temperature: Some(self.temperature),
            top_k: self.top_k,
            top_p: self.top_p,
            seed: self.seed,
            ..GenerationConfig::default()
        }
    }
}

#[derive(Debug, clap::Args)]
struct Generate {
    /// LLaVA model directory: config.json, safetensors weights, tokenizer.json.
    #[arg(long)]
    model: PathBuf,
    /// The image (JPEG, PNG, WebP or GIF).
    #[arg(long)]
    image: PathBuf,
    /// The question.
    #[arg(long)]
    prompt: String,
    /// Scale image features by sqrt(hidden) as the original LLaVA-Gemma code did (Intel's checkpoints).
    #[arg(long)]
    scale_image_features: bool,
    #[command(flatten)]
    sampling: Sampling,
}

#[derive(Debug, clap::Args)]
struct Chat {
    /// LLaVA model directory: config.json, safetensors weights, tokenizer.json.
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

#[derive(Debug, clap::Args)]
struct GenerateText {
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

fn main() -> ExitCode {
    llava::foundation::torch_panic::install_hook();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Parity { fixtures } => run_parity(&fixtures),
        Command::Generate(args) => generate_about_image(&args),
        Command::Chat(args) => chat(&args),
        Command::GenerateText(args) => generate_text(&args),
        Command::Assemble(args) => assemble(&args),
        Command::Serve(args) => serve_cmd::run(&args),
        Command::Data(command) => data_command(&command),
        Command::Train(args) => train(&args),
        Command::Score(args) => score(&args),
        Command::Eval(args) => eval(&args),
        Command::Grade(args) => grade(&args),
        Command::EvalSynthetic {
            model,
            data,
            report,
        } => eval_synthetic(&model, &data, report.as_deref()),
        Command::BenchGenerate(a) => {
            device_and_kind(&a.device, &a.dtype).and_then(|(device, kind)| {
                let report = llava::bench::generate(
                    &a.preset,
                    device,
                    kind,
                    a.batch,
                    a.prompt_len,
                    a.new_tokens,
                    a.runs,
                )?;
                println!(
                    "{}",
                    serde_json::to_string(&report).expect("reports serialise")
                );
                Ok(ExitCode::SUCCESS)
            })
        }
        Command::BenchTrain(a) => bench_train(&a),
        Command::BenchVision(a) => {
            device_and_kind(&a.device, &a.dtype).and_then(|(device, kind)| {
                let report = llava::bench::vision(&a.preset, device, kind, a.batch, a.runs)?;
                println!(
                    "{}",
                    serde_json::to_string(&report).expect("reports serialise")
                );
                Ok(ExitCode::SUCCESS)
            })
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run_parity(fixtures: &[PathBuf]) -> llava::Result<ExitCode> {
    let (mut passed, mut failed) = (0, 0);
    for dir in fixtures {
        match parity::run(dir) {
            Ok(report) => {
                print!("{report}");
                if report.passed() {
                    passed += 1;
                } else {
                    failed += 1;
                }
            }
            Err(e) => {
                println!("{}: ERROR {e}", dir.display());
                failed += 1;
            }
        }
    }
    println!("parity: {passed} passed, {failed} failed");
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// A model argument as a directory: a path as it is, or a Hugging Face id (`Intel/llava-gemma-2b`)
/// through the local Hugging Face cache, downloading when a network is there.
fn model_path(arg: &std::path::Path) -> llava::Result<PathBuf> {
    Ok(llava::foundation::hub::resolve_model(arg)?)
}

fn open_chat(
    model: &std::path::Path,
    image: &std::path::Path,
    scale: bool,
    sampling: &Sampling,
) -> llava::Result<ImageChat> {
    let (device, kind) = sampling.device_and_kind()?;
    let model = &model_path(model)?;
    let start = Instant::now();
    let chat = ImageChat::open(model, image, device, kind, scale.then_some(true))?;
    eprintln!(
        "loaded {} on {device:?} as {kind:?} in {:.2}s",
        model.display(),
        start.elapsed().as_secs_f64()
    );
    Ok(chat)
}

fn generate_about_image(args: &Generate) -> llava::Result<ExitCode> {
    let chat = open_chat(
        &args.model,
        &args.image,
        args.scale_image_features,
        &args.sampling,
    )?;
    let mut stdout = std::io::stdout().lock();
    let start = Instant::now();
    let (_, tokens) = chat.answer(
        &[Message::user(args.prompt.as_str())],
        &args.sampling.config(),
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

fn chat(args: &Chat) -> llava::Result<ExitCode> {
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

fn eval_synthetic(
    model_dir: &std::path::Path,
    data: &std::path::Path,
    report: Option<&std::path::Path>,
) -> llava::Result<ExitCode> {
    use llava::eval::runner::{self, Bench, RunSettings};
    use llava::eval::synthetic;
    let model = llava::llava_model::LlavaModel::from_pretrained(
        model_dir,
        tch::Device::Cpu,
        tch::Kind::Float,
    )?;
    let tokenizer = llava::gemma_lm::GemmaTokenizer::from_file(model_dir)?;
    let processor = llava::vision_encoders::processing::ImageProcessor::new(
        model.image_processor(Some(model_dir))?,
    );
    let eval_err = |e: llava::eval::Error| llava::Error::Unsupported(e.to_string());
    let questions = runner::read_questions(Bench::Synthetic, &data.join("eval_questions.jsonl"))
        .map_err(eval_err)?;
    // Answers go next to the report (or the data); they belong to this model, so a new run
    // starts them afresh.
    let answers_dir = report
        .and_then(|r| r.parent())
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(data)
        .join("answers");
    let settings = RunSettings {
        batch: 32,
        max_new_tokens: 12,
        model_id: model_dir.display().to_string(),
    };
    let run = |name: &str, questions: &[runner::EvalQuestion]| -> llava::Result<_> {
        let file = answers_dir.join(name);
        let _ = std::fs::remove_file(&file);
        let stats = runner::answer_questions(
            runner::Assistant {
                model: &model,
                tokenizer: &tokenizer,
                processor: &processor,
            },
            questions,
            &data.join("images"),
            &file,
            &settings,
            |_, _| {},
        )
        .map_err(eval_err)?;
        let answers = llava::eval::score::read_answers(&file).map_err(eval_err)?;
        let accuracy =
            synthetic::score(answers, &data.join("eval_answers.jsonl")).map_err(eval_err)?;
        Ok((stats, accuracy))
    };
    let (stats, heldout) = run("heldout.jsonl", &questions)?;
    let (_, shuffled) = run("shuffled.jsonl", &synthetic::shuffled(&questions))?;
    let json = serde_json::json!({
        "heldout_accuracy": heldout.accuracy,
        "shuffled_image_accuracy": shuffled.accuracy,
        "questions": heldout.count,
        "by_kind": heldout.by_kind,
        "shuffled_by_kind": shuffled.by_kind,
        "questions_per_s": stats.questions_per_s,
        "answers": answers_dir.display().to_string(),
    });
    let text = serde_json::to_string_pretty(&json).expect("serialises");
    println!("{text}");
    if let Some(path) = report {
        llava::foundation::write_atomic(path, text.as_bytes())?;
    }
    Ok(ExitCode::SUCCESS)
}

fn train(args: &Train) -> llava::Result<ExitCode> {
    let default_output = PathBuf::from(if args.stage == 1 {
        "out/pretrain"
    } else {
        "out/finetune"
    });
    let mut config = llava::trainer::RunConfig::preset(
        &args.preset,
        args.stage,
        args.output.clone().unwrap_or(default_output),
    )
    .map_err(|e| llava::Error::Unsupported(e.to_string()))?;
    config.lm = args.lm.as_deref().map(model_path).transpose()?;
    config.vision = args.vision.as_deref().map(model_path).transpose()?;
    if let Some(v) = &args.device {
        config.device = v.clone();
    }
    if let Some(v) = args.max_length {
        config.max_length = v;
    }
    config.data = args.data.clone();
    config.images = args.images.clone();
    config.connector = match (&args.connector, args.stage, args.skip_pretraining) {
        (Some(file), _, _) => Some(file.clone()),
        (None, 2, false) => {
            Some(PathBuf::from("out/pretrain/connector.safetensors")).filter(|p| p.exists())
        }
        _ => None,
    };
    if let Some(v) = args.lr {
        config.lr = v;
    }
    if let Some(v) = args.micro_batch {
        config.micro_batch = v;
    }
    if let Some(v) = args.global_batch {
        config.global_batch = v;
    }
    if let Some(v) = args.epochs {
        config.epochs = v;
    }
    if let Some(v) = args.seed {
        config.seed = v;
    }
    if let Some(v) = args.synthetic_images {
        config.synthetic_images = v;
    }
    config.max_steps = args.max_steps;
    if args.save_every.is_some() {
        config.save_every = args.save_every;
    }
    config.resume = args.resume.clone();
    eprintln!(
        "stage {} ({}), output {}, connector {}",
        config.stage,
        config.preset,
        config.output.display(),
        config
            .connector
            .as_ref()
            .map_or("random".into(), |c| c.display().to_string())
    );
    let start = Instant::now();
    // A progress bar on a terminal; one plain line per step (every tenth on long runs) otherwise.
    let bar = std::io::IsTerminal::is_terminal(&std::io::stderr()).then(|| {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:30} {pos}/{len} steps  {msg}  {elapsed} elapsed, {eta} left",
            )
            .expect("a valid template"),
        );
        bar
    });
    let summary = llava::trainer::run(&config, |m| match &bar {
        Some(bar) => {
            bar.set_length(m.total_steps as u64);
            bar.set_position(m.step as u64);
            bar.set_message(format!(
                "loss {:.4}  {:.0} samples/s  {:.0} tokens/s",
                m.loss, m.samples_per_s, m.tokens_per_s
            ));
        }
        None if m.total_steps <= 1000 || m.step % 10 == 0 || m.step == m.total_steps => {
            eprintln!(
                "step {:>5}/{}  loss {:.4}  lr {:.2e}  grad_norm {:.3}  {:.0} samples/s  {:.0} tokens/s",
                m.step, m.total_steps, m.loss, m.lr, m.grad_norm, m.samples_per_s, m.tokens_per_s
            );
        }
        None => {}
    })
    .map_err(|e| llava::Error::Unsupported(e.to_string()))?;
    if let Some(bar) = bar {
        bar.finish();
    }
    eprintln!(
        "done in {:.1}s: {} steps, {} samples, {} skipped, loss {:.4} -> {:.4}",
        start.elapsed().as_secs_f64(),
        summary.steps,
        summary.samples_seen,
        summary.samples_skipped,
        summary.first_loss,
        summary.final_loss
    );
    if let Some(bytes) = summary.peak_memory_bytes {
        eprintln!("peak memory {:.2} GiB", bytes as f64 / (1u64 << 30) as f64);
    }
    eprintln!("wrote {}", config.output.display());
    Ok(ExitCode::SUCCESS)
}

fn eval(args: &EvalCmd) -> llava::Result<ExitCode> {
    use llava::eval::runner::Bench;
    let benches = if args.bench == "all" {
        Bench::PAPER.to_vec()
    } else {
        args.bench
            .split(',')
            .map(|b| Bench::parse(b.trim()))
            .collect::<Result<_, _>>()
            .map_err(|e| llava::Error::Unsupported(e.to_string()))?
    };
    let model = model_path(&args.model)?;
    // A local model keeps its answers beside it; a model from the Hugging Face cache in out/eval/.
    let default_output = if model == args.model {
        model.join("eval")
    } else {
        PathBuf::from("out/eval").join(args.model.to_string_lossy().replace('/', "--"))
    };
    let eval_args = llava::eval_cmd::EvalArgs {
        model,
        benches,
        data: args.data.clone(),
        output: args.output.clone().unwrap_or(default_output),
        batch: args.batch,
        max_new_tokens: args.max_new_tokens,
        limit: args.limit,
        device: args.device.clone(),
    };
    std::fs::create_dir_all(&eval_args.output)
        .map_err(|e| llava::Error::io(&eval_args.output, e))?;
    let result = llava::eval_cmd::run(&eval_args, |line| eprintln!("{line}"))?;
    let text = serde_json::to_string_pretty(&result).expect("serialises");
    llava::foundation::write_atomic(eval_args.output.join("scores.json"), text.as_bytes())?;
    if args.json {
        println!("{result}");
    } else {
        println!(
            "{text}\n\n{}",
            llava::eval_cmd::markdown_row(&result["row"])
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn grade(args: &Grade) -> llava::Result<ExitCode> {
    use llava::eval::grade::{self, Client, Endpoint, Judge};
    let err = |e: llava::eval::Error| llava::Error::Unsupported(e.to_string());
    let mut answers = llava::eval::score::read_answers(&args.answers).map_err(err)?;
    let (judge, requests) = match args.bench.as_str() {
        "mmvet" | "mm-vet" => {
            let ann = llava::eval::score::read_json(&args.reference).map_err(err)?;
            (Judge::MmVet, grade::mmvet_requests(&mut answers, &ann))
        }
        "mmvp" => {
            let rows = grade::mmvp_rows(&args.reference).map_err(err)?;
            (Judge::Mmvp, grade::mmvp_requests(&mut answers, &rows))
        }
        other => {
            return Err(llava::Error::Unsupported(format!(
                "`{other}` has no LLM judge (mmvet, mmvp)"
            )));
        }
    };
    if let Some(path) = &args.requests_only {
        grade::write_requests(&requests, path).map_err(err)?;
        eprintln!(
            "wrote {} grading requests to {}",
            requests.len(),
            path.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let mut client = Client::new(Endpoint {
        url: args.url.clone(),
        model: args.judge_model.clone(),
        api_key: std::env::var(&args.api_key_env).ok(),
        max_tries: args.max_tries,
        backoff: std::time::Duration::from_secs(2),
        requests_per_minute: args.rpm,
    });
    let stats = grade::grade(judge, &requests, &mut client, &args.grades).map_err(err)?;
    println!("{}", serde_json::to_string(&stats).expect("serialises"));
    Ok(ExitCode::SUCCESS)
}

fn bench_train(a: &BenchTrain) -> llava::Result<ExitCode> {
    let device = llava::foundation::device::parse_device(&a.device)?;
    let small = a.preset == "bench-small";
    let shape = llava::bench::TrainShape {
        stage: a.stage,
        micro_batch: a
            .micro_batch
            .unwrap_or(if small || a.stage == 2 { 4 } else { 8 }),
        seq: a.seq.unwrap_or(if small {
            256
        } else if a.stage == 1 {
            640
        } else {
            1024
        }),
        loss_tokens: a.loss_tokens.or(small.then_some(96)),
        steps: a.steps,
        warmup: a.warmup,
        profile: a.profile.clone(),
    };
    let report = llava::bench::train(&a.preset, device, &shape)?;
    print_json(&report, a.json);
    Ok(ExitCode::SUCCESS)
}

/// Prints `value` as one line of JSON (`--json`) or indented.
fn print_json(value: &impl serde::Serialize, one_line: bool) {
    let text = if one_line {
        serde_json::to_string(value)
    } else {
        serde_json::to_string_pretty(value)
    };
    println!("{}", text.expect("reports serialise"));
}

fn score(args: &Score) -> llava::Result<ExitCode> {
    let value = llava::score_cmd::score_with(
        &llava::score_cmd::ScoreArgs {
            bench: args.bench.clone(),
            answers: args.answers.clone(),
            questions: args.questions.clone(),
            annotations: args.annotations.clone(),
            grades: args.grades.clone(),
            submission: args.submission.clone(),
        },
        args.pair_by,
    )?;
    print_json(&value, args.json);
    Ok(ExitCode::SUCCESS)
}

fn data_command(command: &DataCommand) -> llava::Result<ExitCode> {
    match command {
        DataCommand::Check {
            data,
            json,
            no_decode,
        } => {
            let dataset = llava::data_cmd::open(&data.options())?;
            // A progress bar on a terminal: the 665K mix takes minutes.
            let bar = std::io::IsTerminal::is_terminal(&std::io::stderr()).then(|| {
                let bar = indicatif::ProgressBar::new(dataset.records.len() as u64);
                bar.set_style(
                    indicatif::ProgressStyle::with_template(
                        "{bar:30} {pos}/{len} records  {per_sec}  {elapsed} elapsed, {eta} left",
                    )
                    .expect("a valid template"),
                );
                bar
            });
            let report = llava::data::check_with_progress(&dataset, !no_decode, |done| {
                if let Some(bar) = &bar {
                    bar.set_position(done as u64);
                }
            });
            if let Some(bar) = bar {
                bar.finish_and_clear();
            }
            if *json {
                println!(
                    "{}",
                    serde_json::to_string(&report).expect("reports serialise")
                );
            } else {
                print!("{}", llava::data_cmd::summary(&report, &data.data));
            }
            Ok(ExitCode::SUCCESS)
        }
        DataCommand::MixLike {
            output,
            records,
            seed,
        } => {
            let bytes = llava::data::mix::write_mix_like(output, *records, *seed)?;
            eprintln!(
                "{}: {records} records, {:.1} MB",
                output.display(),
                bytes as f64 / 1e6
            );
            Ok(ExitCode::SUCCESS)
        }
        DataCommand::Show { data, index, id } => {
            let dataset = llava::data_cmd::open(&data.options())?;
            let index = match id {
                Some(id) => dataset
                    .records
                    .iter()
                    .position(|r| r.is_ok_and(|r| &r.id == id))
                    .ok_or_else(|| {
                        llava::Error::Unsupported(format!("no usable record has id `{id}`"))
                    })?,
                None => *index,
            };
            print!("{}", llava::data_cmd::show(&dataset, index)?);
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn assemble(args: &Assemble) -> llava::Result<ExitCode> {
    let parts = llava::llava_model::Parts {
        lm: model_path(&args.lm)?,
        vision: model_path(&args.vision)?,
        connector: args.connector.clone(),
        seed: args.seed,
        projector_type: args.projector_type.clone(),
        image_size: args.image_size,
    };
    let kind = parse_kind(&args.dtype)?;
    let (model, tokenizer) =
        llava::llava_model::LlavaModel::from_parts(&parts, tch::Device::Cpu, kind)?;
    model.save_pretrained(&args.output, Some(&tokenizer))?;
    println!(
        "wrote {} (image token {}, {} tokens per image, connector {})",
        args.output.display(),
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

fn generate_text(args: &GenerateText) -> llava::Result<ExitCode> {
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
