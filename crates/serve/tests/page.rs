//! The chat page at `/`, driven in headless Chromium through chromedriver (WebDriver over HTTP),
//! against the server on the tiny fixture model on 127.0.0.1 with an ephemeral port.
//!
//! Needs `/usr/bin/chromium` and `/usr/bin/chromedriver` (Debian's `chromium` and
//! `chromium-driver`); as root the test installs them once with apt-get when missing, and
//! otherwise prints a SKIPPED line. `LLAVA_UPDATE_SCREENSHOT=1` also writes the screenshot to
//! docs/chat-page.png.

mod common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::*;
use serde_json::{Value, json};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const KEY: &str = "page-test-key";
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// Runs a command to its end, killing it after `limit`; true when it succeeded.
fn run_bounded(program: &str, args: &[&str], limit: Duration) -> bool {
    let Ok(mut child) = Command::new(program)
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
    else {
        return false;
    };
    let start = Instant::now();
    while start.elapsed() < limit {
        match child.try_wait() {
            Ok(Some(status)) => return status.success(),
            Ok(None) => std::thread::sleep(Duration::from_millis(200)),
            Err(_) => break,
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    false
}

/// Chromium and chromedriver, installed with apt-get once when missing and running as root.
fn browser_installed() -> Result<(), String> {
    let present = || Path::new(CHROMIUM).exists() && Path::new(CHROMEDRIVER).exists();
    if present() {
        return Ok(());
    }
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    if !root {
        return Err(format!(
            "{CHROMIUM} or {CHROMEDRIVER} is missing and this is not root"
        ));
    }
    eprintln!("installing chromium and chromium-driver with apt-get (once)");
    let limit = Duration::from_secs(600);
    run_bounded("apt-get", &["update"], limit);
    run_bounded(
        "apt-get",
        &["install", "-y", "chromium", "chromium-driver"],
        limit,
    );
    if present() {
        Ok(())
    } else {
        Err("`apt-get install -y chromium chromium-driver` failed".into())
    }
}

/// chromedriver with one headless Chromium session; dropping it ends the session and kills
/// both, even when the test fails.
struct Browser {
    driver: Child,
    base: String,
    session: String,
    agent: ureq::Agent,
    profile: tempfile::TempDir,
}

impl Browser {
    fn start() -> Browser {
        let profile = tempfile::tempdir().expect("a temp dir");
        let log = std::fs::File::create(profile.path().join("chromedriver.log")).unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("chromedriver starts");
        let agent = agent_with_timeout(Duration::from_secs(60));
        let mut browser = Browser {
            driver,
            base: format!("http://127.0.0.1:{port}"),
            session: String::new(),
            agent,
            profile,
        };
        let ready = eventually(Duration::from_secs(20), || {
            browser
                .agent
                .get(format!("{}/status", browser.base))
                .call()
                .is_ok_and(|r| r.status() == 200)
        });
        assert!(
            ready,
            "chromedriver did not start: {}",
            browser.driver_log()
        );
        let profile_dir = browser.profile.path().join("profile");
        let args = [
            "--headless".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-quic".into(),
            "--no-first-run".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--disable-dev-shm-usage".into(),
            "--window-size=900,1100".into(),
            format!("--user-data-dir={}", profile_dir.display()),
        ];
        let session = browser.call(
            "POST",
            "/session",
            json!({"capabilities": {"alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {"binary": CHROMIUM, "args": args},
            }}}),
        );
        browser.session = session["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {session}\n{}", browser.driver_log()))
            .to_string();
        browser
    }

    fn driver_log(&self) -> String {
        std::fs::read_to_string(self.profile.path().join("chromedriver.log")).unwrap_or_default()
    }

    /// One WebDriver command; panics on a WebDriver error.
    fn call(&self, method: &str, path: &str, body: Value) -> Value {
        let url = format!("{}{path}", self.base);
        let response = match method {
            "GET" => self.agent.get(&url).call(),
            "DELETE" => self.agent.delete(&url).call(),
            _ => self
                .agent
                .post(&url)
                .header("Content-Type", "application/json")
                .send(body.to_string()),
        };
        let mut response = response.unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = response.status().as_u16();
        let text = body_text(&mut response);
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        assert_eq!(status, 200, "{method} {path}: {text:.2000}");
        value["value"].clone()
    }

    fn session_call(&self, method: &str, path: &str, body: Value) -> Value {
        self.call(method, &format!("/session/{}{path}", self.session), body)
    }

    fn goto(&self, url: &str) {
        self.session_call("POST", "/url", json!({ "url": url }));
    }

    /// Runs `script` (a function body; `arguments` are `args`) and returns its value.
    fn js(&self, script: &str, args: Value) -> Value {
        self.session_call(
            "POST",
            "/execute/sync",
            json!({"script": script, "args": args}),
        )
    }

    fn find(&self, css: &str) -> String {
        let found = self.session_call(
            "POST",
            "/element",
            json!({"using": "css selector", "value": css}),
        );
        found[ELEMENT]
            .as_str()
            .unwrap_or_else(|| panic!("no element {css}: {found}"))
            .to_string()
    }

    fn click(&self, css: &str) {
        let id = self.find(css);
        self.session_call("POST", &format!("/element/{id}/click"), json!({}));
    }

    fn type_into(&self, css: &str, text: &str) {
        let id = self.find(css);
        self.session_call("POST", &format!("/element/{id}/clear"), json!({}));
        self.session_call(
            "POST",
            &format!("/element/{id}/value"),
            json!({ "text": text }),
        );
    }

    /// Polls `script` until it returns something truthy (bounded by `limit`); returns that.
    fn wait_for(&self, script: &str, limit: Duration) -> Value {
        let start = Instant::now();
        for _ in 0..10_000 {
            let value = self.js(script, json!([]));
            if !(value.is_null() || value == json!(false) || value == json!("")) {
                return value;
            }
            assert!(
                start.elapsed() < limit,
                "timed out after {limit:?} waiting for `{script}`"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("gave up waiting for `{script}`");
    }

    fn screenshot(&self) -> Vec<u8> {
        let png = self.session_call("GET", "/screenshot", Value::Null);
        base64::engine::general_purpose::STANDARD
            .decode(png.as_str().expect("base64 PNG"))
            .expect("a PNG")
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = self
                .agent
                .delete(format!("{}/session/{}", self.base, self.session))
                .config()
                .timeout_global(Some(Duration::from_secs(10)))
                .build()
                .call();
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        // Any Chromium process left behind runs with our profile directory.
        let marker = self.profile.path().to_string_lossy().into_owned();
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline).contains(&marker) {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
            }
        }
    }
}

/// The state of answer `n` (from 1) once it has finished (`aria-busy` off, `data-done` set).
fn answer(n: usize) -> String {
    format!("const n = {n};\n{ANSWER}")
}

const ANSWER: &str = r#"
    const log = document.getElementById("log");
    const answers = log.querySelectorAll(".msg.assistant");
    const li = answers[n - 1];
    if (!li || !li.dataset.done || log.getAttribute("aria-busy") !== "false") return null;
    return {
        done: li.dataset.done,
        count: answers.length,
        text: li.querySelector(".text").textContent,
        error: li.querySelector(".err")?.textContent ?? null,
        chunks: Number(li.dataset.chunks),
    };
"#;

/// Gives the page's file input an image file made from `arguments[0]` (base64 JPEG).
const SET_IMAGE: &str = r#"
    const bytes = Uint8Array.from(atob(arguments[0]), (c) => c.charCodeAt(0));
    const data = new DataTransfer();
    data.items.add(new File([bytes], "image.jpg", { type: "image/jpeg" }));
    const input = document.getElementById("file");
    input.files = data.files;
    input.dispatchEvent(new Event("change", { bubbles: true }));
"#;

const PREVIEW: &str = r#"
    const box = document.getElementById("preview-box");
    return box.hidden ? null : document.getElementById("preview").getAttribute("src");
"#;

fn screenshot_path() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("chat-page.png")
}

/// Load `/` (no API key needed), attach an image through the file input, ask, see the server's
/// error without a key, set the key, see the streamed answer equal the plain HTTP answer to the
/// same request, then a second turn that carries the first in its request; take a screenshot.
#[test]
fn chat_page_streams_answers_in_chromium() {
    let started = Instant::now();
    if let Err(why) = browser_installed() {
        println!("SKIPPED chat_page_streams_answers_in_chromium: {why}");
        return;
    }
    let server = start(serve::ServerConfig {
        api_key: Some(KEY.into()),
        step_delay: Duration::from_millis(5),
        ..common::config()
    });

    // The page itself needs no key; the API does.
    let response = agent()
        .get(server.url())
        .call()
        .expect("the server answers");
    assert_eq!(response.status().as_u16(), 200);
    let content_type = response.headers()["content-type"].to_str().unwrap();
    assert!(content_type.starts_with("text/html"), "{content_type}");
    let (status, _) = get(&server, "/v1/models", None);
    assert_eq!(status, 401);

    let browser = Browser::start();
    browser.goto(&server.url());
    let title = browser.js("return document.title;", json!([]));
    assert_eq!(title, "LLaVA chat");
    browser.wait_for(
        r#"return document.getElementById("model").textContent;"#,
        Duration::from_secs(10),
    );

    let image = image_data_url();
    let jpeg = image.strip_prefix("data:image/jpeg;base64,").unwrap();
    browser.js(SET_IMAGE, json!([jpeg]));
    let preview = browser.wait_for(PREVIEW, Duration::from_secs(10));
    assert_eq!(preview, image, "the preview is the file as a data: URL");

    let max_tokens = 16;
    browser.click("details summary");
    browser.type_into("#max-tokens", &max_tokens.to_string());
    let first = "What is in this picture?";
    browser.type_into("#question", first);

    // Without the key: the server's error object is shown, the question and image come back.
    browser.click("#send");
    let failed = browser.wait_for(&answer(1), Duration::from_secs(60));
    assert_eq!(failed["done"], "error", "{failed}");
    let error = failed["error"].as_str().unwrap();
    assert!(
        error.contains("401") && error.contains("invalid_api_key") && error.contains("API key"),
        "{error}"
    );
    assert_eq!(
        browser.js(
            r#"return document.getElementById("question").value;"#,
            json!([])
        ),
        first
    );
    assert_eq!(browser.js(PREVIEW, json!([])), image);

    // With the key (typed into the settings): the answer streams in.
    browser.type_into("#api-key", KEY);
    browser.click("#send");
    let answered = browser.wait_for(&answer(2), Duration::from_secs(60));
    assert_eq!(answered["done"], "ok", "{answered}");
    assert_eq!(answered["count"], 2);
    let user1 = json!({"role": "user", "content": [
        {"type": "text", "text": first},
        {"type": "image_url", "image_url": {"url": image}},
    ]});
    let body = json!({"messages": [user1], "max_tokens": max_tokens});
    let (status, whole) = post(
        &server,
        "/v1/chat/completions",
        &body.to_string(),
        Some(KEY),
    );
    assert_eq!(status, 200, "{whole}");
    let whole1 = whole["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(!whole1.is_empty());
    assert_eq!(answered["text"], whole1, "the streamed answer in the page");
    assert!(
        answered["chunks"].as_u64().unwrap() > 1,
        "several chunks: {answered}"
    );
    assert_eq!(
        browser.js(
            r#"return localStorage.getItem("llava-chat.api-key");"#,
            json!([])
        ),
        KEY
    );

    // A second turn, without an image: the request carries the first turn.
    let second = "And what colour is it?";
    browser.type_into("#question", second);
    browser.click("#send");
    let answered = browser.wait_for(&answer(3), Duration::from_secs(60));
    assert_eq!(answered["done"], "ok", "{answered}");
    let body = json!({"messages": [
        user1,
        {"role": "assistant", "content": whole1},
        {"role": "user", "content": second},
    ], "max_tokens": max_tokens});
    let (status, whole) = post(
        &server,
        "/v1/chat/completions",
        &body.to_string(),
        Some(KEY),
    );
    assert_eq!(status, 200, "{whole}");
    let whole2 = whole["choices"][0]["message"]["content"].as_str().unwrap();
    assert_eq!(answered["text"], whole2, "the second streamed answer");

    // The settings closed and a draft of the next question with an image, for the screenshot.
    browser.click("details summary");
    browser.js(SET_IMAGE, json!([jpeg]));
    browser.wait_for(PREVIEW, Duration::from_secs(10));
    browser.type_into("#question", "Is there anything else?");
    browser.js(
        "document.getElementById('question').blur(); window.scrollTo(0, document.body.scrollHeight);",
        json!([]),
    );
    let png = browser.screenshot();
    assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
    std::fs::write(screenshot_path(), &png).unwrap();
    if std::env::var_os("LLAVA_UPDATE_SCREENSHOT").is_some() {
        std::fs::write(root().join("docs/chat-page.png"), &png).unwrap();
    }

    // The key survives a reload.
    browser.goto(&server.url());
    assert_eq!(
        browser.js(
            r#"return document.getElementById("api-key").value;"#,
            json!([])
        ),
        KEY
    );
    drop(browser);
    server.shutdown().unwrap();
    println!(
        "chat page test: {:.1} s, screenshot {}",
        started.elapsed().as_secs_f64(),
        screenshot_path().display()
    );
}

/// With "Explain answers" on, the page asks for the maps (`explain: true`, not streamed) and shows
/// a button per word of the answer; clicking one lays that word's relevancy map over the image.
/// The words and maps are the API's for the same request. `LLAVA_UPDATE_SCREENSHOT=1` writes
/// docs/explain-page.png.
#[test]
fn chat_page_shows_where_each_word_looked() {
    if let Err(why) = browser_installed() {
        println!("SKIPPED chat_page_shows_where_each_word_looked: {why}");
        return;
    }
    let server = start(common::config());
    let browser = Browser::start();
    browser.goto(&server.url());
    let image = image_data_url();
    let jpeg = image.strip_prefix("data:image/jpeg;base64,").unwrap();
    browser.js(SET_IMAGE, json!([jpeg]));
    browser.wait_for(PREVIEW, Duration::from_secs(10));
    browser.click("details summary");
    browser.type_into("#max-tokens", "6");
    browser.click("#explain");
    let question = "What is in this picture?";
    browser.type_into("#question", question);
    browser.click("#send");
    let answered = browser.wait_for(&answer(1), Duration::from_secs(60));
    assert_eq!(answered["done"], "ok", "{answered}");

    // The same request through the API.
    let body = json!({"messages": [{"role": "user", "content": [
        {"type": "text", "text": question},
        {"type": "image_url", "image_url": {"url": image}},
    ]}], "max_tokens": 6, "explain": true});
    let (status, whole) = post(&server, "/v1/chat/completions", &body.to_string(), None);
    assert_eq!(status, 200, "{whole}");
    assert_eq!(answered["text"], whole["choices"][0]["message"]["content"]);
    let words: Vec<String> = whole["explanation"]["words"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["text"].as_str().unwrap().to_string())
        .collect();
    let shown = browser.js(
        r#"return [...document.querySelectorAll(".msg.assistant .maps button.word")]
            .map((b) => b.textContent);"#,
        json!([]),
    );
    assert_eq!(shown, json!(words));
    assert!(!words.is_empty(), "the random model's answer has words");

    // Before a click the canvas is clear; after it, the last word's map covers it.
    const PAINTED: &str = r#"
        const c = document.querySelector(".msg.assistant .maps canvas");
        const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
        let painted = 0;
        for (let i = 3; i < d.length; i += 4) if (d[i] > 0) painted++;
        return painted / (c.width * c.height);
    "#;
    assert_eq!(browser.js(PAINTED, json!([])), json!(0));
    let last = words.len() - 1;
    browser.click(&format!(
        ".msg.assistant .maps button.word:nth-of-type({})",
        last + 1
    ));
    let state = browser.wait_for(
        r#"const li = document.querySelector(".msg.assistant");
           return li.dataset.shown ? { shown: li.dataset.shown,
             pressed: li.querySelector("button.word[aria-pressed=true]").textContent } : null;"#,
        Duration::from_secs(10),
    );
    assert_eq!(state["shown"], last.to_string());
    assert_eq!(state["pressed"], words[last]);
    assert_eq!(
        browser.js(PAINTED, json!([])),
        json!(1),
        "the map covers the image"
    );
    // The colour at the map's hottest cell is the scale's red end, over the image.
    let grid = &whole["explanation"]["words"][last]["relevancy"][0];
    let side = grid.as_array().unwrap().len();
    let flat: Vec<f64> = grid
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r.as_array().unwrap().iter().map(|v| v.as_f64().unwrap()))
        .collect();
    let hottest = (0..flat.len())
        .max_by(|&a, &b| flat[a].total_cmp(&flat[b]))
        .unwrap();
    let (row, col) = (hottest / side, hottest % side);
    let pixel = browser.js(
        r#"const c = document.querySelector(".msg.assistant .maps canvas");
           const [side, row, col] = arguments;
           const x = Math.floor((col + 0.5) * c.width / side), y = Math.floor((row + 0.5) * c.height / side);
           return [...c.getContext("2d").getImageData(x, y, 1, 1).data];"#,
        json!([side, row, col]),
    );
    let rgba: Vec<u64> = serde_json::from_value(pixel).unwrap();
    assert!(
        rgba[0] > 200 && rgba[2] < 60,
        "red at the hottest cell: {rgba:?}"
    );

    browser.click("details summary");
    let png = browser.screenshot();
    assert!(png.starts_with(b"\x89PNG"));
    if std::env::var_os("LLAVA_UPDATE_SCREENSHOT").is_some() {
        std::fs::write(root().join("docs/explain-page.png"), &png).unwrap();
    }
    drop(browser);
    server.shutdown().unwrap();
}
