//! Devices and dtypes, as users name them on the command line.

use tch::{Device, Kind, Tensor};

use crate::{Error, Result};

/// `t` on `device` without waiting for the device: a host tensor bound for a GPU goes through
/// pinned memory as an asynchronous copy, queued behind the work already there. A plain copy from
/// pageable memory waits for everything queued first (libtorch synchronises the stream), so the
/// host could not prepare the next micro-batch while the GPU computes the last one. Elsewhere, as
/// `to_device`.
pub fn upload(t: &Tensor, device: Device) -> Tensor {
    if device.is_cuda() && t.device() == Device::Cpu {
        // Pinning fails only where CUDA is unusable, and then so would the copy: let it say so.
        match crate::cuda::pin(t) {
            Ok(pinned) => pinned.to_device_(device, t.kind(), true, false),
            Err(_) => t.to_device(device),
        }
    } else {
        t.to_device(device)
    }
}

/// Parses `cpu`, `cuda`, `cuda:N` or `auto` (CUDA when available, else CPU), and checks that a
/// CUDA device is there before anything is allocated on it: libtorch would otherwise fail deep
/// inside the first allocation with a C++ backtrace.
pub fn parse_device(name: &str) -> Result<Device> {
    let device = match name {
        "cpu" => Device::Cpu,
        "auto" => Device::cuda_if_available(),
        "cuda" => Device::Cuda(0),
        _ => name
            .strip_prefix("cuda:")
            .and_then(|n| n.parse().ok())
            .map(Device::Cuda)
            .ok_or_else(|| Error::UnknownName {
                what: "device",
                value: name.into(),
                expected: "cpu, cuda, cuda:N, auto",
            })?,
    };
    check_available(device, name)?;
    Ok(device)
}

/// Checks that `device` exists on this machine; `name` is how the user named it.
pub fn check_available(device: Device, name: &str) -> Result<()> {
    let Device::Cuda(index) = device else {
        return Ok(());
    };
    let reason = if !tch::Cuda::is_available() {
        if tch::utils::has_cuda() {
            "libtorch was built with CUDA but finds no usable GPU (no device, or no NVIDIA driver)"
                .to_string()
        } else {
            "this libtorch has no CUDA support (a CPU-only build)".to_string()
        }
    } else {
        let count = tch::Cuda::device_count() as usize;
        if index < count {
            return Ok(());
        }
        format!(
            "there {} {count} CUDA device{} (cuda:0 to cuda:{})",
            if count == 1 { "is" } else { "are" },
            if count == 1 { "" } else { "s" },
            count.saturating_sub(1)
        )
    };
    Err(Error::DeviceUnavailable {
        device: name.to_string(),
        reason,
    })
}

/// Parses a dtype name: `f32`/`float32`, `bf16`/`bfloat16`, `f16`/`float16`.
pub fn parse_kind(name: &str) -> Result<Kind> {
    match name {
        "f32" | "float32" | "float" => Ok(Kind::Float),
        "bf16" | "bfloat16" => Ok(Kind::BFloat16),
        "f16" | "float16" | "half" => Ok(Kind::Half),
        _ => Err(Error::UnknownName {
            what: "dtype",
            value: name.into(),
            expected: "f32, bf16, f16",
        }),
    }
}

/// The compute dtype we use by default on `device`: bf16 on CUDA, f32 on CPU (where bf16 matmuls
/// are slow and gain nothing).
pub fn default_kind(device: Device) -> Kind {
    if device.is_cuda() {
        Kind::BFloat16
    } else {
        Kind::Float
    }
}

/// Device memory in use on the current CUDA device, in bytes (`total - free` from the CUDA
/// runtime's `cudaMemGetInfo`: what the caching allocator holds plus the context), or `None`
/// without a CUDA runtime. tch does not expose libtorch's allocator statistics; sampling this
/// after each step gives a peak that errs high, never low.
pub fn cuda_memory_in_use() -> Option<u64> {
    type MemGetInfo = unsafe extern "C" fn(*mut usize, *mut usize) -> i32;
    // SAFETY: the CUDA runtime is a C library that libtorch_cuda has already loaded; loading it
    // by name returns that copy, and cudaMemGetInfo only writes the two sizes it is given.
    unsafe {
        let library = ["libcudart.so.13", "libcudart.so.12", "libcudart.so"]
            .iter()
            .find_map(|name| libloading::Library::new(name).ok())?;
        let get: libloading::Symbol<MemGetInfo> = library.get(b"cudaMemGetInfo\0").ok()?;
        let (mut free, mut total) = (0usize, 0usize);
        (get(&mut free, &mut total) == 0).then(|| (total - free) as u64)
    }
}

/// The process's peak resident set size in bytes (Linux `VmHWM`; `None` elsewhere).
pub fn peak_host_memory() -> Option<u64> {
    proc_status_bytes("VmHWM:")
}

/// The process's resident set size in bytes now (Linux `VmRSS`; `None` elsewhere).
pub fn host_memory() -> Option<u64> {
    proc_status_bytes("VmRSS:")
}

/// A `kB` line of `/proc/self/status`, in bytes.
fn proc_status_bytes(key: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(key))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Hands memory that was freed back to the operating system (glibc's `malloc_trim`; nothing
/// elsewhere). After dense weights are replaced by smaller ones, glibc keeps the freed blocks
/// under its mmap threshold in its heap, where they count as resident.
pub fn return_freed_host_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        unsafe extern "C" {
            fn malloc_trim(pad: usize) -> std::ffi::c_int;
        }
        // SAFETY: malloc_trim only releases free heap pages; it takes no pointers.
        unsafe {
            malloc_trim(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse() {
        assert_eq!(parse_device("cpu").unwrap(), Device::Cpu);
        assert!(parse_device("tpu").unwrap_err().to_string().contains("tpu"));
        assert_eq!(parse_kind("bf16").unwrap(), Kind::BFloat16);
        assert!(parse_kind("int4").is_err());
        assert_eq!(default_kind(Device::Cpu), Kind::Float);
    }

    #[test]
    fn a_missing_gpu_is_a_clear_error_not_a_libtorch_panic() {
        let count = if tch::Cuda::is_available() {
            tch::Cuda::device_count()
        } else {
            0
        };
        let missing = format!("cuda:{count}");
        let err = parse_device(&missing).unwrap_err().to_string();
        assert!(
            err.contains(&missing) && err.contains("not available") && err.contains("--device cpu"),
            "{err}"
        );
        if count == 0 {
            assert!(parse_device("cuda").is_err());
            assert_eq!(parse_device("auto").unwrap(), Device::Cpu);
        } else {
            assert_eq!(parse_device("cuda").unwrap(), Device::Cuda(0));
        }
    }

    #[test]
    fn host_memory_is_reported_on_linux() {
        let peak = peak_host_memory().expect("Linux has /proc/self/status");
        assert!(peak > 1 << 20, "{peak}");
    }
}
