//! Events: as they are stored by ingest, and as the delivery log shows them.

use std::sync::Arc;

use crate::domain::{EventType, Millis};

/// An event ready to be stored.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub id: String,
    /// The id of the source it came through, or `api` for the publisher API.
    pub source: String,
    pub event_type: EventType,
    /// The dedupe key, unique per source within the dedupe window.
    pub dedupe_key: String,
    /// The canonical event as delivered (JSON).
    pub body: Arc<str>,
    /// The request body exactly as received.
    pub raw: bytes::Bytes,
    pub created_at: Millis,
}

/// What storing an event did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IngestOutcome {
    /// Stored, with this many deliveries.
    Stored,
    /// Already seen within the dedupe window: the id of the original event.
    Duplicate { original_id: String },
}

/// A stored event as the API shows it.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    pub id: String,
    pub source: String,
    pub event_type: String,
    pub dedupe_key: String,
    pub body: String,
    pub created_at: Millis,
}

/// Filters and cursor for listing events, newest first.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    pub event_type: Option<String>,
    pub source: Option<String>,
    /// The pair the event is about (`data.pair`), as written in it: `BTC/USDT`.
    pub pair: Option<String>,
    /// The key the event was de-duplicated on.
    pub dedupe_key: Option<String>,
    pub since: Option<Millis>,
    pub until: Option<Millis>,
    /// Only ids strictly older than this one.
    pub before: Option<String>,
    pub limit: u32,
}
