//! Load generator for a running `bitnet serve`: aggregate generated tokens/s and time to first
//! token at several concurrency levels, over streaming `/v1/completions` with greedy decoding.
//!
//! ```text
//! cargo run --release -p bitnet-server --example load -- http://127.0.0.1:8080 [tokens] [levels]
//! ```
//! `tokens` per request (default 64); `levels` comma-separated (default 1,4,16,64). One untimed
//! request warms the server first; then each client sends two requests per level; an API key is
//! read from BITNET_API_KEY.

use std::io::{BufRead, BufReader};
use std::time::{Duration, Instant};

fn one(
    agent: &ureq::Agent,
    url: &str,
    key: &Option<String>,
    n: usize,
    i: usize,
) -> (Duration, usize) {
    let body = serde_json::json!({
        "prompt": format!("Request {i}: tell a story about the number {i}."),
        "max_tokens": n, "temperature": 0, "stream": true,
        "stream_options": {"include_usage": true},
    });
    let mut req = agent.post(url).set("Content-Type", "application/json");
    if let Some(k) = key {
        req = req.set("Authorization", &format!("Bearer {k}"));
    }
    let start = Instant::now();
    let resp = match req.send_string(&body.to_string()) {
        Ok(r) => r,
        Err(e) => panic!("request failed: {e}"),
    };
    let mut ttft = None;
    let mut tokens = 0;
    for line in BufReader::new(resp.into_reader()).lines() {
        let Ok(line) = line else { break };
        let Some(data) = line.strip_prefix("data: ") else {
            continue;
        };
        if data == "[DONE]" {
            break;
        }
        let v: serde_json::Value = serde_json::from_str(data).unwrap_or_default();
        if ttft.is_none()
            && v["choices"][0]["text"]
                .as_str()
                .is_some_and(|t| !t.is_empty())
        {
            ttft = Some(start.elapsed());
        }
        if let Some(c) = v["usage"]["completion_tokens"].as_u64() {
            tokens = c as usize;
        }
    }
    (ttft.unwrap_or_else(|| start.elapsed()), tokens)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let base = args
        .get(1)
        .cloned()
        .unwrap_or_else(|| "http://127.0.0.1:8080".into());
    let n: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(64);
    let levels: Vec<usize> = args
        .get(3)
        .map(|s| s.split(',').filter_map(|x| x.parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 4, 16, 64]);
    let key = std::env::var("BITNET_API_KEY").ok();
    let url = format!("{base}/v1/completions");
    // One untimed request first: the first one after start-up pays for paging in the mapped
    // weights (a cold single stream measured ~30% slower), which would flatter the ratios.
    let warm = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(600))
        .build();
    one(&warm, &url, &key, n, usize::MAX);
    println!(
        "| concurrency | requests | tokens | wall s | aggregate tok/s | TTFT p50 ms | TTFT max ms |"
    );
    println!("|---|---|---|---|---|---|---|");
    for &c in &levels {
        let start = Instant::now();
        let handles: Vec<_> = (0..c)
            .map(|t| {
                let (url, key) = (url.clone(), key.clone());
                std::thread::spawn(move || {
                    let agent = ureq::AgentBuilder::new()
                        .timeout(Duration::from_secs(600))
                        .build();
                    (0..2)
                        .map(|r| one(&agent, &url, &key, n, t * 2 + r))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut results: Vec<(Duration, usize)> = Vec::new();
        for h in handles {
            results.extend(h.join().unwrap_or_default());
        }
        let wall = start.elapsed().as_secs_f64();
        let tokens: usize = results.iter().map(|r| r.1).sum();
        let mut ttft: Vec<f64> = results.iter().map(|r| r.0.as_secs_f64() * 1e3).collect();
        ttft.sort_by(f64::total_cmp);
        let p50 = ttft.get(ttft.len() / 2).copied().unwrap_or(0.0);
        let max = ttft.last().copied().unwrap_or(0.0);
        println!(
            "| {c} | {} | {tokens} | {wall:.2} | {:.1} | {p50:.0} | {max:.0} |",
            results.len(),
            tokens as f64 / wall
        );
    }
}
