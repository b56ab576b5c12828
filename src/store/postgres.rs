//! The PostgreSQL store, for several hub nodes sharing one database.
//!
//! Ingests are group-committed: one task takes every ingest waiting and runs each inside its
//! own savepoint of one transaction, so concurrent requests share a commit (and its flush),
//! and a `2xx` still means committed. Other writes and reads run on a small pool of
//! connections, each in its own transaction.
//!
//! Work is claimed with `for update skip locked` and a lease (owner and expiry): two nodes
//! never claim the same delivery. Every node writes a heartbeat each second (`nodes`, on the
//! database's clock) on a connection of its own; a delivery leased to a node silent for 6 s,
//! stopped or never heard of is claimed again at once, and otherwise when its lease runs out.
//! Unlike SQLite, leases are not cleared at start: other nodes may hold them.
//!
//! Dedupe holds across nodes: the dedupe row is written with `on conflict … do update …
//! where` the earlier one has left the window, and a concurrent duplicate waits on the row
//! lock and then sees the first.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, NoTls, Row, Statement};

use super::query::{self, Dialect, Owned};
use super::rows::{
    self, ACCOUNT_COLUMNS, APPLICATION_COLUMNS, AccountRow, ORDER_COLUMNS, OrderRow,
    account_columns, order_columns,
};
use super::sqlite::{open_endpoint, seal_endpoint, wrong_key};
use super::*;
use crate::domain::{EventTypePattern, Signing, prefix};
use crate::security::crypto::Cipher;

/// Ingests taken into one transaction at most.
const MAX_BATCH: usize = 512;
/// Ingests waiting for the committer at most; senders wait beyond that (backpressure).
const INGEST_QUEUE: usize = 8192;
/// Connections of the pool, besides the committer's own.
const POOL_SIZE: usize = 8;

/// The channels nodes announce changes on.
const WORK_CHANNEL: &str = "tradehook_work";
const CONFIG_CHANNEL: &str = "tradehook_config";
const PAUSE_CHANNEL: &str = "tradehook_pause";

const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("migrations/postgres/0001_init.sql")),
    (
        2,
        include_str!("migrations/postgres/0002_shared_limits.sql"),
    ),
    (3, include_str!("migrations/postgres/0003_nodes.sql")),
    (4, include_str!("migrations/postgres/0004_accounts.sql")),
    (5, include_str!("migrations/postgres/0005_orders.sql")),
    (
        6,
        include_str!("migrations/postgres/0006_resting_orders.sql"),
    ),
    (7, include_str!("migrations/postgres/0007_applications.sql")),
    (
        8,
        include_str!("migrations/postgres/0008_claim_indexes.sql"),
    ),
    (
        9,
        include_str!("migrations/postgres/0009_order_intents.sql"),
    ),
    (
        10,
        include_str!("migrations/postgres/0010_claims_by_key.sql"),
    ),
];

/// How often a node says it is alive.
const HEARTBEAT_EVERY: std::time::Duration = std::time::Duration::from_secs(1);
/// How long a node may be silent before the others take it for dead and claim its work: long
/// enough that a live node's late heartbeat never costs it a delivery it is sending, short
/// enough that a trade signal held by a dead node goes out within seconds.
const SILENT_FOR_MS: i64 = 6_000;
/// The database's clock, in milliseconds.
const DB_NOW_MS: &str = "(extract(epoch from clock_timestamp()) * 1000)::bigint";

/// Whether a database URL names PostgreSQL.
pub fn is_postgres_url(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

/// A database URL fit for logs: its password masked.
///
/// ```
/// use tradehook::store::postgres::redact_url;
/// assert_eq!(redact_url("postgres://hub:s3cret@db/th"), "postgres://hub:***@db/th");
/// assert_eq!(redact_url("sqlite://tradehook.db"), "sqlite://tradehook.db");
/// ```
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        _ => url.to_owned(),
    }
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> Self {
        if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) {
            return StoreError::Conflict(e.to_string());
        }
        match e.as_db_error() {
            Some(db) => StoreError::Database(db.message().to_owned()),
            None => StoreError::Database(e.to_string()),
        }
    }
}

async fn connect(url: &str) -> Result<Client> {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(error = %e, "a PostgreSQL connection ended");
        }
    });
    Ok(client)
}

/// A connection and the statements prepared on it. The statements of the hot path (ingest,
/// attempt records, claims) are parsed and planned once per connection instead of on every
/// call, and each call is one round trip instead of two.
struct Conn {
    client: Client,
    prepared: Mutex<std::collections::HashMap<&'static str, Statement>>,
}

impl Conn {
    fn new(client: Client) -> Self {
        Self {
            client,
            prepared: Mutex::default(),
        }
    }

    /// `sql` prepared on this connection, prepared now if it was not yet.
    async fn statement(&self, sql: &'static str) -> Result<Statement> {
        if let Some(statement) = self.prepared.lock().expect("statement cache lock").get(sql) {
            return Ok(statement.clone());
        }
        let statement = self.client.prepare(sql).await?;
        self.prepared
            .lock()
            .expect("statement cache lock")
            .insert(sql, statement.clone());
        Ok(statement)
    }
}

impl std::ops::Deref for Conn {
    type Target = Client;
    fn deref(&self) -> &Client {
        &self.client
    }
}

/// A few connections, opened on demand and kept while they work.
struct Pool {
    url: String,
    idle: Mutex<Vec<Conn>>,
    slots: Semaphore,
}

/// A pooled connection, given back when dropped (unless it broke).
struct Pooled<'a> {
    client: Option<Conn>,
    pool: &'a Pool,
    _slot: tokio::sync::SemaphorePermit<'a>,
}

impl std::ops::Deref for Pooled<'_> {
    type Target = Conn;
    fn deref(&self) -> &Conn {
        self.client.as_ref().expect("a pooled connection")
    }
}

impl Drop for Pooled<'_> {
    fn drop(&mut self) {
        if let Some(client) = self.client.take()
            && !client.is_closed()
        {
            self.pool.idle.lock().expect("pool lock").push(client);
        }
    }
}

impl Pool {
    async fn get(&self) -> Result<Pooled<'_>> {
        let slot = self.slots.acquire().await.map_err(|_| StoreError::Closed)?;
        // Connections the server closed while idle (a restart) are left behind.
        let idle = {
            let mut idle = self.idle.lock().expect("pool lock");
            idle.retain(|c| !c.is_closed());
            idle.pop()
        };
        let client = match idle {
            Some(client) => client,
            None => Conn::new(connect(&self.url).await?),
        };
        Ok(Pooled {
            client: Some(client),
            pool: self,
            _slot: slot,
        })
    }
}

/// Runs `body` in a transaction on `client`: committed if it succeeds, rolled back if not.
async fn in_transaction<R>(
    client: &Client,
    body: impl AsyncFnOnce(&Client) -> Result<R>,
) -> Result<R> {
    client.batch_execute("begin").await?;
    match body(client).await {
        Ok(value) => {
            client.batch_execute("commit").await?;
            Ok(value)
        }
        Err(e) => {
            let _ = client.batch_execute("rollback").await;
            Err(e)
        }
    }
}

struct IngestOp {
    event: NewEvent,
    deliveries: Vec<NewDelivery>,
    lease: Lease,
    dedupe_since: Millis,
}

impl IngestOp {
    /// Whether any of its deliveries is for the nodes to claim: ordered ones (claimed in
    /// order), and those of a node that does not deliver. The rest are handed to this node's
    /// dispatcher directly and held by its lease, so telling the nodes of them would only
    /// make each of them look for work it cannot take.
    fn to_claim(&self) -> bool {
        self.lease.until == 0 || self.deliveries.iter().any(|d| d.order_key.is_some())
    }
}

/// A write waiting for its group commit, and where its outcome goes.
struct Queued<Op, R> {
    op: Op,
    reply: oneshot::Sender<Result<R>>,
}

/// The PostgreSQL implementation of [`Store`].
pub struct PgStore {
    cipher: Cipher,
    pool: Pool,
    changes: tokio::sync::broadcast::Sender<Change>,
    listener: tokio::task::JoinHandle<()>,
    ingests: Mutex<Option<mpsc::Sender<Queued<IngestOp, IngestOutcome>>>>,
    committer: Mutex<Option<tokio::task::JoinHandle<()>>>,
    records: Mutex<Option<mpsc::Sender<Queued<AttemptRecord, Recorded>>>>,
    recorder: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// The heartbeat's own connection: a busy pool must not make a live node look dead.
    heartbeat: tokio::sync::Mutex<Option<Client>>,
}

/// Applies the migrations not yet applied; several nodes starting at once take turns.
pub async fn migrate(url: &str) -> Result<()> {
    let client = connect(url).await?;
    in_transaction(&client, async |c: &Client| {
        // Held until the commit: a node starting at the same moment waits, then finds the
        // migrations applied.
        c.execute("select pg_advisory_xact_lock(7463552)", &[])
            .await?;
        c.batch_execute(
            "create table if not exists schema_migrations (
                 version bigint primary key, applied_at bigint not null)",
        )
        .await?;
        let current: i64 = c
            .query_one(
                "select coalesce(max(version), 0) from schema_migrations",
                &[],
            )
            .await?
            .get(0);
        for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
            c.batch_execute(sql)
                .await
                .map_err(|e| StoreError::Database(format!("migration {version}: {e}")))?;
            c.execute(
                "insert into schema_migrations (version, applied_at) values ($1, $2)",
                &[version, &crate::domain::now_ms()],
            )
            .await?;
        }
        Ok(())
    })
    .await
}

impl PgStore {
    /// Connects, applies the migrations, checks that the key opens the stored secrets, and
    /// starts the ingest committer.
    pub async fn open(url: &str, cipher: Cipher) -> Result<Self> {
        migrate(url).await?;
        let pool = Pool {
            url: url.to_owned(),
            idle: Mutex::new(Vec::new()),
            slots: Semaphore::new(POOL_SIZE),
        };
        {
            let c = pool.get().await?;
            let sealed = c
                .query_opt(
                    "select secret from endpoints union all
                     select secret from sources where secret is not null limit 1",
                    &[],
                )
                .await?;
            if let Some(row) = sealed {
                cipher.open(row.get(0)).map_err(wrong_key)?;
            }
        }
        let committer_client = Conn::new(connect(url).await?);
        let (tx, rx) = mpsc::channel(INGEST_QUEUE);
        // Ingests, many to a transaction; work for the nodes to claim is announced at the
        // commit.
        let committer = tokio::spawn(group_commit(
            "ingest",
            url.to_owned(),
            committer_client,
            rx,
            Some((notify_sql(Change::Work), IngestOp::to_claim)),
            ingest_one,
        ));
        let (records, queued) = mpsc::channel(INGEST_QUEUE);
        // Attempt records, many to a transaction: one commit and round trip per attempt was
        // what bounded delivery on PostgreSQL.
        let recorder = tokio::spawn(group_commit(
            "attempt",
            url.to_owned(),
            Conn::new(connect(url).await?),
            queued,
            None,
            record_one,
        ));
        let (changes, _) = tokio::sync::broadcast::channel(1024);
        let listener = tokio::spawn(listen(url.to_owned(), changes.clone()));
        Ok(Self {
            cipher,
            pool,
            changes,
            listener,
            ingests: Mutex::new(Some(tx)),
            committer: Mutex::new(Some(committer)),
            records: Mutex::new(Some(records)),
            recorder: Mutex::new(Some(recorder)),
            heartbeat: tokio::sync::Mutex::new(None),
        })
    }

    /// Tells every node (this one too) that there is work or that the configuration changed.
    async fn announce(&self, change: Change) -> Result<()> {
        self.pool
            .get()
            .await?
            .execute(notify_sql(change), &[])
            .await?;
        Ok(())
    }

    /// Runs a write, then, if it succeeded, tells every node what changed.
    async fn announcing<R>(
        &self,
        change: Change,
        write: impl Future<Output = Result<R>>,
    ) -> Result<R> {
        let done = write.await;
        if done.is_ok()
            && let Err(e) = self.announce(change).await
        {
            tracing::warn!(error = %e, "could not tell the other nodes of a change");
        }
        done
    }

    /// Deletes one row of configuration by id (`sql` takes the id as `$1`), and tells every
    /// node; says whether there was such a row.
    async fn delete_config(&self, sql: &str, id: &str) -> Result<bool> {
        self.announcing(Change::Config, async {
            let n = self.pool.get().await?.execute(sql, &[&id]).await?;
            Ok(n == 1)
        })
        .await
    }

    /// Runs `body` in a transaction on a pooled connection.
    async fn tx<R>(&self, body: impl AsyncFnOnce(&Client) -> Result<R>) -> Result<R> {
        let client = self.pool.get().await?;
        in_transaction(&client, body).await
    }
}

fn notify_sql(change: Change) -> &'static str {
    match change {
        Change::Work => "select pg_notify('tradehook_work', '')",
        // A pause carries its endpoint and time: `PgStore::pause` announces it.
        Change::Config | Change::Paused { .. } => "select pg_notify('tradehook_config', '')",
    }
}

/// Listens for other nodes' announcements and passes them on; reconnects when the connection
/// drops (announcements missed meanwhile are covered by the dispatcher's scan and by a
/// reload on reconnecting).
async fn listen(url: String, changes: tokio::sync::broadcast::Sender<Change>) {
    loop {
        match tokio_postgres::connect(&url, NoTls).await {
            Ok((client, mut connection)) => {
                let (messages, mut received) = mpsc::unbounded_channel::<(String, String)>();
                let driver = tokio::spawn(async move {
                    while let Some(message) =
                        std::future::poll_fn(|cx| connection.poll_message(cx)).await
                    {
                        match message {
                            Ok(tokio_postgres::AsyncMessage::Notification(n)) => {
                                let message = (n.channel().to_owned(), n.payload().to_owned());
                                if messages.send(message).is_err() {
                                    return;
                                }
                            }
                            Ok(_) => {}
                            Err(e) => {
                                tracing::warn!(error = %e, "the PostgreSQL listener connection failed");
                                return;
                            }
                        }
                    }
                });
                let listening = client
                    .batch_execute(&format!(
                        "listen {WORK_CHANNEL}; listen {CONFIG_CHANNEL}; listen {PAUSE_CHANNEL}"
                    ))
                    .await;
                if let Err(e) = listening {
                    tracing::warn!(error = %e, "could not listen for other nodes' changes");
                } else {
                    let _ = changes.send(Change::Config);
                    let _ = changes.send(Change::Work);
                    while let Some((channel, payload)) = received.recv().await {
                        let change = match channel.as_str() {
                            WORK_CHANNEL => Change::Work,
                            PAUSE_CHANNEL => match payload.split_once(' ') {
                                Some((endpoint_id, until)) => Change::Paused {
                                    endpoint_id: endpoint_id.to_owned(),
                                    until: until.parse().unwrap_or_default(),
                                },
                                None => continue,
                            },
                            _ => Change::Config,
                        };
                        let _ = changes.send(change);
                    }
                }
                driver.abort();
            }
            Err(e) => tracing::warn!(error = %e, "could not connect the PostgreSQL listener"),
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

/// What a group commit sends before it commits, and which writes call for it.
type Announce<Op> = (&'static str, fn(&Op) -> bool);

/// Writes of one kind as they come, many to a transaction on a dedicated connection: each
/// write's statements are sent at once (pipelined), and one commit makes the group durable.
/// If one write fails, the group is run again with a savepoint for each, so that only the
/// failing ones fail. `announce` is sent just before the commit when one of the group's writes
/// calls for it.
async fn group_commit<Op, R>(
    what: &'static str,
    url: String,
    mut client: Conn,
    mut rx: mpsc::Receiver<Queued<Op, R>>,
    announce: Option<Announce<Op>>,
    write: impl AsyncFn(&Conn, &Op) -> Result<R>,
) {
    let mut batch: Vec<Queued<Op, R>> = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = rx.recv().await {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(queued) => batch.push(queued),
                Err(_) => break,
            }
        }
        // `begin` goes out with the writes, in one round trip (a connection runs its requests
        // in the order they were sent): under load a round trip took a fifth of a group's time.
        let begun = match reconnected(&url, &mut client).await {
            Ok(()) => {
                let (begun, outcomes) = futures_util::future::join(
                    client.batch_execute("begin"),
                    futures_util::future::join_all(batch.iter().map(|q| write(&client, &q.op))),
                )
                .await;
                begun.map(|()| outcomes).map_err(StoreError::from)
            }
            Err(e) => Err(e),
        };
        let mut outcomes = match begun {
            Ok(outcomes) => outcomes,
            Err(e) => {
                let _ = client.batch_execute("rollback").await;
                tracing::error!(error = %e, what, "could not begin a group commit");
                for queued in batch.drain(..) {
                    let _ = queued.reply.send(Err(StoreError::Database(e.to_string())));
                }
                continue;
            }
        };
        if outcomes.iter().any(Result::is_err) {
            let _ = client.batch_execute("rollback; begin").await;
            outcomes.clear();
            for queued in &batch {
                outcomes.push(in_savepoint(&client, &queued.op, &write).await);
            }
        }
        if let Some((sql, wanted)) = announce
            && batch.iter().any(|q| wanted(&q.op))
            && let Err(e) = client.batch_execute(sql).await
        {
            tracing::warn!(error = %e, what, "could not announce a group commit");
        }
        let committed = client.batch_execute("commit").await;
        if let Err(e) = &committed {
            let _ = client.batch_execute("rollback").await;
            tracing::error!(error = %e, what, "a group commit failed; its writes are reported failed");
        }
        for (queued, outcome) in batch.drain(..).zip(outcomes) {
            let answer = match &committed {
                Ok(()) => outcome,
                Err(e) => Err(StoreError::Database(e.to_string())),
            };
            let _ = queued.reply.send(answer);
        }
    }
}

async fn in_savepoint<Op, R>(
    c: &Conn,
    op: &Op,
    write: &impl AsyncFn(&Conn, &Op) -> Result<R>,
) -> Result<R> {
    c.batch_execute("savepoint op").await?;
    match write(c, op).await {
        Ok(value) => {
            c.batch_execute("release op").await?;
            Ok(value)
        }
        Err(e) => {
            c.batch_execute("rollback to op; release op").await?;
            Err(e)
        }
    }
}

/// An attempt, its delivery's new state and its endpoint's failure streak, in one statement
/// (one round trip for a whole group of them, pipelined).
const RECORD_ATTEMPT: &str = "with attempt as (
        insert into attempts (id, delivery_id, attempted_at, status_code, duration_ms,
            error_kind, error, response_body)
        values ($1, $2, $3, $4, $5, $6, $7, $8)
    ), delivery as (
        update deliveries set status = $9, next_attempt_at = $10, tries = tries + 1,
            attempts = attempts + 1, lease_owner = null, lease_until = null,
            last_status_code = $4, last_error = $11, updated_at = $3
        where id = $2
    )
    update endpoints set
        failure_streak = case when $14 then 0 else failure_streak + 1 end,
        failing_since = case when $14 then null else coalesce(failing_since, $3) end
    where id = $12 and $13 and (not $14 or failure_streak > 0)
    returning failure_streak, failing_since";

/// Writes one attempt and its outcome: the attempt row, the delivery's new state, the
/// endpoint's failure streak, and its disabling when the streak calls for it.
async fn record_one(c: &Conn, record: &AttemptRecord) -> Result<Recorded> {
    let a = &record.attempt;
    let status_code = a.status_code.map(i64::from);
    let (status, next_at, last_error) = record.delivery_state();
    // A success only writes to its endpoint when it ends a streak.
    let counts = record.health != Health::Neutral;
    let (streak, since): (u32, Option<Millis>) = c
        .query_opt(
            &c.statement(RECORD_ATTEMPT).await?,
            &[
                &a.id,
                &a.delivery_id,
                &a.attempted_at,
                &status_code,
                &(a.duration_ms as i64),
                &a.error_kind,
                &a.error,
                &a.response_body,
                &status,
                &next_at,
                &last_error,
                &record.endpoint_id,
                &counts,
                &(record.health == Health::Success),
            ],
        )
        .await?
        .map(|r| (r.get::<_, i64>(0) as u32, r.get(1)))
        .unwrap_or((0, None));
    let mut disabled = record.disables(streak, since);
    if let Some(d) = &disabled {
        let n = c
            .execute(
                "update endpoints set enabled = 0, disabled_reason = $2, updated_at = $3
                 where id = $1 and enabled = 1",
                &[&record.endpoint_id, &d.reason, &a.attempted_at],
            )
            .await?;
        if n == 0 {
            // Already disabled (another attempt got there first): nothing new to say.
            disabled = None;
        }
    }
    Ok(Recorded { disabled })
}

/// A dedicated connection that the server closed (a restart, a failover) is opened again,
/// so that one outage does not fail every later batch.
async fn reconnected(url: &str, client: &mut Conn) -> Result<()> {
    if client.is_closed() {
        *client = Conn::new(connect(url).await?);
        tracing::info!("a dedicated PostgreSQL connection was opened again");
    }
    Ok(())
}

/// The dedupe row takes the key unless a row younger than the window holds it (a concurrent
/// writer of the same key waits for this transaction, then finds it taken); the event and its
/// deliveries are written only when it did. The outer select reads the table as it was before
/// this statement: for a duplicate, the original's id.
const INGEST: &str = "with taken as (
        insert into dedupe (scope, key, event_id, created_at) values ($1, $2, $3, $4)
        on conflict (scope, key) do update
            set event_id = excluded.event_id, created_at = excluded.created_at
            where dedupe.created_at <= $5
        returning event_id
    ), event as (
        insert into events (id, source, type, dedupe_key, body, raw, created_at)
        select $3, $1, $6, $2, $7, $8, $4 where exists (select 1 from taken)
    ), deliveries as (
        insert into deliveries (id, event_id, endpoint_id, status, next_attempt_at,
            lease_owner, lease_until, created_at, updated_at, order_key)
        select d.id, $3, d.endpoint_id, 'pending', $4, d.owner, d.until_at, $4, $4,
               d.order_key
        from unnest($9::text[], $10::text[], $11::text[], $12::bigint[], $13::text[])
            as d(id, endpoint_id, owner, until_at, order_key)
        where exists (select 1 from taken)
    )
    select exists (select 1 from taken),
           (select event_id from dedupe where scope = $1 and key = $2)";

/// Stores one event and its deliveries in one statement, unless its dedupe key is taken
/// within the window. One statement, so that a batch's ingests can be pipelined.
async fn ingest_one(c: &Conn, op: &IngestOp) -> Result<IngestOutcome> {
    let event = &op.event;
    let n = op.deliveries.len();
    let mut ids = Vec::with_capacity(n);
    let mut endpoints = Vec::with_capacity(n);
    let mut owners: Vec<Option<&str>> = Vec::with_capacity(n);
    let mut untils: Vec<Option<i64>> = Vec::with_capacity(n);
    let mut order_keys: Vec<Option<&str>> = Vec::with_capacity(n);
    for d in &op.deliveries {
        ids.push(d.id.as_str());
        endpoints.push(d.endpoint_id.as_str());
        // Ordered deliveries are not handed over: they are claimed in order.
        let handed_over = d.order_key.is_none();
        owners.push(handed_over.then_some(&*op.lease.owner));
        untils.push(handed_over.then_some(op.lease.until));
        order_keys.push(d.order_key.as_deref());
    }
    let row = c
        .query_one(
            &c.statement(INGEST).await?,
            &[
                &event.source,
                &event.dedupe_key,
                &event.id,
                &event.created_at,
                &op.dedupe_since,
                &event.event_type.as_str(),
                &&*event.body,
                &&event.raw[..],
                &ids,
                &endpoints,
                &owners,
                &untils,
                &order_keys,
            ],
        )
        .await?;
    if row.get::<_, bool>(0) {
        return Ok(IngestOutcome::Stored);
    }
    Ok(IngestOutcome::Duplicate {
        original_id: row.get::<_, Option<String>>(1).unwrap_or_default(),
    })
}

async fn insert_deliveries(
    c: &Client,
    event_id: &str,
    deliveries: &[NewDelivery],
    lease: &Lease,
    now: Millis,
) -> Result<()> {
    if deliveries.is_empty() {
        return Ok(());
    }
    // One statement for all of an event's deliveries.
    let mut ids = Vec::with_capacity(deliveries.len());
    let mut endpoints = Vec::with_capacity(deliveries.len());
    let mut owners: Vec<Option<&str>> = Vec::with_capacity(deliveries.len());
    let mut untils: Vec<Option<i64>> = Vec::with_capacity(deliveries.len());
    let mut order_keys: Vec<Option<&str>> = Vec::with_capacity(deliveries.len());
    for d in deliveries {
        ids.push(d.id.as_str());
        endpoints.push(d.endpoint_id.as_str());
        // Ordered deliveries are not handed over: they are claimed in order.
        let handed_over = d.order_key.is_none();
        owners.push(handed_over.then_some(&*lease.owner));
        untils.push(handed_over.then_some(lease.until));
        order_keys.push(d.order_key.as_deref());
    }
    c.execute(
        "insert into deliveries (id, event_id, endpoint_id, status, next_attempt_at,
             lease_owner, lease_until, created_at, updated_at, order_key)
         select id, $2, endpoint_id, 'pending', $3, owner, until_at, $3, $3, order_key
         from unnest($1::text[], $4::text[], $5::text[], $6::bigint[], $7::text[])
             as d(id, endpoint_id, owner, until_at, order_key)",
        &[
            &ids,
            &event_id,
            &now,
            &endpoints,
            &owners,
            &untils,
            &order_keys,
        ],
    )
    .await?;
    Ok(())
}

// --- row mapping -------------------------------------------------------------------------------

fn json<T: serde::de::DeserializeOwned>(row: &Row, idx: usize) -> Result<T> {
    let text: String = row.get(idx);
    serde_json::from_str(&text)
        .map_err(|e| StoreError::Database(format!("column {idx} holds bad JSON: {e}")))
}

fn to_json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

const ENDPOINT_COLUMNS: &str = "id, url, description, event_types, headers, signing, secret, \
     enabled, disabled_reason, retry_schedule, timeout_ms, created_at, updated_at, render, policy, \
     previous_secret, previous_secret_until, labels, application_id";

fn endpoint_from_row(row: &Row) -> Result<Endpoint> {
    let signing: String = row.get(5);
    let patterns: Vec<String> = json(row, 3)?;
    Ok(Endpoint {
        id: row.get(0),
        application_id: row.get(18),
        labels: json(row, 17)?,
        url: row.get(1),
        description: row.get(2),
        event_types: patterns
            .iter()
            .filter_map(|p| EventTypePattern::parse(p).ok())
            .collect(),
        headers: json(row, 4)?,
        signing: Signing::parse(&signing).unwrap_or_default(),
        secret: row.get(6),
        enabled: row.get::<_, i64>(7) != 0,
        disabled_reason: row.get(8),
        retry_schedule_ms: json(row, 9)?,
        timeout_ms: row.get::<_, i64>(10).max(0) as u64,
        created_at: row.get(11),
        updated_at: row.get(12),
        render: json(row, 13)?,
        policy: json(row, 14)?,
        previous_secret: match (
            row.get::<_, Option<String>>(15),
            row.get::<_, Option<i64>>(16),
        ) {
            (Some(secret), Some(until)) => Some((secret, until)),
            _ => None,
        },
    })
}

/// The endpoint's columns in [`ENDPOINT_COLUMNS`] order, as owned values.
struct EndpointRow {
    id: String,
    url: String,
    description: String,
    event_types: String,
    headers: String,
    signing: String,
    secret: String,
    enabled: i64,
    disabled_reason: Option<String>,
    retry_schedule: String,
    timeout_ms: i64,
    created_at: i64,
    updated_at: i64,
    render: String,
    policy: String,
    previous_secret: Option<String>,
    previous_secret_until: Option<i64>,
    labels: String,
    application_id: Option<String>,
}

impl EndpointRow {
    fn of(e: &Endpoint) -> Self {
        let patterns: Vec<&str> = e.event_types.iter().map(|p| p.as_str()).collect();
        Self {
            id: e.id.clone(),
            url: e.url.clone(),
            description: e.description.clone(),
            event_types: to_json(&patterns),
            headers: to_json(&e.headers),
            signing: e.signing.as_str().to_owned(),
            secret: e.secret.clone(),
            enabled: i64::from(e.enabled),
            disabled_reason: e.disabled_reason.clone(),
            retry_schedule: to_json(&e.retry_schedule_ms),
            timeout_ms: e.timeout_ms as i64,
            created_at: e.created_at,
            updated_at: e.updated_at,
            render: to_json(&e.render),
            policy: to_json(&e.policy),
            previous_secret: e.previous_secret.as_ref().map(|(s, _)| s.clone()),
            previous_secret_until: e.previous_secret.as_ref().map(|(_, until)| *until),
            labels: to_json(&e.labels),
            application_id: e.application_id.clone(),
        }
    }

    fn params(&self) -> [&(dyn ToSql + Sync); 19] {
        [
            &self.id,
            &self.url,
            &self.description,
            &self.event_types,
            &self.headers,
            &self.signing,
            &self.secret,
            &self.enabled,
            &self.disabled_reason,
            &self.retry_schedule,
            &self.timeout_ms,
            &self.created_at,
            &self.updated_at,
            &self.render,
            &self.policy,
            &self.previous_secret,
            &self.previous_secret_until,
            &self.labels,
            &self.application_id,
        ]
    }
}

fn source_from_row(row: &Row) -> Result<Source> {
    Ok(Source {
        id: row.get(0),
        name: row.get(1),
        spec: json(row, 2)?,
        secret: row.get(3),
        created_at: row.get(4),
        updated_at: row.get(5),
    })
}

const EVENT_COLUMNS: &str = "id, source, type, dedupe_key, body, created_at";

fn event_from_row(row: &Row) -> StoredEvent {
    StoredEvent {
        id: row.get(0),
        source: row.get(1),
        event_type: row.get(2),
        dedupe_key: row.get(3),
        body: row.get(4),
        created_at: row.get(5),
    }
}

const DELIVERY_COLUMNS: &str = "id, event_id, endpoint_id, status, attempts, next_attempt_at, \
     last_status_code, last_error, created_at, updated_at";

/// A delivery row is in the scope whose application (or null, for the hub) is `$2`.
const DELIVERY_IN_SCOPE: &str = "($2::text is null \
     or endpoint_id in (select id from endpoints where application_id = $2))";

fn delivery_from_row(row: &Row) -> Delivery {
    let status: String = row.get(3);
    let status = DeliveryStatus::parse(&status).unwrap_or(DeliveryStatus::Pending);
    let next: i64 = row.get(5);
    Delivery {
        id: row.get(0),
        event_id: row.get(1),
        endpoint_id: row.get(2),
        status,
        attempts: row.get::<_, i64>(4) as u32,
        next_attempt_at: (status == DeliveryStatus::Pending).then_some(next),
        last_status_code: row.get::<_, Option<i64>>(6).map(|c| c as u16),
        last_error: row.get(7),
        created_at: row.get(8),
        updated_at: row.get(9),
    }
}

/// Runs a list query of the delivery log.
async fn select(c: &Client, q: query::Query) -> Result<Vec<Row>> {
    let args: Vec<&(dyn ToSql + Sync)> = q
        .args
        .iter()
        .map(|a| match a {
            query::Arg::Text(t) => t as &(dyn ToSql + Sync),
            query::Arg::Int(i) => i as &(dyn ToSql + Sync),
        })
        .collect();
    Ok(c.query(&q.sql, &args).await?)
}

#[async_trait]
impl TokenStore for PgStore {
    async fn insert_token(&self, scope: Scope, token: ApiToken) -> Result<()> {
        let owner = scope
            .application_id()
            .map(str::to_owned)
            .or(token.application_id.clone());
        self.announcing(Change::Config, async {
            let access = match token.scope {
                TokenScope::Admin => "admin",
                TokenScope::ReadOnly => "read_only",
            };
            self.pool
                .get()
                .await?
                .execute(
                    "insert into api_tokens
                     (id, name, token_hash, scope, created_at, application_id, expires_at)
                 values ($1, $2, $3, $4, $5, $6, $7)",
                    &[
                        &token.id,
                        &token.name,
                        &token.hash,
                        &access,
                        &token.created_at,
                        &owner,
                        &token.expires_at,
                    ],
                )
                .await?;
            Ok(())
        })
        .await
    }

    async fn list_tokens(&self, scope: Scope) -> Result<Vec<ApiToken>> {
        let rows = self
            .pool
            .get()
            .await?
            .query(
                "select id, name, token_hash, scope, created_at, application_id, expires_at
                 from api_tokens
                 where ($1::text is null or application_id = $1) order by id",
                &[&scope.application_id()],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| ApiToken {
                id: r.get(0),
                name: r.get(1),
                hash: r.get(2),
                scope: if r.get::<_, &str>(3) == "admin" {
                    TokenScope::Admin
                } else {
                    TokenScope::ReadOnly
                },
                created_at: r.get(4),
                application_id: r.get(5),
                expires_at: r.get(6),
            })
            .collect())
    }

    async fn delete_token(&self, scope: Scope, id: &str) -> Result<bool> {
        self.announcing(Change::Config, async {
            let n = self
                .pool
                .get()
                .await?
                .execute(
                    "delete from api_tokens where id = $1
                     and ($2::text is null or application_id = $2)",
                    &[&id, &scope.application_id()],
                )
                .await?;
            Ok(n == 1)
        })
        .await
    }
}

#[async_trait]
impl EndpointStore for PgStore {
    async fn insert_endpoint(&self, scope: Scope, mut endpoint: Endpoint) -> Result<()> {
        if let Some(app) = scope.application_id() {
            endpoint.application_id = Some(app.to_owned());
        }
        self.announcing(Change::Config, async {
        let row = EndpointRow::of(&seal_endpoint(&self.cipher, endpoint));
        self.pool
            .get()
            .await?
            .execute(
                &format!(
                    "insert into endpoints ({ENDPOINT_COLUMNS})
                     values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19)"
                ),
                &row.params(),
            )
            .await?;
        Ok(())
        })
        .await
    }

    async fn update_endpoint(&self, scope: Scope, endpoint: Endpoint) -> Result<bool> {
        let app = scope.application_id();
        self.announcing(Change::Config, async {
            let row = EndpointRow::of(&seal_endpoint(&self.cipher, endpoint));
            let mut params = row.params().to_vec();
            params.remove(11); // created_at never changes
            // Nor does its owner: only matched, against the scope's application.
            params.pop();
            params.push(&app);
            let n = self
            .pool
            .get()
            .await?
            .execute(
                "update endpoints set url = $2, description = $3, event_types = $4, headers = $5,
                     signing = $6, secret = $7, enabled = $8, disabled_reason = $9,
                     retry_schedule = $10, timeout_ms = $11, updated_at = $12, render = $13,
                     policy = $14, previous_secret = $15, previous_secret_until = $16,
                     labels = $17
                 where id = $1 and deleted = 0 and ($18::text is null or application_id = $18)",
                &params,
            )
            .await?;
            Ok(n == 1)
        })
        .await
    }

    async fn delete_endpoint(&self, scope: Scope, id: &str, now: Millis) -> Result<bool> {
        let app = scope.application_id();
        self.announcing(Change::Config, async {
            self.tx(async |c: &Client| {
                let n = c
                    .execute(
                        "update endpoints set deleted = 1, enabled = 0, updated_at = $2
                     where id = $1 and deleted = 0 and ($3::text is null or application_id = $3)",
                        &[&id, &now, &app],
                    )
                    .await?;
                if n == 0 {
                    return Ok(false);
                }
                c.execute(
                    "update deliveries set status = 'cancelled', lease_owner = null,
                     lease_until = null, last_error = 'endpoint deleted', updated_at = $2
                 where endpoint_id = $1 and status = 'pending'",
                    &[&id, &now],
                )
                .await?;
                Ok(n == 1)
            })
            .await
        })
        .await
    }

    async fn list_endpoints(&self, scope: Scope) -> Result<Vec<Endpoint>> {
        let rows = self
            .pool
            .get()
            .await?
            .query(
                &format!(
                    "select {ENDPOINT_COLUMNS} from endpoints
                     where deleted = 0 and ($1::text is null or application_id = $1) order by id"
                ),
                &[&scope.application_id()],
            )
            .await?;
        rows.iter()
            .map(|r| open_endpoint(&self.cipher, endpoint_from_row(r)?))
            .collect()
    }

    async fn failing_endpoints(&self, scope: Scope) -> Result<Vec<FailureStreak>> {
        let rows = self
            .pool
            .get()
            .await?
            .query(
                "select id, failure_streak, failing_since from endpoints
                 where deleted = 0 and failure_streak > 0
                   and ($1::text is null or application_id = $1) order by id",
                &[&scope.application_id()],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| FailureStreak {
                endpoint_id: r.get(0),
                failures: r.get::<_, i64>(1) as u32,
                since: r.get(2),
            })
            .collect())
    }
}

#[async_trait]
impl SourceStore for PgStore {
    async fn insert_source(&self, _scope: Scope, source: Source) -> Result<()> {
        self.announcing(Change::Config, async {
            let secret = source.secret.as_ref().map(|s| self.cipher.seal(s));
            let spec = to_json(&source.spec);
            self.pool
                .get()
                .await?
                .execute(
                    "insert into sources (id, name, spec, secret, created_at, updated_at)
                 values ($1, $2, $3, $4, $5, $6)",
                    &[
                        &source.id,
                        &source.name,
                        &spec,
                        &secret,
                        &source.created_at,
                        &source.updated_at,
                    ],
                )
                .await?;
            Ok(())
        })
        .await
    }

    async fn update_source(&self, _scope: Scope, source: Source) -> Result<bool> {
        self.announcing(Change::Config, async {
            let secret = source.secret.as_ref().map(|s| self.cipher.seal(s));
            let spec = to_json(&source.spec);
            let n = self
                .pool
                .get()
                .await?
                .execute(
                    "update sources set name = $2, spec = $3, secret = $4, updated_at = $5
                 where id = $1",
                    &[&source.id, &source.name, &spec, &secret, &source.updated_at],
                )
                .await?;
            Ok(n == 1)
        })
        .await
    }

    async fn delete_source(&self, _scope: Scope, id: &str) -> Result<bool> {
        self.delete_config("delete from sources where id = $1", id)
            .await
    }

    async fn list_sources(&self, _scope: Scope) -> Result<Vec<Source>> {
        let rows = self
            .pool
            .get()
            .await?
            .query(
                "select id, name, spec, secret, created_at, updated_at from sources order by id",
                &[],
            )
            .await?;
        rows.iter()
            .map(|r| {
                let mut s = source_from_row(r)?;
                s.secret = s
                    .secret
                    .map(|v| self.cipher.open(&v).map_err(wrong_key))
                    .transpose()?;
                Ok(s)
            })
            .collect()
    }
}

#[async_trait]
impl ApplicationStore for PgStore {
    async fn insert_application(&self, _scope: Scope, application: Application) -> Result<()> {
        let settings = rows::application_settings(&application);
        self.announcing(Change::Config, async {
            self.pool
                .get()
                .await?
                .execute(
                    &format!(
                        "insert into applications ({APPLICATION_COLUMNS})
                         values ($1, $2, $3, $4, $5, $6)"
                    ),
                    &[
                        &application.id,
                        &application.uid,
                        &application.name,
                        &settings,
                        &application.created_at,
                        &application.updated_at,
                    ],
                )
                .await?;
            Ok(())
        })
        .await
    }

    async fn update_application(&self, scope: Scope, application: Application) -> Result<bool> {
        if !scope.includes(Some(&application.id)) {
            return Ok(false);
        }
        let settings = rows::application_settings(&application);
        self.announcing(Change::Config, async {
            let n = self
                .pool
                .get()
                .await?
                .execute(
                    "update applications set uid = $2, name = $3, settings = $4, updated_at = $5
                     where id = $1",
                    &[
                        &application.id,
                        &application.uid,
                        &application.name,
                        &settings,
                        &application.updated_at,
                    ],
                )
                .await?;
            Ok(n == 1)
        })
        .await
    }

    async fn delete_application(&self, scope: Scope, id: &str) -> Result<bool> {
        if !scope.includes(Some(id)) {
            return Ok(false);
        }
        self.announcing(Change::Config, async {
            self.tx(async |c: &Client| {
                if c.execute("delete from applications where id = $1", &[&id])
                    .await?
                    == 0
                {
                    return Ok(false);
                }
                // The events it alone was sent go with it; those others were sent too stay.
                let alone: Vec<String> = c
                    .query(
                        "select distinct d.event_id from deliveries d
                         join endpoints o on o.id = d.endpoint_id
                         where o.application_id = $1 and not exists (
                             select 1 from deliveries d2 join endpoints o2 on o2.id = d2.endpoint_id
                             where d2.event_id = d.event_id
                                 and (o2.application_id is null or o2.application_id <> $1))",
                        &[&id],
                    )
                    .await?
                    .iter()
                    .map(|r| r.get(0))
                    .collect();
                c.execute(
                    "delete from attempts where delivery_id in (
                         select d.id from deliveries d join endpoints o on o.id = d.endpoint_id
                         where o.application_id = $1)",
                    &[&id],
                )
                .await?;
                c.execute(
                    "delete from deliveries where endpoint_id in
                         (select id from endpoints where application_id = $1)",
                    &[&id],
                )
                .await?;
                c.execute("delete from dedupe where event_id = any($1)", &[&alone])
                    .await?;
                c.execute("delete from events where id = any($1)", &[&alone])
                    .await?;
                c.execute("delete from endpoints where application_id = $1", &[&id])
                    .await?;
                c.execute("delete from api_tokens where application_id = $1", &[&id])
                    .await?;
                c.execute("delete from portal_links where application_id = $1", &[&id])
                    .await?;
                c.execute("delete from quota_counts where application_id = $1", &[&id])
                    .await?;
                Ok(true)
            })
            .await
        })
        .await
    }

    async fn insert_portal_link(&self, _scope: Scope, link: PortalLink) -> Result<()> {
        self.pool
            .get()
            .await?
            .execute(
                "insert into portal_links
                     (id, application_id, token_hash, read_only, expires_at, created_at)
                 values ($1, $2, $3, $4, $5, $6)",
                &[
                    &link.id,
                    &link.application_id,
                    &link.token_hash,
                    &i64::from(link.read_only),
                    &link.expires_at,
                    &link.created_at,
                ],
            )
            .await?;
        Ok(())
    }

    async fn redeem_portal_link(
        &self,
        token_hash: &str,
        now: Millis,
    ) -> Result<Option<PortalLink>> {
        let row = self
            .pool
            .get()
            .await?
            .query_opt(
                "update portal_links set used_at = $2
                 where token_hash = $1 and used_at is null and expires_at > $2
                 returning id, application_id, token_hash, read_only, expires_at, used_at,
                     created_at",
                &[&token_hash, &now],
            )
            .await?;
        Ok(row.map(|r| PortalLink {
            id: r.get(0),
            application_id: r.get(1),
            token_hash: r.get(2),
            read_only: r.get::<_, i64>(3) != 0,
            expires_at: r.get(4),
            used_at: r.get(5),
            created_at: r.get(6),
        }))
    }

    async fn prune_application(
        &self,
        application_id: &str,
        before: Millis,
        batch: u32,
    ) -> Result<u64> {
        self.tx(async |c: &Client| {
            let old: Vec<(String, String)> = c
                .query(
                    "select d.id, d.event_id from deliveries d
                     join endpoints o on o.id = d.endpoint_id
                     where o.application_id = $1 and d.created_at < $2 and d.status <> 'pending'
                     limit $3
                     for update of d skip locked",
                    &[&application_id, &before, &i64::from(batch)],
                )
                .await?
                .iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect();
            if old.is_empty() {
                return Ok(0);
            }
            let (ids, events): (Vec<String>, Vec<String>) = old.into_iter().unzip();
            c.execute("delete from attempts where delivery_id = any($1)", &[&ids])
                .await?;
            c.execute("delete from deliveries where id = any($1)", &[&ids])
                .await?;
            let left_alone = "select e from unnest($1::text[]) e
                 where not exists (select 1 from deliveries d where d.event_id = e)";
            c.execute(
                &format!("delete from dedupe where event_id in ({left_alone})"),
                &[&events],
            )
            .await?;
            c.execute(
                &format!("delete from events where id in ({left_alone})"),
                &[&events],
            )
            .await?;
            Ok(ids.len() as u64)
        })
        .await
    }

    async fn events_sent_since(&self, application_id: &str, since: Millis) -> Result<u64> {
        let floor = crate::domain::id_floor(prefix::DELIVERY, since);
        let row = self
            .pool
            .get()
            .await?
            .query_one(
                "select count(distinct d.event_id) from endpoints o
                 join deliveries d on d.endpoint_id = o.id and d.id >= $2
                 where o.application_id = $1",
                &[&application_id, &floor],
            )
            .await?;
        Ok(row.get::<_, i64>(0) as u64)
    }

    async fn prune_expired(&self, now: Millis) -> Result<u64> {
        let yesterday = now.div_euclid(86_400_000) - 1;
        self.announcing(Change::Config, async {
            self.tx(async |c: &Client| {
                let links = c
                    .execute("delete from portal_links where expires_at <= $1", &[&now])
                    .await?;
                let sessions = c
                    .execute("delete from api_tokens where expires_at <= $1", &[&now])
                    .await?;
                let counts = c
                    .execute("delete from quota_counts where day < $1", &[&yesterday])
                    .await?;
                Ok(links + sessions + counts)
            })
            .await
        })
        .await
    }

    async fn expire_portal_access(&self, scope: Scope, application_id: &str) -> Result<u64> {
        if !scope.includes(Some(application_id)) {
            return Ok(0);
        }
        self.announcing(Change::Config, async {
            self.tx(async |c: &Client| {
                let links = c
                    .execute(
                        "delete from portal_links where application_id = $1",
                        &[&application_id],
                    )
                    .await?;
                let sessions = c
                    .execute(
                        "delete from api_tokens
                         where application_id = $1 and expires_at is not null",
                        &[&application_id],
                    )
                    .await?;
                Ok(links + sessions)
            })
            .await
        })
        .await
    }

    async fn list_applications(&self, scope: Scope) -> Result<Vec<Application>> {
        let rows = self
            .pool
            .get()
            .await?
            .query(
                &format!(
                    "select {APPLICATION_COLUMNS} from applications
                     where ($1::text is null or id = $1) order by id"
                ),
                &[&scope.application_id()],
            )
            .await?;
        rows.iter()
            .map(|r| {
                rows::application(
                    r.get(0),
                    r.get(1),
                    r.get(2),
                    r.get::<_, &str>(3),
                    r.get(4),
                    r.get(5),
                )
            })
            .collect()
    }
}

#[async_trait]
impl AccountStore for PgStore {
    async fn insert_account(&self, _scope: Scope, account: Account) -> Result<()> {
        let row = AccountRow::of(&account, &self.cipher);
        self.announcing(Change::Config, async {
            self.pool
                .get()
                .await?
                .execute(
                    &format!(
                        "insert into accounts ({ACCOUNT_COLUMNS}) values ($1, $2, $3, $4, $5, $6, $7)"
                    ),
                    &[
                        &row.id,
                        &row.name,
                        &row.venue,
                        &row.settings,
                        &row.halted,
                        &row.created_at,
                        &row.updated_at,
                    ],
                )
                .await?;
            Ok(())
        })
        .await
    }

    async fn update_account(&self, _scope: Scope, account: Account) -> Result<bool> {
        let row = AccountRow::of(&account, &self.cipher);
        self.announcing(Change::Config, async {
            let n = self
                .pool
                .get()
                .await?
                .execute(
                    "update accounts set name = $2, venue = $3, settings = $4, halted = $5,
                     updated_at = $6 where id = $1",
                    &[
                        &row.id,
                        &row.name,
                        &row.venue,
                        &row.settings,
                        &row.halted,
                        &row.updated_at,
                    ],
                )
                .await?;
            Ok(n == 1)
        })
        .await
    }

    async fn delete_account(&self, _scope: Scope, id: &str) -> Result<bool> {
        self.announcing(Change::Config, async {
            let n = self
                .pool
                .get()
                .await?
                .execute("delete from accounts where id = $1", &[&id])
                .await?;
            Ok(n == 1)
        })
        .await
    }

    async fn list_accounts(&self, _scope: Scope) -> Result<Vec<Account>> {
        let rows = self
            .pool
            .get()
            .await?
            .query(
                &format!("select {ACCOUNT_COLUMNS} from accounts order by id"),
                &[],
            )
            .await?;
        rows.iter()
            .map(|r| account_row(r).into_account(&self.cipher))
            .collect()
    }

    async fn account(&self, _scope: Scope, id: &str) -> Result<Option<Account>> {
        let c = self.pool.get().await?;
        let row = c
            .query_opt(&c.statement(ACCOUNT_BY_ID).await?, &[&id])
            .await?;
        row.map(|r| account_row(&r).into_account(&self.cipher))
            .transpose()
    }
}

fn account_row(r: &Row) -> AccountRow {
    AccountRow {
        id: r.get(0),
        name: r.get(1),
        venue: r.get(2),
        settings: r.get(3),
        halted: r.get(4),
        created_at: r.get(5),
        updated_at: r.get(6),
    }
}

/// An order's columns in [`ORDER_COLUMNS`]' order, as statement parameters.
fn order_params(row: &OrderRow) -> [&(dyn ToSql + Sync); 12] {
    [
        &row.id,
        &row.client_order_id,
        &row.account_id,
        &row.endpoint_id,
        &row.delivery_id,
        &row.event_id,
        &row.request,
        &row.status,
        &row.fill,
        &row.reason,
        &row.created_at,
        &row.updated_at,
    ]
}

fn order_row(r: &Row) -> OrderRow {
    OrderRow {
        id: r.get(0),
        client_order_id: r.get(1),
        account_id: r.get(2),
        endpoint_id: r.get(3),
        delivery_id: r.get(4),
        event_id: r.get(5),
        request: r.get(6),
        status: r.get(7),
        fill: r.get(8),
        reason: r.get(9),
        created_at: r.get(10),
        updated_at: r.get(11),
    }
}

/// The statements of a paper order's path, prepared once per pooled connection: an account's
/// orders go one at a time, each holding the account while these run, so every round trip
/// here is one in the path of the account's next order.
const ACCOUNT_BY_ID: &str = concat!(
    "select ",
    account_columns!(),
    " from accounts where id = $1"
);
const PAPER_BOOK: &str = "select book from paper_books where account_id = $1";
const ORDER_BY_CLIENT_ID: &str = concat!(
    "select ",
    order_columns!(),
    " from orders where client_order_id = $1"
);
const ORDER_STATUS_LOCKED: &str = "select status from orders where client_order_id = $1 for update";
/// The book, unless another node wrote a later one meanwhile (then nothing is written).
const WRITE_BOOK: &str = "insert into paper_books (account_id, book, revision, updated_at)
     values ($1, $2, $3, $4)
     on conflict (account_id) do update set book = excluded.book,
     revision = excluded.revision, updated_at = excluded.updated_at
     where paper_books.revision = excluded.revision - 1";
const WRITE_ORDER: &str = concat!(
    "insert into orders (",
    order_columns!(),
    ") values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
     on conflict (client_order_id) do update set request = excluded.request,
     status = excluded.status, fill = excluded.fill,
     reason = excluded.reason, updated_at = excluded.updated_at"
);

#[async_trait]
impl OrderStore for PgStore {
    async fn record_order(&self, order: Order) -> Result<Order> {
        let row = OrderRow::of(&order);
        let c = self.pool.get().await?;
        c.execute(
            &format!(
                "insert into orders ({ORDER_COLUMNS})
                 values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
                 on conflict (client_order_id) do nothing"
            ),
            &order_params(&row),
        )
        .await?;
        let stored = c
            .query_one(
                &c.statement(ORDER_BY_CLIENT_ID).await?,
                &[&row.client_order_id],
            )
            .await?;
        order_row(&stored).into_order()
    }

    async fn paper_book(&self, account_id: &str) -> Result<Option<PaperBook>> {
        let c = self.pool.get().await?;
        let row = c
            .query_opt(&c.statement(PAPER_BOOK).await?, &[&account_id])
            .await?;
        row.map(|r| super::rows::book_from_json(account_id, r.get(0)))
            .transpose()
    }

    async fn settle(&self, settlement: Settlement) -> Result<bool> {
        let intent = settlement.intent.as_ref().map(OrderRow::of);
        let fresh = settlement.fresh;
        let others: Vec<OrderRow> = settlement.others.iter().map(OrderRow::of).collect();
        let account = settlement.account_id;
        let book = settlement
            .book
            .map(|b| (account, super::rows::book_json(&b), b.revision as i64));
        let c = self.pool.get().await?;
        let (status_of, write_book, write_order) = (
            c.statement(ORDER_STATUS_LOCKED).await?,
            c.statement(WRITE_BOOK).await?,
            c.statement(WRITE_ORDER).await?,
        );
        let now = crate::domain::now_ms();
        // The transaction's statements go out together, in one round trip (the client sends
        // requests made at once without waiting for each answer); then its commit, or its
        // rollback when the order was settled already or the book moved on.
        let status = async {
            match &intent {
                Some(row) => c
                    .query_opt(&status_of, &[&row.client_order_id])
                    .await
                    .map(|r| Some(r.map(|r| r.get::<_, String>(0)))),
                None => Ok(None),
            }
        };
        let book_written = async {
            match &book {
                Some((account, json, revision)) => c
                    .execute(&write_book, &[account, json, revision, &now])
                    .await
                    .map(|n| n == 1),
                None => Ok(true),
            }
        };
        let rows: Vec<_> = intent.iter().chain(&others).map(order_params).collect();
        let orders = futures_util::future::try_join_all(
            rows.iter().map(|params| c.execute(&write_order, params)),
        );
        let (begun, status, book_written, orders) =
            tokio::join!(c.batch_execute("begin"), status, book_written, orders);
        let written = (|| -> Result<bool> {
            begun?;
            let expected = if fresh { None } else { Some("intent") };
            let settled_already = status?.is_some_and(|found| found.as_deref() != expected);
            let moved_on = !book_written?;
            orders?;
            Ok(!settled_already && !moved_on)
        })();
        match written {
            Ok(true) => {
                c.batch_execute("commit").await?;
                Ok(true)
            }
            outcome => {
                let _ = c.batch_execute("rollback").await;
                outcome
            }
        }
    }

    async fn order(&self, client_order_id: &str) -> Result<Option<Order>> {
        let c = self.pool.get().await?;
        let row = c
            .query_opt(&c.statement(ORDER_BY_CLIENT_ID).await?, &[&client_order_id])
            .await?;
        row.map(|r| order_row(&r).into_order()).transpose()
    }

    async fn orders_in(
        &self,
        account_id: &str,
        status: crate::model::OrderStatus,
    ) -> Result<Vec<Order>> {
        // The status is written into the statement, so that its partial index is used.
        let rows = self
            .pool
            .get()
            .await?
            .query(
                &format!(
                    "select {ORDER_COLUMNS} from orders
                     where account_id = $1 and status = '{}' order by id",
                    status.as_str()
                ),
                &[&account_id],
            )
            .await?;
        rows.iter().map(|r| order_row(r).into_order()).collect()
    }

    async fn list_orders(&self, _scope: Scope, account_id: &str, limit: u32) -> Result<Vec<Order>> {
        let rows = self
            .pool
            .get()
            .await?
            .query(
                &format!(
                    "select {ORDER_COLUMNS} from orders where account_id = $1
                     order by id desc limit $2"
                ),
                &[&account_id, &i64::from(limit)],
            )
            .await?;
        rows.iter().map(|r| order_row(r).into_order()).collect()
    }
}

#[async_trait]
impl EventLog for PgStore {
    async fn minute_counts(
        &self,
        scope: Scope,
        since: Millis,
        minutes: usize,
    ) -> Result<MinuteCounts> {
        let c = self.pool.get().await?;
        let floor = crate::domain::id_floor(prefix::EVENT, since);
        let app = scope.application_id();
        let mut out = MinuteCounts::empty(minutes);
        let events = c
            .query(
                &format!(
                    "select (created_at - $3) / 60000, count(*) from events
                     where id >= $1 and ($2::text is null or {}) group by 1",
                    query::within(Dialect::Postgres, Owned::ByEvent("id"), 2)
                ),
                &[&floor, &app, &since],
            )
            .await?;
        for r in &events {
            if let Some(m) = minute_of(r.get::<_, i64>(0) * 60_000 + since, since, minutes) {
                out.events[m] += r.get::<_, i64>(1) as u64;
            }
        }
        let deliveries = c
            .query(
                &format!(
                    "select (updated_at - $1) / 60000, status = 'succeeded', count(*)
                     from deliveries
                     where updated_at >= $1 and status in ('succeeded', 'failed')
                       and ($2::text is null or {}) group by 1, 2",
                    query::within(Dialect::Postgres, Owned::ByEndpoint("endpoint_id"), 2)
                ),
                &[&since, &app],
            )
            .await?;
        for r in &deliveries {
            if let Some(m) = minute_of(r.get::<_, i64>(0) * 60_000 + since, since, minutes) {
                let n = r.get::<_, i64>(2) as u64;
                if r.get::<_, bool>(1) {
                    out.succeeded[m] += n;
                } else {
                    out.failed[m] += n;
                }
            }
        }
        Ok(out)
    }

    async fn stats(&self, scope: Scope, since: Millis, latency_sample: u32) -> Result<StoreStats> {
        let c = self.pool.get().await?;
        let floor = crate::domain::id_floor(prefix::EVENT, since);
        let app = scope.application_id();
        let events_by_source = c
            .query(
                &format!(
                    "select source, count(*) from events
                     where id >= $1 and ($2::text is null or {}) group by source",
                    query::within(Dialect::Postgres, Owned::ByEvent("id"), 2)
                ),
                &[&floor, &app],
            )
            .await?
            .iter()
            .map(|r| (r.get(0), r.get::<_, i64>(1) as u64))
            .collect();
        let deliveries = c
            .query(
                &format!(
                    "select endpoint_id, status, count(*), sum(greatest(attempts - 1, 0))::bigint
                     from deliveries where created_at >= $1 and ($2::text is null or {})
                     group by endpoint_id, status",
                    query::within(Dialect::Postgres, Owned::ByEndpoint("endpoint_id"), 2)
                ),
                &[&since, &app],
            )
            .await?
            .iter()
            .map(|r| {
                (
                    r.get(0),
                    r.get(1),
                    r.get::<_, i64>(2) as u64,
                    r.get::<_, i64>(3) as u64,
                )
            })
            .collect();
        let latencies = c
            .query(
                &format!(
                    // The newest first by id (ids grow with time, and are the key): the
                    // sample is found without sorting every delivery of the window.
                    "select d.endpoint_id, d.updated_at - e.created_at
                     from (select endpoint_id, updated_at, event_id from deliveries d
                           where d.status = 'succeeded' and d.created_at >= $1
                             and ($3::text is null or {})
                           order by d.id desc limit $2) d
                     join events e on e.id = d.event_id",
                    query::within(Dialect::Postgres, Owned::ByEndpoint("d.endpoint_id"), 3)
                ),
                &[&since, &i64::from(latency_sample), &app],
            )
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        Ok(StoreStats {
            events_by_source,
            deliveries,
            latencies,
        })
    }

    async fn ingest(
        &self,
        event: NewEvent,
        deliveries: Vec<NewDelivery>,
        lease: Lease,
        dedupe_since: Millis,
    ) -> Result<IngestOutcome> {
        let sender = self
            .ingests
            .lock()
            .expect("committer handle lock")
            .clone()
            .ok_or(StoreError::Closed)?;
        let (reply, answer) = oneshot::channel();
        sender
            .send(Queued {
                op: IngestOp {
                    event,
                    deliveries,
                    lease,
                    dedupe_since,
                },
                reply,
            })
            .await
            .map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    async fn events_missing_delivery(
        &self,
        endpoint_id: &str,
        since: Millis,
        after: Option<String>,
        limit: u32,
    ) -> Result<Vec<StoredEvent>> {
        let floor = crate::domain::id_floor(prefix::EVENT, since);
        let after = after.unwrap_or_default();
        let rows = self
            .pool
            .get()
            .await?
            .query(
                &format!(
                    "select {EVENT_COLUMNS} from events e
                     where e.id >= $2 and e.id > $3
                       and not exists (select 1 from deliveries d
                                       where d.event_id = e.id and d.endpoint_id = $1)
                     order by e.id limit $4"
                ),
                &[&endpoint_id, &floor, &after, &i64::from(limit)],
            )
            .await?;
        Ok(rows.iter().map(event_from_row).collect())
    }

    async fn prune(&self, before: Millis, batch: u32) -> Result<u64> {
        let floor = crate::domain::id_floor(prefix::EVENT, before);
        self.tx(async |c: &Client| {
            let old: Vec<String> = c
                .query(
                    "select id from events e
                     where id < $1 and not exists (
                         select 1 from deliveries d where d.event_id = e.id and d.status = 'pending')
                     order by id limit $2
                     for update skip locked",
                    &[&floor, &i64::from(batch)],
                )
                .await?
                .iter()
                .map(|r| r.get(0))
                .collect();
            if old.is_empty() {
                return Ok(0);
            }
            c.execute(
                "delete from attempts where delivery_id in
                     (select id from deliveries where event_id = any($1))",
                &[&old],
            )
            .await?;
            c.execute("delete from deliveries where event_id = any($1)", &[&old])
                .await?;
            c.execute("delete from dedupe where event_id = any($1)", &[&old])
                .await?;
            c.execute("delete from events where id = any($1)", &[&old])
                .await?;
            Ok(old.len() as u64)
        })
        .await
    }

    async fn list_events(&self, scope: Scope, filter: EventFilter) -> Result<Vec<StoredEvent>> {
        let q = query::events(Dialect::Postgres, EVENT_COLUMNS, &scope, filter);
        let c = self.pool.get().await?;
        Ok(select(&c, q).await?.iter().map(event_from_row).collect())
    }

    async fn get_event(&self, scope: Scope, id: &str) -> Result<Option<StoredEvent>> {
        let row = self
            .pool
            .get()
            .await?
            .query_opt(
                &format!(
                    "select {EVENT_COLUMNS} from events where id = $1 and ($2::text is null or {})",
                    query::within(Dialect::Postgres, Owned::ByEvent("id"), 2)
                ),
                &[&id, &scope.application_id()],
            )
            .await?;
        Ok(row.as_ref().map(event_from_row))
    }

    async fn event_raw(&self, scope: Scope, id: &str) -> Result<Option<bytes::Bytes>> {
        let row = self
            .pool
            .get()
            .await?
            .query_opt(
                &format!(
                    "select raw from events where id = $1 and ($2::text is null or {})",
                    query::within(Dialect::Postgres, Owned::ByEvent("id"), 2)
                ),
                &[&id, &scope.application_id()],
            )
            .await?;
        Ok(row.map(|r| bytes::Bytes::from(r.get::<_, Vec<u8>>(0))))
    }
}

/// Extends a node's leases on the deliveries it holds. The ids are joined as a set
/// (`in (select unnest(..))`), not tested as `id = any($1)`: a plan that reads the table some
/// other way (as one made from an empty table's statistics does) tests every row against the
/// whole array. Renewing 20,000 of 200,000 deliveries with scans made costlier than they
/// are: 9.7 s as `any($1)` (a scan, each row against the array), 0.4 s as a set (looked up
/// by id). Releases and deferrals, which name thousands too, likewise.
const RENEW: &str = "update deliveries set lease_until = $3
    where id in (select id from deliveries
                 where id in (select unnest($1::text[])) and lease_owner = $2
                   and status = 'pending'
                 for update skip locked)";

/// Whether the endpoint of the delivery `alias` is enabled and not paused at `$1`.
fn sendable(alias: &str) -> String {
    format!(
        "exists (select 1 from endpoints ep where ep.id = {alias}.endpoint_id
                 and ep.enabled = 1 and ep.deleted = 0)
         and not exists (select 1 from endpoint_pauses ps
                         where ps.endpoint_id = {alias}.endpoint_id and ps.until_at > $1)"
    )
}

/// Whether the delivery `d` may be claimed at `$1` as far as its own row and its ordering key
/// say, `gone` being the nodes no longer alive.
const CLAIMABLE: &str = "d.status = 'pending' and d.next_attempt_at <= $1
    and (d.lease_owner is null or d.lease_until <= $1
         or d.lease_owner in (select id from gone))
    -- An ordered delivery goes when none of its key is before it, nor being sent: one
    -- stored a moment later with a lower id (its request was slower) waits for the one
    -- claimed before it was there.
    and (d.order_key is null or (
        not exists (select 1 from deliveries p
                    where p.order_key = d.order_key and p.status = 'pending'
                      and p.id < d.id)
        and not exists (select 1 from deliveries p
                        where p.order_key = d.order_key and p.status = 'pending'
                          and p.lease_owner is not null and p.lease_until > $1
                          and p.lease_owner not in (select id from gone))))";

/// The distinct values of `column` among pending deliveries, as the recursive query `name`
/// (`name.alias`, ending with a null), found by skipping through the column's index: one
/// look-up per value, however many deliveries share it.
fn skip_scan(name: &str, alias: &str, column: &str) -> String {
    format!(
        "{name}({alias}) as (
            (select {column} from deliveries
             where status = 'pending' and {column} is not null
             order by {column} limit 1)
            union all
            select (select {column} from deliveries
                    where status = 'pending' and {column} > {name}.{alias}
                    order by {column} limit 1)
            from {name} where {name}.{alias} is not null
        )"
    )
}

/// Claims due deliveries for a node; rows another node is claiming at this moment are skipped,
/// not waited for.
static CLAIM: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    let sendable_u = sendable("u");
    let owners = skip_scan("owners", "id", "lease_owner");
    let keys = skip_scan("keys", "k", "order_key");
    format!(
        "with recursive
        -- The nodes holding pending work (a few, however many deliveries they hold)...
        {owners}, gone as (
            -- ...of which those not alive: silent, stopped, or never heard of.
            select id from owners where id is not null
            and not exists (select 1 from nodes n where n.id = owners.id
                            and n.heartbeat_at > {DB_NOW_MS} - $5)
        ),
        -- The ordering keys with pending work (a few, however long their backlogs).
        {keys}, candidates as (
            -- What can be claimed, read through small indexes, each kind at most as
            -- much as the claim may take, in the order it would take them: work
            -- nobody holds (of endpoints without ordering; of the others, the first
            -- of each key), leases that have ended, and the work of nodes that are
            -- gone; never the (possibly 100,000) deliveries live nodes hold, nor a
            -- key's backlog. Work of a disabled or paused endpoint is passed over
            -- here, so that its backlog cannot fill the list.
            select c.t
            from (select distinct u.t from unnest(array(
                (select u.ctid from deliveries u
                 where u.status = 'pending' and u.lease_owner is null
                   and u.order_key is null and u.next_attempt_at <= $1
                   and {sendable_u}
                 order by u.next_attempt_at limit $2)
                union all
                select h.t from keys
                cross join lateral (
                    select u.ctid as t, u.endpoint_id from deliveries u
                    where u.status = 'pending' and u.order_key = keys.k
                    order by u.id limit 1) h
                -- Its endpoint looked up by id for each key's first delivery (a lateral
                -- query the planner cannot fold into a join: planned on the statistics of
                -- an empty table, the join walked every key for each endpoint, 1,000 x
                -- 1,000 look-ups for 1,000 followers).
                cross join lateral (
                    select 1 from endpoints ep where ep.id = h.endpoint_id
                    and ep.enabled = 1 and ep.deleted = 0 offset 0) enabled
                where keys.k is not null
                  and not exists (select 1 from endpoint_pauses ps
                                  where ps.endpoint_id = h.endpoint_id and ps.until_at > $1)
                union all
                (select u.ctid from deliveries u
                 where u.status = 'pending' and u.lease_owner is not null
                   and u.lease_until <= $1 and {sendable_u}
                 order by u.lease_until limit $2)
                union all
                (select u.ctid from deliveries u
                 where u.status = 'pending' and u.lease_owner in (select id from gone)
                   and {sendable_u}
                 limit $2))) as u(t)) c
            -- Each read by where its row is (a lateral query the planner cannot fold
            -- into a join, on the row's address, which no plan reads any other way):
            -- plans made on an empty table's statistics read `d.id = any(array)`, and
            -- even `id = c.id`, by walking every pending delivery for each candidate.
            cross join lateral (select * from deliveries where ctid = c.t offset 0) d
            where {CLAIMABLE}
            order by d.next_attempt_at
            limit $2
        ), due as (
            -- Locked one by one, then checked again: a row another node claimed since
            -- is read as it now is and must no longer qualify.
            -- (A row updated since has moved: it no longer matches its address and is
            -- skipped, to be claimed, if it still may be, by the next claim.)
            select d.id from candidates c
            cross join lateral (
                select * from deliveries where ctid = c.t for update skip locked) d
            where {CLAIMABLE}
        ), leased as (
            update deliveries set lease_owner = $3, lease_until = $4
            from due where deliveries.id = due.id
            returning deliveries.id, deliveries.event_id, deliveries.endpoint_id,
                      deliveries.tries, deliveries.next_attempt_at
        )
        select l.id, l.event_id, l.endpoint_id, ev.type, ev.body, l.tries, ev.created_at
        from leased l join events ev on ev.id = l.event_id
        order by l.next_attempt_at"
    )
});

#[async_trait]
impl DeliveryQueue for PgStore {
    async fn claim_due(&self, now: Millis, limit: u32, lease: Lease) -> Result<Vec<DeliveryJob>> {
        let c = self.pool.get().await?;
        let rows = c
            .query(
                &c.statement(&CLAIM).await?,
                &[
                    &now,
                    &i64::from(limit),
                    &&*lease.owner,
                    &lease.until,
                    &SILENT_FOR_MS,
                ],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| DeliveryJob {
                delivery_id: r.get(0),
                event_id: r.get(1),
                endpoint_id: r.get(2),
                event_type: r.get(3),
                body: Arc::from(r.get::<_, &str>(4)),
                tries: r.get::<_, i64>(5) as u32,
                event_created_at: r.get(6),
            })
            .collect())
    }

    async fn release(&self, owner: &str, delivery_ids: Vec<String>) -> Result<()> {
        self.announcing(Change::Work, async {
            if delivery_ids.is_empty() {
                return Ok(());
            }
            self.pool
                .get()
                .await?
                .execute(
                    "update deliveries set lease_owner = null, lease_until = null
                 where id in (select unnest($1::text[])) and lease_owner = $2",
                    &[&delivery_ids, &owner],
                )
                .await?;
            Ok(())
        })
        .await
    }

    async fn renew(&self, owner: &str, delivery_ids: Vec<String>, until: Millis) -> Result<()> {
        if delivery_ids.is_empty() {
            return Ok(());
        }
        // A row locked by another writer is skipped, not waited for: it is this node's own
        // attempt being recorded (its lease ends with it) or work being claimed. Waiting
        // would lock rows in another order than the attempt recorder's group and deadlock
        // with it, stalling every delivery for the server's deadlock timeout.
        let c = self.pool.get().await?;
        c.execute(&c.statement(RENEW).await?, &[&delivery_ids, &owner, &until])
            .await?;
        Ok(())
    }

    async fn release_retries(&self, endpoint_id: &str, now: Millis) -> Result<u64> {
        self.announcing(Change::Work, async {
            Ok(self
                .pool
                .get()
                .await?
                .execute(
                    "update deliveries set next_attempt_at = $2
                 where status = 'pending' and next_attempt_at > $2 and endpoint_id = $1",
                    &[&endpoint_id, &now],
                )
                .await?)
        })
        .await
    }

    async fn requeue_failed(&self, endpoint_id: &str, since: Millis, now: Millis) -> Result<u64> {
        self.announcing(Change::Work, async {
            Ok(self
                .pool
                .get()
                .await?
                .execute(
                    "update deliveries set status = 'pending', tries = 0, next_attempt_at = $3,
                     lease_owner = null, lease_until = null, updated_at = $3
                 where endpoint_id = $1 and status in ('failed', 'expired') and created_at >= $2",
                    &[&endpoint_id, &since, &now],
                )
                .await?)
        })
        .await
    }

    async fn changed_since(&self, endpoint_id: &str, since: Millis) -> Result<Vec<(String, u64)>> {
        let rows = self
            .pool
            .get()
            .await?
            .query(
                "select status, count(*) from deliveries
                 where endpoint_id = $1 and updated_at >= $2 group by status",
                &[&endpoint_id, &since],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| (r.get(0), r.get::<_, i64>(1) as u64))
            .collect())
    }

    async fn defer(&self, owner: &str, delivery_ids: Vec<String>, until: Millis) -> Result<()> {
        if delivery_ids.is_empty() {
            return Ok(());
        }
        self.pool
            .get()
            .await?
            .execute(
                "update deliveries set lease_owner = null, lease_until = null,
                     next_attempt_at = greatest(next_attempt_at, $2)
                 where id in (select unnest($1::text[])) and status = 'pending'
                   and lease_owner = $3",
                &[&delivery_ids, &until, &owner],
            )
            .await?;
        Ok(())
    }

    async fn record_attempt(&self, record: AttemptRecord) -> Result<Recorded> {
        let sender = self.records.lock().expect("recorder handle lock").clone();
        let Some(sender) = sender else {
            // Closing: recorded on its own.
            let c = self.pool.get().await?;
            return in_transaction(&c, async |_: &Client| record_one(&c, &record).await).await;
        };
        let (reply, answer) = oneshot::channel();
        sender
            .send(Queued { op: record, reply })
            .await
            .map_err(|_| StoreError::Database("the attempt recorder has stopped".into()))?;
        answer
            .await
            .map_err(|_| StoreError::Database("the attempt recorder has stopped".into()))?
    }

    async fn list_deliveries(&self, scope: Scope, filter: DeliveryFilter) -> Result<Vec<Delivery>> {
        let q = query::deliveries(Dialect::Postgres, DELIVERY_COLUMNS, &scope, filter);
        let c = self.pool.get().await?;
        Ok(select(&c, q).await?.iter().map(delivery_from_row).collect())
    }

    async fn get_delivery(&self, scope: Scope, id: &str) -> Result<Option<Delivery>> {
        let row = self
            .pool
            .get()
            .await?
            .query_opt(
                &format!(
                    "select {DELIVERY_COLUMNS} from deliveries where id = $1 and {DELIVERY_IN_SCOPE}"
                ),
                &[&id, &scope.application_id()],
            )
            .await?;
        Ok(row.as_ref().map(delivery_from_row))
    }

    async fn list_attempts(&self, scope: Scope, delivery_id: &str) -> Result<Vec<Attempt>> {
        let rows = self
            .pool
            .get()
            .await?
            .query(
                &format!(
                    "select id, delivery_id, attempted_at, status_code, duration_ms, error_kind,
                            error, response_body
                     from attempts where delivery_id = $1
                         and delivery_id in (select id from deliveries where {DELIVERY_IN_SCOPE})
                     order by id"
                ),
                &[&delivery_id, &scope.application_id()],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| Attempt {
                id: r.get(0),
                delivery_id: r.get(1),
                attempted_at: r.get(2),
                status_code: r.get::<_, Option<i64>>(3).map(|c| c as u16),
                duration_ms: r.get::<_, i64>(4) as u64,
                error_kind: r.get(5),
                error: r.get(6),
                response_body: r.get(7),
            })
            .collect())
    }

    async fn retry_delivery(
        &self,
        scope: Scope,
        id: &str,
        now: Millis,
    ) -> Result<Option<Delivery>> {
        let app = scope.application_id();
        self.announcing(Change::Work, async {
            self.tx(async |c: &Client| {
                let found = c
                    .query_opt(
                        &format!("select 1 from deliveries where id = $1 and {DELIVERY_IN_SCOPE}"),
                        &[&id, &app],
                    )
                    .await?;
                if found.is_none() {
                    return Ok(None);
                }
                // A delivery that is being attempted right now (leased) is left alone.
                c.execute(
                    "update deliveries set status = 'pending', tries = 0, next_attempt_at = $2,
                     updated_at = $2
                 where id = $1 and (lease_until is null or lease_until <= $2)",
                    &[&id, &now],
                )
                .await?;
                let row = c
                    .query_opt(
                        &format!("select {DELIVERY_COLUMNS} from deliveries where id = $1"),
                        &[&id],
                    )
                    .await?;
                Ok(row.as_ref().map(delivery_from_row))
            })
            .await
        })
        .await
    }

    async fn add_deliveries(
        &self,
        event_id: &str,
        deliveries: Vec<NewDelivery>,
        lease: Lease,
    ) -> Result<()> {
        self.announcing(Change::Work, async {
            let c = self.pool.get().await?;
            insert_deliveries(&c, event_id, &deliveries, &lease, crate::domain::now_ms()).await
        })
        .await
    }

    fn shares_limits(&self) -> bool {
        true
    }

    async fn take_token(
        &self,
        endpoint_id: &str,
        limit: RateLimit,
        now: Millis,
    ) -> Result<std::result::Result<(), u64>> {
        // The bucket refills continuously at count/per_ms and starts full; one row per
        // endpoint, updated atomically, so every node draws from the same bucket.
        let cap = f64::from(limit.count);
        let rate = cap / limit.per_ms as f64;
        let row = self
            .pool
            .get()
            .await?
            .query_one(
                "insert into rate_buckets as b (endpoint_id, tokens, at, taken)
                 values ($1, $2::float8 - 1, $3::bigint, true)
                 on conflict (endpoint_id) do update set
                     tokens = least($2, b.tokens + greatest($3 - b.at, 0) * $4::float8)
                         - case when least($2, b.tokens + greatest($3 - b.at, 0) * $4::float8) >= 1
                                then 1 else 0 end,
                     taken = least($2, b.tokens + greatest($3 - b.at, 0) * $4::float8) >= 1,
                     at = greatest(b.at, $3)
                 returning taken, tokens",
                &[&endpoint_id, &cap, &now, &rate],
            )
            .await?;
        let (taken, tokens): (bool, f64) = (row.get(0), row.get(1));
        Ok(match taken {
            true => Ok(()),
            false => Err(((1.0 - tokens) / rate).ceil().max(1.0) as u64),
        })
    }

    async fn take_quota(&self, application_id: &str, day: i64, quota: u64) -> Result<bool> {
        // One row per application and day, raised atomically only below the quota: every
        // node counts against the same figure.
        let row = self
            .pool
            .get()
            .await?
            .query_opt(
                "insert into quota_counts (application_id, day, count) values ($1, $2, 1)
                 on conflict (application_id, day) do update
                     set count = quota_counts.count + 1
                     where quota_counts.count < $3
                 returning count",
                &[&application_id, &day, &(quota.min(i64::MAX as u64) as i64)],
            )
            .await?;
        Ok(row.is_some())
    }

    async fn return_quota(&self, application_id: &str, day: i64) -> Result<()> {
        self.pool
            .get()
            .await?
            .execute(
                "update quota_counts set count = count - 1
                 where application_id = $1 and day = $2 and count > 0",
                &[&application_id, &day],
            )
            .await?;
        Ok(())
    }

    async fn pause(&self, endpoint_id: &str, until: Millis) -> Result<()> {
        self.tx(async |c: &Client| {
            c.execute(
                "insert into endpoint_pauses (endpoint_id, until_at) values ($1, $2)
                 on conflict (endpoint_id) do update
                     set until_at = greatest(endpoint_pauses.until_at, excluded.until_at)",
                &[&endpoint_id, &until],
            )
            .await?;
            c.execute(
                "select pg_notify('tradehook_pause', $1)",
                &[&format!("{endpoint_id} {until}")],
            )
            .await?;
            Ok(())
        })
        .await
    }
}

#[async_trait]
impl Store for PgStore {
    fn changes(&self) -> Option<tokio::sync::broadcast::Receiver<Change>> {
        Some(self.changes.subscribe())
    }

    fn heartbeat_every(&self) -> Option<std::time::Duration> {
        Some(HEARTBEAT_EVERY)
    }

    async fn heartbeat(&self, node: &str) -> Result<()> {
        let mut slot = self.heartbeat.lock().await;
        if slot.as_ref().is_none_or(Client::is_closed) {
            *slot = Some(connect(&self.pool.url).await?);
        }
        let c = slot.as_ref().expect("connected above");
        // Nodes silent for a day are forgotten, so the table holds only recent nodes.
        c.execute(
            &format!(
                "with forgotten as (delete from nodes where heartbeat_at < {DB_NOW_MS} - 86400000)
                 insert into nodes (id, heartbeat_at) values ($1, {DB_NOW_MS})
                 on conflict (id) do update set heartbeat_at = excluded.heartbeat_at"
            ),
            &[&node],
        )
        .await?;
        Ok(())
    }

    async fn leave(&self, node: &str) -> Result<()> {
        self.pool
            .get()
            .await?
            .execute("delete from nodes where id = $1", &[&node])
            .await?;
        Ok(())
    }

    async fn close(&self) {
        self.listener.abort();
        // Dropping the last sender ends the committer once the queued ingests are done.
        self.ingests.lock().expect("committer handle lock").take();
        let handle = self.committer.lock().expect("committer lock").take();
        if let Some(handle) = handle {
            let _ = handle.await;
        }
        // The same for the attempts queued to be recorded.
        self.records.lock().expect("recorder handle lock").take();
        let handle = self.recorder.lock().expect("recorder lock").take();
        if let Some(handle) = handle {
            let _ = handle.await;
        }
    }
}
