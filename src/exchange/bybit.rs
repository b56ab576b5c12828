//! Bybit v5, linear (USDT-margined) perpetuals, over its REST API.
//!
//! Every private call carries `X-BAPI-API-KEY`, `X-BAPI-TIMESTAMP` (ms, by Bybit's clock as
//! learned from `/v5/market/time`), `X-BAPI-RECV-WINDOW` and
//! `X-BAPI-SIGN = hex(HMAC-SHA256(secret, timestamp + apiKey + recvWindow + payload))`, where
//! the payload is the query string of a GET and the raw JSON body of a POST. An order is
//! placed with `orderLinkId` set to its intent's client order id (at most 36 characters) and
//! looked up by it on `/v5/order/realtime`. Bybit answers HTTP 200 with a `retCode`; 0 is
//! success.
//!
//! ```
//! use tradehook::exchange::bybit::signature;
//! // Computed independently: printf '%s' '1658384314791XXXXXXXXXX5000{"category":…}' |
//! //   openssl dgst -sha256 -hmac YYYYYYYYYYYYYYYYYYYY
//! let body = r#"{"category":"linear","symbol":"BTCUSDT","side":"Buy","orderType":"Market","qty":"0.010","orderLinkId":"dlv_01JEXAMPLE-0"}"#;
//! assert_eq!(
//!     signature("YYYYYYYYYYYYYYYYYYYY", 1658384314791, "XXXXXXXXXX", 5000, body),
//!     "597987d3a7ff0a123ec8bdcb55c2f9088b901bade4d2eb2b1d73810e85b11955"
//! );
//! ```

use std::collections::HashMap;

use serde_json::{Value, json};

use super::rest::{
    Conn, Lot, Market, Rules, Step, acknowledged, number, rate_limited, read, whole_leverage,
};
use super::{AccountCheck, Held, Venue, VenueError, VenueOrder, VenueState, netted, trigger_of};
use crate::model::{
    ExchangeSettings, OrderKind, OrderRequest, PositionMode, PositionSide, Rejection, Side,
    VenueKind, position_side,
};

const VENUE: &str = "Bybit";

/// Bybit, real money.
pub const LIVE: &str = "https://api.bybit.com";
/// Its testnet, where every account starts.
pub const TESTNET: &str = "https://api-testnet.bybit.com";

/// `hex(HMAC-SHA256(secret, timestamp + api_key + recv_window + payload))`, as Bybit v5
/// signs a request: the payload is a GET's query string or a POST's raw body.
pub fn signature(
    secret: &str,
    timestamp: i64,
    api_key: &str,
    recv_window: u64,
    payload: &str,
) -> String {
    let text = format!("{timestamp}{api_key}{recv_window}{payload}");
    crate::security::sign::hmac_hex(secret.as_bytes(), text.as_bytes())
}

/// A request to sign: a GET with its query, or a POST with its JSON body.
enum Call<'a> {
    Get(&'a [(&'a str, String)]),
    Post(Value),
}

/// One account's client of Bybit v5.
pub struct Bybit {
    conn: Conn,
}

impl Bybit {
    pub fn new(http: reqwest::Client, settings: ExchangeSettings) -> Self {
        Self {
            conn: Conn::new(VenueKind::Bybit, http, settings),
        }
    }

    /// An unsigned GET of public data; its `result`.
    async fn public(&self, path: &str) -> Result<Value, VenueError> {
        let request = self.conn.request(reqwest::Method::GET, path);
        answer(request.send().await).await
    }

    async fn offset(&self, fresh: bool) -> Result<i64, VenueError> {
        self.conn
            .learned
            .offset(VENUE, fresh, || async {
                let request = self.conn.request(reqwest::Method::GET, "/v5/market/time");
                let reply = read(VENUE, request.send().await).await?;
                let nanos = reply.json["result"]["timeNano"]
                    .as_str()
                    .and_then(|n| n.parse::<i128>().ok());
                nanos
                    .map(|n| (n / 1_000_000) as i64)
                    .or_else(|| reply.json["time"].as_i64())
                    .ok_or_else(|| {
                        VenueError::Unavailable(
                            Rejection::new(
                                "venue_error",
                                format!("Bybit's /v5/market/time answered {}", reply.snippet()),
                            ),
                            None,
                        )
                    })
            })
            .await
    }

    /// A signed call; its `result`. A `10002` (timestamp outside the receive window) means
    /// the request was refused, so the clock is learned again and the call made once more.
    async fn signed(&self, path: &str, call: Call<'_>) -> Result<Value, VenueError> {
        let mut fresh = false;
        loop {
            let offset = self.offset(fresh).await?;
            let timestamp = crate::domain::now_ms() + offset;
            let (request, payload) = match &call {
                Call::Get(params) => {
                    let query = {
                        let mut q = form_urlencoded::Serializer::new(String::new());
                        for (k, v) in params.iter() {
                            q.append_pair(k, v);
                        }
                        q.finish()
                    };
                    let request = self
                        .conn
                        .request(reqwest::Method::GET, &format!("{path}?{query}"));
                    (request, query)
                }
                Call::Post(body) => {
                    let body = body.to_string();
                    (self.conn.post_json(path, body.clone()), body)
                }
            };
            let window = self.conn.settings.recv_window_ms;
            let sign = signature(
                &self.conn.settings.api_secret,
                timestamp,
                &self.conn.settings.api_key,
                window,
                &payload,
            );
            let request = request
                .header("X-BAPI-API-KEY", &self.conn.settings.api_key)
                .header("X-BAPI-TIMESTAMP", timestamp.to_string())
                .header("X-BAPI-RECV-WINDOW", window.to_string())
                .header("X-BAPI-SIGN", sign)
                .header("X-BAPI-SIGN-TYPE", "2");
            match answer(request.send().await).await {
                Err(VenueError::Refused(r)) if r.code == "clock_skew" && !fresh => fresh = true,
                Err(VenueError::Refused(r)) if r.code == "clock_skew" => {
                    return Err(VenueError::Refused(Rejection::new(
                        "clock_skew",
                        format!(
                            "{}; the hub corrected its clock by {offset} ms from Bybit's time \
                             and was still refused: check this machine's clock (NTP)",
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
impl Market for Bybit {
    fn venue(&self) -> &'static str {
        VENUE
    }

    fn market(&self, pair: &str) -> Result<String, String> {
        super::binance::symbol(pair)
    }

    async fn rules(&self, symbol: &str) -> Result<Rules, VenueError> {
        self.conn
            .learned
            .rules(VENUE, symbol, || async {
                let result = self
                    .public("/v5/market/instruments-info?category=linear&limit=1000")
                    .await?;
                Ok(parse_rules(&result))
            })
            .await
    }

    async fn set_leverage(&self, symbol: &str, leverage: f64) -> Result<(), VenueError> {
        let wanted = whole_leverage(leverage);
        self.conn
            .learned
            .leverage(symbol, wanted, || async {
                let body = json!({"category": "linear", "symbol": symbol,
                                  "buyLeverage": wanted.to_string(),
                                  "sellLeverage": wanted.to_string()});
                match self
                    .signed("/v5/position/set-leverage", Call::Post(body))
                    .await
                {
                    // 110043: "leverage not modified", it is set already.
                    Err(VenueError::Refused(r)) if r.detail.starts_with("Bybit 110043") => Ok(()),
                    other => other.map(|_| ()),
                }
            })
            .await
    }
}

#[async_trait::async_trait]
impl Venue for Bybit {
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
        let (symbol, quantity) = self.ready(order, price).await?;
        let mut body = json!({
            "category": "linear",
            "symbol": symbol,
            "side": match order.side { Side::Buy => "Buy", Side::Sell => "Sell" },
            "orderType": "Market",
            "qty": quantity,
            "orderLinkId": order.client_order_id,
            "reduceOnly": order.reduce_only,
            // One-way mode 0; hedge mode 1 for the long side, 2 for the short one.
            "positionIdx": match self.conn.settings.position_mode {
                PositionMode::OneWay => 0,
                PositionMode::Hedge => match position_side(order.side, order.reduce_only) {
                    PositionSide::Long => 1,
                    PositionSide::Short => 2,
                },
            },
        });
        match order.kind {
            OrderKind::Market => {}
            OrderKind::Limit { price } => {
                body["orderType"] = json!("Limit");
                body["price"] = json!(price.to_string());
                body["timeInForce"] = json!("GTC");
            }
            OrderKind::Stop { .. } => {
                return Err(VenueError::Refused(Rejection::new(
                    "unsupported_order",
                    "stop orders are not placed on Bybit yet",
                )));
            }
        }
        let placed = match self.signed("/v5/order/create", Call::Post(body)).await {
            Ok(result) => result,
            // Bybit has an order by this id already: that one is the answer.
            Err(VenueError::Refused(r)) if r.code == "duplicate_client_order_id" => {
                return self.lookup(order, 0).await?.ok_or(VenueError::Refused(r));
            }
            Err(e) => return Err(e),
        };
        // Bybit answers the ids only: what became of the order is asked after.
        let id = placed["orderId"].as_str().unwrap_or_default().to_owned();
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
        let symbol = self.market_of(&order.symbol)?;
        let params = [
            ("category", "linear".to_owned()),
            ("symbol", symbol),
            ("orderLinkId", order.client_order_id.clone()),
        ];
        let result = self
            .signed("/v5/order/realtime", Call::Get(&params))
            .await?;
        result["list"]
            .as_array()
            .and_then(|l| l.first())
            .map(parse_order)
            .transpose()
    }

    fn acceptance_window_ms(&self) -> u64 {
        self.conn.settings.recv_window_ms
    }

    async fn check(&self) -> Result<AccountCheck, VenueError> {
        let key = self.signed("/v5/user/query-api", Call::Get(&[])).await?;
        let params = [("accountType", "UNIFIED".to_owned())];
        let wallet = self
            .signed("/v5/account/wallet-balance", Call::Get(&params))
            .await?;
        let account = &wallet["list"][0];
        let offset = self.offset(false).await?;
        Ok(AccountCheck {
            can_trade: key["readOnly"].as_i64() == Some(0),
            balance: number(&account["totalWalletBalance"]).unwrap_or(0.0),
            available: number(&account["totalAvailableBalance"]).unwrap_or(0.0),
            currency: "USD".into(),
            clock_offset_ms: offset,
            raw: json!({"api_key": key, "wallet": wallet}),
        })
    }

    async fn position(&self, pair: &str) -> Result<Option<Held>, VenueError> {
        let symbol = self.market_of(pair)?;
        let params = [("category", "linear".to_owned()), ("symbol", symbol)];
        let result = self.signed("/v5/position/list", Call::Get(&params)).await?;
        Ok(netted(result["list"].as_array().into_iter().flatten().map(
            |p| {
                let sign = if p["side"] == "Sell" { -1.0 } else { 1.0 };
                (
                    sign * number(&p["size"]).unwrap_or(0.0),
                    number(&p["avgPrice"]).unwrap_or(0.0),
                )
            },
        )))
    }

    /// The position's own take-profit and stop-loss (`/v5/position/trading-stop`, `Full`
    /// mode: the whole position at the mark price). Bybit takes them away with the position.
    async fn protect(&self, legs: &[OrderRequest]) -> Result<(), VenueError> {
        let Some(first) = legs.first() else {
            return Ok(());
        };
        let symbol = self.market_of(&first.symbol)?;
        let tick = self.rules(&symbol).await?.tick;
        let mut body = json!({
            "category": "linear",
            "symbol": symbol,
            "tpslMode": "Full",
            "positionIdx": match self.conn.settings.position_mode {
                PositionMode::OneWay => 0,
                PositionMode::Hedge => match position_side(first.side, true) {
                    PositionSide::Long => 1,
                    PositionSide::Short => 2,
                },
            },
        });
        for leg in legs {
            let Some((trigger, stop)) = trigger_of(leg) else {
                continue;
            };
            let price = tick.map_or(trigger.to_string(), |t| t.floor(trigger).1);
            if stop {
                body["stopLoss"] = json!(price);
                body["slTriggerBy"] = json!("MarkPrice");
            } else {
                body["takeProfit"] = json!(price);
                body["tpTriggerBy"] = json!("MarkPrice");
            }
        }
        match self
            .signed("/v5/position/trading-stop", Call::Post(body))
            .await
        {
            // 34040: "not modified", they are set already.
            Err(VenueError::Refused(r)) if r.detail.starts_with("Bybit 34040") => Ok(()),
            other => other.map(|_| ()),
        }
    }
}

/// The rules of the linear instruments in an `instruments-info` result, by symbol.
fn parse_rules(result: &Value) -> HashMap<String, Rules> {
    let mut out = HashMap::new();
    for s in result["list"].as_array().into_iter().flatten() {
        let (Some(name), Some("Trading")) = (s["symbol"].as_str(), s["status"].as_str()) else {
            continue;
        };
        let lot = &s["lotSizeFilter"];
        let Some(step) = lot["qtyStep"].as_str().and_then(Step::parse) else {
            continue;
        };
        let min = number(&lot["minOrderQty"]).unwrap_or(0.0);
        let limit = Lot {
            step,
            min,
            max: number(&lot["maxOrderQty"]).unwrap_or(f64::MAX),
        };
        let market = Lot {
            max: number(&lot["maxMktOrderQty"]).unwrap_or(limit.max),
            ..limit.clone()
        };
        out.insert(
            name.to_owned(),
            Rules {
                market,
                limit,
                tick: s["priceFilter"]["tickSize"].as_str().and_then(Step::parse),
                min_notional: number(&lot["minNotionalValue"]).unwrap_or(0.0),
                unit: 1.0,
            },
        );
    }
    out
}

/// An order as `/v5/order/realtime` lists it.
fn parse_order(v: &Value) -> Result<VenueOrder, VenueError> {
    let filled = number(&v["cumExecQty"]).unwrap_or(0.0);
    let state = match v["orderStatus"].as_str().unwrap_or_default() {
        "New" | "PartiallyFilled" | "Untriggered" | "Created" | "Triggered" => VenueState::Open,
        "Filled" => VenueState::Done,
        "Cancelled" | "Rejected" | "Deactivated" | "PartiallyFilledCanceled" if filled > 0.0 => {
            VenueState::Done
        }
        "Cancelled" | "Rejected" | "Deactivated" | "PartiallyFilledCanceled" => {
            VenueState::Cancelled
        }
        other => {
            return Err(VenueError::Unknown(format!(
                "Bybit answered an order with status {other:?}"
            )));
        }
    };
    Ok(VenueOrder {
        venue_order_id: v["orderId"].as_str().unwrap_or_default().to_owned(),
        state,
        filled,
        average_price: number(&v["avgPrice"]).unwrap_or(0.0),
        fee: number(&v["cumExecFee"]).unwrap_or(0.0),
    })
}

/// Bybit's return codes, as the stable reasons the order log shows.
fn reason_of(code: i64) -> &'static str {
    match code {
        10002 => "clock_skew",
        10004 => "bad_signature",
        10003 | 10005 | 10010 | 33004 => "bad_api_key",
        10006 | 10018 => "rate_limited",
        110004 | 110007 | 110012 | 110045 => "insufficient_margin",
        110017 => "reduce_only_rejected",
        110072 => "duplicate_client_order_id",
        110094 => "min_notional",
        10001 => "invalid_request",
        _ => "venue_error",
    }
}

/// What an answer says: its `result`, or the error it is.
async fn answer(sent: reqwest::Result<reqwest::Response>) -> Result<Value, VenueError> {
    let reply = read(VENUE, sent).await?;
    let status = reply.status.as_u16();
    if status == 429 || status == 403 {
        let detail = format!("Bybit answered HTTP {status}: {}", reply.snippet());
        return Err(rate_limited(detail, reply.retry_after.as_deref()));
    }
    if reply.status.is_server_error() {
        return Err(VenueError::Unknown(format!(
            "Bybit answered HTTP {status}: {}",
            reply.snippet()
        )));
    }
    let Some(code) = reply.json["retCode"].as_i64() else {
        return Err(VenueError::Unknown(format!(
            "Bybit answered HTTP {status} without a retCode: {}",
            reply.snippet()
        )));
    };
    if code == 0 {
        return Ok(reply.json["result"].clone());
    }
    let detail = format!(
        "Bybit {code}: {}",
        reply.json["retMsg"].as_str().unwrap_or_default()
    );
    match reason_of(code) {
        "rate_limited" => Err(rate_limited(detail, reply.retry_after.as_deref())),
        // 10001 is any bad parameter; "position idx not match position mode" is the account's
        // mode.
        _ if code == 10001 && detail.contains("position idx") => Err(VenueError::Refused(
            Rejection::new("position_mode", super::rest::position_mode_hint(detail)),
        )),
        // 10016: an error inside Bybit; whether the request took effect is not known.
        _ if code == 10016 => Err(VenueError::Unknown(detail)),
        reason => Err(VenueError::Refused(Rejection::new(reason, detail))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_get_is_signed_over_its_query_string() {
        // printf '%s' '1658384314791XXXXXXXXXX5000category=linear&symbol=BTCUSDT&orderLinkId=dlv_01JEXAMPLE-0'
        //   | openssl dgst -sha256 -hmac YYYYYYYYYYYYYYYYYYYY
        assert_eq!(
            signature(
                "YYYYYYYYYYYYYYYYYYYY",
                1658384314791,
                "XXXXXXXXXX",
                5000,
                "category=linear&symbol=BTCUSDT&orderLinkId=dlv_01JEXAMPLE-0"
            ),
            "680e60e34ca08d956d8c3b39936e9dc2f50f742f9170b7196e5f323117c89454"
        );
    }

    #[test]
    fn instruments_become_rules_and_orders_their_state() {
        let result = json!({"category": "linear", "list": [{
            "symbol": "BTCUSDT", "status": "Trading",
            "lotSizeFilter": {"maxOrderQty": "1190.000", "minOrderQty": "0.001",
                              "qtyStep": "0.001", "maxMktOrderQty": "119.000",
                              "minNotionalValue": "5"},
            "priceFilter": {"tickSize": "0.10"}}]});
        let rules = parse_rules(&result);
        assert_eq!(rules["BTCUSDT"].market.max, 119.0);
        assert_eq!(rules["BTCUSDT"].min_notional, 5.0);
        let order = parse_order(&json!({"orderId": "fd4300ae", "orderStatus": "Filled",
            "cumExecQty": "0.010", "avgPrice": "64000", "cumExecFee": "0.352"}))
        .unwrap();
        assert_eq!((order.state, order.fee), (VenueState::Done, 0.352));
    }
}
