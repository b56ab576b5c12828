//! A local simulator of Binance USDⓈ-M futures' documented REST endpoints, as far as the hub
//! uses them: server time, exchange info, leverage, account, and orders placed and looked up
//! by client order id. It checks what Binance checks (the API key, the HMAC-SHA256 signature
//! over the query and body, the timestamp against `recvWindow`, the client order id's form
//! and uniqueness, the quantity's step and reduce-only against the position) and answers
//! with Binance's error codes. Faults can be queued for the next orders: a hang, a 503 or a
//! dropped connection after the order was taken, a request lost before it was, a refusal.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

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
    /// Refused: `-2019 Margin is insufficient.`
    InsufficientMargin,
}

/// An order the simulator took.
#[derive(Debug, Clone, PartialEq)]
pub struct SimOrder {
    pub order_id: u64,
    pub client_order_id: String,
    pub symbol: String,
    pub side: String,
    pub quantity: String,
    pub reduce_only: bool,
    pub price: f64,
}

#[derive(Default)]
struct Sim {
    api_key: String,
    secret: String,
    /// How far the simulator's clock is ahead of the machine's, in ms.
    skew_ms: i64,
    prices: HashMap<String, f64>,
    orders: Vec<SimOrder>,
    /// Signed quantity per symbol.
    positions: HashMap<String, f64>,
    leverage: HashMap<String, u32>,
    faults: VecDeque<Fault>,
    /// Every order request that reached the simulator, taken or not.
    order_requests: usize,
}

/// A running simulator.
#[derive(Clone)]
pub struct BinanceSim {
    pub url: String,
    state: Arc<Mutex<Sim>>,
}

impl BinanceSim {
    /// A simulator trading BTCUSDT at 64,000 for the key `api_key` with `secret`.
    pub async fn start(api_key: &str, secret: &str) -> Self {
        let state = Arc::new(Mutex::new(Sim {
            api_key: api_key.into(),
            secret: secret.into(),
            prices: HashMap::from([("BTCUSDT".into(), 64_000.0)]),
            ..Sim::default()
        }));
        let app = axum::Router::new()
            .route("/fapi/v1/time", get(time))
            .route("/fapi/v1/exchangeInfo", get(exchange_info))
            .route("/fapi/v1/leverage", post(leverage))
            .route("/fapi/v2/account", get(account))
            .route("/fapi/v1/order", get(order).post(order))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self {
            url: format!("http://{addr}"),
            state,
        }
    }

    /// Queues faults for the next order requests, in order.
    pub fn fault(&self, faults: impl IntoIterator<Item = Fault>) {
        self.state.lock().unwrap().faults.extend(faults);
    }

    pub fn set_skew(&self, ms: i64) {
        self.state.lock().unwrap().skew_ms = ms;
    }

    pub fn set_price(&self, symbol: &str, price: f64) {
        self.state
            .lock()
            .unwrap()
            .prices
            .insert(symbol.into(), price);
    }

    /// The orders taken, oldest first.
    pub fn orders(&self) -> Vec<SimOrder> {
        self.state.lock().unwrap().orders.clone()
    }

    /// The order requests that arrived, taken or not.
    pub fn order_requests(&self) -> usize {
        self.state.lock().unwrap().order_requests
    }

    pub fn position(&self, symbol: &str) -> f64 {
        *self
            .state
            .lock()
            .unwrap()
            .positions
            .get(symbol)
            .unwrap_or(&0.0)
    }

    pub fn leverage(&self, symbol: &str) -> Option<u32> {
        self.state.lock().unwrap().leverage.get(symbol).copied()
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
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
    let skew = sim.lock().unwrap().skew_ms;
    axum::Json(json!({"serverTime": now_ms() + skew})).into_response()
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
    let server = now_ms() + sim.skew_ms;
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

/// The answer Binance gives for an order.
fn answer(o: &SimOrder) -> Value {
    json!({
        "orderId": o.order_id, "clientOrderId": o.client_order_id, "symbol": o.symbol,
        "side": o.side, "type": "MARKET", "status": "FILLED", "reduceOnly": o.reduce_only,
        "origQty": o.quantity, "executedQty": o.quantity, "avgPrice": o.price.to_string(),
        "cumQuote": (o.quantity.parse::<f64>().unwrap() * o.price).to_string(),
        "positionSide": "BOTH", "updateTime": now_ms()
    })
}

/// Whether `id` is a client order id Binance takes: `^[.A-Z:/a-z0-9_-]{1,36}$`.
fn valid_client_id(id: &str) -> bool {
    (1..=36).contains(&id.len())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".:/_-".contains(c))
}

async fn order(
    State(state): State<Arc<Mutex<Sim>>>,
    method: Method,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    body: String,
) -> Response {
    let (outcome, fault) = {
        let mut sim = state.lock().unwrap();
        let params = match signed(&sim, &headers, query, &body) {
            Ok(p) => p,
            Err(e) => return e.into_response(),
        };
        if method == Method::GET {
            let id = params.get("origClientOrderId").cloned().unwrap_or_default();
            return match sim.orders.iter().find(|o| o.client_order_id == id) {
                Some(o) => axum::Json(answer(o)).into_response(),
                None => {
                    error(StatusCode::BAD_REQUEST, -2013, "Order does not exist.").into_response()
                }
            };
        }
        sim.order_requests += 1;
        let fault = sim.faults.pop_front();
        match fault {
            Some(Fault::LostBeforeAccept(_)) => (None, fault),
            Some(Fault::InsufficientMargin) => {
                return error(StatusCode::BAD_REQUEST, -2019, "Margin is insufficient.")
                    .into_response();
            }
            _ => (Some(take(&mut sim, &params)), fault),
        }
    };
    let Some(outcome) = outcome else {
        if let Some(Fault::LostBeforeAccept(d)) = fault {
            tokio::time::sleep(d).await;
        }
        std::panic::resume_unwind(Box::new("the request is lost"));
    };
    let taken = match outcome {
        Ok(o) => o,
        Err(e) => return e.into_response(),
    };
    match fault {
        Some(Fault::HangAfterAccept(d)) => {
            tokio::time::sleep(d).await;
            axum::Json(answer(&taken)).into_response()
        }
        Some(Fault::UnavailableAfterAccept) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            -1000,
            "Unknown error, please check your request or try again later.",
        )
        .into_response(),
        // Unwinding out of the handler closes the connection without an answer (and with
        // no panic message: resume_unwind skips the hook).
        Some(Fault::DropAfterAccept) => std::panic::resume_unwind(Box::new("the answer is lost")),
        _ => axum::Json(answer(&taken)).into_response(),
    }
}

/// Takes and fills a market order, as Binance checks it.
fn take(sim: &mut Sim, params: &HashMap<String, String>) -> Result<SimOrder, Refusal> {
    let symbol = params.get("symbol").cloned().unwrap_or_default();
    let Some(price) = sim.prices.get(&symbol).copied() else {
        return Err(error(StatusCode::BAD_REQUEST, -1121, "Invalid symbol."));
    };
    let id = params.get("newClientOrderId").cloned().unwrap_or_default();
    if !valid_client_id(&id) {
        return Err(error(
            StatusCode::BAD_REQUEST,
            -1100,
            "Illegal characters found in parameter 'newClientOrderId'.",
        ));
    }
    if sim.orders.iter().any(|o| o.client_order_id == id) {
        return Err(error(
            StatusCode::BAD_REQUEST,
            -4116,
            "ClientOrderId is duplicated.",
        ));
    }
    if params.get("type").map(String::as_str) != Some("MARKET") {
        return Err(error(StatusCode::BAD_REQUEST, -1116, "Invalid orderType."));
    }
    let quantity_text = params.get("quantity").cloned().unwrap_or_default();
    let quantity: f64 = quantity_text.parse().unwrap_or(0.0);
    let steps = quantity / 0.001;
    if quantity < 0.001 || (steps - steps.round()).abs() > 1e-6 {
        return Err(error(
            StatusCode::BAD_REQUEST,
            -1111,
            "Precision is over the maximum defined for this asset.",
        ));
    }
    let side = params.get("side").cloned().unwrap_or_default();
    let sign = if side == "BUY" { 1.0 } else { -1.0 };
    let reduce_only = params.get("reduceOnly").map(String::as_str) == Some("true");
    let held = *sim.positions.get(&symbol).unwrap_or(&0.0);
    if reduce_only && (held * sign >= 0.0 || quantity > held.abs() + 1e-9) {
        return Err(error(
            StatusCode::BAD_REQUEST,
            -2022,
            "ReduceOnly Order is rejected.",
        ));
    }
    sim.positions.insert(symbol.clone(), held + sign * quantity);
    let order = SimOrder {
        order_id: 8_389_765_000 + sim.orders.len() as u64,
        client_order_id: id,
        symbol,
        side,
        quantity: quantity_text,
        reduce_only,
        price,
    };
    sim.orders.push(order.clone());
    Ok(order)
}
