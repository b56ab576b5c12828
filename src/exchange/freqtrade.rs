//! A Freqtrade bot as an order destination, through its REST API (`api_server`).
//!
//! Freqtrade takes no inbound webhooks; its REST API places trades on request:
//!
//! - an order that opens or adds is `POST /api/v1/forceenter {pair, side, ordertype,
//!   stakeamount, entry_tag, leverage}`, with the intent's client order id as `entry_tag`.
//!   Freqtrade writes the tag on the entry order, so the order is looked up by it in
//!   `/api/v1/status` (open trades) and `/api/v1/trades` (closed ones);
//! - an order that reduces is `POST /api/v1/forceexit {tradeid, ordertype, amount}` on the
//!   bot's open trade of that pair and side, found in `/api/v1/status`. Freqtrade tags exit
//!   orders with their reason only (`force_exit`), so an exit is looked up as the bot's
//!   force-exit order on that pair placed since the intent was sent.
//!
//! Requests carry a bearer token from `/api/v1/token/login` (HTTP Basic, the account's key
//! and secret being the bot's API username and password), renewed by `/api/v1/token/refresh`
//! and, when that fails too, by logging in again.
//!
//! An account that is not `live` only sends orders to a bot in dry-run: a bot that trades
//! real money refuses them (`live_bot`) until the account says `live: true`.

use serde_json::{Value, json};

use super::rest::{Conn, Reply, number, rate_limited, read};
use super::{AccountCheck, Held, Venue, VenueError, VenueOrder, VenueState, netted};
use crate::domain::Millis;
use crate::model::{ExchangeSettings, OrderKind, OrderRequest, Rejection, Side, VenueKind};

const VENUE: &str = "Freqtrade";

/// How far back an exit's lookup reaches before the intent's stamp, for the bot's clock.
const CLOCK_SLACK_MS: i64 = 2_000;

/// The bearer tokens of a login.
#[derive(Default)]
struct Tokens {
    access: Option<String>,
    refresh: Option<String>,
}

/// One account's client of a Freqtrade bot.
pub struct Freqtrade {
    conn: Conn,
    tokens: tokio::sync::Mutex<Tokens>,
}

/// A request to the bot.
enum Call<'a> {
    Get(&'a str),
    Post(&'a str, Value),
}

impl Freqtrade {
    pub fn new(http: reqwest::Client, settings: ExchangeSettings) -> Self {
        Self {
            conn: Conn::new(VenueKind::Freqtrade, http, settings),
            tokens: tokio::sync::Mutex::new(Tokens::default()),
        }
    }

    /// Logs in with the bot's API username and password.
    async fn login(&self) -> Result<Tokens, VenueError> {
        let request = self
            .conn
            .request(reqwest::Method::POST, "/api/v1/token/login")
            .basic_auth(
                &self.conn.settings.api_key,
                Some(&self.conn.settings.api_secret),
            );
        let reply = read(VENUE, request.send().await).await?;
        if reply.status == reqwest::StatusCode::UNAUTHORIZED {
            return Err(VenueError::Refused(Rejection::new(
                "bad_api_key",
                "Freqtrade refused the API username or password (api_key, api_secret)",
            )));
        }
        let tokens = Tokens {
            access: reply.json["access_token"].as_str().map(str::to_owned),
            refresh: reply.json["refresh_token"].as_str().map(str::to_owned),
        };
        if !reply.status.is_success() || tokens.access.is_none() {
            return Err(unexpected(&reply));
        }
        Ok(tokens)
    }

    /// A new access token from the refresh token; `None` when the bot no longer takes it.
    async fn refreshed(&self, refresh: &str) -> Result<Option<String>, VenueError> {
        let request = self
            .conn
            .request(reqwest::Method::POST, "/api/v1/token/refresh")
            .bearer_auth(refresh);
        let reply = read(VENUE, request.send().await).await?;
        Ok(reply
            .status
            .is_success()
            .then(|| reply.json["access_token"].as_str().map(str::to_owned))
            .flatten())
    }

    /// An access token: the one held, or a new one when `stale` is the one that was refused.
    async fn token(&self, stale: Option<&str>) -> Result<String, VenueError> {
        let mut tokens = self.tokens.lock().await;
        if let Some(access) = &tokens.access
            && stale != Some(access.as_str())
        {
            return Ok(access.clone());
        }
        if stale.is_some()
            && let Some(refresh) = tokens.refresh.clone()
            && let Some(access) = self.refreshed(&refresh).await?
        {
            tokens.access = Some(access.clone());
            return Ok(access);
        }
        *tokens = self.login().await?;
        Ok(tokens.access.clone().unwrap_or_default())
    }

    /// Sends `call` with a bearer token, renewed once when the bot refuses it. A refused
    /// request did nothing, so it may be sent again.
    async fn send(&self, call: &Call<'_>) -> Result<Reply, VenueError> {
        let mut token = self.token(None).await?;
        for renewed in [false, true] {
            let request = match call {
                Call::Get(path) => self.conn.request(reqwest::Method::GET, path),
                Call::Post(path, body) => self.conn.post_json(path, body.to_string()),
            };
            let reply = read(VENUE, request.bearer_auth(&token).send().await).await?;
            if reply.status != reqwest::StatusCode::UNAUTHORIZED || renewed {
                return Ok(reply);
            }
            token = self.token(Some(&token)).await?;
        }
        unreachable!("the loop returns on its second pass")
    }

    /// The bot's JSON answer to `call`, or why there is none.
    async fn call(&self, call: Call<'_>) -> Result<Value, VenueError> {
        let reply = self.send(&call).await?;
        if reply.status.is_success() {
            return Ok(reply.json);
        }
        Err(refusal(&reply))
    }

    /// The bot's settings, checked: it takes forced entries, it is running, and it trades
    /// real money only if the account is live.
    async fn ready(&self) -> Result<Value, VenueError> {
        let config = self.call(Call::Get("/api/v1/show_config")).await?;
        if config["force_entry_enable"].as_bool() != Some(true) {
            return Err(VenueError::Refused(Rejection::new(
                "force_entry_disabled",
                "the bot has force_entry_enable off, so it refuses orders from its API: set \
                 \"force_entry_enable\": true in its config and restart it",
            )));
        }
        if config["dry_run"].as_bool() == Some(false) && !self.conn.settings.live {
            return Err(VenueError::Refused(Rejection::new(
                "live_bot",
                "the bot trades real money (dry_run is off) but this account is not live: \
                 set \"live\": true on the account to send it orders",
            )));
        }
        let state = config["state"].as_str().unwrap_or_default();
        if !state.eq_ignore_ascii_case("running") {
            return Err(VenueError::Unavailable(
                Rejection::new(
                    "bot_not_running",
                    format!("the bot is {state:?}, not running: start it (/api/v1/start)"),
                ),
                None,
            ));
        }
        Ok(config)
    }

    /// The bot's trades: the open ones, then the last closed ones.
    async fn trades(&self) -> Result<Vec<Value>, VenueError> {
        let open = self.call(Call::Get("/api/v1/status")).await?;
        let closed = self
            .call(Call::Get("/api/v1/trades?limit=100&order_by_id=false"))
            .await?;
        let mut all: Vec<Value> = open.as_array().cloned().unwrap_or_default();
        all.extend(closed["trades"].as_array().cloned().unwrap_or_default());
        Ok(all)
    }

    /// The bot's open trade that `order` reduces: on its pair, on the side it closes.
    async fn position(&self, order: &OrderRequest) -> Result<Value, VenueError> {
        let short = order.side == Side::Buy;
        let open = self.call(Call::Get("/api/v1/status")).await?;
        open.as_array()
            .into_iter()
            .flatten()
            .find(|t| t["pair"] == order.symbol.as_str() && t["is_short"].as_bool() == Some(short))
            .cloned()
            .ok_or_else(|| {
                VenueError::Refused(Rejection::new(
                    "no_position",
                    format!(
                        "the bot holds no open {} trade on {}",
                        if short { "short" } else { "long" },
                        order.symbol
                    ),
                ))
            })
    }

    async fn enter(&self, order: &OrderRequest, price: Option<f64>) -> Result<Value, VenueError> {
        let Some(price) = price else {
            return Err(VenueError::Refused(Rejection::new(
                "no_price",
                "the signal has no price and none has been seen for this symbol, so its \
                 quantity cannot be turned into Freqtrade's stake amount",
            )));
        };
        let mut body = json!({
            "pair": order.symbol,
            "side": match order.side { Side::Buy => "long", Side::Sell => "short" },
            "ordertype": "market",
            "stakeamount": order.quantity * price,
            "entry_tag": order.client_order_id,
        });
        if let OrderKind::Limit { price } = order.kind {
            body["ordertype"] = json!("limit");
            body["price"] = json!(price);
            body["stakeamount"] = json!(order.quantity * price);
        }
        if order.leverage > 1.0 {
            body["leverage"] = json!(order.leverage);
        }
        let trade = self.call(Call::Post("/api/v1/forceenter", body)).await?;
        if trade.get("trade_id").is_none() {
            let said = trade["status"].as_str().unwrap_or("no trade in its answer");
            return Err(VenueError::Refused(Rejection::new(
                "entry_failed",
                format!("Freqtrade did not enter: {said} (its log says why)"),
            )));
        }
        Ok(trade)
    }

    async fn exit(&self, order: &OrderRequest) -> Result<Option<VenueOrder>, VenueError> {
        let trade = self.position(order).await?;
        let held = number(&trade["amount"]).unwrap_or(0.0);
        let id = trade["trade_id"].as_i64().unwrap_or_default();
        let mut body = json!({"tradeid": id.to_string(), "ordertype": "market"});
        if order.quantity < held * (1.0 - 1e-9) {
            body["amount"] = json!(order.quantity);
        }
        let sent_at = crate::domain::now_ms();
        self.call(Call::Post("/api/v1/forceexit", body)).await?;
        let trade = self.call(Call::Get(&format!("/api/v1/trade/{id}"))).await?;
        Ok(exit_order(&trade, sent_at))
    }
}

#[async_trait::async_trait]
impl Venue for Freqtrade {
    async fn prepare(&self, order: &OrderRequest, price: Option<f64>) -> Result<(), VenueError> {
        if matches!(order.kind, OrderKind::Stop { .. }) {
            return Err(VenueError::Refused(Rejection::new(
                "unsupported_order",
                "stop orders are not placed through Freqtrade's API",
            )));
        }
        self.ready().await?;
        if order.reduce_only {
            self.position(order).await?;
        } else if price.is_none() && !matches!(order.kind, OrderKind::Limit { .. }) {
            return Err(VenueError::Refused(Rejection::new(
                "no_price",
                "the signal has no price and none has been seen for this symbol",
            )));
        }
        Ok(())
    }

    async fn place(
        &self,
        order: &OrderRequest,
        price: Option<f64>,
    ) -> Result<VenueOrder, VenueError> {
        if order.reduce_only {
            return Ok(self.exit(order).await?.unwrap_or_else(|| VenueOrder {
                venue_order_id: "force_exit".into(),
                state: VenueState::Open,
                filled: 0.0,
                average_price: 0.0,
                fee: 0.0,
            }));
        }
        let trade = self.enter(order, price).await?;
        entry_order(&trade, &order.client_order_id).ok_or_else(|| {
            VenueError::Unknown(format!(
                "Freqtrade entered trade {} without an order tagged {}",
                trade["trade_id"], order.client_order_id
            ))
        })
    }

    async fn lookup(
        &self,
        order: &OrderRequest,
        sent_at: Millis,
    ) -> Result<Option<VenueOrder>, VenueError> {
        let trades = self.trades().await?;
        Ok(if order.reduce_only {
            let short = order.side == Side::Buy;
            trades
                .iter()
                .filter(|t| {
                    t["pair"] == order.symbol.as_str() && t["is_short"].as_bool() == Some(short)
                })
                .find_map(|t| exit_order(t, sent_at))
        } else {
            trades
                .iter()
                .find_map(|t| entry_order(t, &order.client_order_id))
        })
    }

    fn acceptance_window_ms(&self) -> u64 {
        // The bot answers a request while it handles it: no receive window of its own.
        0
    }

    async fn check(&self) -> Result<AccountCheck, VenueError> {
        let config = self.ready().await?;
        let balance = self.call(Call::Get("/api/v1/balance")).await?;
        let stake = config["stake_currency"].as_str().unwrap_or_default();
        let free = balance["currencies"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["currency"] == stake)
            .and_then(|c| number(&c["free"]));
        Ok(AccountCheck {
            can_trade: true,
            balance: number(&balance["total"]).unwrap_or(0.0),
            available: free.unwrap_or(0.0),
            currency: stake.to_owned(),
            clock_offset_ms: 0,
            raw: json!({
                "bot_name": config["bot_name"],
                "dry_run": config["dry_run"],
                "state": config["state"],
                "trading_mode": config["trading_mode"],
                "stake_currency": config["stake_currency"],
                "max_open_trades": config["max_open_trades"],
                "version": config["version"],
            }),
        })
    }

    async fn position(&self, pair: &str) -> Result<Option<Held>, VenueError> {
        let open = self.call(Call::Get("/api/v1/status")).await?;
        Ok(netted(
            open.as_array()
                .into_iter()
                .flatten()
                .filter(|t| t["pair"] == pair)
                .map(|t| {
                    let sign = if t["is_short"].as_bool() == Some(true) {
                        -1.0
                    } else {
                        1.0
                    };
                    (
                        sign * number(&t["amount"]).unwrap_or(0.0),
                        number(&t["open_rate"]).unwrap_or(0.0),
                    )
                }),
        ))
    }
}

/// Whether `order` of `trade` opened or added to it: a buy in a long trade, a sell in a
/// short one.
fn is_entry(trade: &Value, order: &Value) -> bool {
    let entry_side = if trade["is_short"].as_bool() == Some(true) {
        "sell"
    } else {
        "buy"
    };
    order["ft_order_side"] == entry_side
}

/// The entry order tagged `tag` in one of the bot's trades.
fn entry_order(trade: &Value, tag: &str) -> Option<VenueOrder> {
    let order = trade["orders"]
        .as_array()?
        .iter()
        .find(|o| is_entry(trade, o) && o["ft_order_tag"] == tag)?;
    Some(venue_order(trade, order, "fee_open"))
}

/// The bot's latest force-exit order in `trade` placed since `sent_at`, if any.
fn exit_order(trade: &Value, sent_at: Millis) -> Option<VenueOrder> {
    let order = trade["orders"].as_array()?.iter().rev().find(|o| {
        !is_entry(trade, o)
            && o["ft_order_tag"] == "force_exit"
            && o["order_timestamp"]
                .as_i64()
                .is_some_and(|t| t >= sent_at - CLOCK_SLACK_MS)
    })?;
    Some(venue_order(trade, order, "fee_close"))
}

/// One of the bot's orders as the venue's answer; `fee_rate` names the trade's fee rate
/// for the order's side.
fn venue_order(trade: &Value, order: &Value, fee_rate: &str) -> VenueOrder {
    let filled = number(&order["filled"]).unwrap_or(0.0);
    let average = number(&order["safe_price"]).unwrap_or(0.0);
    let state = match (order["is_open"].as_bool(), filled > 0.0) {
        (Some(true), _) => VenueState::Open,
        (_, true) => VenueState::Done,
        (_, false) => VenueState::Cancelled,
    };
    let fee = number(&trade[fee_rate]).unwrap_or(0.0) * filled * average;
    VenueOrder {
        venue_order_id: format!(
            "trade {} order {}",
            trade["trade_id"],
            order["order_id"].as_str().unwrap_or_default()
        ),
        state,
        filled,
        average_price: average,
        fee,
    }
}

/// Why the bot did not do what it was asked. Freqtrade answers a refusal with HTTP 502 and
/// `{"error": "Error querying /api/v1/…: <reason>"}`; any other 5xx may come from a proxy
/// in front of it while the request went through.
fn refusal(reply: &Reply) -> VenueError {
    let status = reply.status.as_u16();
    let error = reply.json["error"]
        .as_str()
        .or(reply.json["detail"].as_str());
    if status == 429 {
        return rate_limited("Freqtrade: HTTP 429".into(), reply.retry_after.as_deref());
    }
    if status == 401 {
        return VenueError::Refused(Rejection::new(
            "bad_api_key",
            "Freqtrade refused the API username or password (api_key, api_secret)",
        ));
    }
    let Some(error) = error.filter(|_| status == 502 || (400..500).contains(&status)) else {
        if status >= 500 {
            return VenueError::Unknown(format!(
                "Freqtrade answered HTTP {status}: {}",
                reply.snippet()
            ));
        }
        return unexpected(reply);
    };
    let reason = error.rsplit_once(": ").map_or(error, |(_, r)| r);
    let code = match reason {
        r if r.starts_with("Force_entry not enabled") => "force_entry_disabled",
        r if r.starts_with("trader is not running") => {
            return VenueError::Unavailable(
                Rejection::new("bot_not_running", format!("Freqtrade said: {error}")),
                None,
            );
        }
        r if r.contains("already open") => "position_open",
        r if r.starts_with("Maximum number of trades") => "max_open_trades",
        r if r.starts_with("Can't go short") => "short_unsupported",
        r if r.starts_with("Symbol does not exist") => "unknown_symbol",
        _ => "refused",
    };
    VenueError::Refused(Rejection::new(code, format!("Freqtrade said: {error}")))
}

/// An answer of a shape the bot does not give: nothing is known to have been placed.
fn unexpected(reply: &Reply) -> VenueError {
    VenueError::Refused(Rejection::new(
        "refused",
        format!(
            "Freqtrade answered HTTP {}: {}",
            reply.status.as_u16(),
            reply.snippet()
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_entry_order_is_found_by_its_tag_and_an_exit_by_its_time() {
        let trade = json!({
            "trade_id": 4, "is_short": false, "fee_open": 0.001, "fee_close": 0.001,
            "orders": [
                {"ft_order_side": "buy", "ft_order_tag": "dlv_1-0", "order_id": "a",
                 "filled": 0.002, "safe_price": 50000.0, "is_open": false, "order_timestamp": 1000},
                {"ft_order_side": "sell", "ft_order_tag": "force_exit", "order_id": "b",
                 "filled": 0.002, "safe_price": 51000.0, "is_open": false, "order_timestamp": 9000},
            ]
        });
        let entry = entry_order(&trade, "dlv_1-0").unwrap();
        assert_eq!((entry.state, entry.filled), (VenueState::Done, 0.002));
        assert!((entry.fee - 0.1).abs() < 1e-9);
        assert!(entry_order(&trade, "dlv_2-0").is_none());
        assert_eq!(exit_order(&trade, 10_000).unwrap().average_price, 51000.0);
        // An exit made well before the intent was sent is not its order.
        assert!(exit_order(&trade, 20_000).is_none());
    }
}
