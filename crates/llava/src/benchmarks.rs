//! Answering and scoring benchmarks with a LLaVA model directory, as `llava eval` does: the model,
//! its tokenizer and its image processor loaded, then each benchmark's questions (found in the
//! layout of LLaVA's `playground/data/eval`, [`eval::layout`]) answered by [`eval::runner`],
//! scored, and summed up in the paper's Table 1 row ([`eval::table`]).

use std::path::{Path, PathBuf};

use eval::layout::Layout;
use eval::manifest::Manifest;
use eval::runner::{self, Assistant, Bench, RunSettings};
use gemma_lm::GemmaTokenizer;
use llava_model::LlavaModel;
use serde_json::{Value, json};
use vision_encoders::processing::ImageProcessor;

use crate::Result;

/// What `llava eval` needs.
#[derive(Debug, Clone)]
pub struct EvalArgs {
    /// The LLaVA model directory.
    pub model: PathBuf,
    /// The benchmarks to run.
    pub benches: Vec<Bench>,
    /// The data root.
    pub data: PathBuf,
    /// Where answers and scores go.
    pub output: PathBuf,
    /// Questions per batch.
    pub batch: usize,
    /// New tokens per answer (each benchmark's default when `None`).
    pub max_new_tokens: Option<usize>,
    /// Answer at most this many questions per benchmark (for a quick look; scores then cover
    /// the answered questions only where the scorer allows).
    pub limit: Option<usize>,
    /// `cpu`, `cuda`, `auto`.
    pub device: String,
    /// The language model's linear layers quantized when it loads (`int8`, `int4`, `int4:G`;
    /// see `LlavaModel::quantize`).
    pub quantize: Option<String>,
}

/// The model, tokenizer and image processor of a model directory.
struct Loaded {
    model: LlavaModel,
    tokenizer: GemmaTokenizer,
    processor: ImageProcessor,
}

impl Loaded {
    fn open(dir: &Path, device: &str, quantize: Option<&str>) -> Result<Self> {
        let device = foundation::device::parse_device(device)?;
        let kind = foundation::device::default_kind(device);
        let mut model = LlavaModel::from_pretrained(dir, device, kind)?;
        crate::chat::quantize(&mut model, quantize)?;
        let tokenizer = GemmaTokenizer::from_file(dir)?;
        let processor = ImageProcessor::new(model.image_processor(Some(dir))?);
        Ok(Loaded {
            model,
            tokenizer,
            processor,
        })
    }

    fn assistant(&self) -> Assistant<'_> {
        Assistant {
            model: &self.model,
            tokenizer: &self.tokenizer,
            processor: &self.processor,
        }
    }
}

/// Runs and scores each benchmark, passing progress lines to `log`; returns `{"model": dir,
/// "scores": {bench: score}, "row": {column: value}}`. A benchmark without its question file is
/// skipped; answers already in the output are kept, so a run cut short resumes.
pub fn run(args: &EvalArgs, mut log: impl FnMut(&str)) -> Result<Value> {
    let loaded = Loaded::open(&args.model, &args.device, args.quantize.as_deref())?;
    let model_name = args
        .model
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("model")
        .to_string();
    let mut scores = serde_json::Map::new();
    let mut model_files = None;
    for &bench in &args.benches {
        let files = Layout::of(bench, &args.data, &model_name);
        if !files.questions.exists() {
            log(&format!(
                "{}: skipped, no question file at {}",
                bench.name(),
                files.questions.display()
            ));
            continue;
        }
        let (value, mut manifest) =
            answer_and_score(&loaded, bench, &files, args, &model_name, &mut log)?;
        // The model's files are hashed once per run.
        if model_files.is_none() {
            model_files = Some(eval::manifest::hash_dir(&args.model)?);
        }
        manifest.model_files = model_files.clone().unwrap_or_default();
        let path = args.output.join(format!("{}.manifest.json", bench.name()));
        manifest.write(&path)?;
        scores.insert(bench.name().to_string(), value);
    }
    let row = eval::table::table_row(&scores);
    let recent = eval::table::recent_row(&scores);
    Ok(json!({
        "model": args.model,
        "quantize": args.quantize,
        "scores": scores,
        "row": row,
        "recent_row": recent,
    }))
}

/// Answers `bench`'s questions (those not answered yet) into `<output>/<bench>.jsonl` and scores
/// them; the score carries the run's statistics under `run`. Also returns the run's manifest
/// (without the model's file hashes, which the caller adds once per run).
fn answer_and_score(
    loaded: &Loaded,
    bench: Bench,
    files: &Layout,
    args: &EvalArgs,
    model_name: &str,
    log: &mut impl FnMut(&str),
) -> Result<(Value, Manifest)> {
    let (mut questions, images, targets) = if files.from_data_file(bench) {
        let asked = eval::recent::questions(bench, &files.questions)?;
        if let Some(first) = asked.bad.first() {
            log(&format!(
                "{}: {} rows left out, first: {first}",
                bench.name(),
                asked.bad.len(),
            ));
        }
        (asked.questions, asked.image_dir, asked.targets)
    } else {
        (
            runner::read_questions(bench, &files.questions)?,
            files.images.clone(),
            Vec::new(),
        )
    };
    if let Some(n) = args.limit {
        questions.truncate(n);
    }
    let answers = args.output.join(format!("{}.jsonl", bench.name()));
    let settings = RunSettings {
        batch: args.batch,
        max_new_tokens: args.max_new_tokens.unwrap_or(bench.max_new_tokens()),
        model_id: model_name.to_string(),
    };
    let name = bench.name();
    let progress = |done: usize, total: usize| {
        if done % (settings.batch * 10).max(1) == 0 || done == total {
            eprintln!("{name}: {done}/{total}");
        }
    };
    let stats = runner::answer_questions(
        loaded.assistant(),
        &questions,
        &images,
        &answers,
        &settings,
        progress,
    )?;
    log(&format!(
        "{name}: {} answered ({} already), {} failed, {:.2} questions/s -> {}",
        stats.answered,
        stats.already_answered,
        stats.failed,
        stats.questions_per_s,
        answers.display()
    ));
    let (mut value, metrics) = if bench.from_data_file() {
        let s = eval::scoring::score_data(bench.scored_as(), &files.questions, &answers)?;
        let written = write_lmms_eval(bench, &s, &questions, &targets, &answers, args, &settings)?;
        log(&format!(
            "{name}: lmms-eval's files -> {}",
            written.results.display()
        ));
        (s.to_json(), s.metrics)
    } else {
        let s = files.score_full(bench, &answers, &args.output)?;
        (s.value, s.metrics)
    };
    value["run"] = json!(stats);
    let example = match questions.first() {
        Some(q) => Some(runner::example_prompt(loaded.assistant(), q)?),
        None => None,
    };
    let run_settings = json!({
        "preprocessing": format!("{:?}", loaded.processor.config()),
        "prompt": {
            "format": "the model's chat template (Gemma's turns), images first",
            "example": example,
            "suffixes": {"short_answer": runner::SHORT_ANSWER, "multiple_choice": runner::MULTIPLE_CHOICE},
        },
        "decoding": {
            "strategy": "greedy",
            "max_new_tokens": settings.max_new_tokens,
            "batch": settings.batch,
            "stop": "the chat template's end of turn, or <eos>",
        },
        "limit": args.limit,
        "quantize": args.quantize,
        "device": args.device,
        "judge": Value::Null,
    });
    let mut manifest = Manifest::new(bench.name(), &answers, value.clone(), metrics, run_settings)?;
    manifest.data = files
        .questions
        .exists()
        .then(|| eval::manifest::hash_file(&files.questions))
        .transpose()?;
    Ok((value, manifest))
}

/// The run written as lmms-eval writes its own, under `<output>/lmms-eval/`: answers paired with
/// their questions in document order.
fn write_lmms_eval(
    bench: Bench,
    score: &eval::score::BenchScore,
    questions: &[runner::EvalQuestion],
    targets: &[Value],
    answers: &Path,
    args: &EvalArgs,
    settings: &RunSettings,
) -> Result<eval::lmms_eval::Written> {
    let mut lines = eval::score::read_answers(answers)?;
    let by_id = lines.by_id();
    let per_question = score.per_question();
    let samples: Vec<eval::lmms_eval::Sample<'_>> = questions
        .iter()
        .zip(targets)
        .filter_map(|(q, target)| {
            let id = eval::score::id_key(&q.question_id)?;
            let answer = by_id.get(&id)?;
            Some(eval::lmms_eval::Sample {
                question: q,
                answer,
                target: target.clone(),
                score: per_question.get(id.as_str()).copied(),
            })
        })
        .collect();
    let generation = json!({
        "max_new_tokens": settings.max_new_tokens,
        "temperature": 0,
        "do_sample": false,
        "batch": settings.batch,
    });
    Ok(eval::lmms_eval::write(
        &args.output.join("lmms-eval"),
        &settings.model_id,
        &eval::lmms_eval::date_now(),
        bench,
        score,
        &samples,
        &generation,
    )?)
}
