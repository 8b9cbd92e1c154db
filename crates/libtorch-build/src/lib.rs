//! Link flags that `tch` cannot pass on to downstream crates.
//!
//! `torch-sys` links libtorch for its own crate, but two things do not reach the binaries, tests and
//! benches of the crates that use it:
//!
//! * `libtorch_cuda.so` has no symbol that Rust code references, so a linker running with
//!   `--as-needed` drops it and CUDA silently stays off. It must be linked with `--no-as-needed`.
//! * the run-time search path to libtorch's `lib/`, without which every test needs `LD_LIBRARY_PATH`.
//!
//! Cargo applies `cargo:rustc-link-arg` only to the targets of the package whose build script emits
//! it, so every crate with such targets has a two-line `build.rs` that calls [`emit_link_args`].

use std::path::{Path, PathBuf};

/// Where libtorch lives, as `torch-sys` sees it: the `LIBTORCH` variable, which `.cargo/config.toml`
/// points at the `.libtorch` link that `cargo xtask setup` writes (an exported `LIBTORCH` wins).
pub fn libtorch_dir() -> Option<PathBuf> {
    let dir = PathBuf::from(std::env::var_os("LIBTORCH")?);
    dir.canonicalize().ok()
}

/// Prints the `cargo:` directives that link libtorch's CUDA library (when present) and set an
/// rpath to libtorch's `lib/` for this package's binaries, tests, benches and examples.
pub fn emit_link_args() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    let Some(dir) = libtorch_dir() else {
        println!(
            "cargo:warning=LIBTORCH is not set or does not exist; run `cargo xtask setup` first"
        );
        return;
    };
    let lib = dir.join("lib");
    for arg in link_args(&lib) {
        println!("cargo:rustc-link-arg={arg}");
    }
}

/// Compiles C++ `files` that call ATen directly (for kernels tch does not wrap) into a static
/// library `name` linked into this package, with libtorch's headers, this crate's `llava_ffi.h`
/// (exceptions into error strings) and the C++ ABI `torch-sys` uses (`LIBTORCH_CXX11_ABI`,
/// default 1, as for every PyTorch wheel since 2.7).
pub fn compile_cpp(name: &str, files: &[&str]) {
    compile_cpp_with(name, files, &[], &[]);
}

/// [`compile_cpp`] with more include directories (relative to the crate) and preprocessor
/// definitions (`NAME` or `NAME=VALUE`).
pub fn compile_cpp_with(name: &str, files: &[&str], includes: &[&str], defines: &[&str]) {
    println!("cargo:rerun-if-env-changed=LIBTORCH_CXX11_ABI");
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    let header = Path::new(env!("CARGO_MANIFEST_DIR")).join("include/llava_ffi.h");
    println!("cargo:rerun-if-changed={}", header.display());
    let dir = libtorch_dir().unwrap_or_else(|| {
        panic!("LIBTORCH is not set or does not exist; run `cargo xtask setup` first")
    });
    let abi = std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".into());
    let mut build = cc::Build::new();
    build
        .cpp(true)
        .pic(true)
        .std("c++17")
        .include(dir.join("include"))
        .include(dir.join("include/torch/csrc/api/include"))
        .include(Path::new(env!("CARGO_MANIFEST_DIR")).join("include"))
        .define("_GLIBCXX_USE_CXX11_ABI", abi.as_str())
        .flag_if_supported("-Wno-unused-parameter");
    for dir in includes {
        build.include(dir);
    }
    for define in defines {
        match define.split_once('=') {
            Some((name, value)) => build.define(name, value),
            None => build.define(define, None),
        };
    }
    build.files(files).compile(name);
}

/// The linker arguments for a libtorch whose shared libraries are in `lib`.
pub fn link_args(lib: &Path) -> Vec<String> {
    let lib = lib.display();
    let mut args = vec![format!("-Wl,-rpath,{lib}")];
    if Path::new(&format!("{lib}/libtorch_cuda.so")).exists() {
        args.push(format!(
            "-Wl,--no-as-needed,-L{lib},-ltorch_cuda,--as-needed"
        ));
    }
    args
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuda_library_is_linked_only_when_present() {
        let dir = std::env::temp_dir().join(format!("libtorch-build-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(link_args(&dir).len(), 1, "rpath only");
        std::fs::write(dir.join("libtorch_cuda.so"), b"").unwrap();
        let args = link_args(&dir);
        assert_eq!(args.len(), 2);
        assert!(args[1].contains("--no-as-needed") && args[1].ends_with("--as-needed"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
