//! `llava eval` ([`llava::benchmarks::run`]) end to end on the synthetic split with the tiny
//! model: answers land in LLaVA's answer format, a second run recomputes nothing, and a run cut
//! short resumes.

use llava::benchmarks::{EvalArgs, run};
use llava::eval::runner::Bench;

#[test]
fn answers_are_written_scored_and_resumed() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let model = llava::trainer::run::seeded_tiny(0).unwrap();
    let config = llava::data::synthetic::SyntheticConfig {
        image_size: model.config.image_side().unwrap() as u32,
        train_images: 0,
        eval_images: 6,
        questions_per_image: 2,
        ..Default::default()
    };
    llava::data::synthetic::write(&data, &config).unwrap();
    let model_dir = tmp.path().join("model");
    model
        .save_pretrained(&model_dir, Some(&llava::data::builtin_tokenizer()))
        .unwrap();
    let args = EvalArgs {
        model: model_dir,
        benches: vec![Bench::Synthetic],
        data: data.clone(),
        output: tmp.path().join("eval"),
        batch: 4,
        max_new_tokens: Some(3),
        limit: None,
        device: "cpu".into(),
        quantize: None,
    };
    let first = run(&args, |_| {}).unwrap();
    let s = &first["scores"]["synthetic"];
    assert_eq!(s["count"], 12);
    assert_eq!(s["run"]["answered"], 12);
    assert_eq!(s["issues"]["missing_answers"], 0);
    let answers = tmp.path().join("eval/synthetic.jsonl");
    let text = std::fs::read_to_string(&answers).unwrap();
    let line: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    for key in [
        "question_id",
        "prompt",
        "text",
        "answer_id",
        "model_id",
        "metadata",
    ] {
        assert!(line.get(key).is_some(), "{key}");
    }
    let second = run(&args, |_| {}).unwrap();
    assert_eq!(second["scores"]["synthetic"]["run"]["already_answered"], 12);
    assert_eq!(second["scores"]["synthetic"]["run"]["answered"], 0);
    assert_eq!(second["scores"]["synthetic"]["accuracy"], s["accuracy"]);

    // Kill mid-write: keep five whole lines and half of the sixth.
    let lines: Vec<&str> = text.lines().collect();
    let cut = format!("{}\n{}", lines[..5].join("\n"), &lines[5][..10]);
    std::fs::write(&answers, cut).unwrap();
    let third = run(&args, |_| {}).unwrap();
    assert_eq!(third["scores"]["synthetic"]["run"]["already_answered"], 5);
    assert_eq!(third["scores"]["synthetic"]["run"]["answered"], 7);
    assert_eq!(third["scores"]["synthetic"]["accuracy"], s["accuracy"]);
}

/// The six recent benchmarks from VLMEvalKit's TSV files (and TextVQA from lmms-eval's rows with
/// OCR tokens) answered by the tiny model: answers, scores with intervals, the recent row, and a
/// manifest per benchmark that names the model's files, the data, the prompt and the versions.
#[test]
fn recent_benchmarks_from_harness_files_with_manifests() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("LMUData");
    std::fs::create_dir_all(&data).unwrap();
    let harness = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/harness");
    for (bench, file) in [
        ("mmstar", "MMStar.tsv"),
        ("mmmu", "MMMU_DEV_VAL.tsv"),
        ("ocrbench", "OCRBench.tsv"),
        ("ai2d", "AI2D_TEST.tsv"),
        ("hallusionbench", "HallusionBench.tsv"),
        ("pope", "POPE.tsv"),
        ("mme", "MME.tsv"),
        // Its rows serve as GQA's too: index, image, question, answer.
        ("pope", "GQA_TestDev_Balanced.tsv"),
    ] {
        std::fs::copy(harness.join(bench).join("data.tsv"), data.join(file)).unwrap();
    }
    // TextVQA as lmms-eval's rows, each naming its image file.
    let rows: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(harness.join("textvqa/data.json")).unwrap())
            .unwrap();
    let mut jsonl = String::new();
    for mut r in rows {
        r["image_path"] = "sign.png".into();
        jsonl.push_str(&format!("{r}\n"));
    }
    std::fs::write(data.join("textvqa.jsonl"), jsonl).unwrap();
    image_png(&data.join("sign.png"));

    let model = llava::trainer::run::seeded_tiny(0).unwrap();
    let model_dir = tmp.path().join("model");
    model
        .save_pretrained(&model_dir, Some(&llava::data::builtin_tokenizer()))
        .unwrap();
    let args = EvalArgs {
        model: model_dir,
        benches: [&Bench::RECENT[..], &[Bench::Pope, Bench::Mme, Bench::Gqa]].concat(),
        data: data.clone(),
        output: tmp.path().join("eval"),
        batch: 4,
        max_new_tokens: Some(3),
        limit: Some(6),
        device: "cpu".into(),
        quantize: None,
    };
    let result = run(&args, |_| {}).unwrap();
    for bench in Bench::RECENT {
        let s = &result["scores"][bench.name()];
        assert_eq!(s["run"]["answered"], 6, "{bench:?}: {s}");
        assert_eq!(s["run"]["failed"], 0, "{bench:?}: {s}");
        let headline = s["headline"].as_str().unwrap();
        let m = &s["metrics"][headline];
        assert_eq!(m["units"], 6, "{bench:?}");
        let manifest: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(
                tmp.path()
                    .join(format!("eval/{}.manifest.json", bench.name())),
            )
            .unwrap(),
        )
        .unwrap();
        assert!(
            manifest["model_files"].as_array().unwrap().len() >= 2,
            "{manifest}"
        );
        assert_eq!(manifest["data"]["sha256"].as_str().unwrap().len(), 64);
        assert_eq!(manifest["answers"]["sha256"].as_str().unwrap().len(), 64);
        assert_eq!(manifest["summaries"][headline], *m);
        assert_eq!(manifest["settings"]["decoding"]["max_new_tokens"], 3);
        let example = manifest["settings"]["prompt"]["example"].as_str().unwrap();
        assert!(example.contains("<image>×"), "{example}");
        assert_eq!(
            manifest["versions"]["libtorch"].as_str().unwrap().get(..4),
            Some("2.11")
        );
    }
    let example = |b: &str| {
        let m: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(tmp.path().join(format!("eval/{b}.manifest.json"))).unwrap(),
        )
        .unwrap();
        m["settings"]["prompt"]["example"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert!(
        example("mmstar").contains("Options:\nA. red 0"),
        "{}",
        example("mmstar")
    );
    assert!(example("textvqa-ocr").contains("Reference OCR token: sign, 0"));
    assert!(!example("textvqa").contains("Reference OCR token"));
    // The recent row has a cell per benchmark, each with its interval.
    assert!(result["recent_row"]["MMStar"]["interval"].is_array());
    assert!(result["recent_row"]["TextVQA+OCR"]["value"].is_number());
    // POPE and MME from VLMEvalKit's TSV, scored by the paper's rules with VLMEvalKit's beside.
    let pope = &result["scores"]["pope"];
    assert_eq!(pope["run"]["answered"], 6, "{pope}");
    assert!(pope["adversarial"]["accuracy"].is_number(), "{pope}");
    assert!(pope["vlmevalkit_f1"].is_number(), "{pope}");
    assert!(example("pope").ends_with("Answer the question using a single word or phrase.<end_of_turn>\n<start_of_turn>model\n"), "{}", example("pope"));
    let gqa = &result["scores"]["gqa"];
    assert_eq!(gqa["count"], 6, "{gqa}");
    assert!(gqa["intervals"]["accuracy"].is_array(), "{gqa}");
    let mme = &result["scores"]["mme"];
    assert!(
        mme["perception"].is_number() && mme["vlmevalkit_perception"].is_number(),
        "{mme}"
    );
    // TSV images were written once beside the file, as VLMEvalKit does.
    assert!(data.join("images/MMStar").read_dir().unwrap().count() >= 1);
}

/// A small PNG.
fn image_png(path: &std::path::Path) {
    let img = image::RgbImage::from_fn(20, 12, |x, y| {
        image::Rgb([(x * 10) as u8, (y * 20) as u8, 90])
    });
    img.save(path).unwrap();
}
