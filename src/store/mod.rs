//! The store: the one place where events, deliveries, attempts and configuration are kept.
//!
//! [`Store`] is the interface every backend implements (SQLite now, PostgreSQL for several
//! nodes). Its shape follows from two rules of the product:
//!
//! * an event and all its deliveries are written in **one** transaction, and a reply is only
//!   sent once that transaction is on disk ([`Store::ingest`]);
//! * work is **claimed with a lease** ([`Store::claim_due`]): a delivery belongs to the node
//!   named in its lease until the lease runs out or the node records an attempt, so several
//!   nodes can share one database without sending the same delivery twice. On a shared
//!   database each node also sends heartbeats ([`Store::heartbeat`]); the work of a node that
//!   has gone silent is claimed at once, without waiting for its leases.
//!
//! Deliveries created by an ingest are leased to the ingesting node at once, because that node
//! hands them to its dispatcher in memory; everything else (retries, work of a dead node,
//! hand-overs that did not fit in memory) is found by `claim_due`.

mod dedupe;
pub mod pcache;
pub mod postgres;
pub mod sqlite;

pub use crate::domain::RateLimit;
use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::domain::{EventType, EventTypePattern, Millis, Signing};
use crate::model::source::SourceSpec;

/// Errors of the storage layer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(String),
    #[error("{0} already exists")]
    Conflict(String),
    #[error("the store is shutting down")]
    Closed,
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Where deliveries go: a URL plus what it subscribes to and how requests are signed.
#[derive(Debug, Clone, PartialEq)]
pub struct Endpoint {
    pub id: String,
    pub url: String,
    pub description: String,
    pub event_types: Vec<EventTypePattern>,
    pub headers: BTreeMap<String, String>,
    pub signing: Signing,
    pub secret: String,
    pub enabled: bool,
    pub disabled_reason: Option<String>,
    /// Delay before each retry, in milliseconds; its length is the number of retries.
    pub retry_schedule_ms: Vec<u64>,
    pub timeout_ms: u64,
    pub created_at: Millis,
    pub updated_at: Millis,
    /// How the request body is made from the event.
    pub render: crate::model::render::RenderSpec,
    pub policy: DeliveryPolicy,
    /// After a rotation: the previous secret, which still signs until the given time.
    pub previous_secret: Option<(String, Millis)>,
}

/// When and how an endpoint's deliveries may be made.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct DeliveryPolicy {
    /// A delivery not made within this long of its event is `expired` instead of sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age_ms: Option<u64>,
    /// Deliveries with the same key go out strictly in event order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ordering: Option<Ordering>,
    /// At most this many requests in this window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    /// At most this many requests at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrency: Option<u32>,
}

/// What ordered delivery keys on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Ordering {
    /// One sequence per pair: a follower never sees an exit before its entry.
    Pair,
    /// One sequence for the whole endpoint.
    Endpoint,
}

impl Endpoint {
    /// The rate limit in force: the endpoint's own, or else its preset's service limit.
    pub fn rate_limit(&self) -> Option<RateLimit> {
        self.policy
            .rate_limit
            .or_else(|| self.render.preset.and_then(|p| p.default_rate_limit()))
    }

    /// Whether this endpoint wants events of `event_type`.
    pub fn subscribes_to(&self, event_type: &EventType) -> bool {
        self.event_types.iter().any(|p| p.matches(event_type))
    }
}

/// Where events come from: a named inbound URL with its authentication and payload format.
#[derive(Debug, Clone, PartialEq)]
pub struct Source {
    pub id: String,
    pub name: String,
    pub spec: SourceSpec,
    pub secret: Option<String>,
    pub created_at: Millis,
    pub updated_at: Millis,
}

/// Scope of an API token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TokenScope {
    Admin,
    ReadOnly,
}

/// A stored API token (only its hash is kept).
#[derive(Debug, Clone)]
pub struct ApiToken {
    pub id: String,
    pub name: String,
    pub hash: String,
    pub scope: TokenScope,
    pub created_at: Millis,
}

/// Figures over a window, as [`Store::stats`] gathers them.
#[derive(Debug, Clone, Default)]
pub struct StoreStats {
    /// (source, events received)
    pub events_by_source: Vec<(String, u64)>,
    /// (endpoint, status, deliveries, attempts beyond each delivery's first)
    pub deliveries: Vec<(String, String, u64, u64)>,
    /// (endpoint, milliseconds from ingest to the successful attempt)
    pub latencies: Vec<(String, i64)>,
}

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

/// A delivery of one event to one endpoint, to be created with the event.
#[derive(Debug, Clone)]
pub struct NewDelivery {
    pub id: String,
    pub endpoint_id: String,
    /// Deliveries with the same key are made one after another, in id (event) order.
    pub order_key: Option<String>,
}

/// Who holds a piece of work, and until when.
#[derive(Debug, Clone)]
pub struct Lease {
    pub owner: Arc<str>,
    pub until: Millis,
}

/// What [`Store::ingest`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IngestOutcome {
    /// Stored, with this many deliveries.
    Stored,
    /// Already seen within the dedupe window: the id of the original event.
    Duplicate { original_id: String },
}

/// A delivery ready to be attempted: what the dispatcher holds in memory.
#[derive(Debug, Clone)]
pub struct DeliveryJob {
    pub delivery_id: String,
    pub event_id: String,
    pub endpoint_id: String,
    pub event_type: String,
    pub body: Arc<str>,
    /// Attempts made since the delivery was created or last retried by hand.
    pub tries: u32,
    pub event_created_at: Millis,
}

/// Delivery status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    Pending,
    Succeeded,
    Failed,
    Cancelled,
    /// Not made within the endpoint's `max_age` of its event, so not sent.
    Expired,
}

impl DeliveryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Succeeded => "succeeded",
            DeliveryStatus::Failed => "failed",
            DeliveryStatus::Cancelled => "cancelled",
            DeliveryStatus::Expired => "expired",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "pending" => Some(Self::Pending),
            "succeeded" => Some(Self::Succeeded),
            "failed" => Some(Self::Failed),
            "cancelled" => Some(Self::Cancelled),
            "expired" => Some(Self::Expired),
            _ => None,
        }
    }
}

/// One attempt to send a delivery.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Attempt {
    pub id: String,
    pub delivery_id: String,
    #[serde(skip)]
    pub attempted_at: Millis,
    pub status_code: Option<u16>,
    pub duration_ms: u64,
    pub error_kind: Option<String>,
    pub error: Option<String>,
    /// The first 4 KiB of the response body.
    pub response_body: String,
}

/// What becomes of a delivery after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NextStep {
    Done,
    RetryAt(Millis),
    Failed,
    /// Too old to be sent: the endpoint's `max_age` has passed.
    Expired,
}

/// The result of an attempt, to be recorded with the delivery's new state in one write.
#[derive(Debug, Clone)]
pub struct AttemptRecord {
    pub attempt: Attempt,
    pub next: NextStep,
    /// The endpoint answered 410 Gone: disable it with this reason.
    pub disable_endpoint: Option<String>,
    pub endpoint_id: String,
    /// What the attempt says of the endpoint's health.
    pub health: Health,
    /// Disable the endpoint after this many consecutive failures spanning at least this long.
    pub auto_disable: Option<(u32, Millis)>,
}

impl AttemptRecord {
    /// Whether this attempt disables its endpoint, given the endpoint's failure streak after
    /// it: a 410 Gone does at once, a failure does once the streak is long enough in count and
    /// in time.
    pub fn disables(&self, streak: u32, failing_since: Option<Millis>) -> Option<Disabled> {
        if let Some(reason) = &self.disable_endpoint {
            return Some(Disabled {
                reason: reason.clone(),
                failures: streak,
                failing_since,
            });
        }
        let (Some((failures, span)), Some(since)) = (self.auto_disable, failing_since) else {
            return None;
        };
        (self.health == Health::Failure
            && streak >= failures
            && self.attempt.attempted_at - since >= span)
            .then(|| Disabled {
                reason: format!(
                    "{streak} consecutive failed attempts since {}",
                    crate::domain::rfc3339(since)
                ),
                failures: streak,
                failing_since: Some(since),
            })
    }
}

/// What an attempt says of its endpoint: it works, it failed, or nothing (a 429, a template
/// that could not render, an expired delivery).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    Success,
    Failure,
    Neutral,
}

/// What recording an attempt did besides.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Recorded {
    /// The endpoint was disabled: why, after how many consecutive failures, failing since when.
    pub disabled: Option<Disabled>,
}

/// An endpoint the hub disabled.
#[derive(Debug, Clone, PartialEq)]
pub struct Disabled {
    pub reason: String,
    pub failures: u32,
    pub failing_since: Option<Millis>,
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

/// A delivery as the API shows it.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub id: String,
    pub event_id: String,
    pub endpoint_id: String,
    pub status: DeliveryStatus,
    pub attempts: u32,
    pub next_attempt_at: Option<Millis>,
    pub last_status_code: Option<u16>,
    pub last_error: Option<String>,
    pub created_at: Millis,
    pub updated_at: Millis,
}

/// Filters and cursor for listing events, newest first.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    pub event_type: Option<String>,
    pub source: Option<String>,
    pub since: Option<Millis>,
    pub until: Option<Millis>,
    /// Only ids strictly older than this one.
    pub before: Option<String>,
    pub limit: u32,
}

/// Filters and cursor for listing deliveries, newest first.
#[derive(Debug, Clone, Default)]
pub struct DeliveryFilter {
    pub endpoint_id: Option<String>,
    pub event_id: Option<String>,
    pub status: Option<DeliveryStatus>,
    pub before: Option<String>,
    pub limit: u32,
}

/// What a node sharing the database announces to the others.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Deliveries became due: new, given back, retried or re-queued.
    Work,
    /// Endpoints, sources or API tokens changed: reload them.
    Config,
    /// An endpoint asked to wait (429, or 503 with Retry-After): no node sends to it before
    /// `until`.
    Paused { endpoint_id: String, until: Millis },
}

/// The storage interface. Every method is one transaction.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    // --- API tokens -------------------------------------------------------------------------
    async fn insert_token(&self, token: ApiToken) -> Result<()>;
    async fn list_tokens(&self) -> Result<Vec<ApiToken>>;
    /// What happened since `since`: events per source, and per endpoint its deliveries by
    /// status, their retries, and the time from ingest to the successful attempt of up to
    /// `latency_sample` of the newest succeeded deliveries.
    async fn stats(&self, since: Millis, latency_sample: u32) -> Result<StoreStats>;

    /// Revokes a token; false when there is none with this id.
    async fn delete_token(&self, id: &str) -> Result<bool>;

    // --- configuration ----------------------------------------------------------------------
    async fn insert_endpoint(&self, endpoint: Endpoint) -> Result<()>;
    /// Replaces an endpoint's settings; `false` if it does not exist.
    async fn update_endpoint(&self, endpoint: Endpoint) -> Result<bool>;
    /// Deletes an endpoint and cancels its pending deliveries; `false` if it does not exist.
    async fn delete_endpoint(&self, id: &str, now: Millis) -> Result<bool>;
    async fn list_endpoints(&self) -> Result<Vec<Endpoint>>;

    async fn insert_source(&self, source: Source) -> Result<()>;
    async fn update_source(&self, source: Source) -> Result<bool>;
    async fn delete_source(&self, id: &str) -> Result<bool>;
    async fn list_sources(&self) -> Result<Vec<Source>>;

    // --- the pipeline -----------------------------------------------------------------------
    /// Stores an event with its deliveries (leased to `lease.owner`), unless an event with the
    /// same dedupe key and source was stored after `dedupe_since`.
    async fn ingest(
        &self,
        event: NewEvent,
        deliveries: Vec<NewDelivery>,
        lease: Lease,
        dedupe_since: Millis,
    ) -> Result<IngestOutcome>;

    /// Claims up to `limit` pending deliveries that are due at `now` and not leased by anyone,
    /// oldest first, skipping disabled endpoints.
    async fn claim_due(&self, now: Millis, limit: u32, lease: Lease) -> Result<Vec<DeliveryJob>>;

    /// Gives deliveries back without an attempt, so that any node may claim them again.
    async fn release(&self, delivery_ids: Vec<String>) -> Result<()>;
    /// Extends this node's leases on deliveries it still works on; a lease another node took
    /// over (this one's ran out) stays theirs.
    async fn renew(&self, owner: &str, delivery_ids: Vec<String>, until: Millis) -> Result<()>;

    /// Makes every retry of an endpoint that is waiting for a later time due at `now`: once an
    /// endpoint that was failing answers again, what queued up during the outage goes out at
    /// once instead of each delivery sitting out its own backoff. Returns how many.
    async fn release_retries(&self, endpoint_id: &str, now: Millis) -> Result<u64>;

    /// Makes an endpoint's failed and expired deliveries of events since `since` pending again,
    /// due now; returns how many.
    async fn requeue_failed(&self, endpoint_id: &str, since: Millis, now: Millis) -> Result<u64>;

    /// Events since `since` (after the id `after`, oldest first) that have no delivery to
    /// `endpoint_id`: what it missed while it was disabled.
    async fn events_missing_delivery(
        &self,
        endpoint_id: &str,
        since: Millis,
        after: Option<String>,
        limit: u32,
    ) -> Result<Vec<StoredEvent>>;

    /// Deletes up to `batch` events created before `before` whose deliveries are all finished
    /// (none pending), with their deliveries, attempts and dedupe entries; returns how many
    /// events went. Called in small batches so that ingest never waits long behind it.
    async fn prune(&self, before: Millis, batch: u32) -> Result<u64>;

    /// Gives deliveries back, not to be claimed before `until` (an endpoint is paused or
    /// over its rate limit): they wait in the store, not in memory.
    async fn defer(&self, delivery_ids: Vec<String>, until: Millis) -> Result<()>;

    /// Records an attempt and the delivery's next step, and frees its lease.
    async fn record_attempt(&self, record: AttemptRecord) -> Result<Recorded>;

    // --- the delivery log -------------------------------------------------------------------
    async fn list_events(&self, filter: EventFilter) -> Result<Vec<StoredEvent>>;
    async fn get_event(&self, id: &str) -> Result<Option<StoredEvent>>;
    async fn list_deliveries(&self, filter: DeliveryFilter) -> Result<Vec<Delivery>>;
    async fn get_delivery(&self, id: &str) -> Result<Option<Delivery>>;
    async fn list_attempts(&self, delivery_id: &str) -> Result<Vec<Attempt>>;

    /// Makes a finished delivery pending again, due now, with a fresh retry schedule.
    async fn retry_delivery(&self, id: &str, now: Millis) -> Result<Option<Delivery>>;

    /// Creates new deliveries of a stored event (a replay by hand), leased to `lease.owner`.
    async fn add_deliveries(
        &self,
        event_id: &str,
        deliveries: Vec<NewDelivery>,
        lease: Lease,
    ) -> Result<()>;

    /// Why the store's disk cannot take the writes ingest needs (it is full, or nearly), if
    /// that is so: a hub whose next commit would fail is not ready.
    fn disk_problem(&self) -> Option<String> {
        None
    }

    /// How often a node of a shared database must say it is alive; `None` for a store only
    /// this process uses.
    fn heartbeat_every(&self) -> Option<std::time::Duration> {
        None
    }

    /// Says that `node` is alive. Other nodes leave its leased deliveries alone while it is,
    /// and claim them at once when it has been silent for a few seconds (it died).
    async fn heartbeat(&self, _node: &str) -> Result<()> {
        Ok(())
    }

    /// `node` stops: whatever it still holds may be claimed at once.
    async fn leave(&self, _node: &str) -> Result<()> {
        Ok(())
    }

    /// Waits until every write handed to the store is on disk and stops the store.
    async fn close(&self);

    /// Changes made by other nodes sharing this database, as they happen; `None` for a store
    /// only this process uses.
    fn changes(&self) -> Option<tokio::sync::broadcast::Receiver<Change>> {
        None
    }

    /// Whether rate limits and pauses are kept in the store, shared by the nodes using it
    /// (otherwise the one node keeps them in memory).
    fn shares_limits(&self) -> bool {
        false
    }

    /// Takes one request from an endpoint's shared rate limit; `Err(ms)` says how long until
    /// there is one. Only called when [`Store::shares_limits`].
    async fn take_token(
        &self,
        _endpoint_id: &str,
        _limit: RateLimit,
        _now: Millis,
    ) -> Result<std::result::Result<(), u64>> {
        Ok(Ok(()))
    }

    /// Pauses an endpoint for every node until `until`. Only called when
    /// [`Store::shares_limits`].
    async fn pause(&self, _endpoint_id: &str, _until: Millis) -> Result<()> {
        Ok(())
    }
}
