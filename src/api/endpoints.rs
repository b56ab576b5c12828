//! `/api/v1/endpoints`: where deliveries go. Handlers parse the request, call
//! [`crate::service::endpoints`] and shape the answer.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

use super::error::{ApiResult, Body, ErrorBody, parse_json, parse_optional_json};
use super::{AppState, Page, page_after};
use crate::domain::{EventTypePattern, RateLimit, Scope, Signing, rfc3339};
use crate::model::{Endpoint, LabelFilter, OrderRoute, Ordering};
use crate::render::{Preset, RenderSpec};
use crate::service::endpoints::{EndpointFields, Filter};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(show, update, remove))
        .routes(routes!(recover))
        .routes(routes!(test))
        .routes(routes!(enable))
        .routes(routes!(disable))
        .routes(routes!(rotate_secret))
}

/// An endpoint as the API shows it. The secret is only present in the reply to a create;
/// secrets inside the URL (chat tokens, keys) and headers are masked.
#[derive(Debug, Serialize, ToSchema)]
pub struct EndpointOut {
    id: String,
    /// The application it belongs to; left out for the operator's own.
    #[serde(skip_serializing_if = "Option::is_none")]
    application_id: Option<String>,
    url: String,
    description: String,
    event_types: Vec<EventTypePattern>,
    /// The labels its events must carry; left out when it takes any.
    #[serde(skip_serializing_if = "LabelFilter::is_empty")]
    labels: LabelFilter,
    headers: BTreeMap<String, String>,
    signing: Signing,
    enabled: bool,
    disabled_reason: Option<String>,
    retry_schedule: Vec<f64>,
    timeout: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_age: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ordering: Option<Ordering>,
    /// The rate limit in force: the endpoint's own, or its preset's.
    #[serde(skip_serializing_if = "Option::is_none")]
    rate_limit: Option<RateLimit>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_concurrency: Option<u32>,
    /// For an order destination: what it trades and how much.
    #[serde(skip_serializing_if = "Option::is_none")]
    orders: Option<OrderRoute>,
    #[serde(flatten)]
    render: RenderSpec,
    created_at: String,
    updated_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    secret: Option<String>,
}

impl EndpointOut {
    fn from(e: &Endpoint) -> Self {
        let mut render = e.render.clone();
        if render.sign_secret.is_some() {
            render.sign_secret = Some("***".into());
        }
        if render.token.is_some() {
            render.token = Some("***".into());
        }
        Self {
            id: e.id.clone(),
            application_id: e.application_id.clone(),
            url: crate::security::redact::url(&e.url),
            render,
            description: e.description.clone(),
            event_types: e.event_types.clone(),
            labels: e.labels.clone(),
            headers: e
                .headers
                .iter()
                .map(|(k, v)| {
                    let shown = if crate::security::redact::is_secret_name(k) {
                        crate::security::redact::MASK
                    } else {
                        v
                    };
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
            max_age: e.policy.max_age_ms.map(|ms| ms as f64 / 1000.0),
            ordering: e.policy.ordering,
            rate_limit: e.rate_limit(),
            max_concurrency: e.policy.max_concurrency,
            orders: e.policy.orders.clone(),
            created_at: rfc3339(e.created_at),
            updated_at: rfc3339(e.updated_at),
            secret: None,
        }
    }
}

#[utoipa::path(post, path = "/endpoints", tag = "endpoints", request_body = EndpointFields,
    responses((status = 201, description = "Created; `secret` is shown this once", body = EndpointOut)))]
async fn create(
    State(app): State<AppState>,
    scope: Scope,
    Body(body): Body,
) -> ApiResult<(StatusCode, Json<EndpointOut>)> {
    let input: EndpointFields = parse_json(&body)?;
    let endpoint = app.services.create_endpoint(scope, input).await?;
    let mut out = EndpointOut::from(&endpoint);
    out.secret = Some(endpoint.secret);
    Ok((StatusCode::CREATED, Json(out)))
}

/// Filters of the endpoint list.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    #[param(minimum = 1, maximum = 500)]
    limit: Option<u32>,
    cursor: Option<String>,
    enabled: Option<bool>,
    /// Endpoints that receive this event type.
    #[param(pattern = r"^[A-Za-z0-9_.:/-]{1,64}$")]
    event_type: Option<String>,
    preset: Option<Preset>,
}

#[utoipa::path(get, path = "/endpoints", tag = "endpoints", params(ListQuery),
    responses((status = 200, body = Page<EndpointOut>)))]
async fn list(
    State(app): State<AppState>,
    scope: Scope,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<Page<EndpointOut>>> {
    let q: ListQuery = super::error::parse_query(q.as_deref())?;
    let filter = Filter {
        enabled: q.enabled,
        event_type: q.event_type,
        preset: q.preset,
    };
    let endpoints = app.services.endpoints(scope, &filter)?;
    let page = page_after(
        endpoints,
        q.limit,
        q.cursor,
        |e| e.id.clone(),
        |e| EndpointOut::from(&e),
    )?;
    Ok(Json(page))
}

#[utoipa::path(get, path = "/endpoints/{id}", tag = "endpoints", params(("id" = String, Path, description = "Endpoint id")),
    responses((status = 200, body = EndpointOut)))]
async fn show(
    State(app): State<AppState>,
    scope: Scope,
    Path(id): Path<String>,
) -> ApiResult<Json<EndpointOut>> {
    let endpoint = app.services.endpoint(scope, &id)?;
    Ok(Json(EndpointOut::from(&endpoint)))
}

#[utoipa::path(patch, path = "/endpoints/{id}", tag = "endpoints", params(("id" = String, Path, description = "Endpoint id")),
    request_body = EndpointFields, responses((status = 200, body = EndpointOut)))]
async fn update(
    State(app): State<AppState>,
    scope: Scope,
    Path(id): Path<String>,
    Body(body): Body,
) -> ApiResult<Json<EndpointOut>> {
    let patch: EndpointFields = parse_json(&body)?;
    let e = app.services.update_endpoint(scope, &id, patch).await?;
    Ok(Json(EndpointOut::from(&e)))
}

#[utoipa::path(delete, path = "/endpoints/{id}", tag = "endpoints", params(("id" = String, Path, description = "Endpoint id")),
    responses((status = 204, description = "Deleted; its pending deliveries are cancelled")))]
async fn remove(
    State(app): State<AppState>,
    scope: Scope,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    app.services.delete_endpoint(scope, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct RecoverIn {
    /// RFC 3339 or Unix seconds.
    #[schema(schema_with = super::openapi::time)]
    since: Value,
}

#[derive(Debug, Serialize, ToSchema)]
struct RecoverOut {
    /// Failed or expired deliveries made pending again.
    requeued: u64,
    /// Deliveries created for events the endpoint had none of (it was disabled).
    created: u64,
}

/// Catches an endpoint up since a time: its failed and expired deliveries are tried again, and
/// the events it missed while disabled are delivered, in event order.
#[utoipa::path(post, path = "/endpoints/{id}/recover", tag = "endpoints", params(("id" = String, Path, description = "Endpoint id")),
    request_body = RecoverIn, responses((status = 200, body = RecoverOut)))]
async fn recover(
    State(app): State<AppState>,
    scope: Scope,
    Path(id): Path<String>,
    Body(body): Body,
) -> ApiResult<Json<RecoverOut>> {
    let input: RecoverIn = parse_json(&body)?;
    let since_text = match &input.since {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => String::new(),
    };
    let since = super::query_time("since", Some(&since_text))?.unwrap_or_default();
    let (requeued, created) = app.services.recover_endpoint(scope, &id, since).await?;
    Ok(Json(RecoverOut { requeued, created }))
}

#[derive(Debug, Serialize, ToSchema)]
struct TestOut {
    event_id: String,
    delivery_id: String,
    /// The attempt, as recorded in the delivery log; `null` while it is still in progress.
    attempt: Option<crate::api::deliveries::AttemptOut>,
    /// Where to follow the delivery when the attempt was still in progress.
    #[serde(skip_serializing_if = "Option::is_none")]
    follow: Option<String>,
}

/// How long a test call waits for its attempt before answering that it is in progress: less
/// than the ten seconds API clients commonly allow, whatever the endpoint's own timeout.
pub(super) const TEST_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Sends a `ping` event through the normal pipeline and answers with its first attempt, or,
/// when that takes longer than five seconds, with where to follow it.
#[utoipa::path(post, path = "/endpoints/{id}/test", tag = "endpoints", params(("id" = String, Path, description = "Endpoint id")),
    responses((status = 200, description = "The ping's first attempt", body = TestOut),
        (status = 202, description = "The attempt is still in progress: follow the delivery", body = TestOut),
        (status = 409, description = "The endpoint is disabled", body = ErrorBody)))]
async fn test(
    State(app): State<AppState>,
    scope: Scope,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Json<TestOut>)> {
    let tested = app.services.test_endpoint(scope, &id, TEST_WAIT).await?;
    let (status, follow) = match tested.attempt {
        Some(_) => (StatusCode::OK, None),
        None => (
            StatusCode::ACCEPTED,
            Some(format!("/api/v1/deliveries/{}", tested.delivery_id)),
        ),
    };
    Ok((
        status,
        Json(TestOut {
            event_id: tested.event_id,
            delivery_id: tested.delivery_id,
            attempt: tested.attempt.map(crate::api::deliveries::AttemptOut::from),
            follow,
        }),
    ))
}

#[utoipa::path(post, path = "/endpoints/{id}/enable", tag = "endpoints", params(("id" = String, Path, description = "Endpoint id")),
    responses((status = 200, body = EndpointOut)))]
async fn enable(
    State(app): State<AppState>,
    scope: Scope,
    Path(id): Path<String>,
) -> ApiResult<Json<EndpointOut>> {
    let e = app.services.set_endpoint_enabled(scope, &id, true).await?;
    Ok(Json(EndpointOut::from(&e)))
}

#[utoipa::path(post, path = "/endpoints/{id}/disable", tag = "endpoints", params(("id" = String, Path, description = "Endpoint id")),
    responses((status = 200, body = EndpointOut)))]
async fn disable(
    State(app): State<AppState>,
    scope: Scope,
    Path(id): Path<String>,
) -> ApiResult<Json<EndpointOut>> {
    let e = app.services.set_endpoint_enabled(scope, &id, false).await?;
    Ok(Json(EndpointOut::from(&e)))
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct RotateIn {
    /// Seconds the previous secret keeps signing (default 24 h).
    #[serde(default)]
    overlap: Option<f64>,
}

#[derive(Debug, Serialize, ToSchema)]
struct RotateOut {
    id: String,
    /// The new secret, shown this once.
    secret: String,
    /// Until when deliveries also carry a signature under the previous secret.
    previous_valid_until: String,
}

/// A new signing secret; during the overlap deliveries are signed with both.
#[utoipa::path(post, path = "/endpoints/{id}/rotate-secret", tag = "endpoints", params(("id" = String, Path, description = "Endpoint id")),
    request_body(content = Option<RotateIn>, description = "Optional: no body (or `null`) keeps the default overlap of 24 h"),
    responses((status = 200, body = RotateOut)))]
async fn rotate_secret(
    State(app): State<AppState>,
    scope: Scope,
    Path(id): Path<String>,
    Body(body): Body,
) -> ApiResult<Json<RotateOut>> {
    let input: RotateIn = parse_optional_json(&body)?;
    let (e, until) = app
        .services
        .rotate_endpoint_secret(scope, &id, input.overlap)
        .await?;
    Ok(Json(RotateOut {
        id,
        secret: e.secret,
        previous_valid_until: rfc3339(until),
    }))
}
