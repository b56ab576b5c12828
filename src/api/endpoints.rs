//! `/api/v1/endpoints`: where deliveries go.

use std::collections::BTreeMap;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::routing::get;
use serde::{Deserialize, Serialize};

use super::error::{ApiError, ApiResult, FieldError, parse_json};
use super::{AppState, Page, page_after};
use crate::deliver::retry::DEFAULT_SCHEDULE_MS;
use crate::domain::{self, EventTypePattern, Signing, prefix, rfc3339};
use crate::store::Endpoint;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/endpoints", get(list).post(create))
        .route("/endpoints/{id}", get(show).patch(update).delete(remove))
}

/// The default timeout of one attempt.
pub const DEFAULT_TIMEOUT_MS: u64 = 10_000;

/// Headers the hub sets itself; an endpoint may not override them.
const RESERVED_HEADERS: &[&str] = &[
    "content-type",
    "content-length",
    "host",
    "user-agent",
    "transfer-encoding",
    "connection",
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
    "x-webhook-signature",
    "x-webhook-id",
    "x-event-type",
    "x-delivery-id",
];

/// Header names whose values are secrets: shown as `***` after creation.
fn is_sensitive_header(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    [
        "auth",
        "token",
        "key",
        "secret",
        "cookie",
        "signature",
        "password",
    ]
    .iter()
    .any(|s| name.contains(s))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EndpointIn {
    url: String,
    #[serde(default)]
    event_types: Option<Vec<EventTypePattern>>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    headers: Option<BTreeMap<String, String>>,
    #[serde(default)]
    signing: Option<Signing>,
    /// Seconds before each retry.
    #[serde(default)]
    retry_schedule: Option<Vec<f64>>,
    /// Seconds an attempt may take.
    #[serde(default)]
    timeout: Option<f64>,
    #[serde(default)]
    enabled: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EndpointPatch {
    url: Option<String>,
    event_types: Option<Vec<EventTypePattern>>,
    description: Option<String>,
    headers: Option<BTreeMap<String, String>>,
    signing: Option<Signing>,
    retry_schedule: Option<Vec<f64>>,
    timeout: Option<f64>,
    enabled: Option<bool>,
}

/// An endpoint as the API shows it. The secret is only present in the reply to a create.
#[derive(Debug, Serialize)]
pub struct EndpointOut {
    id: String,
    url: String,
    description: String,
    event_types: Vec<EventTypePattern>,
    headers: BTreeMap<String, String>,
    signing: Signing,
    enabled: bool,
    disabled_reason: Option<String>,
    retry_schedule: Vec<f64>,
    timeout: f64,
    created_at: String,
    updated_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    secret: Option<String>,
}

impl EndpointOut {
    fn from(e: &Endpoint) -> Self {
        Self {
            id: e.id.clone(),
            url: e.url.clone(),
            description: e.description.clone(),
            event_types: e.event_types.clone(),
            headers: e
                .headers
                .iter()
                .map(|(k, v)| {
                    let shown = if is_sensitive_header(k) { "***" } else { v };
                    (k.clone(), shown.to_owned())
                })
                .collect(),
            signing: e.signing,
            enabled: e.enabled,
            disabled_reason: e.disabled_reason.clone(),
            retry_schedule: e
                .retry_schedule_ms
                .iter()
                .map(|ms| *ms as f64 / 1000.0)
                .collect(),
            timeout: e.timeout_ms as f64 / 1000.0,
            created_at: rfc3339(e.created_at),
            updated_at: rfc3339(e.updated_at),
            secret: None,
        }
    }
}

/// Checks the settings of an endpoint; every problem is reported, not just the first.
fn validate(e: &Endpoint) -> Result<(), ApiError> {
    let mut errors = Vec::new();
    match reqwest::Url::parse(&e.url) {
        Ok(url) if !matches!(url.scheme(), "http" | "https") => {
            errors.push(FieldError::new("url", "must be an http or https URL"));
        }
        Ok(url) if url.host_str().is_none_or(str::is_empty) => {
            errors.push(FieldError::new("url", "must name a host"));
        }
        Ok(_) => {}
        Err(err) => errors.push(FieldError::new("url", format!("not a valid URL: {err}"))),
    }
    if e.event_types.is_empty() {
        errors.push(FieldError::new(
            "event_types",
            "must list at least one type or pattern (\"*\" for all)",
        ));
    }
    if e.description.len() > 1000 {
        errors.push(FieldError::new("description", "at most 1000 characters"));
    }
    for (name, value) in &e.headers {
        if axum::http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            errors.push(FieldError::new(
                format!("headers.{name}"),
                "not a valid header name",
            ));
        } else if RESERVED_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
            errors.push(FieldError::new(
                format!("headers.{name}"),
                "is set by the hub and cannot be overridden",
            ));
        }
        if axum::http::HeaderValue::from_str(value).is_err() {
            errors.push(FieldError::new(
                format!("headers.{name}"),
                "not a valid header value",
            ));
        }
    }
    if e.retry_schedule_ms.len() > 50 {
        errors.push(FieldError::new("retry_schedule", "at most 50 retries"));
    }
    if !(100..=120_000).contains(&e.timeout_ms) {
        errors.push(FieldError::new(
            "timeout",
            "must be between 0.1 and 120 seconds",
        ));
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ApiError::validation(errors))
    }
}

fn schedule_ms(secs: &[f64]) -> Result<Vec<u64>, ApiError> {
    secs.iter()
        .map(|s| {
            if s.is_finite() && *s > 0.0 && *s <= 7.0 * 86400.0 {
                Ok((s * 1000.0).round() as u64)
            } else {
                Err(ApiError::validation(vec![FieldError::new(
                    "retry_schedule",
                    "each delay must be more than 0 and at most 7 days (in seconds)",
                )]))
            }
        })
        .collect()
}

fn timeout_ms(secs: f64) -> Result<u64, ApiError> {
    if secs.is_finite() && secs > 0.0 {
        Ok((secs * 1000.0).round() as u64)
    } else {
        Err(ApiError::validation(vec![FieldError::new(
            "timeout",
            "must be a positive number of seconds",
        )]))
    }
}

async fn create(
    State(app): State<AppState>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<EndpointOut>)> {
    let input: EndpointIn = parse_json(&body)?;
    let now = domain::now_ms();
    let endpoint = Endpoint {
        id: domain::new_id(prefix::ENDPOINT),
        url: input.url.trim().to_owned(),
        description: input.description.unwrap_or_default(),
        event_types: input
            .event_types
            .unwrap_or_else(|| vec![EventTypePattern::all()]),
        headers: input.headers.unwrap_or_default(),
        signing: input.signing.unwrap_or_default(),
        secret: domain::new_signing_secret(),
        enabled: input.enabled.unwrap_or(true),
        disabled_reason: None,
        retry_schedule_ms: match input.retry_schedule {
            Some(s) => schedule_ms(&s)?,
            None => DEFAULT_SCHEDULE_MS.to_vec(),
        },
        timeout_ms: match input.timeout {
            Some(t) => timeout_ms(t)?,
            None => DEFAULT_TIMEOUT_MS,
        },
        created_at: now,
        updated_at: now,
    };
    validate(&endpoint)?;
    app.store.insert_endpoint(endpoint.clone()).await?;
    app.registry.reload().await?;
    tracing::info!(endpoint = %endpoint.id, "endpoint created");
    let mut out = EndpointOut::from(&endpoint);
    out.secret = Some(endpoint.secret);
    Ok((StatusCode::CREATED, Json(out)))
}

async fn list(
    State(app): State<AppState>,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<Page<EndpointOut>>> {
    let page = page_after(
        app.registry.endpoints(),
        q.as_deref(),
        |e| e.id.clone(),
        |e| EndpointOut::from(&e),
    )?;
    Ok(Json(page))
}

async fn show(State(app): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<EndpointOut>> {
    let endpoint = app
        .registry
        .endpoint(&id)
        .ok_or_else(|| ApiError::not_found("endpoint", &id))?;
    Ok(Json(EndpointOut::from(&endpoint)))
}

async fn update(
    State(app): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Json<EndpointOut>> {
    let patch: EndpointPatch = parse_json(&body)?;
    let current = app
        .registry
        .endpoint(&id)
        .ok_or_else(|| ApiError::not_found("endpoint", &id))?;
    let mut e = (*current).clone();
    if let Some(url) = patch.url {
        e.url = url.trim().to_owned();
    }
    if let Some(types) = patch.event_types {
        e.event_types = types;
    }
    if let Some(d) = patch.description {
        e.description = d;
    }
    if let Some(h) = patch.headers {
        e.headers = h;
    }
    if let Some(s) = patch.signing {
        e.signing = s;
    }
    if let Some(s) = patch.retry_schedule {
        e.retry_schedule_ms = schedule_ms(&s)?;
    }
    if let Some(t) = patch.timeout {
        e.timeout_ms = timeout_ms(t)?;
    }
    let re_enabled = patch.enabled == Some(true) && !e.enabled;
    if let Some(enabled) = patch.enabled {
        e.enabled = enabled;
        if enabled {
            e.disabled_reason = None;
        } else if e.disabled_reason.is_none() {
            e.disabled_reason = Some("disabled by an operator".into());
        }
    }
    e.updated_at = domain::now_ms();
    validate(&e)?;
    if !app.store.update_endpoint(e.clone()).await? {
        return Err(ApiError::not_found("endpoint", &id));
    }
    app.registry.reload().await?;
    if re_enabled {
        // Its pending deliveries are due again.
        app.dispatch.wake();
    }
    Ok(Json(EndpointOut::from(&e)))
}

async fn remove(State(app): State<AppState>, Path(id): Path<String>) -> ApiResult<StatusCode> {
    if !app.store.delete_endpoint(&id, domain::now_ms()).await? {
        return Err(ApiError::not_found("endpoint", &id));
    }
    app.registry.reload().await?;
    tracing::info!(endpoint = %id, "endpoint deleted; its pending deliveries are cancelled");
    Ok(StatusCode::NO_CONTENT)
}
