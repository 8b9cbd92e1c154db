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
        model: model.clone(),
        host: "127.0.0.1".into(),
        port: 0,
        device: "cpu".into(),
        dtype: Some("f32".into()),
        max_batch: 4,
        ..serve::ServerConfig::default()
    })
    .unwrap();
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let url = format!(
        "data:image/jpeg;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(std::fs::read(&image).unwrap())
    );
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
                    let mut response = agent
                        .post(format!("{}/v1/chat/completions", server.url()))
                        .header("Content-Type", "application/json")
                        .send(body.to_string())
                        .unwrap();
                    assert_eq!(response.status().as_u16(), 200);
                    let answer: Value =
                        serde_json::from_str(&response.body_mut().read_to_string().unwrap())
                            .unwrap();
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
