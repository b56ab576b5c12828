//! Freqtrade bots as order destinations, against real Freqtrade processes (from PyPI, by
//! `.ci/freqtrade`) in dry-run. Their market data comes from a local server that answers
//! what ccxt asks of Binance from a recorded file (`tests/fixtures/freqtrade`), the bots'
//! `ccxt_config` pointing Binance's API addresses at it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::helpers::{TestApp, alert, settled_orders, spawn_app, tradingview_source};

pub(crate) const USER: &str = "hub";
pub(crate) const PASSWORD: &str = "a-long-api-password";

/// The Freqtrade executable, installed on first use.
fn freqtrade() -> &'static Path {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join(".ci/freqtrade");
        let out = Command::new(&script)
            .stderr(Stdio::inherit())
            .output()
            .expect(".ci/freqtrade runs");
        assert!(
            out.status.success(),
            ".ci/freqtrade could not install Freqtrade from PyPI"
        );
        PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
    })
}

/// The recorded market data, by path under `/api/v3/`.
fn recorded() -> Value {
    let file =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/freqtrade/binance_spot.json");
    serde_json::from_slice(&std::fs::read(file).unwrap()).unwrap()
}

/// A server of the recorded market data; its address.
pub(crate) async fn market() -> SocketAddr {
    serve(
        axum::Router::new()
            .fallback(answer)
            .with_state(Arc::new(recorded())),
    )
    .await
}

/// Serves the recorded answers, the klines moved so that the last one is the present
/// candle.
async fn answer(State(data): State<Arc<Value>>, request: Request) -> Response {
    let now = tradehook::domain::now_ms();
    let path = request.uri().path().trim_start_matches("/api/v3/");
    let answer = match path {
        "klines" => {
            let candles = data["klines"].as_array().unwrap();
            let last = candles.last().unwrap()[0].as_i64().unwrap();
            let shift = (now / 300_000 * 300_000) - last;
            let moved: Vec<Value> = candles
                .iter()
                .map(|c| {
                    let mut c = c.clone();
                    c[0] = json!(c[0].as_i64().unwrap() + shift);
                    c[6] = json!(c[6].as_i64().unwrap() + shift);
                    c
                })
                .collect();
            Value::Array(moved)
        }
        "time" => json!({"serverTime": now}),
        other => match data.get(other) {
            Some(v) => v.clone(),
            None => return (axum::http::StatusCode::NOT_FOUND, "not recorded").into_response(),
        },
    };
    axum::Json(answer).into_response()
}

async fn serve(router: axum::Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    addr
}

/// A port nobody listens on yet, for a bot's API server.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A Freqtrade bot in dry-run, stopped when dropped.
pub(crate) struct Bot {
    child: Child,
    pub(crate) url: String,
    dir: tempfile::TempDir,
}

impl Bot {
    /// Starts a bot on the market at `market`; `force_entry` is its `force_entry_enable`.
    pub(crate) fn start(market: SocketAddr, force_entry: bool) -> Bot {
        let dir = tempfile::tempdir().unwrap();
        let strategies = dir.path().join("strategies");
        std::fs::create_dir_all(&strategies).unwrap();
        std::fs::create_dir_all(dir.path().join("user_data/data")).unwrap();
        std::fs::copy(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/freqtrade/idle_strategy.py"),
            strategies.join("idle_strategy.py"),
        )
        .unwrap();
        let port = free_port();
        let api = |v: &str| format!("http://{market}/api/{v}");
        let config = json!({
            "bot_name": "hub-test",
            "max_open_trades": 3,
            "stake_currency": "USDT",
            "stake_amount": 100,
            "dry_run": true,
            "dry_run_wallet": 1000,
            "trading_mode": "spot",
            "timeframe": "5m",
            "force_entry_enable": force_entry,
            "initial_state": "running",
            "internals": {"process_throttle_secs": 5},
            "exchange": {
                "name": "binance", "key": "", "secret": "",
                "pair_whitelist": ["BTC/USDT"],
                "ccxt_config": {
                    "urls": {"api": {"public": api("v3"), "private": api("v3"),
                                     "v1": api("v1"), "sapi": format!("http://{market}/sapi/v1")}},
                    "options": {"fetchMarkets": {"types": ["spot"]}}
                }
            },
            "pairlists": [{"method": "StaticPairList"}],
            "entry_pricing": {"price_side": "same", "use_order_book": false},
            "exit_pricing": {"price_side": "same", "use_order_book": false},
            "api_server": {
                "enabled": true, "listen_ip_address": "127.0.0.1", "listen_port": port,
                "username": USER, "password": PASSWORD,
                "jwt_secret_key": "0123456789abcdef0123456789abcdef", "ws_token": "unused-token"
            },
            "strategy": "Idle",
            "strategy_path": strategies,
            "user_data_dir": dir.path().join("user_data"),
            "datadir": dir.path().join("user_data/data"),
            "db_url": format!("sqlite:///{}", dir.path().join("trades.sqlite").display()),
        });
        let file = dir.path().join("config.json");
        std::fs::write(&file, config.to_string()).unwrap();
        let log = std::fs::File::create(dir.path().join("freqtrade.log")).unwrap();
        let child = Command::new(freqtrade())
            .arg("trade")
            .arg("-c")
            .arg(&file)
            .current_dir(dir.path())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("freqtrade starts");
        Bot {
            child,
            url: format!("http://127.0.0.1:{port}"),
            dir,
        }
    }

    /// Waits until the bot's API answers and the bot is running.
    pub(crate) async fn ready(&mut self) {
        let client = tradehook::app::http_client().unwrap();
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("freqtrade stopped ({status}):\n{}", self.log());
            }
            let answer = client
                .get(format!("{}/api/v1/show_config", self.url))
                .basic_auth(USER, Some(PASSWORD))
                .send()
                .await;
            if let Ok(answer) = answer
                && let Ok(body) = answer.bytes().await
                && let Ok(config) = serde_json::from_slice::<Value>(&body)
                && config["state"] == "running"
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "freqtrade did not start within 180 s:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn log(&self) -> String {
        let text =
            std::fs::read_to_string(self.dir.path().join("freqtrade.log")).unwrap_or_default();
        text.lines()
            .rev()
            .take(40)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// A GET of the bot's own API, as its owner would make it.
    pub(crate) async fn get(&self, path: &str) -> Value {
        let answer = tradehook::app::http_client()
            .unwrap()
            .get(format!("{}{path}", self.url))
            .basic_auth(USER, Some(PASSWORD))
            .send()
            .await
            .unwrap();
        serde_json::from_slice(&answer.bytes().await.unwrap()).unwrap()
    }
}

impl Drop for Bot {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A proxy in front of a bot that counts the entries it passes and can hold the answer of
/// the next ones past the hub's timeout: the bot enters, the hub never hears it.
#[derive(Clone)]
pub(crate) struct Proxy {
    upstream: String,
    client: reqwest::Client,
    pub(crate) entries: Arc<AtomicUsize>,
    /// Reads of the bot's trades: how the hub looks an order up.
    lookups: Arc<AtomicUsize>,
    hold_ms: Arc<AtomicU64>,
}

async fn forward(State(proxy): State<Proxy>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, 1 << 20).await.unwrap();
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let entry = path == "/api/v1/forceenter";
    if path.starts_with("/api/v1/status") || path.starts_with("/api/v1/trades") {
        proxy.lookups.fetch_add(1, Ordering::SeqCst);
    }
    let mut upstream = proxy
        .client
        .request(parts.method.clone(), format!("{}{path}", proxy.upstream))
        .body(body);
    for name in ["authorization", "content-type"] {
        if let Some(v) = parts.headers.get(name) {
            upstream = upstream.header(name, v);
        }
    }
    let answer = upstream.send().await.unwrap();
    let status = answer.status();
    let bytes = answer.bytes().await.unwrap();
    if entry {
        proxy.entries.fetch_add(1, Ordering::SeqCst);
        let hold = proxy.hold_ms.swap(0, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(hold)).await;
    }
    (
        status,
        [("content-type", "application/json")],
        bytes.to_vec(),
    )
        .into_response()
}

impl Proxy {
    pub(crate) async fn start(upstream: &str) -> (Proxy, String) {
        let proxy = Proxy {
            upstream: upstream.to_owned(),
            client: tradehook::app::http_client().unwrap(),
            entries: Arc::default(),
            lookups: Arc::default(),
            hold_ms: Arc::default(),
        };
        let router = axum::Router::new()
            .fallback(forward)
            .with_state(proxy.clone());
        let addr = serve(router).await;
        (proxy, format!("http://{addr}"))
    }
}

async fn account(app: &TestApp, name: &str, url: &str, password: &str) -> crate::helpers::Reply {
    app.post(
        "/api/v1/accounts",
        &json!({"name": name, "venue": "freqtrade", "url": url, "api_key": USER,
                "api_secret": password, "timeout_ms": 1000}),
    )
    .await
}

/// A TradingView source and an order destination on `account` trading BTC/USDT for 100
/// USDT an entry; returns the ingest path.
async fn destination(app: &TestApp, account: &str) -> String {
    let reply = app
        .post(
            "/api/v1/endpoints",
            &json!({"url": format!("account:{account}"), "event_types": ["entry", "exit"],
                    "ordering": "pair", "retry_schedule": vec![0.2; 40],
                    "orders": {"symbols": {"BINANCE:BTCUSDT": "BTC/USDT"},
                               "size": {"quote": 100}}}),
        )
        .await;
    assert_eq!(reply.status, 201, "{}", reply.text);
    tradingview_source(app, &format!("tv-{account}")).await
}

#[tokio::test]
async fn a_freqtrade_bot_in_dry_run_enters_and_exits_on_signals_through_its_api() {
    let market = market().await;
    // Two bots start at once: one takes forced entries, one has them off.
    let mut bot = Bot::start(market, true);
    let mut closed = Bot::start(market, false);
    bot.ready().await;
    closed.ready().await;
    let (proxy, proxied) = Proxy::start(&bot.url).await;
    let app = spawn_app().await;

    // The account: the bot's API user; checked with read-only calls.
    let created = account(&app, "ft", &proxied, PASSWORD).await;
    assert_eq!(created.status, 201, "{}", created.text);
    assert_eq!(created.json()["live"], false);
    assert!(!created.text.contains(PASSWORD));
    let check = app
        .post("/api/v1/accounts/ft/check", &json!({}))
        .await
        .json();
    assert_eq!(check["ok"], true, "{check}");
    assert_eq!(check["currency"], "USDT");
    assert_eq!(check["balance"], 1000.0, "{check}");
    // A wrong password, and a bot that refuses forced entries: each said plainly.
    account(&app, "wrong", &bot.url, "not-the-password").await;
    let check = app
        .post("/api/v1/accounts/wrong/check", &json!({}))
        .await
        .json();
    assert_eq!(check["ok"], false, "{check}");
    assert_eq!(check["error"]["code"], "bad_api_key", "{check}");
    account(&app, "off", &closed.url, PASSWORD).await;
    let check = app
        .post("/api/v1/accounts/off/check", &json!({}))
        .await
        .json();
    assert_eq!(check["ok"], false, "{check}");
    assert_eq!(check["error"]["code"], "force_entry_disabled", "{check}");
    let detail = check["error"]["detail"].as_str().unwrap();
    assert!(detail.contains("\"force_entry_enable\": true"), "{detail}");

    // An entry whose answer is held past the hub's timeout: the bot entered, the hub did
    // not hear it, and finds the trade by its entry tag instead of entering again. The
    // alert sent three times is one trade.
    let path = destination(&app, "ft").await;
    proxy.hold_ms.store(3_000, Ordering::SeqCst);
    let entry = json!({"ticker": "BINANCE:BTCUSDT", "action": "buy", "price": "64000",
                       "client_ref": "ft-1"});
    for _ in 0..3 {
        alert(&app, &path, entry.clone()).await;
    }
    let orders = settled_orders(&app, "ft", 1).await;
    let opened = &orders[0];
    assert_eq!(opened["status"], "filled", "{opened}");
    assert_eq!(proxy.entries.load(Ordering::SeqCst), 1, "entered once");
    assert!(
        proxy.lookups.load(Ordering::SeqCst) > 0,
        "the unanswered entry was looked up"
    );
    let trades = bot.get("/api/v1/status").await;
    assert_eq!(trades.as_array().unwrap().len(), 1, "{trades}");
    let trade = &trades[0];
    assert_eq!(trade["enter_tag"], opened["client_order_id"]);
    assert_eq!(trade["pair"], "BTC/USDT");
    // 100 USDT at the signal's price, floored by Freqtrade to its step; filled at the
    // recorded book's ask.
    assert_eq!(opened["fill"]["quantity"], trade["amount"], "{opened}");
    assert_eq!(opened["fill"]["price"], 64010.0, "{opened}");
    let book = app.get("/api/v1/accounts/ft/positions").await.json();
    assert_eq!(book["positions"][0]["size"], trade["amount"], "{book}");

    // The exit closes the bot's trade, reduce-only.
    alert(
        &app,
        &path,
        json!({"ticker": "BINANCE:BTCUSDT", "action": "sell", "market_position": "flat",
               "price": "64000", "client_ref": "ft-2"}),
    )
    .await;
    let orders = settled_orders(&app, "ft", 2).await;
    let exit = &orders[0];
    assert_eq!(exit["status"], "filled", "{exit}");
    assert_eq!(exit["request"]["reduce_only"], true);
    assert_eq!(bot.get("/api/v1/status").await, json!([]));
    let history = bot.get("/api/v1/trades").await;
    assert_eq!(
        history["trades"][0]["exit_reason"], "force_exit",
        "{history}"
    );
    let book = app.get("/api/v1/accounts/ft/positions").await.json();
    assert_eq!(book["positions"], json!([]));

    // A bot keeps its own stop-loss: a destination with brackets opens nothing on it.
    let route = app.get("/api/v1/endpoints").await.json()["data"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let changed = app
        .send(
            "PATCH",
            &format!("/api/v1/endpoints/{route}"),
            Some(
                &json!({"orders": {"symbols": {"BINANCE:BTCUSDT": "BTC/USDT"},
                                    "size": {"quote": 100},
                                    "brackets": {"stop_loss_percent": 2}}}),
            ),
        )
        .await;
    assert_eq!(changed.status, 200, "{}", changed.text);
    alert(
        &app,
        &path,
        json!({"ticker": "BINANCE:BTCUSDT", "action": "buy", "price": "64000",
               "client_ref": "ft-3"}),
    )
    .await;
    let orders = settled_orders(&app, "ft", 3).await;
    assert_eq!(orders[0]["status"], "blocked", "{}", orders[0]);
    assert_eq!(orders[0]["reason"]["code"], "brackets_unsupported");
    assert_eq!(proxy.entries.load(Ordering::SeqCst), 1, "nothing entered");

    // The bot with forced entries off: the order is rejected with why, nothing entered.
    let off = destination(&app, "off").await;
    alert(
        &app,
        &off,
        json!({"ticker": "BINANCE:BTCUSDT", "action": "buy", "price": "64000",
                             "client_ref": "off-1"}),
    )
    .await;
    let orders = settled_orders(&app, "off", 1).await;
    assert_eq!(orders[0]["status"], "rejected", "{}", orders[0]);
    assert_eq!(orders[0]["reason"]["code"], "force_entry_disabled");
    assert_eq!(closed.get("/api/v1/status").await, json!([]));
}
