//! Order destinations: an endpoint whose `url` is `account:<id>` places orders instead of
//! sending a request. It is a [`Transport`] like the webhook one, so a signal reaches it
//! through the same pipeline: stored with its event, deduplicated, ordered per pair, expired
//! after `max_age`, retried, and logged as a delivery.
//!
//! One delivery, one order, whatever happens:
//!
//! 1. what the signal asks is decided against the account's book ([`decide`]): the risk gate
//!    may block it, an exit with no position is skipped;
//! 2. the decision is written as an order whose client order id is derived from the delivery
//!    (`<delivery id>-0`): a retry, or a restart after a crash, finds that order and carries on
//!    with it instead of deciding again;
//! 3. an intent is executed on the paper exchange, and its outcome is written with the
//!    account's new book in one transaction, only while the order is still an intent.
//!
//! So a crash between 2 and 3 executes the intent once on the next attempt, and a crash after
//! 3 finds it settled.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde_json::{Value, json};

use crate::deliver::{AttemptResult, Transport};
use crate::domain::{self, Scope, Verdict, prefix};
use crate::exchange::paper::{Execution, PaperBook};
use crate::model::{
    Account, DeliveryJob, Endpoint, Order, OrderKind, OrderRequest, OrderRoute, OrderStatus,
    Rejection, Side, Sizing,
};
use crate::store::{Result, Store};

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
    notices: tokio::sync::mpsc::UnboundedSender<Notice>,
    /// One order at a time per account: its book is read, changed and written whole.
    accounts: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// For crash tests only: `TRADEHOOK_FAULT=after_intent` aborts the process right after an
    /// intent is written, `after_settle` right after its outcome is, before the delivery's
    /// attempt is recorded; as a power cut or `kill -9` would stop it.
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
    /// The risk gate stops it; `code` says which rule.
    Block(Rejection),
    /// Nothing to do, and why.
    Skip(Rejection),
}

impl Executor {
    pub fn new(store: Arc<dyn Store>, notices: tokio::sync::mpsc::UnboundedSender<Notice>) -> Self {
        Self {
            store,
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
                    OrderStatus::Filled | OrderStatus::Resting | OrderStatus::Skipped => {
                        (Verdict::Success, None)
                    }
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
            }
            Err(e) => {
                result.error_kind = Some("store");
                result.error = Some(e.to_string());
            }
        }
        result.duration_ms = started.elapsed().as_millis() as u64;
        result
    }

    fn lock(&self, account_id: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.accounts
            .lock()
            .expect("not poisoned")
            .entry(account_id.to_owned())
            .or_default()
            .clone()
    }

    /// Decides, records and executes the order of one delivery; see the module's header.
    pub async fn place(&self, endpoint: &Endpoint, job: &DeliveryJob) -> Result<Order> {
        let account_id = endpoint.account_id().unwrap_or_default();
        if !matches!(job.event_type.as_str(), "entry" | "exit") {
            // Not a trade (the hub's own events among them): nothing to journal.
            let now = domain::now_ms();
            return Ok(Order {
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
            });
        }
        let lock = self.lock(account_id);
        let _one_at_a_time = lock.lock().await;
        let account = self
            .store
            .list_accounts(Scope::Hub)
            .await?
            .into_iter()
            .find(|a| a.id == account_id);
        let event: Value = serde_json::from_str(&job.body).unwrap_or(Value::Null);
        let data = &event["data"];
        let client_order_id = format!("{}-0", job.delivery_id);
        let book = match &account {
            Some(a) => match self.store.paper_book(&a.id).await? {
                Some(book) => Some(book),
                None => a.paper.clone().map(PaperBook::new),
            },
            None => None,
        };
        let now = domain::now_ms();
        let recent = match &account {
            Some(a) => self.recent(a, now).await?,
            None => Recent::default(),
        };
        let decision = match (&account, &book, endpoint.policy.orders.as_ref()) {
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
        if let (Decision::Block(why), Some(account)) = (&decision, &account)
            && why.code == "daily_loss_limit"
        {
            self.halt_for_the_day(account.clone(), &why.detail, now)
                .await?;
        }
        let (request, status, reason) = match decision {
            Decision::Place(request) => (Some(request), OrderStatus::Intent, None),
            Decision::Block(why) => (None, OrderStatus::Blocked, Some(why)),
            Decision::Skip(why) => (None, OrderStatus::Skipped, Some(why)),
        };
        let order = self
            .store
            .record_order(Order {
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
            })
            .await?;
        if order.status == OrderStatus::Blocked && order.created_at == now {
            self.notify(&order, None);
        }
        let (Some(request), OrderStatus::Intent, Some(book)) =
            (order.request.clone(), order.status, book)
        else {
            // Blocked, skipped, or settled by an earlier attempt.
            return Ok(order);
        };
        self.crash_at("after_intent", &order.id);
        let mut next = book;
        next.revision += 1;
        let symbol = request.symbol.clone();
        let (status, fill, reason, changed) = match next.submit(request, signal_price(data)) {
            Ok(Execution::Filled(fill)) => (OrderStatus::Filled, Some(fill), None, true),
            Ok(Execution::Resting) => (OrderStatus::Resting, None, None, true),
            Err(why) => (OrderStatus::Rejected, None, Some(why), false),
        };
        let closes = fill.is_some() && !next.positions.contains_key(&symbol);
        let settled = Order {
            status,
            fill,
            reason,
            updated_at: domain::now_ms(),
            ..order
        };
        if self
            .store
            .settle_order(settled.clone(), changed.then_some(next))
            .await?
        {
            tracing::info!(order = %settled.id, status = settled.status.as_str(), "order settled");
            self.crash_at("after_settle", &settled.id);
            self.notify(&settled, closes.then_some(&symbol));
            Ok(settled)
        } else {
            // Settled meanwhile by another attempt, whose outcome stands; or the book moved
            // on under another order (another node), and the order stays an intent, to be
            // tried again on the book as it is now.
            self.store.record_order(settled).await
        }
    }
}

impl Executor {
    /// Aborts the process here if a crash test asked for it.
    fn crash_at(&self, point: &str, order_id: &str) {
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
        let midnight = now - now.rem_euclid(DAY_MS);
        let from = account.losses_from.map_or(midnight, |r| r.max(midnight));
        let orders = self
            .store
            .list_orders(Scope::Hub, &account.id, RECENT_ORDERS)
            .await?;
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
        Ok(Recent {
            entries_last_minute,
            loss_today,
        })
    }

    /// The daily loss limit was reached: the account takes no entries until 00:00 UTC, or
    /// until an operator resumes it. An operator's own halt is left as it is.
    async fn halt_for_the_day(
        &self,
        mut account: Account,
        why: &str,
        now: domain::Millis,
    ) -> Result<()> {
        if account.halt_at(now).is_some() {
            return Ok(());
        }
        let midnight = now - now.rem_euclid(DAY_MS) + DAY_MS;
        account.halted = Some(crate::model::Halt {
            reason: why.to_owned(),
            since: now,
            exits_allowed: true,
            until: Some(midnight),
        });
        account.updated_at = now;
        self.store
            .update_account(Scope::Hub, account.clone())
            .await?;
        tracing::warn!(account = %account.id, "daily loss limit reached: entries halted until 00:00 UTC");
        Ok(())
    }

    /// Announces what became of `order`; `closed` names the symbol whose position its fill
    /// closed.
    fn notify(&self, order: &Order, closed: Option<&String>) {
        let kind = match order.status {
            OrderStatus::Filled => "order.filled",
            OrderStatus::Rejected => "order.rejected",
            OrderStatus::Blocked => "risk.blocked",
            _ => return,
        };
        let mut data = summary(order);
        data["account_id"] = json!(order.account_id);
        data["event_id"] = json!(order.event_id);
        let _ = self.notices.send(Notice {
            event_type: kind,
            data: data.clone(),
            dedupe_key: format!("{kind}:{}", order.id),
        });
        if let (Some(symbol), Some(fill)) = (closed, &order.fill) {
            let _ = self.notices.send(Notice {
                event_type: "position.closed",
                data: json!({
                    "account_id": order.account_id,
                    "symbol": symbol,
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
        "exit" => false,
        other => {
            return Decision::Skip(Rejection::new(
                "not_a_trade",
                format!("{other} events place no order"),
            ));
        }
    };
    let named: Vec<&str> = ["symbol", "pair"]
        .iter()
        .filter_map(|k| data.get(*k).and_then(Value::as_str))
        .collect();
    let Some(symbol) = named.iter().find_map(|s| route.symbols.get(*s)) else {
        return Decision::Block(Rejection::new(
            "symbol_not_allowed",
            format!(
                "{} is not among this destination's symbols",
                named
                    .first()
                    .copied()
                    .unwrap_or("a signal without a symbol")
            ),
        ));
    };
    if let Some(halt) = account.halt_at(now)
        && (entry || !halt.exits_allowed)
    {
        return Decision::Block(Rejection::new(
            "halted",
            format!("the account is halted: {}", halt.reason),
        ));
    }
    let side = data
        .get("side")
        .and_then(Value::as_str)
        .and_then(crate::trading::parse_side);
    let position = book.positions.get(symbol);
    let request = |side: Side, quantity: f64, reduce_only: bool| OrderRequest {
        client_order_id: client_order_id.to_owned(),
        symbol: symbol.clone(),
        side,
        quantity,
        kind: OrderKind::Market,
        reduce_only,
        leverage: route.leverage,
    };
    if !entry {
        let Some(p) = position else {
            return Decision::Skip(Rejection::new(
                "no_position",
                format!("no open position in {symbol}: nothing to close"),
            ));
        };
        let held = if p.size > 0.0 { "long" } else { "short" };
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
        let quantity = match (route.size, amount) {
            (Sizing::Multiplier(m), Some(a)) => round_quantity(a * m).min(p.size.abs()),
            _ => p.size.abs(),
        };
        let closing = if p.size > 0.0 { Side::Sell } else { Side::Buy };
        return Decision::Place(request(closing, quantity, true));
    }
    let risk = &account.risk;
    let quote = account.paper.as_ref().map_or("", |p| p.quote.as_str());
    if let Some(limit) = risk.daily_loss_limit
        && recent.loss_today >= limit
    {
        return Decision::Block(Rejection::new(
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
        return Decision::Block(Rejection::new(
            "orders_per_minute",
            format!("{limit} entries were placed in the last minute, the most allowed"),
        ));
    }
    let Some(side) = side else {
        return Decision::Block(Rejection::new(
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
            return Decision::Block(Rejection::new(
                "wrong_side",
                format!(
                    "an entry {side} while a {} position in {symbol} is open: exit it first",
                    if p.size > 0.0 { "long" } else { "short" }
                ),
            ));
        }
        if p.entries >= route.pyramiding {
            return Decision::Block(Rejection::new(
                "pyramiding",
                format!(
                    "the {side} position in {symbol} has {} entries; this destination allows {}",
                    p.entries, route.pyramiding
                ),
            ));
        }
    }
    if position.is_none()
        && let Some(limit) = risk.max_open_positions
        && book.positions.len() as u32 >= limit
    {
        return Decision::Block(Rejection::new(
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
            return Decision::Block(Rejection::new(
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
            return Decision::Block(Rejection::new(
                "max_order_notional",
                format!("the order is worth {notional:.2} {quote}, the most allowed is {limit}"),
            ));
        }
        let held = position.map_or(0.0, |p| p.size.abs() * p.entry_price);
        if let Some(limit) = risk.max_position_notional
            && held + notional > limit
        {
            return Decision::Block(Rejection::new(
                "max_position_notional",
                format!(
                    "the position would be worth {:.2} {quote}, the most allowed is {limit}",
                    held + notional
                ),
            ));
        }
    }
    Decision::Place(request(order_side, quantity, false))
}
