//! Registering endpoints and sources through the management API.

use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn the_api_refuses_calls_without_a_valid_token() {
    let app = spawn_app().await;
    let reply = app
        .client
        .get(app.url("/api/v1/endpoints"))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 401);
    let body: serde_json::Value = serde_json::from_str(&reply.text().await.unwrap()).unwrap();
    assert_eq!(body["code"], "missing_token");

    let reply = app
        .client
        .get(app.url("/api/v1/endpoints"))
        .bearer_auth("wrong-token")
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 401);
}

#[tokio::test]
async fn an_endpoint_is_created_with_a_secret_shown_only_once() {
    let app = spawn_app().await;
    let created = app
        .create_endpoint(json!({
            "url": "https://discord.example/api/webhooks/1/abc",
            "event_types": ["entry*", "exit_fill"],
            "description": "trading channel",
            "headers": {"X-Team": "alpha", "Authorization": "Bot hunter2"},
        }))
        .await;
    let id = created["id"].as_str().unwrap();
    assert!(id.starts_with("ep_"));
    assert!(created["secret"].as_str().unwrap().starts_with("whsec_"));
    assert_eq!(created["signing"], "standard");
    assert_eq!(created["event_types"], json!(["entry*", "exit_fill"]));
    assert_eq!(created["enabled"], true);

    let shown = app.get(&format!("/api/v1/endpoints/{id}")).await;
    assert_eq!(shown.status, 200);
    let shown = shown.json();
    assert!(shown.get("secret").is_none(), "{shown}");
    assert_eq!(shown["headers"]["X-Team"], "alpha");
    assert_eq!(
        shown["headers"]["Authorization"], "***",
        "header secrets are masked"
    );
    assert_eq!(shown["description"], "trading channel");

    let listed = app.get("/api/v1/endpoints").await.json();
    assert_eq!(listed["data"].as_array().unwrap().len(), 1);
    assert!(!listed.to_string().contains("whsec_"));
    assert!(!listed.to_string().contains("hunter2"));
}

#[tokio::test]
async fn an_endpoint_subscribes_to_everything_by_default() {
    let app = spawn_app().await;
    let created = app
        .create_endpoint(json!({"url": "http://127.0.0.1:9/hook"}))
        .await;
    assert_eq!(created["event_types"], json!(["*"]));
}

#[tokio::test]
async fn invalid_endpoints_are_refused_field_by_field() {
    let app = spawn_app().await;
    let reply = app
        .post(
            "/api/v1/endpoints",
            &json!({
                "url": "ftp://example.com/x",
                "event_types": [],
                "headers": {"webhook-signature": "forged"},
                "timeout": 500,
            }),
        )
        .await;
    assert_eq!(reply.status, 422, "{}", reply.text);
    let body = reply.json();
    assert_eq!(body["code"], "validation_failed");
    let fields: Vec<&str> = body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert!(fields.contains(&"url"), "{fields:?}");
    assert!(fields.contains(&"event_types"), "{fields:?}");
    assert!(fields.contains(&"headers.webhook-signature"), "{fields:?}");
    assert!(fields.contains(&"timeout"), "{fields:?}");

    let reply = app
        .post(
            "/api/v1/endpoints",
            &json!({"url": "https://x.example", "event_types": ["bad type"]}),
        )
        .await;
    assert_eq!(reply.status, 422);
    assert_eq!(reply.json()["errors"][0]["field"], "event_types[0]");

    let reply = app.send("POST", "/api/v1/endpoints", None).await;
    assert_eq!(reply.status, 400);
    assert_eq!(reply.json()["code"], "malformed_body");

    assert_eq!(app.get("/api/v1/endpoints").await.json()["data"], json!([]));
}

#[tokio::test]
async fn an_endpoint_can_be_updated_and_deleted() {
    let app = spawn_app().await;
    let created = app
        .create_endpoint(json!({"url": "https://a.example/hook"}))
        .await;
    let path = format!("/api/v1/endpoints/{}", created["id"].as_str().unwrap());

    let patched = app
        .send(
            "PATCH",
            &path,
            Some(
                &json!({"url": "https://b.example/hook", "signing": "hmac_hex", "enabled": false}),
            ),
        )
        .await;
    assert_eq!(patched.status, 200, "{}", patched.text);
    let patched = patched.json();
    assert_eq!(patched["url"], "https://b.example/hook");
    assert_eq!(patched["signing"], "hmac_hex");
    assert_eq!(patched["enabled"], false);
    assert_eq!(patched["disabled_reason"], "disabled by an operator");
    assert_eq!(app.get(&path).await.json()["url"], "https://b.example/hook");

    let bad = app
        .send("PATCH", &path, Some(&json!({"url": "not a url"})))
        .await;
    assert_eq!(bad.status, 422);
    assert_eq!(app.get(&path).await.json()["url"], "https://b.example/hook");

    assert_eq!(app.send("DELETE", &path, None).await.status, 204);
    let gone = app.get(&path).await;
    assert_eq!(gone.status, 404);
    assert_eq!(gone.json()["code"], "not_found");
    assert_eq!(app.send("DELETE", &path, None).await.status, 404);
}

#[tokio::test]
async fn a_source_is_created_with_its_ingest_url_and_secret_once() {
    let app = spawn_app().await;
    let created = app
        .create_source(json!({
            "name": "tradingview",
            "auth": {"type": "token", "field": "passphrase"},
            "ip_allowlist": ["52.89.214.238", "10.0.0.0/8"],
        }))
        .await;
    let token = created["secret"].as_str().unwrap();
    assert!(token.len() >= 24);
    assert_eq!(
        created["ingest_url"],
        app.url(&format!("/in/tradingview/{token}"))
    );
    assert_eq!(
        created["ip_allowlist"],
        json!(["52.89.214.238/32", "10.0.0.0/8"])
    );

    let id = created["id"].as_str().unwrap();
    let shown = app.get(&format!("/api/v1/sources/{id}")).await.json();
    assert!(shown.get("secret").is_none());
    assert_eq!(shown["ingest_url"], app.url("/in/tradingview"));
    assert!(!app.get("/api/v1/sources").await.text.contains(token));

    let hmac = app
        .create_source(json!({"name": "bot", "auth": {"type": "hmac"}}))
        .await;
    assert_eq!(
        hmac["auth"],
        json!({"type": "hmac", "header": "X-Signature", "encoding": "hex"})
    );
    assert!(hmac["secret"].as_str().unwrap().starts_with("whsec_"));

    let dup = app
        .post(
            "/api/v1/sources",
            &json!({"name": "bot", "auth": {"type": "none"}}),
        )
        .await;
    assert_eq!(dup.status, 409);

    let bad = app
        .post(
            "/api/v1/sources",
            &json!({"name": "Bad Name", "auth": {"type": "none"}, "ip_allowlist": ["nowhere"]}),
        )
        .await;
    assert_eq!(bad.status, 422);
    let fields: Vec<String> = bad.json()["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(fields, ["name", "ip_allowlist[0]"]);
}

#[tokio::test]
async fn endpoint_lists_page_with_a_cursor_in_creation_order() {
    let app = spawn_app().await;
    let mut ids = Vec::new();
    for i in 0..3 {
        let e = app
            .create_endpoint(json!({"url": format!("https://e{i}.example/hook")}))
            .await;
        ids.push(e["id"].as_str().unwrap().to_owned());
    }
    let first = app.get("/api/v1/endpoints?limit=2").await.json();
    let got: Vec<_> = first["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(got, ids[..2]);
    let cursor = first["next_cursor"].as_str().unwrap();
    let second = app
        .get(&format!("/api/v1/endpoints?limit=2&cursor={cursor}"))
        .await
        .json();
    assert_eq!(second["data"][0]["id"], ids[2]);
    assert_eq!(second["next_cursor"], serde_json::Value::Null);

    let bad = app.get("/api/v1/endpoints?limit=0").await;
    assert_eq!(bad.status, 422);
    assert_eq!(bad.json()["errors"][0]["field"], "limit");
    let unknown = app.get("/api/v1/sources?colour=red").await;
    assert_eq!(unknown.status, 422);
}

#[tokio::test]
async fn every_answer_carries_a_request_id_and_readyz_says_when_the_hub_can_work() {
    let app = spawn_app().await;
    let given = app
        .client
        .get(app.url("/healthz"))
        .header("x-request-id", "trace-42")
        .send()
        .await
        .unwrap();
    assert_eq!(given.headers()["x-request-id"], "trace-42");
    let made = app
        .client
        .get(app.url("/api/v1/endpoints"))
        .send()
        .await
        .unwrap();
    assert_eq!(made.status(), 401);
    let id = made.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert!(id.starts_with("req_"), "{id}");
    let ready = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    assert_eq!(ready.text().await.unwrap(), r#"{"status":"ready"}"#);
}

#[tokio::test]
async fn named_tokens_are_created_scoped_listed_without_secrets_and_revoked() {
    let app = spawn_app().await;
    let reply = app
        .post(
            "/api/v1/tokens",
            &json!({"name": "grafana", "scope": "read_only"}),
        )
        .await;
    assert_eq!(reply.status, 201, "{}", reply.text);
    let created = reply.json();
    let secret = created["token"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("thk_"));

    let with = |token: &str, method: &str, path: &str| {
        let req = app
            .client
            .request(method.parse().unwrap(), app.url(path))
            .bearer_auth(token.to_owned());
        async move { req.body("{}").send().await.unwrap().status().as_u16() }
    };
    assert_eq!(with(&secret, "GET", "/api/v1/endpoints").await, 200);
    assert_eq!(with(&secret, "POST", "/api/v1/endpoints").await, 403);

    let list = app.get("/api/v1/tokens").await;
    assert_eq!(list.status, 200);
    assert!(
        !list.text.contains(&secret) && !list.text.contains("hash"),
        "{}",
        list.text
    );
    let listed = list.json();
    let names: Vec<&str> = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"grafana") && names.contains(&"configured"),
        "{names:?}"
    );
    // The list pages and filters like every other.
    let read_only = app.get("/api/v1/tokens?scope=read_only").await.json();
    assert_eq!(read_only["data"].as_array().unwrap().len(), 1);
    assert_eq!(read_only["data"][0]["name"], "grafana");
    let first = app.get("/api/v1/tokens?limit=1").await.json();
    assert_eq!(first["data"].as_array().unwrap().len(), 1);
    let cursor = first["next_cursor"].as_str().unwrap();
    let rest = app
        .get(&format!("/api/v1/tokens?limit=1&cursor={cursor}"))
        .await
        .json();
    assert_ne!(rest["data"][0]["id"], first["data"][0]["id"]);
    assert_eq!(app.get("/api/v1/tokens?scope=root").await.status, 422);

    let id = created["id"].as_str().unwrap();
    let revoked = app
        .send("DELETE", &format!("/api/v1/tokens/{id}"), None)
        .await;
    assert_eq!(revoked.status, 204);
    assert_eq!(with(&secret, "GET", "/api/v1/endpoints").await, 401);

    // The last admin token cannot be revoked: nobody could manage the hub any more.
    let admin = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["scope"] == "admin")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let refused = app
        .send("DELETE", &format!("/api/v1/tokens/{admin}"), None)
        .await;
    assert_eq!(refused.status, 409);
    assert_eq!(refused.json()["code"], "last_admin_token");
}

#[tokio::test]
async fn an_endpoint_test_sends_a_ping_through_the_pipeline_and_answers_with_the_attempt() {
    let app = spawn_app().await;
    let receiver = TestReceiver::start().await;
    let ep = app
        .create_endpoint(json!({"url": receiver.url, "event_types": ["entry"]}))
        .await;
    let id = ep["id"].as_str().unwrap();

    let reply = app
        .post(&format!("/api/v1/endpoints/{id}/test"), &json!({}))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let body = reply.json();
    assert_eq!(body["attempt"]["status_code"], 200);
    let got = receiver.wait_for(1).await;
    assert_eq!(got[0].json()["type"], "ping");
    assert_eq!(got[0].header("webhook-id"), body["event_id"].as_str());

    // A failing receiver: the answer says so, from the attempt log.
    receiver.script([Answer::Status(500)]);
    let reply = app
        .post(&format!("/api/v1/endpoints/{id}/test"), &json!({}))
        .await;
    assert_eq!(reply.json()["attempt"]["status_code"], 500);
    assert_eq!(reply.json()["attempt"]["error_kind"], "http_status");

    // Disable and enable by name; a disabled endpoint cannot be tested.
    let reply = app
        .post(&format!("/api/v1/endpoints/{id}/disable"), &json!({}))
        .await;
    assert_eq!(reply.json()["enabled"], false);
    let reply = app
        .post(&format!("/api/v1/endpoints/{id}/test"), &json!({}))
        .await;
    assert_eq!(reply.status, 409);
    let reply = app
        .post(&format!("/api/v1/endpoints/{id}/enable"), &json!({}))
        .await;
    assert_eq!(reply.json()["enabled"], true);
    assert_eq!(reply.json()["disabled_reason"], serde_json::Value::Null);
}

#[tokio::test]
async fn stats_count_events_deliveries_retries_and_latency_over_a_window() {
    let app = spawn_app().await;
    let good = TestReceiver::start().await;
    let flaky = TestReceiver::start().await;
    let good_ep = app.create_endpoint(json!({"url": good.url})).await;
    let flaky_ep = app
        .create_endpoint(json!({"url": flaky.url, "retry_schedule": [0.05]}))
        .await;
    let source = app.create_source(json!({"name": "tv"})).await;
    let token = source["secret"].as_str().unwrap();
    // The flaky endpoint fails the first event twice: it fails for good after one retry.
    flaky.script([Answer::Status(500), Answer::Status(500)]);
    let first = app.publish("entry", json!({"n": 0})).await;
    eventually(|| async {
        let e = app.get(&format!("/api/v1/events/{first}")).await.json();
        let done = e["deliveries"]
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d["status"] != "pending");
        done.then_some(())
    })
    .await;
    app.publish("entry", json!({"n": 1})).await;
    for n in 2..5 {
        let reply = app
            .post_raw(
                &format!("/in/tv/{token}"),
                &[],
                json!({"type": "entry", "n": n}).to_string(),
            )
            .await;
        assert_eq!(reply.status, 202);
    }
    assert_eq!(app.post_raw("/in/tv/wrong", &[], "{}").await.status, 401);
    good.wait_for(5).await;
    flaky.wait_for(6).await;

    let stats = eventually(|| async {
        let s = app.get("/api/v1/stats?window=1h").await.json();
        (s["deliveries"]["pending"] == 0 && s["deliveries"]["succeeded"] == 9).then_some(s)
    })
    .await;
    assert_eq!(stats["received"], 5);
    assert_eq!(stats["deliveries"]["failed"], 1);
    assert_eq!(stats["deliveries"]["retries"], 1);
    assert_eq!(stats["deliveries"]["success_rate"], 0.9);
    let of = |id: &serde_json::Value| {
        stats["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["endpoint_id"] == *id)
            .unwrap()
            .clone()
    };
    let g = of(&good_ep["id"]);
    assert_eq!(
        (g["succeeded"].as_u64(), g["success_rate"].as_f64()),
        (Some(5), Some(1.0))
    );
    assert_eq!(g["latency_ms"]["count"], 5);
    assert!(g["latency_ms"]["p50"].as_i64().unwrap() <= g["latency_ms"]["max"].as_i64().unwrap());
    let f = of(&flaky_ep["id"]);
    assert_eq!(
        (f["succeeded"].as_u64(), f["failed"].as_u64()),
        (Some(4), Some(1))
    );
    assert_eq!(f["success_rate"], 0.8);
    let mut sources: Vec<(String, u64)> = stats["sources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["source"].as_str().unwrap().to_owned(),
                s["received"].as_u64().unwrap(),
            )
        })
        .collect();
    sources.sort();
    assert_eq!(sources, [("api".to_owned(), 2), ("tv".to_owned(), 3)]);
    assert_eq!(stats["since_start"]["rejected"]["invalid_token"], 1);

    let bad = app.get("/api/v1/stats?window=soon").await;
    assert_eq!(bad.status, 422);

    // The same in Prometheus terms, labelled by endpoint id and never by URL.
    let metrics = app.get("/metrics").await.text;
    let g = good_ep["id"].as_str().unwrap();
    let f = flaky_ep["id"].as_str().unwrap();
    for line in [
        format!("tradehook_endpoint_attempts_total{{endpoint=\"{g}\",outcome=\"success\"}} 5"),
        format!("tradehook_endpoint_attempts_total{{endpoint=\"{f}\",outcome=\"retry\"}} 2"),
        format!("tradehook_delivery_latency_seconds_count{{endpoint=\"{g}\"}} 5"),
        format!("tradehook_attempt_duration_seconds_bucket{{endpoint=\"{f}\",le=\"+Inf\"}} 6"),
    ] {
        assert!(metrics.contains(&line), "{line} missing from:\n{metrics}");
    }
    assert!(!metrics.contains("127.0.0.1"), "{metrics}");
}

#[tokio::test]
async fn endpoint_and_source_lists_take_filters() {
    let app = spawn_app().await;
    let chat = app
        .create_endpoint(
            json!({"url": "https://discord.test/api/webhooks/1/x", "preset": "discord",
                                "event_types": ["entry*"], "enabled": false}),
        )
        .await;
    let bot = app
        .create_endpoint(json!({"url": "https://bot.test/hook", "event_types": ["exit"]}))
        .await;
    app.create_source(json!({"name": "tv", "format": "tradingview"}))
        .await;
    app.create_source(json!({"name": "ft", "format": "freqtrade"}))
        .await;
    let ids = |path: &'static str| app.ids(path);
    assert_eq!(
        ids("/api/v1/endpoints?enabled=false").await,
        [chat["id"].as_str().unwrap()]
    );
    assert_eq!(
        ids("/api/v1/endpoints?event_type=exit").await,
        [bot["id"].as_str().unwrap()]
    );
    assert_eq!(
        ids("/api/v1/endpoints?preset=discord").await,
        [chat["id"].as_str().unwrap()]
    );
    assert_eq!(
        ids("/api/v1/endpoints?event_type=entry_fill&enabled=true")
            .await
            .len(),
        0
    );
    let tv = app.get("/api/v1/sources?format=tradingview").await.json();
    assert_eq!(tv["data"].as_array().unwrap().len(), 1);
    assert_eq!(tv["data"][0]["name"], "tv");
    assert_eq!(app.get("/api/v1/endpoints?preset=fax").await.status, 422);
    assert_eq!(app.get("/api/v1/sources?colour=red").await.status, 422);
}

#[tokio::test]
async fn a_wrong_method_and_an_oversized_api_body_get_the_json_error_body() {
    let app = spawn_app().await;
    let reply = app.send("PUT", "/api/v1/endpoints", Some(&json!({}))).await;
    assert_eq!(reply.status, 405);
    assert_eq!(reply.json()["code"], "method_not_allowed");
    let reply = app
        .post_raw(
            "/api/v1/endpoints",
            &[("authorization", &format!("Bearer {TOKEN}"))],
            vec![b' '; 3 << 20],
        )
        .await;
    assert_eq!(reply.status, 413);
    assert_eq!(reply.json()["code"], "payload_too_large");
}

#[tokio::test]
async fn the_bearer_scheme_is_read_in_any_case() {
    let app = spawn_app().await;
    for scheme in ["Bearer", "bearer", "BEARER"] {
        let reply = app
            .client
            .get(app.url("/api/v1/endpoints"))
            .header("authorization", format!("{scheme} {TOKEN}"))
            .send()
            .await
            .unwrap();
        assert_eq!(reply.status(), 200, "{scheme}");
    }
    let reply = app
        .client
        .get(app.url("/api/v1/endpoints"))
        .header("authorization", format!("Basic {TOKEN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 401);
}

#[tokio::test]
async fn an_endpoint_test_against_a_hanging_receiver_answers_in_progress_within_seconds() {
    let app = spawn_app().await;
    let receiver = TestReceiver::start().await;
    receiver.script([Answer::Hang(std::time::Duration::from_secs(8))]);
    let ep = app
        .create_endpoint(json!({"url": receiver.url, "timeout": 30}))
        .await;
    let id = ep["id"].as_str().unwrap();
    let began = std::time::Instant::now();
    let reply = app
        .post(&format!("/api/v1/endpoints/{id}/test"), &json!({}))
        .await;
    assert!(
        began.elapsed() < std::time::Duration::from_secs(7),
        "{:?}",
        began.elapsed()
    );
    assert_eq!(reply.status, 202, "{}", reply.text);
    let body = reply.json();
    assert_eq!(body["attempt"], serde_json::Value::Null);
    let follow = body["follow"].as_str().unwrap().to_owned();
    assert_eq!(
        follow,
        format!(
            "/api/v1/deliveries/{}",
            body["delivery_id"].as_str().unwrap()
        )
    );
    // Where it says to follow, the attempt appears once the receiver answers.
    let delivery = eventually(|| async {
        let d = app.get(&follow).await.json();
        (d["status"] == "succeeded").then_some(d)
    })
    .await;
    assert_eq!(delivery["attempts"][0]["status_code"], 200);
}

/// Changes made at the same time each show at once: a reload that read the store before
/// another change was written must not put its older view in place after that change's own.
#[tokio::test]
async fn what_concurrent_calls_create_is_found_right_after_each_answer() {
    let app = std::sync::Arc::new(spawn_app().await);
    // Other changes reload the registry all the while.
    let endpoint = app
        .create_endpoint(json!({"url": "http://127.0.0.1:9/hook"}))
        .await;
    let id = endpoint["id"].as_str().unwrap().to_owned();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let churn: Vec<_> = (0..4)
        .map(|_| {
            let (app, id, stop) = (app.clone(), id.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    app.post(&format!("/api/v1/endpoints/{id}/disable"), &json!({}))
                        .await;
                }
            })
        })
        .collect();
    let tasks: Vec<_> = (0..48)
        .map(|i| {
            let app = app.clone();
            tokio::spawn(async move {
                let created = app
                    .post(
                        "/api/v1/sources",
                        &json!({"name": format!("s{i}"), "format": "json"}),
                    )
                    .await;
                assert_eq!(created.status, 201, "{}", created.text);
                let id = created.json()["id"].as_str().unwrap().to_owned();
                let found = app.get(&format!("/api/v1/sources/{id}")).await;
                assert_eq!(found.status, 200, "s{i}: {}", found.text);
            })
        })
        .collect();
    let mut failed = None;
    for task in tasks {
        if let Err(e) = task.await {
            failed.get_or_insert(e);
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for task in churn {
        task.await.unwrap();
    }
    if let Some(e) = failed {
        std::panic::resume_unwind(e.into_panic());
    }
}

/// A setting that is an object is only read from an object: serde would also read a struct
/// from an array, and `{"mapping": []}` must not pass for an empty mapping.
#[tokio::test]
async fn nested_settings_given_as_arrays_are_refused() {
    let app = spawn_app().await;
    let created = app
        .create_source(json!({"name": "s", "format": "json"}))
        .await;
    let id = created["id"].as_str().unwrap();
    for body in [json!({"mapping": []}), json!({"mapping": [{}, {}]})] {
        let reply = app
            .send("PATCH", &format!("/api/v1/sources/{id}"), Some(&body))
            .await;
        assert_eq!(reply.status, 422, "{body}: {}", reply.text);
    }
    let reply = app
        .post(
            "/api/v1/sources",
            &json!({"name": "t", "auth": ["hmac", "x-signature"]}),
        )
        .await;
    assert_eq!(reply.status, 422, "{}", reply.text);
    let shown = app.get(&format!("/api/v1/sources/{id}")).await.json();
    assert!(shown.get("mapping").is_none(), "nothing stored: {shown}");
}
