//! Provider mode: applications, their keys, and what one application can see of another's.

use serde_json::{Value, json};

use crate::helpers::{TestApp, TestReceiver, eventually, spawn_app};

/// An application with an admin key: (id, key).
async fn application(app: &TestApp, name: &str, uid: &str) -> (String, String) {
    let created = app
        .post("/api/v1/applications", &json!({"name": name, "uid": uid}))
        .await;
    assert_eq!(created.status, 201, "{}", created.text);
    let id = created.json()["id"].as_str().unwrap().to_owned();
    let key = key(app, &id, "admin").await;
    (id, key)
}

/// An application made with `body`, and one endpoint of it with `endpoint`: the
/// application's id.
async fn application_with_endpoint(app: &TestApp, body: Value, endpoint: Value) -> String {
    let created = app.post("/api/v1/applications", &body).await;
    assert_eq!(created.status, 201, "{}", created.text);
    let id = created.json()["id"].as_str().unwrap().to_owned();
    let made = app
        .post(&format!("/api/v1/endpoints?application={id}"), &endpoint)
        .await;
    assert_eq!(made.status, 201, "{}", made.text);
    id
}

async fn key(app: &TestApp, application: &str, scope: &str) -> String {
    let reply = app
        .post(
            &format!("/api/v1/applications/{application}/keys"),
            &json!({"name": "customer", "scope": scope}),
        )
        .await;
    assert_eq!(reply.status, 201, "{}", reply.text);
    reply.json()["token"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn the_operator_manages_applications_and_a_uid_names_one_like_its_id() {
    let app = spawn_app().await;
    let created = app
        .post(
            "/api/v1/applications",
            &json!({
                "name": "Acme Capital",
                "uid": "customer-1042",
                "metadata": {"plan": "pro"},
                "quotas": {"max_endpoints": 3},
                "rate_limit": "600/min"
            }),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.text);
    let body = created.json();
    let id = body["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("app_"), "{id}");
    assert_eq!(body["quotas"], json!({"max_endpoints": 3}));
    assert_eq!(body["rate_limit"], "600/min");

    let by_uid = app.get("/api/v1/applications/customer-1042").await;
    assert_eq!(by_uid.status, 200);
    assert_eq!(by_uid.json()["id"], id);

    let changed = app
        .send(
            "PATCH",
            "/api/v1/applications/customer-1042",
            Some(&json!({"name": "Acme", "uid": null})),
        )
        .await;
    assert_eq!(changed.status, 200, "{}", changed.text);
    assert_eq!(changed.json()["name"], "Acme");
    assert_eq!(
        app.get("/api/v1/applications/customer-1042").await.status,
        404
    );

    // A uid is one application's only.
    let other = app
        .post(
            "/api/v1/applications",
            &json!({"name": "B", "uid": "taken"}),
        )
        .await;
    assert_eq!(other.status, 201);
    let clash = app
        .send(
            "PATCH",
            &format!("/api/v1/applications/{id}"),
            Some(&json!({"uid": "taken"})),
        )
        .await;
    assert_eq!(clash.status, 409, "{}", clash.text);
    assert_eq!(clash.json()["code"], "uid_taken");

    let bad = app
        .post("/api/v1/applications", &json!({"name": "", "uid": "app_x"}))
        .await;
    assert_eq!(bad.status, 422);
    let bad = bad.json();
    let fields: Vec<&str> = bad["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["name", "uid"]);

    let listed = app.get("/api/v1/applications").await;
    assert_eq!(listed.ids().len(), 2);
}

#[tokio::test]
async fn an_applications_key_manages_its_own_endpoints_and_nothing_of_the_operators() {
    let app = spawn_app().await;
    let receiver = TestReceiver::start().await;
    let operators = app
        .create_endpoint(json!({"url": receiver.url, "event_types": ["*"]}))
        .await;
    let (a, key_a) = application(&app, "A", "a").await;

    let created = app
        .send_as(
            &key_a,
            "POST",
            "/api/v1/endpoints",
            Some(&json!({"url": receiver.url, "event_types": ["trade.*"]})),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.text);
    let own = created.json()["id"].as_str().unwrap().to_owned();
    assert!(
        created.json()["secret"]
            .as_str()
            .unwrap()
            .starts_with("whsec_")
    );

    let listed = app.send_as(&key_a, "GET", "/api/v1/endpoints", None).await;
    // The same key in `X-API-Key`, as the subscription API's clients send it.
    let by_header = app
        .client
        .get(app.url("/api/v1/endpoints"))
        .header("x-api-key", &key_a)
        .send()
        .await
        .unwrap();
    assert_eq!(by_header.status(), 200);
    assert!(by_header.text().await.unwrap().contains(&own));
    assert_eq!(listed.ids(), [own.as_str()]);
    let hidden = app
        .send_as(
            &key_a,
            "GET",
            &format!("/api/v1/endpoints/{}", operators["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(hidden.status, 404);

    // The operator sees every endpoint, and narrows to one application on its behalf.
    assert_eq!(app.get("/api/v1/endpoints").await.ids().len(), 2);
    assert_eq!(
        app.get("/api/v1/endpoints?application=a").await.ids(),
        [own.as_str()]
    );
    let on_behalf = app
        .post(
            &format!("/api/v1/endpoints?application={a}"),
            &json!({"url": receiver.url}),
        )
        .await;
    assert_eq!(on_behalf.status, 201, "{}", on_behalf.text);
    assert_eq!(
        app.send_as(&key_a, "GET", "/api/v1/endpoints", None)
            .await
            .ids()
            .len(),
        2
    );
    assert_eq!(
        app.get("/api/v1/endpoints?application=nobody").await.status,
        404
    );

    // The operator's routes are not an application's.
    for (method, path) in [
        ("GET", "/api/v1/sources"),
        ("GET", "/api/v1/accounts"),
        ("GET", "/api/v1/applications"),
        ("POST", "/api/v1/events"),
    ] {
        let reply = app
            .send_as(
                &key_a,
                method,
                path,
                Some(&json!({"type": "x", "data": {}})),
            )
            .await;
        assert_eq!(reply.status, 403, "{method} {path}: {}", reply.text);
        assert_eq!(reply.json()["code"], "operator_only");
    }
    // Orders are the operator's too.
    let account = app
        .post(
            "/api/v1/accounts",
            &json!({"name": "main", "venue": "paper"}),
        )
        .await;
    assert_eq!(account.status, 201, "{}", account.text);
    let to_account = app
        .send_as(
            &key_a,
            "POST",
            "/api/v1/endpoints",
            Some(&json!({"url": "account:main", "orders": {"symbols": {"BTCUSDT": "BTC/USDT"}}})),
        )
        .await;
    assert_eq!(to_account.status, 422, "{}", to_account.text);
}

/// Every operation of the document, called with application A's key on application B's
/// records, answers exactly as it does for records that do not exist; none succeeds, and B's
/// records are unchanged afterwards. A read-only key writes nothing. A route added without a
/// scope check fails this test, because the list of routes comes from the document.
#[tokio::test]
async fn no_route_lets_one_application_reach_anothers_records() {
    let app = spawn_app().await;
    let receiver = TestReceiver::start().await;
    let (a, key_a) = application(&app, "A", "a").await;
    let read_only_a = key(&app, &a, "read_only").await;
    let (b, key_b) = application(&app, "B", "b").await;
    let source = app
        .create_source(json!({"name": "tv", "format": "tradingview"}))
        .await;
    let account = app
        .post(
            "/api/v1/accounts",
            &json!({"name": "main", "venue": "paper"}),
        )
        .await
        .json();

    // B's records: an endpoint, an event delivered to it, the delivery, a key.
    let endpoint_b = app
        .send_as(
            &key_b,
            "POST",
            "/api/v1/endpoints",
            Some(&json!({"url": receiver.url, "event_types": ["trade.*"]})),
        )
        .await
        .json();
    let endpoint_b_id = endpoint_b["id"].as_str().unwrap().to_owned();
    let event_b = app.publish("trade.new", json!({"owner": "W"})).await;
    receiver.wait_for(1).await;
    let delivery_b = app.delivery_of(&event_b).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    app.await_delivery_status(&event_b, "succeeded").await;
    let keys_b = app
        .send_as(
            &key_b,
            "GET",
            &format!("/api/v1/applications/{b}/keys"),
            None,
        )
        .await;
    let key_b_id = keys_b.ids()[0].clone();
    let b_ids = [
        b.clone(),
        endpoint_b_id.clone(),
        event_b.clone(),
        delivery_b.clone(),
        key_b_id.clone(),
    ];

    let doc: Value = app.get("/api/v1/openapi.json").await.json();
    let mut checked = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        if !path.starts_with("/api/v1/") {
            continue;
        }
        for method in item.as_object().unwrap().keys() {
            let method = method.to_uppercase();
            // What the path names, first as B's, then as nobody's.
            let resource = |missing: bool| -> String {
                let pick = |real: &str, fake: &str| -> String {
                    if missing {
                        fake.to_owned()
                    } else {
                        real.to_owned()
                    }
                };
                let id = if path.starts_with("/api/v1/endpoints") {
                    pick(&endpoint_b_id, "ep_01KAAAAAAAAAAAAAAAAAAAAAAA")
                } else if path.starts_with("/api/v1/deliveries") {
                    pick(&delivery_b, "dlv_01KAAAAAAAAAAAAAAAAAAAAAAA")
                } else if path.starts_with("/api/v1/events") {
                    pick(&event_b, "evt_01KAAAAAAAAAAAAAAAAAAAAAAA")
                } else if path.starts_with("/api/v1/sources") {
                    pick(
                        source["id"].as_str().unwrap(),
                        "src_01KAAAAAAAAAAAAAAAAAAAAAAA",
                    )
                } else if path.starts_with("/api/v1/accounts") {
                    pick(
                        account["id"].as_str().unwrap(),
                        "acc_01KAAAAAAAAAAAAAAAAAAAAAAA",
                    )
                } else {
                    // Tokens, and keys under an application.
                    pick(&key_b_id, "tok_01KAAAAAAAAAAAAAAAAAAAAAAA")
                };
                path.replace("{app}", &pick(&b, "app_01KAAAAAAAAAAAAAAAAAAAAAAA"))
                    .replace("{id}", &id)
            };
            // A body the operation takes, so that it gets as far as looking the record up.
            let body = if path.ends_with("/keys") {
                json!({"name": "taken", "scope": "admin"})
            } else if path.ends_with("/recover") {
                json!({"since": 0})
            } else if method == "PATCH" && path.starts_with("/api/v1/endpoints") {
                json!({"description": "taken"})
            } else if method == "PATCH" {
                json!({"name": "taken"})
            } else {
                json!({})
            };
            let real = app
                .send_as(&key_a, &method, &resource(false), Some(&body))
                .await;
            // (A "not found" may echo the id asked for; nothing else of B's may show.)
            for id in b_ids
                .iter()
                .filter(|id| !resource(false).contains(id.as_str()))
            {
                assert!(
                    !real.text.contains(id.as_str()),
                    "{method} {path} shows A one of B's records ({id}): {}",
                    real.text
                );
            }
            if path.contains('{') {
                let missing = app
                    .send_as(&key_a, &method, &resource(true), Some(&body))
                    .await;
                assert!(
                    matches!(real.status, 403 | 404),
                    "{method} {path} answered {} to A for B's record: {}",
                    real.status,
                    real.text
                );
                assert_eq!(
                    (real.status, real.json()["code"].clone()),
                    (missing.status, missing.json()["code"].clone()),
                    "{method} {path} tells B's record apart from none"
                );
            } else if method != "GET" {
                // A collection A may add to gets A's record, not B's; the operator's answer 403.
                assert!(
                    matches!(real.status, 201 | 202 | 403 | 422),
                    "{method} {path}: {} {}",
                    real.status,
                    real.text
                );
            }
            if method != "GET" {
                let reply = app
                    .send_as(&read_only_a, &method, &resource(false), Some(&body))
                    .await;
                assert_eq!(reply.status, 403, "{method} {path} with a read-only key");
            }
            checked += 1;
        }
    }
    assert!(checked >= 40, "only {checked} operations checked");

    // The subscription API the same way.
    let seed_routes = [
        ("PUT", "/api/webhooks/{id}"),
        ("DELETE", "/api/webhooks/{id}"),
        ("POST", "/api/webhooks/{id}/test"),
        ("GET", "/api/webhooks/{id}/deliveries"),
    ];
    for (method, path) in seed_routes {
        let body = json!({"url": "http://127.0.0.1:9/taken", "events": ["trade.new"]});
        let real = app
            .send_as(
                &key_a,
                method,
                &path.replace("{id}", &endpoint_b_id),
                Some(&body),
            )
            .await;
        let missing = app
            .send_as(
                &key_a,
                method,
                &path.replace("{id}", "ep_01KAAAAAAAAAAAAAAAAAAAAAAA"),
                Some(&body),
            )
            .await;
        assert_eq!(real.status, 404, "{method} {path}: {}", real.text);
        assert_eq!(
            real.json()["code"],
            missing.json()["code"],
            "{method} {path}"
        );
        if method != "GET" {
            let reply = app
                .send_as(
                    &read_only_a,
                    method,
                    &path.replace("{id}", &endpoint_b_id),
                    Some(&body),
                )
                .await;
            assert_eq!(reply.status, 403, "{method} {path} with a read-only key");
        }
    }
    let listed = app.send_as(&key_a, "GET", "/api/webhooks", None).await;
    assert_eq!(listed.status, 200);
    assert!(!listed.text.contains(&endpoint_b_id), "{}", listed.text);

    // B's records are as they were: its endpoint enabled with its secret, its key working,
    // its delivery attempted once.
    let still = app
        .send_as(
            &key_b,
            "GET",
            &format!("/api/v1/endpoints/{endpoint_b_id}"),
            None,
        )
        .await;
    assert_eq!(still.status, 200, "{}", still.text);
    assert_eq!(still.json()["enabled"], true);
    let test_b = app
        .send_as(
            &key_b,
            "GET",
            &format!("/api/v1/deliveries/{delivery_b}"),
            None,
        )
        .await;
    assert_eq!(test_b.status, 200);
    assert_eq!(test_b.json()["attempts"].as_array().unwrap().len(), 1);
    assert_eq!(receiver.received().len(), 1);
}

#[tokio::test]
async fn an_application_over_its_quota_or_rate_is_told_so_and_nothing_is_stored() {
    let app = spawn_app().await;
    let receiver = TestReceiver::start().await;
    let created = app
        .post(
            "/api/v1/applications",
            &json!({"name": "small", "quotas": {"max_endpoints": 1}, "rate_limit": "5/min"}),
        )
        .await
        .json();
    let id = created["id"].as_str().unwrap();
    let key_small = key(&app, id, "admin").await;
    let first = app
        .send_as(
            &key_small,
            "POST",
            "/api/v1/endpoints",
            Some(&json!({"url": receiver.url})),
        )
        .await;
    assert_eq!(first.status, 201, "{}", first.text);
    let second = app
        .send_as(
            &key_small,
            "POST",
            "/api/v1/endpoints",
            Some(&json!({"url": receiver.url})),
        )
        .await;
    assert_eq!(second.status, 422, "{}", second.text);
    assert_eq!(second.json()["code"], "endpoint_quota_exceeded");
    assert_eq!(
        (app.get(&format!("/api/v1/endpoints?application={id}"))
            .await)
            .ids()
            .len(),
        1
    );

    // Two calls made, three more allowed, then 429 with when to come back.
    for _ in 0..3 {
        let reply = app
            .send_as(&key_small, "GET", "/api/v1/endpoints", None)
            .await;
        assert_eq!(reply.status, 200, "{}", reply.text);
    }
    let over = app
        .client
        .get(app.url("/api/v1/endpoints"))
        .bearer_auth(&key_small)
        .send()
        .await
        .unwrap();
    assert_eq!(over.status(), 429);
    let header = |name: &str| {
        over.headers()
            .get(name)
            .unwrap_or_else(|| panic!("no {name}"))
            .to_str()
            .unwrap()
            .to_owned()
    };
    assert!(header("retry-after").parse::<u64>().unwrap() >= 1);
    assert_eq!(header("ratelimit-limit"), "5");
    assert_eq!(header("ratelimit-remaining"), "0");
    assert_eq!(header("ratelimit-reset"), header("retry-after"));
    let body: Value = serde_json::from_str(&over.text().await.unwrap()).unwrap();
    assert_eq!(body["code"], "rate_limited");
    // The operator is not held to an application's rate.
    assert_eq!(app.get("/api/v1/endpoints").await.status, 200);
}

#[tokio::test]
async fn deleting_an_application_deletes_what_it_owned_and_only_that() {
    let app = spawn_app().await;
    let receiver = TestReceiver::start().await;
    let (a, key_a) = application(&app, "A", "a").await;
    let (_b, key_b) = application(&app, "B", "b").await;
    for (key, types) in [
        (&key_a, "trade.new"),
        (&key_a, "trade.close"),
        (&key_b, "trade.close"),
    ] {
        let reply = app
            .send_as(
                key,
                "POST",
                "/api/v1/endpoints",
                Some(&json!({"url": receiver.url, "event_types": [types]})),
            )
            .await;
        assert_eq!(reply.status, 201, "{}", reply.text);
    }
    let only_a = app.publish("trade.new", json!({"n": 1})).await;
    let shared = app.publish("trade.close", json!({"n": 2})).await;
    receiver.wait_for(3).await;
    let a_deliveries = app.send_as(&key_a, "GET", "/api/v1/deliveries", None).await;
    let a_delivery = a_deliveries.ids()[0].clone();

    let deleted = app
        .send("DELETE", &format!("/api/v1/applications/{a}"), None)
        .await;
    assert_eq!(deleted.status, 204, "{}", deleted.text);

    assert_eq!(
        app.send_as(&key_a, "GET", "/api/v1/endpoints", None)
            .await
            .status,
        401
    );
    assert_eq!(
        app.get(&format!("/api/v1/applications/{a}")).await.status,
        404
    );
    assert_eq!(
        app.get(&format!("/api/v1/events/{only_a}")).await.status,
        404
    );
    assert_eq!(
        app.get(&format!("/api/v1/deliveries/{a_delivery}"))
            .await
            .status,
        404
    );
    let kept = app.get(&format!("/api/v1/events/{shared}")).await;
    assert_eq!(kept.status, 200);
    assert_eq!(kept.json()["deliveries"].as_array().unwrap().len(), 1);
    assert_eq!(app.get("/api/v1/endpoints").await.ids().len(), 1);
    // B goes on receiving.
    app.publish("trade.close", json!({"n": 3})).await;
    eventually(|| async { (receiver.received().len() == 4).then_some(()) }).await;
    assert_eq!(
        app.send_as(&key_b, "GET", "/api/v1/deliveries", None)
            .await
            .ids()
            .len(),
        2
    );
}

/// One publish for wallet W reaches exactly the endpoints, among 1,000 applications', whose
/// label filter W passes, each signed with its own endpoint's secret.
#[tokio::test]
async fn one_publish_reaches_every_application_following_its_labels_and_no_other() {
    use futures_util::{StreamExt, stream};
    let app = spawn_app().await;
    let receiver = TestReceiver::start().await;
    // Application i follows wallet W{i % 10}; every 7th also follows W3, in a list; and those
    // following W3 whose number is a multiple of 11 want only SOL-PERP, which the event is not
    // about.
    let sol_only = |i: usize| i % 10 == 3 && i.is_multiple_of(11);
    let listed = |i: usize| i.is_multiple_of(7) && !sol_only(i);
    let filter = |i: usize| -> Value {
        let wallet = format!("W{}", i % 10);
        if sol_only(i) {
            json!({"wallet": wallet, "pair": "SOL-PERP"})
        } else if listed(i) {
            json!({"wallet": [wallet, "W3"]})
        } else {
            json!({"wallet": wallet})
        }
    };
    let wants_w3 = |i: usize| !sol_only(i) && (listed(i) || i % 10 == 3);
    let created: Vec<(usize, String)> = stream::iter(0..1000)
        .map(|i| {
            let (app, receiver, body) = (&app, &receiver, filter(i));
            async move {
                let application = app
                    .post(
                        "/api/v1/applications",
                        &json!({"name": format!("customer {i}")}),
                    )
                    .await;
                assert_eq!(application.status, 201, "{}", application.text);
                let id = application.json()["id"].as_str().unwrap().to_owned();
                let endpoint = app
                    .post(
                        &format!("/api/v1/endpoints?application={id}"),
                        &json!({
                            "url": format!("{}/{i}", receiver.url),
                            "event_types": ["trade.new"],
                            "labels": body,
                        }),
                    )
                    .await;
                assert_eq!(endpoint.status, 201, "{}", endpoint.text);
                (i, endpoint.json()["secret"].as_str().unwrap().to_owned())
            }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    let secrets: std::collections::HashMap<usize, String> = created.into_iter().collect();
    let expected: std::collections::BTreeSet<usize> = (0..1000).filter(|i| wants_w3(*i)).collect();
    assert!(expected.len() > 100, "{}", expected.len());

    let published = app
        .post(
            "/api/v1/events",
            &json!({"type": "trade.new", "data": {"owner": "W3", "side": "long"},
                    "labels": {"wallet": "W3"}}),
        )
        .await;
    assert_eq!(published.status, 202, "{}", published.text);
    let event_id = published.json()["id"].as_str().unwrap().to_owned();
    // The deliveries were decided when the event was stored: exactly one per follower.
    let event = app.get(&format!("/api/v1/events/{event_id}")).await.json();
    assert_eq!(event["labels"]["wallet"], "W3");
    assert_eq!(
        event["deliveries"].as_array().unwrap().len(),
        expected.len()
    );

    let got = receiver.wait_for(expected.len()).await;
    let mut reached = std::collections::BTreeSet::new();
    for request in &got {
        let i: usize = request.uri.rsplit('/').next().unwrap().parse().unwrap();
        let verifier = standardwebhooks::Webhook::new(&secrets[&i]).unwrap();
        let mut headers = http::HeaderMap::new();
        for name in ["webhook-id", "webhook-timestamp", "webhook-signature"] {
            headers.insert(name, request.headers[name].clone());
        }
        verifier
            .verify(&request.body, &headers)
            .unwrap_or_else(|e| panic!("delivery to {i} is not signed with its secret: {e}"));
        assert!(reached.insert(i), "{i} received the event twice");
    }
    assert_eq!(reached, expected);

    // Attempts are counted per application, not per endpoint, in /metrics.
    let metrics = eventually(|| async {
        let text = app.get("/metrics").await.text;
        let series = text
            .lines()
            .filter(|l| l.starts_with("tradehook_application_attempts_total{application=\"app_"))
            .filter(|l| l.contains("outcome=\"success\"") && l.ends_with(" 1"))
            .count();
        (series == expected.len()).then_some(text)
    })
    .await;
    assert!(!metrics.contains("tradehook_endpoint_attempts_total{endpoint="));
}

#[tokio::test]
async fn labels_come_from_the_publisher_and_the_event_and_bad_ones_are_refused() {
    let app = spawn_app().await;
    let receiver = TestReceiver::start().await;
    let by_strategy = app
        .create_endpoint(json!({
            "url": format!("{}/strategy", receiver.url),
            "labels": {"strategy": "sma-cross", "source": "api"}
        }))
        .await;
    assert_eq!(
        by_strategy["labels"],
        json!({"source": "api", "strategy": "sma-cross"})
    );
    app.create_endpoint(json!({
        "url": format!("{}/pair", receiver.url),
        "labels": {"pair": ["ETH/USDT", "SOL/USDT"]}
    }))
    .await;

    // `strategy` and `pair` are read from the event's data; `source` from where it came in.
    app.publish(
        "entry",
        json!({"pair": "BTC/USDT", "strategy": "sma-cross"}),
    )
    .await;
    let event = app.publish("entry", json!({"pair": "SOL/USDT"})).await;
    let got = receiver.wait_for(2).await;
    let mut paths: Vec<&str> = got.iter().map(|r| r.uri.as_str()).collect();
    paths.sort();
    assert_eq!(paths, ["/hook/pair", "/hook/strategy"]);
    let shown = app.get(&format!("/api/v1/events/{event}")).await.json();
    assert_eq!(
        shown["labels"],
        json!({"pair": "SOL/USDT", "source": "api"})
    );

    // The publisher's labels win over what the event says, and go out in its body.
    let given = app
        .post(
            "/api/v1/events",
            &json!({"type": "entry", "data": {"pair": "BTC/USDT"}, "labels": {"pair": "ETH/USDT"}}),
        )
        .await;
    assert_eq!(given.status, 202, "{}", given.text);
    let got = receiver.wait_for(3).await;
    assert_eq!(got[2].uri, "/hook/pair");
    assert_eq!(got[2].json()["labels"], json!({"pair": "ETH/USDT"}));

    for (labels, field) in [
        (json!({"bad name": "x"}), "labels"),
        (json!({"wallet": ""}), "labels.wallet"),
    ] {
        let refused = app
            .post(
                "/api/v1/events",
                &json!({"type": "entry", "labels": labels}),
            )
            .await;
        assert_eq!(refused.status, 422, "{}", refused.text);
        assert_eq!(refused.json()["errors"][0]["field"], field);
    }
    let refused = app
        .post(
            "/api/v1/endpoints",
            &json!({"url": receiver.url, "labels": {"wallet": []}}),
        )
        .await;
    assert_eq!(refused.status, 422, "{}", refused.text);
    assert_eq!(refused.json()["errors"][0]["field"], "labels.wallet");
    assert_eq!(app.events().await.len(), 3);
}

#[tokio::test]
async fn a_portal_link_opens_one_session_of_its_application_once() {
    let app = spawn_app().await;
    let receiver = TestReceiver::start().await;
    let (a, key_a) = application(&app, "A", "a").await;
    let (_b, key_b) = application(&app, "B", "b").await;
    for key in [&key_a, &key_b] {
        let made = app
            .send_as(
                key,
                "POST",
                "/api/v1/endpoints",
                Some(&json!({"url": receiver.url})),
            )
            .await;
        assert_eq!(made.status, 201);
    }
    let link = |read_only: bool| {
        let app = &app;
        let a = a.clone();
        async move {
            let reply = app
                .post(
                    &format!("/api/v1/applications/{a}/portal-access"),
                    &json!({"expiry": 600, "read_only": read_only}),
                )
                .await;
            assert_eq!(reply.status, 201, "{}", reply.text);
            reply.json()
        }
    };
    let open = |token: String| {
        let app = &app;
        async move {
            app.post_raw(
                "/portal/sessions",
                &[("content-type", "application/json")],
                json!({"token": token}).to_string(),
            )
            .await
        }
    };

    let read_only = link(true).await;
    let token = read_only["token"].as_str().unwrap().to_owned();
    assert!(token.starts_with("ptl_"));
    assert!(
        read_only["url"]
            .as_str()
            .unwrap()
            .ends_with(&format!("/portal#token={token}"))
    );
    let session = open(token.clone()).await;
    assert_eq!(session.status, 201, "{}", session.text);
    let session = session.json();
    assert_eq!(session["application_id"], a);
    assert_eq!(session["read_only"], true);
    let key = session["token"].as_str().unwrap().to_owned();
    // The session sees its application's records only, and may only read.
    let seen = app.send_as(&key, "GET", "/api/v1/endpoints", None).await;
    assert_eq!(seen.ids().len(), 1);
    let write = app
        .send_as(
            &key,
            "POST",
            "/api/v1/endpoints",
            Some(&json!({"url": receiver.url})),
        )
        .await;
    assert_eq!(write.status, 403);
    // A link opens once.
    let again = open(token).await;
    assert_eq!(again.status, 409, "{}", again.text);
    assert_eq!(again.json()["code"], "portal_link_not_valid");
    assert_eq!(open("ptl_nothing".into()).await.status, 409);

    // An admin link's session may write; expire-all ends it and revokes unused links.
    let admin = open(link(false).await["token"].as_str().unwrap().to_owned())
        .await
        .json();
    let admin_key = admin["token"].as_str().unwrap().to_owned();
    let write = app
        .send_as(
            &admin_key,
            "POST",
            "/api/v1/endpoints",
            Some(&json!({"url": receiver.url})),
        )
        .await;
    assert_eq!(write.status, 201, "{}", write.text);
    let unused = link(false).await["token"].as_str().unwrap().to_owned();
    let expired = app
        .post(
            &format!("/api/v1/applications/{a}/portal-access/expire-all"),
            &json!({}),
        )
        .await;
    assert_eq!(expired.status, 200, "{}", expired.text);
    assert_eq!(expired.json()["expired"], 5);
    assert_eq!(
        app.send_as(&admin_key, "GET", "/api/v1/endpoints", None)
            .await
            .status,
        401
    );
    assert_eq!(
        app.send_as(&key, "GET", "/api/v1/endpoints", None)
            .await
            .status,
        401
    );
    assert_eq!(open(unused).await.status, 409);
    // The application's own keys are not sessions: they still work.
    assert_eq!(
        app.send_as(&key_a, "GET", "/api/v1/endpoints", None)
            .await
            .status,
        200
    );

    let bad = app
        .post(
            &format!("/api/v1/applications/{a}/portal-access"),
            &json!({"expiry": 10}),
        )
        .await;
    assert_eq!(bad.status, 422);
}

#[tokio::test]
async fn an_application_gets_its_events_per_day_and_no_more_and_others_are_not_held_back() {
    let app = spawn_app().await;
    let receiver = TestReceiver::start().await;
    let id = application_with_endpoint(
        &app,
        json!({"name": "trial", "quotas": {"events_per_day": 2}}),
        json!({"url": format!("{}/trial", receiver.url)}),
    )
    .await;
    app.create_endpoint(json!({"url": format!("{}/operator", receiver.url)}))
        .await;
    let publish = |key: &'static str| {
        let app = &app;
        async move {
            let reply = app
                .client
                .post(app.url("/api/v1/events"))
                .bearer_auth(crate::helpers::TOKEN)
                .header("idempotency-key", key)
                .header("content-type", "application/json")
                .body(json!({"type": "entry", "data": {"k": key}}).to_string())
                .send()
                .await
                .unwrap();
            assert_eq!(reply.status(), 202);
        }
    };
    publish("one").await;
    // A duplicate stores nothing, and takes nothing of the quota.
    publish("one").await;
    publish("two").await;
    publish("three").await;
    let got = receiver.wait_for(5).await;
    let to = |path: &str| got.iter().filter(|r| r.uri.ends_with(path)).count();
    assert_eq!((to("/trial"), to("/operator")), (2, 3));
    let metrics = app.get("/metrics").await.text;
    assert!(
        metrics.contains("tradehook_quota_skipped_total 1"),
        "{metrics}"
    );
    let events = app.get(&format!("/api/v1/events?application={id}")).await;
    assert_eq!(events.ids().len(), 2);
}

#[tokio::test]
async fn an_applications_retention_prunes_its_old_deliveries_and_only_those() {
    let app = crate::helpers::spawn_app_with(|c| {
        c.prune_interval = std::time::Duration::from_millis(100);
    })
    .await;
    let receiver = TestReceiver::start().await;
    let id = application_with_endpoint(
        &app,
        json!({"name": "short", "quotas": {"retention": 1}}),
        json!({"url": receiver.url, "event_types": ["alone", "shared"]}),
    )
    .await;
    app.create_endpoint(json!({"url": receiver.url, "event_types": ["shared"]}))
        .await;
    let alone = app.publish("alone", json!({})).await;
    let shared = app.publish("shared", json!({})).await;
    receiver.wait_for(3).await;
    // After a second, the application's finished deliveries go, and the event only it was
    // sent with them; the operator's delivery of the shared event stays.
    eventually(|| async {
        let gone = app.get(&format!("/api/v1/events/{alone}")).await.status == 404;
        let left = app.get(&format!("/api/v1/events/{shared}")).await.json();
        (gone && left["deliveries"].as_array().unwrap().len() == 1).then_some(())
    })
    .await;
    let deliveries = app
        .get(&format!("/api/v1/deliveries?application={id}"))
        .await;
    assert!(deliveries.ids().is_empty());
}
