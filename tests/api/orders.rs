//! Order destinations over real HTTP: TradingView alerts become paper orders, each once,
//! exits reduce-only, and the risk gate blocks with its reason in the journal.

use serde_json::{Value, json};

use crate::helpers::{
    TestApp, TestReceiver, alert, eventually, settled_orders, spawn_app, tradingview_source,
};

/// An account, an order destination trading BTC on it, and a TradingView source; returns
/// the source's ingest path.
async fn set_up(app: &TestApp, size: Value) -> String {
    let reply = app
        .post("/api/v1/accounts", &json!({"name": "paper-main"}))
        .await;
    assert_eq!(reply.status, 201, "{}", reply.text);
    let reply = app
        .post(
            "/api/v1/endpoints",
            &json!({"url": "account:paper-main", "event_types": ["entry", "exit"],
                    "ordering": "pair",
                    "orders": {"symbols": {"BINANCE:BTCUSDT.P": "BTC/USDT:USDT"}, "size": size}}),
        )
        .await;
    assert_eq!(reply.status, 201, "{}", reply.text);
    let created = reply.json();
    let account = app.get("/api/v1/accounts/paper-main").await.json();
    assert_eq!(
        created["url"],
        format!("account:{}", account["id"].as_str().unwrap()),
        "the destination points at the account by id"
    );
    tradingview_source(app, "tv").await
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

#[tokio::test]
async fn an_alert_sent_three_times_opens_one_position_and_its_exit_closes_it() {
    let app = spawn_app().await;
    let path = set_up(&app, json!({"quote": 1000})).await;
    // The trader's chat hears of every fill and of the closed position.
    let chat = TestReceiver::start().await;
    app.create_endpoint(
        json!({"url": chat.url, "event_types": ["order.*", "position.closed", "risk.blocked"]}),
    )
    .await;
    let entry = json!({"ticker": "BINANCE:BTCUSDT.P", "action": "buy", "price": "64000",
                       "client_ref": "a-1"});
    // TradingView sends again when it sees a 5xx: the same alert three times.
    for _ in 0..3 {
        alert(&app, &path, entry.clone()).await;
    }
    let orders = settled_orders(&app, "paper-main", 1).await;
    assert_eq!(orders[0]["status"], "filled", "{:?}", orders[0]);
    assert_eq!(orders[0]["request"]["side"], "buy");
    assert_eq!(orders[0]["request"]["reduce_only"], false);
    let book = app
        .get("/api/v1/accounts/paper-main/positions")
        .await
        .json();
    let position = &book["positions"][0];
    assert_eq!(position["symbol"], "BTC/USDT:USDT");
    assert!(close(position["size"].as_f64().unwrap(), 1000.0 / 64000.0));
    assert_eq!(position["entry_price"], 64000.0);

    alert(
        &app,
        &path,
        json!({"ticker": "BINANCE:BTCUSDT.P", "action": "sell", "market_position": "flat",
               "price": "65000", "client_ref": "a-2"}),
    )
    .await;
    let orders = settled_orders(&app, "paper-main", 2).await;
    let exit = &orders[0];
    assert_eq!(exit["status"], "filled", "{exit:?}");
    assert_eq!(exit["request"]["reduce_only"], true);
    assert_eq!(exit["request"]["side"], "sell");
    let realized = exit["fill"]["realized_pnl"].as_f64().unwrap();
    assert!(close(realized, 1000.0 / 64000.0 * 1000.0), "{realized}");
    let book = app
        .get("/api/v1/accounts/paper-main/positions")
        .await
        .json();
    assert_eq!(book["positions"], json!([]));
    let fees = 1000.0 * 0.0005 + 1000.0 / 64000.0 * 65000.0 * 0.0005;
    assert!(close(book["fees_paid"].as_f64().unwrap(), fees));
    assert!(close(
        book["balance"].as_f64().unwrap(),
        10_000.0 + realized - fees
    ));
    // The journal names the signal of each order.
    let events = app.events().await;
    assert!(events.iter().any(|e| e["id"] == exit["event_id"]));
    let heard = chat.wait_for(3).await;
    let mut kinds: Vec<String> = heard
        .iter()
        .map(|r| r.json()["type"].as_str().unwrap().to_owned())
        .collect();
    kinds.sort();
    assert_eq!(kinds, ["order.filled", "order.filled", "position.closed"]);
    let closed = heard
        .iter()
        .map(|r| r.json())
        .find(|e| e["type"] == "position.closed")
        .unwrap();
    assert_eq!(closed["data"]["symbol"], "BTC/USDT:USDT");
    assert!(close(
        closed["data"]["realized_pnl"].as_f64().unwrap(),
        realized
    ));
}

#[tokio::test]
async fn the_risk_gate_blocks_with_its_reason_and_an_exit_without_a_position_does_nothing() {
    let app = spawn_app().await;
    let path = set_up(&app, json!({"quote": 500})).await;
    // An exit first: there is nothing to close, and nothing opens the other way.
    alert(
        &app,
        &path,
        json!({"ticker": "BINANCE:BTCUSDT.P", "action": "sell", "market_position": "flat",
               "price": "64000", "client_ref": "x-1"}),
    )
    .await;
    let orders = settled_orders(&app, "paper-main", 1).await;
    assert_eq!(orders[0]["status"], "skipped");
    assert_eq!(orders[0]["reason"]["code"], "no_position");
    let book = app
        .get("/api/v1/accounts/paper-main/positions")
        .await
        .json();
    assert_eq!(book["positions"], json!([]));

    // A symbol the destination does not trade.
    alert(
        &app,
        &path,
        json!({"ticker": "BINANCE:ETHUSDT.P", "action": "buy", "price": "3000",
               "client_ref": "x-2"}),
    )
    .await;
    let orders = settled_orders(&app, "paper-main", 2).await;
    assert_eq!(orders[0]["status"], "blocked");
    assert_eq!(orders[0]["reason"]["code"], "symbol_not_allowed");
    let blocked = eventually(|| async {
        app.events()
            .await
            .into_iter()
            .find(|e| e["type"] == "risk.blocked")
    })
    .await;
    assert_eq!(blocked["data"]["reason"]["code"], "symbol_not_allowed");
    assert_eq!(blocked["data"]["event_id"], orders[0]["event_id"]);
    let delivery = app
        .delivery_of(orders[0]["event_id"].as_str().unwrap())
        .await;
    assert_eq!(delivery["status"], "failed");
    let shown = app
        .get(&format!(
            "/api/v1/deliveries/{}",
            delivery["id"].as_str().unwrap()
        ))
        .await
        .json();
    assert_eq!(shown["attempts"][0]["error_kind"], "risk_blocked");

    // The kill switch: entries stop with its reason.
    app.post(
        "/api/v1/accounts/paper-main/halt",
        &json!({"reason": "news at 14:30"}),
    )
    .await;
    alert(
        &app,
        &path,
        json!({"ticker": "BINANCE:BTCUSDT.P", "action": "buy", "price": "64000",
               "client_ref": "x-3"}),
    )
    .await;
    let orders = settled_orders(&app, "paper-main", 3).await;
    assert_eq!(orders[0]["status"], "blocked");
    assert_eq!(orders[0]["reason"]["code"], "halted");
    assert!(
        orders[0]["reason"]["detail"]
            .as_str()
            .unwrap()
            .contains("news at 14:30")
    );

    // Resumed: an entry opens, and a second one on the same side is over the pyramiding.
    app.post("/api/v1/accounts/paper-main/resume", &json!({}))
        .await;
    for (i, id) in ["x-4", "x-5"].iter().enumerate() {
        alert(
            &app,
            &path,
            json!({"ticker": "BINANCE:BTCUSDT.P", "action": "buy", "price": "64000",
                   "client_ref": id}),
        )
        .await;
        settled_orders(&app, "paper-main", 4 + i).await;
    }
    let orders = settled_orders(&app, "paper-main", 5).await;
    assert_eq!(orders[1]["status"], "filled");
    assert_eq!(orders[0]["status"], "blocked");
    assert_eq!(orders[0]["reason"]["code"], "pyramiding");
}

#[tokio::test]
async fn an_order_destination_is_checked_like_any_endpoint() {
    let app = spawn_app().await;
    let missing = app
        .post(
            "/api/v1/endpoints",
            &json!({"url": "account:nobody",
                    "orders": {"symbols": {"BTCUSDT": "BTC/USDT"}, "size": {"base": 1}}}),
        )
        .await;
    assert_eq!(missing.status, 422, "{}", missing.text);
    assert!(
        missing.text.contains("no account named"),
        "{}",
        missing.text
    );
    app.post("/api/v1/accounts", &json!({"name": "main"})).await;
    let bad = app
        .post(
            "/api/v1/endpoints",
            &json!({"url": "account:main",
                    "orders": {"symbols": {}, "size": {"quote": -1}, "leverage": 500,
                               "brackets": {"stop_loss_percent": 100, "take_profit_percent": 0},
                               "liquidation_close_percent": 101}}),
        )
        .await;
    assert_eq!(bad.status, 422, "{}", bad.text);
    let fields: Vec<String> = bad.json()["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        fields,
        [
            "orders.symbols",
            "orders.size",
            "orders.leverage",
            "orders.brackets.stop_loss_percent",
            "orders.brackets.take_profit_percent",
            "orders.liquidation_close_percent"
        ]
    );
    let without = app
        .post("/api/v1/endpoints", &json!({"url": "account:main"}))
        .await;
    assert_eq!(without.status, 422, "{}", without.text);
    let webhook_with_orders = app
        .post(
            "/api/v1/endpoints",
            &json!({"url": "https://example.com/hook",
                    "orders": {"symbols": {"A": "B"}, "size": {"base": 1}}}),
        )
        .await;
    assert_eq!(
        webhook_with_orders.status, 422,
        "{}",
        webhook_with_orders.text
    );
    assert_eq!(app.get("/api/v1/endpoints").await.json()["data"], json!([]));
    // An account an order destination uses cannot be deleted from under it.
    let used = app
        .post(
            "/api/v1/endpoints",
            &json!({"url": "account:main",
                    "orders": {"symbols": {"BTCUSDT": "BTC/USDT"}, "size": {"base": 1}}}),
        )
        .await;
    assert_eq!(used.status, 201, "{}", used.text);
    let refused = app.send("DELETE", "/api/v1/accounts/main", None).await;
    assert_eq!(refused.status, 409, "{}", refused.text);
    assert_eq!(refused.json()["code"], "account_in_use");
    let id = used.json()["id"].as_str().unwrap().to_owned();
    app.send("DELETE", &format!("/api/v1/endpoints/{id}"), None)
        .await;
    let deleted = app.send("DELETE", "/api/v1/accounts/main", None).await;
    assert_eq!(deleted.status, 204, "{}", deleted.text);
}

#[tokio::test]
async fn one_leader_signal_sizes_each_of_100_followers_by_its_multiplier() {
    let app = spawn_app().await;
    let multiplier = |i: usize| (i + 1) as f64 / 10.0;
    for i in 0..100 {
        let reply = app
            .post(
                "/api/v1/accounts",
                &json!({"name": format!("f{i}"), "paper": {"balance": 1_000_000}}),
            )
            .await;
        assert_eq!(reply.status, 201, "{}", reply.text);
        app.create_endpoint(json!({
            "url": format!("account:f{i}"), "event_types": ["entry", "exit"], "ordering": "pair",
            "orders": {"symbols": {"BTC/USDT": "BTC/USDT:USDT"},
                       "size": {"multiplier": multiplier(i)}}}))
            .await;
    }
    // One follower is halted: it is blocked, and the others do not wait for it.
    app.post("/api/v1/accounts/f7/halt", &json!({"reason": "paused"}))
        .await;
    app.publish(
        "entry",
        json!({"pair": "BTC/USDT", "side": "long", "amount": 0.2, "open_rate": 64000}),
    )
    .await;
    let orders_of = |i: usize| {
        let app = &app;
        async move {
            let orders = app
                .get(&format!("/api/v1/accounts/f{i}/orders"))
                .await
                .json();
            orders.as_array().unwrap().clone()
        }
    };
    for i in 0..100 {
        let order = eventually(|| async {
            orders_of(i)
                .await
                .into_iter()
                .find(|o| o["status"] != "intent")
        })
        .await;
        if i == 7 {
            assert_eq!(order["status"], "blocked", "{order:?}");
            assert_eq!(order["reason"]["code"], "halted");
            continue;
        }
        assert_eq!(order["status"], "filled", "f{i}: {order:?}");
        let book = app
            .get(&format!("/api/v1/accounts/f{i}/positions"))
            .await
            .json();
        assert_eq!(
            book["positions"][0]["size"].as_f64().unwrap(),
            // 0.2 × (i + 1) / 10, as the decimal it is: 0.02, 0.04, … 2.0.
            ((i + 1) * 2) as f64 / 100.0,
            "f{i}"
        );
    }
    // The leader exits: every follower's position closes, whole.
    app.publish(
        "exit",
        json!({"pair": "BTC/USDT", "side": "long", "close_rate": 65000}),
    )
    .await;
    for i in (0..100).filter(|i| *i != 7) {
        eventually(|| async {
            let orders = orders_of(i).await;
            (orders.len() == 2 && orders[0]["status"] == "filled").then_some(())
        })
        .await;
        let book = app
            .get(&format!("/api/v1/accounts/f{i}/positions"))
            .await
            .json();
        assert_eq!(book["positions"], json!([]), "f{i}");
        let pnl = book["realized_pnl"].as_f64().unwrap();
        assert!(close(pnl, 0.2 * multiplier(i) * 1000.0), "f{i}: {pnl}");
    }
}

/// A destination on `account` trading BTC and ETH by quote notional, with room to pyramid.
async fn follower(app: &TestApp, account: Value, notional: f64) {
    let name = account["name"].as_str().unwrap().to_owned();
    let reply = app.post("/api/v1/accounts", &account).await;
    assert_eq!(reply.status, 201, "{}", reply.text);
    app.create_endpoint(json!({
        "url": format!("account:{name}"), "event_types": ["entry", "exit"],
        "orders": {"symbols": {"BTC/USDT": "BTC/USDT:USDT", "ETH/USDT": "ETH/USDT:USDT"},
                   "size": {"quote": notional}, "pyramiding": 10}}))
        .await;
}

/// Publishes a signal and waits until `account` has `n` settled orders; the newest.
/// Each signal is a new one (the publisher API would take the same body twice for a resend).
async fn signal(app: &TestApp, account: &str, n: usize, kind: &str, mut data: Value) -> Value {
    data["signal"] = json!(format!("{account}-{n}"));
    app.publish(kind, data).await;
    eventually(|| async {
        let orders = app
            .get(&format!("/api/v1/accounts/{account}/orders"))
            .await
            .json();
        let orders = orders.as_array().unwrap().clone();
        (orders.len() == n && orders.iter().all(|o| o["status"] != "intent"))
            .then(|| orders[0].clone())
    })
    .await
}

#[tokio::test]
async fn each_risk_limit_blocks_with_its_reason() {
    let app = spawn_app().await;
    follower(
        &app,
        json!({"name": "limits", "paper": {"fee_rate": 0},
               "risk": {"max_orders_per_minute": 2, "max_order_notional": 1500,
                        "max_position_notional": 2500, "max_open_positions": 1}}),
        1000.0,
    )
    .await;
    let btc = |price: f64| json!({"pair": "BTC/USDT", "side": "long", "open_rate": price});
    assert_eq!(
        signal(&app, "limits", 1, "entry", btc(100.0)).await["status"],
        "filled"
    );
    // Another symbol while one position is open.
    let eth = signal(
        &app,
        "limits",
        2,
        "entry",
        json!({"pair": "ETH/USDT", "side": "long", "open_rate": 10}),
    )
    .await;
    assert_eq!(eth["reason"]["code"], "max_open_positions", "{eth:?}");
    assert_eq!(
        signal(&app, "limits", 3, "entry", btc(100.0)).await["status"],
        "filled"
    );
    // Two entries in this minute already.
    let third = signal(&app, "limits", 4, "entry", btc(100.0)).await;
    assert_eq!(third["reason"]["code"], "orders_per_minute", "{third:?}");

    follower(
        &app,
        json!({"name": "big", "paper": {"fee_rate": 0},
               "risk": {"max_order_notional": 500}}),
        1000.0,
    )
    .await;
    let big = signal(&app, "big", 1, "entry", btc(100.0)).await;
    assert_eq!(big["reason"]["code"], "max_order_notional", "{big:?}");
    // Each refusal is also a hub event, published once the order is settled.
    let mut blocked: Vec<String> = eventually(|| async {
        let codes: Vec<String> = app
            .events()
            .await
            .into_iter()
            .filter(|e| e["type"] == "risk.blocked")
            .map(|e| e["data"]["reason"]["code"].as_str().unwrap().to_owned())
            .collect();
        // The last signal reaches both accounts: "limits" is over its rate again.
        (codes.len() >= 4).then_some(codes)
    })
    .await;
    blocked.sort();
    blocked.dedup();
    assert_eq!(
        blocked,
        [
            "max_open_positions",
            "max_order_notional",
            "orders_per_minute"
        ]
    );
}

#[tokio::test]
async fn the_daily_loss_limit_halts_entries_until_a_resume_and_lets_exits_out() {
    let app = spawn_app().await;
    follower(
        &app,
        json!({"name": "daily", "paper": {"fee_rate": 0}, "risk": {"daily_loss_limit": 50}}),
        1000.0,
    )
    .await;
    let btc = |price: f64| json!({"pair": "BTC/USDT", "side": "long", "open_rate": price});
    let exit = |price: f64| json!({"pair": "BTC/USDT", "side": "long", "close_rate": price});
    signal(&app, "daily", 1, "entry", btc(100.0)).await;
    // 10 BTC bought at 100 and sold at 94: a loss of 60, over the limit of 50.
    let out = signal(&app, "daily", 2, "exit", exit(94.0)).await;
    assert!(close(out["fill"]["realized_pnl"].as_f64().unwrap(), -60.0));
    let refused = signal(&app, "daily", 3, "entry", btc(100.0)).await;
    assert_eq!(refused["reason"]["code"], "daily_loss_limit", "{refused:?}");
    risk_blocked(&app, "daily_loss_limit").await;
    let account = app.get("/api/v1/accounts/daily").await.json();
    let halt = &account["halted"];
    assert!(
        halt["until"].as_str().unwrap().ends_with("T00:00:00Z"),
        "{halt:?}"
    );
    assert_eq!(halt["exits_allowed"], true);
    // An operator resumes: today's loss no longer counts, and entries go out again.
    app.post("/api/v1/accounts/daily/resume", &json!({})).await;
    let again = signal(&app, "daily", 4, "entry", btc(100.0)).await;
    assert_eq!(again["status"], "filled", "{again:?}");
}

/// The hub's `risk.blocked` event for a refusal with `code`, once it is published.
async fn risk_blocked(app: &TestApp, code: &str) -> Value {
    eventually(|| async {
        app.events()
            .await
            .into_iter()
            .find(|e| e["type"] == "risk.blocked" && e["data"]["reason"]["code"] == code)
    })
    .await
}

/// A destination on a new account trading BTC by `size`, subscribed to entries, exits,
/// prices and liquidation warnings, in order per pair, with `orders` settings added.
async fn bracketed(app: &TestApp, name: &str, size: Value, extra: Value) {
    let reply = app
        .post(
            "/api/v1/accounts",
            &json!({"name": name, "paper": {"fee_rate": 0}}),
        )
        .await;
    assert_eq!(reply.status, 201, "{}", reply.text);
    let mut orders = json!({"symbols": {"BTC/USDT": "BTC/USDT:USDT"}, "size": size});
    for (k, v) in extra.as_object().unwrap() {
        orders[k] = v.clone();
    }
    let reply = app
        .post(
            "/api/v1/endpoints",
            &json!({"url": format!("account:{name}"), "ordering": "pair",
                    "event_types": ["entry", "exit", "price", "liquidation_warning"],
                    "orders": orders}),
        )
        .await;
    assert_eq!(reply.status, 201, "{}", reply.text);
}

/// The account's orders once `check` holds for them.
async fn orders_when(app: &TestApp, account: &str, check: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    eventually(|| async {
        let orders = app
            .get(&format!("/api/v1/accounts/{account}/orders"))
            .await
            .json();
        let orders = orders.as_array().unwrap().clone();
        check(&orders).then_some(orders)
    })
    .await
}

fn by_leg<'a>(orders: &'a [Value], leg: &str) -> Vec<&'a Value> {
    orders
        .iter()
        .filter(|o| o["client_order_id"].as_str().unwrap().ends_with(leg))
        .collect()
}

#[tokio::test]
async fn an_entrys_stop_loss_fills_when_a_price_crosses_it_and_its_take_profit_is_cancelled() {
    let app = spawn_app().await;
    let chat = TestReceiver::start().await;
    app.create_endpoint(json!({"url": chat.url, "event_types": ["position.closed"]}))
        .await;
    bracketed(
        &app,
        "br",
        json!({"base": 1}),
        json!({"brackets": {"stop_loss_percent": 2, "take_profit_percent": 4}}),
    )
    .await;
    app.publish(
        "entry",
        json!({"pair": "BTC/USDT", "side": "long", "open_rate": 100}),
    )
    .await;
    let orders = orders_when(&app, "br", |o| o.len() == 3).await;
    let (entry, stop, take) = (
        by_leg(&orders, "-0")[0],
        by_leg(&orders, "-1")[0],
        by_leg(&orders, "-2")[0],
    );
    assert_eq!(entry["status"], "filled", "{entry}");
    assert_eq!(stop["status"], "resting", "{stop}");
    assert_eq!(
        stop["request"],
        json!({"client_order_id": stop["client_order_id"], "symbol": "BTC/USDT:USDT",
               "side": "sell", "quantity": 1.0, "kind": {"type": "stop", "trigger": 98.0},
               "reduce_only": true, "leverage": 1.0})
    );
    assert_eq!(take["status"], "resting");
    assert_eq!(
        take["request"]["kind"],
        json!({"type": "limit", "price": 104.0})
    );
    let book = app.get("/api/v1/accounts/br/positions").await.json();
    assert_eq!(book["resting"].as_array().unwrap().len(), 2);

    // Prices come as signals of their own, in order with the pair's trades: 99 reaches
    // neither, 97 crosses the stop, which fills at the price that crossed it.
    app.publish("price", json!({"pair": "BTC/USDT", "price": 99}))
        .await;
    app.publish("price", json!({"pair": "BTC/USDT", "price": 97}))
        .await;
    let orders = orders_when(&app, "br", |o| {
        by_leg(o, "-1")[0]["status"] == "filled" && by_leg(o, "-2")[0]["status"] == "cancelled"
    })
    .await;
    let stop = by_leg(&orders, "-1")[0];
    assert_eq!(stop["fill"]["price"], 97.0);
    assert!(close(stop["fill"]["realized_pnl"].as_f64().unwrap(), -3.0));
    assert_eq!(
        by_leg(&orders, "-2")[0]["reason"]["code"],
        "position_closed"
    );
    let book = app.get("/api/v1/accounts/br/positions").await.json();
    assert_eq!(book["positions"], json!([]));
    assert_eq!(book["resting"], json!([]));
    assert!(close(book["balance"].as_f64().unwrap(), 9_997.0));
    let closed = chat.wait_for(1).await[0].json();
    assert_eq!(closed["data"]["symbol"], "BTC/USDT:USDT");
    assert!(close(
        closed["data"]["realized_pnl"].as_f64().unwrap(),
        -3.0
    ));

    // One losing trade.
    let report = app.get("/api/v1/accounts/br/performance").await.json();
    assert_eq!(
        (&report["trades"], &report["wins"], &report["losses"]),
        (&json!(1), &json!(0), &json!(1))
    );
    assert_eq!(report["win_rate"], 0.0);
    assert_eq!(report["profit_factor"], 0.0);
    assert!(close(report["realized_pnl"].as_f64().unwrap(), -3.0));
    assert!(close(report["max_drawdown"].as_f64().unwrap(), 3.0));
    assert!(close(report["end_balance"].as_f64().unwrap(), 9_997.0));
    let curve: Vec<f64> = report["equity_curve"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["balance"].as_f64().unwrap())
        .collect();
    assert_eq!(curve, [10_000.0, 10_000.0, 9_997.0]);
    // A window after the trade holds none of it.
    let later = app
        .get("/api/v1/accounts/br/performance?since=2999-01-01T00:00:00Z")
        .await
        .json();
    assert_eq!(later["trades"], 0);
    assert!(close(later["start_balance"].as_f64().unwrap(), 9_997.0));
    let bad = app
        .get("/api/v1/accounts/br/performance?since=yesterday")
        .await;
    assert_eq!(bad.status, 422, "{}", bad.text);
}

#[tokio::test]
async fn a_signals_own_bracket_prices_win_and_a_posted_mark_reaches_them() {
    let app = spawn_app().await;
    bracketed(
        &app,
        "own",
        json!({"base": 2}),
        json!({"brackets": {"stop_loss_percent": 2}}),
    )
    .await;
    // A short, with its stop and target as TradingView placeholders fill them in: text.
    app.publish(
        "entry",
        json!({"pair": "BTC/USDT", "side": "short", "open_rate": 100,
               "stop_loss": "110", "take_profit": 80}),
    )
    .await;
    let orders = orders_when(&app, "own", |o| o.len() == 3).await;
    assert_eq!(
        by_leg(&orders, "-1")[0]["request"]["kind"],
        json!({"type": "stop", "trigger": 110.0})
    );
    assert_eq!(by_leg(&orders, "-1")[0]["request"]["side"], "buy");
    assert_eq!(
        by_leg(&orders, "-2")[0]["request"]["kind"],
        json!({"type": "limit", "price": 80.0})
    );

    // A price from outside the signals: the take-profit fills at its own price.
    let marked = app
        .post(
            "/api/v1/accounts/own/marks",
            &json!({"symbol": "BTC/USDT:USDT", "price": 79.5}),
        )
        .await;
    assert_eq!(marked.status, 200, "{}", marked.text);
    let moved = marked.json()["orders"].as_array().unwrap().clone();
    let status: Vec<(&str, &str)> = moved
        .iter()
        .map(|o| {
            let id = o["client_order_id"].as_str().unwrap();
            (&id[id.len() - 2..], o["status"].as_str().unwrap())
        })
        .collect();
    assert_eq!(status, [("-2", "filled"), ("-1", "cancelled")]);
    assert_eq!(moved[0]["fill"]["price"], 80.0);
    assert!(close(
        moved[0]["fill"]["realized_pnl"].as_f64().unwrap(),
        40.0
    ));
    let book = app.get("/api/v1/accounts/own/positions").await.json();
    assert_eq!(book["positions"], json!([]));
    // The journal agrees with the answer.
    let orders = app.get("/api/v1/accounts/own/orders").await.json();
    assert_eq!(
        by_leg(orders.as_array().unwrap(), "-1")[0]["status"],
        "cancelled"
    );

    // The same price again moves nothing; a bad one is refused with its field.
    let again = app
        .post(
            "/api/v1/accounts/own/marks",
            &json!({"symbol": "BTC/USDT:USDT", "price": 79.5}),
        )
        .await;
    assert_eq!(again.json(), json!({"orders": []}));
    let bad = app
        .post(
            "/api/v1/accounts/own/marks",
            &json!({"symbol": "", "price": -1}),
        )
        .await;
    assert_eq!(bad.status, 422, "{}", bad.text);
    let fields: Vec<String> = bad.json()["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(fields, ["symbol", "price"]);
    let missing = app
        .post(
            "/api/v1/accounts/nobody/marks",
            &json!({"symbol": "BTC/USDT:USDT", "price": 1}),
        )
        .await;
    assert_eq!(missing.status, 404);
}

#[tokio::test]
async fn a_bracket_on_the_wrong_side_of_the_fill_is_refused_and_the_entry_stands() {
    let app = spawn_app().await;
    bracketed(&app, "wrong", json!({"base": 1}), json!({})).await;
    app.publish(
        "entry",
        json!({"pair": "BTC/USDT", "side": "long", "open_rate": 100, "stop_loss": 105}),
    )
    .await;
    let orders = orders_when(&app, "wrong", |o| o.len() == 2).await;
    assert_eq!(by_leg(&orders, "-0")[0]["status"], "filled");
    let stop = by_leg(&orders, "-1")[0];
    assert_eq!(stop["status"], "rejected");
    assert_eq!(stop["reason"]["code"], "invalid_bracket", "{stop}");
    let book = app.get("/api/v1/accounts/wrong/positions").await.json();
    assert_eq!(book["positions"][0]["size"], 1.0);
    assert_eq!(book["resting"], json!([]));
}

#[tokio::test]
async fn a_liquidation_warning_closes_the_configured_part_of_the_position() {
    let app = spawn_app().await;
    bracketed(
        &app,
        "liq",
        json!({"base": 3}),
        json!({"leverage": 5, "liquidation_close_percent": 50}),
    )
    .await;
    let reply = app
        .send(
            "PATCH",
            "/api/v1/accounts/liq",
            Some(&json!({"paper": {"leverage_max": 10}})),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    // Without a position, a warning has nothing to close.
    app.publish(
        "liquidation_warning",
        json!({"pair": "BTC/USDT", "price": 100, "n": 0}),
    )
    .await;
    let orders = orders_when(&app, "liq", |o| o.len() == 1).await;
    assert_eq!(orders[0]["status"], "skipped");
    assert_eq!(orders[0]["reason"]["code"], "no_position");

    app.publish(
        "entry",
        json!({"pair": "BTC/USDT", "side": "long", "open_rate": 100}),
    )
    .await;
    app.publish(
        "liquidation_warning",
        json!({"pair": "BTC/USDT", "price": 85, "n": 1}),
    )
    .await;
    let orders = orders_when(&app, "liq", |o| {
        o.len() == 3 && o.iter().all(|o| o["status"] != "intent")
    })
    .await;
    let cut = &orders[0];
    assert_eq!(cut["status"], "filled", "{cut}");
    assert_eq!(cut["request"]["reduce_only"], true);
    assert_eq!(cut["request"]["quantity"], 1.5);
    let book = app.get("/api/v1/accounts/liq/positions").await.json();
    assert_eq!(book["positions"][0]["size"], 1.5);
}

#[tokio::test]
async fn a_strategys_target_position_reduces_reverses_and_a_blocked_reversal_only_closes() {
    let app = spawn_app().await;
    let path = set_up(&app, json!({"base": 1})).await;
    let tv = |action: &str, position: &str, contracts: f64, left: f64, price: f64, n: u32| {
        json!({"ticker": "BINANCE:BTCUSDT.P", "action": action, "market_position": position,
               "contracts": contracts.to_string(), "market_position_size": left.to_string(),
               "price": price.to_string(), "client_ref": format!("t-{n}")})
    };
    let book = || async {
        let book = app
            .get("/api/v1/accounts/paper-main/positions")
            .await
            .json();
        book["positions"][0].clone()
    };
    alert(&app, &path, tv("buy", "long", 2.0, 2.0, 100.0, 1)).await;
    settled_orders(&app, "paper-main", 1).await;
    assert_eq!(book().await["size"], 1.0);

    // The strategy sells 1 of its 2 contracts and stays long: half of this position closes.
    alert(&app, &path, tv("sell", "long", 1.0, 1.0, 104.0, 2)).await;
    let orders = settled_orders(&app, "paper-main", 2).await;
    assert_eq!(orders[0]["status"], "filled", "{:?}", orders[0]);
    assert_eq!(orders[0]["request"]["reduce_only"], true);
    assert_eq!(orders[0]["request"]["quantity"], 0.5);
    assert_eq!(book().await["size"], 0.5);

    // It turns short: one order closes the long and opens the short.
    alert(&app, &path, tv("sell", "short", 2.0, 1.0, 110.0, 3)).await;
    let orders = settled_orders(&app, "paper-main", 3).await;
    let turn = &orders[0];
    assert_eq!(turn["status"], "filled", "{turn:?}");
    assert_eq!(turn["request"]["side"], "sell");
    assert_eq!(turn["request"]["quantity"], 1.5);
    assert!(close(
        turn["fill"]["realized_pnl"].as_f64().unwrap(),
        0.5 * 10.0
    ));
    let short = book().await;
    assert_eq!(
        (short["size"].as_f64(), short["entry_price"].as_f64()),
        (Some(-1.0), Some(110.0))
    );

    // Turning long again would open more than the account allows: the short still closes,
    // and the order says why nothing more was done.
    let reply = app
        .send(
            "PATCH",
            "/api/v1/accounts/paper-main",
            Some(&json!({"risk": {"max_order_notional": 50}})),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    alert(&app, &path, tv("buy", "long", 2.0, 1.0, 100.0, 4)).await;
    let orders = settled_orders(&app, "paper-main", 4).await;
    let cut = &orders[0];
    assert_eq!(cut["status"], "filled", "{cut:?}");
    assert_eq!(cut["request"]["reduce_only"], true);
    assert_eq!(cut["request"]["quantity"], 1.0);
    assert_eq!(cut["reason"]["code"], "max_order_notional");
    assert_eq!(book().await, Value::Null, "flat");

    // Halted, exits allowed: a reversal only closes.
    app.send(
        "PATCH",
        "/api/v1/accounts/paper-main",
        Some(&json!({"risk": {}})),
    )
    .await;
    alert(&app, &path, tv("sell", "short", 1.0, 1.0, 100.0, 5)).await;
    settled_orders(&app, "paper-main", 5).await;
    assert_eq!(book().await["size"], -1.0);
    let halted = app
        .post(
            "/api/v1/accounts/paper-main/halt",
            &json!({"reason": "news"}),
        )
        .await;
    assert_eq!(halted.status, 200, "{}", halted.text);
    alert(&app, &path, tv("buy", "long", 2.0, 1.0, 99.0, 6)).await;
    let orders = settled_orders(&app, "paper-main", 6).await;
    assert_eq!(orders[0]["status"], "filled", "{:?}", orders[0]);
    assert_eq!(orders[0]["request"]["reduce_only"], true);
    assert_eq!(book().await, Value::Null, "flat, and not long");
}

/// The same signals give the same results live and in a backtest: 1,000 stored signals
/// (entries, exits and prices on two pairs, with brackets) sent to a live paper account,
/// then run by `tradehook backtest` through a fresh one with the destination's settings.
#[tokio::test]
async fn a_backtest_of_the_stored_signals_gives_the_live_accounts_results() {
    let app = spawn_app().await;
    let reply = app.post("/api/v1/accounts", &json!({"name": "live"})).await;
    assert_eq!(reply.status, 201, "{}", reply.text);
    let destination = app
        .create_endpoint(json!({
            "url": "account:live", "ordering": "pair",
            "event_types": ["entry", "exit", "price"],
            "orders": {"symbols": {"BTC/USDT": "BTC/USDT:USDT", "ETH/USDT": "ETH/USDT:USDT"},
                       "size": {"quote": 500}, "pyramiding": 2,
                       "brackets": {"stop_loss_percent": 3, "take_profit_percent": 6}}}))
        .await;
    let id = destination["id"].as_str().unwrap().to_owned();

    // A deterministic walk: half prices, a quarter entries, a quarter exits.
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut prices = [60_000.0_f64, 3_000.0];
    for n in 0..1000 {
        let r = next();
        let pair = (r % 2) as usize;
        let step = ((r >> 8) % 201) as f64 / 100.0 - 1.0; // -1% … +1%
        prices[pair] = (prices[pair] * (1.0 + step / 100.0) * 100.0).round() / 100.0;
        let name = ["BTC/USDT", "ETH/USDT"][pair];
        let side = if (r >> 20) % 2 == 0 { "long" } else { "short" };
        let (kind, data) = match (r >> 24) % 4 {
            0 => (
                "entry",
                json!({"pair": name, "side": side, "price": prices[pair], "n": n}),
            ),
            1 => ("exit", json!({"pair": name, "price": prices[pair], "n": n})),
            _ => (
                "price",
                json!({"pair": name, "price": prices[pair], "n": n}),
            ),
        };
        app.publish(kind, data).await;
    }
    eventually(|| async {
        let pending = app
            .get(&format!(
                "/api/v1/deliveries?endpoint_id={id}&status=pending&limit=1"
            ))
            .await
            .json();
        pending["data"].as_array().unwrap().is_empty().then_some(())
    })
    .await;
    let live = app.get("/api/v1/accounts/live/performance").await.json();
    assert!(live["trades"].as_u64().unwrap() > 50, "{live}");

    // The hub in this test answers on this runtime: the command runs on a thread of its own.
    let url = format!("http://{}", app.addr);
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_tradehook"))
            .args(["backtest", "--json", "--destination", &id, "--url", &url])
            .args(["--token", crate::helpers::TOKEN])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let backtest: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(backtest["signals"], 1000);
    for figure in ["trades", "wins", "losses"] {
        assert_eq!(backtest[figure], live[figure], "{figure}");
    }
    // Sums of the same fills, added up in the same order per pair: equal to the last cent
    // and far beyond.
    for figure in ["realized_pnl", "fees", "end_balance"] {
        let (a, b) = (
            backtest[figure].as_f64().unwrap(),
            live[figure].as_f64().unwrap(),
        );
        assert!((a - b).abs() < 1e-6, "{figure}: backtest {a}, live {b}");
    }
    let orders = app
        .get("/api/v1/accounts/live/orders?limit=1000")
        .await
        .json();
    assert_eq!(
        backtest["orders"],
        orders.as_array().unwrap().len(),
        "the same orders"
    );
}

/// The kill switch from outside: a signed command halts an account as it arrives, its
/// entries are then blocked; a resent command changes nothing, and a command for an
/// account that does not exist stores nothing.
#[tokio::test]
async fn a_signed_command_halts_an_account_and_its_entries_are_blocked() {
    use tradehook::security::sign::hmac_hex;
    let app = spawn_app().await;
    follower(&app, json!({"name": "desk"}), 100.0).await;
    let unsigned = app
        .post(
            "/api/v1/sources",
            &json!({"name": "loose", "format": "command", "auth": {"type": "token"}}),
        )
        .await;
    assert_eq!(unsigned.status, 422, "{}", unsigned.text);
    assert_eq!(unsigned.json()["errors"][0]["field"], "auth");
    let source = app
        .create_source(json!({"name": "panic", "format": "command"}))
        .await;
    assert_eq!(
        source["auth"]["type"], "hmac",
        "signed unless told otherwise"
    );
    let secret = source["secret"].as_str().unwrap().to_owned();
    let send = |body: Value| {
        let body = body.to_string();
        let signature = format!("sha256={}", hmac_hex(secret.as_bytes(), body.as_bytes()));
        let app = &app;
        async move {
            app.post_raw(
                "/in/panic",
                &[
                    ("X-Signature", &signature),
                    ("content-type", "application/json"),
                ],
                body,
            )
            .await
        }
    };

    let forged = app
        .post_raw(
            "/in/panic",
            &[("X-Signature", "sha256=00")],
            r#"{"command":"halt","account":"desk"}"#,
        )
        .await;
    assert_eq!(forged.status, 401);
    let nobody = send(json!({"command": "halt", "account": "nobody"})).await;
    assert_eq!(nobody.status, 404, "{}", nobody.text);
    let bad = send(json!({"command": "sell", "account": "desk", "size": 1})).await;
    assert_eq!(bad.status, 422, "{}", bad.text);
    assert!(
        app.events().await.is_empty(),
        "a refused command stores nothing"
    );
    assert_eq!(
        app.get("/api/v1/accounts/desk").await.json()["halted"],
        Value::Null
    );

    let halt = json!({"command": "halt", "account": "desk", "reason": "exchange outage",
                      "id": "h-1"});
    let reply = send(halt.clone()).await;
    assert_eq!(reply.status, 202, "{}", reply.text);
    let account = app.get("/api/v1/accounts/desk").await.json();
    assert_eq!(account["halted"]["reason"], "exchange outage");
    assert_eq!(account["halted"]["exits_allowed"], true);
    let blocked = signal(
        &app,
        "desk",
        1,
        "entry",
        json!({"pair": "BTC/USDT", "side": "long", "open_rate": 100}),
    )
    .await;
    assert_eq!(blocked["reason"]["code"], "halted", "{blocked}");
    assert_eq!(
        risk_blocked(&app, "halted").await["data"]["order_id"],
        blocked["id"]
    );
    assert!(
        blocked["reason"]["detail"]
            .as_str()
            .unwrap()
            .contains("exchange outage")
    );

    // Resumed by an operator; the same halt command sent again is a duplicate and changes
    // nothing.
    app.post("/api/v1/accounts/desk/resume", &json!({})).await;
    let again = send(halt).await;
    assert_eq!(again.json()["duplicate"], true, "{}", again.text);
    assert_eq!(
        app.get("/api/v1/accounts/desk").await.json()["halted"],
        Value::Null
    );

    // Every account at once, and back.
    follower(&app, json!({"name": "desk-2"}), 100.0).await;
    send(json!({"command": "halt", "account": "*", "exits_allowed": false})).await;
    let halted = app.get("/api/v1/accounts?halted=true").await.json();
    assert_eq!(halted["data"].as_array().unwrap().len(), 2, "{halted}");
    assert_eq!(halted["data"][0]["halted"]["exits_allowed"], false);
    send(json!({"command": "resume", "account": "*"})).await;
    let halted = app.get("/api/v1/accounts?halted=true").await.json();
    assert_eq!(halted["data"], json!([]));
    // Each command is in the event log, for the record.
    let kinds: Vec<String> = app
        .events()
        .await
        .iter()
        .filter_map(|e| e["type"].as_str())
        .filter(|t| t.starts_with("command."))
        .map(str::to_owned)
        .collect();
    assert_eq!(kinds, ["command.resume", "command.halt", "command.halt"]);
}

/// Order per pair: an exit sent right behind its entry waits for it, whatever the load; an
/// exit with no entry before it is refused, and never opens a position the other way.
#[tokio::test]
async fn an_exit_waits_for_its_entry_and_one_without_an_entry_opens_nothing() {
    let app = spawn_app().await;
    let pairs: Vec<String> = (0..20).map(|i| format!("C{i}/USDT")).collect();
    let symbols: serde_json::Map<String, Value> = pairs
        .iter()
        .map(|p| (p.clone(), json!(format!("{p}:USDT"))))
        .collect();
    app.post("/api/v1/accounts", &json!({"name": "seq"})).await;
    app.create_endpoint(json!({
        "url": "account:seq", "ordering": "pair", "event_types": ["entry", "exit"],
        "orders": {"symbols": symbols, "size": {"base": 1}}}))
        .await;
    // An exit for a pair that has seen no entry.
    app.publish("exit", json!({"pair": "C0/USDT", "price": 10}))
        .await;
    let first = orders_when(&app, "seq", |o| o.len() == 1).await;
    assert_eq!(first[0]["status"], "skipped");
    assert_eq!(first[0]["reason"]["code"], "no_position");
    // Each entry and its exit, sent back to back, 20 pairs at once.
    for (n, pair) in pairs.iter().enumerate() {
        app.publish(
            "entry",
            json!({"pair": pair, "side": "long", "price": 10, "n": n}),
        )
        .await;
        app.publish("exit", json!({"pair": pair, "price": 11, "n": n}))
            .await;
    }
    let orders = orders_when(&app, "seq", |o| {
        o.len() == 41 && o.iter().all(|o| o["status"] != "intent")
    })
    .await;
    let filled = orders.iter().filter(|o| o["status"] == "filled").count();
    assert_eq!(filled, 40, "every entry and every exit filled: {orders:?}");
    let book = app.get("/api/v1/accounts/seq/positions").await.json();
    assert_eq!(
        book["positions"],
        json!([]),
        "nothing left open, nothing short"
    );
    assert!(close(book["realized_pnl"].as_f64().unwrap(), 20.0));
}
