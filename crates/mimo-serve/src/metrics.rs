//! Prometheus metrics of the server, rendered as the text exposition format on `GET /metrics`.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// A cumulative histogram with fixed upper bounds (seconds).
#[derive(Debug)]
pub struct Histogram {
    bounds: Vec<f64>,
    inner: Mutex<HistInner>,
}

#[derive(Debug, Default)]
struct HistInner {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    /// A histogram with these bucket upper bounds (ascending); `+Inf` is implied.
    pub fn new(bounds: &[f64]) -> Self {
        Self {
            bounds: bounds.to_vec(),
            inner: Mutex::new(HistInner {
                counts: vec![0; bounds.len()],
                ..Default::default()
            }),
        }
    }

    /// Records one observation.
    pub fn observe(&self, v: f64) {
        let Ok(mut h) = self.inner.lock() else {
            return;
        };
        for (i, b) in self.bounds.iter().enumerate() {
            if v <= *b {
                h.counts[i] += 1;
            }
        }
        h.sum += v;
        h.count += 1;
    }

    /// Number of observations so far.
    pub fn count(&self) -> u64 {
        self.inner.lock().map(|h| h.count).unwrap_or(0)
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let Ok(h) = self.inner.lock() else {
            return;
        };
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (b, c) in self.bounds.iter().zip(&h.counts) {
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {c}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", h.count);
        let _ = writeln!(out, "{name}_sum {}", h.sum);
        let _ = writeln!(out, "{name}_count {}", h.count);
    }
}

const TTFT_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0,
];
const TPOT_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75,
    1.0, 2.5,
];
const E2E_BUCKETS: &[f64] = &[
    0.01, 0.05, 0.1, 0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0,
    60.0, 120.0,
];

/// Every metric the server exports. Gauges are written by the engine thread after each step.
#[derive(Debug)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    /// Prompt tokens of admitted requests.
    pub prompt_tokens: AtomicU64,
    /// Tokens generated (forced `</think>` tokens included).
    pub generation_tokens: AtomicU64,
    /// Sequences waiting for admission.
    pub waiting: AtomicU64,
    /// Sequences being decoded.
    pub running: AtomicU64,
    /// Free KV blocks.
    pub kv_free: AtomicU64,
    /// Total KV blocks.
    pub kv_total: AtomicU64,
    /// Used KV blocks.
    pub kv_used: AtomicU64,
    /// KV blocks in the prefix cache.
    pub kv_cached: AtomicU64,
    /// Prompt tokens looked up in the prefix cache.
    pub prefix_queries: AtomicU64,
    /// Prompt tokens whose KV came from the prefix cache.
    pub prefix_hits: AtomicU64,
    /// Sequences preempted for KV blocks.
    pub preemptions: AtomicU64,
    /// Engine steps that fed a partial prompt chunk.
    pub chunked_prefill_steps: AtomicU64,
    /// MTP draft tokens proposed.
    pub mtp_drafted: AtomicU64,
    /// MTP draft tokens accepted.
    pub mtp_accepted: AtomicU64,
    /// Sequences aborted because the client went away or a stop string matched.
    pub aborted: AtomicU64,
    /// Version of the weights being served (0: as loaded; set by `POST /v1/weights`).
    pub weight_version: AtomicU64,
    /// Weight updates installed.
    pub weight_updates: AtomicU64,
    /// Time from submission to the first token of a sequence.
    pub ttft: Histogram,
    /// Time per output token (step latency divided by the tokens the step produced).
    pub tpot: Histogram,
    /// Time from submission to the end of a sequence.
    pub e2e: Histogram,
    /// Constrained-decoding counters (set once the grammar compiler is built).
    grammar: std::sync::OnceLock<std::sync::Arc<mimo_engine::GrammarStats>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            requests: Mutex::new(BTreeMap::new()),
            prompt_tokens: AtomicU64::new(0),
            generation_tokens: AtomicU64::new(0),
            waiting: AtomicU64::new(0),
            running: AtomicU64::new(0),
            kv_free: AtomicU64::new(0),
            kv_total: AtomicU64::new(0),
            kv_used: AtomicU64::new(0),
            kv_cached: AtomicU64::new(0),
            prefix_queries: AtomicU64::new(0),
            prefix_hits: AtomicU64::new(0),
            preemptions: AtomicU64::new(0),
            chunked_prefill_steps: AtomicU64::new(0),
            mtp_drafted: AtomicU64::new(0),
            mtp_accepted: AtomicU64::new(0),
            aborted: AtomicU64::new(0),
            weight_version: AtomicU64::new(0),
            weight_updates: AtomicU64::new(0),
            ttft: Histogram::new(TTFT_BUCKETS),
            tpot: Histogram::new(TPOT_BUCKETS),
            e2e: Histogram::new(E2E_BUCKETS),
            grammar: std::sync::OnceLock::new(),
        }
    }
}

impl Metrics {
    /// Exports the grammar compiler's counters.
    pub fn set_grammar_stats(&self, stats: std::sync::Arc<mimo_engine::GrammarStats>) {
        let _ = self.grammar.set(stats);
    }

    /// Counts one HTTP request by route and status code.
    pub fn count_request(&self, route: &str, status: u16) {
        if let Ok(mut m) = self.requests.lock() {
            *m.entry((route.to_string(), status)).or_default() += 1;
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self, model: &str) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP mimo_requests_total HTTP requests by route and status code.\n# TYPE mimo_requests_total counter"
        );
        if let Ok(m) = self.requests.lock() {
            for ((route, code), n) in m.iter() {
                let _ = writeln!(
                    out,
                    "mimo_requests_total{{route=\"{route}\",code=\"{code}\"}} {n}"
                );
            }
        }
        let gauge = |out: &mut String, name: &str, kind: &str, help: &str, v: &AtomicU64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name}{{model_name=\"{model}\"}} {}",
                v.load(Ordering::Relaxed)
            );
        };
        let scalars: [(&str, &str, &str, &AtomicU64); 17] = [
            (
                "mimo_weight_version",
                "gauge",
                "Version of the weights being served (set by weight updates; 0 as loaded).",
                &self.weight_version,
            ),
            (
                "mimo_weight_updates_total",
                "counter",
                "Weight updates installed.",
                &self.weight_updates,
            ),
            (
                "mimo_num_requests_waiting",
                "gauge",
                "Sequences waiting for admission (queue depth).",
                &self.waiting,
            ),
            (
                "mimo_num_requests_running",
                "gauge",
                "Sequences being decoded.",
                &self.running,
            ),
            (
                "mimo_kv_blocks_free",
                "gauge",
                "Free KV cache blocks.",
                &self.kv_free,
            ),
            (
                "mimo_kv_blocks_total",
                "gauge",
                "KV cache blocks in the pool.",
                &self.kv_total,
            ),
            (
                "mimo_kv_blocks_used",
                "gauge",
                "KV cache blocks held by sequences.",
                &self.kv_used,
            ),
            (
                "mimo_kv_blocks_cached",
                "gauge",
                "KV cache blocks in the prefix cache (held or free).",
                &self.kv_cached,
            ),
            (
                "mimo_prefix_cache_queries_total",
                "counter",
                "Prompt tokens looked up in the prefix cache.",
                &self.prefix_queries,
            ),
            (
                "mimo_prefix_cache_hits_total",
                "counter",
                "Prompt tokens whose keys and values came from the prefix cache.",
                &self.prefix_hits,
            ),
            (
                "mimo_num_preemptions_total",
                "counter",
                "Sequences preempted (blocks freed, recomputed on resume) for lack of KV blocks.",
                &self.preemptions,
            ),
            (
                "mimo_chunked_prefill_steps_total",
                "counter",
                "Engine steps that fed a prompt chunk not ending its prompt.",
                &self.chunked_prefill_steps,
            ),
            (
                "mimo_prompt_tokens_total",
                "counter",
                "Prompt tokens of admitted sequences.",
                &self.prompt_tokens,
            ),
            (
                "mimo_generation_tokens_total",
                "counter",
                "Generated tokens.",
                &self.generation_tokens,
            ),
            (
                "mimo_mtp_draft_tokens_total",
                "counter",
                "MTP draft tokens proposed.",
                &self.mtp_drafted,
            ),
            (
                "mimo_mtp_accepted_tokens_total",
                "counter",
                "MTP draft tokens accepted.",
                &self.mtp_accepted,
            ),
            (
                "mimo_aborted_sequences_total",
                "counter",
                "Sequences aborted early (client disconnect, stop string, shutdown).",
                &self.aborted,
            ),
        ];
        for (name, kind, help, v) in scalars {
            gauge(&mut out, name, kind, help, v);
        }
        if let Some(g) = self.grammar.get() {
            for (name, help, v) in [
                (
                    "mimo_structured_grammars_total",
                    "Output grammars compiled (structured outputs, required/named tool calls).",
                    &g.compiled,
                ),
                (
                    "mimo_structured_masks_total",
                    "Token masks computed for constrained sequences.",
                    &g.masks,
                ),
                (
                    "mimo_structured_mask_nanoseconds_total",
                    "Time spent advancing grammars and computing their token masks.",
                    &g.mask_nanos,
                ),
            ] {
                gauge(&mut out, name, "counter", help, v);
            }
        }
        self.ttft.render(
            &mut out,
            "mimo_time_to_first_token_seconds",
            "Time to first token.",
        );
        self.tpot.render(
            &mut out,
            "mimo_time_per_output_token_seconds",
            "Time per output token.",
        );
        self.e2e.render(
            &mut out,
            "mimo_e2e_request_latency_seconds",
            "Sequence latency from submission to finish.",
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
        h.observe(0.05);
        h.observe(0.5);
        h.observe(5.0);
        let mut s = String::new();
        h.render(&mut s, "x", "help");
        assert!(s.contains("x_bucket{le=\"0.1\"} 1"));
        assert!(s.contains("x_bucket{le=\"1\"} 2"));
        assert!(s.contains("x_bucket{le=\"+Inf\"} 3"));
        assert!(s.contains("x_count 3"));
    }

    #[test]
    fn render_has_every_family() {
        let m = Metrics::default();
        m.count_request("/v1/chat/completions", 200);
        let s = m.render("m");
        for name in [
            "mimo_requests_total{route=\"/v1/chat/completions\",code=\"200\"} 1",
            "mimo_num_requests_waiting",
            "mimo_num_requests_running",
            "mimo_prompt_tokens_total",
            "mimo_generation_tokens_total",
            "mimo_time_to_first_token_seconds_bucket",
            "mimo_time_per_output_token_seconds_bucket",
            "mimo_mtp_draft_tokens_total",
            "mimo_mtp_accepted_tokens_total",
            "mimo_kv_blocks_used",
            "mimo_kv_blocks_cached",
            "mimo_prefix_cache_queries_total",
            "mimo_prefix_cache_hits_total",
            "mimo_num_preemptions_total",
            "mimo_chunked_prefill_steps_total",
        ] {
            assert!(s.contains(name), "{name} missing");
        }
    }
}
