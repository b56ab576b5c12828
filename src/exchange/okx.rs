//! OKX v5, USDT-margined perpetual swaps, over its REST API.
//!
//! Every private call carries `OK-ACCESS-KEY`, `OK-ACCESS-PASSPHRASE`, `OK-ACCESS-TIMESTAMP`
//! (ISO 8601 in ms, by OKX's clock as learned from `/api/v5/public/time`) and
//! `OK-ACCESS-SIGN = base64(HMAC-SHA256(secret, timestamp + METHOD + path?query + body))`.
//! An account that is not live trades in OKX's demo trading (`x-simulated-trading: 1`).
//!
//! OKX counts swap orders in contracts: a quantity in the base currency is divided by the
//! contract's value (`ctVal`) and floored to its lot. A client order id (`clOrdId`) is 1 to
//! 32 letters and digits, so the intent's id is written without its `_` and `-`. An order
//! carries `expTime`, the time after which OKX will not take it: OKX's receive window.
//!
//! ```
//! use tradehook::exchange::okx::{client_id, signature};
//! // Computed independently: printf '%s' '2020-12-08T09:08:57.715ZGET/api/v5/account/balance?ccy=BTC'
//! //   | openssl dgst -sha256 -hmac 22582BD0CFF14C41EDBF1AB98506286D -binary | base64
//! assert_eq!(
//!     signature("22582BD0CFF14C41EDBF1AB98506286D", "2020-12-08T09:08:57.715Z", "GET",
//!               "/api/v5/account/balance?ccy=BTC", ""),
//!     "HiZhvSfMtWJA3uUIVXV3a/bSXNPCWvYFXoGCVS8V4zY="
//! );
//! assert_eq!(client_id("dlv_01JEXAMPLE-0"), "dlv01JEXAMPLE0");
//! ```

use std::collections::HashMap;

use base64::Engine as _;
use serde_json::{Value, json};

use super::rest::{
    Conn, Lot, Market, Rules, Step, acknowledged, number, rate_limited, read, whole_leverage,
};
use super::{AccountCheck, Held, Venue, VenueError, VenueOrder, VenueState, netted, trigger_of};
use crate::model::{
    ExchangeSettings, OrderKind, OrderRequest, PositionMode, PositionSide, Rejection, Side,
    VenueKind, position_side,
};

const VENUE: &str = "OKX";

/// OKX's REST address, for live and demo trading alike (demo trading is a header).
pub const ADDRESS: &str = "https://www.okx.com";

/// `base64(HMAC-SHA256(secret, timestamp + method + path_and_query + body))`, as OKX v5
/// signs a request.
pub fn signature(
    secret: &str,
    timestamp: &str,
    method: &str,
    path_and_query: &str,
    body: &str,
) -> String {
    let text = format!("{timestamp}{method}{path_and_query}{body}");
    let mac = crate::security::sign::hmac_sha256(secret.as_bytes(), text.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac)
}

/// The `clOrdId` of a client order id: its letters and digits (OKX takes 1 to 32 of them).
/// The hub's ids (`dlv_<26>-<leg>`) keep 30, and stay distinct.
pub fn client_id(client_order_id: &str) -> String {
    client_order_id
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(32)
        .collect()
}

/// OKX's swap instrument for a pair: `BTC/USDT:USDT` → `BTC-USDT-SWAP`.
pub fn instrument(pair: &str) -> Result<String, String> {
    let p = crate::trading::parse_pair(pair)?;
    Ok(format!("{}-{}-SWAP", p.base, p.quote))
}

/// The ISO 8601 time OKX wants, in ms: `2020-12-08T09:08:57.715Z`.
fn iso(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms)
        .map(|t| t.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
        .unwrap_or_default()
}

/// One account's client of OKX v5.
pub struct Okx {
    conn: Conn,
}

impl Okx {
    pub fn new(http: reqwest::Client, settings: ExchangeSettings) -> Self {
        Self {
            conn: Conn::new(VenueKind::Okx, http, settings),
        }
    }

    /// An unsigned GET of public data; its `data`.
    async fn public(&self, path: &str) -> Result<Value, VenueError> {
        let mut request = self.conn.request(reqwest::Method::GET, path);
        if !self.conn.settings.live {
            request = request.header("x-simulated-trading", "1");
        }
        answer(request.send().await).await
    }

    async fn offset(&self, fresh: bool) -> Result<i64, VenueError> {
        self.conn
            .learned
            .offset(VENUE, fresh, || async {
                let data = self.public("/api/v5/public/time").await?;
                number(&data[0]["ts"]).map(|t| t as i64).ok_or_else(|| {
                    VenueError::Unavailable(
                        Rejection::new(
                            "venue_error",
                            format!("OKX's /api/v5/public/time answered {data}"),
                        ),
                        None,
                    )
                })
            })
            .await
    }

    /// A signed call; its `data`. `body` makes it a POST. An order is sent with `expTime`,
    /// past which OKX will not take it. A `50102` (timestamp expired) means the request was
    /// refused, so the clock is learned again and the call made once more.
    async fn signed(
        &self,
        path_and_query: &str,
        body: Option<Value>,
        expires: bool,
    ) -> Result<Value, VenueError> {
        let mut fresh = false;
        loop {
            let offset = self.offset(fresh).await?;
            let now = crate::domain::now_ms() + offset;
            let timestamp = iso(now);
            let (request, method, text) = match &body {
                Some(b) => {
                    let text = b.to_string();
                    (
                        self.conn.post_json(path_and_query, text.clone()),
                        "POST",
                        text,
                    )
                }
                None => {
                    let request = self.conn.request(reqwest::Method::GET, path_and_query);
                    (request, "GET", String::new())
                }
            };
            let sign = signature(
                &self.conn.settings.api_secret,
                &timestamp,
                method,
                path_and_query,
                &text,
            );
            let mut request = request
                .header("OK-ACCESS-KEY", &self.conn.settings.api_key)
                .header("OK-ACCESS-SIGN", sign)
                .header("OK-ACCESS-TIMESTAMP", &timestamp)
                .header(
                    "OK-ACCESS-PASSPHRASE",
                    self.conn.settings.passphrase.as_deref().unwrap_or_default(),
                );
            if expires {
                let deadline = now + self.conn.settings.recv_window_ms as i64;
                request = request.header("expTime", deadline.to_string());
            }
            if !self.conn.settings.live {
                request = request.header("x-simulated-trading", "1");
            }
            match answer(request.send().await).await {
                Err(VenueError::Refused(r)) if r.code == "clock_skew" && !fresh => fresh = true,
                Err(VenueError::Refused(r)) if r.code == "clock_skew" => {
                    return Err(VenueError::Refused(Rejection::new(
                        "clock_skew",
                        format!(
                            "{}; the hub corrected its clock by {offset} ms from OKX's time and \
                             was still refused: check this machine's clock (NTP)",
                            r.detail
                        ),
                    )));
                }
                other => return other,
            }
        }
    }
}

#[async_trait::async_trait]
impl Market for Okx {
    fn venue(&self) -> &'static str {
        VENUE
    }

    fn market(&self, pair: &str) -> Result<String, String> {
        instrument(pair)
    }

    async fn rules(&self, instrument: &str) -> Result<Rules, VenueError> {
        self.conn
            .learned
            .rules(VENUE, instrument, || async {
                let data = self
                    .public("/api/v5/public/instruments?instType=SWAP")
                    .await?;
                Ok(parse_rules(&data))
            })
            .await
    }

    async fn set_leverage(&self, instrument: &str, leverage: f64) -> Result<(), VenueError> {
        let wanted = whole_leverage(leverage);
        self.conn
            .learned
            .leverage(instrument, wanted, || async {
                let body = json!({"instId": instrument, "lever": wanted.to_string(),
                                  "mgnMode": "cross"});
                self.signed("/api/v5/account/set-leverage", Some(body), false)
                    .await
                    .map(|_| ())
            })
            .await
    }
}

#[async_trait::async_trait]
impl Venue for Okx {
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
        let (instrument, size) = self.ready(order, price).await?;
        let mut body = json!({
            "instId": instrument,
            "tdMode": "cross",
            "side": match order.side { Side::Buy => "buy", Side::Sell => "sell" },
            "ordType": "market",
            "sz": size,
            "clOrdId": client_id(&order.client_order_id),
        });
        match self.conn.settings.position_mode {
            // reduceOnly applies to net mode only; long/short mode names the side instead.
            PositionMode::OneWay => body["reduceOnly"] = json!(order.reduce_only),
            PositionMode::Hedge => {
                body["posSide"] = json!(match position_side(order.side, order.reduce_only) {
                    PositionSide::Long => "long",
                    PositionSide::Short => "short",
                });
            }
        }
        match order.kind {
            OrderKind::Market => {}
            OrderKind::Limit { price } => {
                body["ordType"] = json!("limit");
                body["px"] = json!(price.to_string());
            }
            OrderKind::Stop { .. } => {
                return Err(VenueError::Refused(Rejection::new(
                    "unsupported_order",
                    "stop orders are not placed on OKX yet",
                )));
            }
        }
        let placed = match self.signed("/api/v5/trade/order", Some(body), true).await {
            Ok(data) => data,
            // OKX has an order by this id already: that one is the answer.
            Err(VenueError::Refused(r)) if r.code == "duplicate_client_order_id" => {
                return self.lookup(order, 0).await?.ok_or(VenueError::Refused(r));
            }
            Err(e) => return Err(e),
        };
        // OKX answers the ids only: what became of the order is asked after.
        let id = placed[0]["ordId"].as_str().unwrap_or_default().to_owned();
        Ok(self
            .lookup(order, 0)
            .await
            .ok()
            .flatten()
            .unwrap_or_else(|| acknowledged(id)))
    }

    async fn lookup(
        &self,
        order: &OrderRequest,
        _sent_at: crate::domain::Millis,
    ) -> Result<Option<VenueOrder>, VenueError> {
        let instrument = self.market_of(&order.symbol)?;
        let unit = self.rules(&instrument).await?.unit;
        let query = form_urlencoded::Serializer::new(String::new())
            .append_pair("instId", &instrument)
            .append_pair("clOrdId", &client_id(&order.client_order_id))
            .finish();
        match self
            .signed(&format!("/api/v5/trade/order?{query}"), None, false)
            .await
        {
            Ok(data) => data
                .as_array()
                .and_then(|d| d.first())
                .map(|o| parse_order(o, unit))
                .transpose(),
            Err(VenueError::Refused(r)) if r.code == "order_not_found" => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn acceptance_window_ms(&self) -> u64 {
        self.conn.settings.recv_window_ms
    }

    async fn check(&self) -> Result<AccountCheck, VenueError> {
        let config = self.signed("/api/v5/account/config", None, false).await?;
        let balance = self.signed("/api/v5/account/balance", None, false).await?;
        let offset = self.offset(false).await?;
        let usdt = balance[0]["details"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|d| d["ccy"] == "USDT");
        Ok(AccountCheck {
            can_trade: config[0]["perm"]
                .as_str()
                .is_some_and(|p| p.split(',').any(|p| p.trim() == "trade")),
            // The USDT cash balance: without the unrealised PnL, as the other venues' wallet
            // balance, since the hub's book adds that of its positions.
            balance: usdt
                .and_then(|d| number(&d["cashBal"]))
                .or_else(|| number(&balance[0]["totalEq"]))
                .unwrap_or(0.0),
            available: usdt.and_then(|d| number(&d["availEq"])).unwrap_or(0.0),
            currency: "USDT".into(),
            clock_offset_ms: offset,
            raw: json!({"config": config, "balance": balance}),
        })
    }

    async fn position(&self, pair: &str) -> Result<Option<Held>, VenueError> {
        let instrument = self.market_of(pair)?;
        // OKX counts swaps in contracts of `ctVal` each.
        let unit = self.rules(&instrument).await?.unit;
        let data = self
            .signed(
                &format!("/api/v5/account/positions?instType=SWAP&instId={instrument}"),
                None,
                false,
            )
            .await?;
        // Net mode: `pos` is signed. Long/short mode: `posSide` says the side.
        Ok(netted(data.as_array().into_iter().flatten().map(|p| {
            let sign = if p["posSide"] == "short" { -1.0 } else { 1.0 };
            (
                sign * number(&p["pos"]).unwrap_or(0.0) * unit,
                number(&p["avgPx"]).unwrap_or(0.0),
            )
        })))
    }

    /// One algo order closing the whole position (`closeFraction: 1`) at the mark price:
    /// `oco` with both legs, `conditional` with one. OKX holds one such order per position,
    /// so both legs go in it, under the first leg's id as `algoClOrdId`.
    async fn protect(&self, legs: &[OrderRequest]) -> Result<(), VenueError> {
        let Some(first) = legs.first() else {
            return Ok(());
        };
        let instrument = self.market_of(&first.symbol)?;
        let tick = self.rules(&instrument).await?.tick;
        let mut body = json!({
            "instId": instrument,
            "tdMode": "cross",
            "side": match first.side { Side::Buy => "buy", Side::Sell => "sell" },
            "ordType": if legs.len() > 1 { "oco" } else { "conditional" },
            "closeFraction": "1",
            "algoClOrdId": client_id(&first.client_order_id),
        });
        match self.conn.settings.position_mode {
            PositionMode::OneWay => body["reduceOnly"] = json!(true),
            PositionMode::Hedge => {
                body["posSide"] = json!(match position_side(first.side, true) {
                    PositionSide::Long => "long",
                    PositionSide::Short => "short",
                });
            }
        }
        for leg in legs {
            let Some((trigger, stop)) = trigger_of(leg) else {
                continue;
            };
            let price = tick.map_or(trigger.to_string(), |t| t.floor(trigger).1);
            let which = if stop { "sl" } else { "tp" };
            body[format!("{which}TriggerPx")] = json!(price);
            body[format!("{which}OrdPx")] = json!("-1");
            body[format!("{which}TriggerPxType")] = json!("mark");
        }
        match self
            .signed("/api/v5/trade/order-algo", Some(body), false)
            .await
        {
            Err(VenueError::Refused(r)) if r.code == "duplicate_client_order_id" => Ok(()),
            other => other.map(|_| ()),
        }
    }

    async fn unprotect(&self, legs: &[OrderRequest]) -> Result<(), VenueError> {
        let Some(first) = legs.first() else {
            return Ok(());
        };
        let instrument = self.market_of(&first.symbol)?;
        let found = self
            .signed(
                &format!(
                    "/api/v5/trade/order-algo?algoClOrdId={}",
                    client_id(&first.client_order_id)
                ),
                None,
                false,
            )
            .await;
        let algo = match found {
            Ok(data) => data[0].clone(),
            Err(VenueError::Refused(r)) if r.code == "order_not_found" => return Ok(()),
            Err(e) => return Err(e),
        };
        if algo["state"] != "live" {
            return Ok(());
        }
        let body = json!([{"algoId": algo["algoId"], "instId": instrument}]);
        match self
            .signed("/api/v5/trade/cancel-algos", Some(body), false)
            .await
        {
            Err(VenueError::Refused(r)) if r.code == "order_not_found" => Ok(()),
            other => other.map(|_| ()),
        }
    }
}

/// The rules of the live USDT-margined swaps in an `instruments` answer, in contracts.
fn parse_rules(data: &Value) -> HashMap<String, Rules> {
    let mut out = HashMap::new();
    for s in data.as_array().into_iter().flatten() {
        let (Some(name), Some("live")) = (s["instId"].as_str(), s["state"].as_str()) else {
            continue;
        };
        let (Some(step), Some(unit)) = (
            s["lotSz"].as_str().and_then(Step::parse),
            number(&s["ctVal"]).filter(|v| *v > 0.0),
        ) else {
            continue;
        };
        let limit = Lot {
            step,
            min: number(&s["minSz"]).unwrap_or(step.value),
            max: number(&s["maxLmtSz"]).unwrap_or(f64::MAX),
        };
        let market = Lot {
            max: number(&s["maxMktSz"]).unwrap_or(limit.max),
            ..limit.clone()
        };
        out.insert(
            name.to_owned(),
            Rules {
                market,
                limit,
                tick: s["tickSz"].as_str().and_then(Step::parse),
                min_notional: 0.0,
                unit,
            },
        );
    }
    out
}

/// An order as `GET /api/v5/trade/order` answers it; sizes in contracts of `unit` base.
fn parse_order(v: &Value, unit: f64) -> Result<VenueOrder, VenueError> {
    let filled = number(&v["accFillSz"]).unwrap_or(0.0) * unit;
    let state = match v["state"].as_str().unwrap_or_default() {
        "live" | "partially_filled" => VenueState::Open,
        "filled" => VenueState::Done,
        "canceled" | "mmp_canceled" if filled > 0.0 => VenueState::Done,
        "canceled" | "mmp_canceled" => VenueState::Cancelled,
        other => {
            return Err(VenueError::Unknown(format!(
                "OKX answered an order with state {other:?}"
            )));
        }
    };
    Ok(VenueOrder {
        venue_order_id: v["ordId"].as_str().unwrap_or_default().to_owned(),
        state,
        filled,
        average_price: number(&v["avgPx"]).unwrap_or(0.0),
        // OKX writes a charged fee as a negative number.
        fee: -number(&v["fee"]).unwrap_or(0.0),
    })
}

/// OKX's error codes, as the stable reasons the order log shows.
fn reason_of(code: i64) -> &'static str {
    match code {
        50102 => "clock_skew",
        50113 => "bad_signature",
        50105 | 50111 | 50114 | 50119 => "bad_api_key",
        50011 | 50061 => "rate_limited",
        51008 => "insufficient_margin",
        51169 | 51170 => "reduce_only_rejected",
        51603 => "order_not_found",
        51016 => "duplicate_client_order_id",
        51001 => "unknown_symbol",
        51020 | 51121 | 51202 => "invalid_quantity",
        _ => "venue_error",
    }
}

/// What an answer says: its `data`, or the error it is. An order refused is `code` `1` with
/// the reason in the order's `sCode` and `sMsg`.
async fn answer(sent: reqwest::Result<reqwest::Response>) -> Result<Value, VenueError> {
    let reply = read(VENUE, sent).await?;
    let status = reply.status.as_u16();
    if status == 429 {
        let detail = format!("OKX answered HTTP 429: {}", reply.snippet());
        return Err(rate_limited(detail, reply.retry_after.as_deref()));
    }
    if reply.status.is_server_error() {
        return Err(VenueError::Unknown(format!(
            "OKX answered HTTP {status}: {}",
            reply.snippet()
        )));
    }
    let code = number(&reply.json["code"]).map(|c| c as i64);
    if code == Some(0) {
        return Ok(reply.json["data"].clone());
    }
    let item = &reply.json["data"][0];
    let (code, msg) = match number(&item["sCode"]).map(|c| c as i64) {
        Some(s) if s != 0 => (s, item["sMsg"].as_str().unwrap_or_default()),
        _ => match code {
            Some(c) => (c, reply.json["msg"].as_str().unwrap_or_default()),
            None => {
                return Err(VenueError::Unknown(format!(
                    "OKX answered HTTP {status} without a code: {}",
                    reply.snippet()
                )));
            }
        },
    };
    let detail = format!("OKX {code}: {msg}");
    match reason_of(code) {
        "rate_limited" => Err(rate_limited(detail, reply.retry_after.as_deref())),
        // 51000 is any bad parameter; a bad posSide is the account's position mode.
        _ if code == 51000 && detail.contains("posSide") => Err(VenueError::Refused(
            Rejection::new("position_mode", super::rest::position_mode_hint(detail)),
        )),
        // 50001 (service unavailable) and 50004 (endpoint timeout): OKX says such a request
        // may or may not have taken effect.
        _ if code == 50001 || code == 50004 || code == 50013 => Err(VenueError::Unknown(detail)),
        reason => Err(VenueError::Refused(Rejection::new(reason, detail))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_post_is_signed_over_its_body_and_times_are_iso_in_ms() {
        // printf '%s' '2020-12-08T09:08:57.715ZPOST/api/v5/trade/order{"instId":…}' |
        //   openssl dgst -sha256 -hmac 22582BD0CFF14C41EDBF1AB98506286D -binary | base64
        let body = r#"{"instId":"BTC-USDT-SWAP","tdMode":"cross","side":"buy","ordType":"market","sz":"1","clOrdId":"dlv01JEXAMPLE0"}"#;
        assert_eq!(
            signature(
                "22582BD0CFF14C41EDBF1AB98506286D",
                "2020-12-08T09:08:57.715Z",
                "POST",
                "/api/v5/trade/order",
                body
            ),
            "kJrzAlVgJqSW9u0TcgJGxcThMMIx1104gGElVoWIrTY="
        );
        assert_eq!(iso(1_607_418_537_715), "2020-12-08T09:08:57.715Z");
        assert_eq!(iso(1_607_418_537_000), "2020-12-08T09:08:57.000Z");
        assert_eq!(instrument("BINANCE:BTCUSDT.P").unwrap(), "BTC-USDT-SWAP");
    }

    #[test]
    fn sizes_are_counted_in_contracts() {
        let data = json!([{"instId": "BTC-USDT-SWAP", "state": "live", "ctVal": "0.01",
                           "lotSz": "0.01", "minSz": "0.01", "tickSz": "0.1",
                           "maxMktSz": "10000"}]);
        let rules = &parse_rules(&data)["BTC-USDT-SWAP"];
        let order = OrderRequest {
            client_order_id: "c".into(),
            symbol: "BTC/USDT:USDT".into(),
            side: Side::Buy,
            quantity: 0.0129,
            kind: OrderKind::Market,
            reduce_only: false,
            leverage: 1.0,
        };
        // 0.0129 BTC is 1.29 contracts of 0.01 BTC.
        assert_eq!(
            rules
                .quantity("OKX", "BTC-USDT-SWAP", &order, Some(64_000.0))
                .unwrap(),
            "1.29"
        );
        let filled = parse_order(
            &json!({"ordId": "1", "state": "filled", "accFillSz": "1.29", "avgPx": "64000",
                    "fee": "-0.41"}),
            0.01,
        )
        .unwrap();
        assert!((filled.filled - 0.0129).abs() < 1e-12);
        assert_eq!(filled.fee, 0.41);
    }
}
