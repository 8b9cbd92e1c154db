//! Answering a benchmark's questions: the question files in the formats LLaVA's evaluation uses,
//! greedy batched generation with a KV cache, and answers appended to a LLaVA answer file as they
//! come, so an interrupted run resumes where it stopped and a finished one is not recomputed.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use gemma_lm::{GemmaTokenizer, GenerationConfig, Message};
use image_processing::ImageProcessor;
use llava_model::LlavaModel;
use serde::Serialize;
use serde_json::{Value, json};
use tch::Tensor;

use crate::Error;
use crate::score::id_key;

pub use crate::prompt::{MULTIPLE_CHOICE, SHORT_ANSWER};

/// The benchmarks, by the names the commands take.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Bench {
    /// GQA testdev-balanced.
    Gqa,
    /// MME.
    Mme,
    /// POPE.
    Pope,
    /// VQAv2 test-dev.
    Vqav2,
    /// ScienceQA-IMG.
    Sqa,
    /// MMVP.
    Mmvp,
    /// MM-Vet.
    Mmvet,
    /// MMStar.
    Mmstar,
    /// MMMU validation.
    Mmmu,
    /// OCRBench.
    Ocrbench,
    /// AI2D test.
    Ai2d,
    /// TextVQA validation, LLaVA's prompt without OCR tokens.
    Textvqa,
    /// TextVQA validation with the reference OCR tokens in the prompt (LLaVA-1.5's setting).
    TextvqaOcr,
    /// HallusionBench.
    Hallusionbench,
    /// The held-out split of the built-in synthetic dataset.
    Synthetic,
}

impl Bench {
    /// Every benchmark of the paper's Table 1, in its column order.
    pub const PAPER: [Bench; 7] = [
        Bench::Gqa,
        Bench::Mme,
        Bench::Mmvet,
        Bench::Pope,
        Bench::Vqav2,
        Bench::Mmvp,
        Bench::Sqa,
    ];

    /// The benchmarks compact models are compared on today, scored from their data files
    /// (VLMEvalKit's TSV or lmms-eval's rows) by lmms-eval's rules: the second table row.
    pub const RECENT: [Bench; 7] = [
        Bench::Mmstar,
        Bench::Mmmu,
        Bench::Ocrbench,
        Bench::Ai2d,
        Bench::Textvqa,
        Bench::TextvqaOcr,
        Bench::Hallusionbench,
    ];

    /// Parses a command-line name.
    pub fn parse(name: &str) -> Result<Self, Error> {
        Ok(match name {
            "gqa" => Bench::Gqa,
            "mme" => Bench::Mme,
            "pope" => Bench::Pope,
            "vqav2" => Bench::Vqav2,
            "sqa" | "scienceqa" => Bench::Sqa,
            "mmvp" => Bench::Mmvp,
            "mmvet" | "mm-vet" => Bench::Mmvet,
            "mmstar" => Bench::Mmstar,
            "mmmu" => Bench::Mmmu,
            "ocrbench" => Bench::Ocrbench,
            "ai2d" => Bench::Ai2d,
            "textvqa" => Bench::Textvqa,
            "textvqa-ocr" => Bench::TextvqaOcr,
            "hallusionbench" => Bench::Hallusionbench,
            "synthetic" => Bench::Synthetic,
            other => {
                return Err(Error::File(format!(
                    "unknown benchmark `{other}` (gqa, mme, pope, vqav2, sqa, mmvp, mmvet, mmstar, \
                     mmmu, ocrbench, ai2d, textvqa, textvqa-ocr, hallusionbench, synthetic)"
                )));
            }
        })
    }

    /// The command-line name.
    pub fn name(self) -> &'static str {
        match self {
            Bench::Gqa => "gqa",
            Bench::Mme => "mme",
            Bench::Pope => "pope",
            Bench::Vqav2 => "vqav2",
            Bench::Sqa => "sqa",
            Bench::Mmvp => "mmvp",
            Bench::Mmvet => "mmvet",
            Bench::Mmstar => "mmstar",
            Bench::Mmmu => "mmmu",
            Bench::Ocrbench => "ocrbench",
            Bench::Ai2d => "ai2d",
            Bench::Textvqa => "textvqa",
            Bench::TextvqaOcr => "textvqa-ocr",
            Bench::Hallusionbench => "hallusionbench",
            Bench::Synthetic => "synthetic",
        }
    }

    /// The scorer's name for its answers (`textvqa-ocr` is scored as `textvqa`).
    pub fn scored_as(self) -> &'static str {
        match self {
            Bench::TextvqaOcr => "textvqa",
            other => other.name(),
        }
    }

    /// True for the benchmarks read from a data file ([`Bench::RECENT`]).
    pub fn from_data_file(self) -> bool {
        Bench::RECENT.contains(&self)
    }

    /// New tokens per answer: LLaVA's 128 for short answers, 1024 for MM-Vet's open ones,
    /// lmms-eval's 16 for AI2D.
    pub fn max_new_tokens(self) -> usize {
        match self {
            Bench::Mmvet => 1024,
            Bench::Ai2d => 16,
            _ => 128,
        }
    }
}

/// One question as the model is asked it.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalQuestion {
    /// The id as the question file writes it (a number or a string).
    pub question_id: Value,
    /// The images, relative to the image folder, in the order the prompt shows them (none for
    /// a text-only question).
    pub images: Vec<String>,
    /// The user turn after the image (suffix included).
    pub text: String,
    /// The prompt recorded in the answer file (`<image>\n` first when there is an image, as
    /// LLaVA's ScienceQA script records it).
    pub prompt: String,
    /// The question's category, when the file has one.
    pub category: Option<String>,
}

fn with_suffix(text: &str, suffix: &str) -> String {
    if text.contains(suffix) {
        text.to_string()
    } else {
        format!("{text}\n{suffix}")
    }
}

/// Reads `path` as `bench`'s question file: LLaVA's JSON lines (`question_id`, `image`, `text`,
/// optional `category`) for GQA, MME, POPE, VQAv2, MM-Vet and the synthetic split; ScienceQA's
/// `llava_test_CQM-A.json` (a JSON list of conversations); MMVP's `Questions.csv`. Short-answer
/// benchmarks get the short-answer suffix when their text lacks it.
pub fn read_questions(bench: Bench, path: &Path) -> Result<Vec<EvalQuestion>, Error> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::File(format!("{}: {e}", path.display())))?;
    match bench {
        Bench::Sqa => read_sqa(&text, path),
        Bench::Mmvp => read_mmvp(&text, path),
        _ => {
            let mut out = Vec::new();
            for (i, line) in text.lines().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                let bad =
                    |what: &str| Error::File(format!("{} line {}: {what}", path.display(), i + 1));
                let v: Value = serde_json::from_str(line).map_err(|e| bad(&e.to_string()))?;
                let question_id = v
                    .get("question_id")
                    .filter(|id| id_key(id).is_some())
                    .ok_or_else(|| bad("no question_id"))?
                    .clone();
                let raw = v
                    .get("text")
                    .and_then(Value::as_str)
                    .ok_or_else(|| bad("no text"))?;
                let text = match bench {
                    Bench::Gqa | Bench::Vqav2 | Bench::Pope => with_suffix(raw, SHORT_ANSWER),
                    _ => raw.to_string(),
                };
                out.push(EvalQuestion {
                    question_id,
                    images: v
                        .get("image")
                        .and_then(Value::as_str)
                        .map(str::to_string)
                        .into_iter()
                        .collect(),
                    prompt: raw.to_string(),
                    text,
                    category: v
                        .get("category")
                        .and_then(Value::as_str)
                        .map(str::to_string),
                });
            }
            Ok(out)
        }
    }
}

/// ScienceQA as LLaVA's `model_vqa_science.py --single-pred-prompt` asks it.
fn read_sqa(text: &str, path: &Path) -> Result<Vec<EvalQuestion>, Error> {
    let list: Vec<Value> =
        serde_json::from_str(text).map_err(|e| Error::File(format!("{}: {e}", path.display())))?;
    list.iter()
        .enumerate()
        .map(|(i, line)| {
            let bad = |what: &str| Error::File(format!("{} record {i}: {what}", path.display()));
            let id = line.get("id").cloned().ok_or_else(|| bad("no id"))?;
            let question = line
                .pointer("/conversations/0/value")
                .and_then(Value::as_str)
                .ok_or_else(|| bad("no first conversation turn"))?;
            let qs = question.replace("<image>", "").trim().to_string();
            let image = line
                .get("image")
                .and_then(Value::as_str)
                .map(str::to_string);
            let prompt = if image.is_some() {
                format!("<image>\n{qs}\n{MULTIPLE_CHOICE}")
            } else {
                format!("{qs}\n{MULTIPLE_CHOICE}")
            };
            Ok(EvalQuestion {
                question_id: id,
                images: image.into_iter().collect(),
                text: format!("{qs}\n{MULTIPLE_CHOICE}"),
                prompt,
                category: None,
            })
        })
        .collect()
}

/// Splits one CSV line with double-quoted fields.
pub fn csv_fields(line: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                chars.next();
                fields.last_mut().expect("one field").push('"');
            }
            '"' => quoted = !quoted,
            ',' if !quoted => fields.push(String::new()),
            _ => fields.last_mut().expect("one field").push(c),
        }
    }
    fields
}

/// MMVP's `Questions.csv` (`Index,Question,Options,Correct Answer`); image `<Index>.jpg`.
fn read_mmvp(text: &str, path: &Path) -> Result<Vec<EvalQuestion>, Error> {
    text.lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, line)| {
            let f = csv_fields(line);
            if f.len() < 3 {
                return Err(Error::File(format!(
                    "{} row {}: expected Index,Question,Options,...",
                    path.display(),
                    i + 2
                )));
            }
            let index = f[0].trim().to_string();
            // As MMVP's own LLaVA script asks: the question, a space, the options.
            let text = format!("{} {}", f[1].trim(), f[2].trim());
            Ok(EvalQuestion {
                question_id: index
                    .parse::<u64>()
                    .map_or_else(|_| json!(index), |n| json!(n)),
                images: vec![format!("{index}.jpg")],
                prompt: text.clone(),
                text,
                category: None,
            })
        })
        .collect()
}

/// The model that answers, with its tokenizer and image processor.
#[derive(Clone, Copy)]
pub struct Assistant<'a> {
    /// The LLaVA model.
    pub model: &'a LlavaModel,
    /// Its tokenizer.
    pub tokenizer: &'a GemmaTokenizer,
    /// Its image processor.
    pub processor: &'a ImageProcessor,
}

/// Settings of a run.
#[derive(Debug, Clone)]
pub struct RunSettings {
    /// Questions per generation batch.
    pub batch: usize,
    /// New tokens per answer.
    pub max_new_tokens: usize,
    /// Written as `model_id` in each answer.
    pub model_id: String,
}

/// What a run did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RunStats {
    /// Questions answered now.
    pub answered: usize,
    /// Questions already in the answer file (not recomputed).
    pub already_answered: usize,
    /// Questions whose image could not be read, with the first few reasons.
    pub failed: usize,
    /// The first failures.
    pub failures: Vec<String>,
    /// Seconds spent answering.
    pub seconds: f64,
    /// Questions answered per second.
    pub questions_per_s: f64,
}

/// The ids already in an answer file. A last line cut short by a killed run is removed, so that
/// appending starts on a fresh line.
pub fn answered_ids(answers: &Path) -> Result<HashSet<String>, Error> {
    let io = |e: std::io::Error| Error::File(format!("{}: {e}", answers.display()));
    if !answers.exists() {
        return Ok(HashSet::new());
    }
    let mut text = std::fs::read_to_string(answers).map_err(io)?;
    if !text.is_empty() && !text.ends_with('\n') {
        let keep = text.rfind('\n').map_or(0, |i| i + 1);
        text.truncate(keep);
        std::fs::write(answers, &text).map_err(io)?;
    }
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| v.get("question_id").and_then(id_key))
        .collect())
}

/// The prompt the model is given for `q`, as text: the chat template applied and the images'
/// tokens shown as `<image>×N` (for the manifest; images of the processor's size, without
/// pan-and-scan crops).
pub fn example_prompt(assistant: Assistant<'_>, q: &EvalQuestion) -> Result<String, Error> {
    let Assistant {
        model,
        tokenizer,
        processor,
    } = assistant;
    let size = processor
        .views(&image_processing::RgbImage::new(64, 64))
        .first()
        .map_or((0, 0), |v| (v.1 as i64, v.2 as i64));
    let per_image = model.tokens_per_image(size.0, size.1);
    let format = model.prompt_format(tokenizer, per_image);
    let text = if q.images.is_empty() {
        q.text.clone()
    } else {
        format.mark_images(&q.text, q.images.len())
    };
    let ids = format.encode(tokenizer, &[Message::user(text)])?;
    let ids = model.expand_image_tokens(&ids, per_image);
    let image = model.image_token();
    // Runs of image tokens collapsed to one mark with a count.
    let mut out = String::new();
    let mut i = 0;
    while i < ids.len() {
        if ids[i] == image {
            let run = ids[i..].iter().take_while(|&&t| t == image).count();
            out.push_str(&format!("<image>×{run}"));
            i += run;
        } else {
            let end = ids[i..]
                .iter()
                .position(|&t| t == image)
                .map_or(ids.len(), |p| i + p);
            out.push_str(&tokenizer.decode(&ids[i..end], false)?);
            i = end;
        }
    }
    Ok(out)
}

/// A stable answer id from the model and question (LLaVA writes a random short uuid).
fn answer_id(model_id: &str, question: &str) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (model_id, question).hash(&mut h);
    format!("{:016x}", h.finish())
}

/// Answers every question not yet in `answers` greedily, `settings.batch` at a time, appending
/// each batch's answers (and flushing) before starting the next. Questions whose image cannot be
/// read are reported in the stats and left unanswered.
pub fn answer_questions(
    assistant: Assistant<'_>,
    questions: &[EvalQuestion],
    images: &Path,
    answers: &Path,
    settings: &RunSettings,
    mut on_batch: impl FnMut(usize, usize),
) -> Result<RunStats, Error> {
    let Assistant {
        model,
        tokenizer,
        processor,
    } = assistant;
    let done = answered_ids(answers)?;
    let mut stats = RunStats::default();
    let todo: Vec<&EvalQuestion> = questions
        .iter()
        .filter(|q| {
            let seen = id_key(&q.question_id).is_some_and(|k| done.contains(&k));
            stats.already_answered += usize::from(seen);
            !seen
        })
        .collect();
    if let Some(parent) = answers.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .map_err(|e| Error::File(format!("{}: {e}", parent.display())))?;
    }
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(answers)
        .map_err(|e| Error::File(format!("{}: {e}", answers.display())))?;
    let config = GenerationConfig {
        max_new_tokens: settings.max_new_tokens,
        stop_tokens: tokenizer.chat_stop_tokens(),
        pad_token: tokenizer.pad,
        ..Default::default()
    };
    let start = Instant::now();
    // Image questions and text-only ones go in separate batches.
    let (with, without): (Vec<&EvalQuestion>, Vec<&EvalQuestion>) =
        todo.into_iter().partition(|q| !q.images.is_empty());
    let total = with.len() + without.len();
    for group in [with, without] {
        for chunk in group.chunks(settings.batch.max(1)) {
            let mut prompts = Vec::new();
            let mut pixels = Vec::new();
            let mut asked = Vec::new();
            let mut size = (0i64, 0i64);
            for q in chunk {
                let mut text = q.text.clone();
                // Pan-and-scan crops of the image (Gemma 3 when its processor makes them).
                let mut crops = Vec::new();
                let mut views_of_q = Vec::new();
                let mut failure = None;
                for image in &q.images {
                    let path: PathBuf = images.join(image);
                    match image_processing::open(&path) {
                        Ok(img) => {
                            let views = processor.views(&img);
                            crops.push(views.len() - 1);
                            views_of_q.extend(views);
                        }
                        Err(e) => {
                            failure = Some(format!("{}: {e}", path.display()));
                            break;
                        }
                    }
                }
                if let Some(why) = failure {
                    stats.failed += 1;
                    if stats.failures.len() < 10 {
                        stats.failures.push(why);
                    }
                    continue;
                }
                for (data, h, w) in views_of_q {
                    size = (h as i64, w as i64);
                    pixels.extend(data);
                }
                let per_image = model.tokens_per_image(size.0, size.1);
                let format = model.prompt_format(tokenizer, per_image);
                if !q.images.is_empty() {
                    text = format.mark_images(&text, q.images.len());
                }
                let ids = format.encode_with_crops(tokenizer, &[Message::user(text)], &crops)?;
                prompts.push(model.expand_image_tokens(&ids, per_image));
                asked.push(*q);
            }
            if asked.is_empty() {
                continue;
            }
            let images_in = pixels.len() as i64 / (3 * size.0 * size.1).max(1);
            let pixel_values = (images_in > 0)
                .then(|| Tensor::from_slice(&pixels).view([images_in, 3, size.0, size.1]));
            let outputs = tch::no_grad(|| {
                model.generate(&prompts, pixel_values.as_ref(), &config, |_, _| {})
            })?;
            let mut lines = String::new();
            for (q, out) in asked.iter().zip(outputs) {
                let text = tokenizer.decode(&out, true)?.trim().to_string();
                let key = id_key(&q.question_id).unwrap_or_default();
                lines.push_str(
                    &json!({
                        "question_id": q.question_id,
                        "prompt": q.prompt,
                        "text": text,
                        "answer_id": answer_id(&settings.model_id, &key),
                        "model_id": settings.model_id,
                        "metadata": {},
                    })
                    .to_string(),
                );
                lines.push('\n');
            }
            file.write_all(lines.as_bytes())
                .and_then(|()| file.flush())
                .map_err(|e| Error::File(format!("{}: {e}", answers.display())))?;
            stats.answered += asked.len();
            on_batch(stats.answered + stats.failed, total);
        }
    }
    stats.seconds = start.elapsed().as_secs_f64();
    stats.questions_per_s = stats.answered as f64 / stats.seconds.max(1e-9);
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn question_files_in_their_formats() {
        let dir = std::env::temp_dir().join(format!("llava-eval-q-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let gqa = dir.join("gqa.jsonl");
        std::fs::write(
            &gqa,
            "{\"question_id\": \"201\", \"image\": \"n1.jpg\", \"text\": \"Is it red?\"}\n\
             {\"question_id\": 7, \"image\": \"n2.jpg\", \"text\": \"Is it?\\nAnswer the question using a single word or phrase.\"}\n",
        )
        .unwrap();
        let q = read_questions(Bench::Gqa, &gqa).unwrap();
        assert_eq!(q[0].text, format!("Is it red?\n{SHORT_ANSWER}"));
        assert_eq!(
            q[1].text.matches(SHORT_ANSWER).count(),
            1,
            "no second suffix"
        );
        assert_eq!(q[1].question_id, json!(7));

        let sqa = dir.join("sqa.json");
        std::fs::write(
            &sqa,
            r#"[{"id": "5", "image": "5/image.png", "conversations": [{"from": "human", "value": "<image>\nContext: x\nWhich?\nA. a\nB. b"}]},
                {"id": "6", "conversations": [{"from": "human", "value": "Which?\nA. a\nB. b"}]}]"#,
        )
        .unwrap();
        let q = read_questions(Bench::Sqa, &sqa).unwrap();
        assert_eq!(
            q[0].prompt,
            format!("<image>\nContext: x\nWhich?\nA. a\nB. b\n{MULTIPLE_CHOICE}")
        );
        assert_eq!(
            q[0].text,
            format!("Context: x\nWhich?\nA. a\nB. b\n{MULTIPLE_CHOICE}")
        );
        assert!(q[1].images.is_empty());

        let mmvp = dir.join("Questions.csv");
        std::fs::write(
            &mmvp,
            "Index,Question,Options,Correct Answer\n1,\"Is the door, open?\",(a) Open (b) Closed,(a)\n",
        )
        .unwrap();
        let q = read_questions(Bench::Mmvp, &mmvp).unwrap();
        assert_eq!(q[0].text, "Is the door, open? (a) Open (b) Closed");
        assert_eq!(q[0].images, ["1.jpg"]);
        assert_eq!(q[0].question_id, json!(1));

        let bad = dir.join("bad.jsonl");
        std::fs::write(
            &bad,
            "{\"question_id\": 1, \"text\": \"ok\"}\n{\"text\": \"no id\"}\n",
        )
        .unwrap();
        let err = read_questions(Bench::Pope, &bad).unwrap_err().to_string();
        assert!(
            err.contains("line 2") && err.contains("question_id"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_cut_last_line_is_dropped_before_appending() {
        let dir = std::env::temp_dir().join(format!("llava-eval-a-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("answers.jsonl");
        std::fs::write(
            &file,
            "{\"question_id\": 1, \"text\": \"a\"}\n{\"question_id\": 2, \"te",
        )
        .unwrap();
        let ids = answered_ids(&file).unwrap();
        assert_eq!(ids, HashSet::from(["1".to_string()]));
        assert_eq!(
            std::fs::read_to_string(&file).unwrap(),
            "{\"question_id\": 1, \"text\": \"a\"}\n"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
