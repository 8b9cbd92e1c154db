//! libtorch errors that reach us as panics, turned back into errors.
//!
//! `tch`'s infallible operations (`matmul`, `backward`, …) panic when libtorch throws, with the C++
//! message and a 30-frame C++ backtrace as the payload. Most of those are our bugs, but some a user
//! causes: CUDA running out of memory above all. [`catch`] runs a closure and hands such a panic
//! back as a [`TorchPanic`], so the caller can say what ran out and what to lower; any other panic
//! goes on unwinding. [`install_hook`] keeps a caught panic quiet and trims the C++ backtrace of
//! one that is not caught (it is there again with `RUST_BACKTRACE=1`).

use std::cell::Cell;
use std::panic::{AssertUnwindSafe, PanicHookInfo};

thread_local! {
    static CATCHING: Cell<bool> = const { Cell::new(false) };
}

/// A libtorch error caught as a panic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TorchPanic {
    /// libtorch's message without the C++ backtrace.
    pub message: String,
}

impl TorchPanic {
    /// Whether the device (or the host) ran out of memory.
    pub fn is_out_of_memory(&self) -> bool {
        is_out_of_memory(&self.message)
    }
}

impl std::fmt::Display for TorchPanic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "libtorch: {}", self.message)
    }
}

/// Whether a libtorch message says that memory ran out.
pub fn is_out_of_memory(message: &str) -> bool {
    message.contains("out of memory")
        || message.contains("OutOfMemoryError")
        || message.contains("DefaultCPUAllocator: can't allocate memory")
}

/// Runs `f`; a panic that carries a libtorch error comes back as `Err`, without printing. Any other
/// panic (our bug) is resumed.
pub fn catch<T>(f: impl FnOnce() -> T) -> Result<T, TorchPanic> {
    let was = CATCHING.with(|c| c.replace(true));
    let result = std::panic::catch_unwind(AssertUnwindSafe(f));
    CATCHING.with(|c| c.set(was));
    match result {
        Ok(value) => Ok(value),
        Err(payload) => match payload_text(&*payload).and_then(torch_message) {
            Some(message) => Err(TorchPanic { message }),
            None => std::panic::resume_unwind(payload),
        },
    }
}

/// Installs a panic hook that stays quiet inside [`catch`] (for libtorch panics) and prints a
/// libtorch panic elsewhere as its message alone, unless `RUST_BACKTRACE` is set. Other panics are
/// printed by the previous hook. For binaries; call once at start.
pub fn install_hook() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info: &PanicHookInfo<'_>| {
        let message = payload_text(info.payload()).and_then(torch_message);
        match message {
            Some(_) if CATCHING.with(Cell::get) => {}
            Some(message) if std::env::var_os("RUST_BACKTRACE").is_none() => {
                eprintln!("error: libtorch: {message}");
                eprintln!("(set RUST_BACKTRACE=1 for libtorch's C++ backtrace)");
            }
            _ => previous(info),
        }
    }));
}

fn payload_text(payload: &(dyn std::any::Any + Send)) -> Option<&str> {
    payload
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| payload.downcast_ref::<&str>().copied())
}

/// libtorch's message from a panic's text (tch's `unwrap` of a `TchError` prints
/// `Torch("…")`), without the C++ backtrace; `None` when the panic is not libtorch's.
fn torch_message(text: &str) -> Option<String> {
    let start = text.find("Torch(\"")? + "Torch(\"".len();
    let body = &text[start..];
    // The message is Rust-debug-escaped: newlines appear as `\n`. Keep the lines before the
    // backtrace ("Exception raised from …").
    let body = body.replace("\\n", "\n").replace("\\\"", "\"");
    let kept: Vec<&str> = body
        .lines()
        .take_while(|l| !l.starts_with("Exception raised from") && !l.starts_with("frame #"))
        .filter(|l| !l.trim().is_empty())
        .collect();
    let message = kept.join(" ").trim_end_matches("\")").trim().to_string();
    Some(if message.is_empty() {
        "an error without a message".into()
    } else {
        message
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_libtorch_error_comes_back_as_an_error() {
        // Mismatched shapes: libtorch throws, tch panics.
        let a = tch::Tensor::zeros([2, 3], tch::kind::FLOAT_CPU);
        let b = tch::Tensor::zeros([4, 5], tch::kind::FLOAT_CPU);
        let err = catch(|| a.matmul(&b)).unwrap_err();
        assert!(err.message.contains("cannot be multiplied"), "{err}");
        assert!(!err.message.contains("frame #"), "{err}");
        assert!(!err.is_out_of_memory());
        assert_eq!(catch(|| 3).unwrap(), 3);
    }

    #[test]
    fn other_panics_still_unwind() {
        let result = std::panic::catch_unwind(|| catch(|| panic!("our bug")));
        assert!(result.is_err());
    }

    #[test]
    fn out_of_memory_is_recognised() {
        let text = r#"called `Result::unwrap()` on an `Err` value: Torch("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.19 GiB\nException raised from malloc at /pytorch/c10/cuda/CUDACachingAllocator.cpp:1\nframe #0: c10::Error")"#;
        let message = torch_message(text).unwrap();
        assert!(message.starts_with("CUDA out of memory"), "{message}");
        assert!(!message.contains("frame"), "{message}");
        assert!(is_out_of_memory(&message));
    }
}
