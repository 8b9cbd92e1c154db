//! The server on the tiny fixture model, on 127.0.0.1 with an ephemeral port, driven over HTTP.

mod common;

use std::io::Read;
use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use serve::ServerConfig;

fn prompts() -> Vec<(String, bool, usize)> {
    (0..6)
        .map(|i| {
            (
                format!("Question {i}: what is {} plus {}?", i * 7, i + 3),
                i % 2 == 0,
                6 + i * 5,
            )
        })
        .collect()
}

/// Answers of concurrent requests (joining and leaving the batch at different steps) equal their
/// answers alone; greedy answers are deterministic.
#[test]
fn concurrent_answers_equal_answers_alone() {
    let server = start(common::config());
    let bodies: Vec<Value> = prompts()
        .iter()
        .map(|(text, image, max)| chat_body(text, *image, *max))
        .collect();
    let alone: Vec<(String, Value)> = bodies.iter().map(|b| complete(&server, b)).collect();
    for ((text, usage), (_, _, max)) in alone.iter().zip(prompts()) {
        assert!(!text.is_empty());
        assert_eq!(usage["completion_tokens"], json!(max), "{usage}");
    }
    for _round in 0..2 {
        let together: Vec<(String, Value)> = std::thread::scope(|s| {
            let handles: Vec<_> = bodies
                .iter()
                .map(|b| s.spawn(|| complete(&server, b)))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(together, alone);
    }
    assert!(
        metric(&server, "llava_decode_rows_total") > metric(&server, "llava_decode_steps_total")
    );
    assert_eq!(metric(&server, "llava_running_requests"), 0.0);
    server.shutdown().unwrap();
}

/// A streamed answer: the role first, text pieces, the finish reason, the usage chunk, `[DONE]`;
/// its text equals the whole answer's.
#[test]
fn streamed_text_equals_whole_answer() {
    let server = start(common::config());
    let body = chat_body("Describe the image.", true, 20);
    let (whole, usage) = complete(&server, &body);
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    streamed["stream_options"] = json!({"include_usage": true});
    let events = stream(&server, &streamed);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, whole);
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"], json!([]));
    assert_eq!(last["usage"], usage);
    let finish: Vec<&Value> = chunks
        .iter()
        .map(|c| &c["choices"][0]["finish_reason"])
        .filter(|f| !f.is_null())
        .collect();
    assert_eq!(finish, [&json!("length")]);
    assert_eq!(chunks[0]["object"], "chat.completion.chunk");
    server.shutdown().unwrap();
}

/// `stop` strings end the answer before them; seeded sampling repeats itself.
#[test]
fn stop_strings_and_seeded_sampling() {
    let server = start(common::config());
    let body = chat_body("Tell me a story.", false, 30);
    let (whole, _) = complete(&server, &body);
    let cut = whole
        .char_indices()
        .nth(whole.chars().count() / 2)
        .map_or(0, |c| c.0);
    let stop: String = whole[cut..].chars().take(3).collect();
    if !stop.trim().is_empty() {
        let mut stopped = body.clone();
        stopped["stop"] = json!([stop, "never-appears"]);
        let (text, _) = complete(&server, &stopped);
        let expected = &whole[..whole.find(&stop).unwrap()];
        assert_eq!(text, expected);
        let (status, answer) = post(&server, "/v1/chat/completions", &stopped.to_string(), None);
        assert_eq!(status, 200);
        assert_eq!(answer["choices"][0]["finish_reason"], "stop");
        // Streamed, the held-back text comes out the same.
        stopped["stream"] = json!(true);
        let events = stream(&server, &stopped);
        let text2: String = events
            .iter()
            .filter(|e| e.as_str() != "[DONE]")
            .filter_map(|e| {
                serde_json::from_str::<Value>(e).ok()?["choices"][0]["delta"]["content"]
                    .as_str()
                    .map(str::to_string)
            })
            .collect();
        assert_eq!(text2, expected);
    }
    let mut sampled = body.clone();
    sampled["temperature"] = json!(1.0);
    sampled["top_p"] = json!(0.9);
    sampled["seed"] = json!(7);
    assert_eq!(complete(&server, &sampled).0, complete(&server, &sampled).0);
    server.shutdown().unwrap();
}

fn assert_error(status: u16, body: &Value, expected: u16, what: &str) {
    assert_eq!(status, expected, "{what}: {body}");
    let error = &body["error"];
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{what}: {body}"
    );
    assert!(error["type"].is_string(), "{what}: {body}");
    assert!(
        error.get("param").is_some() && error.get("code").is_some(),
        "{what}: {body}"
    );
}

/// Each kind of bad input gets its 4xx with OpenAI's error object, and the server stays up.
#[test]
fn bad_inputs_are_4xx() {
    let dir = tempfile::tempdir().unwrap();
    let allowed = dir.path().join("allowed");
    std::fs::create_dir(&allowed).unwrap();
    std::fs::copy(image_path(), allowed.join("image.jpg")).unwrap();
    std::fs::write(
        dir.path().join("outside.jpg"),
        std::fs::read(image_path()).unwrap(),
    )
    .unwrap();
    let server = start(serve::ServerConfig {
        max_body_bytes: 256 << 10,
        max_image_pixels: 20_000,
        allow_local_files: Some(allowed.clone()),
        ..common::config()
    });
    let image = |url: &str| {
        json!({"messages": [{"role": "user", "content": [
            {"type": "text", "text": "hi"},
            {"type": "image_url", "image_url": {"url": url}},
        ]}], "max_tokens": 4})
        .to_string()
    };
    let bomb = {
        // 200 x 200 pixels, over the limit of 20,000 (the fixture image has 160 x 96).
        let mut buffer = Vec::new();
        let encoder = image::codecs::png::PngEncoder::new(&mut buffer);
        let img = image::RgbImage::new(200, 200);
        image::ImageEncoder::write_image(
            encoder,
            img.as_raw(),
            200,
            200,
            image::ExtendedColorType::Rgb8,
        )
        .unwrap();
        use base64::Engine as _;
        format!(
            "data:image/png;base64,{}",
            base64::engine::general_purpose::STANDARD.encode(buffer)
        )
    };
    let cases: Vec<(String, u16, &str)> = vec![
        ("{not json".into(), 400, "malformed JSON"),
        ("[1, 2]".into(), 400, "not an object"),
        (json!({"max_tokens": 3}).to_string(), 400, "no messages"),
        (
            json!({"messages": 5}).to_string(),
            400,
            "messages of the wrong type",
        ),
        (
            json!({"messages": [{"role": "user", "content": 3}]}).to_string(),
            400,
            "content of the wrong type",
        ),
        (
            json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": "many"})
                .to_string(),
            400,
            "max_tokens of the wrong type",
        ),
        (json!({"messages": []}).to_string(), 400, "empty messages"),
        (
            json!({"messages": [{"role": "tool", "content": "hi"}]}).to_string(),
            400,
            "unknown role",
        ),
        (
            json!({"messages": [{"role": "user", "content": "hi"}], "temperature": 9}).to_string(),
            400,
            "temperature",
        ),
        (
            json!({"messages": [{"role": "user", "content": "hi"}], "n": 3}).to_string(),
            400,
            "n",
        ),
        (
            json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}).to_string(),
            400,
            "max_tokens 0",
        ),
        (
            json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 100000})
                .to_string(),
            400,
            "context exceeded",
        ),
        (
            json!({"messages": [{"role": "user", "content": "x ".repeat(400)}]}).to_string(),
            400,
            "prompt too long",
        ),
        (image("http://127.0.0.1:1/a.png"), 400, "http URL"),
        (image("https://example.com/a.png"), 400, "https URL"),
        (
            image("data:image/png;base64,!!!notbase64"),
            400,
            "bad base64",
        ),
        (
            image("data:image/png;base64,aGVsbG8gd29ybGQ="),
            400,
            "not an image",
        ),
        (image(&bomb), 400, "too many pixels"),
        (
            image("../outside.jpg"),
            400,
            "escaping the allowed directory",
        ),
        (
            image(&format!("file://{}/../outside.jpg", allowed.display())),
            400,
            "escaping via file://",
        ),
        (image("/etc/passwd"), 400, "a path outside"),
        (
            format!(
                "{{\"messages\": [{{\"role\": \"user\", \"content\": \"{}\"}}]}}",
                "a".repeat(300 << 10)
            ),
            413,
            "body too large",
        ),
    ];
    for (body, expected, what) in &cases {
        let (status, answer) = post(&server, "/v1/chat/completions", body, None);
        assert_error(status, &answer, *expected, what);
    }
    let (status, answer) = post(&server, "/v1/nothing", "{}", None);
    assert_error(status, &answer, 404, "unknown endpoint");
    // A file under the allowed directory is read.
    let (status, answer) = post(&server, "/v1/chat/completions", &image("image.jpg"), None);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(get(&server, "/health", None).0, 200);
    assert!(metric(&server, "llava_requests_total{status=\"400\"}") >= 20.0);
    server.shutdown().unwrap();
}

/// With every slot and the queue taken, a request gets 429 with Retry-After.
#[test]
fn a_full_queue_is_429() {
    let server = start(serve::ServerConfig {
        max_batch: 1,
        max_queue: 1,
        step_delay: Duration::from_millis(10),
        ..common::config()
    });
    let body = chat_body("Count to many.", false, 60).to_string();
    let statuses: Vec<(u16, Option<String>)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..5)
            .map(|i| {
                let (server, body) = (&server, &body);
                s.spawn(move || {
                    std::thread::sleep(Duration::from_millis(50 * i));
                    let mut response = agent()
                        .post(format!("{}/v1/chat/completions", server.url()))
                        .header("Content-Type", "application/json")
                        .send(body.as_str())
                        .unwrap();
                    let retry = response
                        .headers()
                        .get("retry-after")
                        .map(|v| v.to_str().unwrap().to_string());
                    let _ = response.body_mut().read_to_string();
                    (response.status().as_u16(), retry)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let ok = statuses.iter().filter(|s| s.0 == 200).count();
    let busy: Vec<_> = statuses.iter().filter(|s| s.0 == 429).collect();
    assert!(ok >= 2, "{statuses:?}");
    assert!(!busy.is_empty(), "{statuses:?}");
    assert!(
        busy.iter().all(|s| s.1.as_deref() == Some("1")),
        "{statuses:?}"
    );
    assert_eq!(get(&server, "/health", None).0, 200);
    server.shutdown().unwrap();
}

/// A client that goes away mid-stream frees its slot at once.
#[test]
fn a_dropped_stream_frees_its_slot() {
    let server = start(serve::ServerConfig {
        step_delay: Duration::from_millis(20),
        ..common::config()
    });
    let mut body = chat_body("Talk for a long time.", false, 200);
    body["stream"] = json!(true);
    let response = agent()
        .post(format!("{}/v1/chat/completions", server.url()))
        .header("Content-Type", "application/json")
        .send(body.to_string())
        .unwrap();
    let mut reader = response.into_body().into_reader();
    let mut first = [0u8; 256];
    let n = reader.read(&mut first).unwrap();
    assert!(n > 0);
    assert!(eventually(Duration::from_secs(5), || metric(
        &server,
        "llava_running_requests"
    ) == 1.0));
    drop(reader);
    assert!(
        eventually(Duration::from_secs(5), || metric(
            &server,
            "llava_running_requests"
        ) == 0.0),
        "the slot was not freed"
    );
    assert_eq!(metric(&server, "llava_requests_cancelled_total"), 1.0);
    assert!(metric(&server, "llava_generation_tokens_total") < 150.0);
    // The freed slot serves the next request.
    let (text, _) = complete(&server, &chat_body("hi", false, 3));
    assert!(!text.is_empty());
    server.shutdown().unwrap();
}

/// With --api-key every endpoint but /health wants the bearer token.
#[test]
fn bearer_auth() {
    let server = start(serve::ServerConfig {
        api_key: Some("sekret".into()),
        ..common::config()
    });
    let body = chat_body("hi", false, 2).to_string();
    for key in [None, Some("wrong")] {
        let (status, answer) = post(&server, "/v1/chat/completions", &body, key);
        assert_error(status, &answer, 401, "no or wrong key");
        assert_eq!(get(&server, "/v1/models", key).0, 401);
        assert_eq!(get(&server, "/metrics", key).0, 401);
    }
    assert_eq!(
        post(&server, "/v1/chat/completions", &body, Some("sekret")).0,
        200
    );
    let (status, models) = get(&server, "/v1/models", Some("sekret"));
    assert_eq!(status, 200);
    let models: Value = serde_json::from_str(&models).unwrap();
    assert_eq!(models["data"][0]["id"], "model");
    assert_eq!(get(&server, "/health", None).0, 200);
    server.shutdown().unwrap();
}

/// Shutting down finishes the request in flight, then refuses connections.
#[test]
fn shutdown_finishes_requests_in_flight() {
    let mut server = start(serve::ServerConfig {
        step_delay: Duration::from_millis(10),
        ..common::config()
    });
    let url = server.url();
    let body = chat_body("A long answer, please.", false, 80);
    let in_flight = std::thread::spawn(move || {
        let mut response = agent()
            .post(format!("{url}/v1/chat/completions"))
            .header("Content-Type", "application/json")
            .send(body.to_string())
            .unwrap();
        let status = response.status().as_u16();
        let answer: Value =
            serde_json::from_str(&response.body_mut().read_to_string().unwrap()).unwrap();
        (status, answer)
    });
    assert!(eventually(Duration::from_secs(10), || metric(
        &server,
        "llava_running_requests"
    ) == 1.0));
    server.begin_shutdown();
    let (status, answer) = in_flight.join().unwrap();
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["usage"]["completion_tokens"], 80);
    let refused = agent().get(format!("{}/health", server.url())).call();
    assert!(refused.is_err() || refused.unwrap().status().as_u16() == 503);
    server.shutdown().unwrap();
}

/// `/metrics` names what vLLM/TGI-style dashboards read.
#[test]
fn metrics_are_prometheus_text() {
    let server = start(common::config());
    complete(&server, &chat_body("hi", false, 3));
    // Read once, right after the answer: the engine takes a request out of the running gauge
    // before its last event goes out (a race once, when the gauge was only stored per step).
    let (status, text) = get(&server, "/metrics", None);
    assert_eq!(status, 200);
    for name in [
        "llava_requests_total{status=\"200\"} 1",
        "llava_prompt_tokens_total",
        "llava_generation_tokens_total 3",
        "llava_queue_depth 0",
        "llava_running_requests 0",
        "llava_batch_slots 4",
        "llava_batch_occupancy 0",
        "llava_time_to_first_token_seconds_count 1",
        "# TYPE llava_time_to_first_token_seconds histogram",
    ] {
        assert!(text.contains(name), "{name} missing from\n{text}");
    }
    server.shutdown().unwrap();
}

/// A server that loads its model quantized answers, and refuses `explain` (which needs the dense
/// weights) with a 400 while staying up; so does one given a directory saved quantized (by
/// `llava quantize`), which answers as quantizing at load does.
#[test]
fn quantized_server_answers_and_refuses_explain() {
    let saved = tempfile::tempdir().unwrap();
    let model = llava_model::LlavaModel::from_pretrained_quantized(
        model_dir(),
        tch::Device::Cpu,
        tch::Kind::Float,
        Some(foundation::quant::Quantization::Int4 { group: 32 }),
    )
    .unwrap();
    let tokenizer = gemma_lm::GemmaTokenizer::from_file(model_dir()).unwrap();
    model
        .save_pretrained(saved.path(), Some(&tokenizer))
        .unwrap();
    drop(model);
    let mut answers = Vec::new();
    for how in ["int8", "int4", "saved int4"] {
        let server = start(match how {
            "saved int4" => ServerConfig {
                model: saved.path().to_path_buf(),
                ..common::config()
            },
            _ => ServerConfig {
                quantize: Some(how.into()),
                ..common::config()
            },
        });
        let (text, usage) = complete(&server, &chat_body("Describe the image.", true, 7));
        assert!(!text.is_empty(), "{how}");
        assert_eq!(usage["completion_tokens"], json!(7), "{how}: {usage}");
        let mut body = chat_body("Describe the image.", true, 4);
        body["explain"] = json!(true);
        let (status, answer) = post(&server, "/v1/chat/completions", &body.to_string(), None);
        assert_error(status, &answer, 400, how);
        assert!(
            answer["error"]["message"]
                .as_str()
                .unwrap()
                .contains("quantized")
        );
        let (text_again, _) = complete(&server, &chat_body("Describe the image.", true, 7));
        assert_eq!(text_again, text, "{how}: greedy answers are repeatable");
        answers.push(text);
        server.shutdown().unwrap();
    }
    assert_eq!(
        answers[2], answers[1],
        "the saved int4 model answers as int4 at load"
    );
}
