//! Order destinations: an endpoint whose `url` is `account:<id>` places orders instead of
//! sending a request. It is a [`Transport`] like the webhook one, so a signal reaches it
//! through the same pipeline: stored with its event, deduplicated, ordered per pair, expired
//! after `max_age`, retried, and logged as a delivery.
//!
//! One delivery, one order, whatever happens:
//!
//! 1. what the signal asks is decided against the account's book ([`decide`]): the risk gate
//!    may block it, an exit with no position is skipped;
//! 2. the decision gets a client order id derived from the delivery (`<delivery id>-0`);
//! 3. it is executed on the book in memory ([`execute`]), and written with its outcome and
//!    the account's new book in one transaction, only if no order has that client order id
//!    and the stored book is the one it was executed on.
//!
//! So a crash before 3 leaves nothing, and the next attempt decides and executes once; a
//! crash after it finds the order settled. An intent stored on its own, before its
//! execution (as a live venue needs), is executed once and settled over it.

pub mod backtest;
mod live;
pub mod performance;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde_json::{Value, json};

use crate::deliver::{AttemptResult, Transport};
use crate::domain::{self, Scope, Verdict, prefix};
use crate::exchange::paper::{Execution, PaperBook};
use crate::model::{
    Account, DeliveryJob, Endpoint, Fill, Order, OrderKind, OrderRequest, OrderRoute, OrderStatus,
    Rejection, Side, Sizing,
};
use crate::store::{Result, Settlement, Store};
use live::{Live, unsupported, unsupported_on_venue};

/// Sends each delivery where its endpoint points: orders to the executor, the rest over HTTP.
pub struct Routed {
    pub http: Arc<dyn Transport>,
    pub orders: Arc<Executor>,
}

#[async_trait::async_trait]
impl Transport for Routed {
    async fn attempt(&self, endpoint: &Endpoint, job: &DeliveryJob) -> AttemptResult {
        if endpoint.account_id().is_some() {
            self.orders.attempt(endpoint, job).await
        } else {
            self.http.attempt(endpoint, job).await
        }
    }
}

/// An order's outcome, announced as a hub event (`order.filled`, `order.rejected`,
/// `risk.blocked`, `position.closed`) so that a chat endpoint can subscribe to it.
#[derive(Debug, Clone, PartialEq)]
pub struct Notice {
    pub event_type: &'static str,
    pub data: Value,
    /// One notice per order and kind.
    pub dedupe_key: String,
}

/// Places the orders of order destinations.
pub struct Executor {
    store: Arc<dyn Store>,
    /// The clients of the exchange accounts' venues.
    venues: crate::exchange::Venues,
    notices: tokio::sync::mpsc::UnboundedSender<Notice>,
    /// One order at a time per account: its book is read, changed and written whole.
    accounts: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Exchange accounts whose venue asked the hub to slow down, and until when: no call is
    /// made for them before then.
    slowed: Mutex<HashMap<String, domain::Millis>>,
    /// For crash tests only: `TRADEHOOK_FAULT=before_settle` aborts the process right after an
    /// order is executed on the book in memory, before it is written, `after_settle` right
    /// after it is written, before the delivery's attempt is recorded; as a power cut or
    /// `kill -9` would stop it.
    fault: Option<String>,
}

/// What the account did lately, for the limits that count over time.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Recent {
    /// Entries placed in the last minute.
    pub entries_last_minute: u32,
    /// Realised losses plus fees since 00:00 UTC, or since the last resume if later; a gain
    /// counts against them.
    pub loss_today: f64,
}

/// What a signal asks of an account.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    Place(OrderRequest),
    /// A reversal whose new position the risk gate stops: only the old one is closed, and
    /// the journal says why no more.
    Cut(OrderRequest, Rejection),
    /// The risk gate stops it; `code` says which rule.
    Block(Rejection),
    /// Nothing to do, and why.
    Skip(Rejection),
}

/// An order written with its outcome (and the book it left), not yet known to be on disk.
struct Settled {
    order: Order,
    others: Vec<Order>,
    book: PaperBook,
    flush: crate::store::Flush,
}

impl Executor {
    /// An executor writing to `store`, announcing outcomes to `notices`, and reaching the
    /// exchanges with `http` (whose resolver is the outbound address guard).
    pub fn new(
        store: Arc<dyn Store>,
        notices: tokio::sync::mpsc::UnboundedSender<Notice>,
        http: reqwest::Client,
    ) -> Self {
        Self {
            store,
            venues: crate::exchange::Venues::new(http),
            slowed: Mutex::new(HashMap::new()),
            notices,
            accounts: Mutex::new(HashMap::new()),
            fault: std::env::var("TRADEHOOK_FAULT").ok(),
        }
    }

    async fn attempt(&self, endpoint: &Endpoint, job: &DeliveryJob) -> AttemptResult {
        let started = Instant::now();
        let mut result = AttemptResult::starting();
        match self.place(endpoint, job).await {
            Ok(order) => {
                result.response_body = summary(&order).to_string();
                let (verdict, kind) = match order.status {
                    OrderStatus::Filled
                    | OrderStatus::Resting
                    | OrderStatus::Skipped
                    | OrderStatus::Cancelled => (Verdict::Success, None),
                    OrderStatus::Rejected => (Verdict::Fail, Some("order_rejected")),
                    OrderStatus::Blocked => (Verdict::Fail, Some("risk_blocked")),
                    // Not settled: the store did not take the outcome; try again.
                    OrderStatus::Intent => (Verdict::Retry, Some("order_pending")),
                };
                result.verdict = verdict;
                result.error_kind = kind;
                result.error = order
                    .reason
                    .as_ref()
                    .filter(|_| kind.is_some())
                    .map(|r| format!("{}: {}", r.code, r.detail));
                // The venue asked to wait: the destination waits as long before its next
                // attempt, as it would for a receiver's Retry-After.
                if order
                    .reason
                    .as_ref()
                    .is_some_and(|r| r.code == "rate_limited")
                {
                    result.retry_after_ms = self.slowed_for(&order.account_id);
                }
            }
            Err(e) => {
                result.error_kind = Some("store");
                result.error = Some(e.to_string());
            }
        }
        result.duration_ms = started.elapsed().as_millis() as u64;
        result
    }

    /// An exchange order is not decided while an earlier order of the same account and
    /// symbol has an unknown outcome: it may have filled, and the book it would be decided on
    /// would be wrong (an exit would find no position to close). The signal waits, as an
    /// attempt to retry, until that order is settled (or its own `max_age` passes, which the
    /// risk gate then journals).
    async fn unsettled(
        &self,
        endpoint: &Endpoint,
        job: &DeliveryJob,
        data: &Value,
    ) -> Result<Option<Order>> {
        let account_id = endpoint.account_id().unwrap_or_default();
        let symbol = endpoint
            .policy
            .orders
            .as_ref()
            .and_then(|route| route.symbol_of(data));
        let (Some(symbol), None) = (symbol, stale(endpoint, job, domain::now_ms())) else {
            return Ok(None);
        };
        let intents = self
            .store
            .orders_in(account_id, OrderStatus::Intent)
            .await?;
        let Some(earlier) = intents
            .iter()
            .find(|o| o.request.as_ref().is_some_and(|r| &r.symbol == symbol))
        else {
            return Ok(None);
        };
        Ok(Some(waiting(
            endpoint,
            job,
            Rejection::new(
                "order_pending",
                format!(
                    "order {} ({symbol}, delivery {}) has no known outcome yet: this signal \
                     waits for it, so as not to act on a position it may have changed",
                    earlier.id, earlier.delivery_id
                ),
            ),
        )))
    }

    /// Remembers that `account_id`'s venue asked to slow down, when `e` says so: for the wait
    /// it asked (at most an hour), or a default one.
    fn slowed_by(&self, account_id: &str, e: &crate::exchange::VenueError) {
        let crate::exchange::VenueError::Unavailable(why, wait) = e else {
            return;
        };
        if why.code != "rate_limited" {
            return;
        }
        let wait = wait.unwrap_or(SLOW_DOWN_MS).min(MAX_SLOW_DOWN_MS);
        let until = domain::now_ms() + wait as domain::Millis;
        let mut slowed = self.slowed.lock().expect("not poisoned");
        let entry = slowed.entry(account_id.to_owned()).or_insert(until);
        *entry = (*entry).max(until);
        tracing::warn!(account = %account_id, wait_ms = wait, "the venue asked to slow down");
    }

    /// How long `account_id` must still wait before its venue is called, if it must.
    fn slowed_for(&self, account_id: &str) -> Option<u64> {
        let mut slowed = self.slowed.lock().expect("not poisoned");
        let now = domain::now_ms();
        match slowed.get(account_id) {
            Some(until) if *until > now => Some((*until - now) as u64),
            Some(_) => {
                slowed.remove(account_id);
                None
            }
            None => None,
        }
    }

    /// Checks an exchange account's key with a signed read-only call.
    pub async fn check(
        &self,
        account: &Account,
    ) -> std::result::Result<crate::exchange::AccountCheck, crate::exchange::VenueError> {
        match self.venues.of(account) {
            Some(venue) => venue.check().await,
            None => Err(crate::exchange::VenueError::Refused(Rejection::new(
                "not_an_exchange_account",
                "a paper account has no venue to ask",
            ))),
        }
    }

    fn lock(&self, account_id: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.accounts
            .lock()
            .expect("not poisoned")
            .entry(account_id.to_owned())
            .or_default()
            .clone()
    }

    /// Decides, records and executes the order of one delivery; see the module's header. A
    /// signal that is not a trade but carries a price for one of the destination's symbols is
    /// a mark: resting orders it reaches execute.
    pub async fn place(&self, endpoint: &Endpoint, job: &DeliveryJob) -> Result<Order> {
        let account_id = endpoint.account_id().unwrap_or_default();
        let event: Value = serde_json::from_str(&job.body).unwrap_or(Value::Null);
        let data = &event["data"];
        if !matches!(
            job.event_type.as_str(),
            "entry" | "exit" | "liquidation_warning"
        ) {
            return self.mark_from_signal(endpoint, job, &event).await;
        }
        let lock = self.lock(account_id);
        let one_at_a_time = lock.lock().await;
        let account = self.account(account_id).await?;
        let client_order_id = leg_id(&job.delivery_id, Leg::Signal);
        let venue = account.as_ref().and_then(|a| self.venues.of(a));
        if let Some(wait) = venue.as_ref().and_then(|_| self.slowed_for(account_id)) {
            return Ok(waiting(
                endpoint,
                job,
                Rejection::new(
                    "rate_limited",
                    format!(
                        "the venue asked this account to slow down: {:.1} s more before it is \
                         called again",
                        wait as f64 / 1000.0
                    ),
                ),
            ));
        }
        if let (Some(venue), Some(account)) = (&venue, &account) {
            // An order placed with a venue is never decided twice: an earlier attempt's
            // intent is asked after, not replaced.
            if let Some(stored) = self.store.order(&client_order_id).await? {
                let live = Live::new(venue.clone(), endpoint, account, data, job);
                if stored.status != OrderStatus::Intent {
                    if stored.status == OrderStatus::Filled {
                        self.protect_pending(live, &stored).await?;
                    }
                    return Ok(stored);
                }
                return self.resolve(live, stored).await;
            }
            if let Some(waiting) = self.unsettled(endpoint, job, data).await? {
                return Ok(waiting);
            }
        }
        let mut book = match &account {
            Some(a) => self.book(a).await?,
            None => None,
        };
        // The venue holds the account's positions: one changed outside the hub (a stop that
        // triggered at the venue, an order by hand) is taken from it before the signal is
        // decided on the book.
        if let (Some(venue), Some(account), Some(book), Some(route)) = (
            &venue,
            &account,
            book.as_mut(),
            endpoint.policy.orders.as_ref(),
        ) && let Some(symbol) = route.symbol_of(data)
            && let Some(why) = self
                .follow_venue(venue.as_ref(), account, symbol, book)
                .await?
        {
            return Ok(waiting(endpoint, job, why));
        }
        // An exchange holds the account's money: an entry sized by a percent of equity reads
        // the balance from the venue (the hub's book of an exchange account keeps positions).
        let by_equity = endpoint
            .policy
            .orders
            .as_ref()
            .is_some_and(|r| matches!(r.size, Sizing::PercentEquity(_)));
        if let (Some(venue), Some(book), true, "entry") =
            (&venue, book.as_mut(), by_equity, job.event_type.as_str())
        {
            match venue.check().await {
                Ok(found) => book.balance = found.balance,
                Err(e) => {
                    self.slowed_by(account_id, &e);
                    let why = match e {
                        crate::exchange::VenueError::Unknown(w) => {
                            Rejection::new("venue_unavailable", w)
                        }
                        other => other.reason(),
                    };
                    return Ok(waiting(
                        endpoint,
                        job,
                        Rejection::new(
                            &why.code,
                            format!(
                                "the balance to size this entry by could not be read: {}",
                                why.detail
                            ),
                        ),
                    ));
                }
            }
        }
        let now = domain::now_ms();
        let recent = match &account {
            Some(a) => self.recent(a, now).await?,
            None => Recent::default(),
        };
        let stale = stale(endpoint, job, now);
        let cannot = match (&venue, &account, endpoint.policy.orders.as_ref()) {
            (Some(_), Some(a), Some(route)) if job.event_type == "entry" => unsupported(route, a),
            _ => None,
        };
        let decision = match (&account, &book, endpoint.policy.orders.as_ref()) {
            (Some(_), Some(_), Some(_)) if stale.is_some() => {
                Decision::Block(stale.clone().expect("checked"))
            }
            _ if cannot.is_some() => Decision::Block(cannot.expect("checked")),
            (Some(account), Some(book), Some(route)) => decide(
                route,
                account,
                book,
                &job.event_type,
                data,
                &client_order_id,
                recent,
                now,
            ),
            _ => Decision::Block(Rejection::new(
                "account_missing",
                format!("the account {account_id} of this destination does not exist"),
            )),
        };
        if let (Decision::Block(why) | Decision::Cut(_, why), Some(account)) = (&decision, &account)
            && why.code == "daily_loss_limit"
        {
            self.halt_for_the_day_in_store(account.clone(), &why.detail, now)
                .await?;
        }
        let (request, status, reason) = match decision {
            Decision::Place(request) => (Some(request), OrderStatus::Intent, None),
            Decision::Cut(request, why) => (Some(request), OrderStatus::Intent, Some(why)),
            Decision::Block(why) => (None, OrderStatus::Blocked, Some(why)),
            Decision::Skip(why) => (None, OrderStatus::Skipped, Some(why)),
        };
        let order = Order {
            id: domain::new_id(prefix::ORDER),
            client_order_id,
            account_id: account_id.to_owned(),
            endpoint_id: endpoint.id.clone(),
            delivery_id: job.delivery_id.clone(),
            event_id: job.event_id.clone(),
            request,
            status,
            fill: None,
            reason,
            created_at: now,
            updated_at: now,
        };
        let order = match (&venue, &account, endpoint.policy.orders.as_ref()) {
            (Some(_), Some(a), Some(route)) => unsupported_on_venue(order, route, a),
            _ => order,
        };
        let (OrderStatus::Intent, Some(book)) = (order.status, book) else {
            // Blocked or skipped: journalled, unless an earlier attempt settled this order.
            let order = self.store.record_order(order).await?;
            if order.status == OrderStatus::Blocked && order.created_at == now {
                self.notify(&order, false);
            }
            return Ok(order);
        };
        if let (Some(venue), Some(account)) = (venue, &account) {
            let live = Live::new(venue, endpoint, account, data, job);
            return self.send(live, order, book).await;
        }
        // On the paper venue an intent is executed in the same transaction that writes it
        // with its outcome: no moment holds one without the other. The account's next order
        // is decided once this one is committed, on the book it left, while it is flushed.
        if let Some(settled) = self
            .settle_intent(endpoint, order.clone(), book, data, stale.clone(), true)
            .await?
        {
            drop(one_at_a_time);
            return self.announce(settled).await;
        }
        match self.store.order(&order.client_order_id).await? {
            // Settled by an earlier attempt: its outcome stands.
            Some(stored) if stored.status != OrderStatus::Intent => Ok(stored),
            // An intent written on its own, before its execution (as the hub did before):
            // executed now, once.
            Some(stored) => {
                let book = match &account {
                    Some(a) => self.book(a).await?,
                    None => None,
                };
                let Some(book) = book else { return Ok(stored) };
                match self
                    .settle_intent(endpoint, stored.clone(), book, data, stale, false)
                    .await?
                {
                    Some(settled) => {
                        drop(one_at_a_time);
                        self.announce(settled).await
                    }
                    None => Ok(stored),
                }
            }
            // The book moved on under another order (another node): nothing was written, and
            // the next attempt decides again on the book as it is then.
            None => Ok(order),
        }
    }

    /// Executes `order` (an intent) on `book` and writes it with its outcome and the new
    /// book: inserted when `fresh`, else over the stored intent. Answers once the write is
    /// committed, before it is on disk (see [`Self::announce`]). `None`, with nothing
    /// written, when the order is settled already or the book moved on meanwhile.
    async fn settle_intent(
        &self,
        endpoint: &Endpoint,
        order: Order,
        book: PaperBook,
        data: &Value,
        stale: Option<Rejection>,
        fresh: bool,
    ) -> Result<Option<Settled>> {
        let account_id = order.account_id.clone();
        let mut next = book;
        next.revision += 1;
        let journal = self.resting(&account_id, &next).await?;
        let (settled, others) = match stale {
            // Decided in time, but not executed before max_age passed (a crash, an outage):
            // too late now.
            Some(why) => {
                let blocked = Order {
                    status: OrderStatus::Blocked,
                    reason: Some(why),
                    updated_at: domain::now_ms(),
                    ..order
                };
                (blocked, Vec::new())
            }
            None => execute(
                &mut next,
                order,
                endpoint.policy.orders.as_ref(),
                data,
                &journal,
                domain::now_ms(),
            ),
        };
        self.crash_at("before_settle", &settled.id);
        let (written, flush) = self
            .store
            .settle_in_turn(Settlement {
                account_id,
                intent: Some(settled.clone()),
                fresh,
                book: Some(next.clone()),
                others: others.clone(),
            })
            .await?;
        Ok(written.then_some(Settled {
            order: settled,
            others,
            book: next,
            flush,
        }))
    }

    /// Waits for a settled order to be on disk, then announces it (and the orders it moved
    /// on): nobody hears of an outcome that a crash could still take back.
    async fn announce(&self, settled: Settled) -> Result<Order> {
        let Settled {
            order,
            others,
            book,
            flush,
        } = settled;
        flush.await?;
        tracing::info!(order = %order.id, status = order.status.as_str(), "order settled");
        self.crash_at("after_settle", &order.id);
        for o in others.iter().chain(std::iter::once(&order)) {
            self.notify(o, closed(o, &book));
        }
        Ok(order)
    }

    /// A new price for `symbol` on an account: resting orders it reaches execute (one of a
    /// bracket fills, the other is cancelled). Answers the orders that moved on.
    pub async fn mark(&self, account_id: &str, symbol: &str, price: f64) -> Result<Vec<Order>> {
        let lock = self.lock(account_id);
        let _one_at_a_time = lock.lock().await;
        // Another node may write the book between our read and our write: read it again.
        for _ in 0..MARK_TRIES {
            let Some(account) = self.account(account_id).await? else {
                return Ok(Vec::new());
            };
            let Some(book) = self.book(&account).await? else {
                return Ok(Vec::new());
            };
            if book.marks.get(symbol) == Some(&price)
                && !book.resting.iter().any(|o| o.symbol == symbol)
            {
                return Ok(Vec::new());
            }
            let journal = self.resting(account_id, &book).await?;
            let mut next = book;
            next.revision += 1;
            let others = apply_mark(&mut next, symbol, price, &journal, domain::now_ms());
            let written = self
                .store
                .settle(Settlement {
                    account_id: account_id.to_owned(),
                    intent: None,
                    fresh: false,
                    book: Some(next.clone()),
                    others: others.clone(),
                })
                .await?;
            if written {
                for o in &others {
                    self.notify(o, closed(o, &next));
                }
                return Ok(others);
            }
        }
        Err(crate::store::StoreError::Busy(format!(
            "the book of {account_id} kept changing under this price"
        )))
    }

    /// A signal that is not a trade: a mark when it carries a price for one of the
    /// destination's symbols, otherwise nothing. Neither is journalled as an order.
    async fn mark_from_signal(
        &self,
        endpoint: &Endpoint,
        job: &DeliveryJob,
        event: &Value,
    ) -> Result<Order> {
        let account_id = endpoint.account_id().unwrap_or_default();
        let data = &event["data"];
        let now = domain::now_ms();
        let mut nothing = Order {
            id: String::new(),
            client_order_id: String::new(),
            account_id: account_id.to_owned(),
            endpoint_id: endpoint.id.clone(),
            delivery_id: job.delivery_id.clone(),
            event_id: job.event_id.clone(),
            request: None,
            status: OrderStatus::Skipped,
            fill: None,
            reason: Some(Rejection::new(
                "not_a_trade",
                format!("{} events place no order", job.event_type),
            )),
            created_at: now,
            updated_at: now,
        };
        // The hub's own events (an order's outcome among them) are not prices.
        let ours = event["source"].as_str() == Some(domain::HUB_SOURCE);
        let symbol = endpoint
            .policy
            .orders
            .as_ref()
            .and_then(|route| route.symbol_of(data));
        if let (false, Some(symbol), Some(price)) = (ours, symbol, signal_price(data)) {
            let moved = self.mark(account_id, symbol, price).await?;
            nothing.reason = Some(Rejection::new(
                "mark",
                format!(
                    "{symbol} marked at {price}: {} resting order(s) filled, {} cancelled",
                    moved
                        .iter()
                        .filter(|o| o.status == OrderStatus::Filled)
                        .count(),
                    moved
                        .iter()
                        .filter(|o| o.status == OrderStatus::Cancelled)
                        .count()
                ),
            ));
        }
        Ok(nothing)
    }

    async fn account(&self, account_id: &str) -> Result<Option<Account>> {
        self.store.account(Scope::Hub, account_id).await
    }

    /// The account's book as stored, or a new one if it has not traded yet.
    async fn book(&self, account: &Account) -> Result<Option<PaperBook>> {
        Ok(match self.store.paper_book(&account.id).await? {
            Some(book) => Some(book),
            None => Some(PaperBook::new(account.book_settings())),
        })
    }

    /// The journal's entries for the book's resting orders, by client order id.
    async fn resting(&self, account_id: &str, book: &PaperBook) -> Result<HashMap<String, Order>> {
        if book.resting.is_empty() {
            return Ok(HashMap::new());
        }
        Ok(self
            .store
            .orders_in(account_id, OrderStatus::Resting)
            .await?
            .into_iter()
            .map(|o| (o.client_order_id.clone(), o))
            .collect())
    }
}

impl Executor {
    /// Aborts the process here if a crash test asked for it.
    pub(super) fn crash_at(&self, point: &str, order_id: &str) {
        if self.fault.as_deref() == Some(point) {
            tracing::error!(order = %order_id, "TRADEHOOK_FAULT={point}: aborting");
            std::process::abort();
        }
    }

    /// What `account` did lately; read only when one of its limits needs it.
    async fn recent(&self, account: &Account, now: domain::Millis) -> Result<Recent> {
        let risk = &account.risk;
        if risk.max_orders_per_minute.is_none() && risk.daily_loss_limit.is_none() {
            return Ok(Recent::default());
        }
        let orders = self
            .store
            .list_orders(Scope::Hub, &account.id, RECENT_ORDERS)
            .await?;
        Ok(recent_of(account, &orders, now))
    }

    /// The daily loss limit was reached: the account takes no entries until 00:00 UTC, or
    /// until an operator resumes it. An operator's own halt is left as it is.
    async fn halt_for_the_day_in_store(
        &self,
        mut account: Account,
        why: &str,
        now: domain::Millis,
    ) -> Result<()> {
        if !halt_for_the_day(&mut account, why, now) {
            return Ok(());
        }
        self.store
            .update_account(Scope::Hub, account.clone())
            .await?;
        tracing::warn!(account = %account.id, "daily loss limit reached: entries halted until 00:00 UTC");
        Ok(())
    }

    /// Announces what became of `order`, and the position its fill `closed`, if it did.
    fn notify(&self, order: &Order, closed: bool) {
        let kind = match order.status {
            OrderStatus::Filled => "order.filled",
            OrderStatus::Rejected => "order.rejected",
            OrderStatus::Blocked => "risk.blocked",
            _ => return,
        };
        let mut data = summary(order);
        data["account_id"] = json!(order.account_id);
        data["event_id"] = json!(order.event_id);
        // When the outcome was written: for a fill, when it filled.
        data["at"] = json!(domain::rfc3339(order.updated_at));
        let _ = self.notices.send(Notice {
            event_type: kind,
            data: data.clone(),
            dedupe_key: format!("{kind}:{}", order.id),
        });
        if let (true, Some(fill)) = (closed, &order.fill) {
            let _ = self.notices.send(Notice {
                event_type: "position.closed",
                data: json!({
                    "account_id": order.account_id,
                    "symbol": fill.symbol,
                    "order_id": order.id,
                    "close_price": fill.price,
                    "realized_pnl": fill.realized_pnl,
                    "fee": fill.fee,
                }),
                dedupe_key: format!("position.closed:{}", order.id),
            });
        }
    }
}

const DAY_MS: domain::Millis = 86_400_000;

/// What `account` did lately, from its `orders` (any order, newest among them).
pub fn recent_of(account: &Account, orders: &[Order], now: domain::Millis) -> Recent {
    let midnight = now - now.rem_euclid(DAY_MS);
    let from = account.losses_from.map_or(midnight, |r| r.max(midnight));
    let entries_last_minute = orders
        .iter()
        .filter(|o| o.created_at > now - 60_000)
        .filter(|o| o.request.as_ref().is_some_and(|r| !r.reduce_only))
        .count() as u32;
    let loss_today = orders
        .iter()
        .filter(|o| o.created_at >= from)
        .filter_map(|o| o.fill.as_ref())
        .map(|f| f.fee - f.realized_pnl)
        .sum();
    Recent {
        entries_last_minute,
        loss_today,
    }
}

/// Halts `account`'s entries until 00:00 UTC after `now`, as its daily loss limit says;
/// `false`, changing nothing, when it is halted already (an operator's halt stays as it is).
pub fn halt_for_the_day(account: &mut Account, why: &str, now: domain::Millis) -> bool {
    if account.halt_at(now).is_some() {
        return false;
    }
    let midnight = now - now.rem_euclid(DAY_MS) + DAY_MS;
    account.halted = Some(crate::model::Halt {
        reason: why.to_owned(),
        since: now,
        exits_allowed: true,
        until: Some(midnight),
    });
    account.updated_at = now;
    true
}

/// How long an account waits when its venue asks it to slow down without saying how long,
/// and the longest wait a venue can impose.
const SLOW_DOWN_MS: u64 = 5_000;
const MAX_SLOW_DOWN_MS: u64 = 3_600_000;

/// Tries of a mark against a book other nodes keep writing.
const MARK_TRIES: usize = 3;

/// Which of the orders a signal makes: its own, and the brackets of an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leg {
    Signal = 0,
    StopLoss = 1,
    TakeProfit = 2,
}

/// The client order id of one leg of a delivery's orders: the same on every retry.
pub fn leg_id(delivery_id: &str, leg: Leg) -> String {
    format!("{delivery_id}-{}", leg as u8)
}

/// A signal that is not decided yet, and why: its attempt is retried. Nothing is journalled.
fn waiting(endpoint: &Endpoint, job: &DeliveryJob, why: Rejection) -> Order {
    let now = domain::now_ms();
    Order {
        id: String::new(),
        client_order_id: leg_id(&job.delivery_id, Leg::Signal),
        account_id: endpoint.account_id().unwrap_or_default().to_owned(),
        endpoint_id: endpoint.id.clone(),
        delivery_id: job.delivery_id.clone(),
        event_id: job.event_id.clone(),
        request: None,
        status: OrderStatus::Intent,
        fill: None,
        reason: Some(why),
        created_at: now,
        updated_at: now,
    }
}

/// Why a signal is too old to act on: past its destination's `max_age`.
fn stale(endpoint: &Endpoint, job: &DeliveryJob, now: domain::Millis) -> Option<Rejection> {
    let max = endpoint.policy.max_age_ms?;
    let age = now - job.event_created_at;
    (age > max as i64).then(|| {
        Rejection::new(
            "max_age",
            format!(
                "the signal is {:.1} s old, past this destination's max_age of {} s",
                age as f64 / 1000.0,
                max as f64 / 1000.0
            ),
        )
    })
}

/// Whether `order` filled and its fill closed its position in `book`.
fn closed(order: &Order, book: &PaperBook) -> bool {
    order.status == OrderStatus::Filled
        && order
            .fill
            .as_ref()
            .is_some_and(|f| !book.positions.contains_key(&f.symbol))
}

/// Executes an intent on `book`: the signal's price first (what it reaches executes), then
/// the order, then, for an entry that filled, its brackets. Pure: the live executor and a
/// backtest run the same. Answers the settled order, and the other orders it placed or moved
/// on, as `journal` (the book's resting orders by client order id) had them.
pub fn execute(
    book: &mut PaperBook,
    intent: Order,
    route: Option<&OrderRoute>,
    data: &Value,
    journal: &HashMap<String, Order>,
    now: domain::Millis,
) -> (Order, Vec<Order>) {
    let Some(request) = intent.request.clone() else {
        return (intent, Vec::new());
    };
    let mut moves = Moves::new(book);
    let price = signal_price(data);
    if let Some(p) = price {
        moves.triggered(book.mark(&request.symbol, p));
    }
    let (status, fill, reason) = match book.submit(request.clone(), price) {
        Ok(Execution::Filled(fill)) => (OrderStatus::Filled, Some(fill), None),
        Ok(Execution::Resting) => (OrderStatus::Resting, None, None),
        Err(why) => (OrderStatus::Rejected, None, Some(why)),
    };
    let placed = match (&fill, route) {
        (Some(fill), Some(route)) if !request.reduce_only => {
            brackets(book, &intent, route, fill, data, now)
        }
        _ => Vec::new(),
    };
    let settled = Order {
        status,
        fill,
        // A venue's refusal says more than why a reversal was cut to a close.
        reason: reason.or(intent.reason.clone()),
        updated_at: now,
        ..intent
    };
    let mut others = moves.finish(book, journal, now);
    others.extend(placed);
    (settled, others)
}

/// A new price for `symbol` on `book`: the resting orders it reaches execute, and those left
/// without a position are cancelled. Answers those orders as they now are.
pub fn apply_mark(
    book: &mut PaperBook,
    symbol: &str,
    price: f64,
    journal: &HashMap<String, Order>,
    now: domain::Millis,
) -> Vec<Order> {
    let mut moves = Moves::new(book);
    moves.triggered(book.mark(symbol, price));
    moves.finish(book, journal, now)
}

/// What one change does to the book's resting orders, for the journal: which executed, were
/// refused, or left the book with their position.
struct Moves {
    before: Vec<String>,
    executed: Vec<(OrderRequest, std::result::Result<Fill, Rejection>)>,
}

impl Moves {
    fn new(book: &PaperBook) -> Self {
        Self {
            before: book
                .resting
                .iter()
                .map(|o| o.client_order_id.clone())
                .collect(),
            executed: Vec::new(),
        }
    }

    fn triggered(&mut self, done: Vec<(OrderRequest, std::result::Result<Fill, Rejection>)>) {
        self.executed.extend(done);
    }

    /// The journal's resting orders as they are after the change to `after`.
    fn finish(
        self,
        after: &PaperBook,
        journal: &HashMap<String, Order>,
        now: domain::Millis,
    ) -> Vec<Order> {
        let mut moved = Vec::new();
        let entry = |id: &str| {
            let found = journal.get(id).cloned();
            if found.is_none() {
                tracing::warn!(
                    client_order_id = id,
                    "a resting order missing from the journal"
                );
            }
            found
        };
        for (request, outcome) in &self.executed {
            let Some(order) = entry(&request.client_order_id) else {
                continue;
            };
            let (status, fill, reason) = match outcome {
                Ok(fill) => (OrderStatus::Filled, Some(fill.clone()), None),
                Err(why) => (OrderStatus::Rejected, None, Some(why.clone())),
            };
            moved.push(Order {
                status,
                fill,
                reason,
                updated_at: now,
                ..order
            });
        }
        for id in &self.before {
            let gone = !after.resting.iter().any(|o| &o.client_order_id == id);
            let executed = self.executed.iter().any(|(o, _)| &o.client_order_id == id);
            if !gone || executed {
                continue;
            }
            if let Some(order) = entry(id) {
                moved.push(Order {
                    status: OrderStatus::Cancelled,
                    reason: Some(Rejection::new(
                        "position_closed",
                        "its position closed before its price was reached",
                    )),
                    updated_at: now,
                    ..order
                });
            }
        }
        moved
    }
}

/// A number from a signal: JSON numbers, and numbers written as text (`"61000.5"`), as
/// templated alerts often send them; finite and more than 0.
fn number(value: Option<&Value>) -> Option<f64> {
    let v = value?;
    v.as_f64()
        .or_else(|| v.as_str().and_then(|t| t.trim().parse().ok()))
        .filter(|p: &f64| p.is_finite() && *p > 0.0)
}

/// Prices are kept to 10 decimal places, as quantities are.
fn round_price(p: f64) -> f64 {
    (p * 1e10).round() / 1e10
}

/// Places the stop-loss and take-profit of an entry that filled, as reduce-only resting
/// orders on `book` (see [`bracket_legs`]).
fn brackets(
    book: &mut PaperBook,
    entry: &Order,
    route: &OrderRoute,
    fill: &Fill,
    data: &Value,
    now: domain::Millis,
) -> Vec<Order> {
    bracket_legs(entry, route, fill, data, now)
        .into_iter()
        .map(|leg| match (&leg.request, leg.status) {
            (Some(request), OrderStatus::Intent) => match book.submit(request.clone(), None) {
                Ok(_) => Order {
                    status: OrderStatus::Resting,
                    ..leg
                },
                Err(why) => Order {
                    status: OrderStatus::Rejected,
                    reason: Some(why),
                    ..leg
                },
            },
            _ => leg,
        })
        .collect()
}

/// The stop-loss and take-profit of an entry that filled, as reduce-only orders: at the
/// signal's `stop_loss` and `take_profit` prices, or else at the destination's percentages
/// of the fill price. Each is an intent to place, or `rejected` when it is on the wrong side
/// of the fill (a stop above a long's entry); the entry stands either way.
pub(super) fn bracket_legs(
    entry: &Order,
    route: &OrderRoute,
    fill: &Fill,
    data: &Value,
    now: domain::Millis,
) -> Vec<Order> {
    let with = fill.side.sign();
    let settings = route.brackets.unwrap_or_default();
    let stop = number(data.get("stop_loss")).or_else(|| {
        settings
            .stop_loss_percent
            .map(|p| round_price(fill.price * (1.0 - with * p / 100.0)))
    });
    let take = number(data.get("take_profit")).or_else(|| {
        settings
            .take_profit_percent
            .map(|p| round_price(fill.price * (1.0 + with * p / 100.0)))
    });
    let legs = [
        (
            Leg::StopLoss,
            stop.map(|trigger| OrderKind::Stop { trigger }),
        ),
        (
            Leg::TakeProfit,
            take.map(|price| OrderKind::Limit { price }),
        ),
    ];
    let mut placed = Vec::new();
    for (leg, kind) in legs {
        let Some(kind) = kind else { continue };
        let request = OrderRequest {
            client_order_id: leg_id(&entry.delivery_id, leg),
            symbol: fill.symbol.clone(),
            side: fill.side.opposite(),
            quantity: fill.quantity,
            kind,
            reduce_only: true,
            leverage: route.leverage,
        };
        let (at, name, beyond) = match kind {
            OrderKind::Stop { trigger } => (trigger, "stop-loss", (fill.price - trigger) * with),
            OrderKind::Limit { price } => (price, "take-profit", (price - fill.price) * with),
            OrderKind::Market => continue,
        };
        let (status, reason) = if beyond <= 0.0 {
            (
                OrderStatus::Rejected,
                Some(Rejection::new(
                    "invalid_bracket",
                    format!(
                        "a {name} at {at} is on the wrong side of the entry's fill at {}",
                        fill.price
                    ),
                )),
            )
        } else {
            (OrderStatus::Intent, None)
        };
        placed.push(Order {
            id: domain::new_id(prefix::ORDER),
            client_order_id: request.client_order_id.clone(),
            account_id: entry.account_id.clone(),
            endpoint_id: entry.endpoint_id.clone(),
            delivery_id: entry.delivery_id.clone(),
            event_id: entry.event_id.clone(),
            request: Some(request),
            status,
            fill: None,
            reason,
            created_at: now,
            updated_at: now,
        });
    }
    placed
}

/// How many of an account's newest orders the limits over time look at: more than any
/// sensible orders-per-minute limit, and a day of busy trading.
const RECENT_ORDERS: u32 = 10_000;

/// What the journal and the delivery log show of an order.
pub fn summary(order: &Order) -> Value {
    json!({
        "order_id": order.id,
        "client_order_id": order.client_order_id,
        "status": order.status.as_str(),
        "request": order.request,
        "fill": order.fill,
        "reason": order.reason,
    })
}

/// Order quantities are kept to 10 decimal places: finer than any venue's step, and coarse
/// enough that `0.2 × 0.7` is `0.14`, not `0.13999999999999999`.
pub fn round_quantity(q: f64) -> f64 {
    (q * 1e10).round() / 1e10
}

/// The price a signal gives: its own for its kind of event, or any price it carries.
fn signal_price(data: &Value) -> Option<f64> {
    ["price", "open_rate", "close_rate", "order_rate", "limit"]
        .iter()
        .find_map(|k| data.get(*k).and_then(Value::as_f64))
        .filter(|p| p.is_finite() && *p > 0.0)
}

/// What a signal asks of `account`, given its book: the risk gate and the semantics of
/// entries and exits. Pure: the same signal and book give the same decision.
#[allow(clippy::too_many_arguments)]
pub fn decide(
    route: &OrderRoute,
    account: &Account,
    book: &PaperBook,
    event_type: &str,
    data: &Value,
    client_order_id: &str,
    recent: Recent,
    now: domain::Millis,
) -> Decision {
    let entry = match event_type {
        "entry" => true,
        "exit" | "liquidation_warning" => false,
        other => {
            return Decision::Skip(Rejection::new(
                "not_a_trade",
                format!("{other} events place no order"),
            ));
        }
    };
    let Some(symbol) = route.symbol_of(data) else {
        let named = ["symbol", "pair"]
            .iter()
            .find_map(|k| data.get(*k).and_then(Value::as_str))
            .unwrap_or("a signal without a symbol");
        return Decision::Block(Rejection::new(
            "symbol_not_allowed",
            format!("{named} is not among this destination's symbols"),
        ));
    };
    let side = data
        .get("side")
        .and_then(Value::as_str)
        .and_then(crate::trading::parse_side);
    let position = book.positions.get(symbol);
    let held = position.map(|p| if p.size > 0.0 { "long" } else { "short" });
    let mut plan = match (event_type, target_position(data)) {
        ("liquidation_warning", _) | (_, None) if entry => Plan::Open(side),
        ("liquidation_warning", _) | (_, None) => Plan::Close(side, None),
        (_, Some("flat")) => Plan::Close(None, None),
        (_, Some(target)) => {
            // The side the signal's order trades: an entry long and an exit short buy.
            let buys = side.map(|s| (s == "long") == entry);
            match (held, buys.map(|b| b == (target == "long"))) {
                (Some(h), _) if h != target => Plan::Reverse(target),
                // A sell while the strategy stays long: part of the long is closed.
                (_, Some(false)) => Plan::Close(Some(target), Some(partial(data))),
                _ => Plan::Open(Some(target)),
            }
        }
    };
    if let Some(halt) = account.halt_at(now) {
        let exits = halt.exits_allowed;
        plan = match plan {
            // Halted with exits allowed: a reversal only closes.
            Plan::Reverse(_) if exits => Plan::Close(held, None),
            Plan::Close(..) if exits => plan,
            _ => {
                return Decision::Block(Rejection::new(
                    "halted",
                    format!("the account is halted: {}", halt.reason),
                ));
            }
        };
    }
    let request = |side: Side, quantity: f64, reduce_only: bool| OrderRequest {
        client_order_id: client_order_id.to_owned(),
        symbol: symbol.clone(),
        side,
        quantity,
        kind: OrderKind::Market,
        reduce_only,
        leverage: route.leverage,
    };
    match plan {
        Plan::Close(side, part) => {
            let Some(p) = position else {
                return Decision::Skip(Rejection::new(
                    "no_position",
                    format!("no open position in {symbol}: nothing to close"),
                ));
            };
            let held = held.unwrap_or_default();
            if side.is_some_and(|s| s != held) {
                return Decision::Skip(Rejection::new(
                    "no_position",
                    format!(
                        "the exit is for a {} position; the open one is {held}",
                        side.unwrap_or_default()
                    ),
                ));
            }
            let amount = data.get("amount").and_then(Value::as_f64);
            let size = p.size.abs();
            let quantity = match (event_type, part, route.size, amount) {
                ("liquidation_warning", ..) => match route.liquidation_close_percent {
                    Some(pct) => round_quantity(size * pct / 100.0).min(size),
                    None => {
                        return Decision::Skip(Rejection::new(
                            "not_configured",
                            "this destination closes nothing on a liquidation warning \
                             (set orders.liquidation_close_percent)",
                        ));
                    }
                },
                (_, Some(Some(fraction)), ..) => round_quantity(size * fraction).min(size),
                (_, Some(None), ..) => {
                    return Decision::Skip(Rejection::new(
                        "no_amount",
                        "a partial exit needs the order's contracts (amount) and the size \
                         left (market_position_size) to close the same part",
                    ));
                }
                (_, None, Sizing::Multiplier(m), Some(a)) => round_quantity(a * m).min(size),
                _ => size,
            };
            let closing = if p.size > 0.0 { Side::Sell } else { Side::Buy };
            Decision::Place(request(closing, quantity, true))
        }
        Plan::Open(side) => {
            match open(route, account, book, symbol, side, position, data, recent) {
                Ok((side, quantity)) => Decision::Place(request(side, quantity, false)),
                Err(why) => Decision::Block(why),
            }
        }
        Plan::Reverse(target) => {
            let held = position.map_or(0.0, |p| p.size.abs());
            let closing = if target == "long" {
                Side::Buy
            } else {
                Side::Sell
            };
            match open(
                route,
                account,
                book,
                symbol,
                Some(target),
                None,
                data,
                recent,
            ) {
                // One order closes the position and opens the other way.
                Ok((side, quantity)) => {
                    Decision::Place(request(side, round_quantity(held + quantity), false))
                }
                // The risk gate stops the new position, not the way out of the old one.
                Err(why) => Decision::Cut(request(closing, held, true), why),
            }
        }
    }
}

/// What a signal does to the account's position in its symbol.
enum Plan<'a> {
    /// Open or add to a position on this side.
    Open(Option<&'a str>),
    /// Close the position (of this side only, if given): all of it, or the part the signal
    /// says (`Some(None)` when it says a part without saying how much).
    Close(Option<&'a str>, Option<Option<f64>>),
    /// Close the position and open one on this side.
    Reverse(&'a str),
}

/// The position a strategy says it holds after this signal (`market_position`, as
/// TradingView strategies send it): `flat`, `long` or `short`.
fn target_position(data: &Value) -> Option<&'static str> {
    let said = data.get("market_position")?.as_str()?.trim();
    ["flat", "long", "short"]
        .into_iter()
        .find(|t| said.eq_ignore_ascii_case(t))
}

/// The part of its position a strategy closes with a partial exit: the order's contracts
/// over the contracts held before it (those left, `market_position_size`, plus the order's).
fn partial(data: &Value) -> Option<f64> {
    let order = number(data.get("amount"))?;
    let left = data
        .get("market_position_size")
        .and_then(|v| {
            v.as_f64()
                .or_else(|| v.as_str().and_then(|t| t.trim().parse().ok()))
        })
        .filter(|n: &f64| n.is_finite() && *n >= 0.0)?;
    Some(order / (order + left))
}

/// The side and size of an entry on `side`, or why the risk gate stops it.
#[allow(clippy::too_many_arguments)]
fn open(
    route: &OrderRoute,
    account: &Account,
    book: &PaperBook,
    symbol: &str,
    side: Option<&str>,
    position: Option<&crate::model::Position>,
    data: &Value,
    recent: Recent,
) -> std::result::Result<(Side, f64), Rejection> {
    let risk = &account.risk;
    let quote = account.paper.as_ref().map_or("", |p| p.quote.as_str());
    if let Some(limit) = risk.daily_loss_limit
        && recent.loss_today >= limit
    {
        return Err(Rejection::new(
            "daily_loss_limit",
            format!(
                "lost {:.2} {quote} today, the limit is {limit}: no entries until 00:00 UTC or a resume",
                recent.loss_today
            ),
        ));
    }
    if let Some(limit) = risk.max_orders_per_minute
        && recent.entries_last_minute >= limit
    {
        return Err(Rejection::new(
            "orders_per_minute",
            format!("{limit} entries were placed in the last minute, the most allowed"),
        ));
    }
    let Some(side) = side else {
        return Err(Rejection::new(
            "no_side",
            "the entry says neither long nor short",
        ));
    };
    let order_side = if side == "long" {
        Side::Buy
    } else {
        Side::Sell
    };
    if let Some(p) = position {
        if p.size * order_side.sign() < 0.0 {
            return Err(Rejection::new(
                "wrong_side",
                format!(
                    "an entry {side} while a {} position in {symbol} is open: exit it first",
                    if p.size > 0.0 { "long" } else { "short" }
                ),
            ));
        }
        if p.entries >= route.pyramiding {
            return Err(Rejection::new(
                "pyramiding",
                format!(
                    "the {side} position in {symbol} has {} entries; this destination allows {}",
                    p.entries, route.pyramiding
                ),
            ));
        }
    }
    // A reversal keeps the count of open positions as it is.
    let opens_one = !book.positions.contains_key(symbol);
    if opens_one
        && let Some(limit) = risk.max_open_positions
        && book.positions.len() as u32 >= limit
    {
        return Err(Rejection::new(
            "max_open_positions",
            format!("{limit} positions are open, the most allowed"),
        ));
    }
    let price = signal_price(data).or_else(|| book.marks.get(symbol).copied());
    let quantity = match (route.size, price) {
        (Sizing::Base(q), _) => Some(q),
        (Sizing::Quote(notional), Some(p)) => Some(notional / p),
        (Sizing::PercentEquity(pct), Some(p)) => {
            Some(book.equity() * pct / 100.0 * route.leverage / p)
        }
        (Sizing::Multiplier(m), _) => data.get("amount").and_then(Value::as_f64).map(|a| a * m),
        (_, None) => None,
    };
    let quantity = match quantity.map(round_quantity) {
        Some(q) if q.is_finite() && q > 0.0 => q,
        _ => {
            return Err(Rejection::new(
                "no_size",
                "the order's size cannot be worked out: the signal has no price or no amount",
            ));
        }
    };
    if let Some(price) = price {
        let notional = quantity * price;
        if let Some(limit) = risk.max_order_notional
            && notional > limit
        {
            return Err(Rejection::new(
                "max_order_notional",
                format!("the order is worth {notional:.2} {quote}, the most allowed is {limit}"),
            ));
        }
        let held = position.map_or(0.0, |p| p.size.abs() * p.entry_price);
        if let Some(limit) = risk.max_position_notional
            && held + notional > limit
        {
            return Err(Rejection::new(
                "max_position_notional",
                format!(
                    "the position would be worth {:.2} {quote}, the most allowed is {limit}",
                    held + notional
                ),
            ));
        }
    }
    Ok((order_side, quantity))
}
