//! `llava parity`: our models against Hugging Face reference outputs.

use std::path::PathBuf;
use std::process::ExitCode;

use llava::parity;

/// Its arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Fixture directories (each with a meta.json).
    #[arg(required = true)]
    pub fixtures: Vec<PathBuf>,
}

/// Runs `llava parity`.
pub fn run(args: &Args) -> llava::Result<ExitCode> {
    let (mut passed, mut failed) = (0, 0);
    for dir in &args.fixtures {
        match parity::run(dir) {
            Ok(report) => {
                print!("{report}");
                if report.passed() {
                    passed += 1;
                } else {
                    failed += 1;
                }
            }
            Err(e) => {
                println!("{}: ERROR {e}", dir.display());
                failed += 1;
            }
        }
    }
    println!("parity: {passed} passed, {failed} failed");
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
