//! Binance USDⓈ-M futures: server time, exchange info, leverage, account, and orders placed
//! and looked up by client order id. It checks what Binance checks: the API key in
//! `X-MBX-APIKEY`, `signature = hex(HMAC-SHA256(secret, query + body))`, the timestamp
//! against `recvWindow` (processed only if `timestamp < serverTime + 1000` and
//! `serverTime - timestamp <= recvWindow`), and answers with Binance's error codes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

use super::{Fault, NewOrder, Refused, Sim, SimOrder, VenueSim, after_taking};

/// A simulator trading BTCUSDT at 64,000 for the key `api_key` with `secret`.
pub async fn start(api_key: &str, secret: &str) -> VenueSim {
    let state = VenueSim::state(api_key, secret);
    let app = axum::Router::new()
        .route("/fapi/v1/time", get(time))
        .route("/fapi/v1/exchangeInfo", get(exchange_info))
        .route("/fapi/v1/leverage", post(leverage))
        .route("/fapi/v2/account", get(account))
        .route("/fapi/v2/positionRisk", get(position_risk))
        .route("/fapi/v1/userTrades", get(user_trades))
        .route("/fapi/v1/algoOrder", post(algo_order).delete(algo_order))
        .route("/fapi/v1/order", get(order).post(order))
        .with_state(state.clone());
    VenueSim::serve(app, state).await
}

/// A Binance error answer.
struct Refusal {
    status: StatusCode,
    code: i64,
    msg: &'static str,
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let body = json!({"code": self.code, "msg": self.msg});
        (self.status, axum::Json(body)).into_response()
    }
}

fn error(status: StatusCode, code: i64, msg: &'static str) -> Refusal {
    Refusal { status, code, msg }
}

async fn time(State(sim): State<Arc<Mutex<Sim>>>) -> Response {
    let now = sim.lock().unwrap().now();
    axum::Json(json!({"serverTime": now})).into_response()
}

async fn exchange_info() -> Response {
    axum::Json(json!({
        "timezone": "UTC",
        "symbols": [{
            "symbol": "BTCUSDT", "pair": "BTCUSDT", "contractType": "PERPETUAL",
            "status": "TRADING", "baseAsset": "BTC", "quoteAsset": "USDT",
            "filters": [
                {"filterType": "PRICE_FILTER", "minPrice": "556.80", "maxPrice": "4529764",
                 "tickSize": "0.10"},
                {"filterType": "LOT_SIZE", "minQty": "0.001", "maxQty": "1000",
                 "stepSize": "0.001"},
                {"filterType": "MARKET_LOT_SIZE", "minQty": "0.001", "maxQty": "120",
                 "stepSize": "0.001"},
                {"filterType": "MIN_NOTIONAL", "notional": "100"}
            ]
        }]
    }))
    .into_response()
}

/// The parameters of a signed request, once its key, signature and timestamp are checked;
/// or Binance's error.
fn signed(
    sim: &Sim,
    headers: &HeaderMap,
    query: Option<String>,
    body: &str,
) -> Result<HashMap<String, String>, Refusal> {
    if headers.get("x-mbx-apikey").and_then(|v| v.to_str().ok()) != Some(sim.api_key.as_str()) {
        return Err(error(
            StatusCode::UNAUTHORIZED,
            -2015,
            "Invalid API-key, IP, or permissions for action.",
        ));
    }
    let query = query.unwrap_or_default();
    // The signature is the last parameter; what it signs is everything before it, then the
    // body.
    let Some((payload, signature)) = query.rsplit_once("&signature=") else {
        return Err(error(
            StatusCode::BAD_REQUEST,
            -1102,
            "Mandatory parameter 'signature' was not sent, was empty/null, or malformed.",
        ));
    };
    let expected = tradehook::security::sign::hmac_hex(
        sim.secret.as_bytes(),
        format!("{payload}{body}").as_bytes(),
    );
    if expected != signature {
        return Err(error(
            StatusCode::BAD_REQUEST,
            -1022,
            "Signature for this request is not valid.",
        ));
    }
    let params: HashMap<String, String> = form_urlencoded::parse(payload.as_bytes())
        .into_owned()
        .chain(form_urlencoded::parse(body.as_bytes()).into_owned())
        .collect();
    let window: i64 = params
        .get("recvWindow")
        .map_or(Ok(5000), |w| w.parse())
        .unwrap_or(-1);
    if !(1..=60_000).contains(&window) {
        return Err(error(
            StatusCode::BAD_REQUEST,
            -1131,
            "recvWindow must be less than 60000",
        ));
    }
    let Some(timestamp) = params.get("timestamp").and_then(|t| t.parse::<i64>().ok()) else {
        return Err(error(
            StatusCode::BAD_REQUEST,
            -1102,
            "Mandatory parameter 'timestamp' was not sent, was empty/null, or malformed.",
        ));
    };
    let server = sim.now();
    // Binance: processed only if timestamp < serverTime + 1000 and
    // serverTime - timestamp <= recvWindow.
    if timestamp >= server + 1000 || server - timestamp > window {
        return Err(error(
            StatusCode::BAD_REQUEST,
            -1021,
            "Timestamp for this request is outside of the recvWindow.",
        ));
    }
    Ok(params)
}

async fn leverage(
    State(sim): State<Arc<Mutex<Sim>>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    body: String,
) -> Response {
    let mut sim = sim.lock().unwrap();
    let params = match signed(&sim, &headers, query, &body) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let symbol = params.get("symbol").cloned().unwrap_or_default();
    let Some(leverage) = params.get("leverage").and_then(|l| l.parse::<u32>().ok()) else {
        return error(StatusCode::BAD_REQUEST, -1102, "leverage missing").into_response();
    };
    sim.leverage.insert(symbol.clone(), leverage);
    axum::Json(json!({"leverage": leverage, "maxNotionalValue": "1000000", "symbol": symbol}))
        .into_response()
}

async fn account(
    State(sim): State<Arc<Mutex<Sim>>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let sim = sim.lock().unwrap();
    if let Err(e) = signed(&sim, &headers, query, "") {
        return e.into_response();
    }
    axum::Json(json!({
        "canTrade": true, "canDeposit": true, "canWithdraw": false,
        "totalWalletBalance": "5000.00000000", "availableBalance": "4800.00000000",
        "assets": [{"asset": "USDT", "walletBalance": "5000.00000000"}]
    }))
    .into_response()
}

/// `/fapi/v2/positionRisk`: one position per side, a short's amount negative.
async fn position_risk(
    State(sim): State<Arc<Mutex<Sim>>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let sim = sim.lock().unwrap();
    let params = match signed(&sim, &headers, query, "") {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let symbol = params.get("symbol").cloned().unwrap_or_default();
    let list: Vec<Value> = sim
        .held(&symbol)
        .into_iter()
        .map(|(side, size, entry)| {
            json!({"symbol": symbol, "positionAmt": format!("{size:.3}"),
                   "entryPrice": entry.to_string(), "positionSide": side.unwrap_or("BOTH"),
                   "leverage": sim.leverage.get(&symbol).copied().unwrap_or(20).to_string()})
        })
        .collect();
    axum::Json(Value::Array(list)).into_response()
}

/// `/fapi/v1/algoOrder`: a conditional order closing the whole position (`POST`), or its
/// cancellation by `clientAlgoId` (`DELETE`).
async fn algo_order(
    State(sim): State<Arc<Mutex<Sim>>>,
    method: Method,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    body: String,
) -> Response {
    let mut sim = sim.lock().unwrap();
    let params = match signed(&sim, &headers, query, &body) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let get = |k: &str| params.get(k).cloned().unwrap_or_default();
    let id = get("clientAlgoId");
    let bad = StatusCode::BAD_REQUEST;
    if method == Method::DELETE {
        return match sim
            .protections
            .iter_mut()
            .find(|p| p.id == id && p.state == "live")
        {
            Some(p) => {
                p.state = "cancelled";
                axum::Json(
                    json!({"algoId": p.algo_id, "clientAlgoId": id, "code": "200",
                                  "msg": "success"}),
                )
                .into_response()
            }
            None => error(bad, -2011, "Unknown order sent.").into_response(),
        };
    }
    if get("algoType") != "CONDITIONAL" || get("closePosition") != "true" {
        return error(
            bad,
            -1102,
            "algoType CONDITIONAL with closePosition expected",
        )
        .into_response();
    }
    if sim.protections.iter().any(|p| p.id == id) {
        return error(bad, -4116, "ClientOrderId is duplicated.").into_response();
    }
    let side = match get("positionSide").as_str() {
        "LONG" => Some("LONG"),
        "SHORT" => Some("SHORT"),
        _ => None,
    };
    if sim.hedge != side.is_some() {
        return error(
            bad,
            -4061,
            "Order's position side does not match user's setting.",
        )
        .into_response();
    }
    let trigger: f64 = get("triggerPrice").parse().unwrap_or(0.0);
    let (stop, take) = match get("type").as_str() {
        "STOP_MARKET" => (Some(trigger), None),
        "TAKE_PROFIT_MARKET" => (None, Some(trigger)),
        _ => return error(bad, -1116, "Invalid orderType.").into_response(),
    };
    let algo_id = 3_000_000 + sim.protections.len() as u64;
    let position = sim.position_key(&get("symbol"), side);
    sim.protections.push(super::Protection {
        id: id.clone(),
        algo_id,
        position,
        stop,
        take,
        state: "live",
        with_position: false,
    });
    axum::Json(
        json!({"algoId": algo_id, "clientAlgoId": id, "algoType": "CONDITIONAL",
                      "orderType": get("type"), "symbol": get("symbol"), "side": get("side"),
                      "triggerPrice": get("triggerPrice"), "closePosition": true,
                      "algoStatus": "NEW", "workingType": get("workingType")}),
    )
    .into_response()
}

/// `/fapi/v1/userTrades` of one order: one trade, a taker's commission of 0.05 % in USDT.
async fn user_trades(
    State(sim): State<Arc<Mutex<Sim>>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let sim = sim.lock().unwrap();
    let params = match signed(&sim, &headers, query, "") {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let id: u64 = params
        .get("orderId")
        .and_then(|i| i.parse().ok())
        .unwrap_or_default();
    let trades: Vec<Value> = sim
        .orders
        .iter()
        .filter(|o| o.order_id == id)
        .map(|o| {
            let quantity: f64 = o.quantity.parse().unwrap();
            json!({"symbol": o.symbol, "orderId": o.order_id, "side": o.side,
                   "price": o.price.to_string(), "qty": o.quantity,
                   "quoteQty": (quantity * o.price).to_string(),
                   "commission": format!("{:.8}", quantity * o.price * 0.0005),
                   "commissionAsset": "USDT", "maker": false, "time": super::now_ms()})
        })
        .collect();
    axum::Json(Value::Array(trades)).into_response()
}

/// The answer Binance gives for an order.
fn answer(o: &SimOrder) -> Value {
    json!({
        "orderId": o.order_id, "clientOrderId": o.client_order_id, "symbol": o.symbol,
        "side": o.side, "type": "MARKET", "status": "FILLED", "reduceOnly": o.reduce_only,
        "origQty": o.quantity, "executedQty": o.quantity, "avgPrice": o.price.to_string(),
        "cumQuote": (o.quantity.parse::<f64>().unwrap() * o.price).to_string(),
        "positionSide": o.position_side.unwrap_or("BOTH"), "updateTime": super::now_ms()
    })
}

async fn order(
    State(state): State<Arc<Mutex<Sim>>>,
    method: Method,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    body: String,
) -> Response {
    let (fault, taken) = {
        let mut sim = state.lock().unwrap();
        let params = match signed(&sim, &headers, query, &body) {
            Ok(p) => p,
            Err(e) => return e.into_response(),
        };
        let now = sim.now();
        sim.order_calls.push(now);
        if method == Method::GET {
            let id = params.get("origClientOrderId").cloned().unwrap_or_default();
            return match sim.orders.iter().find(|o| o.client_order_id == id) {
                Some(o) => axum::Json(answer(o)).into_response(),
                None => {
                    error(StatusCode::BAD_REQUEST, -2013, "Order does not exist.").into_response()
                }
            };
        }
        let fault = sim.next_order();
        let taken = match fault {
            Some(Fault::LostBeforeAccept(_)) => None,
            Some(Fault::InsufficientMargin) => {
                return error(StatusCode::BAD_REQUEST, -2019, "Margin is insufficient.")
                    .into_response();
            }
            Some(Fault::RateLimited(seconds)) => {
                sim.limited_at = Some(now);
                let mut answer = error(
                    StatusCode::TOO_MANY_REQUESTS,
                    -1003,
                    "Too many requests; current limit is 2400 requests per minute.",
                )
                .into_response();
                answer
                    .headers_mut()
                    .insert("retry-after", seconds.to_string().parse().unwrap());
                return answer;
            }
            // Binance refuses reduceOnly in hedge mode: the position side says it.
            _ if sim.hedge && params.contains_key("reduceOnly") => {
                return error(
                    StatusCode::BAD_REQUEST,
                    -1106,
                    "Parameter 'reduceOnly' sent when not required.",
                )
                .into_response();
            }
            _ => match sim.take(new_order(&params)) {
                Ok(o) => Some(axum::Json(answer(&o)).into_response()),
                Err(why) => return refusal(why).into_response(),
            },
        };
        (fault, taken)
    };
    after_taking(fault, taken, || {
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            -1000,
            "Unknown error, please check your request or try again later.",
        )
        .into_response()
    })
    .await
}

/// A new order from Binance's parameters.
fn new_order(params: &HashMap<String, String>) -> NewOrder {
    let get = |k: &str| params.get(k).cloned().unwrap_or_default();
    NewOrder {
        client_order_id: get("newClientOrderId"),
        symbol: get("symbol"),
        buy: get("side") == "BUY",
        market: get("type") == "MARKET",
        quantity: get("quantity"),
        reduce_only: get("reduceOnly") == "true",
        position_side: match get("positionSide").as_str() {
            "LONG" => Some("LONG"),
            "SHORT" => Some("SHORT"),
            _ => None,
        },
        unit: 1.0,
        step: 0.001,
    }
}

/// A refusal in Binance's words.
fn refusal(why: Refused) -> Refusal {
    let bad = StatusCode::BAD_REQUEST;
    match why {
        Refused::UnknownSymbol => error(bad, -1121, "Invalid symbol."),
        Refused::BadClientId => error(
            bad,
            -1100,
            "Illegal characters found in parameter 'newClientOrderId'.",
        ),
        Refused::DuplicateClientId => error(bad, -4116, "ClientOrderId is duplicated."),
        Refused::NotMarket => error(bad, -1116, "Invalid orderType."),
        Refused::BadQuantity => error(
            bad,
            -1111,
            "Precision is over the maximum defined for this asset.",
        ),
        Refused::NothingToReduce => error(bad, -2022, "ReduceOnly Order is rejected."),
        Refused::PositionMode => error(
            bad,
            -4061,
            "Order's position side does not match user's setting.",
        ),
    }
}
