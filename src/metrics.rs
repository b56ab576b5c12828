//! Process counters, exposed at `/metrics` in the Prometheus text format.
//!
//! Labels are bounded: rejection reasons are a fixed set of codes, and nothing is labelled with
//! a URL or a payload value.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

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
    rejected: Mutex<BTreeMap<&'static str, u64>>,
    /// (second, lines logged in it): rejection logging is capped per second so that a flood
    /// of bad requests cannot flood the log.
    log_budget: Mutex<(i64, u32)>,
}

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
        ];
        for (name, help, value) in counters {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            let _ = writeln!(out, "{name} {}", value.load(Ordering::Relaxed));
        }
        let name = "tradehook_ingest_rejected_total";
        let _ = writeln!(
            out,
            "# HELP {name} Inbound requests rejected, by reason.\n# TYPE {name} counter"
        );
        for (reason, count) in self.rejections() {
            let _ = writeln!(out, "{name}{{reason=\"{reason}\"}} {count}");
        }
        out
    }
}
