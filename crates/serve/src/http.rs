//! The HTTP side: routes, bearer auth, limits, OpenAI error objects and server-sent events, and
//! the chat page at `/`.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::stream::{self, Stream};
use serde_json::{Value, json};
use tokio::sync::mpsc::UnboundedReceiver;

use crate::api::{self, ChatRequest, Usage};
use crate::engine::{EngineClient, Event, Job, Sampling};
use crate::{Error, ServerConfig, prompt};

/// What every handler shares.
#[derive(Debug)]
pub struct AppState {
    config: ServerConfig,
    engine: EngineClient,
    draining: AtomicBool,
    next_id: AtomicU64,
}

impl AppState {
    /// State for a server with `config` over `engine`.
    pub fn new(config: ServerConfig, engine: EngineClient) -> Self {
        AppState {
            config,
            engine,
            draining: AtomicBool::new(false),
            next_id: AtomicU64::new(1),
        }
    }

    /// From now on, new requests get 503.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }
}

/// The chat page served at `GET /`: one self-contained HTML file (no external resources) that
/// streams answers from `/v1/chat/completions`.
pub const CHAT_PAGE: &str = include_str!("chat.html");

/// The routes, with auth, the body limit, draining and request counting.
pub fn router(state: Arc<AppState>) -> Router {
    let limit = state.config.max_body_bytes;
    Router::new()
        .route("/", get(chat_page))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/models", get(models))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(limit))
        .layer(middleware::from_fn_with_state(state.clone(), gate))
        .with_state(state)
}

/// An error answer with OpenAI's error object.
fn error_response(error: &Error) -> Response {
    let status = error.status();
    let (param, code) = match error {
        Error::Request { param, code, .. } => (param.as_deref(), *code),
        _ => (None, None),
    };
    let body = api::error_body(status, &error.to_string(), param, code);
    let mut response = (
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        axum::Json(body),
    )
        .into_response();
    if status == 429 || status == 503 {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    response
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        error_response(&self)
    }
}

fn request_error(status: u16, message: impl Into<String>, code: &'static str) -> Error {
    Error::Request {
        status,
        message: message.into(),
        param: None,
        code: Some(code),
    }
}

/// Paths that need no API key: the health check, and the chat page (which asks for the key).
fn is_open(path: &str) -> bool {
    path == "/health" || path == "/"
}

/// Draining (503), bearer auth (401, all but `/health` and `/`), and counting API answers by
/// status.
async fn gate(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let path = request.uri().path().to_string();
    let response = if state.draining.load(Ordering::SeqCst) {
        request_error(503, "the server is shutting down", "shutting_down").into_response()
    } else if !is_open(&path)
        && let Some(key) = &state.config.api_key
        && request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_none_or(|given| given.trim() != key)
    {
        request_error(
            401,
            "missing or wrong API key: send `Authorization: Bearer KEY`",
            "invalid_api_key",
        )
        .into_response()
    } else {
        next.run(request).await
    };
    if path != "/metrics" && !is_open(&path) {
        state
            .engine
            .metrics
            .count_request(response.status().as_u16());
    }
    response
}

async fn not_found() -> Error {
    request_error(404, "no such endpoint", "not_found")
}

async fn chat_page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
            // The page is self-contained: nothing but this server may be reached from it.
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                 img-src data: blob:; connect-src 'self'; base-uri 'none'; form-action 'none'",
            ),
        ],
        CHAT_PAGE,
    )
        .into_response()
}

async fn health(State(state): State<Arc<AppState>>) -> Response {
    axum::Json(json!({"status": "ok", "model": state.engine.info.id})).into_response()
}

async fn models(State(state): State<Arc<AppState>>) -> Response {
    let info = &state.engine.info;
    axum::Json(json!({
        "object": "list",
        "data": [{
            "id": info.id,
            "object": "model",
            "created": info.created,
            "owned_by": "llava-gemma-rs",
            "max_model_len": info.capacity,
        }],
    }))
    .into_response()
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.engine.metrics.render(),
    )
        .into_response()
}

/// A validated request, ready for the model thread.
struct Prepared {
    job: Job,
    events: UnboundedReceiver<Event>,
    stream: bool,
    include_usage: bool,
}

fn parse(body: &[u8]) -> Result<ChatRequest, Error> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| Error::bad_request(format!("the body is not valid JSON: {e}"), None))?;
    if !value.is_object() {
        return Err(Error::bad_request("the body must be a JSON object", None));
    }
    if value.get("messages").is_none() {
        return Err(Error::bad_request(
            "`messages` is required",
            Some("messages"),
        ));
    }
    serde_json::from_value(value)
        .map_err(|e| Error::bad_request(format!("invalid request: {e}"), None))
}

/// Checks the request, reads its images and builds the prompt.
fn prepare(state: &AppState, body: &[u8], arrived: Instant) -> Result<Prepared, Error> {
    let request = parse(body)?;
    if request.n.is_some_and(|n| n != 1) {
        return Err(Error::bad_request("only n = 1 is supported", Some("n")));
    }
    let max_tokens = match (request.max_completion_tokens, request.max_tokens) {
        (Some(n), _) | (None, Some(n)) => {
            if n == 0 {
                return Err(Error::bad_request(
                    "max_tokens must be at least 1",
                    Some("max_tokens"),
                ));
            }
            Some(usize::try_from(n).unwrap_or(usize::MAX))
        }
        (None, None) => None,
    };
    let temperature = request.temperature.unwrap_or(0.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(Error::bad_request(
            "temperature must be between 0 and 2",
            Some("temperature"),
        ));
    }
    if let Some(p) = request.top_p
        && !(p > 0.0 && p <= 1.0)
    {
        return Err(Error::bad_request("top_p must be in (0, 1]", Some("top_p")));
    }
    let stop = request.stop.map(api::Stop::into_vec).unwrap_or_default();
    if stop.len() > 4 || stop.iter().any(|s| s.len() > 256) {
        return Err(Error::bad_request(
            "at most 4 stop strings of at most 256 bytes",
            Some("stop"),
        ));
    }
    let config = &state.config;
    let info = &state.engine.info;
    let conversation = prompt::conversation(
        &request.messages,
        config.allow_local_files.as_deref(),
        config.max_images,
        &info.prompt_format,
    )?;
    // Decoded first: Gemma 3's pan-and-scan crops of each image are written into the prompt.
    let views = conversation
        .images
        .iter()
        .map(|image| {
            prompt::load_image(
                image,
                &info.processor,
                config.max_image_pixels,
                config.max_body_bytes,
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    let crops: Vec<usize> = views.iter().map(|v| v.len() - 1).collect();
    let ids = prompt::encode(&info.tokenizer, &conversation, &info.prompt_format, &crops)?;
    if let Some(per_image) = info.tokens_per_image {
        let later = if info.prompt_format.expands_in_text() {
            0
        } else {
            conversation.images.len() * (per_image.max(1) as usize - 1)
        };
        let prompt_len = ids.len() + later;
        let want = max_tokens.unwrap_or(1);
        if prompt_len + want > info.capacity as usize {
            return Err(Error::Request {
                status: 400,
                message: format!(
                    "the prompt's {prompt_len} tokens plus max_tokens {want} exceed the context of {} tokens",
                    info.capacity
                ),
                param: Some("messages".into()),
                code: Some("context_length_exceeded"),
            });
        }
    }
    let images: Vec<_> = views.into_iter().flatten().collect();
    let sampling = (temperature > 0.0).then(|| Sampling {
        temperature,
        top_p: request.top_p,
        seed: request.seed.map_or_else(rand::random, |s| s as u64),
    });
    let stream = request.stream.unwrap_or(false);
    let explain = request.explain.unwrap_or(false);
    if explain && (stream || temperature > 0.0) {
        return Err(Error::bad_request(
            "`explain` explains a greedy answer sent whole: not with `stream` or a temperature",
            Some("explain"),
        ));
    }
    if explain && state.engine.info.quantization.is_some() {
        // Explaining differentiates through the linear layers, which quantized kernels cannot.
        return Err(Error::bad_request(
            "`explain` needs the model's dense weights: this server runs it quantized",
            Some("explain"),
        ));
    }
    let (tx, events) = tokio::sync::mpsc::unbounded_channel();
    Ok(Prepared {
        job: Job {
            prompt: ids,
            images,
            max_tokens,
            sampling,
            stop,
            events: tx,
            arrived,
            explain,
        },
        events,
        stream,
        include_usage: request.stream_options.is_some_and(|o| o.include_usage),
    })
}

async fn chat_completions(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let arrived = Instant::now();
    let body = match body {
        Ok(b) => b,
        Err(rejection) => {
            let status = rejection.status().as_u16();
            let status = if status == 413 { 413 } else { 400 };
            return request_error(
                status,
                format!(
                    "the body could not be read (the limit is {} bytes): {rejection}",
                    state.config.max_body_bytes
                ),
                "invalid_body",
            )
            .into_response();
        }
    };
    let work = state.clone();
    let prepared = match tokio::task::spawn_blocking(move || prepare(&work, &body, arrived)).await {
        Ok(Ok(p)) => p,
        Ok(Err(e)) => return e.into_response(),
        Err(_) => return Error::Internal("the request could not be read".into()).into_response(),
    };
    let Prepared {
        job,
        mut events,
        stream,
        include_usage,
    } = prepared;
    if let Err(e) = state.engine.submit(job) {
        return e.into_response();
    }
    let id = format!("chatcmpl-{}", state.next_id.fetch_add(1, Ordering::Relaxed));
    let created = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let model = state.engine.info.id.clone();
    if stream {
        return sse(events, id, created, model, include_usage).into_response();
    }
    let mut text = String::new();
    let mut explanation = None;
    loop {
        match events.recv().await {
            Some(Event::Text(piece)) => text.push_str(&piece),
            Some(Event::Explanation(report)) => explanation = Some(report),
            Some(Event::Done {
                finish_reason,
                usage,
            }) => {
                let completion = api::completion(&id, created, &model, &text, finish_reason, usage);
                let Some(report) = explanation else {
                    return axum::Json(completion).into_response();
                };
                let mut body = serde_json::to_value(completion).expect("serialises");
                body["explanation"] = report;
                return axum::Json(body).into_response();
            }
            Some(Event::Error { status, message }) => {
                let error = if status >= 500 {
                    Error::Internal(message)
                } else {
                    Error::bad_request(message, None)
                };
                return error.into_response();
            }
            None => return Error::Stopped.into_response(),
        }
    }
}

/// The answer as server-sent events: a first chunk with the role, one per text piece, one with
/// the finish reason, the usage chunk when asked for, then `[DONE]`. Dropping the stream (the
/// client went away) drops the receiver, which cancels the request in the model thread.
fn sse(
    events: UnboundedReceiver<Event>,
    id: String,
    created: u64,
    model: String,
    include_usage: bool,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    enum Phase {
        Start,
        Body,
        Usage(Usage),
        Done,
        End,
    }
    let data = |v: Value| SseEvent::default().data(v.to_string());
    let stream = stream::unfold((events, Phase::Start), move |(mut events, phase)| {
        let (id, model) = (id.clone(), model.clone());
        async move {
            let chunk = |delta: Value, finish: Option<&str>| {
                data(api::chunk(
                    &id,
                    created,
                    &model,
                    delta,
                    finish,
                    include_usage,
                ))
            };
            match phase {
                Phase::Start => Some((
                    Ok(chunk(json!({"role": "assistant", "content": ""}), None)),
                    (events, Phase::Body),
                )),
                Phase::Body => match events.recv().await {
                    Some(Event::Text(piece)) => Some((
                        Ok(chunk(json!({"content": piece}), None)),
                        (events, Phase::Body),
                    )),
                    // Not streamed (`prepare` refuses `explain` with `stream`).
                    Some(Event::Explanation(_)) => Some((
                        Ok(SseEvent::default().comment("explanation")),
                        (events, Phase::Body),
                    )),
                    Some(Event::Done {
                        finish_reason,
                        usage,
                    }) => {
                        let next = if include_usage {
                            Phase::Usage(usage)
                        } else {
                            Phase::Done
                        };
                        Some((Ok(chunk(json!({}), Some(finish_reason))), (events, next)))
                    }
                    Some(Event::Error { status, message }) => {
                        let body = api::error_body(status, &message, None, None);
                        Some((Ok(data(body)), (events, Phase::Done)))
                    }
                    None => {
                        let body = api::error_body(503, "the model thread has stopped", None, None);
                        Some((Ok(data(body)), (events, Phase::Done)))
                    }
                },
                Phase::Usage(usage) => Some((
                    Ok(data(api::usage_chunk(&id, created, &model, usage))),
                    (events, Phase::Done),
                )),
                Phase::Done => Some((Ok(SseEvent::default().data("[DONE]")), (events, Phase::End))),
                Phase::End => None,
            }
        }
    });
    Sse::new(stream)
}
