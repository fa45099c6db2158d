//! Prometheus metrics with a cheap hot path: one series per (route, rule,
//! provider, model) found through a read-locked hash map, then plain atomics
//! (counters per status code, fixed-bucket histograms). `render` writes the
//! text exposition format for `/metrics`.

use std::{
    collections::{BTreeMap, HashMap},
    fmt::Write as _,
    hash::{BuildHasher, BuildHasherDefault, DefaultHasher, Hasher},
    sync::{
        Arc, RwLock,
        atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed},
    },
    time::Duration,
};

use super::Usage;

/// Upper bounds (seconds) of the duration histograms: proxy overhead is
/// sub-millisecond, LLM answers take minutes.
const DURATION_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 120.0, 300.0,
];
/// OpenTelemetry's advisory buckets for `gen_ai.client.token.usage`.
const TOKEN_BUCKETS: &[f64] = &[
    1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0,
    16777216.0, 67108864.0,
];

/// A histogram of fixed buckets; values are recorded in micro-units.
pub struct Histogram {
    bounds: &'static [f64],
    /// Bucket bounds in micro-units, for integer comparison.
    bounds_micro: Vec<u64>,
    counts: Vec<AtomicU64>,
    sum_micro: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            bounds_micro: bounds.iter().map(|b| (b * 1e6) as u64).collect(),
            counts: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            sum_micro: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    fn observe_micro(&self, v: u64) {
        // Cumulative buckets are built at render time; here one slot per value.
        let i = self.bounds_micro.partition_point(|&b| b < v);
        if let Some(c) = self.counts.get(i) {
            c.fetch_add(1, Relaxed);
        }
        self.sum_micro.fetch_add(v, Relaxed);
        self.count.fetch_add(1, Relaxed);
    }

    pub fn observe_duration(&self, d: Duration) {
        self.observe_micro(d.as_micros() as u64);
    }

    pub fn observe_value(&self, v: u64) {
        self.observe_micro(v.saturating_mul(1_000_000));
    }

    pub fn count(&self) -> u64 {
        self.count.load(Relaxed)
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        render_histograms(out, name, labels, &[self]);
    }
}

/// Writes the sum of histograms that share their buckets as one series
/// (several of llmgw's series can fold into one OpenTelemetry series).
fn render_histograms(out: &mut String, name: &str, labels: &str, hs: &[&Histogram]) {
    let Some(first) = hs.first() else { return };
    let total = |f: &dyn Fn(&Histogram) -> u64| hs.iter().map(|h| f(h)).sum::<u64>();
    let sep = if labels.is_empty() { "" } else { "," };
    let mut acc = 0;
    for (i, b) in first.bounds.iter().enumerate() {
        acc += total(&|h| h.counts.get(i).map_or(0, |c| c.load(Relaxed)));
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {acc}");
    }
    let count = total(&|h| h.count.load(Relaxed));
    let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {count}");
    let sum = total(&|h| h.sum_micro.load(Relaxed)) as f64 / 1e6;
    let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
    let _ = writeln!(out, "{name}_count{{{labels}}} {count}");
}

/// Why a request to a provider failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamErrorKind {
    Connect,
    Tls,
    Timeout,
    Protocol,
}

impl UpstreamErrorKind {
    const ALL: [UpstreamErrorKind; 4] = [Self::Connect, Self::Tls, Self::Timeout, Self::Protocol];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::Tls => "tls",
            Self::Timeout => "timeout",
            Self::Protocol => "protocol",
        }
    }
}

/// The labels of one series.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Labels<'a> {
    pub route: &'a str,
    pub rule: &'a str,
    pub provider: &'a str,
    pub model: &'a str,
}

/// Everything counted for one (route, rule, provider, model).
pub struct Series {
    route: String,
    rule: String,
    provider: String,
    model: String,
    /// Requests by status code (index = code - 100).
    codes: Vec<AtomicU64>,
    duration: Histogram,
    genai_duration: Histogram,
    ttft: Histogram,
    input_tokens: Histogram,
    output_tokens: Histogram,
    upstream_errors: [AtomicU64; 4],
}

impl Series {
    fn new(l: &Labels<'_>) -> Self {
        Self {
            route: l.route.to_string(),
            rule: l.rule.to_string(),
            provider: l.provider.to_string(),
            model: l.model.to_string(),
            codes: (100..600).map(|_| AtomicU64::new(0)).collect(),
            duration: Histogram::new(DURATION_BUCKETS),
            genai_duration: Histogram::new(DURATION_BUCKETS),
            ttft: Histogram::new(DURATION_BUCKETS),
            input_tokens: Histogram::new(TOKEN_BUCKETS),
            output_tokens: Histogram::new(TOKEN_BUCKETS),
            upstream_errors: Default::default(),
        }
    }

    fn labels(&self) -> Labels<'_> {
        Labels {
            route: &self.route,
            rule: &self.rule,
            provider: &self.provider,
            model: &self.model,
        }
    }
}

/// One finished request, as metrics see it.
#[derive(Debug, Default)]
pub struct Observation {
    pub status: u16,
    pub duration: Duration,
    /// Set when the request reached a provider.
    pub upstream: bool,
    pub ttft: Option<Duration>,
    pub usage: Option<Usage>,
    pub upstream_error: Option<UpstreamErrorKind>,
}

#[derive(Default)]
pub struct Metrics {
    series: RwLock<HashMap<u64, Vec<Arc<Series>>, BuildHasherDefault<IdHasher>>>,
    pub reloads_ok: AtomicU64,
    pub reloads_failed: AtomicU64,
    /// Unix time of the last successful (re)load.
    pub last_reload_ok: AtomicU64,
    pub access_log_dropped: AtomicU64,
    /// Connections the HTTP layer ended on a request it could not read
    /// (bad syntax: 400; headers too large: 431), before any handler saw
    /// it, so no access log line or request series has them.
    pub rejected_malformed: AtomicU64,
    pub rejected_too_large: AtomicU64,
    /// Series created so far (see [`MAX_SERIES`]).
    series_count: AtomicUsize,
    /// The client side: connections, requests in flight, timeouts.
    pub downstream: super::downstream::Downstream,
}

/// The most series kept. The model label can come from the client (when the
/// provider sets no model), so past this many, new label sets are counted
/// under the model [`OTHER_MODEL`] instead of growing memory without bound.
pub const MAX_SERIES: usize = 1000;
/// The model label of requests counted after [`MAX_SERIES`] was reached,
/// or whose model name is longer than [`MAX_MODEL_LABEL`].
pub const OTHER_MODEL: &str = "_other";
/// The longest model name kept as a label (a client may send any string).
pub const MAX_MODEL_LABEL: usize = 128;

/// The map is keyed by an already-computed hash.
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only u64 keys are used; fold anything else rather than fail.
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

impl Metrics {
    pub fn new() -> Self {
        Self::default()
    }

    /// The series for `labels`, created on first use.
    pub fn series(&self, labels: &Labels<'_>) -> Arc<Series> {
        let h = BuildHasherDefault::<DefaultHasher>::default().hash_one(labels);
        if let Ok(map) = self.series.read()
            && let Some(s) = map
                .get(&h)
                .and_then(|v| v.iter().find(|s| s.labels() == *labels))
        {
            return s.clone();
        }
        if labels.model != OTHER_MODEL
            && (self.series_count.load(Relaxed) >= MAX_SERIES
                || labels.model.len() > MAX_MODEL_LABEL)
        {
            return self.series(&Labels {
                model: OTHER_MODEL,
                ..*labels
            });
        }
        let mut map = match self.series.write() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        let v = map.entry(h).or_default();
        if let Some(s) = v.iter().find(|s| s.labels() == *labels) {
            return s.clone();
        }
        let s = Arc::new(Series::new(labels));
        v.push(s.clone());
        self.series_count.fetch_add(1, Relaxed);
        s
    }

    pub fn record(&self, labels: &Labels<'_>, o: &Observation) {
        let s = self.series(labels);
        if let Some(c) = s.codes.get((o.status as usize).wrapping_sub(100)) {
            c.fetch_add(1, Relaxed);
        }
        s.duration.observe_duration(o.duration);
        if o.upstream {
            s.genai_duration.observe_duration(o.duration);
        }
        if let Some(t) = o.ttft {
            s.ttft.observe_duration(t);
        }
        if let Some(u) = o.usage {
            if let Some(p) = u.prompt_tokens {
                s.input_tokens.observe_value(p);
            }
            if let Some(c) = u.completion_tokens {
                s.output_tokens.observe_value(c);
            }
        }
        if let Some(k) = o.upstream_error {
            s.upstream_errors[k as usize].fetch_add(1, Relaxed);
        }
    }

    /// The Prometheus text exposition of everything.
    pub fn render(&self) -> String {
        let mut all: Vec<Arc<Series>> = match self.series.read() {
            Ok(m) => m.values().flatten().cloned().collect(),
            Err(p) => p.into_inner().values().flatten().cloned().collect(),
        };
        all.sort_by(|a, b| {
            (&a.route, &a.rule, &a.provider, &a.model).cmp(&(
                &b.route,
                &b.rule,
                &b.provider,
                &b.model,
            ))
        });
        let mut out = String::with_capacity(4096 + all.len() * 4096);
        let lbl = |s: &Series| {
            format!(
                "route=\"{}\",rule=\"{}\",provider=\"{}\",model=\"{}\"",
                esc(&s.route),
                esc(&s.rule),
                esc(&s.provider),
                esc(&s.model)
            )
        };

        out.push_str("# HELP llmgw_requests_total Requests answered, by route, rule, provider, model and status code.\n# TYPE llmgw_requests_total counter\n");
        for s in &all {
            let l = lbl(s);
            for (i, c) in s.codes.iter().enumerate() {
                let n = c.load(Relaxed);
                if n > 0 {
                    let _ = writeln!(out, "llmgw_requests_total{{{l},code=\"{}\"}} {n}", i + 100);
                }
            }
        }
        out.push_str("# HELP llmgw_request_duration_seconds Time from request to the end of the response.\n# TYPE llmgw_request_duration_seconds histogram\n");
        for s in &all {
            s.duration
                .render(&mut out, "llmgw_request_duration_seconds", &lbl(s));
        }
        out.push_str("# HELP llmgw_upstream_errors_total Requests to a provider that failed before its answer, by kind.\n# TYPE llmgw_upstream_errors_total counter\n");
        for s in &all {
            for k in UpstreamErrorKind::ALL {
                let n = s.upstream_errors[k as usize].load(Relaxed);
                if n > 0 {
                    let _ = writeln!(
                        out,
                        "llmgw_upstream_errors_total{{{},kind=\"{}\"}} {n}",
                        lbl(s),
                        k.as_str()
                    );
                }
            }
        }
        // The OpenTelemetry series are keyed by provider and model only:
        // llmgw's series that share both (other routes or rules) are summed.
        let mut genai_groups: BTreeMap<(&str, &str), Vec<&Series>> = BTreeMap::new();
        for s in all.iter().filter(|s| !s.provider.is_empty()) {
            genai_groups
                .entry((&s.provider, &s.model))
                .or_default()
                .push(s);
        }
        type Pick = fn(&Series) -> &Histogram;
        let genai_histograms: [(&str, &str, Option<&str>, Pick); 4] = [
            (
                "gen_ai_client_token_usage",
                "Tokens used per request (OpenTelemetry gen_ai.client.token.usage), by gen_ai_token_type.",
                Some("input"),
                |s| &s.input_tokens,
            ),
            ("gen_ai_client_token_usage", "", Some("output"), |s| {
                &s.output_tokens
            }),
            (
                "gen_ai_server_time_to_first_token",
                "Seconds from request to the first streamed event (gen_ai.server.time_to_first_token).",
                None,
                |s| &s.ttft,
            ),
            (
                "gen_ai_server_request_duration",
                "Seconds of requests that reached a provider (gen_ai.server.request.duration).",
                None,
                |s| &s.genai_duration,
            ),
        ];
        for (name, help, token_type, pick) in genai_histograms {
            if !help.is_empty() {
                let _ = write!(out, "# HELP {name} {help}\n# TYPE {name} histogram\n");
            }
            for ((provider, model), group) in &genai_groups {
                let hs: Vec<&Histogram> = group.iter().map(|s| pick(s)).collect();
                if hs.iter().all(|h| h.count() == 0) {
                    continue;
                }
                let mut labels = format!(
                    "gen_ai_operation_name=\"chat\",gen_ai_provider_name=\"{}\",gen_ai_request_model=\"{}\"",
                    esc(provider),
                    esc(model)
                );
                if let Some(t) = token_type {
                    let _ = write!(labels, ",gen_ai_token_type=\"{t}\"");
                }
                render_histograms(&mut out, name, &labels, &hs);
            }
        }
        let _ = write!(
            out,
            "# HELP llmgw_config_reloads_total Configuration loads after the first, by result.\n\
             # TYPE llmgw_config_reloads_total counter\n\
             llmgw_config_reloads_total{{result=\"success\"}} {}\n\
             llmgw_config_reloads_total{{result=\"failure\"}} {}\n\
             # HELP llmgw_config_last_reload_success_timestamp_seconds When the configuration in use was loaded.\n\
             # TYPE llmgw_config_last_reload_success_timestamp_seconds gauge\n\
             llmgw_config_last_reload_success_timestamp_seconds {}\n\
             # HELP llmgw_access_log_dropped_total Access log lines dropped because the writer fell behind.\n\
             # TYPE llmgw_access_log_dropped_total counter\n\
             llmgw_access_log_dropped_total {}\n\
             # HELP llmgw_downstream_rejected_total Requests refused before routing because they could not be read (answered 400 or 431; logged without method, path or route).\n\
             # TYPE llmgw_downstream_rejected_total counter\n\
             llmgw_downstream_rejected_total{{reason=\"malformed\"}} {}\n\
             llmgw_downstream_rejected_total{{reason=\"headers_too_large\"}} {}\n",
            self.reloads_ok.load(Relaxed),
            self.reloads_failed.load(Relaxed),
            self.last_reload_ok.load(Relaxed),
            self.access_log_dropped.load(Relaxed),
            self.rejected_malformed.load(Relaxed),
            self.rejected_too_large.load(Relaxed),
        );
        self.downstream.render(&mut out);
        out
    }
}

/// Escapes a label value (backslash, quote, newline).
pub fn esc(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.contains(['\\', '"', '\n']) {
        return s.into();
    }
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels() -> Labels<'static> {
        Labels {
            route: "default/r",
            rule: "x",
            provider: "istio-system/p",
            model: "m\"1",
        }
    }

    #[test]
    fn counts_codes_tokens_and_buckets() {
        let m = Metrics::new();
        for (status, tokens) in [(200, Some((12, 130))), (200, None), (502, None)] {
            m.record(
                &labels(),
                &Observation {
                    status,
                    duration: Duration::from_millis(3),
                    upstream: true,
                    ttft: Some(Duration::from_millis(2)),
                    usage: tokens.map(|(p, c)| Usage {
                        prompt_tokens: Some(p),
                        completion_tokens: Some(c),
                        total_tokens: Some(p + c),
                    }),
                    upstream_error: (status == 502).then_some(UpstreamErrorKind::Connect),
                },
            );
        }
        let text = m.render();
        let l = r#"route="default/r",rule="x",provider="istio-system/p",model="m\"1""#;
        assert!(
            text.contains(&format!("llmgw_requests_total{{{l},code=\"200\"}} 2\n")),
            "{text}"
        );
        assert!(text.contains(&format!("llmgw_requests_total{{{l},code=\"502\"}} 1\n")));
        assert!(text.contains(&format!(
            "llmgw_upstream_errors_total{{{l},kind=\"connect\"}} 1\n"
        )));
        assert!(text.contains(&format!(
            "llmgw_request_duration_seconds_bucket{{{l},le=\"0.0025\"}} 0\n"
        )));
        assert!(text.contains(&format!(
            "llmgw_request_duration_seconds_bucket{{{l},le=\"0.005\"}} 3\n"
        )));
        assert!(text.contains("gen_ai_token_type=\"input\"} 12\n"), "{text}");
        assert!(text.contains("gen_ai_token_type=\"output\"} 130\n"));
        assert!(text.contains("gen_ai_server_time_to_first_token_count{"));
        // One series for the same labels, whatever the call order.
        assert!(Arc::ptr_eq(&m.series(&labels()), &m.series(&labels())));
    }

    #[test]
    fn folds_series_of_one_provider_and_model_for_opentelemetry() {
        let m = Metrics::new();
        for (rule, tokens) in [("a", 12), ("b", 30)] {
            m.record(
                &Labels { rule, ..labels() },
                &Observation {
                    status: 200,
                    duration: Duration::from_millis(3),
                    upstream: true,
                    usage: Some(Usage {
                        prompt_tokens: Some(tokens),
                        ..Usage::default()
                    }),
                    ..Observation::default()
                },
            );
        }
        let text = m.render();
        let sums: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("gen_ai_client_token_usage_sum{"))
            .collect();
        assert_eq!(sums.len(), 1, "{text}");
        assert!(
            sums[0].ends_with("gen_ai_token_type=\"input\"} 42"),
            "{text}"
        );
        let durations = text
            .lines()
            .filter(|l| l.starts_with("gen_ai_server_request_duration_count{"))
            .collect::<Vec<_>>();
        assert_eq!(durations.len(), 1, "{text}");
        assert!(durations[0].ends_with("} 2"), "{text}");
        // llmgw's own series keep the rule apart.
        assert_eq!(
            text.lines()
                .filter(|l| l.starts_with("llmgw_request_duration_seconds_count{"))
                .count(),
            2
        );
    }

    #[test]
    fn client_chosen_models_cannot_grow_series_without_bound() {
        let m = Metrics::new();
        let names: Vec<String> = (0..MAX_SERIES + 50).map(|i| format!("m{i}")).collect();
        for model in &names {
            m.record(
                &Labels { model, ..labels() },
                &Observation {
                    status: 200,
                    ..Observation::default()
                },
            );
        }
        let text = m.render();
        let counted = |model: &str| {
            text.lines()
                .filter(|l| {
                    l.starts_with("llmgw_requests_total{")
                        && l.contains(&format!("model=\"{model}\""))
                })
                .map(|l| l.rsplit(' ').next().unwrap_or("").to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(counted("m0"), ["1"]);
        assert!(counted(&format!("m{}", MAX_SERIES + 10)).is_empty());
        assert_eq!(counted(OTHER_MODEL), ["50"], "{text}");

        // Nor grow a label without bound: a long name counts as `_other`.
        let m = Metrics::new();
        let long = "x".repeat(200_000);
        m.record(
            &Labels {
                model: &long,
                ..labels()
            },
            &Observation {
                status: 200,
                ..Observation::default()
            },
        );
        let text = m.render();
        assert!(text.len() < 100_000, "{} bytes", text.len());
        assert!(text.contains(&format!("model=\"{OTHER_MODEL}\"")));
    }
}
