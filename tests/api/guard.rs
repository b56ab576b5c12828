//! The outbound address guard: deliveries never reach internal addresses unless allowed.

use serde_json::json;

use crate::helpers::{TestReceiver, spawn_app_with};

#[tokio::test]
async fn internal_ip_literals_are_refused_when_the_endpoint_is_saved() {
    let app = spawn_app_with(|c| c.allow_targets.clear()).await;
    for url in [
        "http://127.0.0.1:9000/hook",
        "http://[::1]/hook",
        "http://[::ffff:127.0.0.1]/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.7/",
        "http://100.64.1.1/",
        "http://0.0.0.0:8080/",
        "http://[fd00:ec2::254]/",
    ] {
        let reply = app.post("/api/v1/endpoints", &json!({"url": url})).await;
        assert_eq!(reply.status, 422, "{url}: {}", reply.text);
        let error = &reply.json()["errors"][0];
        assert_eq!(error["field"], "url");
        assert!(
            error["message"]
                .as_str()
                .unwrap()
                .contains("--allow-target"),
            "{error}"
        );
    }
    let public = app
        .post("/api/v1/endpoints", &json!({"url": "https://1.1.1.1/hook"}))
        .await;
    assert_eq!(public.status, 201, "{}", public.text);
}

#[tokio::test]
async fn a_name_that_resolves_to_an_internal_address_is_blocked_when_the_request_is_made() {
    let app = spawn_app_with(|c| c.allow_targets.clear()).await;
    let receiver = TestReceiver::start().await;
    // localhost is a name: it passes when saved, and is refused where it resolves, at connect time.
    let url = receiver.url.replace("127.0.0.1", "localhost");
    app.create_endpoint(json!({"url": url})).await;
    let id = app.publish("entry", json!({"pair": "BTC/USDT"})).await;
    let delivery = app.await_delivery_status(&id, "failed").await;
    let attempt = &delivery["attempts"][0];
    assert_eq!(attempt["error_kind"], "blocked", "{delivery}");
    assert!(
        attempt["error"]
            .as_str()
            .unwrap()
            .contains("localhost resolves to"),
        "{attempt}"
    );
    assert_eq!(
        delivery["attempt_count"], 1,
        "a blocked delivery is not retried"
    );
    assert!(receiver.received().is_empty());
}

#[tokio::test]
async fn an_allowed_network_is_reached_and_https_only_refuses_plain_http() {
    let app = spawn_app_with(|c| c.allow_targets = vec!["127.0.0.0/8".parse().unwrap()]).await;
    let receiver = TestReceiver::start().await;
    app.create_endpoint(json!({"url": receiver.url.replace("127.0.0.1", "localhost")}))
        .await;
    app.publish("entry", json!({"pair": "BTC/USDT"})).await;
    receiver.wait_for(1).await;

    let strict = spawn_app_with(|c| c.https_only = true).await;
    let reply = strict
        .post(
            "/api/v1/endpoints",
            &json!({"url": "http://hooks.example.com/x"}),
        )
        .await;
    assert_eq!(reply.status, 422);
    assert!(reply.text.contains("https"), "{}", reply.text);
}
