//! An OpenAI-compatible HTTP server over the continuous-batching [`Scheduler`].
//!
//! This crate owns HTTP only: routing (axum), request validation, SSE framing, auth, limits,
//! metrics and graceful shutdown. It never runs model work on the async runtime's threads: the
//! engine thread of [`Scheduler`] does all of it, and handlers talk to it through channels
//! (tokenization, short CPU work, runs on tokio's blocking pool). A handler that goes away (the
//! client disconnected, or stopped reading its response for [`ServerConfig::write_timeout`], at
//! which point the server closes the connection) drops its channel's receiver, and the scheduler
//! frees the sequence at its next step.
//!
//! Routes: `POST /v1/chat/completions`, `POST /v1/completions`, `GET /v1/models`, `GET /health`
//! (503 until a scheduler is [set](Server::set_ready)), `GET /metrics` (Prometheus text). With an
//! API key, every route but `/health` needs `Authorization: Bearer <key>`.
#![deny(missing_docs)]

mod api;
mod conn;
mod metrics;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Request as HttpRequest, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::StreamExt;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};

use bitnet_engine::scheduler::Completion;
pub use bitnet_engine::scheduler::kv_bytes_per_position;
pub use bitnet_engine::{Engine, Scheduler, SchedulerConfig, SchedulerStats};
use bitnet_engine::{EngineError, Event, EventSink, Prompt, Request, SubmitError};

use api::{ApiError, ChatRequest, Common, CompletionRequest};
use metrics::Metrics;

/// Settings of the HTTP layer.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Required bearer token for every route but `/health` (`None`: no auth).
    pub api_key: Option<String>,
    /// The model id reported by `/v1/models` and in responses.
    pub model_name: String,
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// A client must send its request headers within this time.
    pub header_timeout: Duration,
    /// A client must send its request body within this time.
    pub body_timeout: Duration,
    /// A client must keep reading its response: once the server has had bytes waiting for the
    /// connection's socket this long without any going out (the client's receive window and
    /// the send buffer are full), the connection is closed and its request cancelled, freeing
    /// its batch slot and KV cache. Only a client that stops reading trips it: a model slower
    /// than this between tokens does not, as nothing waits to be written then. (Zero closes a
    /// connection at the first sign of backpressure.)
    pub write_timeout: Duration,
    /// On shutdown, running requests get this long to finish before they are cancelled.
    pub shutdown_grace: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            api_key: None,
            model_name: "bitnet".into(),
            max_body_bytes: 1 << 20,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

struct AppState {
    config: ServerConfig,
    ready: OnceLock<Scheduler>,
    metrics: Metrics,
    next_id: AtomicU64,
}

/// The server: configuration, readiness and metrics. Cheap to clone (shared).
#[derive(Clone)]
pub struct Server {
    state: Arc<AppState>,
}

impl Server {
    /// A server that answers `/health` with 503 until [`set_ready`](Self::set_ready).
    pub fn new(config: ServerConfig) -> Self {
        Self {
            state: Arc::new(AppState {
                config,
                ready: OnceLock::new(),
                metrics: Metrics::new(),
                next_id: AtomicU64::new(1),
            }),
        }
    }

    /// Hands over the loaded model's scheduler; from now on the server is ready. Only the first
    /// call counts (a server serves one model).
    pub fn set_ready(&self, scheduler: Scheduler) {
        let _ = self.state.ready.set(scheduler);
    }

    /// The scheduler, once ready.
    pub fn scheduler(&self) -> Option<&Scheduler> {
        self.state.ready.get()
    }

    /// The axum router with every route and limit (for embedding in another server).
    pub fn router(&self) -> Router {
        let st = self.state.clone();
        let protected = Router::new()
            .route("/v1/chat/completions", post(chat_completions))
            .route("/v1/completions", post(completions))
            .route("/v1/models", get(models))
            .route("/metrics", get(metrics_text))
            .route_layer(middleware::from_fn_with_state(st.clone(), auth));
        Router::new()
            .route("/health", get(health))
            .merge(protected)
            .fallback(not_found)
            .layer(DefaultBodyLimit::max(st.config.max_body_bytes))
            .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
                st.config.body_timeout,
            ))
            .layer(middleware::from_fn_with_state(st.clone(), count_requests))
            .with_state(st)
    }

    /// Serves on `listener` until `shutdown` completes; then stops accepting, lets running
    /// requests finish within [`ServerConfig::shutdown_grace`] (cancelling the rest), stops the
    /// engine thread and returns.
    pub async fn serve(
        &self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> std::io::Result<()> {
        let router = self.router();
        let graceful = GracefulShutdown::new();
        let header_timeout = self.state.config.header_timeout;
        let write_timeout = self.state.config.write_timeout;
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                accepted = listener.accept() => {
                    let stream = match accepted {
                        Ok((s, _)) => s,
                        Err(e) => {
                            // Out of file descriptors and the like: back off instead of spinning.
                            tracing::warn!("accept failed: {e}");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    let mut builder = hyper::server::conn::http1::Builder::new();
                    builder.timer(TokioTimer::new()).header_read_timeout(header_timeout);
                    let stream = conn::WriteTimeout::new(
                        stream,
                        write_timeout,
                        self.state.metrics.write_stalls.clone(),
                    );
                    let conn = builder.serve_connection(
                        TokioIo::new(stream),
                        TowerToHyperService::new(router.clone()),
                    );
                    let conn = graceful.watch(conn);
                    tokio::spawn(async move {
                        let _ = conn.await;
                    });
                }
            }
        }
        drop(listener);
        let grace = self.state.config.shutdown_grace;
        if let Some(s) = self.state.ready.get() {
            s.shutdown(grace);
        }
        // Streams end when their requests finish or are cancelled at the deadline; a client
        // that stops reading cannot hold the process past the grace period plus a margin.
        let _ = tokio::time::timeout(grace + Duration::from_secs(2), graceful.shutdown()).await;
        if let Some(s) = self.state.ready.get().cloned() {
            let _ = tokio::task::spawn_blocking(move || s.join()).await;
        }
        Ok(())
    }
}

/// Completes on SIGINT or SIGTERM (Ctrl-C only where there are no Unix signals).
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) {
            (Ok(mut i), Ok(mut t)) => {
                tokio::select! {
                    _ = i.recv() => {},
                    _ = t.recv() => {},
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Loads the model with `load` and serves it at `addr` until SIGINT/SIGTERM, on a runtime of
/// its own. The socket is bound first (so `/health` answers 503 while the model loads);
/// `on_listen` hears the bound address. A failed load stops the server and returns its error.
pub fn run(
    addr: &str,
    config: ServerConfig,
    on_listen: impl FnOnce(SocketAddr),
    load: impl FnOnce() -> Result<Scheduler, String> + Send + 'static,
) -> Result<(), RunError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("bitnet-http")
        .build()
        .map_err(RunError::Runtime)?;
    rt.block_on(async move {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| RunError::Bind(addr.to_string(), e))?;
        let local = listener.local_addr().map_err(RunError::Runtime)?;
        on_listen(local);
        let server = Server::new(config);
        let (fail_tx, fail_rx) = tokio::sync::oneshot::channel::<String>();
        let s2 = server.clone();
        tokio::task::spawn_blocking(move || match load() {
            Ok(sched) => s2.set_ready(sched),
            Err(e) => {
                let _ = fail_tx.send(e);
            }
        });
        let failed = Arc::new(std::sync::Mutex::new(None));
        let f2 = failed.clone();
        let stop = async move {
            tokio::select! {
                _ = shutdown_signal() => {},
                Ok(e) = fail_rx => {
                    if let Ok(mut g) = f2.lock() {
                        *g = Some(e);
                    }
                },
            }
        };
        server
            .serve(listener, stop)
            .await
            .map_err(RunError::Runtime)?;
        let failure = failed.lock().ok().and_then(|mut g| g.take());
        match failure {
            Some(e) => Err(RunError::Load(e)),
            None => Ok(()),
        }
    })
}

/// Why [`run`] failed.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The address could not be bound.
    #[error("cannot listen on {0}: {1}")]
    Bind(String, std::io::Error),
    /// The async runtime failed.
    #[error("server runtime: {0}")]
    Runtime(std::io::Error),
    /// The model could not be loaded.
    #[error("{0}")]
    Load(String),
}

// ---------------------------------------------------------------------------------------------
// Middleware

/// Compares in time that depends only on the lengths, so a wrong key leaks nothing about where
/// it differs.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = (a.len() ^ b.len()) as u64;
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= u64::from(x ^ y);
    }
    std::hint::black_box(diff) == 0
}

async fn auth(State(st): State<Arc<AppState>>, req: HttpRequest, next: Next) -> Response {
    let Some(key) = &st.config.api_key else {
        return next.run(req).await;
    };
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    let expected = format!("Bearer {key}");
    if constant_time_eq(given, expected.as_bytes()) {
        next.run(req).await
    } else {
        let msg = if given.is_empty() {
            "missing API key: send the header 'Authorization: Bearer <key>'"
        } else {
            "incorrect API key"
        };
        let mut e = ApiError::new(StatusCode::UNAUTHORIZED, "invalid_request_error", msg)
            .code("invalid_api_key");
        e.param = None;
        let mut r = e.into_response();
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            axum::http::HeaderValue::from_static("Bearer"),
        );
        r
    }
}

fn route_name(path: &str) -> &'static str {
    match path {
        "/v1/chat/completions" => "/v1/chat/completions",
        "/v1/completions" => "/v1/completions",
        "/v1/models" => "/v1/models",
        "/health" => "/health",
        "/metrics" => "/metrics",
        _ => "other",
    }
}

async fn count_requests(State(st): State<Arc<AppState>>, req: HttpRequest, next: Next) -> Response {
    let route = route_name(req.uri().path());
    let resp = next.run(req).await;
    st.metrics.count_request(route, resp.status().as_u16());
    resp
}

// ---------------------------------------------------------------------------------------------
// Simple routes

async fn health(State(st): State<Arc<AppState>>) -> Response {
    match st.ready.get() {
        Some(s) if !s.is_shutting_down() => Json(json!({"status": "ok"})).into_response(),
        Some(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "shutting down"})),
        )
            .into_response(),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "loading"})),
        )
            .into_response(),
    }
}

use axum::Json;

async fn models(State(st): State<Arc<AppState>>) -> Response {
    Json(json!({
        "object": "list",
        "data": [{
            "id": st.config.model_name,
            "object": "model",
            "created": unix_now(),
            "owned_by": "bitnet-rs",
        }],
    }))
    .into_response()
}

async fn metrics_text(State(st): State<Arc<AppState>>) -> Response {
    let stats = st
        .ready
        .get()
        .map(|s| (s.stats(), s.config().kv_budget_bytes));
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        st.metrics.render(stats),
    )
        .into_response()
}

async fn not_found() -> Response {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        "no such route",
    )
    .into_response()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------
// Completions

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Chat,
    Text,
}

fn body_error(r: BytesRejection, limit: usize) -> ApiError {
    if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            format!("the request body is larger than the limit of {limit} bytes"),
        )
    } else {
        ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "invalid_request_error",
            format!(
                "the request body could not be read in time: {}",
                r.body_text()
            ),
        )
    }
}

/// The request body parsed as `T`, or the error response (size limit, timeout, bad JSON).
// The error is the response itself, built once per rejected request: its size does not matter.
#[allow(clippy::result_large_err)]
fn parse_body<T: serde::de::DeserializeOwned>(
    st: &AppState,
    body: Result<Bytes, BytesRejection>,
) -> Result<T, Response> {
    let body = body.map_err(|r| body_error(r, st.config.max_body_bytes).into_response())?;
    api::parse(&body).map_err(IntoResponse::into_response)
}

async fn chat_completions(
    State(st): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let req: ChatRequest = match parse_body(&st, body) {
        Ok(r) => r,
        Err(e) => return e,
    };
    let messages = match req.messages() {
        Ok(m) => m,
        Err(e) => return e.into_response(),
    };
    generate(st, Kind::Chat, Prompt::Chat(messages), req.common)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn completions(
    State(st): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let req: CompletionRequest = match parse_body(&st, body) {
        Ok(r) => r,
        Err(e) => return e,
    };
    let prompt = match req.prompt() {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    generate(st, Kind::Text, Prompt::Text(prompt), req.common)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

/// Sends engine events into a tokio channel; a dropped receiver reads as a closed sink.
struct ChannelSink(UnboundedSender<Event>);

impl EventSink for ChannelSink {
    fn send(&mut self, event: Event) -> bool {
        self.0.send(event).is_ok()
    }
    fn is_closed(&self) -> bool {
        self.0.is_closed()
    }
}

fn engine_error(e: EngineError, param: &'static str) -> ApiError {
    match e {
        EngineError::PromptTooLong { .. } => ApiError::invalid(e.to_string())
            .param(param)
            .code("context_length_exceeded"),
        EngineError::NoTokenizer | EngineError::NoChatTemplate => {
            ApiError::invalid(e.to_string()).param(param)
        }
        EngineError::Tokenizer(_) | EngineError::Options(_) => {
            ApiError::invalid(e.to_string()).param(param)
        }
        other => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            other.to_string(),
        ),
    }
}

fn unavailable(msg: &str) -> ApiError {
    let mut e = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", msg);
    e.retry_after = Some(5);
    e
}

async fn generate(
    st: Arc<AppState>,
    kind: Kind,
    prompt: Prompt,
    common: Common,
) -> Result<Response, ApiError> {
    let arrived = Instant::now();
    let sched = st
        .ready
        .get()
        .cloned()
        .ok_or_else(|| unavailable("the model is still loading"))?;
    if sched.is_shutting_down() {
        return Err(unavailable("the server is shutting down"));
    }
    let (mut opts, max) = common.options()?;
    let param = if kind == Kind::Chat {
        "messages"
    } else {
        "prompt"
    };
    let engine = sched.engine().clone();
    let tokens = tokio::task::spawn_blocking(move || {
        bitnet_engine::scheduler::tokenize_prompt(&engine, prompt, None)
    })
    .await
    .map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            format!("tokenizing failed: {e}"),
        )
    })?
    .map_err(|e| engine_error(e, param))?;
    let ctx = sched.engine().context_length();
    opts.max_tokens = max.unwrap_or(ctx.saturating_sub(tokens.len()));
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let submitted = sched.submit(Request {
        prompt: tokens,
        opts,
        sink: Box::new(ChannelSink(tx)),
    });
    if let Err(e) = submitted {
        return Err(match e {
            SubmitError::QueueFull { .. } => {
                st.metrics.rejected_busy.fetch_add(1, Ordering::Relaxed);
                let mut a = ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limit_error",
                    e.to_string(),
                )
                .code("server_busy");
                a.retry_after = Some(1);
                a
            }
            SubmitError::TooLarge { .. } => ApiError::invalid(e.to_string())
                .param("max_tokens")
                .code("context_length_exceeded"),
            SubmitError::Invalid(inner) => engine_error(inner, param),
            SubmitError::ShuttingDown => unavailable("the server is shutting down"),
        });
    }
    let id = st.next_id.fetch_add(1, Ordering::Relaxed);
    let meta = Meta {
        id: match kind {
            Kind::Chat => format!("chatcmpl-{id}"),
            Kind::Text => format!("cmpl-{id}"),
        },
        created: unix_now(),
        model: st.config.model_name.clone(),
        kind,
    };
    let timer = Timer {
        st: st.clone(),
        arrived,
        last: None,
    };
    if common.stream() {
        Ok(stream_response(rx, meta, timer, common.include_usage()))
    } else {
        collect_response(rx, meta, timer, &sched).await
    }
}

struct Meta {
    id: String,
    created: u64,
    model: String,
    kind: Kind,
}

/// Records time to first token and inter-token latency as tokens reach the handler.
struct Timer {
    st: Arc<AppState>,
    arrived: Instant,
    last: Option<Instant>,
}

impl Timer {
    fn token(&mut self) {
        let now = Instant::now();
        match self.last {
            None => self.st.metrics.ttft.observe(now - self.arrived),
            Some(l) => self.st.metrics.itl.observe(now - l),
        }
        self.last = Some(now);
    }
}

/// OpenAI's `usage` object; `prompt_tokens_details.cached_tokens` counts the prompt tokens the
/// prompt cache served.
fn usage(c: &Completion) -> Value {
    json!({
        "prompt_tokens": c.prompt_tokens,
        "completion_tokens": c.completion_tokens,
        "total_tokens": c.prompt_tokens + c.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": c.cached_tokens},
    })
}

async fn collect_response(
    mut rx: UnboundedReceiver<Event>,
    meta: Meta,
    mut timer: Timer,
    sched: &Scheduler,
) -> Result<Response, ApiError> {
    let mut text = String::new();
    loop {
        match rx.recv().await {
            Some(Event::Token(t)) => {
                timer.token();
                text.push_str(&t.text);
            }
            Some(Event::Done(c)) => {
                text.push_str(&c.tail);
                let finish = c.finish.openai();
                let choice = match meta.kind {
                    Kind::Chat => json!({
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "logprobs": null,
                        "finish_reason": finish,
                    }),
                    Kind::Text => json!({
                        "index": 0,
                        "text": text,
                        "logprobs": null,
                        "finish_reason": finish,
                    }),
                };
                let object = match meta.kind {
                    Kind::Chat => "chat.completion",
                    Kind::Text => "text_completion",
                };
                return Ok(Json(json!({
                    "id": meta.id,
                    "object": object,
                    "created": meta.created,
                    "model": meta.model,
                    "choices": [choice],
                    "usage": usage(&c),
                }))
                .into_response());
            }
            Some(Event::Error(e)) => {
                return Err(if sched.is_shutting_down() {
                    unavailable(&e)
                } else {
                    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", e)
                });
            }
            None => {
                return Err(ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "server_error",
                    "the engine stopped before finishing this request",
                ));
            }
        }
    }
}

struct StreamState {
    rx: UnboundedReceiver<Event>,
    meta: Meta,
    timer: Timer,
    include_usage: bool,
    started: bool,
    ended: bool,
}

impl StreamState {
    fn chunk(&self, piece: Option<&str>, finish: Option<&str>) -> SseEvent {
        let choice = match self.meta.kind {
            Kind::Chat => {
                let delta = match (piece, self.started) {
                    (Some(p), _) => json!({"content": p}),
                    (None, false) => json!({"role": "assistant", "content": ""}),
                    (None, true) => json!({}),
                };
                json!({"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish})
            }
            Kind::Text => json!({
                "index": 0,
                "text": piece.unwrap_or_default(),
                "logprobs": null,
                "finish_reason": finish,
            }),
        };
        let mut v = self.envelope(json!([choice]));
        if self.include_usage {
            v["usage"] = Value::Null;
        }
        SseEvent::default().data(v.to_string())
    }

    fn envelope(&self, choices: Value) -> Value {
        let object = match self.meta.kind {
            Kind::Chat => "chat.completion.chunk",
            Kind::Text => "text_completion",
        };
        json!({
            "id": self.meta.id,
            "object": object,
            "created": self.meta.created,
            "model": self.meta.model,
            "choices": choices,
        })
    }

    /// The next SSE events: waits for the engine's next event.
    async fn next(&mut self) -> Vec<SseEvent> {
        if self.ended {
            return Vec::new();
        }
        if !self.started && self.meta.kind == Kind::Chat {
            let first = self.chunk(None, None);
            self.started = true;
            return vec![first];
        }
        self.started = true;
        loop {
            match self.rx.recv().await {
                Some(Event::Token(t)) => {
                    self.timer.token();
                    if !t.text.is_empty() {
                        return vec![self.chunk(Some(&t.text), None)];
                    }
                }
                Some(Event::Done(c)) => {
                    self.ended = true;
                    let mut out = Vec::new();
                    if !c.tail.is_empty() {
                        out.push(self.chunk(Some(&c.tail), None));
                    }
                    out.push(self.chunk(None, Some(c.finish.openai())));
                    if self.include_usage {
                        let mut v = self.envelope(json!([]));
                        v["usage"] = usage(&c);
                        out.push(SseEvent::default().data(v.to_string()));
                    }
                    out.push(SseEvent::default().data("[DONE]"));
                    return out;
                }
                Some(Event::Error(e)) => {
                    self.ended = true;
                    let err = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", e);
                    return vec![
                        SseEvent::default().data(err.body().to_string()),
                        SseEvent::default().data("[DONE]"),
                    ];
                }
                None => {
                    self.ended = true;
                    let err = ApiError::new(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "server_error",
                        "the engine stopped before finishing this request",
                    );
                    return vec![
                        SseEvent::default().data(err.body().to_string()),
                        SseEvent::default().data("[DONE]"),
                    ];
                }
            }
        }
    }
}

fn stream_response(
    rx: UnboundedReceiver<Event>,
    meta: Meta,
    timer: Timer,
    include_usage: bool,
) -> Response {
    let state = StreamState {
        rx,
        meta,
        timer,
        include_usage,
        started: false,
        ended: false,
    };
    let stream = futures_util::stream::unfold(state, |mut s| async move {
        let events = s.next().await;
        if events.is_empty() {
            None
        } else {
            Some((events, s))
        }
    })
    .flat_map(futures_util::stream::iter)
    .map(Ok::<_, Infallible>);
    let mut r = Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response();
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        axum::http::HeaderValue::from_static("no-cache"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::constant_time_eq;

    #[test]
    fn constant_time_compare() {
        assert!(constant_time_eq(b"Bearer k", b"Bearer k"));
        assert!(!constant_time_eq(b"Bearer k", b"Bearer j"));
        assert!(!constant_time_eq(b"Bearer k", b"Bearer kk"));
        assert!(!constant_time_eq(b"", b"Bearer k"));
    }
}
