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

/// The CUDA compiler and the headers it and the CUDA runtime's headers need, from PyPI, of the
/// CUDA 13.0 that torch 2.11's wheel is built with (`nvidia-cuda-runtime` 13.0): with them the
/// build adds CUDA graphs and our kernels (`crates/foundation/csrc`); without them it builds the
/// same code minus those, and the model falls back to libtorch's operations.
pub const CUDA_COMPILER: [&str; 4] = [
    "nvidia-cuda-nvcc==13.0.88",
    "nvidia-nvvm==13.0.88",
    "nvidia-cuda-crt==13.0.88",
    "nvidia-cuda-cccl==13.0.85",
];

/// Makes sure `<root>/.libtorch` points at a usable libtorch and returns its directory; for the
/// cached environment's CUDA torch, installs the CUDA compiler next to it on first use.
pub fn ensure_libtorch(root: &Path) -> Result<PathBuf, String> {
    let dir = find_libtorch(root)?;
    ensure_cuda_compiler(&dir);
    Ok(dir)
}

/// Installs [`CUDA_COMPILER`] into the cached environment that holds the CUDA torch at `torch`,
/// when it is not there yet (about 100 MB, once). Torch of another environment is the user's: we
/// only say how. A failed install is a warning: the build is complete without it.
fn ensure_cuda_compiler(torch: &Path) {
    let Some(site) = torch.parent() else { return };
    let nvcc = site.join("nvidia/cu13/bin/nvcc");
    if !torch.join("lib/libtorch_cuda.so").exists()
        || nvcc.exists() && site.join("nvidia/cu13/nvvm/bin/cicc").exists()
    {
        return;
    }
    let cached = cache_dir()
        .ok()
        .and_then(|c| c.canonicalize().ok())
        .is_some_and(|c| torch.starts_with(c));
    let (true, Some(pip)) = (cached, env_bin(torch, "pip")) else {
        eprintln!(
            "xtask: note: no nvcc beside {}; for CUDA graphs and our CUDA kernels, `pip install {}` there",
            torch.display(),
            CUDA_COMPILER.join(" ")
        );
        return;
    };
    eprintln!("xtask: installing the CUDA compiler from PyPI next to torch (about 100 MB, once)");
    let installed = run(Command::new(&pip)
        .args([
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--no-deps",
        ])
        .args(CUDA_COMPILER));
    if let Err(e) = installed {
        eprintln!("xtask: warning: {e}; building without CUDA graphs and our CUDA kernels");
    }
}

fn find_libtorch(root: &Path) -> Result<PathBuf, String> {
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

/// The Python to use where no environment says which: `$PYTHON`, or `python3`.
fn python() -> String {
    std::env::var("PYTHON").unwrap_or_else(|_| "python3".into())
}

/// `bin/<name>` (`python`, `pip`) of the Python environment that holds the torch package at
/// `torch`: that of its nearest ancestor that has one (`<venv>/lib/pythonX.Y/site-packages/torch`
/// -> `<venv>/bin/<name>`).
fn env_bin(torch: &Path, name: &str) -> Option<PathBuf> {
    torch
        .ancestors()
        .map(|dir| dir.join("bin").join(name))
        .find(|p| p.exists())
}

/// The Python whose torch the workspace links: that of the environment `<root>/.libtorch` points
/// into (the cached one, after `cargo xtask setup`), else [`python`]. An error when `.libtorch`
/// points nowhere.
pub fn linked_python(root: &Path) -> Result<String, String> {
    let torch = root
        .join(".libtorch")
        .canonicalize()
        .map_err(|e| format!(".libtorch: {e}"))?;
    Ok(env_bin(&torch, "python").map_or_else(python, |p| p.display().to_string()))
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
        // Environments installed before the scripts were rewritten still name the temporary folder.
        relocate_scripts(&venv)?;
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
    relocate_scripts(&venv)?;
    python_torch(&venv_python.to_string_lossy())
        .ok_or_else(|| format!("torch did not import from {}", venv.display()))
}

/// Rewrites the scripts of the environment at `venv` (`bin/torchrun`, `bin/pip`, `activate`, …),
/// which pip wrote naming the temporary folder the environment was installed in
/// (`torch-<version>.partial-<pid>`), to name `venv` itself, so that they run.
fn relocate_scripts(venv: &Path) -> Result<(), String> {
    let bin = venv.join("bin");
    let Ok(entries) = std::fs::read_dir(&bin) else {
        return Ok(());
    };
    let final_path = venv.to_string_lossy().into_owned();
    for entry in entries.flatten() {
        let path = entry.path();
        if !path.is_file() || path.is_symlink() {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue; // A binary.
        };
        if let Some(fixed) = replace_partial_paths(&text, venv, &final_path) {
            let tmp = path.with_extension("relocate-tmp");
            std::fs::write(&tmp, fixed).map_err(|e| format!("{}: {e}", tmp.display()))?;
            let permissions = entry
                .metadata()
                .map_err(|e| format!("{}: {e}", path.display()))?
                .permissions();
            std::fs::set_permissions(&tmp, permissions)
                .map_err(|e| format!("{}: {e}", tmp.display()))?;
            std::fs::rename(&tmp, &path).map_err(|e| format!("{}: {e}", path.display()))?;
        }
    }
    Ok(())
}

/// `text` with every `<venv>.partial-<digits>` replaced by `final_path`, or `None` if it has none.
fn replace_partial_paths(text: &str, venv: &Path, final_path: &str) -> Option<String> {
    let marker = format!("{}.partial-", venv.to_string_lossy());
    if !text.contains(&marker) {
        return None;
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(&marker) {
        out.push_str(&rest[..at]);
        out.push_str(final_path);
        let after = &rest[at + marker.len()..];
        rest = after.trim_start_matches(|c: char| c.is_ascii_digit());
    }
    out.push_str(rest);
    Some(out)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_installed_in_the_temporary_folder_are_relocated() {
        let dir = std::env::temp_dir().join(format!("xtask-relocate-{}", std::process::id()));
        let venv = dir.join("torch-2.11.0");
        let bin = venv.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        let partial = format!("{}.partial-4242", venv.display());
        let torchrun = bin.join("torchrun");
        std::fs::write(
            &torchrun,
            format!("#!{partial}/bin/python3\nimport sys\n# {partial}/lib\n"),
        )
        .unwrap();
        std::fs::write(bin.join("python3.11"), [0u8, 159, 146, 150]).unwrap();
        relocate_scripts(&venv).unwrap();
        let text = std::fs::read_to_string(&torchrun).unwrap();
        assert_eq!(
            text,
            format!("#!{0}/bin/python3\nimport sys\n# {0}/lib\n", venv.display())
        );
        assert_eq!(
            std::fs::read(bin.join("python3.11")).unwrap(),
            [0u8, 159, 146, 150]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_linked_python_is_that_of_the_environment_libtorch_points_into() {
        let root = std::env::temp_dir().join(format!("xtask-python-{}", std::process::id()));
        let venv = root.join("cache/torch-2.11.0");
        let torch = venv.join("lib/python3.11/site-packages/torch");
        std::fs::create_dir_all(torch.join("bin")).unwrap();
        assert!(linked_python(&root).unwrap_err().starts_with(".libtorch: "));
        std::os::unix::fs::symlink(&torch, root.join(".libtorch")).unwrap();
        assert_eq!(linked_python(&root).unwrap(), python());
        std::fs::create_dir_all(venv.join("bin")).unwrap();
        std::fs::write(venv.join("bin/python"), "").unwrap();
        std::fs::write(venv.join("bin/pip"), "").unwrap();
        let venv = venv.canonicalize().unwrap();
        assert_eq!(
            linked_python(&root).unwrap(),
            venv.join("bin/python").display().to_string()
        );
        assert_eq!(env_bin(&torch, "pip"), Some(venv.join("bin/pip")));
        std::fs::remove_dir_all(&root).unwrap();
    }
}
