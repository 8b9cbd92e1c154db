//! Safetensors checkpoints, one file or sharded, memory-mapped.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use memmap2::{Mmap, UncheckedAdvice};
use safetensors::{Dtype, SafeTensors};
use tch::{Kind, Tensor, nn::VarStore};

use crate::{Error, Result};

/// Where one tensor lives and what it holds.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    /// Index into the checkpoint's files.
    file: usize,
    /// The stored dtype.
    pub dtype: Dtype,
    /// The stored shape.
    pub shape: Vec<i64>,
    /// Byte range within the file.
    range: (usize, usize),
}

struct MappedFile {
    path: PathBuf,
    mmap: Mmap,
}

/// A safetensors checkpoint: a single file, a directory with `model.safetensors`, a directory with
/// shards listed in `model.safetensors.index.json` (how `google/gemma-2b` ships), or a directory of
/// `*.safetensors` files. Files are memory-mapped; tensors are read on demand.
pub struct Checkpoint {
    location: PathBuf,
    files: Vec<MappedFile>,
    tensors: BTreeMap<String, TensorInfo>,
}

impl std::fmt::Debug for Checkpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpoint")
            .field("location", &self.location)
            .field("files", &self.files.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

impl Checkpoint {
    /// Opens the checkpoint at `path`: a `.safetensors` file or a model directory.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let files = if path.is_dir() {
            checkpoint_files(path)?
        } else {
            vec![path.to_path_buf()]
        };
        let mut checkpoint = Checkpoint {
            location: path.to_path_buf(),
            files: Vec::with_capacity(files.len()),
            tensors: BTreeMap::new(),
        };
        for file in files {
            checkpoint.add_file(file)?;
        }
        Ok(checkpoint)
    }

    fn add_file(&mut self, path: PathBuf) -> Result<()> {
        let handle = std::fs::File::open(&path).map_err(|e| Error::io(&path, e))?;
        // SAFETY: the map is read-only and lives as long as `self`; a checkpoint file changed by
        // another process while we read it is outside what any loader can defend against.
        let mmap = unsafe { Mmap::map(&handle) }.map_err(|e| Error::io(&path, e))?;
        let (header_len, metadata) =
            SafeTensors::read_metadata(&mmap).map_err(|e| Error::Safetensors {
                path: path.clone(),
                message: e.to_string(),
            })?;
        let data_start = 8 + header_len;
        let index = self.files.len();
        for (name, info) in metadata.tensors() {
            let (start, end) = info.data_offsets;
            self.tensors.insert(
                name,
                TensorInfo {
                    file: index,
                    dtype: info.dtype,
                    shape: info.shape.iter().map(|&d| d as i64).collect(),
                    range: (data_start + start, data_start + end),
                },
            );
        }
        self.files.push(MappedFile { path, mmap });
        Ok(())
    }

    /// The directory or file this checkpoint was opened from.
    pub fn location(&self) -> &Path {
        &self.location
    }

    /// The names of all tensors, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    /// Whether the checkpoint has a tensor called `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// What is stored under `name`, if anything.
    pub fn info(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.get(name)
    }

    /// The file that holds `name`.
    pub fn file_of(&self, name: &str) -> Option<&Path> {
        self.info(name).map(|i| self.files[i.file].path.as_path())
    }

    /// The prefix `p` such that `p + anchor` names a tensor, e.g. `"language_model.model."` for the
    /// anchor `"embed_tokens.weight"` in an old-style LLaVA checkpoint. `None` if no name ends with
    /// the anchor; the shortest prefix when several do.
    pub fn prefix_of(&self, anchor: &str) -> Option<String> {
        self.names()
            .filter_map(|name| name.strip_suffix(anchor))
            .filter(|prefix| prefix.is_empty() || prefix.ends_with('.'))
            .min_by_key(|prefix| prefix.len())
            .map(str::to_string)
    }

    /// Like [`prefix_of`](Self::prefix_of), but a checkpoint without the anchor is an error naming
    /// `model` (the model's name for the anchor tensor).
    pub fn require_prefix(&self, anchor: &str, model: &str) -> Result<String> {
        self.prefix_of(anchor).ok_or_else(|| Error::MissingTensor {
            name: model.to_string(),
            location: self.location.clone(),
            tried: format!("any name ending in `{anchor}`"),
        })
    }

    /// Fails, naming them, when tensors under `prefix` are neither in `used` (what
    /// [`load_into`](Self::load_into) returned) nor skipped on purpose (`skip`): a checkpoint
    /// must not load as a model that ignores part of it.
    pub fn reject_unused(
        &self,
        prefix: &str,
        used: &[String],
        skip: impl Fn(&str) -> bool,
    ) -> Result<()> {
        let used: std::collections::HashSet<&str> = used.iter().map(String::as_str).collect();
        let unused: Vec<&str> = self
            .names()
            .filter(|n| n.starts_with(prefix) && !used.contains(n) && !skip(n))
            .collect();
        if unused.is_empty() {
            return Ok(());
        }
        let mut names = unused
            .iter()
            .take(5)
            .map(|n| format!("`{n}`"))
            .collect::<Vec<_>>()
            .join(", ");
        if unused.len() > 5 {
            names.push_str(", …");
        }
        Err(Error::UnusedTensors {
            location: self.location.clone(),
            count: unused.len(),
            names,
        })
    }

    /// Reads tensor `name` into a new CPU tensor of its stored dtype.
    pub fn tensor(&self, name: &str) -> Result<Tensor> {
        let (info, kind) = self.located(name)?;
        let bytes = &self.files[info.file].mmap[info.range.0..info.range.1];
        Ok(Tensor::f_from_data_size(bytes, &info.shape, kind)?)
    }

    /// [`tensor`](Self::tensor) a slice of rows at a time, each slice's pages released once
    /// copied (see [`release`](Self::release)): the process holds the copy, never the copy and
    /// the file's pages of a large tensor.
    pub fn tensor_released(&self, name: &str) -> Result<Tensor> {
        let (info, kind) = self.located(name)?;
        let mut t = Tensor::f_empty(&info.shape, (kind, tch::Device::Cpu))?;
        tch::no_grad(|| self.copy_into(name, &mut t))?;
        Ok(t)
    }

    /// Tensor `name`'s shape, from the header (nothing read).
    pub fn shape(&self, name: &str) -> Result<Vec<i64>> {
        Ok(self.located(name)?.0.shape.clone())
    }

    /// Where tensor `name` is and the dtype it reads as; an error names a missing tensor or a
    /// dtype we cannot read.
    fn located(&self, name: &str) -> Result<(&TensorInfo, Kind)> {
        let info = self.info(name).ok_or_else(|| Error::MissingTensor {
            name: name.to_string(),
            location: self.location.clone(),
            tried: name.to_string(),
        })?;
        let kind = kind_of(info.dtype).ok_or_else(|| Error::UnsupportedDtype {
            name: name.to_string(),
            file: self.files[info.file].path.clone(),
            dtype: format!("{:?}", info.dtype),
        })?;
        Ok((info, kind))
    }

    /// Drops tensor `name`'s mapped pages from this process's resident memory once it has been
    /// read (a later read maps them in again from the file or the page cache): loading a model
    /// then holds the model and one tensor's pages, not the whole file's.
    pub fn release(&self, name: &str) {
        if let Some(info) = self.tensors.get(name) {
            self.release_range(info.file, info.range.0, info.range.1 - info.range.0);
        }
    }

    fn release_range(&self, file: usize, start: usize, len: usize) {
        // SAFETY: the mapping is read-only and nothing borrows it past a read (tensors are
        // copies): MADV_DONTNEED on a file mapping only unmaps the pages, and touching them again
        // faults the file's contents back in.
        let _ = unsafe {
            self.files[file]
                .mmap
                .unchecked_advise_range(UncheckedAdvice::DontNeed, start, len)
        };
    }

    /// Copies tensor `name` into `var` (converting the dtype, onto its device) a slice of rows
    /// at a time, about [`SLICE_BYTES`] each, releasing each slice's pages once copied: loading
    /// holds the model and one slice, never a second copy of a tensor (Gemma's embedding alone
    /// is 1 GB in bf16).
    fn copy_into(&self, name: &str, var: &mut Tensor) -> Result<()> {
        let (info, kind) = self.located(name)?;
        let file = &self.files[info.file];
        let (start, end) = info.range;
        let rows = info.shape.first().copied().unwrap_or(1).max(1) as usize;
        let row_bytes = (end - start) / rows;
        let per_slice = (SLICE_BYTES / row_bytes.max(1)).max(1);
        if info.shape.len() < 2 || per_slice >= rows {
            let value = self.tensor(name)?;
            var.f_copy_(&value)?;
            self.release_range(info.file, start, end - start);
            return Ok(());
        }
        let mut row = 0;
        while row < rows {
            let n = per_slice.min(rows - row);
            let (from, to) = (start + row * row_bytes, start + (row + n) * row_bytes);
            let mut shape = info.shape.clone();
            shape[0] = n as i64;
            let slice = Tensor::f_from_data_size(&file.mmap[from..to], &shape, kind)?;
            var.f_narrow(0, row as i64, n as i64)?.f_copy_(&slice)?;
            self.release_range(info.file, from, to - from);
            row += n;
        }
        Ok(())
    }

    /// Fills every variable of `vs` from this checkpoint. `names` maps a variable's name (as built
    /// from the module tree) to the checkpoint names to try, in order; an empty list marks a variable
    /// the checkpoint may lack, which then keeps its value. Each tensor is converted to
    /// the variable's dtype and device. A variable that none of its names provides, or a tensor of
    /// the wrong shape, is an error naming the tensor, the file and both shapes.
    ///
    /// Returns the checkpoint names that were used, so callers can report what was left unused.
    pub fn load_into(
        &self,
        vs: &VarStore,
        names: impl Fn(&str) -> Vec<String>,
    ) -> Result<Vec<String>> {
        let mut variables: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
        variables.sort_by(|a, b| a.0.cmp(&b.0));
        let mut used = Vec::with_capacity(variables.len());
        tch::no_grad(|| -> Result<()> {
            for (var_name, mut var) in variables {
                let candidates = names(&var_name);
                if candidates.is_empty() {
                    continue;
                }
                let Some(found) = candidates.iter().find(|c| self.contains(c)) else {
                    return Err(Error::MissingTensor {
                        name: var_name,
                        location: self.location.clone(),
                        tried: candidates.join(", "),
                    });
                };
                let info = &self.tensors[found];
                if info.shape != var.size() {
                    return Err(Error::ShapeMismatch {
                        name: found.clone(),
                        file: self.files[info.file].path.clone(),
                        expected: var.size(),
                        found: info.shape.clone(),
                    });
                }
                if is_float(info.dtype) != var.is_floating_point() {
                    return Err(Error::DtypeMismatch {
                        name: found.clone(),
                        file: self.files[info.file].path.clone(),
                        expected: format!("{:?}", var.kind()),
                        found: format!("{:?}", info.dtype),
                    });
                }
                self.copy_into(found, &mut var)?;
                used.push(found.clone());
            }
            Ok(())
        })?;
        Ok(used)
    }
}

/// How much of a tensor [`Checkpoint::load_into`] reads at a time.
const SLICE_BYTES: usize = 64 << 20;

/// The files of the checkpoint in `dir`, in the order their index lists them.
fn checkpoint_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join("model.safetensors.index.json");
    if index.exists() {
        let json: serde_json::Value = crate::read_json(&index)?;
        let map = json
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| Error::Json {
                path: index.clone(),
                message: "no `weight_map` object".into(),
            })?;
        let mut shards: Vec<&str> = Vec::new();
        for (tensor, file) in map {
            let file = file.as_str().ok_or_else(|| Error::Json {
                path: index.clone(),
                message: format!("`weight_map.{tensor}` is not a file name"),
            })?;
            if !shards.contains(&file) {
                shards.push(file);
            }
        }
        shards.sort_unstable();
        return Ok(shards.into_iter().map(|f| dir.join(f)).collect());
    }
    let single = dir.join("model.safetensors");
    if single.exists() {
        return Ok(vec![single]);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    if files.is_empty() {
        return Err(Error::NoCheckpoint {
            path: dir.to_path_buf(),
        });
    }
    files.sort();
    Ok(files)
}

/// Whether a safetensors dtype holds floating-point numbers.
fn is_float(dtype: Dtype) -> bool {
    matches!(
        dtype,
        Dtype::F16 | Dtype::BF16 | Dtype::F32 | Dtype::F64 | Dtype::F8_E4M3 | Dtype::F8_E5M2
    )
}

/// The libtorch kind of a safetensors dtype, where there is one.
pub fn kind_of(dtype: Dtype) -> Option<Kind> {
    Some(match dtype {
        Dtype::BOOL => Kind::Bool,
        Dtype::U8 => Kind::Uint8,
        Dtype::I8 => Kind::Int8,
        Dtype::I16 => Kind::Int16,
        Dtype::I32 => Kind::Int,
        Dtype::I64 => Kind::Int64,
        Dtype::F16 => Kind::Half,
        Dtype::BF16 => Kind::BFloat16,
        Dtype::F32 => Kind::Float,
        Dtype::F64 => Kind::Double,
        _ => return None,
    })
}

/// The safetensors dtype of a libtorch kind, where there is one.
pub fn dtype_of(kind: Kind) -> Option<Dtype> {
    Some(match kind {
        Kind::Bool => Dtype::BOOL,
        Kind::Uint8 => Dtype::U8,
        Kind::Int8 => Dtype::I8,
        Kind::Int16 => Dtype::I16,
        Kind::Int => Dtype::I32,
        Kind::Int64 => Dtype::I64,
        Kind::Half => Dtype::F16,
        Kind::BFloat16 => Dtype::BF16,
        Kind::Float => Dtype::F32,
        Kind::Double => Dtype::F64,
        _ => return None,
    })
}

/// Reads every tensor of a safetensors file into CPU tensors, keyed by name. For small files such as
/// test inputs; models should use [`Checkpoint::load_into`].
pub fn read_all(path: impl AsRef<Path>) -> Result<HashMap<String, Tensor>> {
    let checkpoint = Checkpoint::open(path)?;
    checkpoint
        .names()
        .map(|name| Ok((name.to_string(), checkpoint.tensor(name)?)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::save_safetensors;

    fn sample() -> Vec<(String, Tensor)> {
        vec![
            (
                "a.weight".into(),
                Tensor::arange(6, (Kind::Float, tch::Device::Cpu)).reshape([2, 3]),
            ),
            ("b.bias".into(), Tensor::from_slice(&[1i64, 2, 3])),
            (
                "c".into(),
                Tensor::ones([4], (Kind::BFloat16, tch::Device::Cpu)),
            ),
        ]
    }

    #[test]
    fn reads_what_it_wrote_with_dtypes_and_shapes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.safetensors");
        save_safetensors(&path, &sample(), None).unwrap();
        let ckpt = Checkpoint::open(dir.path()).unwrap();
        assert_eq!(
            ckpt.names().collect::<Vec<_>>(),
            ["a.weight", "b.bias", "c"]
        );
        for (name, expected) in sample() {
            let got = ckpt.tensor(&name).unwrap();
            assert_eq!(got.kind(), expected.kind(), "{name}");
            assert!(got.equal(&expected), "{name}");
        }
    }

    #[test]
    fn sharded_checkpoint_is_read_through_its_index() {
        let dir = tempfile::tempdir().unwrap();
        let tensors = sample();
        save_safetensors(
            dir.path().join("model-00001-of-00002.safetensors"),
            &tensors[..2],
            None,
        )
        .unwrap();
        save_safetensors(
            dir.path().join("model-00002-of-00002.safetensors"),
            &tensors[2..],
            None,
        )
        .unwrap();
        let index = serde_json::json!({
            "metadata": {"total_size": 0},
            "weight_map": {
                "a.weight": "model-00001-of-00002.safetensors",
                "b.bias": "model-00001-of-00002.safetensors",
                "c": "model-00002-of-00002.safetensors",
            }
        });
        std::fs::write(
            dir.path().join("model.safetensors.index.json"),
            index.to_string(),
        )
        .unwrap();
        let ckpt = Checkpoint::open(dir.path()).unwrap();
        assert_eq!(ckpt.names().count(), 3);
        assert!(
            ckpt.file_of("c")
                .unwrap()
                .ends_with("model-00002-of-00002.safetensors")
        );
        assert!(ckpt.tensor("c").unwrap().equal(&tensors[2].1));
    }

    #[test]
    fn load_into_names_missing_and_misshaped_tensors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.safetensors");
        save_safetensors(&path, &sample(), None).unwrap();
        let ckpt = Checkpoint::open(&path).unwrap();

        let vs = VarStore::new(tch::Device::Cpu);
        let _ = vs.root().sub("a").zeros("weight", &[2, 3]);
        let used = ckpt.load_into(&vs, |n| vec![n.to_string()]).unwrap();
        assert_eq!(used, ["a.weight"]);
        assert!(vs.variables()["a.weight"].equal(&sample()[0].1));

        let vs = VarStore::new(tch::Device::Cpu);
        let _ = vs.root().sub("a").zeros("weight", &[3, 2]);
        let err = ckpt
            .load_into(&vs, |n| vec![n.to_string()])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("a.weight") && err.contains("[2, 3]") && err.contains("[3, 2]"),
            "{err}"
        );
        assert!(err.contains("model.safetensors"), "{err}");

        let vs = VarStore::new(tch::Device::Cpu);
        let _ = vs.root().sub("z").zeros("weight", &[1]);
        let err = ckpt
            .load_into(&vs, |n| vec![format!("x.{n}"), n.into()])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("z.weight") && err.contains("x.z.weight"),
            "{err}"
        );
    }

    #[test]
    fn load_into_names_a_tensor_stored_under_the_wrong_dtype() {
        // A float weight whose header says I32 (same byte size), as a broken writer leaves it.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.safetensors");
        let ints = Tensor::arange(6, (Kind::Int, tch::Device::Cpu)).reshape([2, 3]);
        save_safetensors(&path, &[("a.weight".into(), ints)], None).unwrap();
        let ckpt = Checkpoint::open(&path).unwrap();
        let vs = VarStore::new(tch::Device::Cpu);
        let _ = vs.root().sub("a").zeros("weight", &[2, 3]);
        let err = ckpt
            .load_into(&vs, |n| vec![n.to_string()])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("a.weight") && err.contains("I32") && err.contains("Float"),
            "{err}"
        );
        assert!(err.contains("model.safetensors"), "{err}");
        // Another float dtype is converted, as before.
        let halves = Tensor::ones([2, 3], (Kind::BFloat16, tch::Device::Cpu));
        save_safetensors(&path, &[("a.weight".into(), halves)], None).unwrap();
        let ckpt = Checkpoint::open(&path).unwrap();
        ckpt.load_into(&vs, |n| vec![n.to_string()]).unwrap();
    }

    #[test]
    fn prefix_is_found_from_an_anchor() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.safetensors");
        let t = Tensor::zeros([1], (Kind::Float, tch::Device::Cpu));
        let tensors = vec![
            (
                "language_model.model.embed_tokens.weight".to_string(),
                t.shallow_clone(),
            ),
            ("vision_tower.embed_tokens.weightx".to_string(), t),
        ];
        save_safetensors(&path, &tensors, None).unwrap();
        let ckpt = Checkpoint::open(&path).unwrap();
        assert_eq!(
            ckpt.prefix_of("embed_tokens.weight").as_deref(),
            Some("language_model.model.")
        );
        assert_eq!(ckpt.prefix_of("norm.weight"), None);
    }

    #[test]
    fn corrupt_and_absent_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let err = Checkpoint::open(dir.path()).unwrap_err().to_string();
        assert!(err.contains("no model.safetensors"), "{err}");
        let bad = dir.path().join("model.safetensors");
        std::fs::write(&bad, b"\x10\x00\x00\x00\x00\x00\x00\x00{not json").unwrap();
        let err = Checkpoint::open(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("model.safetensors") && err.contains("not a valid"),
            "{err}"
        );
    }
}
