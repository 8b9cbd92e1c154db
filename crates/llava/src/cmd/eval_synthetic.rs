//! `llava eval-synthetic`: the held-out synthetic questions, right and wrong images.

use std::path::PathBuf;
use std::process::ExitCode;

/// Its arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// LLaVA model directory (stage 2's `model/`).
    #[arg(long)]
    pub model: PathBuf,
    /// The synthetic dataset folder (eval_questions.jsonl, eval_answers.jsonl, images/).
    #[arg(long)]
    pub data: PathBuf,
    /// Where to write report.json (prints it either way).
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// `int8`, `int4` or `int4:G`: answer with the language model quantized (see `llava generate
    /// --quantize`); the report then also gives the share of held-out answers equal to the plain
    /// model's (greedy agreement).
    #[arg(long)]
    pub quantize: Option<String>,
}

/// Runs it.
pub fn run(args: &Args) -> llava::Result<ExitCode> {
    let (model_dir, data, report) = (
        args.model.as_path(),
        args.data.as_path(),
        args.report.as_deref(),
    );
    use llava::eval::runner::{self, Bench, RunSettings};
    use llava::eval::synthetic;
    let load = || {
        llava::llava_model::LlavaModel::from_pretrained(
            model_dir,
            tch::Device::Cpu,
            tch::Kind::Float,
        )
    };
    let mut model = load()?;
    llava::chat::quantize(&mut model, args.quantize.as_deref())?;
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
    let run_with = |model: &llava::llava_model::LlavaModel,
                    name: &str,
                    questions: &[runner::EvalQuestion]|
     -> llava::Result<_> {
        let file = answers_dir.join(name);
        let _ = std::fs::remove_file(&file);
        let stats = runner::answer_questions(
            runner::Assistant {
                model,
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
        let texts = answer_texts(answers.lines.iter());
        let accuracy =
            synthetic::score(answers, &data.join("eval_answers.jsonl")).map_err(eval_err)?;
        Ok((stats, accuracy, texts))
    };
    let run = |name: &str, questions: &[runner::EvalQuestion]| run_with(&model, name, questions);
    let (stats, heldout, texts) = run("heldout.jsonl", &questions)?;
    let (_, shuffled, _) = run("shuffled.jsonl", &synthetic::shuffled(&questions))?;
    // Greedy agreement with the plain model, question by question.
    let agreement = match &args.quantize {
        None => None,
        Some(_) => {
            let (_, dense, dense_texts) = run_with(&load()?, "heldout-plain.jsonl", &questions)?;
            let same = texts
                .iter()
                .filter(|(id, text)| dense_texts.get(*id) == Some(*text))
                .count();
            Some(serde_json::json!({
                "plain_heldout_accuracy": dense.accuracy,
                "same_answers": same as f64 / texts.len().max(1) as f64,
            }))
        }
    };
    let json = serde_json::json!({
        "heldout_accuracy": heldout.accuracy,
        "shuffled_image_accuracy": shuffled.accuracy,
        "questions": heldout.count,
        "by_kind": heldout.by_kind,
        "shuffled_by_kind": shuffled.by_kind,
        "questions_per_s": stats.questions_per_s,
        "answers": answers_dir.display().to_string(),
        "quantize": args.quantize,
        "against_plain": agreement,
    });
    let text = serde_json::to_string_pretty(&json).expect("serialises");
    println!("{text}");
    if let Some(path) = report {
        llava::foundation::write_atomic(path, text.as_bytes())?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Each answer's text by question id.
fn answer_texts<'a>(
    lines: impl Iterator<Item = &'a llava::eval::score::AnswerLine>,
) -> std::collections::BTreeMap<String, String> {
    lines
        .map(|l| (l.question_id.clone(), l.text.clone()))
        .collect()
}
