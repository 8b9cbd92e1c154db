//! MME: the benchmark's `eval_tool/calculation.py` over a directory of result files, one per
//! subtask (`<subtask>.txt`, lines `image<TAB>question<TAB>ground_truth<TAB>prediction`; an image's
//! two questions are consecutive lines). A subtask scores accuracy x 100 + accuracy+ x 100
//! (accuracy+: both questions of an image right); perception sums ten subtasks, cognition four.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

use super::Issues;
use crate::Error;

/// The perception subtasks.
pub const PERCEPTION: [&str; 10] = [
    "existence",
    "count",
    "position",
    "color",
    "posters",
    "celebrity",
    "scene",
    "landmark",
    "artwork",
    "OCR",
];
/// The cognition subtasks.
pub const COGNITION: [&str; 4] = [
    "commonsense_reasoning",
    "numerical_calculation",
    "text_translation",
    "code_reasoning",
];

/// MME's score.
#[derive(Debug, Clone, Serialize)]
pub struct Score {
    /// Sum of the perception subtasks (at most 2000).
    pub perception: f64,
    /// Sum of the cognition subtasks (at most 800).
    pub cognition: f64,
    /// Each subtask's score (at most 200).
    pub subtasks: BTreeMap<String, f64>,
    /// Subtasks whose file is absent (scored 0).
    pub missing_subtasks: Vec<String>,
    /// Problems in the inputs: malformed lines (not four fields, or a ground truth other than
    /// yes/no) are left out; an image left without its pair counts as a miss for accuracy+.
    pub issues: Issues,
}

/// The tool's reading of a prediction (lowercased, not stripped): `yes` or `no` when it is
/// exactly that, else the first of them found in its first four characters, else `other`.
pub fn parse_prediction(prediction: &str) -> &'static str {
    let p = prediction.to_lowercase();
    if p == "yes" {
        return "yes";
    }
    if p == "no" {
        return "no";
    }
    let prefix: String = p.chars().take(4).collect();
    if prefix.contains("yes") {
        "yes"
    } else if prefix.contains("no") {
        "no"
    } else {
        "other"
    }
}

/// Scores one subtask file's text; returns the score and the malformed lines.
pub fn score_subtask(text: &str) -> (f64, usize) {
    // readlines() keeps each line's newline, and the prediction is the last field with it.
    let lines: Vec<&str> = text
        .split_inclusive('\n')
        .filter(|l| !l.trim().is_empty())
        .collect();
    let mut bad = 0;
    let mut parsed: Vec<Option<(String, &'static str)>> = Vec::new();
    for line in &lines {
        let fields: Vec<&str> = line.split('\t').collect();
        let gt = fields.get(2).map(|g| g.to_lowercase());
        match (fields.len(), gt) {
            (4, Some(gt)) if gt == "yes" || gt == "no" => {
                parsed.push(Some((gt, parse_prediction(fields[3]))));
            }
            _ => {
                bad += 1;
                parsed.push(None);
            }
        }
    }
    let (mut right, mut total, mut plus, mut images) = (0usize, 0usize, 0usize, 0usize);
    for pair in parsed.chunks(2) {
        images += 1;
        let mut correct = 0;
        for (gt, pred) in pair.iter().flatten() {
            total += 1;
            if gt == pred {
                right += 1;
                correct += 1;
            }
        }
        plus += usize::from(correct == 2);
    }
    let acc = right as f64 / total.max(1) as f64;
    let acc_plus = plus as f64 / images.max(1) as f64;
    (acc * 100.0 + acc_plus * 100.0, bad)
}

/// Scores a directory of result files.
pub fn score(dir: &Path) -> Result<Score, Error> {
    if !dir.is_dir() {
        return Err(Error::File(format!(
            "{}: MME answers must be a directory of <subtask>.txt result files",
            dir.display()
        )));
    }
    let mut subtasks = BTreeMap::new();
    let mut missing = Vec::new();
    let mut issues = Issues::default();
    let (mut perception, mut cognition) = (0.0, 0.0);
    for (name, is_perception) in PERCEPTION
        .iter()
        .map(|n| (n, true))
        .chain(COGNITION.iter().map(|n| (n, false)))
    {
        let file = dir.join(format!("{name}.txt"));
        if !file.exists() {
            missing.push(name.to_string());
            issues.missing_answers += 1;
            continue;
        }
        let text = std::fs::read_to_string(&file)
            .map_err(|e| Error::File(format!("{}: {e}", file.display())))?;
        let (s, bad) = score_subtask(&text);
        issues.malformed_lines += bad;
        subtasks.insert(name.to_string(), s);
        if is_perception {
            perception += s;
        } else {
            cognition += s;
        }
    }
    Ok(Score {
        perception,
        cognition,
        subtasks,
        missing_subtasks: missing,
        issues,
    })
}

/// The ground truth of an MME release folder: `(category, <image stem>.txt, question) -> answer`,
/// read from `<category>/questions_answers_YN/*.txt` or `<category>/*.txt` (lines
/// `question<TAB>answer`).
pub fn ground_truth(root: &Path) -> Result<BTreeMap<(String, String, String), String>, Error> {
    let io = |p: &Path, e: std::io::Error| Error::File(format!("{}: {e}", p.display()));
    let mut gt = BTreeMap::new();
    for entry in std::fs::read_dir(root).map_err(|e| io(root, e))? {
        let dir = entry.map_err(|e| io(root, e))?.path();
        if !dir.is_dir() {
            continue;
        }
        let category = dir
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        let qa = if dir.join("images").is_dir() {
            dir.join("questions_answers_YN")
        } else {
            dir.clone()
        };
        let Ok(files) = std::fs::read_dir(&qa) else {
            continue;
        };
        for file in files.filter_map(|e| e.ok().map(|e| e.path())) {
            if file.extension().is_none_or(|e| e != "txt") {
                continue;
            }
            let name = file
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            let text = std::fs::read_to_string(&file).map_err(|e| io(&file, e))?;
            for line in text.lines() {
                if let Some((q, a)) = line.trim().split_once('\t') {
                    gt.insert(
                        (category.clone(), name.to_string(), q.to_string()),
                        a.to_string(),
                    );
                }
            }
        }
    }
    Ok(gt)
}

/// LLaVA's `convert_answer_to_mme.py`: writes one `<category>.txt` result file per category into
/// `out` from answers whose ids are `<category>/.../<image>`, finding each ground truth by the
/// prompt without the short-answer suffix and with " Please answer yes or no." Answers without a
/// ground truth are counted (as unknown ids) and left out.
pub fn convert(
    answers: &super::Answers,
    gt: &BTreeMap<(String, String, String), String>,
    out: &Path,
) -> Result<Issues, Error> {
    const SHORT: &str = "Answer the question using a single word or phrase.";
    const YES_NO: &str = " Please answer yes or no.";
    let mut issues = answers.issues.clone();
    let mut files: BTreeMap<String, String> = BTreeMap::new();
    for a in &answers.lines {
        let category = a
            .question_id
            .split('/')
            .next()
            .unwrap_or_default()
            .to_string();
        let image = a.question_id.rsplit('/').next().unwrap_or_default();
        let stem = image.split('.').next().unwrap_or_default();
        let file = format!("{stem}.txt");
        let mut prompt = a.prompt.replace(SHORT, "").trim().to_string();
        if !prompt.contains(YES_NO.trim()) {
            prompt.push_str(YES_NO);
            if !gt.contains_key(&(category.clone(), file.clone(), prompt.clone())) {
                prompt = prompt.replace(YES_NO, &format!(" {YES_NO}"));
            }
        }
        let Some(answer) = gt.get(&(category.clone(), file.clone(), prompt.clone())) else {
            issues.unknown_ids += 1;
            continue;
        };
        let text = a.text.replace(['\n', '\t'], " ");
        files
            .entry(category)
            .or_default()
            .push_str(&format!("{file}\t{prompt}\t{answer}\t{text}\n"));
    }
    std::fs::create_dir_all(out).map_err(|e| Error::File(format!("{}: {e}", out.display())))?;
    for (category, text) in files {
        let path = out.join(format!("{category}.txt"));
        std::fs::write(&path, text).map_err(|e| Error::File(format!("{}: {e}", path.display())))?;
    }
    Ok(issues)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn predictions_read_as_the_tool_reads_them() {
        assert_eq!(parse_prediction("Yes"), "yes");
        assert_eq!(parse_prediction("no"), "no");
        assert_eq!(parse_prediction("Yes, there is."), "yes");
        assert_eq!(parse_prediction("No."), "no");
        // Only the first four characters are searched.
        assert_eq!(parse_prediction("The answer is yes"), "other");
        assert_eq!(parse_prediction(" yes"), "yes");
        assert_eq!(parse_prediction("  yes"), "other");
        // "no" inside the first four characters counts, "yes" first.
        assert_eq!(parse_prediction("none"), "no");
        assert_eq!(parse_prediction("know"), "no");
        assert_eq!(parse_prediction("yesno"), "yes");
        assert_eq!(parse_prediction(""), "other");
    }

    #[test]
    fn a_subtask_adds_accuracy_and_accuracy_plus() {
        // Image 1: both right. Image 2: one right. Image 3: an `other` answer and a right one.
        let text = "a.jpg\tq1\tYes\tyes\n\
                    a.jpg\tq2\tNo\tNo, it is not.\n\
                    b.jpg\tq1\tYes\tno\n\
                    b.jpg\tq2\tNo\tno\n\
                    c.jpg\tq1\tYes\tI think so\n\
                    c.jpg\tq2\tNo\tno";
        let (s, bad) = score_subtask(text);
        assert_eq!(bad, 0);
        // accuracy 4/6, accuracy+ 1/3.
        assert!((s - (400.0 / 6.0 + 100.0 / 3.0)).abs() < 1e-9, "{s}");
    }

    #[test]
    fn answers_convert_to_result_files_by_prompt() {
        let dir = std::env::temp_dir().join(format!("llava-mme-{}", std::process::id()));
        let gt_dir = dir.join("MME/existence");
        std::fs::create_dir_all(&gt_dir).unwrap();
        std::fs::write(
            gt_dir.join("0001.txt"),
            "Is there a dog in this image? Please answer yes or no.\tYes\n\
             Is there a cat in this image? Please answer yes or no.\tNo\n",
        )
        .unwrap();
        let gt = ground_truth(&dir.join("MME")).unwrap();
        assert_eq!(gt.len(), 2);
        let answers = super::super::Answers::parse(
            "{\"question_id\": \"existence/0001.jpg\", \"prompt\": \"Is there a dog in this image? Please answer yes or no.\\nAnswer the question using a single word or phrase.\", \"text\": \"Yes\"}\n\
             {\"question_id\": \"existence/0001.jpg\", \"prompt\": \"Is there a cat in this image? Please answer yes or no.\", \"text\": \"Yes\"}\n\
             {\"question_id\": \"existence/0009.jpg\", \"prompt\": \"Unknown?\", \"text\": \"Yes\"}\n",
        );
        let issues = convert(&answers, &gt, &dir.join("results")).unwrap();
        assert_eq!(issues.unknown_ids, 1);
        let s = score(&dir.join("results")).unwrap();
        assert!(
            (s.subtasks["existence"] - 50.0).abs() < 1e-9,
            "{:?}",
            s.subtasks
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn malformed_lines_are_counted() {
        let (s, bad) = score_subtask("a\tq\tyes\tyes\nbroken line\n");
        assert_eq!(bad, 1);
        // One answered question, right; its image lacks a pair, so accuracy+ is 0.
        assert!((s - 100.0).abs() < 1e-9, "{s}");
    }
}
