//! Random and mutated data files: reading, indexing and checking them gives an error or records,
//! never a panic or a runaway allocation.

use data::RecordFile;
use data::record::parse_records;
use proptest::prelude::*;

const VALID: &str = r#"[
  {"id": "000000033471", "image": "coco/train2017/000000033471.jpg",
   "conversations": [{"from": "human", "value": "<image>\nWhat are the colors of the bus?"},
                     {"from": "gpt", "value": "The bus is white and red."},
                     {"from": "human", "value": "What feature can be seen on the back?"},
                     {"from": "gpt", "value": "An advertisement."}]},
  {"id": 7, "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]}
]"#;

/// Reads `text` both ways (in memory and indexed from a file); they agree on what is usable.
fn exercise(text: &[u8]) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data.json");
    std::fs::write(&path, text).unwrap();
    let in_memory = data::read_records(&path);
    let indexed = RecordFile::open(&path);
    match (in_memory, indexed) {
        (Ok(records), Ok((file, bad))) => {
            assert_eq!(records.records.len(), file.len());
            assert_eq!(records.bad.len(), bad.len());
            assert_eq!(file.elements(), file.len() + bad.len());
            for (i, record) in records.records.iter().enumerate() {
                assert_eq!(&file.get(i).unwrap(), record);
            }
        }
        (Err(a), Err(b)) => {
            assert!(a.to_string().contains("data.json"), "{a}");
            assert!(b.to_string().contains("data.json"), "{b}");
        }
        (a, b) => panic!("the readers disagree: {a:?} / {:?}", b.map(|_| ())),
    }
    if let Ok(text) = std::str::from_utf8(text) {
        let _ = parse_records(text);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn mutated_files_never_panic(
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..6),
    ) {
        let mut bytes = VALID.as_bytes().to_vec();
        for (at, value, op) in edits {
            let i = at.index(bytes.len().max(1));
            match op {
                0 if !bytes.is_empty() => bytes[i] = value,
                1 => bytes.insert(i.min(bytes.len()), value),
                _ if !bytes.is_empty() => { bytes.truncate(i); }
                _ => {}
            }
        }
        exercise(&bytes);
    }

    #[test]
    fn structural_noise_never_panics(text in r#"[\[\]\{\}",:\\ a-z0-9]{0,120}"#) {
        exercise(text.as_bytes());
    }
}
