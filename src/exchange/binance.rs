//! Binance USDⓈ-M futures over its REST API.
//!
//! Every private call is signed as Binance documents it: the parameters, a `recvWindow` and a
//! `timestamp` in ms form the query, and `signature = hex(HMAC-SHA256(secret, query + body))`
//! is added to it, with the key in `X-MBX-APIKEY`. The timestamp is the hub's clock plus the
//! offset learned from `/fapi/v1/time`, so a skewed clock is corrected once instead of
//! failing every order with `-1021`.
//!
//! An order is placed with `newClientOrderId` set to its intent's client order id and looked
//! up by `origClientOrderId`. Before it is sent, its quantity is floored to the symbol's step
//! (never rounded up) and checked against the minimum quantity and notional, from
//! `/fapi/v1/exchangeInfo`.
//!
//! ```
//! use tradehook::exchange::binance::{signature, symbol};
//! // Binance's published example (USDⓈ-M futures, "SIGNED Endpoint Examples").
//! assert_eq!(
//!     signature(
//!         "2b5eb11e18796d12d88f13dc27dbbd02c2cc51ff7059765ed9821957d82bb4d9",
//!         "symbol=BTCUSDT&side=BUY&type=LIMIT&quantity=1&price=9000&timeInForce=GTC&recvWindow=5000&timestamp=1591702613943",
//!     ),
//!     "3c661234138461fcc7a7d8746c6558c9842d4e10870d2ecbedf7777cad694af9"
//! );
//! assert_eq!(symbol("BTC/USDT:USDT").unwrap(), "BTCUSDT");
//! ```

use std::collections::HashMap;

use serde_json::Value;

use super::rest::{Conn, Lot, Market, Rules, Step, number, rate_limited, read, whole_leverage};
use super::{AccountCheck, Held, Venue, VenueError, VenueOrder, VenueState, netted, trigger_of};
use crate::model::{
    ExchangeSettings, OrderKind, OrderRequest, PositionMode, PositionSide, Rejection, Side,
    VenueKind, position_side,
};

const VENUE: &str = "Binance";

/// Binance USDⓈ-M futures, real money.
pub const LIVE: &str = "https://fapi.binance.com";
/// Its testnet, where every account starts.
pub const TESTNET: &str = "https://testnet.binancefuture.com";

/// `hex(HMAC-SHA256(secret, payload))`, where `payload` is the query string followed by the
/// request body, as Binance signs a request.
pub fn signature(secret: &str, payload: &str) -> String {
    crate::security::sign::hmac_hex(secret.as_bytes(), payload.as_bytes())
}

/// Binance's symbol for a pair in any form the hub reads: `BTC/USDT:USDT` → `BTCUSDT`.
pub fn symbol(pair: &str) -> Result<String, String> {
    let p = crate::trading::parse_pair(pair)?;
    Ok(format!("{}{}", p.base, p.quote))
}

/// One account's client of Binance USDⓈ-M futures.
pub struct Binance {
    conn: Conn,
}

impl Binance {
    pub fn new(http: reqwest::Client, settings: ExchangeSettings) -> Self {
        Self {
            conn: Conn::new(VenueKind::BinanceUsdm, http, settings),
        }
    }

    /// An unsigned GET of public data.
    async fn public(&self, path: &str) -> Result<Value, VenueError> {
        let request = self.conn.request(reqwest::Method::GET, path);
        answer(request.send().await).await
    }

    /// How far Binance's clock is ahead of ours, learned again when it is old or `fresh`.
    async fn offset(&self, fresh: bool) -> Result<i64, VenueError> {
        self.conn
            .learned
            .offset(VENUE, fresh, || async {
                let time = self.public("/fapi/v1/time").await?;
                time["serverTime"].as_i64().ok_or_else(|| {
                    VenueError::Unavailable(
                        Rejection::new(
                            "venue_error",
                            format!("Binance's /fapi/v1/time answered {time} without a serverTime"),
                        ),
                        None,
                    )
                })
            })
            .await
    }

    /// A signed call. A `-1021` (timestamp outside the receive window) means the request was
    /// refused, so the clock is learned again and the call made once more; if Binance still
    /// refuses it, the error says how far apart the clocks are.
    async fn signed(
        &self,
        method: reqwest::Method,
        path: &str,
        params: &[(&str, String)],
    ) -> Result<Value, VenueError> {
        let mut fresh = false;
        loop {
            let offset = self.offset(fresh).await?;
            let timestamp = crate::domain::now_ms() + offset;
            let query = {
                let mut query = form_urlencoded::Serializer::new(String::new());
                for (k, v) in params {
                    query.append_pair(k, v);
                }
                query.append_pair("recvWindow", &self.conn.settings.recv_window_ms.to_string());
                query.append_pair("timestamp", &timestamp.to_string());
                query.finish()
            };
            let sig = signature(&self.conn.settings.api_secret, &query);
            let request = self
                .conn
                .request(method.clone(), &format!("{path}?{query}&signature={sig}"))
                .header("X-MBX-APIKEY", &self.conn.settings.api_key);
            match answer(request.send().await).await {
                Err(VenueError::Refused(r)) if r.code == "clock_skew" && !fresh => {
                    fresh = true;
                }
                Err(VenueError::Refused(r)) if r.code == "clock_skew" => {
                    return Err(VenueError::Refused(Rejection::new(
                        "clock_skew",
                        format!(
                            "{}; the hub corrected its clock by {offset} ms from Binance's \
                             time and was still refused: check this machine's clock (NTP)",
                            r.detail
                        ),
                    )));
                }
                other => return other,
            }
        }
    }
}

impl Binance {
    /// `order` with the commission of its fills, from `/fapi/v1/userTrades`: Binance's order
    /// answer does not carry it. Fees paid in another asset than USDT (BNB) are not
    /// converted; a fill whose trades cannot be read is booked without its fee, with a
    /// warning, rather than left unsettled.
    async fn with_fee(&self, symbol: &str, mut order: VenueOrder) -> VenueOrder {
        if order.filled <= 0.0 {
            return order;
        }
        let params = [
            ("symbol", symbol.to_owned()),
            ("orderId", order.venue_order_id.clone()),
        ];
        match self
            .signed(reqwest::Method::GET, "/fapi/v1/userTrades", &params)
            .await
        {
            Ok(trades) => {
                order.fee = trades
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|t| matches!(t["commissionAsset"].as_str(), Some("USDT" | "USDC")))
                    .filter_map(|t| number(&t["commission"]))
                    .sum();
            }
            Err(e) => tracing::warn!(
                venue_order = %order.venue_order_id,
                error = %e,
                "the commission of a Binance fill could not be read: booked without it"
            ),
        }
        order
    }
}

#[async_trait::async_trait]
impl Market for Binance {
    fn venue(&self) -> &'static str {
        VENUE
    }

    fn market(&self, pair: &str) -> Result<String, String> {
        symbol(pair)
    }

    /// The rules of `symbol`, from `exchangeInfo`.
    async fn rules(&self, symbol: &str) -> Result<Rules, VenueError> {
        self.conn
            .learned
            .rules(VENUE, symbol, || async {
                Ok(parse_rules(&self.public("/fapi/v1/exchangeInfo").await?))
            })
            .await
    }

    async fn set_leverage(&self, symbol: &str, leverage: f64) -> Result<(), VenueError> {
        let wanted = whole_leverage(leverage);
        self.conn
            .learned
            .leverage(symbol, wanted, || async {
                let params = [
                    ("symbol", symbol.to_owned()),
                    ("leverage", wanted.to_string()),
                ];
                self.signed(reqwest::Method::POST, "/fapi/v1/leverage", &params)
                    .await
                    .map(|_| ())
            })
            .await
    }
}

#[async_trait::async_trait]
impl Venue for Binance {
    async fn prepare(&self, order: &OrderRequest, price: Option<f64>) -> Result<(), VenueError> {
        self.ready(order, price).await?;
        self.offset(false).await?;
        Ok(())
    }

    async fn place(
        &self,
        order: &OrderRequest,
        price: Option<f64>,
    ) -> Result<VenueOrder, VenueError> {
        let (symbol, quantity_text) = self.ready(order, price).await?;
        let mut params = vec![
            ("symbol", symbol.clone()),
            (
                "side",
                match order.side {
                    Side::Buy => "BUY",
                    Side::Sell => "SELL",
                }
                .to_owned(),
            ),
        ];
        match order.kind {
            OrderKind::Market => params.push(("type", "MARKET".into())),
            OrderKind::Limit { price } => {
                let tick = self.rules(&symbol).await?.tick.unwrap_or(Step {
                    value: 1e-8,
                    decimals: 8,
                });
                params.push(("type", "LIMIT".into()));
                params.push(("timeInForce", "GTC".into()));
                params.push(("price", tick.floor(price).1));
            }
            OrderKind::Stop { .. } => {
                return Err(VenueError::Refused(Rejection::new(
                    "unsupported_order",
                    "stop orders are not placed on Binance yet",
                )));
            }
        }
        params.push(("quantity", quantity_text));
        match self.conn.settings.position_mode {
            // Binance refuses reduceOnly in hedge mode: the position side says it.
            PositionMode::Hedge => params.push((
                "positionSide",
                match position_side(order.side, order.reduce_only) {
                    PositionSide::Long => "LONG",
                    PositionSide::Short => "SHORT",
                }
                .into(),
            )),
            PositionMode::OneWay if order.reduce_only => {
                params.push(("reduceOnly", "true".into()));
            }
            PositionMode::OneWay => {}
        }
        params.push(("newClientOrderId", order.client_order_id.clone()));
        params.push(("newOrderRespType", "RESULT".into()));
        match self
            .signed(reqwest::Method::POST, "/fapi/v1/order", &params)
            .await
        {
            Ok(answer) => Ok(self.with_fee(&symbol, parse_order(&answer)?).await),
            // Binance has an order by this id already: that one is the answer.
            Err(VenueError::Refused(r)) if r.code == "duplicate_client_order_id" => {
                self.lookup(order, 0).await?.ok_or(VenueError::Refused(r))
            }
            Err(e) => Err(e),
        }
    }

    async fn lookup(
        &self,
        order: &OrderRequest,
        _sent_at: crate::domain::Millis,
    ) -> Result<Option<VenueOrder>, VenueError> {
        let symbol = self.market_of(&order.symbol)?;
        let params = [
            ("symbol", symbol.clone()),
            ("origClientOrderId", order.client_order_id.clone()),
        ];
        match self
            .signed(reqwest::Method::GET, "/fapi/v1/order", &params)
            .await
        {
            Ok(answer) => Ok(Some(self.with_fee(&symbol, parse_order(&answer)?).await)),
            Err(VenueError::Refused(r)) if r.code == "order_not_found" => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn acceptance_window_ms(&self) -> u64 {
        self.conn.settings.recv_window_ms
    }

    async fn check(&self) -> Result<AccountCheck, VenueError> {
        let raw = self
            .signed(reqwest::Method::GET, "/fapi/v2/account", &[])
            .await?;
        let offset = self.offset(false).await?;
        Ok(AccountCheck {
            can_trade: raw["canTrade"].as_bool().unwrap_or(false),
            balance: number(&raw["totalWalletBalance"]).unwrap_or(0.0),
            available: number(&raw["availableBalance"]).unwrap_or(0.0),
            currency: "USDT".into(),
            clock_offset_ms: offset,
            raw,
        })
    }

    async fn position(&self, pair: &str) -> Result<Option<Held>, VenueError> {
        let symbol = self.market_of(pair)?;
        let params = [("symbol", symbol)];
        let list = self
            .signed(reqwest::Method::GET, "/fapi/v2/positionRisk", &params)
            .await?;
        // One entry in one-way mode (BOTH), one per side in hedge mode (a short's amount is
        // negative).
        Ok(netted(list.as_array().into_iter().flatten().map(|p| {
            (
                number(&p["positionAmt"]).unwrap_or(0.0),
                number(&p["entryPrice"]).unwrap_or(0.0),
            )
        })))
    }

    /// Conditional orders on Binance's Algo Service (`/fapi/v1/algoOrder`, where
    /// `STOP_MARKET` and `TAKE_PROFIT_MARKET` live since December 2025), closing the whole
    /// position at the mark price, under the legs' ids as `clientAlgoId`.
    async fn protect(&self, legs: &[OrderRequest]) -> Result<(), VenueError> {
        for leg in legs {
            let Some((trigger, stop)) = trigger_of(leg) else {
                continue;
            };
            let symbol = self.market_of(&leg.symbol)?;
            let tick = self.rules(&symbol).await?.tick;
            let mut params = vec![
                ("algoType", "CONDITIONAL".to_owned()),
                ("symbol", symbol),
                (
                    "side",
                    match leg.side {
                        Side::Buy => "BUY",
                        Side::Sell => "SELL",
                    }
                    .to_owned(),
                ),
                (
                    "type",
                    if stop {
                        "STOP_MARKET"
                    } else {
                        "TAKE_PROFIT_MARKET"
                    }
                    .to_owned(),
                ),
                (
                    "triggerPrice",
                    tick.map_or(trigger.to_string(), |t| t.floor(trigger).1),
                ),
                ("workingType", "MARK_PRICE".to_owned()),
                ("closePosition", "true".to_owned()),
                ("clientAlgoId", leg.client_order_id.clone()),
            ];
            if self.conn.settings.position_mode == PositionMode::Hedge {
                let side = match position_side(leg.side, true) {
                    PositionSide::Long => "LONG",
                    PositionSide::Short => "SHORT",
                };
                params.push(("positionSide", side.to_owned()));
            }
            match self
                .signed(reqwest::Method::POST, "/fapi/v1/algoOrder", &params)
                .await
            {
                Err(VenueError::Refused(r)) if r.code == "duplicate_client_order_id" => {}
                other => {
                    other?;
                }
            }
        }
        Ok(())
    }

    async fn unprotect(&self, legs: &[OrderRequest]) -> Result<(), VenueError> {
        for leg in legs {
            let symbol = self.market_of(&leg.symbol)?;
            let params = [
                ("symbol", symbol),
                ("clientAlgoId", leg.client_order_id.clone()),
            ];
            match self
                .signed(reqwest::Method::DELETE, "/fapi/v1/algoOrder", &params)
                .await
            {
                Err(VenueError::Refused(r)) if r.code == "order_not_found" => {}
                other => {
                    other?;
                }
            }
        }
        Ok(())
    }
}

/// The symbol rules of an `exchangeInfo` answer, by symbol.
fn parse_rules(info: &Value) -> HashMap<String, Rules> {
    let mut out = HashMap::new();
    for s in info["symbols"].as_array().into_iter().flatten() {
        let Some(name) = s["symbol"].as_str() else {
            continue;
        };
        if s["status"].as_str().is_some_and(|st| st != "TRADING") {
            continue;
        }
        let filter = |kind: &str| {
            s["filters"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|f| f["filterType"] == kind)
        };
        let lot = |f: &Value| -> Option<Lot> {
            Some(Lot {
                step: Step::parse(f["stepSize"].as_str()?)?,
                min: number(&f["minQty"]).unwrap_or(0.0),
                max: number(&f["maxQty"]).unwrap_or(f64::MAX),
            })
        };
        let Some(limit) = filter("LOT_SIZE").and_then(lot) else {
            continue;
        };
        let market = filter("MARKET_LOT_SIZE")
            .and_then(lot)
            .unwrap_or_else(|| limit.clone());
        let tick = filter("PRICE_FILTER").and_then(|f| Step::parse(f["tickSize"].as_str()?));
        let min_notional = filter("MIN_NOTIONAL")
            .and_then(|f| number(&f["notional"]))
            .unwrap_or(0.0);
        out.insert(
            name.to_owned(),
            Rules {
                market,
                limit,
                tick,
                min_notional,
                unit: 1.0,
            },
        );
    }
    out
}

/// An order as Binance answers it (`POST` and `GET /fapi/v1/order`).
fn parse_order(v: &Value) -> Result<VenueOrder, VenueError> {
    let status = v["status"].as_str().unwrap_or_default();
    let filled = number(&v["executedQty"]).unwrap_or(0.0);
    let state = match status {
        "NEW" | "PARTIALLY_FILLED" => VenueState::Open,
        "FILLED" => VenueState::Done,
        "CANCELED" | "EXPIRED" | "EXPIRED_IN_MATCH" | "REJECTED" if filled > 0.0 => {
            VenueState::Done
        }
        "CANCELED" | "EXPIRED" | "EXPIRED_IN_MATCH" | "REJECTED" => VenueState::Cancelled,
        other => {
            return Err(VenueError::Unknown(format!(
                "Binance answered an order with status {other:?}"
            )));
        }
    };
    Ok(VenueOrder {
        venue_order_id: match &v["orderId"] {
            Value::Null => String::new(),
            Value::String(s) => s.clone(),
            id => id.to_string(),
        },
        state,
        filled,
        average_price: number(&v["avgPrice"]).unwrap_or(0.0),
        fee: 0.0,
    })
}

/// Binance's error codes, as the stable reasons the order log shows.
fn reason_of(code: i64) -> &'static str {
    match code {
        -1021 => "clock_skew",
        -1022 => "bad_signature",
        -2014 | -2015 => "bad_api_key",
        -1003 => "rate_limited",
        -2019 => "insufficient_margin",
        -2022 => "reduce_only_rejected",
        -4164 => "min_notional",
        -1013 | -1111 | -4003 | -4005 => "invalid_quantity",
        -4061 => "position_mode",
        -2013 | -2011 => "order_not_found",
        -4116 => "duplicate_client_order_id",
        -1121 => "unknown_symbol",
        _ => "venue_error",
    }
}

/// What an answer says: its JSON, or the error it is.
async fn answer(sent: reqwest::Result<reqwest::Response>) -> Result<Value, VenueError> {
    let reply = read(VENUE, sent).await?;
    let status = reply.status;
    let json = &reply.json;
    if status.is_success() {
        return Ok(reply.json);
    }
    let code = json["code"].as_i64();
    let msg = json["msg"].as_str().unwrap_or_default();
    let detail = match code {
        Some(c) => format!("Binance {c}: {msg}"),
        None => format!(
            "Binance answered HTTP {}: {}",
            status.as_u16(),
            reply.snippet()
        ),
    };
    if status.as_u16() == 429 || status.as_u16() == 418 || code == Some(-1003) {
        return Err(rate_limited(detail, reply.retry_after.as_deref()));
    }
    if status.is_server_error() {
        // Binance: a 5xx means the request may or may not have been executed.
        return Err(VenueError::Unknown(detail));
    }
    let reason = code.map_or("venue_error", reason_of);
    let detail = match reason {
        "position_mode" => super::rest::position_mode_hint(detail),
        _ => detail,
    };
    Err(VenueError::Refused(Rejection::new(reason, detail)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPOT_SECRET: &str = "NhqPtmdSJYdKjVHjA7PZj4Mge3R5YNiP1e3UZjInClVN65XAbvqqM6A7H5fATj0j";

    #[test]
    fn the_published_spot_examples_sign_as_binance_says() {
        // Binance spot API, "SIGNED endpoint examples for POST /api/v3/order": all in the
        // query string, and the same split between query string and body.
        assert_eq!(
            signature(
                SPOT_SECRET,
                "symbol=LTCBTC&side=BUY&type=LIMIT&timeInForce=GTC&quantity=1&price=0.1&recvWindow=5000&timestamp=1499827319559"
            ),
            "c8db56825ae71d6d79447849e617115f4a920fa2acdcab2b053c4b2838bd6b71"
        );
        assert_eq!(
            signature(
                SPOT_SECRET,
                &format!(
                    "{}{}",
                    "symbol=LTCBTC&side=BUY&type=LIMIT&timeInForce=GTC",
                    "quantity=1&price=0.1&recvWindow=5000&timestamp=1499827319559"
                )
            ),
            "0fd168b8ddb4876a0358a8d14d0c9f3da0e9b20c5d52b2a00fcf7d1c602f9a77"
        );
    }

    #[test]
    fn exchange_info_filters_become_the_rules_of_each_trading_symbol() {
        let info = serde_json::json!({"symbols": [
            {"symbol": "BTCUSDT", "status": "TRADING", "filters": [
                {"filterType": "PRICE_FILTER", "tickSize": "0.10", "minPrice": "556.80"},
                {"filterType": "LOT_SIZE", "stepSize": "0.001", "minQty": "0.001", "maxQty": "1000"},
                {"filterType": "MARKET_LOT_SIZE", "stepSize": "0.001", "minQty": "0.001", "maxQty": "120"},
                {"filterType": "MIN_NOTIONAL", "notional": "100"}]},
            {"symbol": "OLDUSDT", "status": "SETTLING", "filters": [
                {"filterType": "LOT_SIZE", "stepSize": "1", "minQty": "1", "maxQty": "10"}]}
        ]});
        let rules = parse_rules(&info);
        let btc = &rules["BTCUSDT"];
        assert_eq!(btc.market.max, 120.0);
        assert_eq!(btc.limit.max, 1000.0);
        assert_eq!(btc.min_notional, 100.0);
        assert_eq!(btc.tick.unwrap().decimals, 1);
        assert!(!rules.contains_key("OLDUSDT"));
    }

    #[test]
    fn an_order_cancelled_after_part_of_it_filled_is_done_with_that_part() {
        let partly = parse_order(&serde_json::json!({
            "orderId": 22542179, "status": "EXPIRED", "executedQty": "0.004", "avgPrice": "30000.5"
        }))
        .unwrap();
        assert_eq!(
            (partly.state, partly.filled, partly.venue_order_id.as_str()),
            (VenueState::Done, 0.004, "22542179")
        );
        let none = parse_order(&serde_json::json!({"status": "CANCELED", "executedQty": "0"}));
        assert_eq!(none.unwrap().state, VenueState::Cancelled);
    }
}
