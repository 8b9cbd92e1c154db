//! The model thread: continuous batching over a [`SlotCache`].
//!
//! One thread owns the model. Requests arrive on a channel and wait in a queue; between decoding
//! steps, each waiting request that finds a free slot is prefilled alone (batch 1, exactly as
//! `generate` runs one prompt) into its slot and picks its first token; then one decoding step
//! advances every running request by a token, each at its own position. A request that finishes
//! (stop token, stop string, `max_tokens`) or whose client went away (its event receiver dropped)
//! leaves its slot at once, and the next waiting request takes it before the next step. A libtorch
//! error or a panic while prefilling fails that request alone (500); during a decoding step it
//! fails the requests of that step.

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use gemma_lm::batch::{decode_step, prefill_with};
use gemma_lm::{GemmaTokenizer, GenerationConfig, Sampler, SlotCache};
use image_processing::ImageProcessor;
use llava_model::LlavaModel;
use tch::{Kind, Tensor};
use tokio::sync::mpsc::UnboundedSender;

use crate::api::Usage;
use crate::metrics::Metrics;
use crate::{Error, Result, ServerConfig};

/// How a request samples.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampling {
    /// Temperature (> 0).
    pub temperature: f64,
    /// Nucleus mass.
    pub top_p: Option<f64>,
    /// Seed.
    pub seed: u64,
}

/// A request for the model thread.
#[derive(Debug)]
pub struct Job {
    /// The chat prompt with one `<image>` token per image.
    pub prompt: Vec<i64>,
    /// Preprocessed images: pixels `[3, h, w]`, `h`, `w`.
    pub images: Vec<(Vec<f32>, usize, usize)>,
    /// Most tokens to generate; `None`: up to the slot's capacity.
    pub max_tokens: Option<usize>,
    /// `None`: greedy.
    pub sampling: Option<Sampling>,
    /// Strings that end the answer.
    pub stop: Vec<String>,
    /// Where the answer goes; dropping the receiver cancels the request.
    pub events: UnboundedSender<Event>,
    /// Explain the answer when it is complete (`llava_model::explain`): an
    /// [`Event::Explanation`] before [`Event::Done`].
    pub explain: bool,
    /// When the request arrived.
    pub arrived: Instant,
}

/// What the model thread tells a request.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// More text of the answer.
    Text(String),
    /// The answer's relevancy and attention maps (`Explanation::report`), when asked for.
    Explanation(serde_json::Value),
    /// The answer is complete.
    Done {
        /// `stop` or `length`.
        finish_reason: &'static str,
        /// Token counts.
        usage: Usage,
    },
    /// The request failed.
    Error {
        /// HTTP status.
        status: u16,
        /// What went wrong.
        message: String,
    },
}

/// What the HTTP side needs to know about the loaded model.
#[derive(Debug)]
pub struct ModelInfo {
    /// The name `/v1/models` lists.
    pub id: String,
    /// Positions per slot: prompt plus answer.
    pub capacity: i64,
    /// Tokens per image when the processor's output size is fixed.
    pub tokens_per_image: Option<i64>,
    /// The tokenizer.
    pub tokenizer: GemmaTokenizer,
    /// How the model's family writes images into prompts.
    pub prompt_format: llava_model::PromptFormat,
    /// The image processor.
    pub processor: ImageProcessor,
    /// When the model was loaded (Unix seconds).
    pub created: u64,
    /// The language model's quantized form, if it runs quantized (`--quantize`, or a directory
    /// saved by `llava quantize`).
    pub quantization: Option<foundation::quant::Quantization>,
}

/// The HTTP side's handle on the model thread.
#[derive(Debug, Clone)]
pub struct EngineClient {
    jobs: Sender<Job>,
    /// The model.
    pub info: Arc<ModelInfo>,
    /// Shared metrics.
    pub metrics: Arc<Metrics>,
    max_queue: usize,
}

impl EngineClient {
    /// Queues a job; `Err` with 429 when the queue is full, 503 when the thread has stopped.
    pub fn submit(&self, job: Job) -> Result<()> {
        let queued = self.metrics.queued.fetch_add(1, Ordering::SeqCst);
        if queued >= self.max_queue {
            self.metrics.queued.fetch_sub(1, Ordering::SeqCst);
            return Err(Error::Request {
                status: 429,
                message: format!(
                    "the server is busy: {} requests are waiting; retry later",
                    self.max_queue
                ),
                param: None,
                code: Some("queue_full"),
            });
        }
        self.jobs.send(job).map_err(|_| {
            self.metrics.queued.fetch_sub(1, Ordering::SeqCst);
            Error::Stopped
        })
    }
}

/// The running model thread.
#[derive(Debug)]
pub struct Engine {
    client: EngineClient,
    stopping: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

impl Engine {
    /// Loads the model on its own thread and starts the batching loop.
    pub fn start(config: &ServerConfig) -> Result<Self> {
        let max_queue = config.max_queue;
        let config = config.clone();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (jobs, rx) = std::sync::mpsc::channel();
        let metrics = Arc::new(Metrics::default());
        metrics.slots.store(config.max_batch, Ordering::Relaxed);
        let stopping = Arc::new(AtomicBool::new(false));
        let (m, s) = (metrics.clone(), stopping.clone());
        let thread = std::thread::Builder::new()
            .name("llava-model".into())
            .spawn(move || match load(&config) {
                Ok((model, info, capacity)) => {
                    let info = Arc::new(info);
                    let _ = ready_tx.send(Ok(info.clone()));
                    let cache = SlotCache::for_model(&model.lm, config.max_batch, capacity);
                    Batcher {
                        model,
                        info,
                        cache,
                        metrics: m,
                        stop_tokens: Vec::new(),
                        byte_tokens: Vec::new(),
                        step_delay: config.step_delay,
                    }
                    .run(rx, &s);
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                }
            })
            .map_err(|source| Error::Io {
                context: "starting the model thread".into(),
                source,
            })?;
        let info = match ready_rx.recv() {
            Ok(Ok(info)) => info,
            Ok(Err(e)) => {
                let _ = thread.join();
                return Err(e);
            }
            Err(_) => {
                let _ = thread.join();
                return Err(Error::Internal(
                    "the model thread ended while loading".into(),
                ));
            }
        };
        Ok(Engine {
            client: EngineClient {
                jobs,
                info,
                metrics,
                max_queue,
            },
            stopping,
            thread,
        })
    }

    /// A handle for submitting jobs.
    pub fn client(&self) -> EngineClient {
        self.client.clone()
    }

    /// Lets running requests finish, then ends the thread and waits for it.
    pub fn stop(self) {
        self.stopping.store(true, Ordering::SeqCst);
        drop(self.client);
        let _ = self.thread.join();
    }
}

fn load(config: &ServerConfig) -> Result<(LlavaModel, ModelInfo, i64)> {
    let dir: &Path = &config.model;
    let fail = |message: String| Error::Load {
        path: dir.to_path_buf(),
        message,
    };
    let device =
        foundation::device::parse_device(&config.device).map_err(|e| fail(e.to_string()))?;
    let kind = match &config.dtype {
        Some(name) => foundation::device::parse_kind(name).map_err(|e| fail(e.to_string()))?,
        None => foundation::device::default_kind(device),
    };
    let mut model =
        LlavaModel::from_pretrained_with_adapter(dir, config.adapter.as_deref(), device, kind)
            .map_err(|e| fail(e.to_string()))?;
    if config.scale_image_features {
        model.config.image_features_scaled = Some(true);
    }
    if let Some(how) = &config.quantize {
        let how: foundation::quant::Quantization = how.parse().map_err(fail)?;
        model.quantize(how).map_err(|e| fail(e.to_string()))?;
    }
    let tokenizer = GemmaTokenizer::from_file(dir).map_err(|e| fail(e.to_string()))?;
    let processor = ImageProcessor::new(
        model
            .image_processor(Some(dir))
            .map_err(|e| fail(e.to_string()))?,
    );
    let context = model.config.text_config.max_position_embeddings;
    let capacity = config.max_context.map_or(context, |c| c.min(context));
    if capacity < 2 {
        return Err(Error::Config(format!(
            "--max-context {capacity} is too small"
        )));
    }
    let tokens_per_image = processor
        .output_size()
        .map(|(h, w)| model.tokens_per_image(h as i64, w as i64));
    let prompt_format = model.prompt_format(&tokenizer, tokens_per_image.unwrap_or(0));
    let id = config.model_id.clone().unwrap_or_else(|| {
        dir.canonicalize()
            .ok()
            .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "llava".into())
    });
    let created = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let quantization = model.quantization();
    Ok((
        model,
        ModelInfo {
            id,
            capacity,
            tokens_per_image,
            tokenizer,
            prompt_format,
            processor,
            created,
            quantization,
        },
        capacity,
    ))
}

/// A request in the running batch.
struct Running {
    job: Job,
    slot: usize,
    prompt_len: usize,
    /// The prompt with image tokens expanded, kept for an explanation (empty otherwise).
    prompt: Vec<i64>,
    max_tokens: usize,
    tokens: Vec<i64>,
    sampler: Option<Sampler>,
    /// Bytes of the answer's text already sent.
    sent: usize,
    /// Whether the running-requests gauge counts it (set once the batch it joined is stored).
    counted: bool,
}

struct Batcher {
    model: LlavaModel,
    info: Arc<ModelInfo>,
    cache: SlotCache,
    metrics: Arc<Metrics>,
    stop_tokens: Vec<i64>,
    /// Byte-fallback tokens (`<0x00>`..`<0xFF>`): the text of a run of them can change until the
    /// run ends, so it is held back while streaming.
    byte_tokens: Vec<i64>,
    step_delay: Duration,
}

/// A job's images as one `[images, 3, h, w]` tensor (all of one size, which `admit` checks).
fn job_pixels(images: &[(Vec<f32>, usize, usize)]) -> Option<Tensor> {
    let &(_, h, w) = images.first()?;
    let data: Vec<f32> = images.iter().flat_map(|i| i.0.iter().copied()).collect();
    Some(Tensor::from_slice(&data).view([images.len() as i64, 3, h as i64, w as i64]))
}

/// Runs `f`, turning a libtorch error or any other panic into `Err`.
fn guarded<T>(
    f: impl FnOnce() -> std::result::Result<T, String>,
) -> std::result::Result<T, String> {
    match std::panic::catch_unwind(AssertUnwindSafe(|| foundation::torch_panic::catch(f))) {
        Ok(Ok(result)) => result,
        Ok(Err(torch)) => Err(torch.to_string()),
        Err(payload) => Err(payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "a panic in the model thread".into())),
    }
}

impl Batcher {
    fn run(mut self, jobs: Receiver<Job>, stopping: &AtomicBool) {
        self.stop_tokens = self.info.tokenizer.chat_stop_tokens();
        self.byte_tokens = (0..=255u8)
            .filter_map(|b| self.info.tokenizer.token_id(&format!("<0x{b:02X}>")))
            .collect();
        self.byte_tokens.sort_unstable();
        let mut waiting: VecDeque<Job> = VecDeque::new();
        let mut running: Vec<Running> = Vec::new();
        loop {
            if running.is_empty() && waiting.is_empty() {
                match jobs.recv_timeout(Duration::from_millis(50)) {
                    Ok(job) => waiting.push_back(job),
                    Err(RecvTimeoutError::Timeout) if !stopping.load(Ordering::SeqCst) => continue,
                    Err(_) => break,
                }
            }
            while let Ok(job) = jobs.try_recv() {
                waiting.push_back(job);
            }
            waiting.retain(|job| {
                let gone = job.events.is_closed();
                if gone {
                    self.metrics.queued.fetch_sub(1, Ordering::SeqCst);
                    self.metrics.cancelled.fetch_add(1, Ordering::Relaxed);
                }
                !gone
            });
            while self.cache.occupied() < self.cache.slots() {
                let Some(job) = waiting.pop_front() else {
                    break;
                };
                self.metrics.queued.fetch_sub(1, Ordering::SeqCst);
                if let Some(r) = self.admit(job) {
                    running.push(r);
                }
            }
            running.sort_by_key(|r| r.slot);
            self.metrics.running.store(running.len(), Ordering::SeqCst);
            running.iter_mut().for_each(|r| r.counted = true);
            if !running.is_empty() {
                self.step(&mut running);
                if !self.step_delay.is_zero() {
                    std::thread::sleep(self.step_delay);
                }
                self.metrics.running.store(running.len(), Ordering::SeqCst);
            }
        }
    }

    /// Takes a request that is ending out of the running-requests gauge, before its last event
    /// goes out: a client that reads /metrics after its answer sees it gone.
    fn uncount(&self, r: &mut Running) {
        if std::mem::take(&mut r.counted) {
            self.metrics.running.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Prefills a job into a free slot and picks its first token; `None` when it already ended.
    fn admit(&mut self, job: Job) -> Option<Running> {
        if job.events.is_closed() {
            self.metrics.cancelled.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let slot = self.cache.acquire()?;
        let capacity = self.cache.capacity();
        let model = &self.model;
        let prompt = match job.images.first() {
            Some(&(_, h, w)) => {
                let per_image = model.tokens_per_image(h as i64, w as i64);
                if job.images.iter().any(|i| (i.1, i.2) != (h, w)) {
                    return self.fail(
                        job,
                        slot,
                        400,
                        "all images must preprocess to one size".into(),
                    );
                }
                model.expand_image_tokens(&job.prompt, per_image)
            }
            None => job.prompt.clone(),
        };
        let prompt_len = prompt.len();
        let room = (capacity as usize).saturating_sub(prompt_len);
        let max_tokens = job.max_tokens.unwrap_or(room);
        if prompt_len == 0 || max_tokens == 0 || prompt_len + max_tokens > capacity as usize {
            let message = format!(
                "the prompt's {prompt_len} tokens plus max_tokens {max_tokens} exceed the context of {capacity} tokens"
            );
            return self.fail(job, slot, 400, message);
        }
        let cache = &mut self.cache;
        let first = guarded(|| {
            let ids = Tensor::from_slice(&prompt).view([1, prompt_len as i64]);
            let pixels = job_pixels(&job.images);
            let embeds =
                tch::no_grad(|| model.embed(&ids, pixels.as_ref())).map_err(|e| e.to_string())?;
            let blocks = model.blocks(&ids, None, None);
            let hidden = prefill_with(&model.lm, cache, slot, &embeds, blocks.as_ref())
                .map_err(|e| e.to_string())?;
            Ok(tch::no_grad(|| {
                model.lm.logits(&hidden).squeeze_dim(1).to_kind(Kind::Float)
            }))
        });
        let logits = match first {
            Ok(logits) => logits,
            Err(message) => return self.fail(job, slot, 500, message),
        };
        self.metrics
            .prompt_tokens
            .fetch_add(prompt_len as u64, Ordering::Relaxed);
        let sampler = job.sampling.map(|s| {
            Sampler::new(&GenerationConfig {
                temperature: Some(s.temperature),
                top_p: s.top_p,
                seed: s.seed,
                ..GenerationConfig::default()
            })
        });
        let kept = if job.explain { prompt } else { Vec::new() };
        let mut running = Running {
            job,
            slot,
            prompt_len,
            prompt: kept,
            max_tokens,
            tokens: Vec::new(),
            sampler,
            sent: 0,
            counted: false,
        };
        let token = match pick(&logits, 0, running.sampler.as_mut()) {
            Ok(t) => t,
            Err(message) => return self.fail(running.job, slot, 500, message),
        };
        if self.accept(&mut running, token) {
            None
        } else {
            Some(running)
        }
    }

    /// The maps of `r`'s complete answer (with autograd, which generation runs without).
    fn explain(&self, r: &Running) -> std::result::Result<serde_json::Value, String> {
        let pixels = job_pixels(&r.job.images);
        let tokenizer = &self.info.tokenizer;
        tch::with_grad(|| {
            let explained = self
                .model
                .explain(&r.prompt, pixels.as_ref(), &r.tokens)
                .map_err(|e| e.to_string())?;
            explained
                .report(tokenizer, self.model.image_token())
                .map_err(|e| e.to_string())
        })
    }

    /// Answers a job with an error and frees its slot.
    fn fail(&mut self, job: Job, slot: usize, status: u16, message: String) -> Option<Running> {
        self.cache.release(slot);
        let _ = job.events.send(Event::Error { status, message });
        None
    }

    /// One decoding step for every running request.
    fn step(&mut self, running: &mut Vec<Running>) {
        running.retain_mut(|r| {
            let gone = r.job.events.is_closed();
            if gone {
                self.uncount(r);
                self.cache.release(r.slot);
                self.metrics.cancelled.fetch_add(1, Ordering::Relaxed);
            }
            !gone
        });
        if running.is_empty() {
            return;
        }
        let rows: Vec<(usize, i64)> = running
            .iter()
            .map(|r| (r.slot, *r.tokens.last().unwrap_or(&0)))
            .collect();
        let (model, cache) = (&self.model, &mut self.cache);
        let result = guarded(|| {
            let hidden = decode_step(&model.lm, cache, &rows).map_err(|e| e.to_string())?;
            // Inference: nothing recorded (the tied head's embedding is trainable), so the head
            // takes the CPU's matrix-vector kernels.
            let logits =
                tch::no_grad(|| model.lm.logits(&hidden).squeeze_dim(1).to_kind(Kind::Float));
            let mut tokens = Vec::with_capacity(rows.len());
            let greedy = Vec::<i64>::try_from(logits.argmax(-1, false).to_device(tch::Device::Cpu))
                .map_err(|e| e.to_string())?;
            for (i, r) in running.iter_mut().enumerate() {
                tokens.push(match r.sampler.as_mut() {
                    None => greedy[i],
                    Some(_) => pick(&logits, i as i64, r.sampler.as_mut())?,
                });
            }
            Ok(tokens)
        });
        self.metrics.decode_steps.fetch_add(1, Ordering::Relaxed);
        self.metrics
            .decode_rows
            .fetch_add(rows.len() as u64, Ordering::Relaxed);
        match result {
            Ok(tokens) => {
                let mut finished = vec![false; running.len()];
                for (i, (r, token)) in running.iter_mut().zip(tokens).enumerate() {
                    finished[i] = self.accept(r, token);
                }
                let mut i = 0;
                running.retain(|_| {
                    i += 1;
                    !finished[i - 1]
                });
            }
            Err(message) => {
                for mut r in running.drain(..) {
                    self.uncount(&mut r);
                    self.cache.release(r.slot);
                    let _ = r.job.events.send(Event::Error {
                        status: 500,
                        message: message.clone(),
                    });
                }
            }
        }
    }

    /// Takes a request's next token: sends the new text, and ends the request (freeing its slot)
    /// at a stop token, a stop string or its length limit. Returns whether it ended.
    fn accept(&mut self, r: &mut Running, token: i64) -> bool {
        if r.tokens.is_empty() {
            self.metrics
                .time_to_first_token
                .observe(r.job.arrived.elapsed().as_secs_f64());
        }
        r.tokens.push(token);
        self.metrics
            .generation_tokens
            .fetch_add(1, Ordering::Relaxed);
        let text = self
            .info
            .tokenizer
            .decode(&r.tokens, true)
            .unwrap_or_default();
        let stop_at = r
            .job
            .stop
            .iter()
            .filter(|s| !s.is_empty())
            .filter_map(|s| text.find(s.as_str()))
            .min();
        let full = self.cache.len(r.slot).unwrap_or(0) >= self.cache.capacity();
        let finish = if stop_at.is_some() || self.stop_tokens.contains(&token) {
            Some("stop")
        } else if r.tokens.len() >= r.max_tokens || full {
            Some("length")
        } else {
            None
        };
        let visible = &text[..stop_at.unwrap_or(text.len())];
        // Hold back what could be the start of a stop string, and the text of a trailing run of
        // byte-fallback tokens (the next byte can rewrite it), until the answer ends.
        let mut end = if finish.is_some() {
            visible.len()
        } else {
            let stable = r
                .tokens
                .iter()
                .rposition(|t| self.byte_tokens.binary_search(t).is_err())
                .map_or(0, |i| i + 1);
            let stable_len = if stable == r.tokens.len() {
                text.len()
            } else {
                let prefix = self
                    .info
                    .tokenizer
                    .decode(&r.tokens[..stable], true)
                    .unwrap_or_default();
                if text.starts_with(&prefix) {
                    prefix.len()
                } else {
                    r.sent
                }
            };
            let hold = r.job.stop.iter().map(String::len).max().unwrap_or(1).max(1) - 1;
            visible.len().saturating_sub(hold).min(stable_len)
        };
        while end > r.sent && !visible.is_char_boundary(end) {
            end -= 1;
        }
        if end > r.sent
            && let Some(piece) = visible.get(r.sent..end)
        {
            let _ = r.job.events.send(Event::Text(piece.to_string()));
            r.sent = end;
        }
        let Some(finish_reason) = finish else {
            return false;
        };
        if r.job.explain {
            // On the model thread, between steps: the other requests wait for it.
            let event = match guarded(|| self.explain(r)) {
                Ok(report) => Event::Explanation(report),
                Err(message) => Event::Error {
                    status: 500,
                    message: format!("the answer could not be explained: {message}"),
                },
            };
            let _ = r.job.events.send(event);
        }
        self.metrics
            .request_latency
            .observe(r.job.arrived.elapsed().as_secs_f64());
        self.uncount(r);
        let _ = r.job.events.send(Event::Done {
            finish_reason,
            usage: Usage::new(r.prompt_len, r.tokens.len()),
        });
        self.cache.release(r.slot);
        true
    }
}

/// The token for row `row` of `logits` `[rows, vocab]`: greedy, or drawn by `sampler`.
fn pick(
    logits: &Tensor,
    row: i64,
    sampler: Option<&mut Sampler>,
) -> std::result::Result<i64, String> {
    let row = logits.get(row);
    match sampler {
        None => Ok(row.argmax(-1, false).int64_value(&[])),
        Some(sampler) => {
            let values =
                Vec::<f32>::try_from(row.to_device(tch::Device::Cpu)).map_err(|e| e.to_string())?;
            Ok(sampler.sample(&values))
        }
    }
}
