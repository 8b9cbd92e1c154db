//! The recent benchmarks' questions (MMStar, MMMU, OCRBench, AI2D, TextVQA, HallusionBench) from
//! their data files, asked as lmms-eval 0.7.3 asks them by default (its `doc_to_text`), so that
//! our answers and a harness's answers through `llava serve` come from the same prompts. Images
//! in a VLMEvalKit TSV or embedded in a dataset's parquet are written once to an image folder
//! beside the file (as VLMEvalKit's `dump_image` does), named by row.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::Error;
use crate::prompt::{MULTIPLE_CHOICE, SHORT_ANSWER};
use crate::records::{self, Record};
use crate::runner::{Bench, EvalQuestion};
use crate::score::{mcq, options, pystr, text_field};

/// The data file names VLMEvalKit gives each benchmark (its `LMUData` folder), then ours for
/// lmms-eval's rows.
pub fn data_files(bench: Bench) -> &'static [&'static str] {
    match bench {
        Bench::Mmstar => &["MMStar.tsv", "mmstar.parquet", "mmstar.jsonl"],
        Bench::Mmmu => &["MMMU_DEV_VAL.tsv", "mmmu.parquet", "mmmu.jsonl"],
        Bench::Ocrbench => &["OCRBench.tsv", "ocrbench.parquet", "ocrbench.jsonl"],
        Bench::Ai2d => &["AI2D_TEST.tsv", "ai2d.parquet", "ai2d.jsonl"],
        Bench::Textvqa | Bench::TextvqaOcr => {
            &["TextVQA_VAL.tsv", "textvqa.parquet", "textvqa.jsonl"]
        }
        Bench::Hallusionbench => &[
            "HallusionBench.tsv",
            "hallusionbench.parquet",
            "hallusionbench.jsonl",
        ],
        Bench::Pope => &["POPE.tsv"],
        Bench::Gqa => &["GQA_TestDev_Balanced.tsv"],
        Bench::Mme => &["MME.tsv"],
        _ => &[],
    }
}

/// The first of `bench`'s data files under `root` that exists (else the first name, for the
/// message that it is missing).
pub fn data_file(bench: Bench, root: &Path) -> PathBuf {
    let names = data_files(bench);
    names
        .iter()
        .map(|n| root.join(n))
        .find(|p| p.exists())
        .unwrap_or_else(|| root.join(names.first().copied().unwrap_or("data.tsv")))
}

/// A data file's questions, ready to ask.
#[derive(Debug, Clone)]
pub struct Asked {
    /// The questions, in file order.
    pub questions: Vec<EvalQuestion>,
    /// Each question's reference answer as its row gives it (`answer`, `answers`, `gt_answer`).
    pub targets: Vec<Value>,
    /// The folder the questions' images are in.
    pub image_dir: PathBuf,
    /// The rows left out, each named with what is wrong.
    pub bad: Vec<String>,
}

/// The questions of `bench` from its data file `path`, with the folder their images are in:
/// a TSV's images are written to `images/<file stem>/` beside it (once; existing files are kept);
/// JSON rows name theirs in `image_path` (or `image`) relative to the file's folder. Rows that
/// cannot be asked are named in `bad` and left out, like malformed rows.
pub fn questions(bench: Bench, path: &Path) -> Result<Asked, Error> {
    let data = records::read(path)?;
    let base = path.parent().unwrap_or(Path::new(".")).to_path_buf();
    let tsv = path.extension().is_some_and(|e| e == "tsv");
    let parquet = path.extension().is_some_and(|e| e == "parquet");
    let image_dir = if tsv || parquet {
        let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("data");
        base.join("images").join(stem)
    } else {
        base.clone()
    };
    let mut bad = data.malformed;
    let mut out = Vec::new();
    let mut targets = Vec::new();
    for (row, r) in data.rows.iter().enumerate() {
        let asked = ask(bench, r).and_then(|(id, text)| {
            let images = if tsv {
                let has_image = r
                    .get("image")
                    .and_then(Value::as_str)
                    .is_some_and(|s| !s.is_empty());
                let bytes = if has_image {
                    records::images(r, &data.rows, &image_dir)?
                } else {
                    Vec::new()
                };
                dump_images(&bytes, &image_dir, &id)?
            } else if parquet {
                dump_images(&records::embedded_images(r)?, &image_dir, &id)?
            } else {
                image_paths(r)
            };
            // The id as the row writes it (a number stays a number) when it is the scorer's.
            let raw = ["index", "question_id", "id"]
                .iter()
                .filter_map(|k| r.get(*k))
                .find(|v| crate::score::id_key(v).as_deref() == Some(id.as_str()))
                .cloned();
            Ok(EvalQuestion {
                question_id: raw.unwrap_or(Value::String(id)),
                images,
                prompt: text.clone(),
                text,
                category: text_field(r, &["category"]).ok(),
            })
        });
        match asked {
            Ok(q) => {
                out.push(q);
                let target = ["answer", "answers", "gt_answer"]
                    .iter()
                    .find_map(|k| r.get(*k))
                    .cloned()
                    .unwrap_or(Value::Null);
                targets.push(target);
            }
            Err(e) => bad.push(format!("{} record {}: {e}", path.display(), row + 1)),
        }
    }
    Ok(Asked {
        questions: out,
        targets,
        image_dir,
        bad,
    })
}

/// The row's id as the scorer pairs it, and the question text as lmms-eval asks it.
fn ask(bench: Bench, r: &Record) -> Result<(String, String), String> {
    let question = text_field(r, &["question"])?;
    let options = options(r)?;
    let listed = |opts: &[String]| -> String {
        mcq::letters(opts.len())
            .iter()
            .zip(opts)
            .map(|(l, o)| format!("{l}. {o}"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    Ok(match bench {
        Bench::Mmstar => {
            let id = text_field(r, &["index"])?;
            if options.is_empty() {
                // lmms-eval's rows carry the options inside the question.
                let q = pystr::strip(&question).replace(" Please answer yes or no.", "");
                (
                    id,
                    format!("{q}\n{}", MULTIPLE_CHOICE.trim_end_matches('.')),
                )
            } else {
                // The OpenCompass (TSV) form, as lmms-eval's `mmstar_oc` asks it.
                let q = question.replace("<image 1>", "");
                let text = format!(
                    "{q}\nOptions:\n{}\n\n{}",
                    listed(&options),
                    MULTIPLE_CHOICE.trim_end_matches('.')
                );
                (id, text.trim_end().to_string())
            }
        }
        Bench::Mmmu => {
            let id = text_field(r, &["id", "index"])?;
            if options.is_empty() {
                (id, format!("{question}\n\n{SHORT_ANSWER}"))
            } else {
                (
                    id,
                    format!("{question}\n{}\n\n{MULTIPLE_CHOICE}", listed(&options)),
                )
            }
        }
        Bench::Ocrbench => (
            text_field(r, &["index", "question_id", "id"])?,
            pystr::strip(&question).to_string(),
        ),
        Bench::Ai2d => (
            text_field(r, &["index", "question_id", "id"])?,
            format!("{question}\n{}\n{MULTIPLE_CHOICE}", listed(&options)),
        ),
        Bench::Textvqa | Bench::TextvqaOcr => {
            let ocr = if bench == Bench::TextvqaOcr {
                let tokens = match r.get("ocr_tokens") {
                    Some(Value::Array(t)) => t
                        .iter()
                        .filter_map(Value::as_str)
                        .map(String::from)
                        .collect::<Vec<_>>(),
                    Some(Value::String(s)) => pystr::string_list(s).unwrap_or_default(),
                    _ => return Err("textvqa-ocr needs `ocr_tokens`".into()),
                };
                format!("\nReference OCR token: {}", tokens.join(", "))
            } else {
                String::new()
            };
            (
                text_field(r, &["question_id", "index"])?,
                format!("{}{ocr}\n{SHORT_ANSWER}", capitalize(&question)),
            )
        }
        Bench::Hallusionbench => {
            let q = crate::score::hallusion::Question::from_record(r)?;
            (q.id, question)
        }
        // The paper's yes/no benchmarks from VLMEvalKit's TSV, asked as LLaVA asks them.
        Bench::Pope | Bench::Mme | Bench::Gqa => {
            let text = if question.contains(SHORT_ANSWER) {
                question
            } else {
                format!("{question}\n{SHORT_ANSWER}")
            };
            (text_field(r, &["index"])?, text)
        }
        other => return Err(format!("{} is not read from a data file", other.name())),
    })
}

/// Python's `str.capitalize`: the first character upper case, the rest lower case.
pub fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(first) => first
            .to_uppercase()
            .chain(c.as_str().to_lowercase().chars())
            .collect(),
        None => String::new(),
    }
}

/// A JSON row's images: `image_path` (one, or a list) or a string `image`, relative to the file.
fn image_paths(r: &Record) -> Vec<String> {
    let cell = r
        .get("image_path")
        .or_else(|| r.get("image"))
        .and_then(Value::as_str);
    match cell {
        Some(s) => pystr::string_list(s).unwrap_or_else(|| vec![s.to_string()]),
        None => Vec::new(),
    }
}

/// A row's images written to `dir` as `<id>` or `<id>_<k>` (kept when already there); their
/// names. No images: a text-only question.
fn dump_images(images: &[Vec<u8>], dir: &Path, id: &str) -> Result<Vec<String>, String> {
    if images.is_empty() {
        return Ok(Vec::new());
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let safe: String = id
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let mut names = Vec::new();
    for (k, bytes) in images.iter().enumerate() {
        let name = if images.len() == 1 {
            safe.clone()
        } else {
            format!("{safe}_{k}")
        };
        let path = dir.join(&name);
        if !path.exists() {
            foundation::write_atomic(&path, bytes).map_err(|e| e.to_string())?;
        }
        names.push(name);
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompts_as_lmms_eval_asks() {
        let r: Record = serde_json::from_value(serde_json::json!({
            "index": 3, "question": "What is it?", "A": "cat", "B": "dog", "answer": "A",
        }))
        .unwrap();
        assert_eq!(
            ask(Bench::Mmstar, &r).unwrap().1,
            "What is it?\nOptions:\nA. cat\nB. dog\n\nAnswer with the option's letter from the given choices directly"
        );
        assert_eq!(
            ask(Bench::Ai2d, &r).unwrap().1,
            "What is it?\nA. cat\nB. dog\nAnswer with the option's letter from the given choices directly."
        );
        let t: Record = serde_json::from_value(serde_json::json!({
            "question_id": 9, "question": "what does IT say?", "answers": ["a"],
            "ocr_tokens": ["STOP", "here"],
        }))
        .unwrap();
        assert_eq!(
            ask(Bench::TextvqaOcr, &t).unwrap().1,
            "What does it say?\nReference OCR token: STOP, here\nAnswer the question using a single word or phrase."
        );
        let m: Record = serde_json::from_value(serde_json::json!({
            "id": "validation_Art_1", "question": "Q <image 1>", "options": "['x', 'y']",
            "question_type": "multiple-choice", "answer": "A",
        }))
        .unwrap();
        assert_eq!(
            ask(Bench::Mmmu, &m).unwrap(),
            ("validation_Art_1".into(), "Q <image 1>\nA. x\nB. y\n\nAnswer with the option's letter from the given choices directly.".into())
        );
    }
}
