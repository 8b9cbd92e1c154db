//! `llava score`: a benchmark scored by its official rules.

use std::path::PathBuf;
use std::process::ExitCode;

use super::print_json;

/// Its arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// gqa, mme, pope, vqav2, sqa, mmvp, mmvet (the paper's), or mmstar, mmmu, ocrbench, ai2d,
    /// textvqa, hallusionbench (scored from --data).
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
    /// MMStar, MMMU, OCRBench, AI2D, TextVQA, HallusionBench: the benchmark's data file,
    /// VLMEvalKit's TSV or lmms-eval's rows as .jsonl/.json.
    #[arg(long)]
    data: Option<PathBuf>,
    /// POPE: pair answers with labels by `position` (LLaVA's eval_pope.py) or by `image-question`
    /// (for label files whose order does not follow LLaVA's question file).
    #[arg(long, default_value = "position")]
    pair_by: llava::eval::score::pope::Pairing,
    /// Print one JSON object on one line (the default prints it indented).
    #[arg(long)]
    json: bool,
}

/// Runs `llava score`.
pub fn run(args: &Args) -> llava::Result<ExitCode> {
    let value = llava::eval::scoring::score_with(
        &llava::eval::scoring::ScoreFiles {
            bench: args.bench.clone(),
            answers: args.answers.clone(),
            questions: args.questions.clone(),
            annotations: args.annotations.clone(),
            grades: args.grades.clone(),
            submission: args.submission.clone(),
            data: args.data.clone(),
        },
        args.pair_by,
    )?;
    print_json(&value, args.json);
    Ok(ExitCode::SUCCESS)
}
