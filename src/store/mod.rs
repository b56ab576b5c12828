//! The store: the one place where events, deliveries, attempts and configuration are kept.
//! The records themselves are plain data in [`crate::model`]; this module is how they are kept.
//!
//! [`Store`] is the interface every backend implements (SQLite for one node, PostgreSQL for
//! several), made of one interface per aggregate: [`TokenStore`], [`EndpointStore`],
//! [`SourceStore`], [`AccountStore`], [`OrderStore`], the [`EventLog`] and the [`DeliveryQueue`]. Calls on records name the
//! [`Scope`] they act in. Both backends build their list queries with one builder
//! ([`query`]). The interface's shape follows from two rules of the product:
//!
//! * an event and all its deliveries are written in **one** transaction, and a reply is only
//!   sent once that transaction is on disk ([`EventLog::ingest`]);
//! * work is **claimed with a lease** ([`DeliveryQueue::claim_due`]): a delivery belongs to
//!   the node named in its lease until the lease runs out or the node records an attempt, so
//!   several nodes can share one database without sending the same delivery twice. On a shared
//!   database each node also sends heartbeats ([`Store::heartbeat`]); the work of a node that
//!   has gone silent is claimed at once, without waiting for its leases.
//!
//! Deliveries created by an ingest are leased to the ingesting node at once, because that node
//! hands them to its dispatcher in memory; everything else (retries, work of a dead node,
//! hand-overs that did not fit in memory) is found by `claim_due`.

mod dedupe;
pub mod pcache;
pub mod postgres;
pub mod query;
pub mod rows;
pub mod sqlite;

pub use crate::domain::RateLimit;
pub use crate::model::{
    Account, ApiToken, Application, Attempt, AttemptRecord, Delivery, DeliveryFilter, DeliveryJob,
    DeliveryPolicy, DeliveryStatus, Disabled, Endpoint, EventFilter, Health, IngestOutcome, Lease,
    NewDelivery, NewEvent, NextStep, Order, Ordering, PortalLink, Recorded, Source, StoredEvent,
    TokenScope,
};

use async_trait::async_trait;

use crate::domain::Millis;
pub use crate::domain::Scope;
use crate::exchange::paper::PaperBook;

/// Errors of the storage layer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(String),
    #[error("{0} already exists")]
    Conflict(String),
    #[error("the store is shutting down")]
    Closed,
    /// Others kept changing what this write was computed from; trying again may succeed.
    #[error("{0}")]
    Busy(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Resolves once a write answered at its commit is on disk (see [`OrderStore::settle_in_turn`]).
pub type Flush = std::pin::Pin<Box<dyn std::future::Future<Output = Result<()>> + Send>>;

/// Figures over a window, as [`EventLog::stats`] gathers them.
#[derive(Debug, Clone, Default)]
pub struct StoreStats {
    /// (source, events received)
    pub events_by_source: Vec<(String, u64)>,
    /// (endpoint, status, deliveries, attempts beyond each delivery's first)
    pub deliveries: Vec<(String, String, u64, u64)>,
    /// (endpoint, milliseconds from ingest to the successful attempt)
    pub latencies: Vec<(String, i64)>,
}

/// Counts per minute, oldest first.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct MinuteCounts {
    pub events: Vec<u64>,
    pub succeeded: Vec<u64>,
    pub failed: Vec<u64>,
}

impl MinuteCounts {
    /// `minutes` minutes of nothing.
    pub fn empty(minutes: usize) -> Self {
        Self {
            events: vec![0; minutes],
            succeeded: vec![0; minutes],
            failed: vec![0; minutes],
        }
    }
}

/// The minute of `at` counted from `since`, if it is one of `minutes`. A time at or past
/// the end (a row written in the very millisecond the window was taken, or by a node whose
/// clock is a little ahead) counts in the last minute.
pub fn minute_of(at: Millis, since: Millis, minutes: usize) -> Option<usize> {
    let m = (at - since).div_euclid(60_000);
    (m >= 0 && minutes > 0).then(|| (m as usize).min(minutes - 1))
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

/// API tokens, kept as hashes.
#[async_trait]
pub trait TokenStore: Send + Sync {
    async fn insert_token(&self, scope: Scope, token: ApiToken) -> Result<()>;
    async fn list_tokens(&self, scope: Scope) -> Result<Vec<ApiToken>>;
    /// Revokes a token; false when there is none with this id.
    async fn delete_token(&self, scope: Scope, id: &str) -> Result<bool>;
}

/// Applications (provider mode): a provider's customers. What an application owns (endpoints,
/// API keys) names it; calls in its [`Scope`] see only that.
#[async_trait]
pub trait ApplicationStore: Send + Sync {
    /// [`StoreError::Conflict`] when its uid is taken.
    async fn insert_application(&self, scope: Scope, application: Application) -> Result<()>;
    /// Replaces an application's names and settings; `false` if it does not exist.
    async fn update_application(&self, scope: Scope, application: Application) -> Result<bool>;
    /// Deletes an application with everything it owns, in one transaction: its endpoints,
    /// their deliveries and attempts, its API keys, and the events delivered to it alone.
    /// `false` if it does not exist.
    async fn delete_application(&self, scope: Scope, id: &str) -> Result<bool>;
    /// The applications in `scope`, by id.
    async fn list_applications(&self, scope: Scope) -> Result<Vec<Application>>;
    async fn insert_portal_link(&self, scope: Scope, link: PortalLink) -> Result<()>;
    /// Uses up the link whose token has this hash, if it is unused and not expired at `now`,
    /// and answers it; `None` otherwise. Two redemptions at once: one gets it.
    async fn redeem_portal_link(&self, token_hash: &str, now: Millis)
    -> Result<Option<PortalLink>>;
    /// Deletes up to `batch` of an application's finished deliveries made before `before`,
    /// with their attempts, and the events they leave with no delivery; returns how many
    /// deliveries went.
    async fn prune_application(
        &self,
        application_id: &str,
        before: Millis,
        batch: u32,
    ) -> Result<u64>;
    /// Deletes what has stopped working by `now`: portal links past their expiry (used or
    /// not), portal sessions past theirs, and daily quota counts of days before yesterday.
    /// Returns how many rows went.
    async fn prune_expired(&self, now: Millis) -> Result<u64>;
    /// Deletes every portal link of an application and every session opened with one (its
    /// tokens that expire); returns how many links and sessions went.
    async fn expire_portal_access(&self, scope: Scope, application_id: &str) -> Result<u64>;
    /// How many events the application's endpoints were sent deliveries of since `since`
    /// (each event once, however many of its endpoints got it): where a hub on its own takes
    /// up a day's quota count again after a restart.
    async fn events_sent_since(&self, application_id: &str, since: Millis) -> Result<u64>;
}

/// Trading accounts: where orders go.
#[async_trait]
pub trait AccountStore: Send + Sync {
    async fn insert_account(&self, scope: Scope, account: Account) -> Result<()>;
    /// Replaces an account's settings; `false` if it does not exist.
    async fn update_account(&self, scope: Scope, account: Account) -> Result<bool>;
    async fn delete_account(&self, scope: Scope, id: &str) -> Result<bool>;
    /// Every account, by id.
    async fn list_accounts(&self, scope: Scope) -> Result<Vec<Account>>;
    /// One account by id.
    async fn account(&self, scope: Scope, id: &str) -> Result<Option<Account>>;
}

/// The order journal and the paper exchange's books.
#[async_trait]
pub trait OrderStore: Send + Sync {
    /// Writes `order` unless one with its client order id is stored, and answers the stored
    /// one: a retried delivery finds the order it decided on before, never a second one.
    async fn record_order(&self, order: Order) -> Result<Order>;
    /// The paper book of an account that has traded.
    async fn paper_book(&self, account_id: &str) -> Result<Option<PaperBook>>;
    /// Writes one change to an account's book and journal in one transaction, if its intent
    /// (when it has one) is still an intent and the stored book is the one the new one was
    /// made from (its revision is one less). `false`, with nothing written, when either is not
    /// so.
    async fn settle(&self, settlement: Settlement) -> Result<bool>;
    /// [`settle`](Self::settle), answered as soon as every later read and write sees it, with
    /// a [`Flush`] that resolves once it is on disk: the next change to the book can be
    /// decided while this one is flushed, and neither can reach the disk without the other
    /// (a crash loses both, or neither). Nothing outside the store may hear of it before its
    /// flush resolves. Where a commit is on disk when it returns, the same as `settle`.
    async fn settle_in_turn(&self, settlement: Settlement) -> Result<(bool, Flush)> {
        let written = self.settle(settlement).await?;
        Ok((written, Box::pin(std::future::ready(Ok(())))))
    }
    /// An account's orders, newest first.
    async fn list_orders(&self, scope: Scope, account_id: &str, limit: u32) -> Result<Vec<Order>>;
    /// An account's orders in `status`, oldest first: its resting limit and stop orders,
    /// or its intents whose outcome is not known yet.
    async fn orders_in(
        &self,
        account_id: &str,
        status: crate::model::OrderStatus,
    ) -> Result<Vec<Order>>;
    /// The order with this client order id.
    async fn order(&self, client_order_id: &str) -> Result<Option<Order>>;
}

/// One change to an account's book and order journal, written whole or not at all.
#[derive(Debug, Clone, Default)]
pub struct Settlement {
    pub account_id: String,
    /// The intent it settles, with its outcome.
    pub intent: Option<Order>,
    /// The intent is new: it is inserted with its outcome, unless an order with its client
    /// order id is stored already. Otherwise it must be stored, and still an intent.
    pub fresh: bool,
    /// The account's book after the change.
    pub book: Option<PaperBook>,
    /// Other orders the change placed (an entry's brackets) or moved on (resting orders that
    /// filled or were cancelled), written whole: inserted, or replacing the order with their
    /// client order id.
    pub others: Vec<Order>,
}

/// Endpoints: where deliveries go.
#[async_trait]
pub trait EndpointStore: Send + Sync {
    async fn insert_endpoint(&self, scope: Scope, endpoint: Endpoint) -> Result<()>;
    /// Replaces an endpoint's settings; `false` if it does not exist.
    async fn update_endpoint(&self, scope: Scope, endpoint: Endpoint) -> Result<bool>;
    /// Deletes an endpoint and cancels its pending deliveries; `false` if it does not exist.
    async fn delete_endpoint(&self, scope: Scope, id: &str, now: Millis) -> Result<bool>;
    async fn list_endpoints(&self, scope: Scope) -> Result<Vec<Endpoint>>;
    /// The endpoints whose latest attempts failed: how many in a row, and since when.
    async fn failing_endpoints(&self, scope: Scope) -> Result<Vec<FailureStreak>>;
}

/// An endpoint's failed attempts in a row, up to now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailureStreak {
    pub endpoint_id: String,
    pub failures: u32,
    pub since: Option<Millis>,
}

/// Sources: where events come from.
#[async_trait]
pub trait SourceStore: Send + Sync {
    async fn insert_source(&self, scope: Scope, source: Source) -> Result<()>;
    /// Replaces a source's settings; `false` if it does not exist.
    async fn update_source(&self, scope: Scope, source: Source) -> Result<bool>;
    async fn delete_source(&self, scope: Scope, id: &str) -> Result<bool>;
    async fn list_sources(&self, scope: Scope) -> Result<Vec<Source>>;
}

/// The event log: events are written with their deliveries, read back, and pruned.
#[async_trait]
pub trait EventLog: Send + Sync {
    /// Stores an event with its deliveries (leased to `lease.owner`), unless an event with the
    /// same dedupe key and source was stored after `dedupe_since`.
    async fn ingest(
        &self,
        event: NewEvent,
        deliveries: Vec<NewDelivery>,
        lease: Lease,
        dedupe_since: Millis,
    ) -> Result<IngestOutcome>;

    async fn list_events(&self, scope: Scope, filter: EventFilter) -> Result<Vec<StoredEvent>>;
    async fn get_event(&self, scope: Scope, id: &str) -> Result<Option<StoredEvent>>;
    /// The request body an event arrived with (its secrets removed); empty when the stored
    /// body is all there was (the publisher API).
    async fn event_raw(&self, scope: Scope, id: &str) -> Result<Option<bytes::Bytes>>;

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

    /// What happened since `since`: events per source, and per endpoint its deliveries by
    /// status, their retries, and the time from ingest to the successful attempt of up to
    /// `latency_sample` of the newest succeeded deliveries.
    async fn stats(&self, scope: Scope, since: Millis, latency_sample: u32) -> Result<StoreStats>;

    /// For each of the `minutes` minutes from `since`: the events received, and the
    /// deliveries that succeeded and that failed (by when they last changed).
    async fn minute_counts(
        &self,
        scope: Scope,
        since: Millis,
        minutes: usize,
    ) -> Result<MinuteCounts>;
}

/// The delivery queue: work claimed with a lease, attempts recorded, and the delivery log.
#[async_trait]
pub trait DeliveryQueue: Send + Sync {
    /// Claims up to `limit` pending deliveries that are due at `now` and not leased by anyone,
    /// oldest first, skipping disabled endpoints.
    async fn claim_due(&self, now: Millis, limit: u32, lease: Lease) -> Result<Vec<DeliveryJob>>;

    /// Gives deliveries `owner` holds back without an attempt, so that any node may claim them
    /// again. One that another node has claimed since (`owner`'s lease ran out) stays theirs:
    /// clearing their lease would let a third claim send it while they do.
    async fn release(&self, owner: &str, delivery_ids: Vec<String>) -> Result<()>;
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

    /// An endpoint's deliveries changed at or after `since`, counted by status: how a replay
    /// is getting on.
    async fn changed_since(&self, endpoint_id: &str, since: Millis) -> Result<Vec<(String, u64)>>;

    /// Gives deliveries back, not to be claimed before `until` (an endpoint is paused or
    /// over its rate limit): they wait in the store, not in memory. Like `release`, only what
    /// `owner` still holds.
    async fn defer(&self, owner: &str, delivery_ids: Vec<String>, until: Millis) -> Result<()>;

    /// Records an attempt and the delivery's next step, and frees its lease.
    async fn record_attempt(&self, record: AttemptRecord) -> Result<Recorded>;

    /// Creates new deliveries of a stored event (a replay by hand), leased to `lease.owner`.
    async fn add_deliveries(
        &self,
        event_id: &str,
        deliveries: Vec<NewDelivery>,
        lease: Lease,
    ) -> Result<()>;

    async fn list_deliveries(&self, scope: Scope, filter: DeliveryFilter) -> Result<Vec<Delivery>>;
    async fn get_delivery(&self, scope: Scope, id: &str) -> Result<Option<Delivery>>;
    async fn list_attempts(&self, scope: Scope, delivery_id: &str) -> Result<Vec<Attempt>>;

    /// Makes a finished delivery pending again, due now, with a fresh retry schedule.
    async fn retry_delivery(&self, scope: Scope, id: &str, now: Millis)
    -> Result<Option<Delivery>>;

    /// Whether rate limits and pauses are kept in the store, shared by the nodes using it
    /// (otherwise the one node keeps them in memory).
    fn shares_limits(&self) -> bool {
        false
    }

    /// Takes one request from an endpoint's shared rate limit; `Err(ms)` says how long until
    /// there is one. Only called when [`DeliveryQueue::shares_limits`].
    async fn take_token(
        &self,
        _endpoint_id: &str,
        _limit: RateLimit,
        _now: Millis,
    ) -> Result<std::result::Result<(), u64>> {
        Ok(Ok(()))
    }

    /// Counts one event against an application's `quota` for day `day` (days since the
    /// epoch, UTC), if it is not reached; `false`, counting nothing, when it is. Only called
    /// when [`DeliveryQueue::shares_limits`].
    async fn take_quota(&self, _application_id: &str, _day: i64, _quota: u64) -> Result<bool> {
        Ok(true)
    }

    /// Gives back one event counted by [`DeliveryQueue::take_quota`] (it was not stored).
    async fn return_quota(&self, _application_id: &str, _day: i64) -> Result<()> {
        Ok(())
    }

    /// Pauses an endpoint for every node until `until`. Only called when
    /// [`DeliveryQueue::shares_limits`].
    async fn pause(&self, _endpoint_id: &str, _until: Millis) -> Result<()> {
        Ok(())
    }
}

/// A whole store: every aggregate's interface, and the life of the store itself. Every
/// method is one transaction. Calls on records name their [`Scope`]; the pipeline's own calls
/// (ingest, claims, attempts) work across scopes, as the dispatcher serves them all.
#[async_trait]
pub trait Store:
    TokenStore
    + ApplicationStore
    + EndpointStore
    + SourceStore
    + AccountStore
    + OrderStore
    + EventLog
    + DeliveryQueue
    + 'static
{
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
}

#[cfg(test)]
mod minute_tests {
    use super::minute_of;

    #[test]
    fn a_time_past_the_windows_end_counts_in_its_last_minute() {
        let since = 1_000_000;
        assert_eq!(minute_of(since, since, 60), Some(0));
        assert_eq!(minute_of(since + 59_999, since, 60), Some(0));
        assert_eq!(minute_of(since + 60_000, since, 60), Some(1));
        assert_eq!(minute_of(since + 3_599_999, since, 60), Some(59));
        // Written in the millisecond the window was taken, or by a clock a little ahead.
        assert_eq!(minute_of(since + 3_600_000, since, 60), Some(59));
        assert_eq!(minute_of(since + 3_605_000, since, 60), Some(59));
        assert_eq!(minute_of(since - 1, since, 60), None);
        assert_eq!(minute_of(since, since, 0), None);
    }
}
