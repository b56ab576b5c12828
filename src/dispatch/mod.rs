//! Dispatch: deciding which delivery is attempted when.
//!
//! One task owns all dispatch state, so it needs no locks. Work reaches it two ways:
//!
//! * **hand-over**: right after an ingest commits, its deliveries (already leased to this node)
//!   arrive through a bounded channel: no polling delay between a commit and the first attempt;
//! * **claim**: on a short tick, or when woken, it claims due deliveries from the store: retries
//!   whose time has come, work given back, and whatever an earlier run left pending.
//!
//! Attempts run as tasks, at most `max_in_flight` HTTP requests at once and `per_endpoint` per
//! endpoint; deliveries waiting for a slot queue per endpoint, at most `max_queued` in all.
//! Anything that does not fit is given back to the store (its lease released), so memory stays
//! bounded and nothing is lost: the store is always the truth, memory only a cache of work in
//! hand. A slot is freed as soon as its HTTP exchange ends; recording the result (a group
//! commit) goes on without holding the receiver's slot.
//!
//! When an endpoint that was failing answers with success again, its waiting retries are made
//! due at once, so an outage drains in seconds instead of each delivery sitting out its own
//! backoff.
//!
//! Attempts go through a [`deliver::Transport`] (a webhook over HTTP today), and what an
//! attempt's outcome means for its delivery and endpoint (next step, record, auto-disable) is
//! the `outcome` module's: this one only decides when.

use std::collections::VecDeque;
use std::collections::hash_map::Entry;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::deliver::{self, retry};

mod outcome;
use crate::domain::RateLimit;
use crate::domain::Verdict;
use crate::domain::{self, Millis};
use crate::metrics::Metrics;
use crate::model::{DeliveryJob, Lease};
use crate::ratelimit::Bucket;
use crate::registry::Registry;
use crate::store::Store;
use outcome::{Context, attempt_one};

/// The dispatcher's maps and sets are keyed by ids the hub made and looked up for every
/// delivery: foldhash (seeded per process) instead of SipHash, which was 1.3 % of the hub's
/// samples under W3.
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
type HashSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;

/// Limits and timings of the dispatcher.
#[derive(Debug, Clone)]
pub struct DispatchConfig {
    /// Whether this node delivers at all (an API-only node does not: other nodes claim the
    /// deliveries it stores).
    pub worker: bool,
    /// Attempts in flight at once, over all endpoints.
    pub max_in_flight: usize,
    /// Attempts in flight at once to one endpoint.
    pub per_endpoint: usize,
    /// Deliveries held in memory waiting for a slot; beyond this they wait in the store.
    pub max_queued: usize,
    /// How long a claimed delivery belongs to this node.
    pub lease: Duration,
    /// How often the store is asked for due retries and orphaned work.
    pub scan_interval: Duration,
    /// How long shutdown waits for attempts in flight before giving them back.
    pub shutdown_grace: Duration,
    /// Consecutive failed attempts after which an endpoint is disabled (0: never)…
    pub auto_disable_failures: u32,
    /// …provided they span at least this long.
    pub auto_disable_after: Duration,
}

/// An endpoint the dispatcher disabled, for the hub to announce.
#[derive(Debug, Clone)]
pub struct EndpointDisabled {
    pub endpoint_id: String,
    pub url: String,
    pub reason: String,
    pub failures: u32,
    pub failing_since: Option<Millis>,
}

impl Default for DispatchConfig {
    fn default() -> Self {
        Self {
            worker: true,
            max_in_flight: 512,
            per_endpoint: 16,
            max_queued: 10_000,
            lease: Duration::from_secs(60),
            scan_interval: Duration::from_millis(250),
            shutdown_grace: Duration::from_secs(15),
            auto_disable_failures: 50,
            auto_disable_after: Duration::from_secs(24 * 3600),
        }
    }
}

/// Capacity of the hand-over channel, in batches (one batch per ingested event).
const HAND_OVER_BATCHES: usize = 4096;

/// How long ingest waits for room in a full hand-over channel before it gives the deliveries
/// to the store instead, to be claimed when the dispatcher has room.
const HAND_OVER_WAIT: Duration = Duration::from_millis(50);

/// Deliveries stored leased to this node, handed to the dispatcher, and until when that lease
/// holds: past it the store may have given them to another claim.
struct HandOver {
    leased_until: Millis,
    jobs: Vec<DeliveryJob>,
}

/// The side of the dispatcher that ingest and the API talk to.
#[derive(Clone)]
pub struct DispatchHandle {
    hand_over: mpsc::Sender<HandOver>,
    wake: Arc<Notify>,
    node: Arc<str>,
    lease: Duration,
    store: Arc<dyn Store>,
    worker: bool,
    pauses: mpsc::UnboundedSender<(String, Millis)>,
}

impl DispatchHandle {
    /// This node's id, which its leases carry.
    pub fn node(&self) -> &Arc<str> {
        &self.node
    }

    /// The lease new deliveries are created with, when they will be handed over at once. A
    /// node that does not deliver creates them unleased, for the other nodes to claim.
    pub fn lease(&self, now: Millis) -> Lease {
        Lease {
            owner: self.node.clone(),
            until: match self.worker {
                true => now + self.lease.as_millis() as i64,
                false => 0,
            },
        }
    }

    /// Hands freshly stored deliveries, leased to this node until `leased_until`, to the
    /// dispatcher. When the dispatcher is full they are given back to the store instead, to be
    /// claimed when there is room.
    pub async fn hand_over(&self, leased_until: Millis, jobs: Vec<DeliveryJob>) {
        if jobs.is_empty() || !self.worker {
            return;
        }
        // A full channel means the dispatcher is behind: wait a little for room (the event is
        // already stored and this only delays its answer) rather than give the deliveries to
        // the store at once, where claiming them again costs more work than waiting.
        let batch = HandOver { leased_until, jobs };
        if let Err(err) = self.hand_over.send_timeout(batch, HAND_OVER_WAIT).await {
            let batch = match err {
                mpsc::error::SendTimeoutError::Timeout(batch)
                | mpsc::error::SendTimeoutError::Closed(batch) => batch,
            };
            let ids = batch.jobs.into_iter().map(|j| j.delivery_id).collect();
            if let Err(e) = self.store.release(&self.node, ids).await {
                tracing::warn!(error = %e, "could not give back deliveries; they wait for their lease to end");
            }
            self.wake.notify_one();
        }
    }

    /// Whether the dispatcher has stopped (it closes its hand-over channel when it does).
    pub fn is_stopped(&self) -> bool {
        self.worker && self.hand_over.is_closed()
    }

    /// Pauses an endpoint until `until` (another node was told to wait).
    pub fn pause(&self, endpoint_id: String, until: Millis) {
        let _ = self.pauses.send((endpoint_id, until));
    }

    /// Asks the dispatcher to look for due work now (after a manual retry, say).
    pub fn wake(&self) {
        self.wake.notify_one();
    }
}

/// Starts the dispatcher task; it stops when `cancel` fires, after draining.
pub fn spawn(
    store: Arc<dyn Store>,
    registry: Arc<Registry>,
    outbound: Arc<dyn deliver::Transport>,
    metrics: Arc<Metrics>,
    config: DispatchConfig,
    notices: mpsc::UnboundedSender<EndpointDisabled>,
    cancel: CancellationToken,
) -> (DispatchHandle, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(HAND_OVER_BATCHES);
    let (pauses, paused_elsewhere) = mpsc::unbounded_channel();
    let wake = Arc::new(Notify::new());
    let node: Arc<str> = Arc::from(domain::new_id("node"));
    let handle = DispatchHandle {
        hand_over: tx,
        wake: wake.clone(),
        node: node.clone(),
        lease: config.lease,
        store: store.clone(),
        worker: config.worker,
        pauses,
    };
    if !config.worker {
        tracing::info!("no delivery workers on this node (--no-worker)");
        return (handle, tokio::spawn(async {}));
    }
    let dispatcher = Dispatcher::new(
        store,
        registry,
        outbound,
        metrics,
        config,
        node,
        notices,
        wake.clone(),
    );
    let task = tokio::spawn(dispatcher.run(rx, paused_elsewhere, wake, cancel));
    (handle, task)
}

/// An endpoint's slot is free again, with what its HTTP exchange said (nothing when no attempt
/// was made: the endpoint was disabled or deleted meanwhile, or the delivery expired).
struct SlotFreed {
    endpoint_id: String,
    verdict: Option<Verdict>,
    status: Option<u16>,
    retry_after_ms: Option<u64>,
}

impl SlotFreed {
    fn unused(endpoint_id: &str) -> Self {
        Self {
            endpoint_id: endpoint_id.to_owned(),
            verdict: None,
            status: None,
            retry_after_ms: None,
        }
    }
}

/// Deliveries a rate-limited or paused endpoint keeps in memory; the rest wait in the store.
const LIMITED_QUEUE: usize = 32;

/// Deferred deliveries gathered before they are written back between ticks.
const DEFER_BATCH: usize = 1000;

/// How long work a failing endpoint has no room for waits before it is looked at again (a
/// random part spreads the backlog out); its first success makes it all due at once anyway.
const FAILING_BACKOFF_MS: i64 = 15 * 60_000;
const FAILING_BACKOFF_SPREAD_MS: i64 = 5 * 60_000;

/// How often a failing endpoint is tried.
const PROBE_RATE: RateLimit = RateLimit {
    count: 1,
    per_ms: 1_000,
};

/// How long a 429 without a `Retry-After` pauses an endpoint.
const DEFAULT_PAUSE_MS: u64 = 1_000;

struct Dispatcher {
    store: Arc<dyn Store>,
    registry: Arc<Registry>,
    outbound: Arc<dyn deliver::Transport>,
    metrics: Arc<Metrics>,
    config: DispatchConfig,
    node: Arc<str>,
    /// Every delivery this node holds in memory, queued or in flight.
    held: HashSet<String>,
    /// The deliveries of attempt tasks still running (a part of `held`).
    attempting: HashSet<String>,
    /// Deliveries claimed again while their last attempt was still finishing (made pending
    /// by hand, or due again at once): the claim's lease is given back when that attempt is
    /// over, so they are claimed afresh then instead of waiting for the lease to run out.
    reclaimed: HashSet<String>,
    /// When the leases on `held` were last extended.
    renewed_at: Millis,
    /// Handed-over deliveries that waited in the channel until their lease had nearly run
    /// out, since this was last logged.
    stale_hand_overs: usize,
    queues: HashMap<String, VecDeque<DeliveryJob>>,
    /// The endpoints with queued jobs, in the order of their next turn: each turn starts at
    /// most one attempt, so when the slots are all taken the endpoints share them in turn and
    /// a fan-out's last follower waits no longer than its first (the endpoints of `queues`).
    turns: VecDeque<String>,
    /// HTTP requests in progress, per endpoint and in all.
    in_flight: HashMap<String, usize>,
    sending: usize,
    queued: usize,
    /// Where disabled endpoints are announced.
    notices: mpsc::UnboundedSender<EndpointDisabled>,
    /// Endpoints whose last attempt failed.
    failing: HashSet<String>,
    /// Endpoints told to wait (429, or 503 with Retry-After), until when.
    paused: HashMap<String, Millis>,
    /// Rate limits in use, per endpoint.
    buckets: HashMap<String, Bucket>,
    /// Deliveries a held-back endpoint had no room for, to be put back in the store not due
    /// before the given time.
    deferred: HashMap<(String, Millis), Vec<String>>,
    /// Attempt tasks (HTTP, then recording); each yields its delivery id when recorded, and
    /// whether the endpoint delivers in order (the next in line can then be claimed).
    running: JoinSet<(String, bool)>,
    /// Attempt tasks say here when their HTTP exchange is over, with its verdict.
    freed: (
        mpsc::UnboundedSender<SlotFreed>,
        mpsc::UnboundedReceiver<SlotFreed>,
    ),
    wake: Arc<Notify>,
}

impl Dispatcher {
    #[allow(clippy::too_many_arguments)]
    fn new(
        store: Arc<dyn Store>,
        registry: Arc<Registry>,
        outbound: Arc<dyn deliver::Transport>,
        metrics: Arc<Metrics>,
        config: DispatchConfig,
        node: Arc<str>,
        notices: mpsc::UnboundedSender<EndpointDisabled>,
        wake: Arc<Notify>,
    ) -> Self {
        Self {
            store,
            registry,
            outbound,
            metrics,
            config,
            node,
            held: HashSet::default(),
            attempting: HashSet::default(),
            reclaimed: HashSet::default(),
            renewed_at: domain::now_ms(),
            stale_hand_overs: 0,
            queues: HashMap::default(),
            turns: VecDeque::new(),
            in_flight: HashMap::default(),
            queued: 0,
            sending: 0,
            notices,
            failing: HashSet::default(),
            paused: HashMap::default(),
            buckets: HashMap::default(),
            deferred: HashMap::default(),
            running: JoinSet::new(),
            freed: mpsc::unbounded_channel(),
            wake,
        }
    }

    async fn run(
        mut self,
        mut hand_over: mpsc::Receiver<HandOver>,
        mut paused_elsewhere: mpsc::UnboundedReceiver<(String, Millis)>,
        wake: Arc<Notify>,
        cancel: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(self.config.scan_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // Before anything else, on every turn: a loop kept busy by finishing attempts must
            // not let the leases on what it holds run out, or the store would give that work
            // to another claim and it would be sent twice (a clock check unless one is due).
            self.renew_leases().await;
            tokio::select! {
                biased;
                () = cancel.cancelled() => break,
                Some(freed) = self.freed.1.recv() => {
                    self.slot_freed(freed);
                    self.pump().await;
                }
                Some(done) = self.running.join_next(), if !self.running.is_empty() => {
                    match done {
                        Ok((delivery_id, ordered)) => self.finished(delivery_id, ordered).await,
                        Err(e) => tracing::error!(error = %e, "a delivery task failed"),
                    }
                }
                Some((endpoint_id, until)) = paused_elsewhere.recv() => {
                    let entry = self.paused.entry(endpoint_id).or_insert(until);
                    *entry = (*entry).max(until);
                }
                // Before new work: under load the branches above are always ready, and with
                // the tick after them work given back to the store would go unclaimed until
                // the load ends.
                _ = tick.tick() => {
                    self.scan().await;
                    // Rate limits refill and pauses end with time.
                    self.pump().await;
                    self.flush_deferred().await;
                }
                // New work only while there is room for it, and then an event's deliveries
                // all together (the bound is exceeded by one event's at most): otherwise it
                // waits in the hand-over channel, in order, rather than going to the store to
                // be claimed again later, which costs the most work when there is the least to
                // spare.
                Some(batch) = hand_over.recv(), if self.queued < self.config.max_queued => {
                    self.take_over(batch).await;
                }
                () = wake.notified() => self.scan().await,
            }
        }
        self.drain(hand_over).await;
    }

    /// Takes handed-over deliveries into memory. A batch that waited in the channel (the
    /// dispatcher was behind) until its lease had less than half to run is not trusted: the
    /// lease may end before the next renewal, or has ended and the store has given that work
    /// to a claim already (this node's own included), which may have sent it. It goes back to
    /// the store, to be claimed as it now stands: sent once, by whoever claims it.
    async fn take_over(&mut self, batch: HandOver) {
        let lease_ms = self.config.lease.as_millis() as i64;
        if batch.leased_until - domain::now_ms() < lease_ms / 2 {
            self.stale_hand_overs += batch.jobs.len();
            let ids = batch
                .jobs
                .into_iter()
                .map(|j| j.delivery_id)
                .filter(|id| !self.held.contains(id))
                .collect();
            self.give_back(ids).await;
            self.wake.notify_one();
            return;
        }
        let mut overflow = Vec::new();
        for job in batch.jobs {
            overflow.extend(self.admit(job));
        }
        self.give_back(overflow).await;
        self.pump().await;
    }

    /// Takes a job into memory; returns it if there is no room.
    fn enqueue(&mut self, job: DeliveryJob) -> Option<String> {
        if self.queued >= self.config.max_queued && !self.held.contains(&job.delivery_id) {
            return Some(job.delivery_id);
        }
        self.admit(job)
    }

    /// Takes a job into memory whatever the number queued, unless its endpoint is held back
    /// and has all it can use (then it is deferred); returns it if it must go back.
    fn admit(&mut self, job: DeliveryJob) -> Option<String> {
        if self.held.contains(&job.delivery_id) {
            // Its attempt has been recorded and the store has it pending again, but the
            // task is not over: it is claimed afresh once it is.
            if self.attempting.contains(&job.delivery_id) {
                self.reclaimed.insert(job.delivery_id);
            }
            return None;
        }
        if self.is_full(&job.endpoint_id) {
            // Not due until the endpoint could take it, so claims do not wade through it.
            let until = self.held_back_until(&job.endpoint_id);
            self.deferred
                .entry((job.endpoint_id, until))
                .or_default()
                .push(job.delivery_id);
            return None;
        }
        self.held.insert(job.delivery_id.clone());
        self.queued += 1;
        match self.queues.entry(job.endpoint_id.clone()) {
            Entry::Occupied(mut queue) => queue.get_mut().push_back(job),
            Entry::Vacant(vacant) => {
                self.turns.push_back(job.endpoint_id.clone());
                vacant.insert(VecDeque::from([job]));
            }
        }
        None
    }

    /// Whether an endpoint is held back: failing (only a probe goes out), paused, or rate
    /// limited.
    fn is_limited(&self, endpoint_id: &str) -> bool {
        self.failing.contains(endpoint_id)
            || self.paused.contains_key(endpoint_id)
            || self
                .registry
                .endpoint(endpoint_id)
                .is_some_and(|e| e.rate_limit().is_some())
    }

    /// When work beyond what a held-back endpoint keeps in memory is worth claiming again: at
    /// the end of a pause, once its rate has let the queue through, or for a failing endpoint
    /// 15 to 20 minutes on (its first success makes everything due at once anyway).
    fn held_back_until(&self, endpoint_id: &str) -> Millis {
        let now = domain::now_ms();
        if let Some(&until) = self.paused.get(endpoint_id) {
            return until.max(now);
        }
        if self.failing.contains(endpoint_id) {
            // Grouped by the second, so that deferred work is written back in few batches.
            let spread = rand::random_range(0..FAILING_BACKOFF_SPREAD_MS / 1000) * 1000;
            return (now / 1000) * 1000 + FAILING_BACKOFF_MS + spread;
        }
        let rate = self
            .registry
            .endpoint(endpoint_id)
            .and_then(|e| e.rate_limit());
        match rate {
            Some(r) => now + (r.per_ms / r.count as u64 * LIMITED_QUEUE as u64) as i64,
            None => now,
        }
    }

    /// Whether a held-back endpoint has all the work it can use in memory: more waits in the
    /// store, so that one slow or dead endpoint cannot fill the dispatcher.
    fn is_full(&self, endpoint_id: &str) -> bool {
        self.queues
            .get(endpoint_id)
            .is_some_and(|q| q.len() >= LIMITED_QUEUE)
            && self.is_limited(endpoint_id)
    }

    /// Starts queued attempts while there are free slots, within each endpoint's concurrency,
    /// rate limit and pause, one endpoint's turn at a time. What a limited endpoint cannot
    /// send soon goes back to the store.
    async fn pump(&mut self) {
        if self.queued == 0 {
            return;
        }
        let now = domain::now_ms();
        let mut deferred: Vec<(String, Vec<String>, Millis)> = Vec::new();
        // Turns in a row that started nothing: once every endpoint has had one, none can.
        let mut idle_turns = 0;
        while self.sending < self.config.max_in_flight && idle_turns < self.turns.len() {
            let Some(endpoint_id) = self.turns.pop_front() else {
                break;
            };
            if self.start_next(&endpoint_id, now, &mut deferred).await {
                idle_turns = 0;
            } else {
                idle_turns += 1;
            }
            if self.queues.contains_key(&endpoint_id) {
                self.turns.push_back(endpoint_id);
            }
        }
        for (endpoint_id, ids, until) in deferred {
            if !ids.is_empty() {
                self.deferred
                    .entry((endpoint_id, until))
                    .or_default()
                    .extend(ids);
            }
        }
        if self.deferred.values().map(Vec::len).sum::<usize>() >= DEFER_BATCH {
            self.flush_deferred().await;
        }
    }

    /// An endpoint's turn: starts its next queued attempt if its concurrency, pause and rate
    /// limit allow (what a limit keeps from being sent soon is set aside in `deferred`), and
    /// says whether it did. An endpoint left with nothing queued is removed from `queues`.
    async fn start_next(
        &mut self,
        endpoint_id: &str,
        now: Millis,
        deferred: &mut Vec<(String, Vec<String>, Millis)>,
    ) -> bool {
        if self.queues.get(endpoint_id).is_none_or(VecDeque::is_empty) {
            self.queues.remove(endpoint_id);
            return false;
        }
        if let Some(&until) = self.paused.get(endpoint_id) {
            if until > now {
                let ids = self.take_queue(endpoint_id, 0);
                deferred.push((endpoint_id.to_owned(), ids, until));
                return false;
            }
            self.paused.remove(endpoint_id);
        }
        let endpoint = self.registry.endpoint(endpoint_id);
        let policy = endpoint.as_ref().map(|e| &e.policy);
        let concurrency = policy
            .and_then(|p| p.max_concurrency)
            .map_or(self.config.per_endpoint, |n| n as usize);
        let busy = self.in_flight.get(endpoint_id).copied().unwrap_or(0);
        if busy >= concurrency {
            return false;
        }
        let failing = self.failing.contains(endpoint_id);
        let limit = if failing {
            // A failing endpoint gets one probe a second, not a stream of doomed requests;
            // its first success releases everything waiting for it.
            Some(PROBE_RATE)
        } else {
            endpoint.as_ref().and_then(|e| e.rate_limit())
        };
        if let Some(limit) = limit {
            // Probes are this node's own; the endpoint's rate limit is shared between nodes.
            let taken = if !failing && self.store.shares_limits() {
                // Every node sharing the database draws from one bucket.
                self.store
                    .take_token(endpoint_id, limit, now)
                    .await
                    .unwrap_or_else(|e| {
                        tracing::warn!(error = %e, "could not take from the shared rate limit; waiting a second");
                        Err(1000)
                    })
            } else {
                self.buckets
                    .entry(endpoint_id.to_owned())
                    .or_insert_with(|| Bucket::full(limit, now))
                    .take(limit, now)
            };
            if let Err(wait) = taken {
                // Keep what the next moments can send; the rest waits in the store.
                let ids = self.take_queue(endpoint_id, LIMITED_QUEUE);
                let per_request = limit.per_ms / limit.count as u64;
                let later = now + (wait + per_request * LIMITED_QUEUE as u64) as i64;
                deferred.push((endpoint_id.to_owned(), ids, later));
                return false;
            }
        }
        let Some(job) = self
            .queues
            .get_mut(endpoint_id)
            .and_then(VecDeque::pop_front)
        else {
            return false;
        };
        if self.queues.get(endpoint_id).is_some_and(VecDeque::is_empty) {
            self.queues.remove(endpoint_id);
        }
        self.queued -= 1;
        self.sending += 1;
        *self.in_flight.entry(endpoint_id.to_owned()).or_default() += 1;
        self.attempting.insert(job.delivery_id.clone());
        self.running.spawn(attempt_one(
            Context {
                store: self.store.clone(),
                node: self.node.clone(),
                registry: self.registry.clone(),
                outbound: self.outbound.clone(),
                metrics: self.metrics.clone(),
                freed: self.freed.0.clone(),
                notices: self.notices.clone(),
                auto_disable: (self.config.auto_disable_failures > 0).then_some((
                    self.config.auto_disable_failures,
                    self.config.auto_disable_after.as_millis() as Millis,
                )),
            },
            job,
        ));
        true
    }

    /// Puts what held-back endpoints had no room for back in the store, a batch at a time
    /// (on the tick, or when a thousand have gathered) rather than one write per delivery.
    async fn flush_deferred(&mut self) {
        if self.deferred.is_empty() {
            return;
        }
        let mut by_time: HashMap<Millis, Vec<String>> = HashMap::default();
        for ((_, until), ids) in self.deferred.drain() {
            by_time.entry(until).or_default().extend(ids);
        }
        for (until, ids) in by_time {
            if let Err(e) = self.store.defer(&self.node, ids, until).await {
                tracing::warn!(error = %e, "could not put deliveries back; they wait for their lease to end");
            }
        }
    }

    /// Removes an endpoint's queued jobs beyond the first `keep`, and returns their ids.
    fn take_queue(&mut self, endpoint_id: &str, keep: usize) -> Vec<String> {
        let Some(queue) = self.queues.get_mut(endpoint_id) else {
            return Vec::new();
        };
        if queue.len() <= keep {
            return Vec::new();
        }
        let ids: Vec<String> = queue.drain(keep..).map(|j| j.delivery_id).collect();
        if queue.is_empty() {
            self.queues.remove(endpoint_id);
            self.turns.retain(|id| id != endpoint_id);
        }
        self.queued -= ids.len();
        for id in &ids {
            self.held.remove(id);
        }
        ids
    }

    /// A slot is free; when an attempt was made, the endpoint's health is known.
    fn slot_freed(&mut self, freed: SlotFreed) {
        let endpoint_id = freed.endpoint_id.as_str();
        let verdict = freed.verdict;
        // Too many requests (or unavailable, saying for how long): the whole endpoint waits.
        let pause = match (freed.status, freed.retry_after_ms) {
            (Some(429), wait) => Some(wait.unwrap_or(DEFAULT_PAUSE_MS)),
            (Some(503), Some(wait)) => Some(wait),
            (_, Some(wait)) if verdict == Some(Verdict::Retry) => Some(wait),
            _ => None,
        };
        if let Some(wait) = pause {
            let until = domain::now_ms() + wait.min(retry::MAX_RETRY_AFTER_MS) as i64;
            let entry = self.paused.entry(endpoint_id.to_owned()).or_insert(until);
            *entry = (*entry).max(until);
            if self.store.shares_limits() {
                // The other nodes pause too, and claim nothing for it until then.
                let (store, endpoint_id) = (self.store.clone(), endpoint_id.to_owned());
                tokio::spawn(async move {
                    if let Err(e) = store.pause(&endpoint_id, until).await {
                        tracing::warn!(error = %e, "could not share an endpoint's pause");
                    }
                });
            }
            tracing::info!(endpoint = %endpoint_id, wait_ms = wait, "endpoint asked to wait; its deliveries are paused");
        }
        self.sending -= 1;
        if let Some(n) = self.in_flight.get_mut(endpoint_id) {
            *n -= 1;
            if *n == 0 {
                self.in_flight.remove(endpoint_id);
            }
        }
        match verdict {
            Some(Verdict::Success) if self.failing.remove(endpoint_id) => {
                // What was set aside for it in memory is due now too, not in 15 minutes.
                let keys: Vec<(String, Millis)> = self
                    .deferred
                    .keys()
                    .filter(|(id, _)| id == endpoint_id)
                    .cloned()
                    .collect();
                let set_aside: Vec<String> = keys
                    .iter()
                    .filter_map(|k| self.deferred.remove(k))
                    .flatten()
                    .collect();
                self.release_retries(endpoint_id.to_owned(), set_aside);
            }
            Some(Verdict::Success | Verdict::Fail) => {}
            Some(Verdict::Retry | Verdict::Gone) => {
                self.failing.insert(endpoint_id.to_owned());
            }
            None => {}
        }
    }

    /// The endpoint has recovered: its waiting retries, and what was set aside for it, are due
    /// now. Deferrals are written by the dispatcher itself before it gets here, so none can
    /// land after this and push work back out.
    fn release_retries(&self, endpoint_id: String, set_aside: Vec<String>) {
        let store = self.store.clone();
        let wake = self.wake.clone();
        let node = self.node.clone();
        tokio::spawn(async move {
            if let Err(e) = store.release(&node, set_aside).await {
                tracing::warn!(error = %e, "could not give back deliveries; they wait for their lease to end");
            }
            match store.release_retries(&endpoint_id, domain::now_ms()).await {
                Ok(0) => {}
                Ok(n) => {
                    tracing::info!(endpoint = %endpoint_id, retries = n, "endpoint answers again; its waiting retries are due now");
                    wake.notify_one();
                }
                Err(e) => tracing::warn!(error = %e, "releasing retries failed"),
            }
        });
    }

    /// Extends the leases on everything this node holds, every third of a lease, so that no
    /// other node takes over work this one is still doing.
    async fn renew_leases(&mut self) {
        let now = domain::now_ms();
        let lease_ms = self.config.lease.as_millis() as i64;
        if now - self.renewed_at < lease_ms / 3 {
            return;
        }
        self.renewed_at = now;
        if self.stale_hand_overs > 0 {
            tracing::warn!(
                deliveries = std::mem::take(&mut self.stale_hand_overs),
                "deliveries waited to be handed to the dispatcher until their lease had nearly run out; they were left to be claimed from the store"
            );
        }
        if self.held.is_empty() {
            return;
        }
        let ids: Vec<String> = self.held.iter().cloned().collect();
        if let Err(e) = self.store.renew(&self.node, ids, now + lease_ms).await {
            tracing::warn!(error = %e, "could not renew leases; another node may take over this work");
            // Again in a second, not a third of a lease on.
            self.renewed_at = now - lease_ms / 3 + 1_000;
        }
    }

    /// Claims due work from the store, as much as there is room for.
    async fn scan(&mut self) {
        let room = self.config.max_queued.saturating_sub(self.queued);
        if room == 0 {
            return;
        }
        let now = domain::now_ms();
        let lease = Lease {
            owner: self.node.clone(),
            until: now + self.config.lease.as_millis() as i64,
        };
        let limit = room.min(1000) as u32;
        match self.store.claim_due(now, limit, lease).await {
            Ok(jobs) => {
                if jobs.len() == limit as usize {
                    // There may be more: look again on the next turn of the loop.
                    self.wake.notify_one();
                }
                let mut overflow = Vec::new();
                for job in jobs {
                    // `held` filters what this node already has; a held-back endpoint keeps
                    // only what it can use, the rest goes back, due later.
                    overflow.extend(self.enqueue(job));
                }
                self.give_back(overflow).await;
                self.pump().await;
            }
            Err(e) => tracing::warn!(error = %e, "claiming due deliveries failed"),
        }
    }

    /// An attempt task is over: its delivery is no longer held, and one claimed again
    /// meanwhile is given back to be claimed as it now stands.
    async fn finished(&mut self, delivery_id: String, ordered: bool) {
        self.held.remove(&delivery_id);
        self.attempting.remove(&delivery_id);
        if self.reclaimed.remove(&delivery_id) {
            self.give_back(vec![delivery_id]).await;
            self.wake.notify_one();
        } else if ordered {
            // The next delivery with its key may go now.
            self.wake.notify_one();
        }
    }

    async fn give_back(&self, ids: Vec<String>) {
        if ids.is_empty() {
            return;
        }
        if let Err(e) = self.store.release(&self.node, ids).await {
            tracing::warn!(error = %e, "could not give back deliveries; they wait for their lease to end");
        }
    }

    /// Shutdown: no new attempts; queued work goes back to the store; attempts in flight get
    /// `shutdown_grace` to finish and record their result, the rest are given back.
    async fn drain(&mut self, mut hand_over: mpsc::Receiver<HandOver>) {
        hand_over.close();
        let mut back: Vec<String> = Vec::new();
        while let Some(batch) = hand_over.recv().await {
            back.extend(batch.jobs.into_iter().map(|j| j.delivery_id));
        }
        self.turns.clear();
        for (_, queue) in self.queues.drain() {
            for job in queue {
                self.held.remove(&job.delivery_id);
                back.push(job.delivery_id);
            }
        }
        back.extend(self.deferred.drain().flat_map(|(_, ids)| ids));
        self.queued = 0;
        let in_flight = self.running.len();
        let deadline = tokio::time::sleep(self.config.shutdown_grace);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                done = self.running.join_next() => match done {
                    Some(Ok((delivery_id, _))) => {
                        self.held.remove(&delivery_id);
                        self.attempting.remove(&delivery_id);
                        if self.reclaimed.remove(&delivery_id) {
                            back.push(delivery_id);
                        }
                    }
                    Some(Err(_)) => {}
                    None => break,
                },
                () = &mut deadline => {
                    tracing::warn!(left = self.running.len(), "attempts still in flight at the end of the grace period are given back");
                    self.running.abort_all();
                    while self.running.join_next().await.is_some() {}
                    back.extend(self.held.drain());
                    break;
                }
            }
        }
        tracing::info!(in_flight, given_back = back.len(), "dispatcher stopped");
        self.give_back(back).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deliver::{AttemptResult, Transport};
    use crate::domain::{EventType, prefix};
    use crate::model::{DeliveryStatus, Endpoint, NewDelivery};
    use crate::security::crypto::Cipher;
    use crate::store::sqlite::SqliteStore;
    use crate::store::{NewEvent, Scope};

    /// A receiver that answers every request with one status.
    struct Answers(u16);

    #[async_trait::async_trait]
    impl Transport for Answers {
        async fn attempt(&self, _: &Endpoint, _: &DeliveryJob) -> AttemptResult {
            let ok = self.0 < 300;
            AttemptResult {
                attempt_id: domain::new_id(prefix::MESSAGE),
                attempted_at: domain::now_ms(),
                status_code: Some(self.0),
                duration_ms: 1,
                verdict: if ok { Verdict::Success } else { Verdict::Fail },
                error_kind: (!ok).then_some("http_status"),
                error: None,
                response_body: String::new(),
                retry_after_ms: None,
            }
        }
    }

    /// A failed delivery retried by hand right after its attempt was recorded, before the
    /// dispatcher has seen that attempt's task end: the claim that finds it still held must
    /// not keep it leased (and unsent) until the lease runs out.
    #[tokio::test]
    async fn a_delivery_made_pending_while_its_attempt_finishes_is_claimed_again() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> =
            Arc::new(SqliteStore::open(&dir.path().join("hub.db"), Cipher::new([7; 32])).unwrap());
        let endpoint = Endpoint::example("ep_1");
        store
            .insert_endpoint(Scope::Hub, endpoint.clone())
            .await
            .unwrap();
        let event_id = domain::new_id(prefix::EVENT);
        let delivery_id = domain::new_id(prefix::DELIVERY);
        let event = NewEvent {
            body: Arc::from(format!(r#"{{"id":"{event_id}"}}"#)),
            id: event_id,
            source: "api".into(),
            event_type: EventType::parse("entry").unwrap(),
            dedupe_key: "k".into(),
            raw: bytes::Bytes::new(),
            created_at: domain::now_ms(),
        };
        let delivery = NewDelivery {
            id: delivery_id.clone(),
            endpoint_id: endpoint.id.clone(),
            order_key: None,
        };
        let nobody = Lease {
            owner: Arc::from("nobody"),
            until: 0,
        };
        store
            .ingest(event, vec![delivery], nobody, 0)
            .await
            .unwrap();
        let registry = Arc::new(Registry::load(store.clone()).await.unwrap());
        let mut dispatcher = Dispatcher::new(
            store.clone(),
            registry,
            Arc::new(Answers(500)),
            Arc::new(Metrics::default()),
            DispatchConfig::default(),
            Arc::from("node_1"),
            mpsc::unbounded_channel().0,
            Arc::new(Notify::new()),
        );
        let status = |store: Arc<dyn Store>, id: String| async move {
            store
                .get_delivery(Scope::Hub, &id)
                .await
                .unwrap()
                .map(|d| (d.status, d.attempts))
                .unwrap()
        };

        dispatcher.scan().await;
        let (id, ordered) = dispatcher.running.join_next().await.unwrap().unwrap();
        assert_eq!(
            status(store.clone(), delivery_id.clone()).await,
            (DeliveryStatus::Failed, 1)
        );

        // The task is over but the dispatcher has not yet seen it: a retry by hand now, and
        // the claim it wakes, meet a delivery still held.
        dispatcher.outbound = Arc::new(Answers(200));
        store
            .retry_delivery(Scope::Hub, &delivery_id, domain::now_ms())
            .await
            .unwrap();
        dispatcher.scan().await;
        assert!(
            dispatcher.running.is_empty(),
            "a held delivery is not attempted twice at once"
        );
        dispatcher.finished(id, ordered).await;

        dispatcher.scan().await;
        let (id, ordered) = dispatcher
            .running
            .join_next()
            .await
            .expect("the retried delivery is claimed again at once")
            .unwrap();
        dispatcher.finished(id, ordered).await;
        assert_eq!(
            status(store.clone(), delivery_id).await,
            (DeliveryStatus::Succeeded, 2)
        );
    }

    /// A receiver that answers 200 and notes the delivery of each request.
    #[derive(Default)]
    struct Received(std::sync::Mutex<Vec<String>>);

    #[async_trait::async_trait]
    impl Transport for Received {
        async fn attempt(&self, endpoint: &Endpoint, job: &DeliveryJob) -> AttemptResult {
            self.0.lock().unwrap().push(job.delivery_id.clone());
            Answers(200).attempt(endpoint, job).await
        }
    }

    /// An event with one delivery to `ep_1`, stored leased to `node` until `until`, and the
    /// job that hands it over.
    async fn stored_leased(store: &dyn Store, node: &Arc<str>, until: Millis) -> DeliveryJob {
        let event_id = domain::new_id(prefix::EVENT);
        let delivery_id = domain::new_id(prefix::DELIVERY);
        let body: Arc<str> = Arc::from(format!(r#"{{"id":"{event_id}"}}"#));
        let event = NewEvent {
            body: body.clone(),
            id: event_id.clone(),
            source: "api".into(),
            event_type: EventType::parse("entry").unwrap(),
            dedupe_key: event_id.clone(),
            raw: bytes::Bytes::new(),
            created_at: domain::now_ms(),
        };
        let delivery = NewDelivery {
            id: delivery_id.clone(),
            endpoint_id: "ep_1".into(),
            order_key: None,
        };
        let lease = Lease {
            owner: node.clone(),
            until,
        };
        store.ingest(event, vec![delivery], lease, 0).await.unwrap();
        DeliveryJob {
            delivery_id,
            event_id,
            endpoint_id: "ep_1".into(),
            event_type: "entry".into(),
            body,
            tries: 0,
            event_created_at: domain::now_ms(),
        }
    }

    /// Deliveries handed over wait in the channel while the dispatcher is behind. One that
    /// waited past its lease may meanwhile have been claimed from the store, sent and
    /// recorded: its hand-over must not send it again. One nobody has claimed yet is not lost
    /// either: it goes back to the store and is claimed at once.
    #[tokio::test]
    async fn a_hand_over_that_outlived_its_lease_is_not_sent_again() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> =
            Arc::new(SqliteStore::open(&dir.path().join("hub.db"), Cipher::new([7; 32])).unwrap());
        store
            .insert_endpoint(Scope::Hub, Endpoint::example("ep_1"))
            .await
            .unwrap();
        let node: Arc<str> = Arc::from("node_1");
        let registry = Arc::new(Registry::load(store.clone()).await.unwrap());
        let receiver = Arc::new(Received::default());
        let mut dispatcher = Dispatcher::new(
            store.clone(),
            registry,
            receiver.clone(),
            Arc::new(Metrics::default()),
            DispatchConfig::default(),
            node.clone(),
            mpsc::unbounded_channel().0,
            Arc::new(Notify::new()),
        );
        let now = domain::now_ms();

        // Its lease ran out while it waited: the store gave it to a claim, which sent it.
        let late = stored_leased(&*store, &node, now - 1).await;
        dispatcher.scan().await;
        let (id, ordered) = dispatcher.running.join_next().await.unwrap().unwrap();
        assert_eq!(id, late.delivery_id);
        dispatcher.finished(id, ordered).await;
        // Then its hand-over comes through.
        let batch = HandOver {
            leased_until: now - 1,
            jobs: vec![late.clone()],
        };
        dispatcher.take_over(batch).await;
        assert!(
            dispatcher.running.is_empty() && dispatcher.queued == 0,
            "a delivery the store gave to a claim is not sent from its hand-over too"
        );

        // Claimed by nobody yet, with a few seconds of its lease left: back to the store, and
        // claimed afresh.
        let short = stored_leased(&*store, &node, now + 5_000).await;
        let batch = HandOver {
            leased_until: now + 5_000,
            jobs: vec![short.clone()],
        };
        dispatcher.take_over(batch).await;
        assert!(dispatcher.running.is_empty());
        dispatcher.scan().await;
        let (id, ordered) = dispatcher.running.join_next().await.unwrap().unwrap();
        assert_eq!(id, short.delivery_id, "given back, so claimed at once");
        dispatcher.finished(id, ordered).await;

        // A hand-over in time is sent as it comes.
        let until = domain::now_ms() + 60_000;
        let fresh = stored_leased(&*store, &node, until).await;
        let batch = HandOver {
            leased_until: until,
            jobs: vec![fresh.clone()],
        };
        dispatcher.take_over(batch).await;
        let (id, _) = dispatcher.running.join_next().await.unwrap().unwrap();
        assert_eq!(id, fresh.delivery_id);

        let mut sent = receiver.0.lock().unwrap().clone();
        sent.sort();
        let mut each_once = vec![late.delivery_id, short.delivery_id, fresh.delivery_id];
        each_once.sort();
        assert_eq!(sent, each_once);
    }

    /// When the slots are all taken, the endpoints take them in turn: one endpoint with many
    /// deliveries queued does not keep another's first one waiting (a copy-trading fan-out's
    /// last follower must not wait behind the first ones' later signals).
    #[tokio::test]
    async fn endpoints_take_the_free_slots_in_turn() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> =
            Arc::new(SqliteStore::open(&dir.path().join("hub.db"), Cipher::new([7; 32])).unwrap());
        let registry = Arc::new(Registry::load(store.clone()).await.unwrap());
        let mut dispatcher = Dispatcher::new(
            store,
            registry,
            Arc::new(Answers(200)),
            Arc::new(Metrics::default()),
            DispatchConfig {
                max_in_flight: 2,
                ..DispatchConfig::default()
            },
            Arc::from("node_1"),
            mpsc::unbounded_channel().0,
            Arc::new(Notify::new()),
        );
        for endpoint in ["ep_a", "ep_b"] {
            for n in 0..5 {
                let job = DeliveryJob {
                    delivery_id: format!("dlv_{endpoint}_{n}"),
                    event_id: format!("evt_{n}"),
                    endpoint_id: endpoint.into(),
                    event_type: "entry".into(),
                    body: Arc::from("{}"),
                    tries: 0,
                    event_created_at: domain::now_ms(),
                };
                assert_eq!(dispatcher.admit(job), None);
            }
        }

        dispatcher.pump().await;
        let mut started: Vec<&str> = dispatcher.attempting.iter().map(String::as_str).collect();
        started.sort();
        assert_eq!(started, ["dlv_ep_a_0", "dlv_ep_b_0"]);
        assert_eq!(dispatcher.queued, 8);
    }
}
