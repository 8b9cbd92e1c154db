//! lmms-eval (0.7.3 from PyPI) against `llava serve`, both ways:
//! - lmms-eval's `openai` model, pointed at our server, answers a local copy of MMStar (the task
//!   written by `scripts/lmms_eval_local_task.py`, asked and scored by lmms-eval's own task code)
//!   with the answers and the score `llava eval` gets from the same file;
//! - the lmms-eval files `llava eval` writes (`<date>_results.json`, `<date>_samples_mmstar.jsonl`)
//!   are read by lmms-eval's own `--baseline` loader, which finds our per-question scores and our
//!   aggregate.
//!
//! SKIPPED only when lmms-eval cannot be installed (no network).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{python_with, root};
use llava::benchmarks::{EvalArgs, run};
use llava::eval::runner::Bench;
use serde_json::Value;

/// Ten MMStar rows as lmms-eval's JSON lines, each with its own PNG.
fn local_mmstar(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let rows: Vec<Value> = serde_json::from_str(
        &std::fs::read_to_string(root().join("fixtures/harness/mmstar/data.json")).unwrap(),
    )
    .unwrap();
    let mut jsonl = String::new();
    for (i, mut r) in rows.into_iter().take(10).enumerate() {
        r.as_object_mut().unwrap().remove("meta_info");
        let name = format!("img{i}.png");
        let shade = (i * 25) as u8;
        image::RgbImage::from_fn(40, 30, |x, y| {
            image::Rgb([shade, (x * 6) as u8, (y * 8) as u8 ^ shade])
        })
        .save(dir.join(&name))
        .unwrap();
        r["image_path"] = name.into();
        jsonl.push_str(&format!("{r}\n"));
    }
    let path = dir.join("mmstar.jsonl");
    std::fs::write(&path, jsonl).unwrap();
    path
}

fn read_jsonl(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The one file in `dir` (recursively) whose name ends with `suffix`.
fn find(dir: &Path, suffix: &str) -> PathBuf {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.to_string_lossy().ends_with(suffix) {
                found.push(p);
            }
        }
    }
    assert_eq!(found.len(), 1, "{suffix} in {}: {found:?}", dir.display());
    found.remove(0)
}

#[test]
fn lmms_eval_scores_llava_serve_as_llava_eval_does_and_reads_our_files() {
    let python = match python_with(
        "import lmms_eval.evaluator, lmms_eval.models.chat.openai, filelock._api",
        &["lmms-eval==0.7.3", "torch==2.11.0", "filelock<4"],
    ) {
        Ok(p) => p,
        Err(why) => {
            eprintln!("SKIPPED: lmms-eval unavailable: {why}");
            return;
        }
    };
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let rows = local_mmstar(&data);
    let model = root().join("fixtures/hf-parity/llava-clip/model");
    let max_new_tokens = 6;

    // lmms-eval asks our server.
    let tasks = tmp.path().join("tasks");
    let made = Command::new(&python)
        .arg(root().join("scripts/lmms_eval_local_task.py"))
        .args(["--bench", "mmstar", "--max-new-tokens"])
        .arg(max_new_tokens.to_string())
        .arg("--data")
        .arg(&rows)
        .arg("--out")
        .arg(&tasks)
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let server = serve::spawn(serve::ServerConfig {
        model: model.clone(),
        host: "127.0.0.1".into(),
        port: 0,
        device: "cpu".into(),
        dtype: Some("f32".into()),
        max_batch: 1,
        ..serve::ServerConfig::default()
    })
    .unwrap();
    let theirs_dir = tmp.path().join("lmms-out");
    let out = Command::new(&python)
        .args(["-m", "lmms_eval", "--model", "openai", "--model_args"])
        .arg(format!(
            "model_version=llava,base_url={}/v1,api_key=none",
            server.url()
        ))
        .args([
            "--tasks",
            "llava_local_mmstar",
            "--batch_size",
            "1",
            "--log_samples",
        ])
        .arg("--include_path")
        .arg(&tasks)
        .arg("--output_path")
        .arg(&theirs_dir)
        .env("HF_DATASETS_OFFLINE", "1")
        .env("HF_HUB_OFFLINE", "1")
        .env("WANDB_MODE", "disabled")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "lmms-eval failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let their_results: Value =
        serde_json::from_str(&std::fs::read_to_string(find(&theirs_dir, "_results.json")).unwrap())
            .unwrap();
    let their_samples = read_jsonl(&find(&theirs_dir, "_samples_llava_local_mmstar.jsonl"));

    // `llava eval` answers the same file itself.
    let ours_dir = tmp.path().join("ours");
    let result = run(
        &EvalArgs {
            model,
            benches: vec![Bench::Mmstar],
            data: data.clone(),
            output: ours_dir.clone(),
            batch: 1,
            max_new_tokens: Some(max_new_tokens),
            limit: None,
            device: "cpu".into(),
            quantize: None,
        },
        |_| {},
    )
    .unwrap();
    let our_answers = read_jsonl(&ours_dir.join("mmstar.jsonl"));
    assert_eq!(our_answers.len(), 10);
    assert_eq!(their_samples.len(), 10);
    for s in &their_samples {
        let doc = s["doc_id"].as_u64().unwrap() as usize;
        let ours = &our_answers[doc];
        assert_eq!(ours["question_id"], doc, "answers in file order");
        assert_eq!(
            s["filtered_resps"].as_str().unwrap(),
            ours["text"].as_str().unwrap(),
            "doc {doc}: lmms-eval through llava serve vs llava eval"
        );
        assert_eq!(s["input"], ours["prompt"], "doc {doc}: the same prompt");
    }
    let their_average = their_results["results"]["llava_local_mmstar"]["average,none"]
        .as_f64()
        .unwrap();
    let our_average = result["scores"]["mmstar"]["metrics"]["average"]["value"]
        .as_f64()
        .unwrap();
    assert!(
        (their_average - our_average).abs() < 1e-12,
        "lmms-eval {their_average}, llava eval {our_average}"
    );

    // lmms-eval's own loader reads the files `llava eval` wrote in its format.
    let our_samples = find(&ours_dir.join("lmms-eval"), "_samples_mmstar.jsonl");
    let our_results: Value = serde_json::from_str(
        &std::fs::read_to_string(find(&ours_dir.join("lmms-eval"), "_results.json")).unwrap(),
    )
    .unwrap();
    for key in [
        "results",
        "configs",
        "versions",
        "n-shot",
        "higher_is_better",
        "n-samples",
        "config",
        "date",
    ] {
        assert!(their_results.get(key).is_some(), "lmms-eval writes {key}");
        assert!(our_results.get(key).is_some(), "we write {key}");
    }
    let first = &read_jsonl(&our_samples)[0];
    for key in [
        "doc_id",
        "target",
        "filtered_resps",
        "doc_hash",
        "input",
        "input_media",
    ] {
        assert!(
            their_samples[0].get(key).is_some(),
            "lmms-eval writes {key}"
        );
        assert!(first.get(key).is_some(), "we write {key}");
    }
    let loaded = Command::new(&python)
        .arg("-c")
        .arg(
            "import json, sys\n\
             from lmms_eval.baselines.loader import load_baseline\n\
             scores, agg = load_baseline(sys.argv[1], 'mmstar')\n\
             print(json.dumps({'scores': {str(k): v for k, v in scores.items()}, 'average': agg['results']['mmstar']['average,none']}))",
        )
        .arg(&our_samples)
        .output()
        .unwrap();
    assert!(
        loaded.status.success(),
        "{}",
        String::from_utf8_lossy(&loaded.stderr)
    );
    let loaded: Value = serde_json::from_slice(&loaded.stdout).unwrap();
    assert!((loaded["average"].as_f64().unwrap() - our_average).abs() < 1e-12);
    let scores = loaded["scores"].as_object().unwrap();
    assert_eq!(scores.len(), 10);
    for s in &their_samples {
        let doc = s["doc_id"].to_string();
        assert_eq!(
            scores[&doc].as_f64().unwrap(),
            s["average"]["score"].as_f64().unwrap(),
            "doc {doc}: our score as lmms-eval's loader reads it vs lmms-eval's own"
        );
    }
}
