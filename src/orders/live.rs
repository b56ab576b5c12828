//! Orders on an exchange: the intent is written before anything is sent, and an intent whose
//! outcome is unknown is asked after, never sent blindly again.
//!
//! 1. The venue's rules are read and the order checked against them ([`Venue::prepare`]);
//!    an order the venue would refuse is journalled as rejected, nothing sent.
//! 2. The intent is written, stamped with the time it is sent.
//! 3. It is sent under its client order id, and its answer settles it: filled (the account's
//!    book of positions moves with the fill), rejected with the venue's reason, or still
//!    unknown (a timeout, a dropped answer, a 5xx).
//! 4. An intent found at the start of an attempt (an unknown outcome, a crash between 2 and
//!    3) is looked up by its client order id first. If the venue has it, its answer settles
//!    it. If not, it is sent again only once the venue can no longer accept the first
//!    request (its receive window after the stamp, plus the time a request may take), with
//!    a new stamp written first; until then the attempt is retried later.
//!
//! So a venue that honours its client order ids and receive window holds at most one order
//! per intent, whatever fails and wherever the hub stops.

use std::sync::Arc;

use serde_json::Value;

use super::{Executor, Leg, MARK_TRIES, bracket_legs, closed, leg_id, signal_price, stale};
use crate::domain::{self, Scope};
use crate::exchange::paper::PaperBook;
use crate::exchange::{Venue, VenueError, VenueOrder, VenueState};
use crate::model::{
    Account, DeliveryJob, DeliveryStatus, Endpoint, Order, OrderKind, OrderRoute, OrderStatus,
    Position, Rejection, VenueKind,
};
use crate::store::{Result, Settlement, StoreError};

/// One order's venue and what it came from.
pub(super) struct Live<'a> {
    venue: Arc<dyn Venue>,
    endpoint: &'a Endpoint,
    account: &'a Account,
    data: &'a Value,
    job: &'a DeliveryJob,
}

impl<'a> Live<'a> {
    pub(super) fn new(
        venue: Arc<dyn Venue>,
        endpoint: &'a Endpoint,
        account: &'a Account,
        data: &'a Value,
        job: &'a DeliveryJob,
    ) -> Self {
        Self {
            venue,
            endpoint,
            account,
            data,
            job,
        }
    }

    /// How long after its stamp an intent the venue does not know may be sent again: the
    /// receive window, the time the request may have taken to leave, and a second for clocks.
    fn resend_after_ms(&self) -> i64 {
        let timeout = self
            .account
            .exchange
            .as_ref()
            .map_or(10_000, |e| e.timeout_ms);
        (self.venue.acceptance_window_ms() + 2 * timeout + 1_000) as i64
    }
}

/// An order destination's settings a venue cannot honour yet (brackets) block its entries
/// with the reason: a position opened without the stop-loss its destination asks for is
/// worse than none.
pub(super) fn unsupported_on_venue(order: Order, route: &OrderRoute, account: &Account) -> Order {
    let opens = order.request.as_ref().is_some_and(|r| !r.reduce_only);
    if order.status != OrderStatus::Intent || !opens {
        return order;
    }
    match unsupported(route, account) {
        Some(why) => Order {
            status: OrderStatus::Blocked,
            request: None,
            reason: Some(why),
            ..order
        },
        None => order,
    }
}

/// Why `route` cannot open positions on `account`'s venue, if it cannot: a Freqtrade bot
/// keeps its own stop-loss, and takes none from the hub.
pub(super) fn unsupported(route: &OrderRoute, account: &Account) -> Option<Rejection> {
    (route.brackets.is_some() && account.venue == VenueKind::Freqtrade).then(|| {
        Rejection::new(
            "brackets_unsupported",
            "a Freqtrade bot keeps its own stop-loss (its strategy's stoploss) and takes no \
             stop-loss or take-profit from the hub, so this destination's entries are not \
             placed without them",
        )
    })
}

impl Executor {
    /// Intents whose delivery gave up while their outcome was unknown (the venue did not
    /// answer through all of its retries), asked of their venue once it can no longer take
    /// the first request. The order the venue holds settles each; one the venue never
    /// received is ended `rejected` (`not_placed`), so that later signals of its symbol no
    /// longer wait for it. Nothing is sent. Returns how many were settled.
    pub async fn settle_given_up(&self) -> Result<usize> {
        let mut settled = 0;
        let mut endpoints: Option<Vec<Endpoint>> = None;
        for account in self.store.list_accounts(Scope::Hub).await? {
            let Some(venue) = self.venues.of(&account) else {
                continue;
            };
            for intent in self
                .store
                .orders_in(&account.id, OrderStatus::Intent)
                .await?
            {
                // A stop-loss or take-profit still to place is its entry's delivery's work.
                if intent
                    .request
                    .as_ref()
                    .is_none_or(|r| r.kind != OrderKind::Market)
                {
                    continue;
                }
                let delivery = self
                    .store
                    .get_delivery(Scope::Hub, &intent.delivery_id)
                    .await?;
                // A pending delivery asks for itself at its next attempt.
                if delivery.is_none_or(|d| d.status == DeliveryStatus::Pending) {
                    continue;
                }
                let lock = self.lock(&account.id);
                let _one_at_a_time = lock.lock().await;
                let Some(current) = self.store.order(&intent.client_order_id).await? else {
                    continue;
                };
                let (Some(request), OrderStatus::Intent) =
                    (current.request.clone(), current.status)
                else {
                    continue;
                };
                let endpoints = match &mut endpoints {
                    Some(known) => known,
                    None => endpoints.insert(self.store.list_endpoints(Scope::Hub).await?),
                };
                let Some(endpoint) = endpoints.iter().find(|e| e.id == current.endpoint_id) else {
                    continue;
                };
                let Some(event) = self.store.get_event(Scope::Hub, &current.event_id).await? else {
                    continue;
                };
                let body: Value = serde_json::from_str(&event.body).unwrap_or(Value::Null);
                let job = DeliveryJob {
                    delivery_id: current.delivery_id.clone(),
                    event_id: event.id.clone(),
                    endpoint_id: endpoint.id.clone(),
                    event_type: event.event_type.clone(),
                    body: event.body.clone().into(),
                    tries: 0,
                    event_created_at: event.created_at,
                };
                let live = Live::new(venue.clone(), endpoint, &account, &body["data"], &job);
                if domain::now_ms() - current.updated_at < live.resend_after_ms() {
                    continue;
                }
                match venue.lookup(&request, current.updated_at).await {
                    Ok(Some(found)) => {
                        self.conclude(&live, current, Ok(found)).await?;
                        settled += 1;
                    }
                    Ok(None) => {
                        let why = Rejection::new(
                            "not_placed",
                            format!(
                                "{} never received this order, and its delivery had given up: \
                                 nothing was placed",
                                account.venue.as_str()
                            ),
                        );
                        let ended = self.finish(current, OrderStatus::Rejected, why).await?;
                        self.notify(&ended, false);
                        settled += 1;
                    }
                    Err(e) => {
                        tracing::debug!(order = %current.id, error = %e, "still no answer");
                    }
                }
            }
        }
        Ok(settled)
    }

    /// Takes `symbol`'s position from the venue into `book` when the two differ, and writes
    /// the book. `Some(why)` when the venue could not be asked, or the book moved meanwhile:
    /// the signal waits for its next attempt.
    pub(super) async fn follow_venue(
        &self,
        venue: &dyn Venue,
        account: &Account,
        symbol: &str,
        book: &mut PaperBook,
    ) -> Result<Option<Rejection>> {
        let held = match venue.position(symbol).await {
            Ok(held) => held,
            Err(e) => {
                self.slowed_by(&account.id, &e);
                let why = match e {
                    VenueError::Unknown(w) => Rejection::new("venue_unavailable", w),
                    other => other.reason(),
                };
                return Ok(Some(Rejection::new(
                    &why.code,
                    format!(
                        "the position in {symbol} could not be read from the venue: {}",
                        why.detail
                    ),
                )));
            }
        };
        let ours = book.positions.get(symbol).map_or(0.0, |p| p.size);
        let theirs = held.map_or(0.0, |h| h.size);
        if (ours - theirs).abs() <= 1e-9 * ours.abs().max(theirs.abs()).max(1.0) {
            return Ok(None);
        }
        let mut next = book.clone();
        next.revision += 1;
        match held {
            None => {
                next.positions.remove(symbol);
            }
            Some(held) => {
                let kept = next.positions.get(symbol);
                let position = Position {
                    symbol: symbol.to_owned(),
                    size: held.size,
                    entry_price: held.entry_price,
                    leverage: kept.map_or(1.0, |p| p.leverage),
                    entries: kept.map_or(1, |p| p.entries),
                };
                next.positions.insert(symbol.to_owned(), position);
            }
        }
        let written = self
            .store
            .settle(Settlement {
                account_id: account.id.clone(),
                intent: None,
                fresh: false,
                book: Some(next.clone()),
                others: Vec::new(),
            })
            .await?;
        if !written {
            return Ok(Some(Rejection::new(
                "book_changed",
                "the account's book changed while it was taken from the venue; decided again \
                 at the next attempt",
            )));
        }
        tracing::warn!(
            account = %account.id,
            live = account.live(),
            symbol,
            hub = ours,
            venue = theirs,
            "the venue holds another position than the hub's book: taken from the venue"
        );
        if held.is_none() {
            let why = Rejection::new(
                "position_closed_at_venue",
                "the position closed at the venue without the hub: by this stop-loss or \
                 take-profit, a liquidation, or an order by hand",
            );
            self.end_legs(venue, account, symbol, why).await?;
        }
        *book = next;
        Ok(None)
    }

    /// Places a new intent with its venue: checked, written, then sent (steps 1 to 3).
    pub(super) async fn send(
        &self,
        live: Live<'_>,
        intent: Order,
        book: PaperBook,
    ) -> Result<Order> {
        let Some(request) = intent.request.clone() else {
            return Ok(intent);
        };
        let price = signal_price(live.data).or_else(|| book.marks.get(&request.symbol).copied());
        if let Err(e) = live.venue.prepare(&request, price).await {
            return match e {
                VenueError::Refused(why) => {
                    let rejected = Order {
                        status: OrderStatus::Rejected,
                        reason: Some(why),
                        ..intent
                    };
                    let order = self.store.record_order(rejected).await?;
                    self.notify(&order, false);
                    Ok(order)
                }
                // Nothing was written or sent: the next attempt decides again.
                e @ VenueError::Unavailable(..) => {
                    self.slowed_by(&intent.account_id, &e);
                    Ok(Order {
                        reason: Some(e.reason()),
                        ..intent
                    })
                }
                VenueError::Unknown(why) => Ok(Order {
                    reason: Some(Rejection::new("venue_unavailable", why)),
                    ..intent
                }),
            };
        }
        let stamped = Order {
            updated_at: domain::now_ms(),
            ..intent
        };
        let stored = self.store.record_order(stamped.clone()).await?;
        if stored.id != stamped.id {
            // Another attempt wrote this intent first: that one is asked after.
            return self.resolve(live, stored).await;
        }
        self.crash_at("after_intent", &stored.id);
        tracing::info!(
            order = %stored.id,
            account = %live.account.id,
            live = live.account.live(),
            venue = live.account.venue.as_str(),
            "order sent"
        );
        let answer = live.venue.place(&request, price).await;
        self.crash_at("after_send", &stored.id);
        self.conclude(&live, stored, answer).await
    }

    /// An intent found at the start of an attempt: looked up, and sent again only when the
    /// venue can no longer accept the first request (step 4).
    pub(super) async fn resolve(&self, live: Live<'_>, intent: Order) -> Result<Order> {
        let Some(request) = intent.request.clone() else {
            return Ok(intent);
        };
        let found = match live.venue.lookup(&request, intent.updated_at).await {
            Ok(found) => found,
            Err(e) => return self.unknown(intent, e).await,
        };
        if let Some(found) = found {
            return self.conclude(&live, intent, Ok(found)).await;
        }
        let now = domain::now_ms();
        let waited = now - intent.updated_at;
        let needed = live.resend_after_ms();
        if waited < needed {
            let why = Rejection::new(
                "outcome_unknown",
                format!(
                    "{} has no order {} yet; it is asked again until {:.1} s after it was \
                     sent, and only then sent again",
                    live.account.venue.as_str(),
                    request.client_order_id,
                    needed as f64 / 1000.0
                ),
            );
            return self.note(intent, why).await;
        }
        if let Some(why) = stale(live.endpoint, live.job, now) {
            // It never reached the venue, and it is too late to send it now.
            return self.finish(intent, OrderStatus::Blocked, why).await;
        }
        let price = signal_price(live.data);
        if let Err(e) = live.venue.prepare(&request, price).await {
            return match e {
                VenueError::Refused(why) => self.finish(intent, OrderStatus::Rejected, why).await,
                other => self.unknown(intent, other).await,
            };
        }
        // Stamped anew, durably, before it leaves: the window counts from here.
        let stamped = Order {
            updated_at: domain::now_ms(),
            reason: None,
            ..intent
        };
        if !self.write_intent(&stamped).await? {
            return self.settled_or(stamped).await;
        }
        tracing::warn!(
            order = %stamped.id,
            account = %live.account.id,
            live = live.account.live(),
            "the venue never received this order: sent again under the same client order id"
        );
        let answer = live.venue.place(&request, price).await;
        self.crash_at("after_send", &stamped.id);
        self.conclude(&live, stamped, answer).await
    }

    /// Settles an intent with the venue's answer.
    async fn conclude(
        &self,
        live: &Live<'_>,
        intent: Order,
        answer: std::result::Result<VenueOrder, VenueError>,
    ) -> Result<Order> {
        let found = match answer {
            Ok(found) => found,
            Err(VenueError::Refused(why)) => {
                return self.finish(intent, OrderStatus::Rejected, why).await;
            }
            Err(e) => return self.unknown(intent, e).await,
        };
        match found.state {
            VenueState::Done => self.filled(live, intent, &found).await,
            VenueState::Open => {
                let asked = intent.request.as_ref().map_or(0.0, |r| r.quantity);
                let why = Rejection::new(
                    "open_at_venue",
                    format!(
                        "the venue holds order {} open, {} of {asked} filled; it is asked again",
                        found.venue_order_id, found.filled
                    ),
                );
                self.note(intent, why).await
            }
            VenueState::Cancelled => {
                let why = Rejection::new(
                    "expired",
                    format!(
                        "the venue ended order {} with nothing filled",
                        found.venue_order_id
                    ),
                );
                self.finish(intent, OrderStatus::Rejected, why).await
            }
        }
    }

    /// Books a venue's fill on the account's positions and settles the intent with it. The
    /// fill happened: if another node moved the book meanwhile, it is booked on the new one.
    async fn filled(&self, live: &Live<'_>, intent: Order, found: &VenueOrder) -> Result<Order> {
        let Some(request) = intent.request.clone() else {
            return Ok(intent);
        };
        for _ in 0..MARK_TRIES {
            let Some(book) = self.book(live.account).await? else {
                break;
            };
            let mut next = book;
            next.revision += 1;
            let fill = next.record(&request, found.filled, found.average_price, found.fee);
            // An entry's stop-loss and take-profit are written with its fill, as intents, and
            // placed at the venue right after: a crash in between leaves them to place.
            let legs = match live.endpoint.policy.orders.as_ref() {
                Some(route) if !request.reduce_only => {
                    bracket_legs(&intent, route, &fill, live.data, domain::now_ms())
                }
                _ => Vec::new(),
            };
            let partly = found.filled + 1e-12 < request.quantity;
            let settled = Order {
                status: OrderStatus::Filled,
                reason: partly.then(|| {
                    Rejection::new(
                        "partially_filled",
                        format!(
                            "the venue filled {} of {} and ended order {}",
                            found.filled, request.quantity, found.venue_order_id
                        ),
                    )
                }),
                fill: Some(fill),
                updated_at: domain::now_ms(),
                ..intent.clone()
            };
            let written = self
                .store
                .settle(Settlement {
                    account_id: settled.account_id.clone(),
                    intent: Some(settled.clone()),
                    fresh: false,
                    book: Some(next.clone()),
                    others: legs.clone(),
                })
                .await?;
            if written {
                tracing::info!(
                    order = %settled.id,
                    account = %live.account.id,
                    live = live.account.live(),
                    venue_order = %found.venue_order_id,
                    "order filled"
                );
                let flat = closed(&settled, &next);
                self.notify(&settled, flat);
                if flat {
                    let why = Rejection::new("position_closed", "its position was closed");
                    self.end_legs(live.venue.as_ref(), live.account, &request.symbol, why)
                        .await?;
                }
                if !legs.is_empty() {
                    self.crash_at("before_protect", &settled.id);
                }
                self.protect(live, legs).await?;
                return Ok(settled);
            }
            if let Some(stored) = self.store.order(&intent.client_order_id).await?
                && stored.status != OrderStatus::Intent
            {
                return Ok(stored);
            }
        }
        Err(StoreError::Busy(format!(
            "the book of {} kept changing under the fill of {}",
            intent.account_id, intent.id
        )))
    }

    /// Places an entry's protective legs (those still intents) at the venue. Earlier legs of
    /// the same position are taken off first: the venue holds one stop per position, at the
    /// latest entry's prices. A venue that cannot place them leaves the position open without
    /// them: each leg is journalled `rejected` with why, announced, and logged as an error.
    async fn protect(&self, live: &Live<'_>, legs: Vec<Order>) -> Result<()> {
        let pending: Vec<Order> = legs
            .into_iter()
            .filter(|l| l.status == OrderStatus::Intent)
            .collect();
        let requests: Vec<_> = pending.iter().filter_map(|l| l.request.clone()).collect();
        let Some(symbol) = requests.first().map(|r| r.symbol.clone()) else {
            return Ok(());
        };
        let ids: Vec<&str> = requests
            .iter()
            .map(|r| r.client_order_id.as_str())
            .collect();
        let earlier: Vec<Order> = self
            .legs_of(&live.account.id, &symbol)
            .await?
            .into_iter()
            .filter(|l| !ids.contains(&l.client_order_id.as_str()))
            .collect();
        if !earlier.is_empty() {
            let why = Rejection::new(
                "replaced",
                "replaced by the stop-loss and take-profit of a later entry",
            );
            self.take_off(live.venue.as_ref(), earlier, why).await?;
        }
        let mut outcome = live.venue.protect(&requests).await;
        // Placing them again places nothing more: a lost answer is asked again.
        for _ in 0..2 {
            if matches!(outcome, Err(VenueError::Refused(_)) | Ok(())) {
                break;
            }
            outcome = live.venue.protect(&requests).await;
        }
        let now = domain::now_ms();
        let ended: Vec<Order> = pending
            .into_iter()
            .map(|leg| match &outcome {
                Ok(()) => Order {
                    status: OrderStatus::Resting,
                    updated_at: now,
                    ..leg
                },
                Err(e) => {
                    let why = e.reason();
                    Order {
                        status: OrderStatus::Rejected,
                        reason: Some(Rejection::new(
                            &why.code,
                            format!(
                                "the venue did not take this protective order, and the \
                                 position is open without it: {}",
                                why.detail
                            ),
                        )),
                        updated_at: now,
                        ..leg
                    }
                }
            })
            .collect();
        if let Err(e) = &outcome {
            tracing::error!(
                account = %live.account.id,
                live = live.account.live(),
                symbol,
                error = %e,
                "the stop-loss and take-profit could not be placed at the venue"
            );
        }
        self.store
            .settle(Settlement {
                account_id: live.account.id.clone(),
                intent: None,
                fresh: false,
                book: None,
                others: ended.clone(),
            })
            .await?;
        for leg in ended.iter().filter(|l| l.status == OrderStatus::Rejected) {
            self.notify(leg, false);
        }
        Ok(())
    }

    /// The protective legs of an entry whose fill was written but not followed by their
    /// placing (the hub stopped in between): placed now.
    pub(super) async fn protect_pending(&self, live: Live<'_>, entry: &Order) -> Result<()> {
        let mut pending = Vec::new();
        for leg in [Leg::StopLoss, Leg::TakeProfit] {
            if let Some(order) = self.store.order(&leg_id(&entry.delivery_id, leg)).await?
                && order.status == OrderStatus::Intent
            {
                pending.push(order);
            }
        }
        self.protect(&live, pending).await
    }

    /// The account's protective legs resting on `symbol`.
    async fn legs_of(&self, account_id: &str, symbol: &str) -> Result<Vec<Order>> {
        Ok(self
            .store
            .orders_in(account_id, OrderStatus::Resting)
            .await?
            .into_iter()
            .filter(|o| o.request.as_ref().is_some_and(|r| r.symbol == symbol))
            .collect())
    }

    /// Takes the protective legs of a position that closed off the venue, and journals them
    /// `cancelled` with `why`.
    async fn end_legs(
        &self,
        venue: &dyn Venue,
        account: &Account,
        symbol: &str,
        why: Rejection,
    ) -> Result<()> {
        let legs = self.legs_of(&account.id, symbol).await?;
        self.take_off(venue, legs, why).await
    }

    async fn take_off(&self, venue: &dyn Venue, legs: Vec<Order>, why: Rejection) -> Result<()> {
        let Some(account_id) = legs.first().map(|l| l.account_id.clone()) else {
            return Ok(());
        };
        let requests: Vec<_> = legs.iter().filter_map(|l| l.request.clone()).collect();
        if let Err(e) = venue.unprotect(&requests).await {
            // The journal still ends them: a leg left at the venue closes nothing once its
            // position is gone, and the next entry's legs replace it.
            tracing::warn!(account = %account_id, error = %e,
                           "protective orders could not be taken off the venue");
        }
        let now = domain::now_ms();
        let ended = legs
            .into_iter()
            .map(|leg| Order {
                status: OrderStatus::Cancelled,
                reason: Some(why.clone()),
                updated_at: now,
                ..leg
            })
            .collect();
        self.store
            .settle(Settlement {
                account_id,
                intent: None,
                fresh: false,
                book: None,
                others: ended,
            })
            .await?;
        Ok(())
    }

    /// Settles an intent without a fill: rejected by the venue, or blocked.
    async fn finish(&self, intent: Order, status: OrderStatus, why: Rejection) -> Result<Order> {
        let settled = Order {
            status,
            reason: Some(why),
            updated_at: domain::now_ms(),
            ..intent
        };
        let written = self
            .store
            .settle(Settlement {
                account_id: settled.account_id.clone(),
                intent: Some(settled.clone()),
                fresh: false,
                book: None,
                others: Vec::new(),
            })
            .await?;
        if !written {
            return self.settled_or(settled).await;
        }
        tracing::info!(order = %settled.id, status = status.as_str(), "order settled");
        self.notify(&settled, false);
        Ok(settled)
    }

    /// The intent stays, its outcome unknown for now: the journal says why, and the attempt
    /// is retried.
    async fn unknown(&self, intent: Order, e: VenueError) -> Result<Order> {
        self.slowed_by(&intent.account_id, &e);
        let why = e.reason();
        tracing::warn!(order = %intent.id, reason = %why.code, "order outcome not known yet");
        self.note(intent, why).await
    }

    /// Writes why an intent is still open, keeping its stamp.
    async fn note(&self, intent: Order, why: Rejection) -> Result<Order> {
        let noted = Order {
            reason: Some(why),
            ..intent
        };
        if !self.write_intent(&noted).await? {
            return self.settled_or(noted).await;
        }
        Ok(noted)
    }

    /// Writes `intent` over the stored one while that is still an intent.
    async fn write_intent(&self, intent: &Order) -> Result<bool> {
        self.store
            .settle(Settlement {
                account_id: intent.account_id.clone(),
                intent: Some(intent.clone()),
                fresh: false,
                book: None,
                others: Vec::new(),
            })
            .await
    }

    /// The stored order, settled meanwhile by another attempt, or `order` as it is.
    async fn settled_or(&self, order: Order) -> Result<Order> {
        Ok(self
            .store
            .order(&order.client_order_id)
            .await?
            .unwrap_or(order))
    }
}
