//! Signal platforms as endpoints: a leader's TradingView alerts become the 3Commas Signal
//! Bot's webhook, a 3Commas DCA bot's command and Cornix's signal text, each checked against
//! the platform's published example (`tests/fixtures/platforms`).

use std::path::Path;

use serde_json::{Value, json};

use crate::helpers::{Received, TestReceiver, alert, spawn_app, tradingview_source};

fn fixture(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/platforms")
        .join(name);
    std::fs::read_to_string(path).unwrap()
}

/// The JSON type of a value, as a published example's field has it.
fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Whether `body` has the fields of `example` (less the `optional` ones), no others, each
/// of the example's type, recursively.
fn shaped_like(body: &Value, example: &Value, optional: &[&str]) -> Result<(), String> {
    let (Some(body), Some(example)) = (body.as_object(), example.as_object()) else {
        return Err(format!("{body} and {example} are not both objects"));
    };
    for (k, v) in body {
        let Some(e) = example.get(k) else {
            return Err(format!("{k} is not in the published example"));
        };
        if kind(v) != kind(e) {
            return Err(format!("{k} is a {}, the example's a {}", kind(v), kind(e)));
        }
        if v.is_object() {
            shaped_like(v, e, &[])?;
        }
    }
    for k in example.keys() {
        if !body.contains_key(k) && !optional.contains(&k.as_str()) {
            return Err(format!("{k} is missing"));
        }
    }
    Ok(())
}

/// The requests `receiver` got at `path`.
fn at(received: &[Received], path: &str) -> Vec<Received> {
    received
        .iter()
        .filter(|r| r.uri.starts_with(path))
        .cloned()
        .collect()
}

#[tokio::test]
async fn a_leaders_alerts_drive_3commas_and_cornix_without_a_template() {
    let app = spawn_app().await;
    let receiver = TestReceiver::start().await;
    let base = receiver.url.trim_end_matches("/hook").to_owned();
    let signal = app
        .post(
            "/api/v1/endpoints",
            &json!({"url": format!("{base}/3commas/signal"), "preset": "3commas_signal",
                    "event_types": ["entry", "exit"], "token": "eyJhbGciOiJIUzI1NiJ9.c2VjcmV0",
                    "bot_uuid": "0f8c1d2e-5b6a-4c3d-9e8f-7a6b5c4d3e2f", "max_lag": 60,
                    "signal_amount": true}),
        )
        .await;
    assert_eq!(signal.status, 201, "{}", signal.text);
    // The token is write-only.
    assert_eq!(signal.json()["token"], "***");
    assert!(!signal.text.contains("c2VjcmV0"));
    let listed = app.get("/api/v1/endpoints").await;
    assert!(!listed.text.contains("c2VjcmV0"), "{}", listed.text);
    // Sealed at rest too, in the database and its write-ahead log.
    let mut stored = std::fs::read(&app.db_path).unwrap();
    stored.extend(std::fs::read(app.db_path.with_extension("db-wal")).unwrap_or_default());
    let text = String::from_utf8_lossy(&stored);
    assert!(
        text.contains("0f8c1d2e-5b6a"),
        "the files hold the endpoint"
    );
    assert!(!text.contains("c2VjcmV0"));
    let dca = app
        .post(
            "/api/v1/endpoints",
            &json!({"url": format!("{base}/3commas/dca"), "preset": "3commas_dca",
                    "event_types": ["entry", "exit"], "token": "12345678-1234-1234-1234-123456789012",
                    "bot_id": "1234567"}),
        )
        .await;
    assert_eq!(dca.status, 201, "{}", dca.text);
    let cornix = app
        .post(
            "/api/v1/endpoints",
            &json!({"url": format!("{base}/cornix"), "preset": "cornix", "event_types": ["entry"],
                    "exchange": "Binance Futures", "chat_id": "-1001234567890"}),
        )
        .await;
    assert_eq!(cornix.status, 201, "{}", cornix.text);
    let path = tradingview_source(&app, "leader").await;

    alert(
        &app,
        &path,
        json!({"ticker": "BINANCE:BTCUSDT.P", "action": "buy", "price": "64000",
               "amount": "0.015", "leverage": "10", "stop_loss": "62000",
               "take_profit": "66000", "client_ref": "lead-1"}),
    )
    .await;
    alert(
        &app,
        &path,
        json!({"ticker": "BINANCE:BTCUSDT.P", "action": "sell", "market_position": "flat",
               "price": "65000", "amount": "0.015", "client_ref": "lead-2"}),
    )
    .await;
    // Two to each 3Commas bot, the entry to Cornix.
    let received = receiver.wait_for(5).await;

    let published: Value = serde_json::from_str(&fixture("3commas_signal.json")).unwrap();
    let to_signal_bot = at(&received, "/3commas/signal");
    assert_eq!(to_signal_bot.len(), 2);
    let actions: Vec<Value> = to_signal_bot
        .iter()
        .map(|r| r.json()["action"].clone())
        .collect();
    assert_eq!(actions, [json!("enter_long"), json!("exit_long")]);
    for r in &to_signal_bot {
        let body = r.json();
        shaped_like(&body, &published["example"], &["order"])
            .unwrap_or_else(|e| panic!("{e}: {body}"));
        assert!(
            published["actions"]
                .as_array()
                .unwrap()
                .contains(&body["action"])
        );
        assert_eq!(body["secret"], "eyJhbGciOiJIUzI1NiJ9.c2VjcmV0");
        assert_eq!(body["bot_uuid"], "0f8c1d2e-5b6a-4c3d-9e8f-7a6b5c4d3e2f");
        assert_eq!(body["max_lag"], "60");
        assert_eq!(
            (&body["tv_exchange"], &body["tv_instrument"]),
            (&json!("BINANCE"), &json!("BTCUSDT.P"))
        );
        assert_eq!(
            body["order"],
            json!({"amount": "0.015", "currency_type": "base"})
        );
        // When the leader's signal was made, as TradingView's {{timenow}} would say it.
        let at = body["timestamp"].as_str().unwrap();
        assert!(at.parse::<jiff::Timestamp>().is_ok(), "{at}");
    }
    assert_eq!(to_signal_bot[0].json()["trigger_price"], "64000");
    assert_eq!(to_signal_bot[1].json()["trigger_price"], "65000");

    let published: Value = serde_json::from_str(&fixture("3commas_dca.json")).unwrap();
    let to_dca_bot = at(&received, "/3commas/dca");
    assert_eq!(to_dca_bot.len(), 2);
    assert_eq!(to_dca_bot[0].json(), published["start_deal"]);
    assert_eq!(to_dca_bot[1].json(), published["close_at_market"]);

    let to_cornix = at(&received, "/cornix");
    assert_eq!(to_cornix.len(), 1);
    let message = to_cornix[0].json();
    assert_eq!(message["chat_id"], "-1001234567890");
    assert_eq!(
        message["text"].as_str().unwrap(),
        fixture("cornix.txt").trim_end()
    );
}

#[tokio::test]
async fn a_platform_preset_says_what_it_is_missing() {
    let app = spawn_app().await;
    let receiver = TestReceiver::start().await;
    for (body, field) in [
        (
            json!({"preset": "3commas_signal", "event_types": ["entry", "exit"], "token": "t"}),
            "bot_uuid",
        ),
        (
            json!({"preset": "3commas_dca", "event_types": ["entry", "exit"], "bot_id": "1"}),
            "token",
        ),
        // A DCA bot has no use for an order fill: the types it acts on are listed.
        (
            json!({"preset": "3commas_dca", "token": "t", "bot_id": "1"}),
            "event_types",
        ),
        (
            json!({"preset": "cornix", "event_types": ["entry", "exit"]}),
            "event_types",
        ),
        (json!({"preset": "discord", "bot_uuid": "x"}), "bot_uuid"),
        (
            json!({"preset": "cornix", "event_types": ["entry"], "stop_loss_percent": 150}),
            "stop_loss_percent",
        ),
    ] {
        let mut body = body;
        body["url"] = json!(receiver.url);
        let reply = app.post("/api/v1/endpoints", &body).await;
        assert_eq!(reply.status, 422, "{body}: {}", reply.text);
        assert!(reply.text.contains(field), "{field}: {}", reply.text);
    }

    // A Cornix signal needs a take-profit or a stop: the endpoint's percentages stand in
    // for the prices the alert does not carry, on the side of the trade.
    let cornix = app
        .create_endpoint(
            json!({"url": receiver.url, "preset": "cornix", "event_types": ["entry"],
                                "stop_loss_percent": 2, "take_profit_percent": 5}),
        )
        .await;
    assert!(cornix["id"].is_string(), "{cornix}");
    let path = tradingview_source(&app, "tv").await;
    alert(
        &app,
        &path,
        json!({"ticker": "BYBIT:ETHUSDT.P", "action": "sell", "price": "2000", "client_ref": "s-1"}),
    )
    .await;
    let text = String::from_utf8(receiver.wait_for(1).await[0].body.to_vec()).unwrap();
    assert_eq!(
        text,
        "#ETH/USDT\nSignal Type: Regular (Short)\n\nEntry Targets:\n1) 2000\n\n\
         Take-Profit Targets:\n1) 1900\n\nStop Targets:\n1) 2040"
    );
}
