//! Random and mutated safetensors files: opening and reading them gives an error or tensors, never
//! a panic or an allocation the file does not justify.

use foundation::{Checkpoint, io::save_safetensors};
use proptest::prelude::*;
use tch::{Kind, Tensor};

/// A small valid file's bytes.
fn valid() -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    let tensors = vec![
        (
            "a.weight".to_string(),
            Tensor::arange(12, (Kind::Float, tch::Device::Cpu)).reshape([3, 4]),
        ),
        (
            "b".to_string(),
            Tensor::ones([5], (Kind::BFloat16, tch::Device::Cpu)),
        ),
    ];
    save_safetensors(&path, &tensors, None).unwrap();
    std::fs::read(&path).unwrap()
}

/// Opens `bytes` as a checkpoint and reads every tensor it lists.
fn exercise(bytes: &[u8]) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    std::fs::write(&path, bytes).unwrap();
    match Checkpoint::open(&path) {
        Ok(checkpoint) => {
            let names: Vec<String> = checkpoint.names().map(str::to_string).collect();
            for name in names {
                if let Ok(t) = checkpoint.tensor(&name) {
                    // Whatever was read lies inside the file.
                    let size = t.numel() * t.kind().elt_size_in_bytes();
                    assert!(
                        size <= bytes.len(),
                        "{name}: {size} bytes from a {}-byte file",
                        bytes.len()
                    );
                }
            }
        }
        Err(e) => assert!(e.to_string().contains("model.safetensors"), "{e}"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn mutated_files_never_panic(
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in prop::option::of(any::<prop::sample::Index>()),
    ) {
        let mut bytes = valid();
        for (at, value) in flips {
            let i = at.index(bytes.len());
            bytes[i] = value;
        }
        if let Some(cut) = cut {
            bytes.truncate(cut.index(bytes.len()));
        }
        exercise(&bytes);
    }

    #[test]
    fn random_headers_never_panic(header in "\\{.{0,200}\\}", len_delta in -4i64..4) {
        let mut bytes = Vec::new();
        let len = (header.len() as i64 + len_delta).max(0) as u64;
        bytes.extend_from_slice(&len.to_le_bytes());
        bytes.extend_from_slice(header.as_bytes());
        bytes.extend_from_slice(&[0u8; 64]);
        exercise(&bytes);
    }

    #[test]
    fn lying_shapes_and_offsets_never_panic(
        d0 in 0u64..1u64 << 40, d1 in 0u64..1u64 << 40,
        start in 0u64..1u64 << 40, end in 0u64..1u64 << 40,
        dtype in prop::sample::select(vec!["F32", "BF16", "I64", "BOOL", "F8_E4M3", "U64", "XYZ"]),
    ) {
        let header = format!(
            r#"{{"t":{{"dtype":"{dtype}","shape":[{d0},{d1}],"data_offsets":[{start},{end}]}}}}"#
        );
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header.as_bytes());
        bytes.extend_from_slice(&[0u8; 256]);
        exercise(&bytes);
    }
}
