//! Local simulators of the exchanges' documented REST endpoints, as far as the hub uses
//! them. What they share is here: the book of orders and positions a venue keeps, the checks
//! every venue makes of a new order (client order id form and uniqueness, quantity step,
//! reduce-only against the position), and the faults that can be queued for the next
//! orders. Each venue's module checks its own signature recipe and timestamp rule and
//! answers in its own words.

pub mod binance;
pub mod bybit;
pub mod okx;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::response::Response;

pub use binance::start as binance;
pub use bybit::start as bybit;
pub use okx::start as okx;

/// What happens to the next order request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Fault {
    /// Taken and filled, then the answer takes this long (the client times out first).
    HangAfterAccept(Duration),
    /// Taken and filled, then answered `503` ("execution status unknown").
    UnavailableAfterAccept,
    /// Taken and filled, then the connection is dropped without an answer.
    DropAfterAccept,
    /// Never taken: the request is held this long, then dropped, as if lost on the way.
    LostBeforeAccept(Duration),
    /// Refused for want of margin.
    InsufficientMargin,
    /// Refused for asking too often, with a wait of this many seconds.
    RateLimited(u64),
}

/// An order the simulator took.
#[derive(Debug, Clone, PartialEq)]
pub struct SimOrder {
    pub order_id: u64,
    pub client_order_id: String,
    pub symbol: String,
    /// `BUY` or `SELL`.
    pub side: String,
    pub quantity: String,
    pub reduce_only: bool,
    /// In hedge mode, the position side it named (`LONG` or `SHORT`).
    pub position_side: Option<&'static str>,
    pub price: f64,
}

/// A new order as a venue's request says it.
pub struct NewOrder {
    pub client_order_id: String,
    pub symbol: String,
    pub buy: bool,
    pub market: bool,
    pub quantity: String,
    pub reduce_only: bool,
    /// The position side the request named (`LONG` or `SHORT`), if any.
    pub position_side: Option<&'static str>,
    /// The base quantity of one unit of `quantity` (a contract's value where the venue
    /// counts contracts), and the step `quantity` must keep, in those units.
    pub unit: f64,
    pub step: f64,
}

/// Why a venue refuses a new order, in no venue's words yet.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Refused {
    UnknownSymbol,
    BadClientId,
    DuplicateClientId,
    NotMarket,
    BadQuantity,
    NothingToReduce,
    /// A position side named in one-way mode, or none in hedge mode.
    PositionMode,
}

/// A stop-loss or take-profit the venue holds for a position, closing all of it when the
/// price reaches it.
#[derive(Debug, Clone, PartialEq)]
pub struct Protection {
    /// Its client id (Binance's `clientAlgoId`, OKX's `algoClOrdId`; Bybit's are the
    /// position's own).
    pub id: String,
    pub algo_id: u64,
    /// The position it closes: its symbol, or `SYMBOL:SIDE` in hedge mode.
    pub position: String,
    pub stop: Option<f64>,
    pub take: Option<f64>,
    /// `live`, `triggered` or `cancelled`.
    pub state: &'static str,
    /// Bybit's: taken away when its position closes.
    pub with_position: bool,
}

/// One venue's state.
#[derive(Default)]
pub struct Sim {
    pub api_key: String,
    pub secret: String,
    /// The key's passphrase, where the venue has one (OKX).
    pub passphrase: String,
    /// Whether the last order request was marked as demo trading.
    pub demo: Option<bool>,
    /// How far the simulator's clock is ahead of the machine's, in ms.
    pub skew_ms: i64,
    pub prices: HashMap<String, f64>,
    pub orders: Vec<SimOrder>,
    /// Signed quantity per symbol (per `SYMBOL:SIDE` in hedge mode).
    pub positions: HashMap<String, f64>,
    /// The price each position was last added to at, by the same key.
    pub entries: HashMap<String, f64>,
    pub leverage: HashMap<String, u32>,
    /// Hedge mode: a long and a short position per symbol, each order naming its side.
    pub hedge: bool,
    pub protections: Vec<Protection>,
    pub faults: VecDeque<Fault>,
    /// Every order request that reached the simulator, taken or not.
    pub order_requests: usize,
    /// When each request about an order (placing or looking up) came, by the simulator's
    /// clock, and when one was refused for asking too often.
    pub order_calls: Vec<i64>,
    pub limited_at: Option<i64>,
}

impl Sim {
    /// The simulator's clock, in ms.
    pub fn now(&self) -> i64 {
        now_ms() + self.skew_ms
    }

    /// Counts an order request and gives the fault queued for it.
    pub fn next_order(&mut self) -> Option<Fault> {
        self.order_requests += 1;
        self.faults.pop_front()
    }

    /// Takes and fills a market order at the symbol's price, as every venue checks it: a
    /// client order id of 1 to 36 of `[.A-Za-z0-9:/_-]`, unique; a quantity in whole steps;
    /// reduce-only only against a position it does not exceed.
    pub fn take(&mut self, o: NewOrder) -> Result<SimOrder, Refused> {
        let Some(price) = self.prices.get(&o.symbol).copied() else {
            return Err(Refused::UnknownSymbol);
        };
        let id = &o.client_order_id;
        let valid = (1..=36).contains(&id.len())
            && id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || ".:/_-".contains(c));
        if !valid {
            return Err(Refused::BadClientId);
        }
        if self.orders.iter().any(|x| &x.client_order_id == id) {
            return Err(Refused::DuplicateClientId);
        }
        if !o.market {
            return Err(Refused::NotMarket);
        }
        let units: f64 = o.quantity.parse().unwrap_or(0.0);
        let steps = units / o.step;
        if units < o.step || (steps - steps.round()).abs() > 1e-6 {
            return Err(Refused::BadQuantity);
        }
        let quantity = units * o.unit;
        let sign = if o.buy { 1.0 } else { -1.0 };
        // One-way: one net position per symbol. Hedge: one per side, and an order reduces
        // when it trades against the side it names.
        let (key, reduces) = match (self.hedge, o.position_side) {
            (false, None) => (o.symbol.clone(), o.reduce_only),
            (true, Some(side)) => (
                format!("{}:{side}", o.symbol),
                o.reduce_only || (side == "LONG") != o.buy,
            ),
            _ => return Err(Refused::PositionMode),
        };
        let held = *self.positions.get(&key).unwrap_or(&0.0);
        if reduces && (held * sign >= 0.0 || quantity > held.abs() + 1e-9) {
            return Err(Refused::NothingToReduce);
        }
        if !reduces {
            self.entries.insert(key.clone(), price);
        }
        let now_held = held + sign * quantity;
        if now_held.abs() < 1e-12 {
            // A position's own take-profit and stop-loss (Bybit's) go with it.
            for p in &mut self.protections {
                if p.with_position && p.position == key && p.state == "live" {
                    p.state = "cancelled";
                }
            }
        }
        self.positions.insert(key, now_held);
        let order = SimOrder {
            order_id: 8_389_765_000 + self.orders.len() as u64,
            client_order_id: o.client_order_id,
            symbol: o.symbol,
            side: if o.buy { "BUY" } else { "SELL" }.into(),
            quantity: o.quantity,
            reduce_only: o.reduce_only,
            position_side: o.position_side,
            price,
        };
        self.orders.push(order.clone());
        Ok(order)
    }
}

impl Sim {
    /// The key of the position an order of `symbol` naming `side` (hedge mode) is about.
    pub fn position_key(&self, symbol: &str, side: Option<&str>) -> String {
        match side {
            Some(side) if self.hedge => format!("{symbol}:{side}"),
            _ => symbol.to_owned(),
        }
    }

    /// Moves `symbol`'s price, and closes each position whose live protection it reaches:
    /// a long's stop at or below it, its take-profit at or above (a short's the other way).
    pub fn move_price(&mut self, symbol: &str, price: f64) {
        self.prices.insert(symbol.to_owned(), price);
        for i in 0..self.protections.len() {
            let p = self.protections[i].clone();
            let on_symbol = p.position == symbol || p.position.starts_with(&format!("{symbol}:"));
            let held = self.positions.get(&p.position).copied().unwrap_or(0.0);
            if p.state != "live" || !on_symbol || held == 0.0 {
                continue;
            }
            let long = held > 0.0;
            let reached = p
                .stop
                .is_some_and(|s| if long { price <= s } else { price >= s })
                || p.take
                    .is_some_and(|t| if long { price >= t } else { price <= t });
            if !reached {
                continue;
            }
            self.positions.insert(p.position.clone(), 0.0);
            self.protections[i].state = "triggered";
            for other in &mut self.protections {
                if other.with_position && other.position == p.position && other.state == "live" {
                    other.state = "cancelled";
                }
            }
            let order = SimOrder {
                order_id: 8_389_765_000 + self.orders.len() as u64,
                client_order_id: p.id.clone(),
                symbol: symbol.to_owned(),
                side: if long { "SELL" } else { "BUY" }.into(),
                quantity: format!("{:.3}", held.abs()),
                reduce_only: true,
                position_side: None,
                price,
            };
            self.orders.push(order);
        }
    }

    /// The positions in `symbol`, as `(side, signed base quantity, entry price)`: one
    /// without a side in one-way mode, one per side (`LONG`, `SHORT`) in hedge mode.
    pub fn held(&self, symbol: &str) -> Vec<(Option<&'static str>, f64, f64)> {
        let keys: Vec<(String, Option<&'static str>)> = if self.hedge {
            vec![
                (format!("{symbol}:LONG"), Some("LONG")),
                (format!("{symbol}:SHORT"), Some("SHORT")),
            ]
        } else {
            vec![(symbol.to_owned(), None)]
        };
        keys.into_iter()
            .map(|(key, side)| {
                let size = self.positions.get(&key).copied().unwrap_or(0.0);
                (side, size, self.entries.get(&key).copied().unwrap_or(0.0))
            })
            .collect()
    }
}

/// A running simulator.
#[derive(Clone)]
pub struct VenueSim {
    pub url: String,
    state: Arc<Mutex<Sim>>,
}

impl VenueSim {
    /// Serves `routes` over `state` on a loopback port.
    pub async fn serve(app: axum::Router, state: Arc<Mutex<Sim>>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self {
            url: format!("http://{addr}"),
            state,
        }
    }

    /// A simulator's state for `api_key` and `secret`, trading BTCUSDT at 64,000.
    pub fn state(api_key: &str, secret: &str) -> Arc<Mutex<Sim>> {
        Arc::new(Mutex::new(Sim {
            api_key: api_key.into(),
            secret: secret.into(),
            prices: HashMap::from([("BTCUSDT".into(), 64_000.0)]),
            ..Sim::default()
        }))
    }

    /// Queues faults for the next order requests, in order.
    pub fn fault(&self, faults: impl IntoIterator<Item = Fault>) {
        self.state.lock().unwrap().faults.extend(faults);
    }

    pub fn set_skew(&self, ms: i64) {
        self.state.lock().unwrap().skew_ms = ms;
    }

    /// Moves the price, triggering the protections it reaches.
    pub fn set_price(&self, symbol: &str, price: f64) {
        self.state.lock().unwrap().move_price(symbol, price);
    }

    /// The protections the venue was given, oldest first.
    pub fn protections(&self) -> Vec<Protection> {
        self.state.lock().unwrap().protections.clone()
    }

    /// The orders taken, oldest first.
    pub fn orders(&self) -> Vec<SimOrder> {
        self.state.lock().unwrap().orders.clone()
    }

    /// The order requests that arrived, taken or not.
    pub fn order_requests(&self) -> usize {
        self.state.lock().unwrap().order_requests
    }

    /// The net position in `symbol`, over both sides in hedge mode.
    pub fn position(&self, symbol: &str) -> f64 {
        let sim = self.state.lock().unwrap();
        sim.positions
            .iter()
            .filter(|(k, _)| k.as_str() == symbol || k.starts_with(&format!("{symbol}:")))
            .map(|(_, v)| v)
            .sum()
    }

    /// Changes the one-way position in `symbol` as something else than the hub would (a stop
    /// that triggered at the venue, an order placed by hand).
    pub fn set_position(&self, symbol: &str, size: f64) {
        self.state
            .lock()
            .unwrap()
            .positions
            .insert(symbol.into(), size);
    }

    /// Sets the venue account to hedge mode.
    pub fn set_hedge(&self) {
        self.state.lock().unwrap().hedge = true;
    }

    pub fn leverage(&self, symbol: &str) -> Option<u32> {
        self.state.lock().unwrap().leverage.get(symbol).copied()
    }

    /// The first request about an order after one was refused for asking too often, and
    /// how long after the refusal it came (ms).
    pub fn call_after_limit(&self) -> Option<i64> {
        let sim = self.state.lock().unwrap();
        let limited = sim.limited_at?;
        sim.order_calls
            .iter()
            .find(|at| **at > limited)
            .map(|at| at - limited)
    }

    /// Whether the last order request was marked as demo trading.
    pub fn demo(&self) -> Option<bool> {
        self.state.lock().unwrap().demo
    }
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// The answer to an order request after it was taken (or not), as `fault` has it: `ok` is
/// the venue's answer for the order, `unknown` its "execution status unknown".
pub async fn after_taking(
    fault: Option<Fault>,
    taken: Option<Response>,
    unknown: impl FnOnce() -> Response,
) -> Response {
    match (fault, taken) {
        (Some(Fault::LostBeforeAccept(d)), _) => {
            tokio::time::sleep(d).await;
            // Unwinding out of the handler closes the connection without an answer (and
            // with no panic message: resume_unwind skips the hook).
            std::panic::resume_unwind(Box::new("the request is lost"))
        }
        (Some(Fault::HangAfterAccept(d)), Some(answer)) => {
            tokio::time::sleep(d).await;
            answer
        }
        (Some(Fault::UnavailableAfterAccept), Some(_)) => unknown(),
        (Some(Fault::DropAfterAccept), Some(_)) => {
            std::panic::resume_unwind(Box::new("the answer is lost"))
        }
        (_, Some(answer)) => answer,
        (_, None) => unknown(),
    }
}
