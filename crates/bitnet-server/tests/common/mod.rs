//! Starts the server in-process on loopback (port 0) with a fixture model, and small blocking
//! HTTP helpers over ureq.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bitnet_engine::{Engine, EngineBuilder, GenerateOptions, Prompt, Scheduler, SchedulerConfig};
use bitnet_server::{Server, ServerConfig};
use serde_json::Value;

pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/models")
        .join(name)
}

/// The fixture engine without a thread pool: these tests run forwards of one engine from two
/// threads at once (the scheduler's, and the test's own `generate` for the expected output),
/// and `bitnet_core::pool::ThreadPool` does not support concurrent callers.
pub fn engine() -> Engine {
    EngineBuilder::new(fixture("untied-gqa4/model-tq2_0.gguf").to_string_lossy())
        .threads(1)
        .build()
        .unwrap()
}

/// The greedy output of the engine alone (no server, no batching): what responses must equal.
pub fn greedy_alone(engine: &Engine, prompt: Prompt, n: usize) -> String {
    engine
        .generate_text(prompt, GenerateOptions::greedy(n))
        .unwrap()
}

pub struct TestServer {
    pub addr: SocketAddr,
    pub server: Server,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl TestServer {
    /// A server without a model yet (`/health` is 503 until `ready`).
    pub fn start_unready(config: ServerConfig) -> Self {
        Self::start_unready_with(config, None)
    }

    /// As [`start_unready`](Self::start_unready); with `send_buffer`, the listening socket's
    /// SO_SNDBUF is set to it, which (on Linux) accepted connections inherit, with the kernel's
    /// send-buffer autotuning off: responses back up into the server after a few KiB when the
    /// client does not read, instead of after the megabytes loopback autotuning allows.
    pub fn start_unready_with(config: ServerConfig, send_buffer: Option<u32>) -> Self {
        let server = Server::new(config);
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let s2 = server.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = match send_buffer {
                    None => tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
                    Some(n) => {
                        let socket = tokio::net::TcpSocket::new_v4().unwrap();
                        socket.set_send_buffer_size(n).unwrap();
                        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
                        socket.listen(128).unwrap()
                    }
                };
                addr_tx.send(listener.local_addr().unwrap()).unwrap();
                s2.serve(listener, async {
                    let _ = stop_rx.await;
                })
                .await
                .unwrap();
            });
        });
        let addr = addr_rx.recv_timeout(Duration::from_secs(10)).unwrap();
        Self {
            addr,
            server,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    pub fn start(config: ServerConfig, engine: Engine, sched: SchedulerConfig) -> Self {
        Self::start_with(config, engine, sched, None)
    }

    /// As [`start`](Self::start), with a small socket send buffer (see
    /// [`start_unready_with`](Self::start_unready_with)).
    pub fn start_with(
        config: ServerConfig,
        engine: Engine,
        sched: SchedulerConfig,
        send_buffer: Option<u32>,
    ) -> Self {
        let s = Self::start_unready_with(config, send_buffer);
        s.server.set_ready(Scheduler::start(engine, sched).unwrap());
        s
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn scheduler(&self) -> &Scheduler {
        self.server.scheduler().unwrap()
    }

    /// Signals shutdown and waits for `serve` to return; returns how long that took.
    pub fn shutdown(&mut self) -> Duration {
        let t = Instant::now();
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(h) = self.thread.take() {
            h.join().unwrap();
        }
        t.elapsed()
    }

    /// Waits (bounded) until no request is running or waiting and no KV memory is reserved.
    pub fn wait_idle(&self) -> bitnet_engine::SchedulerStats {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let s = self.scheduler().stats();
            if (s.in_flight == 0
                && s.active == 0
                && s.kv_reserved_bytes == 0
                && s.kv_used_bytes == 0)
                || Instant::now() > deadline
            {
                return s;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

pub fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(60))
        .build()
}

/// POSTs a JSON body; returns the status and the parsed body (errors included).
pub fn post(url: &str, body: &str, key: Option<&str>) -> (u16, Value, Option<String>) {
    let mut req = agent().post(url).set("Content-Type", "application/json");
    if let Some(k) = key {
        req = req.set("Authorization", &format!("Bearer {k}"));
    }
    match req.send_string(body) {
        Ok(r) => {
            let status = r.status();
            let v: Value = serde_json::from_str(&r.into_string().unwrap()).unwrap();
            (status, v, None)
        }
        Err(ureq::Error::Status(code, r)) => {
            let retry = r.header("Retry-After").map(str::to_string);
            let text = r.into_string().unwrap();
            let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
            (code, v, retry)
        }
        Err(e) => panic!("transport error: {e}"),
    }
}

pub fn get(url: &str, key: Option<&str>) -> (u16, String) {
    let mut req = agent().get(url);
    if let Some(k) = key {
        req = req.set("Authorization", &format!("Bearer {k}"));
    }
    match req.call() {
        Ok(r) => (r.status(), r.into_string().unwrap()),
        Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap()),
        Err(e) => panic!("transport error: {e}"),
    }
}

/// What a streamed response held.
#[derive(Debug, Default)]
pub struct Streamed {
    pub text: String,
    pub finish: Option<String>,
    pub usage: Option<Value>,
    pub chunks: Vec<Value>,
    pub done: bool,
    pub error: Option<Value>,
}

/// POSTs a streaming request and reads SSE events; stops after `max_chunks` data events (then
/// drops the connection) when given.
pub fn stream(url: &str, body: &str, max_chunks: Option<usize>) -> Streamed {
    let r = agent()
        .post(url)
        .set("Content-Type", "application/json")
        .send_string(body)
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.content_type().starts_with("text/event-stream"),
        "{}",
        r.content_type()
    );
    let mut out = Streamed::default();
    let reader = BufReader::new(r.into_reader());
    for line in reader.lines() {
        let line = line.unwrap();
        let Some(data) = line.strip_prefix("data: ") else {
            continue;
        };
        if data == "[DONE]" {
            out.done = true;
            break;
        }
        let v: Value = serde_json::from_str(data).unwrap();
        if let Some(e) = v.get("error") {
            out.error = Some(e.clone());
            continue;
        }
        if let Some(c) = v["choices"].get(0) {
            if let Some(t) = c["delta"]["content"].as_str().or(c["text"].as_str()) {
                out.text.push_str(t);
            }
            if let Some(f) = c["finish_reason"].as_str() {
                out.finish = Some(f.to_string());
            }
        }
        if !v["usage"].is_null() && v.get("usage").is_some() {
            out.usage = Some(v["usage"].clone());
        }
        out.chunks.push(v);
        if max_chunks.is_some_and(|m| out.chunks.len() >= m) {
            break;
        }
    }
    out
}

/// Polls `f` every 10 ms until it holds; false if it did not within `limit`.
pub fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The value of an unlabelled metric in a Prometheus text exposition.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        let (n, v) = l.split_once(' ')?;
        if n == name {
            v.trim().parse().ok()
        } else {
            None
        }
    })
}

/// This process's resident set size in bytes (`VmRSS` of /proc/self/status), where there is
/// one (Linux); `None` elsewhere.
pub fn vm_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    // "VmRSS:    123456 kB"
    let kb: u64 = line
        .trim_start_matches("VmRSS:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}
