//! Finding or installing libtorch, and pointing the build at it.
//!
//! `tch = 0.24` needs the libtorch of PyTorch 2.11.0. The only source we can rely on everywhere is the
//! `torch==2.11.0` wheel on PyPI, which carries libtorch (with CUDA) under `site-packages/torch`.
//! In order of preference we use:
//!
//! 1. an exported `LIBTORCH`;
//! 2. the libtorch that `.libtorch` already points to, when it is PyTorch 2.11;
//! 3. the `torch` 2.11 of `$PYTHON` or `python3`;
//! 4. a virtual environment cached outside the clone, created with `pip install torch==2.11.0` on
//!    first use and shared by every later clone (and CI) on the machine.
//!
//! The chosen directory becomes the git-ignored link `.libtorch` in the workspace root, which
//! `.cargo/config.toml` hands to `torch-sys` as `LIBTORCH`; the `libtorch-build` helper then links each
//! binary, test and bench with an rpath to its `lib/`, so nothing needs exporting.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The PyTorch release that `tch = 0.24.0` binds.
pub const TORCH_VERSION: &str = "2.11.0";

/// Makes sure `<root>/.libtorch` points at a usable libtorch and returns its directory.
pub fn ensure_libtorch(root: &Path) -> Result<PathBuf, String> {
    let link = root.join(".libtorch");
    // `.cargo/config.toml` sets LIBTORCH to the link for every cargo-run process, this one included;
    // only another value is the user's own choice.
    let explicit = std::env::var_os("LIBTORCH")
        .map(PathBuf::from)
        .filter(|dir| *dir != link);
    if let Some(dir) = explicit {
        check_libtorch(&dir)?;
        eprintln!("xtask: using LIBTORCH={}", dir.display());
        return Ok(dir);
    }
    if check_libtorch(&link).is_ok() {
        return link
            .canonicalize()
            .map_err(|e| format!("{}: {e}", link.display()));
    }
    let dir = match python_torch(&python()) {
        Some(dir) => dir,
        None => cached_venv_torch()?,
    };
    check_libtorch(&dir)?;
    point_link(&link, &dir)?;
    eprintln!("xtask: libtorch {TORCH_VERSION} at {}", dir.display());
    Ok(dir)
}

/// Checks that `dir` holds libtorch's shared libraries and headers, of PyTorch 2.11 when it says.
fn check_libtorch(dir: &Path) -> Result<(), String> {
    let lib = dir.join("lib");
    if !lib.join("libtorch_cpu.so").exists() || !dir.join("include").is_dir() {
        return Err(format!(
            "{} is not a libtorch directory (no lib/libtorch_cpu.so or include/)",
            dir.display()
        ));
    }
    let version = std::fs::read_to_string(dir.join("version.py"))
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|line| line.strip_prefix("__version__ = "))
                .map(|v| v.trim_matches(['\'', '"', ' ']).to_string())
        })
        .or_else(|| std::fs::read_to_string(dir.join("build-version")).ok());
    match version {
        Some(v) if !v.trim().starts_with("2.11.") => Err(format!(
            "{} is PyTorch {}, but tch 0.24 needs {TORCH_VERSION}",
            dir.display(),
            v.trim()
        )),
        _ => Ok(()),
    }
}

fn python() -> String {
    std::env::var("PYTHON").unwrap_or_else(|_| "python3".into())
}

/// The `torch` package directory of `python`, when it has PyTorch 2.11.
fn python_torch(python: &str) -> Option<PathBuf> {
    let script =
        "import torch, os; print(torch.__version__); print(os.path.dirname(torch.__file__))";
    let out = Command::new(python).args(["-c", script]).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).ok()?;
    let mut lines = text.lines();
    let version = lines.next()?;
    let dir = PathBuf::from(lines.next()?);
    version.starts_with("2.11.").then_some(dir)
}

/// Where cached downloads live: `$LLAVA_GEMMA_CACHE`, `$XDG_CACHE_HOME/llava-gemma-rs` or
/// `~/.cache/llava-gemma-rs`.
fn cache_dir() -> Result<PathBuf, String> {
    if let Some(dir) = std::env::var_os("LLAVA_GEMMA_CACHE") {
        return Ok(PathBuf::from(dir));
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return Ok(PathBuf::from(dir).join("llava-gemma-rs"));
    }
    let home = std::env::var_os("HOME").ok_or("neither LLAVA_GEMMA_CACHE nor HOME is set")?;
    Ok(PathBuf::from(home).join(".cache").join("llava-gemma-rs"))
}

/// The torch of the cached virtual environment, installed on first use.
fn cached_venv_torch() -> Result<PathBuf, String> {
    let cache = cache_dir()?;
    let venv = cache.join(format!("torch-{TORCH_VERSION}"));
    let venv_python = venv.join("bin").join("python");
    if let Some(dir) = python_torch(&venv_python.to_string_lossy()) {
        return Ok(dir);
    }
    std::fs::create_dir_all(&cache).map_err(|e| format!("{}: {e}", cache.display()))?;
    // Install into a private directory and rename it into place, so that an interrupted install
    // never leaves a half-populated environment where the next run would look.
    let partial = cache.join(format!(
        "torch-{TORCH_VERSION}.partial-{}",
        std::process::id()
    ));
    eprintln!(
        "xtask: installing torch=={TORCH_VERSION} from PyPI into {} (about 4.6 GB, once per machine)",
        venv.display()
    );
    run(Command::new(python()).args(["-m", "venv"]).arg(&partial))?;
    let pip = partial.join("bin").join("pip");
    run(Command::new(&pip).args([
        "install",
        "--quiet",
        "--disable-pip-version-check",
        &format!("torch=={TORCH_VERSION}"),
    ]))?;
    if venv.exists() {
        std::fs::remove_dir_all(&venv).map_err(|e| format!("{}: {e}", venv.display()))?;
    }
    std::fs::rename(&partial, &venv).map_err(|e| format!("{}: {e}", venv.display()))?;
    python_torch(&venv_python.to_string_lossy())
        .ok_or_else(|| format!("torch did not import from {}", venv.display()))
}

/// Atomically points the symbolic link `link` at `target`.
fn point_link(link: &Path, target: &Path) -> Result<(), String> {
    let tmp = link.with_extension(format!("tmp-{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, link).map_err(|e| format!("{}: {e}", link.display()))
}

fn run(command: &mut Command) -> Result<(), String> {
    let status = command
        .status()
        .map_err(|e| format!("cannot run {:?}: {e}", command.get_program()))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{command:?} failed ({status})"))
    }
}
