//! The end of ingest: storing an accepted event with its deliveries, then handing them over.

use std::sync::Arc;
use std::time::Duration;

use crate::dispatch::DispatchHandle;
use crate::domain::{self, EventType, prefix};
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::store::{DeliveryJob, IngestOutcome, NewDelivery, NewEvent, Result, Store};

/// The source name of events sent through the publisher API.
pub const API_SOURCE: &str = "api";

/// What the sender is told.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Receipt {
    pub id: String,
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
}

/// Stores events and starts their delivery.
pub struct Ingestor {
    pub store: Arc<dyn Store>,
    pub registry: Arc<Registry>,
    pub dispatch: DispatchHandle,
    pub metrics: Arc<Metrics>,
    pub dedupe_window: Duration,
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
        ));
        let endpoints = self.registry.subscribers(&s.event_type);
        let deliveries: Vec<NewDelivery> = endpoints
            .iter()
            .map(|e| NewDelivery {
                id: domain::new_id(prefix::DELIVERY),
                endpoint_id: e.id.clone(),
            })
            .collect();
        let jobs: Vec<DeliveryJob> = deliveries
            .iter()
            .map(|d| DeliveryJob {
                delivery_id: d.id.clone(),
                event_id: id.clone(),
                endpoint_id: d.endpoint_id.clone(),
                event_type: s.event_type.to_string(),
                body: body.clone(),
                tries: 0,
                event_created_at: now,
            })
            .collect();
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
        match self
            .store
            .ingest(event, deliveries, lease, dedupe_since)
            .await?
        {
            IngestOutcome::Stored => {
                Metrics::add(&self.metrics.events_received);
                self.dispatch.hand_over(jobs).await;
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

    /// Creates new deliveries of a stored event to the endpoints subscribed now.
    pub async fn replay(&self, event: &crate::store::StoredEvent) -> Result<Vec<String>> {
        let Ok(event_type) = EventType::parse(&event.event_type) else {
            return Ok(vec![]);
        };
        let body: Arc<str> = Arc::from(event.body.as_str());
        let deliveries: Vec<NewDelivery> = self
            .registry
            .subscribers(&event_type)
            .iter()
            .map(|e| NewDelivery {
                id: domain::new_id(prefix::DELIVERY),
                endpoint_id: e.id.clone(),
            })
            .collect();
        let jobs = deliveries
            .iter()
            .map(|d| DeliveryJob {
                delivery_id: d.id.clone(),
                event_id: event.id.clone(),
                endpoint_id: d.endpoint_id.clone(),
                event_type: event.event_type.clone(),
                body: body.clone(),
                tries: 0,
                event_created_at: event.created_at,
            })
            .collect();
        let ids = deliveries.iter().map(|d| d.id.clone()).collect();
        let lease = self.dispatch.lease(domain::now_ms());
        self.store
            .add_deliveries(&event.id, deliveries, lease)
            .await?;
        self.dispatch.hand_over(jobs).await;
        Ok(ids)
    }
}
