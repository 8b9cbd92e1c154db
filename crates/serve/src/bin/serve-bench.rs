//! `serve-bench` (`cargo xtask bench-serve`): throughput and latency of the server on loopback,
//! with one client at a time and with N concurrent clients. Prints one JSON object.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::{Value, json};

/// Measure `llava serve` with 1 and with N concurrent streaming clients.
#[derive(Debug, Parser)]
struct Args {
    /// LLaVA model directory (default: the tiny fixture model).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Concurrent clients of the second phase.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Requests per client.
    #[arg(long, default_value_t = 8)]
    requests: usize,
    /// Tokens per answer.
    #[arg(long, default_value_t = 64)]
    max_tokens: usize,
    /// KV-cache slots of the server (default: the number of clients).
    #[arg(long)]
    max_batch: Option<usize>,
    /// cpu, cuda or auto.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Seconds after which a phase stops starting requests.
    #[arg(long, default_value_t = 300)]
    time_limit: u64,
}

/// One request's measurements.
struct Sample {
    latency: f64,
    ttft: f64,
    tokens: usize,
}

fn request(agent: &ureq::Agent, url: &str, body: &Value) -> Result<Sample, String> {
    let start = Instant::now();
    let response = agent
        .post(url)
        .header("Content-Type", "application/json")
        .send(body.to_string())
        .map_err(|e| e.to_string())?;
    if response.status().as_u16() != 200 {
        return Err(format!("status {}", response.status()));
    }
    let mut ttft = None;
    let mut tokens = 0;
    for line in BufReader::new(response.into_body().into_reader())
        .lines()
        .take(100_000)
    {
        let line = line.map_err(|e| e.to_string())?;
        let Some(data) = line.strip_prefix("data: ") else {
            continue;
        };
        if data == "[DONE]" {
            break;
        }
        let chunk: Value = serde_json::from_str(data).map_err(|e| e.to_string())?;
        if ttft.is_none()
            && chunk["choices"][0]["delta"]["content"]
                .as_str()
                .is_some_and(|c| !c.is_empty())
        {
            ttft = Some(start.elapsed().as_secs_f64());
        }
        if let Some(n) = chunk["usage"]["completion_tokens"].as_u64() {
            tokens = n as usize;
        }
    }
    let latency = start.elapsed().as_secs_f64();
    Ok(Sample {
        latency,
        ttft: ttft.unwrap_or(latency),
        tokens,
    })
}

fn percentile(values: &mut [f64], p: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * (values.len() - 1) as f64).round() as usize;
    values[rank.min(values.len() - 1)]
}

fn phase(url: &str, clients: usize, requests: usize, max_tokens: usize, limit: Duration) -> Value {
    let start = Instant::now();
    let results: Vec<Result<Sample, String>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..clients)
            .map(|c| {
                s.spawn(move || {
                    let agent: ureq::Agent = ureq::Agent::config_builder()
                        .http_status_as_error(false)
                        .timeout_global(Some(Duration::from_secs(600)))
                        .build()
                        .into();
                    let mut out = Vec::new();
                    for r in 0..requests {
                        if start.elapsed() > limit {
                            break;
                        }
                        let body = json!({
                            "messages": [{"role": "user", "content": format!("Client {c}, request {r}: tell me about the number {}.", c * 1000 + r)}],
                            "max_tokens": max_tokens,
                            "stream": true,
                            "stream_options": {"include_usage": true},
                        });
                        out.push(request(&agent, url, &body));
                    }
                    out
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect()
    });
    let seconds = start.elapsed().as_secs_f64();
    let errors = results.iter().filter(|r| r.is_err()).count();
    let samples: Vec<Sample> = results.into_iter().filter_map(Result::ok).collect();
    let tokens: usize = samples.iter().map(|s| s.tokens).sum();
    let mut latency: Vec<f64> = samples.iter().map(|s| s.latency).collect();
    let mut ttft: Vec<f64> = samples.iter().map(|s| s.ttft).collect();
    json!({
        "clients": clients,
        "requests": samples.len(),
        "errors": errors,
        "seconds": seconds,
        "requests_per_s": samples.len() as f64 / seconds,
        "generated_tokens_per_s": tokens as f64 / seconds,
        "latency_p50_s": percentile(&mut latency, 50.0),
        "latency_p99_s": percentile(&mut latency, 99.0),
        "ttft_p50_s": percentile(&mut ttft, 50.0),
    })
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let model = args.model.clone().unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/hf-parity/llava-clip/model")
    });
    let max_batch = args.max_batch.unwrap_or(args.clients.max(1));
    let server = match serve::spawn(serve::ServerConfig {
        model: model.clone(),
        host: "127.0.0.1".into(),
        port: 0,
        device: args.device.clone(),
        max_batch,
        max_queue: args.clients * 2 + 16,
        ..serve::ServerConfig::default()
    }) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("serve-bench: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let url = format!("{}/v1/chat/completions", server.url());
    let limit = Duration::from_secs(args.time_limit);
    // Warm-up.
    let _ = phase(&url, 1, 2, 8, limit);
    let single = phase(
        &url,
        1,
        args.requests.max(args.clients.min(16)),
        args.max_tokens,
        limit,
    );
    let concurrent = phase(&url, args.clients, args.requests, args.max_tokens, limit);
    let ratio = |key: &str| {
        concurrent[key].as_f64().unwrap_or(0.0) / single[key].as_f64().unwrap_or(f64::NAN)
    };
    let report = json!({
        "model": model.display().to_string(),
        "device": args.device,
        "max_batch": max_batch,
        "max_tokens": args.max_tokens,
        "single_client": single,
        "concurrent": concurrent,
        "throughput_ratio_tokens": ratio("generated_tokens_per_s"),
        "throughput_ratio_requests": ratio("requests_per_s"),
    });
    println!(
        "{}",
        serde_json::to_string_pretty(&report).unwrap_or_default()
    );
    let _ = server.shutdown();
    std::process::ExitCode::SUCCESS
}
