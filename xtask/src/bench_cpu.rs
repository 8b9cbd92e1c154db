//! `cargo xtask bench-cpu`: our CPU decoding set beside llama.cpp's on the same model, issue 29's
//! comparison as a command.
//!
//! A random-weight Gemma with Gemma-2B's exact shapes (`scripts/make_random_gemma.py`,
//! transformers' initialisation, bf16) is written once under `out/bench-cpu/`, exported by
//! `llava export-gguf` as bf16, Q8_0 and Q4_0 files and by `llava quantize` as int8 and int4
//! directories, and then each pair runs in fresh processes, interleaved round by round: ours in
//! bf16 / int8 / int4 (`llava bench-text`, release build) and
//! llama.cpp in bf16 / Q8_0 / Q4_0 (llama-cpp-python 0.3.36, `scripts/llama_cpp_bench.py`), each
//! loading the weights into memory (not mapped), one prompt of random ids, greedy decoding.
//! Prints a table of medians over the rounds and writes every run to
//! `out/bench-cpu/report.json`.

use std::path::Path;
use std::process::Command;

use crate::{build_release_llava, output_of, reference_python, root};

/// The three pairs: our weights (and the form `llava quantize` saves them in), llama.cpp's
/// file type.
const PAIRS: [(&str, Option<&str>, &str); 3] = [
    ("bf16", None, "bf16"),
    ("int8", Some("int8"), "q8_0"),
    ("int4", Some("int4"), "q4_0"),
];

/// The fields each run reports (`llava bench-text`'s JSON, and the script's).
const FIELDS: [&str; 5] = [
    "load_s",
    "peak_rss_mib",
    "rss_mib",
    "prefill_tokens_per_s",
    "decode_tokens_per_s",
];

/// Runs it with `args`: `--prompt-len N` (128), `--new-tokens N` (128), `--rounds N` (3),
/// `--threads N` (2).
pub fn run(args: &[String]) -> Result<(), String> {
    let option = |name: &str, default: usize| -> Result<usize, String> {
        match args.iter().position(|a| a == name) {
            Some(i) => args
                .get(i + 1)
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| format!("{name} takes a number")),
            None => Ok(default),
        }
    };
    let prompt_len = option("--prompt-len", 128)?;
    let new_tokens = option("--new-tokens", 128)?;
    let rounds = option("--rounds", 3)?.max(1);
    let threads = option("--threads", 2)?;
    let root = root();
    let out = root.join("out/bench-cpu");
    std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    let python = python_with_llama_cpp()?;
    let model = out.join("gemma-2b");
    if !model.join("model.safetensors").exists() {
        eprintln!(
            "xtask: writing a random Gemma-2B-shaped model to {}",
            model.display()
        );
        run_ok(
            Command::new(&python)
                .arg(root.join("scripts/make_random_gemma.py"))
                .arg(&model),
        )?;
    }
    build_release_llava()?;
    let llava = root.join("target/release/llava");
    for (_, _, file_type) in PAIRS {
        if !gguf(&out, file_type).exists() {
            run_ok(
                Command::new(&llava)
                    .args(["export-gguf", "--type", file_type, "--model"])
                    .arg(&model)
                    .arg("--output")
                    .arg(&out),
            )?;
        }
    }
    // Ours quantized once and saved, as llama.cpp's GGUF files are: both load codes.
    for (_, quantize, _) in PAIRS {
        if let Some(q) = quantize {
            // `llava quantize`'s weights file (foundation::quant::QUANTIZED_WEIGHTS).
            if !quantized(&out, q)
                .join("model-quantized.safetensors")
                .exists()
            {
                run_ok(
                    Command::new(&llava)
                        .args(["quantize", "--dtype", "bf16", "--quantize", q, "--model"])
                        .arg(&model)
                        .arg("--output")
                        .arg(quantized(&out, q)),
                )?;
            }
        }
    }
    let (prompt, new, threads_s) = (
        prompt_len.to_string(),
        new_tokens.to_string(),
        threads.to_string(),
    );
    let mut runs: Vec<(String, String, String)> = Vec::new(); // (engine, weights, json)
    for round in 1..=rounds {
        for (ours, quantize, file_type) in PAIRS {
            eprintln!("xtask: round {round}/{rounds}: ours {ours}, llama.cpp {file_type}");
            let mut command = Command::new(&llava);
            command
                .args(["bench-text", "--device", "cpu", "--dtype", "bf16"])
                .args(["--prompt-len", &prompt, "--new-tokens", &new, "--model"])
                .arg(quantize.map_or(model.clone(), |q| quantized(&out, q)))
                .env("OMP_NUM_THREADS", &threads_s);
            runs.push((
                "ours".into(),
                ours.into(),
                last_line(output_of(&mut command)?),
            ));
            let theirs = output_of(
                Command::new(&python)
                    .arg(root.join("scripts/llama_cpp_bench.py"))
                    .arg(gguf(&out, file_type))
                    .args([file_type, &prompt, &new, &threads_s]),
            )?;
            runs.push(("llama.cpp".into(), file_type.into(), last_line(theirs)));
        }
    }
    let median = |engine: &str, weights: &str, field: &str| -> Option<f64> {
        let mut values: Vec<f64> = runs
            .iter()
            .filter(|(e, w, _)| e == engine && w == weights)
            .filter_map(|(_, _, json)| number(json, field))
            .collect();
        values.sort_by(f64::total_cmp);
        values.get(values.len() / 2).copied()
    };
    let cpu = cpu_name();
    println!(
        "\n{cpu}, {threads} threads, {prompt_len}-token prompt, {new_tokens} new tokens, \
         medians of {rounds} round(s)\n"
    );
    println!(
        "| engine | weights | load s | peak MiB | resident MiB | prefill tok/s | decode tok/s | decode vs llama.cpp | prefill vs llama.cpp |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    let fmt = |v: Option<f64>, digits: usize| v.map_or("-".into(), |v| format!("{v:.digits$}"));
    for (ours, _, file_type) in PAIRS {
        for (engine, weights) in [("llama.cpp", file_type), ("ours", ours)] {
            let m = |f: &str| median(engine, weights, f);
            let ratio = |f: &str| match (m(f), median("llama.cpp", file_type, f)) {
                (Some(a), Some(b)) if engine == "ours" && b > 0.0 => format!("{:.2}x", a / b),
                _ => String::new(),
            };
            println!(
                "| {engine} | {weights} | {} | {} | {} | {} | {} | {} | {} |",
                fmt(m("load_s"), 1),
                fmt(m("peak_rss_mib"), 0),
                fmt(m("rss_mib"), 0),
                fmt(m("prefill_tokens_per_s"), 1),
                fmt(m("decode_tokens_per_s"), 2),
                ratio("decode_tokens_per_s"),
                ratio("prefill_tokens_per_s"),
            );
        }
    }
    let report = format!(
        "{{\"machine\": {cpu:?}, \"threads\": {threads}, \"prompt_len\": {prompt_len}, \
         \"new_tokens\": {new_tokens}, \"rounds\": {rounds}, \"fields\": {FIELDS:?}, \"runs\": [{}]}}",
        runs.iter()
            .map(|(_, _, json)| json.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let file = out.join("report.json");
    std::fs::write(&file, report).map_err(|e| format!("{}: {e}", file.display()))?;
    eprintln!("xtask: every run in {}", file.display());
    Ok(())
}

/// The directory `llava quantize` writes the model to in form `how`.
fn quantized(out: &Path, how: &str) -> std::path::PathBuf {
    out.join(format!("gemma-2b-{how}"))
}

/// The GGUF file of `file_type` that `llava export-gguf` writes for the model.
fn gguf(out: &Path, file_type: &str) -> std::path::PathBuf {
    out.join(format!("gemma-2b-{file_type}.gguf"))
}

/// The torch environment's Python with transformers and llama-cpp-python 0.3.36 (built from
/// source on first use: minutes).
fn python_with_llama_cpp() -> Result<String, String> {
    let python = reference_python()?;
    let has = Command::new(&python)
        .args([
            "-c",
            "import llama_cpp; assert llama_cpp.__version__ == '0.3.36'",
        ])
        .status()
        .is_ok_and(|s| s.success());
    if !has {
        eprintln!("xtask: installing llama-cpp-python 0.3.36 (built from source) into {python}");
        run_ok(Command::new(&python).args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "llama-cpp-python==0.3.36",
        ]))?;
    }
    Ok(python)
}

fn run_ok(command: &mut Command) -> Result<(), String> {
    let status = command
        .current_dir(root())
        .status()
        .map_err(|e| format!("cannot run {command:?}: {e}"))?;
    if !status.success() {
        return Err(format!("{command:?} failed ({status})"));
    }
    Ok(())
}

fn last_line(text: String) -> String {
    text.lines().last().unwrap_or_default().to_string()
}

/// The number after `"key":` in a flat JSON object.
pub fn number(json: &str, key: &str) -> Option<f64> {
    let at = json.find(&format!("\"{key}\":"))? + key.len() + 3;
    let rest = &json[at..];
    let end = rest.find([',', '}']).unwrap_or(rest.len());
    rest[..end].trim().parse().ok()
}

/// The CPU's model name (Linux), for the table's caption.
fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "this machine".into())
}

#[cfg(test)]
mod tests {
    use super::number;

    #[test]
    fn numbers_are_read_from_a_flat_object() {
        let json =
            r#"{"engine": "ours", "load_s": 3.5, "rss_mib": null, "decode_tokens_per_s":12}"#;
        assert_eq!(number(json, "load_s"), Some(3.5));
        assert_eq!(number(json, "decode_tokens_per_s"), Some(12.0));
        assert_eq!(number(json, "rss_mib"), None);
        assert_eq!(number(json, "missing"), None);
    }
}
