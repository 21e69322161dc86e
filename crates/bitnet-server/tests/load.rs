//! The HTTP server under concurrent streaming load with early disconnects: outputs equal the
//! engine alone, every slot and byte of KV cache is freed, and the process's memory returns to
//! its baseline. In a test binary of its own, so that no other test shares the process whose
//! RSS it measures.

mod common;

use std::time::{Duration, Instant};

use bitnet_engine::{ChatMessage, Prompt, SchedulerConfig};
use bitnet_server::ServerConfig;
use common::*;
use serde_json::json;

/// How far the RSS may stay above its baseline (taken after a warm-up round of the same load)
/// once the measured round is over. glibc keeps freed memory in its arenas rather than giving
/// it back, so the RSS does not fall back after a burst; what a second, identical burst adds
/// is fragmentation creep. Measured on Linux/x86-64 (2 cores, glibc malloc): the first burst
/// grows the RSS by 5-6 MiB (arenas, thread stacks, blocking threads: kept for good), the
/// measured one by 0.5-1.4 MiB over 11 runs, idle or with both cores busy, and repeated rounds
/// add ever less (about 0.02 MiB a round after 80 rounds), so none of it is a per-request leak.
/// 4 MiB is about three times the worst seen; a leak of 128 KiB or more per request (32 of
/// them here: a context's worth of KV cache for the fixture, a stream's buffered events)
/// exceeds it.
const RSS_SLACK: u64 = 4 << 20;

type Job = (String, usize, Option<usize>);

/// Runs every job at once, one client thread each (even ones on completions, odd ones on chat);
/// returns what each got, in order.
fn run_load(srv: &TestServer, jobs: &[Job]) -> Vec<Streamed> {
    let handles: Vec<_> = jobs
        .iter()
        .cloned()
        .enumerate()
        .map(|(i, (prompt, n, cut))| {
            let (path, body) = if i % 2 == 0 {
                let b =
                    json!({"prompt": prompt, "max_tokens": n, "temperature": 0, "stream": true});
                ("/v1/completions", b)
            } else {
                let b = json!({"messages": [{"role": "user", "content": prompt}],
                               "max_tokens": n, "temperature": 0, "stream": true});
                ("/v1/chat/completions", b)
            };
            let url = srv.url(path);
            std::thread::spawn(move || stream(&url, &body.to_string(), cut))
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

/// Complete streams equal the engine alone; cut ones hold a prefix of it.
fn check(results: &[Streamed], jobs: &[Job], expected: &[String]) {
    let mut completed = 0;
    for (i, (r, want)) in results.iter().zip(expected).enumerate() {
        assert!(r.error.is_none(), "request {i}: {:?}", r.error);
        if jobs[i].2.is_none() {
            assert!(r.done, "request {i} did not end with [DONE]");
            assert_eq!(&r.text, want, "request {i} differs from running alone");
            completed += 1;
        } else {
            assert!(
                want.starts_with(&r.text),
                "request {i}: a prefix must match"
            );
        }
    }
    assert_eq!(completed, 24);
}

#[test]
fn concurrent_streams_with_disconnects_match_alone_and_free_everything() {
    let engine = engine();
    let cfg = SchedulerConfig {
        max_batch: 12,
        max_queue: 64,
        // Small prefill chunks so long prompts are read over several steps beside decodes.
        prefill_chunk: 16,
        ..SchedulerConfig::for_engine(&engine)
    };
    let srv = TestServer::start(ServerConfig::default(), engine.clone(), cfg);
    let words = [
        "fox", "dog", "brown", "jumps", "over", "lazy", "quick", "the",
    ];
    let jobs: Vec<Job> = (0..32)
        .map(|i| {
            let len = 1 + (i * 7) % 20;
            let prompt: Vec<&str> = (0..len).map(|j| words[(i + j) % words.len()]).collect();
            let max_tokens = 4 + (i * 5) % 28;
            // Every fourth client hangs up after two chunks.
            let cut = (i % 4 == 3).then_some(2);
            (prompt.join(" "), max_tokens, cut)
        })
        .collect();
    let expected: Vec<String> = jobs
        .iter()
        .enumerate()
        .map(|(i, (p, n, _))| {
            let prompt = if i % 2 == 0 {
                Prompt::Text(p.clone())
            } else {
                Prompt::Chat(vec![ChatMessage::user(p.as_str())])
            };
            greedy_alone(&engine, prompt, *n)
        })
        .collect();
    let rss_cold = vm_rss_bytes();
    // Warm-up: the same load once, so that what a burst of 32 clients makes exist for good
    // (the allocator's per-thread arenas and their high-water marks, cached thread stacks, the
    // runtime's blocking threads) exists before the baseline is taken.
    check(&run_load(&srv, &jobs), &jobs, &expected);
    srv.wait_idle();
    let rss_before = vm_rss_bytes();

    let steps_before = srv.scheduler().stats().steps;
    let generated_before = srv.scheduler().stats().generated_tokens;
    let started = Instant::now();
    let results = run_load(&srv, &jobs);
    assert!(started.elapsed() < Duration::from_secs(60));
    let rss_loaded = vm_rss_bytes();
    check(&results, &jobs, &expected);
    let stats = srv.wait_idle();
    assert_eq!(
        (stats.in_flight, stats.active, stats.waiting),
        (0, 0, 0),
        "{stats:?}"
    );
    assert_eq!((stats.kv_reserved_bytes, stats.kv_used_bytes), (0, 0));
    // Sequences really shared steps: far fewer batched forwards than tokens generated.
    let steps = stats.steps - steps_before;
    let generated = stats.generated_tokens - generated_before;
    assert!(steps < generated, "{steps} steps for {generated} tokens");
    let (status, metrics) = get(&srv.url("/metrics"), None);
    assert_eq!(status, 200);
    assert!(metrics.contains("bitnet_active_sequences 0\n"), "{metrics}");
    assert!(metrics.contains("bitnet_queue_depth 0\n"));
    assert!(metrics.contains("bitnet_kv_reserved_bytes 0\n"));
    // 16 requests a route in each of the two rounds.
    for route in ["/v1/completions", "/v1/chat/completions"] {
        let line = format!("bitnet_requests_total{{route=\"{route}\",status=\"200\"}} 32\n");
        assert!(metrics.contains(&line), "{metrics}");
    }
    assert!(
        metrics.contains("bitnet_time_to_first_token_seconds_count 64\n"),
        "{metrics}"
    );
    assert!(metrics.contains("bitnet_inter_token_latency_seconds_bucket{le=\"+Inf\"}"));
    assert!(!metrics.contains("status=\"5"), "{metrics}");

    // The server's memory returns to its baseline: the process's RSS once the clients are gone
    // and their connections closed, against the RSS after the warm-up round.
    let (Some(cold), Some(before), Some(loaded)) = (rss_cold, rss_before, rss_loaded) else {
        eprintln!("no VmRSS in /proc/self/status on this system: the RSS check is skipped");
        return;
    };
    let limit = before + RSS_SLACK;
    let mut after = 0;
    let settled = eventually(Duration::from_secs(5), || {
        after = vm_rss_bytes().unwrap_or(u64::MAX);
        after <= limit
    });
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    eprintln!(
        "RSS: {:.2} MiB before any request, {:.2} MiB after the warm-up round (baseline), \
         {:.2} MiB right after the measured round, {:.2} MiB settled; limit {:.2} MiB",
        mib(cold),
        mib(before),
        mib(loaded),
        mib(after),
        mib(limit)
    );
    assert!(
        settled,
        "RSS {:.2} MiB did not return to within {:.2} MiB of its baseline {:.2} MiB",
        mib(after),
        mib(RSS_SLACK),
        mib(before)
    );
}
