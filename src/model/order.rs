//! Orders and what comes of them, as plain data: what is asked of a venue, a fill, a refusal,
//! and a position. Quantities are in the base currency, prices and money in the account's
//! quote currency.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Which way an order trades.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    Buy,
    Sell,
}

impl Side {
    /// `+1` for a buy, `-1` for a sell: what a fill adds to a signed position.
    pub fn sign(self) -> f64 {
        match self {
            Side::Buy => 1.0,
            Side::Sell => -1.0,
        }
    }

    pub fn opposite(self) -> Side {
        match self {
            Side::Buy => Side::Sell,
            Side::Sell => Side::Buy,
        }
    }
}

/// How an order executes.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum OrderKind {
    /// At once, at the price of the moment, with slippage.
    Market,
    /// Rests until the price reaches `price` or better, then fills at `price`.
    Limit { price: f64 },
    /// Rests until the price crosses `trigger` (a buy stop at or above it, a sell stop at or
    /// below it), then fills as a market order at the price that crossed it.
    Stop { trigger: f64 },
}

/// An order as it is asked of a venue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct OrderRequest {
    /// The idempotency key: a venue that has seen it answers with that order instead of
    /// placing another.
    pub client_order_id: String,
    pub symbol: String,
    pub side: Side,
    /// Base quantity, more than 0.
    pub quantity: f64,
    pub kind: OrderKind,
    /// May only make the position smaller: never opens one or turns it the other way.
    pub reduce_only: bool,
    /// The leverage of the position it opens or adds to.
    pub leverage: f64,
}

/// One execution of an order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Fill {
    pub client_order_id: String,
    pub symbol: String,
    pub side: Side,
    pub quantity: f64,
    pub price: f64,
    pub fee: f64,
    /// Profit or loss this fill realised by closing part of a position, before its fee.
    pub realized_pnl: f64,
}

/// Why a venue did not execute an order; `code` is stable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Rejection {
    pub code: String,
    pub detail: String,
}

impl Rejection {
    pub fn new(code: &str, detail: impl Into<String>) -> Self {
        Self {
            code: code.to_owned(),
            detail: detail.into(),
        }
    }
}

/// An open position.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Position {
    pub symbol: String,
    /// Base quantity: more than 0 long, less than 0 short.
    pub size: f64,
    /// The average price it was entered at.
    pub entry_price: f64,
    pub leverage: f64,
    /// Entries it took (the first and each addition), for a pyramiding limit.
    #[serde(default = "one_entry")]
    pub entries: u32,
}

impl Position {
    /// Profit or loss if it were closed at `price`, before fees.
    pub fn unrealized_pnl(&self, price: f64) -> f64 {
        (price - self.entry_price) * self.size
    }

    /// The margin it holds: its entry notional over its leverage.
    pub fn margin(&self) -> f64 {
        self.size.abs() * self.entry_price / self.leverage
    }
}

/// How an order destination sizes an entry.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Sizing {
    /// This base quantity (`{"base": 0.01}`).
    Base(f64),
    /// This much quote currency of notional, at the signal's price (`{"quote": 100}`).
    Quote(f64),
    /// This percent of the account's equity as margin (`{"percent_equity": 5}`).
    PercentEquity(f64),
    /// The signal's own amount times this (`{"multiplier": 0.5}`): copy trading.
    Multiplier(f64),
}

/// What makes an endpoint an order destination: its account, which symbols it trades and how
/// large its orders are.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OrderRoute {
    /// The signal's symbol (`BINANCE:BTCUSDT.P`, or its pair `BTC/USDT`) → the venue's
    /// (`BTC/USDT:USDT`). Only these are traded; a signal for any other is blocked.
    pub symbols: std::collections::BTreeMap<String, String>,
    pub size: Sizing,
    /// The leverage of the positions it opens (default 1).
    #[serde(default = "one")]
    pub leverage: f64,
    /// Entries one position may take (default 1: an entry while a position on the same side
    /// is open is blocked).
    #[serde(default = "one_entry")]
    pub pyramiding: u32,
    /// A stop-loss and a take-profit placed with each entry's fill.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub brackets: Option<Brackets>,
    /// On a `liquidation_warning` signal, close this percent of the position (1 to 100); no
    /// such setting, nothing is done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub liquidation_close_percent: Option<f64>,
}

/// The stop-loss and take-profit of an entry, as percentages of its fill price. A signal's
/// own `stop_loss` and `take_profit` prices, when it has them, take their place. Both are
/// reduce-only; when the position closes, whichever is left is cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Brackets {
    /// How far against the position the stop sits: 2 is 2% below a long's entry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_loss_percent: Option<f64>,
    /// How far with the position the take-profit sits: 4 is 4% above a long's entry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub take_profit_percent: Option<f64>,
}

impl OrderRoute {
    /// The venue's symbol for a signal: its `symbol`, or else its `pair`, mapped by this
    /// route; `None` when it names neither or one this route does not trade.
    pub fn symbol_of(&self, data: &serde_json::Value) -> Option<&String> {
        ["symbol", "pair"]
            .iter()
            .filter_map(|k| data.get(*k).and_then(serde_json::Value::as_str))
            .find_map(|s| self.symbols.get(s))
    }
}

fn one() -> f64 {
    1.0
}

fn one_entry() -> u32 {
    1
}

/// Where an order stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatus {
    /// Written, not yet executed: after a crash it is executed once, never placed again.
    Intent,
    Filled,
    /// A limit or stop waiting for its price.
    Resting,
    /// The venue refused it (no price, not enough margin, …).
    Rejected,
    /// The risk gate stopped it before the venue (halted account, symbol not allowed, …).
    Blocked,
    /// The signal asked for nothing to do (an exit with no position).
    Skipped,
    /// Taken off the book before it executed: the rest of a bracket whose position closed.
    Cancelled,
}

impl OrderStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::Intent => "intent",
            OrderStatus::Filled => "filled",
            OrderStatus::Resting => "resting",
            OrderStatus::Rejected => "rejected",
            OrderStatus::Blocked => "blocked",
            OrderStatus::Skipped => "skipped",
            OrderStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [
            OrderStatus::Intent,
            OrderStatus::Filled,
            OrderStatus::Resting,
            OrderStatus::Rejected,
            OrderStatus::Blocked,
            OrderStatus::Skipped,
            OrderStatus::Cancelled,
        ]
        .into_iter()
        .find(|s| s.as_str() == text)
    }
}

/// An order in the journal: the signal it came from, what was asked, and what came of it.
#[derive(Debug, Clone, PartialEq)]
pub struct Order {
    pub id: String,
    /// Derived from (delivery, leg): the same for every retry of the same signal.
    pub client_order_id: String,
    pub account_id: String,
    pub endpoint_id: String,
    pub delivery_id: String,
    pub event_id: String,
    /// What was asked of the venue; `None` when nothing was (blocked or skipped).
    pub request: Option<OrderRequest>,
    pub status: OrderStatus,
    pub fill: Option<Fill>,
    /// Why it was rejected, blocked or skipped.
    pub reason: Option<Rejection>,
    pub created_at: crate::domain::Millis,
    pub updated_at: crate::domain::Millis,
}
