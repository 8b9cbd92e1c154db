//! `llava score`: one benchmark's official score from its answer (or grade) file and its reference
//! files, as one JSON object.

use std::path::{Path, PathBuf};

use eval::score::{self, read_answers, read_json, read_jsonl};
use serde_json::{Value, json};

use crate::{Error, Result};

/// How POPE's answers are paired with labels (`--pair-by position|image-question`).
pub use eval::score::pope::Pairing;

/// The benchmarks `llava score` knows.
pub const BENCHES: [&str; 7] = ["gqa", "mme", "pope", "vqav2", "sqa", "mmvp", "mmvet"];

/// What `llava score` reads.
#[derive(Debug, Clone, Default)]
pub struct ScoreArgs {
    /// gqa, mme, pope, vqav2, sqa, mmvp or mmvet.
    pub bench: String,
    /// The answer file (or directory: MME's result files; several `.jsonl` chunks).
    pub answers: Option<PathBuf>,
    /// The question file (POPE: llava_pope_test.jsonl; VQAv2: the questions scored; MMVP:
    /// Questions.csv).
    pub questions: Option<PathBuf>,
    /// The reference answers (GQA questions JSON, POPE label folder, VQAv2 annotations, the
    /// ScienceQA folder, mm-vet.json).
    pub annotations: Option<PathBuf>,
    /// The judge's grades (MMVP, MM-Vet).
    pub grades: Option<PathBuf>,
    /// VQAv2: where to write the test-dev submission file.
    pub submission: Option<PathBuf>,
}

fn need<'a>(value: &'a Option<PathBuf>, flag: &str, bench: &str, what: &str) -> Result<&'a Path> {
    value.as_deref().ok_or_else(|| {
        Error::Unsupported(format!(
            "`llava score --bench {bench}` needs --{flag} ({what})"
        ))
    })
}

fn eval_error(e: eval::Error) -> Error {
    Error::Unsupported(e.to_string())
}

/// Scores as `args` says and returns the JSON object `llava score` prints; POPE pairs answers
/// with labels by position, as LLaVA's `eval_pope.py` does.
pub fn score(args: &ScoreArgs) -> Result<Value> {
    score_with(args, Pairing::Position)
}

/// [`score`], with POPE's answers paired with labels as `pairing` says. When positional pairing
/// meets answers whose image or question is not their label's, a warning on stderr says so and
/// suggests `--pair-by image-question` (the details are in the score's `issues`).
pub fn score_with(args: &ScoreArgs, pairing: Pairing) -> Result<Value> {
    let b = args.bench.as_str();
    let answers = || -> Result<score::Answers> {
        read_answers(need(
            &args.answers,
            "answers",
            b,
            "the model's answer file",
        )?)
        .map_err(eval_error)
    };
    let value = match b {
        "gqa" => {
            let questions = read_json(need(
                &args.annotations,
                "annotations",
                b,
                "GQA's testdev_balanced_questions.json",
            )?)
            .map_err(eval_error)?;
            json!(score::gqa::score(answers()?, &questions))
        }
        "mme" => json!(
            score::mme::score(need(
                &args.answers,
                "answers",
                b,
                "a folder of MME <subtask>.txt result files"
            )?)
            .map_err(eval_error)?
        ),
        "pope" => {
            let (questions, _) = read_jsonl(need(
                &args.questions,
                "questions",
                b,
                "llava_pope_test.jsonl",
            )?)
            .map_err(eval_error)?;
            let labels = need(
                &args.annotations,
                "annotations",
                b,
                "the folder of coco_pope_<category>.json files",
            )?;
            let s =
                score::pope::score(answers()?, &questions, labels, pairing).map_err(eval_error)?;
            if let Some(warning) = pope_warning(&s) {
                eprintln!("{warning}");
            }
            json!(s)
        }
        "vqav2" => {
            let annotations = read_json(need(
                &args.annotations,
                "annotations",
                b,
                "the official VQA v2 annotations JSON",
            )?)
            .map_err(eval_error)?;
            let answers = answers()?;
            let question_ids = args.questions.as_deref().map(question_ids).transpose()?;
            if let Some(path) = &args.submission {
                let sub = score::vqav2::submission(&answers, question_ids.as_deref());
                foundation::write_atomic(path, sub.to_string().as_bytes())?;
            }
            let keys: Option<Vec<String>> = question_ids
                .as_ref()
                .map(|ids| ids.iter().filter_map(score::id_key).collect());
            json!(score::vqav2::score(
                answers,
                &score::vqav2::annotations(&annotations),
                keys.as_deref()
            ))
        }
        "sqa" => {
            let dir = need(
                &args.annotations,
                "annotations",
                b,
                "the ScienceQA folder with problems.json and pid_splits.json",
            )?;
            let problems = read_json(&dir.join("problems.json")).map_err(eval_error)?;
            let splits = read_json(&dir.join("pid_splits.json")).map_err(eval_error)?;
            let split: Vec<String> = splits["test"]
                .as_array()
                .ok_or_else(|| {
                    Error::Unsupported(format!(
                        "{}: no `test` split",
                        dir.join("pid_splits.json").display()
                    ))
                })?
                .iter()
                .filter_map(score::id_key)
                .collect();
            json!(score::sqa::score(answers()?, &problems, &split))
        }
        "mmvp" => {
            let (grades, _) = read_jsonl(need(&args.grades, "grades", b, "the judge's grades")?)
                .map_err(eval_error)?;
            let questions = args.questions.as_deref().map(csv_rows).transpose()?;
            json!(score::mmvp::score(&grades, questions))
        }
        "mmvet" => {
            let (grades, _) = read_jsonl(need(&args.grades, "grades", b, "the judge's grades")?)
                .map_err(eval_error)?;
            let annotations = read_json(need(&args.annotations, "annotations", b, "mm-vet.json")?)
                .map_err(eval_error)?;
            json!(score::mmvet::score(&grades, &annotations))
        }
        other => {
            return Err(Error::Unsupported(format!(
                "unknown benchmark `{other}` (one of {})",
                BENCHES.join(", ")
            )));
        }
    };
    let mut value = value;
    value["bench"] = json!(b);
    Ok(value)
}

/// The warning for positional pairing that paired answers with other questions' labels.
fn pope_warning(s: &score::pope::Score) -> Option<String> {
    if s.pairing != Pairing::Position || s.issues.label_mismatches.is_empty() {
        return None;
    }
    let counts: Vec<String> = s
        .issues
        .label_mismatches
        .iter()
        .map(|(category, m)| {
            let labels = s.categories.get(category).map_or(0, |c| c.labels);
            format!("{category}: {} of {labels}", m.count)
        })
        .collect();
    Some(format!(
        "warning: POPE answers paired by position with labels of another image or question ({}); \
         the label files do not follow the question file's order: try --pair-by image-question \
         (examples under issues.label_mismatches)",
        counts.join(", ")
    ))
}

/// Question ids from a LLaVA question file (JSON lines) or an official VQA questions JSON.
fn question_ids(path: &Path) -> Result<Vec<Value>> {
    if let Ok(value) = read_json(path)
        && let Some(list) = value.get("questions").and_then(Value::as_array)
    {
        return Ok(list
            .iter()
            .filter_map(|q| q.get("question_id").cloned())
            .collect());
    }
    let (lines, _) = read_jsonl(path).map_err(eval_error)?;
    Ok(lines
        .iter()
        .filter_map(|q| q.get("question_id").cloned())
        .collect())
}

/// The data rows of a CSV file (MMVP's `Questions.csv`: a header, then one row per question).
fn csv_rows(path: &Path) -> Result<usize> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    Ok(text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .count()
        .saturating_sub(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two questions of one image, labelled in the other order by the label file.
    fn shuffled(dir: &Path) -> ScoreArgs {
        let labels = dir.join("coco");
        std::fs::create_dir_all(&labels).unwrap();
        std::fs::write(
            dir.join("questions.jsonl"),
            "{\"question_id\": 1, \"image\": \"a.jpg\", \"text\": \"Is there a dog in the image?\\nAnswer the question using a single word or phrase.\", \"category\": \"random\"}\n\
             {\"question_id\": 2, \"image\": \"a.jpg\", \"text\": \"Is there a cat in the image?\\nAnswer the question using a single word or phrase.\", \"category\": \"random\"}\n",
        )
        .unwrap();
        std::fs::write(
            labels.join("coco_pope_random.json"),
            "{\"question_id\": 1, \"image\": \"a.jpg\", \"text\": \"Is there a cat in the image?\", \"label\": \"no\"}\n\
             {\"question_id\": 2, \"image\": \"a.jpg\", \"text\": \"Is there a dog in the image?\", \"label\": \"yes\"}\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("answers.jsonl"),
            "{\"question_id\": 1, \"text\": \"Yes\"}\n{\"question_id\": 2, \"text\": \"No\"}\n",
        )
        .unwrap();
        ScoreArgs {
            bench: "pope".into(),
            answers: Some(dir.join("answers.jsonl")),
            questions: Some(dir.join("questions.jsonl")),
            annotations: Some(labels),
            ..ScoreArgs::default()
        }
    }

    #[test]
    fn pope_pairing_by_position_warns_and_by_image_question_scores() {
        let dir = std::env::temp_dir().join(format!("llava-score-pope-{}", std::process::id()));
        let args = shuffled(&dir);
        let by_position = score(&args).unwrap();
        assert_eq!(by_position["pairing"], "position");
        assert_eq!(by_position["random"]["accuracy"], 0.0);
        assert_eq!(
            by_position["issues"]["label_mismatches"]["random"]["count"],
            2
        );
        let s = score::pope::score(
            read_answers(&dir.join("answers.jsonl")).unwrap(),
            &read_jsonl(&dir.join("questions.jsonl")).unwrap().0,
            &dir.join("coco"),
            Pairing::Position,
        )
        .unwrap();
        let warning = pope_warning(&s).unwrap();
        assert!(warning.contains("random: 2 of 2"), "{warning}");
        assert!(warning.contains("--pair-by image-question"), "{warning}");
        let by_image = score_with(&args, Pairing::ImageQuestion).unwrap();
        assert_eq!(by_image["pairing"], "image-question");
        assert_eq!(by_image["random"]["accuracy"], 1.0);
        assert!(by_image["issues"].get("label_mismatches").is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
