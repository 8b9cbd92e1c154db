//! The server's metrics, written in Prometheus' text exposition format (`GET /metrics`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Upper bounds (seconds) of the latency histograms' buckets.
const BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// A cumulative histogram of seconds.
#[derive(Debug, Default)]
pub struct Histogram {
    inner: Mutex<(Vec<u64>, f64, u64)>,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, seconds: f64) {
        let mut h = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if h.0.is_empty() {
            h.0 = vec![0; BUCKETS.len()];
        }
        for (count, &bound) in h.0.iter_mut().zip(BUCKETS) {
            if seconds <= bound {
                *count += 1;
            }
        }
        h.1 += seconds;
        h.2 += 1;
    }

    fn write(&self, out: &mut String, name: &str, help: &str) {
        let h = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (i, bound) in BUCKETS.iter().enumerate() {
            let count = h.0.get(i).copied().unwrap_or(0);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {count}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", h.2);
        let _ = writeln!(out, "{name}_sum {}\n{name}_count {}", h.1, h.2);
    }
}

/// Everything `/metrics` reports. The model thread and the HTTP handlers update it.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Finished HTTP requests by status code.
    pub requests: Mutex<BTreeMap<u16, u64>>,
    /// Prompt tokens of admitted requests.
    pub prompt_tokens: AtomicU64,
    /// Generated tokens.
    pub generation_tokens: AtomicU64,
    /// Requests waiting for a slot.
    pub queued: AtomicUsize,
    /// Requests in the decoding batch.
    pub running: AtomicUsize,
    /// Number of slots.
    pub slots: AtomicUsize,
    /// Requests whose client went away before the end.
    pub cancelled: AtomicU64,
    /// Decoding steps run.
    pub decode_steps: AtomicU64,
    /// Sum over decoding steps of their batch size.
    pub decode_rows: AtomicU64,
    /// Time from arrival to the first generated token.
    pub time_to_first_token: Histogram,
    /// Time from arrival to the last token.
    pub request_latency: Histogram,
}

impl Metrics {
    /// Counts a finished HTTP request.
    pub fn count_request(&self, status: u16) {
        let mut r = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        *r.entry(status).or_default() += 1;
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let counter = |out: &mut String, name: &str, help: &str, value: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
            );
        };
        let gauge = |out: &mut String, name: &str, help: &str, value: f64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
            );
        };
        let _ = writeln!(
            out,
            "# HELP llava_requests_total HTTP requests by status code.\n# TYPE llava_requests_total counter"
        );
        for (status, count) in self
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let _ = writeln!(out, "llava_requests_total{{status=\"{status}\"}} {count}");
        }
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        counter(
            &mut out,
            "llava_prompt_tokens_total",
            "Prompt tokens of admitted requests.",
            load(&self.prompt_tokens),
        );
        counter(
            &mut out,
            "llava_generation_tokens_total",
            "Generated tokens.",
            load(&self.generation_tokens),
        );
        counter(
            &mut out,
            "llava_requests_cancelled_total",
            "Requests whose client disconnected before the answer ended.",
            load(&self.cancelled),
        );
        counter(
            &mut out,
            "llava_decode_steps_total",
            "Batched decoding steps.",
            load(&self.decode_steps),
        );
        counter(
            &mut out,
            "llava_decode_rows_total",
            "Sequences advanced by decoding steps (rows summed over steps).",
            load(&self.decode_rows),
        );
        let running = self.running.load(Ordering::Relaxed);
        let slots = self.slots.load(Ordering::Relaxed).max(1);
        gauge(
            &mut out,
            "llava_queue_depth",
            "Requests waiting for a batch slot.",
            self.queued.load(Ordering::Relaxed) as f64,
        );
        gauge(
            &mut out,
            "llava_running_requests",
            "Requests in the running decoding batch.",
            running as f64,
        );
        gauge(
            &mut out,
            "llava_batch_slots",
            "KV-cache slots (--max-batch).",
            slots as f64,
        );
        gauge(
            &mut out,
            "llava_batch_occupancy",
            "Running requests over slots.",
            running as f64 / slots as f64,
        );
        self.time_to_first_token.write(
            &mut out,
            "llava_time_to_first_token_seconds",
            "Seconds from a request's arrival to its first generated token.",
        );
        self.request_latency.write(
            &mut out,
            "llava_request_latency_seconds",
            "Seconds from a request's arrival to its last generated token.",
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        m.count_request(200);
        m.count_request(200);
        m.count_request(429);
        m.time_to_first_token.observe(0.02);
        let text = m.render();
        assert!(text.contains("llava_requests_total{status=\"200\"} 2"));
        assert!(text.contains("llava_requests_total{status=\"429\"} 1"));
        assert!(text.contains("llava_time_to_first_token_seconds_bucket{le=\"0.025\"} 1"));
        assert!(text.contains("llava_time_to_first_token_seconds_bucket{le=\"0.01\"} 0"));
        assert!(text.contains("llava_time_to_first_token_seconds_count 1"));
    }
}
