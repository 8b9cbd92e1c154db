//! `llava eval`: answer a benchmark's questions with a model and score them, finding the files in
//! the layout of LLaVA's `playground/data/eval` folder (or where flags say), and print the row of
//! the paper's Table 1.

use std::path::{Path, PathBuf};

use eval::runner::{self, Bench, RunSettings};
use eval::score::{self, read_answers};
use serde_json::{Value, json};

use crate::score_cmd::{ScoreArgs, score};
use crate::{Error, Result};

/// Where a benchmark's files sit under the data root (LLaVA's `playground/data/eval`).
#[derive(Debug, Clone)]
pub struct Layout {
    /// The question file.
    pub questions: PathBuf,
    /// The image folder.
    pub images: PathBuf,
    /// The reference answers for the scorer (absent for VQAv2 test-dev).
    pub annotations: Option<PathBuf>,
    /// The judge's grades, when a grader has written them (MM-Vet, MMVP).
    pub grades: Option<PathBuf>,
}

/// The layout of `bench` under `root`.
pub fn layout(bench: Bench, root: &Path, model_name: &str) -> Layout {
    let j = |p: &str| root.join(p);
    let grades = |dir: &str| Some(j(&format!("{dir}/grades/{model_name}.jsonl")));
    match bench {
        Bench::Gqa => Layout {
            questions: j("gqa/llava_gqa_testdev_balanced.jsonl"),
            images: j("gqa/data/images"),
            annotations: Some(j("gqa/data/testdev_balanced_questions.json")),
            grades: None,
        },
        Bench::Mme => Layout {
            questions: j("MME/llava_mme.jsonl"),
            images: j("MME/MME_Benchmark_release_version"),
            annotations: Some(j("MME/MME_Benchmark_release_version")),
            grades: None,
        },
        Bench::Pope => Layout {
            questions: j("pope/llava_pope_test.jsonl"),
            images: j("pope/val2014"),
            annotations: Some(j("pope/coco")),
            grades: None,
        },
        Bench::Vqav2 => Layout {
            questions: j("vqav2/llava_vqav2_mscoco_test-dev2015.jsonl"),
            images: j("vqav2/test2015"),
            annotations: None,
            grades: None,
        },
        Bench::Sqa => Layout {
            questions: j("scienceqa/llava_test_CQM-A.json"),
            images: j("scienceqa/images/test"),
            annotations: Some(j("scienceqa")),
            grades: None,
        },
        Bench::Mmvet => Layout {
            questions: j("mm-vet/llava-mm-vet.jsonl"),
            images: j("mm-vet/images"),
            annotations: Some(j("mm-vet/mm-vet.json")),
            grades: grades("mm-vet"),
        },
        Bench::Mmvp => Layout {
            questions: j("MMVP/Questions.csv"),
            images: j("MMVP/MMVP Images"),
            annotations: None,
            grades: grades("MMVP"),
        },
        Bench::Synthetic => Layout {
            questions: j("eval_questions.jsonl"),
            images: j("images"),
            annotations: Some(j("eval_answers.jsonl")),
            grades: None,
        },
    }
}

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
}

fn eval_error(e: eval::Error) -> Error {
    Error::Unsupported(e.to_string())
}

/// Runs and scores each benchmark; returns `{"scores": {bench: score}, "row": {column: value}}`.
pub fn run(args: &EvalArgs, mut log: impl FnMut(&str)) -> Result<Value> {
    let device = foundation::device::parse_device(&args.device)?;
    let kind = foundation::device::default_kind(device);
    let model = llava_model::LlavaModel::from_pretrained(&args.model, device, kind)?;
    let tokenizer = gemma_lm::GemmaTokenizer::from_file(&args.model)?;
    let processor =
        vision_encoders::processing::ImageProcessor::new(model.image_processor(Some(&args.model))?);
    let model_name = args
        .model
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("model")
        .to_string();
    let mut scores = serde_json::Map::new();
    for &bench in &args.benches {
        let files = layout(bench, &args.data, &model_name);
        if !files.questions.exists() {
            log(&format!(
                "{}: skipped, no question file at {}",
                bench.name(),
                files.questions.display()
            ));
            continue;
        }
        let mut questions = runner::read_questions(bench, &files.questions).map_err(eval_error)?;
        if let Some(n) = args.limit {
            questions.truncate(n);
        }
        let answers = args.output.join(format!("{}.jsonl", bench.name()));
        let settings = RunSettings {
            batch: args.batch,
            max_new_tokens: args.max_new_tokens.unwrap_or(bench.max_new_tokens()),
            model_id: model_name.clone(),
        };
        let name = bench.name();
        let stats = runner::answer_questions(
            runner::Assistant {
                model: &model,
                tokenizer: &tokenizer,
                processor: &processor,
            },
            &questions,
            &files.images,
            &answers,
            &settings,
            |done, total| {
                if done % (settings.batch * 10).max(1) == 0 || done == total {
                    eprintln!("{name}: {done}/{total}");
                }
            },
        )
        .map_err(eval_error)?;
        log(&format!(
            "{name}: {} answered ({} already), {} failed, {:.2} questions/s -> {}",
            stats.answered,
            stats.already_answered,
            stats.failed,
            stats.questions_per_s,
            answers.display()
        ));
        let mut value = score_bench(bench, &files, &answers, &args.output)?;
        value["run"] = json!(stats);
        scores.insert(name.to_string(), value);
    }
    let row = table_row(&scores);
    Ok(json!({"model": args.model, "scores": scores, "row": row}))
}

/// Scores one benchmark's answers with whatever reference files exist.
fn score_bench(bench: Bench, files: &Layout, answers: &Path, output: &Path) -> Result<Value> {
    let existing = |p: &Option<PathBuf>| p.clone().filter(|p| p.exists());
    let base = ScoreArgs {
        bench: bench.name().into(),
        answers: Some(answers.to_path_buf()),
        annotations: existing(&files.annotations),
        grades: existing(&files.grades),
        ..ScoreArgs::default()
    };
    Ok(match bench {
        Bench::Synthetic => {
            let answers = read_answers(answers).map_err(eval_error)?;
            let key = files.annotations.clone().unwrap_or_default();
            json!(eval::synthetic::score(answers, &key).map_err(eval_error)?)
        }
        Bench::Mme => match existing(&files.annotations) {
            Some(gt_root) => {
                let gt = score::mme::ground_truth(&gt_root).map_err(eval_error)?;
                let results = output.join("mme_results");
                let answers = read_answers(answers).map_err(eval_error)?;
                let issues = score::mme::convert(&answers, &gt, &results).map_err(eval_error)?;
                let mut v = score(&ScoreArgs {
                    answers: Some(results),
                    ..base
                })?;
                v["conversion_issues"] = json!(issues);
                v
            }
            None => json!({"note": "no MME ground truth folder to convert the answers with"}),
        },
        Bench::Pope => score(&ScoreArgs {
            questions: Some(files.questions.clone()),
            ..base
        })?,
        Bench::Vqav2 => {
            let submission = output.join("vqav2_submission.json");
            let test_questions = files
                .questions
                .with_file_name("llava_vqav2_mscoco_test2015.jsonl");
            let answers_set = read_answers(answers).map_err(eval_error)?;
            let ids: Option<Vec<Value>> = test_questions
                .exists()
                .then(|| eval::score::read_jsonl(&test_questions))
                .transpose()
                .map_err(eval_error)?
                .map(|(lines, _)| {
                    lines
                        .iter()
                        .filter_map(|l| l.get("question_id").cloned())
                        .collect()
                });
            let sub = score::vqav2::submission(&answers_set, ids.as_deref());
            foundation::write_atomic(&submission, sub.to_string().as_bytes())?;
            json!({
                "submission": submission,
                "note": "test-dev answers are scored by the EvalAI server: upload the submission file",
            })
        }
        Bench::Mmvet | Bench::Mmvp if base.grades.is_none() => json!({
            "note": "needs an LLM judge: run `llava grade` to write the grades file, then eval again",
        }),
        Bench::Mmvp => score(&ScoreArgs {
            questions: Some(files.questions.clone()),
            ..base
        })?,
        _ if base.annotations.is_none() => json!({"note": "no reference answers found"}),
        _ => score(&base)?,
    })
}

/// The paper's Table 1 columns from the scores (`null` where a benchmark was not scored). POPE's
/// accuracy and F1 average its three categories.
pub fn table_row(scores: &serde_json::Map<String, Value>) -> Value {
    let get =
        |bench: &str, pointer: &str| scores.get(bench).and_then(|v| v.pointer(pointer)).cloned();
    let pope = |metric: &str| {
        // `llava score --bench pope` puts each category at the top level, next to `issues`.
        let pope = scores.get("pope")?;
        let values: Vec<f64> = ["adversarial", "popular", "random"]
            .iter()
            .filter_map(|c| pope.get(*c)?.get(metric)?.as_f64())
            .collect();
        (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
    };
    json!({
        "GQA": get("gqa", "/accuracy"),
        "MME cog": get("mme", "/cognition"),
        "MME perc": get("mme", "/perception"),
        "MM-Vet": get("mmvet", "/total"),
        "POPE acc": pope("accuracy"),
        "POPE F1": pope("f1"),
        "VQAv2": get("vqav2", "/accuracy"),
        "MMVP": get("mmvp", "/pair_accuracy"),
        "SQA-IMG": get("sqa", "/img_accuracy").and_then(|v| v.as_f64()).map(|v| json!(v / 100.0)),
        "synthetic": get("synthetic", "/accuracy"),
    })
}

/// The row as a Markdown table (header and one line).
pub fn markdown_row(row: &Value) -> String {
    let cols = [
        "GQA", "MME cog", "MME perc", "MM-Vet", "POPE acc", "POPE F1", "VQAv2", "MMVP", "SQA-IMG",
    ];
    let cell = |c: &str| match row.get(c).and_then(Value::as_f64) {
        None => String::new(),
        Some(v) if c.starts_with("MME") => format!("{v:.0}"),
        Some(v) if c == "MM-Vet" || c == "VQAv2" => format!("{v:.1}"),
        Some(v) => format!("{v:.3}"),
    };
    format!(
        "| {} |\n|{}|\n| {} |",
        cols.join(" | "),
        cols.iter().map(|_| " --- ").collect::<Vec<_>>().join("|"),
        cols.iter().map(|c| cell(c)).collect::<Vec<_>>().join(" | ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_row_averages_popes_three_categories() {
        let scores = json!({
            "pope": {
                "adversarial": {"accuracy": 0.8, "f1": 0.7},
                "popular": {"accuracy": 0.9, "f1": 0.8},
                "random": {"accuracy": 1.0, "f1": 0.9},
                "issues": {}
            },
            "gqa": {"accuracy": 0.5}
        });
        let row = table_row(scores.as_object().unwrap());
        assert!(
            (row["POPE acc"].as_f64().unwrap() - 0.9).abs() < 1e-12,
            "{row}"
        );
        assert!(
            (row["POPE F1"].as_f64().unwrap() - 0.8).abs() < 1e-12,
            "{row}"
        );
        assert_eq!(row["GQA"], json!(0.5));
        assert!(row["MMVP"].is_null());
    }
}
