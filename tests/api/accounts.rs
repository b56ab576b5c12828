//! Trading accounts over the API: created with the paper exchange's defaults, every bad
//! setting refused at once with nothing stored, names unique, and the kill switch.

use serde_json::json;

use crate::helpers::spawn_app;

#[tokio::test]
async fn a_paper_account_is_created_with_defaults_and_found_by_id_or_name() {
    let app = spawn_app().await;
    let reply = app
        .post("/api/v1/accounts", &json!({"name": "paper-main"}))
        .await;
    assert_eq!(reply.status, 201, "{}", reply.text);
    let created = reply.json();
    let id = created["id"].as_str().unwrap();
    assert!(id.starts_with("acc_"), "{id}");
    assert_eq!(created["venue"], "paper");
    assert_eq!(
        created["paper"],
        json!({"balance": 10000.0, "quote": "USDT", "fee_rate": 0.0005,
               "slippage_bps": 0.0, "leverage_max": 1.0})
    );
    assert_eq!(created["halted"], json!(null));

    let by_name = app.get("/api/v1/accounts/paper-main").await;
    assert_eq!(by_name.status, 200);
    assert_eq!(by_name.json(), created);
    assert_eq!(
        app.get(&format!("/api/v1/accounts/{id}")).await.json(),
        created
    );

    let own = app
        .post(
            "/api/v1/accounts",
            &json!({"name": "follower-1", "venue": "paper",
                    "paper": {"balance": 2500, "quote": "USDC", "fee_rate": 0.001,
                              "slippage_bps": 5, "leverage_max": 10}}),
        )
        .await;
    assert_eq!(own.status, 201, "{}", own.text);
    assert_eq!(own.json()["paper"]["quote"], "USDC");
    assert_eq!(own.json()["paper"]["leverage_max"], 10.0);
    let list = app.get("/api/v1/accounts").await.json();
    let names: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert_eq!(names.len(), 2);
    assert!(names.contains(&"paper-main") && names.contains(&"follower-1"));
}

#[tokio::test]
async fn bad_settings_are_refused_each_by_field_and_nothing_is_stored() {
    let app = spawn_app().await;
    let reply = app
        .post(
            "/api/v1/accounts",
            &json!({"name": "Bad Name", "paper": {"balance": -5, "quote": "usdt",
                    "fee_rate": 0.5, "slippage_bps": -1, "leverage_max": 0.5}}),
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
    assert_eq!(
        fields,
        [
            "name",
            "paper.balance",
            "paper.quote",
            "paper.fee_rate",
            "paper.slippage_bps",
            "paper.leverage_max"
        ]
    );
    // A venue the hub does not have, and a field it does not know.
    let venue = app
        .post(
            "/api/v1/accounts",
            &json!({"name": "x", "venue": "binance"}),
        )
        .await;
    assert_eq!(venue.status, 422, "{}", venue.text);
    let unknown = app
        .post("/api/v1/accounts", &json!({"name": "x", "api_key": "k"}))
        .await;
    assert_eq!(unknown.status, 422, "{}", unknown.text);
    assert_eq!(app.get("/api/v1/accounts").await.json()["data"], json!([]));
}

#[tokio::test]
async fn names_are_unique_and_a_change_keeps_the_balance_fixed() {
    let app = spawn_app().await;
    for name in ["a", "b"] {
        let reply = app.post("/api/v1/accounts", &json!({"name": name})).await;
        assert_eq!(reply.status, 201, "{}", reply.text);
    }
    let again = app.post("/api/v1/accounts", &json!({"name": "a"})).await;
    assert_eq!(again.status, 409, "{}", again.text);
    assert_eq!(again.json()["code"], "conflict");

    let taken = app
        .send("PATCH", "/api/v1/accounts/b", Some(&json!({"name": "a"})))
        .await;
    assert_eq!(taken.status, 422, "{}", taken.text);
    let balance = app
        .send(
            "PATCH",
            "/api/v1/accounts/b",
            Some(&json!({"paper": {"balance": 1}})),
        )
        .await;
    assert_eq!(balance.status, 422, "{}", balance.text);
    // Settings are objects: serde would read a struct from an array too.
    for body in [
        json!({"risk": [null, null]}),
        json!({"paper": [0.1]}),
        json!({"risk": "none"}),
    ] {
        let refused = app.send("PATCH", "/api/v1/accounts/b", Some(&body)).await;
        assert_eq!(refused.status, 422, "{body}: {}", refused.text);
    }
    let limit = app.get("/api/v1/accounts/b/orders?limit=0").await;
    assert_eq!(limit.status, 422, "{}", limit.text);

    let changed = app
        .send(
            "PATCH",
            "/api/v1/accounts/b",
            Some(&json!({"name": "c", "paper": {"fee_rate": 0.0002}})),
        )
        .await;
    assert_eq!(changed.status, 200, "{}", changed.text);
    let c = changed.json();
    assert_eq!(c["name"], "c");
    assert_eq!(c["paper"]["fee_rate"], 0.0002);
    assert_eq!(c["paper"]["balance"], 10000.0);
    assert_eq!(app.get("/api/v1/accounts/b").await.status, 404);

    let gone = app.send("DELETE", "/api/v1/accounts/c", None).await;
    assert_eq!(gone.status, 204);
    let missing = app.get("/api/v1/accounts/c").await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.json()["code"], "not_found");
}

#[tokio::test]
async fn the_kill_switch_halts_with_its_reason_and_resumes() {
    let app = spawn_app().await;
    app.post("/api/v1/accounts", &json!({"name": "main"})).await;
    let halted = app
        .post(
            "/api/v1/accounts/main/halt",
            &json!({"reason": "exchange outage", "exits_allowed": false}),
        )
        .await;
    assert_eq!(halted.status, 200, "{}", halted.text);
    let halt = &halted.json()["halted"];
    assert_eq!(halt["reason"], "exchange outage");
    assert_eq!(halt["exits_allowed"], false);
    let since = halt["since"].as_str().unwrap().to_owned();

    // Halting again changes the reason, not since when.
    let again = app.send("POST", "/api/v1/accounts/main/halt", None).await;
    assert_eq!(again.status, 200, "{}", again.text);
    assert_eq!(again.json()["halted"]["reason"], "halted by an operator");
    assert_eq!(again.json()["halted"]["exits_allowed"], true);
    assert_eq!(again.json()["halted"]["since"], since.as_str());
    let listed = app.get("/api/v1/accounts?halted=true").await.json();
    assert_eq!(listed["data"].as_array().unwrap().len(), 1);

    let resumed = app.post("/api/v1/accounts/main/resume", &json!({})).await;
    assert_eq!(resumed.status, 200, "{}", resumed.text);
    assert_eq!(resumed.json()["halted"], json!(null));
    let listed = app.get("/api/v1/accounts?halted=true").await.json();
    assert_eq!(listed["data"], json!([]));
    assert_eq!(
        app.post("/api/v1/accounts/nobody/halt", &json!({}))
            .await
            .status,
        404
    );
}
