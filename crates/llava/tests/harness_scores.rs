//! The six newer benchmarks (MMStar, MMMU, OCRBench, AI2D, TextVQA, HallusionBench) scored by
//! `llava score` against lmms-eval's own task code on hand-made answer files
//! (`fixtures/harness/<bench>/`, made by `scripts/make_harness_fixtures.py`): every question's
//! score and every aggregate equal what lmms-eval 0.7.3 computes (stored in `lmms_eval.json` by
//! `scripts/lmms_eval_score.py`, and recomputed here by lmms-eval itself from PyPI when the
//! network allows), from lmms-eval's rows and from the same rows as VLMEvalKit's TSV.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{llava, python_with, root, run_ok};
use llava::eval::records;
use llava::eval::score::BenchScore;
use llava::eval::scoring::score_data;
use serde_json::Value;

const BENCHES: [&str; 6] = [
    "mmstar",
    "mmmu",
    "ocrbench",
    "ai2d",
    "textvqa",
    "hallusionbench",
];

fn dir(bench: &str) -> PathBuf {
    root().join("fixtures/harness").join(bench)
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The `text` of each line of an answer file, in order.
fn answer_texts(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["text"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect()
}

/// The metric of ours that holds one unit per question.
fn per_question_metric(bench: &str) -> &'static str {
    match bench {
        "mmstar" => "overall",
        "ocrbench" => "final_score",
        "hallusionbench" => "aAcc",
        _ => "accuracy",
    }
}

/// Our per-question scores, by id.
fn ours_per_question(bench: &str, s: &BenchScore) -> BTreeMap<String, f64> {
    s.metric(per_question_metric(bench))
        .unwrap()
        .units
        .iter()
        .map(|u| (u.id.clone(), u.value))
        .collect()
}

/// Every question's score and every aggregate of `reference` (lmms-eval's output) against ours.
fn assert_equal_to(bench: &str, reference: &Value, ours: &BenchScore) {
    let per = ours_per_question(bench, ours);
    let theirs = reference["per_question"].as_object().unwrap();
    assert_eq!(per.len(), theirs.len(), "{bench}: question count");
    for (id, v) in theirs {
        let mine = per
            .get(id)
            .unwrap_or_else(|| panic!("{bench}: no score for {id}"));
        assert!(
            (mine - v.as_f64().unwrap()).abs() < 1e-12,
            "{bench} question {id}: ours {mine}, lmms-eval {v}"
        );
    }
    for (name, v) in reference["metrics"].as_object().unwrap() {
        let mine = ours
            .metric(name)
            .unwrap_or_else(|| panic!("{bench}: no metric {name}"))
            .value();
        let theirs = v.as_f64().unwrap();
        // MMMU's aggregate is rounded to five decimals by the reference.
        let tolerance = if bench == "mmmu" { 5e-6 } else { 1e-9 };
        assert!(
            (mine - theirs).abs() < tolerance,
            "{bench} {name}: ours {mine}, lmms-eval {theirs}"
        );
    }
}

#[test]
fn the_six_benchmarks_score_as_lmms_evals_code_does() {
    for bench in BENCHES {
        let d = dir(bench);
        let reference = read_json(&d.join("lmms_eval.json"));
        let ours = score_data(bench, &d.join("data.json"), &d.join("answers.jsonl")).unwrap();
        assert!(ours.issues.is_clean(), "{bench}: {:?}", ours.issues);
        assert_equal_to(bench, &reference, &ours);
    }
}

/// The answers re-keyed to the TSV's ids (row i of data.json is row i of data.tsv).
fn tsv_answers(bench: &str, out: &Path) -> (PathBuf, BTreeMap<String, String>) {
    let d = dir(bench);
    let json_rows = records::read(&d.join("data.json")).unwrap().rows;
    let tsv_rows = records::read(&d.join("data.tsv")).unwrap().rows;
    assert_eq!(json_rows.len(), tsv_rows.len());
    let reference = read_json(&d.join("lmms_eval.json"));
    let ids: Vec<String> = reference["per_question"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    let answers = std::fs::read_to_string(d.join("answers.jsonl")).unwrap();
    let by_id: BTreeMap<String, Value> = answers
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .map(|v| (llava::eval::score::id_key(&v["question_id"]).unwrap(), v))
        .collect();
    let mut rekeyed = String::new();
    let mut map = BTreeMap::new();
    for (json_row, tsv_row) in json_rows.iter().zip(&tsv_rows) {
        let json_id = ids
            .iter()
            .find(|id| {
                ["index", "id", "question_id"].iter().any(|k| {
                    json_row.get(*k).and_then(llava::eval::score::id_key) == Some(id.to_string())
                })
            })
            .cloned()
            .unwrap_or_else(|| {
                [
                    "category",
                    "subcategory",
                    "set_id",
                    "figure_id",
                    "question_id",
                ]
                .map(|k| json_row[k].as_str().unwrap().to_string())
                .join("_")
            });
        let tsv_id = tsv_row["index"].as_str().unwrap().to_string();
        let mut a = by_id[&json_id].clone();
        a["question_id"] = Value::String(tsv_id.clone());
        rekeyed.push_str(&format!("{a}\n"));
        map.insert(tsv_id, json_id);
    }
    let path = out.join(format!("{bench}-tsv-answers.jsonl"));
    std::fs::write(&path, rekeyed).unwrap();
    (path, map)
}

#[test]
fn vlmevalkit_tsv_rows_score_the_same_questions_the_same() {
    let out = tempfile::tempdir().unwrap();
    for bench in BENCHES {
        let d = dir(bench);
        let reference = read_json(&d.join("lmms_eval.json"));
        let (answers, tsv_to_json) = tsv_answers(bench, out.path());
        let ours = score_data(bench, &d.join("data.tsv"), &answers).unwrap();
        assert!(ours.issues.is_clean(), "{bench}: {:?}", ours.issues);
        let per = ours_per_question(bench, &ours);
        assert_eq!(per.len(), tsv_to_json.len(), "{bench}");
        for (tsv_id, v) in per {
            let theirs = reference["per_question"][&tsv_to_json[&tsv_id]]
                .as_f64()
                .unwrap();
            assert!(
                (v - theirs).abs() < 1e-12,
                "{bench} TSV row {tsv_id}: ours {v}, lmms-eval {theirs}"
            );
        }
    }
}

#[test]
fn llava_score_prints_metrics_with_intervals_and_names_bad_rows() {
    let out = tempfile::tempdir().unwrap();
    let d = dir("mmstar");
    let printed = run_ok(llava().args([
        "score",
        "--bench",
        "mmstar",
        "--json",
        "--data",
        d.join("data.json").to_str().unwrap(),
        "--answers",
        d.join("answers.jsonl").to_str().unwrap(),
    ]));
    let v: Value = serde_json::from_str(&printed).unwrap();
    assert_eq!(v["bench"], "mmstar");
    assert_eq!(v["headline"], "overall");
    let average = &v["metrics"]["average"];
    let [lo, hi] = [
        average["interval"][0].as_f64().unwrap(),
        average["interval"][1].as_f64().unwrap(),
    ];
    let value = average["value"].as_f64().unwrap();
    assert!(lo <= value && value <= hi && lo < hi, "{average}");

    // A TSV with a broken row and a row without an answer letter's category: named, not fatal.
    let tsv = std::fs::read_to_string(d.join("data.tsv")).unwrap();
    let mut lines: Vec<String> = tsv.lines().map(String::from).collect();
    lines.push("999\tq\ta\tb\tc\td\tA\tmath\t\textra\tcells".into());
    lines.push("1000\tq\ta\tb\tc\td\tA".into());
    let broken = out.path().join("broken.tsv");
    std::fs::write(&broken, lines.join("\n") + "\n").unwrap();
    let printed = run_ok(llava().args([
        "score",
        "--bench",
        "mmstar",
        "--json",
        "--data",
        broken.to_str().unwrap(),
        "--answers",
        d.join("answers.jsonl").to_str().unwrap(),
    ]));
    let v: Value = serde_json::from_str(&printed).unwrap();
    assert_eq!(v["issues"]["bad_records"], 2, "{v}");
    let examples = v["issues"]["bad_record_examples"].to_string();
    assert!(examples.contains("broken.tsv: line"), "{examples}");
    assert!(examples.contains("no `category`"), "{examples}");

    // A missing --data names the flag.
    let err = llava()
        .args(["score", "--bench", "ocrbench", "--answers", "x.jsonl"])
        .output()
        .unwrap();
    assert!(!err.status.success());
    assert!(
        String::from_utf8_lossy(&err.stderr).contains("--data"),
        "{}",
        String::from_utf8_lossy(&err.stderr)
    );
}

/// lmms-eval itself (0.7.3 from PyPI, its task code only: the package without its model
/// dependencies) recomputes each stored reference.
#[test]
fn lmms_eval_from_pypi_recomputes_the_stored_references() {
    let python = python_with(
        "import loguru, pytz, datasets, tenacity, evaluate, sacrebleu",
        &[
            "loguru",
            "pytz",
            "datasets",
            "tenacity",
            "evaluate",
            "sacrebleu",
        ],
    )
    .and_then(|_| {
        python_with(
            "import lmms_eval.tasks.mmstar.utils, lmms_eval.tasks.mmmu.utils",
            &["--no-deps", "lmms-eval==0.7.3"],
        )
    });
    let python = match python {
        Ok(p) => p,
        Err(why) => {
            eprintln!("SKIPPED: lmms-eval unavailable: {why}");
            return;
        }
    };
    for bench in BENCHES {
        let d = dir(bench);
        let out = Command::new(&python)
            .arg(root().join("scripts/lmms_eval_score.py"))
            .args(["--bench", bench, "--data"])
            .arg(d.join("data.json"))
            .arg("--answers")
            .arg(d.join("answers.jsonl"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{bench}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let fresh: Value = serde_json::from_slice(&out.stdout).unwrap();
        let stored = read_json(&d.join("lmms_eval.json"));
        assert_eq!(fresh["metrics"], stored["metrics"], "{bench}");
        assert_eq!(fresh["per_question"], stored["per_question"], "{bench}");
    }
    let d = dir("hallusionbench");
    let out = Command::new(&python)
        .arg(root().join("scripts/lmms_eval_score.py"))
        .args(["--bench", "hallusionbench", "--data"])
        .arg(d.join("data.json"))
        .arg("--answers")
        .arg(d.join("answers.jsonl"))
        .arg("--grades")
        .arg(d.join("grades.jsonl"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let fresh: Value = serde_json::from_slice(&out.stdout).unwrap();
    let stored = read_json(&d.join("lmms_eval_judged.json"));
    assert_eq!(fresh["metrics"], stored["metrics"], "judged");
}

/// `llava score --manifest` writes each run's provenance and units; `llava eval --compare` says
/// whether two runs differ beyond their paired interval.
#[test]
fn compare_tells_a_real_difference_from_noise() {
    let out = tempfile::tempdir().unwrap();
    let d = dir("mmstar");
    let manifest = |answers: &Path, name: &str| -> PathBuf {
        let path = out.path().join(name);
        run_ok(llava().args([
            "score",
            "--bench",
            "mmstar",
            "--json",
            "--data",
            d.join("data.json").to_str().unwrap(),
            "--answers",
            answers.to_str().unwrap(),
            "--manifest",
            path.to_str().unwrap(),
        ]));
        path
    };
    let a = manifest(&d.join("answers.jsonl"), "a.json");
    // B answers every question with its reference letter: far better than A.
    let rows: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(d.join("data.json")).unwrap()).unwrap();
    let right: String = rows
        .iter()
        .map(|r| {
            format!(
                "{}\n",
                serde_json::json!({"question_id": r["index"], "text": r["answer"]})
            )
        })
        .collect();
    let better = out.path().join("better.jsonl");
    std::fs::write(&better, right).unwrap();
    let b = manifest(&better, "b.json");
    let compare = |x: &Path, y: &Path| -> Value {
        serde_json::from_str(&run_ok(llava().args([
            "eval",
            "--compare",
            x.to_str().unwrap(),
            y.to_str().unwrap(),
            "--json",
        ])))
        .unwrap()
    };
    let differ = compare(&a, &b);
    let overall = differ["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["metric"] == "overall")
        .unwrap();
    assert_eq!(overall["differs"], true, "{overall}");
    assert_eq!(overall["shared"], 42);
    assert!(overall["difference"].as_f64().unwrap() < -0.3, "{overall}");
    let same = compare(&a, &a);
    assert!(
        same["metrics"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["differs"] == false),
        "{same}"
    );
    // The human-readable form names the verdict.
    let text = run_ok(llava().args([
        "eval",
        "--compare",
        a.to_str().unwrap(),
        b.to_str().unwrap(),
    ]));
    assert!(text.contains("DIFFERENT"), "{text}");
    // A file that is not a manifest is named.
    let err = llava()
        .args([
            "eval",
            "--compare",
            d.join("data.json").to_str().unwrap(),
            b.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!err.status.success());
    assert!(String::from_utf8_lossy(&err.stderr).contains("not an eval manifest"));
}

/// HallusionBench with a judge's grades: `llava score --grades` adds the judged aAcc, fAcc and
/// qAcc as lmms-eval's `evaluate_hb.py` aggregates the same verdicts, and keeps the rule-based
/// figures.
#[test]
fn hallusionbench_judged_metrics_aggregate_as_lmms_eval_does() {
    let d = dir("hallusionbench");
    let reference = read_json(&d.join("lmms_eval_judged.json"));
    let printed = run_ok(llava().args([
        "score",
        "--bench",
        "hallusionbench",
        "--json",
        "--data",
        d.join("data.json").to_str().unwrap(),
        "--answers",
        d.join("answers.jsonl").to_str().unwrap(),
        "--grades",
        d.join("grades.jsonl").to_str().unwrap(),
    ]));
    let ours: Value = serde_json::from_str(&printed).unwrap();
    for (name, v) in reference["metrics"].as_object().unwrap() {
        let mine = ours["metrics"][name]["value"].as_f64().unwrap();
        assert!(
            (mine - v.as_f64().unwrap()).abs() < 1e-9,
            "{name}: ours {mine}, lmms-eval {v}"
        );
    }
    assert_eq!(ours["counts"]["ungraded"], 0);
}

/// The `vlmevalkit_*` metrics equal VLMEvalKit's own rule-based scoring (`can_infer` else `Z`,
/// `MMMU_preproc`, `YOrN_Extraction` + `Hallusion_rating`) of the same TSV rows and answers,
/// as `scripts/vlmevalkit_score.py` ran it on VLMEvalKit e8e78f05 (stored: VLMEvalKit is not on
/// PyPI).
#[test]
fn vlmevalkit_metrics_score_as_vlmevalkits_code_does() {
    let out = tempfile::tempdir().unwrap();
    for (bench, per_question_metric, names) in [
        (
            "mmstar",
            "vlmevalkit_overall",
            &[("overall", "vlmevalkit_overall")][..],
        ),
        (
            "ai2d",
            "vlmevalkit_accuracy",
            &[("overall", "vlmevalkit_accuracy")][..],
        ),
        (
            "mmmu",
            "vlmevalkit_accuracy",
            &[("overall", "vlmevalkit_accuracy")][..],
        ),
        (
            "hallusionbench",
            "vlmevalkit_aAcc",
            &[
                ("aAcc", "vlmevalkit_aAcc"),
                ("fAcc", "vlmevalkit_fAcc"),
                ("qAcc", "vlmevalkit_qAcc"),
            ][..],
        ),
    ] {
        let d = dir(bench);
        let reference = read_json(&d.join("vlmevalkit.json"));
        let (answers, _) = tsv_answers(bench, out.path());
        let ours = score_data(bench, &d.join("data.tsv"), &answers).unwrap();
        assert!(ours.issues.is_clean(), "{bench}: {:?}", ours.issues);
        for (theirs, mine) in names {
            let v = ours.metric(mine).unwrap().value();
            let r = reference["metrics"][theirs].as_f64().unwrap();
            assert!(
                (v - r).abs() < 1e-9,
                "{bench} {mine}: ours {v}, VLMEvalKit {r}"
            );
        }
        let units = &ours.metric(per_question_metric).unwrap().units;
        let theirs = reference["per_question"].as_object().unwrap();
        assert_eq!(units.len(), theirs.len(), "{bench}");
        for u in units {
            assert_eq!(
                u.value,
                theirs[&u.id].as_f64().unwrap(),
                "{bench} row {}",
                u.id
            );
        }
    }
}

/// lmms-eval's datasets as Hugging Face writes them (parquet, images embedded): read natively,
/// scored like the JSON rows, and asked with every embedded image written once beside the file.
#[test]
fn parquet_datasets_read_like_their_rows() {
    for bench in ["mmstar", "mmmu"] {
        let d = dir(bench);
        let reference = read_json(&d.join("lmms_eval.json"));
        let ours = score_data(bench, &d.join("data.parquet"), &d.join("answers.jsonl")).unwrap();
        assert!(ours.issues.is_clean(), "{bench}: {:?}", ours.issues);
        assert_equal_to(bench, &reference, &ours);
    }
    let tmp = tempfile::tempdir().unwrap();
    let copy = tmp.path().join("mmmu.parquet");
    std::fs::copy(dir("mmmu").join("data.parquet"), &copy).unwrap();
    let asked = llava::eval::recent::questions(llava::eval::runner::Bench::Mmmu, &copy).unwrap();
    assert!(asked.bad.is_empty(), "{:?}", asked.bad);
    assert_eq!(asked.questions.len(), 36);
    let q = &asked.questions[0];
    assert_eq!(q.images.len(), 2, "image_1 and image_2");
    for name in &q.images {
        let bytes = std::fs::read(asked.image_dir.join(name)).unwrap();
        assert!(bytes.starts_with(b"\x89PNG"), "{name}");
    }
    assert_eq!(asked.image_dir, tmp.path().join("images/mmmu"));
    // Not a parquet file: named.
    let fake = tmp.path().join("fake.parquet");
    std::fs::write(&fake, "not parquet").unwrap();
    let err = records::read(&fake).unwrap_err().to_string();
    assert!(
        err.contains("fake.parquet") && err.contains("not a parquet file"),
        "{err}"
    );
}

/// VLMEvalKit's choice extractor is asked exactly what VLMEvalKit asks (`build_prompt` with
/// `build_option_str`), about exactly the answers its rules cannot read; its letters then count.
#[test]
fn the_choice_extractor_asks_as_vlmevalkit_does() {
    let out = tempfile::tempdir().unwrap();
    for bench in ["mmstar", "ai2d", "mmmu"] {
        let d = dir(bench);
        let reference = read_json(&d.join("vlmevalkit.json"));
        let expected = reference["extractor_prompts"].as_object().unwrap();
        let (answers, _) = tsv_answers(bench, out.path());
        let rows = records::read(&d.join("data.tsv")).unwrap().rows;
        let mut parsed = llava::eval::score::read_answers(&answers).unwrap();
        let requests = llava::eval::grade::choice_requests(&mut parsed, &rows, bench);
        assert_eq!(requests.len(), expected.len(), "{bench}");
        for r in &requests {
            let id = r.question_id.as_str().unwrap();
            assert_eq!(r.prompt, expected[id].as_str().unwrap(), "{bench} row {id}");
        }
        // Grades naming each asked question's gold letter lift the score by exactly those.
        let items: Vec<_> = rows
            .iter()
            .map(|r| llava::eval::score::vlmevalkit::mcq_item(bench, r).unwrap())
            .collect();
        let grades: String = requests
            .iter()
            .map(|r| {
                let id = r.question_id.as_str().unwrap();
                let gold = items.iter().find(|i| i.id == id).unwrap().gold;
                format!(
                    "{}\n",
                    serde_json::json!({"question_id": id, "letter": gold.to_string()})
                )
            })
            .collect();
        let grades_path = out.path().join(format!("{bench}-grades.jsonl"));
        std::fs::write(&grades_path, grades).unwrap();
        let printed = run_ok(llava().args([
            "score",
            "--bench",
            bench,
            "--json",
            "--data",
            d.join("data.tsv").to_str().unwrap(),
            "--answers",
            answers.to_str().unwrap(),
            "--grades",
            grades_path.to_str().unwrap(),
        ]));
        let v: Value = serde_json::from_str(&printed).unwrap();
        let name = if bench == "mmstar" {
            "overall"
        } else {
            "accuracy"
        };
        let rules = v["metrics"][format!("vlmevalkit_{name}")]["value"]
            .as_f64()
            .unwrap();
        let with_llm = v["metrics"][format!("vlmevalkit_llm_{name}")]["value"]
            .as_f64()
            .unwrap();
        let n = items.len() as f64;
        assert!(
            (with_llm - rules - requests.len() as f64 / n).abs() < 1e-9,
            "{bench}: {rules} + {} / {n} != {with_llm}",
            requests.len()
        );
    }
}

/// POPE and MME from VLMEvalKit's TSV files: the paper's rules give what they give on the same
/// questions in LLaVA's layout, and the `vlmevalkit_*` figures are VLMEvalKit's own
/// (`POPE_rating`, `MME_rating` on e8e78f05, stored by `scripts/vlmevalkit_score.py`).
#[test]
fn pope_and_mme_from_vlmevalkit_tsv() {
    use llava::eval::score::{Answers, mme, pope};
    let out = tempfile::tempdir().unwrap();

    // POPE: the TSV against LLaVA's layout built from the same rows (one question per category).
    let d = dir("pope");
    let scored = |bench: &str, d: &Path| -> Value {
        serde_json::from_str(&run_ok(llava().args([
            "score",
            "--bench",
            bench,
            "--json",
            "--data",
            d.join("data.tsv").to_str().unwrap(),
            "--answers",
            d.join("answers.jsonl").to_str().unwrap(),
        ])))
        .unwrap()
    };
    let tsv = scored("pope", &d);
    let rows = records::read(&d.join("data.tsv")).unwrap().rows;
    let texts = answer_texts(&d.join("answers.jsonl"));
    let labels = out.path().join("coco");
    std::fs::create_dir_all(&labels).unwrap();
    let (mut questions, mut answers) = (Vec::new(), String::new());
    let mut label_files: std::collections::BTreeMap<String, String> = Default::default();
    let mut id = 0;
    for (r, text) in rows.iter().zip(&texts) {
        for c in r["category"].as_str().unwrap().split(',') {
            let q = serde_json::json!({"question_id": id, "image": format!("{}.jpg", r["index"].as_str().unwrap()),
                "text": r["question"], "category": c});
            questions.push(q);
            answers.push_str(&format!(
                "{}\n",
                serde_json::json!({"question_id": id, "text": text})
            ));
            let label = if r["answer"] == "Yes" { "yes" } else { "no" };
            label_files.entry(c.to_string()).or_default().push_str(&format!(
                "{}\n",
                serde_json::json!({"question_id": id, "image": format!("{}.jpg", r["index"].as_str().unwrap()), "text": r["question"], "label": label})
            ));
            id += 1;
        }
    }
    for (c, text) in &label_files {
        std::fs::write(labels.join(format!("coco_pope_{c}.json")), text).unwrap();
    }
    let llava_layout = pope::score(
        Answers::parse(&answers),
        &questions,
        &labels,
        pope::Pairing::Position,
    )
    .unwrap();
    for (c, s) in &llava_layout.categories {
        for key in ["accuracy", "precision", "recall", "f1", "yes_ratio"] {
            assert_eq!(
                tsv[c][key].as_f64().unwrap(),
                serde_json::json!(s)[key].as_f64().unwrap(),
                "POPE {c} {key}"
            );
        }
    }
    let reference = read_json(&d.join("vlmevalkit.json"));
    for (ours, theirs) in [("vlmevalkit_f1", "f1"), ("vlmevalkit_accuracy", "acc")] {
        let a = tsv[ours].as_f64().unwrap();
        assert!(tsv["intervals"][ours].is_array(), "{ours}");
        let b = reference["metrics"][theirs].as_f64().unwrap();
        assert!(
            (a - b).abs() < 1e-9,
            "POPE {ours}: ours {a}, VLMEvalKit {b}"
        );
    }

    // GQA: the TSV against the official questions file built from the same rows.
    let gqa_tsv = out.path().join("GQA_TestDev_Balanced.tsv");
    let mut official = serde_json::Map::new();
    let mut tsv_text = String::from("index\tquestion\tanswer\timage\n");
    let mut gqa_answers = String::new();
    let golds = ["yes", "no", "table", "left", "red"];
    let said = ["Yes.", "no", "table ", "Left", "blue"];
    for i in 0..10 {
        let gold = golds[i % 5];
        tsv_text.push_str(&format!("{}\tq{i}?\t{gold}\t\n", 100 + i));
        official.insert(
            (100 + i).to_string(),
            serde_json::json!({"answer": gold, "isBalanced": true}),
        );
        gqa_answers.push_str(&format!(
            "{}\n",
            serde_json::json!({"question_id": (100 + i).to_string(), "text": said[(i * 3) % 5]})
        ));
    }
    std::fs::write(&gqa_tsv, tsv_text).unwrap();
    let gqa_answers_path = out.path().join("gqa.jsonl");
    std::fs::write(&gqa_answers_path, &gqa_answers).unwrap();
    let from_tsv: Value = serde_json::from_str(&run_ok(llava().args([
        "score",
        "--bench",
        "gqa",
        "--json",
        "--data",
        gqa_tsv.to_str().unwrap(),
        "--answers",
        gqa_answers_path.to_str().unwrap(),
    ])))
    .unwrap();
    let official =
        llava::eval::score::gqa::score(Answers::parse(&gqa_answers), &Value::Object(official));
    assert_eq!(from_tsv["accuracy"].as_f64().unwrap(), official.accuracy);
    assert_eq!(from_tsv["count"], 10);

    // MME: the TSV against MME's result files built from the same rows.
    let d = dir("mme");
    let tsv = scored("mme", &d);
    let rows = records::read(&d.join("data.tsv")).unwrap().rows;
    let texts = answer_texts(&d.join("answers.jsonl"));
    let results = out.path().join("mme_results");
    std::fs::create_dir_all(&results).unwrap();
    let mut files: std::collections::BTreeMap<String, String> = Default::default();
    for (r, text) in rows.iter().zip(&texts) {
        let line = format!(
            "{}\t{}\t{}\t{}\n",
            r["image_path"].as_str().unwrap(),
            r["question"].as_str().unwrap(),
            r["answer"].as_str().unwrap(),
            text
        );
        files
            .entry(r["category"].as_str().unwrap().to_string())
            .or_default()
            .push_str(&line);
    }
    for (s, text) in &files {
        std::fs::write(results.join(format!("{s}.txt")), text).unwrap();
    }
    let from_results = mme::score(&results).unwrap();
    assert_eq!(tsv["perception"].as_f64().unwrap(), from_results.perception);
    assert_eq!(tsv["cognition"].as_f64().unwrap(), from_results.cognition);
    let reference = read_json(&d.join("vlmevalkit.json"));
    assert_eq!(
        tsv["vlmevalkit_perception"].as_f64().unwrap(),
        reference["metrics"]["perception"].as_f64().unwrap()
    );
    assert_eq!(
        tsv["vlmevalkit_cognition"].as_f64().unwrap(),
        reference["metrics"]["reasoning"].as_f64().unwrap()
    );
}
