//! What the exchanges' REST clients share: the symbol rules an order is checked against
//! before it is sent, what a client learns from its venue and keeps (the clock offset, the
//! rules, the leverage it set), and reading an answer off the wire.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{VenueError, VenueOrder, VenueState};
use crate::model::{ExchangeSettings, OrderKind, OrderRequest, Rejection, VenueKind};

/// How long a venue's clock offset and symbol rules are trusted before they are read again.
const CLOCK_TTL: Duration = Duration::from_secs(600);
const RULES_TTL: Duration = Duration::from_secs(3600);

/// A symbol's trading rules.
#[derive(Debug, Clone, PartialEq)]
pub struct Rules {
    /// Quantity step and bounds of market orders.
    pub market: Lot,
    /// Of limit orders.
    pub limit: Lot,
    /// The price step.
    pub tick: Option<Step>,
    /// The least notional of an order that is not reduce-only.
    pub min_notional: f64,
    /// The base quantity of one unit the venue counts orders in: 1 where it counts in the
    /// base currency, a contract's value where it counts contracts (OKX). Steps and bounds
    /// are in those units.
    pub unit: f64,
}

/// A quantity's step and bounds.
#[derive(Debug, Clone, PartialEq)]
pub struct Lot {
    pub step: Step,
    pub min: f64,
    pub max: f64,
}

/// A step as the venues write it (`"0.001"`): its value and its decimals.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Step {
    pub value: f64,
    pub decimals: usize,
}

impl Step {
    pub fn parse(text: &str) -> Option<Step> {
        let value: f64 = text.parse().ok()?;
        let decimals = text
            .split_once('.')
            .map_or(0, |(_, frac)| frac.trim_end_matches('0').len());
        (value > 0.0).then_some(Step { value, decimals })
    }

    /// `x` floored to a whole number of steps, and written with the step's decimals.
    pub fn floor(self, x: f64) -> (f64, String) {
        // A hair over the float's error, so that 0.3 / 0.1 is 3 steps and not 2.
        let steps = (x / self.value + 1e-9).floor();
        let value = steps * self.value;
        (value, format!("{value:.*}", self.decimals))
    }
}

impl Rules {
    /// `order`'s quantity floored to the step (never rounded up, so that a reduce-only order
    /// never asks for more than is held), as the venue wants it written; or why `venue`
    /// would refuse it: below the least quantity, or an opening order below the least
    /// notional at `price`.
    pub fn quantity(
        &self,
        venue: &str,
        symbol: &str,
        order: &OrderRequest,
        price: Option<f64>,
    ) -> Result<String, VenueError> {
        let lot = match order.kind {
            OrderKind::Market => &self.market,
            _ => &self.limit,
        };
        let (quantity, text) = lot.step.floor((order.quantity / self.unit).min(lot.max));
        if quantity < lot.min || quantity <= 0.0 {
            return Err(VenueError::Refused(Rejection::new(
                "min_quantity",
                format!(
                    "{} {symbol}, floored to the step of {}, is below {venue}'s minimum of {}",
                    order.quantity,
                    lot.step.value * self.unit,
                    lot.min * self.unit
                ),
            )));
        }
        let at = match order.kind {
            OrderKind::Limit { price } => Some(price),
            _ => price,
        };
        if let Some(p) = at
            && !order.reduce_only
            && quantity * self.unit * p < self.min_notional
        {
            return Err(VenueError::Refused(Rejection::new(
                "min_notional",
                format!(
                    "{text} {symbol} at {p} is {:.2} of notional, below {venue}'s minimum of {}",
                    quantity * self.unit * p,
                    self.min_notional
                ),
            )));
        }
        Ok(text)
    }
}

/// What a client learns from its venue and keeps.
#[derive(Default)]
pub struct Learned {
    /// The venue's clock ahead of ours, in ms, and when that was learned.
    clock: tokio::sync::Mutex<Option<(i64, Instant)>>,
    rules: tokio::sync::Mutex<Option<(Instant, HashMap<String, Rules>)>>,
    /// The leverage last set per symbol, so that it is set only when it changes.
    leverage: tokio::sync::Mutex<HashMap<String, u32>>,
}

impl Learned {
    /// How far `venue`'s clock is ahead of ours: learned from `server_time` (the venue's time
    /// in ms) when it is old or `fresh`, timed by the middle of the call.
    pub async fn offset<F, Fut>(
        &self,
        venue: &str,
        fresh: bool,
        server_time: F,
    ) -> Result<i64, VenueError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<i64, VenueError>>,
    {
        let mut clock = self.clock.lock().await;
        if let Some((offset, learned)) = *clock
            && !fresh
            && learned.elapsed() < CLOCK_TTL
        {
            return Ok(offset);
        }
        let before = crate::domain::now_ms();
        let server = server_time().await?;
        let after = crate::domain::now_ms();
        let offset = server - (before + after) / 2;
        if offset.abs() > 1000 {
            tracing::warn!(
                offset_ms = offset,
                "this machine's clock is {} ms {} {venue}'s: requests are timed by {venue}'s",
                offset.abs(),
                if offset > 0 { "behind" } else { "ahead of" }
            );
        }
        *clock = Some((offset, Instant::now()));
        Ok(offset)
    }

    /// The rules of `symbol`, read with `fetch` (every symbol's) at most once an hour.
    pub async fn rules<F, Fut>(
        &self,
        venue: &str,
        symbol: &str,
        fetch: F,
    ) -> Result<Rules, VenueError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<HashMap<String, Rules>, VenueError>>,
    {
        let mut cache = self.rules.lock().await;
        if cache
            .as_ref()
            .is_none_or(|(at, _)| at.elapsed() > RULES_TTL)
        {
            *cache = Some((Instant::now(), fetch().await?));
        }
        let (_, rules) = cache.as_ref().expect("filled above");
        rules.get(symbol).cloned().ok_or_else(|| {
            VenueError::Refused(Rejection::new(
                "unknown_symbol",
                format!("{venue} does not trade {symbol}"),
            ))
        })
    }

    /// Sets `symbol`'s leverage with `set` when it is not `wanted` already.
    pub async fn leverage<F, Fut>(
        &self,
        symbol: &str,
        wanted: u32,
        set: F,
    ) -> Result<(), VenueError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<(), VenueError>>,
    {
        let mut known = self.leverage.lock().await;
        if known.get(symbol) == Some(&wanted) {
            return Ok(());
        }
        set().await?;
        known.insert(symbol.to_owned(), wanted);
        Ok(())
    }
}

/// What a venue's client knows of its markets, from which every order is readied the same
/// way before it is sent.
#[async_trait::async_trait]
pub trait Market: Send + Sync {
    /// The venue's name, as errors say it.
    fn venue(&self) -> &'static str;

    /// The venue's name of the market a pair trades on (`BTCUSDT`, `BTC-USDT-SWAP`).
    fn market(&self, pair: &str) -> Result<String, String>;

    /// [`Market::market`], or the refusal of an order on a pair the venue has no name for.
    fn market_of(&self, pair: &str) -> Result<String, VenueError> {
        self.market(pair)
            .map_err(|e| VenueError::Refused(Rejection::new("unknown_symbol", e)))
    }

    /// The market's rules, as last read.
    async fn rules(&self, market: &str) -> Result<Rules, VenueError>;

    /// Sets the market's leverage, when it is not set already.
    async fn set_leverage(&self, market: &str, leverage: f64) -> Result<(), VenueError>;

    /// `order`'s market and quantity as the venue wants them, with the market's leverage set
    /// to the order's when it opens; or why the venue would refuse it.
    async fn ready(
        &self,
        order: &OrderRequest,
        price: Option<f64>,
    ) -> Result<(String, String), VenueError> {
        let market = self.market_of(&order.symbol)?;
        let rules = self.rules(&market).await?;
        let quantity = rules.quantity(self.venue(), &market, order, price)?;
        if !order.reduce_only {
            self.set_leverage(&market, order.leverage).await?;
        }
        Ok((market, quantity))
    }
}

/// A client's connection to its venue: the HTTP client, the account's settings, where the
/// venue is, and what was learned from it.
pub struct Conn {
    http: reqwest::Client,
    pub settings: ExchangeSettings,
    base: String,
    pub learned: Learned,
}

impl Conn {
    pub fn new(venue: VenueKind, http: reqwest::Client, settings: ExchangeSettings) -> Self {
        Self {
            http,
            base: base_url(venue, &settings),
            settings,
            learned: Learned::default(),
        }
    }

    /// A request to `path` (with its query) on the venue, bounded by the account's timeout.
    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .timeout(self.settings.timeout())
    }

    /// A POST of a JSON `body` to `path`.
    pub fn post_json(&self, path: &str, body: String) -> reqwest::RequestBuilder {
        self.request(reqwest::Method::POST, path)
            .header("content-type", "application/json")
            .body(body)
    }
}

/// Where a client reaches `venue`: the account's `base_url`, or else the venue's usual
/// address (live or testnet), without a trailing `/`.
fn base_url(venue: VenueKind, settings: &ExchangeSettings) -> String {
    let base = settings.base_url.clone().unwrap_or_else(|| {
        super::usual_base_url(venue, settings.live)
            .unwrap_or_default()
            .to_owned()
    });
    base.trim_end_matches('/').to_owned()
}

/// An order the venue took without saying what became of it: open until it is asked.
pub fn acknowledged(venue_order_id: String) -> VenueOrder {
    VenueOrder {
        venue_order_id,
        state: VenueState::Open,
        filled: 0.0,
        average_price: 0.0,
        fee: 0.0,
    }
}

/// A leverage as the venues take it: a whole number, at least 1.
pub fn whole_leverage(leverage: f64) -> u32 {
    leverage.round().max(1.0) as u32
}

/// A JSON number, or a number written as a string as the venues write their decimals.
pub fn number(v: &Value) -> Option<f64> {
    match v {
        Value::String(s) => s.parse().ok(),
        other => other.as_f64(),
    }
}

/// An answer read off the wire.
pub struct Reply {
    pub status: reqwest::StatusCode,
    /// The `Retry-After` header, as sent.
    pub retry_after: Option<String>,
    /// The body as JSON; `null` when it is not.
    pub json: Value,
    pub body: bytes::Bytes,
}

impl Reply {
    /// The start of the body, for an error that quotes it.
    pub fn snippet(&self) -> String {
        String::from_utf8_lossy(&self.body[..self.body.len().min(200)]).into_owned()
    }
}

/// Reads an answer from `venue`. Not connected: the request never left, and nothing was
/// placed. Any other failure (a timeout, a connection dropped, a body cut off) leaves the
/// outcome unknown.
pub async fn read(
    venue: &str,
    sent: reqwest::Result<reqwest::Response>,
) -> Result<Reply, VenueError> {
    // Without the URL: its query may hold a signature.
    let why = |e: reqwest::Error| crate::domain::error_chain(&e.without_url());
    let response = match sent {
        Ok(r) => r,
        Err(e) if e.is_connect() => {
            return Err(VenueError::Unavailable(
                Rejection::new(
                    "venue_unreachable",
                    format!("{venue} could not be reached: {}", why(e)),
                ),
                None,
            ));
        }
        Err(e) => {
            return Err(VenueError::Unknown(format!(
                "no answer from {venue}: {}",
                why(e)
            )));
        }
    };
    let status = response.status();
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = response
        .bytes()
        .await
        .map_err(|e| VenueError::Unknown(format!("{venue}'s answer was cut off: {}", why(e))))?;
    Ok(Reply {
        status,
        retry_after,
        json: serde_json::from_slice(&body).unwrap_or(Value::Null),
        body,
    })
}

/// A venue's refusal of an order written for the other position mode, with what to do.
pub fn position_mode_hint(detail: String) -> String {
    format!(
        "{detail} (the venue account's position mode is not the account's position_mode: set \
         \"position_mode\": \"hedge\" or \"one_way\" on the account to match the venue)"
    )
}

/// Refused for asking too often: nothing was placed. The wait the venue asks for (its
/// `Retry-After`, in seconds) is said, and kept.
pub fn rate_limited(detail: String, retry_after: Option<&str>) -> VenueError {
    let wait_s = retry_after.and_then(|s| s.trim().parse::<u64>().ok());
    let said = wait_s.map_or(String::new(), |s| format!("; retry after {s} s"));
    VenueError::Unavailable(
        Rejection::new("rate_limited", format!("{detail}{said}")),
        wait_s.map(|s| s * 1000),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Side;

    #[test]
    fn quantities_are_floored_to_the_step_and_never_rounded_up() {
        let step = Step::parse("0.001").unwrap();
        assert_eq!(step.floor(0.0129), (0.012, "0.012".to_owned()));
        assert_eq!(step.floor(0.3).1, "0.300");
        let whole = Step::parse("1").unwrap();
        assert_eq!(whole.floor(7.99).1, "7");
        assert_eq!(Step::parse("0.10000000").unwrap().decimals, 1);
    }

    #[test]
    fn an_order_below_the_minimums_is_refused_and_a_reduce_only_one_skips_the_notional() {
        let lot = Lot {
            step: Step::parse("0.001").unwrap(),
            min: 0.001,
            max: 100.0,
        };
        let rules = Rules {
            market: lot.clone(),
            limit: lot,
            tick: None,
            min_notional: 100.0,
            unit: 1.0,
        };
        let mut order = OrderRequest {
            client_order_id: "c".into(),
            symbol: "BTC/USDT:USDT".into(),
            side: Side::Buy,
            quantity: 0.0015,
            kind: OrderKind::Market,
            reduce_only: false,
            leverage: 1.0,
        };
        let refused = |r: Result<String, VenueError>| match r {
            Err(VenueError::Refused(r)) => r.code,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            refused(rules.quantity("X", "BTCUSDT", &order, Some(50_000.0))),
            "min_notional"
        );
        order.reduce_only = true;
        assert_eq!(
            rules
                .quantity("X", "BTCUSDT", &order, Some(50_000.0))
                .unwrap(),
            "0.001"
        );
        order.quantity = 0.0009;
        assert_eq!(
            refused(rules.quantity("X", "BTCUSDT", &order, None)),
            "min_quantity"
        );
    }
}
