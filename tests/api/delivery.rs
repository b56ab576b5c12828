//! Delivery: signed requests, subscriptions, retries, failure, the delivery log and resends.

use std::time::Duration;

use serde_json::{Value, json};
use tradehook::security::sign::hmac_hex;

use crate::helpers::*;

#[tokio::test]
async fn a_delivery_carries_the_event_and_a_verifiable_standard_signature() {
    let app = spawn_app().await;
    let receiver = TestReceiver::start().await;
    let endpoint = app.create_endpoint(json!({"url": receiver.url})).await;
    let event_id = app
        .publish("entry", json!({"pair": "BTC/USDT", "open_rate": 42000.0}))
        .await;

    let got = receiver.wait_for(1).await;
    let req = &got[0];
    assert_eq!(req.header("content-type"), Some("application/json"));
    assert_eq!(req.header("webhook-id"), Some(event_id.as_str()));
    assert_eq!(req.header("x-event-type"), Some("entry"));
    assert_eq!(req.header("x-webhook-id"), endpoint["id"].as_str());
    assert!(req.header("x-delivery-id").unwrap().starts_with("msg_"));

    let verifier = standardwebhooks::Webhook::new(endpoint["secret"].as_str().unwrap()).unwrap();
    let mut headers = http::HeaderMap::new();
    for name in ["webhook-id", "webhook-timestamp", "webhook-signature"] {
        headers.insert(name, req.headers[name].clone());
    }
    verifier
        .verify(&req.body, &headers)
        .expect("the official library accepts our signature");

    let body = req.json();
    assert_eq!(body["id"], event_id);
    assert_eq!(body["type"], "entry");
    assert_eq!(body["source"], "api");
    assert_eq!(
        body["data"],
        json!({"pair": "BTC/USDT", "open_rate": 42000.0})
    );
    assert!(body["timestamp"].as_str().unwrap().ends_with('Z'));

    let delivery = app.await_delivery_status(&event_id, "succeeded").await;
    assert_eq!(delivery["attempt_count"], 1);
    let attempt = &delivery["attempts"][0];
    assert_eq!(attempt["status_code"], 200);
    assert_eq!(attempt["response_body"], "ok");
    assert!(attempt["duration_ms"].is_u64());
    assert_eq!(attempt["error_kind"], serde_json::Value::Null);
}

#[tokio::test]
async fn an_hmac_hex_endpoint_gets_a_hex_signature_of_the_body_and_its_own_headers() {
    let app = spawn_app().await;
    let receiver = TestReceiver::start().await;
    let endpoint = app
        .create_endpoint(json!({
            "url": receiver.url,
            "signing": "hmac_hex",
            "headers": {"X-Api-Key": "k-123"},
        }))
        .await;
    app.publish("trade.new", json!({"marketSymbol": "SOL-PERP"}))
        .await;
    let got = receiver.wait_for(1).await;
    let secret = endpoint["secret"].as_str().unwrap();
    assert_eq!(
        got[0].header("x-webhook-signature"),
        Some(hmac_hex(secret.as_bytes(), &got[0].body).as_str())
    );
    assert_eq!(got[0].header("webhook-signature"), None);
    assert_eq!(got[0].header("x-api-key"), Some("k-123"));
}

#[tokio::test]
async fn each_event_goes_only_to_the_endpoints_subscribed_to_its_type() {
    let app = spawn_app().await;
    let entries = TestReceiver::start().await;
    let exits = TestReceiver::start().await;
    let everything = TestReceiver::start().await;
    app.create_endpoint(json!({"url": entries.url, "event_types": ["entry*"]}))
        .await;
    app.create_endpoint(json!({"url": exits.url, "event_types": ["exit", "exit_fill"]}))
        .await;
    app.create_endpoint(json!({"url": everything.url})).await;
    let disabled = TestReceiver::start().await;
    app.create_endpoint(json!({"url": disabled.url, "enabled": false}))
        .await;

    for t in ["entry", "entry_fill", "exit_fill", "status"] {
        app.publish(t, json!({})).await;
    }
    let all = everything.wait_for(4).await;
    let types = |r: &[Received]| {
        let mut t: Vec<String> = r
            .iter()
            .map(|x| x.header("x-event-type").unwrap().to_owned())
            .collect();
        t.sort();
        t
    };
    assert_eq!(types(&all), ["entry", "entry_fill", "exit_fill", "status"]);
    assert_eq!(types(&entries.wait_for(2).await), ["entry", "entry_fill"]);
    assert_eq!(types(&exits.wait_for(1).await), ["exit_fill"]);
    // Every delivery has been made once the catch-all one has; the log shows exactly 7.
    let log = eventually(|| async {
        let d = app.get("/api/v1/deliveries?status=succeeded").await.json();
        let n = d["data"].as_array().unwrap().len();
        (n == 7).then_some(n)
    })
    .await;
    assert_eq!(log, 7);
    assert_eq!(entries.received().len(), 2);
    assert_eq!(exits.received().len(), 1);
    assert!(disabled.received().is_empty());
}

#[tokio::test]
async fn a_failing_delivery_is_retried_with_the_same_webhook_id_until_it_succeeds() {
    let app = spawn_app().await;
    let receiver = TestReceiver::start().await;
    receiver.script([Answer::Status(500), Answer::Status(503)]);
    app.create_endpoint(json!({"url": receiver.url, "retry_schedule": [0.1, 0.1, 0.1]}))
        .await;
    let event_id = app
        .publish("exit_fill", json!({"profit_ratio": 0.03}))
        .await;

    let got = receiver.wait_for(3).await;
    let ids: Vec<_> = got
        .iter()
        .map(|r| r.header("webhook-id").unwrap())
        .collect();
    assert_eq!(ids, [event_id.as_str(); 3]);
    let attempt_ids: std::collections::HashSet<_> = got
        .iter()
        .map(|r| r.header("x-delivery-id").unwrap())
        .collect();
    assert_eq!(attempt_ids.len(), 3, "X-Delivery-ID is unique per attempt");

    let delivery = app.await_delivery_status(&event_id, "succeeded").await;
    let codes: Vec<_> = delivery["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["status_code"].as_u64().unwrap())
        .collect();
    assert_eq!(codes, [500, 503, 200]);
    assert_eq!(delivery["attempts"][0]["error_kind"], "http_status");
    assert_eq!(delivery["attempts"][0]["response_body"], "answer 500");
}

#[tokio::test]
async fn a_delivery_fails_after_its_last_retry_and_can_be_retried_by_hand() {
    let app = spawn_app().await;
    let receiver = TestReceiver::start().await;
    receiver.script([Answer::Status(500), Answer::Status(502), Answer::Redirect]);
    app.create_endpoint(json!({"url": receiver.url, "retry_schedule": [0.05, 0.05]}))
        .await;
    let event_id = app.publish("entry", json!({})).await;

    let failed = app.await_delivery_status(&event_id, "failed").await;
    assert_eq!(failed["attempt_count"], 3);
    assert_eq!(failed["next_attempt_at"], serde_json::Value::Null);
    assert_eq!(failed["last_status_code"], 302);
    assert!(
        failed["last_error"]
            .as_str()
            .unwrap()
            .contains("redirects are not followed")
    );
    assert_eq!(
        receiver.received().len(),
        3,
        "the redirect was not followed"
    );

    let filtered = app.get("/api/v1/deliveries?status=failed").await.json();
    assert_eq!(filtered["data"].as_array().unwrap().len(), 1);

    let id = failed["id"].as_str().unwrap();
    let retried = app
        .post(&format!("/api/v1/deliveries/{id}/retry"), &json!({}))
        .await;
    assert_eq!(retried.status, 202, "{}", retried.text);
    assert_eq!(retried.json()["status"], "pending");
    receiver.wait_for(4).await;
    let done = app.await_delivery_status(&event_id, "succeeded").await;
    assert_eq!(done["attempt_count"], 4);
}

#[tokio::test]
async fn a_receiver_that_does_not_answer_in_time_is_a_timeout() {
    let app = spawn_app().await;
    let receiver = TestReceiver::start().await;
    receiver.script([Answer::Hang(Duration::from_secs(6))]);
    // A second long enough for the retry's exchange on a machine busy with the other tests.
    app.create_endpoint(json!({"url": receiver.url, "timeout": 1, "retry_schedule": [0.05]}))
        .await;
    let event_id = app.publish("entry", json!({})).await;
    let delivery = app.await_delivery_status(&event_id, "succeeded").await;
    let first = &delivery["attempts"][0];
    assert_eq!(first["error_kind"], "timeout");
    assert_eq!(first["status_code"], serde_json::Value::Null);
    assert!(first["duration_ms"].as_u64().unwrap() < 4000);
}

#[tokio::test]
async fn an_unreachable_endpoint_is_a_connection_error() {
    let app = spawn_app().await;
    // Nothing listens on port 9 of loopback.
    app.create_endpoint(json!({"url": "http://127.0.0.1:9/hook", "retry_schedule": []}))
        .await;
    let event_id = app.publish("entry", json!({})).await;
    let delivery = app.await_delivery_status(&event_id, "failed").await;
    assert_eq!(delivery["attempts"][0]["error_kind"], "connection");
}

#[tokio::test]
async fn a_410_gone_disables_the_endpoint() {
    let app = spawn_app().await;
    let receiver = TestReceiver::start().await;
    receiver.script([Answer::Status(410)]);
    let endpoint = app.create_endpoint(json!({"url": receiver.url})).await;
    let path = format!("/api/v1/endpoints/{}", endpoint["id"].as_str().unwrap());
    let event_id = app.publish("entry", json!({})).await;

    app.await_delivery_status(&event_id, "failed").await;
    let shown = eventually(|| async {
        let e = app.get(&path).await.json();
        (e["enabled"] == false).then_some(e)
    })
    .await;
    assert!(shown["disabled_reason"].as_str().unwrap().contains("410"));

    // While disabled, new events create no delivery for it; once re-enabled, new events reach it.
    let later = app.publish("exit", json!({})).await;
    assert_eq!(
        app.get(&format!("/api/v1/events/{later}")).await.json()["deliveries"],
        json!([])
    );
    let enabled = app
        .send("PATCH", &path, Some(&json!({"enabled": true})))
        .await;
    assert_eq!(enabled.json()["disabled_reason"], serde_json::Value::Null);
    app.publish("exit_fill", json!({})).await;
    let got = receiver.wait_for(2).await;
    assert_eq!(got[1].header("x-event-type"), Some("exit_fill"));
}

#[tokio::test]
async fn an_event_can_be_replayed_to_its_endpoints() {
    let app = spawn_app().await;
    let receiver = TestReceiver::start().await;
    app.create_endpoint(json!({"url": receiver.url})).await;
    let event_id = app.publish("entry", json!({"pair": "ETH/USDT"})).await;
    receiver.wait_for(1).await;

    let replay = app
        .post(&format!("/api/v1/events/{event_id}/replay"), &json!({}))
        .await;
    assert_eq!(replay.status, 202, "{}", replay.text);
    assert_eq!(replay.json()["deliveries"].as_array().unwrap().len(), 1);
    let got = receiver.wait_for(2).await;
    assert_eq!(got[1].body, got[0].body, "the replay sends the same event");
    assert_eq!(got[1].header("webhook-id"), Some(event_id.as_str()));

    let missing = app.post("/api/v1/events/evt_nope/replay", &json!({})).await;
    assert_eq!(missing.status, 404);
}

#[tokio::test]
async fn the_event_log_filters_by_type_and_time_and_pages_with_a_cursor() {
    let app = spawn_app().await;
    for i in 0..5 {
        app.publish("entry", json!({"i": i})).await;
    }
    app.publish("exit", json!({})).await;

    let exits = app.get("/api/v1/events?type=exit").await.json();
    assert_eq!(exits["data"].as_array().unwrap().len(), 1);

    let page1 = app.get("/api/v1/events?type=entry&limit=3").await.json();
    let first: Vec<_> = page1["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["data"]["i"].as_i64().unwrap())
        .collect();
    assert_eq!(first, [4, 3, 2], "newest first");
    let cursor = page1["next_cursor"].as_str().unwrap();
    let page2 = app
        .get(&format!(
            "/api/v1/events?type=entry&limit=3&cursor={cursor}"
        ))
        .await
        .json();
    let second: Vec<_> = page2["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["data"]["i"].as_i64().unwrap())
        .collect();
    assert_eq!(second, [1, 0]);
    assert_eq!(page2["next_cursor"], serde_json::Value::Null);

    let future = app
        .get("/api/v1/events?since=2999-01-01T00:00:00Z")
        .await
        .json();
    assert_eq!(future["data"], json!([]));
    let past = app
        .get("/api/v1/events?until=2000-01-01T00:00:00Z")
        .await
        .json();
    assert_eq!(past["data"], json!([]));
    let bad = app.get("/api/v1/events?since=yesterday").await;
    assert_eq!(bad.status, 422);
    assert_eq!(bad.json()["errors"][0]["field"], "since");
}

#[tokio::test]
async fn retries_waiting_on_a_failing_endpoint_go_out_as_soon_as_it_answers_again() {
    let app = spawn_app().await;
    let receiver = TestReceiver::start().await;
    receiver.script([Answer::Status(500), Answer::Status(503)]);
    // A 30 s backoff: without the release these retries would come long after the
    // receiver's 15 s deadline below.
    app.create_endpoint(json!({"url": receiver.url, "retry_schedule": [30, 30]}))
        .await;
    let a = app.publish("entry", json!({"n": 1})).await;
    receiver.wait_for(1).await;
    let b = app.publish("entry", json!({"n": 2})).await;
    receiver.wait_for(2).await;
    app.await_delivery_status(&b, "pending").await;

    // The receiver is back: the next event succeeds, and the waiting ones follow at once.
    let c = app.publish("entry", json!({"n": 3})).await;
    let got = receiver.wait_for(5).await;
    let ids: std::collections::HashSet<_> = got[2..]
        .iter()
        .map(|r| r.header("webhook-id").unwrap().to_owned())
        .collect();
    assert_eq!(ids, [a.clone(), b.clone(), c].into_iter().collect());
    app.await_delivery_status(&a, "succeeded").await;
    app.await_delivery_status(&b, "succeeded").await;
}

#[tokio::test]
async fn a_delivery_older_than_max_age_is_expired_not_sent_while_a_chat_channel_still_gets_it() {
    // One request at a time per endpoint, so a slow answer holds up the next delivery.
    let app = spawn_app_with(|c| c.dispatch.per_endpoint = 1).await;
    let bot = TestReceiver::start().await;
    let chat = TestReceiver::start().await;
    let bot_ep = app
        .create_endpoint(json!({"url": bot.url, "max_age": 1}))
        .await;
    assert_eq!(bot_ep["max_age"], 1.0);
    app.create_endpoint(json!({"url": chat.url})).await;

    // The execution bot takes 1.5 s over the first entry; the second waits behind it and is
    // older than the bot's max_age by the time the bot could take it.
    bot.script([Answer::Hang(Duration::from_millis(1500))]);
    let first = app
        .publish("entry", json!({"pair": "BTC/USDT", "n": 1}))
        .await;
    let second = app
        .publish("entry", json!({"pair": "ETH/USDT", "n": 2}))
        .await;
    chat.wait_for(2).await;

    let bot_delivery = |event: Value| {
        event["deliveries"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["endpoint_id"] == bot_ep["id"])
            .unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let first_id = bot_delivery(app.get(&format!("/api/v1/events/{first}")).await.json());
    eventually(|| async {
        let d = app
            .get(&format!("/api/v1/deliveries/{first_id}"))
            .await
            .json();
        (d["status"] == "succeeded").then_some(d)
    })
    .await;
    let id = bot_delivery(app.get(&format!("/api/v1/events/{second}")).await.json());
    let d = eventually(|| async {
        let d = app.get(&format!("/api/v1/deliveries/{id}")).await.json();
        (d["status"] == "expired").then_some(d)
    })
    .await;
    let attempt = &d["attempts"][0];
    assert_eq!(attempt["error_kind"], "expired");
    assert!(
        attempt["error"]
            .as_str()
            .unwrap()
            .contains("past this endpoint's max_age of 1 s"),
        "{attempt}"
    );
    let got = bot.received();
    assert_eq!(got.len(), 1, "the stale entry never reached the bot");
    assert_eq!(got[0].json()["data"]["n"], 1);
    let metrics = app.get("/metrics").await.text;
    assert!(
        metrics.contains("tradehook_deliveries_expired_total 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_retry_that_would_come_after_max_age_expires_the_delivery_at_once() {
    let app = spawn_app().await;
    let bot = TestReceiver::start().await;
    app.create_endpoint(json!({"url": bot.url, "max_age": 60, "retry_schedule": [120]}))
        .await;
    bot.script([Answer::Status(503)]);
    let id = app.publish("entry", json!({"pair": "BTC/USDT"})).await;
    let d = app.await_delivery_status(&id, "expired").await;
    assert_eq!(d["attempt_count"], 1);
    assert_eq!(d["attempts"][0]["status_code"], 503);
    assert_eq!(bot.received().len(), 1);
}

#[tokio::test]
async fn after_a_secret_rotation_deliveries_verify_under_both_secrets_until_the_overlap_ends() {
    let app = spawn_app().await;
    let receiver = TestReceiver::start().await;
    let endpoint = app.create_endpoint(json!({"url": receiver.url})).await;
    let old = endpoint["secret"].as_str().unwrap().to_owned();
    let id = endpoint["id"].as_str().unwrap();

    let reply = app
        .post(
            &format!("/api/v1/endpoints/{id}/rotate-secret"),
            &json!({"overlap": 3600}),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let new = reply.json()["secret"].as_str().unwrap().to_owned();
    assert_ne!(new, old);
    let shown = app.get(&format!("/api/v1/endpoints/{id}")).await.text;
    assert!(!shown.contains(&new) && !shown.contains(&old), "{shown}");

    app.publish("entry", json!({"pair": "BTC/USDT"})).await;
    let req = receiver.wait_for(1).await.remove(0);
    assert_eq!(
        req.header("webhook-signature").unwrap().split(' ').count(),
        2
    );
    let mut headers = http::HeaderMap::new();
    for name in ["webhook-id", "webhook-timestamp", "webhook-signature"] {
        headers.insert(name, req.headers[name].clone());
    }
    for secret in [&old, &new] {
        standardwebhooks::Webhook::new(secret)
            .unwrap()
            .verify(&req.body, &headers)
            .expect("a receiver on either secret verifies the delivery");
    }

    // With no overlap, only the new secret signs.
    app.post(
        &format!("/api/v1/endpoints/{id}/rotate-secret"),
        &json!({"overlap": 0}),
    )
    .await;
    app.publish("entry", json!({"pair": "ETH/USDT"})).await;
    let req = receiver.wait_for(2).await.remove(1);
    assert_eq!(
        req.header("webhook-signature").unwrap().split(' ').count(),
        1
    );
}

/// When more deliveries arrive than the dispatcher keeps in memory, the rest wait for room in
/// the hand-over, in memory, instead of going back to the store, where only the next scan
/// would find them (an hour away here).
#[tokio::test]
async fn deliveries_beyond_the_dispatchers_room_wait_for_it_rather_than_for_a_scan() {
    let app = spawn_app_with(|c| {
        c.dispatch.max_queued = 2;
        c.dispatch.scan_interval = Duration::from_secs(3600);
    })
    .await;
    let receiver = TestReceiver::start().await;
    // A slow receiver: 16 attempts in flight, 2 queued, the rest beyond the dispatcher's room.
    receiver.set_delay(Some(Duration::from_millis(300)));
    app.create_endpoint(json!({"url": receiver.url})).await;
    let mut published = std::collections::HashSet::new();
    for n in 0..40 {
        published.insert(app.publish("entry", json!({"n": n})).await);
    }
    let got = receiver.wait_for(40).await;
    let delivered: std::collections::HashSet<_> = got
        .iter()
        .map(|r| r.header("webhook-id").unwrap().to_owned())
        .collect();
    assert_eq!(delivered, published);
}
