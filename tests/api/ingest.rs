//! Inbound webhooks: authentication, rejections that store nothing, and de-duplication.

use serde_json::json;
use tradehook::security::sign::hmac_hex;

use crate::helpers::*;

async fn rejected_total(app: &TestApp, reason: &str) -> u64 {
    let text = app.get("/metrics").await.text;
    let prefix = format!("tradehook_ingest_rejected_total{{reason=\"{reason}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map(|n| n.parse().unwrap())
        .unwrap_or(0)
}

#[tokio::test]
async fn an_hmac_signed_webhook_is_accepted_and_a_bad_one_stores_nothing() {
    let app = spawn_app().await;
    let source = app
        .create_source(json!({"name": "bot", "auth": {"type": "hmac"}}))
        .await;
    let secret = source["secret"].as_str().unwrap();
    let body = r#"{"type":"entry","pair":"BTC/USDT","price":50000}"#;

    let missing = app.post_raw("/in/bot", &[], body).await;
    assert_eq!(missing.status, 401);
    assert_eq!(missing.json()["code"], "missing_signature");

    let forged = hmac_hex(b"not-the-secret", body.as_bytes());
    let wrong = app
        .post_raw("/in/bot", &[("X-Signature", &forged)], body)
        .await;
    assert_eq!(wrong.status, 401);
    assert_eq!(wrong.json()["code"], "invalid_signature");
    assert!(!wrong.text.contains(secret));
    assert!(
        app.events().await.is_empty(),
        "a rejected request stores nothing"
    );
    assert_eq!(rejected_total(&app, "invalid_signature").await, 1);
    assert_eq!(rejected_total(&app, "missing_signature").await, 1);

    let good = hmac_hex(secret.as_bytes(), body.as_bytes());
    let reply = app
        .post_raw(
            "/in/bot",
            &[("X-Signature", &format!("sha256={good}"))],
            body,
        )
        .await;
    assert_eq!(reply.status, 202, "{}", reply.text);
    let receipt = reply.json();
    assert_eq!(receipt["duplicate"], false);
    let events = app.events().await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["id"], receipt["id"]);
    assert_eq!(events[0]["type"], "entry");
    assert_eq!(events[0]["data"]["pair"], "BTC/USDT");
}

#[tokio::test]
async fn a_base64_hmac_in_a_custom_header_is_accepted() {
    use base64::Engine as _;
    let app = spawn_app().await;
    let source = app
        .create_source(json!({
            "name": "exchange",
            "auth": {"type": "hmac", "header": "X-Exchange-Sig", "encoding": "base64"},
            "secret": "my-own-shared-secret-123",
        }))
        .await;
    assert_eq!(source["secret"], "my-own-shared-secret-123");
    let body = r#"{"type":"entry_fill"}"#;
    let raw = hex::decode(hmac_hex(b"my-own-shared-secret-123", body.as_bytes())).unwrap();
    let sig = base64::engine::general_purpose::STANDARD.encode(raw);
    let reply = app
        .post_raw("/in/exchange", &[("X-Exchange-Sig", &sig)], body)
        .await;
    assert_eq!(reply.status, 202, "{}", reply.text);
}

#[tokio::test]
async fn a_standard_webhooks_sender_is_verified_with_its_timestamp() {
    let app = spawn_app().await;
    let source = app
        .create_source(json!({"name": "provider", "auth": {"type": "standard_webhooks"}}))
        .await;
    let signer = standardwebhooks::Webhook::new(source["secret"].as_str().unwrap()).unwrap();
    let body = br#"{"type":"trade.new","data":{"marketSymbol":"SOL-PERP"}}"#;
    let now = jiff::Timestamp::now().as_second();

    let sig = signer.sign("msg_1", now, body).unwrap();
    let ts = now.to_string();
    let headers = [
        ("webhook-id", "msg_1"),
        ("webhook-timestamp", ts.as_str()),
        ("webhook-signature", sig.as_str()),
    ];
    let reply = app.post_raw("/in/provider", &headers, body.to_vec()).await;
    assert_eq!(reply.status, 202, "{}", reply.text);
    let first = reply.json()["id"].clone();

    // The same webhook-id again is the sender retrying: a duplicate.
    let again = app.post_raw("/in/provider", &headers, body.to_vec()).await;
    assert_eq!(again.status, 202);
    assert_eq!(again.json(), json!({"id": first, "duplicate": true}));

    let old = now - 600;
    let sig = signer.sign("msg_2", old, body).unwrap();
    let old = old.to_string();
    let stale = app
        .post_raw(
            "/in/provider",
            &[
                ("webhook-id", "msg_2"),
                ("webhook-timestamp", &old),
                ("webhook-signature", &sig),
            ],
            body.to_vec(),
        )
        .await;
    assert_eq!(stale.status, 401);
    assert_eq!(stale.json()["code"], "timestamp_out_of_tolerance");

    // An empty webhook-id, even correctly signed, is no id.
    let sig = signer.sign("", now, body).unwrap();
    let empty = app
        .post_raw(
            "/in/provider",
            &[
                ("webhook-id", ""),
                ("webhook-timestamp", ts.as_str()),
                ("webhook-signature", &sig),
            ],
            body.to_vec(),
        )
        .await;
    assert_eq!(empty.status, 401, "{}", empty.text);
    assert_eq!(empty.json()["code"], "missing_signature");
    assert_eq!(app.events().await.len(), 1);
}

#[tokio::test]
async fn a_token_is_accepted_in_the_path_the_query_or_a_body_field_that_is_then_removed() {
    let app = spawn_app().await;
    let source = app
        .create_source(json!({"name": "tv", "auth": {"type": "token", "field": "passphrase"}}))
        .await;
    let token = source["secret"].as_str().unwrap().to_owned();

    let by_path = app
        .post_raw(&format!("/in/tv/{token}"), &[], r#"{"type":"entry","n":1}"#)
        .await;
    assert_eq!(by_path.status, 202, "{}", by_path.text);
    let by_query = app
        .post_raw(
            &format!("/in/tv?token={token}"),
            &[],
            r#"{"type":"entry","n":2}"#,
        )
        .await;
    assert_eq!(by_query.status, 202, "{}", by_query.text);
    let body = json!({"type": "exit", "n": 3, "passphrase": token}).to_string();
    let by_field = app.post_raw("/in/tv", &[], body).await;
    assert_eq!(by_field.status, 202, "{}", by_field.text);

    let bad_path = app
        .post_raw("/in/tv/guess", &[], r#"{"type":"entry"}"#)
        .await;
    assert_eq!(bad_path.status, 401);
    assert_eq!(bad_path.json()["code"], "invalid_token");
    let bad_field = app
        .post_raw("/in/tv", &[], r#"{"type":"entry","passphrase":"guess"}"#)
        .await;
    assert_eq!(bad_field.status, 401);
    let none = app.post_raw("/in/tv", &[], r#"{"type":"entry"}"#).await;
    assert_eq!(none.status, 401);
    assert_eq!(none.json()["code"], "missing_token");

    let events = app.events().await;
    assert_eq!(events.len(), 3);
    let stored = serde_json::to_string(&events).unwrap();
    assert!(
        !stored.contains(&token),
        "the token is not stored: {stored}"
    );
    let exit = events.iter().find(|e| e["type"] == "exit").unwrap();
    assert_eq!(exit["data"], json!({"type": "exit", "n": 3}));
}

#[tokio::test]
async fn an_address_outside_the_allow_list_is_refused_with_403() {
    let app = spawn_app().await;
    app.create_source(json!({
        "name": "tv",
        "auth": {"type": "none"},
        "ip_allowlist": ["52.89.214.238", "34.212.75.30"],
    }))
    .await;
    let reply = app.post_raw("/in/tv", &[], r#"{"type":"entry"}"#).await;
    assert_eq!(reply.status, 403);
    assert_eq!(reply.json()["code"], "address_not_allowed");
    assert!(app.events().await.is_empty());

    app.create_source(
        json!({"name": "local", "auth": {"type": "none"}, "ip_allowlist": ["127.0.0.0/8"]}),
    )
    .await;
    assert_eq!(
        app.post_raw("/in/local", &[], r#"{"type":"entry"}"#)
            .await
            .status,
        202
    );
}

#[tokio::test]
async fn an_ipv4_sender_reaching_an_ipv6_socket_matches_an_ipv4_allow_list() {
    // On a dual-stack socket, 127.0.0.1 arrives as ::ffff:127.0.0.1.
    let app = spawn_app_with(|c| c.listen = "[::]:0".parse().unwrap()).await;
    app.create_source(
        json!({"name": "local", "auth": {"type": "none"}, "ip_allowlist": ["127.0.0.1"]}),
    )
    .await;
    let url = format!("http://127.0.0.1:{}/in/local", app.addr.port());
    let reply = app
        .client
        .post(&url)
        .body(r#"{"type":"entry"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 202, "{}", reply.text().await.unwrap());
    assert_eq!(app.events().await.len(), 1);
}

#[tokio::test]
async fn unknown_sources_malformed_and_oversized_bodies_get_clear_errors() {
    let app = spawn_app_with(|c| c.max_body_bytes = 1024).await;
    app.create_source(json!({"name": "open", "auth": {"type": "none"}}))
        .await;

    let unknown = app.post_raw("/in/nope", &[], "{}").await;
    assert_eq!(unknown.status, 404);
    assert_eq!(unknown.json()["code"], "unknown_source");

    let malformed = app.post_raw("/in/open", &[], r#"{"type": "entry""#).await;
    assert_eq!(malformed.status, 400);
    let body = malformed.json();
    assert_eq!(body["code"], "malformed_body");
    assert!(body["detail"].as_str().unwrap().contains("not valid JSON"));

    let big = format!(r#"{{"type":"entry","pad":"{}"}}"#, "x".repeat(2000));
    let too_large = app.post_raw("/in/open", &[], big).await;
    assert_eq!(too_large.status, 413);
    assert_eq!(too_large.json()["code"], "payload_too_large");

    assert!(app.events().await.is_empty());
    assert_eq!(rejected_total(&app, "payload_too_large").await, 1);
    assert_eq!(rejected_total(&app, "malformed_body").await, 1);
    assert_eq!(rejected_total(&app, "unknown_source").await, 1);
}

#[tokio::test]
async fn the_same_event_sent_twice_is_stored_and_delivered_once() {
    let app = spawn_app().await;
    let receiver = TestReceiver::start().await;
    app.create_endpoint(json!({"url": receiver.url})).await;
    app.create_source(
        json!({"name": "tv", "auth": {"type": "none"}, "dedupe_field": "client_ref"}),
    )
    .await;

    // A byte-identical resend (TradingView retrying after a timeout).
    let body = r#"{"type":"entry","ticker":"BTCUSDT"}"#;
    let first = app.post_raw("/in/tv", &[], body).await.json();
    let second = app.post_raw("/in/tv", &[], body).await.json();
    assert_eq!(first["duplicate"], false);
    assert_eq!(second, json!({"id": first["id"], "duplicate": true}));

    // The sender's own id in the body: a different body with the same client_ref.
    let a = app
        .post_raw(
            "/in/tv",
            &[],
            r#"{"type":"exit","client_ref":"order-77","price":1}"#,
        )
        .await
        .json();
    let b = app
        .post_raw(
            "/in/tv",
            &[],
            r#"{"type":"exit","client_ref":"order-77","price":2}"#,
        )
        .await
        .json();
    assert_eq!(b, json!({"id": a["id"], "duplicate": true}));

    // An id header wins over the body.
    let c = app
        .post_raw(
            "/in/tv",
            &[("X-Delivery-ID", "d-1")],
            r#"{"type":"status","n":1}"#,
        )
        .await
        .json();
    let d = app
        .post_raw(
            "/in/tv",
            &[("X-Delivery-ID", "d-1")],
            r#"{"type":"status","n":2}"#,
        )
        .await
        .json();
    assert_eq!(d["id"], c["id"]);
    assert_eq!(d["duplicate"], true);

    assert_eq!(app.events().await.len(), 3);
    let got = receiver.wait_for(3).await;
    assert_eq!(got.len(), 3);
    let deliveries = app.get("/api/v1/deliveries").await.json();
    assert_eq!(deliveries["data"].as_array().unwrap().len(), 3);
}

#[tokio::test]
async fn the_publisher_api_dedupes_on_the_idempotency_key() {
    let app = spawn_app().await;
    let event = json!({"type": "trade.new", "data": {"pair": "SOL/USDT"}});
    let send = |key: &'static str| {
        let app = &app;
        let event = event.clone();
        async move {
            let reply = app
                .client
                .post(app.url("/api/v1/events"))
                .bearer_auth(TOKEN)
                .header("Idempotency-Key", key)
                .body(event.to_string())
                .send()
                .await
                .unwrap();
            assert_eq!(reply.status(), 202);
            serde_json::from_str::<serde_json::Value>(&reply.text().await.unwrap()).unwrap()
        }
    };
    let first = send("signal-1").await;
    let again = send("signal-1").await;
    let other = send("signal-2").await;
    assert_eq!(again, json!({"id": first["id"], "duplicate": true}));
    assert_eq!(other["duplicate"], false);
    assert_ne!(other["id"], first["id"]);
    assert!(first["id"].as_str().unwrap().starts_with("evt_"));

    let bad = app
        .post(
            "/api/v1/events",
            &json!({"type": "no spaces allowed", "data": {}}),
        )
        .await;
    assert_eq!(bad.status, 422);
    assert_eq!(bad.json()["errors"][0]["field"], "type");
    assert_eq!(app.events().await.len(), 2);
}

#[tokio::test]
async fn a_duplicate_outside_the_dedupe_window_is_a_new_event() {
    let app = spawn_app_with(|c| c.dedupe_window = std::time::Duration::ZERO).await;
    app.create_source(json!({"name": "open", "auth": {"type": "none"}}))
        .await;
    let a = app
        .post_raw("/in/open", &[], r#"{"type":"entry"}"#)
        .await
        .json();
    let b = app
        .post_raw("/in/open", &[], r#"{"type":"entry"}"#)
        .await
        .json();
    assert_eq!(b["duplicate"], false);
    assert_ne!(a["id"], b["id"]);
}

#[tokio::test]
async fn an_integer_too_large_to_keep_exactly_is_refused_not_rounded() {
    let app = spawn_app().await;
    app.create_source(json!({"name": "open", "auth": {"type": "none"}}))
        .await;
    let reply = app
        .post_raw(
            "/in/open",
            &[],
            r#"{"type":"entry","order_id":123456789012345678901234567890}"#,
        )
        .await;
    assert_eq!(reply.status, 400, "{}", reply.text);
    assert_eq!(reply.json()["code"], "malformed_body");
    assert!(reply.text.contains("123456789012345678901234567890"));
    let published = app
        .post(
            "/api/v1/events",
            &json!({"type": "entry", "data": {"n": 1}}),
        )
        .await;
    assert_eq!(published.status, 202);
    let refused = app
        .post_raw(
            "/api/v1/events",
            &[("authorization", &format!("Bearer {TOKEN}"))],
            r#"{"type":"entry","data":{"n":-99999999999999999999}}"#,
        )
        .await;
    assert_eq!(refused.status, 400, "{}", refused.text);
    // The largest exact integers, and the same digits as text, are kept as they came.
    let reply = app
        .post_raw(
            "/in/open",
            &[],
            r#"{"type":"entry","max":18446744073709551615,"id":"123456789012345678901234567890"}"#,
        )
        .await;
    assert_eq!(reply.status, 202, "{}", reply.text);
    let events = app.events().await;
    let stored = events.iter().find(|e| e["data"]["max"].is_u64()).unwrap();
    assert_eq!(stored["data"]["max"], json!(18446744073709551615u64));
    assert_eq!(stored["data"]["id"], "123456789012345678901234567890");
}

#[tokio::test]
async fn a_tradingview_alert_that_is_broken_json_gets_the_json_error() {
    let app = spawn_app().await;
    app.create_source(json!({"name": "tv", "format": "tradingview", "auth": {"type": "none"}}))
        .await;
    let reply = app
        .post_raw(
            "/in/tv",
            &[],
            r#"{"action":"buy","ticker":"BTCUSDT","price":1e400}"#,
        )
        .await;
    assert_eq!(reply.status, 400, "{}", reply.text);
    assert_eq!(reply.json()["code"], "malformed_body");
    assert!(reply.text.contains("not valid JSON"), "{}", reply.text);
}
