//! The continuous-batching scheduler without HTTP: chunked prefill beside decodes equals the
//! engine alone, a departed client stops its sequence within one step, the KV budget holds
//! requests back until memory is free, and a prompt that goes on from a finished request's
//! tokens reuses its cache with the output unchanged.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

use bitnet_engine::scheduler::{kv_bytes_per_position, tokenize_prompt};
use bitnet_engine::{Event, EventSink, GenerateOptions, Request, Scheduler, SchedulerConfig};
use common::engine;

fn collect(rx: &Receiver<Event>) -> (String, Vec<u32>, Option<bitnet_engine::Completion>) {
    let mut text = String::new();
    let mut ids = Vec::new();
    loop {
        match rx.recv_timeout(Duration::from_secs(30)).unwrap() {
            Event::Token(t) => {
                ids.push(t.id);
                text.push_str(&t.text);
            }
            Event::Done(c) => {
                text.push_str(&c.tail);
                return (text, ids, Some(c));
            }
            Event::Error(e) => panic!("{e}"),
        }
    }
}

#[test]
fn chunked_prefill_in_a_batch_equals_alone() {
    let engine = engine();
    let sched = Scheduler::start(
        engine.clone(),
        SchedulerConfig {
            prefill_chunk: 3,
            ..SchedulerConfig::for_engine(&engine)
        },
    )
    .unwrap();
    let prompts = [
        "The quick brown fox jumps over the lazy dog again and again",
        "fox",
        "brown dog over",
        "lazy lazy lazy fox the quick",
    ];
    let mut rxs = Vec::new();
    for (i, p) in prompts.iter().enumerate() {
        let (tx, rx) = channel();
        let mut opts = GenerateOptions::greedy(10 + i * 3);
        opts.ignore_eos = true;
        sched
            .submit(Request {
                prompt: tokenize_prompt(&engine, (*p).into(), None).unwrap(),
                opts,
                sink: Box::new(tx),
            })
            .unwrap();
        rxs.push(rx);
    }
    for (i, (p, rx)) in prompts.iter().zip(&rxs).enumerate() {
        let mut opts = GenerateOptions::greedy(10 + i * 3);
        opts.ignore_eos = true;
        let mut alone = engine.generate(*p, opts).unwrap();
        let alone_ids: Vec<u32> = alone.by_ref().map(|t| t.unwrap().id).collect();
        let (text, ids, done) = collect(rx);
        assert_eq!(ids, alone_ids, "prompt {i}");
        let mut opts = GenerateOptions::greedy(10 + i * 3);
        opts.ignore_eos = true;
        assert_eq!(text, engine.generate_text(*p, opts).unwrap());
        let done = done.unwrap();
        assert_eq!(done.completion_tokens, 10 + i * 3);
        assert_eq!(done.finish.openai(), "length");
    }
    let s = sched.stats();
    assert_eq!((s.in_flight, s.active, s.kv_reserved_bytes), (0, 0, 0));
    sched.shutdown(Duration::ZERO);
    sched.join();
}

/// Hangs up after `after` tokens, as a client that disconnects mid-stream.
struct HangUp {
    after: usize,
    seen: Arc<AtomicUsize>,
}

impl EventSink for HangUp {
    fn send(&mut self, event: Event) -> bool {
        if matches!(event, Event::Token(_)) {
            self.seen.fetch_add(1, Ordering::SeqCst);
        }
        self.seen.load(Ordering::SeqCst) < self.after
    }
}

struct Flag(Arc<AtomicBool>);

impl EventSink for Flag {
    fn send(&mut self, _: Event) -> bool {
        !self.0.load(Ordering::SeqCst)
    }
    fn is_closed(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

fn wait_idle(sched: &Scheduler) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while sched.stats().in_flight > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn a_departed_client_stops_its_sequence_at_once() {
    let engine = engine();
    let sched = Scheduler::start(engine.clone(), SchedulerConfig::for_engine(&engine)).unwrap();
    let seen = Arc::new(AtomicUsize::new(0));
    let before = sched.stats().generated_tokens;
    let mut opts = GenerateOptions::greedy(100);
    opts.ignore_eos = true;
    sched
        .submit(Request {
            prompt: tokenize_prompt(&engine, "fox".into(), None).unwrap(),
            opts: opts.clone(),
            sink: Box::new(HangUp {
                after: 3,
                seen: seen.clone(),
            }),
        })
        .unwrap();
    wait_idle(&sched);
    let s = sched.stats();
    assert_eq!(seen.load(Ordering::SeqCst), 3);
    assert_eq!(s.generated_tokens - before, 3, "no token past the hang-up");
    assert_eq!(
        (s.in_flight, s.kv_reserved_bytes, s.kv_used_bytes),
        (0, 0, 0)
    );

    // A client gone before its request was admitted never costs a forward.
    let gone = Arc::new(AtomicBool::new(true));
    let steps = sched.stats().steps;
    sched
        .submit(Request {
            prompt: tokenize_prompt(&engine, "dog".into(), None).unwrap(),
            opts,
            sink: Box::new(Flag(gone)),
        })
        .unwrap();
    wait_idle(&sched);
    assert_eq!(sched.stats().steps, steps);
    assert_eq!(sched.stats().in_flight, 0);
}

#[test]
fn the_kv_budget_holds_requests_back_and_refusals_are_clear() {
    let engine = engine();
    let per_pos = kv_bytes_per_position(&engine);
    let prompt = tokenize_prompt(&engine, "fox".into(), None).unwrap();
    let n = 20;
    let one = (prompt.len() + n) * per_pos;
    let sched = Scheduler::start(
        engine.clone(),
        SchedulerConfig {
            max_batch: 4,
            max_queue: 4,
            kv_budget_bytes: one + one / 2,
            prefill_chunk: 256,
            // The first request's cache is kept after it, and given up for the second (whose
            // reservation needs its room; sharing only "fox", it does not take it over).
            prompt_cache: 4,
        },
    )
    .unwrap();
    let mut opts = GenerateOptions::greedy(n);
    opts.ignore_eos = true;
    let (tx1, rx1) = channel();
    let (tx2, rx2) = channel();
    for tx in [tx1, tx2] {
        sched
            .submit(Request {
                prompt: prompt.clone(),
                opts: opts.clone(),
                sink: Box::new(tx),
            })
            .unwrap();
    }
    // The budget fits one: the two run one after the other, never together.
    let (a, _, _) = collect(&rx1);
    let (b, _, _) = collect(&rx2);
    assert_eq!(a, b);
    wait_idle(&sched);
    let s = sched.stats();
    assert!(s.steps >= 2 * n as u64, "{s:?}");
    assert_eq!(s.kv_reserved_bytes, 0);

    // A request that could never fit is refused up front, naming the budget.
    let mut big = opts.clone();
    big.max_tokens = 100;
    let (tx, _rx) = channel();
    let err = sched
        .submit(Request {
            prompt: prompt.clone(),
            opts: big,
            sink: Box::new(tx),
        })
        .unwrap_err();
    assert!(err.to_string().contains("KV budget"), "{err}");
    // Bad prompts are refused too.
    let (tx, _rx) = channel();
    let err = sched
        .submit(Request {
            prompt: vec![999_999],
            opts: opts.clone(),
            sink: Box::new(tx),
        })
        .unwrap_err();
    assert!(err.to_string().contains("vocabulary"), "{err}");
    sched.shutdown(Duration::ZERO);
    sched.join();
    let (tx, _rx) = channel();
    assert!(matches!(
        sched.submit(Request {
            prompt,
            opts,
            sink: Box::new(tx)
        }),
        Err(bitnet_engine::SubmitError::ShuttingDown)
    ));
}

/// Runs one greedy request of `prompt` ids for `n` tokens (end-of-text ignored) to its end.
fn run_one(sched: &Scheduler, prompt: &[u32], n: usize) -> (Vec<u32>, bitnet_engine::Completion) {
    let (tx, rx) = channel();
    let mut opts = GenerateOptions::greedy(n);
    opts.ignore_eos = true;
    sched
        .submit(Request {
            prompt: prompt.to_vec(),
            opts,
            sink: Box::new(tx),
        })
        .unwrap();
    let (_, ids, done) = collect(&rx);
    wait_idle(sched);
    (ids, done.unwrap())
}

/// The engine alone on the same ids: what a request must give whatever it reused.
fn alone_ids(engine: &bitnet_engine::Engine, prompt: &[u32], n: usize) -> Vec<u32> {
    let mut opts = GenerateOptions::greedy(n);
    opts.ignore_eos = true;
    engine
        .generate(bitnet_engine::Prompt::Tokens(prompt.to_vec()), opts)
        .unwrap()
        .map(|t| t.unwrap().id)
        .collect()
}

#[test]
fn a_prompt_that_goes_on_from_a_finished_request_reuses_its_cache_exactly() {
    let engine = engine();
    let sched = Scheduler::start(
        engine.clone(),
        SchedulerConfig {
            // Chunks smaller than the prompts, so reused and fresh prefixes were read differently.
            prefill_chunk: 5,
            ..SchedulerConfig::for_engine(&engine)
        },
    )
    .unwrap();
    let first = tokenize_prompt(
        &engine,
        "The quick brown fox jumps over the lazy dog again".into(),
        None,
    )
    .unwrap();
    let (ids, done) = run_one(&sched, &first, 12);
    assert_eq!(ids, alone_ids(&engine, &first, 12));
    assert_eq!(done.cached_tokens, 0);
    assert_eq!(sched.stats().cached_entries, 1);

    // The next turn: the first prompt, its answer and more. The cache holds the prompt and
    // the first 11 generated tokens (the 12th was never fed), all of them reused.
    let more = tokenize_prompt(&engine, " and the fox runs".into(), Some(false)).unwrap();
    let second: Vec<u32> = first.iter().chain(&ids).chain(&more).copied().collect();
    let (ids2, done) = run_one(&sched, &second, 10);
    assert_eq!(ids2, alone_ids(&engine, &second, 10));
    assert_eq!(done.cached_tokens, first.len() + 11);
    assert_eq!(done.prompt_tokens, second.len());

    // The same prompt as the first: all of it but its last token reused, the same answer.
    let (ids3, done) = run_one(&sched, &first, 12);
    assert_eq!(ids3, ids);
    assert_eq!(done.cached_tokens, first.len() - 1);

    // A different prompt does not take an entry over. A request that reuses an entry takes it
    // (the first request's went to the second, the second's to the third); each keeps its own
    // at the end: the third's and this one's.
    let other = tokenize_prompt(&engine, "lazy dog".into(), None).unwrap();
    let (ids4, done) = run_one(&sched, &other, 6);
    assert_eq!(ids4, alone_ids(&engine, &other, 6));
    assert_eq!(done.cached_tokens, 0);
    let s = sched.stats();
    assert_eq!(s.cached_entries, 2, "{s:?}");
    assert_eq!(
        s.cached_prompt_tokens,
        (first.len() + 11 + first.len() - 1) as u64
    );
    assert!(s.cached_bytes > 0 && s.cached_bytes <= sched.config().kv_budget_bytes);
    assert_eq!(
        (s.in_flight, s.active, s.kv_reserved_bytes, s.kv_used_bytes),
        (0, 0, 0, 0)
    );
    sched.shutdown(Duration::ZERO);
    sched.join();
}

#[test]
fn the_prompt_cache_keeps_its_limit_and_gives_way_to_running_requests() {
    let engine = engine();
    let per_pos = kv_bytes_per_position(&engine);
    let a = tokenize_prompt(&engine, "fox fox fox".into(), None).unwrap();
    let b = tokenize_prompt(&engine, "dog dog dog".into(), None).unwrap();
    let n = 8;
    let one = (a.len().max(b.len()) + n) * per_pos;
    // Room for one request's reservation and a little more: a kept cache must make way.
    let sched = Scheduler::start(
        engine.clone(),
        SchedulerConfig {
            max_batch: 2,
            max_queue: 4,
            kv_budget_bytes: one + one / 2,
            prefill_chunk: 256,
            prompt_cache: 1,
        },
    )
    .unwrap();
    let (ids_a, _) = run_one(&sched, &a, n);
    assert_eq!(sched.stats().cached_entries, 1);
    // b needs the room a's cache holds: the cache gives it up, b runs, then b's is kept.
    let (ids_b, done) = run_one(&sched, &b, n);
    assert_eq!(ids_b, alone_ids(&engine, &b, n));
    assert_eq!(done.cached_tokens, 0);
    let s = sched.stats();
    assert_eq!(s.cached_entries, 1, "{s:?}");
    // a again: its cache is gone, so it is prefilled afresh, with the same answer.
    let (again, done) = run_one(&sched, &a, n);
    assert_eq!(again, ids_a);
    assert_eq!(done.cached_tokens, 0);
    sched.shutdown(Duration::ZERO);
    sched.join();

    // Turned off: nothing is kept.
    let sched = Scheduler::start(
        engine.clone(),
        SchedulerConfig {
            prompt_cache: 0,
            ..SchedulerConfig::for_engine(&engine)
        },
    )
    .unwrap();
    run_one(&sched, &a, n);
    let (_, done) = run_one(&sched, &a, n);
    assert_eq!(done.cached_tokens, 0);
    let s = sched.stats();
    assert_eq!(
        (s.cached_entries, s.cached_bytes, s.cached_prompt_tokens),
        (0, 0, 0)
    );
    sched.shutdown(Duration::ZERO);
    sched.join();
}
