//! The end of ingest: storing an accepted event with its deliveries, then handing them over.

use std::sync::Arc;
use std::time::Duration;

use crate::dispatch::DispatchHandle;
use crate::domain::{self, EventType, prefix};
use crate::metrics::Metrics;
use crate::model::{DeliveryJob, Endpoint, IngestOutcome, Labels, NewDelivery, NewEvent, Ordering};
use crate::registry::Registry;
use crate::store::{Result, Store};

/// The source name of events sent through the publisher API.
pub const API_SOURCE: &str = "api";

pub use crate::domain::HUB_SOURCE;

/// What the sender is told.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct Receipt {
    /// The stored event's id (for a duplicate, the id of the event stored first).
    pub id: String,
    /// The same event was stored before, within the dedupe window; nothing new is stored.
    pub duplicate: bool,
}

/// An event to store, from either way in.
pub struct Submission {
    /// Dedupe scope and stored source: the source id, or [`API_SOURCE`].
    pub source_id: String,
    /// The name shown in the delivered body.
    pub source_name: String,
    pub event_type: EventType,
    pub data: serde_json::Value,
    pub dedupe_key: String,
    pub raw: bytes::Bytes,
    /// Labels the publisher gave (kept in the body); `source`, `pair` and `strategy` are
    /// added from the event itself.
    pub labels: Labels,
}

/// Stores events and starts their delivery.
pub struct Ingestor {
    pub store: Arc<dyn Store>,
    pub registry: Arc<Registry>,
    pub dispatch: DispatchHandle,
    pub metrics: Arc<Metrics>,
    pub dedupe_window: Duration,
    /// Applications' events per day.
    pub quotas: super::quota::DailyQuotas,
}

impl Ingestor {
    /// Stores the event and one delivery per subscribed endpoint in one transaction; answers
    /// once it is on disk. A duplicate within the dedupe window stores nothing.
    pub async fn submit(&self, s: Submission) -> Result<Receipt> {
        let now = domain::now_ms();
        let id = domain::new_id(prefix::EVENT);
        let body: Arc<str> = Arc::from(crate::ingest::canonical_body(
            &id,
            &s.event_type,
            &s.source_name,
            now,
            &s.data,
            &s.labels,
        ));
        let pair = s.data.get("pair").and_then(|p| p.as_str());
        let labels = crate::ingest::event_labels(&s.source_name, &s.data, &s.labels);
        let endpoints = self.registry.subscribers(&s.event_type, &labels);
        let admitted = self
            .quotas
            .admit(&*self.store, &self.registry, endpoints, now)
            .await?;
        let (endpoints, reserved) = (admitted.endpoints, admitted.reserved);
        for app in &admitted.refused {
            Metrics::add(&self.metrics.quota_skipped);
            tracing::debug!(application = %app, event = %id, "over its events per day: not sent");
        }
        let (deliveries, jobs) = plan(&endpoints, &id, &s.event_type, &body, now, pair);
        let ordered = deliveries.iter().any(|d| d.order_key.is_some());
        let event = NewEvent {
            id: id.clone(),
            source: s.source_id,
            event_type: s.event_type,
            dedupe_key: s.dedupe_key,
            body,
            raw: s.raw,
            created_at: now,
        };
        let dedupe_since = now - self.dedupe_window.as_millis() as i64;
        let lease = self.dispatch.lease(now);
        let leased_until = lease.until;
        let outcome = self
            .store
            .ingest(event, deliveries, lease, dedupe_since)
            .await;
        if !matches!(outcome, Ok(IngestOutcome::Stored)) {
            self.quotas.release(&*self.store, reserved).await;
        }
        match outcome? {
            IngestOutcome::Stored => {
                Metrics::add(&self.metrics.events_received);
                self.dispatch.hand_over(leased_until, jobs).await;
                if ordered {
                    // Ordered deliveries are claimed from the store, in order.
                    self.dispatch.wake();
                }
                Ok(Receipt {
                    id,
                    duplicate: false,
                })
            }
            IngestOutcome::Duplicate { original_id } => {
                Metrics::add(&self.metrics.events_duplicate);
                Ok(Receipt {
                    id: original_id,
                    duplicate: true,
                })
            }
        }
    }

    /// Creates the deliveries `endpoint` missed since `since` (while it was disabled, or before
    /// it subscribed), in event order; returns how many.
    pub async fn catch_up(&self, endpoint: &Arc<Endpoint>, since: domain::Millis) -> Result<u64> {
        let mut created = 0;
        let mut after = None;
        loop {
            let events = self
                .store
                .events_missing_delivery(&endpoint.id, since, after.clone(), 500)
                .await?;
            let Some(last) = events.last() else {
                return Ok(created);
            };
            after = Some(last.id.clone());
            for event in &events {
                let Ok(event_type) = EventType::parse(&event.event_type) else {
                    continue;
                };
                let stored: serde_json::Value =
                    serde_json::from_str(&event.body).unwrap_or_default();
                if !endpoint.wants(&event_type, &crate::ingest::stored_labels(&stored)) {
                    continue;
                }
                let pair = stored.pointer("/data/pair").and_then(|p| p.as_str());
                let body: Arc<str> = Arc::from(event.body.as_str());
                let (deliveries, jobs) = plan(
                    std::slice::from_ref(endpoint),
                    &event.id,
                    &event_type,
                    &body,
                    event.created_at,
                    pair,
                );
                let lease = self.dispatch.lease(domain::now_ms());
                let leased_until = lease.until;
                self.store
                    .add_deliveries(&event.id, deliveries, lease)
                    .await?;
                self.dispatch.hand_over(leased_until, jobs).await;
                created += 1;
            }
            self.dispatch.wake();
        }
    }

    /// Sends a `ping` event to one endpoint through the normal pipeline (stored, rendered,
    /// signed, attempted and logged like any other); returns its event and delivery ids.
    pub async fn ping(&self, endpoint: &Arc<Endpoint>) -> Result<(String, String)> {
        let now = domain::now_ms();
        let id = domain::new_id(prefix::EVENT);
        let event_type = EventType::parse("ping").expect("a valid event type");
        let data = serde_json::json!({
            "endpoint_id": endpoint.id,
            "message": "test delivery from tradehook",
        });
        let body: Arc<str> = Arc::from(crate::ingest::canonical_body(
            &id,
            &event_type,
            HUB_SOURCE,
            now,
            &data,
            &Labels::new(),
        ));
        let (deliveries, jobs) = plan(
            std::slice::from_ref(endpoint),
            &id,
            &event_type,
            &body,
            now,
            None,
        );
        let delivery_id = deliveries[0].id.clone();
        let event = NewEvent {
            id: id.clone(),
            source: HUB_SOURCE.into(),
            event_type,
            dedupe_key: format!("ping:{id}"),
            body,
            raw: bytes::Bytes::new(),
            created_at: now,
        };
        let lease = self.dispatch.lease(now);
        let leased_until = lease.until;
        self.store.ingest(event, deliveries, lease, now).await?;
        self.dispatch.hand_over(leased_until, jobs).await;
        self.dispatch.wake();
        Ok((id, delivery_id))
    }

    /// Publishes `endpoint.disabled` through the hub, to every endpoint subscribed to it.
    pub async fn announce_disabled(
        &self,
        notice: crate::dispatch::EndpointDisabled,
    ) -> Result<Receipt> {
        let now = domain::now_ms();
        let data = serde_json::json!({
            "endpoint_id": notice.endpoint_id,
            "url": crate::security::redact::url(&notice.url),
            "reason": notice.reason,
            "failures": notice.failures,
            "failing_since": notice.failing_since.map(domain::rfc3339),
            "disabled_at": domain::rfc3339(now),
        });
        let key = format!("endpoint.disabled:{}:{now}", notice.endpoint_id);
        self.announce("endpoint.disabled", data, key).await
    }

    /// Publishes one of the hub's own events (`endpoint.disabled`, `order.filled`, …) to every
    /// endpoint subscribed to it; `dedupe_key` keeps it from being published twice.
    pub async fn announce(
        &self,
        event_type: &str,
        data: serde_json::Value,
        dedupe_key: String,
    ) -> Result<Receipt> {
        self.submit(Submission {
            source_id: HUB_SOURCE.into(),
            source_name: HUB_SOURCE.into(),
            event_type: EventType::parse(event_type).expect("the hub's own event types are valid"),
            raw: bytes::Bytes::from(data.to_string()),
            dedupe_key,
            data,
            labels: Labels::new(),
        })
        .await
    }

    /// Creates new deliveries of a stored event to the endpoints subscribed now.
    pub async fn replay(
        &self,
        scope: &crate::domain::Scope,
        event: &crate::model::StoredEvent,
    ) -> Result<Vec<String>> {
        let Ok(event_type) = EventType::parse(&event.event_type) else {
            return Ok(vec![]);
        };
        let body: Arc<str> = Arc::from(event.body.as_str());
        let stored: serde_json::Value = serde_json::from_str(&event.body).unwrap_or_default();
        let pair = stored.pointer("/data/pair").and_then(|p| p.as_str());
        let endpoints: Vec<Arc<Endpoint>> = self
            .registry
            .subscribers(&event_type, &crate::ingest::stored_labels(&stored))
            .into_iter()
            .filter(|e| scope.includes(e.application_id.as_deref()))
            .collect();
        let (deliveries, jobs) = plan(
            &endpoints,
            &event.id,
            &event_type,
            &body,
            event.created_at,
            pair,
        );
        let ordered = deliveries.iter().any(|d| d.order_key.is_some());
        let ids = deliveries.iter().map(|d| d.id.clone()).collect();
        let lease = self.dispatch.lease(domain::now_ms());
        let leased_until = lease.until;
        self.store
            .add_deliveries(&event.id, deliveries, lease)
            .await?;
        self.dispatch.hand_over(leased_until, jobs).await;
        if ordered {
            self.dispatch.wake();
        }
        Ok(ids)
    }
}

/// One delivery per endpoint, and the jobs that hand them to the dispatcher once they are
/// stored. Deliveries to an endpoint with ordered delivery get an order key and no job: the
/// dispatcher claims them one after another.
fn plan(
    endpoints: &[Arc<Endpoint>],
    event_id: &str,
    event_type: &EventType,
    body: &Arc<str>,
    created_at: domain::Millis,
    pair: Option<&str>,
) -> (Vec<NewDelivery>, Vec<DeliveryJob>) {
    let mut deliveries = Vec::new();
    let mut jobs = Vec::new();
    for endpoint in endpoints {
        let id = domain::new_id(prefix::DELIVERY);
        let order_key = match (endpoint.policy.ordering, pair) {
            (Some(Ordering::Endpoint), _) => Some(endpoint.id.clone()),
            (Some(Ordering::Pair), Some(pair)) => Some(format!("{}|{pair}", endpoint.id)),
            // An event about no pair (a status) is not held up by, nor holds up, trades.
            (Some(Ordering::Pair), None) | (None, _) => None,
        };
        if order_key.is_none() {
            jobs.push(DeliveryJob {
                delivery_id: id.clone(),
                event_id: event_id.to_owned(),
                endpoint_id: endpoint.id.clone(),
                event_type: event_type.to_string(),
                body: body.clone(),
                tries: 0,
                event_created_at: created_at,
            });
        }
        deliveries.push(NewDelivery {
            id,
            endpoint_id: endpoint.id.clone(),
            order_key,
        });
    }
    (deliveries, jobs)
}
