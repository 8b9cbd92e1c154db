//! Property tests of the readers and scorers of the seven benchmarks' files: random and mutated
//! answer, question, label and grade files give a result or an `Err`, never a panic, and the
//! numbers stay in range. Huge ids and counts are among the inputs, so a scorer that iterates or
//! allocates by an id (rather than by the lines it has) shows up as a hang here.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use eval::grade::mmvp_rows;
use eval::runner::{Bench, csv_fields, read_questions};
use eval::score::{self, Answers, read_answers, read_json, read_jsonl};
use proptest::prelude::*;
use proptest::test_runner::Config;
use serde_json::{Value, json};

/// Modest case counts (the suite runs in seconds) and no regression files in the source tree.
fn config() -> Config {
    Config {
        cases: 48,
        failure_persistence: None,
        ..Config::default()
    }
}

/// A fresh scratch directory for one case, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "llava-eval-proptest-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn file(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Words the parsers look for, and text that breaks lines, fields and quotes.
fn word() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "yes",
            "no",
            "No",
            "not",
            "Yes.",
            "A",
            "B. blue",
            "The answer is C.",
            "imange",
            "Is there a dog in the image?",
            "Answer the question using a single word or phrase.",
            "<image>",
            "random",
            "popular",
            "adversarial",
            "a.jpg",
            "",
            " ",
            "\n",
            "\t",
            ",",
            ".",
            "\"",
            "\\",
            "'s",
            "é",
            "🙂",
        ])
        .prop_map(str::to_string),
        "\\PC{0,12}",
    ]
}

/// A short text of such words.
fn text() -> impl Strategy<Value = String> {
    prop::collection::vec(word(), 0..4).prop_map(|w| w.join(" "))
}

/// Question ids of every JSON kind, huge and negative ones among them.
fn id() -> impl Strategy<Value = Value> {
    prop_oneof![
        4 => (0u64..400).prop_map(Value::from),
        1 => prop::sample::select(vec![
            json!(u64::MAX),
            json!(i64::MIN),
            json!(-1),
            json!(0),
            json!(2.5),
            json!(1e300),
            json!(null),
            json!(true),
            json!([1]),
            json!({"id": 1}),
            json!("v1_3"),
            json!(" 7 "),
            json!("18446744073709551615"),
        ]),
        1 => word().prop_map(Value::from),
    ]
}

/// Any JSON value, small.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        word().prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map(word(), inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A JSON object with some of `keys` (each with a plausible or a random value).
fn object(keys: &'static [&'static str]) -> impl Strategy<Value = Value> {
    let field = |k: &'static str| {
        prop::option::weighted(
            0.85,
            prop_oneof![
                3 => match k {
                    "question_id" | "id" | "questionId" => id().boxed(),
                    "correct" | "isBalanced" => any::<bool>().prop_map(Value::from).boxed(),
                    "score" => (-1.0f64..2.0).prop_map(Value::from).boxed(),
                    "answer" => prop_oneof![(0u64..6).prop_map(Value::from), text().prop_map(Value::from)].boxed(),
                    "choices" | "capability" => prop::collection::vec(word(), 0..6)
                        .prop_map(|v| json!(v))
                        .boxed(),
                    "answers" => prop::collection::vec(text(), 0..11)
                        .prop_map(|v| json!(v.iter().map(|a| json!({"answer": a})).collect::<Vec<_>>()))
                        .boxed(),
                    "conversations" => text().prop_map(|t| json!([{"from": "human", "value": t}])).boxed(),
                    _ => text().prop_map(Value::from).boxed(),
                },
                1 => any_json(),
            ],
        )
    };
    keys.iter()
        .map(|&k| field(k).prop_map(move |v| (k, v)))
        .collect::<Vec<_>>()
        .prop_map(|fields| {
            Value::Object(
                fields
                    .into_iter()
                    .filter_map(|(k, v)| Some((k.to_string(), v?)))
                    .collect(),
            )
        })
}

/// One edit of a text: cut it, drop or repeat a span, insert a character.
#[derive(Debug, Clone)]
enum Mutation {
    Truncate(usize),
    Delete(usize, usize),
    Repeat(usize, usize),
    Insert(usize, char),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), 0usize..8).prop_map(|(i, n)| Mutation::Delete(i, n)),
        (any::<usize>(), 0usize..40).prop_map(|(i, n)| Mutation::Repeat(i, n)),
        (
            any::<usize>(),
            prop_oneof![
                prop::sample::select(vec![
                    '"', '{', '}', '[', ']', ',', ':', '\n', '\t', '\\', '.', '0'
                ]),
                any::<char>(),
            ]
        )
            .prop_map(|(i, c)| Mutation::Insert(i, c)),
    ]
}

fn mutate(text: &str, mutations: &[Mutation]) -> String {
    let mut chars: Vec<char> = text.chars().collect();
    for m in mutations {
        let at = |i: usize, len: usize| if len == 0 { 0 } else { i % (len + 1) };
        match *m {
            Mutation::Truncate(i) => chars.truncate(at(i, chars.len())),
            Mutation::Delete(i, n) => {
                let start = at(i, chars.len());
                let end = (start + n).min(chars.len());
                chars.drain(start..end);
            }
            Mutation::Repeat(i, n) => {
                let start = at(i, chars.len());
                let end = (start + n).min(chars.len());
                let span: Vec<char> = chars[start..end].to_vec();
                chars.splice(end..end, span);
            }
            Mutation::Insert(i, c) => {
                let at = at(i, chars.len());
                chars.insert(at, c);
            }
        }
    }
    chars.into_iter().collect()
}

/// JSON lines of objects with `keys`, then mutated, sometimes with whole random lines.
fn jsonl(keys: &'static [&'static str]) -> impl Strategy<Value = String> {
    (
        prop::collection::vec(
            prop_oneof![
                6 => object(keys).prop_map(|v| v.to_string()),
                1 => any_json().prop_map(|v| v.to_string()),
                1 => text(),
            ],
            0..12,
        ),
        prop::collection::vec(mutation(), 0..3),
    )
        .prop_map(|(lines, m)| mutate(&lines.join("\n"), &m))
}

/// Raw bytes for a file: mostly the text, sometimes with invalid UTF-8.
fn bytes_of(text: String, invalid: bool) -> Vec<u8> {
    let mut bytes = text.into_bytes();
    if invalid {
        bytes.extend_from_slice(&[0xff, 0xfe, b'\n']);
    }
    bytes
}

fn in_unit(x: f64) -> bool {
    (0.0..=1.0).contains(&x)
}

const ANSWER_KEYS: &[&str] = &["question_id", "text", "prompt", "answer_id", "model_id"];
const QUESTION_KEYS: &[&str] = &["question_id", "image", "text", "category"];
const LABEL_KEYS: &[&str] = &["question_id", "image", "text", "label"];

proptest! {
    #![proptest_config(config())]

    /// Answer files (every benchmark but MME's result files): each non-blank line is an answer or
    /// a malformed line, and ids keep to the lines they have.
    #[test]
    fn answer_lines_parse_or_count_as_malformed(text in jsonl(ANSWER_KEYS), invalid in any::<bool>()) {
        let mut answers = Answers::parse(&text);
        let lines = text.lines().filter(|l| !l.trim().is_empty()).count();
        prop_assert_eq!(answers.lines.len() + answers.issues.malformed_lines, lines);
        let by_id = answers.by_id();
        prop_assert_eq!(by_id.len() + answers.issues.duplicate_ids, answers.lines.len());
        let dir = Scratch::new();
        let path = dir.file("answers.jsonl", &bytes_of(text, invalid));
        match read_answers(&path) {
            Ok(a) => {
                prop_assert!(!invalid);
                prop_assert_eq!(a.lines, answers.lines);
            }
            Err(e) => {
                prop_assert!(invalid);
                prop_assert!(e.to_string().contains("answers.jsonl"), "{e}");
            }
        }
        // A folder of chunks reads them all.
        let _ = read_answers(dir.path());
    }

    /// LLaVA's JSON-lines question files (GQA, MME, POPE, VQAv2, MM-Vet), ScienceQA's JSON list
    /// and MMVP's CSV: a question per line or an error naming the file.
    #[test]
    fn question_files_read_or_fail_with_the_file_name(
        lines in jsonl(QUESTION_KEYS),
        sqa in prop::collection::vec(object(&["id", "image", "conversations"]), 0..6),
        sqa_mutations in prop::collection::vec(mutation(), 0..2),
        csv in prop::collection::vec(prop::collection::vec(text(), 0..6), 0..8),
        csv_mutations in prop::collection::vec(mutation(), 0..3),
        invalid in any::<bool>(),
    ) {
        let dir = Scratch::new();
        let path = dir.file("questions.jsonl", &bytes_of(lines.clone(), invalid));
        for bench in [Bench::Gqa, Bench::Mme, Bench::Pope, Bench::Vqav2, Bench::Mmvet] {
            match read_questions(bench, &path) {
                Ok(q) => prop_assert_eq!(q.len(), lines.lines().filter(|l| !l.trim().is_empty()).count()),
                Err(e) => prop_assert!(e.to_string().contains("questions.jsonl"), "{e}"),
            }
        }
        let sqa_text = mutate(&Value::from(sqa).to_string(), &sqa_mutations);
        let path = dir.file("llava_test_CQM-A.json", &bytes_of(sqa_text, invalid));
        if let Err(e) = read_questions(Bench::Sqa, &path) {
            prop_assert!(e.to_string().contains("llava_test_CQM-A.json"), "{e}");
        }
        let csv_text = mutate(
            &std::iter::once("Index,Question,Options,Correct Answer".to_string())
                .chain(csv.iter().map(|row| {
                    row.iter()
                        .map(|f| format!("\"{}\"", f.replace('"', "\"\"")))
                        .collect::<Vec<_>>()
                        .join(",")
                }))
                .collect::<Vec<_>>()
                .join("\n"),
            &csv_mutations,
        );
        for line in csv_text.lines() {
            let fields = csv_fields(line);
            prop_assert!(!fields.is_empty() && fields.len() <= line.matches(',').count() + 1);
        }
        let path = dir.file("Questions.csv", &bytes_of(csv_text, invalid));
        match read_questions(Bench::Mmvp, &path) {
            Ok(q) => {
                let rows = mmvp_rows(&path).unwrap();
                prop_assert_eq!(rows.len(), q.len());
            }
            Err(e) => prop_assert!(e.to_string().contains("Questions.csv"), "{e}"),
        }
        // The generic readers.
        let _ = read_jsonl(&dir.path().join("questions.jsonl"));
        let _ = read_json(&dir.path().join("llava_test_CQM-A.json"));
        prop_assert!(read_json(&dir.path().join("absent.json")).is_err());
    }

    /// GQA: any answers against any questions JSON.
    #[test]
    fn gqa_scores_in_range(
        answers in jsonl(ANSWER_KEYS),
        questions in prop::collection::btree_map(
            prop_oneof![(0u64..400).prop_map(|n| n.to_string()), word()],
            prop_oneof![4 => object(&["answer", "isBalanced"]), 1 => any_json()],
            0..12,
        ),
        other in any_json(),
    ) {
        let questions = Value::Object(questions.into_iter().collect());
        let s = score::gqa::score(Answers::parse(&answers), &questions);
        prop_assert!(in_unit(s.accuracy));
        let s = score::gqa::score(Answers::parse(&answers), &other);
        prop_assert!(in_unit(s.accuracy));
    }

    /// MME: result files (tab-separated lines) and LLaVA answers converted to them.
    #[test]
    fn mme_scores_in_range(
        rows in prop::collection::vec(prop::collection::vec(text(), 0..6), 0..10),
        mutations in prop::collection::vec(mutation(), 0..3),
        answers in jsonl(ANSWER_KEYS),
        gt in prop::collection::vec((text(), text()), 0..6),
    ) {
        let text = mutate(
            &rows.iter().map(|r| r.join("\t")).collect::<Vec<_>>().join("\n"),
            &mutations,
        );
        let (s, bad) = score::mme::score_subtask(&text);
        prop_assert!((0.0..=200.0).contains(&s), "{s}");
        prop_assert!(bad <= text.lines().count());
        let dir = Scratch::new();
        dir.file("existence.txt", text.as_bytes());
        dir.file("OCR.txt", b"\xff\xfe");
        // A file that is not UTF-8 is an error naming it.
        let err = score::mme::score(dir.path()).unwrap_err().to_string();
        prop_assert!(err.contains("OCR.txt"), "{err}");
        std::fs::remove_file(dir.path().join("OCR.txt")).unwrap();
        let s = score::mme::score(dir.path()).unwrap();
        prop_assert!((0.0..=2000.0).contains(&s.perception) && (0.0..=800.0).contains(&s.cognition));
        // Ground truth and conversion.
        let gt_dir = dir.path().join("MME/existence");
        std::fs::create_dir_all(&gt_dir).unwrap();
        let gt_text: String = gt.iter().map(|(q, a)| format!("{q}\t{a}\n")).collect();
        std::fs::write(gt_dir.join("0001.txt"), gt_text).unwrap();
        let truth = score::mme::ground_truth(&dir.path().join("MME")).unwrap();
        let issues = score::mme::convert(&Answers::parse(&answers), &truth, &dir.path().join("results")).unwrap();
        prop_assert!(issues.unknown_ids <= answers.lines().count());
        prop_assert!(score::mme::score(&dir.path().join("results")).is_ok());
    }

    /// POPE: any answers, question values and label file, both pairings.
    #[test]
    fn pope_scores_in_range(
        answers in jsonl(ANSWER_KEYS),
        questions in prop::collection::vec(object(QUESTION_KEYS), 0..12),
        labels in jsonl(LABEL_KEYS),
        invalid in any::<bool>(),
    ) {
        let dir = Scratch::new();
        dir.file("coco_pope_random.json", &bytes_of(labels, invalid));
        dir.file("coco_pope_.json", b"{\"label\": \"no\"}\n");
        for pairing in [score::pope::Pairing::Position, score::pope::Pairing::ImageQuestion] {
            match score::pope::score(Answers::parse(&answers), &questions, dir.path(), pairing) {
                Ok(s) => {
                    for c in s.categories.values() {
                        for x in [c.accuracy, c.precision, c.recall, c.f1, c.yes_ratio] {
                            prop_assert!(in_unit(x), "{c:?}");
                        }
                    }
                    for m in s.issues.label_mismatches.values() {
                        prop_assert!(m.examples.len() <= score::pope::MISMATCH_EXAMPLES.min(m.count));
                    }
                }
                Err(e) => prop_assert!(e.to_string().contains("coco_pope_random.json"), "{e}"),
            }
        }
        let empty = Scratch::new();
        prop_assert!(score::pope::score(Answers::parse(&answers), &questions, empty.path(), score::pope::Pairing::Position).is_err());
    }

    /// VQAv2: annotations of any shape, any answers, the submission file.
    #[test]
    fn vqav2_scores_in_range(
        answers in jsonl(ANSWER_KEYS),
        annotations in prop::collection::vec(object(&["question_id", "answers"]), 0..10),
        other in any_json(),
        ids in prop::collection::vec(id(), 0..8),
        prediction in text(),
        humans in prop::collection::vec(text(), 0..11),
    ) {
        for value in [json!({"annotations": annotations}), other] {
            let ann = score::vqav2::annotations(&value);
            let keys: Vec<String> = ids.iter().filter_map(score::id_key).collect();
            for question_ids in [None, Some(keys.as_slice())] {
                let s = score::vqav2::score(Answers::parse(&answers), &ann, question_ids);
                prop_assert!((0.0..=100.0).contains(&s.accuracy), "{}", s.accuracy);
            }
            let sub = score::vqav2::submission(&Answers::parse(&answers), Some(ids.as_slice()));
            prop_assert!(sub.as_array().unwrap().len() <= answers.lines().count() + ids.len());
        }
        let processed = score::vqav2::evalai_process(&prediction);
        prop_assert!(in_unit(score::vqav2::question_accuracy(&processed, &humans)));
    }

    /// ScienceQA: any answers against any problems and split.
    #[test]
    fn sqa_scores_in_range(
        answers in jsonl(ANSWER_KEYS),
        problems in prop::collection::btree_map(
            prop_oneof![(0u64..400).prop_map(|n| n.to_string()), word()],
            prop_oneof![4 => object(&["choices", "answer"]), 1 => any_json()],
            0..10,
        ),
        split in prop::collection::vec(prop_oneof![(0u64..400).prop_map(|n| n.to_string()), word()], 0..10),
        letter in text(),
    ) {
        let problems = Value::Object(problems.into_iter().collect());
        let s = score::sqa::score(Answers::parse(&answers), &problems, &split);
        prop_assert!((0.0..=100.0).contains(&s.accuracy) && (0.0..=100.0).contains(&s.img_accuracy));
        if let Some(l) = score::sqa::parse_letter(&letter) {
            prop_assert_eq!(l.chars().count(), 1);
        }
    }

    /// MMVP: grade lines with any ids (huge ones too) and any question count.
    #[test]
    fn mmvp_scores_in_range(
        grades in jsonl(&["question_id", "correct", "content"]),
        questions in prop_oneof![Just(None), (0usize..400).prop_map(Some), Just(Some(usize::MAX))],
    ) {
        let dir = Scratch::new();
        let path = dir.file("grades.jsonl", grades.as_bytes());
        let (values, bad) = read_jsonl(&path).unwrap();
        prop_assert_eq!(values.len() + bad, grades.lines().filter(|l| !l.trim().is_empty()).count());
        let s = score::mmvp::score(&values, questions);
        prop_assert!(in_unit(s.pair_accuracy));
        prop_assert!(2 * s.pairs + s.issues.incomplete_pairs.len() <= values.len());
    }

    /// MM-Vet: grade lines with any scores against any annotations.
    #[test]
    fn mmvet_scores_in_range(
        grades in prop::collection::vec(prop_oneof![4 => object(&["question_id", "score"]), 1 => any_json()], 0..12),
        annotations in prop::collection::btree_map(
            prop_oneof![(0u64..20).prop_map(|n| format!("v1_{n}")), word()],
            prop_oneof![4 => object(&["capability"]), 1 => any_json()],
            0..10,
        ),
        other in any_json(),
    ) {
        for ann in [Value::Object(annotations.into_iter().collect()), other] {
            let s = score::mmvet::score(&grades, &ann);
            prop_assert!((0.0..=100.0).contains(&s.total), "{}", s.total);
            for v in s.capabilities.values() {
                prop_assert!((0.0..=100.0).contains(v));
            }
        }
    }
}
