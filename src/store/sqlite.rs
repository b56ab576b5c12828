//! The embedded SQLite store.
//!
//! SQLite allows one writer at a time, so one dedicated thread owns the write connection and
//! runs every write. It takes all writes that are waiting and runs each inside its own
//! savepoint of one `begin immediate … commit` (group commit).
//!
//! Durability is pipelined: the writer commits with `synchronous = normal` (the commit reaches
//! the operating system, not yet the disk) and hands the batch to a syncer thread, which runs
//! one `fdatasync` of the WAL for every batch committed before it started, and only then answers
//! them. The writer meanwhile runs the next batch. So an answered write is on disk and survives
//! a power cut, as with `synchronous = full`, while the disk's flush never stalls the writer.
//! Every answer goes through the syncer, a "duplicate" one too: a resend must not be told its
//! original is stored before the original is on disk.
//!
//! Reads use a small pool of their own connections, which WAL lets run beside the writer.
//! Checkpoints run on a thread of their own (see [`Checkpointer`]).
//!
//! A `limit` takes its parameter as `+?n`, never `?n`: SQLite's planner reads the value bound
//! to a bare `limit ?n`, and so compiles the statement again whenever it is bound anew, every
//! time it runs. The claim of due deliveries spent 11 % of the hub's CPU in those
//! recompilations under the order benchmark O1.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use rusqlite::types::Value as SqlValue;
use rusqlite::{Connection, OptionalExtension, Row, params};
use tokio::sync::{mpsc, oneshot};

use super::dedupe::{DedupeIndex, Seen};
use super::query::{self, Dialect, Owned};
use super::rows::{
    self, ACCOUNT_COLUMNS, APPLICATION_COLUMNS, AccountRow, ORDER_COLUMNS, OrderRow,
};
use super::*;
use crate::domain::{EventTypePattern, Signing, prefix};
use crate::security::crypto::{Cipher, WrongKey};

/// Writes taken into one transaction at most.
const MAX_BATCH: usize = 1024;
/// Writes waiting for the writer at most; senders wait beyond that (backpressure).
const WRITE_QUEUE: usize = 8192;
/// Idle read connections kept.
const MAX_IDLE_READERS: usize = 8;
/// Compiled statements a connection keeps: every statement of the store, with room for the
/// variants of the list queries. SQLite's compiler costs more than most statements' runs.
const STATEMENT_CACHE: usize = 256;

/// How a database is made, before anything is written to it (an existing one keeps the page
/// size it has). Pages of 1 KiB, not SQLite's 4 KiB: a commit writes each page it changes whole
/// to the WAL, and most commits change a row or two in each of several tables and indexes, so
/// smaller pages write less for the same rows. Measured: 28 KB written per event at 500 events/s
/// against 64 KB, 8.5 KB against 15 KB under full load, with the same CPU per event (512-byte
/// pages cost CPU in fan-out: an event's body spills over more pages).
const NEW_DATABASE: &str = "pragma page_size = 1024; pragma journal_mode = wal;";

/// Runs statements through the connection's cache of compiled ones.
trait Cached {
    fn execute_cached<P: rusqlite::Params>(&self, sql: &str, params: P) -> rusqlite::Result<usize>;
    fn query_row_cached<T, P: rusqlite::Params>(
        &self,
        sql: &str,
        params: P,
        row: impl FnOnce(&Row<'_>) -> rusqlite::Result<T>,
    ) -> rusqlite::Result<T>;
}

impl Cached for Connection {
    fn execute_cached<P: rusqlite::Params>(&self, sql: &str, params: P) -> rusqlite::Result<usize> {
        self.prepare_cached(sql)?.execute(params)
    }

    fn query_row_cached<T, P: rusqlite::Params>(
        &self,
        sql: &str,
        params: P,
        row: impl FnOnce(&Row<'_>) -> rusqlite::Result<T>,
    ) -> rusqlite::Result<T> {
        self.prepare_cached(sql)?.query_row(params, row)
    }
}

const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("migrations/sqlite/0001_init.sql")),
    (2, include_str!("migrations/sqlite/0002_render.sql")),
    (3, include_str!("migrations/sqlite/0003_policy.sql")),
    (
        4,
        include_str!("migrations/sqlite/0004_order_and_health.sql"),
    ),
    (5, include_str!("migrations/sqlite/0005_rotation.sql")),
    (
        6,
        include_str!("migrations/sqlite/0006_dedupe_in_memory.sql"),
    ),
    (7, include_str!("migrations/sqlite/0007_accounts.sql")),
    (8, include_str!("migrations/sqlite/0008_orders.sql")),
    (9, include_str!("migrations/sqlite/0009_resting_orders.sql")),
    (10, include_str!("migrations/sqlite/0010_due_unordered.sql")),
    (11, include_str!("migrations/sqlite/0011_applications.sql")),
    (12, include_str!("migrations/sqlite/0012_order_intents.sql")),
    (
        13,
        include_str!("migrations/sqlite/0013_claims_walk_what_they_may_take.sql"),
    ),
];

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        if let rusqlite::Error::SqliteFailure(f, _) = &e
            && f.code == rusqlite::ErrorCode::ConstraintViolation
        {
            return StoreError::Conflict(e.to_string());
        }
        StoreError::Database(e.to_string())
    }
}

/// What answers one write once its commit is known (and, if it succeeded, on disk).
type Completion = Box<dyn FnOnce(Result<()>) + Send>;

/// What the writer does for one write once its batch's commit is known: answers at the
/// commit, answers once the commit is on disk, or both.
struct Done {
    committed: Option<Completion>,
    flushed: Option<Completion>,
    /// To be flushed soon, though nobody waits for it.
    soon: bool,
}

/// A write waiting for the writer thread.
trait WriteOp: Send {
    /// Runs inside the batch's transaction; returns what to do once the commit is known.
    fn run(self: Box<Self>, conn: &Connection) -> Done;
    /// Answers the write with an error without running it.
    fn abort(self: Box<Self>, error: StoreError);
}

/// When a write is answered.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Answer {
    /// Once its transaction is on disk: a write that anyone outside the process may hear of.
    Flushed,
    /// Once its transaction is committed: every later read and write sees it, and the next
    /// flush (of any write after it, or the checkpoint's) takes it to disk. For writes a crash
    /// may lose without harm, as leases, which the store releases when it opens.
    Committed,
    /// Once its transaction is committed, and flushed within [`SOON`] even if no write that
    /// waits for a flush comes along to share one. For records only the machine's own crash
    /// (not the process's: the kernel holds what was written) could take back, where that
    /// would cost a repeat and nothing more: an attempt's outcome, whose loss sends the
    /// delivery again.
    Soon,
}

/// How long a commit answered [`Answer::Soon`] waits at most for a flush to share.
const SOON: std::time::Duration = std::time::Duration::from_millis(10);

struct Op<F, R> {
    f: F,
    answer: Answer,
    reply: oneshot::Sender<Result<R>>,
}

impl<F, R> WriteOp for Op<F, R>
where
    F: FnOnce(&Connection) -> Result<R> + Send,
    R: Send + 'static,
{
    fn run(self: Box<Self>, conn: &Connection) -> Done {
        let Op { f, answer, reply } = *self;
        let outcome = in_savepoint(conn, f);
        let done: Completion = Box::new(move |commit| {
            let _ = reply.send(committed(outcome, commit));
        });
        match answer {
            Answer::Flushed => Done {
                committed: None,
                flushed: Some(done),
                soon: false,
            },
            Answer::Committed | Answer::Soon => Done {
                committed: Some(done),
                flushed: None,
                soon: answer == Answer::Soon,
            },
        }
    }

    fn abort(self: Box<Self>, error: StoreError) {
        let _ = self.reply.send(Err(error));
    }
}

/// A write's answer: its own outcome, unless its batch's commit failed.
fn committed<R>(outcome: Result<R>, commit: Result<()>) -> Result<R> {
    outcome.and_then(|value| commit.map(|()| value))
}

/// A write answered twice: with its result once committed, and again once on disk.
struct InTurn<F, R> {
    f: F,
    committed: oneshot::Sender<Result<R>>,
    flushed: oneshot::Sender<Result<()>>,
}

impl<F, R> WriteOp for InTurn<F, R>
where
    F: FnOnce(&Connection) -> Result<R> + Send,
    R: Send + 'static,
{
    fn run(self: Box<Self>, conn: &Connection) -> Done {
        let InTurn {
            f,
            committed: answer,
            flushed,
        } = *self;
        let outcome = in_savepoint(conn, f);
        Done {
            committed: Some(Box::new(move |commit| {
                let _ = answer.send(self::committed(outcome, commit));
            })),
            flushed: Some(Box::new(move |synced| {
                let _ = flushed.send(synced);
            })),
            soon: false,
        }
    }

    fn abort(self: Box<Self>, error: StoreError) {
        let _ = self.flushed.send(Err(StoreError::Closed));
        let _ = self.committed.send(Err(error));
    }
}

/// Runs `f` in a savepoint, so that its failure undoes only its own changes. The two
/// statements are prepared once: every write runs them, and parsing them each time showed in
/// the writer's profile.
fn in_savepoint<R>(conn: &Connection, f: impl FnOnce(&Connection) -> Result<R>) -> Result<R> {
    conn.prepare_cached("savepoint op")?.execute([])?;
    match f(conn) {
        Ok(value) => {
            conn.prepare_cached("release op")?.execute([])?;
            Ok(value)
        }
        Err(e) => {
            conn.execute_batch("rollback to op; release op")?;
            Err(e)
        }
    }
}

/// The SQLite implementation of [`Store`].
pub struct SqliteStore {
    /// Seals secrets before they are written, opens them when they are read.
    cipher: Cipher,
    writes: Mutex<Option<mpsc::Sender<Box<dyn WriteOp>>>>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    checkpointer: Mutex<Option<Checkpointer>>,
    readers: Arc<ReadPool>,
    /// Used by the writer thread only.
    dedupe: Arc<Mutex<DedupeIndex>>,
    /// How many times the WAL was flushed to disk.
    flushes: Arc<std::sync::atomic::AtomicU64>,
}

/// A thread that checkpoints the WAL in the background.
///
/// Each run first copies the WAL into the database with passive checkpoints, which never wait
/// for the writer or readers, round after round until a round finds nothing new (see
/// [`catch_up`]). A WAL copied to its end is restarted from its first frame by the writer's
/// next commit, so while the writer has pauses the WAL stays small and nothing ever waits.
///
/// Under continuous writes the writer commits while every round flushes the database, so the
/// WAL is never copied to its end and would only grow. Once it holds more than
/// [`RESTART_FRAMES`], the run ends with a `restart` checkpoint: it holds the writer back only
/// while it copies the few frames the passive rounds left and flushes the database once, then
/// the WAL starts again from its first frame.
struct Checkpointer {
    stop: std::sync::mpsc::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

/// How often the checkpointer runs.
const CHECKPOINT_INTERVAL: std::time::Duration = std::time::Duration::from_millis(200);

/// Passive checkpoint rounds run back to back at most.
const CATCH_UP_ROUNDS: u32 = 16;

/// WAL frames beyond which a run ends with a `restart` checkpoint: 4 MiB of 1 KiB pages (16 MiB
/// in a database made with pages of 4 KiB).
const RESTART_FRAMES: i64 = 4096;

/// The WAL file size beyond which a run truncates it, if a `restart` could not be done (a
/// reader kept it back) and the WAL went on growing.
const WAL_LIMIT_BYTES: u64 = 64 << 20;

/// How often a connection that finds the database locked tries again. SQLite's own busy
/// timeout sleeps 1, 2, 5, 10… ms between tries, so a writer held back for a 0.3 ms checkpoint
/// would lose at least a millisecond, and often 3 or 8; with short sleeps it loses about what
/// it waited for.
const BUSY_RETRY: std::time::Duration = std::time::Duration::from_micros(100);

/// The writer waits up to about 5 s for a lock (short sleeps, see [`BUSY_RETRY`]).
fn writer_busy(tries: i32) -> bool {
    std::thread::sleep(BUSY_RETRY);
    tries < 50_000
}

/// A `restart` or `truncate` checkpoint waits up to about 100 ms for the writer and readers,
/// then gives up until the next run: the writer waits while it holds the lock, so this is
/// kept short.
fn checkpointer_busy(tries: i32) -> bool {
    std::thread::sleep(BUSY_RETRY);
    tries < 1_000
}

/// Copies the WAL into the database with passive checkpoints, round after round, until a round
/// finds nothing new, and gives the frames in the WAL after the last round. One round is not
/// enough: the writer almost always commits while a round flushes the database.
fn catch_up(conn: &Connection) -> i64 {
    let mut last = None;
    for _ in 0..CATCH_UP_ROUNDS {
        let round = conn.query_row("pragma wal_checkpoint(passive)", [], |r| {
            Ok((r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
        });
        match round {
            // Nothing changed since the last round: caught up, or held back by a reader.
            Ok(progress) if last == Some(progress) => break,
            Ok(progress) => last = Some(progress),
            Err(e) => {
                tracing::warn!(error = %e, "background checkpoint failed");
                break;
            }
        }
    }
    last.map_or(0, |(frames, _)| frames)
}

/// Runs a checkpoint that waits for the writer and readers (`restart` or `truncate`).
fn blocking_checkpoint(conn: &Connection, mode: &str) {
    match conn.query_row(&format!("pragma wal_checkpoint({mode})"), [], |r| {
        r.get::<_, i64>(0)
    }) {
        Ok(0) => {}
        Ok(_) => tracing::debug!(mode, "the WAL is busy; checkpointing later"),
        Err(e) => tracing::warn!(error = %e, mode, "checkpointing the WAL failed"),
    }
}

impl Checkpointer {
    fn start(path: &Path) -> Result<Self> {
        let mut conn = Connection::open(path)?;
        conn.busy_handler(Some(checkpointer_busy))?;
        let mut wal_path = path.as_os_str().to_owned();
        wal_path.push("-wal");
        let wal_path = PathBuf::from(wal_path);
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("tradehook-sqlite-checkpoint".into())
            .spawn(move || {
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                    stopped.recv_timeout(CHECKPOINT_INTERVAL)
                {
                    if catch_up(&conn) > RESTART_FRAMES {
                        blocking_checkpoint(&conn, "restart");
                    }
                    let wal = std::fs::metadata(&wal_path).map(|m| m.len()).unwrap_or(0);
                    if wal > WAL_LIMIT_BYTES {
                        blocking_checkpoint(&conn, "truncate");
                    }
                }
            })
            .map_err(|e| StoreError::Database(format!("starting the checkpoint thread: {e}")))?;
        Ok(Self { stop, thread })
    }

    fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.thread.join();
    }
}

struct ReadPool {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

impl ReadPool {
    fn take(&self) -> Result<Connection> {
        if let Some(conn) = self.idle.lock().expect("reader pool lock").pop() {
            return Ok(conn);
        }
        let conn = Connection::open(&self.path)?;
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        conn.execute_batch("pragma busy_timeout = 5000; pragma query_only = true;")?;
        Ok(conn)
    }

    fn give_back(&self, conn: Connection) {
        let mut idle = self.idle.lock().expect("reader pool lock");
        if idle.len() < MAX_IDLE_READERS {
            idle.push(conn);
        }
    }
}

pub(super) fn wrong_key(e: WrongKey) -> StoreError {
    StoreError::Database(e.to_string())
}

pub(super) fn seal_endpoint(cipher: &Cipher, mut e: Endpoint) -> Endpoint {
    e.secret = cipher.seal(&e.secret);
    e.previous_secret = e.previous_secret.map(|(s, until)| (cipher.seal(&s), until));
    e.render.sign_secret = e.render.sign_secret.map(|s| cipher.seal(&s));
    e.render.token = e.render.token.map(|s| cipher.seal(&s));
    e
}

pub(super) fn open_endpoint(cipher: &Cipher, mut e: Endpoint) -> Result<Endpoint> {
    e.secret = cipher.open(&e.secret).map_err(wrong_key)?;
    e.previous_secret = e
        .previous_secret
        .map(|(s, until)| cipher.open(&s).map(|s| (s, until)).map_err(wrong_key))
        .transpose()?;
    e.render.sign_secret = e
        .render
        .sign_secret
        .map(|s| cipher.open(&s).map_err(wrong_key))
        .transpose()?;
    e.render.token = e
        .render
        .token
        .map(|s| cipher.open(&s).map_err(wrong_key))
        .transpose()?;
    Ok(e)
}

/// Seals the secrets a database written before encryption still holds in the clear, and
/// checks that the key opens the ones already sealed, so that a wrong key stops the start.
fn seal_stored_secrets(conn: &Connection, cipher: &Cipher) -> Result<()> {
    let endpoints: Vec<(String, String, String)> = conn
        .prepare("select id, secret, render from endpoints")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<rusqlite::Result<_>>()?;
    for (id, secret, render) in endpoints {
        let mut spec: crate::model::render::RenderSpec =
            serde_json::from_str(&render).unwrap_or_default();
        let sealed_secret = match Cipher::is_sealed(&secret) {
            true => {
                cipher.open(&secret).map_err(wrong_key)?;
                secret
            }
            false => cipher.seal(&secret),
        };
        if let Some(s) = spec.sign_secret.take() {
            spec.sign_secret = Some(match Cipher::is_sealed(&s) {
                true => s,
                false => cipher.seal(&s),
            });
        }
        conn.execute(
            "update endpoints set secret = ?2, render = ?3 where id = ?1",
            params![
                id,
                sealed_secret,
                serde_json::to_string(&spec).unwrap_or_default()
            ],
        )?;
    }
    let sources: Vec<(String, String)> = conn
        .prepare("select id, secret from sources where secret is not null")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    for (id, secret) in sources {
        if Cipher::is_sealed(&secret) {
            cipher.open(&secret).map_err(wrong_key)?;
        } else {
            conn.execute(
                "update sources set secret = ?2 where id = ?1",
                params![id, cipher.seal(&secret)],
            )?;
        }
    }
    Ok(())
}

/// Parses `sqlite://PATH` or `sqlite:PATH` into a path.
pub fn path_of(url: &str) -> Option<PathBuf> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    (!rest.is_empty()).then(|| PathBuf::from(rest))
}

impl SqliteStore {
    /// Opens (creating and migrating if needed) the database at `path`.
    ///
    /// Leases left by an earlier run of this process are released: an SQLite database has one
    /// node, so whatever it held when it stopped is pending again.
    pub fn open(path: &Path, cipher: Cipher) -> Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| StoreError::Database(format!("creating {}: {e}", dir.display())))?;
        }
        let lock = lock_database(path)?;
        super::pcache::install();
        let mut conn = Connection::open(path)?;
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        conn.execute_batch(&format!(
            "{NEW_DATABASE}
             pragma synchronous = normal;
             pragma busy_timeout = 5000;
             pragma temp_store = memory;
             pragma cache_size = -16000;",
        ))?;
        migrate(&conn)?;
        seal_stored_secrets(&conn, &cipher)?;
        conn.execute(
            "update deliveries set lease_owner = null, lease_until = null
             where lease_owner is not null",
            [],
        )?;

        // Checkpoints (copying the WAL back into the database file) run on a thread of their
        // own, so that no commit, and no request waiting on one, pays for them.
        conn.execute_batch("pragma wal_autocheckpoint = 0")?;
        conn.busy_handler(Some(writer_busy))?;
        let checkpointer = Checkpointer::start(path)?;

        // The syncer flushes the WAL file itself; make sure it exists by writing a frame.
        conn.execute_batch("pragma user_version = 1")?;
        let mut wal_path = path.as_os_str().to_owned();
        wal_path.push("-wal");
        let wal = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&wal_path)
            .map_err(|e| StoreError::Database(format!("opening the WAL file: {e}")))?;
        wal.sync_data()
            .map_err(|e| StoreError::Database(format!("syncing the WAL file: {e}")))?;
        let (to_sync, committed) = std::sync::mpsc::channel::<Vec<Completion>>();
        let flushes = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let syncer = std::thread::Builder::new()
            .name("tradehook-sqlite-sync".into())
            .spawn({
                let flushes = flushes.clone();
                move || syncer_loop(wal, committed, &flushes)
            })
            .map_err(|e| StoreError::Database(format!("starting the sync thread: {e}")))?;

        let (tx, rx) = mpsc::channel(WRITE_QUEUE);
        let writer = std::thread::Builder::new()
            .name("tradehook-sqlite-writer".into())
            .spawn(move || {
                writer_loop(conn, rx, to_sync);
                // The writer has ended and dropped its side: the syncer answers the last
                // batches and ends too.
                let _ = syncer.join();
                // Another process may write the database from now on.
                drop(lock);
            })
            .map_err(|e| StoreError::Database(format!("starting the writer thread: {e}")))?;
        Ok(Self {
            cipher,
            writes: Mutex::new(Some(tx)),
            writer: Mutex::new(Some(writer)),
            checkpointer: Mutex::new(Some(checkpointer)),
            readers: Arc::new(ReadPool {
                path: path.to_owned(),
                idle: Mutex::new(Vec::new()),
            }),
            dedupe: Arc::default(),
            flushes,
        })
    }

    /// How many times the WAL has been flushed to disk since the store opened.
    pub fn flushes(&self) -> u64 {
        self.flushes.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Reads the dedupe keys of the events stored since `since` (the start of the dedupe
    /// window) into memory. Done by the first ingest otherwise.
    pub async fn load_dedupe(&self, since: Millis) -> Result<()> {
        let dedupe = self.dedupe.clone();
        let started = std::time::Instant::now();
        let keys = self
            .write(move |c| {
                let mut index = dedupe.lock().expect("dedupe index lock");
                index.load(c, since)?;
                Ok(index.len())
            })
            .await?;
        tracing::info!(
            keys,
            ms = started.elapsed().as_millis() as u64,
            "dedupe keys of the stored events read"
        );
        Ok(())
    }

    async fn write<R, F>(&self, f: F) -> Result<R>
    where
        F: FnOnce(&Connection) -> Result<R> + Send + 'static,
        R: Send + 'static,
    {
        self.write_answered(f, Answer::Flushed).await
    }

    /// A write answered at its commit (see [`Answer::Committed`]).
    async fn write_committed<R, F>(&self, f: F) -> Result<R>
    where
        F: FnOnce(&Connection) -> Result<R> + Send + 'static,
        R: Send + 'static,
    {
        self.write_answered(f, Answer::Committed).await
    }

    async fn write_answered<R, F>(&self, f: F, answer: Answer) -> Result<R>
    where
        F: FnOnce(&Connection) -> Result<R> + Send + 'static,
        R: Send + 'static,
    {
        let (reply, answered) = oneshot::channel();
        self.submit(Box::new(Op { f, answer, reply })).await?;
        answered.await.map_err(|_| StoreError::Closed)?
    }

    /// A write answered at its commit, with what answers again once it is on disk.
    async fn write_in_turn<R, F>(&self, f: F) -> Result<(R, super::Flush)>
    where
        F: FnOnce(&Connection) -> Result<R> + Send + 'static,
        R: Send + 'static,
    {
        let (committed, answered) = oneshot::channel();
        let (flushed, on_disk) = oneshot::channel();
        self.submit(Box::new(InTurn {
            f,
            committed,
            flushed,
        }))
        .await?;
        let value = answered.await.map_err(|_| StoreError::Closed)??;
        Ok((
            value,
            Box::pin(async move { on_disk.await.map_err(|_| StoreError::Closed)? }),
        ))
    }

    async fn submit(&self, op: Box<dyn WriteOp>) -> Result<()> {
        let sender = self
            .writes
            .lock()
            .expect("writer handle lock")
            .clone()
            .ok_or(StoreError::Closed)?;
        sender.send(op).await.map_err(|_| StoreError::Closed)
    }

    async fn read<R, F>(&self, f: F) -> Result<R>
    where
        F: FnOnce(&Connection) -> Result<R> + Send + 'static,
        R: Send + 'static,
    {
        let pool = self.readers.clone();
        tokio::task::spawn_blocking(move || {
            let conn = pool.take()?;
            let result = f(&conn);
            pool.give_back(conn);
            result
        })
        .await
        .map_err(|e| StoreError::Database(format!("reader task failed: {e}")))?
    }
}

/// How long opening waits for another store on the same file to let go of it: long enough for
/// a hub that is stopping to finish its last writes.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// Takes the lock that makes this process the database's only writer: an exclusive `flock`
/// on the database file itself, so that a second hub is refused whatever path it names the
/// file by (a hard link, a symbolic link). The store relies on it: leases left in the
/// database are released at start, and the dedupe index lives in the writer's memory, both of
/// which a second process would break; and through another name a second process would write
/// a WAL of its own, losing writes. SQLite's own locks are POSIX record locks, which `flock`
/// does not touch. The file is created (empty) when missing.
fn lock_database(path: &Path) -> Result<std::fs::File> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| StoreError::Database(format!("opening {}: {e}", path.display())))?;
    let until = std::time::Instant::now() + LOCK_WAIT;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(std::fs::TryLockError::WouldBlock) if std::time::Instant::now() < until => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(StoreError::Database(format!(
                    "{} is in use by another tradehook process (perhaps under another name, \
                     through a link); one database has one hub",
                    path.display(),
                )));
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(StoreError::Database(format!(
                    "locking {}: {e}",
                    path.display()
                )));
            }
        }
    }
}

/// Free space below which the hub is not ready: a commit that cannot write would refuse
/// every sender.
const MIN_FREE_BYTES: u64 = 8 << 20;

/// Bytes an unprivileged process may still write on the file system holding `dir`.
fn free_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt as _;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs writes only the struct it is given, and the path is a valid C string.
    unsafe {
        let mut stat: libc::statvfs = std::mem::zeroed();
        if libc::statvfs(path.as_ptr(), &mut stat) != 0 {
            return None;
        }
        Some(stat.f_bavail as u64 * stat.f_frsize as u64)
    }
}

/// Creates the database at `path` if needed and applies the migrations.
pub fn migrate_file(path: &Path) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::Database(format!("creating {}: {e}", dir.display())))?;
    }
    // Not under a running hub: it would go on with the schema it started with.
    let _lock = lock_database(path)?;
    super::pcache::install();
    let conn = Connection::open(path)?;
    conn.execute_batch(&format!("{NEW_DATABASE} pragma busy_timeout = 5000;"))?;
    migrate(&conn)
}

fn migrate(conn: &Connection) -> Result<()> {
    conn.execute_batch(
        "create table if not exists schema_migrations (
             version integer primary key, applied_at integer not null)",
    )?;
    let current: i64 = conn.query_row(
        "select coalesce(max(version), 0) from schema_migrations",
        [],
        |r| r.get(0),
    )?;
    for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
        conn.execute_batch("begin immediate")?;
        let applied = conn.execute_batch(sql).and_then(|()| {
            conn.execute(
                "insert into schema_migrations (version, applied_at) values (?1, ?2)",
                params![version, crate::domain::now_ms()],
            )
            .map(|_| ())
        });
        match applied {
            Ok(()) => conn.execute_batch("commit")?,
            Err(e) => {
                conn.execute_batch("rollback")?;
                return Err(StoreError::Database(format!("migration {version}: {e}")));
            }
        }
    }
    Ok(())
}

fn writer_loop(
    conn: Connection,
    mut rx: mpsc::Receiver<Box<dyn WriteOp>>,
    to_sync: std::sync::mpsc::Sender<Vec<Completion>>,
) {
    let mut batch: Vec<Box<dyn WriteOp>> = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        // `begin` and `commit` run from the statement cache, as every other statement: the
        // writer runs them for every batch, and parsing them each time showed in its profile.
        if let Err(e) = conn.execute_cached("begin immediate", []) {
            tracing::error!(error = %e, "could not begin a write transaction");
            for op in batch.drain(..) {
                op.abort(StoreError::Database(e.to_string()));
            }
            continue;
        }
        let done: Vec<Done> = batch.drain(..).map(|op| op.run(&conn)).collect();
        let mut flushed = Vec::with_capacity(done.len());
        let mut soon = false;
        match conn.execute_cached("commit", []) {
            Ok(_) => {
                for Done {
                    committed,
                    flushed: then,
                    soon: later,
                } in done
                {
                    if let Some(answer) = committed {
                        answer(Ok(()));
                    }
                    flushed.extend(then);
                    soon |= later;
                }
                // A batch that nobody waits to see on disk is not flushed on its own: the
                // next flush takes it along. One with writes to flush soon tells the syncer,
                // with nothing to answer.
                if flushed.is_empty() && !soon {
                    continue;
                }
                if let Err(std::sync::mpsc::SendError(completions)) = to_sync.send(flushed) {
                    for done in completions {
                        done(Err(StoreError::Closed));
                    }
                }
            }
            Err(e) => {
                let _ = conn.execute_batch("rollback");
                tracing::error!(error = %e, "a group commit failed; its writes are reported failed");
                for Done {
                    committed, flushed, ..
                } in done
                {
                    for answer in committed.into_iter().chain(flushed) {
                        answer(Err(StoreError::Database(e.to_string())));
                    }
                }
            }
        }
    }
    if let Err(e) = conn.execute_batch("pragma wal_checkpoint(truncate)") {
        tracing::warn!(error = %e, "checkpoint at shutdown failed");
    }
}

/// Answers committed batches once the WAL is on disk: one `fdatasync` covers every batch
/// committed before it started.
fn syncer_loop(
    wal: std::fs::File,
    committed: std::sync::mpsc::Receiver<Vec<Completion>>,
    flushes: &std::sync::atomic::AtomicU64,
) {
    while let Ok(first) = committed.recv() {
        let mut waiting = first;
        while let Ok(more) = committed.try_recv() {
            waiting.extend(more);
        }
        // Only commits nobody waits for: a write that waits for a flush may come along to
        // share one, within `SOON`.
        if waiting.is_empty()
            && let Ok(more) = committed.recv_timeout(SOON)
        {
            waiting.extend(more);
            while let Ok(more) = committed.try_recv() {
                waiting.extend(more);
            }
        }
        let synced = wal.sync_data();
        flushes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Err(e) = &synced {
            tracing::error!(error = %e, "syncing the WAL failed; the writes waiting on it are reported failed");
        }
        for done in waiting {
            done(match &synced {
                Ok(()) => Ok(()),
                Err(e) => Err(StoreError::Database(format!("syncing the WAL: {e}"))),
            });
        }
    }
}

/// The write of one [`Settlement`] (see [`OrderStore::settle`]).
fn settling(settlement: Settlement) -> impl FnOnce(&Connection) -> Result<bool> + Send + 'static {
    let intent = settlement.intent.as_ref().map(OrderRow::of);
    let fresh = settlement.fresh;
    let others: Vec<OrderRow> = settlement.others.iter().map(OrderRow::of).collect();
    let account = settlement.account_id;
    let book = settlement
        .book
        .map(|b| (account, super::rows::book_json(&b), b.revision as i64));
    move |c: &Connection| {
        if let Some(row) = &intent {
            let status: Option<String> = c
                .query_row_cached(
                    "select status from orders where client_order_id = ?1",
                    [&row.client_order_id],
                    |r| r.get(0),
                )
                .optional()?;
            let expected = if fresh { None } else { Some("intent") };
            if status.as_deref() != expected {
                return Ok(false);
            }
        }
        if let Some((account, book, revision)) = &book {
            let written = c.execute_cached(
                "insert into paper_books (account_id, book, revision, updated_at)
                     values (?1, ?2, ?3, ?4)
                     on conflict (account_id) do update set book = excluded.book,
                     revision = excluded.revision, updated_at = excluded.updated_at
                     where paper_books.revision = excluded.revision - 1",
                params![account, book, revision, crate::domain::now_ms()],
            )?;
            if written == 0 {
                return Ok(false);
            }
        }
        for row in intent.iter().chain(&others) {
            c.execute_cached(
                &format!(
                    "insert into orders ({ORDER_COLUMNS})
                         values (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)
                         on conflict (client_order_id) do update set request = excluded.request,
                         status = excluded.status, fill = excluded.fill,
                         reason = excluded.reason, updated_at = excluded.updated_at"
                ),
                order_params(row),
            )?;
        }
        Ok(true)
    }
}

// --- row mapping -------------------------------------------------------------------------------

fn json_col<T: serde::de::DeserializeOwned>(row: &Row<'_>, idx: usize) -> rusqlite::Result<T> {
    let text: String = row.get(idx)?;
    serde_json::from_str(&text).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(idx, rusqlite::types::Type::Text, Box::new(e))
    })
}

const ENDPOINT_COLUMNS: &str = "id, url, description, event_types, headers, signing, secret, \
     enabled, disabled_reason, retry_schedule, timeout_ms, created_at, updated_at, render, policy, \
     previous_secret, previous_secret_until, labels, application_id";

fn endpoint_from_row(row: &Row<'_>) -> rusqlite::Result<Endpoint> {
    let signing: String = row.get(5)?;
    let patterns: Vec<String> = json_col(row, 3)?;
    Ok(Endpoint {
        id: row.get(0)?,
        application_id: row.get(18)?,
        labels: json_col(row, 17)?,
        url: row.get(1)?,
        description: row.get(2)?,
        event_types: patterns
            .iter()
            .filter_map(|p| EventTypePattern::parse(p).ok())
            .collect(),
        headers: json_col(row, 4)?,
        signing: Signing::parse(&signing).unwrap_or_default(),
        secret: row.get(6)?,
        enabled: row.get(7)?,
        disabled_reason: row.get(8)?,
        retry_schedule_ms: json_col(row, 9)?,
        timeout_ms: row.get::<_, i64>(10)?.max(0) as u64,
        created_at: row.get(11)?,
        updated_at: row.get(12)?,
        render: json_col(row, 13)?,
        policy: json_col(row, 14)?,
        previous_secret: match (
            row.get::<_, Option<String>>(15)?,
            row.get::<_, Option<i64>>(16)?,
        ) {
            (Some(secret), Some(until)) => Some((secret, until)),
            _ => None,
        },
    })
}

fn endpoint_params(e: &Endpoint) -> Vec<SqlValue> {
    let patterns: Vec<&str> = e.event_types.iter().map(|p| p.as_str()).collect();
    vec![
        e.id.clone().into(),
        e.url.clone().into(),
        e.description.clone().into(),
        serde_json::to_string(&patterns).unwrap_or_default().into(),
        serde_json::to_string(&e.headers).unwrap_or_default().into(),
        e.signing.as_str().to_owned().into(),
        e.secret.clone().into(),
        i64::from(e.enabled).into(),
        e.disabled_reason.clone().into(),
        serde_json::to_string(&e.retry_schedule_ms)
            .unwrap_or_default()
            .into(),
        (e.timeout_ms as i64).into(),
        e.created_at.into(),
        e.updated_at.into(),
        serde_json::to_string(&e.render).unwrap_or_default().into(),
        serde_json::to_string(&e.policy).unwrap_or_default().into(),
        e.previous_secret.as_ref().map(|(s, _)| s.clone()).into(),
        e.previous_secret.as_ref().map(|(_, until)| *until).into(),
        serde_json::to_string(&e.labels).unwrap_or_default().into(),
        e.application_id.clone().into(),
    ]
}

fn source_from_row(row: &Row<'_>) -> rusqlite::Result<Source> {
    Ok(Source {
        id: row.get(0)?,
        name: row.get(1)?,
        spec: json_col(row, 2)?,
        secret: row.get(3)?,
        created_at: row.get(4)?,
        updated_at: row.get(5)?,
    })
}

fn source_params(s: &Source) -> Vec<SqlValue> {
    vec![
        s.id.clone().into(),
        s.name.clone().into(),
        serde_json::to_string(&s.spec).unwrap_or_default().into(),
        s.secret.clone().into(),
        s.created_at.into(),
        s.updated_at.into(),
    ]
}

const EVENT_COLUMNS: &str = "id, source, type, dedupe_key, body, created_at";

fn event_from_row(row: &Row<'_>) -> rusqlite::Result<StoredEvent> {
    Ok(StoredEvent {
        id: row.get(0)?,
        source: row.get(1)?,
        event_type: row.get(2)?,
        dedupe_key: row.get(3)?,
        body: row.get(4)?,
        created_at: row.get(5)?,
    })
}

const DELIVERY_COLUMNS: &str = "id, event_id, endpoint_id, status, attempts, next_attempt_at, \
     last_status_code, last_error, created_at, updated_at";

fn delivery_from_row(row: &Row<'_>) -> rusqlite::Result<Delivery> {
    let status: String = row.get(3)?;
    let status = DeliveryStatus::parse(&status).unwrap_or(DeliveryStatus::Pending);
    let next: i64 = row.get(5)?;
    Ok(Delivery {
        id: row.get(0)?,
        event_id: row.get(1)?,
        endpoint_id: row.get(2)?,
        status,
        attempts: row.get(4)?,
        next_attempt_at: (status == DeliveryStatus::Pending).then_some(next),
        last_status_code: row.get(6)?,
        last_error: row.get(7)?,
        created_at: row.get(8)?,
        updated_at: row.get(9)?,
    })
}

/// Runs a list query of the delivery log.
fn select<T>(
    conn: &Connection,
    q: query::Query,
    row: impl FnMut(&Row<'_>) -> rusqlite::Result<T>,
) -> Result<Vec<T>> {
    let args = q.args.into_iter().map(|a| match a {
        query::Arg::Text(t) => SqlValue::Text(t),
        query::Arg::Int(i) => SqlValue::Integer(i),
    });
    let mut stmt = conn.prepare_cached(&q.sql)?;
    let rows = stmt.query_map(rusqlite::params_from_iter(args), row)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// ` and <condition>` keeping a query to `scope`'s rows, its parameter numbered `n`.
/// Column `i` of a row as text, without copying it.
fn text<'a>(r: &'a Row<'_>, i: usize) -> rusqlite::Result<&'a str> {
    r.get_ref(i)?.as_str().map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, Box::new(e))
    })
}

fn within_app(scope: &Scope, owned: Owned, n: usize) -> String {
    match scope {
        Scope::Hub => String::new(),
        Scope::Application(_) => format!(" and {}", query::within(Dialect::Sqlite, owned, n)),
    }
}

/// The application of `scope`, when it has one: the parameters of a query made with
/// [`within_app`] and no other.
fn app_args(scope: &Scope) -> Vec<String> {
    scope
        .application_id()
        .map(str::to_owned)
        .into_iter()
        .collect()
}

/// `first`, then the application of `scope` when it has one: the parameters of a query made
/// with [`within_app`].
fn scoped_args(first: String, scope: &Scope) -> Vec<String> {
    std::iter::once(first)
        .chain(scope.application_id().map(str::to_owned))
        .collect()
}

fn insert_deliveries(
    conn: &Connection,
    event_id: &str,
    deliveries: &[NewDelivery],
    lease: &Lease,
    now: Millis,
) -> Result<()> {
    let mut stmt = conn.prepare_cached(
        "insert into deliveries (id, event_id, endpoint_id, status, next_attempt_at,
             lease_owner, lease_until, created_at, updated_at, order_key)
         values (?1, ?2, ?3, 'pending', ?4, ?5, ?6, ?4, ?4, ?7)",
    )?;
    for d in deliveries {
        // Ordered deliveries are not handed over: they are claimed in order.
        let (owner, until) = match d.order_key {
            None => (Some(&*lease.owner), Some(lease.until)),
            Some(_) => (None, None),
        };
        stmt.execute(params![
            d.id,
            event_id,
            d.endpoint_id,
            now,
            owner,
            until,
            d.order_key
        ])?;
    }
    Ok(())
}

#[async_trait]
impl TokenStore for SqliteStore {
    async fn insert_token(&self, scope: Scope, token: ApiToken) -> Result<()> {
        let owner = scope
            .application_id()
            .map(str::to_owned)
            .or(token.application_id);
        self.write(move |c| {
            let access = match token.scope {
                TokenScope::Admin => "admin",
                TokenScope::ReadOnly => "read_only",
            };
            c.execute_cached(
                "insert into api_tokens
                     (id, name, token_hash, scope, created_at, application_id, expires_at)
                 values (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    token.id,
                    token.name,
                    token.hash,
                    access,
                    token.created_at,
                    owner,
                    token.expires_at
                ],
            )?;
            Ok(())
        })
        .await
    }

    async fn delete_token(&self, scope: Scope, id: &str) -> Result<bool> {
        let id = id.to_owned();
        self.write(move |c| {
            let sql = format!(
                "delete from api_tokens where id = ?1{}",
                within_app(&scope, Owned::Directly("application_id"), 2)
            );
            Ok(c.execute_cached(&sql, rusqlite::params_from_iter(scoped_args(id, &scope)))? == 1)
        })
        .await
    }

    async fn list_tokens(&self, scope: Scope) -> Result<Vec<ApiToken>> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(&format!(
                "select id, name, token_hash, scope, created_at, application_id, expires_at
                 from api_tokens
                 where 1 = 1{} order by id",
                within_app(&scope, Owned::Directly("application_id"), 1)
            ))?;
            let args = app_args(&scope);
            let rows = stmt.query_map(rusqlite::params_from_iter(args), |r| {
                let scope: String = r.get(3)?;
                Ok(ApiToken {
                    id: r.get(0)?,
                    name: r.get(1)?,
                    hash: r.get(2)?,
                    scope: if scope == "admin" {
                        TokenScope::Admin
                    } else {
                        TokenScope::ReadOnly
                    },
                    created_at: r.get(4)?,
                    application_id: r.get(5)?,
                    expires_at: r.get(6)?,
                })
            })?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })
        .await
    }
}

#[async_trait]
impl EndpointStore for SqliteStore {
    async fn insert_endpoint(&self, scope: Scope, mut endpoint: Endpoint) -> Result<()> {
        if let Some(app) = scope.application_id() {
            endpoint.application_id = Some(app.to_owned());
        }
        let endpoint = seal_endpoint(&self.cipher, endpoint);
        self.write(move |c| {
            c.execute_cached(
                &format!(
                    "insert into endpoints ({ENDPOINT_COLUMNS})
                     values (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19)"
                ),
                rusqlite::params_from_iter(endpoint_params(&endpoint)),
            )?;
            Ok(())
        })
        .await
    }

    async fn update_endpoint(&self, scope: Scope, endpoint: Endpoint) -> Result<bool> {
        let endpoint = seal_endpoint(&self.cipher, endpoint);
        self.write(move |c| {
            // An endpoint never changes hands: its owner is not written, only matched.
            let mut params = endpoint_params(&endpoint);
            params.pop();
            params.extend(scope.application_id().map(|a| SqlValue::from(a.to_owned())));
            let n = c.execute_cached(
                &format!(
                    "update endpoints set url = ?2, description = ?3, event_types = ?4, headers = ?5,
                         signing = ?6, secret = ?7, enabled = ?8, disabled_reason = ?9,
                         retry_schedule = ?10, timeout_ms = ?11, updated_at = ?13, render = ?14,
                         policy = ?15, previous_secret = ?16, previous_secret_until = ?17,
                         labels = ?18
                     where id = ?1 and deleted = 0 and ?12 is not null{}",
                    within_app(&scope, Owned::Directly("application_id"), 19)
                ),
                rusqlite::params_from_iter(params),
            )?;
            Ok(n == 1)
        })
        .await
    }

    async fn delete_endpoint(&self, scope: Scope, id: &str, now: Millis) -> Result<bool> {
        let id = id.to_owned();
        self.write(move |c| {
            let n = c.execute_cached(
                &format!(
                    "update endpoints set deleted = 1, enabled = 0, updated_at = ?2
                     where id = ?1 and deleted = 0{}",
                    within_app(&scope, Owned::Directly("application_id"), 3)
                ),
                rusqlite::params_from_iter(
                    [SqlValue::from(id.clone()), SqlValue::from(now)]
                        .into_iter()
                        .chain(scope.application_id().map(|a| SqlValue::from(a.to_owned()))),
                ),
            )?;
            if n == 0 {
                return Ok(false);
            }
            c.execute_cached(
                "update deliveries set status = 'cancelled', lease_owner = null,
                     lease_until = null, last_error = 'endpoint deleted', updated_at = ?2
                 where endpoint_id = ?1 and status = 'pending'",
                params![id, now],
            )?;
            Ok(n == 1)
        })
        .await
    }

    async fn list_endpoints(&self, scope: Scope) -> Result<Vec<Endpoint>> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(&format!(
                "select {ENDPOINT_COLUMNS} from endpoints where deleted = 0{} order by id",
                within_app(&scope, Owned::Directly("application_id"), 1)
            ))?;
            let args = app_args(&scope);
            let rows = stmt.query_map(rusqlite::params_from_iter(args), endpoint_from_row)?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await?
        .into_iter()
        .map(|e| open_endpoint(&self.cipher, e))
        .collect()
    }

    async fn failing_endpoints(&self, scope: Scope) -> Result<Vec<FailureStreak>> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(&format!(
                "select id, failure_streak, failing_since from endpoints
                 where deleted = 0 and failure_streak > 0{} order by id",
                within_app(&scope, Owned::Directly("application_id"), 1)
            ))?;
            let args = app_args(&scope);
            let rows = stmt.query_map(rusqlite::params_from_iter(args), |r| {
                Ok(FailureStreak {
                    endpoint_id: r.get(0)?,
                    failures: r.get(1)?,
                    since: r.get(2)?,
                })
            })?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }
}

#[async_trait]
impl SourceStore for SqliteStore {
    async fn insert_source(&self, _scope: Scope, mut source: Source) -> Result<()> {
        source.secret = source.secret.map(|s| self.cipher.seal(&s));
        self.write(move |c| {
            c.execute_cached(
                "insert into sources (id, name, spec, secret, created_at, updated_at)
                 values (?1, ?2, ?3, ?4, ?5, ?6)",
                rusqlite::params_from_iter(source_params(&source)),
            )?;
            Ok(())
        })
        .await
    }

    async fn update_source(&self, _scope: Scope, mut source: Source) -> Result<bool> {
        source.secret = source.secret.map(|s| self.cipher.seal(&s));
        self.write(move |c| {
            let n = c.execute_cached(
                "update sources set name = ?2, spec = ?3, secret = ?4, updated_at = ?6
                 where id = ?1 and ?5 is not null",
                rusqlite::params_from_iter(source_params(&source)),
            )?;
            Ok(n == 1)
        })
        .await
    }

    async fn delete_source(&self, _scope: Scope, id: &str) -> Result<bool> {
        let id = id.to_owned();
        self.write(move |c| Ok(c.execute_cached("delete from sources where id = ?1", [id])? == 1))
            .await
    }

    async fn list_sources(&self, _scope: Scope) -> Result<Vec<Source>> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(
                "select id, name, spec, secret, created_at, updated_at from sources order by id",
            )?;
            let rows = stmt.query_map([], source_from_row)?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await?
        .into_iter()
        .map(|mut s| {
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
impl ApplicationStore for SqliteStore {
    async fn insert_application(&self, _scope: Scope, application: Application) -> Result<()> {
        let settings = rows::application_settings(&application);
        self.write(move |c| {
            c.execute_cached(
                &format!(
                    "insert into applications ({APPLICATION_COLUMNS})
                     values (?1, ?2, ?3, ?4, ?5, ?6)"
                ),
                params![
                    application.id,
                    application.uid,
                    application.name,
                    settings,
                    application.created_at,
                    application.updated_at
                ],
            )?;
            Ok(())
        })
        .await
    }

    async fn update_application(&self, scope: Scope, application: Application) -> Result<bool> {
        let settings = rows::application_settings(&application);
        if !scope.includes(Some(&application.id)) {
            return Ok(false);
        }
        self.write(move |c| {
            let n = c.execute_cached(
                "update applications set uid = ?2, name = ?3, settings = ?4, updated_at = ?5
                 where id = ?1",
                params![
                    application.id,
                    application.uid,
                    application.name,
                    settings,
                    application.updated_at
                ],
            )?;
            Ok(n == 1)
        })
        .await
    }

    async fn delete_application(&self, scope: Scope, id: &str) -> Result<bool> {
        if !scope.includes(Some(id)) {
            return Ok(false);
        }
        let id = id.to_owned();
        self.write(move |c| {
            if c.execute_cached("delete from applications where id = ?1", [&id])? == 0 {
                return Ok(false);
            }
            // The events it alone was sent go with it; those others were sent too stay.
            c.execute_cached(
                "delete from events where id in (
                     select d.event_id from deliveries d join endpoints o on o.id = d.endpoint_id
                     where o.application_id = ?1)
                 and not exists (
                     select 1 from deliveries d join endpoints o on o.id = d.endpoint_id
                     where d.event_id = events.id
                         and (o.application_id is null or o.application_id <> ?1))",
                [&id],
            )?;
            c.execute_cached(
                "delete from attempts where delivery_id in (
                     select d.id from deliveries d join endpoints o on o.id = d.endpoint_id
                     where o.application_id = ?1)",
                [&id],
            )?;
            c.execute_cached(
                "delete from deliveries where endpoint_id in
                     (select id from endpoints where application_id = ?1)",
                [&id],
            )?;
            c.execute_cached("delete from endpoints where application_id = ?1", [&id])?;
            c.execute_cached("delete from api_tokens where application_id = ?1", [&id])?;
            c.execute_cached("delete from portal_links where application_id = ?1", [&id])?;
            Ok(true)
        })
        .await
    }

    async fn insert_portal_link(&self, _scope: Scope, link: PortalLink) -> Result<()> {
        self.write(move |c| {
            c.execute_cached(
                "insert into portal_links
                     (id, application_id, token_hash, read_only, expires_at, created_at)
                 values (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    link.id,
                    link.application_id,
                    link.token_hash,
                    link.read_only,
                    link.expires_at,
                    link.created_at
                ],
            )?;
            Ok(())
        })
        .await
    }

    async fn redeem_portal_link(
        &self,
        token_hash: &str,
        now: Millis,
    ) -> Result<Option<PortalLink>> {
        let hash = token_hash.to_owned();
        self.write(move |c| {
            Ok(c.query_row_cached(
                "update portal_links set used_at = ?2
                 where token_hash = ?1 and used_at is null and expires_at > ?2
                 returning id, application_id, token_hash, read_only, expires_at, used_at,
                     created_at",
                params![hash, now],
                |r| {
                    Ok(PortalLink {
                        id: r.get(0)?,
                        application_id: r.get(1)?,
                        token_hash: r.get(2)?,
                        read_only: r.get(3)?,
                        expires_at: r.get(4)?,
                        used_at: r.get(5)?,
                        created_at: r.get(6)?,
                    })
                },
            )
            .optional()?)
        })
        .await
    }

    async fn prune_application(
        &self,
        application_id: &str,
        before: Millis,
        batch: u32,
    ) -> Result<u64> {
        let id = application_id.to_owned();
        self.write(move |c| {
            let old: Vec<(String, String)> = c
                .prepare_cached(
                    "select d.id, d.event_id from deliveries d
                     join endpoints o on o.id = d.endpoint_id
                     where o.application_id = ?1 and d.created_at < ?2 and d.status <> 'pending'
                     limit +?3",
                )?
                .query_map(params![id, before, batch], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<rusqlite::Result<_>>()?;
            let mut attempts = c.prepare_cached("delete from attempts where delivery_id = ?1")?;
            let mut deliveries = c.prepare_cached("delete from deliveries where id = ?1")?;
            let mut events = c.prepare_cached(
                "delete from events where id = ?1
                 and not exists (select 1 from deliveries where event_id = ?1)",
            )?;
            for (delivery, _) in &old {
                attempts.execute([delivery])?;
                deliveries.execute([delivery])?;
            }
            for (_, event) in &old {
                events.execute([event])?;
            }
            Ok(old.len() as u64)
        })
        .await
    }

    async fn events_sent_since(&self, application_id: &str, since: Millis) -> Result<u64> {
        let (id, floor) = (
            application_id.to_owned(),
            crate::domain::id_floor(prefix::DELIVERY, since),
        );
        self.read(move |c| {
            // Delivery ids start with their time, so the endpoint index bounds the walk.
            let n: i64 = c
                .prepare_cached(
                    "select count(distinct d.event_id) from endpoints o
                     join deliveries d on d.endpoint_id = o.id and d.id >= ?2
                     where o.application_id = ?1",
                )?
                .query_row(params![id, floor], |r| r.get(0))?;
            Ok(n as u64)
        })
        .await
    }

    async fn prune_expired(&self, now: Millis) -> Result<u64> {
        self.write(move |c| {
            let links =
                c.execute_cached("delete from portal_links where expires_at <= ?1", [now])?;
            let sessions =
                c.execute_cached("delete from api_tokens where expires_at <= ?1", [now])?;
            Ok((links + sessions) as u64)
        })
        .await
    }

    async fn expire_portal_access(&self, scope: Scope, application_id: &str) -> Result<u64> {
        if !scope.includes(Some(application_id)) {
            return Ok(0);
        }
        let id = application_id.to_owned();
        self.write(move |c| {
            let links =
                c.execute_cached("delete from portal_links where application_id = ?1", [&id])?;
            let sessions = c.execute_cached(
                "delete from api_tokens where application_id = ?1 and expires_at is not null",
                [&id],
            )?;
            Ok((links + sessions) as u64)
        })
        .await
    }

    async fn list_applications(&self, scope: Scope) -> Result<Vec<Application>> {
        let rows = self
            .read(move |c| {
                let mut stmt = c.prepare_cached(&format!(
                    "select {APPLICATION_COLUMNS} from applications where 1 = 1{} order by id",
                    within_app(&scope, Owned::Directly("id"), 1)
                ))?;
                let args: Vec<String> = scope
                    .application_id()
                    .map(str::to_owned)
                    .into_iter()
                    .collect();
                let rows = stmt.query_map(rusqlite::params_from_iter(args), |r| {
                    Ok((
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get::<_, String>(3)?,
                        r.get(4)?,
                        r.get(5)?,
                    ))
                })?;
                Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
            })
            .await?;
        rows.into_iter()
            .map(|(id, uid, name, settings, created, updated)| {
                rows::application(id, uid, name, &settings, created, updated)
            })
            .collect()
    }
}

#[async_trait]
impl AccountStore for SqliteStore {
    async fn insert_account(&self, _scope: Scope, account: Account) -> Result<()> {
        let row = AccountRow::of(&account, &self.cipher);
        self.write(move |c| {
            c.execute_cached(
                &format!(
                    "insert into accounts ({ACCOUNT_COLUMNS}) values (?1, ?2, ?3, ?4, ?5, ?6, ?7)"
                ),
                params![
                    row.id,
                    row.name,
                    row.venue,
                    row.settings,
                    row.halted,
                    row.created_at,
                    row.updated_at
                ],
            )?;
            Ok(())
        })
        .await
    }

    async fn update_account(&self, _scope: Scope, account: Account) -> Result<bool> {
        let row = AccountRow::of(&account, &self.cipher);
        self.write(move |c| {
            let n = c.execute_cached(
                "update accounts set name = ?2, venue = ?3, settings = ?4, halted = ?5,
                 updated_at = ?6 where id = ?1",
                params![
                    row.id,
                    row.name,
                    row.venue,
                    row.settings,
                    row.halted,
                    row.updated_at
                ],
            )?;
            Ok(n == 1)
        })
        .await
    }

    async fn delete_account(&self, _scope: Scope, id: &str) -> Result<bool> {
        let id = id.to_owned();
        self.write(move |c| Ok(c.execute_cached("delete from accounts where id = ?1", [id])? == 1))
            .await
    }

    async fn list_accounts(&self, _scope: Scope) -> Result<Vec<Account>> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(&format!(
                "select {ACCOUNT_COLUMNS} from accounts order by id"
            ))?;
            let rows = stmt.query_map([], account_row)?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await?
        .into_iter()
        .map(|r| r.into_account(&self.cipher))
        .collect()
    }

    async fn account(&self, _scope: Scope, id: &str) -> Result<Option<Account>> {
        let id = id.to_owned();
        self.read(move |c| {
            Ok(c.prepare_cached(&format!(
                "select {ACCOUNT_COLUMNS} from accounts where id = ?1"
            ))?
            .query_row([id], account_row)
            .optional()?)
        })
        .await?
        .map(|r| r.into_account(&self.cipher))
        .transpose()
    }
}

fn account_row(r: &Row<'_>) -> rusqlite::Result<AccountRow> {
    Ok(AccountRow {
        id: r.get(0)?,
        name: r.get(1)?,
        venue: r.get(2)?,
        settings: r.get(3)?,
        halted: r.get(4)?,
        created_at: r.get(5)?,
        updated_at: r.get(6)?,
    })
}

/// An order's columns in [`ORDER_COLUMNS`]' order, as statement parameters.
fn order_params(row: &OrderRow) -> [&dyn rusqlite::ToSql; 12] {
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

fn order_row(r: &Row<'_>) -> rusqlite::Result<OrderRow> {
    Ok(OrderRow {
        id: r.get(0)?,
        client_order_id: r.get(1)?,
        account_id: r.get(2)?,
        endpoint_id: r.get(3)?,
        delivery_id: r.get(4)?,
        event_id: r.get(5)?,
        request: r.get(6)?,
        status: r.get(7)?,
        fill: r.get(8)?,
        reason: r.get(9)?,
        created_at: r.get(10)?,
        updated_at: r.get(11)?,
    })
}

#[async_trait]
impl OrderStore for SqliteStore {
    async fn record_order(&self, order: Order) -> Result<Order> {
        let row = OrderRow::of(&order);
        self.write(move |c| {
            c.execute_cached(
                &format!(
                    "insert into orders ({ORDER_COLUMNS})
                     values (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)
                     on conflict (client_order_id) do nothing"
                ),
                order_params(&row),
            )?;
            Ok(c.query_row_cached(
                &format!("select {ORDER_COLUMNS} from orders where client_order_id = ?1"),
                [&row.client_order_id],
                order_row,
            )?)
        })
        .await?
        .into_order()
    }

    async fn paper_book(&self, account_id: &str) -> Result<Option<PaperBook>> {
        let id = account_id.to_owned();
        let text: Option<String> = self
            .read(move |c| {
                Ok(c.query_row_cached(
                    "select book from paper_books where account_id = ?1",
                    [id],
                    |r| r.get(0),
                )
                .optional()?)
            })
            .await?;
        text.map(|t| super::rows::book_from_json(account_id, &t))
            .transpose()
    }

    async fn settle(&self, settlement: Settlement) -> Result<bool> {
        self.write(settling(settlement)).await
    }

    async fn settle_in_turn(&self, settlement: Settlement) -> Result<(bool, super::Flush)> {
        self.write_in_turn(settling(settlement)).await
    }

    async fn order(&self, client_order_id: &str) -> Result<Option<Order>> {
        let id = client_order_id.to_owned();
        self.read(move |c| {
            Ok(c.prepare_cached(&format!(
                "select {ORDER_COLUMNS} from orders where client_order_id = ?1"
            ))?
            .query_row([id], order_row)
            .optional()?)
        })
        .await?
        .map(OrderRow::into_order)
        .transpose()
    }

    async fn orders_in(
        &self,
        account_id: &str,
        status: crate::model::OrderStatus,
    ) -> Result<Vec<Order>> {
        let id = account_id.to_owned();
        self.read(move |c| {
            // The status is written into the statement, so that its partial index is used.
            let mut stmt = c.prepare_cached(&format!(
                "select {ORDER_COLUMNS} from orders
                 where account_id = ?1 and status = '{}' order by id",
                status.as_str()
            ))?;
            let rows = stmt.query_map([id], order_row)?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await?
        .into_iter()
        .map(OrderRow::into_order)
        .collect()
    }

    async fn list_orders(&self, _scope: Scope, account_id: &str, limit: u32) -> Result<Vec<Order>> {
        let id = account_id.to_owned();
        self.read(move |c| {
            let mut stmt = c.prepare_cached(&format!(
                "select {ORDER_COLUMNS} from orders where account_id = ?1
                 order by id desc limit +?2"
            ))?;
            let rows = stmt.query_map(params![id, i64::from(limit)], order_row)?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await?
        .into_iter()
        .map(OrderRow::into_order)
        .collect()
    }
}

#[async_trait]
impl EventLog for SqliteStore {
    async fn stats(&self, scope: Scope, since: Millis, latency_sample: u32) -> Result<StoreStats> {
        self.read(move |c| {
            let floor = crate::domain::id_floor(prefix::EVENT, since);
            let app: Vec<String> = scope
                .application_id()
                .map(str::to_owned)
                .into_iter()
                .collect();
            // Counted here rather than with `group by`: SQLite sorts every row of the window
            // for a `group by`, which on a busy hour costs several times the scan itself.
            let mut events_by_source: Vec<(String, u64)> = Vec::new();
            let mut stmt = c.prepare_cached(&format!(
                "select source from events where id >= ?1{}",
                within_app(&scope, Owned::ByEvent("id"), 2)
            ))?;
            let mut rows = stmt.query(rusqlite::params_from_iter(
                std::iter::once(floor.clone()).chain(app.clone()),
            ))?;
            while let Some(r) = rows.next()? {
                let source = text(r, 0)?;
                match events_by_source.iter_mut().find(|(s, _)| s == source) {
                    Some((_, n)) => *n += 1,
                    None => events_by_source.push((source.to_owned(), 1)),
                }
            }
            drop(rows);
            // Endpoint → its statuses with their deliveries and retries.
            let mut counted: std::collections::HashMap<String, Vec<(String, u64, u64)>> =
                std::collections::HashMap::new();
            let mut stmt = c.prepare_cached(&format!(
                "select endpoint_id, status, attempts from deliveries not indexed
                 where created_at >= ?1{}",
                within_app(&scope, Owned::ByEndpoint("endpoint_id"), 2)
            ))?;
            let mut rows = stmt.query(rusqlite::params_from_iter(
                std::iter::once(SqlValue::from(since))
                    .chain(app.iter().map(|a| SqlValue::from(a.clone()))),
            ))?;
            while let Some(r) = rows.next()? {
                let (endpoint, status) = (text(r, 0)?, text(r, 1)?);
                let retries = r.get::<_, i64>(2)?.saturating_sub(1).max(0) as u64;
                if !counted.contains_key(endpoint) {
                    counted.insert(endpoint.to_owned(), Vec::new());
                }
                let statuses = counted.get_mut(endpoint).expect("inserted above");
                match statuses.iter_mut().find(|(s, ..)| s == status) {
                    Some((_, n, t)) => {
                        *n += 1;
                        *t += retries;
                    }
                    None => statuses.push((status.to_owned(), 1, retries)),
                }
            }
            drop(rows);
            let mut deliveries: Vec<(String, String, u64, u64)> = counted
                .into_iter()
                .flat_map(|(e, statuses)| {
                    statuses
                        .into_iter()
                        .map(move |(s, n, t)| (e.clone(), s, n, t))
                })
                .collect();
            deliveries.sort();
            let latencies = c
                .prepare_cached(&format!(
                    // The newest first by id (ids grow with time, and are the key): the
                    // sample is found without joining and sorting every delivery of the
                    // window.
                    "select d.endpoint_id, d.updated_at - e.created_at
                     from (select endpoint_id, updated_at, event_id from deliveries d
                           where d.status = 'succeeded' and d.created_at >= ?1{}
                           order by d.id desc limit +?2) d
                     join events e on e.id = d.event_id",
                    within_app(&scope, Owned::ByEndpoint("d.endpoint_id"), 3)
                ))?
                .query_map(
                    rusqlite::params_from_iter(
                        [
                            SqlValue::from(since),
                            SqlValue::from(i64::from(latency_sample)),
                        ]
                        .into_iter()
                        .chain(app.iter().map(|a| SqlValue::from(a.clone()))),
                    ),
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )?
                .collect::<rusqlite::Result<_>>()?;
            Ok(StoreStats {
                events_by_source,
                deliveries,
                latencies,
            })
        })
        .await
    }

    async fn minute_counts(
        &self,
        scope: Scope,
        since: Millis,
        minutes: usize,
    ) -> Result<MinuteCounts> {
        self.read(move |c| {
            let mut out = MinuteCounts::empty(minutes);
            let app: Vec<SqlValue> = scope
                .application_id()
                .map(|a| SqlValue::from(a.to_owned()))
                .into_iter()
                .collect();
            let floor = crate::domain::id_floor(prefix::EVENT, since);
            let mut stmt = c.prepare_cached(&format!(
                "select created_at from events where id >= ?1{}",
                within_app(&scope, Owned::ByEvent("id"), 2)
            ))?;
            let mut rows = stmt.query(rusqlite::params_from_iter(
                std::iter::once(SqlValue::from(floor)).chain(app.clone()),
            ))?;
            while let Some(r) = rows.next()? {
                if let Some(m) = minute_of(r.get(0)?, since, minutes) {
                    out.events[m] += 1;
                }
            }
            drop(rows);
            let mut stmt = c.prepare_cached(&format!(
                "select status = 'succeeded', updated_at from deliveries not indexed
                 where updated_at >= ?1 and status in ('succeeded', 'failed'){}",
                within_app(&scope, Owned::ByEndpoint("endpoint_id"), 2)
            ))?;
            let mut rows = stmt.query(rusqlite::params_from_iter(
                std::iter::once(SqlValue::from(since)).chain(app),
            ))?;
            while let Some(r) = rows.next()? {
                if let Some(m) = minute_of(r.get(1)?, since, minutes) {
                    if r.get::<_, bool>(0)? {
                        out.succeeded[m] += 1;
                    } else {
                        out.failed[m] += 1;
                    }
                }
            }
            Ok(out)
        })
        .await
    }

    async fn ingest(
        &self,
        event: NewEvent,
        deliveries: Vec<NewDelivery>,
        lease: Lease,
        dedupe_since: Millis,
    ) -> Result<IngestOutcome> {
        let dedupe = self.dedupe.clone();
        self.write(move |c| {
            let mut index = dedupe.lock().expect("dedupe index lock");
            let (hash, replaced) =
                match index.lookup(c, &event.source, &event.dedupe_key, dedupe_since)? {
                    Seen::Duplicate { original_id } => {
                        return Ok(IngestOutcome::Duplicate { original_id });
                    }
                    Seen::New { hash, replaced } => (hash, replaced),
                };
            c.prepare_cached(
                "insert into events (id, source, type, dedupe_key, body, raw, created_at)
                 values (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?
            .execute(params![
                event.id,
                event.source,
                event.event_type.as_str(),
                event.dedupe_key,
                &*event.body,
                &event.raw[..],
                event.created_at
            ])?;
            insert_deliveries(c, &event.id, &deliveries, &lease, event.created_at)?;
            index.add(hash, &replaced, &event.id, dedupe_since);
            Ok(IngestOutcome::Stored)
        })
        .await
    }

    async fn events_missing_delivery(
        &self,
        endpoint_id: &str,
        since: Millis,
        after: Option<String>,
        limit: u32,
    ) -> Result<Vec<StoredEvent>> {
        let endpoint_id = endpoint_id.to_owned();
        self.read(move |c| {
            let floor = crate::domain::id_floor(prefix::EVENT, since);
            let after = after.unwrap_or_default();
            let mut stmt = c.prepare_cached(&format!(
                "select {EVENT_COLUMNS} from events e
                 where e.id >= ?2 and e.id > ?3
                   and not exists (select 1 from deliveries d
                                   where d.event_id = e.id and d.endpoint_id = ?1)
                 order by e.id limit +?4"
            ))?;
            let rows = stmt.query_map(params![endpoint_id, floor, after, limit], event_from_row)?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })
        .await
    }

    async fn prune(&self, before: Millis, batch: u32) -> Result<u64> {
        self.write(move |c| {
            let floor = crate::domain::id_floor(prefix::EVENT, before);
            let old: Vec<String> = c
                .prepare_cached(
                    "select id from events e
                     where id < ?1 and not exists (
                         select 1 from deliveries d where d.event_id = e.id and d.status = 'pending')
                     order by id limit +?2",
                )?
                .query_map(params![floor, batch], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            let mut attempts = c.prepare_cached(
                "delete from attempts where delivery_id in
                     (select id from deliveries where event_id = ?1)",
            )?;
            let mut deliveries = c.prepare_cached("delete from deliveries where event_id = ?1")?;
            let mut events = c.prepare_cached("delete from events where id = ?1")?;
            for id in &old {
                attempts.execute([id])?;
                deliveries.execute([id])?;
                events.execute([id])?;
            }
            Ok(old.len() as u64)
        })
        .await
    }

    async fn list_events(&self, scope: Scope, filter: EventFilter) -> Result<Vec<StoredEvent>> {
        self.read(move |c| {
            let q = query::events(Dialect::Sqlite, EVENT_COLUMNS, &scope, filter);
            select(c, q, event_from_row)
        })
        .await
    }

    async fn event_raw(&self, scope: Scope, id: &str) -> Result<Option<bytes::Bytes>> {
        let id = id.to_owned();
        self.read(move |c| {
            Ok(c.query_row_cached(
                &format!(
                    "select raw from events where id = ?1{}",
                    within_app(&scope, Owned::ByEvent("id"), 2)
                ),
                rusqlite::params_from_iter(scoped_args(id, &scope)),
                |r| Ok(bytes::Bytes::from(r.get::<_, Vec<u8>>(0)?)),
            )
            .optional()?)
        })
        .await
    }

    async fn get_event(&self, scope: Scope, id: &str) -> Result<Option<StoredEvent>> {
        let id = id.to_owned();
        self.read(move |c| {
            Ok(c.query_row_cached(
                &format!(
                    "select {EVENT_COLUMNS} from events where id = ?1{}",
                    within_app(&scope, Owned::ByEvent("id"), 2)
                ),
                rusqlite::params_from_iter(scoped_args(id, &scope)),
                event_from_row,
            )
            .optional()?)
        })
        .await
    }
}

#[async_trait]
impl DeliveryQueue for SqliteStore {
    async fn claim_due(&self, now: Millis, limit: u32, lease: Lease) -> Result<Vec<DeliveryJob>> {
        // Answered at its commit: a lease need not reach the disk, as the store releases
        // every lease when it opens; so a claim waits for no flush (nor do releases and
        // renewals below).
        self.write_committed(move |c| {
            // Two scans, each bounded by what it may give, and neither walking what is held
            // (see migration 13): the due deliveries of endpoints without ordering, in the
            // order they may be claimed (their next attempt, or the end of their lease if
            // later), from an index of them alone, so a backlog of ordered deliveries waiting
            // behind their predecessors is not walked on every claim; and the first pending
            // delivery of each ordering key (the keys found one by one in their index), the
            // only one of its key that may go, unless another of its key is being sent: one
            // stored a moment later with a lower id (its request was slower) waits for the
            // one claimed before it was there, so that a key never has two in flight.
            let row = |r: &Row<'_>| {
                Ok((
                    r.get::<_, Millis>(7)?,
                    DeliveryJob {
                        delivery_id: r.get(0)?,
                        event_id: r.get(1)?,
                        endpoint_id: r.get(2)?,
                        event_type: r.get(3)?,
                        body: Arc::from(r.get::<_, String>(4)?),
                        tries: r.get(5)?,
                        event_created_at: r.get(6)?,
                    },
                ))
            };
            let mut due: Vec<(Millis, DeliveryJob)> = c
                .prepare_cached(
                    "select d.id, d.event_id, d.endpoint_id, ev.type, ev.body, d.tries,
                            ev.created_at, max(d.next_attempt_at, coalesce(d.lease_until, 0))
                     from deliveries d
                     join endpoints ep on ep.id = d.endpoint_id
                     join events ev on ev.id = d.event_id
                     where d.status = 'pending' and d.order_key is null
                       and max(d.next_attempt_at, coalesce(d.lease_until, 0)) <= ?1
                       and ep.enabled = 1 and ep.deleted = 0
                     order by max(d.next_attempt_at, coalesce(d.lease_until, 0))
                     limit +?2",
                )?
                .query_map(params![now, limit], row)?
                .collect::<rusqlite::Result<_>>()?;
            let heads: Vec<(Millis, DeliveryJob)> = c
                .prepare_cached(
                    "with recursive keys(k) as (
                         select (select min(order_key) from deliveries
                                 where status = 'pending' and order_key is not null)
                         union all
                         select (select min(order_key) from deliveries
                                 where status = 'pending' and order_key is not null
                                   and order_key > k)
                         from keys where k is not null)
                     select d.id, d.event_id, d.endpoint_id, ev.type, ev.body, d.tries,
                            ev.created_at, d.next_attempt_at
                     from keys
                     join deliveries d on d.id = (select min(id) from deliveries
                                                  where status = 'pending'
                                                    and order_key = keys.k)
                     join endpoints ep on ep.id = d.endpoint_id
                     join events ev on ev.id = d.event_id
                     where d.next_attempt_at <= ?1
                       and (d.lease_until is null or d.lease_until <= ?1)
                       and ep.enabled = 1 and ep.deleted = 0
                       and not exists (select 1 from deliveries o
                                       where o.order_key = d.order_key
                                         and o.status = 'pending' and o.lease_until > ?1)
                     order by d.next_attempt_at
                     limit +?2",
                )?
                .query_map(params![now, limit], row)?
                .collect::<rusqlite::Result<_>>()?;
            due.extend(heads);
            due.sort_by_key(|(at, _)| *at);
            due.truncate(limit as usize);
            let jobs: Vec<DeliveryJob> = due.into_iter().map(|(_, job)| job).collect();
            let mut lease_stmt = c.prepare_cached(
                "update deliveries set lease_owner = ?2, lease_until = ?3 where id = ?1",
            )?;
            for job in &jobs {
                lease_stmt.execute(params![job.delivery_id, &*lease.owner, lease.until])?;
            }
            Ok(jobs)
        })
        .await
    }

    async fn release(&self, owner: &str, delivery_ids: Vec<String>) -> Result<()> {
        if delivery_ids.is_empty() {
            return Ok(());
        }
        let owner = owner.to_owned();
        self.write_committed(move |c| {
            let mut stmt = c.prepare_cached(
                "update deliveries set lease_owner = null, lease_until = null
                 where id = ?1 and lease_owner = ?2",
            )?;
            for id in &delivery_ids {
                stmt.execute(params![id, owner])?;
            }
            Ok(())
        })
        .await
    }

    async fn renew(&self, owner: &str, delivery_ids: Vec<String>, until: Millis) -> Result<()> {
        if delivery_ids.is_empty() {
            return Ok(());
        }
        let owner = owner.to_owned();
        self.write_committed(move |c| {
            let mut stmt = c.prepare_cached(
                "update deliveries set lease_until = ?3
                 where id = ?1 and lease_owner = ?2 and status = 'pending'",
            )?;
            for id in &delivery_ids {
                stmt.execute(params![id, owner, until])?;
            }
            Ok(())
        })
        .await
    }

    async fn requeue_failed(&self, endpoint_id: &str, since: Millis, now: Millis) -> Result<u64> {
        let endpoint_id = endpoint_id.to_owned();
        self.write(move |c| {
            let n = c.execute_cached(
                "update deliveries set status = 'pending', tries = 0, next_attempt_at = ?3,
                     lease_owner = null, lease_until = null, updated_at = ?3
                 where endpoint_id = ?1 and status in ('failed', 'expired') and created_at >= ?2",
                params![endpoint_id, since, now],
            )?;
            Ok(n as u64)
        })
        .await
    }

    async fn changed_since(&self, endpoint_id: &str, since: Millis) -> Result<Vec<(String, u64)>> {
        let endpoint_id = endpoint_id.to_owned();
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "select status, count(*) from deliveries
                 where endpoint_id = ?1 and updated_at >= ?2 group by status",
            )?;
            let rows = stmt.query_map(params![endpoint_id, since], |r| {
                Ok((r.get(0)?, r.get::<_, i64>(1)? as u64))
            })?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })
        .await
    }

    async fn defer(&self, owner: &str, delivery_ids: Vec<String>, until: Millis) -> Result<()> {
        if delivery_ids.is_empty() {
            return Ok(());
        }
        let owner = owner.to_owned();
        self.write(move |c| {
            let mut stmt = c.prepare_cached(
                "update deliveries set lease_owner = null, lease_until = null,
                     next_attempt_at = max(next_attempt_at, ?2)
                 where id = ?1 and status = 'pending' and lease_owner = ?3",
            )?;
            for id in &delivery_ids {
                stmt.execute(params![id, until, owner])?;
            }
            Ok(())
        })
        .await
    }

    async fn release_retries(&self, endpoint_id: &str, now: Millis) -> Result<u64> {
        let endpoint_id = endpoint_id.to_owned();
        self.write(move |c| {
            let n = c
                .prepare_cached(
                    "update deliveries indexed by deliveries_due set next_attempt_at = ?2
                     where status = 'pending' and next_attempt_at > ?2 and endpoint_id = ?1",
                )?
                .execute(params![endpoint_id, now])?;
            Ok(n as u64)
        })
        .await
    }

    async fn record_attempt(&self, record: AttemptRecord) -> Result<Recorded> {
        // Answered at its commit, flushed soon: the dispatcher goes on at once, and a lost
        // record (the machine's own crash within `SOON`) sends the delivery again.
        self.write_answered(
            move |c| {
                let a = &record.attempt;
                c.prepare_cached(
                    "insert into attempts (id, delivery_id, attempted_at, status_code, duration_ms,
                     error_kind, error, response_body)
                 values (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                )?
                .execute(params![
                    a.id,
                    a.delivery_id,
                    a.attempted_at,
                    a.status_code,
                    a.duration_ms as i64,
                    a.error_kind,
                    a.error,
                    a.response_body
                ])?;
                let (status, next_at, last_error) = record.delivery_state();
                c.prepare_cached(
                    "update deliveries set status = ?2, next_attempt_at = ?3, tries = tries + 1,
                     attempts = attempts + 1, lease_owner = null, lease_until = null,
                     last_status_code = ?4, last_error = ?5, updated_at = ?6
                 where id = ?1",
                )?
                .execute(params![
                    a.delivery_id,
                    status,
                    next_at,
                    a.status_code,
                    last_error,
                    a.attempted_at
                ])?;
                // A success only writes when it ends a streak: most attempts succeed, and the
                // endpoint row is not rewritten for each of them. It needs no `returning` either
                // (whose result table cost a noticeable part of recording each attempt): after a
                // success the streak is 0.
                let (streak, since): (u32, Option<Millis>) = match record.health {
                    Health::Neutral => (0, None),
                    Health::Success => {
                        c.prepare_cached(
                            "update endpoints set failure_streak = 0, failing_since = null
                         where id = ?1 and failure_streak > 0",
                        )?
                        .execute(params![record.endpoint_id])?;
                        (0, None)
                    }
                    Health::Failure => c
                        .prepare_cached(
                            "update endpoints set failure_streak = failure_streak + 1,
                             failing_since = coalesce(failing_since, ?2)
                         where id = ?1
                         returning failure_streak, failing_since",
                        )?
                        .query_row(params![record.endpoint_id, a.attempted_at], |r| {
                            Ok((r.get(0)?, r.get(1)?))
                        })
                        .optional()?
                        .unwrap_or((0, None)),
                };
                let mut disabled = record.disables(streak, since);
                if let Some(d) = &disabled {
                    let n = c.execute_cached(
                        "update endpoints set enabled = 0, disabled_reason = ?2, updated_at = ?3
                     where id = ?1 and enabled = 1",
                        params![record.endpoint_id, d.reason, a.attempted_at],
                    )?;
                    if n == 0 {
                        // Already disabled (another attempt got there first): nothing new to say.
                        disabled = None;
                    }
                }
                Ok(Recorded { disabled })
            },
            Answer::Soon,
        )
        .await
    }

    async fn list_deliveries(&self, scope: Scope, filter: DeliveryFilter) -> Result<Vec<Delivery>> {
        self.read(move |c| {
            let q = query::deliveries(Dialect::Sqlite, DELIVERY_COLUMNS, &scope, filter);
            select(c, q, delivery_from_row)
        })
        .await
    }

    async fn get_delivery(&self, scope: Scope, id: &str) -> Result<Option<Delivery>> {
        let id = id.to_owned();
        self.read(move |c| {
            Ok(c.query_row_cached(
                &format!(
                    "select {DELIVERY_COLUMNS} from deliveries where id = ?1{}",
                    within_app(&scope, Owned::ByEndpoint("endpoint_id"), 2)
                ),
                rusqlite::params_from_iter(scoped_args(id, &scope)),
                delivery_from_row,
            )
            .optional()?)
        })
        .await
    }

    async fn list_attempts(&self, scope: Scope, delivery_id: &str) -> Result<Vec<Attempt>> {
        let id = delivery_id.to_owned();
        self.read(move |c| {
            // The hub sees every delivery: only an application's view is checked against
            // the deliveries (a check SQLite would otherwise make by listing them all).
            let owned = match scope {
                Scope::Hub => String::new(),
                Scope::Application(_) => format!(
                    " and delivery_id in (select id from deliveries where 1 = 1{})",
                    within_app(&scope, Owned::ByEndpoint("endpoint_id"), 2)
                ),
            };
            let mut stmt = c.prepare_cached(&format!(
                "select id, delivery_id, attempted_at, status_code, duration_ms, error_kind,
                        error, response_body
                 from attempts where delivery_id = ?1{owned} order by id"
            ))?;
            let rows =
                stmt.query_map(rusqlite::params_from_iter(scoped_args(id, &scope)), |r| {
                    Ok(Attempt {
                        id: r.get(0)?,
                        delivery_id: r.get(1)?,
                        attempted_at: r.get(2)?,
                        status_code: r.get(3)?,
                        duration_ms: r.get::<_, i64>(4)? as u64,
                        error_kind: r.get(5)?,
                        error: r.get(6)?,
                        response_body: r.get(7)?,
                    })
                })?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })
        .await
    }

    async fn retry_delivery(
        &self,
        scope: Scope,
        id: &str,
        now: Millis,
    ) -> Result<Option<Delivery>> {
        let id = id.to_owned();
        self.write(move |c| {
            let found = c
                .query_row_cached(
                    &format!(
                        "select 1 from deliveries where id = ?1{}",
                        within_app(&scope, Owned::ByEndpoint("endpoint_id"), 2)
                    ),
                    rusqlite::params_from_iter(scoped_args(id.clone(), &scope)),
                    |_| Ok(()),
                )
                .optional()?;
            if found.is_none() {
                return Ok(None);
            }
            // A delivery that is being attempted right now (leased) is left alone.
            c.execute_cached(
                "update deliveries set status = 'pending', tries = 0, next_attempt_at = ?2,
                     updated_at = ?2
                 where id = ?1 and (lease_until is null or lease_until <= ?2)",
                params![id, now],
            )?;
            Ok(c.query_row_cached(
                &format!("select {DELIVERY_COLUMNS} from deliveries where id = ?1"),
                [id],
                delivery_from_row,
            )
            .optional()?)
        })
        .await
    }

    async fn add_deliveries(
        &self,
        event_id: &str,
        deliveries: Vec<NewDelivery>,
        lease: Lease,
    ) -> Result<()> {
        let event_id = event_id.to_owned();
        self.write(move |c| {
            insert_deliveries(c, &event_id, &deliveries, &lease, crate::domain::now_ms())
        })
        .await
    }
}

#[async_trait]
impl Store for SqliteStore {
    fn disk_problem(&self) -> Option<String> {
        let dir = match self.readers.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let free = free_bytes(dir)?;
        (free < MIN_FREE_BYTES).then(|| {
            format!(
                "the disk of {} is full or nearly ({} KiB free; at least {} MiB are needed to \
                 store what arrives)",
                self.readers.path.display(),
                free / 1024,
                MIN_FREE_BYTES >> 20
            )
        })
    }

    async fn close(&self) {
        // Dropping the last sender ends the writer loop once the queued writes are done.
        self.writes.lock().expect("writer handle lock").take();
        let handle = self.writer.lock().expect("writer thread lock").take();
        let checkpointer = self.checkpointer.lock().expect("checkpointer lock").take();
        let _ = tokio::task::spawn_blocking(move || {
            if let Some(checkpointer) = checkpointer {
                checkpointer.stop();
            }
            // The writer truncates the WAL when it ends.
            if let Some(handle) = handle {
                let _ = handle.join();
            }
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{EventType, new_id, now_ms};

    fn store(dir: &tempfile::TempDir) -> SqliteStore {
        SqliteStore::open(&dir.path().join("hub.db"), Cipher::new([7; 32])).unwrap()
    }

    /// A lease of node `n` until `until`.
    fn lease_until(until: Millis) -> Lease {
        Lease {
            owner: Arc::from("n"),
            until,
        }
    }

    /// An event whose id is made now, or in the millisecond `at` (ids made later are greater,
    /// as `new_id` makes them).
    fn event_at(key: &str, at: Option<Millis>) -> NewEvent {
        static LATER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let id = match at {
            Some(ms) => {
                let n = LATER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                format!(
                    "{}_{}",
                    prefix::EVENT,
                    ulid::Ulid::from_parts(ms as u64, u128::from(n))
                )
            }
            None => new_id(prefix::EVENT),
        };
        NewEvent {
            body: Arc::from(format!(r#"{{"id":"{id}"}}"#)),
            id,
            source: "api".into(),
            event_type: EventType::parse("entry").unwrap(),
            dedupe_key: key.into(),
            raw: bytes::Bytes::new(),
            created_at: now_ms(),
        }
    }

    fn event(key: &str) -> NewEvent {
        event_at(key, None)
    }

    /// Stores an event without deliveries; gives its id, or the original's for a duplicate.
    async fn ingest(s: &SqliteStore, key: &str, since: Millis) -> (bool, String) {
        ingest_at(s, key, since, None).await
    }

    async fn ingest_at(
        s: &SqliteStore,
        key: &str,
        since: Millis,
        at: Option<Millis>,
    ) -> (bool, String) {
        let e = event_at(key, at);
        let id = e.id.clone();
        let lease = Lease {
            owner: Arc::from("n"),
            until: 0,
        };
        match s.ingest(e, vec![], lease, since).await.unwrap() {
            IngestOutcome::Stored => (true, id),
            IngestOutcome::Duplicate { original_id } => (false, original_id),
        }
    }

    fn index_len(s: &SqliteStore) -> usize {
        s.dedupe.lock().unwrap().len()
    }

    /// With every key hashing alike, each lookup meets the other keys' entries: the events
    /// table tells them apart, and none of them hides another. `same_ms` makes every event in
    /// one millisecond, where the entries' times cannot tell them apart either.
    async fn keys_with_the_same_hash_are_told_apart(same_ms: bool) {
        let dir = tempfile::tempdir().unwrap();
        let mut s = store(&dir);
        s.dedupe = Arc::new(Mutex::new(DedupeIndex::colliding()));
        let ms = now_ms();
        let at = |i: i64| Some(if same_ms { ms } else { ms - 100 + i });
        let (stored, a) = ingest_at(&s, "a", 0, at(1)).await;
        assert!(stored);
        let (stored, b) = ingest_at(&s, "b", 0, at(2)).await;
        assert!(stored, "another key with the same hash is not a duplicate");
        assert_eq!(ingest_at(&s, "a", 0, at(3)).await, (false, a.clone()));
        assert_eq!(ingest_at(&s, "b", 0, at(4)).await, (false, b.clone()));
        assert!(ingest_at(&s, "c", 0, at(5)).await.0);
        assert_eq!(index_len(&s), 3);

        // Past the window, "a" is stored again and its new event takes the old one's place.
        let (stored, a2) = ingest_at(&s, "a", now_ms() + 1, at(6)).await;
        assert!(stored);
        assert_eq!(index_len(&s), 3);
        assert_eq!(ingest_at(&s, "a", 0, at(7)).await, (false, a2));
        assert_eq!(ingest_at(&s, "b", 0, at(8)).await, (false, b));
        assert!(!ingest_at(&s, "c", 0, at(9)).await.0);
        s.close().await;
    }

    #[tokio::test]
    async fn keys_with_the_same_hash_are_told_apart_across_milliseconds() {
        keys_with_the_same_hash_are_told_apart(false).await;
    }

    #[tokio::test]
    async fn keys_with_the_same_hash_are_told_apart_within_one_millisecond() {
        keys_with_the_same_hash_are_told_apart(true).await;
    }

    /// An entry whose event is no longer stored (pruned here; a rolled-back write leaves the
    /// same) makes nothing a duplicate, and goes when its hash is next looked up.
    #[tokio::test]
    async fn an_entry_without_its_event_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = store(&dir);
        s.dedupe = Arc::new(Mutex::new(DedupeIndex::colliding()));
        assert!(ingest(&s, "a", 0).await.0);
        assert_eq!(s.prune(now_ms() + 1, 10).await.unwrap(), 1);
        assert_eq!(index_len(&s), 1);
        assert!(ingest(&s, "b", 0).await.0);
        assert_eq!(index_len(&s), 1, "the pruned event's entry went");
        assert!(ingest(&s, "a", 0).await.0, "the pruned key is free");
        assert_eq!(index_len(&s), 2);
        s.close().await;
    }

    /// The statements a connection has prepared that SQLite compiled again since, with how
    /// many times.
    fn recompiled(c: &Connection) -> Vec<(String, i32)> {
        statements(c)
            .into_iter()
            .filter(|(_, recompiled, _)| *recompiled > 0)
            .map(|(sql, recompiled, _)| (sql, recompiled))
            .collect()
    }

    /// The statements prepared on `c`: each one's text, how many times it was compiled again,
    /// and how many times it ran.
    fn statements(c: &Connection) -> Vec<(String, i32, i32)> {
        statement_counters(c)
            .into_iter()
            .map(|(sql, recompiled, runs, _)| (sql, recompiled, runs))
            .collect()
    }

    /// The statements prepared on `c`, each with its text, how many times it was compiled
    /// again, ran, and stepped SQLite's virtual machine (rows walked, tests made) in all.
    fn statement_counters(c: &Connection) -> Vec<(String, i32, i32, i32)> {
        let mut found = Vec::new();
        // SAFETY: the connection is borrowed for the walk, so its statements outlive it; the
        // walk only reads their counters and text.
        unsafe {
            let db = c.handle();
            let mut stmt = rusqlite::ffi::sqlite3_next_stmt(db, std::ptr::null_mut());
            while !stmt.is_null() {
                let counter = |which| rusqlite::ffi::sqlite3_stmt_status(stmt, which, 0);
                let sql = std::ffi::CStr::from_ptr(rusqlite::ffi::sqlite3_sql(stmt));
                found.push((
                    sql.to_string_lossy().into_owned(),
                    counter(rusqlite::ffi::SQLITE_STMTSTATUS_REPREPARE),
                    counter(rusqlite::ffi::SQLITE_STMTSTATUS_RUN),
                    counter(rusqlite::ffi::SQLITE_STMTSTATUS_VM_STEP),
                ));
                stmt = rusqlite::ffi::sqlite3_next_stmt(db, stmt);
            }
        }
        found
    }

    /// A claim walks only what it may take: not the deliveries a live lease holds (those
    /// queued in a busy dispatcher's memory, however many), nor the backlog of an ordering
    /// key waiting behind the one in flight. Under an order destination every signal makes a
    /// claim, and one that walked 10,000 held deliveries took 20–50 ms of the writer's time,
    /// so a backlog made every claim slower and the backlog longer.
    #[tokio::test]
    async fn a_claim_does_not_walk_what_is_held() {
        const HELD: usize = 2_000;
        let dir = tempfile::tempdir().unwrap();
        let s = store(&dir);
        s.insert_endpoint(Scope::Hub, Endpoint::example("ep_a"))
            .await
            .unwrap();
        let now = now_ms();
        let held = lease_until(now + 60_000);
        for i in 0..HELD {
            // Handed over to this node: leased at their ingest.
            let unordered = NewDelivery {
                id: new_id(prefix::DELIVERY),
                endpoint_id: "ep_a".into(),
                order_key: None,
            };
            // Behind the first of their key, which is in flight.
            let ordered = NewDelivery {
                id: new_id(prefix::DELIVERY),
                endpoint_id: "ep_a".into(),
                order_key: Some(format!("ep_a|{}", ["BTC", "ETH"][i % 2])),
            };
            s.ingest(
                event(&format!("k{i}")),
                vec![unordered, ordered],
                held.clone(),
                0,
            )
            .await
            .unwrap();
        }
        // A moment after the last was stored, long before the leases end.
        let now = now_ms() + 1_000;
        let first = s.claim_due(now, 100, held.clone()).await.unwrap();
        assert_eq!(first.len(), 2, "the first of each key: {first:#?}");
        let steps = |c: &Connection| -> i64 {
            statement_counters(c)
                .iter()
                .map(|(_, _, _, steps)| i64::from(*steps))
                .sum()
        };
        let before = s.write(move |c| Ok(steps(c))).await.unwrap();
        let second = s.claim_due(now, 100, held.clone()).await.unwrap();
        let walked = s.write(move |c| Ok(steps(c))).await.unwrap() - before;
        assert!(second.is_empty(), "everything is held: {second:#?}");
        assert!(
            walked < 1_000,
            "a claim finding nothing took {walked} steps among {} held deliveries",
            2 * HELD
        );
        // What a claim may take it still finds: a delivery given back, and one whose lease
        // ran out (its node went silent).
        let given_back = first[0].delivery_id.clone();
        s.release(&held.owner, vec![given_back.clone()])
            .await
            .unwrap();
        let expired = NewDelivery {
            id: new_id(prefix::DELIVERY),
            endpoint_id: "ep_a".into(),
            order_key: None,
        };
        s.ingest(
            event("silent"),
            vec![expired.clone()],
            lease_until(now - 1),
            0,
        )
        .await
        .unwrap();
        let mut third: Vec<String> = s
            .claim_due(now, 100, held)
            .await
            .unwrap()
            .into_iter()
            .map(|j| j.delivery_id)
            .collect();
        third.sort();
        let mut expected = vec![given_back, expired.id];
        expected.sort();
        assert_eq!(third, expected);
        s.close().await;
    }

    /// The writer's `begin` and `commit` are compiled once and run for every batch, not
    /// parsed again each time.
    #[tokio::test]
    async fn the_writers_begin_and_commit_are_compiled_once() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(&dir);
        for i in 0..3 {
            s.ingest(event(&format!("k{i}")), Vec::new(), lease_until(0), 0)
                .await
                .unwrap();
        }
        let found = s.write(|c| Ok(statements(c))).await.unwrap();
        for sql in ["begin immediate", "commit"] {
            let runs = found
                .iter()
                .find(|(text, _, _)| text == sql)
                .map(|(_, _, runs)| *runs);
            assert!(
                runs.is_some_and(|n| n >= 3),
                "{sql}: {runs:?} runs of one statement in {found:#?}"
            );
        }
        s.close().await;
    }

    /// New databases get small pages, whichever way they are made; a database made before
    /// keeps the pages it has.
    #[tokio::test]
    async fn a_new_database_has_pages_of_one_kib_and_an_old_one_keeps_its_own() {
        let page_size = |path: &Path| -> i64 {
            Connection::open(path)
                .unwrap()
                .query_row("pragma page_size", [], |r| r.get(0))
                .unwrap()
        };
        let dir = tempfile::tempdir().unwrap();
        store(&dir).close().await;
        assert_eq!(page_size(&dir.path().join("hub.db")), 1024);
        let migrated = dir.path().join("migrated.db");
        migrate_file(&migrated).unwrap();
        assert_eq!(page_size(&migrated), 1024);
        let old = dir.path().join("old.db");
        Connection::open(&old)
            .unwrap()
            .execute_batch("pragma page_size = 4096; pragma journal_mode = wal; create table t (x)")
            .unwrap();
        SqliteStore::open(&old, Cipher::new([7; 32]))
            .unwrap()
            .close()
            .await;
        assert_eq!(page_size(&old), 4096);
    }

    /// The claim runs several times a second under load: its statements are compiled once,
    /// not again at every run with new values (as a bare `limit ?n` makes SQLite do).
    #[tokio::test]
    async fn the_claims_statements_are_compiled_once() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(&dir);
        let lease = lease_until;
        for (i, order_key) in [None, Some("ep_a|BTC/USDT"), None].into_iter().enumerate() {
            let delivery = NewDelivery {
                id: new_id(prefix::DELIVERY),
                endpoint_id: "ep_a".into(),
                order_key: order_key.map(str::to_owned),
            };
            s.ingest(event(&format!("k{i}")), vec![delivery], lease(0), 0)
                .await
                .unwrap();
        }
        for limit in [5, 6, 7] {
            let now = now_ms();
            s.claim_due(now, limit, lease(now + 1)).await.unwrap();
        }
        let found = s.write(|c| Ok(recompiled(c))).await.unwrap();
        assert!(found.is_empty(), "compiled again: {found:#?}");
        s.close().await;
    }

    /// A claim, its release and its renewal are answered at their commit, without a flush of
    /// their own: their leases need not survive a crash (the store releases every lease when
    /// it opens). Stored events and attempts are flushed before they are answered.
    #[tokio::test]
    async fn leases_are_written_without_a_flush_of_their_own() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(&dir);
        let lease = lease_until;
        s.insert_endpoint(Scope::Hub, Endpoint::example("ep_a"))
            .await
            .unwrap();
        let delivery = NewDelivery {
            id: new_id(prefix::DELIVERY),
            endpoint_id: "ep_a".into(),
            order_key: Some("ep_a|BTC/USDT".into()),
        };
        let before = s.flushes();
        s.ingest(event("k"), vec![delivery.clone()], lease(0), 0)
            .await
            .unwrap();
        let stored = s.flushes();
        assert!(stored > before, "an ingest is answered once flushed");
        let now = now_ms();
        let claimed = s.claim_due(now, 10, lease(now + 60_000)).await.unwrap();
        assert_eq!(claimed.len(), 1);
        s.renew("n", vec![delivery.id.clone()], now + 120_000)
            .await
            .unwrap();
        s.release("n", vec![delivery.id.clone()]).await.unwrap();
        assert_eq!(s.flushes(), stored, "leases made a flush");
        // Committed all the same: the delivery released is claimed again at once.
        let again = s.claim_due(now, 10, lease(now + 60_000)).await.unwrap();
        assert_eq!(again.len(), 1);
        s.close().await;
        // And on disk once the store is closed.
        let reopened = store(&dir);
        let leased: i64 = reopened
            .read(|c| {
                Ok(c.query_row(
                    "select count(*) from deliveries where status = 'pending'",
                    [],
                    |r| r.get(0),
                )?)
            })
            .await
            .unwrap();
        assert_eq!(leased, 1);
        reopened.close().await;
    }

    /// An attempt's record is answered at its commit (the dispatcher goes on at once, and
    /// reads see it), and flushed soon after though no other write comes along.
    #[tokio::test]
    async fn an_attempt_is_answered_at_its_commit_and_flushed_soon_after() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(&dir);
        let lease = Lease {
            owner: Arc::from("n"),
            until: now_ms() + 60_000,
        };
        let delivery = NewDelivery {
            id: new_id(prefix::DELIVERY),
            endpoint_id: "ep_a".into(),
            order_key: None,
        };
        s.ingest(event("k"), vec![delivery.clone()], lease, 0)
            .await
            .unwrap();
        let stored = s.flushes();
        let record = AttemptRecord {
            attempt: Attempt {
                id: new_id("att"),
                delivery_id: delivery.id.clone(),
                attempted_at: now_ms(),
                status_code: Some(200),
                duration_ms: 3,
                error_kind: None,
                error: None,
                response_body: "ok".into(),
            },
            next: NextStep::Done,
            disable_endpoint: None,
            endpoint_id: "ep_a".into(),
            health: Health::Success,
            auto_disable: None,
        };
        s.record_attempt(record).await.unwrap();
        let status: String = s
            .read(move |c| {
                Ok(c.query_row(
                    "select status from deliveries where id = ?1",
                    [&delivery.id],
                    |r| r.get(0),
                )?)
            })
            .await
            .unwrap();
        assert_eq!(status, "succeeded");
        // Flushed on its own, within `SOON` (waited for here with a generous deadline).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while s.flushes() == stored {
            assert!(
                std::time::Instant::now() < deadline,
                "the attempt was never flushed"
            );
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        s.close().await;
    }

    /// A write answered in turn is seen by every later read at once, and answered again
    /// once it is on disk.
    #[tokio::test]
    async fn a_write_in_turn_is_seen_before_its_flush_and_flushed_after() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(&dir);
        let before = s.flushes();
        let (written, flush) = s
            .write_in_turn(|c| {
                Ok(c.execute(
                    "insert into paper_books (account_id, book, revision, updated_at)
                     values ('acc_a', '{}', 1, 0)",
                    [],
                )?)
            })
            .await
            .unwrap();
        assert_eq!(written, 1);
        let seen: i64 = s
            .read(|c| Ok(c.query_row("select count(*) from paper_books", [], |r| r.get(0))?))
            .await
            .unwrap();
        assert_eq!(seen, 1, "a later read sees the committed write");
        flush.await.unwrap();
        assert!(s.flushes() > before, "answered again once flushed");
        s.close().await;
    }

    /// A write that fails after the dedupe check leaves no entry: the key stays free.
    #[tokio::test]
    async fn a_failed_ingest_leaves_the_key_free() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(&dir);
        let e = event("a");
        let delivery = NewDelivery {
            id: new_id(prefix::DELIVERY),
            endpoint_id: "ep_a".into(),
            order_key: None,
        };
        let lease = Lease {
            owner: Arc::from("n"),
            until: 0,
        };
        // The same delivery twice breaks the primary key after the event is written.
        let failed = s
            .ingest(e, vec![delivery.clone(), delivery], lease, 0)
            .await;
        assert!(matches!(failed, Err(StoreError::Conflict(_))), "{failed:?}");
        assert_eq!(index_len(&s), 0);
        assert!(ingest(&s, "a", 0).await.0);
        s.close().await;
    }
}
