//! The HTTP server end to end on loopback with a fixture model: OpenAI shapes, greedy output
//! equal to the engine alone, errors, stalled clients (sending or reading), 429, auth,
//! readiness and graceful shutdown (the concurrent load test is in `load.rs`). Fixture text is gibberish by design: outputs are compared
//! exactly, never for meaning.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use bitnet_engine::{
    ChatMessage, Event, EventSink, GenerateOptions, Prompt, Request, SchedulerConfig,
};
use bitnet_server::ServerConfig;
use common::*;
use serde_json::{Value, json};

#[test]
fn completions_and_chat_equal_the_engine_alone_streaming_or_not() {
    let engine = engine();
    let cfg = SchedulerConfig::for_engine(&engine);
    let srv = TestServer::start(ServerConfig::default(), engine.clone(), cfg);
    let prompt = "The quick brown fox";
    let want = greedy_alone(&engine, prompt.into(), 12);
    let n_prompt = bitnet_engine::scheduler::tokenize_prompt(&engine, prompt.into(), None)
        .unwrap()
        .len();

    let body = json!({"model": "x", "prompt": prompt, "max_tokens": 12, "temperature": 0,
                      "some_unknown_field": [1, 2]});
    let (status, v, _) = post(&srv.url("/v1/completions"), &body.to_string(), None);
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["object"], "text_completion");
    assert_eq!(v["choices"][0]["text"], want.as_str());
    assert_eq!(v["usage"]["prompt_tokens"], n_prompt);
    let completion = v["usage"]["completion_tokens"].as_u64().unwrap();
    assert!((1..=12).contains(&completion));
    assert_eq!(v["usage"]["total_tokens"], n_prompt as u64 + completion);
    assert_eq!(v["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
    let finish = v["choices"][0]["finish_reason"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(finish, if completion == 12 { "length" } else { "stop" });

    let mut sbody = body.clone();
    sbody["stream"] = json!(true);
    sbody["stream_options"] = json!({"include_usage": true});
    let s = stream(&srv.url("/v1/completions"), &sbody.to_string(), None);
    assert!(s.done && s.error.is_none(), "{s:?}");
    assert_eq!(s.text, want);
    assert_eq!(s.finish.as_deref(), Some(finish.as_str()));
    assert_eq!(s.usage.as_ref().unwrap()["completion_tokens"], completion);
    // The same prompt again: all of it but its last token came from the prompt cache.
    assert_eq!(
        s.usage.as_ref().unwrap()["prompt_tokens_details"]["cached_tokens"],
        n_prompt - 1
    );
    // The usage chunk comes last with no choices; the others carry usage: null.
    let last = s.chunks.last().unwrap();
    assert_eq!(last["choices"], json!([]));
    assert!(
        s.chunks[..s.chunks.len() - 1]
            .iter()
            .all(|c| c["usage"].is_null())
    );

    // Chat, with a stop string taken from the expected output.
    let messages = vec![
        ChatMessage::system("be brief"),
        ChatMessage::user("hello there"),
    ];
    let want_chat = greedy_alone(&engine, Prompt::Chat(messages.clone()), 16);
    let body = json!({"messages": [{"role": "system", "content": "be brief"},
                                   {"role": "user", "content": [{"type": "text", "text": "hello there"}]}],
                      "max_completion_tokens": 16, "temperature": 0.0});
    let (status, v, _) = post(&srv.url("/v1/chat/completions"), &body.to_string(), None);
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    assert_eq!(v["choices"][0]["message"]["content"], want_chat.as_str());
    let mut sbody = body.clone();
    sbody["stream"] = json!(true);
    let s = stream(&srv.url("/v1/chat/completions"), &sbody.to_string(), None);
    assert!(s.done && s.error.is_none(), "{s:?}");
    assert_eq!(s.text, want_chat);
    assert_eq!(s.chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(s.chunks[0]["object"], "chat.completion.chunk");
    assert!(s.usage.is_none());

    // A stop string ends generation before it, as the engine alone does.
    let stop: String = want.chars().skip(3).take(2).collect();
    if !stop.is_empty() && !stop.contains('\u{FFFD}') {
        let mut opts = GenerateOptions::greedy(12);
        opts.stop = vec![stop.clone()];
        let want_stop = engine.generate_text(prompt, opts).unwrap();
        let body = json!({"prompt": prompt, "max_tokens": 12, "temperature": 0, "stop": stop});
        let (_, v, _) = post(&srv.url("/v1/completions"), &body.to_string(), None);
        assert_eq!(v["choices"][0]["text"], want_stop.as_str());
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
    }

    // Seeded sampling is reproducible through the server.
    let body = json!({"prompt": prompt, "max_tokens": 8, "temperature": 1.0, "seed": 7,
                      "top_k": 50, "top_p": 0.9, "min_p": 0.01,
                      "presence_penalty": 0.5, "frequency_penalty": 0.5});
    let (_, a, _) = post(&srv.url("/v1/completions"), &body.to_string(), None);
    let (_, b, _) = post(&srv.url("/v1/completions"), &body.to_string(), None);
    assert_eq!(a["choices"][0]["text"], b["choices"][0]["text"]);

    let (status, models) = get(&srv.url("/v1/models"), None);
    assert_eq!(status, 200);
    let models: Value = serde_json::from_str(&models).unwrap();
    assert_eq!(models["data"][0]["id"], "bitnet");
    let stats = srv.wait_idle();
    assert_eq!((stats.in_flight, stats.kv_reserved_bytes), (0, 0));
}

fn error_of(v: &Value) -> (&str, Option<&str>, Option<&str>) {
    let e = &v["error"];
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    (
        e["type"].as_str().unwrap(),
        e["param"].as_str(),
        e["code"].as_str(),
    )
}

#[test]
fn malformed_requests_get_openai_errors() {
    let engine = engine();
    let cfg = SchedulerConfig::for_engine(&engine);
    let config = ServerConfig {
        max_body_bytes: 4096,
        ..ServerConfig::default()
    };
    let srv = TestServer::start(config, engine, cfg);
    let url = srv.url("/v1/completions");
    let chat = srv.url("/v1/chat/completions");
    let cases: Vec<(&str, String, u16, Option<&str>)> = vec![
        (&url, "{not json".into(), 400, None),
        (&url, "[1,2]".into(), 400, None),
        (&url, r#"{"prompt": 5}"#.into(), 400, None),
        (&url, r#"{"max_tokens": 3}"#.into(), 400, None),
        (
            &url,
            r#"{"prompt": "a", "max_tokens": "ten"}"#.into(),
            400,
            None,
        ),
        (
            &url,
            r#"{"prompt": "a", "max_tokens": -1}"#.into(),
            400,
            None,
        ),
        (
            &url,
            r#"{"prompt": "a", "max_tokens": 0}"#.into(),
            400,
            Some("max_tokens"),
        ),
        (&url, r#"{"prompt": "a", "n": 2}"#.into(), 400, Some("n")),
        (
            &url,
            r#"{"prompt": "a", "temperature": 9}"#.into(),
            400,
            Some("temperature"),
        ),
        (
            &url,
            r#"{"prompt": "a", "top_p": -0.5}"#.into(),
            400,
            Some("top_p"),
        ),
        (
            &url,
            r#"{"prompt": ["a", "b"]}"#.into(),
            400,
            Some("prompt"),
        ),
        (&url, r#"{"prompt": "a", "stop": 3}"#.into(), 400, None),
        (&chat, r#"{"messages": []}"#.into(), 400, Some("messages")),
        (&chat, r#"{"messages": "hi"}"#.into(), 400, None),
        (
            &chat,
            r#"{"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}"#.into(),
            400,
            Some("messages[0].content"),
        ),
        // Longer than the 128-token context of the fixture.
        (
            &url,
            json!({"prompt": "fox ".repeat(300)}).to_string(),
            400,
            Some("prompt"),
        ),
        (
            &url,
            json!({"prompt": "x".repeat(10_000)}).to_string(),
            413,
            None,
        ),
    ];
    for (u, body, want, param) in cases {
        let (status, v, _) = post(u, &body, None);
        assert_eq!(status, want, "{body:.80}: {v}");
        let (_, p, _) = error_of(&v);
        if param.is_some() {
            assert_eq!(p, param, "{body:.80}: {v}");
        }
    }
    let (_, v, _) = post(
        &url,
        &json!({"prompt": "fox ".repeat(300)}).to_string(),
        None,
    );
    assert_eq!(error_of(&v).2, Some("context_length_exceeded"));
    let (status, body) = get(&srv.url("/nope"), None);
    assert_eq!(status, 404, "{body}");
    let stats = srv.wait_idle();
    assert_eq!(stats.in_flight, 0);
}

#[test]
fn stalled_clients_are_cut_off() {
    use std::io::{Read, Write};
    let engine = engine();
    let cfg = SchedulerConfig::for_engine(&engine);
    let srv = TestServer::start(
        ServerConfig {
            header_timeout: Duration::from_millis(300),
            body_timeout: Duration::from_millis(300),
            ..ServerConfig::default()
        },
        engine,
        cfg,
    );
    // Headers that never finish: the connection is closed.
    let t = Instant::now();
    let mut c = std::net::TcpStream::connect(srv.addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let mut buf = Vec::new();
    let _ = c.read_to_end(&mut buf);
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    // A body announced but never sent: 408 with an error object.
    let t = Instant::now();
    let mut c = std::net::TcpStream::connect(srv.addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(
        b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"prompt\"",
    )
    .unwrap();
    let mut buf = Vec::new();
    let _ = c.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("\"error\""), "{text}");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
}

/// A request submitted straight to the scheduler whose sink sleeps on every event: it holds the
/// engine thread that long each step, so it makes the model as slow as a test needs, and it
/// leaves when told to.
struct Pacer {
    stop: Arc<AtomicBool>,
    events: Arc<AtomicUsize>,
}

struct PacerSink {
    delay: Duration,
    stop: Arc<AtomicBool>,
    events: Arc<AtomicUsize>,
}

impl EventSink for PacerSink {
    fn send(&mut self, _event: Event) -> bool {
        if self.stop.load(Ordering::SeqCst) {
            return false;
        }
        self.events.fetch_add(1, Ordering::SeqCst);
        std::thread::sleep(self.delay);
        true
    }
    fn is_closed(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }
}

impl Pacer {
    /// Starts it (the longest generation the context allows) and waits until it is running.
    fn start(srv: &TestServer, engine: &bitnet_engine::Engine, delay: Duration) -> Self {
        let prompt = bitnet_engine::scheduler::tokenize_prompt(engine, "dog".into(), None).unwrap();
        let mut opts = GenerateOptions::greedy(engine.context_length() - prompt.len());
        opts.ignore_eos = true;
        let stop = Arc::new(AtomicBool::new(false));
        let events = Arc::new(AtomicUsize::new(0));
        srv.scheduler()
            .submit(Request {
                prompt,
                opts,
                sink: Box::new(PacerSink {
                    delay,
                    stop: stop.clone(),
                    events: events.clone(),
                }),
            })
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while events.load(Ordering::SeqCst) == 0 {
            assert!(Instant::now() < deadline, "the pacer did not start");
            std::thread::sleep(Duration::from_millis(5));
        }
        Self { stop, events }
    }

    fn events(&self) -> usize {
        self.events.load(Ordering::SeqCst)
    }

    fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

impl Drop for Pacer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Connects with a small receive buffer (a small TCP window) and sends `body` to `path`; the
/// caller then never reads.
fn send_and_never_read(addr: std::net::SocketAddr, path: &str, body: &str) -> std::net::TcpStream {
    use std::io::Write;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .unwrap();
    let stream = rt
        .block_on(async {
            let socket = tokio::net::TcpSocket::new_v4()?;
            socket.set_recv_buffer_size(1024)?;
            socket.connect(addr).await
        })
        .unwrap();
    let mut c = stream.into_std().unwrap();
    c.set_nonblocking(false).unwrap();
    write!(
        c,
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    c.flush().unwrap();
    c
}

#[test]
fn a_client_that_stops_reading_is_cut_off_and_its_sequence_freed() {
    use std::io::Read;
    let engine = engine();
    let cfg = SchedulerConfig::for_engine(&engine);
    let config = ServerConfig {
        write_timeout: Duration::from_millis(300),
        ..ServerConfig::default()
    };
    // Small socket buffers on both ends, so that the 128-token context of the fixture makes
    // enough output to fill them (see `TestServer::start_unready_with`).
    let srv = TestServer::start_with(config, engine.clone(), cfg, Some(1024));
    // Every engine step takes at least 40 ms: the stalled stream is still generating when the
    // server notices, instead of finishing first (the fixture alone is that fast).
    let pacer = Pacer::start(&srv, &engine, Duration::from_millis(40));

    let prompt = "The quick brown fox";
    let n_prompt = bitnet_engine::scheduler::tokenize_prompt(&engine, prompt.into(), None)
        .unwrap()
        .len();
    let max_tokens = engine.context_length() - n_prompt;
    let full = engine
        .generate(prompt, GenerateOptions::greedy(max_tokens))
        .unwrap()
        .count();
    let generated_before = srv.scheduler().stats().generated_tokens;
    let pacer_before = pacer.events();
    let body = json!({"prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
                      "stream": true});
    let started = Instant::now();
    let mut stalled = send_and_never_read(srv.addr, "/v1/completions", &body.to_string());
    assert!(
        eventually(Duration::from_secs(20), || srv.scheduler().stats().active
            == 2),
        "the stream never started"
    );
    // Other clients are served while it stalls.
    let (status, v, _) = post(
        &srv.url("/v1/completions"),
        r#"{"prompt": "fox", "max_tokens": 3, "temperature": 0}"#,
        None,
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        v["choices"][0]["text"],
        greedy_alone(&engine, "fox".into(), 3).as_str()
    );
    let other_tokens = v["usage"]["completion_tokens"].as_u64().unwrap();
    // The server gives up on it and the scheduler frees its sequence, while the pacer (started
    // first, running the whole context) is still generating.
    assert!(
        eventually(Duration::from_secs(20), || srv.scheduler().stats().active
            == 1),
        "the stalled stream was not freed: {:?}",
        srv.scheduler().stats()
    );
    let cut_after = started.elapsed();
    let pacer_events = pacer.events();
    let generated = srv.scheduler().stats().generated_tokens - generated_before;
    let stream_tokens = (generated - other_tokens) as usize - (pacer_events - pacer_before);
    eprintln!(
        "stalled stream cut off after {cut_after:?}, {stream_tokens} of {full} tokens generated"
    );
    assert!(
        pacer_events < engine.context_length() - 10,
        "the pacer ran out ({pacer_events} events) before the stall was noticed"
    );
    assert!(
        stream_tokens + 5 < full,
        "the stream generated {stream_tokens} of {full} tokens: not cut off mid-generation"
    );
    pacer.stop();
    let stats = srv.wait_idle();
    assert_eq!(
        (
            stats.in_flight,
            stats.active,
            stats.kv_reserved_bytes,
            stats.kv_used_bytes
        ),
        (0, 0, 0, 0),
        "{stats:?}"
    );
    let (_, metrics) = get(&srv.url("/metrics"), None);
    assert_eq!(
        metric(&metrics, "bitnet_active_sequences"),
        Some(0.0),
        "{metrics}"
    );
    assert_eq!(
        metric(&metrics, "bitnet_write_timeouts_total"),
        Some(1.0),
        "{metrics}"
    );

    // The connection was closed: reading it drains what was sent and ends, without [DONE].
    stalled
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut got = Vec::new();
    let end = loop {
        let mut buf = [0; 8192];
        match stalled.read(&mut buf) {
            Ok(0) => break None,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => break Some(e.kind()),
        }
    };
    assert!(
        !matches!(
            end,
            Some(std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)
        ),
        "the server did not close the connection"
    );
    let text = String::from_utf8_lossy(&got);
    eprintln!(
        "the stalled client then read {} bytes before {:?}",
        got.len(),
        end.map_or("end of stream".to_string(), |k| k.to_string())
    );
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(!text.contains("[DONE]"), "{text}");

    // And new clients are served as before.
    let s = stream(
        &srv.url("/v1/completions"),
        r#"{"prompt": "fox", "max_tokens": 6, "temperature": 0, "stream": true}"#,
        None,
    );
    assert!(s.done && s.error.is_none(), "{s:?}");
    assert_eq!(s.text, greedy_alone(&engine, "fox".into(), 6));
}

#[test]
fn a_model_slower_than_the_write_timeout_does_not_trip_it() {
    let engine = engine();
    let cfg = SchedulerConfig::for_engine(&engine);
    let config = ServerConfig {
        write_timeout: Duration::from_millis(200),
        ..ServerConfig::default()
    };
    let srv = TestServer::start(config, engine.clone(), cfg);
    // Steps of at least 400 ms: twice the write timeout between tokens.
    let pacer = Pacer::start(&srv, &engine, Duration::from_millis(400));
    let t = Instant::now();
    let s = stream(
        &srv.url("/v1/chat/completions"),
        r#"{"messages": [{"role": "user", "content": "fox"}], "max_tokens": 3,
            "temperature": 0, "stream": true}"#,
        None,
    );
    let took = t.elapsed();
    assert!(s.done && s.error.is_none(), "{s:?}");
    assert_eq!(
        s.text,
        greedy_alone(&engine, Prompt::Chat(vec![ChatMessage::user("fox")]), 3)
    );
    assert!(took > Duration::from_millis(800), "{took:?}");
    pacer.stop();
    let (_, metrics) = get(&srv.url("/metrics"), None);
    assert_eq!(
        metric(&metrics, "bitnet_write_timeouts_total"),
        Some(0.0),
        "{metrics}"
    );
    assert_eq!(srv.wait_idle().in_flight, 0);
}

#[test]
fn api_key_guards_every_route_but_health() {
    let engine = engine();
    let cfg = SchedulerConfig::for_engine(&engine);
    let config = ServerConfig {
        api_key: Some("s3cret".into()),
        ..ServerConfig::default()
    };
    let srv = TestServer::start(config, engine, cfg);
    let body = r#"{"prompt": "fox", "max_tokens": 2}"#;
    for key in [None, Some("wrong"), Some("s3cre"), Some("s3cret2")] {
        let (status, v, _) = post(&srv.url("/v1/completions"), body, key);
        assert_eq!(status, 401, "{key:?}");
        assert_eq!(error_of(&v).2, Some("invalid_api_key"));
        assert_eq!(get(&srv.url("/v1/models"), key).0, 401);
        assert_eq!(get(&srv.url("/metrics"), key).0, 401);
    }
    let (status, v, _) = post(&srv.url("/v1/completions"), body, Some("s3cret"));
    assert_eq!(status, 200, "{v}");
    assert_eq!(get(&srv.url("/v1/models"), Some("s3cret")).0, 200);
    assert_eq!(get(&srv.url("/health"), None).0, 200);
}

/// A sink that holds the engine thread inside `send` until opened: a way to keep requests in
/// flight for exactly as long as a test needs.
struct GateSink(Arc<(Mutex<bool>, Condvar)>);

impl EventSink for GateSink {
    fn send(&mut self, _event: Event) -> bool {
        let (m, c) = &*self.0;
        let mut open = m.lock().unwrap();
        while !*open {
            let (g, t) = c.wait_timeout(open, Duration::from_secs(20)).unwrap();
            open = g;
            if t.timed_out() {
                break;
            }
        }
        true
    }
}

fn open(gate: &Arc<(Mutex<bool>, Condvar)>) {
    *gate.0.lock().unwrap() = true;
    gate.1.notify_all();
}

#[test]
fn a_full_queue_answers_429_with_retry_after() {
    let engine = engine();
    let cfg = SchedulerConfig {
        max_batch: 1,
        max_queue: 1,
        ..SchedulerConfig::for_engine(&engine)
    };
    let srv = TestServer::start(ServerConfig::default(), engine.clone(), cfg);
    let gate = Arc::new((Mutex::new(false), Condvar::new()));
    let ids = bitnet_engine::scheduler::tokenize_prompt(&engine, "fox".into(), None).unwrap();
    srv.scheduler()
        .submit(Request {
            prompt: ids,
            opts: GenerateOptions::greedy(3),
            sink: Box::new(GateSink(gate.clone())),
        })
        .unwrap();
    // The second request waits in the queue (the batch of one is taken).
    let url = srv.url("/v1/completions");
    let waiting = std::thread::spawn(move || {
        post(
            &url,
            r#"{"prompt": "dog", "max_tokens": 3, "temperature": 0}"#,
            None,
        )
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while srv.scheduler().stats().in_flight < 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(srv.scheduler().stats().in_flight, 2);
    let (status, v, retry) = post(&srv.url("/v1/completions"), r#"{"prompt": "x"}"#, None);
    assert_eq!(status, 429, "{v}");
    assert_eq!(error_of(&v).0, "rate_limit_error");
    assert_eq!(retry.as_deref(), Some("1"));
    let (_, metrics) = get(&srv.url("/metrics"), None);
    assert!(metrics.contains("bitnet_queue_depth 1\n"), "{metrics}");
    assert!(metrics.contains("bitnet_active_sequences 1\n"), "{metrics}");
    open(&gate);
    let (status, v, _) = waiting.join().unwrap();
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        v["choices"][0]["text"],
        greedy_alone(&engine, "dog".into(), 3).as_str()
    );
    assert_eq!(srv.wait_idle().in_flight, 0);
}

#[test]
fn health_is_503_until_ready_and_shutdown_is_graceful() {
    let engine = engine();
    let mut srv = TestServer::start_unready(ServerConfig {
        shutdown_grace: Duration::from_millis(300),
        ..ServerConfig::default()
    });
    assert_eq!(get(&srv.url("/health"), None).0, 503);
    let (status, v, _) = post(&srv.url("/v1/completions"), r#"{"prompt": "a"}"#, None);
    assert_eq!(status, 503, "{v}");
    let cfg = SchedulerConfig::for_engine(&engine);
    srv.server
        .set_ready(bitnet_engine::Scheduler::start(engine.clone(), cfg).unwrap());
    assert_eq!(get(&srv.url("/health"), None).0, 200);

    // A request held in flight past the grace period is cancelled with an error event, and
    // serve() returns soon after the deadline.
    let gate = Arc::new((Mutex::new(false), Condvar::new()));
    let ids = bitnet_engine::scheduler::tokenize_prompt(&engine, "fox".into(), None).unwrap();
    srv.scheduler()
        .submit(Request {
            prompt: ids,
            opts: GenerateOptions::greedy(50),
            sink: Box::new(GateSink(gate.clone())),
        })
        .unwrap();
    let url = srv.url("/v1/completions");
    let streamer = std::thread::spawn(move || {
        stream(
            &url,
            r#"{"prompt": "dog", "max_tokens": 50, "temperature": 0, "stream": true}"#,
            None,
        )
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while srv.scheduler().stats().in_flight < 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    let addr = srv.addr;
    let sched = srv.scheduler().clone();
    let opener = {
        let gate = gate.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(600));
            open(&gate);
        })
    };
    let took = srv.shutdown();
    opener.join().unwrap();
    assert!(took < Duration::from_secs(5), "shutdown took {took:?}");
    let s = streamer.join().unwrap();
    assert!(s.done, "{s:?}");
    assert!(s.error.is_some() || s.finish.is_some(), "{s:?}");
    assert!(sched.is_shutting_down());
    assert_eq!(sched.stats().in_flight, 0);
    // No longer listening.
    assert!(std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_err());
}
