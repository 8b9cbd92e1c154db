//! Writes that are all-or-nothing.

use std::borrow::Cow;
use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

use safetensors::{Dtype, View};
use tch::Tensor;

use crate::checkpoint::dtype_of;
use crate::{Error, Result};

/// Reads the JSON file at `path` as a `T`; both errors (reading, parsing) name the file.
pub fn read_json<T: serde::de::DeserializeOwned>(path: impl AsRef<Path>) -> Result<T> {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::Json {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// Writes `bytes` to `path` atomically: into a temporary file in the same directory, flushed to disk,
/// then renamed over `path`. A crash leaves either the old file or the new one, never a torn one.
pub fn write_atomic(path: impl AsRef<Path>, bytes: &[u8]) -> Result<()> {
    write_atomic_with(path, |file| file.write_all(bytes))
}

/// Like [`write_atomic`], with the contents streamed by `write` into the temporary file (through
/// a buffer), so a large file need not be held in memory whole.
pub fn write_atomic_with(
    path: impl AsRef<Path>,
    write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> Result<()> {
    write_atomic_file(path, |tmp| {
        let mut file = std::io::BufWriter::new(std::fs::File::create(tmp)?);
        write(&mut file)?;
        file.flush()
    })
}

/// Like [`write_atomic`], with the temporary file written by `write` at the path it is given.
fn write_atomic_file(
    path: impl AsRef<Path>,
    write: impl FnOnce(&Path) -> std::io::Result<()>,
) -> Result<()> {
    let path = path.as_ref();
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let file_name = path
        .file_name()
        .ok_or_else(|| Error::io(path, std::io::Error::other("not a file path")))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        file_name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        write(&tmp)?;
        std::fs::File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, path)?;
        // Make the rename itself durable.
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    result.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(path, e)
    })
}

/// One tensor, contiguous on the CPU, whose memory is serialised as it is.
struct Bytes {
    dtype: Dtype,
    shape: Vec<usize>,
    tensor: Tensor,
}

impl View for &Bytes {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        let len = self.data_len();
        if len == 0 {
            return Cow::Borrowed(&[]);
        }
        // SAFETY: `tensor` is a contiguous CPU tensor of `len` bytes that this value owns a
        // handle to (keeping its storage alive) and nothing writes while the file is written.
        Cow::Borrowed(unsafe {
            std::slice::from_raw_parts(self.tensor.data_ptr() as *const u8, len)
        })
    }
    fn data_len(&self) -> usize {
        self.tensor.numel() * self.tensor.kind().elt_size_in_bytes()
    }
}

/// Saves named tensors (any device, any supported dtype) as one safetensors file, atomically.
/// CPU tensors are written from their own memory (no copy of the model is made); others are
/// copied to the CPU first.
pub fn save_safetensors(
    path: impl AsRef<Path>,
    tensors: &[(String, Tensor)],
    metadata: Option<HashMap<String, String>>,
) -> Result<()> {
    let path = path.as_ref();
    let mut owned = Vec::with_capacity(tensors.len());
    for (name, tensor) in tensors {
        let cpu = tensor.f_to_device(tch::Device::Cpu)?.f_contiguous()?;
        let kind = cpu.f_kind()?;
        let dtype = dtype_of(kind).ok_or_else(|| Error::UnsupportedDtype {
            name: name.clone(),
            file: path.to_path_buf(),
            dtype: format!("{kind:?}"),
        })?;
        let shape = cpu.size().iter().map(|&d| d as usize).collect();
        owned.push((
            name.as_str(),
            Bytes {
                dtype,
                shape,
                tensor: cpu,
            },
        ));
    }
    let views = owned.iter().map(|(name, bytes)| (*name, bytes));
    write_atomic_file(path, |tmp| {
        safetensors::serialize_to_file(views, metadata, tmp).map_err(|e| match e {
            safetensors::SafeTensorError::IoError(e) => e,
            other => std::io::Error::other(format!("not a valid safetensors file: {other}")),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_whole_file_and_leaves_no_temporaries() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.json");
        write_atomic(&path, b"first").unwrap();
        write_atomic(&path, b"second").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn atomic_write_into_missing_directory_names_the_file() {
        let err = write_atomic("/nonexistent-dir/x.bin", b"x")
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent-dir/x.bin"), "{err}");
    }
}
