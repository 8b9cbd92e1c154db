//! libtorch's Kineto profiler (the one `torch.profiler` drives), which tch does not expose: where
//! the device time of a piece of work goes, kernel by kernel. `llava bench-train --profile FILE`
//! uses it.

use std::ffi::{CString, c_char};
use std::path::Path;

use crate::{Error, Result};

unsafe extern "C" {
    fn llava_profiler_free_message(message: *mut c_char);
    fn llava_profiler_start(cuda: bool) -> *mut c_char;
    fn llava_profiler_stop(path: *const c_char) -> *mut c_char;
}

fn torch_error(message: String) -> Error {
    Error::Torch(tch::TchError::Torch(message))
}

fn checked(message: *mut c_char) -> std::result::Result<(), String> {
    // SAFETY: the shim's answers are NULL or its own strdup'd messages.
    unsafe { crate::ffi::checked(message, llava_profiler_free_message) }
}

/// A running profile; [`Profile::finish`] writes it. Only one can run at a time in a process.
#[derive(Debug)]
pub struct Profile {
    _private: (),
}

impl Profile {
    /// Starts recording operators, and with `cuda` the device's kernels and copies.
    pub fn start(cuda: bool) -> Result<Profile> {
        // SAFETY: no arguments beyond a bool; the shim catches every C++ exception.
        checked(unsafe { llava_profiler_start(cuda) })
            .map_err(|e| torch_error(format!("cannot start the profiler: {e}")))?;
        Ok(Profile { _private: () })
    }

    /// Stops recording and writes `path`: one tab-separated line per kernel (per operator when
    /// no device was recorded) with its total milliseconds, calls and name, largest first.
    pub fn finish(self, path: &Path) -> Result<()> {
        let c_path = CString::new(path.as_os_str().as_encoded_bytes())
            .map_err(|_| torch_error(format!("{}: NUL in path", path.display())))?;
        // SAFETY: a NUL-terminated path that outlives the call.
        checked(unsafe { llava_profiler_stop(c_path.as_ptr()) })
            .map_err(|e| torch_error(format!("{}: {e}", path.display())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind, Tensor};

    #[test]
    fn a_cpu_profile_lists_the_operators_that_ran() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("profile.tsv");
        let profile = Profile::start(false).unwrap();
        let a = Tensor::ones([64, 64], (Kind::Float, Device::Cpu));
        let _ = a.matmul(&a).sum(Kind::Float);
        profile.finish(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("total_ms\tcalls\tname\n"), "{text}");
        assert!(
            text.contains("aten::matmul") || text.contains("aten::mm"),
            "{text}"
        );
    }
}
