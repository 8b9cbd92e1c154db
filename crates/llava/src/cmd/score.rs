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
    /// Also write the score's provenance manifest here (hashes of the answer and data files,
    /// versions, each metric's interval and units for `llava eval --compare`).
    #[arg(long)]
    manifest: Option<PathBuf>,
    /// Print one JSON object on one line (the default prints it indented).
    #[arg(long)]
    json: bool,
}

/// Runs `llava score`.
pub fn run(args: &Args) -> llava::Result<ExitCode> {
    let files = llava::eval::scoring::ScoreFiles {
        bench: args.bench.clone(),
        answers: args.answers.clone(),
        questions: args.questions.clone(),
        annotations: args.annotations.clone(),
        grades: args.grades.clone(),
        submission: args.submission.clone(),
        data: args.data.clone(),
    };
    let scored = llava::eval::scoring::score_full(&files, args.pair_by)?;
    if let Some(path) = &args.manifest {
        write_manifest(args, &scored, path)?;
    }
    print_json(&scored.value, args.json);
    Ok(ExitCode::SUCCESS)
}

/// The manifest of a score made from files (no model: the answers' own provenance is what the
/// files say).
fn write_manifest(
    args: &Args,
    scored: &llava::eval::scoring::Scored,
    path: &std::path::Path,
) -> llava::Result<()> {
    use llava::eval::manifest::{Manifest, hash_file};
    let answers = args.answers.as_deref().ok_or_else(|| {
        llava::eval::Error::Request("--manifest needs --answers (the file it describes)".into())
    })?;
    let settings = serde_json::json!({
        "scored_from_files": true,
        "judge_grades": args.grades.as_deref().map(hash_file).transpose()?,
    });
    let mut manifest = Manifest::new(
        &args.bench,
        answers,
        scored.value.clone(),
        scored.metrics.clone(),
        settings,
    )?;
    let reference = args
        .data
        .as_ref()
        .or(args.annotations.as_ref())
        .or(args.questions.as_ref());
    manifest.data = reference
        .filter(|p| p.is_file())
        .map(|p| hash_file(p))
        .transpose()?;
    manifest.write(path)?;
    Ok(())
}
