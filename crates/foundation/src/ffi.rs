//! The Rust side of the C++ files that `libtorch_build::compile_cpp` builds (for what tch does not
//! wrap): each of their functions answers NULL on success or an error message it allocated.

use std::ffi::{CStr, c_char};

/// Turns such an answer into a `Result` holding the message, freed with the file's own `free`.
///
/// # Safety
/// `message` is NULL or a NUL-terminated string that `free` releases and nothing else uses.
pub unsafe fn checked(
    message: *mut c_char,
    free: unsafe extern "C" fn(*mut c_char),
) -> Result<(), String> {
    if message.is_null() {
        return Ok(());
    }
    // SAFETY: the caller's promise; the string is copied before it is freed, once.
    let text = unsafe { CStr::from_ptr(message) }
        .to_string_lossy()
        .into_owned();
    unsafe { free(message) };
    Err(text)
}
