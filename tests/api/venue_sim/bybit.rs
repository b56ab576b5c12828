//! Bybit v5: server time, instruments, leverage, key and wallet, and linear orders created
//! and looked up by `orderLinkId`. It checks what Bybit checks: the key in `X-BAPI-API-KEY`,
//! `X-BAPI-SIGN = hex(HMAC-SHA256(secret, timestamp + key + recvWindow + payload))` over the
//! raw query string of a GET or the raw body of a POST, and the timestamp
//! (`serverTime - recvWindow <= timestamp < serverTime + 1000`). It answers HTTP 200 with
//! Bybit's `retCode` and `retMsg`.

use std::sync::{Arc, Mutex};

use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

use super::{Fault, NewOrder, Refused, Sim, SimOrder, VenueSim, after_taking};

/// A simulator trading BTCUSDT at 64,000 for the key `api_key` with `secret`.
pub async fn start(api_key: &str, secret: &str) -> VenueSim {
    let state = VenueSim::state(api_key, secret);
    let app = axum::Router::new()
        .route("/v5/market/time", get(time))
        .route("/v5/market/instruments-info", get(instruments))
        .route("/v5/position/set-leverage", post(leverage))
        .route("/v5/user/query-api", get(key_info))
        .route("/v5/account/wallet-balance", get(wallet))
        .route("/v5/position/list", get(positions))
        .route("/v5/position/trading-stop", post(trading_stop))
        .route("/v5/order/create", post(create))
        .route("/v5/order/realtime", get(realtime))
        .with_state(state.clone());
    VenueSim::serve(app, state).await
}

/// A Bybit answer: HTTP 200 with its return code.
fn reply(code: i64, msg: &str, result: Value) -> Response {
    axum::Json(
        json!({"retCode": code, "retMsg": msg, "result": result, "retExtInfo": {},
                      "time": super::now_ms()}),
    )
    .into_response()
}

fn ok(result: Value) -> Response {
    reply(0, "OK", result)
}

fn refused(code: i64, msg: &str) -> Response {
    reply(code, msg, json!({}))
}

async fn time(State(sim): State<Arc<Mutex<Sim>>>) -> Response {
    let now = sim.lock().unwrap().now();
    ok(json!({"timeSecond": (now / 1000).to_string(),
              "timeNano": (now as i128 * 1_000_000).to_string()}))
}

async fn instruments() -> Response {
    ok(json!({"category": "linear", "list": [{
        "symbol": "BTCUSDT", "contractType": "LinearPerpetual", "status": "Trading",
        "baseCoin": "BTC", "quoteCoin": "USDT",
        "priceFilter": {"minPrice": "0.10", "maxPrice": "199999.80", "tickSize": "0.10"},
        "lotSizeFilter": {"maxOrderQty": "1190.000", "minOrderQty": "0.001",
                          "qtyStep": "0.001", "maxMktOrderQty": "119.000",
                          "minNotionalValue": "5"}
    }], "nextPageCursor": ""}))
}

/// Checks a signed request's key, signature and timestamp over `payload`; Bybit's code and
/// message when they are wrong.
fn signed(sim: &Sim, headers: &HeaderMap, payload: &str) -> Result<(), (i64, &'static str)> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    if header("x-bapi-api-key") != sim.api_key {
        return Err((10003, "API key is invalid."));
    }
    let (timestamp, window) = (header("x-bapi-timestamp"), header("x-bapi-recv-window"));
    let expected = tradehook::security::sign::hmac_hex(
        sim.secret.as_bytes(),
        format!("{timestamp}{}{window}{payload}", sim.api_key).as_bytes(),
    );
    if header("x-bapi-sign") != expected {
        return Err((10004, "error sign! origin_string[...]"));
    }
    let (Ok(timestamp), Ok(window)) = (timestamp.parse::<i64>(), window.parse::<i64>()) else {
        return Err((10001, "params error: timestamp or recv_window"));
    };
    let server = sim.now();
    if !(server - window <= timestamp && timestamp < server + 1000) {
        return Err((
            10002,
            "invalid request, please check your server timestamp or recv_window param",
        ));
    }
    Ok(())
}

async fn leverage(
    State(sim): State<Arc<Mutex<Sim>>>,
    headers: HeaderMap,
    body: String,
) -> Response {
    let mut sim = sim.lock().unwrap();
    if let Err((code, msg)) = signed(&sim, &headers, &body) {
        return refused(code, msg);
    }
    let body: Value = serde_json::from_str(&body).unwrap_or_default();
    let symbol = body["symbol"].as_str().unwrap_or_default().to_owned();
    let Some(wanted) = body["buyLeverage"].as_str().and_then(|l| l.parse().ok()) else {
        return refused(10001, "params error: buyLeverage");
    };
    if sim.leverage.get(&symbol) == Some(&wanted) {
        return refused(110043, "leverage not modified");
    }
    sim.leverage.insert(symbol, wanted);
    ok(json!({}))
}

/// A signed GET whose answer is `result` whatever the query.
async fn read_only(
    sim: &Mutex<Sim>,
    headers: &HeaderMap,
    query: Option<String>,
    result: Value,
) -> Response {
    let sim = sim.lock().unwrap();
    if let Err((code, msg)) = signed(&sim, headers, &query.unwrap_or_default()) {
        return refused(code, msg);
    }
    ok(result)
}

async fn key_info(
    State(sim): State<Arc<Mutex<Sim>>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let key = json!({"readOnly": 0, "permissions": {"ContractTrade": ["Order", "Position"]}});
    read_only(&sim, &headers, query, key).await
}

async fn wallet(
    State(sim): State<Arc<Mutex<Sim>>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let wallet = json!({"list": [{"accountType": "UNIFIED", "totalWalletBalance": "5000",
                                  "totalAvailableBalance": "4800"}]});
    read_only(&sim, &headers, query, wallet).await
}

/// `/v5/position/list`: sizes unsigned, the side `Buy`, `Sell` or empty when flat.
async fn positions(
    State(sim): State<Arc<Mutex<Sim>>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let symbol = query
        .as_deref()
        .unwrap_or_default()
        .split('&')
        .find_map(|kv| kv.strip_prefix("symbol="))
        .unwrap_or_default()
        .to_owned();
    let list: Vec<Value> = sim
        .lock()
        .unwrap()
        .held(&symbol)
        .into_iter()
        .map(|(side, size, entry)| {
            let idx = match side {
                Some("LONG") => 1,
                Some(_) => 2,
                None => 0,
            };
            let said = match size {
                s if s > 0.0 => "Buy",
                s if s < 0.0 => "Sell",
                _ => "",
            };
            json!({"symbol": symbol, "side": said, "size": format!("{:.3}", size.abs()),
                   "avgPrice": entry.to_string(), "positionIdx": idx})
        })
        .collect();
    read_only(
        &sim,
        &headers,
        query,
        json!({"category": "linear", "list": list}),
    )
    .await
}

/// `/v5/position/trading-stop` in `Full` mode: the position's own take-profit and stop-loss,
/// set anew with each call.
async fn trading_stop(
    State(state): State<Arc<Mutex<Sim>>>,
    headers: HeaderMap,
    body: String,
) -> Response {
    let mut sim = state.lock().unwrap();
    if let Err((code, msg)) = signed(&sim, &headers, &body) {
        return refused(code, msg);
    }
    let body: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    let side = match body["positionIdx"].as_i64() {
        Some(1) => Some("LONG"),
        Some(2) => Some("SHORT"),
        _ => None,
    };
    if sim.hedge != side.is_some() {
        return refused(10001, "position idx not match position mode");
    }
    let position = sim.position_key(body["symbol"].as_str().unwrap_or_default(), side);
    if sim.positions.get(&position).copied().unwrap_or(0.0) == 0.0 {
        return refused(10001, "can not set tp/sl/ts for zero position");
    }
    let price = |k: &str| body[k].as_str().and_then(|p| p.parse::<f64>().ok());
    let (stop, take) = (price("stopLoss"), price("takeProfit"));
    let algo_id = 3_000_000 + sim.protections.len() as u64;
    for p in &mut sim.protections {
        if p.position == position && p.state == "live" {
            p.state = "cancelled";
        }
    }
    sim.protections.push(super::Protection {
        id: format!("position:{position}"),
        algo_id,
        position,
        stop,
        take,
        state: "live",
        with_position: true,
    });
    ok(json!({}))
}

/// An order as `/v5/order/realtime` lists it: filled at once.
fn listed(o: &SimOrder) -> Value {
    let quantity: f64 = o.quantity.parse().unwrap();
    json!({"orderId": format!("{}", o.order_id), "orderLinkId": o.client_order_id,
           "symbol": o.symbol, "side": if o.side == "BUY" { "Buy" } else { "Sell" },
           "orderType": "Market", "orderStatus": "Filled", "qty": o.quantity,
           "cumExecQty": o.quantity, "avgPrice": o.price.to_string(),
           "cumExecFee": (quantity * o.price * 0.00055).to_string(),
           "reduceOnly": o.reduce_only,
           "positionIdx": match o.position_side { Some("LONG") => 1, Some(_) => 2, None => 0 }})
}

async fn create(
    State(state): State<Arc<Mutex<Sim>>>,
    headers: HeaderMap,
    body: String,
) -> Response {
    let (fault, taken) = {
        let mut sim = state.lock().unwrap();
        if let Err((code, msg)) = signed(&sim, &headers, &body) {
            return refused(code, msg);
        }
        let body: Value = serde_json::from_str(&body).unwrap_or_default();
        let fault = sim.next_order();
        let taken = match fault {
            Some(Fault::LostBeforeAccept(_)) => None,
            Some(Fault::InsufficientMargin) => {
                return refused(110007, "ab not enough for new order");
            }
            Some(Fault::RateLimited(_)) => return refused(10006, "Too many visits!"),
            _ => match sim.take(new_order(&body)) {
                Ok(o) => Some(ok(json!({"orderId": format!("{}", o.order_id),
                                        "orderLinkId": o.client_order_id}))),
                Err(why) => return refusal(why),
            },
        };
        (fault, taken)
    };
    after_taking(fault, taken, || refused(10016, "Internal server error.")).await
}

async fn realtime(
    State(sim): State<Arc<Mutex<Sim>>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let query = query.unwrap_or_default();
    let sim = sim.lock().unwrap();
    if let Err((code, msg)) = signed(&sim, &headers, &query) {
        return refused(code, msg);
    }
    let id = form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "orderLinkId")
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default();
    let list: Vec<Value> = sim
        .orders
        .iter()
        .filter(|o| o.client_order_id == id)
        .map(listed)
        .collect();
    ok(json!({"category": "linear", "list": list, "nextPageCursor": ""}))
}

/// A new order from Bybit's JSON body.
fn new_order(body: &Value) -> NewOrder {
    let text = |k: &str| body[k].as_str().unwrap_or_default().to_owned();
    NewOrder {
        client_order_id: text("orderLinkId"),
        symbol: text("symbol"),
        buy: text("side") == "Buy",
        market: text("orderType") == "Market",
        quantity: text("qty"),
        reduce_only: body["reduceOnly"].as_bool().unwrap_or(false),
        position_side: match body["positionIdx"].as_i64() {
            Some(1) => Some("LONG"),
            Some(2) => Some("SHORT"),
            _ => None,
        },
        unit: 1.0,
        step: 0.001,
    }
}

/// A refusal in Bybit's words.
fn refusal(why: Refused) -> Response {
    match why {
        Refused::UnknownSymbol => refused(10001, "params error: symbol invalid"),
        Refused::BadClientId => refused(10001, "params error: orderLinkId"),
        Refused::DuplicateClientId => refused(110072, "OrderLinkedID is duplicate"),
        Refused::NotMarket => refused(10001, "params error: orderType"),
        Refused::BadQuantity => refused(10001, "params error: qty"),
        Refused::NothingToReduce => refused(110017, "Reduce-only rule not satisfied"),
        Refused::PositionMode => refused(10001, "position idx not match position mode"),
    }
}
