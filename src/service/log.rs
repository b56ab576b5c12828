//! The event and delivery log: what came in, what went out and how each attempt went; and
//! what an operator does with it by hand: replay an event, retry a delivery.

use super::{Error, Result, Scope, Services};
use crate::domain;
use crate::model::{Attempt, Delivery, DeliveryFilter, EventFilter, StoredEvent};

impl Services {
    /// Events that pass `filter`, newest first. A source may be named by its name as well as
    /// by its id.
    pub async fn events(&self, scope: Scope, mut filter: EventFilter) -> Result<Vec<StoredEvent>> {
        if let Some(found) = filter
            .source
            .as_deref()
            .and_then(|s| self.registry.source(s))
        {
            filter.source = Some(found.id.clone());
        }
        Ok(self.store.list_events(scope, filter).await?)
    }

    /// An event with its deliveries.
    pub async fn event(&self, scope: Scope, id: &str) -> Result<(StoredEvent, Vec<Delivery>)> {
        let event = self
            .store
            .get_event(scope.clone(), id)
            .await?
            .ok_or_else(|| Error::not_found("event", id))?;
        let deliveries = self
            .store
            .list_deliveries(
                scope,
                DeliveryFilter {
                    event_id: Some(id.to_owned()),
                    limit: 1000,
                    ..Default::default()
                },
            )
            .await?;
        Ok((event, deliveries))
    }

    /// The request body an event arrived with, its secrets removed (empty for an event
    /// published through the API, whose stored body is all there was).
    pub async fn event_raw(&self, scope: Scope, id: &str) -> Result<bytes::Bytes> {
        self.store
            .event_raw(scope, id)
            .await?
            .ok_or_else(|| Error::not_found("event", id))
    }

    /// Sends a stored event again to every endpoint in `scope` subscribed to its type now;
    /// returns the new deliveries' ids.
    pub async fn replay_event(&self, scope: Scope, id: &str) -> Result<Vec<String>> {
        let event = self
            .store
            .get_event(scope.clone(), id)
            .await?
            .ok_or_else(|| Error::not_found("event", id))?;
        let deliveries = self.ingestor.replay(&scope, &event).await?;
        tracing::info!(event = %id, deliveries = deliveries.len(), "event replayed");
        Ok(deliveries)
    }

    /// Deliveries that pass `filter`, newest first.
    pub async fn deliveries(&self, scope: Scope, filter: DeliveryFilter) -> Result<Vec<Delivery>> {
        Ok(self.store.list_deliveries(scope, filter).await?)
    }

    /// A delivery with every attempt.
    pub async fn delivery(&self, scope: Scope, id: &str) -> Result<(Delivery, Vec<Attempt>)> {
        let delivery = self
            .store
            .get_delivery(scope.clone(), id)
            .await?
            .ok_or_else(|| Error::not_found("delivery", id))?;
        let attempts = self.store.list_attempts(scope, id).await?;
        Ok((delivery, attempts))
    }

    /// Makes a delivery pending again, due now, with a fresh retry schedule; not when its
    /// endpoint was deleted.
    pub async fn retry_delivery(&self, scope: Scope, id: &str) -> Result<Delivery> {
        let delivery = self
            .store
            .get_delivery(scope.clone(), id)
            .await?
            .ok_or_else(|| Error::not_found("delivery", id))?;
        if self.registry.endpoint(&delivery.endpoint_id).is_none() {
            return Err(Error::conflict(
                "endpoint_deleted",
                format!("endpoint {} was deleted", delivery.endpoint_id),
            ));
        }
        let updated = self
            .store
            .retry_delivery(scope, id, domain::now_ms())
            .await?
            .ok_or_else(|| Error::not_found("delivery", id))?;
        self.dispatch.wake();
        tracing::info!(delivery = %id, "delivery retried by hand");
        Ok(updated)
    }
}
