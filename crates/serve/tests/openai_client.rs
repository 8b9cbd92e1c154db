//! The official `openai` Python client against the server (scripts/openai_client_check.py), with
//! the Python of the cached torch virtual environment. Skips, saying why, only when `openai`
//! cannot be installed (no network).

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::*;

fn has_openai(python: &PathBuf) -> bool {
    Command::new(python)
        .args(["-c", "import openai"])
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn the_openai_python_client_works() {
    let python = foundation::torch_env_bin("python").unwrap_or_else(|| PathBuf::from("python3"));
    if !has_openai(&python) {
        let installed = Command::new(&python)
            .args(["-m", "pip", "install", "--quiet", "openai"])
            .status()
            .is_ok_and(|s| s.success());
        if !installed || !has_openai(&python) {
            eprintln!(
                "SKIPPED: `{} -m pip install openai` failed (no network?); the openai client check did not run",
                python.display()
            );
            return;
        }
    }
    let server = start(common::config());
    let output = Command::new(&python)
        .arg(root().join("scripts/openai_client_check.py"))
        .arg(format!("{}/v1", server.url()))
        .arg(image_path())
        .output()
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert_eq!(stdout.trim(), "ok");
    server.shutdown().unwrap();
}
