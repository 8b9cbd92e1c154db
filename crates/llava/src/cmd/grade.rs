//! `llava grade`: MM-Vet, MMVP and HallusionBench answers graded by an LLM judge.

use std::path::PathBuf;
use std::process::ExitCode;

/// Its arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// mmvet, mmvp, hallusionbench, or mmstar, ai2d, mmmu (VLMEvalKit's choice extractor, asked
    /// only about answers its rules cannot read).
    #[arg(long)]
    bench: String,
    /// The model's answer file.
    #[arg(long)]
    answers: PathBuf,
    /// MM-Vet: mm-vet.json; MMVP: Questions.csv; HallusionBench, MMStar, AI2D, MMMU: the
    /// benchmark's data file (VLMEvalKit's TSV, lmms-eval's parquet or rows).
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

/// Runs `llava grade`.
pub fn run(args: &Args) -> llava::Result<ExitCode> {
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
        "mmstar" | "ai2d" | "mmmu" => {
            let rows = llava::eval::records::read(&args.reference)
                .map_err(err)?
                .rows;
            (
                Judge::ChoiceExtractor,
                grade::choice_requests(&mut answers, &rows, &args.bench),
            )
        }
        "hallusionbench" => {
            let rows = llava::eval::records::read(&args.reference)
                .map_err(err)?
                .rows;
            (
                Judge::HallusionBench,
                grade::hallusion_requests(&mut answers, &rows),
            )
        }
        other => {
            return Err(llava::Error::Unsupported(format!(
                "`{other}` has no LLM judge (mmvet, mmvp, hallusionbench; mmstar, ai2d, mmmu: \
                 VLMEvalKit's choice extractor)"
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
