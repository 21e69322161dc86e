//! Prometheus text-format metrics, written by hand: a handful of counters and two histograms do
//! not justify a metrics framework.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bitnet_engine::SchedulerStats;

/// A fixed-bucket histogram of seconds.
pub(crate) struct Histogram {
    bounds: &'static [f64],
    counts: Vec<AtomicU64>,
    sum_micros: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: (0..bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    pub(crate) fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = self.bounds.iter().position(|&b| secs <= b)
            && let Some(c) = self.counts.get(i)
        {
            c.fetch_add(1, Ordering::Relaxed);
        }
        self.sum_micros
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    fn write(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} histogram");
        let mut cum = 0;
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            cum += c.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {cum}");
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}");
        let _ = writeln!(out, "{name}_count {count}");
    }
}

/// The server's metrics.
pub(crate) struct Metrics {
    requests: Mutex<BTreeMap<(&'static str, u16), u64>>,
    pub(crate) ttft: Histogram,
    pub(crate) itl: Histogram,
    pub(crate) rejected_busy: AtomicU64,
    /// Connections closed because their client stopped reading (shared with each connection's
    /// socket wrapper).
    pub(crate) write_stalls: Arc<AtomicU64>,
}

impl Metrics {
    pub(crate) fn new() -> Self {
        Self {
            requests: Mutex::new(BTreeMap::new()),
            ttft: Histogram::new(&[
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
            itl: Histogram::new(&[
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ]),
            rejected_busy: AtomicU64::new(0),
            write_stalls: Arc::new(AtomicU64::new(0)),
        }
    }

    pub(crate) fn count_request(&self, route: &'static str, status: u16) {
        let mut m = match self.requests.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        *m.entry((route, status)).or_insert(0) += 1;
    }

    /// The Prometheus text exposition.
    pub(crate) fn render(&self, stats: Option<(SchedulerStats, usize)>) -> String {
        let mut out = String::new();
        out.push_str("# HELP bitnet_requests_total HTTP requests by route and status.\n");
        out.push_str("# TYPE bitnet_requests_total counter\n");
        {
            let m = match self.requests.lock() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
            for ((route, status), n) in m.iter() {
                let _ = writeln!(
                    out,
                    "bitnet_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
                );
            }
        }
        let s = stats.map(|(s, _)| s).unwrap_or_default();
        let budget = stats.map(|(_, b)| b).unwrap_or(0);
        let mut put = |name: &str, kind: &str, help: &str, v: String| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            let _ = writeln!(out, "{name} {v}");
        };
        put(
            "bitnet_prompt_tokens_total",
            "counter",
            "Prompt tokens prefilled.",
            s.prompt_tokens.to_string(),
        );
        put(
            "bitnet_prompt_cache_tokens_total",
            "counter",
            "Prompt tokens served from the prompt cache instead of being prefilled.",
            s.cached_prompt_tokens.to_string(),
        );
        put(
            "bitnet_prompt_cache_entries",
            "gauge",
            "Finished sequences' KV caches kept for reuse.",
            s.cached_entries.to_string(),
        );
        put(
            "bitnet_prompt_cache_bytes",
            "gauge",
            "KV bytes the prompt cache holds (within the KV budget).",
            s.cached_bytes.to_string(),
        );
        put(
            "bitnet_generated_tokens_total",
            "counter",
            "Tokens generated.",
            s.generated_tokens.to_string(),
        );
        put(
            "bitnet_engine_steps_total",
            "counter",
            "Batched forward passes run.",
            s.steps.to_string(),
        );
        put(
            "bitnet_rejected_busy_total",
            "counter",
            "Requests refused with 429 because the queue was full.",
            self.rejected_busy.load(Ordering::Relaxed).to_string(),
        );
        put(
            "bitnet_write_timeouts_total",
            "counter",
            "Connections closed because the client stopped reading its response.",
            self.write_stalls.load(Ordering::Relaxed).to_string(),
        );
        put(
            "bitnet_queue_depth",
            "gauge",
            "Requests waiting for a batch slot.",
            s.waiting.to_string(),
        );
        put(
            "bitnet_active_sequences",
            "gauge",
            "Sequences in the running batch.",
            s.active.to_string(),
        );
        put(
            "bitnet_kv_reserved_bytes",
            "gauge",
            "KV cache bytes reserved by running sequences.",
            s.kv_reserved_bytes.to_string(),
        );
        put(
            "bitnet_kv_used_bytes",
            "gauge",
            "KV cache bytes held by running sequences.",
            s.kv_used_bytes.to_string(),
        );
        put(
            "bitnet_kv_budget_bytes",
            "gauge",
            "KV cache budget.",
            budget.to_string(),
        );
        self.ttft.write(
            &mut out,
            "bitnet_time_to_first_token_seconds",
            "Time from request arrival to its first generated token.",
        );
        self.itl.write(
            &mut out,
            "bitnet_inter_token_latency_seconds",
            "Time between consecutive generated tokens of a request.",
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_cumulative() {
        let h = Histogram::new(&[0.1, 1.0]);
        h.observe(Duration::from_millis(50));
        h.observe(Duration::from_millis(500));
        h.observe(Duration::from_secs(5));
        let mut s = String::new();
        h.write(&mut s, "x", "help");
        assert!(s.contains("x_bucket{le=\"0.1\"} 1\n"), "{s}");
        assert!(s.contains("x_bucket{le=\"1\"} 2\n"), "{s}");
        assert!(s.contains("x_bucket{le=\"+Inf\"} 3\n"), "{s}");
        assert!(s.contains("x_count 3\n"), "{s}");
        assert!(s.contains("x_sum 5.55\n"), "{s}");
    }
}
