//! The OpenAPI document the hub serves: complete, unambiguous, and true to the routes.

use serde_json::{Value, json};

use crate::helpers::*;

/// Every route of the hub, as `METHOD path`.
const ROUTES: &[&str] = &[
    "GET /api/v1/deliveries",
    "GET /api/v1/deliveries/{id}",
    "POST /api/v1/deliveries/{id}/retry",
    "GET /api/v1/accounts",
    "POST /api/v1/accounts",
    "GET /api/v1/accounts/{id}",
    "PATCH /api/v1/accounts/{id}",
    "DELETE /api/v1/accounts/{id}",
    "POST /api/v1/accounts/{id}/halt",
    "POST /api/v1/accounts/{id}/resume",
    "POST /api/v1/accounts/{id}/check",
    "GET /api/v1/accounts/{id}/orders",
    "GET /api/v1/accounts/{id}/positions",
    "POST /api/v1/accounts/{id}/marks",
    "GET /api/v1/accounts/{id}/performance",
    "GET /api/v1/applications",
    "POST /api/v1/applications",
    "GET /api/v1/applications/{app}",
    "PATCH /api/v1/applications/{app}",
    "DELETE /api/v1/applications/{app}",
    "GET /api/v1/applications/{app}/keys",
    "POST /api/v1/applications/{app}/keys",
    "DELETE /api/v1/applications/{app}/keys/{id}",
    "POST /api/v1/applications/{app}/portal-access",
    "POST /api/v1/applications/{app}/portal-access/expire-all",
    "POST /portal/sessions",
    "GET /api/v1/endpoints",
    "POST /api/v1/endpoints",
    "GET /api/v1/endpoints/{id}",
    "PATCH /api/v1/endpoints/{id}",
    "DELETE /api/v1/endpoints/{id}",
    "POST /api/v1/endpoints/{id}/disable",
    "POST /api/v1/endpoints/{id}/enable",
    "POST /api/v1/endpoints/{id}/recover",
    "POST /api/v1/endpoints/{id}/rotate-secret",
    "POST /api/v1/endpoints/{id}/test",
    "GET /api/v1/events",
    "POST /api/v1/events",
    "GET /api/v1/events/{id}",
    "POST /api/v1/events/{id}/replay",
    "GET /api/v1/sources",
    "POST /api/v1/sources",
    "GET /api/v1/sources/{id}",
    "PATCH /api/v1/sources/{id}",
    "DELETE /api/v1/sources/{id}",
    "GET /api/v1/stats",
    "GET /api/v1/tokens",
    "POST /api/v1/tokens",
    "DELETE /api/v1/tokens/{id}",
    "GET /healthz",
    "POST /in/{source}",
    "POST /in/{source}/{token}",
    "GET /metrics",
    "GET /readyz",
];

async fn document(app: &TestApp) -> Value {
    // Served without a token: it holds no secrets, and tools fetch it before they have one.
    let reply = app
        .client
        .get(app.url("/api/v1/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 200);
    serde_json::from_str(&reply.text().await.unwrap()).unwrap()
}

fn operations(doc: &Value) -> Vec<(String, String, Value)> {
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            out.push((method.to_uppercase(), path.clone(), operation.clone()));
        }
    }
    out
}

#[tokio::test]
async fn the_document_lists_every_route_and_nothing_else() {
    let app = spawn_app().await;
    let doc = document(&app).await;
    assert_eq!(doc["openapi"], "3.1.0");
    let mut documented: Vec<String> = operations(&doc)
        .iter()
        .map(|(method, path, _)| format!("{method} {path}"))
        .collect();
    documented.sort();
    let mut expected: Vec<String> = ROUTES.iter().map(|r| r.to_string()).collect();
    expected.sort();
    assert_eq!(documented, expected);

    // And each documented route is served: none answers "no such route" or 405.
    let unknown = app.send("GET", "/api/v1/nothing", None).await;
    assert!(unknown.text.contains("no such route"), "{}", unknown.text);
    for (method, path, _) in operations(&doc) {
        let concrete = path
            .replace("{id}", "x")
            .replace("{app}", "x")
            .replace("{source}", "x")
            .replace("{token}", "x");
        let reply = app.send(&method, &concrete, Some(&json!({}))).await;
        assert_ne!(reply.status, 405, "{method} {path}");
        if reply.status == 404 {
            assert!(
                !reply.text.contains("no such route"),
                "{method} {path} is documented but not served"
            );
        }
    }
}

#[tokio::test]
async fn every_operation_is_named_once_and_documents_its_errors() {
    let app = spawn_app().await;
    let doc = document(&app).await;
    let mut ids = std::collections::BTreeSet::new();
    for (method, path, operation) in operations(&doc) {
        let id = operation["operationId"].as_str().unwrap().to_owned();
        assert!(ids.insert(id.clone()), "operation id {id} is used twice");
        let responses = operation["responses"].as_object().unwrap();
        for (status, response) in responses {
            assert!(
                response["description"]
                    .as_str()
                    .is_some_and(|d| !d.is_empty()),
                "{method} {path} {status} has no description"
            );
            if status.starts_with('4') || status.starts_with('5') {
                assert_eq!(
                    response["content"]["application/json"]["schema"]["$ref"],
                    "#/components/schemas/ErrorBody",
                    "{method} {path} {status}"
                );
            }
        }
        if path.starts_with("/api/v1/") {
            assert!(responses.contains_key("401"), "{method} {path} lacks 401");
            assert!(responses.contains_key("403"), "{method} {path} lacks 403");
            assert_eq!(operation["security"], Value::Null, "{method} {path}");
        } else {
            assert_eq!(operation["security"], json!([{}]), "{method} {path}");
        }
    }
    assert_eq!(doc["security"], json!([{"token": []}, {"api_key": []}]));
    assert_eq!(
        doc["components"]["securitySchemes"]["api_key"]["name"],
        "X-API-Key"
    );
    assert_eq!(
        doc["components"]["securitySchemes"]["token"]["scheme"],
        "bearer"
    );
}

#[tokio::test]
async fn the_documented_schemas_match_what_the_api_answers() {
    let app = spawn_app().await;
    let doc = document(&app).await;
    let schemas = &doc["components"]["schemas"];
    let endpoint = app
        .create_endpoint(json!({"url": "http://127.0.0.1:9/hook", "preset": "discord"}))
        .await;
    // Every field of an answer is a documented property, and every required one is there.
    let (properties, required) = fields(schemas, &schemas["EndpointOut"]);
    for field in endpoint.as_object().unwrap().keys() {
        assert!(properties.contains(field), "{field} is not documented");
    }
    assert!(required.contains(&"id".to_owned()));
    for field in required {
        assert!(
            endpoint.get(&field).is_some(),
            "{field} is documented as required but absent"
        );
    }
    assert_eq!(
        schemas["ErrorBody"]["required"],
        json!(["code", "detail"]),
        "the error body's stable fields"
    );
}

#[tokio::test]
async fn a_body_that_is_not_an_object_is_refused() {
    let app = spawn_app().await;
    let endpoint = app
        .create_endpoint(json!({"url": "http://127.0.0.1:9/hook"}))
        .await;
    let id = endpoint["id"].as_str().unwrap();
    for body in [json!([null, null]), json!(null), json!("x"), json!(3)] {
        let reply = app
            .send("PATCH", &format!("/api/v1/endpoints/{id}"), Some(&body))
            .await;
        assert_eq!(reply.status, 422, "{body}: {}", reply.text);
        assert_eq!(reply.json()["code"], "validation_failed");
    }
    // No body at all (or null) keeps rotate-secret's default overlap.
    let reply = app
        .client
        .post(app.url(&format!("/api/v1/endpoints/{id}/rotate-secret")))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 200);
}

/// The properties and required fields of an object schema, through `allOf` and `$ref`.
fn fields(schemas: &Value, schema: &Value) -> (Vec<String>, Vec<String>) {
    if let Some(name) = schema["$ref"].as_str() {
        let name = name.trim_start_matches("#/components/schemas/");
        return fields(schemas, &schemas[name]);
    }
    let mut properties: Vec<String> = schema["properties"]
        .as_object()
        .map(|p| p.keys().cloned().collect())
        .unwrap_or_default();
    let mut required: Vec<String> = schema["required"]
        .as_array()
        .map(|r| r.iter().map(|f| f.as_str().unwrap().to_owned()).collect())
        .unwrap_or_default();
    for part in schema["allOf"].as_array().into_iter().flatten() {
        let (p, r) = fields(schemas, part);
        properties.extend(p);
        required.extend(r);
    }
    (properties, required)
}
