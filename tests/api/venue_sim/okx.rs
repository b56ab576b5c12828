//! OKX v5: server time, swap instruments, leverage, account config and balance, and orders
//! placed and looked up by `clOrdId`. It checks what OKX checks: `OK-ACCESS-KEY`,
//! `OK-ACCESS-PASSPHRASE`, `OK-ACCESS-SIGN = base64(HMAC-SHA256(secret, timestamp + METHOD +
//! path?query + body))`, an ISO 8601 `OK-ACCESS-TIMESTAMP` within 30 s of its clock, an
//! order's `expTime`, and a `clOrdId` of 1 to 32 letters and digits. Sizes are contracts of
//! 0.01 BTC. It answers with OKX's `code`, `msg` and, for orders, `sCode` and `sMsg`.

use std::sync::{Arc, Mutex};

use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use serde_json::{Value, json};

use super::{Fault, NewOrder, Refused, Sim, SimOrder, VenueSim, after_taking};

/// The value of one BTC-USDT-SWAP contract, in BTC.
const CONTRACT: f64 = 0.01;

/// A simulator trading BTC-USDT-SWAP at 64,000 for the key `api_key` with `secret` and
/// `passphrase`.
pub async fn start(api_key: &str, secret: &str, passphrase: &str) -> VenueSim {
    let state = VenueSim::state(api_key, secret);
    state.lock().unwrap().passphrase = passphrase.into();
    let app = axum::Router::new()
        .route("/api/v5/public/time", get(time))
        .route("/api/v5/public/instruments", get(instruments))
        .route("/api/v5/account/set-leverage", post(leverage))
        .route("/api/v5/account/config", get(config))
        .route("/api/v5/account/balance", get(balance))
        .route("/api/v5/account/positions", get(positions))
        .route("/api/v5/trade/order-algo", get(algo).post(algo_place))
        .route("/api/v5/trade/cancel-algos", post(algo_cancel))
        .route("/api/v5/trade/order", get(lookup).post(place))
        .with_state(state.clone());
    VenueSim::serve(app, state).await
}

fn ok(data: Value) -> Response {
    axum::Json(json!({"code": "0", "msg": "", "data": data})).into_response()
}

fn failed(status: StatusCode, code: &str, msg: &str) -> Response {
    (
        status,
        axum::Json(json!({"code": code, "msg": msg, "data": []})),
    )
        .into_response()
}

/// An order refused: `code` 1 with the order's own code.
fn order_failed(code: &str, msg: &str) -> Response {
    axum::Json(json!({"code": "1", "msg": "All operations failed",
                      "data": [{"clOrdId": "", "ordId": "", "sCode": code, "sMsg": msg}]}))
    .into_response()
}

async fn time(State(sim): State<Arc<Mutex<Sim>>>) -> Response {
    let now = sim.lock().unwrap().now();
    ok(json!([{"ts": now.to_string()}]))
}

async fn instruments() -> Response {
    ok(
        json!([{"instType": "SWAP", "instId": "BTC-USDT-SWAP", "uly": "BTC-USDT",
               "settleCcy": "USDT", "ctVal": "0.01", "ctValCcy": "BTC", "ctType": "linear",
               "lotSz": "0.01", "minSz": "0.01", "tickSz": "0.1", "maxMktSz": "10000",
               "maxLmtSz": "100000000", "state": "live"}]),
    )
}

/// Checks a signed request: key, passphrase, signature and timestamp.
fn signed(sim: &Sim, headers: &HeaderMap, method: &str, uri: &Uri, body: &str) -> Option<Response> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let unauthorized = StatusCode::UNAUTHORIZED;
    if header("ok-access-key") != sim.api_key {
        return Some(failed(unauthorized, "50111", "Invalid OK-ACCESS-KEY"));
    }
    if header("ok-access-passphrase") != sim.passphrase {
        return Some(failed(
            unauthorized,
            "50105",
            "Invalid OK-ACCESS-PASSPHRASE",
        ));
    }
    let timestamp = header("ok-access-timestamp");
    let path = uri.path_and_query().map_or("", |p| p.as_str());
    let mac = tradehook::security::sign::hmac_sha256(
        sim.secret.as_bytes(),
        format!("{timestamp}{method}{path}{body}").as_bytes(),
    );
    if header("ok-access-sign") != base64::engine::general_purpose::STANDARD.encode(mac) {
        return Some(failed(unauthorized, "50113", "Invalid Sign"));
    }
    let Ok(at) = timestamp.parse::<jiff::Timestamp>() else {
        return Some(failed(
            StatusCode::BAD_REQUEST,
            "50112",
            "Invalid OK-ACCESS-TIMESTAMP",
        ));
    };
    if (sim.now() - at.as_millisecond()).abs() > 30_000 {
        return Some(failed(unauthorized, "50102", "Timestamp request expired"));
    }
    None
}

/// The simulator's name of an instrument: `BTC-USDT-SWAP` → `BTCUSDT`.
fn symbol(instrument: &str) -> String {
    instrument.trim_end_matches("-SWAP").replace('-', "")
}

async fn leverage(
    State(sim): State<Arc<Mutex<Sim>>>,
    headers: HeaderMap,
    uri: Uri,
    body: String,
) -> Response {
    let mut sim = sim.lock().unwrap();
    if let Some(refused) = signed(&sim, &headers, "POST", &uri, &body) {
        return refused;
    }
    let body: Value = serde_json::from_str(&body).unwrap_or_default();
    let Some(lever) = body["lever"].as_str().and_then(|l| l.parse().ok()) else {
        return failed(StatusCode::BAD_REQUEST, "51000", "Parameter lever error");
    };
    let instrument = body["instId"].as_str().unwrap_or_default();
    sim.leverage.insert(symbol(instrument), lever);
    ok(json!([{"instId": instrument, "lever": lever.to_string(), "mgnMode": "cross"}]))
}

async fn config(State(sim): State<Arc<Mutex<Sim>>>, headers: HeaderMap, uri: Uri) -> Response {
    let sim = sim.lock().unwrap();
    if let Some(refused) = signed(&sim, &headers, "GET", &uri, "") {
        return refused;
    }
    ok(
        json!([{"uid": "44705892343619584", "acctLv": "2", "posMode": "net_mode",
               "perm": "read_only,trade"}]),
    )
}

async fn balance(State(sim): State<Arc<Mutex<Sim>>>, headers: HeaderMap, uri: Uri) -> Response {
    let sim = sim.lock().unwrap();
    if let Some(refused) = signed(&sim, &headers, "GET", &uri, "") {
        return refused;
    }
    ok(
        json!([{"totalEq": "5000", "details": [{"ccy": "USDT", "eq": "5000", "cashBal": "5000",
                                         "availEq": "4800"}]}]),
    )
}

/// `/api/v5/account/positions`: sizes in contracts, signed in net mode.
async fn positions(State(sim): State<Arc<Mutex<Sim>>>, headers: HeaderMap, uri: Uri) -> Response {
    let sim = sim.lock().unwrap();
    if let Some(refused) = signed(&sim, &headers, "GET", &uri, "") {
        return refused;
    }
    let instrument = uri
        .query()
        .unwrap_or_default()
        .split('&')
        .find_map(|kv| kv.strip_prefix("instId="))
        .unwrap_or_default()
        .to_owned();
    let data: Vec<Value> = sim
        .held(&symbol(&instrument))
        .into_iter()
        .filter(|(_, size, _)| *size != 0.0)
        .map(|(side, size, entry)| {
            let (pos_side, contracts) = match side {
                Some("LONG") => ("long", size / CONTRACT),
                Some(_) => ("short", -size / CONTRACT),
                None => ("net", size / CONTRACT),
            };
            json!({"instId": instrument, "posSide": pos_side, "pos": format!("{contracts:.2}"),
                   "avgPx": entry.to_string(), "mgnMode": "cross"})
        })
        .collect();
    ok(Value::Array(data))
}

/// `POST /api/v5/trade/order-algo`: one `conditional` or `oco` order closing the whole
/// position (`closeFraction: 1`); OKX holds one such order per position.
async fn algo_place(
    State(state): State<Arc<Mutex<Sim>>>,
    headers: HeaderMap,
    uri: Uri,
    body: String,
) -> Response {
    let mut sim = state.lock().unwrap();
    if let Some(refused) = signed(&sim, &headers, "POST", &uri, &body) {
        return refused;
    }
    let body: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    let id = body["algoClOrdId"].as_str().unwrap_or_default().to_owned();
    if body["closeFraction"] != "1" {
        return order_failed("51000", "Parameter closeFraction error");
    }
    if sim.protections.iter().any(|p| p.id == id) {
        return order_failed("51016", "Duplicated algoClOrdId");
    }
    let side = match body["posSide"].as_str() {
        Some("long") => Some("LONG"),
        Some("short") => Some("SHORT"),
        _ => None,
    };
    if sim.hedge != side.is_some() {
        return order_failed("51000", "Parameter posSide error");
    }
    let position = sim.position_key(&symbol(body["instId"].as_str().unwrap_or_default()), side);
    if sim
        .protections
        .iter()
        .any(|p| p.position == position && p.state == "live")
    {
        return order_failed(
            "51277",
            "TP/SL order for closing the whole position already exists",
        );
    }
    let price = |k: &str| body[k].as_str().and_then(|p| p.parse::<f64>().ok());
    let algo_id = 3_000_000 + sim.protections.len() as u64;
    sim.protections.push(super::Protection {
        id: id.clone(),
        algo_id,
        position,
        stop: price("slTriggerPx"),
        take: price("tpTriggerPx"),
        state: "live",
        with_position: false,
    });
    ok(json!([{"algoId": algo_id.to_string(), "algoClOrdId": id, "sCode": "0", "sMsg": ""}]))
}

/// `GET /api/v5/trade/order-algo?algoClOrdId=`: one algo order, `live`, `effective`
/// (triggered) or `canceled`.
async fn algo(State(state): State<Arc<Mutex<Sim>>>, headers: HeaderMap, uri: Uri) -> Response {
    let sim = state.lock().unwrap();
    if let Some(refused) = signed(&sim, &headers, "GET", &uri, "") {
        return refused;
    }
    let id = uri
        .query()
        .unwrap_or_default()
        .split('&')
        .find_map(|kv| kv.strip_prefix("algoClOrdId="))
        .unwrap_or_default();
    match sim.protections.iter().find(|p| p.id == id) {
        Some(p) => {
            let state = match p.state {
                "live" => "live",
                "triggered" => "effective",
                _ => "canceled",
            };
            ok(json!([{"algoId": p.algo_id.to_string(), "algoClOrdId": p.id, "state": state}]))
        }
        None => failed(StatusCode::OK, "51603", "Order does not exist"),
    }
}

/// `POST /api/v5/trade/cancel-algos`: by `algoId`.
async fn algo_cancel(
    State(state): State<Arc<Mutex<Sim>>>,
    headers: HeaderMap,
    uri: Uri,
    body: String,
) -> Response {
    let mut sim = state.lock().unwrap();
    if let Some(refused) = signed(&sim, &headers, "POST", &uri, &body) {
        return refused;
    }
    let body: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    let mut answers = Vec::new();
    for item in body.as_array().into_iter().flatten() {
        let id: u64 = item["algoId"]
            .as_str()
            .and_then(|i| i.parse().ok())
            .unwrap_or(0);
        match sim
            .protections
            .iter_mut()
            .find(|p| p.algo_id == id && p.state == "live")
        {
            Some(p) => {
                p.state = "cancelled";
                answers.push(json!({"algoId": id.to_string(), "sCode": "0", "sMsg": ""}));
            }
            None => return order_failed("51603", "Order does not exist"),
        }
    }
    ok(Value::Array(answers))
}

/// An order as OKX answers a lookup: filled at once, sizes in contracts.
fn listed(o: &SimOrder) -> Value {
    let contracts: f64 = o.quantity.parse().unwrap();
    json!({"instId": "BTC-USDT-SWAP", "ordId": o.order_id.to_string(),
           "clOrdId": o.client_order_id, "state": "filled", "ordType": "market",
           "side": o.side.to_lowercase(), "sz": o.quantity, "accFillSz": o.quantity,
           "avgPx": o.price.to_string(), "reduceOnly": o.reduce_only.to_string(),
           "fee": (-(contracts * CONTRACT * o.price * 0.0005)).to_string(), "feeCcy": "USDT"})
}

async fn place(
    State(state): State<Arc<Mutex<Sim>>>,
    headers: HeaderMap,
    uri: Uri,
    body: String,
) -> Response {
    let (fault, taken) = {
        let mut sim = state.lock().unwrap();
        if let Some(refused) = signed(&sim, &headers, "POST", &uri, &body) {
            return refused;
        }
        sim.demo = Some(
            headers
                .get("x-simulated-trading")
                .is_some_and(|v| v.as_bytes() == b"1"),
        );
        let expires = headers
            .get("exptime")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<i64>().ok());
        if expires.is_some_and(|deadline| sim.now() > deadline) {
            return order_failed("50102", "Timestamp request expired");
        }
        let body: Value = serde_json::from_str(&body).unwrap_or_default();
        let id = body["clOrdId"].as_str().unwrap_or_default();
        if id.is_empty() || id.len() > 32 || !id.chars().all(|c| c.is_ascii_alphanumeric()) {
            return order_failed("51000", "Parameter clOrdId error");
        }
        let fault = sim.next_order();
        let taken = match fault {
            Some(Fault::LostBeforeAccept(_)) => None,
            Some(Fault::InsufficientMargin) => {
                return order_failed("51008", "Order failed. Insufficient USDT margin in account");
            }
            Some(Fault::RateLimited(_)) => {
                return failed(StatusCode::TOO_MANY_REQUESTS, "50011", "Too Many Requests");
            }
            _ => match sim.take(new_order(&body)) {
                Ok(o) => Some(ok(json!([{"clOrdId": o.client_order_id,
                                         "ordId": o.order_id.to_string(),
                                         "sCode": "0", "sMsg": "Order placed"}]))),
                Err(why) => return refusal(why),
            },
        };
        (fault, taken)
    };
    after_taking(fault, taken, || {
        failed(
            StatusCode::OK,
            "50001",
            "Service temporarily unavailable. Try again later",
        )
    })
    .await
}

async fn lookup(
    State(sim): State<Arc<Mutex<Sim>>>,
    headers: HeaderMap,
    uri: Uri,
    RawQuery(query): RawQuery,
) -> Response {
    let sim = sim.lock().unwrap();
    if let Some(refused) = signed(&sim, &headers, "GET", &uri, "") {
        return refused;
    }
    let query = query.unwrap_or_default();
    let id = form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "clOrdId")
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default();
    match sim.orders.iter().find(|o| o.client_order_id == id) {
        Some(o) => ok(json!([listed(o)])),
        None => failed(StatusCode::OK, "51603", "Order does not exist"),
    }
}

/// A new order from OKX's JSON body.
fn new_order(body: &Value) -> NewOrder {
    let text = |k: &str| body[k].as_str().unwrap_or_default().to_owned();
    NewOrder {
        client_order_id: text("clOrdId"),
        symbol: symbol(&text("instId")),
        buy: text("side") == "buy",
        market: text("ordType") == "market",
        quantity: text("sz"),
        reduce_only: body["reduceOnly"].as_bool().unwrap_or(false),
        position_side: match body["posSide"].as_str() {
            Some("long") => Some("LONG"),
            Some("short") => Some("SHORT"),
            _ => None,
        },
        unit: CONTRACT,
        step: 0.01,
    }
}

/// A refusal in OKX's words.
fn refusal(why: Refused) -> Response {
    match why {
        Refused::UnknownSymbol => order_failed("51001", "Instrument ID does not exist"),
        Refused::BadClientId => order_failed("51000", "Parameter clOrdId error"),
        Refused::DuplicateClientId => order_failed("51016", "Duplicated clOrdId"),
        Refused::NotMarket => order_failed("51000", "Parameter ordType error"),
        Refused::BadQuantity => {
            order_failed("51121", "Order quantity must be a multiple of the lot size")
        }
        Refused::NothingToReduce => order_failed(
            "51169",
            "Order failed because you don't have any positions in this direction for this contract to reduce or close",
        ),
        Refused::PositionMode => order_failed("51000", "Parameter posSide error"),
    }
}
