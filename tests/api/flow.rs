//! Delivery under real-world pressure: ordering, pauses, rate limits and isolation.

use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::*;

/// Every delivery of an endpoint, as the API lists them.
async fn deliveries_of(app: &TestApp, endpoint_id: &str) -> Vec<Value> {
    let reply = app
        .get(&format!(
            "/api/v1/deliveries?endpoint_id={endpoint_id}&limit=500"
        ))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    reply.json()["data"].as_array().unwrap().clone()
}

/// An endpoint's pending deliveries that no node holds: they wait in the store, not in memory.
fn waiting_in_store(app: &TestApp, endpoint_id: &str) -> i64 {
    let conn = rusqlite::Connection::open(&app.db_path).unwrap();
    conn.query_row(
        "select count(*) from deliveries
         where endpoint_id = ?1 and status = 'pending' and lease_owner is null",
        [endpoint_id],
        |r| r.get(0),
    )
    .unwrap()
}

#[tokio::test]
async fn ordered_delivery_never_lets_an_exit_overtake_its_entry() {
    let app = spawn_app().await;
    let by_pair = TestReceiver::start().await;
    let whole = TestReceiver::start().await;
    let ep = app
        .create_endpoint(json!({"url": by_pair.url, "ordering": "pair", "retry_schedule": [1]}))
        .await;
    assert_eq!(ep["ordering"], "pair");
    app.create_endpoint(json!({"url": whole.url, "ordering": "endpoint", "retry_schedule": [1]}))
        .await;
    // The follower fails the BTC entry once.
    by_pair.script([Answer::Status(503)]);
    whole.script([Answer::Status(503)]);

    app.publish("entry", json!({"pair": "BTC/USDT", "step": "btc-entry"}))
        .await;
    app.publish("exit", json!({"pair": "BTC/USDT", "step": "btc-exit"}))
        .await;
    app.publish("entry", json!({"pair": "ETH/USDT", "step": "eth-entry"}))
        .await;

    let steps = |r: &TestReceiver, n: usize| {
        let r = r.clone();
        async move {
            r.wait_for(n)
                .await
                .iter()
                .map(|x| x.json()["data"]["step"].as_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        }
    };
    // By pair: ETH goes on while BTC waits for its entry's retry; the exit comes last.
    let got = steps(&by_pair, 4).await;
    let pos = |s: &str| got.iter().rposition(|x| x == s).unwrap();
    assert_eq!(
        got.iter().filter(|s| *s == "btc-entry").count(),
        2,
        "{got:?}"
    );
    assert!(pos("eth-entry") < pos("btc-entry"), "{got:?}");
    assert!(pos("btc-exit") > pos("btc-entry"), "{got:?}");
    // For the whole endpoint: one sequence, in event order.
    let got = steps(&whole, 4).await;
    assert_eq!(got, ["btc-entry", "btc-entry", "btc-exit", "eth-entry"]);
}

#[tokio::test]
async fn a_429_with_retry_after_pauses_the_whole_endpoint() {
    let app = spawn_app().await;
    let receiver = TestReceiver::start().await;
    app.create_endpoint(json!({"url": receiver.url, "retry_schedule": [0.1]}))
        .await;
    receiver.script([Answer::RetryAfter(429, "2")]);
    let first = app.publish("entry", json!({"n": 1})).await;
    receiver.wait_for(1).await;
    app.await_delivery_status(&first, "pending").await;
    let second = app.publish("entry", json!({"n": 2})).await;

    let got = receiver.wait_for(3).await;
    // Neither the retry nor the new delivery went out before the two seconds asked for.
    for later in &got[1..] {
        assert!(
            later.at.duration_since(got[0].at) >= Duration::from_millis(1900),
            "{:?}",
            later.at.duration_since(got[0].at)
        );
    }
    app.await_delivery_status(&first, "succeeded").await;
    app.await_delivery_status(&second, "succeeded").await;
}

#[tokio::test]
async fn a_rate_limit_spaces_requests_and_the_excess_waits_in_the_store() {
    let app = spawn_app().await;
    let receiver = TestReceiver::start().await;
    let spaced = TestReceiver::start().await;
    let slow = app
        .create_endpoint(json!({"url": receiver.url, "rate_limit": "2/min"}))
        .await;
    assert_eq!(slow["rate_limit"], "2/min");
    app.create_endpoint(json!({"url": spaced.url, "rate_limit": "4/s", "event_types": ["tick"]}))
        .await;

    for n in 0..40 {
        app.publish("entry", json!({"n": n})).await;
    }
    // Two go at once; the dispatcher keeps what it can soon use, and the rest waits in the
    // store, not leased to this node (not in its memory).
    let id = slow["id"].as_str().unwrap().to_owned();
    let waiting = eventually(|| async {
        let n = waiting_in_store(&app, &id);
        (n >= 6).then_some(n)
    })
    .await;
    assert!(waiting >= 6, "{waiting}");
    assert_eq!(receiver.received().len(), 2);

    // 4 a second: 8 requests take at least one second after the first 4.
    for n in 0..8 {
        app.publish("tick", json!({"n": n})).await;
    }
    let got = spaced.wait_for(8).await;
    assert!(
        got[7].at.duration_since(got[0].at) >= Duration::from_millis(900),
        "{:?}",
        got[7].at.duration_since(got[0].at)
    );
}

#[tokio::test]
async fn a_hanging_endpoint_does_not_delay_a_healthy_one() {
    let app = spawn_app().await;
    let dead = TestReceiver::start().await;
    let healthy = TestReceiver::start().await;
    dead.set_delay(Some(Duration::from_secs(30)));
    let dead_ep = app
        .create_endpoint(json!({"url": dead.url, "timeout": 5}))
        .await;
    app.create_endpoint(json!({"url": healthy.url})).await;

    for n in 0..50 {
        app.publish("entry", json!({"n": n})).await;
    }
    // Every healthy delivery arrives while the dead endpoint's requests are still hanging:
    // none of them has even timed out yet.
    healthy.wait_for(50).await;
    let dead_deliveries = deliveries_of(&app, dead_ep["id"].as_str().unwrap()).await;
    assert_eq!(dead_deliveries.len(), 50);
    assert!(dead_deliveries.iter().all(|d| d["attempt_count"] == 0));
    assert!(
        dead.received().len() <= 16,
        "at most its concurrency is tied up"
    );
}

#[tokio::test]
async fn an_endpoint_that_keeps_failing_is_disabled_announced_and_caught_up_after_recover() {
    let app = spawn_app_with(|c| {
        c.dispatch.auto_disable_failures = 3;
        c.dispatch.auto_disable_after = Duration::ZERO;
    })
    .await;
    let start = jiff::Timestamp::now();
    let bot = TestReceiver::start().await;
    let ops = TestReceiver::start().await;
    let bot_ep = app
        .create_endpoint(json!({"url": bot.url, "retry_schedule": [0.05, 0.05], "event_types": ["entry", "exit"]}))
        .await;
    let bot_id = bot_ep["id"].as_str().unwrap().to_owned();
    app.create_endpoint(json!({"url": ops.url, "event_types": ["endpoint.disabled"]}))
        .await;
    bot.script([
        Answer::Status(500),
        Answer::Status(500),
        Answer::Status(500),
    ]);

    let first = app
        .publish("entry", json!({"pair": "BTC/USDT", "n": 1}))
        .await;
    // The operator's own endpoint hears of it, through the hub.
    let notice = ops.wait_for(1).await[0].json();
    assert_eq!(notice["type"], "endpoint.disabled");
    assert_eq!(notice["source"], "hub");
    assert_eq!(notice["data"]["endpoint_id"], bot_id.as_str());
    assert_eq!(notice["data"]["failures"], 3);
    assert!(
        notice["data"]["reason"]
            .as_str()
            .unwrap()
            .starts_with("3 consecutive failed attempts"),
        "{notice}"
    );
    let shown = app.get(&format!("/api/v1/endpoints/{bot_id}")).await.json();
    assert_eq!(shown["enabled"], false);
    assert!(
        shown["disabled_reason"]
            .as_str()
            .unwrap()
            .contains("consecutive")
    );
    app.await_delivery_status(&first, "failed").await;

    // Missed while disabled: no deliveries are made to it.
    app.publish("exit", json!({"pair": "BTC/USDT", "n": 2}))
        .await;
    app.publish("entry", json!({"pair": "ETH/USDT", "n": 3}))
        .await;

    let reply = app
        .send(
            "PATCH",
            &format!("/api/v1/endpoints/{bot_id}"),
            Some(&json!({"enabled": true})),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let reply = app
        .post(
            &format!("/api/v1/endpoints/{bot_id}/recover"),
            &json!({"since": start.to_string()}),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.json(), json!({"requeued": 1, "created": 2}));

    let got = bot.wait_for(6).await;
    let mut caught_up: Vec<i64> = got[3..]
        .iter()
        .map(|r| r.json()["data"]["n"].as_i64().unwrap())
        .collect();
    caught_up.sort();
    assert_eq!(caught_up, [1, 2, 3]);
    let reply = app
        .post(
            &format!("/api/v1/endpoints/{bot_id}/recover"),
            &json!({"since": "yesterday"}),
        )
        .await;
    assert_eq!(reply.status, 422);
}

#[tokio::test]
async fn a_failing_endpoint_is_probed_its_backlog_waits_in_the_store_and_drains_on_recovery() {
    let app = spawn_app().await;
    let dead = TestReceiver::start().await;
    let healthy = TestReceiver::start().await;
    dead.script(vec![Answer::Status(500); 1000]);
    let dead_ep = app
        .create_endpoint(json!({"url": dead.url, "retry_schedule": [0.1, 0.1, 0.1]}))
        .await;
    app.create_endpoint(json!({"url": healthy.url})).await;

    for n in 0..200 {
        app.publish("entry", json!({"n": n})).await;
    }
    healthy.wait_for(200).await;
    // Once it has failed, the dead endpoint gets one probe a second, not 200 doomed requests
    // and their retries.
    assert!(dead.received().len() <= 24, "{}", dead.received().len());
    let id = dead_ep["id"].as_str().unwrap().to_owned();
    let in_store = eventually(|| async {
        let n = waiting_in_store(&app, &id);
        (n >= 150).then_some(n)
    })
    .await;
    assert!(in_store >= 150, "{in_store} wait in the store");

    // It recovers: the next probe succeeds and everything set aside is due at once, not in
    // the quarter of an hour a dead endpoint's backlog otherwise waits.
    dead.clear_script();
    eventually(|| async {
        let delivered = deliveries_of(&app, &id)
            .await
            .iter()
            .filter(|d| d["status"] == "succeeded")
            .count();
        (delivered == 200).then_some(())
    })
    .await;
}
