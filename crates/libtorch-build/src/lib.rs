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
    if let Some(version) = torch_version(&dir) {
        println!("cargo:rustc-env=LLAVA_LIBTORCH_VERSION={version}");
    }
}

/// The libtorch version: a wheel's `version.py` (`__version__ = '2.11.0+cu130'`) or a libtorch
/// archive's `build-version`.
fn torch_version(dir: &Path) -> Option<String> {
    if let Ok(text) = std::fs::read_to_string(dir.join("version.py")) {
        let line = text.lines().find(|l| l.starts_with("__version__"))?;
        return Some(line.split(['\'', '"']).nth(1)?.to_string());
    }
    let text = std::fs::read_to_string(dir.join("build-version")).ok()?;
    Some(text.trim().to_string())
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
    build_cpp(files, includes, defines).compile(name);
}

/// [`compile_cpp`] for code that splits work with `at::parallel_for`: compiled with OpenMP, as
/// libtorch is (`AT_PARALLEL_OPENMP`), and linked to the `libgomp.so.1` libtorch ships, so the
/// work runs on libtorch's own intra-op threads. Without `-fopenmp` that inline template ignores
/// its `#pragma omp parallel` and runs on the caller's thread alone.
pub fn compile_cpp_openmp(name: &str, files: &[&str]) {
    let mut build = build_cpp(files, &[], &[]);
    build.flag("-fopenmp");
    build.compile(name);
    // The same runtime libtorch_cpu.so loads (found on torch-sys's search path, `lib/`); one
    // soname, so one OpenMP runtime in the process.
    println!("cargo:rustc-link-lib=dylib:+verbatim=libgomp.so.1");
}

/// The `cc` build every C++ shim shares (see [`compile_cpp`]).
fn build_cpp(files: &[&str], includes: &[&str], defines: &[&str]) -> cc::Build {
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
        .flag_if_supported("-Wno-unused-parameter")
        // c10 CUDA headers (NCCL) align to the interference size, which GCC warns about.
        .flag_if_supported("-Wno-interference-size");
    for dir in includes {
        build.include(dir);
    }
    for define in defines {
        match define.split_once('=') {
            Some((name, value)) => build.define(name, value),
            None => build.define(define, None),
        };
    }
    build.files(files);
    build
}

/// The CUDA toolkit pieces that PyPI ships next to torch (`site-packages/nvidia/cu13`): the
/// runtime's headers always come with a CUDA torch; `cargo xtask setup` adds the compiler
/// (`nvidia-cuda-nvcc`, `nvidia-nvvm`) and the headers the runtime's need (`nvidia-cuda-crt`,
/// `nvidia-cuda-cccl`). `LLAVA_CUDA_HOME` points elsewhere (a system toolkit); `LLAVA_NO_CUDA=1`
/// builds as if there were none.
#[derive(Debug, Clone)]
pub struct CudaToolkit {
    /// `include/` with `cuda_runtime.h` and `crt/host_config.h`: enough to compile C++ against
    /// libtorch's CUDA headers (CUDA graphs, streams).
    pub include: PathBuf,
    /// `lib/` with `libcudart.so`.
    pub lib: PathBuf,
    /// `bin/nvcc`, when the compiler and its `cicc` are there too.
    pub nvcc: Option<PathBuf>,
}

/// The toolkit beside libtorch (see [`CudaToolkit`]), or `None` when libtorch has no CUDA or the
/// headers are incomplete.
pub fn cuda_toolkit() -> Option<CudaToolkit> {
    println!("cargo:rerun-if-env-changed=LLAVA_CUDA_HOME");
    println!("cargo:rerun-if-env-changed=LLAVA_NO_CUDA");
    if std::env::var_os("LLAVA_NO_CUDA").is_some_and(|v| v != "0") {
        return None;
    }
    let torch = libtorch_dir()?;
    if !torch.join("lib/libtorch_cuda.so").exists() {
        return None;
    }
    let root = match std::env::var_os("LLAVA_CUDA_HOME") {
        Some(home) => PathBuf::from(home),
        None => torch.parent()?.join("nvidia/cu13"),
    };
    toolkit_at(&root)
}

/// The toolkit under `root`, laid out as PyPI's `nvidia/cu13` or a system `/usr/local/cuda`.
pub fn toolkit_at(root: &Path) -> Option<CudaToolkit> {
    let include = root.join("include");
    let lib = [root.join("lib"), root.join("lib64")]
        .into_iter()
        .find(|l| l.exists())?;
    for header in ["cuda_runtime.h", "crt/host_config.h"] {
        println!("cargo:rerun-if-changed={}", include.join(header).display());
        if !include.join(header).exists() {
            return None;
        }
    }
    let nvcc = root.join("bin/nvcc");
    let cicc = root.join("nvvm/bin/cicc");
    println!("cargo:rerun-if-changed={}", nvcc.display());
    let nvcc = (nvcc.exists() && cicc.exists()).then_some(nvcc);
    Some(CudaToolkit { include, lib, nvcc })
}

/// NCCL's headers (`nccl.h`) from the `nvidia-nccl` wheel a CUDA torch depends on
/// (`site-packages/nvidia/nccl/include`), or `LLAVA_NCCL_HOME/include`; `None` without the file.
/// With them and a CUDA toolkit's headers ([`cuda_toolkit`]), c10d's `ProcessGroupNCCL` (in
/// libtorch_cuda) can be compiled against.
pub fn nccl_include() -> Option<PathBuf> {
    println!("cargo:rerun-if-env-changed=LLAVA_NCCL_HOME");
    let dir = match std::env::var_os("LLAVA_NCCL_HOME") {
        Some(home) => PathBuf::from(home).join("include"),
        None => libtorch_dir()?.parent()?.join("nvidia/nccl/include"),
    };
    println!("cargo:rerun-if-changed={}", dir.join("nccl.h").display());
    dir.join("nccl.h").exists().then_some(dir)
}

/// Compiles CUDA `files` with `toolkit`'s nvcc into a static library `name` for the GPUs torch's
/// wheels serve (Ampere, Hopper; PTX for newer ones), with the CUDA runtime linked statically (its
/// kernels launch on libtorch's streams through the driver's primary context, which both runtimes
/// share), so the binaries need no path to the toolkit where they run.
pub fn compile_cuda(name: &str, files: &[&str], toolkit: &CudaToolkit) {
    let nvcc = toolkit.nvcc.as_ref().expect("compile_cuda needs nvcc");
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR in a build script"));
    let mut objects = Vec::new();
    for file in files {
        let object = out.join(format!(
            "{}.o",
            Path::new(file).file_stem().unwrap().to_string_lossy()
        ));
        let status = std::process::Command::new(nvcc)
            .args([
                "-O3",
                "-std=c++17",
                "-Xcompiler",
                "-fPIC",
                "--expt-relaxed-constexpr",
            ])
            .args(["-gencode", "arch=compute_80,code=sm_80"])
            .args(["-gencode", "arch=compute_90,code=sm_90"])
            .args(["-gencode", "arch=compute_90,code=compute_90"])
            .arg("-c")
            .arg(file)
            .arg("-o")
            .arg(&object)
            .status()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", nvcc.display()));
        assert!(status.success(), "nvcc failed on {file}");
        objects.push(object);
    }
    let mut build = cc::Build::new();
    for object in &objects {
        build.object(object);
    }
    build.compile(name);
    println!("cargo:rustc-link-search=native={}", toolkit.lib.display());
    println!("cargo:rustc-link-lib=static=cudart_static");
    for system in ["rt", "dl", "pthread"] {
        println!("cargo:rustc-link-lib=dylib={system}");
    }
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
    fn a_toolkit_needs_its_headers_and_nvcc_needs_cicc() {
        let root = std::env::temp_dir().join(format!("toolkit-test-{}", std::process::id()));
        let touch = |path: &str| {
            let path = root.join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, b"").unwrap();
        };
        touch("include/cuda_runtime.h");
        touch("lib/libcudart_static.a");
        assert!(
            toolkit_at(&root).is_none(),
            "the runtime's headers alone need crt/"
        );
        touch("include/crt/host_config.h");
        let headers = toolkit_at(&root).unwrap();
        assert!(headers.nvcc.is_none());
        touch("bin/nvcc");
        assert!(
            toolkit_at(&root).unwrap().nvcc.is_none(),
            "nvcc without cicc cannot compile"
        );
        touch("nvvm/bin/cicc");
        assert_eq!(toolkit_at(&root).unwrap().nvcc, Some(root.join("bin/nvcc")));
        std::fs::remove_dir_all(&root).unwrap();
    }

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
