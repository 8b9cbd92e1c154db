//! `llava serve`: an OpenAI-compatible HTTP server for LLaVA-Gemma models, with continuous
//! batching.
//!
//! * [`http`]: the axum routes (`POST /v1/chat/completions`, `GET /v1/models`, `/health`,
//!   `/metrics`), bearer auth, body limits, OpenAI error objects, server-sent events, and the chat
//!   page at `GET /` (`chat.html`, embedded);
//! * [`prompt`]: OpenAI messages to the Gemma chat prompt that `llava generate` builds, and images
//!   from `data:` URLs (or local files under `--allow-local-files`);
//! * [`engine`]: the model thread: a [`gemma_lm::SlotCache`] slot per running request, new prompts
//!   prefilled between decoding steps, one decoding step for all running requests at a time;
//! * [`metrics`]: counters, gauges and histograms in Prometheus' text format.
//!
//! [`run`] serves until a future resolves (the command passes SIGTERM / ctrl-c); [`spawn`] starts
//! a server on a background thread (tests, benchmarks). docs/serving.md describes the design.

pub mod api;
pub mod engine;
pub mod http;
pub mod metrics;
pub mod prompt;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

/// Errors of the server: start-up problems (the model, the address) and failed requests.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The model or its tokenizer did not load.
    #[error("loading {path}: {message}")]
    Load {
        /// The model directory.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// A flag has a value the server cannot use.
    #[error("{0}")]
    Config(String),
    /// The address could not be bound, or the server failed while running.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// A request the server refuses, with its HTTP status (4xx) and OpenAI error fields.
    #[error("{message}")]
    Request {
        /// HTTP status.
        status: u16,
        /// What is wrong, for the client.
        message: String,
        /// The request field at fault, as OpenAI names it (`messages[0].content[1].image_url`).
        param: Option<String>,
        /// A short machine-readable code.
        code: Option<&'static str>,
    },
    /// The model thread failed on a request (a libtorch error, a bug): answered with 500.
    #[error("internal error: {0}")]
    Internal(String),
    /// The model thread has stopped.
    #[error("the model thread has stopped")]
    Stopped,
}

impl Error {
    /// A 400 about `param`.
    pub fn bad_request(message: impl Into<String>, param: Option<&str>) -> Self {
        Error::Request {
            status: 400,
            message: message.into(),
            param: param.map(str::to_string),
            code: None,
        }
    }

    /// The HTTP status this error answers with.
    pub fn status(&self) -> u16 {
        match self {
            Error::Request { status, .. } => *status,
            Error::Stopped => 503,
            _ => 500,
        }
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything `llava serve` is told on its command line.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The LLaVA model directory (config.json, safetensors, tokenizer.json).
    pub model: PathBuf,
    /// A PEFT LoRA adapter directory merged into the model when it loads.
    pub adapter: Option<PathBuf>,
    /// The name `/v1/models` lists (default: the directory's name).
    pub model_id: Option<String>,
    /// Address to bind.
    pub host: String,
    /// Port to bind (0: any free port).
    pub port: u16,
    /// `cpu`, `cuda`, `cuda:N` or `auto`.
    pub device: String,
    /// Weights dtype (`f32`, `bf16`, `f16`); default: bf16 on CUDA, f32 on CPU.
    pub dtype: Option<String>,
    /// Most requests decoded together (KV-cache slots).
    pub max_batch: usize,
    /// Most requests waiting for a slot; more get 429.
    pub max_queue: usize,
    /// Positions per slot (prompt + answer); default: the model's context.
    pub max_context: Option<i64>,
    /// Bearer token every endpoint but `/health` requires.
    pub api_key: Option<String>,
    /// A directory from which `file://` URLs and plain paths may be read.
    pub allow_local_files: Option<PathBuf>,
    /// Largest request body in bytes.
    pub max_body_bytes: usize,
    /// Largest image in pixels (checked from the header before decoding).
    pub max_image_pixels: u64,
    /// Most images in one request.
    pub max_images: usize,
    /// Scale image features by sqrt(hidden) as the original LLaVA-Gemma code did.
    pub scale_image_features: bool,
    /// The language model's linear layers quantized when it loads (`int8`, `int4`, `int4:G`;
    /// CPU: see `LlavaModel::quantize`).
    pub quantize: Option<String>,
    /// A pause after each decoding step (zero by default): lets tests and demos watch a slow
    /// stream on a model that is otherwise too fast to interrupt.
    pub step_delay: std::time::Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            model: PathBuf::new(),
            adapter: None,
            model_id: None,
            host: "127.0.0.1".into(),
            port: 8000,
            device: "auto".into(),
            dtype: None,
            max_batch: 16,
            max_queue: 256,
            max_context: None,
            api_key: None,
            allow_local_files: None,
            max_body_bytes: 20 << 20,
            max_image_pixels: 64 << 20,
            max_images: 8,
            scale_image_features: false,
            quantize: None,
            step_delay: std::time::Duration::ZERO,
        }
    }
}

/// Loads the model, binds `host:port` and serves until `shutdown` resolves; then refuses new
/// requests (503), finishes those in flight and returns. `on_ready` sees the bound address.
pub async fn run(
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_ready: impl FnOnce(SocketAddr),
) -> Result<()> {
    if config.max_batch == 0 {
        return Err(Error::Config("--max-batch must be at least 1".into()));
    }
    let engine = engine::Engine::start(&config)?;
    let addr = format!("{}:{}", config.host, config.port);
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .map_err(|source| Error::Io {
            context: format!("binding {addr}"),
            source,
        })?;
    let local = listener.local_addr().map_err(|source| Error::Io {
        context: "reading the bound address".into(),
        source,
    })?;
    let state = Arc::new(http::AppState::new(config, engine.client()));
    let app = http::router(state.clone());
    on_ready(local);
    let draining = state.clone();
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            shutdown.await;
            draining.start_draining();
        })
        .await;
    drop(state);
    // Every request has finished; the engine ends once its queue is closed.
    engine.stop();
    served.map_err(|source| Error::Io {
        context: "serving".into(),
        source,
    })
}

/// A future that resolves on ctrl-c or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

/// A server running on a background thread (for tests and benchmarks).
#[derive(Debug)]
pub struct RunningServer {
    /// The bound address.
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<()>>>,
}

impl RunningServer {
    /// `http://addr`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Starts draining (as SIGTERM does) without waiting.
    pub fn begin_shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Stops the server as SIGTERM does and waits for it.
    pub fn shutdown(mut self) -> Result<()> {
        self.begin_shutdown();
        match self.thread.take().map(std::thread::JoinHandle::join) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(Error::Internal("the server thread panicked".into())),
            None => Ok(()),
        }
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        self.begin_shutdown();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Starts a server on a background thread with its own runtime; returns once it listens.
pub fn spawn(config: ServerConfig) -> Result<RunningServer> {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let thread = std::thread::Builder::new()
        .name("llava-serve".into())
        .spawn(move || -> Result<()> {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .map_err(|source| Error::Io {
                    context: "starting the runtime".into(),
                    source,
                })?;
            let ready = ready_tx.clone();
            let result = runtime.block_on(run(
                config,
                async move {
                    let _ = stopped.await;
                },
                move |addr| {
                    let _ = ready.send(Ok(addr));
                },
            ));
            if let Err(e) = &result {
                let _ = ready_tx.send(Err(e.to_string()));
            }
            result
        })
        .map_err(|source| Error::Io {
            context: "starting the server thread".into(),
            source,
        })?;
    match ready_rx.recv() {
        Ok(Ok(addr)) => Ok(RunningServer {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        }),
        Ok(Err(message)) => {
            let _ = thread.join();
            Err(Error::Config(message))
        }
        Err(_) => match thread.join() {
            Ok(Err(e)) => Err(e),
            _ => Err(Error::Internal("the server thread ended early".into())),
        },
    }
}
