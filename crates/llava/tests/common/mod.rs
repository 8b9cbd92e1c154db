//! Helpers shared by the `llava` command's tests: the binary, commands that must succeed, and the
//! cached torch environment's Python with the packages an interop check needs.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// The repository's root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The `llava` binary under test.
pub fn llava() -> Command {
    Command::new(env!("CARGO_BIN_EXE_llava"))
}

/// Runs `command`, which must succeed (else the test fails showing its output); its stdout.
pub fn run_ok(command: &mut Command) -> String {
    let out = command.output().unwrap();
    assert!(
        out.status.success(),
        "{command:?}\nstdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The cached torch environment's python once `check` (Python code) runs in it, installing
/// `packages` with pip first when it does not; or why not (no environment, no network).
pub fn python_with(check: &str, packages: &[&str]) -> Result<PathBuf, String> {
    let python = llava::foundation::torch_env_bin("python")
        .ok_or("no python beside libtorch (.libtorch; run `cargo xtask setup`)")?;
    let ready = || {
        Command::new(&python)
            .args(["-c", check])
            .status()
            .is_ok_and(|s| s.success())
    };
    if !ready() {
        let installed = Command::new(&python)
            .args(["-m", "pip", "install", "--quiet"])
            .args(packages)
            .status()
            .is_ok_and(|s| s.success());
        if !installed || !ready() {
            return Err(format!(
                "`{} -m pip install {}` failed (no network?)",
                python.display(),
                packages.join(" ")
            ));
        }
    }
    Ok(python)
}
