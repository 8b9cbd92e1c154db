//! Models by name: a Hugging Face id such as `Intel/llava-gemma-2b` wherever a model directory is
//! asked for.
//!
//! An argument that names an existing path is that path. Otherwise, when it reads as a model id
//! (`org/name`, optionally `@revision`), it is looked up in the local Hugging Face cache, in the
//! layout `huggingface_hub` writes (`models--org--name/refs/<revision>` and
//! `models--org--name/snapshots/<commit>/…`), found through `HF_HUB_CACHE`, `HF_HOME` or
//! `~/.cache/huggingface/hub` as the Python library finds it. A model that is not complete there is
//! downloaded into the same cache with the `hf-hub` crate (the files a model directory needs:
//! configs, tokenizer, safetensors), unless `HF_HUB_OFFLINE` is set or no network answers, in which
//! case the error says where it looked and why nothing came.

use std::path::{Path, PathBuf};

use hf_hub::{Cache, Repo, RepoType};

use crate::{Error, Result};

/// The Hugging Face hub cache: `$HF_HUB_CACHE`, `$HUGGINGFACE_HUB_CACHE`, `$HF_HOME/hub`,
/// `$XDG_CACHE_HOME/huggingface/hub` or `~/.cache/huggingface/hub`.
pub fn cache_dir() -> PathBuf {
    let var = |name: &str| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    var("HF_HUB_CACHE")
        .or_else(|| var("HUGGINGFACE_HUB_CACHE"))
        .or_else(|| var("HF_HOME").map(|h| h.join("hub")))
        .or_else(|| var("XDG_CACHE_HOME").map(|c| c.join("huggingface").join("hub")))
        .unwrap_or_else(|| {
            var("HOME")
                .unwrap_or_else(|| PathBuf::from("/tmp"))
                .join(".cache")
                .join("huggingface")
                .join("hub")
        })
}

/// Whether `HF_HUB_OFFLINE` asks for no network.
fn offline() -> bool {
    std::env::var("HF_HUB_OFFLINE")
        .map(|v| {
            matches!(
                v.trim().to_ascii_lowercase().as_str(),
                "1" | "true" | "yes" | "on"
            )
        })
        .unwrap_or(false)
}

/// `(id, revision)` when `arg` reads as a model id: `org/name` or `org/name@revision`, each part of
/// letters, digits, `-`, `_` and `.`.
pub fn parse_id(arg: &str) -> Option<(String, String)> {
    let (id, revision) = match arg.split_once('@') {
        Some((id, rev)) if !rev.is_empty() => (id, rev),
        Some(_) => return None,
        None => (arg, "main"),
    };
    let (org, name) = id.split_once('/')?;
    let part = |s: &str| {
        !s.is_empty()
            && !s.starts_with('.')
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    (part(org) && part(name)).then(|| (id.to_string(), revision.to_string()))
}

/// Resolves a model argument to a local directory (see the module's documentation).
pub fn resolve_model(arg: &Path) -> Result<PathBuf> {
    if arg.exists() {
        return Ok(arg.to_path_buf());
    }
    let text = arg.to_string_lossy();
    let Some((id, revision)) = parse_id(&text) else {
        return Err(Error::Hub {
            model: text.into_owned(),
            message: "no such file or directory (nor a Hugging Face id such as org/name)".into(),
        });
    };
    let cache = cache_dir();
    if let Some(dir) = cached(&cache, &id, &revision) {
        return Ok(dir);
    }
    let fail = |message: String| Error::Hub {
        model: text.to_string(),
        message: format!(
            "not a local directory, and not in the Hugging Face cache at {}: {message}",
            cache.display()
        ),
    };
    if offline() {
        return Err(fail(
            "HF_HUB_OFFLINE is set, so nothing is downloaded".into(),
        ));
    }
    download(&cache, &id, &revision).map_err(fail)
}

/// The snapshot directory of `id` at `revision` in `cache`, when it holds a loadable model.
fn cached(cache: &Path, id: &str, revision: &str) -> Option<PathBuf> {
    let repo = Cache::new(cache.to_path_buf()).repo(Repo::with_revision(
        id.to_string(),
        RepoType::Model,
        revision.to_string(),
    ));
    let config = repo.get("config.json")?;
    let dir = config.parent()?.to_path_buf();
    complete(&dir).then_some(dir)
}

/// Whether `dir` has a config and all its weights.
fn complete(dir: &Path) -> bool {
    if !dir.join("config.json").is_file() {
        return false;
    }
    let index = dir.join("model.safetensors.index.json");
    if let Ok(text) = std::fs::read_to_string(&index) {
        let Ok(value) = serde_json::from_str::<serde_json::Value>(&text) else {
            return false;
        };
        let Some(map) = value.get("weight_map").and_then(|m| m.as_object()) else {
            return false;
        };
        return map
            .values()
            .filter_map(|f| f.as_str())
            .all(|f| dir.join(f).is_file());
    }
    dir.join("model.safetensors").is_file() || dir.join(crate::quant::QUANTIZED_WEIGHTS).is_file()
}

/// Downloads what a model directory needs into `cache`; returns the snapshot directory.
fn download(cache: &Path, id: &str, revision: &str) -> std::result::Result<PathBuf, String> {
    let api = hf_hub::api::sync::ApiBuilder::new()
        .with_cache_dir(cache.to_path_buf())
        .with_progress(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .build()
        .map_err(|e| format!("cannot start a download: {e}"))?;
    let repo = api.repo(Repo::with_revision(
        id.to_string(),
        RepoType::Model,
        revision.to_string(),
    ));
    let info = repo
        .info()
        .map_err(|e| format!("cannot reach the Hugging Face hub: {e}"))?;
    let wanted = |name: &str| {
        !name.contains('/')
            && (name.ends_with(".json")
                || name.ends_with(".safetensors")
                || name.ends_with(".jinja")
                || name == "tokenizer.model")
    };
    let mut dir = None;
    for sibling in info.siblings.iter().filter(|s| wanted(&s.rfilename)) {
        let path = repo
            .get(&sibling.rfilename)
            .map_err(|e| format!("downloading {}: {e}", sibling.rfilename))?;
        dir = path.parent().map(Path::to_path_buf);
    }
    let dir = dir.ok_or_else(|| format!("{id} has no config.json or safetensors files"))?;
    if complete(&dir) {
        Ok(dir)
    } else {
        Err(format!("{id} has no config.json with safetensors weights"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_paths_are_told_apart() {
        assert_eq!(
            parse_id("Intel/llava-gemma-2b"),
            Some(("Intel/llava-gemma-2b".into(), "main".into()))
        );
        assert_eq!(
            parse_id("google/gemma-2b-it@refs/pr/1"),
            Some(("google/gemma-2b-it".into(), "refs/pr/1".into()))
        );
        assert_eq!(
            parse_id("org/name@v1.0"),
            Some(("org/name".into(), "v1.0".into()))
        );
        for not_an_id in [
            "model",
            "./out/model",
            "/abs/path",
            "a/b/c",
            "../x",
            "org/",
            "a b/c",
        ] {
            assert_eq!(parse_id(not_an_id), None, "{not_an_id}");
        }
    }

    #[test]
    fn a_missing_path_that_is_no_id_is_a_clear_error() {
        let err = resolve_model(Path::new("no/such/dir/here"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("no/such/dir/here") && err.contains("no such"),
            "{err}"
        );
    }
}
