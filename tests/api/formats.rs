//! Inbound formats over HTTP, with the payloads our users' senders really send (the seeds).

use serde_json::{Value, json};

use crate::helpers::{TestApp, spawn_app};

/// Creates a source of `format` with a URL token; returns its ingest path.
async fn source(app: &TestApp, name: &str, format: &str) -> String {
    let s = app
        .create_source(json!({"name": name, "format": format}))
        .await;
    format!("/in/{name}/{}", s["secret"].as_str().unwrap())
}

async fn event(app: &TestApp, id: &str) -> Value {
    let reply = app.get(&format!("/api/v1/events/{id}")).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    reply.json()
}

/// Posts and expects 202; returns the stored event.
async fn accepted(app: &TestApp, path: &str, content_type: &str, body: &str) -> Value {
    let reply = app
        .post_raw(path, &[("content-type", content_type)], body)
        .await;
    assert_eq!(reply.status, 202, "{}", reply.text);
    event(app, reply.json()["id"].as_str().unwrap()).await
}

#[tokio::test]
async fn freqtrade_json_form_and_raw_bodies_become_typed_canonical_events() {
    let app = spawn_app().await;
    let path = source(&app, "ft", "freqtrade").await;

    // Freqtrade's `form` format (its default): every value is Python text.
    let form = "type=exit_fill&trade_id=42&exchange=binance&pair=BTC%2FUSDT%3AUSDT&direction=Long\
                &leverage=3.0&open_rate=42150.0&close_rate=43500.0&amount=0.002\
                &profit_ratio=0.0287&profit_amount=2.7&stake_currency=USDT&exit_reason=roi\
                &enter_tag=None&is_final_exit=True&sub_trade=False\
                &open_date=2024-01-15+08%3A00%3A00.123456%2B00%3A00&close_date=2024-01-15+14%3A00%3A00";
    let e = accepted(&app, &path, "application/x-www-form-urlencoded", form).await;
    assert_eq!(e["type"], "exit_fill");
    let d = &e["data"];
    assert_eq!(d["pair"], "BTC/USDT");
    assert_eq!(d["symbol"], "BTC/USDT:USDT");
    assert_eq!(d["perpetual"], true);
    assert_eq!(d["side"], "long");
    assert_eq!(d["trade_id"], 42);
    assert_eq!(d["leverage"], 3.0);
    assert_eq!(d["close_rate"], 43500.0);
    assert_eq!(d["price"], 43500.0);
    assert_eq!(d["profit_ratio"], 0.0287);
    assert_eq!(d["profit_abs"], 2.7);
    assert_eq!(d["enter_tag"], Value::Null);
    assert_eq!(d["is_final_exit"], true);
    assert_eq!(d["sub_trade"], false);
    assert_eq!(d["open_date"], "2024-01-15T08:00:00.123456Z");
    assert_eq!(d["close_date"], "2024-01-15T14:00:00Z");

    // The `json` format, with the seed's typed values.
    let seed_entry = json!({
        "type": "entry", "exchange": "binance", "pair": "BTC/USDT", "side": "long",
        "trade_id": 123, "open_rate": 42000.00, "amount": 0.002, "stake_amount": 84.00,
        "stake_currency": "USDT", "open_date": "2024-01-15T08:00:00Z", "enter_tag": "rsi_oversold"
    });
    let e = accepted(&app, &path, "application/json", &seed_entry.to_string()).await;
    assert_eq!(e["type"], "entry");
    assert_eq!(e["data"]["price"], 42000.0);
    assert_eq!(e["data"]["enter_tag"], "rsi_oversold");

    // The `raw` format: a status text with raw newlines is not JSON, and is kept as text.
    let e = accepted(
        &app,
        &path,
        "text/plain",
        "Bot running\nOpen trades: 2\t\"ok\"",
    )
    .await;
    assert_eq!(e["type"], "status");
    assert_eq!(e["data"]["status"], "Bot running\nOpen trades: 2\t\"ok\"");
}

#[tokio::test]
async fn trade_events_with_missing_or_impossible_values_are_refused_with_field_details() {
    let app = spawn_app().await;
    let path = source(&app, "ft", "freqtrade").await;
    let post = |body: &'static str| {
        let app = &app;
        let path = path.clone();
        async move {
            app.post_raw(&path, &[("content-type", "application/json")], body)
                .await
        }
    };

    let reply = post(r#"{"type":"entry","open_rate":"42000","amount":"-1"}"#).await;
    assert_eq!(reply.status, 422, "{}", reply.text);
    let body = reply.json();
    assert_eq!(body["code"], "invalid_payload");
    let fields: Vec<&str> = body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["amount", "pair"]);

    let reply = post(r#"{"type":"entry","pair":"BTC/USDT","open_rate":"nan"}"#).await;
    assert_eq!(reply.status, 422);
    assert_eq!(reply.json()["errors"][0]["field"], "open_rate");
    let reply = post(r#"{"type":"teleport","pair":"BTC/USDT"}"#).await;
    assert_eq!(reply.status, 422);
    assert!(
        reply.json()["detail"]
            .as_str()
            .unwrap()
            .contains("unknown type")
    );
    let reply = post(r#"{"pair":"BTC/USDT"}"#).await;
    assert_eq!(reply.status, 422);
    assert!(reply.json()["detail"].as_str().unwrap().contains("{type}"));

    assert!(app.events().await.is_empty(), "nothing half-stored");
}

#[tokio::test]
async fn tradingview_alerts_are_authenticated_mapped_deduplicated_and_never_store_the_passphrase() {
    let app = spawn_app().await;
    let s = app
        .create_source(json!({"name": "tv", "format": "tradingview"}))
        .await;
    assert_eq!(s["auth"], json!({"type": "token", "field": "passphrase"}));
    let secret = s["secret"].as_str().unwrap().to_owned();

    // The seed's Pine alert, with the passphrase in the body (TradingView cannot set headers).
    let alert = json!({
        "symbol": "BINANCE:ETHUSDT.P", "strategy": "sma-cross", "signal": "BUY",
        "price": "3012.5", "contracts": "0.5", "client_ref": "1714564800-42",
        "passphrase": secret
    })
    .to_string();
    let first = app
        .post_raw(
            "/in/tv",
            &[("content-type", "application/json")],
            alert.clone(),
        )
        .await;
    assert_eq!(first.status, 202, "{}", first.text);
    assert_eq!(first.json()["duplicate"], false);
    // TradingView resends on a 5xx or a slow answer: the resend is recognised.
    let again = app
        .post_raw("/in/tv", &[("content-type", "application/json")], alert)
        .await;
    assert_eq!(again.json()["duplicate"], true);
    assert_eq!(again.json()["id"], first.json()["id"]);

    let e = event(&app, first.json()["id"].as_str().unwrap()).await;
    assert_eq!(e["type"], "entry");
    assert_eq!(e["dedupe_key"], "1714564800-42");
    let d = &e["data"];
    assert_eq!(
        (&d["pair"], &d["side"], &d["exchange"], &d["perpetual"]),
        (
            &json!("ETH/USDT"),
            &json!("long"),
            &json!("binance"),
            &json!(true)
        )
    );
    assert_eq!(
        (&d["open_rate"], &d["amount"]),
        (&json!(3012.5), &json!(0.5))
    );
    assert!(
        !e.to_string().contains(&secret),
        "the passphrase is not kept"
    );

    // A short text command, with the token in the URL.
    let reply = app
        .post_raw(
            &format!("/in/tv/{secret}"),
            &[("content-type", "text/plain")],
            "close_long BTCUSDT 0.01",
        )
        .await;
    assert_eq!(reply.status, 202, "{}", reply.text);
    let e = event(&app, reply.json()["id"].as_str().unwrap()).await;
    assert_eq!(
        (&e["type"], &e["data"]["side"]),
        (&json!("exit"), &json!("long"))
    );

    // An alert whose placeholders TradingView did not fill in says so.
    let unfilled =
        json!({"ticker": "BTCUSDT", "action": "{{strategy.order.action}}", "passphrase": secret});
    let reply = app
        .post_raw(
            "/in/tv",
            &[("content-type", "application/json")],
            unfilled.to_string(),
        )
        .await;
    assert_eq!(reply.status, 422);
    assert!(
        reply.text.contains("{{strategy.order.action}}"),
        "{}",
        reply.text
    );
}

#[tokio::test]
async fn the_tradingview_allow_list_preset_refuses_other_addresses() {
    let app = spawn_app().await;
    let s = app
        .create_source(
            json!({"name": "tv", "format": "tradingview", "ip_allowlist": ["tradingview"]}),
        )
        .await;
    assert_eq!(
        s["ip_allowlist"],
        json!([
            "52.89.214.238/32",
            "34.212.75.30/32",
            "54.218.53.128/32",
            "52.32.178.7/32"
        ])
    );
    let reply = app
        .post_raw(
            &format!("/in/tv/{}", s["secret"].as_str().unwrap()),
            &[],
            "buy BTCUSDT",
        )
        .await;
    assert_eq!(reply.status, 403);
    assert_eq!(reply.json()["code"], "address_not_allowed");
}

#[tokio::test]
async fn copy_trading_signals_from_the_seed_become_canonical_events() {
    let app = spawn_app().await;
    let path = source(&app, "copy", "copytrade").await;
    let entry = json!({
        "action": "entry", "exchange": "binance", "pair": "BTC/USDT", "leverage": "2",
        "direction": "long", "stake_amount": "100.00", "stake_currency": "USDT",
        "price": "50000.00", "timestamp": "2026-01-29T10:30:00Z",
        "strategy": "SupertrendSniperPro", "enter_tag": "hma_supertrend_long"
    });
    let e = accepted(&app, &path, "application/json", &entry.to_string()).await;
    assert_eq!(e["type"], "entry");
    let d = &e["data"];
    assert_eq!((&d["side"], &d["leverage"]), (&json!("long"), &json!(2)));
    assert_eq!(
        (&d["stake_amount"], &d["open_rate"]),
        (&json!(100.0), &json!(50000.0))
    );
    assert_eq!(d["date"], "2026-01-29T10:30:00Z");

    let exit = json!({
        "action": "exit", "exchange": "binance", "pair": "BTC/USDT", "direction": "long",
        "amount": "0.002", "price": "51500.00", "profit_ratio": "0.03", "profit_amount": "3.00",
        "exit_reason": "exit_signal_long", "timestamp": "2026-01-29T11:00:00Z",
        "duration": "30 minutes", "strategy": "SupertrendSniperPro"
    });
    let e = accepted(&app, &path, "application/json", &exit.to_string()).await;
    assert_eq!(e["type"], "exit");
    assert_eq!(e["data"]["close_rate"], 51500.0);
    assert_eq!(e["data"]["profit_abs"], 3.0);
    assert_eq!(e["data"]["duration"], "30 minutes");

    let status =
        json!({"action": "status", "status": "running", "timestamp": "2026-01-29T09:00:00Z"});
    let e = accepted(&app, &path, "application/json", &status.to_string()).await;
    assert_eq!(
        (&e["type"], &e["data"]["status"]),
        (&json!("status"), &json!("running"))
    );

    let reply = app
        .post_raw(&path, &[], r#"{"action":"hodl","pair":"BTC/USDT"}"#)
        .await;
    assert_eq!(reply.status, 422);
    assert_eq!(reply.json()["errors"][0]["field"], "action");
}

#[tokio::test]
async fn provider_envelopes_use_their_id_as_the_dedupe_key() {
    let app = spawn_app().await;
    let path = source(&app, "perps", "envelope").await;
    let envelope = json!({
        "id": "evt_abc123xyz", "type": "trade.new", "created": 1705312800,
        "data": {
            "owner": "DRVRvzf8pSiMJi5BY1NmZu5STahBYKMVcfkPp3vxPump", "marketSymbol": "SOL-PERP",
            "side": "long", "sizeUsd": 15000.50, "leverage": 5.2, "entryPrice": 185.42,
            "collateral": 2884.71, "timestamp": "2025-01-15T10:30:00Z"
        }
    })
    .to_string();
    let first = app.post_raw(&path, &[], envelope.clone()).await;
    assert_eq!(first.status, 202, "{}", first.text);
    // A provider's retry carries the same id, even with a different delivery.
    let retried = envelope.replace("10:30:00Z", "10:30:00.000Z");
    let again = app.post_raw(&path, &[], retried).await;
    assert_eq!(again.json()["duplicate"], true);

    let e = event(&app, first.json()["id"].as_str().unwrap()).await;
    assert_eq!(
        (&e["type"], &e["dedupe_key"]),
        (&json!("entry"), &json!("evt_abc123xyz"))
    );
    let d = &e["data"];
    assert_eq!(
        (&d["pair"], &d["perpetual"]),
        (&json!("SOL/USD"), &json!(true))
    );
    assert_eq!(
        (&d["stake_amount"], &d["stake_currency"]),
        (&json!(15000.5), &json!("USD"))
    );
    assert_eq!(
        (&d["open_rate"], &d["leverage"]),
        (&json!(185.42), &json!(5.2))
    );
    assert_eq!(d["date"], "2025-01-15T10:30:00Z");
    assert_eq!(d["provider_type"], "trade.new");

    let reply = app
        .post_raw(
            &path,
            &[],
            r#"{"id":"x","type":"trade.teleport","data":{}}"#,
        )
        .await;
    assert_eq!(reply.status, 422);
}

#[tokio::test]
async fn generic_json_is_read_through_a_field_mapping() {
    let app = spawn_app().await;
    let s = app
        .create_source(json!({
            "name": "desk", "format": "json",
            "mapping": {
                "fields": {"type": "/kind", "id": "/ref", "pair": "/instrument/name",
                           "price": "/px", "amount": "/qty", "side": "/dir"},
                "types": {"NEW": "entry", "DONE": "exit_fill"}
            }
        }))
        .await;
    let path = format!("/in/desk/{}", s["secret"].as_str().unwrap());
    let body = json!({"kind": "NEW", "ref": "ord-7", "instrument": {"name": "eth_usdc"},
                      "px": "3000.5", "qty": 2, "dir": "SELL"});
    let e = accepted(&app, &path, "application/json", &body.to_string()).await;
    assert_eq!(
        (&e["type"], &e["dedupe_key"]),
        (&json!("entry"), &json!("ord-7"))
    );
    let d = &e["data"];
    assert_eq!(
        (&d["pair"], &d["side"]),
        (&json!("ETH/USDC"), &json!("short"))
    );
    assert_eq!((&d["open_rate"], &d["amount"]), (&json!(3000.5), &json!(2)));

    let reply = app
        .post_raw(
            &path,
            &[],
            r#"{"kind":"AMEND","instrument":{"name":"ETHUSDC"}}"#,
        )
        .await;
    assert_eq!(reply.status, 422);
    assert!(reply.text.contains("AMEND"), "{}", reply.text);

    let bad = app
        .post(
            "/api/v1/sources",
            &json!({"name": "x", "format": "tradingview", "mapping": {}}),
        )
        .await;
    assert_eq!(bad.status, 422);
}

/// Builds every notification Freqtrade's webhook sends, with the fields Freqtrade's own code
/// puts in each message (`freqtradebot._notify_*`, `PairLock.to_json()`, `RPC` status
/// messages), renders each through a webhook section that templates every field as
/// `"{field}"` (so every value is Python's text of it), and returns the request each of the
/// `json`, `form` and `raw` formats makes with `requests`, as Freqtrade sends it.
const FREQTRADE_MESSAGES: &str = r#"
import sys, json, base64, datetime, requests
utc = datetime.timezone.utc
opened = datetime.datetime(2024, 11, 20, 8, 0, 0, 123456, tzinfo=utc)
closed = datetime.datetime(2024, 11, 20, 14, 30, tzinfo=utc)
until = datetime.datetime(2024, 11, 20, 16, 0, tzinfo=utc)
trade = {"trade_id": 42, "exchange": "Binance", "pair": "BTC/USDT:USDT", "leverage": 3.0,
         "direction": "Short", "limit": 42150.5, "open_rate": 42150.5, "order_type": "limit",
         "stake_amount": 84.301, "stake_currency": "USDT", "base_currency": "BTC",
         "quote_currency": "USDT", "fiat_currency": None, "amount": 0.002,
         "open_date": opened, "current_rate": 42149.9, "sub_trade": False,
         "enter_tag": "rsi_cross", "buy_tag": "rsi_cross"}
exit = dict(trade, gain="profit", order_rate=41000.0, close_rate=41000.0, profit_amount=2.3,
            profit_ratio=0.0273, exit_reason="roi", close_date=closed, cumulative_profit=2.3,
            final_profit_ratio=0.0273, is_final_exit=True)
def lock(pair, side):
    return {"id": 7, "pair": pair, "lock_time": opened.strftime("%Y-%m-%d %H:%M:%S"),
            "lock_timestamp": int(opened.timestamp() * 1000),
            "lock_end_time": until.strftime("%Y-%m-%d %H:%M:%S"),
            "lock_end_timestamp": int(until.timestamp() * 1000),
            "reason": "StoplossGuard: 4 stoplosses in 60 min", "side": side, "active": True}
messages = [
    {"type": "status", "status": "running"},
    {"type": "warning", "status": "Max open trades reached"},
    {"type": "startup", "status": "*Exchange:* `binance`\n*Stake per trade:* `84 USDT`"},
    {"type": "exception", "status": "Exception in process: ccxt.NetworkError"},
    dict(trade, type="entry"),
    dict(trade, type="entry_fill"),
    dict(trade, type="entry_cancel", reason="Timeout"),
    dict(exit, type="exit"),
    dict(exit, type="exit_fill"),
    dict(exit, type="exit_cancel", reason="Exit order cancelled"),
    dict({"type": "protection_trigger", "base_currency": "BTC"}, **lock("BTC/USDT:USDT", "*")),
    dict({"type": "protection_trigger_global"}, **lock("*", "*")),
    {"type": "strategy_msg", "msg": "Regime changed to bearish"},
]
out = []
for msg in messages:
    template = {k: "{" + k + "}" for k in msg}
    payload = {k: v.format(**msg) for k, v in template.items()}
    raw = "{{" + ", ".join('"%s": "{%s}"' % (k, k) for k in msg if "\n" not in str(msg[k])) + "}}"
    for fmt, req in (
        ("form", requests.Request("POST", "http://x/", data=payload)),
        ("json", requests.Request("POST", "http://x/", json=payload)),
        ("raw", requests.Request("POST", "http://x/", data=raw.format(**msg),
                                 headers={"Content-Type": "text/plain"})),
    ):
        p = req.prepare()
        body = p.body.encode() if isinstance(p.body, str) else p.body
        out.append({"format": fmt, "type": msg["type"], "content_type": p.headers["Content-Type"],
                    "body": base64.b64encode(body).decode()})
json.dump(out, sys.stdout)
"#;

#[tokio::test]
async fn every_notification_freqtrade_sends_is_accepted_in_every_format() {
    use base64::Engine as _;
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(FREQTRADE_MESSAGES)
        .output()
        .expect("python3 with requests must be installed (.ci/run installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let requests: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(requests.len(), 13 * 3);

    let app = spawn_app().await;
    let path = source(&app, "ft", "freqtrade").await;
    for r in &requests {
        let body = base64::engine::general_purpose::STANDARD
            .decode(r["body"].as_str().unwrap())
            .unwrap();
        let reply = app
            .post_raw(
                &path,
                &[("content-type", r["content_type"].as_str().unwrap())],
                body,
            )
            .await;
        assert_eq!(
            reply.status, 202,
            "{} as {}: {}",
            r["type"], r["format"], reply.text
        );
        let e = event(&app, reply.json()["id"].as_str().unwrap()).await;
        assert_eq!(e["type"], r["type"], "{}", r["format"]);
        let d = &e["data"];
        match r["type"].as_str().unwrap() {
            "protection_trigger_global" => {
                assert_eq!((&d["pair"], &d["side"]), (&json!("*"), &json!("*")));
                assert_eq!(d["lock_end_time"], "2024-11-20 16:00:00");
                assert_eq!(d["lock_end_timestamp"], 1_732_118_400_000_i64);
                assert_eq!(d["reason"], "StoplossGuard: 4 stoplosses in 60 min");
            }
            "protection_trigger" => {
                assert_eq!((&d["pair"], &d["side"]), (&json!("BTC/USDT"), &json!("*")));
                assert_eq!(d["active"], true);
            }
            t if t.starts_with("entry") || t.starts_with("exit") => {
                assert_eq!(
                    (&d["pair"], &d["side"]),
                    (&json!("BTC/USDT"), &json!("short"))
                );
                assert_eq!(d["trade_id"], 42);
                assert_eq!(d["open_date"], "2024-11-20T08:00:00.123456Z");
            }
            "strategy_msg" => assert_eq!(d["msg"], "Regime changed to bearish"),
            // The raw template leaves out the startup text's newlines (not JSON in a string).
            "startup" if r["format"] == "raw" => assert_eq!(d, &json!({})),
            _ => assert!(d["status"].is_string(), "{d}"),
        }
    }
}

#[tokio::test]
async fn every_pair_and_both_sides_are_refused_for_an_event_about_one_position() {
    let app = spawn_app().await;
    let path = source(&app, "ft", "freqtrade").await;
    let reply = app
        .post_raw(
            &path,
            &[("content-type", "application/json")],
            r#"{"type":"entry","pair":"*","side":"*","open_rate":"1","amount":"1"}"#,
        )
        .await;
    assert_eq!(reply.status, 422, "{}", reply.text);
    let errors = reply.json()["errors"].clone();
    assert_eq!(errors[0]["field"], "pair");
    assert!(
        errors[0]["message"]
            .as_str()
            .unwrap()
            .contains("names no position")
    );
    assert_eq!(errors[1]["field"], "side");
    assert_eq!(app.events().await, Vec::<Value>::new());
}
