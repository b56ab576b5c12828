//! Inbound protection: rates per address and per source, slow bodies, and load shedding.

use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::*;

async fn token_source(app: &TestApp, body: serde_json::Value) -> String {
    let s = app.create_source(body).await;
    format!(
        "/in/{}/{}",
        s["name"].as_str().unwrap(),
        s["secret"].as_str().unwrap()
    )
}

async fn post(app: &TestApp, path: &str, n: i64) -> reqwest::Response {
    app.client
        .post(app.url(path))
        .body(json!({"type": "entry", "n": n}).to_string())
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_flooding_address_and_a_source_over_its_rate_get_429_with_retry_after() {
    let app = spawn_app_with(|c| {
        c.inbound_rate = Some(tradehook::store::RateLimit::parse("3/min").unwrap())
    })
    .await;
    let path = token_source(&app, json!({"name": "a"})).await;
    let mut statuses = Vec::new();
    for n in 0..5 {
        let reply = post(&app, &path, n).await;
        statuses.push(reply.status().as_u16());
        if reply.status() == 429 {
            let wait: u64 = reply.headers()["retry-after"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            assert!((1..=20).contains(&wait), "{wait}");
            let body: serde_json::Value =
                serde_json::from_str(&reply.text().await.unwrap()).unwrap();
            assert_eq!(body["code"], "rate_limited");
        }
    }
    assert_eq!(statuses, [202, 202, 202, 429, 429]);
    assert_eq!(
        app.events().await.len(),
        3,
        "nothing is stored for a refused request"
    );

    let app = spawn_app_with(|c| c.inbound_rate = None).await;
    let path = token_source(&app, json!({"name": "tv", "rate_limit": "2/min"})).await;
    let statuses: Vec<u16> = futures_statuses(&app, &path, 3).await;
    assert_eq!(statuses, [202, 202, 429]);
}

async fn futures_statuses(app: &TestApp, path: &str, n: i64) -> Vec<u16> {
    let mut out = Vec::new();
    for i in 0..n {
        out.push(post(app, path, i).await.status().as_u16());
    }
    out
}

/// Opens a request whose body never finishes arriving.
async fn stalled_request(app: &TestApp, path: &str) -> tokio::net::TcpStream {
    let mut stream = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"type\":",
        app.addr
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream
}

#[tokio::test]
async fn a_body_that_does_not_arrive_in_time_gets_408() {
    let app = spawn_app_with(|c| c.body_timeout = Duration::from_millis(300)).await;
    let path = token_source(&app, json!({"name": "slow"})).await;
    let mut stream = stalled_request(&app, &path).await;
    let mut answer = vec![0; 1024];
    let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut answer))
        .await
        .expect("the hub answers instead of waiting for ever")
        .unwrap();
    let text = String::from_utf8_lossy(&answer[..n]);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("body_timeout"), "{text}");
}

#[tokio::test]
async fn requests_beyond_the_limit_in_progress_are_shed_with_503_not_queued() {
    let app = spawn_app_with(|c| c.max_inbound = 1).await;
    let path = token_source(&app, json!({"name": "busy"})).await;
    // One request holds the only slot while its body trickles in.
    let stalled = stalled_request(&app, &path).await;
    let reply = eventually(|| async {
        let reply = post(&app, &path, 1).await;
        (reply.status() == 503).then_some(reply)
    })
    .await;
    assert_eq!(reply.headers()["retry-after"], "1");
    let body: serde_json::Value = serde_json::from_str(&reply.text().await.unwrap()).unwrap();
    assert_eq!(body["code"], "overloaded");
    // When it is gone, requests are taken again.
    drop(stalled);
    eventually(|| async { (post(&app, &path, 2).await.status() == 202).then_some(()) }).await;
}
