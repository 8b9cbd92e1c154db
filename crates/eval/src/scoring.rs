//! A benchmark scored from its files by the rules of [`crate::score`]: the answer (or
//! grade) file and the reference files read, scored, and returned as one JSON object, which is
//! what `llava score` prints.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::Error;
use crate::score::pope::Pairing;
use crate::score::{self, read_answers, read_json, read_jsonl};
use crate::stats::{Aggregate, Metric, Unit};

/// The benchmarks [`score()`] knows: the paper's seven, then the six scored from a data file.
pub const BENCHES: [&str; 13] = [
    "gqa",
    "mme",
    "pope",
    "vqav2",
    "sqa",
    "mmvp",
    "mmvet",
    "mmstar",
    "mmmu",
    "ocrbench",
    "ai2d",
    "textvqa",
    "hallusionbench",
];

/// The benchmarks scored from their data file (`--data`: VLMEvalKit's TSV or lmms-eval's rows)
/// by lmms-eval's rules, each with its scorer.
pub const DATA_BENCHES: [(&str, DataScorer); 6] = [
    ("mmstar", score::mmstar::score),
    ("mmmu", score::mmmu::score),
    ("ocrbench", score::ocrbench::score),
    ("ai2d", score::ai2d::score),
    ("textvqa", score::textvqa::score),
    ("hallusionbench", score::hallusion::score),
];

/// A scorer of a data-file benchmark.
pub type DataScorer = fn(&[crate::records::Record], score::Answers) -> score::BenchScore;

/// The scorer of `bench` when it is scored from a data file.
pub fn data_scorer(bench: &str) -> Option<DataScorer> {
    DATA_BENCHES
        .iter()
        .find(|(name, _)| *name == bench)
        .map(|(_, f)| *f)
}

/// Scores a data-file benchmark: its records read from `data` (malformed rows counted as bad
/// records), the answers paired by id.
pub fn score_data(bench: &str, data: &Path, answers: &Path) -> Result<score::BenchScore, Error> {
    score_records(bench, &crate::records::read(data)?, read_answers(answers)?)
}

/// [`score_data`] on records already read.
fn score_records(
    bench: &str,
    records: &crate::records::Records,
    answers: score::Answers,
) -> Result<score::BenchScore, Error> {
    let scorer = data_scorer(bench)
        .ok_or_else(|| Error::Request(format!("`{bench}` is not scored from a data file")))?;
    let mut s = scorer(&records.rows, answers);
    for m in &records.malformed {
        s.issues.bad_record(m.clone());
    }
    Ok(s)
}

/// The files of one benchmark to score.
#[derive(Debug, Clone, Default)]
pub struct ScoreFiles {
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
    /// The benchmark's data file (MMStar, MMMU, OCRBench, AI2D, TextVQA, HallusionBench):
    /// VLMEvalKit's TSV, or lmms-eval's rows as JSON lines or a JSON array.
    pub data: Option<PathBuf>,
}

impl ScoreFiles {
    /// The file given as `value`, or the error that names its flag (`--{flag}`) and says `what`
    /// it is.
    fn need<'a>(
        &self,
        value: &'a Option<PathBuf>,
        flag: &str,
        what: &str,
    ) -> Result<&'a Path, Error> {
        value.as_deref().ok_or_else(|| {
            Error::Request(format!(
                "`llava score --bench {}` needs --{flag} ({what})",
                self.bench
            ))
        })
    }

    /// The model's answers.
    fn read_answers(&self) -> Result<score::Answers, Error> {
        read_answers(self.need(&self.answers, "answers", "the model's answer file")?)
    }

    /// The judge's grades, JSON lines.
    fn read_grades(&self) -> Result<Vec<Value>, Error> {
        Ok(read_jsonl(self.need(&self.grades, "grades", "the judge's grades")?)?.0)
    }
}

/// Scores as `files` says and returns the JSON object `llava score` prints; POPE pairs answers
/// with labels by position, as LLaVA's `eval_pope.py` does.
pub fn score(files: &ScoreFiles) -> Result<Value, Error> {
    score_with(files, Pairing::Position)
}

/// [`score()`], with POPE's answers paired with labels as `pairing` says. When positional pairing
/// meets answers whose image or question is not their label's, a warning on stderr says so and
/// suggests `--pair-by image-question` (the details are in the score's `issues`).
pub fn score_with(files: &ScoreFiles, pairing: Pairing) -> Result<Value, Error> {
    Ok(score_full(files, pairing)?.value)
}

/// POPE, MME or GQA from VLMEvalKit's TSV (`data`) and an answer file: the paper's rules and
/// VLMEvalKit's figures ([`score::paper_tsv`]).
pub fn score_paper_tsv(bench: &str, data: &Path, answers: &Path) -> Result<Scored, Error> {
    let records = crate::records::read(data)?;
    let answers = read_answers(answers)?;
    let (mut value, metrics) = match bench {
        "pope" => score::paper_tsv::pope(&records.rows, answers, &records.malformed),
        "mme" => score::paper_tsv::mme(&records.rows, answers, &records.malformed),
        "gqa" => score::paper_tsv::gqa(&records.rows, answers, &records.malformed),
        other => {
            return Err(Error::Request(format!(
                "`{other}` is not read from VLMEvalKit's TSV (pope, mme, gqa)"
            )));
        }
    };
    value["bench"] = json!(bench);
    let mut s = Scored { value, metrics };
    add_intervals(&mut s);
    Ok(s)
}

/// A score as printed, with its metrics' units (for intervals, manifests and comparisons).
#[derive(Debug, Clone)]
pub struct Scored {
    /// The JSON `llava score` prints; `intervals` holds each metric's 95 % interval.
    pub value: Value,
    /// The metrics with their units (none for MME, whose subtask sums keep none yet).
    pub metrics: Vec<Metric>,
}

/// [`score_with`], keeping the metrics' units.
pub fn score_full(files: &ScoreFiles, pairing: Pairing) -> Result<Scored, Error> {
    if matches!(files.bench.as_str(), "pope" | "mme" | "gqa") && files.data.is_some() {
        let data = files.data.as_deref().expect("checked");
        let answers = files.need(&files.answers, "answers", "the model's answer file")?;
        return score_paper_tsv(&files.bench, data, answers);
    }
    let (mut value, metrics) = match files.bench.as_str() {
        "gqa" => gqa(files)?,
        "mme" => (
            json!(score::mme::score(files.need(
                &files.answers,
                "answers",
                "a folder of MME <subtask>.txt result files"
            )?)?),
            Vec::new(),
        ),
        "pope" => pope(files, pairing)?,
        "vqav2" => vqav2(files)?,
        "sqa" => sqa(files)?,
        "mmvp" => {
            let grades = files.read_grades()?;
            let questions = files.questions.as_deref().map(csv_rows).transpose()?;
            let s = score::mmvp::score(&grades, questions);
            let m = Metric::new("pair_accuracy", Aggregate::Mean, 1.0, s.units.clone());
            (json!(s), vec![m])
        }
        "mmvet" => {
            let grades = files.read_grades()?;
            let annotations =
                read_json(files.need(&files.annotations, "annotations", "mm-vet.json")?)?;
            let s = score::mmvet::score(&grades, &annotations);
            let m = Metric::new("total", Aggregate::Mean, 100.0, s.units.clone());
            (json!(s), vec![m])
        }
        other if data_scorer(other).is_some() => {
            let data = files.need(
                &files.data,
                "data",
                "the benchmark's data file: VLMEvalKit's TSV or lmms-eval's rows as .jsonl/.json",
            )?;
            let answers = files.read_answers()?;
            let records = crate::records::read(data)?;
            let mut s = score_records(other, &records, answers.clone())?;
            if files.grades.is_some() {
                let grades = files.read_grades()?;
                let rows = &records.rows;
                match other {
                    "hallusionbench" => score::hallusion::add_judged(&mut s, rows, &grades),
                    "mmstar" | "ai2d" | "mmmu" => {
                        let name = if other == "mmstar" {
                            "overall"
                        } else {
                            "accuracy"
                        };
                        s.metrics.push(score::vlmevalkit::extracted_metric(
                            other, name, rows, answers, &grades,
                        ));
                    }
                    _ => {}
                }
            }
            (s.to_json(), s.metrics)
        }
        other => {
            return Err(Error::Request(format!(
                "unknown benchmark `{other}` (one of {})",
                BENCHES.join(", ")
            )));
        }
    };
    value["bench"] = json!(files.bench);
    let mut s = Scored { value, metrics };
    if data_scorer(&files.bench).is_none() {
        add_intervals(&mut s);
    }
    Ok(s)
}

/// Each metric's 95 % interval under `intervals` (the recent six print theirs with each metric).
fn add_intervals(s: &mut Scored) {
    if s.metrics.is_empty() {
        return;
    }
    let intervals: serde_json::Map<String, Value> = s
        .metrics
        .iter()
        .map(|m| (m.name.clone(), json!(m.interval(crate::stats::RESAMPLES))))
        .collect();
    s.value["intervals"] = Value::Object(intervals);
}

/// A paper benchmark's printed score and its metrics.
type PaperScore = (Value, Vec<Metric>);

/// GQA against its questions file.
fn gqa(files: &ScoreFiles) -> Result<PaperScore, Error> {
    let questions = read_json(files.need(
        &files.annotations,
        "annotations",
        "GQA's testdev_balanced_questions.json",
    )?)?;
    let s = score::gqa::score(files.read_answers()?, &questions);
    let m = Metric::new("accuracy", Aggregate::Mean, 1.0, s.units.clone());
    Ok((json!(s), vec![m]))
}

/// POPE against its label folder, warning when positional pairing met other questions' labels.
fn pope(files: &ScoreFiles, pairing: Pairing) -> Result<PaperScore, Error> {
    let (questions, _) =
        read_jsonl(files.need(&files.questions, "questions", "llava_pope_test.jsonl")?)?;
    let labels = files.need(
        &files.annotations,
        "annotations",
        "the folder of coco_pope_<category>.json files",
    )?;
    let s = score::pope::score(files.read_answers()?, &questions, labels, pairing)?;
    if let Some(warning) = pope_warning(&s) {
        eprintln!("{warning}");
    }
    let mut metrics = Vec::new();
    for (category, c) in &s.categories {
        let ids = (0..c.outcomes.len()).map(|i| format!("{category}/{i}"));
        metrics.extend(c.metrics(category, ids));
    }
    Ok((json!(s), metrics))
}

/// VQAv2 against the official annotations (the questions of `files.questions` only, when given),
/// writing the submission file when asked.
fn vqav2(files: &ScoreFiles) -> Result<PaperScore, Error> {
    let annotations = read_json(files.need(
        &files.annotations,
        "annotations",
        "the official VQA v2 annotations JSON",
    )?)?;
    let answers = files.read_answers()?;
    let question_ids = files.questions.as_deref().map(question_ids).transpose()?;
    if let Some(path) = &files.submission {
        let sub = score::vqav2::submission(&answers, question_ids.as_deref());
        write(path, &sub)?;
    }
    let keys: Option<Vec<String>> = question_ids
        .as_ref()
        .map(|ids| ids.iter().filter_map(score::id_key).collect());
    let s = score::vqav2::score(
        answers,
        &score::vqav2::annotations(&annotations),
        keys.as_deref(),
    );
    let m = Metric::new("accuracy", Aggregate::Mean, 100.0, s.units.clone());
    Ok((json!(s), vec![m]))
}

/// ScienceQA's test split against its folder's `problems.json` and `pid_splits.json`.
fn sqa(files: &ScoreFiles) -> Result<PaperScore, Error> {
    let dir = files.need(
        &files.annotations,
        "annotations",
        "the ScienceQA folder with problems.json and pid_splits.json",
    )?;
    let problems = read_json(&dir.join("problems.json"))?;
    let splits = read_json(&dir.join("pid_splits.json"))?;
    let split: Vec<String> = splits["test"]
        .as_array()
        .ok_or_else(|| {
            Error::Request(format!(
                "{}: no `test` split",
                dir.join("pid_splits.json").display()
            ))
        })?
        .iter()
        .filter_map(score::id_key)
        .collect();
    let s = score::sqa::score(files.read_answers()?, &problems, &split);
    let img: Vec<Unit> = s
        .units
        .iter()
        .filter(|u| u.group == "img")
        .cloned()
        .collect();
    let metrics = vec![
        Metric::new("accuracy", Aggregate::Mean, 100.0, s.units.clone()),
        Metric::new("img_accuracy", Aggregate::Mean, 100.0, img),
    ];
    Ok((json!(s), metrics))
}

/// Writes `value` to `path` atomically.
pub(crate) fn write(path: &Path, value: &Value) -> Result<(), Error> {
    foundation::write_atomic(path, value.to_string().as_bytes())
        .map_err(|e| Error::File(e.to_string()))
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
fn question_ids(path: &Path) -> Result<Vec<Value>, Error> {
    let ids = |list: &[Value]| -> Vec<Value> {
        list.iter()
            .filter_map(|q| q.get("question_id").cloned())
            .collect()
    };
    let official = read_json(path).ok().and_then(|value| {
        value
            .get("questions")
            .and_then(Value::as_array)
            .map(|list| ids(list))
    });
    match official {
        Some(ids) => Ok(ids),
        None => Ok(ids(&read_jsonl(path)?.0)),
    }
}

/// The data rows of a CSV file (MMVP's `Questions.csv`: a header, then one row per question).
fn csv_rows(path: &Path) -> Result<usize, Error> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::File(format!("{}: {e}", path.display())))?;
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
    fn shuffled(dir: &Path) -> ScoreFiles {
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
        ScoreFiles {
            bench: "pope".into(),
            answers: Some(dir.join("answers.jsonl")),
            questions: Some(dir.join("questions.jsonl")),
            annotations: Some(labels),
            ..ScoreFiles::default()
        }
    }

    #[test]
    fn paper_scores_carry_intervals_and_units() {
        let dir = tempfile::tempdir().unwrap();
        let files = shuffled(dir.path());
        let by_image = score_full(&files, Pairing::ImageQuestion).unwrap();
        let f1 = by_image
            .metrics
            .iter()
            .find(|m| m.name == "random/f1")
            .unwrap();
        assert_eq!(f1.value(), by_image.value["random"]["f1"].as_f64().unwrap());
        assert!(by_image.value["intervals"]["random/accuracy"].is_array());

        let questions = dir.path().join("gqa.json");
        let mut q = serde_json::Map::new();
        let mut answers = String::new();
        for i in 0..200 {
            let gold = if i % 3 == 0 { "yes" } else { "no" };
            q.insert(i.to_string(), json!({"answer": gold, "isBalanced": true}));
            answers.push_str(&format!(
                "{}\n",
                json!({"question_id": i.to_string(), "text": "no"})
            ));
        }
        std::fs::write(&questions, Value::Object(q).to_string()).unwrap();
        std::fs::write(dir.path().join("gqa.jsonl"), answers).unwrap();
        let s = score_full(
            &ScoreFiles {
                bench: "gqa".into(),
                answers: Some(dir.path().join("gqa.jsonl")),
                annotations: Some(questions),
                ..ScoreFiles::default()
            },
            Pairing::Position,
        )
        .unwrap();
        let acc = s.value["accuracy"].as_f64().unwrap();
        let [lo, hi] = [0, 1].map(|i| s.value["intervals"]["accuracy"][i].as_f64().unwrap());
        assert!(lo < acc && acc < hi && hi - lo < 0.2, "{lo} {acc} {hi}");
        assert_eq!(s.metrics[0].units.len(), 200);
    }

    #[test]
    fn pope_pairing_by_position_warns_and_by_image_question_scores() {
        let dir = std::env::temp_dir().join(format!("eval-score-pope-{}", std::process::id()));
        let files = shuffled(&dir);
        let by_position = score(&files).unwrap();
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
        let by_image = score_with(&files, Pairing::ImageQuestion).unwrap();
        assert_eq!(by_image["pairing"], "image-question");
        assert_eq!(by_image["random"]["accuracy"], 1.0);
        assert!(by_image["issues"].get("label_mismatches").is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
