//! Helpers shared by the server tests: a server on the tiny fixture model on loopback, and a
//! plain HTTP client.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};
use serve::{RunningServer, ServerConfig};

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The tiny random-weight LLaVA with its tokenizer.
pub fn model_dir() -> PathBuf {
    root().join("fixtures/hf-parity/llava-clip/model")
}

pub fn image_path() -> PathBuf {
    root().join("fixtures/hf-parity/image-processing/model/image.jpg")
}

pub fn image_data_url() -> String {
    let bytes = std::fs::read(image_path()).expect("the fixture image");
    format!(
        "data:image/jpeg;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

/// A server config for the fixture model on 127.0.0.1 with an ephemeral port, on CPU in f32.
pub fn config() -> ServerConfig {
    ServerConfig {
        model: model_dir(),
        host: "127.0.0.1".into(),
        port: 0,
        device: "cpu".into(),
        dtype: Some("f32".into()),
        max_batch: 4,
        max_queue: 64,
        ..ServerConfig::default()
    }
}

pub fn start(config: ServerConfig) -> RunningServer {
    serve::spawn(config).expect("the server starts")
}

/// An HTTP client that returns error statuses as responses, with a 120 s limit per request.
pub fn agent() -> ureq::Agent {
    agent_with_timeout(Duration::from_secs(120))
}

/// An HTTP client that returns error statuses as responses, with `limit` per request.
pub fn agent_with_timeout(limit: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(limit))
        .build()
        .into()
}

/// A response's body as text (up to 64 MiB; empty when it cannot be read).
pub fn body_text(response: &mut ureq::http::Response<ureq::Body>) -> String {
    response
        .body_mut()
        .with_config()
        .limit(64 << 20)
        .read_to_string()
        .unwrap_or_default()
}

/// POSTs a JSON body (any string) and returns the status and the parsed body (or the raw text).
pub fn post(server: &RunningServer, path: &str, body: &str, key: Option<&str>) -> (u16, Value) {
    let mut request = agent()
        .post(format!("{}{path}", server.url()))
        .header("Content-Type", "application/json");
    if let Some(key) = key {
        request = request.header("Authorization", format!("Bearer {key}"));
    }
    let mut response = request.send(body).expect("the server answers");
    let status = response.status().as_u16();
    let text = body_text(&mut response);
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

pub fn get(server: &RunningServer, path: &str, key: Option<&str>) -> (u16, String) {
    let mut request = agent().get(format!("{}{path}", server.url()));
    if let Some(key) = key {
        request = request.header("Authorization", format!("Bearer {key}"));
    }
    let mut response = request.call().expect("the server answers");
    let status = response.status().as_u16();
    (
        status,
        response.body_mut().read_to_string().unwrap_or_default(),
    )
}

/// A chat request about `text`, with the fixture image when `image`.
pub fn chat_body(text: &str, image: bool, max_tokens: usize) -> Value {
    let content = if image {
        json!([
            {"type": "text", "text": text},
            {"type": "image_url", "image_url": {"url": image_data_url()}},
        ])
    } else {
        json!(text)
    };
    json!({
        "model": "tiny",
        "messages": [{"role": "user", "content": content}],
        "max_tokens": max_tokens,
    })
}

/// The answer's text and its usage, asserting a 200.
pub fn complete(server: &RunningServer, body: &Value) -> (String, Value) {
    let (status, answer) = post(server, "/v1/chat/completions", &body.to_string(), None);
    assert_eq!(status, 200, "{answer}");
    let text = answer["choices"][0]["message"]["content"]
        .as_str()
        .expect("content")
        .to_string();
    (text, answer["usage"].clone())
}

/// The `data:` payloads of a streamed answer, read until `[DONE]`.
pub fn stream(server: &RunningServer, body: &Value) -> Vec<String> {
    let response = agent()
        .post(format!("{}/v1/chat/completions", server.url()))
        .header("Content-Type", "application/json")
        .send(body.to_string())
        .expect("the server answers");
    assert_eq!(response.status().as_u16(), 200);
    let reader = BufReader::new(response.into_body().into_reader());
    let mut events = Vec::new();
    for line in reader.lines().take(10_000) {
        let line = line.expect("a line");
        if let Some(data) = line.strip_prefix("data: ") {
            events.push(data.to_string());
            if data == "[DONE]" {
                break;
            }
        }
    }
    events
}

/// The value of a metric line `name value` in `/metrics`.
pub fn metric(server: &RunningServer, name: &str) -> f64 {
    let (status, text) = get(server, "/metrics", None);
    assert_eq!(status, 200);
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no metric {name} in\n{text}"))
}

/// Polls `check` every 20 ms until it holds or `timeout` passes.
pub fn eventually(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    check()
}
