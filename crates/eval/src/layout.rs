//! Where each benchmark's files sit under a data root laid out as LLaVA's `playground/data/eval`
//! folder, and the score of a benchmark's answers from whichever of its reference files are there.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::Error;
use crate::runner::Bench;
use crate::score::pope::Pairing;
use crate::score::{self, read_answers};
use crate::scoring::{self, ScoreFiles, Scored};

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

impl Layout {
    /// The layout of `bench` under `root`; the judge's grades of `model_name`'s answers.
    pub fn of(bench: Bench, root: &Path, model_name: &str) -> Layout {
        let layout = Self::llava(bench, root, model_name);
        // POPE, MME and GQA from VLMEvalKit's TSV when LLaVA's question file is not there.
        if matches!(bench, Bench::Pope | Bench::Mme | Bench::Gqa) && !layout.questions.exists() {
            let tsv = crate::recent::data_file(bench, root);
            if tsv.exists() {
                return Layout {
                    questions: tsv,
                    images: root.to_path_buf(),
                    annotations: None,
                    grades: None,
                };
            }
        }
        layout
    }

    /// True when the questions come from a data file (the recent six, or POPE/MME from
    /// VLMEvalKit's TSV) rather than LLaVA's question files.
    pub fn from_data_file(&self, bench: Bench) -> bool {
        bench.from_data_file() || self.questions.extension().is_some_and(|e| e == "tsv")
    }

    /// The files of `bench` in LLaVA's `playground/data/eval` layout.
    fn llava(bench: Bench, root: &Path, model_name: &str) -> Layout {
        let j = |p: &str| root.join(p);
        let grades = |dir: &str| Some(j(&format!("{dir}/grades/{model_name}.jsonl")));
        let layout = |questions: &str, images: &str, annotations: Option<&str>| Layout {
            questions: j(questions),
            images: j(images),
            annotations: annotations.map(j),
            grades: None,
        };
        match bench {
            b @ (Bench::Mmstar
            | Bench::Mmmu
            | Bench::Ocrbench
            | Bench::Ai2d
            | Bench::Textvqa
            | Bench::TextvqaOcr
            | Bench::Hallusionbench) => Layout {
                questions: crate::recent::data_file(b, root),
                images: root.to_path_buf(),
                annotations: None,
                grades: None,
            },
            Bench::Gqa => layout(
                "gqa/llava_gqa_testdev_balanced.jsonl",
                "gqa/data/images",
                Some("gqa/data/testdev_balanced_questions.json"),
            ),
            Bench::Mme => layout(
                "MME/llava_mme.jsonl",
                "MME/MME_Benchmark_release_version",
                Some("MME/MME_Benchmark_release_version"),
            ),
            Bench::Pope => layout(
                "pope/llava_pope_test.jsonl",
                "pope/val2014",
                Some("pope/coco"),
            ),
            Bench::Vqav2 => layout(
                "vqav2/llava_vqav2_mscoco_test-dev2015.jsonl",
                "vqav2/test2015",
                None,
            ),
            Bench::Sqa => layout(
                "scienceqa/llava_test_CQM-A.json",
                "scienceqa/images/test",
                Some("scienceqa"),
            ),
            Bench::Mmvet => Layout {
                grades: grades("mm-vet"),
                ..layout(
                    "mm-vet/llava-mm-vet.jsonl",
                    "mm-vet/images",
                    Some("mm-vet/mm-vet.json"),
                )
            },
            Bench::Mmvp => Layout {
                grades: grades("MMVP"),
                ..layout("MMVP/Questions.csv", "MMVP/MMVP Images", None)
            },
            Bench::Synthetic => {
                layout("eval_questions.jsonl", "images", Some("eval_answers.jsonl"))
            }
        }
    }

    /// Scores `bench`'s answers (the file `answers`) with whichever of its reference files exist;
    /// where the score cannot be computed here, a `note` says why. MME's answers are converted
    /// to its result files, and VQAv2's to the submission file, in `output`.
    pub fn score(&self, bench: Bench, answers: &Path, output: &Path) -> Result<Value, Error> {
        Ok(self.score_full(bench, answers, output)?.value)
    }

    /// [`Layout::score`], keeping the metrics' units (for the manifest and `--compare`).
    pub fn score_full(&self, bench: Bench, answers: &Path, output: &Path) -> Result<Scored, Error> {
        let base = ScoreFiles {
            bench: bench.name().into(),
            answers: Some(answers.to_path_buf()),
            annotations: existing(&self.annotations),
            grades: existing(&self.grades),
            ..ScoreFiles::default()
        };
        let with_questions = || ScoreFiles {
            questions: Some(self.questions.clone()),
            ..base.clone()
        };
        let full = |files: &ScoreFiles| scoring::score_full(files, Pairing::Position);
        let note = |value: Value| Scored {
            value,
            metrics: Vec::new(),
        };
        Ok(match bench {
            b if b.from_data_file() => {
                let s = scoring::score_data(b.scored_as(), &self.questions, answers)?;
                Scored {
                    value: s.to_json(),
                    metrics: s.metrics,
                }
            }
            Bench::Pope | Bench::Mme | Bench::Gqa if self.from_data_file(bench) => {
                scoring::score_paper_tsv(bench.name(), &self.questions, answers)?
            }
            Bench::Synthetic => {
                let key = self.annotations.clone().unwrap_or_default();
                note(json!(crate::synthetic::score(
                    read_answers(answers)?,
                    &key
                )?))
            }
            Bench::Mme => match &base.annotations {
                Some(gt_root) => note(mme(gt_root, answers, base.clone(), output)?),
                None => {
                    note(json!({"note": "no MME ground truth folder to convert the answers with"}))
                }
            },
            Bench::Pope => full(&with_questions())?,
            Bench::Vqav2 => note(self.vqav2_submission(answers, output)?),
            Bench::Mmvet | Bench::Mmvp if base.grades.is_none() => note(json!({
                "note": "needs an LLM judge: run `llava grade` to write the grades file, then eval again",
            })),
            Bench::Mmvp => full(&with_questions())?,
            _ if base.annotations.is_none() => note(json!({"note": "no reference answers found"})),
            _ => full(&base)?,
        })
    }

    /// Writes VQAv2's test-dev submission file from `answers` into `output` (with the ids of the
    /// whole test set when its question file is there), and says where it is.
    fn vqav2_submission(&self, answers: &Path, output: &Path) -> Result<Value, Error> {
        let submission = output.join("vqav2_submission.json");
        let test_questions = self
            .questions
            .with_file_name("llava_vqav2_mscoco_test2015.jsonl");
        let answers = read_answers(answers)?;
        let ids: Option<Vec<Value>> = test_questions
            .exists()
            .then(|| score::read_jsonl(&test_questions))
            .transpose()?
            .map(|(lines, _)| {
                lines
                    .iter()
                    .filter_map(|l| l.get("question_id").cloned())
                    .collect()
            });
        let sub = score::vqav2::submission(&answers, ids.as_deref());
        scoring::write(&submission, &sub)?;
        Ok(json!({
            "submission": submission,
            "note": "test-dev answers are scored by the EvalAI server: upload the submission file",
        }))
    }
}

/// `path` when it names something that exists.
fn existing(path: &Option<PathBuf>) -> Option<PathBuf> {
    path.clone().filter(|p| p.exists())
}

/// MME: `answers` converted to result files in `output/mme_results` with the ground truth under
/// `gt_root`, then scored as `base` says; the conversion's issues are added to the score.
fn mme(gt_root: &Path, answers: &Path, base: ScoreFiles, output: &Path) -> Result<Value, Error> {
    let gt = score::mme::ground_truth(gt_root)?;
    let results = output.join("mme_results");
    let answers = read_answers(answers)?;
    let issues = score::mme::convert(&answers, &gt, &results)?;
    let mut value = scoring::score(&ScoreFiles {
        answers: Some(results),
        ..base
    })?;
    value["conversion_issues"] = json!(issues);
    Ok(value)
}
