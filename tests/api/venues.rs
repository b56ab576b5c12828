//! Exchange accounts over real HTTP, against a local simulator of Binance USDⓈ-M futures:
//! keys write-only, testnet unless live is set, each signal one signed order under its
//! intent's client order id, and an order whose outcome is unknown looked up, never sent
//! twice.

use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{
    TestApp, TestReceiver, alert, eventually, eventually_or, settled_orders, spawn_app,
    tradingview_source,
};
use crate::venue_sim::{self, Fault, VenueSim};

pub(crate) const KEY: &str = "vmPUZE6mv9SD5VNHk4HlWFsOr6aKE2zvsw0MuIgwCIPy6utIco14y7Ju91duEh8A";
pub(crate) const SECRET: &str = "NhqPtmdSJYdKjVHjA7PZj4Mge3R5YNiP1e3UZjInClVN65XAbvqqM6A7H5fATj0j";

/// The exchanges with a simulator.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Exchange {
    Binance,
    Bybit,
    Okx,
}

const EXCHANGES: [Exchange; 3] = [Exchange::Binance, Exchange::Bybit, Exchange::Okx];

/// The passphrase of the OKX key.
pub(crate) const PASSPHRASE: &str = "correct horse battery staple";

impl Exchange {
    fn venue(self) -> &'static str {
        match self {
            Exchange::Binance => "binance_usdm",
            Exchange::Bybit => "bybit",
            Exchange::Okx => "okx",
        }
    }

    /// What an account on it needs beyond a key and its secret.
    fn account(self) -> Value {
        match self {
            Exchange::Okx => json!({"passphrase": PASSPHRASE}),
            _ => json!({}),
        }
    }

    /// The venue's client order id of the journal's `id`: OKX takes letters and digits only.
    fn client_id(self, id: &Value) -> String {
        let id = id.as_str().unwrap();
        match self {
            Exchange::Okx => tradehook::exchange::okx::client_id(id),
            _ => id.to_owned(),
        }
    }

    /// What an entry of 0.0129 BTC becomes, as the venue writes it and in BTC: floored to a
    /// step of 0.001 BTC, or to OKX's lot of 0.01 contracts of 0.01 BTC.
    fn entry(self) -> (&'static str, f64) {
        match self {
            Exchange::Okx => ("1.29", 0.0129),
            _ => ("0.012", 0.012),
        }
    }

    async fn sim(self) -> VenueSim {
        match self {
            Exchange::Binance => venue_sim::binance(KEY, SECRET).await,
            Exchange::Bybit => venue_sim::bybit(KEY, SECRET).await,
            Exchange::Okx => venue_sim::okx(KEY, SECRET, PASSPHRASE).await,
        }
    }

    /// How the venue refuses an order for want of margin, as the journal quotes it.
    fn no_margin(self) -> &'static str {
        match self {
            Exchange::Binance => "Binance -2019: Margin is insufficient.",
            Exchange::Bybit => "Bybit 110007: ab not enough for new order",
            Exchange::Okx => "OKX 51008: Order failed. Insufficient USDT margin in account",
        }
    }
}

/// An account on `exchange`'s simulator `sim` (changed by `extra`), an order destination trading BTC on it
/// whose deliveries retry every 0.2 s, and a TradingView source; returns the ingest path.
async fn set_up(
    app: &TestApp,
    exchange: Exchange,
    sim: &VenueSim,
    extra: Value,
    size: Value,
) -> String {
    let mut account = json!({"name": "bn", "venue": exchange.venue(), "api_key": KEY,
                             "api_secret": SECRET, "base_url": sim.url, "timeout_ms": 1000});
    for (k, v) in exchange
        .account()
        .as_object()
        .unwrap()
        .iter()
        .chain(extra.as_object().unwrap())
    {
        account[k] = v.clone();
    }
    let reply = app.post("/api/v1/accounts", &account).await;
    assert_eq!(reply.status, 201, "{}", reply.text);
    let reply = app
        .post(
            "/api/v1/endpoints",
            &json!({"url": "account:bn", "event_types": ["entry", "exit"], "ordering": "pair",
                    "retry_schedule": vec![0.2; 40],
                    "orders": {"symbols": {"BINANCE:BTCUSDT.P": "BTC/USDT:USDT"},
                               "size": size, "leverage": 3}}),
        )
        .await;
    assert_eq!(reply.status, 201, "{}", reply.text);
    tradingview_source(app, "tv").await
}

/// Changes the order destination `set_up` made.
async fn change_destination(app: &TestApp, change: Value) {
    let destination = app.get("/api/v1/endpoints").await.json()["data"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let changed = app
        .send(
            "PATCH",
            &format!("/api/v1/endpoints/{destination}"),
            Some(&change),
        )
        .await;
    assert_eq!(changed.status, 200, "{}", changed.text);
}

fn entry(reference: &str) -> Value {
    json!({"ticker": "BINANCE:BTCUSDT.P", "action": "buy", "price": "64000",
           "client_ref": reference})
}

/// A strategy's alert that closes its long at `price`.
fn exit(reference: &str, price: &str) -> Value {
    json!({"ticker": "BINANCE:BTCUSDT.P", "action": "sell", "market_position": "flat",
           "price": price, "client_ref": reference})
}

#[tokio::test]
async fn an_exchange_account_starts_on_testnet_and_its_key_is_write_only() {
    let app = spawn_app().await;
    let reply = app
        .post(
            "/api/v1/accounts",
            &json!({"name": "bn", "venue": "binance_usdm", "api_key": KEY, "api_secret": SECRET}),
        )
        .await;
    assert_eq!(reply.status, 201, "{}", reply.text);
    assert!(!reply.text.contains(SECRET) && !reply.text.contains(KEY));
    let account = reply.json();
    assert_eq!(account["live"], false);
    assert_eq!(
        account["exchange"],
        json!({"api_key": "…Eh8A", "base_url": "https://testnet.binancefuture.com",
               "recv_window_ms": 5000, "timeout_ms": 10000, "position_mode": "one_way"})
    );
    // Paper accounts say live: false too.
    let paper = app
        .post("/api/v1/accounts", &json!({"name": "paper"}))
        .await
        .json();
    assert_eq!(paper["live"], false);
    for listed in [
        app.get("/api/v1/accounts").await,
        app.get("/api/v1/accounts/bn").await,
    ] {
        assert!(!listed.text.contains(SECRET) && !listed.text.contains(KEY));
    }
    // Sealed at rest: neither the key nor its secret is in the database file.
    let file = std::fs::read(&app.db_path).unwrap();
    let text = String::from_utf8_lossy(&file);
    assert!(!text.contains(SECRET) && !text.contains(KEY));

    // Real money only when asked for, and it shows.
    let live = app
        .send("PATCH", "/api/v1/accounts/bn", Some(&json!({"live": true})))
        .await;
    assert_eq!(live.status, 200, "{}", live.text);
    assert_eq!(live.json()["live"], true);
    assert_eq!(
        live.json()["exchange"]["base_url"],
        "https://fapi.binance.com"
    );

    // What is wrong is said field by field, and nothing is stored.
    for (body, field) in [
        (
            json!({"name": "x1", "venue": "binance_usdm", "api_key": KEY}),
            "api_secret",
        ),
        (json!({"name": "x2", "api_key": KEY}), "api_key"),
        (
            json!({"name": "x3", "venue": "binance_usdm", "api_key": KEY, "api_secret": SECRET,
                   "base_url": "http://example.com"}),
            "base_url",
        ),
        (
            json!({"name": "x4", "venue": "binance_usdm", "api_key": KEY, "api_secret": SECRET,
                   "recv_window_ms": 90000}),
            "recv_window_ms",
        ),
        (
            json!({"name": "x5", "venue": "okx", "api_key": KEY, "api_secret": SECRET}),
            "passphrase",
        ),
        (
            json!({"name": "x6", "venue": "bybit", "api_key": KEY, "api_secret": SECRET,
                   "passphrase": PASSPHRASE}),
            "passphrase",
        ),
    ] {
        let reply = app.post("/api/v1/accounts", &body).await;
        assert_eq!(reply.status, 422, "{body}: {}", reply.text);
        assert!(reply.text.contains(field), "{field}: {}", reply.text);
        assert!(!reply.text.contains(SECRET), "{}", reply.text);
    }
    let half = app
        .send(
            "PATCH",
            "/api/v1/accounts/bn",
            Some(&json!({"api_key": "new"})),
        )
        .await;
    assert_eq!(half.status, 422, "{}", half.text);
    let names: Vec<Value> = app.get("/api/v1/accounts").await.json()["data"]
        .as_array()
        .map(|a| a.iter().map(|a| a["name"].clone()).collect())
        .unwrap_or_default();
    assert_eq!(names, [json!("bn"), json!("paper")]);
}

#[tokio::test]
async fn an_alert_becomes_one_signed_order_on_the_exchange_and_its_exit_is_reduce_only() {
    for exchange in EXCHANGES {
        let sim = exchange.sim().await;
        let app = spawn_app().await;
        let path = set_up(&app, exchange, &sim, json!({}), json!({"base": 0.0129})).await;
        let chat = TestReceiver::start().await;
        app.create_endpoint(
            json!({"url": chat.url, "event_types": ["order.*", "position.closed"]}),
        )
        .await;
        // An exit that comes before any entry opens nothing the other way, and nothing is
        // sent.
        alert(&app, &path, exit("b-0", "64000")).await;
        let early = settled_orders(&app, "bn", 1).await;
        assert_eq!(early[0]["status"], "skipped", "{exchange:?}: {}", early[0]);
        assert_eq!(early[0]["reason"]["code"], "no_position");
        assert_eq!(sim.order_requests(), 0, "{exchange:?}");
        // TradingView sends again on a 5xx: the same alert three times, one order.
        for _ in 0..3 {
            alert(&app, &path, entry("b-1")).await;
        }
        let orders = settled_orders(&app, "bn", 2).await;
        let opened = &orders[0];
        assert_eq!(opened["status"], "filled", "{opened}");
        let taken = sim.orders();
        assert_eq!(taken.len(), 1);
        assert_eq!(
            taken[0].client_order_id,
            exchange.client_id(&opened["client_order_id"])
        );
        assert_eq!(
            (
                taken[0].side.as_str(),
                taken[0].quantity.as_str(),
                taken[0].reduce_only
            ),
            ("BUY", exchange.entry().0, false),
            "floored to the venue's step"
        );
        assert_eq!(
            sim.leverage("BTCUSDT"),
            Some(3),
            "the destination's leverage"
        );
        // Not live: OKX's demo trading, which is the same address with a header.
        let demo = (exchange == Exchange::Okx).then_some(true);
        assert_eq!(sim.demo(), demo, "{exchange:?}");
        let size = exchange.entry().1;
        let near = |v: &Value, x: f64| (v.as_f64().unwrap() - x).abs() < 1e-9;
        assert!(near(&opened["fill"]["quantity"], size), "{opened}");
        assert_eq!(opened["fill"]["price"], 64000.0);
        // The fee each venue charged: Bybit and OKX say it with the order, Binance in the
        // order's trades.
        let fee = opened["fill"]["fee"].as_f64().unwrap();
        let notional = size * 64000.0;
        let rate = match exchange {
            Exchange::Bybit => 0.00055,
            _ => 0.0005,
        };
        assert!(
            (fee - notional * rate).abs() < 1e-6,
            "{exchange:?}: fee {fee}"
        );
        let book = app.get("/api/v1/accounts/bn/positions").await.json();
        assert!(near(&book["positions"][0]["size"], size), "{book}");

        sim.set_price("BTCUSDT", 65_000.0);
        alert(&app, &path, exit("b-2", "65000")).await;
        let orders = settled_orders(&app, "bn", 3).await;
        let exit = &orders[0];
        assert_eq!(exit["status"], "filled", "{exit}");
        assert_eq!(exit["request"]["reduce_only"], true);
        let taken = sim.orders();
        assert_eq!(taken.len(), 2);
        assert_eq!(
            (
                taken[1].side.as_str(),
                taken[1].quantity.as_str(),
                taken[1].reduce_only
            ),
            ("SELL", exchange.entry().0, true)
        );
        assert!(sim.position("BTCUSDT").abs() < 1e-12, "{exchange:?}: flat");
        let realized = exit["fill"]["realized_pnl"].as_f64().unwrap();
        assert!((realized - size * 1000.0).abs() < 1e-6, "{realized}");
        let book = app.get("/api/v1/accounts/bn/positions").await.json();
        assert_eq!(book["positions"], json!([]));
        let heard = chat.wait_for(3).await;
        let mut kinds: Vec<String> = heard
            .iter()
            .map(|r| r.json()["type"].as_str().unwrap().to_owned())
            .collect();
        kinds.sort();
        assert_eq!(kinds, ["order.filled", "order.filled", "position.closed"]);
    }
}

/// The order reached the venue and the answer did not reach the hub: a timeout, a 503 that
/// Binance documents as "execution status unknown", and a dropped connection. Each time the
/// hub asks the venue for the client order id and takes that order: one order, filled.
#[tokio::test]
async fn an_order_whose_answer_is_lost_is_looked_up_and_never_sent_twice() {
    for exchange in EXCHANGES {
        for fault in [
            Fault::HangAfterAccept(Duration::from_secs(3)),
            Fault::UnavailableAfterAccept,
            Fault::DropAfterAccept,
        ] {
            let sim = exchange.sim().await;
            let app = spawn_app().await;
            let path = set_up(&app, exchange, &sim, json!({}), json!({"base": 0.01})).await;
            sim.fault([fault]);
            alert(&app, &path, entry("lost-1")).await;
            let orders = settled_orders(&app, "bn", 1).await;
            assert_eq!(
                orders[0]["status"], "filled",
                "{exchange:?} {fault:?}: {}",
                orders[0]
            );
            assert_eq!(sim.order_requests(), 1, "{exchange:?} {fault:?}: sent once");
            assert_eq!(sim.orders().len(), 1, "{exchange:?} {fault:?}");
            assert_eq!(
                sim.orders()[0].client_order_id,
                exchange.client_id(&orders[0]["client_order_id"])
            );
            let book = app.get("/api/v1/accounts/bn/positions").await.json();
            assert_eq!(book["positions"][0]["size"], 0.01, "{exchange:?} {fault:?}");
        }
    }
}

/// The request never reached the venue. The venue does not know the order, but the hub
/// cannot tell a lost request from a slow one until the venue's receive window has passed:
/// only then is it sent again, under the same client order id.
#[tokio::test]
async fn an_order_the_venue_never_received_is_sent_again_only_after_its_window() {
    for exchange in EXCHANGES {
        let sim = exchange.sim().await;
        let app = spawn_app().await;
        let path = set_up(
            &app,
            exchange,
            &sim,
            json!({"recv_window_ms": 1000, "timeout_ms": 500}),
            json!({"base": 0.01}),
        )
        .await;
        sim.fault([Fault::LostBeforeAccept(Duration::from_millis(700))]);
        alert(&app, &path, entry("gone-1")).await;
        // While the window runs, the journal says the outcome is not known yet.
        let waiting = eventually(|| async {
            let orders = app.get("/api/v1/accounts/bn/orders").await.json();
            orders[0]["reason"]["code"]
                .as_str()
                .filter(|c| *c == "outcome_unknown")
                .map(|_| orders[0].clone())
        })
        .await;
        assert_eq!(waiting["status"], "intent");
        let sent_at = std::time::Instant::now();
        let orders = settled_orders(&app, "bn", 1).await;
        assert_eq!(orders[0]["status"], "filled", "{}", orders[0]);
        assert_eq!(sim.order_requests(), 2, "the lost request and one more");
        assert_eq!(sim.orders().len(), 1);
        // 1 s of window, 2 × 0.5 s of request time and 1 s for clocks after the stamp.
        assert!(
            sent_at.elapsed() >= Duration::from_millis(1500),
            "sent again too early: {:?}",
            sent_at.elapsed()
        );
    }
}

#[tokio::test]
async fn a_venue_refusal_is_journalled_with_the_venues_code_and_nothing_retries_it() {
    for exchange in EXCHANGES {
        let sim = exchange.sim().await;
        let app = spawn_app().await;
        let path = set_up(&app, exchange, &sim, json!({}), json!({"base": 0.01})).await;
        let chat = TestReceiver::start().await;
        app.create_endpoint(json!({"url": chat.url, "event_types": ["order.rejected"]}))
            .await;
        sim.fault([Fault::InsufficientMargin]);
        alert(&app, &path, entry("poor-1")).await;
        let orders = settled_orders(&app, "bn", 1).await;
        assert_eq!(orders[0]["status"], "rejected");
        assert_eq!(orders[0]["reason"]["code"], "insufficient_margin");
        assert_eq!(orders[0]["reason"]["detail"], exchange.no_margin());
        let heard = chat.wait_for(1).await;
        assert_eq!(
            heard[0].json()["data"]["reason"]["code"],
            "insufficient_margin"
        );
        assert_eq!(sim.order_requests(), 1);
        assert_eq!(sim.orders().len(), 0);
    }
}

#[tokio::test]
async fn an_order_below_the_venues_minimum_is_refused_before_it_is_sent() {
    for exchange in EXCHANGES {
        let sim = exchange.sim().await;
        let app = spawn_app().await;
        let path = set_up(&app, exchange, &sim, json!({}), json!({"base": 0.00004})).await;
        alert(&app, &path, entry("tiny-1")).await;
        let orders = settled_orders(&app, "bn", 1).await;
        assert_eq!(orders[0]["status"], "rejected");
        assert_eq!(orders[0]["reason"]["code"], "min_quantity", "{}", orders[0]);
        assert_eq!(sim.order_requests(), 0, "nothing sent");
    }
}

#[tokio::test]
async fn a_skewed_clock_is_corrected_from_the_venues_time_and_the_key_can_be_checked() {
    for exchange in EXCHANGES {
        let sim = exchange.sim().await;
        sim.set_skew(30_000);
        let app = spawn_app().await;
        let path = set_up(&app, exchange, &sim, json!({}), json!({"base": 0.01})).await;
        let check = app.post("/api/v1/accounts/bn/check", &json!({})).await;
        assert_eq!(check.status, 200, "{}", check.text);
        let check = check.json();
        assert_eq!(check["ok"], true, "{check}");
        assert_eq!(check["balance"], 5000.0);
        assert_eq!(check["available"], 4800.0);
        assert_eq!(check["live"], false);
        let offset = check["clock_offset_ms"].as_i64().unwrap();
        assert!((29_000..=31_000).contains(&offset), "{offset}");
        alert(&app, &path, entry("skew-1")).await;
        assert_eq!(settled_orders(&app, "bn", 1).await[0]["status"], "filled");

        // A wrong secret: the venue's refusal, in the check's answer.
        let wrong = app
            .send(
                "PATCH",
                "/api/v1/accounts/bn",
                Some(&json!({"api_key": KEY, "api_secret": "not-the-secret"})),
            )
            .await;
        assert_eq!(wrong.status, 200, "{}", wrong.text);
        let check = app
            .post("/api/v1/accounts/bn/check", &json!({}))
            .await
            .json();
        assert_eq!(check["ok"], false);
        assert_eq!(check["error"]["code"], "bad_signature", "{check}");
        // A paper account has nothing to check.
        app.post("/api/v1/accounts", &json!({"name": "paper"}))
            .await;
        let paper = app.post("/api/v1/accounts/paper/check", &json!({})).await;
        assert_eq!(paper.status, 409, "{}", paper.text);
    }
}

/// A percent of equity reads the balance from the venue: 5 % of 5,000 USDT as margin at a
/// leverage of 3 is 750 USDT, 0.01171875 BTC at 64,000, floored to the venue's step.
#[tokio::test]
async fn an_entry_sized_by_equity_reads_the_balance_from_the_venue() {
    for exchange in EXCHANGES {
        let sim = exchange.sim().await;
        let app = spawn_app().await;
        let path = set_up(
            &app,
            exchange,
            &sim,
            json!({}),
            json!({"percent_equity": 5}),
        )
        .await;
        alert(&app, &path, entry("pct-1")).await;
        let orders = settled_orders(&app, "bn", 1).await;
        assert_eq!(orders[0]["status"], "filled", "{exchange:?}: {}", orders[0]);
        let sent = match exchange {
            Exchange::Okx => "1.17",
            _ => "0.011",
        };
        assert_eq!(sim.orders()[0].quantity, sent, "{exchange:?}");
    }
}

/// An entry's stop-loss and take-profit are held by the venue, each closing the whole
/// position at the mark price whether the hub is up or not: Binance's algo orders, Bybit's
/// position take-profit and stop-loss, OKX's one `oco` order. The journal shows them
/// resting. When the stop triggers at the venue, the next signal finds the position gone:
/// what is left of the legs is taken off the venue and ended in the journal. An exit through
/// the hub takes them off too.
#[tokio::test]
async fn an_entrys_stop_loss_and_take_profit_are_held_by_the_venue() {
    for exchange in EXCHANGES {
        let sim = exchange.sim().await;
        let app = spawn_app().await;
        let path = set_up(&app, exchange, &sim, json!({}), json!({"base": 0.01})).await;
        let orders_settings = json!({"symbols": {"BINANCE:BTCUSDT.P": "BTC/USDT:USDT"},
                                     "size": {"base": 0.01},
                                     "brackets": {"stop_loss_percent": 2,
                                                  "take_profit_percent": 4}});
        change_destination(&app, json!({"orders": orders_settings})).await;
        alert(&app, &path, entry("br-1")).await;
        let orders = settled_orders(&app, "bn", 3).await;
        let status_of = |orders: &[Value], suffix: &str| -> (String, String) {
            let o = orders
                .iter()
                .find(|o| o["client_order_id"].as_str().unwrap().ends_with(suffix))
                .unwrap_or_else(|| panic!("no order {suffix} in {orders:?}"));
            (
                o["status"].as_str().unwrap().to_owned(),
                o["reason"]["code"].as_str().unwrap_or_default().to_owned(),
            )
        };
        assert_eq!(status_of(&orders, "-0").0, "filled", "{exchange:?}");
        assert_eq!(
            status_of(&orders, "-1").0,
            "resting",
            "{exchange:?}: {orders:?}"
        );
        assert_eq!(status_of(&orders, "-2").0, "resting", "{exchange:?}");
        let live: Vec<_> = sim
            .protections()
            .into_iter()
            .filter(|p| p.state == "live")
            .collect();
        let stop = live.iter().find_map(|p| p.stop);
        let take = live.iter().find_map(|p| p.take);
        assert_eq!(
            (stop, take),
            (Some(62_720.0), Some(66_560.0)),
            "{exchange:?}: {live:?}"
        );
        // Binance: one algo order per leg; Bybit and OKX: one for both.
        let expected = if exchange == Exchange::Binance { 2 } else { 1 };
        assert_eq!(live.len(), expected, "{exchange:?}: {live:?}");

        // The stop triggers at the venue; the hub hears of it with the next signal.
        sim.set_price("BTCUSDT", 62_000.0);
        assert!(sim.position("BTCUSDT").abs() < 1e-12, "{exchange:?}");
        alert(&app, &path, exit("br-2", "62000")).await;
        let orders = settled_orders(&app, "bn", 4).await;
        assert_eq!(
            orders[0]["status"], "skipped",
            "{exchange:?}: {}",
            orders[0]
        );
        assert_eq!(orders[0]["reason"]["code"], "no_position");
        for leg in ["-1", "-2"] {
            let ended = orders
                .iter()
                .filter(|o| o["client_order_id"].as_str().unwrap().ends_with(leg))
                .all(|o| {
                    o["status"] == "cancelled" && o["reason"]["code"] == "position_closed_at_venue"
                });
            assert!(ended, "{exchange:?} {leg}: {orders:?}");
        }
        assert!(
            sim.protections().iter().all(|p| p.state != "live"),
            "{exchange:?}: nothing left at the venue: {:?}",
            sim.protections()
        );

        // An exit through the hub takes the next entry's legs off.
        sim.set_price("BTCUSDT", 64_000.0);
        alert(&app, &path, entry("br-3")).await;
        settled_orders(&app, "bn", 7).await;
        assert!(sim.protections().iter().any(|p| p.state == "live"));
        alert(&app, &path, exit("br-4", "64000")).await;
        // The exit is journalled once filled; its entry's legs are taken off at the venue
        // after it, and journalled then.
        let orders = eventually_or(|| async {
            let orders = settled_orders(&app, "bn", 8).await;
            let cancelled = orders
                .iter()
                .filter(|o| o["reason"]["code"] == "position_closed")
                .count();
            match cancelled {
                2 => Ok(orders),
                _ => Err(format!("two legs cancelled, {exchange:?}: {orders:?}")),
            }
        })
        .await;
        assert_eq!(orders[0]["status"], "filled", "{exchange:?}: {}", orders[0]);
        assert!(
            sim.protections().iter().all(|p| p.state != "live"),
            "{exchange:?}: {:?}",
            sim.protections()
        );
        assert!(sim.position("BTCUSDT").abs() < 1e-12);
    }
}

#[tokio::test]
async fn a_signal_waits_while_an_earlier_order_of_its_symbol_has_no_known_outcome() {
    let exchange = Exchange::Binance;
    let sim = exchange.sim().await;
    let app = spawn_app().await;
    let path = set_up(&app, exchange, &sim, json!({}), json!({"base": 0.01})).await;
    change_destination(&app, json!({"retry_schedule": []})).await;
    sim.fault([Fault::HangAfterAccept(Duration::from_secs(3))]);
    alert(&app, &path, entry("wait-1")).await;
    let entry_event = app.events().await[0]["id"].as_str().unwrap().to_owned();
    let given_up = app.await_delivery_status(&entry_event, "failed").await;
    assert_eq!(
        sim.orders().len(),
        1,
        "Binance took it; the hub does not know"
    );

    alert(&app, &path, exit("wait-2", "64000")).await;
    let exit_event = app.events().await[0]["id"].as_str().unwrap().to_owned();
    let waited = app.await_delivery_status(&exit_event, "failed").await;
    assert!(
        waited.to_string().contains("order_pending"),
        "the exit waited: {waited}"
    );
    assert_eq!(sim.order_requests(), 1, "nothing sent for the exit");

    for delivery in [&given_up, &waited] {
        let id = delivery["id"].as_str().unwrap();
        let retried = app
            .post(&format!("/api/v1/deliveries/{id}/retry"), &json!({}))
            .await;
        assert!(retried.status < 300, "{}", retried.text);
        let event = delivery["event_id"].as_str().unwrap().to_owned();
        app.await_delivery_status(&event, "succeeded").await;
    }
    let orders = settled_orders(&app, "bn", 2).await;
    assert!(orders.iter().all(|o| o["status"] == "filled"), "{orders:?}");
    assert!(sim.position("BTCUSDT").abs() < 1e-12, "closed at the venue");
    assert_eq!(sim.order_requests(), 2, "the entry once, the exit once");
}

/// Binance answers 429 with a Retry-After of 2 s: the hub makes no call about the account's
/// orders before the 2 s are over (its retries every 0.2 s wait), then finds the order was
/// never placed and places it once.
#[tokio::test]
async fn a_venue_asking_to_slow_down_is_left_alone_for_as_long_as_it_asks() {
    let exchange = Exchange::Binance;
    let sim = exchange.sim().await;
    let app = spawn_app().await;
    let path = set_up(
        &app,
        exchange,
        &sim,
        json!({"recv_window_ms": 1000}),
        json!({"base": 0.01}),
    )
    .await;
    sim.fault([Fault::RateLimited(2)]);
    alert(&app, &path, entry("slow-1")).await;
    let orders = settled_orders(&app, "bn", 1).await;
    assert_eq!(orders[0]["status"], "filled", "{}", orders[0]);
    let gap = sim.call_after_limit().expect("called again");
    assert!(gap >= 1_900, "called again {gap} ms after the 429");
    assert_eq!(
        sim.order_requests(),
        2,
        "the refused one, and one after the wait"
    );
    assert_eq!(sim.orders().len(), 1);
}

/// A venue account in hedge mode holds a long and a short per symbol, and refuses orders
/// that do not name their side. An account left on one-way is refused with `position_mode`
/// and told what to set; one set to `hedge` names the side of every order (Binance's
/// `positionSide`, Bybit's `positionIdx`, OKX's `posSide`), its exit closing the long side.
#[tokio::test]
async fn a_hedge_mode_account_names_the_position_side_of_each_order() {
    for exchange in EXCHANGES {
        let sim = exchange.sim().await;
        sim.set_hedge();
        let app = spawn_app().await;
        let path = set_up(&app, exchange, &sim, json!({}), json!({"base": 0.01})).await;
        alert(&app, &path, entry("h-1")).await;
        let orders = settled_orders(&app, "bn", 1).await;
        assert_eq!(
            orders[0]["status"], "rejected",
            "{exchange:?}: {}",
            orders[0]
        );
        assert_eq!(orders[0]["reason"]["code"], "position_mode");
        let detail = orders[0]["reason"]["detail"].as_str().unwrap();
        assert!(detail.contains(r#""position_mode": "hedge""#), "{detail}");
        assert!(sim.orders().is_empty());

        let changed = app
            .send(
                "PATCH",
                "/api/v1/accounts/bn",
                Some(&json!({"position_mode": "hedge"})),
            )
            .await;
        assert_eq!(changed.status, 200, "{}", changed.text);
        assert_eq!(changed.json()["exchange"]["position_mode"], "hedge");
        alert(&app, &path, entry("h-2")).await;
        let orders = settled_orders(&app, "bn", 2).await;
        assert_eq!(orders[0]["status"], "filled", "{exchange:?}: {}", orders[0]);
        alert(&app, &path, exit("h-3", "64000")).await;
        let orders = settled_orders(&app, "bn", 3).await;
        assert_eq!(orders[0]["status"], "filled", "{exchange:?}: {}", orders[0]);
        let taken: Vec<(String, Option<&str>)> = sim
            .orders()
            .into_iter()
            .map(|o| (o.side, o.position_side))
            .collect();
        assert_eq!(
            taken,
            [
                ("BUY".to_owned(), Some("LONG")),
                ("SELL".to_owned(), Some("LONG"))
            ],
            "{exchange:?}"
        );
        // Binance refuses reduceOnly in hedge mode and OKX reads it in net mode only; Bybit
        // takes it with the side.
        assert_eq!(
            sim.orders()[1].reduce_only,
            exchange == Exchange::Bybit,
            "{exchange:?}"
        );
        assert!(sim.position("BTCUSDT").abs() < 1e-12, "{exchange:?}: flat");
    }
}

/// A position closed at the venue without the hub (a stop that triggered there, an order by
/// hand) is read from the venue before the next signal is decided: the exit finds nothing
/// to close and sends nothing, instead of a reduce-only order the venue would refuse, and
/// the next entry opens from flat.
#[tokio::test]
async fn a_position_closed_at_the_venue_is_taken_from_the_venue() {
    for exchange in EXCHANGES {
        let sim = exchange.sim().await;
        let app = spawn_app().await;
        let path = set_up(&app, exchange, &sim, json!({}), json!({"base": 0.01})).await;
        alert(&app, &path, entry("v-1")).await;
        let orders = settled_orders(&app, "bn", 1).await;
        assert_eq!(orders[0]["status"], "filled", "{exchange:?}: {}", orders[0]);
        sim.set_position("BTCUSDT", 0.0);

        alert(&app, &path, exit("v-2", "64000")).await;
        let orders = settled_orders(&app, "bn", 2).await;
        assert_eq!(
            orders[0]["status"], "skipped",
            "{exchange:?}: {}",
            orders[0]
        );
        assert_eq!(orders[0]["reason"]["code"], "no_position");
        assert_eq!(
            sim.order_requests(),
            1,
            "{exchange:?}: nothing sent for the exit"
        );
        let book = app.get("/api/v1/accounts/bn/positions").await.json();
        assert_eq!(book["positions"], json!([]), "{exchange:?}");

        // Opened by hand at the venue: the hub's book takes it, and the exit closes it.
        sim.set_position("BTCUSDT", 0.02);
        alert(&app, &path, exit("v-3", "64000")).await;
        let orders = settled_orders(&app, "bn", 3).await;
        assert_eq!(orders[0]["status"], "filled", "{exchange:?}: {}", orders[0]);
        let taken = sim.orders();
        assert_eq!(taken.len(), 2, "{exchange:?}");
        assert!(taken[1].reduce_only);
        assert!(sim.position("BTCUSDT").abs() < 1e-12, "{exchange:?}: flat");
    }
}

/// An order whose delivery gave up while the venue did not answer is not left an intent for
/// ever, holding up its symbol: once the venue can no longer take the first request, the hub
/// asks it in the background. The order the venue took settles the intent (`filled`, the
/// position booked); one the venue never received ends `rejected` (`not_placed`). Nothing
/// is sent again.
#[tokio::test]
async fn an_order_whose_delivery_gave_up_is_settled_from_the_venue_later() {
    let exchange = Exchange::Binance;
    for (fault, outcome) in [
        (Fault::HangAfterAccept(Duration::from_secs(3)), "filled"),
        (Fault::LostBeforeAccept(Duration::from_secs(3)), "rejected"),
    ] {
        let sim = exchange.sim().await;
        let app = crate::helpers::spawn_app_with(|c| {
            c.order_check_interval = Duration::from_millis(200);
        })
        .await;
        let path = set_up(
            &app,
            exchange,
            &sim,
            json!({"recv_window_ms": 1000}),
            json!({"base": 0.01}),
        )
        .await;
        change_destination(&app, json!({"retry_schedule": []})).await;
        sim.fault([fault]);
        alert(&app, &path, entry("gu-1")).await;
        let event = app.events().await[0]["id"].as_str().unwrap().to_owned();
        app.await_delivery_status(&event, "failed").await;

        let orders = settled_orders(&app, "bn", 1).await;
        assert_eq!(orders[0]["status"], outcome, "{fault:?}: {}", orders[0]);
        assert_eq!(sim.order_requests(), 1, "{fault:?}: never sent again");
        let book = app.get("/api/v1/accounts/bn/positions").await.json();
        if outcome == "filled" {
            assert_eq!(sim.orders().len(), 1);
            assert_eq!(book["positions"][0]["size"], 0.01, "{book}");
        } else {
            assert_eq!(orders[0]["reason"]["code"], "not_placed");
            assert!(sim.orders().is_empty());
            assert_eq!(book["positions"], json!([]));
        }
    }
}
