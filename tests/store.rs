//! One suite for the storage interface, run unchanged against both backends: an SQLite file
//! and a PostgreSQL database of its own (created on 127.0.0.1:5432 and dropped afterwards).
//!
//! Without a PostgreSQL server the PostgreSQL half reports that it was skipped; under
//! `CI=true` a missing server fails it.

use std::sync::Arc;

use tradehook::domain::{self, EventType, EventTypePattern, prefix};
use tradehook::security::crypto::Cipher;
use tradehook::service::endpoints::new_endpoint;
use tradehook::store::postgres::PgStore;
use tradehook::store::sqlite::SqliteStore;
use tradehook::store::*;

#[path = "support/postgres.rs"]
mod postgres;
use postgres::TestDatabase;

const KEY: [u8; 32] = [7; 32];

/// A store to test, and what to clean up after it.
struct Backend {
    store: Arc<dyn Store>,
    /// Another store on the same database, as a second node would have (PostgreSQL only).
    second: Option<Arc<dyn Store>>,
    _dir: Option<tempfile::TempDir>,
    _database: Option<TestDatabase>,
}

impl Backend {
    async fn sqlite() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("hub.db"), Cipher::new(KEY)).unwrap();
        Self {
            store: Arc::new(store),
            second: None,
            _dir: Some(dir),
            _database: None,
        }
    }

    /// None when there is no server and this is not CI.
    async fn postgres() -> Option<Self> {
        let database = TestDatabase::create().await?;
        let store = PgStore::open(&database.url, Cipher::new(KEY))
            .await
            .unwrap();
        let second = PgStore::open(&database.url, Cipher::new(KEY))
            .await
            .unwrap();
        // The nodes the scenarios lease work to are alive (see the heartbeat scenario).
        for node in ["n", "node-1", "node-2"] {
            store.heartbeat(node).await.unwrap();
        }
        Some(Self {
            store: Arc::new(store),
            second: Some(Arc::new(second)),
            _dir: None,
            _database: Some(database),
        })
    }

    async fn finish(self) {
        self.store.close().await;
        if let Some(second) = &self.second {
            second.close().await;
        }
        // The database is dropped with `database`, after the stores.
    }
}

/// Runs a scenario against SQLite and against PostgreSQL, as two tests.
macro_rules! on_both {
    ($name:ident) => {
        mod $name {
            #[tokio::test]
            async fn sqlite() {
                let backend = super::Backend::sqlite().await;
                super::$name(&backend).await;
                backend.finish().await;
            }

            #[tokio::test]
            async fn postgres() {
                let Some(backend) = super::Backend::postgres().await else {
                    return;
                };
                super::$name(&backend).await;
                backend.finish().await;
            }
        }
    };
}

fn lease(owner: &str, until: i64) -> Lease {
    Lease {
        owner: Arc::from(owner),
        until,
    }
}

async fn endpoint(store: &dyn Store, name: &str) -> Endpoint {
    let mut e = new_endpoint(format!("ep_{name}"), domain::now_ms());
    e.url = format!("https://example.test/{name}");
    e.event_types = vec![EventTypePattern::parse("*").unwrap()];
    e.secret = format!("whsec_secret_of_{name}");
    store.insert_endpoint(Scope::Hub, e.clone()).await.unwrap();
    e
}

fn event(key: &str) -> NewEvent {
    let id = domain::new_id(prefix::EVENT);
    NewEvent {
        body: Arc::from(format!(r#"{{"id":"{id}","type":"entry"}}"#)),
        id,
        source: "api".into(),
        event_type: EventType::parse("entry").unwrap(),
        dedupe_key: key.into(),
        raw: bytes::Bytes::new(),
        created_at: domain::now_ms(),
    }
}

/// Stores an event with one delivery per endpoint, not handed over (no lease).
async fn ingest(
    store: &dyn Store,
    key: &str,
    endpoints: &[&str],
    order_key: Option<&str>,
) -> Vec<String> {
    let deliveries: Vec<NewDelivery> = endpoints
        .iter()
        .map(|ep| NewDelivery {
            id: domain::new_id(prefix::DELIVERY),
            endpoint_id: ep.to_string(),
            order_key: order_key.map(str::to_owned),
        })
        .collect();
    let ids = deliveries.iter().map(|d| d.id.clone()).collect();
    let outcome = store
        .ingest(event(key), deliveries, lease("nobody", 0), 0)
        .await
        .unwrap();
    assert_eq!(outcome, IngestOutcome::Stored);
    ids
}

/// Claims what is due at `now` (leased to `until`) and gives the delivery ids, sorted.
async fn claimed(store: &dyn Store, now: i64, until: i64) -> Vec<String> {
    claimed_by(store, "n", 10, now, until).await
}

/// As [`claimed`], for node `owner` and at most `limit` deliveries.
async fn claimed_by(
    store: &dyn Store,
    owner: &str,
    limit: u32,
    now: i64,
    until: i64,
) -> Vec<String> {
    let mut ids: Vec<String> = store
        .claim_due(now, limit, lease(owner, until))
        .await
        .unwrap()
        .into_iter()
        .map(|j| j.delivery_id)
        .collect();
    ids.sort();
    ids
}

/// Records a successful attempt of a delivery to `ep_a` at `at`: it is finished.
async fn succeeded(store: &dyn Store, delivery_id: &str, at: i64) {
    store
        .record_attempt(record(
            delivery_id,
            "ep_a",
            at,
            NextStep::Done,
            Health::Success,
        ))
        .await
        .unwrap();
}

fn attempt(delivery_id: &str, at: i64, status: Option<u16>) -> Attempt {
    Attempt {
        id: domain::new_id("att"),
        delivery_id: delivery_id.into(),
        attempted_at: at,
        status_code: status,
        duration_ms: 3,
        error_kind: None,
        error: None,
        response_body: "ok".into(),
    }
}

fn record(
    delivery_id: &str,
    endpoint_id: &str,
    at: i64,
    next: NextStep,
    health: Health,
) -> AttemptRecord {
    AttemptRecord {
        attempt: attempt(
            delivery_id,
            at,
            Some(if health == Health::Success { 200 } else { 500 }),
        ),
        next,
        disable_endpoint: None,
        endpoint_id: endpoint_id.into(),
        health,
        auto_disable: Some((3, 0)),
    }
}

// --- scenarios ---------------------------------------------------------------------------------

async fn endpoints_and_sources_round_trip(b: &Backend) {
    let s = &*b.store;
    let mut e = endpoint(s, "a").await;
    let listed = s.list_endpoints(Scope::Hub).await.unwrap();
    assert_eq!(
        listed,
        vec![e.clone()],
        "read back as written, secrets opened"
    );
    e.url = "https://example.test/changed".into();
    e.previous_secret = Some(("whsec_old".into(), 42));
    assert!(s.update_endpoint(Scope::Hub, e.clone()).await.unwrap());
    assert_eq!(s.list_endpoints(Scope::Hub).await.unwrap(), vec![e.clone()]);
    assert!(
        s.delete_endpoint(Scope::Hub, &e.id, domain::now_ms())
            .await
            .unwrap()
    );
    assert!(s.list_endpoints(Scope::Hub).await.unwrap().is_empty());
    assert!(
        !s.update_endpoint(Scope::Hub, e).await.unwrap(),
        "a deleted endpoint stays deleted"
    );

    let source = Source {
        id: "src_1".into(),
        name: "tv".into(),
        spec: serde_json::from_value(
            serde_json::json!({"format": "tradingview", "auth": {"type": "token"}}),
        )
        .unwrap(),
        secret: Some("passphrase".into()),
        created_at: 1,
        updated_at: 1,
    };
    s.insert_source(Scope::Hub, source.clone()).await.unwrap();
    let twin = Source {
        id: "src_2".into(),
        ..source.clone()
    };
    assert!(
        matches!(
            s.insert_source(Scope::Hub, twin).await,
            Err(StoreError::Conflict(_))
        ),
        "names are unique"
    );
    let listed = s.list_sources(Scope::Hub).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].secret.as_deref(), Some("passphrase"));
    assert!(s.delete_source(Scope::Hub, "src_1").await.unwrap());
    assert!(!s.delete_source(Scope::Hub, "src_1").await.unwrap());
}
on_both!(endpoints_and_sources_round_trip);

async fn a_duplicate_within_the_window_stores_nothing(b: &Backend) {
    let s = &*b.store;
    endpoint(s, "a").await;
    let first = event("k1");
    let first_id = first.id.clone();
    s.ingest(first, vec![], lease("n", 0), 0).await.unwrap();
    let again = s
        .ingest(event("k1"), vec![], lease("n", 0), 0)
        .await
        .unwrap();
    assert_eq!(
        again,
        IngestOutcome::Duplicate {
            original_id: first_id
        }
    );
    // Past the window the key is free again.
    let later = s
        .ingest(event("k1"), vec![], lease("n", 0), domain::now_ms() + 1)
        .await
        .unwrap();
    assert_eq!(later, IngestOutcome::Stored);
    let events = s
        .list_events(
            Scope::Hub,
            EventFilter {
                limit: 10,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(events.len(), 2);
}
on_both!(a_duplicate_within_the_window_stores_nothing);

async fn concurrent_duplicates_store_one_event(b: &Backend) {
    let stores: Vec<Arc<dyn Store>> = [Some(b.store.clone()), b.second.clone()]
        .into_iter()
        .flatten()
        .collect();
    let mut tasks = Vec::new();
    for i in 0..20 {
        let store = stores[i % stores.len()].clone();
        tasks.push(tokio::spawn(async move {
            store
                .ingest(event("same"), vec![], lease("n", 0), 0)
                .await
                .unwrap()
        }));
    }
    let mut stored = 0;
    for t in tasks {
        if t.await.unwrap() == IngestOutcome::Stored {
            stored += 1;
        }
    }
    assert_eq!(stored, 1, "one of twenty concurrent sends is stored");
}
on_both!(concurrent_duplicates_store_one_event);

async fn a_claim_leases_work_until_it_expires(b: &Backend) {
    let s = &*b.store;
    endpoint(s, "a").await;
    let ids = ingest(s, "k", &["ep_a"], None).await;
    let now = domain::now_ms();
    let jobs = s
        .claim_due(now, 10, lease("node-1", now + 1_000))
        .await
        .unwrap();
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].delivery_id, ids[0]);
    assert!(jobs[0].body.contains("\"type\":\"entry\""));
    let other = b.second.as_deref().unwrap_or(s);
    assert!(
        other
            .claim_due(now + 500, 10, lease("node-2", now + 5_000))
            .await
            .unwrap()
            .is_empty(),
        "leased to node-1"
    );
    let reclaimed = other
        .claim_due(now + 1_500, 10, lease("node-2", now + 5_000))
        .await
        .unwrap();
    assert_eq!(
        reclaimed.len(),
        1,
        "node-1's lease ran out: its work is claimed again"
    );
    // A lease renewed by its owner holds; a renewal by another node changes nothing.
    let now = now + 6_000;
    let taken = other
        .claim_due(now, 10, lease("node-2", now + 1_000))
        .await
        .unwrap();
    assert_eq!(taken.len(), 1, "node-2's lease from before ran out too");
    other
        .renew("node-2", ids.clone(), now + 5_000)
        .await
        .unwrap();
    s.renew("node-1", ids.clone(), now + 60_000).await.unwrap();
    assert!(
        s.claim_due(now + 1_500, 10, lease("node-1", now + 9_000))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        s.claim_due(now + 5_000, 10, lease("node-1", now + 9_000))
            .await
            .unwrap()
            .len(),
        1
    );
    let now = now + 10_000;
    s.release("node-1", ids.clone()).await.unwrap();
    assert_eq!(
        s.claim_due(now + 1_600, 10, lease("n", now + 9_000))
            .await
            .unwrap()
            .len(),
        1
    );
}
on_both!(a_claim_leases_work_until_it_expires);

/// A node gives back only what it still holds: once its lease ran out and another node claimed
/// the work, its late release (or deferral) must not free the other's lease, or a third claim
/// would send the delivery while the second node does.
async fn a_node_gives_back_only_what_it_holds(b: &Backend) {
    let s = &*b.store;
    let other = b.second.as_deref().unwrap_or(s);
    endpoint(s, "a").await;
    let ids = ingest(s, "k", &["ep_a"], None).await;
    let now = domain::now_ms();
    let hour = now + 3_600_000;
    assert_eq!(claimed_by(s, "node-1", 10, now, hour).await, ids);

    other.release("node-2", ids.clone()).await.unwrap();
    other.defer("node-2", ids.clone(), now).await.unwrap();
    assert!(
        claimed_by(other, "node-2", 10, now, hour).await.is_empty(),
        "node-1's lease holds whatever node-2 gives back"
    );

    s.release("node-1", ids.clone()).await.unwrap();
    assert_eq!(claimed_by(other, "node-2", 10, now, hour).await, ids);
}
on_both!(a_node_gives_back_only_what_it_holds);

#[tokio::test]
async fn work_held_by_a_node_that_stopped_or_was_never_heard_of_is_claimed_at_once() {
    let Some(b) = Backend::postgres().await else {
        return;
    };
    let s = &*b.store;
    let other = b.second.as_deref().unwrap();
    endpoint(s, "a").await;
    let ids = ingest(s, "k1", &["ep_a"], None).await;
    ingest(s, "k2", &["ep_a"], None).await;
    let now = domain::now_ms();
    let until = now + 3_600_000;
    // node-1 is alive: its hour-long lease holds.
    assert_eq!(
        claimed_by(s, "node-1", 1, now, until).await,
        [ids[0].clone()]
    );
    assert_eq!(claimed_by(other, "node-2", 10, now, until).await.len(), 1);
    assert!(claimed_by(other, "node-2", 10, now, until).await.is_empty());
    // node-1 stops: what it held is claimed at once, lease or not.
    s.leave("node-1").await.unwrap();
    assert_eq!(
        claimed_by(other, "node-2", 10, now, until).await,
        [ids[0].clone()]
    );
    // A node never heard of holds nothing either.
    other.release("node-2", vec![ids[0].clone()]).await.unwrap();
    assert_eq!(
        claimed_by(s, "node-x", 10, now, until).await,
        [ids[0].clone()]
    );
    assert_eq!(
        claimed_by(other, "node-2", 10, now, until).await,
        [ids[0].clone()]
    );
    b.finish().await;
}

async fn concurrent_claims_never_share_a_delivery(b: &Backend) {
    let s = &*b.store;
    endpoint(s, "a").await;
    let mut all = Vec::new();
    for i in 0..200 {
        all.extend(ingest(s, &format!("k{i}"), &["ep_a"], None).await);
    }
    let stores: Vec<Arc<dyn Store>> = [Some(b.store.clone()), b.second.clone()]
        .into_iter()
        .flatten()
        .collect();
    let now = domain::now_ms();
    let mut tasks = Vec::new();
    for i in 0..8 {
        let store = stores[i % stores.len()].clone();
        store.heartbeat(&format!("node-{i}")).await.unwrap();
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            for _ in 0..100 {
                let jobs = store
                    .claim_due(now, 7, lease(&format!("node-{i}"), now + 60_000))
                    .await
                    .unwrap();
                if jobs.is_empty() {
                    return mine;
                }
                mine.extend(jobs.into_iter().map(|j| j.delivery_id));
            }
            panic!("claims never ran dry: leased work was claimed again");
        }));
    }
    let mut claimed = Vec::new();
    for t in tasks {
        claimed.extend(t.await.unwrap());
    }
    claimed.sort();
    all.sort();
    assert_eq!(claimed, all, "each delivery claimed exactly once");
}
on_both!(concurrent_claims_never_share_a_delivery);

async fn ordered_deliveries_wait_for_their_predecessor(b: &Backend) {
    let s = &*b.store;
    endpoint(s, "a").await;
    let first = ingest(s, "k1", &["ep_a"], Some("ep_a|BTC/USDT")).await;
    let second = ingest(s, "k2", &["ep_a"], Some("ep_a|BTC/USDT")).await;
    let other = ingest(s, "k3", &["ep_a"], Some("ep_a|ETH/USDT")).await;
    let now = domain::now_ms();
    let jobs = claimed(s, now, now + 1_000).await;
    assert_eq!(jobs, vec![first[0].clone(), other[0].clone()]);
    // The first one fails and is due again later: the second still waits behind it.
    s.record_attempt(record(
        &first[0],
        "ep_a",
        now + 2,
        NextStep::RetryAt(now + 10),
        Health::Failure,
    ))
    .await
    .unwrap();
    assert!(
        s.claim_due(now + 5, 10, lease("n", now + 6))
            .await
            .unwrap()
            .is_empty()
    );
    let due = claimed(s, now + 10, now + 11).await;
    assert_eq!(due, first);
    succeeded(s, &first[0], now + 12).await;
    let due = claimed(s, now + 13, now + 14).await;
    assert_eq!(due, second);
}
on_both!(ordered_deliveries_wait_for_their_predecessor);

/// Among many ordering keys, the first delivery of each is claimed only where its endpoint is
/// enabled: a disabled endpoint's keys are passed over, whatever the other keys' number.
async fn the_keys_of_a_disabled_endpoint_are_passed_over(b: &Backend) {
    let s = &*b.store;
    endpoint(s, "open").await;
    let mut off = endpoint(s, "off").await;
    off.enabled = false;
    assert!(s.update_endpoint(Scope::Hub, off).await.unwrap());
    let mut expected = Vec::new();
    for i in 0..40 {
        let open_key = format!("ep_open|P{i}/USDT");
        let off_key = format!("ep_off|P{i}/USDT");
        expected.extend(ingest(s, &format!("o{i}"), &["ep_open"], Some(&open_key)).await);
        ingest(s, &format!("f{i}"), &["ep_off"], Some(&off_key)).await;
    }
    let now = domain::now_ms();
    let mut jobs = claimed_by(s, "n", 100, now, now + 1_000).await;
    jobs.sort();
    expected.sort();
    assert_eq!(jobs, expected);
}
on_both!(the_keys_of_a_disabled_endpoint_are_passed_over);

async fn a_key_never_has_two_deliveries_in_flight(b: &Backend) {
    let s = &*b.store;
    endpoint(s, "a").await;
    let key = "ep_a|BTC/USDT";
    // The earlier signal's id is made first, but its request is slower: the later one is
    // stored first, and claimed.
    let early = domain::new_id(prefix::DELIVERY);
    let late = ingest(s, "late", &["ep_a"], Some(key)).await;
    let now = domain::now_ms();
    assert_eq!(claimed(s, now, now + 60_000).await, late);
    // Stored while the later one is being sent, the earlier one waits for it.
    let delivery = NewDelivery {
        id: early.clone(),
        endpoint_id: "ep_a".into(),
        order_key: Some(key.into()),
    };
    s.ingest(event("early"), vec![delivery], lease("nobody", 0), 0)
        .await
        .unwrap();
    let now = domain::now_ms();
    assert!(
        claimed(s, now, now + 60_000).await.is_empty(),
        "two deliveries of one key in flight"
    );
    succeeded(s, &late[0], now).await;
    assert_eq!(claimed(s, now + 1, now + 60_000).await, vec![early]);
}
on_both!(a_key_never_has_two_deliveries_in_flight);

async fn failures_in_a_row_disable_an_endpoint_once(b: &Backend) {
    let s = &*b.store;
    endpoint(s, "a").await;
    let ids = ingest(s, "k", &["ep_a"], None).await;
    let now = domain::now_ms();
    let fail = |at| {
        record(
            &ids[0],
            "ep_a",
            at,
            NextStep::RetryAt(at + 1),
            Health::Failure,
        )
    };
    assert_eq!(s.record_attempt(fail(now)).await.unwrap().disabled, None);
    // A success ends the streak.
    s.record_attempt(record(
        &ids[0],
        "ep_a",
        now + 1,
        NextStep::RetryAt(now + 2),
        Health::Success,
    ))
    .await
    .unwrap();
    for i in 0..2 {
        assert_eq!(
            s.record_attempt(fail(now + 10 + i)).await.unwrap().disabled,
            None
        );
    }
    let third = s.record_attempt(fail(now + 20)).await.unwrap();
    let disabled = third.disabled.expect("the third failure in a row disables");
    assert_eq!(disabled.failures, 3);
    assert_eq!(disabled.failing_since, Some(now + 10));
    assert!(
        s.record_attempt(fail(now + 21))
            .await
            .unwrap()
            .disabled
            .is_none(),
        "only once"
    );
    let e = &s.list_endpoints(Scope::Hub).await.unwrap()[0];
    assert!(!e.enabled);
    assert!(
        e.disabled_reason
            .as_deref()
            .unwrap()
            .starts_with("3 consecutive failed attempts")
    );
    let delivery = s.get_delivery(Scope::Hub, &ids[0]).await.unwrap().unwrap();
    assert_eq!(delivery.attempts, 6);
    assert_eq!(s.list_attempts(Scope::Hub, &ids[0]).await.unwrap().len(), 6);
    // A disabled endpoint's work is not claimed.
    assert!(
        s.claim_due(now + 100, 10, lease("n", now + 200))
            .await
            .unwrap()
            .is_empty()
    );
}
on_both!(failures_in_a_row_disable_an_endpoint_once);

async fn attempts_recorded_at_once_all_land_and_a_bad_one_fails_alone(b: &Backend) {
    let s = &*b.store;
    endpoint(s, "a").await;
    let mut deliveries = Vec::new();
    for i in 0..40 {
        deliveries.extend(ingest(s, &format!("k{i}"), &["ep_a"], None).await);
    }
    let now = domain::now_ms();
    let first = record(&deliveries[0], "ep_a", now, NextStep::Done, Health::Success);
    s.record_attempt(first.clone()).await.unwrap();
    // Forty records at once (one group on a store that groups them), one of them a second
    // write of an attempt already recorded.
    let mut records: Vec<AttemptRecord> = deliveries[1..]
        .iter()
        .map(|d| record(d, "ep_a", now + 1, NextStep::Done, Health::Success))
        .collect();
    records.insert(20, first);
    let results =
        futures_util::future::join_all(records.into_iter().map(|r| s.record_attempt(r))).await;
    assert!(results[20].is_err(), "the same attempt twice");
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 39);
    for d in &deliveries {
        let delivery = s.get_delivery(Scope::Hub, d).await.unwrap().unwrap();
        assert_eq!(delivery.status, DeliveryStatus::Succeeded, "{d}");
        assert_eq!(
            s.list_attempts(Scope::Hub, d).await.unwrap().len(),
            1,
            "{d}"
        );
    }
}
on_both!(attempts_recorded_at_once_all_land_and_a_bad_one_fails_alone);

#[tokio::test]
async fn a_postgres_store_writes_again_after_the_server_drops_its_connections() {
    let Some(database) = TestDatabase::create().await else {
        return;
    };
    let store = PgStore::open(&database.url, Cipher::new(KEY))
        .await
        .unwrap();
    endpoint(&store, "a").await;
    let before = ingest(&store, "k0", &["ep_a"], None).await;
    // The server ends every connection of the store: a restart, a failover.
    let (admin, connection) = tokio_postgres::connect(&database.url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let ended = admin
        .execute(
            "select pg_terminate_backend(pid) from pg_stat_activity
             where datname = current_database() and pid <> pg_backend_pid()",
            &[],
        )
        .await
        .unwrap();
    assert!(ended >= 2, "the store's connections: {ended}");
    // The batches after it are written on new connections (the first may still find its
    // connection closing, and fail: the sender is told and sends again).
    let mut stored = None;
    for i in 1..=20 {
        let deliveries = vec![NewDelivery {
            id: domain::new_id(prefix::DELIVERY),
            endpoint_id: "ep_a".into(),
            order_key: None,
        }];
        let id = deliveries[0].id.clone();
        if let Ok(IngestOutcome::Stored) = store
            .ingest(event(&format!("k{i}")), deliveries, lease("nobody", 0), 0)
            .await
        {
            stored = Some(id);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let stored = stored.expect("ingest works again");
    let now = domain::now_ms();
    let mut recorded = false;
    for _ in 0..20 {
        let r = record(&stored, "ep_a", now, NextStep::Done, Health::Success);
        if store.record_attempt(r).await.is_ok() {
            recorded = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(recorded, "recording attempts works again");
    let delivery = store
        .get_delivery(Scope::Hub, &stored)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(delivery.status, DeliveryStatus::Succeeded);
    assert!(
        store
            .get_delivery(Scope::Hub, &before[0])
            .await
            .unwrap()
            .is_some()
    );
    store.close().await;
}

/// Renewing leases never waits for a delivery another transaction has locked (the attempt
/// recorder's group, which locks in its own order): waiting deadlocked with it, and every
/// delivery stalled for the server's deadlock timeout.
#[tokio::test]
async fn renewing_leases_skips_a_delivery_being_recorded() {
    let Some(b) = Backend::postgres().await else {
        return;
    };
    let s = &*b.store;
    endpoint(s, "a").await;
    ingest(s, "k1", &["ep_a"], None).await;
    ingest(s, "k2", &["ep_a"], None).await;
    let now = domain::now_ms();
    let held = claimed(s, now, now + 60_000).await;
    assert_eq!(held.len(), 2);
    let url = &b._database.as_ref().unwrap().url;
    let (recorder, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    recorder.batch_execute("begin").await.unwrap();
    recorder
        .execute(
            "select 1 from deliveries where id = $1 for update",
            &[&held[0]],
        )
        .await
        .unwrap();

    let renewed = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        s.renew("n", held.clone(), now + 120_000),
    )
    .await
    .expect("a renewal does not wait for a locked delivery");
    renewed.unwrap();
    recorder.batch_execute("commit").await.unwrap();
    let until = async |id: &String| -> i64 {
        recorder
            .query_one("select lease_until from deliveries where id = $1", &[id])
            .await
            .unwrap()
            .get(0)
    };
    assert_eq!(
        until(&held[0]).await,
        now + 60_000,
        "the locked one is skipped"
    );
    assert_eq!(until(&held[1]).await, now + 120_000);
    b.finish().await;
}

async fn failed_work_is_requeued_released_and_deferred(b: &Backend) {
    let s = &*b.store;
    endpoint(s, "a").await;
    let ids = ingest(s, "k1", &["ep_a"], None).await;
    let waiting = ingest(s, "k2", &["ep_a"], None).await;
    let now = domain::now_ms();
    s.record_attempt(record(
        &ids[0],
        "ep_a",
        now,
        NextStep::Failed,
        Health::Neutral,
    ))
    .await
    .unwrap();
    assert_eq!(
        s.get_delivery(Scope::Hub, &ids[0])
            .await
            .unwrap()
            .unwrap()
            .status,
        DeliveryStatus::Failed
    );
    assert_eq!(s.requeue_failed("ep_a", 0, now + 1).await.unwrap(), 1);
    assert_eq!(
        s.get_delivery(Scope::Hub, &ids[0])
            .await
            .unwrap()
            .unwrap()
            .status,
        DeliveryStatus::Pending
    );

    assert_eq!(
        claimed_by(s, "node-1", 10, now, now + 60_000).await,
        waiting
    );
    s.defer("node-1", waiting.clone(), now + 60_000)
        .await
        .unwrap();
    assert_eq!(
        s.get_delivery(Scope::Hub, &waiting[0])
            .await
            .unwrap()
            .unwrap()
            .next_attempt_at,
        Some(now + 60_000)
    );
    assert_eq!(s.release_retries("ep_a", now + 2).await.unwrap(), 1);
    assert_eq!(
        s.get_delivery(Scope::Hub, &waiting[0])
            .await
            .unwrap()
            .unwrap()
            .next_attempt_at,
        Some(now + 2)
    );
    let retried = s
        .retry_delivery(Scope::Hub, &ids[0], now + 3)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(retried.next_attempt_at, Some(now + 3));
}
on_both!(failed_work_is_requeued_released_and_deferred);

async fn lists_page_newest_first_and_prune_keeps_pending_work(b: &Backend) {
    let s = &*b.store;
    endpoint(s, "a").await;
    for i in 0..5 {
        ingest(s, &format!("k{i}"), &["ep_a"], None).await;
    }
    let page = s
        .list_events(
            Scope::Hub,
            EventFilter {
                limit: 2,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(page.len(), 2);
    assert!(page[0].id > page[1].id);
    let next = s
        .list_events(
            Scope::Hub,
            EventFilter {
                limit: 10,
                before: Some(page[1].id.clone()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(next.len(), 3);
    assert!(next.iter().all(|e| e.id < page[1].id));

    // Finish all but one; pruning everything older than now keeps only the pending one.
    let now = domain::now_ms();
    let jobs = s.claim_due(now, 10, lease("n", now + 1_000)).await.unwrap();
    for job in &jobs[1..] {
        succeeded(s, &job.delivery_id, now).await;
    }
    let pruned = s.prune(now + 1, 500).await.unwrap();
    assert_eq!(pruned, 4);
    let left = s
        .list_events(
            Scope::Hub,
            EventFilter {
                limit: 10,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].id, jobs[0].event_id);
    let stats = s.stats(Scope::Hub, 0, 100).await.unwrap();
    assert_eq!(stats.events_by_source, vec![("api".to_owned(), 1)]);
}
on_both!(lists_page_newest_first_and_prune_keeps_pending_work);

async fn events_are_found_by_pair_and_dedupe_key(b: &Backend) {
    let s = &*b.store;
    for (key, pair) in [("k-btc", "BTC/USDT"), ("k-eth", "ETH/USDT")] {
        let mut e = event(key);
        e.body = Arc::from(format!(
            r#"{{"id":"{}","type":"entry","data":{{"pair":"{pair}"}}}}"#,
            e.id
        ));
        e.raw = bytes::Bytes::from(format!("buy {pair}"));
        let id = e.id.clone();
        let stored = s.ingest(e, Vec::new(), lease("n", 0), 0).await.unwrap();
        assert_eq!(stored, IngestOutcome::Stored);
        // The request body is kept as it arrived, and read on its own.
        let raw = s.event_raw(Scope::Hub, &id).await.unwrap();
        assert_eq!(raw.as_deref(), Some(format!("buy {pair}").as_bytes()));
    }
    assert_eq!(s.event_raw(Scope::Hub, "evt_none").await.unwrap(), None);
    let keys = |filter: EventFilter| async move {
        s.list_events(
            Scope::Hub,
            EventFilter {
                limit: 10,
                ..filter
            },
        )
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.dedupe_key)
        .collect::<Vec<_>>()
    };
    let by_pair = EventFilter {
        pair: Some("ETH/USDT".into()),
        ..Default::default()
    };
    assert_eq!(keys(by_pair).await, ["k-eth"]);
    let by_key = EventFilter {
        dedupe_key: Some("k-btc".into()),
        ..Default::default()
    };
    assert_eq!(keys(by_key).await, ["k-btc"]);
    let neither = EventFilter {
        pair: Some("ETH/USDT".into()),
        dedupe_key: Some("k-btc".into()),
        ..Default::default()
    };
    assert!(keys(neither).await.is_empty());
}
on_both!(events_are_found_by_pair_and_dedupe_key);

async fn an_endpoints_failures_in_a_row_are_counted_until_a_success(b: &Backend) {
    let s = &*b.store;
    endpoint(s, "a").await;
    endpoint(s, "b").await;
    for i in 0..3 {
        ingest(s, &format!("k{i}"), &["ep_a"], None).await;
    }
    let now = domain::now_ms();
    let jobs = s.claim_due(now, 10, lease("n", now + 1_000)).await.unwrap();
    assert_eq!(jobs.len(), 3);
    let retry = NextStep::RetryAt(now + 60_000);
    for (job, at) in jobs[..2].iter().zip([now, now + 5]) {
        s.record_attempt(record(&job.delivery_id, "ep_a", at, retry, Health::Failure))
            .await
            .unwrap();
    }
    let failing = s.failing_endpoints(Scope::Hub).await.unwrap();
    assert_eq!(
        failing,
        [FailureStreak {
            endpoint_id: "ep_a".into(),
            failures: 2,
            since: Some(now),
        }]
    );
    let elsewhere = s
        .failing_endpoints(Scope::application("app_none"))
        .await
        .unwrap();
    assert!(elsewhere.is_empty(), "an application sees its own only");
    succeeded(s, &jobs[2].delivery_id, now + 10).await;
    assert!(s.failing_endpoints(Scope::Hub).await.unwrap().is_empty());
    // What changed since the first attempt, by status: a replay's progress.
    let mut changed = s.changed_since("ep_a", now).await.unwrap();
    changed.sort();
    assert_eq!(
        changed,
        [("pending".to_owned(), 2), ("succeeded".to_owned(), 1)]
    );
    assert!(s.changed_since("ep_a", now + 11).await.unwrap().is_empty());
    assert!(s.changed_since("ep_b", now).await.unwrap().is_empty());
}
on_both!(an_endpoints_failures_in_a_row_are_counted_until_a_success);

async fn events_and_finished_deliveries_are_counted_per_minute(b: &Backend) {
    let s = &*b.store;
    endpoint(s, "a").await;
    for i in 0..3 {
        ingest(s, &format!("k{i}"), &["ep_a"], None).await;
    }
    let now = domain::now_ms();
    let jobs = s.claim_due(now, 10, lease("n", now + 1_000)).await.unwrap();
    let steps = [
        (NextStep::Done, Health::Success),
        (NextStep::Failed, Health::Failure),
    ];
    for (job, (next, health)) in jobs.iter().zip(steps) {
        s.record_attempt(record(&job.delivery_id, "ep_a", now, next, health))
            .await
            .unwrap();
    }
    // An hour whose last minute began 30 s before now.
    let since = now - 59 * 60_000 - 30_000;
    let counts = s.minute_counts(Scope::Hub, since, 60).await.unwrap();
    assert_eq!(counts.events.iter().sum::<u64>(), 3);
    assert_eq!(counts.events[59], 3, "{:?}", counts.events);
    assert_eq!((counts.succeeded[59], counts.failed[59]), (1, 1));
    assert_eq!(counts.succeeded.iter().sum::<u64>(), 1);
    let elsewhere = s
        .minute_counts(Scope::application("app_none"), since, 60)
        .await
        .unwrap();
    assert_eq!(elsewhere, MinuteCounts::empty(60));
}
on_both!(events_and_finished_deliveries_are_counted_per_minute);

async fn delivery_lists_filter_by_endpoint_event_and_status(b: &Backend) {
    let s = &*b.store;
    endpoint(s, "a").await;
    endpoint(s, "b").await;
    let mut per_event = Vec::new();
    for i in 0..3 {
        per_event.push(ingest(s, &format!("k{i}"), &["ep_a", "ep_b"], None).await);
    }
    let list = |filter: DeliveryFilter| async move {
        s.list_deliveries(Scope::Hub, filter)
            .await
            .unwrap()
            .into_iter()
            .map(|d| d.id)
            .collect::<Vec<_>>()
    };
    let to_a = list(DeliveryFilter {
        endpoint_id: Some("ep_a".into()),
        limit: 10,
        ..Default::default()
    })
    .await;
    // Newest first: the last event's delivery comes first.
    let expected: Vec<String> = per_event.iter().rev().map(|ids| ids[0].clone()).collect();
    assert_eq!(to_a, expected);

    let event_id = s
        .get_delivery(Scope::Hub, &per_event[1][1])
        .await
        .unwrap()
        .unwrap()
        .event_id;
    let mut of_event = list(DeliveryFilter {
        event_id: Some(event_id),
        limit: 10,
        ..Default::default()
    })
    .await;
    of_event.sort();
    let mut expected = per_event[1].clone();
    expected.sort();
    assert_eq!(of_event, expected);

    let now = domain::now_ms();
    let jobs = s.claim_due(now, 10, lease("n", now + 1_000)).await.unwrap();
    let failed = &jobs[0];
    s.record_attempt(record(
        &failed.delivery_id,
        &failed.endpoint_id,
        now,
        NextStep::Failed,
        Health::Failure,
    ))
    .await
    .unwrap();
    let failed_list = list(DeliveryFilter {
        status: Some(DeliveryStatus::Failed),
        limit: 10,
        ..Default::default()
    })
    .await;
    assert_eq!(failed_list, std::slice::from_ref(&failed.delivery_id));
    // Filters combine, and the cursor pages on.
    let page = list(DeliveryFilter {
        endpoint_id: Some("ep_b".into()),
        before: Some(per_event[2][1].clone()),
        limit: 1,
        ..Default::default()
    })
    .await;
    assert_eq!(page, [per_event[1][1].clone()]);
}
on_both!(delivery_lists_filter_by_endpoint_event_and_status);

async fn accounts_round_trip_with_their_halt_and_keep_names_unique(b: &Backend) {
    let s = &*b.store;
    let now = domain::now_ms();
    let mut account = Account {
        id: domain::new_id(prefix::ACCOUNT),
        name: "main".into(),
        venue: tradehook::model::VenueKind::Paper,
        paper: Some(tradehook::model::PaperSettings {
            balance: 2_500.5,
            ..Default::default()
        }),
        exchange: None,
        halted: None,
        risk: tradehook::model::RiskLimits {
            daily_loss_limit: Some(50.0),
            ..Default::default()
        },
        losses_from: Some(now),
        created_at: now,
        updated_at: now,
    };
    s.insert_account(Scope::Hub, account.clone()).await.unwrap();
    assert_eq!(
        s.list_accounts(Scope::Hub).await.unwrap(),
        [account.clone()]
    );

    account.halted = Some(tradehook::model::Halt {
        reason: "exchange outage".into(),
        since: now + 1,
        exits_allowed: false,
        until: Some(now + 86_400_000),
    });
    account.updated_at = now + 1;
    assert!(s.update_account(Scope::Hub, account.clone()).await.unwrap());
    assert_eq!(
        s.list_accounts(Scope::Hub).await.unwrap(),
        [account.clone()]
    );
    // Read alone by id, as the order executor reads it for each order.
    assert_eq!(
        s.account(Scope::Hub, &account.id).await.unwrap(),
        Some(account.clone())
    );
    assert_eq!(s.account(Scope::Hub, "acc_none").await.unwrap(), None);

    let mut twin = account.clone();
    twin.id = domain::new_id(prefix::ACCOUNT);
    let taken = s.insert_account(Scope::Hub, twin).await.unwrap_err();
    assert!(matches!(taken, StoreError::Conflict(_)), "{taken}");

    // An exchange account's key, secret and passphrase are sealed on the way in and opened
    // on the way out.
    let exchange = Account {
        id: domain::new_id(prefix::ACCOUNT),
        name: "okx-main".into(),
        venue: tradehook::model::VenueKind::Okx,
        paper: None,
        exchange: Some(tradehook::model::ExchangeSettings {
            api_key: "key-1234".into(),
            api_secret: "secret-5678".into(),
            passphrase: Some("pass phrase".into()),
            live: false,
            base_url: None,
            recv_window_ms: 5000,
            timeout_ms: 10_000,
            position_mode: tradehook::model::PositionMode::Hedge,
        }),
        ..account.clone()
    };
    s.insert_account(Scope::Hub, exchange.clone())
        .await
        .unwrap();
    assert_eq!(
        s.account(Scope::Hub, &exchange.id).await.unwrap(),
        Some(exchange.clone())
    );
    assert!(s.delete_account(Scope::Hub, &exchange.id).await.unwrap());

    assert!(s.delete_account(Scope::Hub, &account.id).await.unwrap());
    assert!(!s.delete_account(Scope::Hub, &account.id).await.unwrap());
    assert!(!s.update_account(Scope::Hub, account).await.unwrap());
    assert!(s.list_accounts(Scope::Hub).await.unwrap().is_empty());
}
on_both!(accounts_round_trip_with_their_halt_and_keep_names_unique);

async fn an_order_is_recorded_once_and_settled_once_with_its_book(b: &Backend) {
    use tradehook::exchange::paper::PaperBook;
    use tradehook::model::{OrderKind, OrderRequest, OrderStatus, Side};
    let s = &*b.store;
    let now = domain::now_ms();
    let request = OrderRequest {
        client_order_id: "dlv_1-0".into(),
        symbol: "BTC/USDT:USDT".into(),
        side: Side::Buy,
        quantity: 0.01,
        kind: OrderKind::Market,
        reduce_only: false,
        leverage: 1.0,
    };
    let intent = Order {
        id: domain::new_id(prefix::ORDER),
        client_order_id: "dlv_1-0".into(),
        account_id: "acc_1".into(),
        endpoint_id: "ep_1".into(),
        delivery_id: "dlv_1".into(),
        event_id: "evt_1".into(),
        request: Some(request.clone()),
        status: OrderStatus::Intent,
        fill: None,
        reason: None,
        created_at: now,
        updated_at: now,
    };
    assert_eq!(s.record_order(intent.clone()).await.unwrap(), intent);
    // A second decision for the same client order id gets the first one back.
    let mut again = intent.clone();
    again.id = domain::new_id(prefix::ORDER);
    again.request = None;
    again.status = OrderStatus::Skipped;
    assert_eq!(s.record_order(again).await.unwrap(), intent);
    assert!(s.paper_book("acc_1").await.unwrap().is_none());

    let mut book = PaperBook::new(Default::default());
    let fill = match book.submit(request.clone(), Some(64_000.0)).unwrap() {
        tradehook::exchange::paper::Execution::Filled(f) => f,
        other => panic!("{other:?}"),
    };
    let settled = Order {
        status: OrderStatus::Filled,
        fill: Some(fill),
        updated_at: now + 1,
        ..intent.clone()
    };
    let settle = |order: Order, book: PaperBook, others: Vec<Order>| {
        s.settle(Settlement {
            account_id: "acc_1".into(),
            intent: Some(order),
            fresh: false,
            book: Some(book),
            others,
        })
    };
    // Settled with a stop-loss the fill placed.
    let stop = Order {
        id: domain::new_id(prefix::ORDER),
        client_order_id: "dlv_1-1".into(),
        request: Some(OrderRequest {
            client_order_id: "dlv_1-1".into(),
            side: Side::Sell,
            kind: OrderKind::Stop { trigger: 60_000.0 },
            reduce_only: true,
            ..request.clone()
        }),
        status: OrderStatus::Resting,
        ..intent.clone()
    };
    assert!(
        settle(settled.clone(), book.clone(), vec![stop.clone()])
            .await
            .unwrap()
    );
    assert_eq!(s.paper_book("acc_1").await.unwrap(), Some(book.clone()));
    // Settled once: a second outcome changes neither the order nor the book.
    let other = Order {
        status: OrderStatus::Rejected,
        fill: None,
        ..intent.clone()
    };
    assert!(
        !settle(other, PaperBook::new(Default::default()), vec![])
            .await
            .unwrap()
    );
    assert_eq!(
        s.list_orders(Scope::Hub, "acc_1", 10).await.unwrap(),
        [stop.clone(), settled]
    );
    assert_eq!(
        s.orders_in("acc_1", OrderStatus::Resting).await.unwrap(),
        std::slice::from_ref(&stop)
    );
    assert_eq!(s.paper_book("acc_1").await.unwrap(), Some(book.clone()));

    // A book made from an older revision than the stored one (another node settled an order
    // meanwhile) is not written, and its order stays an intent.
    let second = Order {
        id: domain::new_id(prefix::ORDER),
        client_order_id: "dlv_2-0".into(),
        delivery_id: "dlv_2".into(),
        ..intent.clone()
    };
    s.record_order(second.clone()).await.unwrap();
    // Intents not yet settled are listed by status too: the exchange executor waits on them.
    assert_eq!(
        s.orders_in("acc_1", OrderStatus::Intent).await.unwrap(),
        std::slice::from_ref(&second)
    );
    let stale = book.clone();
    let filled = Order {
        status: OrderStatus::Filled,
        ..second.clone()
    };
    assert!(!settle(filled.clone(), stale, vec![]).await.unwrap());
    let orders = s.list_orders(Scope::Hub, "acc_1", 10).await.unwrap();
    assert_eq!(orders[0].status, OrderStatus::Intent);
    let mut next = book.clone();
    next.revision += 1;
    next.balance -= 1.0;
    assert!(settle(filled, next.clone(), vec![]).await.unwrap());
    assert_eq!(s.paper_book("acc_1").await.unwrap(), Some(next.clone()));
    assert!(
        s.orders_in("acc_1", OrderStatus::Intent)
            .await
            .unwrap()
            .is_empty()
    );

    // A price with no intent: the stop fills, written with the book; over a stale book,
    // nothing is.
    let stopped = Order {
        status: OrderStatus::Filled,
        updated_at: now + 2,
        ..stop.clone()
    };
    let mark = |book: PaperBook| Settlement {
        account_id: "acc_1".into(),
        intent: None,
        fresh: false,
        book: Some(book),
        others: vec![stopped.clone()],
    };
    assert!(!s.settle(mark(next.clone())).await.unwrap());
    assert_eq!(
        s.orders_in("acc_1", OrderStatus::Resting).await.unwrap(),
        std::slice::from_ref(&stop)
    );
    let mut after = next.clone();
    after.revision += 1;
    assert!(s.settle(mark(after)).await.unwrap());
    assert!(
        s.orders_in("acc_1", OrderStatus::Resting)
            .await
            .unwrap()
            .is_empty()
    );
    let orders = s.list_orders(Scope::Hub, "acc_1", 10).await.unwrap();
    assert_eq!(orders.iter().find(|o| o.id == stop.id), Some(&stopped));

    // A new intent written with its outcome in one go: once; a second one with the same
    // client order id, or one over a stale book, writes nothing.
    let mut book = s.paper_book("acc_1").await.unwrap().unwrap();
    book.revision += 1;
    let third = Order {
        id: domain::new_id(prefix::ORDER),
        client_order_id: "dlv_3-0".into(),
        delivery_id: "dlv_3".into(),
        status: OrderStatus::Filled,
        ..intent.clone()
    };
    let fresh = |order: Order, book: PaperBook| Settlement {
        account_id: "acc_1".into(),
        intent: Some(order),
        fresh: true,
        book: Some(book),
        others: vec![],
    };
    let mut stale = book.clone();
    stale.revision -= 1;
    assert!(!s.settle(fresh(third.clone(), stale)).await.unwrap());
    assert_eq!(s.order("dlv_3-0").await.unwrap(), None, "nothing written");
    assert!(s.settle(fresh(third.clone(), book.clone())).await.unwrap());
    assert_eq!(s.order("dlv_3-0").await.unwrap(), Some(third.clone()));
    let mut again = book.clone();
    again.revision += 1;
    let other = Order {
        id: domain::new_id(prefix::ORDER),
        status: OrderStatus::Rejected,
        ..third.clone()
    };
    assert!(!s.settle(fresh(other, again)).await.unwrap());
    assert_eq!(s.order("dlv_3-0").await.unwrap(), Some(third));
    assert_eq!(s.paper_book("acc_1").await.unwrap(), Some(book));
}
on_both!(an_order_is_recorded_once_and_settled_once_with_its_book);

/// A settlement answered in turn is seen by the next read at once, before its flush: the
/// account's next order is decided on the book it left, in the same order, while it is
/// flushed; one decided on the book before it is refused. Every flush resolves.
async fn a_settlement_in_turn_is_seen_before_its_flush(b: &Backend) {
    use tradehook::exchange::paper::PaperBook;
    use tradehook::model::OrderStatus;
    let s = &*b.store;
    let now = domain::now_ms();
    let filled = |n: u32| Order {
        id: domain::new_id(prefix::ORDER),
        client_order_id: format!("dlv_{n}-0"),
        account_id: "acc_t".into(),
        endpoint_id: "ep_1".into(),
        delivery_id: format!("dlv_{n}"),
        event_id: format!("evt_{n}"),
        request: None,
        status: OrderStatus::Filled,
        fill: None,
        reason: None,
        created_at: now,
        updated_at: now,
    };
    let fresh = |order: &Order, book: &PaperBook| Settlement {
        account_id: "acc_t".into(),
        intent: Some(order.clone()),
        fresh: true,
        book: Some(book.clone()),
        others: vec![],
    };
    let mut first_book = PaperBook::new(Default::default());
    first_book.balance = 900.0;
    let first = filled(1);
    let (written, first_flush) = s.settle_in_turn(fresh(&first, &first_book)).await.unwrap();
    assert!(written);
    assert_eq!(
        s.paper_book("acc_t").await.unwrap(),
        Some(first_book.clone())
    );
    assert_eq!(s.order("dlv_1-0").await.unwrap(), Some(first.clone()));

    let mut second_book = first_book.clone();
    second_book.revision += 1;
    second_book.balance = 800.0;
    let second = filled(2);
    let (written, second_flush) = s
        .settle_in_turn(fresh(&second, &second_book))
        .await
        .unwrap();
    assert!(written, "decided on the book the first left");
    // Decided on the book before the second: refused, nothing written.
    let mut stale = first_book.clone();
    stale.revision += 1;
    let third = filled(3);
    let (written, third_flush) = s.settle_in_turn(fresh(&third, &stale)).await.unwrap();
    assert!(!written);
    first_flush.await.unwrap();
    second_flush.await.unwrap();
    third_flush.await.unwrap();
    assert_eq!(s.paper_book("acc_t").await.unwrap(), Some(second_book));
    assert_eq!(
        s.list_orders(Scope::Hub, "acc_t", 10).await.unwrap(),
        [second, first]
    );
}
on_both!(a_settlement_in_turn_is_seen_before_its_flush);

async fn nodes_share_an_endpoints_rate_limit_and_pause(b: &Backend) {
    let s = &*b.store;
    if !s.shares_limits() {
        // One node: the dispatcher keeps its buckets and pauses in memory.
        assert!(b.second.is_none());
        return;
    }
    let other = b.second.as_deref().unwrap();
    endpoint(s, "a").await;
    let limit = RateLimit::parse("5/s").unwrap();
    let now = domain::now_ms();
    for i in 0..5 {
        let node = if i % 2 == 0 { s } else { other };
        assert_eq!(node.take_token("ep_a", limit, now).await.unwrap(), Ok(()));
    }
    let wait = other
        .take_token("ep_a", limit, now)
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        (1..=200).contains(&wait),
        "one token refills in 200 ms, not {wait}"
    );
    assert_eq!(
        s.take_token("ep_a", limit, now + 200).await.unwrap(),
        Ok(())
    );
    assert!(
        s.take_token("ep_a", limit, now + 200)
            .await
            .unwrap()
            .is_err()
    );

    // A pause holds for every node: nothing of the endpoint is claimed until it ends.
    ingest(s, "k", &["ep_a"], None).await;
    other.pause("ep_a", now + 10_000).await.unwrap();
    assert!(claimed(s, now + 1, now + 2).await.is_empty());
    assert_eq!(claimed(s, now + 10_000, now + 10_001).await.len(), 1);
}
on_both!(nodes_share_an_endpoints_rate_limit_and_pause);

/// Nodes started at the same moment on a new database apply the migrations once, in turn.
#[tokio::test]
async fn nodes_starting_together_on_a_new_database_all_start() {
    let Some(database) = TestDatabase::create().await else {
        return;
    };
    let starts: Vec<_> = (0..4)
        .map(|_| {
            let url = database.url.clone();
            tokio::spawn(async move { PgStore::open(&url, Cipher::new(KEY)).await })
        })
        .collect();
    for start in starts {
        let store = start.await.unwrap().expect("every node starts");
        store.close().await;
    }
}

/// Under writes back to back, the background checkpoints restart the WAL from its first frame
/// once it holds 16 MiB: it never grows to the size (64 MiB) at which it must be truncated by a
/// checkpoint that every write waits for.
#[tokio::test]
async fn the_sqlite_wal_restarts_under_steady_writes() {
    use std::io::Read;

    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("hub.db"), Cipher::new(KEY)).unwrap();
    let ep = endpoint(&store, "a").await;
    let wal = dir.path().join("hub.db-wal");
    // A restarted WAL keeps its file size; the salts in its header change.
    let salts = || {
        let mut header = [0u8; 24];
        std::fs::File::open(&wal)
            .unwrap()
            .read_exact(&mut header)
            .unwrap();
        header[16..].to_vec()
    };
    let (mut written, mut restarts, mut largest) = (0, 0, 0);
    let mut last_salts = salts();
    // Each event is a commit of a few pages, one after the other, as fast as the store goes.
    while restarts < 3 {
        ingest(&store, &format!("k{written}"), &[&ep.id], None).await;
        written += 1;
        largest = largest.max(std::fs::metadata(&wal).unwrap().len());
        let now = salts();
        if now != last_salts {
            restarts += 1;
            last_salts = now;
        }
        assert!(written < 20_000, "the WAL was not restarted 3 times");
    }
    assert!(
        largest < 48 << 20,
        "the WAL grew to {largest} bytes over {written} commits ({restarts} restarts)"
    );
    store.close().await;
}

/// The SQLite store keeps its dedupe index in memory: after a restart it is read back from the
/// stored events, so a resend is still recognised.
#[tokio::test]
async fn the_sqlite_dedupe_holds_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hub.db");
    let store = SqliteStore::open(&path, Cipher::new(KEY)).unwrap();
    let first = event("resent");
    let first_id = first.id.clone();
    let window_start = domain::now_ms() - 60_000;
    assert_eq!(
        store
            .ingest(first, vec![], lease("n", 0), window_start)
            .await
            .unwrap(),
        IngestOutcome::Stored
    );
    store.close().await;
    drop(store);

    let store = SqliteStore::open(&path, Cipher::new(KEY)).unwrap();
    // As a hub does when it starts (the first ingest would otherwise).
    store.load_dedupe(window_start).await.unwrap();
    assert_eq!(
        store
            .ingest(event("resent"), vec![], lease("n", 0), window_start)
            .await
            .unwrap(),
        IngestOutcome::Duplicate {
            original_id: first_id
        }
    );
    assert_eq!(
        store
            .ingest(event("new"), vec![], lease("n", 0), window_start)
            .await
            .unwrap(),
        IngestOutcome::Stored
    );
    store.close().await;
}

/// One SQLite database has one writer: a second store on the same file is refused with a
/// message that says why, and opens once the first has closed.
#[tokio::test]
async fn a_second_sqlite_store_on_the_same_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hub.db");
    let store = SqliteStore::open(&path, Cipher::new(KEY)).unwrap();
    let err = match SqliteStore::open(&path, Cipher::new(KEY)) {
        Ok(_) => panic!("a second store opened the same database"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("is in use by another tradehook process"),
        "{err}"
    );
    // The same file under other names: a hard link and a symbolic link.
    let hard = dir.path().join("hard.db");
    std::fs::hard_link(&path, &hard).unwrap();
    let soft = dir.path().join("soft.db");
    std::os::unix::fs::symlink(&path, &soft).unwrap();
    for other in [&hard, &soft] {
        let err = match SqliteStore::open(other, Cipher::new(KEY)) {
            Ok(_) => panic!("a second store opened the database as {}", other.display()),
            Err(e) => e.to_string(),
        };
        assert!(
            err.contains("is in use by another tradehook process"),
            "{err}"
        );
    }
    store.close().await;
    let again = SqliteStore::open(&path, Cipher::new(KEY)).unwrap();
    again.close().await;
}

async fn an_applications_scope_holds_its_own_records_only(b: &Backend) {
    let s = &*b.store;
    let now = domain::now_ms();
    let application = |id: &str, uid: &str| Application {
        id: id.into(),
        uid: Some(uid.into()),
        name: id.into(),
        settings: Default::default(),
        created_at: now,
        updated_at: now,
    };
    s.insert_application(Scope::Hub, application("app_a", "a"))
        .await
        .unwrap();
    s.insert_application(Scope::Hub, application("app_b", "b"))
        .await
        .unwrap();
    let clash = s
        .insert_application(Scope::Hub, application("app_c", "a"))
        .await;
    assert!(matches!(clash, Err(StoreError::Conflict(_))), "{clash:?}");
    let (a, b_scope) = (Scope::application("app_a"), Scope::application("app_b"));

    // Endpoints: each application's own, the hub's none of theirs; one never changes hands.
    let mut ea = new_endpoint("ep_a".into(), now);
    ea.url = "https://example.test/a".into();
    s.insert_endpoint(a.clone(), ea.clone()).await.unwrap();
    let mut eb = new_endpoint("ep_b".into(), now);
    eb.url = "https://example.test/b".into();
    s.insert_endpoint(b_scope.clone(), eb.clone())
        .await
        .unwrap();
    endpoint(s, "hub").await;
    let in_scope = |list: Vec<Endpoint>| list.into_iter().map(|e| e.id).collect::<Vec<_>>();
    assert_eq!(
        in_scope(s.list_endpoints(a.clone()).await.unwrap()),
        ["ep_a"]
    );
    assert_eq!(s.list_endpoints(Scope::Hub).await.unwrap().len(), 3);
    assert_eq!(
        s.list_endpoints(a.clone()).await.unwrap()[0]
            .application_id
            .as_deref(),
        Some("app_a")
    );
    eb.description = "taken over".into();
    assert!(!s.update_endpoint(a.clone(), eb.clone()).await.unwrap());
    assert!(!s.delete_endpoint(a.clone(), "ep_b", now).await.unwrap());
    ea.description = "mine".into();
    assert!(s.update_endpoint(a.clone(), ea.clone()).await.unwrap());

    // Events and deliveries: an event is seen by the applications it was delivered to.
    let only_b = ingest(s, "k1", &["ep_b"], None).await;
    let shared = ingest(s, "k2", &["ep_a", "ep_b"], None).await;
    let event_of = |d: &str| {
        let d = d.to_owned();
        async move {
            s.get_delivery(Scope::Hub, &d)
                .await
                .unwrap()
                .unwrap()
                .event_id
        }
    };
    let (only_b_event, shared_event) = (event_of(&only_b[0]).await, event_of(&shared[0]).await);
    let filter = || DeliveryFilter {
        limit: 50,
        ..Default::default()
    };
    let deliveries = s.list_deliveries(a.clone(), filter()).await.unwrap();
    assert_eq!(deliveries.len(), 1);
    assert_eq!(deliveries[0].endpoint_id, "ep_a");
    assert!(
        s.get_delivery(a.clone(), &only_b[0])
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        s.list_attempts(a.clone(), &only_b[0])
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        s.retry_delivery(a.clone(), &only_b[0], now)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        s.get_event(a.clone(), &only_b_event)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        s.get_event(a.clone(), &shared_event)
            .await
            .unwrap()
            .is_some()
    );
    let events = s
        .list_events(
            a.clone(),
            EventFilter {
                limit: 50,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].id, shared_event);
    let stats = s.stats(a.clone(), 0, 100).await.unwrap();
    assert_eq!(stats.events_by_source, [("api".to_owned(), 1)]);
    assert!(stats.deliveries.iter().all(|d| d.0 == "ep_a"));

    // Keys: an application lists and revokes its own only.
    let token = |id: &str, app: Option<&str>| ApiToken {
        id: id.into(),
        name: id.into(),
        hash: format!("hash-{id}"),
        scope: TokenScope::Admin,
        application_id: app.map(str::to_owned),
        expires_at: None,
        created_at: now,
    };
    s.insert_token(Scope::Hub, token("tok_hub", None))
        .await
        .unwrap();
    s.insert_token(a.clone(), token("tok_a", None))
        .await
        .unwrap();
    s.insert_token(b_scope.clone(), token("tok_b", None))
        .await
        .unwrap();
    let keys_a = s.list_tokens(a.clone()).await.unwrap();
    assert_eq!(keys_a.len(), 1);
    assert_eq!(keys_a[0].application_id.as_deref(), Some("app_a"));
    assert!(!s.delete_token(a.clone(), "tok_b").await.unwrap());
    assert_eq!(s.list_tokens(Scope::Hub).await.unwrap().len(), 3);

    // Applications: one sees itself; the hub all.
    assert_eq!(s.list_applications(a.clone()).await.unwrap().len(), 1);
    assert_eq!(s.list_applications(Scope::Hub).await.unwrap().len(), 2);
    assert!(!s.delete_application(a.clone(), "app_b").await.unwrap());

    // Deleting B takes its endpoint, deliveries, key and the event only it was sent; the
    // shared event stays with A's delivery.
    assert!(s.delete_application(Scope::Hub, "app_b").await.unwrap());
    assert!(
        s.get_event(Scope::Hub, &only_b_event)
            .await
            .unwrap()
            .is_none()
    );
    let kept = s
        .list_deliveries(
            Scope::Hub,
            DeliveryFilter {
                event_id: Some(shared_event.clone()),
                ..filter()
            },
        )
        .await
        .unwrap();
    assert_eq!(kept.len(), 1);
    assert_eq!(kept[0].endpoint_id, "ep_a");
    assert_eq!(s.list_tokens(Scope::Hub).await.unwrap().len(), 2);
    assert_eq!(s.list_endpoints(Scope::Hub).await.unwrap().len(), 2);
    assert!(!s.delete_application(Scope::Hub, "app_b").await.unwrap());
}
on_both!(an_applications_scope_holds_its_own_records_only);

async fn a_portal_link_is_redeemed_once_and_never_after_it_expires(b: &Backend) {
    let s = &*b.store;
    let now = domain::now_ms();
    let link = |id: &str, expires_at: i64| PortalLink {
        id: id.into(),
        application_id: "app_a".into(),
        token_hash: format!("hash-{id}"),
        read_only: true,
        expires_at,
        used_at: None,
        created_at: now,
    };
    s.insert_portal_link(Scope::Hub, link("ptl_1", now + 60_000))
        .await
        .unwrap();
    s.insert_portal_link(Scope::Hub, link("ptl_2", now + 60_000))
        .await
        .unwrap();
    // Past its time, a link opens nothing.
    assert!(
        s.redeem_portal_link("hash-ptl_1", now + 60_000)
            .await
            .unwrap()
            .is_none()
    );
    let used = s
        .redeem_portal_link("hash-ptl_1", now)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(used.used_at, Some(now));
    assert!(used.read_only);
    assert!(
        s.redeem_portal_link("hash-ptl_1", now)
            .await
            .unwrap()
            .is_none()
    );
    // Many at once: one gets it.
    let tries = (0..8).map(|_| s.redeem_portal_link("hash-ptl_2", now));
    let won = futures_util::future::join_all(tries)
        .await
        .into_iter()
        .filter(|r| r.as_ref().unwrap().is_some())
        .count();
    assert_eq!(won, 1);
    // Expiring an application's access takes its links and its sessions, not its keys.
    s.insert_portal_link(Scope::Hub, link("ptl_3", now + 60_000))
        .await
        .unwrap();
    let token = |id: &str, expires_at: Option<i64>| ApiToken {
        id: id.into(),
        name: id.into(),
        hash: format!("hash-{id}"),
        scope: TokenScope::ReadOnly,
        application_id: None,
        expires_at,
        created_at: now,
    };
    let a = Scope::application("app_a");
    s.insert_token(a.clone(), token("tok_session", Some(now + 1000)))
        .await
        .unwrap();
    s.insert_token(a.clone(), token("tok_key", None))
        .await
        .unwrap();
    assert_eq!(
        s.expire_portal_access(Scope::application("app_b"), "app_a")
            .await
            .unwrap(),
        0
    );
    assert_eq!(s.expire_portal_access(a.clone(), "app_a").await.unwrap(), 4);
    assert!(
        s.redeem_portal_link("hash-ptl_3", now)
            .await
            .unwrap()
            .is_none()
    );
    let left = s.list_tokens(a.clone()).await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].id, "tok_key");
    assert_eq!(left[0].expires_at, None);

    // What has expired is pruned, used or not; what still works and lasting keys stay.
    s.insert_portal_link(Scope::Hub, link("ptl_4", now + 60_000))
        .await
        .unwrap();
    s.insert_portal_link(Scope::Hub, link("ptl_5", now + 120_000))
        .await
        .unwrap();
    assert!(
        s.redeem_portal_link("hash-ptl_4", now)
            .await
            .unwrap()
            .is_some()
    );
    s.insert_token(a.clone(), token("tok_old_session", Some(now + 60_000)))
        .await
        .unwrap();
    s.insert_token(a.clone(), token("tok_new_session", Some(now + 120_000)))
        .await
        .unwrap();
    assert_eq!(s.prune_expired(now + 60_000).await.unwrap(), 2);
    let left: Vec<String> = s
        .list_tokens(a)
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.id)
        .collect();
    assert_eq!(left, ["tok_key", "tok_new_session"]);
    assert!(
        s.redeem_portal_link("hash-ptl_5", now + 60_001)
            .await
            .unwrap()
            .is_some()
    );

    // A shared database counts daily quotas; the counts of past days are pruned too.
    if s.shares_limits() {
        let old_day = now.div_euclid(86_400_000) - 5;
        assert!(s.take_quota("app_a", old_day, 1).await.unwrap());
        assert!(!s.take_quota("app_a", old_day, 1).await.unwrap());
        assert_eq!(s.prune_expired(now).await.unwrap(), 1);
        assert!(s.take_quota("app_a", old_day, 1).await.unwrap());
    }
}
on_both!(a_portal_link_is_redeemed_once_and_never_after_it_expires);

async fn an_applications_retention_takes_its_finished_deliveries_only(b: &Backend) {
    let s = &*b.store;
    let now = domain::now_ms();
    let mut owned = new_endpoint("ep_app".into(), now);
    owned.url = "https://example.test/app".into();
    s.insert_endpoint(Scope::application("app_a"), owned)
        .await
        .unwrap();
    endpoint(s, "hub").await;
    let alone = ingest(s, "k1", &["ep_app"], None).await;
    let shared = ingest(s, "k2", &["ep_app", "ep_hub"], None).await;
    let pending = ingest(s, "k3", &["ep_app"], None).await;
    let now = domain::now_ms() + 10;
    assert_eq!(claimed(s, now, now + 60_000).await.len(), 4);
    for (delivery, endpoint) in [(&alone[0], "ep_app"), (&shared[0], "ep_app")] {
        s.record_attempt(record(
            delivery,
            endpoint,
            now,
            NextStep::Done,
            Health::Success,
        ))
        .await
        .unwrap();
    }
    let event_of = |d: String| async move {
        s.get_delivery(Scope::Hub, &d)
            .await
            .unwrap()
            .unwrap()
            .event_id
    };
    let (alone_event, shared_event) = (
        event_of(alone[0].clone()).await,
        event_of(shared[0].clone()).await,
    );
    // Only what was made before the cut.
    assert_eq!(
        s.prune_application("app_a", now - 60_000, 100)
            .await
            .unwrap(),
        0
    );
    assert_eq!(s.prune_application("app_a", now + 1, 100).await.unwrap(), 2);
    assert!(
        s.get_event(Scope::Hub, &alone_event)
            .await
            .unwrap()
            .is_none()
    );
    let kept = s.get_event(Scope::Hub, &shared_event).await.unwrap();
    assert!(
        kept.is_some(),
        "another endpoint's delivery keeps its event"
    );
    assert!(
        s.get_delivery(Scope::Hub, &shared[1])
            .await
            .unwrap()
            .is_some()
    );
    // Pending work is never pruned.
    assert!(
        s.get_delivery(Scope::Hub, &pending[0])
            .await
            .unwrap()
            .is_some()
    );
    assert_eq!(s.prune_application("app_b", now + 1, 100).await.unwrap(), 0);
}
on_both!(an_applications_retention_takes_its_finished_deliveries_only);

async fn the_events_sent_to_an_application_are_counted_once_each_since_a_time(b: &Backend) {
    let s = &*b.store;
    let before = domain::now_ms();
    for name in ["ep_one", "ep_two"] {
        let mut owned = new_endpoint(name.into(), before);
        owned.url = format!("https://example.test/{name}");
        s.insert_endpoint(Scope::application("app_a"), owned)
            .await
            .unwrap();
    }
    endpoint(s, "hub").await;
    assert_eq!(s.events_sent_since("app_a", before).await.unwrap(), 0);
    // One event to both of the application's endpoints counts once; one to the hub's
    // endpoint alone does not count.
    ingest(s, "k1", &["ep_one", "ep_two"], None).await;
    ingest(s, "k2", &["ep_one", "ep_hub"], None).await;
    ingest(s, "k3", &["ep_hub"], None).await;
    assert_eq!(s.events_sent_since("app_a", before).await.unwrap(), 2);
    assert_eq!(s.events_sent_since("app_b", before).await.unwrap(), 0);
    // Nothing was sent after now.
    let later = domain::now_ms() + 1;
    assert_eq!(s.events_sent_since("app_a", later).await.unwrap(), 0);
}
on_both!(the_events_sent_to_an_application_are_counted_once_each_since_a_time);
