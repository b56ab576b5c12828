//! Process counters, exposed at `/metrics` in the Prometheus text format.
//!
//! Labels are bounded: rejection reasons are a fixed set of codes, the operator's endpoints are
//! labelled by their id, applications' endpoints by their application's id (the first
//! [`MAX_APPLICATION_SERIES`] applications seen; the rest together as `_other`), and nothing is
//! labelled with a URL or a payload value.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// Counters of the pipeline.
#[derive(Default)]
pub struct Metrics {
    pub events_received: AtomicU64,
    pub events_duplicate: AtomicU64,
    pub deliveries_succeeded: AtomicU64,
    pub deliveries_failed: AtomicU64,
    pub deliveries_expired: AtomicU64,
    pub delivery_retries: AtomicU64,
    pub attempts: AtomicU64,
    /// Events not sent to an application because it had had its events for the day.
    pub quota_skipped: AtomicU64,
    /// HTTP connections open now, and those closed to make room, refused at the cap, or
    /// closed for sending no headers in time or idling too long.
    pub connections_open: AtomicU64,
    pub connections_evicted: AtomicU64,
    pub connections_refused: AtomicU64,
    pub connections_timed_out: AtomicU64,
    /// When the served TLS certificate expires, in unix seconds; 0 without TLS (or before
    /// an ACME certificate is obtained).
    pub tls_not_after: AtomicI64,
    rejected: Mutex<BTreeMap<&'static str, u64>>,
    /// Per endpoint: attempts by outcome, their durations, and ingest→success latency.
    endpoints: Mutex<BTreeMap<String, EndpointMetrics>>,
    /// The same per application, for the endpoints of applications: a provider may have
    /// thousands of customers' endpoints, too many to label each.
    applications: Mutex<BTreeMap<String, EndpointMetrics>>,
    /// (second, lines logged in it): rejection logging is capped per second so that a flood
    /// of bad requests cannot flood the log.
    log_budget: Mutex<(i64, u32)>,
}

/// Histogram bucket bounds, in seconds.
const BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0,
];

/// A Prometheus histogram: counts per bucket (not cumulative), sum and count.
#[derive(Debug, Default, Clone)]
struct Histogram {
    buckets: [u64; BUCKETS.len()],
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, seconds: f64) {
        if let Some(i) = BUCKETS.iter().position(|b| seconds <= *b) {
            self.buckets[i] += 1;
        }
        self.sum += seconds;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        for (bound, n) in BUCKETS.iter().zip(self.buckets) {
            cumulative += n;
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{bound}\"}} {cumulative}");
        }
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", self.sum);
        let _ = writeln!(out, "{name}_count{{{labels}}} {}", self.count);
    }
}

#[derive(Debug, Default, Clone)]
struct EndpointMetrics {
    /// Attempts by outcome: success, retry, failed, gone.
    attempts: BTreeMap<&'static str, u64>,
    attempt_seconds: Histogram,
    latency_seconds: Histogram,
}

/// Applications labelled each on their own; those seen after these share `_other`.
pub const MAX_APPLICATION_SERIES: usize = 1000;

/// Rejection log lines allowed per second.
const REJECTION_LOGS_PER_SECOND: u32 = 20;

impl Metrics {
    /// Counts a rejected inbound request by its stable code.
    pub fn reject(&self, code: &'static str) {
        *self
            .rejected
            .lock()
            .expect("metrics lock")
            .entry(code)
            .or_default() += 1;
    }

    /// Whether one more rejection may be logged this second.
    pub fn may_log_rejection(&self) -> bool {
        let second = crate::domain::now_ms() / 1000;
        let mut budget = self.log_budget.lock().expect("metrics lock");
        if budget.0 != second {
            *budget = (second, 0);
        }
        budget.1 += 1;
        budget.1 <= REJECTION_LOGS_PER_SECOND
    }

    /// Rejections so far, by code.
    pub fn rejections(&self) -> BTreeMap<&'static str, u64> {
        self.rejected.lock().expect("metrics lock").clone()
    }

    /// Records an attempt of a delivery to `endpoint`: its outcome and duration, and for a
    /// success the time since its event was ingested.
    /// An application's endpoint (`application` is given) is counted under its application.
    pub fn attempt(
        &self,
        endpoint: &str,
        application: Option<&str>,
        outcome: &'static str,
        duration_ms: u64,
        since_ingest_ms: Option<i64>,
    ) {
        let (mut series, key) = match application {
            None => (
                self.endpoints.lock().expect("metrics lock"),
                endpoint.to_owned(),
            ),
            Some(app) => {
                let series = self.applications.lock().expect("metrics lock");
                let key = if series.contains_key(app) || series.len() < MAX_APPLICATION_SERIES {
                    app.to_owned()
                } else {
                    "_other".to_owned()
                };
                (series, key)
            }
        };
        let m = series.entry(key).or_default();
        *m.attempts.entry(outcome).or_default() += 1;
        m.attempt_seconds.observe(duration_ms as f64 / 1000.0);
        if let Some(ms) = since_ingest_ms {
            m.latency_seconds.observe(ms.max(0) as f64 / 1000.0);
        }
    }

    pub fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The Prometheus text exposition of every counter.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let counters = [
            (
                "tradehook_events_received_total",
                "Events accepted and stored.",
                &self.events_received,
            ),
            (
                "tradehook_quota_skipped_total",
                "Events not sent to an application over its events per day (one per application).",
                &self.quota_skipped,
            ),
            (
                "tradehook_events_duplicate_total",
                "Events recognised as duplicates.",
                &self.events_duplicate,
            ),
            (
                "tradehook_deliveries_succeeded_total",
                "Deliveries that succeeded.",
                &self.deliveries_succeeded,
            ),
            (
                "tradehook_deliveries_failed_total",
                "Deliveries that failed for good.",
                &self.deliveries_failed,
            ),
            (
                "tradehook_deliveries_expired_total",
                "Deliveries not sent because they were older than their endpoint's max_age.",
                &self.deliveries_expired,
            ),
            (
                "tradehook_delivery_retries_total",
                "Attempts that failed and were scheduled again.",
                &self.delivery_retries,
            ),
            (
                "tradehook_delivery_attempts_total",
                "Delivery attempts made.",
                &self.attempts,
            ),
            (
                "tradehook_connections_evicted_total",
                "Idle HTTP connections closed to make room for a new one at the connection cap.",
                &self.connections_evicted,
            ),
            (
                "tradehook_connections_refused_total",
                "HTTP connections answered 503 at the cap because every connection was busy.",
                &self.connections_refused,
            ),
            (
                "tradehook_connections_timed_out_total",
                "HTTP connections closed for not sending headers in time or idling too long.",
                &self.connections_timed_out,
            ),
        ];
        for (name, help, value) in counters {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            let _ = writeln!(out, "{name} {}", value.load(Ordering::Relaxed));
        }
        let name = "tradehook_connections_open";
        let _ = writeln!(
            out,
            "# HELP {name} HTTP connections open.\n# TYPE {name} gauge\n{name} {}",
            self.connections_open.load(Ordering::Relaxed)
        );
        let not_after = self.tls_not_after.load(Ordering::Relaxed);
        if not_after > 0 {
            let name = "tradehook_tls_certificate_expiry_seconds";
            let _ = writeln!(
                out,
                "# HELP {name} When the served TLS certificate expires (unix time).\n\
                 # TYPE {name} gauge\n{name} {not_after}"
            );
        }
        let name = "tradehook_ingest_rejected_total";
        let _ = writeln!(
            out,
            "# HELP {name} Inbound requests rejected, by reason.\n# TYPE {name} counter"
        );
        for (reason, count) in self.rejections() {
            let _ = writeln!(out, "{name}{{reason=\"{reason}\"}} {count}");
        }
        let endpoints = self.endpoints.lock().expect("metrics lock").clone();
        let name = "tradehook_endpoint_attempts_total";
        let _ = writeln!(
            out,
            "# HELP {name} Delivery attempts by endpoint and outcome.\n# TYPE {name} counter"
        );
        for (endpoint, m) in &endpoints {
            for (outcome, n) in &m.attempts {
                let _ = writeln!(
                    out,
                    "{name}{{endpoint=\"{endpoint}\",outcome=\"{outcome}\"}} {n}"
                );
            }
        }
        let applications = self.applications.lock().expect("metrics lock").clone();
        let name = "tradehook_application_attempts_total";
        let _ = writeln!(
            out,
            "# HELP {name} Delivery attempts to applications' endpoints, by application and \
             outcome.\n# TYPE {name} counter"
        );
        for (application, m) in &applications {
            for (outcome, n) in &m.attempts {
                let _ = writeln!(
                    out,
                    "{name}{{application=\"{application}\",outcome=\"{outcome}\"}} {n}"
                );
            }
        }
        for (name, help, label, series, pick) in [
            (
                "tradehook_attempt_duration_seconds",
                "How long delivery attempts took, by endpoint.",
                "endpoint",
                &endpoints,
                (|m: &EndpointMetrics| &m.attempt_seconds) as fn(&EndpointMetrics) -> &Histogram,
            ),
            (
                "tradehook_delivery_latency_seconds",
                "From ingest to the successful attempt, by endpoint.",
                "endpoint",
                &endpoints,
                |m: &EndpointMetrics| &m.latency_seconds,
            ),
            (
                "tradehook_application_attempt_duration_seconds",
                "How long delivery attempts to applications' endpoints took, by application.",
                "application",
                &applications,
                |m: &EndpointMetrics| &m.attempt_seconds,
            ),
            (
                "tradehook_application_delivery_latency_seconds",
                "From ingest to the successful attempt to an application's endpoint, by \
                 application.",
                "application",
                &applications,
                |m: &EndpointMetrics| &m.latency_seconds,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
            for (key, m) in series {
                pick(m).render(&mut out, name, &format!("{label}=\"{key}\""));
            }
        }
        out
    }
}
