//! How a score was made, written beside it: the hashes of the model's files, the data file and
//! the answer file; the settings that shape answers (preprocessing, chat format and an example
//! prompt, decoding, prompt suffixes, the judge); the versions of everything; and each metric with
//! its 95 % interval and its units, so that two runs can be compared question by question
//! ([`compare`]).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::Error;
use crate::score::BenchScore;
use crate::stats::{self, Comparison, Metric, Summary};

/// A file and its SHA-256.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileHash {
    /// Where it was.
    pub path: PathBuf,
    /// Its size in bytes.
    pub bytes: u64,
    /// Its SHA-256, hex.
    pub sha256: String,
}

/// The versions of what made the score.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Versions {
    /// This crate's version.
    pub llava_gemma_rs: String,
    /// The commit it was built from.
    pub git_commit: String,
    /// libtorch's version.
    pub libtorch: String,
    /// The scoring rules' reference (lmms-eval for the recent benchmarks, LLaVA's scripts for the
    /// paper's).
    pub scoring_rules: String,
}

impl Versions {
    /// This build's versions, with the rules `bench` is scored by.
    pub fn current(bench: &str) -> Self {
        let recent = crate::scoring::data_scorer(bench).is_some();
        Versions {
            llava_gemma_rs: env!("CARGO_PKG_VERSION").into(),
            git_commit: option_env!("LLAVA_GIT_COMMIT").unwrap_or("unknown").into(),
            libtorch: option_env!("LLAVA_LIBTORCH_VERSION")
                .unwrap_or("unknown")
                .into(),
            scoring_rules: if recent {
                "lmms-eval 0.7.3 task code (tasks/<bench>/utils.py)".into()
            } else {
                "LLaVA-1.5's evaluation scripts and the benchmarks' official evaluators".into()
            },
        }
    }
}

/// One evaluation's manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// The benchmark.
    pub bench: String,
    /// When it was written (seconds since the Unix epoch).
    pub created_unix: u64,
    /// The model directory's files (top level), when a model answered.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub model_files: Vec<FileHash>,
    /// The benchmark's data or question file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<FileHash>,
    /// The answer file scored.
    pub answers: FileHash,
    /// What shaped the answers: `preprocessing`, `prompt` (chat format, suffixes, an example),
    /// `decoding`, `judge`, `quantize`, `device`, … as the caller knows them.
    pub settings: Value,
    /// The versions.
    pub versions: Versions,
    /// The score as printed.
    pub score: Value,
    /// Each metric with its interval.
    #[serde(default)]
    pub summaries: BTreeMap<String, Summary>,
    /// Each metric with its units, for [`compare`].
    #[serde(default)]
    pub metrics: Vec<Metric>,
}

impl Manifest {
    /// A manifest for `bench`'s `score` of `answers`. `metrics` are the score's metrics with their
    /// units (empty for MME and the synthetic split, which keep none yet).
    pub fn new(
        bench: &str,
        answers: &Path,
        score: Value,
        metrics: Vec<Metric>,
        settings: Value,
    ) -> Result<Self, Error> {
        Ok(Manifest {
            bench: bench.to_string(),
            created_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            model_files: Vec::new(),
            data: None,
            answers: hash_file(answers)?,
            settings,
            versions: Versions::current(bench),
            score,
            summaries: metrics
                .iter()
                .map(|m| (m.name.clone(), m.summary()))
                .collect(),
            metrics,
        })
    }

    /// [`Manifest::new`] from a recent benchmark's score.
    pub fn of_score(
        bench: &str,
        answers: &Path,
        score: &BenchScore,
        settings: Value,
    ) -> Result<Self, Error> {
        Self::new(
            bench,
            answers,
            score.to_json(),
            score.metrics.clone(),
            settings,
        )
    }

    /// Writes it atomically to `path`.
    pub fn write(&self, path: &Path) -> Result<(), Error> {
        let text = serde_json::to_string_pretty(self).expect("serialises");
        foundation::write_atomic(path, text.as_bytes()).map_err(|e| Error::File(e.to_string()))
    }

    /// Reads one.
    pub fn read(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::File(format!("{}: {e}", path.display())))?;
        serde_json::from_str(&text)
            .map_err(|e| Error::File(format!("{}: not an eval manifest: {e}", path.display())))
    }
}

/// The SHA-256 of a file, read in 1 MiB pieces.
pub fn hash_file(path: &Path) -> Result<FileHash, Error> {
    let io = |e: std::io::Error| Error::File(format!("{}: {e}", path.display()));
    let mut file = std::fs::File::open(path).map_err(io)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    let mut bytes = 0u64;
    loop {
        let n = file.read(&mut buffer).map_err(io)?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
        bytes += n as u64;
    }
    let sha256 = hex(&hasher.finalize());
    Ok(FileHash {
        path: path.to_path_buf(),
        bytes,
        sha256,
    })
}

/// The SHA-256 of `data`, hex.
pub fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

/// Bytes as lowercase hex.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The hashes of the files directly in `dir` (a model directory: weights, config, tokenizer,
/// processor; its subfolders, such as `eval/`, are not the model), in name order.
pub fn hash_dir(dir: &Path) -> Result<Vec<FileHash>, Error> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::File(format!("{}: {e}", dir.display())))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files.iter().map(|p| hash_file(p)).collect()
}

/// Two runs of one benchmark compared metric by metric (those both have, with units), each on the
/// units both runs share.
#[derive(Debug, Clone, Serialize)]
pub struct RunComparison {
    /// The benchmark.
    pub bench: String,
    /// Per metric.
    pub metrics: Vec<Comparison>,
    /// Settings that differ between the runs (`key: [a, b]`), so a difference can be traced.
    pub settings_differ: BTreeMap<String, [Value; 2]>,
    /// True when the runs scored different answer files' worth of data (data hashes differ).
    pub data_differs: bool,
}

/// Compares run `a` with run `b` (their manifests).
pub fn compare(a: &Manifest, b: &Manifest) -> Result<RunComparison, Error> {
    if a.bench != b.bench {
        return Err(Error::Request(format!(
            "cannot compare {} with {}: different benchmarks",
            a.bench, b.bench
        )));
    }
    if a.metrics.is_empty() || b.metrics.is_empty() {
        return Err(Error::Request(format!(
            "{}: these manifests keep no per-question units to compare (MME, the synthetic \
             split and unscored runs keep none)",
            a.bench
        )));
    }
    let metrics = a
        .metrics
        .iter()
        .filter_map(|ma| {
            let mb = b.metrics.iter().find(|m| m.name == ma.name)?;
            Some(stats::compare(ma, mb, stats::RESAMPLES))
        })
        .collect();
    let mut settings_differ = BTreeMap::new();
    if let (Some(sa), Some(sb)) = (a.settings.as_object(), b.settings.as_object()) {
        let keys: std::collections::BTreeSet<&String> = sa.keys().chain(sb.keys()).collect();
        for k in keys {
            let (va, vb) = (
                sa.get(k).cloned().unwrap_or(Value::Null),
                sb.get(k).cloned().unwrap_or(Value::Null),
            );
            if va != vb {
                settings_differ.insert(k.clone(), [va, vb]);
            }
        }
    }
    Ok(RunComparison {
        bench: a.bench.clone(),
        metrics,
        settings_differ,
        data_differs: a.data.as_ref().map(|d| &d.sha256) != b.data.as_ref().map(|d| &d.sha256),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_sha256() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("abc");
        std::fs::write(&path, "abc").unwrap();
        let h = hash_file(&path).unwrap();
        assert_eq!(
            h.sha256,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(h.bytes, 3);
        std::fs::create_dir(dir.path().join("eval")).unwrap();
        assert_eq!(
            hash_dir(dir.path()).unwrap().len(),
            1,
            "subfolders left out"
        );
    }
}
