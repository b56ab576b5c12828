//! How the hub has been doing over a window: deliveries by outcome with their success rate
//! and latency, overall and per endpoint, and events received per source.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use serde::Serialize;
use utoipa::ToSchema;

use super::{Result, Scope, Services};
use crate::domain::{self, rfc3339};

/// Succeeded deliveries whose latency is measured, newest first.
const LATENCY_SAMPLE: u32 = 100_000;

#[derive(Debug, Default, Serialize, ToSchema)]
struct Deliveries {
    succeeded: u64,
    failed: u64,
    expired: u64,
    pending: u64,
    cancelled: u64,
    /// Attempts beyond each delivery's first.
    retries: u64,
    /// Succeeded over finished (succeeded, failed, expired); null when none finished.
    success_rate: Option<f64>,
    /// Ingest to the successful attempt, in milliseconds.
    latency_ms: Option<Latency>,
}

#[derive(Debug, Serialize, ToSchema)]
struct Latency {
    p50: i64,
    p90: i64,
    p95: i64,
    p99: i64,
    max: i64,
    /// How many deliveries these figures are taken over.
    count: usize,
}

#[derive(Debug, Serialize, ToSchema)]
struct EndpointStats {
    endpoint_id: String,
    #[serde(flatten)]
    deliveries: Deliveries,
}

#[derive(Debug, Serialize, ToSchema)]
struct SourceStats {
    source: String,
    received: u64,
}

#[derive(Debug, Serialize, ToSchema)]
struct SinceStart {
    received: u64,
    duplicates: u64,
    /// Inbound requests refused, by code.
    #[schema(value_type = BTreeMap<String, u64>)]
    rejected: BTreeMap<&'static str, u64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct StatsOut {
    since: String,
    until: String,
    received: u64,
    deliveries: Deliveries,
    endpoints: Vec<EndpointStats>,
    sources: Vec<SourceStats>,
    /// Counters of this process since it started (the database does not keep them); the
    /// hub's own, so not shown to an application.
    #[serde(skip_serializing_if = "Option::is_none")]
    since_start: Option<SinceStart>,
}

fn latency(mut values: Vec<i64>) -> Option<Latency> {
    if values.is_empty() {
        return None;
    }
    values.sort_unstable();
    let at =
        |q: f64| values[((values.len() as f64 * q).ceil() as usize).clamp(1, values.len()) - 1];
    Some(Latency {
        p50: at(0.50),
        p90: at(0.90),
        p95: at(0.95),
        p99: at(0.99),
        max: *values.last().expect("not empty"),
        count: values.len(),
    })
}

fn add(d: &mut Deliveries, status: &str, n: u64, retries: u64) {
    match status {
        "succeeded" => d.succeeded += n,
        "failed" => d.failed += n,
        "expired" => d.expired += n,
        "pending" => d.pending += n,
        "cancelled" => d.cancelled += n,
        _ => {}
    }
    d.retries += retries;
}

fn finish(d: &mut Deliveries, latencies: Vec<i64>) {
    let finished = d.succeeded + d.failed + d.expired;
    d.success_rate = (finished > 0).then(|| d.succeeded as f64 / finished as f64);
    d.latency_ms = latency(latencies);
}

impl Services {
    /// The figures of the last `window`.
    pub async fn stats(&self, scope: Scope, window: std::time::Duration) -> Result<StatsOut> {
        self.stats_sampled(scope, window, LATENCY_SAMPLE).await
    }

    /// Per minute for the `minutes` minutes up to now: events received, deliveries that
    /// succeeded and that failed.
    pub async fn minute_counts(
        &self,
        scope: Scope,
        minutes: usize,
    ) -> Result<crate::store::MinuteCounts> {
        let since = domain::now_ms() - minutes as i64 * 60_000;
        Ok(self.store.minute_counts(scope, since, minutes).await?)
    }

    /// The figures of the last `window`, with latencies from the newest `sample` successful
    /// deliveries only: a dashboard page answers in milliseconds on a busy hub.
    pub async fn stats_sampled(
        &self,
        scope: Scope,
        window: std::time::Duration,
        sample: u32,
    ) -> Result<StatsOut> {
        let until = domain::now_ms();
        let since = until - window.as_millis() as i64;
        let raw = self.store.stats(scope.clone(), since, sample).await?;

        let mut overall = Deliveries::default();
        let mut per_endpoint: BTreeMap<String, Deliveries> = BTreeMap::new();
        for (endpoint, status, n, retries) in &raw.deliveries {
            add(&mut overall, status, *n, *retries);
            add(
                per_endpoint.entry(endpoint.clone()).or_default(),
                status,
                *n,
                *retries,
            );
        }
        let mut latencies: BTreeMap<String, Vec<i64>> = BTreeMap::new();
        for (endpoint, ms) in &raw.latencies {
            latencies.entry(endpoint.clone()).or_default().push(*ms);
        }
        finish(
            &mut overall,
            raw.latencies.iter().map(|(_, ms)| *ms).collect(),
        );
        let endpoints = per_endpoint
            .into_iter()
            .map(|(endpoint_id, mut d)| {
                finish(&mut d, latencies.remove(&endpoint_id).unwrap_or_default());
                EndpointStats {
                    endpoint_id,
                    deliveries: d,
                }
            })
            .collect();
        // Sources by name where the registry knows them.
        let sources: Vec<SourceStats> = raw
            .events_by_source
            .iter()
            .map(|(id, n)| SourceStats {
                source: self
                    .registry
                    .source(id)
                    .map_or_else(|| id.clone(), |s| s.name.clone()),
                received: *n,
            })
            .collect();
        let m = &self.metrics;
        Ok(StatsOut {
            since: rfc3339(since),
            until: rfc3339(until),
            received: raw.events_by_source.iter().map(|(_, n)| n).sum(),
            deliveries: overall,
            endpoints,
            sources,
            since_start: (scope == Scope::Hub).then(|| SinceStart {
                received: m.events_received.load(Ordering::Relaxed),
                duplicates: m.events_duplicate.load(Ordering::Relaxed),
                rejected: m.rejections(),
            }),
        })
    }
}
