//! `llava serve` answers as `llava generate` does: the same prompt (chat template, `<image>`
//! expanded) and the same greedy tokens, through the server's continuous batching.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use llava::chat::ImageChat;
use llava::gemma_lm::{GenerationConfig, Message};
use serde_json::{Value, json};

fn fixture(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(path)
}

/// A server on the CPU in f32 for `model`, on a free loopback port.
fn cpu_config(model: &Path) -> serve::ServerConfig {
    serve::ServerConfig {
        model: model.to_path_buf(),
        host: "127.0.0.1".into(),
        port: 0,
        device: "cpu".into(),
        dtype: Some("f32".into()),
        ..serve::ServerConfig::default()
    }
}

/// An HTTP client that returns error statuses as responses.
fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into()
}

/// The file at `path` as a `data:` URL of type `mime`.
fn data_url(path: &Path, mime: &str) -> String {
    format!(
        "data:{mime};base64,{}",
        base64::engine::general_purpose::STANDARD.encode(std::fs::read(path).unwrap())
    )
}

/// POSTs `body` to the server's chat completions: the status and the JSON answer.
fn post_chat(agent: &ureq::Agent, server: &serve::RunningServer, body: &Value) -> (u16, Value) {
    let mut response = agent
        .post(format!("{}/v1/chat/completions", server.url()))
        .header("Content-Type", "application/json")
        .send(body.to_string())
        .unwrap();
    let status = response.status().as_u16();
    let text = response.body_mut().read_to_string().unwrap();
    (status, serde_json::from_str(&text).unwrap())
}

#[test]
fn greedy_answers_equal_llava_generate() {
    let model = fixture("fixtures/hf-parity/llava-clip/model");
    let image = fixture("fixtures/hf-parity/image-processing/model/image.jpg");
    let chat = ImageChat::open(
        &model,
        std::slice::from_ref(&image),
        tch::Device::Cpu,
        tch::Kind::Float,
        &Default::default(),
    )
    .unwrap();
    let server = serve::spawn(serve::ServerConfig {
        max_batch: 4,
        ..cpu_config(&model)
    })
    .unwrap();
    let agent = agent();
    let url = data_url(&image, "image/jpeg");
    let questions = ["What is in the image?", "  Describe it.  ", "Colour?"];
    // What `llava generate --max-new-tokens N` prints (ImageChat::answer, greedy).
    let expected: Vec<String> = questions
        .iter()
        .enumerate()
        .map(|(i, q)| {
            let config = GenerationConfig {
                max_new_tokens: 10 + 7 * i,
                temperature: Some(0.0),
                ..GenerationConfig::default()
            };
            chat.answer(&[Message::user(*q)], &config, |_| {})
                .unwrap()
                .0
        })
        .collect();
    let prompt_lens: Vec<usize> = questions
        .iter()
        .map(|q| chat.prompt(&[Message::user(*q)]).unwrap().len())
        .collect();
    let answers: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = questions
            .iter()
            .enumerate()
            .map(|(i, q)| {
                let (agent, url, server) = (&agent, &url, &server);
                let expected_prompt = prompt_lens[i];
                s.spawn(move || {
                    let body = json!({
                        "messages": [{"role": "user", "content": [
                            {"type": "text", "text": q},
                            {"type": "image_url", "image_url": {"url": url}},
                        ]}],
                        "max_tokens": 10 + 7 * i,
                    });
                    let (status, answer) = post_chat(agent, server, &body);
                    assert_eq!(status, 200);
                    let prompt_tokens = answer["usage"]["prompt_tokens"].as_u64().unwrap();
                    assert_eq!(prompt_tokens as usize, expected_prompt);
                    answer["choices"][0]["message"]["content"]
                        .as_str()
                        .unwrap()
                        .to_string()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    // `llava generate` trims the decoded answer.
    let trimmed: Vec<String> = answers.iter().map(|a| a.trim().to_string()).collect();
    assert_eq!(trimmed, expected);
    server.shutdown().unwrap();
}

/// A Gemma 3 VLM trained a few steps by `llava train`, its `preprocessor_config.json` switched to
/// pan-and-scan: the server writes each image's crops into the prompt and answers two images as
/// `llava generate` does (whose prompt and pixels the hf_families test holds to transformers').
#[test]
fn a_gemma3_vlm_is_served_several_images_with_their_crops_as_generate_answers() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_llava"))
        .args([
            "train",
            "--preset",
            "tiny-gemma3-vlm",
            "--stage",
            "2",
            "--skip-pretraining",
            "--synthetic-images",
            "24",
            "--max-steps",
            "20",
            "--output",
        ])
        .arg(&out)
        .output()
        .unwrap();
    assert!(status.status.success(), "{status:?}");
    let model = out.join("model");
    let file = model.join("preprocessor_config.json");
    let mut processor: Value =
        serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    processor["do_pan_and_scan"] = json!(true);
    std::fs::write(&file, processor.to_string()).unwrap();

    // A long image (three crops of 267 x 260) and a square one.
    let wide = tmp.path().join("wide.png");
    image::RgbImage::from_fn(800, 260, |x, y| {
        image::Rgb([(x % 256) as u8, (y % 256) as u8, ((x + 2 * y) % 256) as u8])
    })
    .save(&wide)
    .unwrap();
    let square = tmp.path().join("square.png");
    image::RgbImage::from_fn(48, 48, |x, _| image::Rgb([200, (x * 5) as u8, 30]))
        .save(&square)
        .unwrap();
    let images = [wide, square];
    let chat = ImageChat::open(
        &model,
        &images,
        tch::Device::Cpu,
        tch::Kind::Float,
        &Default::default(),
    )
    .unwrap();
    assert_eq!(chat.crops(), [3, 0]);
    let question = "Which one is wider?";
    let config = GenerationConfig {
        max_new_tokens: 12,
        temperature: Some(0.0),
        ..GenerationConfig::default()
    };
    let expected = chat
        .answer(&[Message::user(question)], &config, |_| {})
        .unwrap()
        .0;
    let prompt_len = chat.prompt(&[Message::user(question)]).unwrap().len();

    let server = serve::spawn(cpu_config(&model)).unwrap();
    let url = |path: &Path| data_url(path, "image/png");
    let body = json!({
        "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": url(&images[0])}},
            {"type": "image_url", "image_url": {"url": url(&images[1])}},
            {"type": "text", "text": question},
        ]}],
        "max_tokens": 12,
    });
    let (status, answer) = post_chat(&agent(), &server, &body);
    assert_eq!(status, 200);
    assert_eq!(
        answer["usage"]["prompt_tokens"].as_u64().unwrap() as usize,
        prompt_len
    );
    let text = answer["choices"][0]["message"]["content"].as_str().unwrap();
    assert_eq!(text.trim(), expected);
    server.shutdown().unwrap();
}

/// `"explain": true` (our extension) returns the answer's maps with it: the report
/// `llava explain` writes for the same question; with `stream` it is a 400.
#[test]
fn an_explain_request_returns_the_maps_llava_explain_computes() {
    let model = fixture("fixtures/hf-parity/llava-clip/model");
    let image = fixture("fixtures/hf-parity/image-processing/model/image.jpg");
    let chat = ImageChat::open(
        &model,
        std::slice::from_ref(&image),
        tch::Device::Cpu,
        tch::Kind::Float,
        &Default::default(),
    )
    .unwrap();
    let question = "What is in the image?";
    let config = GenerationConfig {
        max_new_tokens: 6,
        temperature: Some(0.0),
        ..GenerationConfig::default()
    };
    let (answer, explained) = chat.explain(&[Message::user(question)], &config).unwrap();
    let expected = explained
        .report(chat.tokenizer(), chat.model().image_token())
        .unwrap();

    let server = serve::spawn(cpu_config(&model)).unwrap();
    let agent = agent();
    let url = data_url(&image, "image/jpeg");
    let body = |stream: bool| {
        json!({
            "messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": url}},
                {"type": "text", "text": question},
            ]}],
            "max_tokens": 6,
            "explain": true,
            "stream": stream,
        })
    };
    let post = |body: Value| post_chat(&agent, &server, &body);
    let (status, reply) = post(body(false));
    assert_eq!(status, 200, "{reply}");
    assert_eq!(
        reply["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .trim(),
        answer
    );
    let theirs = &reply["explanation"];
    assert_eq!(theirs["grids"], expected["grids"]);
    let (a, b) = (
        theirs["tokens"].as_array().unwrap(),
        expected["tokens"].as_array().unwrap(),
    );
    assert_eq!(a.len(), b.len());
    let flat = |v: &Value| -> Vec<f64> {
        v.as_array()
            .unwrap()
            .iter()
            .flat_map(|row| row.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()))
            .collect()
    };
    for (x, y) in a.iter().zip(b) {
        assert_eq!(x["id"], y["id"]);
        for (p, q) in flat(&x["relevancy"][0])
            .iter()
            .zip(flat(&y["relevancy"][0]))
        {
            assert!((p - q).abs() < 1e-5, "{p} vs {q}");
        }
        let share = (x["image_share"].as_f64().unwrap() - y["image_share"].as_f64().unwrap()).abs();
        assert!(share < 1e-5);
    }
    let (status, error) = post(body(true));
    assert_eq!(status, 400, "{error}");
    assert_eq!(error["error"]["param"], "explain");
    server.shutdown().unwrap();
}
