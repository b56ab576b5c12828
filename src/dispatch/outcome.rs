//! What an attempt's outcome means, beside the scheduler that starts attempts: the attempt is
//! made through the transport, then its verdict becomes the delivery's next step (done,
//! retried at a time, failed, expired), the record in the store, the endpoint's auto-disable
//! and the slot freed for the scheduler.

use std::sync::Arc;

use tokio::sync::mpsc;

use crate::deliver::{self, retry};
use crate::domain::Verdict;
use crate::domain::{self, Millis};
use crate::metrics::Metrics;
use crate::model::{Attempt, AttemptRecord, DeliveryJob, Health, NextStep};
use crate::registry::Registry;
use crate::store::Store;

use super::{EndpointDisabled, SlotFreed};

/// The shortest wait a receiver's `retry_after` gets: `0` must not become a tight loop.
const MIN_RETRY_AFTER_MS: u64 = 50;

/// What an attempt task needs.
pub(super) struct Context {
    pub(super) store: Arc<dyn Store>,
    /// The node whose lease the delivery carries.
    pub(super) node: Arc<str>,
    pub(super) registry: Arc<Registry>,
    pub(super) outbound: Arc<dyn deliver::Transport>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) freed: mpsc::UnboundedSender<SlotFreed>,
    pub(super) notices: mpsc::UnboundedSender<EndpointDisabled>,
    pub(super) auto_disable: Option<(u32, Millis)>,
}

/// Makes one attempt and records it; says on `freed` when the HTTP exchange is over. Returns
/// the delivery id once the result is recorded, and whether its endpoint delivers in order.
pub(super) async fn attempt_one(cx: Context, job: DeliveryJob) -> (String, bool) {
    let Context {
        store,
        node,
        registry,
        outbound,
        metrics,
        freed,
        notices,
        auto_disable,
    } = cx;
    let endpoint = match registry.endpoint(&job.endpoint_id) {
        Some(e) if e.enabled => e,
        _ => {
            // Disabled or deleted since the job was queued: it stays pending in the store.
            let _ = freed.send(SlotFreed::unused(&job.endpoint_id));
            if let Err(e) = store.release(&node, vec![job.delivery_id.clone()]).await {
                tracing::warn!(error = %e, "could not give back a delivery");
            }
            return (job.delivery_id, false);
        }
    };
    let ordered = endpoint.policy.ordering.is_some();
    // A stale signal is not sent: an execution bot must not act on an old entry. An order
    // destination applies max_age itself, as a rule of its risk gate: the order log then says
    // why nothing was placed, and an intent decided in time is settled, never left behind.
    let expires_at = endpoint
        .policy
        .max_age_ms
        .filter(|_| endpoint.account_id().is_none())
        .map(|max| job.event_created_at + max as i64);
    if let Some(deadline) = expires_at
        && domain::now_ms() > deadline
    {
        let _ = freed.send(SlotFreed::unused(&job.endpoint_id));
        record_expired(&*store, &metrics, &job, deadline).await;
        return (job.delivery_id, ordered);
    }
    let result = outbound.attempt(&endpoint, &job).await;
    let _ = freed.send(SlotFreed {
        endpoint_id: job.endpoint_id.clone(),
        verdict: Some(result.verdict),
        status: result.status_code,
        retry_after_ms: result.retry_after_ms,
    });
    Metrics::add(&metrics.attempts);
    metrics.attempt(
        &job.endpoint_id,
        endpoint.application_id.as_deref(),
        match result.verdict {
            Verdict::Success => "success",
            Verdict::Retry => "retry",
            Verdict::Fail => "failed",
            Verdict::Gone => "gone",
        },
        result.duration_ms,
        (result.verdict == Verdict::Success).then(|| result.attempted_at - job.event_created_at),
    );
    let tries = job.tries + 1;
    let mut disable = None;
    // A 429 is the receiver pacing us and a template error is ours: neither says the
    // endpoint is down.
    let health = match (result.verdict, result.status_code, result.error_kind) {
        (Verdict::Success, _, _) => Health::Success,
        // A refused, blocked or contended order says nothing of the destination's health.
        (_, Some(429), _)
        | (_, _, Some("render" | "order_rejected" | "risk_blocked" | "order_pending")) => {
            Health::Neutral
        }
        _ => Health::Failure,
    };
    let next = match result.verdict {
        Verdict::Success => {
            Metrics::add(&metrics.deliveries_succeeded);
            NextStep::Done
        }
        Verdict::Gone => {
            disable = Some("the endpoint answered 410 Gone".to_owned());
            Metrics::add(&metrics.deliveries_failed);
            NextStep::Failed
        }
        Verdict::Fail => {
            Metrics::add(&metrics.deliveries_failed);
            NextStep::Failed
        }
        Verdict::Retry => {
            let jitter = rand::random::<f64>() * 2.0 - 1.0;
            let now = domain::now_ms();
            let mut next =
                retry::next_after_failure(tries, &endpoint.retry_schedule_ms, now, jitter);
            // At the time the receiver asked for, sooner or later than the schedule's step: a
            // signal to an execution bot must not wait seconds longer than it has to.
            if let (NextStep::RetryAt(at), Some(wait)) = (&mut next, result.retry_after_ms) {
                *at = now + wait.clamp(MIN_RETRY_AFTER_MS, retry::MAX_RETRY_AFTER_MS) as i64;
            }
            // A retry that would come too late is not waited for.
            if let (NextStep::RetryAt(at), Some(deadline)) = (next, expires_at)
                && at > deadline
            {
                next = NextStep::Expired;
            }
            match next {
                NextStep::Failed => Metrics::add(&metrics.deliveries_failed),
                NextStep::Expired => Metrics::add(&metrics.deliveries_expired),
                _ => Metrics::add(&metrics.delivery_retries),
            }
            next
        }
    };
    tracing::debug!(
        delivery = %job.delivery_id,
        endpoint = %job.endpoint_id,
        status = ?result.status_code,
        error = ?result.error_kind,
        "delivery attempt"
    );
    if let Some(kind) = result.error_kind {
        tracing::info!(
            delivery = %job.delivery_id,
            endpoint = %job.endpoint_id,
            tries,
            error_kind = kind,
            next = ?next,
            "delivery attempt failed"
        );
    }
    let record = AttemptRecord {
        attempt: Attempt {
            id: result.attempt_id,
            delivery_id: job.delivery_id.clone(),
            attempted_at: result.attempted_at,
            status_code: result.status_code,
            duration_ms: result.duration_ms,
            error_kind: result.error_kind.map(str::to_owned),
            error: result.error,
            response_body: result.response_body,
        },
        next,
        disable_endpoint: disable,
        endpoint_id: job.endpoint_id.clone(),
        health,
        auto_disable,
    };
    match store.record_attempt(record).await {
        Ok(recorded) => {
            if let Some(d) = recorded.disabled {
                tracing::warn!(endpoint = %job.endpoint_id, reason = %d.reason, "endpoint disabled");
                if let Err(e) = registry.reload().await {
                    tracing::error!(error = %e, "reloading endpoints failed");
                }
                let _ = notices.send(EndpointDisabled {
                    endpoint_id: job.endpoint_id.clone(),
                    url: endpoint.url.clone(),
                    reason: d.reason,
                    failures: d.failures,
                    failing_since: d.failing_since,
                });
            }
        }
        // The delivery stays leased and pending: it is attempted again once the lease ends
        // (at least once, never lost).
        Err(e) => {
            tracing::error!(error = %e, delivery = %job.delivery_id, "recording an attempt failed")
        }
    }
    (job.delivery_id, ordered)
}

/// Marks a delivery expired, with an entry in its attempt log saying why nothing was sent.
async fn record_expired(store: &dyn Store, metrics: &Metrics, job: &DeliveryJob, deadline: Millis) {
    let now = domain::now_ms();
    let age = (now - job.event_created_at) as f64 / 1000.0;
    let max_age = (deadline - job.event_created_at) as f64 / 1000.0;
    let record = AttemptRecord {
        attempt: Attempt {
            id: domain::new_id(domain::prefix::MESSAGE),
            delivery_id: job.delivery_id.clone(),
            attempted_at: now,
            status_code: None,
            duration_ms: 0,
            error_kind: Some("expired".into()),
            error: Some(format!(
                "not sent: the event is {age:.1} s old, past this endpoint's max_age of {max_age} s"
            )),
            response_body: String::new(),
        },
        next: NextStep::Expired,
        disable_endpoint: None,
        endpoint_id: job.endpoint_id.clone(),
        health: Health::Neutral,
        auto_disable: None,
    };
    Metrics::add(&metrics.deliveries_expired);
    tracing::info!(delivery = %job.delivery_id, endpoint = %job.endpoint_id, age_s = age, "delivery expired");
    if let Err(e) = store.record_attempt(record).await {
        tracing::error!(error = %e, delivery = %job.delivery_id, "recording an expiry failed");
    }
}
