//! `/api/webhooks`: the subscription API signal providers document to their customers
//! (`X-API-Key`, `{"success": true, "webhook": …}`), served for application keys so that a
//! provider can put the hub behind its own domain and its customer docs stay true. Endpoints
//! made here deliver `{id, type, created, data}` signed with `X-Webhook-Signature` (or Standard
//! Webhooks, if the application says so), with `X-Webhook-ID`, `X-Event-Type` and
//! `X-Delivery-ID`.
//!
//! Every answer says `success`; errors are `{"success": false, "code": …, "error": …}` with the
//! same statuses and codes as the rest of the API.

use axum::Json;
use axum::Router;
use axum::extract::{Path, RawQuery, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use super::error::{ApiError, Body, parse_json, parse_query};
use crate::domain::{Scope, Signing, rfc3339};
use crate::model::{Delivery, Endpoint};
use crate::service::endpoints::{EndpointFields, Filter};

/// The routes, behind the API's token check (`X-API-Key` is read there).
pub fn router(state: &AppState) -> Router<AppState> {
    Router::new()
        .route("/api/webhooks", get(list).post(create))
        .route("/api/webhooks/{id}", put(update).delete(remove))
        .route("/api/webhooks/{id}/test", post(test))
        .route("/api/webhooks/{id}/deliveries", get(deliveries))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            super::require_token,
        ))
        .layer(middleware::from_fn(errors_as_subscription_api))
}

/// The application the call is for: these routes are only an application's.
fn application(scope: &Scope) -> Result<String, ApiError> {
    scope.application_id().map(str::to_owned).ok_or_else(|| {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "application_key_required",
            "send an application's API key in X-API-Key (or act for one with ?application=)",
        )
    })
}

/// A webhook as the subscription API shows it.
fn webhook(e: &Endpoint) -> Value {
    json!({
        "id": e.id,
        "url": crate::security::redact::url(&e.url),
        "events": e.event_types.iter().map(|p| p.as_str()).collect::<Vec<_>>(),
        "is_active": e.enabled,
        "created_at": rfc3339(e.created_at),
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WebhookIn {
    url: Option<String>,
    events: Option<Vec<String>>,
    is_active: Option<bool>,
    /// An extension of the documented API: the labels the customer follows.
    labels: Option<Value>,
}

impl WebhookIn {
    fn fields(self, signing: Option<Signing>) -> Result<EndpointFields, ApiError> {
        let mut fields = serde_json::Map::new();
        if let Some(url) = self.url {
            fields.insert("url".into(), url.into());
        }
        if let Some(events) = self.events {
            fields.insert("event_types".into(), events.into());
        }
        if let Some(active) = self.is_active {
            fields.insert("enabled".into(), active.into());
        }
        if let Some(labels) = self.labels {
            fields.insert("labels".into(), labels);
        }
        if let Some(signing) = signing {
            fields.insert("signing".into(), signing.as_str().into());
            fields.insert("envelope".into(), "subscription".into());
        }
        // The names are the endpoint's own; a value of the wrong kind is reported on the
        // endpoint's field, as the rest of the API does.
        serde_json::from_value(Value::Object(fields)).map_err(|e| {
            ApiError::validation(vec![crate::domain::FieldError::new("", e.to_string())])
        })
    }
}

async fn create(
    State(app): State<AppState>,
    scope: Scope,
    Body(body): Body,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let id = application(&scope)?;
    let input: WebhookIn = parse_json(&body)?;
    if input.url.is_none() {
        return Err(ApiError::validation(vec![crate::domain::FieldError::new(
            "url", "required",
        )]));
    }
    let signing = app
        .registry
        .application(&id)
        .and_then(|a| a.settings.subscription_signing)
        .unwrap_or(Signing::HmacHex);
    let endpoint = app
        .services
        .create_endpoint(scope, input.fields(Some(signing))?)
        .await?;
    let mut shown = webhook(&endpoint);
    shown["secret"] = endpoint.secret.clone().into();
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "success": true,
            "webhook": shown,
            "message": "Webhook created. Save your secret - it will only be shown once!",
        })),
    ))
}

async fn list(State(app): State<AppState>, scope: Scope) -> Result<Json<Value>, ApiError> {
    application(&scope)?;
    let endpoints = app.services.endpoints(scope, &Filter::default())?;
    Ok(Json(json!({
        "success": true,
        "webhooks": endpoints.iter().map(|e| webhook(e)).collect::<Vec<_>>(),
    })))
}

async fn update(
    State(app): State<AppState>,
    scope: Scope,
    Path(id): Path<String>,
    Body(body): Body,
) -> Result<Json<Value>, ApiError> {
    application(&scope)?;
    let input: WebhookIn = parse_json(&body)?;
    let endpoint = app
        .services
        .update_endpoint(scope, &id, input.fields(None)?)
        .await?;
    Ok(Json(
        json!({"success": true, "webhook": webhook(&endpoint)}),
    ))
}

async fn remove(
    State(app): State<AppState>,
    scope: Scope,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    application(&scope)?;
    app.services.delete_endpoint(scope, &id).await?;
    Ok(Json(json!({"success": true, "message": "Webhook deleted"})))
}

async fn test(
    State(app): State<AppState>,
    scope: Scope,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    application(&scope)?;
    let tested = app
        .services
        .test_endpoint(scope, &id, super::endpoints::TEST_WAIT)
        .await?;
    let attempt = tested.attempt.as_ref();
    Ok(Json(json!({
        "success": attempt.is_some_and(|a| a.status_code.is_some_and(|c| (200..300).contains(&c))),
        "delivery": {
            "id": tested.delivery_id,
            "event_id": tested.event_id,
            "status_code": attempt.and_then(|a| a.status_code),
            "duration_ms": attempt.map(|a| a.duration_ms),
            "error": attempt.and_then(|a| a.error.clone()),
        },
        "message": match attempt {
            None => "Test event queued; it was not attempted yet",
            Some(a) if a.status_code.is_some_and(|c| (200..300).contains(&c)) =>
                "Test event delivered",
            Some(_) => "Test event sent; your endpoint did not answer 2xx",
        },
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeliveriesQuery {
    limit: Option<u32>,
}

async fn deliveries(
    State(app): State<AppState>,
    scope: Scope,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<Json<Value>, ApiError> {
    application(&scope)?;
    let q: DeliveriesQuery = parse_query(q.as_deref())?;
    let limit = match q.limit {
        None => 20,
        Some(n @ 1..=100) => n,
        Some(_) => {
            return Err(ApiError::validation(vec![crate::domain::FieldError::new(
                "limit",
                "must be between 1 and 100",
            )]));
        }
    };
    // Not found unless it is this application's.
    app.services.endpoint(scope.clone(), &id)?;
    let list = app
        .services
        .deliveries(
            scope,
            crate::model::DeliveryFilter {
                endpoint_id: Some(id),
                limit,
                ..Default::default()
            },
        )
        .await?;
    let shown: Vec<Value> = list.iter().map(delivery).collect();
    Ok(Json(json!({"success": true, "deliveries": shown})))
}

fn delivery(d: &Delivery) -> Value {
    json!({
        "id": d.id,
        "event_id": d.event_id,
        "status": d.status.as_str(),
        "attempts": d.attempts,
        "response_status": d.last_status_code,
        "error": d.last_error,
        "created_at": rfc3339(d.created_at),
        "updated_at": rfc3339(d.updated_at),
    })
}

/// Errors in the subscription API's shape: `{"success": false, "code", "error"}`, with the
/// status and headers (`Retry-After`, …) of the API's own error.
async fn errors_as_subscription_api(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    if !(response.status().is_client_error() || response.status().is_server_error()) {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, 64 * 1024).await else {
        return (parts.status, Json(json!({"success": false}))).into_response();
    };
    let error: Value = serde_json::from_slice(&bytes).unwrap_or_default();
    let mut shaped = json!({
        "success": false,
        "code": error["code"],
        "error": error["detail"],
    });
    if let Some(fields) = error.get("errors") {
        shaped["errors"] = fields.clone();
    }
    parts.headers.remove(axum::http::header::CONTENT_LENGTH);
    (parts, Json(shaped)).into_response()
}
