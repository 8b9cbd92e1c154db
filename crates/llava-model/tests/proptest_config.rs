//! Random and mutated `config.json` files: reading them gives an error or a configuration, never a
//! panic.

use llava_model::LlavaConfig;
use proptest::prelude::*;

fn fixture(name: &str) -> String {
    std::fs::read_to_string(
        foundation::parity_fixtures()
            .join(name)
            .join("model/config.json"),
    )
    .unwrap()
}

fn exercise(text: &[u8]) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.json");
    std::fs::write(&path, text).unwrap();
    if let Err(e) = LlavaConfig::from_file(&path) {
        assert!(e.to_string().contains("config.json"), "{e}");
    }
    if let Ok(text) = std::str::from_utf8(text) {
        let _ = gemma_lm::GemmaConfig::from_json(text);
    }
}

/// Every number in the JSON replaced by `value` where `pick` selects it.
fn renumber(text: &str, pick: &[bool], value: i64) -> String {
    let mut out = String::new();
    let mut n = 0;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() {
            let mut digits = c.to_string();
            while let Some(d) = chars
                .peek()
                .copied()
                .filter(|d| d.is_ascii_digit() || *d == '.')
            {
                digits.push(d);
                chars.next();
            }
            if pick.get(n % pick.len().max(1)).copied().unwrap_or(false) {
                out.push_str(&value.to_string());
            } else {
                out.push_str(&digits);
            }
            n += 1;
        } else {
            out.push(c);
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn mutated_configs_never_panic(
        which in prop::sample::select(vec!["llava-clip", "llava-dinov2", "gemma", "gemma2", "gemma3-text"]),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
        cut in prop::option::of(any::<prop::sample::Index>()),
    ) {
        let mut bytes = fixture(which).into_bytes();
        for (at, value) in edits {
            let i = at.index(bytes.len());
            bytes[i] = value;
        }
        if let Some(cut) = cut {
            bytes.truncate(cut.index(bytes.len()));
        }
        exercise(&bytes);
    }

    #[test]
    fn absurd_numbers_never_panic(
        which in prop::sample::select(vec!["llava-clip", "llava-dinov2", "gemma", "gemma2", "gemma3-text"]),
        pick in prop::collection::vec(any::<bool>(), 1..7),
        value in prop::sample::select(vec![0i64, -1, -2, 1, 3, 1 << 31, 1 << 40, i64::MAX]),
    ) {
        exercise(renumber(&fixture(which), &pick, value).as_bytes());
    }
}
