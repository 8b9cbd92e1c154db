//! `cargo xtask`: the project's automation, in Rust, with no dependency on libtorch.
//!
//! Every command first makes sure a libtorch for PyTorch 2.11.0 is available (see [`setup`]), then runs
//! cargo or the `llava` binary with it. Run `cargo xtask help` for the list.

mod bench_cpu;
mod setup;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

const HELP: &str = "\
cargo xtask <command> [args]

Commands:
  setup                 find or install libtorch (PyTorch 2.11.0) and wire the build to it
  test [cargo args]     run the whole test suite, then the HF parity fixtures in fixtures/hf-parity
  parity <DIR>...       compare our models with Hugging Face outputs stored in parity fixtures
  demo [train args]     the embedded default: both training stages on the tiny preset and the
                        synthetic data (CPU), then the held-out questions -> out/demo/report.json
  pretrain [args]       stage 1 (connector) on the tiny preset and synthetic data (llava train --stage 1)
  finetune [args]       stage 2 (connector + LM), from stage 1's connector (llava train --stage 2)
                        (both: --nproc-per-node N trains on N local ranks, data parallel)
  eval --model DIR --bench NAME|paper|recent|all --data DIR
                        answer and score benchmarks (LLaVA's playground/data/eval layout and
                        VLMEvalKit's TSVs), print the paper's Table 1 row and the recent row
                        (MMStar, MMMU, OCRBench, AI2D, TextVQA, HallusionBench) (llava eval --help)
  bench-train [args]    training steps on a random-weight preset (llava bench-train --help)
  bench-compare [args]  bench-train and the Python reference (scripts/bench_reference.py, HF
                        transformers) with the same arguments, then the ratio of their tokens/s
  bench [cargo args]    run the criterion benchmarks in benches/
  lint                  cargo fmt --check and clippy with warnings as errors
  bench-generate [args] greedy generation on a random-weight preset (llava bench-generate --help)
  bench-vision [args]   a preset's vision tower on random images (llava bench-vision --help)
  bench-cpu [--prompt-len N --new-tokens N --rounds N --threads N]
                        ours (bf16, int8, int4) against llama.cpp (bf16, Q8_0, Q4_0) on a random
                        Gemma-2B-shaped model, interleaved: load, memory, prefill, decode
  device-bundle         build release binaries and CUDA tests into .device-bin/ for a GPU machine
                        (then run scripts/gpu-check.sh there)
  serve --model DIR [args]
                        the OpenAI-compatible server (llava serve --help)
  bench-serve [--clients N --requests M --max-tokens K]
                        the server on loopback (release build, tiny fixture model unless --model):
                        1 client, then N concurrent clients; JSON with the throughput ratio
  llava [args]          run the `llava` command with libtorch wired in
  help                  this text

Environment:
  LIBTORCH              use this libtorch (a libtorch directory or site-packages/torch)
  LLAVA_GEMMA_CACHE     where the cached PyTorch virtual environment lives
                        (default: $XDG_CACHE_HOME/llava-gemma-rs or ~/.cache/llava-gemma-rs)
";

/// The fixtures whose kinds the project supports; `cargo xtask test` checks all of them.
const PARITY_FIXTURES: &[&str] = &[
    "tokenizer",
    "gemma",
    "gemma2",
    "gemma3-text",
    "clip-vision",
    "dinov2",
    "siglip-vision",
    "image-processing",
    "image-processing-modern",
    "llava-clip",
    "llava-dinov2",
    "llava-siglip",
    "gemma3",
    "paligemma",
];

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (command, rest) = match args.split_first() {
        Some((c, rest)) => (c.as_str(), rest),
        None => ("help", &[][..]),
    };
    let result = match command {
        "setup" => setup::ensure_libtorch(&root()).map(|dir| {
            println!("libtorch: {}", dir.display());
        }),
        "test" => test(rest),
        "parity" => with_libtorch(|| llava(&prepend("parity", rest))),
        "demo" => with_libtorch(|| demo(rest)),
        "bench" => with_libtorch(|| {
            cargo(
                &[
                    &["bench", "--package", "llava-benches"],
                    strs(rest).as_slice(),
                ]
                .concat(),
            )
        }),
        "llava" => with_libtorch(|| llava(rest)),
        "serve" => with_libtorch(|| release_llava(&prepend("serve", rest))),
        "bench-serve" => with_libtorch(|| {
            let run = [
                "run",
                "--quiet",
                "--release",
                "--package",
                "serve",
                "--bin",
                "serve-bench",
                "--",
            ];
            cargo(&[&run[..], strs(rest).as_slice()].concat())
        }),
        "eval" => with_libtorch(|| release_llava(&prepend("eval", rest))),
        "bench-train" => with_libtorch(|| release_llava(&prepend("bench-train", rest))),
        "bench-compare" => with_libtorch(|| bench_compare(rest)),
        "bench-cpu" => with_libtorch(|| bench_cpu::run(rest)),
        "bench-generate" | "bench-vision" => {
            with_libtorch(|| release_llava(&prepend(command, rest)))
        }
        "pretrain" | "finetune" => with_libtorch(|| {
            let stage = if command == "pretrain" { "1" } else { "2" };
            let train = ["train".to_string(), "--stage".into(), stage.into()];
            release_llava(&[&train[..], rest].concat())
        }),
        "device-bundle" => with_libtorch(device_bundle),
        "lint" => with_libtorch(|| {
            cargo(&["fmt", "--all", "--check"])?;
            cargo(&[
                "clippy",
                "--workspace",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ])
        }),
        "help" | "--help" | "-h" => {
            print!("{HELP}");
            Ok(())
        }
        other => Err(format!("unknown command `{other}`\n\n{HELP}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("xtask: {message}");
            ExitCode::FAILURE
        }
    }
}

/// The workspace root (the parent of this crate's directory).
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives inside the workspace")
        .to_path_buf()
}

fn with_libtorch(job: impl FnOnce() -> Result<(), String>) -> Result<(), String> {
    setup::ensure_libtorch(&root())?;
    job()
}

fn test(extra: &[String]) -> Result<(), String> {
    setup::ensure_libtorch(&root())?;
    cargo(&[&["test", "--workspace"], strs(extra).as_slice()].concat())?;
    llava(&prepend("parity", &parity_fixtures()))
}

fn parity_fixtures() -> Vec<String> {
    PARITY_FIXTURES
        .iter()
        .map(|name| format!("fixtures/hf-parity/{name}"))
        .collect()
}

/// The embedded default: the two-stage recipe on the tiny preset and the built-in synthetic data,
/// on the CPU, then the held-out questions (and the same questions about the wrong images), with
/// the result in `out/demo/report.json`. Extra arguments go to both training stages.
fn demo(extra: &[String]) -> Result<(), String> {
    let start = std::time::Instant::now();
    let out = root().join("out/demo");
    let path = |p: &str| out.join(p).display().to_string();
    let stage = |n: &str, output: &str, more: &[String]| {
        let args = [
            &[
                "train".to_string(),
                "--stage".into(),
                n.into(),
                "--output".into(),
                path(output),
            ][..],
            more,
            extra,
        ]
        .concat();
        eprintln!("\n== stage {n}: llava {}", args.join(" "));
        release_llava(&args)
    };
    stage("1", "pretrain", &[])?;
    stage(
        "2",
        "finetune",
        &["--connector".into(), path("pretrain/connector.safetensors")],
    )?;
    eprintln!("\n== held-out synthetic questions");
    release_llava(&[
        "eval-synthetic".into(),
        "--model".into(),
        path("finetune/model"),
        "--data".into(),
        path("finetune/data"),
        "--report".into(),
        path("report.json"),
    ])?;
    eprintln!(
        "\ndemo finished in {:.1} min: report {}, loss curves {} and {}",
        start.elapsed().as_secs_f64() / 60.0,
        path("report.json"),
        path("pretrain/loss.png"),
        path("finetune/loss.png"),
    );
    Ok(())
}

/// The Python that owns the libtorch we build against ([`setup::linked_python`]), with
/// transformers installed into it on first use.
fn reference_python() -> Result<String, String> {
    let python = setup::linked_python(&root())?;
    let has = |module: &str| {
        Command::new(&python)
            .args(["-c", &format!("import {module}")])
            .status()
            .is_ok_and(|s| s.success())
    };
    if !has("transformers") {
        eprintln!("xtask: installing transformers 5.17 for the Python reference into {python}");
        let status = Command::new(&python)
            .args(["-m", "pip", "install", "--quiet", "transformers==5.17.*"])
            .status()
            .map_err(|e| format!("cannot run {python}: {e}"))?;
        if !status.success() {
            return Err(format!(
                "`{python} -m pip install transformers` failed ({status})"
            ));
        }
    }
    Ok(python)
}

/// Output of a command, which must succeed.
fn output_of(command: &mut Command) -> Result<String, String> {
    let out = command
        .current_dir(root())
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run {command:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!("{command:?} failed ({})", out.status));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// `bench-train` and the Python reference with the same arguments, one after the other on the
/// same machine; prints both JSON objects and the ratios, and writes `out/bench-compare.json`.
fn bench_compare(args: &[String]) -> Result<(), String> {
    let python = reference_python()?;
    let mut args: Vec<String> = args.to_vec();
    if !args.iter().any(|a| a == "--json") {
        args.push("--json".into());
    }
    build_release_llava()?;
    let ours = output_of(
        Command::new(root().join("target/release/llava"))
            .arg("bench-train")
            .args(&args),
    )?;
    let reference = output_of(
        Command::new(&python)
            .arg(root().join("scripts/bench_reference.py"))
            .args(&args),
    )?;
    let number = bench_cpu::number;
    let (a, b) = (
        number(&ours, "tokens_per_s").ok_or("no tokens_per_s from bench-train")?,
        number(&reference, "tokens_per_s").ok_or("no tokens_per_s from the reference")?,
    );
    let memory = match (
        number(&ours, "peak_memory_bytes"),
        number(&reference, "peak_memory_bytes"),
    ) {
        (Some(x), Some(y)) if y > 0.0 => format!("{:.2}", x / y),
        _ => "null".into(),
    };
    let report = format!(
        "{{\"ours\": {ours}, \"reference\": {reference}, \"tokens_per_s_ratio\": {:.3}, \"peak_memory_ratio\": {memory}}}",
        a / b
    );
    println!("ours:      {ours}\nreference: {reference}");
    println!(
        "tokens/s: ours {a:.0}, reference {b:.0}, ratio {:.2}x",
        a / b
    );
    let out = root().join("out");
    std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    std::fs::write(out.join("bench-compare.json"), report)
        .map_err(|e| format!("{}: {e}", out.display()))
}

/// Builds the optimised `llava` binary (`target/release/llava`), which benchmarks run.
fn build_release_llava() -> Result<(), String> {
    cargo(&[
        "build",
        "--quiet",
        "--release",
        "--package",
        "llava",
        "--bin",
        "llava",
    ])
}

/// Runs the optimised `llava` binary: benchmarks measure release builds.
fn release_llava(args: &[String]) -> Result<(), String> {
    let run = [
        "run",
        "--quiet",
        "--release",
        "--package",
        "llava",
        "--bin",
        "llava",
        "--",
    ];
    cargo(&[&run[..], strs(args).as_slice()].concat())
}

/// Builds what a GPU machine without Rust needs into `.device-bin/`: the `llava` binary, the test
/// binaries that exercise CUDA, and the Python reference benchmark (`scripts/hf_llava_baseline.py`).
fn device_bundle() -> Result<(), String> {
    let root = root();
    let bin = root.join(".device-bin");
    std::fs::create_dir_all(&bin).map_err(|e| format!("{}: {e}", bin.display()))?;
    cargo(&["build", "--release", "--package", "llava", "--bin", "llava"])?;
    copy(&root.join("target/release/llava"), &bin.join("llava"))?;
    for (package, test, name) in [
        ("gemma-lm", "gemma", "test-gemma-lm"),
        ("gemma-lm", "cuda", "test-gemma-lm-cuda"),
        ("trainer", "cuda", "test-trainer-cuda"),
        ("trainer", "nccl", "test-trainer-nccl-cuda"),
        ("vision-encoders", "towers", "test-vision-encoders"),
        ("llava-model", "llava", "test-llava-model"),
    ] {
        let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args([
                "test",
                "--release",
                "--no-run",
                "--message-format=json",
                "--package",
                package,
                "--test",
                test,
            ])
            .current_dir(&root)
            .output()
            .map_err(|e| format!("cannot run cargo: {e}"))?;
        let text = String::from_utf8_lossy(&out.stdout);
        let exe = text
            .lines()
            .filter(|l| {
                l.contains("\"reason\":\"compiler-artifact\"")
                    && l.contains(&format!("\"name\":\"{test}\""))
            })
            .find_map(|l| {
                l.split("\"executable\":\"")
                    .nth(1)?
                    .split('"')
                    .next()
                    .map(str::to_string)
            })
            .ok_or_else(|| format!("no test binary for {package}/{test}"))?;
        copy(std::path::Path::new(&exe), &bin.join(name))?;
    }
    // The device tool carries at most 64 MiB: without their debug information the six
    // binaries come to about 40 MB.
    for entry in std::fs::read_dir(&bin).map_err(|e| format!("{}: {e}", bin.display()))? {
        let path = entry.map_err(|e| format!("{}: {e}", bin.display()))?.path();
        let status = Command::new("strip")
            .arg(&path)
            .status()
            .map_err(|e| format!("cannot run strip: {e}"))?;
        if !status.success() {
            return Err(format!("strip {} failed", path.display()));
        }
    }
    // The device tool carries at most 64 MiB with the working tree: the stripped binaries
    // (about 47 MB) travel as an xz archive (about 9 MB) that gpu-check.sh unpacks.
    let archive = root.join(".device-bin.tar.xz");
    let status = Command::new("tar")
        .arg("-cJf")
        .arg(&archive)
        .arg(".device-bin")
        .current_dir(&root)
        .status()
        .map_err(|e| format!("cannot run tar: {e}"))?;
    if !status.success() {
        return Err(format!("tar -cJf {} failed", archive.display()));
    }
    println!(
        "bundle ready in {}: carry `.device-bin.tar.xz` (ignored by git) and run \
         scripts/gpu-check.sh on the GPU machine, which unpacks it",
        archive.display()
    );
    Ok(())
}

fn copy(from: &std::path::Path, to: &std::path::Path) -> Result<(), String> {
    std::fs::copy(from, to)
        .map(|_| ())
        .map_err(|e| format!("{} -> {}: {e}", from.display(), to.display()))
}

/// Runs the `llava` binary (built on demand) from the workspace root.
fn llava(args: &[String]) -> Result<(), String> {
    let run = [
        "run",
        "--quiet",
        "--package",
        "llava",
        "--bin",
        "llava",
        "--",
    ];
    cargo(&[&run[..], strs(args).as_slice()].concat())
}

fn cargo(args: &[&str]) -> Result<(), String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(&cargo)
        .args(args)
        .current_dir(root())
        .status()
        .map_err(|e| format!("cannot run {cargo}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("`cargo {}` failed ({status})", args.join(" ")))
    }
}

fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

fn prepend(first: &str, rest: &[String]) -> Vec<String> {
    std::iter::once(first.to_string())
        .chain(rest.iter().cloned())
        .collect()
}
