//! Venues: where an account's orders execute. [`paper`] is the hub's own simulated exchange,
//! pure and deterministic, run by the executor on the account's book. The exchanges
//! ([`binance`]) are reached over their REST APIs through [`Venue`]: an order is placed under
//! its client order id, and looked up by it when its outcome is unknown.

pub mod binance;
pub mod bybit;
pub mod freqtrade;
pub mod okx;
pub mod paper;
pub mod rest;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde_json::Value;

use crate::domain::Millis;
use crate::model::{Account, OrderRequest, Rejection, VenueKind};

/// Where an order stands at the venue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VenueState {
    /// On the venue's book, not (wholly) filled yet.
    Open,
    /// Filled, wholly or (then ended by the venue) in part: `filled` says how much.
    Done,
    /// Ended with nothing filled: cancelled or expired.
    Cancelled,
}

/// An order as the venue answers it.
#[derive(Debug, Clone, PartialEq)]
pub struct VenueOrder {
    /// The venue's own id of the order.
    pub venue_order_id: String,
    pub state: VenueState,
    /// Base quantity filled so far.
    pub filled: f64,
    /// The average price of what filled.
    pub average_price: f64,
    /// The fee charged, in the quote currency, when the venue says it.
    pub fee: f64,
}

/// Why a call to a venue did not give an answer.
#[derive(Debug, Clone, PartialEq)]
pub enum VenueError {
    /// The venue refused the request: nothing was placed. `code` is stable, `detail` has
    /// the venue's own code and text.
    Refused(Rejection),
    /// The venue was not reached, or asked to slow down: nothing was placed, try later, and
    /// not before the wait it asked for (ms), if it said one.
    Unavailable(Rejection, Option<u64>),
    /// The request may or may not have reached the venue (a timeout, a dropped connection,
    /// a 5xx): the order must be looked up before anything else is sent.
    Unknown(String),
}

impl VenueError {
    /// Why, as the order log says it.
    pub fn reason(&self) -> Rejection {
        match self {
            VenueError::Refused(r) | VenueError::Unavailable(r, _) => r.clone(),
            VenueError::Unknown(why) => Rejection::new("outcome_unknown", why.clone()),
        }
    }
}

impl std::fmt::Display for VenueError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VenueError::Refused(r) | VenueError::Unavailable(r, _) => {
                write!(f, "{}: {}", r.code, r.detail)
            }
            VenueError::Unknown(why) => write!(f, "outcome unknown: {why}"),
        }
    }
}

/// What a signed read-only call says of an account's key.
#[derive(Debug, Clone, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct AccountCheck {
    /// Whether the key may place orders.
    pub can_trade: bool,
    /// The wallet balance, in the margin currency.
    pub balance: f64,
    /// What is free for new positions.
    pub available: f64,
    /// The margin currency of those figures.
    pub currency: String,
    /// How far the venue's clock is ahead of the hub's, in ms.
    pub clock_offset_ms: i64,
    /// The venue's raw answer, for what the figures above leave out.
    #[schema(value_type = Object)]
    pub raw: Value,
}

/// A venue reached over the network.
#[async_trait::async_trait]
pub trait Venue: Send + Sync {
    /// Checks `order` against the venue's rules and readies what sending it needs (the
    /// venue's clock and rules, the symbol's leverage), so that [`Venue::place`] sends at
    /// once. A refusal here means the venue would refuse the order; nothing was placed.
    async fn prepare(&self, order: &OrderRequest, price: Option<f64>) -> Result<(), VenueError>;

    /// Places `order` under its client order id. `price` is the signal's (or the last seen)
    /// price, for the venue's minimum notional; the venue fills at its own.
    async fn place(
        &self,
        order: &OrderRequest,
        price: Option<f64>,
    ) -> Result<VenueOrder, VenueError>;

    /// The order the venue holds under `order`'s client order id; `None` when it has none.
    /// `sent_at` is when the intent was last sent (its stamp).
    async fn lookup(
        &self,
        order: &OrderRequest,
        sent_at: Millis,
    ) -> Result<Option<VenueOrder>, VenueError>;

    /// How long after it was sent a request can no longer be accepted: past this, an order
    /// the venue does not know was never placed, and may be sent again.
    fn acceptance_window_ms(&self) -> u64;

    /// Checks the account's key with a signed read-only call.
    async fn check(&self) -> Result<AccountCheck, VenueError>;

    /// The account's position in `symbol` (the hub's name of it) as the venue holds it,
    /// `None` when flat.
    async fn position(&self, symbol: &str) -> Result<Option<Held>, VenueError>;

    /// Places a position's protective legs, held by the venue so that they work while the
    /// hub is down: its stop-loss (an [`OrderKind::Stop`](crate::model::OrderKind)) and
    /// take-profit (a `Limit`, its price the trigger), each closing the whole position when
    /// the mark price reaches it. Placing the same legs again places nothing more.
    async fn protect(&self, legs: &[OrderRequest]) -> Result<(), VenueError> {
        let _ = legs;
        Err(VenueError::Refused(Rejection::new(
            "brackets_unsupported",
            "this venue holds no stop-loss or take-profit for the hub",
        )))
    }

    /// Takes a closed position's protective legs off the venue; legs it no longer holds are
    /// no error.
    async fn unprotect(&self, legs: &[OrderRequest]) -> Result<(), VenueError> {
        let _ = legs;
        Ok(())
    }
}

/// A protective leg's trigger: a stop-loss's stop, a take-profit's price.
pub fn trigger_of(leg: &OrderRequest) -> Option<(f64, bool)> {
    match leg.kind {
        crate::model::OrderKind::Stop { trigger } => Some((trigger, true)),
        crate::model::OrderKind::Limit { price } => Some((price, false)),
        crate::model::OrderKind::Market => None,
    }
}

/// A position as a venue holds it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Held {
    /// Base quantity: more than 0 long, less than 0 short (both sides netted in hedge mode).
    pub size: f64,
    /// The average price it was entered at.
    pub entry_price: f64,
}

/// The net of a venue's positions in one symbol, each `(signed base quantity, entry price)`;
/// `None` when they net to nothing.
pub fn netted(positions: impl IntoIterator<Item = (f64, f64)>) -> Option<Held> {
    let (mut size, mut entry_price) = (0.0, 0.0);
    for (s, price) in positions {
        size += s;
        if s != 0.0 {
            entry_price = price;
        }
    }
    (size.abs() > 1e-12).then_some(Held { size, entry_price })
}

/// Where `venue`'s REST API is when an account gives no `base_url`: its live address, or its
/// testnet. `None` for the paper exchange.
pub fn usual_base_url(venue: VenueKind, live: bool) -> Option<&'static str> {
    Some(match (venue, live) {
        (VenueKind::Paper, _) => return None,
        (VenueKind::BinanceUsdm, true) => binance::LIVE,
        (VenueKind::BinanceUsdm, false) => binance::TESTNET,
        (VenueKind::Bybit, true) => bybit::LIVE,
        (VenueKind::Bybit, false) => bybit::TESTNET,
        // Demo trading is the same address with a header.
        (VenueKind::Okx, _) => okx::ADDRESS,
        // A bot's address is the account's own `url`.
        (VenueKind::Freqtrade, _) => return None,
    })
}

/// The venue clients of the exchange accounts, made once per account and kept while its
/// settings stay the same (a client learns its venue's clock and symbol rules).
pub struct Venues {
    http: reqwest::Client,
    clients: Mutex<HashMap<String, Versioned>>,
}

/// A venue client and the account version (its `updated_at`) it was made for.
type Versioned = (Millis, Arc<dyn Venue>);

impl Venues {
    /// Venues reached with `http`, whose resolver is the hub's outbound address guard.
    pub fn new(http: reqwest::Client) -> Self {
        Self {
            http,
            clients: Mutex::new(HashMap::new()),
        }
    }

    /// The client of `account`'s venue; `None` for a paper account.
    pub fn of(&self, account: &Account) -> Option<Arc<dyn Venue>> {
        let settings = account.exchange.as_ref()?;
        let mut clients = self.clients.lock().expect("not poisoned");
        if let Some((version, client)) = clients.get(&account.id)
            && *version == account.updated_at
        {
            return Some(client.clone());
        }
        let client: Arc<dyn Venue> = match account.venue {
            VenueKind::Paper => return None,
            VenueKind::BinanceUsdm => {
                Arc::new(binance::Binance::new(self.http.clone(), settings.clone()))
            }
            VenueKind::Bybit => Arc::new(bybit::Bybit::new(self.http.clone(), settings.clone())),
            VenueKind::Okx => Arc::new(okx::Okx::new(self.http.clone(), settings.clone())),
            VenueKind::Freqtrade => Arc::new(freqtrade::Freqtrade::new(
                self.http.clone(),
                settings.clone(),
            )),
        };
        clients.insert(account.id.clone(), (account.updated_at, client.clone()));
        Some(client)
    }
}
