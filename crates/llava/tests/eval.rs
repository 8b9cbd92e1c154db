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
