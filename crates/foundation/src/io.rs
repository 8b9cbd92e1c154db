//! Writes that are all-or-nothing.

use std::borrow::Cow;
use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

use safetensors::{Dtype, View};
use tch::Tensor;

use crate::checkpoint::dtype_of;
use crate::{Error, Result};

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
        let mut file = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
        write(&mut file)?;
        let file = file.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
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

/// One tensor's bytes, ready for serialisation.
struct Bytes {
    dtype: Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl View for &Bytes {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

/// Saves named tensors (any device, any supported dtype) as one safetensors file, atomically.
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
        let numel = cpu.numel();
        let mut data = vec![0u8; numel * kind.elt_size_in_bytes()];
        cpu.f_copy_data_u8(&mut data, numel)?;
        let shape = cpu.size().iter().map(|&d| d as usize).collect();
        owned.push((name.as_str(), Bytes { dtype, shape, data }));
    }
    let views = owned.iter().map(|(name, bytes)| (*name, bytes));
    let buffer = safetensors::serialize(views, metadata).map_err(|e| Error::Safetensors {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    write_atomic(path, &buffer)
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
