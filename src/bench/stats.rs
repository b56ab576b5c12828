//! Percentiles and the report of a benchmark run (pure).

use serde::Serialize;

/// The value at quantile `q` (0..=1) of sorted samples, nearest-rank.
///
/// ```
/// use tradehook::bench::stats::percentile;
/// let v = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10];
/// assert_eq!(percentile(&v, 0.5), 5);
/// assert_eq!(percentile(&v, 0.99), 10);
/// assert_eq!(percentile(&[] as &[u64], 0.5), 0);
/// ```
pub fn percentile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Latency summary in milliseconds.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Latency {
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Latency {
    /// Summarises samples given in microseconds.
    pub fn of(mut micros: Vec<u64>) -> Self {
        micros.sort_unstable();
        let ms = |q| percentile(&micros, q) as f64 / 1000.0;
        Self {
            p50_ms: ms(0.5),
            p90_ms: ms(0.9),
            p99_ms: ms(0.99),
            max_ms: micros.last().copied().unwrap_or(0) as f64 / 1000.0,
        }
    }
}

/// Everything a run measured.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Report {
    pub workload: String,
    pub endpoints: usize,
    /// Order mode: the follower accounts each event is an entry for; each delivery is then
    /// one fill's `order.filled`, and end to end is signal to fill notice.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub followers: Option<usize>,
    /// Provider mode: the applications, one endpoint each.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub applications: Option<usize>,
    pub connections: usize,
    pub events_sent: u64,
    pub events_accepted: u64,
    pub send_errors: u64,
    /// Seconds from the first send to the last answer.
    pub send_seconds: f64,
    pub accepted_per_second: f64,
    pub ingest_latency: Latency,
    pub deliveries_expected: u64,
    pub deliveries_received: u64,
    pub duplicates: u64,
    pub missing: u64,
    /// Seconds from the first send to the last delivery received.
    pub total_seconds: f64,
    pub deliveries_per_second: f64,
    /// From the accepted answer (closed loop) or the scheduled send time (open loop) to the
    /// receipt of each delivery.
    pub end_to_end_latency: Latency,
    /// Fan-out: for each event, from its acceptance (or due time) to its *last* endpoint's
    /// receipt — when the last follower of a copy-trading leader got the signal.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_delivery_latency: Option<Latency>,
    /// Order mode: from the hub accepting a signal to each of its fills, by the hub's clock
    /// in whole milliseconds (the journal's and the event id's resolution).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fill_latency: Option<Latency>,
    /// With a receiver that failed for a while: seconds from its recovery until every event
    /// accepted during the outage had been delivered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drained_after_recovery_seconds: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hub_cpu_seconds: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hub_cpu_percent: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hub_peak_rss_mb: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disk_bytes_per_event: Option<f64>,
    /// The machine's ceiling measured just before the workload, in the same invocation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ceiling: Option<super::ceiling::Ceiling>,
    /// `accepted_per_second` over the ceiling's HTTP requests per second.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accepted_fraction_of_ceiling: Option<f64>,
    /// `deliveries_per_second` over the ceiling's HTTP requests per second.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deliveries_fraction_of_ceiling: Option<f64>,
}

impl Report {
    /// The human-readable form.
    pub fn render(&self) -> String {
        let mut out = format!(
            "workload {}: {} endpoint(s), {} connection(s)\n\
             events      sent {}  accepted {}  errors {}  in {:.2} s  => {:.0} accepted/s\n\
             ingest      p50 {:.3} ms  p99 {:.3} ms  max {:.3} ms\n\
             deliveries  expected {}  received {}  duplicates {}  missing {}\n\
             delivered   all in {:.2} s  => {:.0} deliveries/s\n\
             end to end  p50 {:.3} ms  p90 {:.3} ms  p99 {:.3} ms  max {:.3} ms\n",
            self.workload,
            self.endpoints,
            self.connections,
            self.events_sent,
            self.events_accepted,
            self.send_errors,
            self.send_seconds,
            self.accepted_per_second,
            self.ingest_latency.p50_ms,
            self.ingest_latency.p99_ms,
            self.ingest_latency.max_ms,
            self.deliveries_expected,
            self.deliveries_received,
            self.duplicates,
            self.missing,
            self.total_seconds,
            self.deliveries_per_second,
            self.end_to_end_latency.p50_ms,
            self.end_to_end_latency.p90_ms,
            self.end_to_end_latency.p99_ms,
            self.end_to_end_latency.max_ms,
        );
        if let Some(l) = &self.last_delivery_latency {
            out += &format!(
                "last of each p50 {:.3} ms  p99 {:.3} ms  max {:.3} ms (each event to its last endpoint)\n",
                l.p50_ms, l.p99_ms, l.max_ms
            );
        }
        if let Some(n) = self.applications {
            out += &format!(
                "provider    {n} application(s), one endpoint each; every event reaches the \
                 deliveries_expected / events_accepted of them that follow its wallet\n"
            );
        }
        if let Some(n) = self.followers {
            out += &format!(
                "orders      {n} follower account(s): each delivery is one fill's order.filled\n"
            );
        }
        if let Some(f) = &self.fill_latency {
            out += &format!(
                "to the fill p50 {:.0} ms  p90 {:.0} ms  p99 {:.0} ms  max {:.0} ms (hub clock, whole ms)\n",
                f.p50_ms, f.p90_ms, f.p99_ms, f.max_ms
            );
        }
        if let Some(s) = self.drained_after_recovery_seconds {
            out += &format!(
                "recovery    everything delivered {s:.2} s after the receiver recovered\n"
            );
        }
        if let (Some(cpu), Some(pct)) = (self.hub_cpu_seconds, self.hub_cpu_percent) {
            out += &format!("hub         cpu {cpu:.2} s ({pct:.0} % of one core)");
            if let Some(rss) = self.hub_peak_rss_mb {
                out += &format!("  peak rss {rss:.1} MB");
            }
            if let Some(b) = self.disk_bytes_per_event {
                out += &format!("  disk {b:.0} bytes/event");
            }
            out.push('\n');
        }
        if let Some(c) = &self.ceiling {
            out += &format!(
                "ceiling     http {:.0} requests/s ({} connections, no hub)  \
                 fdatasync {:.0}/s p50 {:.3} ms p99 {:.3} ms\n",
                c.http_requests_per_second,
                c.http_connections,
                c.fdatasync_per_second,
                c.fdatasync_p50_ms,
                c.fdatasync_p99_ms,
            );
        }
        if let (Some(a), Some(d)) = (
            self.accepted_fraction_of_ceiling,
            self.deliveries_fraction_of_ceiling,
        ) {
            out +=
                &format!("of ceiling  accepted {a:.3}  deliveries {d:.3} (of the http ceiling)\n");
        }
        out
    }
}
