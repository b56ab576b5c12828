//! The subscription API signal providers document (`/api/webhooks`), run as its documentation
//! shows it: its curl examples verbatim (only the host, key, URL and id filled in), and its
//! Python and Node.js verification functions on what the hub delivers.

use serde_json::{Value, json};

use crate::helpers::{TestApp, TestReceiver, spawn_app};

/// The documentation's examples, character for character.
const CREATE: &str = r#"curl -X POST https://perpstracker.com:5001/api/webhooks \
-H "X-API-Key: YOUR_API_KEY" \
-H "Content-Type: application/json" \
-d '{
"url": "https://your-server.com/webhook",
"events": ["trade.new", "trade.close", "trade.liquidation"]
}'"#;
const LIST: &str = r#"curl -X GET https://perpstracker.com:5001/api/webhooks \
-H "X-API-Key: YOUR_API_KEY""#;
const UPDATE: &str = r#"curl -X PUT https://perpstracker.com:5001/api/webhooks/wh_abc123 \
-H "X-API-Key: YOUR_API_KEY" \
-H "Content-Type: application/json" \
-d '{
"url": "https://new-server.com/webhook",
"events": ["trade.new"],
"is_active": true
}'"#;
const DELETE: &str = r#"curl -X DELETE https://perpstracker.com:5001/api/webhooks/wh_abc123 \
-H "X-API-Key: YOUR_API_KEY""#;
const TEST: &str = r#"curl -X POST https://perpstracker.com:5001/api/webhooks/wh_abc123/test \
-H "X-API-Key: YOUR_API_KEY""#;
const DELIVERIES: &str = r#"curl -X GET "https://perpstracker.com:5001/api/webhooks/wh_abc123/deliveries?limit=20" \
-H "X-API-Key: YOUR_API_KEY""#;

/// The documentation's Python verification function, verbatim, fed the body as Flask's
/// `request.get_data(as_text=True)` would give it.
const VERIFY_PY: &str = r#"
import hmac
import hashlib
def verify_webhook_signature(payload: str, signature: str, secret: str) -> bool:
    expected = hmac.new(
        secret.encode(),
        payload.encode(),
        hashlib.sha256
    ).hexdigest()
    return hmac.compare_digest(signature, expected)

import sys
payload = open(sys.argv[1], "rb").read().decode("utf-8")
print(verify_webhook_signature(payload, sys.argv[2], sys.argv[3]))
"#;

/// The documentation's Node.js verification function, verbatim, fed what its Express example
/// gives it: `JSON.stringify(req.body)` of the body `express.json()` parsed.
const VERIFY_JS: &str = r#"
const crypto = require('crypto');
function verifyWebhookSignature(payload, signature, secret) {
const expectedSignature = crypto
.createHmac('sha256', secret)
.update(payload)
.digest('hex');
return crypto.timingSafeEqual(
Buffer.from(signature),
Buffer.from(expectedSignature)
);
}

const [path, signature, secret] = process.argv.slice(1);
const payload = JSON.stringify(JSON.parse(require('fs').readFileSync(path, 'utf8')));
console.log(verifyWebhookSignature(payload, signature, secret) ? 'True' : 'False');
"#;

struct Docs<'a> {
    app: &'a TestApp,
    key: String,
    receiver: String,
    new_receiver: String,
}

impl Docs<'_> {
    /// Runs an example with this hub, key, receiver and webhook id in place of the
    /// documentation's; answers the status and body. (curl runs off the test's runtime, which
    /// serves the hub.)
    async fn run(&self, example: &str, webhook_id: &str) -> (u16, Value) {
        let command = example
            .replace(
                "https://perpstracker.com:5001",
                &format!("http://{}", self.app.addr),
            )
            .replace("YOUR_API_KEY", &self.key)
            .replace("https://your-server.com/webhook", &self.receiver)
            .replace("https://new-server.com/webhook", &self.new_receiver)
            .replace("wh_abc123", webhook_id);
        let out = tokio::task::spawn_blocking(move || {
            std::process::Command::new("sh")
                .arg("-c")
                .arg(format!("{command} -s -w '\\n%{{http_code}}'"))
                .output()
                .expect("curl runs")
        })
        .await
        .unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        let (body, status) = text.rsplit_once('\n').unwrap();
        let body = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
        (status.parse().unwrap(), body)
    }
}

fn python_accepts(body: &[u8], signature: &str, secret: &str) -> bool {
    accepts(&["python3", "-c"], VERIFY_PY, body, signature, secret)
}

fn node_accepts(body: &[u8], signature: &str, secret: &str) -> bool {
    accepts(&["node", "-e"], VERIFY_JS, body, signature, secret)
}

/// Whether a documented check, run by `interpreter` (and the flag that takes a script),
/// accepts a delivery.
fn accepts(
    interpreter: &[&str; 2],
    check: &str,
    body: &[u8],
    signature: &str,
    secret: &str,
) -> bool {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("body");
    std::fs::write(&path, body).unwrap();
    let out = std::process::Command::new(interpreter[0])
        .arg(interpreter[1])
        .arg(check)
        .arg(&path)
        .arg(signature)
        .arg(secret)
        .output()
        .unwrap_or_else(|e| panic!("{} runs: {e}", interpreter[0]));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    match String::from_utf8(out.stdout).unwrap().trim() {
        "True" => true,
        "False" => false,
        other => panic!("{other}"),
    }
}

#[tokio::test]
async fn the_documented_examples_work_verbatim_and_the_documented_check_accepts_deliveries() {
    let app = spawn_app().await;
    let receiver = TestReceiver::start().await;
    let application = app
        .post("/api/v1/applications", &json!({"name": "customer"}))
        .await
        .json();
    let key = app
        .post(
            &format!(
                "/api/v1/applications/{}/keys",
                application["id"].as_str().unwrap()
            ),
            &json!({"name": "docs", "scope": "admin"}),
        )
        .await
        .json()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let docs = Docs {
        app: &app,
        key,
        receiver: format!("{}/webhook", receiver.url),
        new_receiver: format!("{}/new", receiver.url),
    };

    // Step 1: create.
    let (status, created) = docs.run(CREATE, "").await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["success"], true);
    assert_eq!(
        created["message"],
        "Webhook created. Save your secret - it will only be shown once!"
    );
    let webhook = &created["webhook"];
    let id = webhook["id"].as_str().unwrap().to_owned();
    let secret = webhook["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("whsec_"));
    assert_eq!(webhook["url"], docs.receiver);
    assert_eq!(
        webhook["events"],
        json!(["trade.new", "trade.close", "trade.liquidation"])
    );

    // A trade, as the documentation's payload has it, published by the provider.
    let trade = json!({
        "owner": "DRVRvzf8pSiMJi5BY1NmZu5STahBYKMVcfkPp3vxPump",
        "marketSymbol": "SOL-PERP",
        "side": "long",
        "sizeUsd": 15000.50,
        "leverage": 5.2,
        "entryPrice": 185.42,
        "collateral": 2884.71,
        "timestamp": "2025-01-15T10:30:00Z"
    });
    let event_id = app.publish("trade.new", trade.clone()).await;
    let got = receiver.wait_for(1).await;
    let request = &got[0];
    assert_eq!(request.uri, "/hook/webhook");
    assert_eq!(request.header("content-type"), Some("application/json"));
    assert_eq!(request.header("x-webhook-id"), Some(id.as_str()));
    assert_eq!(request.header("x-event-type"), Some("trade.new"));
    assert!(request.header("x-delivery-id").is_some());
    let body: Value = serde_json::from_slice(&request.body).unwrap();
    assert_eq!(
        body.as_object().unwrap().keys().collect::<Vec<_>>(),
        ["id", "type", "created", "data"]
    );
    assert_eq!(body["id"], event_id);
    assert_eq!(body["type"], "trade.new");
    assert!(body["created"].as_i64().unwrap() > 1_700_000_000);
    assert_eq!(body["data"], trade);
    let signature = request.header("x-webhook-signature").unwrap();
    assert!(python_accepts(&request.body, signature, &secret));
    assert!(node_accepts(&request.body, signature, &secret));
    let mut tampered = request.body.to_vec();
    tampered[10] ^= 1;
    assert!(!python_accepts(&tampered, signature, &secret));
    assert!(!node_accepts(&tampered, signature, &secret));
    assert!(!python_accepts(&request.body, signature, "whsec_another"));
    assert!(!node_accepts(&request.body, signature, "whsec_another"));

    // List, test, deliveries, update, delete.
    let (status, listed) = docs.run(LIST, "").await;
    assert_eq!(status, 200, "{listed}");
    assert_eq!(listed["webhooks"][0]["id"], id);
    assert!(listed["webhooks"][0].get("secret").is_none());

    let (status, tested) = docs.run(TEST, &id).await;
    assert_eq!(status, 200, "{tested}");
    assert_eq!(tested["success"], true, "{tested}");
    assert_eq!(tested["delivery"]["status_code"], 200);
    let ping = receiver.wait_for(2).await;
    assert!(python_accepts(
        &ping[1].body,
        ping[1].header("x-webhook-signature").unwrap(),
        &secret
    ));

    let (status, log) = docs.run(DELIVERIES, &id).await;
    assert_eq!(status, 200, "{log}");
    let deliveries = log["deliveries"].as_array().unwrap();
    assert_eq!(deliveries.len(), 2);
    assert!(deliveries.iter().all(|d| d["status"] == "succeeded"));

    let (status, updated) = docs.run(UPDATE, &id).await;
    assert_eq!(status, 200, "{updated}");
    assert_eq!(updated["webhook"]["url"], docs.new_receiver);
    assert_eq!(updated["webhook"]["events"], json!(["trade.new"]));
    assert_eq!(updated["webhook"]["is_active"], true);
    app.publish("trade.close", json!({"owner": "W"})).await;
    app.publish("trade.new", json!({"owner": "W"})).await;
    let got = receiver.wait_for(3).await;
    assert_eq!(got[2].uri, "/hook/new");
    assert_eq!(got[2].header("x-event-type"), Some("trade.new"));

    let (status, deleted) = docs.run(DELETE, &id).await;
    assert_eq!(status, 200, "{deleted}");
    assert_eq!(deleted["success"], true);
    let (status, gone) = docs.run(DELETE, &id).await;
    assert_eq!(status, 404);
    assert_eq!(gone["success"], false);
    assert_eq!(gone["code"], "not_found");
}

#[tokio::test]
async fn the_subscription_api_is_for_application_keys_and_says_what_went_wrong() {
    let app = spawn_app().await;
    // The operator's own token names no application.
    let reply = app.get("/api/webhooks").await;
    assert_eq!(reply.status, 403, "{}", reply.text);
    assert_eq!(reply.json()["code"], "application_key_required");
    assert_eq!(reply.json()["success"], false);
    let reply = app
        .client
        .get(app.url("/api/webhooks"))
        .header("x-api-key", "thk_not_a_key")
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 401);
    let body: Value = serde_json::from_str(&reply.text().await.unwrap()).unwrap();
    assert_eq!(
        body,
        json!({"success": false, "code": "invalid_token",
                            "error": "the API token is not valid"})
    );

    let created = app
        .post(
            "/api/v1/applications",
            &json!({"name": "c", "subscription_signing": "standard"}),
        )
        .await
        .json();
    let id = created["id"].as_str().unwrap();
    let bad = app
        .send(
            "POST",
            &format!("/api/webhooks?application={id}"),
            Some(&json!({"events": ["trade.new"]})),
        )
        .await;
    assert_eq!(bad.status, 422, "{}", bad.text);
    assert_eq!(bad.json()["errors"][0]["field"], "url");

    // An application that chose Standard Webhooks gets it on the endpoints made here.
    let receiver = TestReceiver::start().await;
    let made = app
        .send(
            "POST",
            &format!("/api/webhooks?application={id}"),
            Some(&json!({"url": receiver.url, "events": ["trade.new"]})),
        )
        .await;
    assert_eq!(made.status, 201, "{}", made.text);
    let secret = made.json()["webhook"]["secret"]
        .as_str()
        .unwrap()
        .to_owned();
    app.publish("trade.new", json!({"owner": "W"})).await;
    let got = receiver.wait_for(1).await;
    let verifier = standardwebhooks::Webhook::new(&secret).unwrap();
    let mut headers = http::HeaderMap::new();
    for name in ["webhook-id", "webhook-timestamp", "webhook-signature"] {
        headers.insert(name, got[0].headers[name].clone());
    }
    verifier.verify(&got[0].body, &headers).unwrap();
    assert!(got[0].header("x-webhook-signature").is_none());
}
