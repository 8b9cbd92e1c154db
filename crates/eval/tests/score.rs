//! Scoring benchmarks from their files (what `llava score` runs) on small files in the
//! benchmarks' own formats.

use std::fs;

use eval::scoring::{ScoreFiles, score};

#[test]
fn pope_pairs_answers_with_labels_by_position_within_a_category() {
    let dir = tempfile::tempdir().unwrap();
    let labels = dir.path().join("labels");
    fs::create_dir(&labels).unwrap();
    // LLaVA's question file offsets the popular ids by 20,000,000; the label file restarts at 1.
    fs::write(
        dir.path().join("questions.jsonl"),
        "{\"question_id\": 1, \"category\": \"adversarial\"}\n\
         {\"question_id\": 2, \"category\": \"adversarial\"}\n\
         {\"question_id\": 20000001, \"category\": \"popular\"}\n",
    )
    .unwrap();
    fs::write(
        labels.join("coco_pope_adversarial.json"),
        "{\"question_id\": 1, \"label\": \"yes\"}\n{\"question_id\": 2, \"label\": \"no\"}\n",
    )
    .unwrap();
    fs::write(
        labels.join("coco_pope_popular.json"),
        "{\"question_id\": 1, \"label\": \"no\"}\n",
    )
    .unwrap();
    fs::write(
        dir.path().join("answers.jsonl"),
        "{\"question_id\": 1, \"text\": \"Yes, there is.\"}\n\
         {\"question_id\": 2, \"text\": \"No\"}\n\
         not json\n\
         {\"question_id\": 20000001, \"text\": \"There is no cat.\"}\n\
         {\"question_id\": 77, \"text\": \"yes\"}\n",
    )
    .unwrap();
    let v = score(&ScoreFiles {
        bench: "pope".into(),
        answers: Some(dir.path().join("answers.jsonl")),
        questions: Some(dir.path().join("questions.jsonl")),
        annotations: Some(labels),
        ..ScoreFiles::default()
    })
    .unwrap();
    assert_eq!(v["adversarial"]["accuracy"], 1.0);
    assert_eq!(v["popular"]["accuracy"], 1.0);
    assert_eq!(v["popular"]["yes_ratio"], 0.0);
    assert_eq!(v["issues"]["malformed_lines"], 1);
    assert_eq!(v["issues"]["unknown_ids"], 1);
}

#[test]
fn mme_reads_a_folder_of_result_files() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(
        dir.path().join("existence.txt"),
        "a.jpg\tIs there a dog?\tYes\tYes\na.jpg\tIs there a cat?\tNo\tNo\n",
    )
    .unwrap();
    fs::write(
        dir.path().join("code_reasoning.txt"),
        "b.png\tQ1\tYes\tyes\nb.png\tQ2\tNo\tyes\n",
    )
    .unwrap();
    let v = score(&ScoreFiles {
        bench: "mme".into(),
        answers: Some(dir.path().to_path_buf()),
        ..ScoreFiles::default()
    })
    .unwrap();
    assert_eq!(v["perception"], 200.0);
    assert_eq!(v["cognition"], 50.0);
    assert_eq!(v["missing_subtasks"].as_array().unwrap().len(), 12);
}

#[test]
fn missing_inputs_name_the_flag() {
    let err = score(&ScoreFiles {
        bench: "gqa".into(),
        answers: Some("nowhere.jsonl".into()),
        ..ScoreFiles::default()
    })
    .unwrap_err()
    .to_string();
    assert!(err.contains("--annotations"), "{err}");
    let err = score(&ScoreFiles {
        bench: "nope".into(),
        ..ScoreFiles::default()
    })
    .unwrap_err()
    .to_string();
    assert!(err.contains("gqa"), "{err}");
}
